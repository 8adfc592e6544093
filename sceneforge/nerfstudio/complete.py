"""nerfstudio plugin method ``sceneforge-complete``: scene completion (the Inpaint Dataset Update)
inside ``ns-train``.

Needs the ``[nerfstudio]`` extra. Registered through the ``nerfstudio.method_configs`` entry
point ``sceneforge-complete``, or without installing
``NERFSTUDIO_METHOD_CONFIGS=sceneforge-complete=sceneforge.nerfstudio.complete:
sceneforge_complete_method``.

    ns-train sceneforge-complete --data SCENE_DIR \\
        --pipeline.datamanager.mask-box XMIN YMIN ZMIN XMAX YMAX ZMAX

The model is :mod:`sceneforge.nerfstudio.plugin`'s; the datamanager
(:class:`CompletionDataManager`) builds fill masks for the training images (a world box in the
scene's own frame projected into every view, and/or a folder of per-image masks, white = fill),
trains on the unmasked pixels only (the fill pixels are masked out of the pixel sampler), and
after ``warmup_steps`` and then every ``update_every`` steps (``num_rounds`` times) renders the
training views with the model, inpaints them jointly with our inpainter (multi-view by default;
``telea``; ``sd`` with a local model) and replaces the cached training images inside the fill
masks (noise strength annealed across the rounds). Each update is written to
``<run dir>/datasets/vNNN/`` (atomic; the scene's files are never touched).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

try:
    from nerfstudio.data.datamanagers.base_datamanager import (
        VanillaDataManager,
        VanillaDataManagerConfig,
    )
    from nerfstudio.engine.callbacks import (
        TrainingCallback,
        TrainingCallbackAttributes,
        TrainingCallbackLocation,
    )
    from nerfstudio.plugins.types import MethodSpecification
    from nerfstudio.utils.rich_utils import CONSOLE
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sceneforge.nerfstudio.complete needs nerfstudio: install 'sceneforge[nerfstudio]' into "
        "its own venv (nerfstudio pins numpy<2), e.g. python -m venv .venv-ns && "
        ".venv-ns/bin/pip install -e '.[nerfstudio]'"
    ) from e

from sceneforge.core import run_files
from sceneforge.core.cameras import Cameras
from sceneforge.core.image_io import read_image
from sceneforge.fields.rendering import render_rays
from sceneforge.fields.trainer import split_indices
from sceneforge.inpaint.complete import CompleteConfig, make_inpainter
from sceneforge.inpaint.inpainters import Inpainter
from sceneforge.inpaint.masks import box_fill_mask, dilate, read_fill_masks
from sceneforge.inpaint.rounds import RoundSettings, completion_round, write_dataset_version
from sceneforge.nerfstudio.dataparser import SceneforgeDataParserConfig, scene_to_nerfstudio_frame
from sceneforge.nerfstudio.plugin import SceneforgeModel, method_config


@dataclass
class CompletionDataManagerConfig(VanillaDataManagerConfig):
    """Vanilla datamanager + fill masks + the Inpaint Dataset Update (sceneforge dataparser)."""

    _target: type = dataclasses.field(default_factory=lambda: CompletionDataManager)
    mask_box: tuple[float, float, float, float, float, float] | None = None
    """World box ``xmin ymin zmin xmax ymax zmax`` (the scene's own frame) to remove."""
    masks: Path | None = None
    """Folder of per-image fill masks (same stem as the images; white = fill)."""
    dilate_px: int = 1
    """Grow the fill masks by this many pixels."""
    inpainter: Literal["multiview", "telea", "sd"] = "multiview"
    """Inpainting backend (``sd`` needs ``model_path``)."""
    model_path: str | None = None
    """Local Stable Diffusion inpainting folder for ``sd``."""
    prompt: str = ""
    """Text prompt for ``sd``."""
    warmup_steps: int = 1000
    """Steps on the unmasked pixels before the first update."""
    update_every: int = 500
    """Steps between updates."""
    num_rounds: int = 4
    """Number of updates."""
    strength_start: float = 1.0
    """Noise strength of the first update."""
    strength_end: float = 0.4
    """Noise strength of the last update (annealed linearly)."""
    accumulation_threshold: float = 0.2
    """Rendered depth counts as known above this accumulation."""
    empty_threshold: float = 0.02
    """Below this accumulation a pixel is empty (depth 0: background at infinity)."""
    render_chunk: int = 8192
    """Rays per chunk when rendering the training views."""
    write_versions: bool = True
    """Write every dataset version to ``<run dir>/datasets/vNNN``."""


class CompletionDataManager(VanillaDataManager):
    """Trains on the unmasked pixels, then inpaints rendered training views every N steps."""

    config: CompletionDataManagerConfig

    def setup_train(self) -> None:
        super().setup_train()
        cfg = self.config
        if not isinstance(cfg.dataparser, SceneforgeDataParserConfig):
            raise ValueError("sceneforge-complete needs the sceneforge-data dataparser")
        if cfg.mask_box is None and cfg.masks is None:
            raise ValueError(
                "sceneforge-complete: give --pipeline.datamanager.mask-box or "
                "--pipeline.datamanager.masks (nothing to fill)"
            )
        loader = self.train_image_dataloader
        if not loader.cache_all_images:
            raise ValueError(
                "sceneforge-complete replaces the cached training images: keep "
                "--pipeline.datamanager.train-num-images-to-sample-from at -1"
            )
        from sceneforge.core.io import load_scene

        dp = cfg.dataparser
        scene = load_scene(dp.data, format=dp.format)
        train_idx, _ = split_indices(len(scene), dp.holdout_every)
        names = self.train_dataparser_outputs.metadata.get("image_names")
        if names != [scene.image_names[i] for i in train_idx]:
            raise ValueError(f"{dp.data}: the dataparser's training images do not match the scene")
        self.scene, self.train_idx = scene, train_idx
        self.ns_transform, self.ns_scale, _ = scene_to_nerfstudio_frame(
            scene, dp.scene_box, dp.inner_scale
        )
        self.cameras: Cameras = scene.cameras[train_idx]
        fill = [
            torch.zeros(int(scene.cameras.height[i]), int(scene.cameras.width[i]), dtype=torch.bool)
            for i in train_idx
        ]
        if cfg.masks is not None:
            files = read_fill_masks(cfg.masks, scene)
            fill = [f | files[i] for f, i in zip(fill, train_idx)]
        if cfg.mask_box is not None:
            depths = scene.depths
            fill = [
                f
                | box_fill_mask(
                    scene.cameras, i, cfg.mask_box, depth=None if depths is None else depths[i]
                )
                for f, i in zip(fill, train_idx)
            ]
        self.fill = [dilate(f, cfg.dilate_px) for f in fill]
        if not any(bool(f.any()) for f in self.fill):
            raise ValueError("the fill masks select no pixel of any training image")
        batch = loader.cached_collated_batch
        self._originals = [self._image(batch, j).clone() for j in range(len(self.fill))]
        # the scene's own masks (True = usable) stay; the fill pixels are masked until filled
        self._scene_masks = None
        if "mask" in batch:
            self._scene_masks = [
                self._get(batch, "mask", j)[..., 0].bool().cpu() for j in range(len(self.fill))
            ]
        self._set_masks(batch, self._usable(filled=False))
        self.round = 0
        self.version = 0
        self.history: list[dict] = []
        self.out_dir: Path | None = None
        self._inpainter: Inpainter | None = None

    # -- cached batch access ------------------------------------------------------------------

    def _pos(self, batch: dict, j: int) -> int:
        """Position of training image ``j`` in the cached batch (loaded in random order)."""
        pos = (batch["image_idx"].reshape(-1) == j).nonzero()
        if pos.numel() != 1:
            raise RuntimeError(f"training image {j} is not in the cached batch once")
        return int(pos[0, 0])

    def _get(self, batch: dict, key: str, j: int) -> Tensor:
        return batch[key][self._pos(batch, j)]

    def _image(self, batch: dict, j: int) -> Tensor:
        return self._get(batch, "image", j)[..., :3].float().cpu()

    def _usable(self, filled: bool) -> list[Tensor]:
        """Pixels the sampler may draw: the scene's masks, without (before the first update)
        or with (after it) the fill pixels."""
        out = []
        for j, f in enumerate(self.fill):
            base = torch.ones_like(f) if self._scene_masks is None else self._scene_masks[j]
            out.append(base | f if filled else base & ~f)
        return out

    def _set_masks(self, batch: dict, usable: list[Tensor]) -> None:
        """``batch["mask"]`` (in the batch's image order) = ``usable`` (per training image)."""
        dev = self.device
        order = [int(j) for j in batch["image_idx"].reshape(-1)]
        ms = [usable[j][..., None].to(dev) for j in order]
        batch["mask"] = torch.stack(ms) if _same_shapes(ms) else ms

    # -- the update ---------------------------------------------------------------------------

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        attrs = training_callback_attributes
        if attrs.trainer is not None:
            if self.config.write_versions:
                self.out_dir = Path(attrs.trainer.base_dir)
            # ``--load-dir`` / ``--load-checkpoint``: continue the rounds from the checkpoint
            start = int(getattr(attrs.trainer, "_start_step", 0))
            tc = attrs.trainer.config
            src = tc.load_dir or (tc.load_checkpoint.parent if tc.load_checkpoint else None)
            if start > 0 and src is not None:
                self.restore(Path(src).parent / run_files.DATASETS_DIR, start)

        def maybe_update(step: int) -> None:
            done = step + 1  # iterations finished after this step
            c = self.config
            k = done - c.warmup_steps
            if k >= 0 and k % max(c.update_every, 1) == 0 and self.round < c.num_rounds:
                self.inpaint_update(attrs.pipeline.model, done)

        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=maybe_update,
            )
        ]

    def restore(self, datasets_dir: Path, start_step: int) -> int:
        """Resume the Inpaint Dataset Update of an earlier run at ``start_step``.

        Loads the newest dataset version written by an update the checkpoint already contains
        (manifest ``step`` <= ``start_step``) into the cached training images (inside the fill
        masks; the capture stays bit-exact outside), makes the fill pixels trainable and
        continues the round and version counters. Returns the restored version (0 = none).
        """
        c = self.config
        found = []
        for m in sorted(datasets_dir.glob(f"v[0-9][0-9][0-9]/{run_files.DATASET_MANIFEST}")):
            info = json.loads(m.read_text())
            if int(info.get("step", -1)) <= start_step:
                found.append((int(info["version"]), m.parent, info))
        if not found:
            due = start_step - c.warmup_steps
            if due >= 0:
                # the run wrote no versions: keep the schedule, the images come from the next one
                self.round = min(c.num_rounds, due // max(c.update_every, 1) + 1)
                CONSOLE.print(
                    f"[yellow]sceneforge-complete: no dataset version in {datasets_dir}; "
                    f"resuming at round {self.round} without the earlier inpainted images"
                )
            return 0
        version, folder, info = max(found, key=lambda t: t[0])
        names = [Path(self.scene.image_names[i]).with_suffix(".png").name for i in self.train_idx]
        if info.get("images") != names:
            raise ValueError(
                f"{folder / run_files.DATASET_MANIFEST}: its images do not match this run's "
                "training images"
            )
        batch = self.train_image_dataloader.cached_collated_batch
        for j, name in enumerate(names):
            path = folder / run_files.DATASET_IMAGES_DIR / name
            saved = read_image(path)
            f = self.fill[j]
            if saved.shape[:2] != f.shape:
                raise ValueError(
                    f"{path}: size {tuple(saved.shape[:2])} "
                    f"does not match the training image {tuple(f.shape)}"
                )
            pos = self._pos(batch, j)
            img = batch["image"][pos]
            new = torch.where(f[..., None], saved, self._originals[j]).to(img)
            if img.shape[-1] == 4:
                new = torch.cat(
                    [new, torch.where(f[..., None], 1.0, img[..., 3:].cpu()).to(img)], -1
                )
            batch["image"][pos] = new
        self._set_masks(batch, self._usable(filled=True))
        self.version, self.round = version, int(info["round"])
        self.history = [t[2] for t in sorted(found, key=lambda t: t[0])]
        CONSOLE.print(f"sceneforge-complete: resumed from {folder} (round {self.round})")
        return version

    @property
    def inpainter(self) -> Inpainter:
        if self._inpainter is None:
            c = self.config
            self._inpainter = make_inpainter(
                CompleteConfig(inpainter=c.inpainter, model=c.model_path, prompt=c.prompt)
            )
        return self._inpainter

    @torch.no_grad()
    def render_view(self, model: SceneforgeModel, j: int) -> dict[str, Tensor]:
        """RGB, z-depth (scene units) and accumulation of training view ``j`` (full res)."""
        cams = self.cameras
        h, w = int(cams.height[j]), int(cams.width[j])
        o, d, z = cams.rays(j)
        T, s = self.ns_transform.to(o), self.ns_scale
        o_ns = s * (o @ T[:, :3].T + T[:, 3])
        d_ns = torch.nn.functional.normalize(d @ T[:, :3].T, dim=-1)
        was_training = model.training
        model.eval()
        model._sync_box()
        dev = model.device
        outs: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "accumulation": []}
        try:
            for a in range(0, o.shape[0], self.config.render_chunk):
                sl = slice(a, a + self.config.render_chunk)
                r = render_rays(
                    model.field,
                    model.grid,
                    model.config.nerf.sampler,
                    o_ns[sl].float().to(dev),
                    d_ns[sl].float().to(dev),
                    None,
                    model.background,
                    None,
                    z[sl].float().to(dev),
                )
                for k in outs:
                    outs[k].append(r[k].cpu())
        finally:
            model.train(was_training)
        acc = torch.cat(outs["accumulation"]).view(h, w)
        return {
            "rgb": torch.cat(outs["rgb"]).view(h, w, 3).clamp(0, 1),
            "depth": torch.cat(outs["depth"]).view(h, w) / s,  # nerfstudio units -> scene
            "accumulation": acc,
        }

    @torch.no_grad()
    def inpaint_update(self, model: SceneforgeModel, step: int) -> int:
        """Render the training views with holes, inpaint them jointly, replace them (one
        :func:`~sceneforge.inpaint.rounds.completion_round`, as in our own trainer)."""
        c = self.config
        res = completion_round(
            _NerfstudioRound(self, model),
            self.inpainter,
            list(range(len(self.fill))),
            self.fill,
            self._originals,
            self.cameras,
            RoundSettings(
                c.num_rounds,
                c.strength_start,
                c.strength_end,
                c.accumulation_threshold,
                c.empty_threshold,
            ),
            self.round,
            step,
            [self.scene.image_names[i] for i in self.train_idx],
            c.prompt or None,
            versions_dir=self.out_dir / run_files.DATASETS_DIR
            if self.out_dir is not None and c.write_versions
            else None,
        )
        if res is None:
            return self.version
        self.round += 1
        self.history.append(res.info)
        return self.version

    def write_version(self, info: dict) -> Path:
        """Write the current training images to ``<run dir>/datasets/vNNN`` atomically."""
        return write_dataset_version(
            self.out_dir / run_files.DATASETS_DIR,
            self.version,
            [self.scene.image_names[i] for i in self.train_idx],
            _NerfstudioRound(self, None).images(),
            {**info, "fill_pixels": [int(f.sum()) for f in self.fill]},
        )


