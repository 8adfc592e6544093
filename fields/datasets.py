"""The training set as a replaceable, partly-updatable pool of rays.

:class:`RayDataset` holds the training images of a :class:`SceneData` at the working
resolution as one flat ``uint8`` RGB tensor (3 bytes per pixel) plus, only when some pixel is
not usable, a bit-packed usable-pixel mask with a small rank index (1/4 byte per pixel). Rays
are never stored: every batch computes its rays from the cameras
(:meth:`~sceneforge.core.cameras.Cameras.rays_at`), so memory grows with the batch and the
model, not with the number of pixels. Batches are drawn uniformly from usable pixels with an
explicit ``torch.Generator``: the ``k``-th usable pixel is found through the rank index, so the
draws (and ``RayBatch.pixel_idx``) are the same as those of the former per-pixel index list.
:meth:`RayDataset.update_images` / :meth:`RayDataset.replace` change the pixels while training
(the dataset update used by completion and stylization) and bump :attr:`RayDataset.version`;
the next :meth:`RayDataset.sample` uses the new data.

:func:`working_downscale` picks the working resolution as nerfstudio's data parsers do and
:func:`check_dataset_memory` refuses, before anything is loaded, a training set that does not
fit its memory budget (naming a downscale that would).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData, SceneDataError

_log = logging.getLogger("sceneforge")


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


def working_downscale(
    cameras: Cameras, downscale: int = 1, max_long_side: int = 1600, log: bool = False
) -> int:
    """The working (training) downscale of ``cameras``' images.

    ``downscale`` > 1 is kept as given; at 1, the smallest power of two that brings the longest
    image side to at most ``max_long_side`` pixels (nerfstudio's data parsers' rule, 1600 px);
    ``max_long_side`` <= 0 keeps full size. With ``log`` the working resolution is logged
    (a warning when the cap lowered it).
    """
    given = max(int(downscale), 1)
    f = given
    if given == 1 and max_long_side > 0 and len(cameras) > 0:
        long_side = int(torch.maximum(cameras.width, cameras.height).max())
        while long_side / f > max_long_side:
            f *= 2
    if log and len(cameras) > 0:
        i = int(torch.argmax(cameras.width * cameras.height))
        size = f"{int(cameras.width[i]) // f}x{int(cameras.height[i]) // f}"
        if f != given:
            _log.warning(
                "working resolution %s (downscale %d: longest side capped at %d px; "
                "--trainer.max-long-side 0 or --trainer.downscale N to choose)",
                size,
                f,
                max_long_side,
            )
        else:
            _log.info("working resolution %s (downscale %d)", size, f)
    return f


def dataset_budget(memory_gb: float) -> int:
    """Bytes the training images may take for ``TrainerConfig.dataset_memory_gb``: half of the
    physical memory at 0, none (0 = no check) when negative."""
    if memory_gb < 0:
        return 0
    if memory_gb == 0:
        return physical_memory_bytes() // 2
    return int(memory_gb * 1024**3)


def dataset_bytes(cameras: Cameras, downscale: int, masks: bool = False) -> int:
    """Bytes :class:`RayDataset` keeps for ``cameras``' images at ``downscale``: 3 per pixel
    (``uint8`` RGB), plus 1/4 per pixel with usable-pixel masks."""
    px = int(((cameras.width // downscale) * (cameras.height // downscale)).sum())
    return 3 * px + (px // 4 + 64 if masks else 0)


def physical_memory_bytes() -> int:
    """This machine's physical memory (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 0


def check_dataset_memory(
    cameras: Cameras, downscale: int, max_bytes: int, masks: bool = False
) -> None:
    """Raise a :class:`SceneDataError` naming the sizes, the budget and the smallest downscale
    that fits when the images at ``downscale`` need more than ``max_bytes`` (<= 0: no check).
    Uses the cameras' sizes only (nothing is loaded or measured)."""
    need = dataset_bytes(cameras, downscale, masks)
    if max_bytes <= 0 or need <= max_bytes:
        return
    fits = downscale
    while dataset_bytes(cameras, fits, masks) > max_bytes and fits < 1024:
        fits += 1
    i = int(torch.argmax(cameras.width * cameras.height))
    w, h = int(cameras.width[i]), int(cameras.height[i])
    gb = 1024**3
    raise SceneDataError(
        f"the {len(cameras)} training images need {need / gb:.2f} GB at {w // downscale}x"
        f"{h // downscale} (downscale {downscale}), more than the {max_bytes / gb:.2f} GB "
        f"allowed (trainer.dataset_memory_gb); downscale {fits} ({w // fits}x{h // fits}, "
        f"{dataset_bytes(cameras, fits, masks) / gb:.2f} GB) would fit: "
        f"--trainer.downscale {fits}"
    )


