"""Pure-torch CPU ray-exact triangle rasterizer (z-buffer) for synthetic ground truth.

Each sample is a ray through a point ``(x, y, 1)`` of the camera's normalised image plane
(the *undistorted* coordinates of a pixel, so radial/OpenCV distortion is rendered exactly
through :mod:`sceneforge.core.cameras`). For a camera-space triangle ``A, B, C`` the
homogeneous edge functions ``w_A = d . (B x C)``, ``w_B = d . (C x A)``, ``w_C = d . (A x B)``
give the exact (perspective-correct) barycentrics ``w / sum(w)`` and depth
``z = det[A, B, C] / sum(w)`` of the ray's hit, with no near-plane clipping needed and no
cracks between triangles sharing an edge (the shared edge function is computed identically).

Work is vectorised over (triangle, sample) pairs taken from each triangle's bounding box
on a cell grid, in chunks; the z-test is two ``scatter_reduce`` passes (min depth, then
min face id among ties), so results are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.core.cameras import Cameras, distort, split_params, transform_points, unproject
from sceneforge.core.meshes import Mesh, limit_threads

#: Number of (triangle, sample) pairs evaluated at once.
_CHUNK_PAIRS = 1 << 20
#: Relative tolerance of the inside test (edge function / (|edge normal| |ray|)).
_INSIDE_RTOL = 1e-12
#: Slack (in cells) when mapping a normalised-plane bounding box to cells: covers rounding.
_EPS_CELLS = 1e-6


@dataclass
class RayHits:
    """Nearest hits of a batch of rays: ``face`` (-1 = miss), camera-z ``depth`` (0 = miss),
    barycentrics ``bary`` w.r.t. the face's vertices (zeros on a miss)."""

    face: Int[Tensor, " S"]
    depth: Float[Tensor, " S"]
    bary: Float[Tensor, "S 3"]


def camera_triangles(mesh: Mesh, cam_from_world: Float[Tensor, "3 4"]) -> Float[Tensor, "F 3 3"]:
    """The mesh's triangles in the camera frame (float64)."""
    vc = transform_points(cam_from_world.to(torch.float64), mesh.vertices)
    return vc[mesh.faces]


def _edge_functions(tri: Float[Tensor, "F 3 3"]) -> tuple[Tensor, Tensor]:
    a, b, c = tri.unbind(1)
    e = torch.stack(
        [torch.cross(b, c, dim=-1), torch.cross(c, a, dim=-1), torch.cross(a, b, dim=-1)], 1
    )
    det = (a * e[:, 0]).sum(-1)
    return e, det


def _normalized_bbox(tri: Float[Tensor, "F 3 3"], near: float) -> tuple[Tensor, Tensor]:
    """Bounding box ``(F, 4) = xmin, xmax, ymin, ymax`` on the plane z = 1 of the part of each
    triangle in front of ``z = near`` (exact: vertices plus near-plane edge crossings),
    and the mask of triangles with such a part."""
    z = tri[..., 2]
    front = z > near
    all_front = front.all(1)
    xy = tri[..., :2] / torch.where(front, z, torch.ones_like(z))[..., None]
    box = torch.stack(
        [xy[..., 0].amin(1), xy[..., 0].amax(1), xy[..., 1].amin(1), xy[..., 1].amax(1)], -1
    )
    crossing = (front.any(1) & ~all_front).nonzero()[:, 0]
    if crossing.numel():
        box[crossing] = _crossing_bbox(tri[crossing], near)
    return box, front.any(1)


