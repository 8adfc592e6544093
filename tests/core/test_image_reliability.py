"""Image and mask input a real capture throws at us: bit depths, colour modes, EXIF rotation,
corrupt / truncated / non-image files, empty mask folders and masks of the wrong size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_io import H, W, make_scene

from sceneforge.core.image_io import (
    ImageReadError,
    list_images,
    read_image,
    read_mask,
    scan_folder,
)
from sceneforge.core.io import load_scene, save_scene, validate_scene
from sceneforge.core.io_common import image_size
from sceneforge.core.scene import SceneDataError


def _rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- bit depths, modes


def test_16bit_grayscale_png_keeps_all_bits(tmp_path):
    vals = np.array([[0, 1, 257, 1234], [32768, 40000, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (2, 4, 3) and img.dtype == torch.float32
    want = torch.from_numpy(vals.astype(np.float64) / 65535.0).float()
    for c in range(3):
        assert torch.equal(img[..., c], want)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_keeps_all_bits(tmp_path, ext):
    import cv2

    rgb = np.zeros((3, 4, 3), np.uint16)
    rgb[..., 0] = 65535
    rgb[..., 1] = 1234  # 8-bit decoding would give 4/255 = 0.0157 instead of 0.0188
    rgb[..., 2] = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7
    assert cv2.imwrite(str(tmp_path / f"c16{ext}"), rgb[..., ::-1])  # OpenCV writes BGR
    img = read_image(tmp_path / f"c16{ext}")
    torch.testing.assert_close(
        img, torch.from_numpy(rgb.astype(np.float64) / 65535.0).float(), atol=1e-7, rtol=0
    )


def test_grayscale_palette_cmyk_and_bilevel_become_rgb(tmp_path):
    g = np.array([[0, 51, 255]], np.uint8)
    Image.fromarray(g).save(tmp_path / "l.png")
    img = read_image(tmp_path / "l.png")
    assert img.shape == (1, 3, 3)
    for c in range(3):
        torch.testing.assert_close(img[0, :, c], torch.tensor([0.0, 0.2, 1.0]))
    Image.fromarray(np.stack([g, g], -1), "LA").save(tmp_path / "la.png")
    assert torch.equal(read_image(tmp_path / "la.png"), img)
    # palette: colours, not the palette indices
    p = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    p.putpalette([10, 20, 30, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p.save(tmp_path / "p.png")
    want = torch.tensor([[[10, 20, 30], [255, 0, 0], [0, 0, 255]]]) / 255.0
    torch.testing.assert_close(read_image(tmp_path / "p.png"), want.float())
    # CMYK (print workflows): cyan + yellow ink = green, not a 4-channel array
    Image.new("CMYK", (2, 1), (255, 0, 255, 0)).save(tmp_path / "cmyk.tif")
    torch.testing.assert_close(read_image(tmp_path / "cmyk.tif"), torch.tensor([[[0.0, 1, 0]] * 2]))
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bw.png")
    assert read_image(tmp_path / "bw.png")[..., 0].tolist() == [[1.0, 0.0]]
    # RGBA: alpha dropped, colour kept
    rgba = np.concatenate([_rgb(2, 2), np.full((2, 2, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.equal(
        read_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3] / 255.0).float()
    )


def test_keep_8bit_gives_exactly_the_float_image_in_a_quarter_of_the_memory(tmp_path):
    """Reconstruction keeps 8-bit frames as uint8 (issue 25: 1,000 frames in 0.5 GB, not 2.1);
    ``x.float() / 255`` must give the float reader's values bit for bit, in every layout."""
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g).save(tmp_path / "l.png")
    Image.fromarray(np.stack([g, g], -1), "LA").save(tmp_path / "la.png")
    rgba = np.stack([g, g[::-1], g.T, np.full_like(g, 7)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    for name in ("l.png", "la.png", "rgba.png", "rgb.png"):
        raw = read_image(tmp_path / name, keep_8bit=True)
        assert raw.dtype == torch.uint8 and raw.shape == (16, 16, 3), name
        assert torch.equal(raw.float() / 255.0, read_image(tmp_path / name)), name
    vals = np.array([[0, 65535]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png", keep_8bit=True).dtype == torch.float32  # 16 bits kept


# ----------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = _rgb(5, 7, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(arr).save(path, exif=exif)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    img = read_image(path)
    assert torch.equal(img, torch.from_numpy(want / 255.0).float())
    assert image_size(path) == (img.shape[1], img.shape[0])  # header size agrees (cameras)
    mask = read_mask(path)
    assert tuple(mask.shape) == tuple(img.shape[:2])
    if orientation == 6:  # "rotate 90 deg clockwise": the stored top-left ends at top-right
        assert img.shape[:2] == (7, 5)
        assert torch.equal(img[0, -1], torch.from_numpy(arr[0, 0] / 255.0).float())


def test_exif_rotated_16bit_colour(tmp_path):
    import zlib

    import cv2

    rgb = (np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3000 + 11).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 deg counter-clockwise to display
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\0\0") else payload
    chunk = b"eXIf" + payload
    chunk = len(payload).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    data = (tmp_path / "c.png").read_bytes()
    at = data.index(b"IDAT") - 4  # PNG puts eXIf before the image data
    (tmp_path / "c8.png").write_bytes(data[:at] + chunk + data[at:])
    img = read_image(tmp_path / "c8.png")
    want = np.rot90(rgb, 1)
    assert img.shape == (3, 2, 3)
    torch.testing.assert_close(img, torch.from_numpy(want / 65535.0).float(), atol=1e-7, rtol=0)
    assert image_size(tmp_path / "c8.png") == (2, 3)


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "name,content",
    [
        ("garbage.png", b"\x89PNG\r\n\x1a\n garbage"),
        ("empty.jpg", b""),
        ("text.jpg", b"just some text, not a JPEG"),
        ("trunc.png", "trunc_png"),
        ("trunc.jpg", "trunc_jpg"),
    ],
)
def test_corrupt_and_truncated_files_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        fmt = "PNG" if content.endswith("png") else "JPEG"
        Image.fromarray(_rgb(64, 64)).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match="not a readable image") as e:
            reader(path)
        assert str(path) in str(e.value)
        assert isinstance(e.value, ValueError)  # one ``except ValueError`` catches bad input
    with pytest.raises(ImageReadError, match="no such image file"):
        read_image(tmp_path / "missing.png")


def test_non_image_files_are_skipped_with_a_note(tmp_path, caplog):
    for n in ("b.JPG", "a.png"):
        Image.fromarray(_rgb()).save(tmp_path / n, format="PNG" if n.endswith("png") else "JPEG")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "clip.mov").write_bytes(b"\0" * 10)
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="sceneforge"):
        files = list_images(tmp_path)
    assert [p.name for p in files] == ["a.png", "b.JPG"]
    assert "skipping 2 non-image file(s): clip.mov, notes.txt" in caplog.text
    assert [p.name for p in scan_folder(tmp_path)[1]] == ["clip.mov", "notes.txt"]
    (tmp_path / "a.png").unlink()
    (tmp_path / "b.JPG").unlink()
    with pytest.raises(ImageReadError, match="no image files"):
        list_images(tmp_path)


