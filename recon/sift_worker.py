"""SIFT in worker processes: pycolmap's CPU SIFT holds the GIL, so threads cannot run it in
parallel; a few small processes can (COLMAP's own extractor runs one image per core).

A worker imports only numpy and pycolmap (it starts in ~0.2 s) and speaks a tiny protocol on
its stdin / stdout: ``b"J"`` + one ``.npy`` array (a grayscale float32 image) per job, answered
with three ``.npy`` arrays (keypoints ``K 2`` in COLMAP's pixel convention, descriptors ``K 128``,
scales ``K``); end of input ends the worker. :class:`SiftPool` runs the workers from the parent.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable

import numpy as np


def create_sift(max_keypoints: int, max_image_size: int, num_threads: int = 1):
    """pycolmap's CPU SIFT extractor with our options."""
    import pycolmap

    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_keypoints)
    opts.max_image_size = int(max_image_size)
    opts.num_threads = int(num_threads)
    opts.use_gpu = False
    return pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)


def sift_arrays(extractor, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints ``K 2`` (COLMAP convention: first pixel centre at 0.5), descriptors ``K 128``
    and keypoint scales ``K`` (float32) of one ``H W`` float32 image in [0, 1]."""
    kps, desc = extractor.extract_from_float32_array(np.ascontiguousarray(gray, np.float32))
    n = len(kps)
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32)
    xy = np.array([[k.x, k.y] for k in kps], dtype=np.float32)
    scale = np.array([k.compute_scale() for k in kps], dtype=np.float32)
    return xy, np.asarray(desc.data, dtype=np.float32).reshape(n, -1), scale


def send_array(fp, array: np.ndarray) -> None:
    """Write ``array`` in ``.npy`` format to a pipe (numpy's writer needs a seekable file)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    fp.write(buf.getbuffer())


def recv_array(fp) -> np.ndarray:
    """Read one ``.npy`` array from a pipe; ``EOFError`` when it ends early."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = fp.read(nbytes)
    if len(data) != nbytes:
        raise EOFError(f"pipe ended after {len(data)} of {nbytes} bytes")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()


def _main() -> None:
    max_keypoints, max_image_size = int(sys.argv[1]), int(sys.argv[2])
    # the protocol owns the real stdout; anything the libraries print goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    extractor = create_sift(max_keypoints, max_image_size)
    while inp.read(1) == b"J":
        gray = recv_array(inp)
        for a in sift_arrays(extractor, gray):
            send_array(out, a)
        out.flush()


class SiftPool:
    """``num_workers`` SIFT worker processes; :meth:`map` keeps the input order.

    Use as a context manager (the workers end with it). A worker that dies raises a
    ``RuntimeError`` carrying the end of its error output.
    """

    def __init__(self, num_workers: int, max_keypoints: int, max_image_size: int) -> None:
        self._procs: list[subprocess.Popen] = []
        self._errs = []
        cmd = [sys.executable, "-m", "sceneforge.recon.sift_worker"]
        for _ in range(num_workers):
            err = tempfile.TemporaryFile()
            self._errs.append(err)
            self._procs.append(
                subprocess.Popen(
                    [*cmd, str(max_keypoints), str(max_image_size)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            )

    def __enter__(self) -> SiftPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for p in self._procs:
            if p.stdin and not p.stdin.closed:
                try:
                    p.stdin.close()
                except BrokenPipeError:
                    pass
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        for e in self._errs:
            e.close()
        self._procs, self._errs = [], []

    def _error(self, k: int) -> RuntimeError:
        p, err = self._procs[k], self._errs[k]
        p.wait(timeout=10)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
        return RuntimeError(f"SIFT worker process exited with status {p.returncode}:\n{tail}")

    def map(self, grays: Iterable[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """SIFT of each image (``H W`` float32) in the workers, in input order.

        ``grays`` may be a generator: images are prepared by the caller while the workers
        compute (one producer, one thread per worker).
        """
        jobs: queue.Queue = queue.Queue(maxsize=2 * len(self._procs))
        results: dict[int, tuple] = {}
        errors: list[BaseException] = []

        def serve(k: int) -> None:
            p = self._procs[k]
            while True:
                item = jobs.get()
                if item is None or errors:
                    return
                i, gray = item
                try:
                    p.stdin.write(b"J")
                    send_array(p.stdin, gray.astype(np.float32, copy=False))
                    p.stdin.flush()
                    results[i] = tuple(recv_array(p.stdout) for _ in range(3))
                except (
                    OSError,
                    ValueError,
                    EOFError,
                ) as e:  # a dead worker: broken pipe / short read
                    errors.append(self._error(k))
                    errors[-1].__cause__ = e
                    return

        threads = [
            threading.Thread(target=serve, args=(k,), daemon=True) for k in range(len(self._procs))
        ]
        for t in threads:
            t.start()
        n = 0
        try:
            for n, gray in enumerate(grays, 1):
                while not errors:
                    try:
                        jobs.put((n - 1, gray), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if errors:
                    break
        finally:
            for _ in threads:
                while any(t.is_alive() for t in threads):
                    try:
                        jobs.put(None, timeout=0.5)
                        break
                    except queue.Full:
                        continue
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return [results[i] for i in range(n)]


if __name__ == "__main__":
    _main()
