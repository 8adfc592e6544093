"""Synthetic scenes: renders checked against the camera module, exact correspondences,
occlusion, determinism, mesh loading."""

from __future__ import annotations

import math

import pytest
import torch

from sceneforge.core.cameras import Cameras, pixel_centers, transform_points, unproject
from sceneforge.core.meshes import (
    Material,
    Mesh,
    box_mesh,
    grid_patch,
    load_mesh,
    merge_meshes,
    solid_noise,
    sphere_mesh,
)
from sceneforge.core.raster import cast_pixels, render_view
from sceneforge.core.synthetic import (
    SyntheticSceneConfig,
    depth_to_points,
    look_at,
    make_cameras,
    make_scene,
    observe_points,
    pixel_correspondences,
    room_scene,
    turntable_scene,
)

MESHES = {
    "spider.obj": True,
    "boxtextured/BoxTextured.glb": True,
    "duck/duck.dae": True,
    "Wuson.ply": False,
    "WusonOBJ.obj": False,
    "glmark2/bunny.obj": False,
}


def _camera(model="PINHOLE", dist=(), w=48, h=40, eye=(0.3, -4.0, 0.5), target=(0.0, 0.0, 0.0)):
    T = look_at(
        torch.tensor([eye], dtype=torch.float64), torch.tensor([target], dtype=torch.float64)
    )
    return make_cameras(T, w, h, 45.0, model, dist)


def _surface_on_pixel_rays(cams: Cameras, stride: int = 4) -> tuple[Mesh, Tensor, Tensor, Tensor]:
    """A bumpy grid mesh whose vertices lie on the rays of chosen pixel centres."""
    h, w = int(cams.height[0]), int(cams.width[0])
    pix = pixel_centers(h, w, dtype=torch.float64)[::stride, ::stride]  # (gh, gw, 2)
    gh, gw = pix.shape[:2]
    u, v = pix[..., 0], pix[..., 1]
    depth = 3.0 + 0.4 * torch.sin(u / 7.0) * torch.cos(v / 5.0)
    rays = unproject(pix.reshape(-1, 2), cams.model, cams.params[0].expand(gh * gw, -1))
    pts_cam = rays * depth.reshape(-1, 1)
    verts = transform_points(cams.world_from_cam[0], pts_cam)
    idx = torch.arange(gh * gw).reshape(gh, gw)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat(
        [torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)]
    )
    mat = Material(noise_seed=1)
    return Mesh(verts, faces, materials=[mat]), pix.reshape(-1, 2), depth.reshape(-1), verts


Tensor = torch.Tensor
SW, SH = 80, 64  # size of the shared procedural scene


@pytest.mark.parametrize(
    "model,dist",
    [("PINHOLE", ()), ("SIMPLE_RADIAL", (-0.15,)), ("OPENCV", (-0.1, 0.02, 0.003, -0.002))],
)
def test_depth_at_vertex_pixels_equals_camera_z(model, dist):
    cams = _camera(model, dist)
    mesh, pix, depth, verts = _surface_on_pixel_rays(cams)
    out = render_view(mesh, cams, 0)
    col = (pix[:, 0] - 0.5).long()
    row = (pix[:, 1] - 0.5).long()
    # interior vertices (on the mesh border a rounding error may put the ray just outside)
    gh, gw = len(set(row.tolist())), len(set(col.tolist()))
    interior = torch.zeros(gh, gw, dtype=torch.bool)
    interior[1:-1, 1:-1] = True
    interior = interior.reshape(-1)
    torch.testing.assert_close(out.depth[row, col][interior], depth[interior], rtol=1e-9, atol=0)
    assert (out.face[row, col][interior] >= 0).all()
    # and the camera module agrees on where those vertices project
    proj, z = cams.project(verts)
    torch.testing.assert_close(proj[0], pix, rtol=0, atol=1e-8)
    torch.testing.assert_close(z[0], depth, rtol=1e-12, atol=0)