def _crossing_bbox(tri: Float[Tensor, "F 3 3"], near: float) -> Tensor:
    """:func:`_normalized_bbox` for triangles that cross the near plane."""
    z = tri[..., 2]
    front = z > near
    pts, valid = [tri[:, i] for i in range(3)], [front[:, i] for i in range(3)]
    for i, j in ((0, 1), (1, 2), (2, 0)):
        cross = front[:, i] != front[:, j]
        dz = z[:, j] - z[:, i]
        t = torch.where(cross, (near - z[:, i]) / torch.where(cross, dz, torch.ones_like(dz)), 0.0)
        p = tri[:, i] + t[:, None] * (tri[:, j] - tri[:, i])
        p[:, 2] = torch.where(cross, torch.full_like(t, near), p[:, 2])
        pts.append(p)
        valid.append(cross)
    p = torch.stack(pts, 1)
    ok = torch.stack(valid, 1)
    zz = torch.where(ok, p[..., 2], torch.ones_like(p[..., 2]))
    xy = p[..., :2] / zz[..., None]
    inf = torch.tensor(float("inf"), dtype=tri.dtype)
    lo = torch.where(ok[..., None], xy, inf).min(1).values
    hi = torch.where(ok[..., None], xy, -inf).max(1).values
    return torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], -1)


@dataclass
class RasterView:
    """One camera as the rasterizer needs it: model, float64 params and image size."""

    model: str
    params: Tensor
    width: int
    height: int

    @classmethod
    def of(cls, cameras: Cameras, index: int) -> RasterView:
        return cls(
            cameras.model,
            cameras.params[index].to(torch.float64),
            int(cameras.width[index]),
            int(cameras.height[index]),
        )

    @property
    def distorted(self) -> bool:
        return bool((split_params(self.model, self.params)[4] != 0).any())

    def normalized_to_pixels(self, xy: Tensor) -> Tensor:
        fx, fy, cx, cy, dist = split_params(self.model, self.params)
        if self.distorted:
            xy = distort(xy, dist.expand(*xy.shape[:-1], 4))
        return torch.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], -1)

    def pixels_to_normalized(self, uv: Tensor) -> Tensor:
        d = unproject(uv, self.model, self.params.expand(*uv.shape[:-1], -1))
        return d[..., :2] / d[..., 2:]


def _grid_size(view: RasterView, scale: float) -> tuple[int, int]:
    return math.ceil(view.width * scale - 1e-9), math.ceil(view.height * scale - 1e-9)


def _pixel_bboxes(view: RasterView, nbox: Tensor, valid: Tensor) -> tuple[Tensor, float, Tensor]:
    """Pixel-space boxes ``(F, 4) = u0, u1, v0, v1`` covering normalised-plane boxes, the
    safety margin in pixels they need, and the updated validity mask."""
    if not view.distorted:
        fx, fy, cx, cy, _ = split_params(view.model, view.params)
        pix = torch.stack(
            [
                fx * nbox[:, 0] + cx,
                fx * nbox[:, 1] + cx,
                fy * nbox[:, 2] + cy,
                fy * nbox[:, 3] + cy,
            ],
            -1,
        )
        return pix, 0.0, valid
    # Distortion is only trusted inside the image's own normalised footprint: clip the box
    # to it, then bound the distorted image of the box by sampling its boundary.
    border = _image_border_normalized(view)
    lo, hi = border.min(0).values, border.max(0).values
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    bx0, bx1 = nbox[:, 0].clamp(min=lo[0]), nbox[:, 1].clamp(max=hi[0])
    by0, by1 = nbox[:, 2].clamp(min=lo[1]), nbox[:, 3].clamp(max=hi[1])
    valid = valid & (bx0 <= bx1) & (by0 <= by1)
    bx1, by1 = torch.maximum(bx0, bx1), torch.maximum(by0, by1)
    s = torch.linspace(0, 1, 9, dtype=nbox.dtype)
    xs = bx0[:, None] + s * (bx1 - bx0)[:, None]
    ys = by0[:, None] + s * (by1 - by0)[:, None]
    ring = torch.cat(
        [
            torch.stack([xs, by0[:, None].expand_as(xs)], -1),
            torch.stack([xs, by1[:, None].expand_as(xs)], -1),
            torch.stack([bx0[:, None].expand_as(ys), ys], -1),
            torch.stack([bx1[:, None].expand_as(ys), ys], -1),
        ],
        1,
    )
    pix = view.normalized_to_pixels(ring)
    box = torch.stack(
        [
            pix[..., 0].min(1).values,
            pix[..., 0].max(1).values,
            pix[..., 1].min(1).values,
            pix[..., 1].max(1).values,
        ],
        -1,
    )
    return box, 1.0, valid  # one pixel for the boundary's curvature between samples


