"""3D Gaussian splats as the standard 3DGS PLY file (what SuperSplat, antimatter15/splat and the
original 3DGS viewers open), written and read.

One ``vertex`` element, binary little-endian, every property ``float``, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

with the parameters stored raw, as they are optimised: the normals are zero, ``opacity`` is the
logit (opacity = sigmoid), ``scale_i`` are logs, ``rot_*`` the (unnormalised) quaternion
``w x y z``; ``K = (degree + 1)^2`` spherical-harmonic coefficients per colour channel (degree
0..3). ``f_rest`` is channel-major: all higher-band coefficients of red, then of green, then of
blue, i.e. ``shN`` ``(N, K-1, 3)`` transposed to ``(N, 3, K-1)`` and flattened; this is the
layout of the 3DGS reference ``save_ply`` (``_features_rest.transpose(1, 2).flatten(1)``) and
of gsplat's ``export_splats`` (``shN.permute(0, 2, 1).reshape(N, -1)``).

The reader takes any PLY holding these properties (ASCII, binary little or big endian, any
scalar property types, extra properties and elements ignored) and raises
:class:`GaussianPlyError` naming the file and the problem otherwise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.atomic import atomic_write_bytes

SH_REST_COUNTS: dict[int, int] = {0: 0, 9: 1, 24: 2, 45: 3}
"""Number of ``f_rest_*`` properties -> spherical-harmonics degree."""

_SCALAR_TYPES: dict[str, str] = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
"""PLY scalar type names -> numpy type codes (without byte order)."""

_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


class GaussianPlyError(ValueError):
    """A file that is not a readable 3DGS PLY (or Gaussians that cannot be written as one); the
    message names the file and the problem."""


@dataclass
class GaussianPly:
    """The Gaussians of a 3DGS PLY file (float32 CPU tensors, parameters as stored)."""

    means: Float[Tensor, "N 3"]
    """World positions."""
    quats_wxyz: Float[Tensor, "N 4"]
    """Rotations as unnormalised quaternions ``w x y z``."""
    log_scales: Float[Tensor, "N 3"]
    """Logs of the standard deviations along the Gaussians' axes."""
    opacity_logits: Float[Tensor, " N"]
    """Opacities before the sigmoid."""
    sh0: Float[Tensor, "N 1 3"]
    """Degree-0 (DC) spherical-harmonic coefficient per colour channel."""
    shN: Float[Tensor, "N R 3"]
    """Higher spherical-harmonic bands, ``R = (sh_degree + 1)^2 - 1`` coefficients (0 to 15)."""
    sh_degree: int
    """Spherical-harmonics degree (0..3), from the number of ``f_rest_*`` properties."""

    @property
    def num_gaussians(self) -> int:
        """Number of Gaussians (rows)."""
        return int(self.means.shape[0])