@pytest.mark.parametrize("model,dist", [("PINHOLE", ()), ("OPENCV", (-0.12, 0.03, 0.002, 0.001))])
def test_unprojected_depth_lies_on_box_surface(model, dist):
    half = torch.tensor([0.6, 0.4, 0.5], dtype=torch.float64)
    mesh = box_mesh(tuple((2 * half).tolist()), seed=3, subdivisions=3)
    cams = _camera(model, dist, w=56, h=48, eye=(2.0, -3.0, 1.6))
    out = render_view(mesh, cams, 0)
    hit = out.depth > 0
    assert 300 < int(hit.sum()) < 56 * 48  # the box is in view and does not fill it
    pix = pixel_centers(48, 56, dtype=torch.float64)[hit]
    rays = unproject(pix, cams.model, cams.params[0].expand(pix.shape[0], -1))
    pts = transform_points(cams.world_from_cam[0], rays * out.depth[hit][:, None])
    on_surface = (pts.abs() / half).max(-1).values
    torch.testing.assert_close(on_surface, torch.ones_like(on_surface), rtol=0, atol=1e-9)
    # pixels that miss the box really miss it: their rays pass outside the box
    miss_pix = pixel_centers(48, 56, dtype=torch.float64)[~hit]
    d = unproject(miss_pix, cams.model, cams.params[0].expand(miss_pix.shape[0], -1))
    o = cams.centers[0]
    dirs = (cams.world_from_cam[0, :, :3] @ d.T).T
    # slab test: the ray enters the shrunken box iff max of entries < min of exits
    shrunk = half * (1 - 1e-6)
    t1, t2 = (-shrunk - o) / dirs, (shrunk - o) / dirs
    t_in = torch.minimum(t1, t2).max(-1).values
    t_out = torch.maximum(t1, t2).min(-1).values
    assert not ((t_in < t_out) & (t_out > 0)).any()


def test_no_cracks_and_near_plane_crossing():
    """A jittered, finely tessellated floor passing under and behind the camera covers the
    view without holes, including triangles that cross the camera plane."""
    mat = Material(noise_seed=5, noise_frequency=0.5)
    floor = grid_patch((-10.0, -10.0, 0.0), (20.0, 0, 0), (0, 20.0, 0), 24, 24, mat)
    g = torch.Generator().manual_seed(0)
    floor.vertices[:, :2] += 0.1 * (
        torch.rand(floor.vertices.shape[0], 2, generator=g, dtype=torch.float64) - 0.5
    )
    wall = grid_patch((-10.0, 10.0, 0.0), (20.0, 0, 0), (0, 0, 10.0), 20, 10, mat)
    mesh = merge_meshes([floor, wall])
    cams = _camera(w=40, h=32, eye=(0.0, 0.0, 1.0), target=(0.0, 3.0, 0.2))
    out = render_view(mesh, cams, 0, near=1e-3)
    assert (out.face >= 0).all()
    # floor pixels: exact ray-plane depth
    pix = pixel_centers(32, 40, dtype=torch.float64).reshape(-1, 2)
    d_cam = unproject(pix, cams.model, cams.params[0].expand(pix.shape[0], -1))
    d_world = (cams.world_from_cam[0, :, :3] @ d_cam.T).T
    t_floor = -1.0 / d_world[:, 2]  # camera at z = 1, floor z = 0; t along z-normalised ray = depth
    t_wall = (10.0 - 0.0) / d_world[:, 1]
    expect = torch.where((t_floor > 0) & (t_floor < t_wall), t_floor, t_wall).reshape(32, 40)
    torch.testing.assert_close(out.depth, expect, rtol=1e-9, atol=0)


def test_observations_match_camera_projection_and_respect_occlusion():
    front = box_mesh((1.0, 0.2, 1.0), seed=1).with_object_id(0)
    hidden = (
        box_mesh((0.3, 0.3, 0.3), seed=2).transformed(translation=(0.0, 1.0, 0.0)).with_object_id(1)
    )
    mesh = merge_meshes([front, hidden])
    cams = _camera(w=64, h=64, eye=(0.0, -4.0, 0.0), target=(0.0, 0.0, 0.0))
    pts_front = torch.tensor([[0.1, -0.1, 0.2], [-0.3, -0.1, -0.25]], dtype=torch.float64)
    pts_hidden = torch.tensor([[0.0, 0.85, 0.0], [0.1, 0.85, -0.1]], dtype=torch.float64)
    pts_back = torch.tensor([[0.05, 1.15, 0.02]], dtype=torch.float64)  # far face of hidden box
    pts = torch.cat([pts_front, pts_hidden, pts_back])
    obs = observe_points(mesh, cams, pts, near=1e-3)
    assert sorted(obs.point_idx.tolist()) == [0, 1]
    proj, _ = cams.project(pts)
    torch.testing.assert_close(obs.xy, proj[0, obs.point_idx], rtol=0, atol=0)
    # from the other side only the far face of the small box is seen: the front box's
    # points are behind it or behind the front box itself
    cams2 = _camera(w=64, h=64, eye=(0.0, 4.0, 0.0), target=(0.0, 0.0, 0.0))
    obs2 = observe_points(mesh, cams2, pts, near=1e-3)
    assert sorted(obs2.point_idx.tolist()) == [4]
    # without the occluders every point in the field of view is observed
    obs3 = observe_points(merge_meshes([hidden]), cams, pts[2:4], near=1e-3)
    assert sorted(obs3.point_idx.tolist()) == [0, 1]