def _cell_bboxes(
    view: RasterView, pbox: Tensor, margin_px: float, valid: Tensor, scale: float
) -> tuple[Int[Tensor, "F 4"], Tensor]:
    """Inclusive cell ranges ``x0, x1, y0, y1`` of pixel boxes on the grid of ``scale``
    cells per pixel, and the mask of boxes touching the grid."""
    wc, hc = _grid_size(view, scale)
    margin = margin_px * scale + _EPS_CELLS
    x0 = torch.floor(pbox[:, 0] * scale - margin)
    x1 = torch.floor(pbox[:, 1] * scale + margin)
    y0 = torch.floor(pbox[:, 2] * scale - margin)
    y1 = torch.floor(pbox[:, 3] * scale + margin)
    finite = torch.isfinite(x0) & torch.isfinite(x1) & torch.isfinite(y0) & torch.isfinite(y1)
    valid = valid & finite & (x1 >= 0) & (y1 >= 0) & (x0 <= wc - 1) & (y0 <= hc - 1)
    big = float(max(wc, hc))
    box = torch.stack(
        [
            x0.nan_to_num(0, 0, 0).clamp(0, wc - 1),
            x1.nan_to_num(0, big, 0).clamp(0, wc - 1),
            y0.nan_to_num(0, 0, 0).clamp(0, hc - 1),
            y1.nan_to_num(0, big, 0).clamp(0, hc - 1),
        ],
        -1,
    ).long()
    return box, valid


def _image_border_normalized(view: RasterView) -> Tensor:
    w, h = view.width, view.height
    t = torch.linspace(0, 1, 64, dtype=torch.float64)
    u, v = t * w, t * h
    border = torch.cat(
        [
            torch.stack([u, torch.zeros_like(u)], -1),
            torch.stack([u, torch.full_like(u, h)], -1),
            torch.stack([torch.zeros_like(v), v], -1),
            torch.stack([torch.full_like(v, w), v], -1),
        ]
    )
    return view.pixels_to_normalized(border)


def _query_grid(
    view: RasterView, pixels: Tensor, inside: Tensor, pbox: Tensor, margin: float, valid: Tensor
) -> tuple[float, Tensor, Tensor, Tensor]:
    """Pick the cell size for sparse queries that minimises the pair count (bounding-box
    cells enumerated + query-triangle pairs tested); returns scale, cells, boxes, mask."""
    best = None
    for scale in (1.0, 0.5, 0.25, 0.125, 0.0625):
        wc, hc = _grid_size(view, scale)
        cx = torch.floor(pixels[:, 0] * scale).clamp(0, wc - 1).long()
        cy = torch.floor(pixels[:, 1] * scale).clamp(0, hc - 1).long()
        cells = torch.where(inside, cy * wc + cx, torch.full_like(cx, -1))
        box, ok = _cell_bboxes(view, pbox, margin, valid, scale)
        counts = torch.bincount(cells[inside], minlength=wc * hc)
        sat = torch.zeros(hc + 1, wc + 1, dtype=torch.long)
        sat[1:, 1:] = counts.reshape(hc, wc).cumsum(0).cumsum(1)
        x0, x1, y0, y1 = box[ok].unbind(-1)
        in_box = sat[y1 + 1, x1 + 1] - sat[y0, x1 + 1] - sat[y1 + 1, x0] + sat[y0, x0]
        cost = int(((x1 - x0 + 1) * (y1 - y0 + 1)).sum()) + 4 * int(in_box.sum())
        if best is None or cost < best[0]:
            best = (cost, scale, cells, box, ok)
    return best[1], best[2], best[3], best[4]