class _NerfstudioRound:
    """The completion round's view of the datamanager (:class:`~sceneforge.inpaint.rounds.
    RoundTarget`): renders with the ns model, writes into the cached training batch."""

    def __init__(self, dm: CompletionDataManager, model: SceneforgeModel) -> None:
        self.dm, self.model = dm, model

    def render(self, j: int) -> dict[str, Tensor]:
        return self.dm.render_view(self.model, j)

    def apply(self, views: list[int], images: Tensor, fill: Tensor) -> int:
        dm = self.dm
        batch = dm.train_image_dataloader.cached_collated_batch
        for k, j in enumerate(views):
            pos = dm._pos(batch, j)
            img = batch["image"][pos]
            new = images[k].to(img)
            if img.shape[-1] == 4:  # RGBA capture: the filled pixels become opaque
                alpha = torch.where(fill[k, ..., None].to(img.device), 1.0, img[..., 3:])
                new = torch.cat([new, alpha.to(img)], -1)
            batch["image"][pos] = new
        dm._set_masks(batch, dm._usable(filled=True))
        dm.version += 1
        return dm.version

    def images(self) -> list[Tensor]:
        batch = self.dm.train_image_dataloader.cached_collated_batch
        return [self.dm._image(batch, j) for j in range(len(self.dm.train_idx))]


def _same_shapes(ts: list[Tensor]) -> bool:
    return all(t.shape == ts[0].shape for t in ts)


def complete_method_config(max_steps: int = 3000) -> object:
    """``sceneforge-complete``: the ``sceneforge`` method with the completion datamanager."""
    cfg = method_config(max_steps)
    cfg.method_name = "sceneforge-complete"
    dm = cfg.pipeline.datamanager
    cfg.pipeline.datamanager = CompletionDataManagerConfig(
        dataparser=dm.dataparser,
        train_num_rays_per_batch=dm.train_num_rays_per_batch,
        eval_num_rays_per_batch=dm.eval_num_rays_per_batch,
    )
    return cfg


sceneforge_complete_method = MethodSpecification(
    config=complete_method_config(),
    description="sceneforge scene completion: train on the unmasked pixels, inpaint rendered "
    "views jointly every N steps (Inpaint Dataset Update)",
)


__all__ = [
    "CompletionDataManager",
    "CompletionDataManagerConfig",
    "complete_method_config",
    "sceneforge_complete_method",
]