def _depth_agreement(depth: Tensor, xy: Tensor, z: Tensor) -> tuple[float, int]:
    """Fraction of points whose depth matches the map at their pixel, among points whose
    3x3 neighbourhood in the map is smooth (within 5%) and all on geometry."""
    d = depth.double()
    pad = torch.nn.functional.pad(d[None, None], (1, 1, 1, 1))[0, 0]
    col, row = xy[:, 0].long(), xy[:, 1].long()
    nb = torch.stack([pad[row + a, col + b] for a in range(3) for b in range(3)], -1)
    smooth = (nb.min(-1).values > 0) & (nb.max(-1).values < 1.05 * nb.min(-1).values)
    rel = (d[row, col] - z).abs() / z
    n = int(smooth.sum())
    return (float((rel[smooth] < 0.05).float().mean()) if n else 0.0), n


@pytest.fixture(scope="module")
def objects_scene():
    cfg = SyntheticSceneConfig(num_views=5, width=SW, height=SH, seed=3, num_points=600)
    return make_scene(cfg)


def test_scene_observations_are_exact_projections(objects_scene):
    sd = objects_scene
    obs = sd.observations
    assert len(obs) > 200
    proj, z = sd.cameras.project(sd.points)
    torch.testing.assert_close(obs.xy, proj[obs.image_idx, obs.point_idx], rtol=0, atol=1e-12)
    assert (z[obs.image_idx, obs.point_idx] > 0).all()
    # observed points match the depth map where it is smooth around them
    for i in range(len(sd)):
        sel = obs.image_idx == i
        agree, n = _depth_agreement(sd.depths[i], obs.xy[sel], z[i, obs.point_idx[sel]])
        assert n > 20 and agree > 0.98
    # points are on the mesh: barycentric reconstruction
    mesh = sd.metadata["mesh"]
    tri = mesh.vertices[mesh.faces[sd.metadata["point_faces"]]]
    recon = (tri * sd.metadata["point_bary"][..., None]).sum(1)
    torch.testing.assert_close(recon, sd.points)


def test_scene_images_masks_depth_sanity(objects_scene):
    sd = objects_scene
    for i in range(len(sd)):
        img, mask, depth = sd.images[i], sd.masks[i], sd.depths[i]
        face = sd.metadata["face_ids"][i]
        assert img.dtype == torch.uint8 and img.shape == (SH, SW, 3)
        assert mask.sum() > 20
        assert (mask <= (depth > 0)).all()
        assert ((face >= 0) == (depth > 0)).all()
        bg = face < 0
        assert bg.sum() > 20
        assert (img[bg] == 0).all()  # black background, no geometry
        assert img[mask].float().std() > 10  # textured objects
    assert sd.load_image(0).shape == (SH, SW, 3)


def test_pixel_depths_unproject_to_scene_and_correspondences(objects_scene):
    sd = objects_scene
    pts, valid = depth_to_points(sd, 0)
    c = pixel_correspondences(sd, 0, 1)
    assert torch.equal(c.valid, valid.reshape(-1))
    torch.testing.assert_close(pts.reshape(-1, 3)[c.valid], c.points[c.valid], rtol=0, atol=1e-5)
    assert c.visible.sum() > 50 and (c.visible <= c.valid).all()
    proj, z = sd.cameras[1].project(c.points)
    torch.testing.assert_close(c.xy, proj[0])
    # a visible correspondence lands where view 1's depth map shows (nearly) the same depth
    agree, n = _depth_agreement(sd.depths[1], c.xy[c.visible], c.depth[c.visible])
    assert n > 20 and agree > 0.98
    # and invisible-but-in-view ones do not (they are occluded: the map is nearer)
    inview = c.valid & ~c.visible & (c.depth > 0)
    inview &= (c.xy >= 0).all(-1) & (c.xy[:, 0] < SW) & (c.xy[:, 1] < SH)
    xy = c.xy[inview]
    d1 = sd.depths[1][xy[:, 1].long(), xy[:, 0].long()].double()
    assert inview.sum() > 5 and ((d1 > 0) & (d1 < c.depth[inview] * 0.99)).float().mean() > 0.9
    # the same pixel in the same view corresponds to itself
    self_c = pixel_correspondences(sd, 0, 0)
    px = pixel_centers(SH, SW, dtype=torch.float64).reshape(-1, 2)
    torch.testing.assert_close(self_c.xy[self_c.valid], px[self_c.valid], rtol=0, atol=1e-8)
    assert torch.equal(self_c.visible, self_c.valid)