def cast_rays(
    tri: Float[Tensor, "F 3 3"],
    view: RasterView,
    sample_xy: Float[Tensor, "S 2"],
    near: float,
    *,
    grid_scale: int | None = None,
    sample_pixels: Float[Tensor, "S 2"] | None = None,
) -> RayHits:
    """Nearest hit of the rays through normalised points ``sample_xy`` (camera frame).

    Either the samples are the cells of the grid of ``grid_scale`` cells per pixel in
    row-major order (rendering), or ``sample_pixels`` gives each sample's pixel position
    (sparse queries; outside the image = never hit).
    """
    s_count = sample_xy.shape[0]
    sample_xy = sample_xy.to(torch.float64)
    e_all, det_all = _edge_functions(tri)
    en_all = e_all.norm(dim=-1)
    dnorm = (sample_xy.square().sum(-1) + 1.0).sqrt()
    nbox, front = _normalized_bbox(tri, near)
    pbox, margin, valid = _pixel_bboxes(view, nbox, front)
    grid = grid_scale is not None
    if grid:
        scale = float(grid_scale)
        box, valid = _cell_bboxes(view, pbox, margin, valid, scale)
    else:
        if sample_pixels is None:
            raise ValueError("cast_rays needs grid_scale or sample_pixels")
        px = sample_pixels.to(torch.float64)
        inside = (
            (px[:, 0] >= 0) & (px[:, 0] < view.width) & (px[:, 1] >= 0) & (px[:, 1] < view.height)
        )
        inside &= torch.isfinite(px).all(-1)
        scale, sample_cell, box, valid = _query_grid(view, px, inside, pbox, margin, valid)
    wc, hc = _grid_size(view, scale)
    n_cells = wc * hc
    tri_idx = valid.nonzero()[:, 0]
    box = box[tri_idx]
    bw = box[:, 1] - box[:, 0] + 1
    bh = box[:, 3] - box[:, 2] + 1
    if grid:
        if s_count != n_cells:
            raise ValueError(f"{s_count} samples for a grid of {n_cells} cells")
        pairs_per_tri = bw * bh
    else:
        cell = torch.where(sample_cell >= 0, sample_cell, torch.full_like(sample_cell, n_cells))
        counts = torch.bincount(cell, minlength=n_cells + 1)[:n_cells]
        order = torch.argsort(cell, stable=True)
        start = torch.cumsum(counts, 0) - counts
        sat = torch.zeros(hc + 1, wc + 1, dtype=torch.long)
        sat[1:, 1:] = counts.reshape(hc, wc).cumsum(0).cumsum(1)
        x0, x1, y0, y1 = box.unbind(-1)
        in_box = sat[y1 + 1, x1 + 1] - sat[y0, x1 + 1] - sat[y1 + 1, x0] + sat[y0, x0]
        pairs_per_tri = torch.maximum(bw * bh, in_box)

    best_d = torch.full((s_count,), float("inf"), dtype=torch.float64)
    best_f = torch.full((s_count,), -1, dtype=torch.long)
    big_face = tri.shape[0] + 1
    cum = torch.cumsum(pairs_per_tri, 0)
    lo = 0
    while lo < tri_idx.shape[0]:
        base = int(cum[lo - 1]) if lo > 0 else 0
        hi = int(torch.searchsorted(cum, torch.tensor(base + _CHUNK_PAIRS), right=True))
        hi = max(hi, lo + 1)
        t_loc = torch.arange(lo, hi)
        area = (bw * bh)[t_loc]
        t_rep = torch.repeat_interleave(t_loc, area)
        local = torch.arange(t_rep.shape[0]) - torch.repeat_interleave(
            torch.cumsum(area, 0) - area, area
        )
        bw_rep = bw[t_rep]
        cx = box[t_rep, 0] + local % bw_rep
        cy = box[t_rep, 2] + local // bw_rep
        cell = cy * wc + cx
        if grid:
            s_idx = cell
        else:
            n = counts[cell]
            t_rep = torch.repeat_interleave(t_rep, n)
            first = torch.repeat_interleave(start[cell], n)
            within = torch.arange(t_rep.shape[0]) - torch.repeat_interleave(
                torch.cumsum(n, 0) - n, n
            )
            s_idx = order[first + within]
        face = tri_idx[t_rep]
        e = e_all[face]
        xy = sample_xy[s_idx]
        w = e[..., 0] * xy[:, :1] + e[..., 1] * xy[:, 1:] + e[..., 2]
        # a relative tolerance makes neighbours overlap by ~1e-12 instead of leaving
        # rounding-level cracks where a ray passes (numerically) through a shared vertex
        tol = _INSIDE_RTOL * en_all[face] * dnorm[s_idx, None]
        ssum = w.sum(-1)
        hit = (((w >= -tol).all(-1)) | ((w <= tol).all(-1))) & (ssum != 0)
        idx = hit.nonzero()[:, 0]
        s_idx, face = s_idx[idx], face[idx]
        depth = det_all[face] / ssum[idx]
        keep = depth > near
        s_idx, face, depth = s_idx[keep], face[keep], depth[keep]
        cd = torch.full((s_count,), float("inf"), dtype=torch.float64)
        cd.scatter_reduce_(0, s_idx, depth, "amin")
        win = depth == cd[s_idx]
        cf = torch.full((s_count,), big_face, dtype=torch.long)
        cf.scatter_reduce_(0, s_idx[win], face[win], "amin")
        better = cd < best_d
        best_d = torch.where(better, cd, best_d)
        best_f = torch.where(better, cf, best_f)
        lo = hi

    hit = best_f >= 0
    bary = torch.zeros(s_count, 3, dtype=torch.float64)
    depth = torch.zeros(s_count, dtype=torch.float64)
    if bool(hit.any()):
        f = best_f[hit]
        xy1 = torch.cat([sample_xy[hit], torch.ones_like(sample_xy[hit, :1])], -1)
        w = (e_all[f] @ xy1[..., None])[..., 0]
        ssum = w.sum(-1, keepdim=True)
        bary[hit] = w / ssum
        depth[hit] = det_all[f] / ssum[:, 0]
    return RayHits(best_f, depth, bary)