# ----------------------------------------------------------------------------- masks


def test_empty_masks_folder(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out")
    (out / "masks").mkdir()
    with pytest.warns(UserWarning, match="holds no mask for any of the 4 images"):
        loaded = load_scene(out)  # the default masks/ folder is empty: every pixel used
    assert not loaded.has_masks and loaded.load_mask(0) is None
    empty = tmp_path / "empty_masks"
    empty.mkdir()
    with pytest.raises(SceneDataError, match="holds no mask") as e:
        load_scene(out, masks_dir=empty)  # a folder the user named must hold masks
    assert str(empty) in str(e.value)
    llff = save_scene(
        make_scene(tmp_path / "l", "SIMPLE_PINHOLE", centred=True, masks=False),
        tmp_path / "llff",
        format="llff",
    )
    with pytest.raises(SceneDataError, match="holds no mask"):
        load_scene(llff, masks_dir=empty)


def test_mask_of_the_wrong_size_is_named(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=True)
    out = save_scene(scene, tmp_path / "out")
    bad = out / "masks" / f"{scene.image_names[2]}.png"
    Image.fromarray(np.full((H // 2, W // 2), 255, np.uint8)).save(bad)
    loaded = load_scene(out)
    loaded.load_mask(0)
    with pytest.raises(
        SceneDataError, match=f"mask is {W // 2}x{H // 2} but the image is {W}x{H}"
    ) as e:
        loaded.load_mask(2)
    assert str(bad) in str(e.value)
    with pytest.raises(SceneDataError) as e:
        validate_scene(loaded)
    assert str(bad) in str(e.value) and "1 bad image" in str(e.value)


# ----------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("where", ["copy", "rename"])
def test_disk_full_while_saving_a_scene_keeps_the_previous_folder(tmp_path, monkeypatch, where):
    import errno
    import os
    import shutil

    scene = make_scene(tmp_path / "src", "PINHOLE", points=True, masks=True)
    out = save_scene(scene, tmp_path / "out")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}

    def enospc():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "copy":
        real = shutil.copyfile

        def copy(src, dst, **kw):  # the disk fills up at the 3rd image
            calls["n"] += 1
            if calls["n"] == 3:
                enospc()
            return real(src, dst, **kw)

        monkeypatch.setattr(shutil, "copyfile", copy)
    else:
        real = os.replace

        def rename(src, dst):  # moving the new folder into place fails
            if os.path.isdir(src) and ".tmp-" in str(src):
                enospc()
            return real(src, dst)

        monkeypatch.setattr(os, "replace", rename)
    with pytest.raises(OSError) as e:
        save_scene(scene, out, overwrite=True)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp folder left
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    validate_scene(load_scene(out), decode=True)  # still loadable