def test_occluded_pixels_are_not_visible():
    front = box_mesh((1.0, 0.2, 1.0), seed=1).with_object_id(0)
    back = (
        box_mesh((3.0, 0.2, 3.0), seed=2).transformed(translation=(0.0, 1.5, 0.0)).with_object_id(1)
    )
    mesh = merge_meshes([front, back])
    T = look_at(
        torch.tensor([[0.0, -4.0, 0.0], [3.0, -3.0, 0.0]], dtype=torch.float64),
        torch.zeros(2, 3, dtype=torch.float64),
    )
    cams = make_cameras(T, 48, 48, 50.0)
    from sceneforge.core.scene import SceneData

    out = [render_view(mesh, cams, i) for i in range(2)]
    sd = SceneData(
        cameras=cams,
        image_names=["a", "b"],
        images=[(o.color * 255).to(torch.uint8) for o in out],
        depths=[o.depth for o in out],
        metadata={"mesh": mesh, "near": 1e-3},
    )
    # pixels of view 1 on the back wall right behind the front box are hidden in view 0
    c = pixel_correspondences(sd, 1, 0)
    p = c.points
    behind = c.valid & (p[:, 1] > 1.3) & (p[:, 0].abs() < 0.35) & (p[:, 2].abs() < 0.35)
    assert behind.sum() > 5
    assert not c.visible[behind].any()
    exposed = (
        c.valid & (p[:, 1] > 1.3) & (p[:, 0].abs() > 0.8) & (c.xy[:, 0] > 1) & (c.xy[:, 0] < 47)
    )
    exposed &= (c.xy[:, 1] > 1) & (c.xy[:, 1] < 47)
    assert exposed.sum() > 5 and c.visible[exposed].all()


def test_determinism_from_seed():
    cfg = SyntheticSceneConfig(num_views=3, width=32, height=32, seed=7, num_points=100)
    a, b = make_scene(cfg), make_scene(cfg)
    for i in range(3):
        assert torch.equal(a.images[i], b.images[i])
        assert torch.equal(a.depths[i], b.depths[i])
    assert torch.equal(a.points, b.points)
    assert torch.equal(a.observations.xy, b.observations.xy)
    c = make_scene(SyntheticSceneConfig(num_views=3, width=32, height=32, seed=8, num_points=100))
    assert not torch.equal(a.images[0], c.images[0])


def test_solid_noise_independent_of_query_batch():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(500, 3, generator=g, dtype=torch.float64) - 0.5
    a = solid_noise(p, seed=4, frequency=2.0)
    b = torch.cat([solid_noise(p[:7], 4, 2.0), solid_noise(p[7:], 4, 2.0)])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a.std() > 0.15 and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, solid_noise(p, seed=5, frequency=2.0))


def test_room_walk_is_closed_and_shows_objects():
    sd = room_scene(num_views=6, size=32, num_points=200)
    assert all((d > 0).all() for d in sd.depths)  # closed room: every ray hits
    assert sum(int(m.sum()) for m in sd.masks) > 0
    assert len(sd.observations) > 50


def test_forward_and_turntable_presets():
    sd = turntable_scene(num_views=4, size=32)
    assert len(sd) == 4 and sd.cameras.model == "PINHOLE"
    # orbit: cameras at equal distance from the orbit centre, looking at it
    c = sd.cameras.centers
    r = c - c.mean(0)
    assert r[:, :2].norm(dim=-1).std() < 1e-9
    sd2 = make_scene(
        SyntheticSceneConfig(rig="forward", num_views=4, width=32, height=24, num_points=100)
    )
    fwd = sd2.cameras.cam_from_world[:, 2, :3]  # optical axes in world
    cosines = fwd @ fwd.mean(0) / fwd.mean(0).norm()
    assert (cosines > math.cos(math.radians(15))).all()
    assert all((d > 0).float().mean() > 0.9 for d in sd2.depths)  # ground + backdrop fill it


