"""The training set as a replaceable, partly-updatable pool of rays.

:class:`RayDataset` holds the training images of a :class:`SceneData` (optionally downscaled)
as flat per-pixel tensors (ray origin, direction, colour, image index) plus the list of
usable pixels (mask True). Batches are drawn uniformly from usable pixels with an explicit
``torch.Generator``. :meth:`RayDataset.update_images` / :meth:`RayDataset.replace` change the
pixels while training (the dataset update used by completion and stylization) and bump
:attr:`RayDataset.version`; the next :meth:`RayDataset.sample` uses the new data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData, SceneDataError


@dataclass
class RayBatch:
    """A batch of training rays."""

    origins: Float[Tensor, "B 3"]
    directions: Float[Tensor, "B 3"]
    rgb: Float[Tensor, "B 3"]
    image_idx: Int[Tensor, " B"]
    """Index of the ray's image within the training set (appearance embedding)."""
    pixel_idx: Int[Tensor, " B"]
    """Flat index of the ray in the dataset (per-pixel targets of loss hooks are indexed by it)."""
    z_per_t: Float[Tensor, " B"]
    patches: PatchLayout | None = None
    """Set when the batch is whole patches or images (``B = P * height * width`` pixels,
    patch-major, row-major inside a patch); None for independent rays."""
    valid: Bool[Tensor, " B"] | None = None
    """Pixels that count in the loss (usable pixels; patches may cover masked-out ones);
    None = all."""


@dataclass
class PatchLayout:
    """Where the patches of a patch batch lie: training view ``view[p]``, top-left ``(y0[p],
    x0[p])`` at dataset resolution, ``height x width`` pixels each."""

    view: Int[Tensor, " P"]
    y0: Int[Tensor, " P"]
    x0: Int[Tensor, " P"]
    height: int
    width: int


def downscale_image(img: Float[Tensor, "H W C"], factor: int) -> Float[Tensor, "h w C"]:
    """Area-average downscale by an integer factor (the border remainder is cropped)."""
    if factor == 1:
        return img
    h, w = img.shape[0] // factor * factor, img.shape[1] // factor * factor
    x = img[:h, :w].permute(2, 0, 1)[None].float()
    return F.avg_pool2d(x, factor)[0].permute(1, 2, 0)


def downscale_mask(mask: Bool[Tensor, "H W"], factor: int) -> Bool[Tensor, "h w"]:
    """A low-resolution pixel is usable only if all its source pixels are."""
    if factor == 1:
        return mask
    return downscale_image(mask[..., None].float(), factor)[..., 0] > 0.999


def scene_rays(
    cameras: Cameras, index: int, downscale: int = 1
) -> tuple[Float[Tensor, "P 3"], Float[Tensor, "P 3"], Float[Tensor, " P"]]:
    """Row-major rays of one (pinhole or distorted) camera at ``downscale``."""
    o, d, z = cameras.rays(index, downscale=downscale)
    return o.float(), d.float(), z.float()


