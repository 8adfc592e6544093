"""The installed package: layout, one OpenCV, and a CLI whose --help does not import torch."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import numpy as np


def test_engine_folders_install_under_sceneforge():
    import sceneforge.fields
    import sceneforge.inpaint
    import sceneforge.recon
    import sceneforge.stylize

    for mod, folder in [
        (sceneforge.recon, "recon"),
        (sceneforge.fields, "fields"),
        (sceneforge.inpaint, "inpaint"),
        (sceneforge.stylize, "stylize"),
    ]:
        assert mod.__file__.replace("\\", "/").endswith(f"/{folder}/__init__.py")


def test_exactly_one_opencv_and_inpaint_works():
    # opencv-python and opencv-python-headless both write cv2/: exactly one may ship it.
    shipping = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if any(str(f).startswith("cv2/") for f in (d.files or []))
    )
    assert len(shipping) == 1, f"exactly one distribution may install cv2/, found {shipping}"
    import cv2

    img = np.full((32, 32, 3), 200, np.uint8)
    img[10:20, 10:20] = 0
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 255
    out = cv2.inpaint(img, mask, 3, cv2.INPAINT_TELEA)
    assert out[15, 15].min() > 150  # the hole was filled from its surroundings


def test_cli_help_does_not_import_torch():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['sceneforge', '--help']\n"
        "try:\n"
        "    from sceneforge.cli import main\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported by --help'\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
    assert "train" in out.stdout