def test_ssaa_keeps_centre_ground_truth():
    cfg = SyntheticSceneConfig(num_views=2, width=32, height=32, num_points=50)
    a = make_scene(cfg)
    cfg.ssaa = 3
    b = make_scene(cfg)
    assert torch.equal(a.depths[1], b.depths[1]) and torch.equal(a.masks[1], b.masks[1])
    assert not torch.equal(a.images[1], b.images[1])
    with pytest.raises(ValueError, match="odd"):
        cfg.ssaa = 2
        make_scene(cfg)


def test_sphere_and_bad_inputs(tmp_path):
    m = sphere_mesh(0.5, segments=12)
    r = m.vertices.norm(dim=-1)
    torch.testing.assert_close(r, torch.full_like(r, 0.5))
    with pytest.raises(ValueError, match="unknown synthetic scene"):
        make_scene(SyntheticSceneConfig(scene="castle"))
    with pytest.raises(ValueError, match="walk rig needs"):
        make_scene(SyntheticSceneConfig(rig="walk"))
    with pytest.raises(Exception, match="not found"):
        load_mesh(tmp_path / "nope.obj")
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not an obj\n")
    with pytest.raises(Exception, match="bad.obj"):
        load_mesh(bad)


@pytest.mark.parametrize("name", list(MESHES))
def test_shared_meshes_load_and_render(shared_data, name):
    mesh = load_mesh(shared_data / "meshes" / name)
    lo, hi = mesh.bounds()
    assert abs(float((hi - lo).max()) - 1.0) < 1e-9
    textured = [m.texture is not None for m in mesh.materials]
    if MESHES[name]:
        assert any(textured) and mesh.uv is not None
        assert all(m.texture.shape[0] >= 8 for m in mesh.materials if m.texture is not None)
    else:
        assert not any(textured)
        assert all(m.noise_seed is not None for m in mesh.materials)  # procedural texture
    cams = _camera(w=40, h=40, eye=(1.5, -2.0, 1.2), target=(0.0, 0.0, 0.0))
    out = render_view(mesh, cams, 0)
    hit = out.face >= 0
    assert 20 < int(hit.sum()) < 40 * 40
    assert (out.color[~hit] == 0).all()
    assert out.color[hit].std() > 0.03
    # exact: a hit pixel's ray, cast again at its centre, gives the same depth
    px = pixel_centers(40, 40, dtype=torch.float64)[hit]
    again = cast_pixels(mesh, cams, 0, px)
    torch.testing.assert_close(again.depth, out.depth[hit], rtol=1e-12, atol=0)


def test_points_beyond_distortion_fold_over_are_not_observed():
    """With strong barrel distortion a far off-axis point "projects" into the image
    (Cameras.project), yet it is outside the rendered field of view: no observation."""
    cams = _camera("SIMPLE_RADIAL", (-0.25,), w=48, h=48, eye=(0.0, -4.0, 0.0))
    p_cam = torch.tensor([[2.1 * 3.0, 0.0, 3.0]], dtype=torch.float64)
    p = transform_points(cams.world_from_cam[0], p_cam)
    pix, z = cams.project(p)
    assert 0 <= float(pix[0, 0, 0]) < 48 and 0 <= float(pix[0, 0, 1]) < 48 and z[0, 0] > 0
    # a small triangle around the point, facing the camera
    tri = p + torch.tensor(
        [[0.0, 0.0, 0.05], [0.05, 0.0, -0.05], [-0.05, 0.0, -0.05]], dtype=torch.float64
    )
    mesh = Mesh(tri, torch.tensor([[0, 1, 2]]), materials=[Material(noise_seed=0)])
    assert len(observe_points(mesh, cams, p, near=1e-3)) == 0
    assert (render_view(mesh, cams, 0).face < 0).all()


def test_view_names_sort_in_capture_order_past_999():
    from sceneforge.core.synthetic import view_names

    assert view_names(3) == ["view_000.png", "view_001.png", "view_002.png"]
    names = view_names(1001)
    assert sorted(names) == names and names[-1] == "view_1000.png"
