"""The Free3D network: an image-conditioned diffusers UNet with RCN, cross-view attention and
a pose token.

:class:`Free3DModel` wraps a Zero-1-to-3-style ``UNet2DConditionModel`` (input = the noisy
latent of a target view concatenated with the source image's latent; cross-attention on the
source image's embedding) and adds, all zero-initialised so the wrapped UNet's outputs are
unchanged at start:

- a global **pose token**: the relative pose ``target_from_source`` embedded by an MLP and
  added to the image-embedding tokens of each view;
- **RCN** (:mod:`.rcn`): the target view's Plücker rays modulate every GroupNorm;
- **cross-view attention** (:mod:`.cross_view`): the views of one set attend to each other
  after every spatial transformer block.

The diffusers class is used unmodified (RCN and cross-view attention are forward hooks), so
the ``unet/`` sub-folder of a saved model is a plain diffusers UNet; our modules are stored
beside it in ``free3d_modules.safetensors`` with the config in ``free3d_config.json``.
The toy model of the tests (:func:`build_tiny`) is the same class at a tiny width.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sceneforge.core.diffusion import DiffusionModelError

from .cross_view import CrossViewAttentions
from .rays import as_rigid
from .rcn import RayConditionedNorm

CONFIG_FILE = "free3d_config.json"
MODULES_FILE = "free3d_modules.safetensors"
UNET_DIR = "unet"


@dataclass
class Free3DConfig:
    """What Free3D adds to its UNet, and the image format it generates."""

    image_size: int = 256
    """Side of the square images the model generates (and reads the source at), in pixels."""
    latent_space: bool = True
    """Denoise VAE latents (a ``vae/`` folder is needed); False: denoise pixels directly."""
    rcn: bool = True
    """Ray conditioning normalisation on every GroupNorm of the UNet."""
    rcn_hidden: int = 64
    """Channels of the ray features RCN computes from the Plücker maps."""
    rcn_freqs: int = 4
    """Harmonic frequencies of the Plücker coordinates fed to the ray encoder."""
    cross_view: bool = True
    """Pseudo-3D attention across the views of a set after each spatial transformer block."""
    cross_view_head_dim: int = 32
    """Channels per head of the cross-view attention."""
    pose_token: bool = True
    """Add an embedding of ``target_from_source`` to the image-embedding tokens."""
    pose_hidden: int = 128
    """Hidden width of the pose-token MLP."""

    @classmethod
    def from_dict(cls, d: dict) -> Free3DConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Free3DConfig: unknown fields {unknown}")
        return cls(**d)


def pose_features(target_from_source: Float[Tensor, "N R 4"]) -> Float[Tensor, "N 12"]:
    """The 12 entries of ``[R | t]`` (row-major), the pose token's input."""
    return as_rigid(target_from_source).reshape(-1, 12)


