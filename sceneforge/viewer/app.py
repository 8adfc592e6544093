"""The viewer's viser server (:class:`Viewer`) and the entry of ``sceneforge view`` (:func:`view`).

The viewer binds to 127.0.0.1 unless told otherwise: a field checkpoint and the user's photos
should not be on the network by default.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sceneforge.core import run_files
from sceneforge.viewer.camera_path import CAMERA_PATHS_DIR
from sceneforge.viewer.camera_path_panel import CameraPathPanel
from sceneforge.viewer.cameras import (
    ViewCamera,
    frustum_pose,
    scene_extent,
    scene_up,
    vertical_fov,
)
from sceneforge.viewer.config import ViewerConfig, import_viser
from sceneforge.viewer.images import fill_preview, mask_preview, resize_long_side, to_uint8
from sceneforge.viewer.mask_box import MASK_BOX_FILE, MaskBox
from sceneforge.viewer.progressive import ProgressiveRenderer
from sceneforge.viewer.run_folder import RunContents, find_run


class Viewer:
    """A running viser server showing one run or scene folder (see :mod:`sceneforge.viewer`).

    ``Viewer(path, cfg)`` starts serving at once; :attr:`url` is its address and
    :meth:`stop` shuts it down. ``renderers`` maps connected client ids to their
    :class:`ProgressiveRenderer` when a field is shown.
    """

    def __init__(self, path: str | Path | RunContents, cfg: ViewerConfig | None = None) -> None:
        self.cfg = cfg = cfg or ViewerConfig()
        viser = import_viser()
        self.contents = path if isinstance(path, RunContents) else find_run(path, cfg)
        self.scene = self.contents.scene
        self.root = self.contents.root
        self.mask_box_path = cfg.mask_box_file or (self.root / MASK_BOX_FILE)
        self.center, self.extent = scene_extent(self.scene)
        self._lock = threading.RLock()
        self._moving_controls = False
        self._thumb_cache: dict[tuple[str, int, int], np.ndarray | None] = {}
        self.renderers: dict[int, ProgressiveRenderer] = {}
        self._camera_hooked: set[int] = set()
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, verbose=cfg.verbose)
        try:
            self._build()
        except BaseException:
            self.server.stop()
            raise

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::") else "localhost"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        for r in list(self.renderers.values()):
            r.stop()
        self.renderers.clear()
        self.server.stop()

    # -- scene -----------------------------------------------------------------------------

    def image_set_names(self) -> list[str]:
        names = ["original"]
        if self.scene.has_masks:
            names.append("mask")
        names += [s.name for s in self.contents.image_sets]
        return names

    def image(self, set_name: str, i: int, long_side: int) -> np.ndarray | None:
        """Camera ``i``'s image of ``set_name`` as uint8 RGB, long side at most ``long_side``."""
        key = (set_name, i, long_side)
        if key in self._thumb_cache:
            return self._thumb_cache[key]
        if set_name == "original":
            img = self.scene.to_numpy_image(i)
        elif set_name == "mask":
            m = self.scene.load_mask(i)
            img = None if m is None else mask_preview(m)
        else:
            from sceneforge.core.image_io import read_image, read_mask

            sets = [s for s in self.contents.image_sets if s.name == set_name]
            if not sets:
                raise KeyError(f"no image set {set_name!r}; have {self.image_set_names()}")
            p = sets[0].paths[i]
            if p is None:
                img = None
            elif set_name == "fill mask":
                img = fill_preview(self.scene.to_numpy_image(i), read_mask(p).numpy())
            else:
                img = to_uint8(read_image(p))
        if img is not None:
            img = resize_long_side(img, long_side)
        self._thumb_cache[key] = img
        return img

    def _build(self) -> None:
        scene, server = self.scene, self.server
        server.gui.configure_theme(show_share_button=False)
        up = scene_up(scene.cameras)
        server.scene.set_up_direction(tuple(float(v) for v in up))
        wxyz, pos = frustum_pose(scene.cameras)
        # start behind the first training camera, looking at the scene centre
        start = self.center + 1.3 * (pos[0] - self.center)
        if np.linalg.norm(start - self.center) < 1e-6:
            start = self.center - 0.5 * self.extent * np.asarray(wxyz[0][1:])
        server.initial_camera.position = tuple(float(v) for v in start)
        server.initial_camera.look_at = tuple(float(v) for v in self.center)
        server.initial_camera.up = tuple(float(v) for v in up)

        self._add_points()
        self._add_cameras(wxyz, pos)
        self._add_gui()
        self._add_mask_box()
        self._add_camera_path()
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)

    def _add_points(self) -> None:
        import torch

        scene, cfg = self.scene, self.cfg
        self.points_handle = None
        if scene.points is None or scene.points.shape[0] == 0:
            return
        pts = scene.points.float()
        cols = (
            scene.point_colors
            if scene.point_colors is not None
            else torch.full_like(pts, 200, dtype=torch.uint8)
        )
        if pts.shape[0] > cfg.max_points:
            g = torch.Generator().manual_seed(0)
            keep = torch.randperm(pts.shape[0], generator=g)[: cfg.max_points]
            pts, cols = pts[keep], cols[keep]
        self.point_size = cfg.point_size or 0.004 * self.extent
        self.points_handle = self.server.scene.add_point_cloud(
            "/points",
            pts.numpy().astype(np.float32),
            cols.to(torch.uint8).numpy(),
            point_size=self.point_size,
            point_shading="flat",
            precision="float32",
        )

    def _add_cameras(self, wxyz: np.ndarray, pos: np.ndarray) -> None:
        scene, cfg = self.scene, self.cfg
        fov = vertical_fov(scene.cameras)
        aspect = (scene.cameras.width.double() / scene.cameras.height.double()).numpy()
        scale = cfg.frustum_scale or 0.04 * self.extent
        self.frustums = []
        for i in range(len(scene)):
            h = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}",
                fov=float(fov[i]),
                aspect=float(aspect[i]),
                scale=scale,
                thickness=0.03 * scale,
                color=(40, 90, 200),
                image=self.image("original", i, cfg.thumbnail_px),
                format="jpeg",
                jpeg_quality=85,
                wxyz=wxyz[i],
                position=pos[i],
            )
            h.on_click(lambda event, i=i: self._select_camera(event.client, i))
            self.frustums.append(h)

    def _add_gui(self) -> None:
        gui, scene = self.server.gui, self.scene
        n_pts = 0 if scene.points is None else int(scene.points.shape[0])
        gui.add_markdown(
            f"**{self.root.name}**: {len(scene)} cameras, {n_pts} points  \n"
            f"{self.contents.field.status}"
        )
        with gui.add_folder("Display"):
            self.show_cameras = gui.add_checkbox("Cameras", True)
            self.show_points = gui.add_checkbox("Points", self.points_handle is not None)
            self.image_set = gui.add_dropdown(
                "Frustum images", self.image_set_names(), initial_value="original"
            )
            self.selected_text = gui.add_text("Selected", "(click a camera)", disabled=True)
            self.selected_image = gui.add_image(
                np.zeros((8, 8, 3), np.uint8), label="image", visible=False
            )
            self.goto_button = gui.add_button("View from selected camera", visible=False)

        @self.show_cameras.on_update
        def _(_) -> None:
            for f in self.frustums:
                f.visible = self.show_cameras.value

        @self.show_points.on_update
        def _(_) -> None:
            if self.points_handle is not None:
                self.points_handle.visible = self.show_points.value

        @self.image_set.on_update
        def _(_) -> None:
            self._set_thumbnails(self.image_set.value)

        @self.goto_button.on_click
        def _(event) -> None:
            if event.client is not None and self._selected is not None:
                self.goto_camera(event.client, self._selected)

        self._selected: int | None = None
        fld = self.contents.field
        with gui.add_folder("Field"):
            self.field_toggle = gui.add_checkbox(
                "Render field", fld.available, disabled=not fld.available
            )
            self.field_status = gui.add_text(
                "Last pass", "-" if fld.available else fld.status, disabled=True
            )

        @self.field_toggle.on_update
        def _(_) -> None:
            for client in self.server.get_clients().values():
                if self.field_toggle.value:
                    self._start_renderer(client)
                else:
                    self._stop_renderer(client.client_id)
                    client.scene.set_background_image(None)

    def _set_thumbnails(self, set_name: str) -> None:
        for i, f in enumerate(self.frustums):
            img = self.image(set_name, i, self.cfg.thumbnail_px)
            f.image = img if img is not None else self.image("original", i, self.cfg.thumbnail_px)
        if self._selected is not None:
            self._show_selected(self._selected)

    def _select_camera(self, client, i: int) -> None:
        self._selected = i
        self._show_selected(i)

    def _show_selected(self, i: int) -> None:
        img = self.image(self.image_set.value, i, 320)
        if img is None:
            img = self.image("original", i, 320)
        self.selected_text.value = f"{i}: {self.scene.image_names[i]} ({self.image_set.value})"
        self.selected_image.image = img
        self.selected_image.visible = True
        self.goto_button.visible = True

    def goto_camera(self, client, i: int) -> None:
        """Move ``client``'s browser camera to training camera ``i`` (pose and field of view)."""
        wxyz, pos = frustum_pose(self.scene.cameras[i])
        with client.atomic():
            client.camera.wxyz = wxyz[0]
            client.camera.position = pos[0]
            client.camera.fov = float(vertical_fov(self.scene.cameras[i])[0])

    # -- mask box ----------------------------------------------------------------------------

    def _initial_box(self) -> MaskBox:
        if self.mask_box_path.is_file():
            try:
                return MaskBox.parse(self.mask_box_path.read_text(), str(self.mask_box_path))
            except ValueError as e:
                print(f"ignoring {e}")
        return MaskBox.from_center_size(self.center, [0.2 * self.extent] * 3)

    def _add_mask_box(self) -> None:
        gui = self.server.gui
        box = self._initial_box()
        self.mask_box = box
        s_max = max(float(self.extent), *box.size) * 1.5
        step = s_max / 1000
        with gui.add_folder("Mask box (sceneforge complete)"):
            self.box_toggle = gui.add_checkbox("Edit mask box", False)
            self.box_size = [
                gui.add_slider(f"Size {a}", step, s_max, step, float(v), visible=False)
                for a, v in zip("xyz", box.size)
            ]
            self.box_text = gui.add_text("--mask-box", box.to_arg(), disabled=True)
            self.box_file_text = gui.add_text(
                "Written to", str(self.mask_box_path), disabled=True, visible=False
            )
        self.box_gizmo = self.server.scene.add_transform_controls(
            "/mask_box",
            scale=0.15 * self.extent,
            disable_rotations=True,
            position=box.center,
            visible=False,
        )
        self.box_mesh = self.server.scene.add_box(
            "/mask_box/box",
            color=(255, 140, 0),
            dimensions=box.size,
            opacity=0.25,
            visible=False,
        )

        def changed(_) -> None:
            if self._moving_controls:  # our own update of the sliders / gizmo
                return
            self.set_mask_box(
                MaskBox.from_center_size(self.box_gizmo.position, [s.value for s in self.box_size]),
                move_controls=False,
            )

        self.box_gizmo.on_update(changed)
        for s in self.box_size:
            s.on_update(changed)

        @self.box_toggle.on_update
        def _(_) -> None:
            on = self.box_toggle.value
            for h in (self.box_gizmo, self.box_mesh, *self.box_size, self.box_file_text):
                h.visible = on
            if on:
                self.set_mask_box(self.mask_box, move_controls=False)

    def set_mask_box(self, box: MaskBox, move_controls: bool = True) -> None:
        """Show ``box`` and write its ``--mask-box`` string to :attr:`mask_box_path`.

        The file is written only while box editing is on (the checkbox), so opening a folder
        never writes into it by itself.
        """
        with self._lock:
            self.mask_box = box
            if move_controls:
                # viser runs on_update callbacks synchronously for server-side assignments
                self._moving_controls = True
                try:
                    self.box_gizmo.position = box.center
                    for s, v in zip(self.box_size, box.size):
                        s.value = float(v)
                finally:
                    self._moving_controls = False
            self.box_mesh.dimensions = box.size
            self.box_text.value = box.to_arg()
            if self.box_toggle.value:
                box.write(self.mask_box_path)

    # -- camera path -------------------------------------------------------------------------

    def _add_camera_path(self) -> None:
        cams = self.scene.cameras
        long_side = max(int(cams.width[0]), int(cams.height[0]))
        shown = self.contents.shown or self.root
        self.camera_path = CameraPathPanel(
            self.server,
            self.cfg.camera_path_dir or (self.root / CAMERA_PATHS_DIR),
            self.root,
            long_side,
            self.cfg.frustum_scale or 0.04 * self.extent,
            self.contents.field.available or (shown / run_files.CHECKPOINT).is_file(),
        )

    # -- clients -----------------------------------------------------------------------------

    def _on_connect(self, client) -> None:
        if self.contents.field.available and self.field_toggle.value:
            self._start_renderer(client)

    def _on_disconnect(self, client) -> None:
        self._stop_renderer(client.client_id)

    def _start_renderer(self, client) -> None:
        cid = client.client_id
        if cid in self.renderers:
            return
        cfg = self.cfg

        def publish(img: np.ndarray, px: int, seconds: float) -> None:
            client.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
            self.field_status.value = f"{img.shape[1]}x{img.shape[0]} in {seconds * 1000:.0f} ms"

        def on_error(e: BaseException) -> None:
            self.field_status.value = f"render failed: {type(e).__name__}: {e}"
            self.renderers.pop(cid, None)

        r = ProgressiveRenderer(
            self.contents.field.render_rays,
            publish,
            cfg.preview_px,
            cfg.max_render_px,
            cfg.rest_s,
            cfg.chunk_rays,
            on_error,
            cfg.preview_samples,
            self.contents.field.render_camera,
        )
        self.renderers[cid] = r.start()

        def camera_moved(camera) -> None:
            rr = self.renderers.get(cid)
            if rr is not None and camera.image_width > 0 and camera.image_height > 0:
                rr.update_camera(ViewCamera.from_viser(camera))

        if cid not in self._camera_hooked:  # once per client, across field toggles
            self._camera_hooked.add(cid)
            client.camera.on_update(camera_moved)
        if client.camera.image_width > 0:
            r.update_camera(ViewCamera.from_viser(client.camera))

    def _stop_renderer(self, cid: int) -> None:
        r = self.renderers.pop(cid, None)
        if r is not None:
            r.stop()


def view(
    path: str | Path,
    cfg: ViewerConfig | None = None,
    on_ready: Callable[[Viewer], None] | None = None,
) -> int:
    """Serve ``path`` (run or scene folder) until Ctrl-C; returns an exit code.

    ``on_ready(viewer)`` is called once the scene is built (e.g. to open a browser).
    """
    cfg = cfg or ViewerConfig()
    v = None
    try:
        v = Viewer(path, cfg)
        print(f"sceneforge viewer: {v.url}  (Ctrl-C to stop)", flush=True)
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: bound to {cfg.host}: other machines on the network can open it")
        if on_ready is not None:
            on_ready(v)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if v is not None:
            v.stop()
    return 0


__all__ = ["Viewer", "view"]