# ----------------------------------------------------------------------------- shading


def vertex_normals(
    vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"]
) -> Float[Tensor, "V 3"]:
    """Area-weighted unit vertex normals (zero for isolated vertices)."""
    a, b, c = vertices[faces].unbind(1)
    fn = torch.cross(b - a, c - a, dim=-1)
    vn = torch.zeros_like(vertices)
    vn.index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def face_normals(vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "F 3"]:
    a, b, c = vertices[faces].unbind(1)
    fn = torch.cross(b - a, c - a, dim=-1)
    return fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def sample_texture(
    texture: Float[Tensor, "H W 3"], uv: Float[Tensor, "N 2"]
) -> Float[Tensor, "N 3"]:
    """Bilinear lookup with wrap-around; ``uv`` has v up (OBJ convention), texel centres at
    ``(i + 0.5) / size``."""
    h, w = texture.shape[:2]
    x = uv[:, 0].to(torch.float64) * w - 0.5
    y = (1.0 - uv[:, 1].to(torch.float64)) * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).float()[:, None], (y - y0).float()[:, None]
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    flat = texture.reshape(-1, 3)
    return (
        flat[y0 * w + x0] * (1 - fx) * (1 - fy)
        + flat[y0 * w + x1] * fx * (1 - fy)
        + flat[y1 * w + x0] * (1 - fx) * fy
        + flat[y1 * w + x1] * fx * fy
    )