def split_indices(n: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """Training and held-out image indices (every ``holdout_every``-th image held out)."""
    if holdout_every <= 0 or n < 2:
        return list(range(n)), []
    ev = [i for i in range(n) if i % holdout_every == 0]
    return [i for i in range(n) if i % holdout_every != 0], ev


def scale_cameras(cameras: Cameras, downscale: int) -> Cameras:
    """Cameras of images downscaled by an integer factor (COLMAP pixel convention)."""
    if downscale == 1:
        return cameras
    n_lin = 3 if cameras.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else 4
    p = cameras.params.clone()
    p[:, :n_lin] = p[:, :n_lin] / downscale
    return Cameras(
        cameras.model,
        p,
        cameras.width // downscale,
        cameras.height // downscale,
        cameras.cam_from_world,
    )


def border_color(views: Iterable[tuple[Float[Tensor, "h w 3"], Bool[Tensor, "h w"]]]) -> Tensor:
    """Median colour of the usable (mask True) pixels on the borders of ``(image, mask)``
    pairs; grey when there is none (the learned background starts there)."""
    cols = []
    for img, m in views:
        for sl in ((0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)):
            cols.append(img[sl][m[sl]])
    c = torch.cat(cols) if cols else torch.empty(0, 3)
    return c.median(0).values if c.numel() else torch.full((3,), 0.5)


class RayDataset:
    """Training rays of some images of a scene, replaceable while training.

    Args:
        scene: the scene; ``indices`` selects the training images (default: all).
        downscale: integer image downscale factor.
        use_masks: draw rays only from usable (mask True) pixels.
    """

    def __init__(
        self,
        scene: SceneData,
        indices: list[int] | None = None,
        downscale: int = 1,
        use_masks: bool = True,
    ) -> None:
        self.downscale, self.use_masks = int(downscale), use_masks
        self.version = 0
        self._modified = False
        self._load(scene, list(range(len(scene))) if indices is None else list(indices))

    # -- building -----------------------------------------------------------------------------

    def _load(self, scene: SceneData, indices: list[int]) -> None:
        if not indices:
            raise SceneDataError("the training set is empty")
        self.scene, self.indices = scene, indices
        cams = scene.cameras
        origins, dirs, zs, rgbs, masks, img_ids, shapes = [], [], [], [], [], [], []
        for j, i in enumerate(indices):
            img = downscale_image(scene.load_image(i), self.downscale)
            h, w = img.shape[:2]
            o, d, z = scene_rays(cams, i, self.downscale)
            if o.shape[0] != h * w:
                raise SceneDataError(
                    f"{scene.image_names[i]}: {h}x{w} pixels after downscale but {o.shape[0]} rays"
                )
            m = scene.load_mask(i) if self.use_masks else None
            m = (
                torch.ones(h, w, dtype=torch.bool)
                if m is None
                else downscale_mask(m, self.downscale)
            )
            origins.append(o)
            dirs.append(d)
            zs.append(z)
            rgbs.append(img.reshape(-1, 3).float())
            masks.append(m.reshape(-1))
            img_ids.append(torch.full((h * w,), j, dtype=torch.long))
            shapes.append((h, w))
        self.origins = torch.cat(origins)
        self.directions = torch.cat(dirs)
        self.z_per_t = torch.cat(zs)
        self.rgb = torch.cat(rgbs)
        self.mask = torch.cat(masks)
        self.image_ids = torch.cat(img_ids)
        self.shapes = shapes
        sizes = torch.tensor([h * w for h, w in shapes])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self._rebuild_pool()

    def _rebuild_pool(self) -> None:
        self.pool = self.mask.nonzero()[:, 0]
        if self.pool.numel() == 0:
            raise SceneDataError("no usable pixel in the training set (all masks are False)")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_rays(self) -> int:
        return int(self.pool.numel())

    # -- sampling ----------------------------------------------------------------------------

    def _batch(self, p: Int[Tensor, " B"], patches: PatchLayout | None = None) -> RayBatch:
        """The dataset pixels ``p`` as a batch (patch batches also carry the usable mask)."""
        return RayBatch(
            self.origins[p],
            self.directions[p],
            self.rgb[p],
            self.image_ids[p],
            p,
            self.z_per_t[p],
            patches,
            None if patches is None else self.mask[p],
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> RayBatch:
        """``batch_size`` usable rays drawn uniformly with replacement."""
        k = torch.randint(self.pool.numel(), (batch_size,), generator=generator)
        p = self.pool[k]
        return self._batch(p)

    def sample_patches(self, num_patches: int, size: int, generator: torch.Generator) -> RayBatch:
        """``num_patches`` square ``size x size`` patches: a training view drawn with probability
        proportional to its usable pixels, then a top-left corner uniformly among those whose
        patch fits the view. Pixels outside the masks are in the batch with ``valid`` False."""
        fits = torch.tensor([h >= size and w >= size for h, w in self.shapes])
        if not bool(fits.any()):
            raise SceneDataError(
                f"patch size {size} is larger than every training image "
                f"(smallest {min(self.shapes)}, after downscale {self.downscale})"
            )
        usable = (
            torch.stack([self.mask[self.pixel_range(j)].sum() for j in range(len(self))]).double()
            * fits.double()
        )
        if float(usable.sum()) <= 0:
            raise SceneDataError("no training image with usable pixels is large enough for a patch")
        view = torch.multinomial(usable, num_patches, replacement=True, generator=generator)
        hs = torch.tensor([h for h, _ in self.shapes])[view]
        ws = torch.tensor([w for _, w in self.shapes])[view]
        y0 = torch.rand(num_patches, generator=generator, dtype=torch.float64) * (hs - size + 1)
        x0 = torch.rand(num_patches, generator=generator, dtype=torch.float64) * (ws - size + 1)
        y0, x0 = y0.long(), x0.long()
        r = torch.arange(size)
        rows = y0[:, None, None] + r[None, :, None]
        cols = x0[:, None, None] + r[None, None, :]
        p = (self.offsets[view][:, None, None] + rows * ws[:, None, None] + cols).reshape(-1)
        return self._batch(p, PatchLayout(view, y0, x0, size, size))

    def sample_view(self, generator: torch.Generator) -> RayBatch:
        """One whole training view (uniformly among those with usable pixels) as a one-patch
        batch; its pixels outside the masks have ``valid`` False."""
        usable = torch.tensor(
            [bool(self.mask[self.pixel_range(j)].any()) for j in range(len(self))]
        ).double()
        j = int(torch.multinomial(usable, 1, generator=generator))
        h, w = self.shapes[j]
        p = torch.arange(int(self.offsets[j]), int(self.offsets[j + 1]))
        zero = torch.zeros(1, dtype=torch.long)
        return self._batch(p, PatchLayout(torch.tensor([j]), zero, zero, h, w))

    def border_color(self) -> Float[Tensor, " 3"]:
        """Median colour of the usable border pixels of all images (background initialisation)."""
        return border_color((self.image(j), self.image_mask(j)) for j in range(len(self)))

    def image(self, j: int) -> Float[Tensor, "h w 3"]:
        """Current pixels of training image ``j`` (after any update)."""
        h, w = self.shapes[j]
        return self.rgb[self.offsets[j] : self.offsets[j + 1]].view(h, w, 3)

    def image_mask(self, j: int) -> Bool[Tensor, "h w"]:
        h, w = self.shapes[j]
        return self.mask[self.offsets[j] : self.offsets[j + 1]].view(h, w)

    def pixel_range(self, j: int) -> slice:
        """The flat pixel indices (``RayBatch.pixel_idx``) of training image ``j``."""
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def rays(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        """Origins, directions and ``z_per_t`` of training image ``j`` (row-major)."""
        sl = slice(int(self.offsets[j]), int(self.offsets[j + 1]))
        return self.origins[sl], self.directions[sl], self.z_per_t[sl]

    # -- updates -----------------------------------------------------------------------------

    def update_images(
        self,
        local_indices: list[int],
        images: list[Float[Tensor, "h w 3"]],
        masks: list[Bool[Tensor, "h w"] | None] | None = None,
    ) -> int:
        """Replace the pixels (and optionally the masks) of some training images.

        ``local_indices`` index the training set (0..len-1); images are float in [0, 1] at the
        dataset's resolution. Returns the new :attr:`version`.
        """
        if len(images) != len(local_indices) or (masks is not None and len(masks) != len(images)):
            raise ValueError("update_images needs one image (and mask) per index")
        for n, (j, img) in enumerate(zip(local_indices, images)):
            if not 0 <= j < len(self):
                raise IndexError(f"training image {j} out of range 0..{len(self) - 1}")
            h, w = self.shapes[j]
            if tuple(img.shape) != (h, w, 3):
                raise ValueError(
                    f"update for training image {j} ({self.scene.image_names[self.indices[j]]}) "
                    f"is {tuple(img.shape)}, expected {(h, w, 3)}"
                )
            sl = slice(int(self.offsets[j]), int(self.offsets[j + 1]))
            self.rgb[sl] = img.reshape(-1, 3).to(self.rgb)
            if masks is not None and masks[n] is not None:
                self.mask[sl] = masks[n].reshape(-1).to(torch.bool)
        self._rebuild_pool()
        self.version += 1
        self._modified = True
        return self.version

    def replace(self, scene: SceneData, indices: list[int] | None = None) -> int:
        """Swap in a whole new training set (e.g. images re-read from a new folder)."""
        self._load(scene, list(range(len(scene))) if indices is None else list(indices))
        self.version += 1
        self._modified = True
        return self.version

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Version, and the pixels/masks when they differ from the scene on disk."""
        s: dict = {"version": self.version, "indices": list(self.indices)}
        if self._modified:
            s["rgb"] = self.rgb.clone()
            s["mask"] = self.mask.clone()
        return s

    def load_state_dict(self, s: dict) -> None:
        if list(s["indices"]) != list(self.indices):
            raise ValueError("checkpoint was trained on a different set of training images")
        if "rgb" in s:
            if s["rgb"].shape != self.rgb.shape:
                raise ValueError(
                    f"checkpoint dataset has {s['rgb'].shape[0]} pixels, scene has {self.rgb.shape[0]}"
                )
            self.rgb.copy_(s["rgb"])
            self.mask.copy_(s["mask"])
            self._rebuild_pool()
            self._modified = True
        self.version = int(s["version"])