def to_uint8(img: Float[Tensor, "... 3"]) -> Tensor:
    """``[0, 1]`` floats to ``uint8`` (rounded; 8-bit images round-trip exactly)."""
    return (img.float() * 255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


_SHIFTS = torch.arange(8, dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)
_BLOCK = 64
"""Pixels per block of the rank index (8 packed bytes)."""


def pack_bits(bits: Bool[Tensor, " N"]) -> Tensor:
    """Bits to bytes, little-endian within a byte (``N`` a multiple of 8)."""
    b = bits.reshape(-1, 8).to(torch.uint8) << _SHIFTS
    return b.sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor) -> Bool[Tensor, " N"]:
    """Inverse of :func:`pack_bits` (``8 * len(packed)`` bits, also for ``(..., K)`` bytes)."""
    return ((packed[..., None] >> _SHIFTS) & 1).bool().flatten(-2)


class RayDataset:
    """Training rays of some images of a scene, replaceable while training.

    Args:
        scene: the scene; ``indices`` selects the training images (default: all).
        downscale: integer image downscale factor (see :func:`working_downscale`).
        use_masks: draw rays only from usable (mask True) pixels.
        max_bytes: refuse (before loading) images that need more memory than this
            (:func:`check_dataset_memory`; None or <= 0: no check).
    """

    def __init__(
        self,
        scene: SceneData,
        indices: list[int] | None = None,
        downscale: int = 1,
        use_masks: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        self.downscale, self.use_masks = int(downscale), use_masks
        self.max_bytes = max_bytes
        self.version = 0
        self._modified = False
        self._load(scene, list(range(len(scene))) if indices is None else list(indices))

    # -- building -----------------------------------------------------------------------------

    def _load(self, scene: SceneData, indices: list[int]) -> None:
        if not indices:
            raise SceneDataError("the training set is empty")
        ds = self.downscale
        cams = scene.cameras[indices]
        has_masks = self.use_masks and scene.has_masks
        check_dataset_memory(cams, ds, self.max_bytes or 0, has_masks)
        self.scene, self.indices, self.cameras = scene, indices, cams
        hs, ws = (cams.height // ds).tolist(), (cams.width // ds).tolist()
        self.shapes = list(zip(hs, ws))
        sizes = torch.tensor([h * w for h, w in self.shapes], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        total = int(self.offsets[-1])
        self._rgb8 = torch.empty(total, 3, dtype=torch.uint8)
        self._bits: Tensor | None = None
        self._nbits = (total // _BLOCK + 1) * _BLOCK  # >= 1 padding bit: rank(total) is valid
        for j, i in enumerate(indices):
            img = downscale_image(scene.load_image(i), ds)
            h, w = self.shapes[j]
            if tuple(img.shape[:2]) != (h, w):
                raise SceneDataError(
                    f"{scene.image_names[i]}: {img.shape[0]}x{img.shape[1]} pixels after "
                    f"downscale but {h * w} rays"
                )
            self._rgb8[self.pixel_range(j)] = to_uint8(img.reshape(-1, 3))
            m = scene.load_mask(i) if self.use_masks else None
            if m is not None:
                self._write_mask(j, downscale_mask(m, ds))
        self._rebuild_pool()

    def _write_mask(self, j: int, m: Bool[Tensor, "h w"]) -> None:
        """Set the usable bits of view ``j`` (the packed mask is created on the first False)."""
        m = m.reshape(-1).to(torch.bool)
        if self._bits is None:
            if bool(m.all()):
                return
            total = int(self.offsets[-1])
            self._bits = torch.full((self._nbits // 8,), 255, dtype=torch.uint8)
            pad = torch.zeros(self._nbits - total, dtype=torch.bool)
            self._set_bits(total, pad)
        self._set_bits(int(self.offsets[j]), m)

    def _set_bits(self, start: int, bits: Bool[Tensor, " N"]) -> None:
        lo, hi = start // 8, -(-(start + bits.numel()) // 8)
        cur = unpack_bits(self._bits[lo:hi])
        cur[start - 8 * lo : start - 8 * lo + bits.numel()] = bits
        self._bits[lo:hi] = pack_bits(cur)

    def _rebuild_pool(self) -> None:
        """The rank index of the usable pixels and the usable pixels per view."""
        if self._bits is None:
            self._cum = None
            self._usable = self.offsets[1:] - self.offsets[:-1]
        else:
            blocks = self._bits.view(-1, _BLOCK // 8)
            counts = torch.cat(
                [
                    _POPCOUNT[blocks[s : s + (1 << 20)].long()].sum(1)
                    for s in range(0, blocks.shape[0], 1 << 20)
                ]
            )
            self._cum = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
            r = self._rank(self.offsets)
            self._usable = r[1:] - r[:-1]
        if int(self._usable.sum()) == 0:
            raise SceneDataError("no usable pixel in the training set (all masks are False)")

    def _rank(self, x: Int[Tensor, " N"]) -> Int[Tensor, " N"]:
        """Number of usable pixels before flat index ``x``."""
        blk = x // _BLOCK
        bits = unpack_bits(self._bits.view(-1, _BLOCK // 8)[blk])
        before = torch.arange(_BLOCK) < (x % _BLOCK)[:, None]
        return self._cum[blk] + (bits & before).sum(1)

    def _select(self, k: Int[Tensor, " B"]) -> Int[Tensor, " B"]:
        """Flat index of the ``k``-th (0-based) usable pixel."""
        if self._cum is None:
            return k
        out = []
        for s in range(0, k.numel(), 1 << 16):
            kk = k[s : s + (1 << 16)]
            blk = torch.searchsorted(self._cum, kk, right=True) - 1
            cs = unpack_bits(self._bits.view(-1, _BLOCK // 8)[blk]).cumsum(1)
            out.append(blk * _BLOCK + (cs <= (kk - self._cum[blk])[:, None]).sum(1))
        return torch.cat(out) if out else k

    def _usable_at(self, p: Int[Tensor, " B"]) -> Bool[Tensor, " B"]:
        if self._bits is None:
            return torch.ones(p.shape, dtype=torch.bool)
        return ((self._bits[p // 8] >> (p % 8).to(torch.uint8)) & 1).bool()

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_rays(self) -> int:
        """Usable pixels of the training set."""
        return int(self._usable.sum())

    @property
    def num_pixels(self) -> int:
        """All pixels of the training set (usable or not)."""
        return int(self.offsets[-1])

    def nbytes(self) -> int:
        """Bytes of the tensors the dataset keeps (images, packed masks, index)."""
        ts = [self._rgb8, self.offsets, self._usable, self._bits, self._cum]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    # -- sampling ----------------------------------------------------------------------------

    def _batch(self, p: Int[Tensor, " B"], patches: PatchLayout | None = None) -> RayBatch:
        """The dataset pixels ``p`` as a batch with rays from the cameras (patch batches also
        carry the usable mask)."""
        view = torch.searchsorted(self.offsets, p, right=True) - 1
        local = p - self.offsets[view]
        w = self.cameras.width[view] // self.downscale
        dt = self.cameras.dtype
        pix = torch.stack([(local % w).to(dt) + 0.5, (local // w).to(dt) + 0.5], -1)
        o, d, z = self.cameras.rays_at(view, pix * self.downscale)
        return RayBatch(
            o.float(),
            d.float(),
            self._rgb8[p].float() / 255.0,
            view,
            p,
            z.float(),
            patches,
            None if patches is None else self._usable_at(p),
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> RayBatch:
        """``batch_size`` usable rays drawn uniformly with replacement."""
        k = torch.randint(self.num_rays, (batch_size,), generator=generator)
        return self._batch(self._select(k))

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
        usable = self._usable.double() * fits.double()
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
        usable = (self._usable > 0).double()
        return self._views_batch(torch.multinomial(usable, 1, generator=generator))

    def sample_views(self, k: int, generator: torch.Generator) -> RayBatch:
        """``k`` distinct whole training views as a ``k``-patch batch (``k`` = 1:
        :meth:`sample_view`, the same draw); several views need one image size."""
        if k == 1:
            return self.sample_view(generator)
        usable = (self._usable > 0).double()
        n_usable = int((usable > 0).sum())
        if k < 1 or k > n_usable:
            raise ValueError(
                f"{k} views per step, but {n_usable} training views have usable pixels: "
                "lower --trainer.views-per-step"
            )
        if len(set(self.shapes)) > 1:
            raise ValueError(
                f"{k} views per step need training views of one size; these have "
                f"{len(set(self.shapes))} sizes (e.g. {sorted(set(self.shapes))[:3]}): use "
                "--trainer.views-per-step 1 (one process) or --trainer.batch patches"
            )
        return self._views_batch(
            torch.multinomial(usable, k, replacement=False, generator=generator)
        )

    def _views_batch(self, views: Int[Tensor, " V"]) -> RayBatch:
        """Training views ``views`` (of one size) whole, as a ``V``-patch batch."""
        h, w = self.shapes[int(views[0])]
        p = torch.cat([torch.arange(int(self.offsets[j]), int(self.offsets[j + 1])) for j in views])
        rays = [self.rays(int(j)) for j in views]
        zero = torch.zeros(len(views), dtype=torch.long)
        return RayBatch(
            torch.cat([r[0] for r in rays]),
            torch.cat([r[1] for r in rays]),
            self._rgb8[p].float() / 255.0,
            views.repeat_interleave(h * w),
            p,
            torch.cat([r[2] for r in rays]),
            PatchLayout(views, zero, zero, h, w),
            self._usable_at(p),
        )

    def border_color(self) -> Float[Tensor, " 3"]:
        """Median colour of the usable border pixels of all images (background initialisation);
        read from the ``uint8`` pixels in place (no per-view float copies)."""

        def views():
            for j in range(len(self)):
                h, w = self.shapes[j]
                yield self._rgb8[self.pixel_range(j)].view(h, w, 3), self.image_mask(j)

        c = border_color(views())
        return c.float() / 255.0 if c.dtype == torch.uint8 else c

    def image(self, j: int) -> Float[Tensor, "h w 3"]:
        """Current pixels of training image ``j`` (after any update) as floats in ``[0, 1]``
        (a new tensor: the dataset keeps ``uint8``)."""
        h, w = self.shapes[j]
        return self._rgb8[self.pixel_range(j)].view(h, w, 3).float() / 255.0

    def image_mask(self, j: int) -> Bool[Tensor, "h w"]:
        """Usable pixels of training image ``j`` (a new tensor)."""
        h, w = self.shapes[j]
        if self._bits is None:
            return torch.ones(h, w, dtype=torch.bool)
        start = int(self.offsets[j])
        lo, hi = start // 8, -(-(start + h * w) // 8)
        return unpack_bits(self._bits[lo:hi])[start - 8 * lo : start - 8 * lo + h * w].view(h, w)

    def pixel_range(self, j: int) -> slice:
        """The flat pixel indices (``RayBatch.pixel_idx``) of training image ``j``."""
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def rays(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        """Origins, directions and ``z_per_t`` of training image ``j`` (row-major), computed
        from its camera."""
        o, d, z = scene_rays(self.scene.cameras, self.indices[j], self.downscale)
        return o.contiguous(), d, z

    # -- updates -----------------------------------------------------------------------------

    def update_images(
        self,
        local_indices: list[int],
        images: list[Float[Tensor, "h w 3"]],
        masks: list[Bool[Tensor, "h w"] | None] | None = None,
    ) -> int:
        """Replace the pixels (and optionally the masks) of some training images.

        ``local_indices`` index the training set (0..len-1); images are float in [0, 1] at the
        dataset's resolution and are stored as ``uint8`` (quantised to 1/255, as 8-bit image
        files are; :meth:`image` returns the quantised pixels). Returns the new :attr:`version`.
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
            self._rgb8[self.pixel_range(j)] = to_uint8(img.detach().cpu().reshape(-1, 3))
            if masks is not None and masks[n] is not None:
                if tuple(masks[n].shape) != (h, w):
                    raise ValueError(f"mask for training image {j} is not {h}x{w}")
                self._write_mask(j, masks[n].cpu())
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
        """Version, and the pixels (``uint8``) / packed masks when they differ from the scene
        on disk."""
        s: dict = {"version": self.version, "indices": list(self.indices)}
        if self._modified:
            s["rgb8"] = self._rgb8.clone()
            if self._bits is not None:
                s["mask_bits"] = self._bits.clone()
        return s

    def load_state_dict(self, s: dict) -> None:
        """Restore :meth:`state_dict` (also the former float ``rgb`` / bool ``mask`` form)."""
        if list(s["indices"]) != list(self.indices):
            raise ValueError("checkpoint was trained on a different set of training images")
        if "rgb8" in s or "rgb" in s:
            rgb = s["rgb8"] if "rgb8" in s else to_uint8(s["rgb"])
            if rgb.shape != self._rgb8.shape:
                raise ValueError(
                    f"checkpoint dataset has {rgb.shape[0]} pixels, scene has {self._rgb8.shape[0]}"
                )
            self._rgb8.copy_(rgb)
            self._bits = None
            if "mask_bits" in s:
                self._bits = s["mask_bits"].clone()
            elif "mask" in s:
                for j in range(len(self)):
                    self._write_mask(j, s["mask"][self.pixel_range(j)])
            self._rebuild_pool()
            self._modified = True
        self.version = int(s["version"])