@dataclass
class Shading:
    """Deterministic, view-independent shading: ``albedo * (ambient + diffuse |n . l|)``.

    Attributes:
        mode: "lambert" (as above) or "albedo" (no lighting).
        ambient: ambient term.
        diffuse: diffuse term.
        light_dir: world direction towards the (directional) light.
    """

    mode: str = "lambert"
    ambient: float = 0.45
    diffuse: float = 0.55
    light_dir: tuple[float, float, float] = (0.35, -0.45, 0.82)


def albedo(mesh: Mesh, face: Int[Tensor, " N"], bary: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Surface colour (before lighting) at points given by face ids and barycentrics."""
    out = torch.ones(face.shape[0], 3, dtype=torch.float32)
    corner = mesh.faces[face]
    b = bary.to(torch.float64)[..., None]
    mat_idx = mesh.face_material[face]
    for m_id in torch.unique(mat_idx).tolist():
        sel = (mat_idx == m_id).nonzero()[:, 0]
        mat = mesh.materials[m_id]
        col = mat.color.float().expand(sel.shape[0], 3).clone()
        if mat.texture is not None and mesh.uv is not None:
            uv = (mesh.uv[corner[sel]].to(torch.float64) * b[sel]).sum(1)
            col = col * sample_texture(mat.texture, uv)
        elif mat.noise_seed is not None:
            p = (mesh.solid_texture_coords()[corner[sel]] * b[sel]).sum(1)
            col = col * mesh.noise_lattice(m_id).lookup(p)
        out[sel] = col
    if mesh.vertex_colors is not None:
        out = out * (mesh.vertex_colors[corner].float() * bary.float()[..., None]).sum(1)
    return out


def shade(
    mesh: Mesh,
    face: Int[Tensor, " N"],
    bary: Float[Tensor, "N 3"],
    shading: Shading,
    normals: Float[Tensor, "V 3"] | None = None,
) -> Float[Tensor, "N 3"]:
    """Shaded colour in [0, 1] at surface points (face id + barycentrics)."""
    col = albedo(mesh, face, bary)
    if shading.mode == "albedo":
        return col.clamp(0, 1)
    if shading.mode != "lambert":
        raise ValueError(f"unknown shading mode {shading.mode!r}; use 'lambert' or 'albedo'")
    if normals is None:
        normals = vertex_normals(mesh.vertices, mesh.faces)
    n = (normals[mesh.faces[face]] * bary.to(torch.float64)[..., None]).sum(1)
    bad = n.norm(dim=-1) < 1e-8
    if bool(bad.any()):
        n[bad] = face_normals(mesh.vertices, mesh.faces[face[bad]].reshape(-1, 3))
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    light = torch.tensor(shading.light_dir, dtype=torch.float64)
    light = light / light.norm()
    lam = (n @ light).abs().float()
    return (col * (shading.ambient + shading.diffuse * lam)[:, None]).clamp(0, 1)


# ----------------------------------------------------------------------------- images


@dataclass
class RenderOutput:
    """One rendered view. ``face`` (-1 = background), ``bary`` and ``depth`` (z, 0 = none)
    are taken at pixel centres; ``color`` is the mean over the supersamples."""

    color: Float[Tensor, "H W 3"]
    depth: Float[Tensor, "H W"]
    face: Int[Tensor, "H W"]
    bary: Float[Tensor, "H W 3"]


@limit_threads
def render_view(
    mesh: Mesh,
    cameras: Cameras,
    index: int,
    *,
    ssaa: int = 1,
    near: float = 1e-3,
    shading: Shading | None = None,
    background=(0.0, 0.0, 0.0),
    normals: Float[Tensor, "V 3"] | None = None,
) -> RenderOutput:
    """Render view ``index`` of ``cameras``: z-buffered, textured, optionally supersampled.

    ``ssaa`` must be odd so that the centre supersample is the pixel centre, where depth,
    face ids and barycentrics are reported exactly.
    """
    if ssaa < 1 or ssaa % 2 == 0:
        raise ValueError(f"ssaa must be an odd positive integer, got {ssaa}")
    shading = shading or Shading()
    view = RasterView.of(cameras, index)
    h, w, s = view.height, view.width, ssaa
    tri = camera_triangles(mesh, cameras.cam_from_world[index])
    vv, uu = torch.meshgrid(
        (torch.arange(h * s, dtype=torch.float64) + 0.5) / s,
        (torch.arange(w * s, dtype=torch.float64) + 0.5) / s,
        indexing="ij",
    )
    uv = torch.stack([uu, vv], -1).reshape(-1, 2)
    xy = view.pixels_to_normalized(uv)
    hits = cast_rays(tri, view, xy, near, grid_scale=s)
    bg = torch.as_tensor(background, dtype=torch.float32)
    color = bg.expand(uv.shape[0], 3).clone()
    hit = hits.face >= 0
    if bool(hit.any()):
        color[hit] = shade(mesh, hits.face[hit], hits.bary[hit], shading, normals)
    color = color.reshape(h, s, w, s, 3).mean((1, 3))
    c = s // 2
    face = hits.face.reshape(h, s, w, s)[:, c, :, c]
    depth = hits.depth.reshape(h, s, w, s)[:, c, :, c]
    bary = hits.bary.reshape(h, s, w, s, 3)[:, c, :, c]
    return RenderOutput(color, depth, face, bary)


@limit_threads
def cast_points(
    mesh: Mesh,
    cameras: Cameras,
    index: int,
    points_world: Float[Tensor, "N 3"],
    near: float = 1e-3,
) -> tuple[Float[Tensor, "N 2"], Float[Tensor, " N"], RayHits]:
    """Project world points into view ``index`` and cast the exact ray to each one.

    Returns pixels (via :meth:`Cameras.project`), the points' camera-z depth and the nearest
    hit along each point's ray (face -1 where the point is outside the image or behind).
    """
    view = RasterView.of(cameras, index)
    cam = cameras[index].to(dtype=torch.float64)
    pix, z = cam.project(points_world.to(torch.float64))
    pix, z = pix[0], z[0]
    pc = transform_points(cam.cam_from_world[0], points_world.to(torch.float64))
    xy = pc[:, :2] / torch.where(z > 0, z, torch.ones_like(z))[:, None]
    inside = (
        (z > near)
        & (pix[:, 0] >= 0)
        & (pix[:, 0] < view.width)
        & (pix[:, 1] >= 0)
        & (pix[:, 1] < view.height)
        & torch.isfinite(pix).all(-1)
    )
    if view.distorted:
        # beyond the distortion's fold-over, far-off-axis points can "project" into the
        # image; keep only points whose pixel undistorts back to them (what is rendered)
        back = view.pixels_to_normalized(torch.where(inside[:, None], pix, torch.zeros_like(pix)))
        inside &= (back - xy).norm(dim=-1) <= 1e-7 * (1.0 + xy.norm(dim=-1))
    pix_q = torch.where(inside[:, None], pix, torch.full_like(pix, -1.0))
    tri = camera_triangles(mesh, cam.cam_from_world[0])
    hits = cast_rays(tri, view, xy, near, sample_pixels=pix_q)
    return pix, z, hits


@limit_threads
def cast_pixels(
    mesh: Mesh,
    cameras: Cameras,
    index: int,
    pixels: Float[Tensor, "N 2"],
    near: float = 1e-3,
) -> RayHits:
    """Exact nearest hits of the rays through arbitrary (sub)pixel positions of view ``index``
    (pixels outside the image miss)."""
    view = RasterView.of(cameras, index)
    pixels = pixels.to(torch.float64)
    inside = (
        (pixels[:, 0] >= 0)
        & (pixels[:, 0] < view.width)
        & (pixels[:, 1] >= 0)
        & (pixels[:, 1] < view.height)
    )
    pixels = torch.where(inside[:, None], pixels, torch.full_like(pixels, -1.0))
    xy = view.pixels_to_normalized(pixels)
    tri = camera_triangles(mesh, cameras.cam_from_world[index])
    return cast_rays(tri, view, xy, near, sample_pixels=pixels)
