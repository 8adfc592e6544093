"""benchmarks/stylize.py's building blocks (the full run trains an anny capture for minutes):
its procedural style images, the two new cameras with true images and depth that the
multi-view rows warp with, the capture's scene, PSNR, camera scaling and the peak-memory
meter."""

from __future__ import annotations

import importlib.util
import math
import mmap
import sys
import time
from pathlib import Path

import pytest
import torch

from sceneforge.core.torch_state import torch_threads

pytest.importorskip("onnxruntime", reason="needs the [style] extra")
pytest.importorskip("onnx2torch", reason="needs the [style] extra")

from sceneforge.stylize.human.style.stylized import warp_error, warp_to  # noqa: E402
from sceneforge.stylize.human.synthetic import room_scene  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[4] / "benchmarks" / "stylize.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stylize_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def video(anny_model):
    from sceneforge.stylize.human import HumanVideoConfig, make_human_video

    cfg = HumanVideoConfig(size=40, num_frames=3, camera="static", heldout_frames=0,
                           heldout_views=0, fps=15.0)  # fmt: skip
    with torch_threads(1):
        return make_human_video(anny_model, cfg)


def test_style_images(bench):
    names = (*bench.TRAIN_STYLES, bench.HELDOUT_STYLE)
    assert bench.HELDOUT_STYLE not in bench.TRAIN_STYLES
    imgs = {n: bench.style_image(n, 64) for n in names}
    for n, img in imgs.items():
        assert img.shape == (64, 64, 3)
        assert float(img.min()) >= 0 and float(img.max()) <= 1
        assert float(img.std()) > 0.05, n  # a texture, not a flat colour
        assert torch.equal(img, bench.style_image(n, 64))  # deterministic
    for a in names:
        for b in names:
            if a < b:
                assert float((imgs[a] - imgs[b]).abs().mean()) > 0.1, (a, b)
    with pytest.raises(ValueError, match="unknown procedural style 'monet'"):
        bench.style_image("monet")


def test_new_views_warp_onto_each_other_with_true_depth(bench, anny_model, video):
    """The two new cameras sit -/+ 5 degrees round the person at the training camera's
    distance and height; warping one's true image onto the other with the true depth
    explains most of the difference between them."""
    with torch_threads(1):
        nv = bench.new_views(anny_model, video, [1], 5.0)
    cams, (a, b), (za, zb) = nv.cameras[0], nv.images[0], nv.depth[0]
    assert a.shape == (40, 40, 3) and za.shape == (40, 40)
    c0 = video.train.cameras.centers[0].float()
    centres = cams.centers.float()
    assert torch.allclose(centres[:, 2], c0[2].expand(2), atol=1e-4)  # same height
    gap = float((centres[0] - centres[1]).norm())
    off = [float((c - c0).norm()) for c in centres]
    assert off[0] == pytest.approx(off[1], rel=1e-3)  # symmetric about the training camera
    assert gap == pytest.approx(2 * off[0], rel=1e-2)  # on either side of it
    assert 0.1 < gap < 1.0
    assert bool((za > 0).all()) and bool((zb > 0).all())  # the room is everywhere
    warped, ok = warp_to(cams, 0, 1, b, za, za > 0, zb)
    assert float(ok.float().mean()) > 0.6
    err = warp_error(a, warped, ok)
    unwarped = float((a - b).abs().mean())
    print(f"true-image warp error {err:.4f} vs unwarped {unwarped:.4f}")
    assert err < 0.5 * unwarped


def test_scene_holds_the_training_frames_and_every_body(bench, video):
    scene = bench.build_scene(video, [0, 2])
    assert len(scene) == 2
    human = scene.metadata["human"]
    assert human["frame"] == [0, 2]
    assert human["pose"].shape[0] == 3  # the held-out frame's body too
    img = scene.load_image(1)
    assert torch.allclose(img, video.train.images[2].permute(1, 2, 0).float(), atol=1 / 255)
    box = torch.tensor(scene.metadata["aabb"]).double()
    room = room_scene(video.config).vertices  # the background the field must hold
    inside = torch.cat([room, video.train.cameras.centers[:1].double()])
    assert bool((box[0] < inside.amin(0)).all()) and bool((box[1] > inside.amax(0)).all())
    assert float((box[1] - box[0]).max()) < 12  # and not much more


def test_psnr_and_scaled_cameras(bench, video):
    a = torch.zeros(8, 8, 3)
    assert bench.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert bench.psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-3)
    cam = bench.scaled(video.train.cameras, 0, 2.0)
    assert len(cam) == 1 and int(cam.width[0]) == 80 and int(cam.height[0]) == 80
    assert torch.allclose(cam.params[0], 2 * video.train.cameras.params[0].float())


def test_peak_rss_sees_an_allocation(bench):
    # A fresh anonymous mapping: new resident pages (a tensor may reuse memory the allocator
    # kept from earlier tests in the same session, which adds nothing to the RSS).
    with bench.PeakRSS() as mem:
        buf = mmap.mmap(-1, 64 * 2**20)
        for off in range(0, len(buf), mmap.PAGESIZE):
            buf[off] = 1  # touch every page
        time.sleep(0.05)  # alive for a few samples too (where the kernel mark is unavailable)
        buf.close()
    assert mem.above_start > 40
    assert math.isfinite(mem.peak)