def gaussian_ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a 3DGS PLY of degree ``sh_degree`` (0..3), in file order."""
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"spherical-harmonics degree must be 0..3, got {sh_degree}")
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _as_f32(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def _nonfinite_summary(names: list[str], cols: np.ndarray) -> str | None:
    """``"3 in 'opacity', 1 in 'scale_0'"`` for the non-finite values of ``cols`` (N, P), or
    None when all are finite."""
    bad = ~np.isfinite(cols)
    if not bad.any():
        return None
    per = bad.sum(0)
    parts = [f"{int(c)} in {n!r}" for n, c in zip(names, per) if c]
    return f"{int(per.sum())} non-finite values (NaN/inf): " + ", ".join(parts)


def gaussian_ply_bytes(
    means: Float[Tensor, "N 3"],
    quats_wxyz: Float[Tensor, "N 4"],
    log_scales: Float[Tensor, "N 3"],
    opacity_logits: Float[Tensor, " N"],
    sh0: Float[Tensor, "N 1 3"],
    shN: Float[Tensor, "N R 3"],
    name: str = "<gaussians>",
) -> bytearray:
    """The bytes of the 3DGS PLY of these Gaussians (see the module docstring), built in one
    buffer. ``name`` (the target file) is used in messages: ValueError for wrong shapes,
    :class:`GaussianPlyError` for NaN/inf values (a file the readers would choke on)."""
    n = int(means.shape[0]) if means.ndim == 2 else -1
    if opacity_logits.ndim == 2 and opacity_logits.shape[1:] == (1,):
        opacity_logits = opacity_logits[:, 0]
    rest = int(shN.shape[1]) if shN.ndim == 3 else -1
    expected = {
        "means": (means, (n, 3)),
        "quats_wxyz": (quats_wxyz, (n, 4)),
        "log_scales": (log_scales, (n, 3)),
        "opacity_logits": (opacity_logits, (n,)),
        "sh0": (sh0, (n, 1, 3)),
        "shN": (shN, (n, rest, 3)),
    }
    wrong = [
        f"{k} {tuple(t.shape)} (expected {shape})"
        for k, (t, shape) in expected.items()
        if n < 0 or tuple(t.shape) != shape
    ]
    if wrong:
        raise ValueError(f"{name}: cannot write Gaussians with shapes " + "; ".join(wrong))
    if 3 * rest not in SH_REST_COUNTS:
        raise ValueError(
            f"{name}: shN must hold 0, 3, 8 or 15 coefficients (degree 0..3), got {rest}"
        )
    names = gaussian_ply_property_names(SH_REST_COUNTS[3 * rest])
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        "comment 3D Gaussian splats (sceneforge)\n"
        f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in names) + "end_header\n"
    ).encode("ascii")
    buf = bytearray(len(header) + n * len(names) * 4)
    buf[: len(header)] = header
    rows = np.ndarray((n, len(names)), dtype="<f4", buffer=buf, offset=len(header))
    f = 9 + 3 * rest
    rows[:, 0:3] = _as_f32(means)
    rows[:, 3:6] = 0.0
    rows[:, 6:9] = _as_f32(sh0).reshape(n, 3)
    rows[:, 9:f] = _as_f32(shN).transpose(0, 2, 1).reshape(n, 3 * rest)
    rows[:, f] = _as_f32(opacity_logits)
    rows[:, f + 1 : f + 4] = _as_f32(log_scales)
    rows[:, f + 4 : f + 8] = _as_f32(quats_wxyz)
    problem = _nonfinite_summary(names, rows)
    if problem is not None:
        raise GaussianPlyError(f"{name}: refusing to write {problem}")
    return buf


def write_gaussian_ply(
    path: str | os.PathLike,
    means: Float[Tensor, "N 3"],
    quats_wxyz: Float[Tensor, "N 4"],
    log_scales: Float[Tensor, "N 3"],
    opacity_logits: Float[Tensor, " N"],
    sh0: Float[Tensor, "N 1 3"],
    shN: Float[Tensor, "N R 3"],
) -> Path:
    """Write the Gaussians as a binary little-endian 3DGS PLY at ``path``, atomically (a failed
    write leaves the previous file intact); returns ``path``."""
    path = Path(path)
    data = gaussian_ply_bytes(
        means, quats_wxyz, log_scales, opacity_logits, sh0, shN, name=str(path)
    )
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------------ reading


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str | None, str]]
    """``(name, list count type or None, value type)`` per property (numpy type codes)."""


def _parse_header(path: Path, data: bytes) -> tuple[str, list[_Element], int]:
    """The format, the elements and the offset of the body (first byte after the header)."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise GaussianPlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    m = re.search(rb"(?:^|\n)end_header[ \t]*\r?\n", data[: 1 << 24])
    if m is None:
        raise GaussianPlyError(f"{path}: PLY header has no 'end_header' line (truncated file?)")
    try:
        lines = data[: m.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise GaussianPlyError(f"{path}: PLY header is not ASCII text") from None
    fmt: str | None = None
    elements: list[_Element] = []
    for i, raw in enumerate(lines[1:], start=2):
        tok = raw.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and len(tok) == 3 and tok[1] in _FORMATS:
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3 and tok[2].isdigit():
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements and len(tok) == 3 and tok[1] in _SCALAR_TYPES:
            elements[-1].props.append((tok[2], None, _SCALAR_TYPES[tok[1]]))
        elif (
            tok[0] == "property"
            and elements
            and len(tok) == 5
            and tok[1] == "list"
            and tok[2] in _SCALAR_TYPES
            and tok[3] in _SCALAR_TYPES
        ):
            elements[-1].props.append((tok[4], _SCALAR_TYPES[tok[2]], _SCALAR_TYPES[tok[3]]))
        else:
            raise GaussianPlyError(f"{path}: malformed PLY header line {i}: {raw.strip()!r}")
    if fmt is None:
        raise GaussianPlyError(
            f"{path}: PLY header has no valid 'format' line (ascii, binary_little_endian or "
            "binary_big_endian 1.0)"
        )
    return fmt, elements, m.end()


_REQUIRED = (
    "x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3".split()
)
"""The 3DGS vertex properties every file must have (``f_rest_*`` are checked separately)."""


def _rest_names(path: Path, names: list[str]) -> list[str]:
    """The ``f_rest_*`` properties in index order (clear error for a wrong count or gaps)."""
    idx = sorted(int(n[7:]) for n in names if re.fullmatch(r"f_rest_\d+", n))
    if len(idx) not in SH_REST_COUNTS:
        raise GaussianPlyError(
            f"{path}: {len(idx)} 'f_rest_*' properties; a 3DGS PLY has 0, 9, 24 or 45 "
            "(spherical-harmonics degree 0, 1, 2 or 3)"
        )
    if idx != list(range(len(idx))):
        missing = sorted(set(range(len(idx))) - set(idx))
        raise GaussianPlyError(
            f"{path}: 'f_rest_*' properties are not numbered 0..{len(idx) - 1} "
            f"(missing {', '.join(f'f_rest_{i}' for i in missing)})"
        )
    return [f"f_rest_{i}" for i in idx]


def _skip_ascii_lines(text: bytes, start: int, count: int) -> int:
    """Offset just after ``count`` more lines from ``start`` (-1 when the text ends first)."""
    pos = start
    for _ in range(count):
        nl = text.find(b"\n", pos)
        if nl < 0:
            return -1
        pos = nl + 1
    return pos


def _read_vertex_rows(
    path: Path, data: bytes, fmt: str, elements: list[_Element], body: int, wanted: list[str]
) -> np.ndarray:
    """The ``wanted`` vertex properties as a float32 ``(N, len(wanted))`` array."""
    vi = next(i for i, e in enumerate(elements) if e.name == "vertex")
    vertex = elements[vi]
    if any(lt is not None for _, lt, _ in vertex.props):
        raise GaussianPlyError(f"{path}: the 'vertex' element has list properties")
    n = vertex.count
    prop_names = [p for p, _, _ in vertex.props]
    if fmt == "ascii":
        start = _skip_ascii_lines(data, body, sum(e.count for e in elements[:vi]))
        if start < 0:
            raise GaussianPlyError(f"{path}: truncated: the file ends before the vertex data")
        end = _skip_ascii_lines(data, start, n)
        chunk = data[start : len(data) if end < 0 else end]
        try:
            values = np.array(chunk.split(), dtype=np.float64)
        except ValueError:
            bad = next(t for t in chunk.split() if not _is_number(t))
            raise GaussianPlyError(
                f"{path}: non-numeric vertex value {bad.decode(errors='replace')!r}"
            ) from None
        if values.size < n * len(prop_names):
            rows_read = values.size // max(len(prop_names), 1)
            raise GaussianPlyError(
                f"{path}: truncated: the header announces {n} vertices but the file holds "
                f"{rows_read} complete ones"
            )
        if values.size != n * len(prop_names):
            raise GaussianPlyError(
                f"{path}: the vertex lines hold {values.size} values, expected {n} x "
                f"{len(prop_names)} properties"
            )
        table = values.reshape(n, len(prop_names))
        cols = [prop_names.index(w) for w in wanted]
        out = np.empty((n, len(wanted)), dtype=np.float32)
        for j, c in enumerate(cols):
            out[:, j] = table[:, c].astype(vertex.props[c][2]).astype(np.float32)
        return out
    order = _FORMATS[fmt]
    offset = body
    for e in elements[:vi]:
        if any(lt is not None for _, lt, _ in e.props):
            raise GaussianPlyError(
                f"{path}: binary PLY with a list-property element ({e.name!r}) before 'vertex' "
                "is not supported"
            )
        offset += e.count * sum(np.dtype(t).itemsize for _, _, t in e.props)
    dtype = np.dtype([(p, order + t) for p, _, t in vertex.props])
    need = n * dtype.itemsize
    have = max(len(data) - offset, 0)
    if have < need:
        raise GaussianPlyError(
            f"{path}: truncated: the header announces {n} vertices ({need} bytes) but only "
            f"{have} bytes of vertex data follow ({have // max(dtype.itemsize, 1)} complete "
            "vertices)"
        )
    types = {t for _, _, t in vertex.props}
    if len(types) == 1:  # one type (the usual all-float file): a plain N x P table
        table = np.frombuffer(data, order + types.pop(), n * len(prop_names), offset)
        cols = [prop_names.index(w) for w in wanted]
        return table.reshape(n, len(prop_names))[:, cols].astype(np.float32)
    rec = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
    out = np.empty((n, len(wanted)), dtype=np.float32)
    for j, w in enumerate(wanted):
        out[:, j] = rec[w]
    return out


def _is_number(tok: bytes) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def read_gaussian_ply(path: str | os.PathLike) -> GaussianPly:
    """The Gaussians of a 3DGS PLY file (see the module docstring).

    Raises :class:`GaussianPlyError` naming the file for: a missing or unreadable file, a file
    that is not a PLY, a PLY without the 3DGS vertex properties (they are listed), a number of
    ``f_rest_*`` properties other than 0, 9, 24 or 45, truncated data, and NaN/inf values
    (how many, in which properties).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GaussianPlyError(f"{path}: file does not exist") from None
    except OSError as e:
        raise GaussianPlyError(f"{path}: cannot read the file ({e})") from e
    fmt, elements, body = _parse_header(path, data)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None:
        found = ", ".join(e.name for e in elements) or "none"
        raise GaussianPlyError(f"{path}: PLY has no 'vertex' element (elements: {found})")
    names = [p for p, _, _ in vertex.props]
    dupes = sorted({p for p in names if names.count(p) > 1})
    if dupes:
        raise GaussianPlyError(f"{path}: vertex properties declared twice: {', '.join(dupes)}")
    missing = [r for r in _REQUIRED if r not in names]
    if missing:
        raise GaussianPlyError(
            f"{path}: not a 3D Gaussian splatting PLY: the vertex element lacks "
            f"{', '.join(missing)} (it has {', '.join(names) or 'no properties'})"
        )
    rest = _rest_names(path, names)
    wanted = _REQUIRED[:6] + rest + _REQUIRED[6:]
    rows = _read_vertex_rows(path, data, fmt, elements, body, wanted)
    problem = _nonfinite_summary(wanted, rows)
    if problem is not None:
        raise GaussianPlyError(f"{path}: {problem}")
    n, r = rows.shape[0], len(rest) // 3
    f = 6 + len(rest)
    t = torch.from_numpy(rows)
    return GaussianPly(
        means=t[:, 0:3].clone(),
        quats_wxyz=t[:, f + 4 : f + 8].clone(),
        log_scales=t[:, f + 1 : f + 4].clone(),
        opacity_logits=t[:, f].clone(),
        sh0=t[:, 3:6].reshape(n, 1, 3).clone(),
        shN=t[:, 6:f].reshape(n, 3, r).transpose(1, 2).contiguous(),
        sh_degree=SH_REST_COUNTS[len(rest)],
    )


__all__ = [
    "SH_REST_COUNTS",
    "GaussianPly",
    "GaussianPlyError",
    "gaussian_ply_bytes",
    "gaussian_ply_property_names",
    "read_gaussian_ply",
    "write_gaussian_ply",
]