class PoseToken(nn.Module):
    """MLP from a relative pose to one cross-attention token, zero-initialised output."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, target_from_source: Float[Tensor, "N R 4"]) -> Float[Tensor, "N 1 D"]:
        return self.net(pose_features(target_from_source))[:, None]


def _repeat_sets(x: Tensor, num_sets: int, num_views: int, what: str) -> Tensor:
    """Per-set tensors ``[B, ...]`` repeated to every view ``[B*V, ...]`` (view-major)."""
    if x.shape[0] == num_sets * num_views:
        return x
    if x.shape[0] != num_sets:
        raise ValueError(
            f"{what}: batch {x.shape[0]} is neither {num_sets} sets nor "
            f"{num_sets * num_views} views"
        )
    return x.repeat_interleave(num_views, dim=0)


class Free3DModel(nn.Module):
    """Image-conditioned UNet + pose token + RCN + cross-view attention (see module doc)."""

    def __init__(self, unet: nn.Module, config: Free3DConfig) -> None:
        super().__init__()
        ucfg = unet.config
        if ucfg.in_channels % 2 or ucfg.out_channels != ucfg.in_channels // 2:
            raise ValueError(
                f"Free3D needs a UNet whose input is the noisy and the source latent "
                f"(in_channels = 2 * out_channels); got in {ucfg.in_channels}, "
                f"out {ucfg.out_channels}"
            )
        self.unet, self.config = unet, config
        self.rcn = (
            RayConditionedNorm(unet, config.rcn_hidden, config.rcn_freqs) if config.rcn else None
        )
        self.cross_view = (
            CrossViewAttentions(unet, config.cross_view_head_dim) if config.cross_view else None
        )
        dim = int(ucfg.cross_attention_dim)
        self.pose_token = PoseToken(dim, config.pose_hidden) if config.pose_token else None
        self.attach()

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def attach(self) -> None:
        """(Re-)register the RCN and cross-view hooks on the UNet."""
        for part in (self.rcn, self.cross_view):
            if part is not None:
                part.attach(self.unet)

    def detach(self) -> None:
        """Remove the hooks: ``self.unet`` is then the plain diffusers UNet even in
        :meth:`forward` (which then only adds the pose token)."""
        for part in (self.rcn, self.cross_view):
            if part is not None:
                part.detach(self.unet)

    def forward(
        self,
        noisy: Float[Tensor, "BV C h w"],
        t: Tensor | float | int,
        source_latent: Float[Tensor, "B C h w"],
        image_embed: Float[Tensor, "B L D"],
        rays: Float[Tensor, "BV 6 H W"],
        num_views: int,
        target_from_source: Float[Tensor, "BV R 4"] | None = None,
    ) -> Float[Tensor, "BV C h w"]:
        """Noise (or the scheduler's prediction type) for ``B`` sets of ``num_views`` views.

        ``noisy`` and ``rays`` hold the views view-major within each set; ``source_latent``
        and ``image_embed`` are per set (or already per view). ``target_from_source`` feeds
        the pose token and is required when the config has one.
        """
        bv = noisy.shape[0]
        if bv % num_views:
            raise ValueError(f"batch {bv} is not a multiple of num_views={num_views}")
        b = bv // num_views
        if rays.shape[0] != bv or rays.shape[1] != 6:
            raise ValueError(f"rays must be [{bv}, 6, H, W], got {tuple(rays.shape)}")
        src = _repeat_sets(source_latent, b, num_views, "source_latent")
        emb = _repeat_sets(image_embed, b, num_views, "image_embed")
        if self.pose_token is not None:
            if target_from_source is None:
                raise ValueError("this Free3D model has a pose token: give target_from_source")
            emb = emb + self.pose_token(target_from_source.to(emb.dtype)).to(emb.dtype)
        x = torch.cat([noisy, src.to(noisy.dtype)], dim=1)
        with self._conditioned(rays.to(noisy.dtype), num_views):
            return self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]

    def _conditioned(self, rays: Tensor, num_views: int):
        from contextlib import ExitStack

        stack = ExitStack()
        if self.rcn is not None:
            stack.enter_context(self.rcn.conditioned(rays))
        if self.cross_view is not None:
            stack.enter_context(self.cross_view.views(num_views))
        return stack

    # ------------------------------------------------------------------------- save / load

    def extra_state_dict(self) -> dict[str, Tensor]:
        """Weights of the modules Free3D adds (everything but the UNet)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("unet.")}

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``unet/`` (diffusers), ``free3d_modules.safetensors`` and the config."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(str(path / UNET_DIR))
        extra = {k: v.detach().contiguous().cpu() for k, v in self.extra_state_dict().items()}
        save_file(extra, str(path / MODULES_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")


def missing_components(path: Path, latent_space: bool | None = None) -> list[str]:
    """Components of a Free3D folder that are absent (``vae/`` only when latent-space)."""
    need = {
        CONFIG_FILE: path / CONFIG_FILE,
        f"{UNET_DIR}/config.json": path / UNET_DIR / "config.json",
        MODULES_FILE: path / MODULES_FILE,
    }
    missing = [name for name, p in need.items() if not p.is_file()]
    if not any((path / UNET_DIR).glob("diffusion_pytorch_model*")):
        missing.append(f"{UNET_DIR}/diffusion_pytorch_model.safetensors")
    if latent_space and not (path / "vae" / "config.json").is_file():
        missing.append("vae/config.json")
    return missing


def read_config(path: str | Path) -> Free3DConfig:
    """The :class:`Free3DConfig` of a saved model folder."""
    f = Path(path) / CONFIG_FILE
    try:
        return Free3DConfig.from_dict(json.loads(f.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise DiffusionModelError(f"{f}: unreadable Free3D config ({e})") from e


def load_free3d_model(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Free3DModel:
    """Load a :class:`Free3DModel` saved with :meth:`Free3DModel.save_pretrained` from a local
    folder (``local_files_only``; nothing is downloaded).

    Raises:
        DiffusionModelError: the folder is missing, lacks components (all are named), or its
            weights do not fit the config.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DiffusionModelError(
            f"{path}: Free3D model folder not found (models are never downloaded; give a "
            "folder written by Free3DModel.save_pretrained)"
        )
    missing = missing_components(path)
    if missing:
        raise DiffusionModelError(
            f"{path}: not a Free3D model folder; missing {', '.join(missing)}"
        )
    config = read_config(path)
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    try:
        unet = UNet2DConditionModel.from_pretrained(str(path / UNET_DIR), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiffusionModelError(f"{path / UNET_DIR}: cannot load the UNet ({e})") from e
    try:
        model = Free3DModel(unet, config)
    except ValueError as e:
        raise DiffusionModelError(f"{path}: {e}") from e
    extra = load_file(str(path / MODULES_FILE))
    expected = model.extra_state_dict()
    lacking = sorted(set(expected) - set(extra))
    unexpected = sorted(set(extra) - set(expected))
    if lacking or unexpected:
        raise DiffusionModelError(
            f"{path / MODULES_FILE}: weights do not fit {CONFIG_FILE}; missing {lacking[:5]}"
            f"{' ...' if len(lacking) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    bad = [k for k in expected if expected[k].shape != extra[k].shape]
    if bad:
        raise DiffusionModelError(f"{path / MODULES_FILE}: wrong shapes for {bad[:5]}")
    model.load_state_dict(extra, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def tiny_unet(
    latent_channels: int = 3,
    block_out_channels: tuple[int, ...] = (16, 32),
    cross_attention_dim: int = 16,
    sample_size: int = 16,
    seed: int = 0,
):
    """A tiny random-weight Zero-1-to-3-style ``UNet2DConditionModel`` (tests, CPU demos)."""
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=2 * latent_channels,
            out_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            layers_per_block=1,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=4,
            norm_num_groups=8,
        )


def build_tiny(
    latent_channels: int = 3,
    block_out_channels: tuple[int, ...] = (16, 32),
    cross_attention_dim: int = 16,
    image_size: int = 16,
    latent_space: bool = False,
    seed: int = 0,
    **config,
) -> Free3DModel:
    """The same :class:`Free3DModel` at a tiny width (pixel space by default), random weights.

    ``config`` overrides further :class:`Free3DConfig` fields (``rcn_hidden`` is 8,
    ``cross_view_head_dim`` 8 and ``pose_hidden`` 16 unless given).
    """
    cfg = {"rcn_hidden": 8, "rcn_freqs": 2, "cross_view_head_dim": 8, "pose_hidden": 16}
    cfg.update(config)
    sample = image_size // 2 if latent_space else image_size  # the tiny VAE halves the side
    unet = tiny_unet(latent_channels, block_out_channels, cross_attention_dim, sample, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return Free3DModel(
            unet, Free3DConfig(image_size=image_size, latent_space=latent_space, **cfg)
        )


__all__ = [
    "CONFIG_FILE",
    "MODULES_FILE",
    "Free3DConfig",
    "Free3DModel",
    "PoseToken",
    "build_tiny",
    "load_free3d_model",
    "missing_components",
    "pose_features",
    "read_config",
    "tiny_unet",
]
