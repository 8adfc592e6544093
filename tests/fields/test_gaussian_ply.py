"""3DGS PLY files: round trips, the exact layout viewers expect, and clear errors for bad files."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sceneforge.fields.gaussian_ply import (
    GaussianPlyError,
    read_gaussian_ply,
    write_gaussian_ply,
)

FIELDS = ("means", "quats_wxyz", "log_scales", "opacity_logits", "sh0", "shN")


def gaussians(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rest = (degree + 1) ** 2 - 1
    return {
        "means": torch.randn(n, 3, generator=g) * 10,
        "quats_wxyz": torch.randn(n, 4, generator=g),
        "log_scales": torch.randn(n, 3, generator=g) - 4,
        "opacity_logits": torch.randn(n, generator=g) * 3,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, rest, 3, generator=g) * 1e-3,
    }


def split_header(data: bytes) -> tuple[list[str], bytes]:
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii").splitlines(), data[end:]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, degree):
    g = gaussians(257, degree, seed=degree)
    path = write_gaussian_ply(tmp_path / "splat.ply", *(g[k] for k in FIELDS))
    back = read_gaussian_ply(path)
    assert back.sh_degree == degree and back.num_gaussians == 257
    for k in FIELDS:
        got = getattr(back, k)
        assert got.dtype == torch.float32 and got.shape == g[k].shape, k
        assert torch.equal(got, g[k]), k


def test_header_and_row_layout_match_the_3dgs_format(tmp_path):
    n, rest = 5, 3  # degree 1
    g = gaussians(n, 1)
    # shN[i, k, c] = 100 c + k + i / 10: channel-major f_rest puts all red first
    i, k, c = torch.meshgrid(torch.arange(n), torch.arange(rest), torch.arange(3), indexing="ij")
    g["shN"] = (100 * c + k + i / 10).float()
    path = write_gaussian_ply(tmp_path / "s.ply", *(g[k] for k in FIELDS))
    lines, body = split_header(path.read_bytes())
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {n}" in lines
    props = [ln.split() for ln in lines if ln.startswith("property")]
    assert all(p[1] == "float" for p in props)
    assert [p[2] for p in props] == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
        "f_rest_0", "f_rest_1", "f_rest_2", "f_rest_3", "f_rest_4", "f_rest_5",
        "f_rest_6", "f_rest_7", "f_rest_8",
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    ]  # fmt: skip
    assert len(body) == n * 26 * 4
    rows = np.frombuffer(body, dtype="<f4").reshape(n, 26)
    np.testing.assert_array_equal(rows[:, 0:3], g["means"].numpy())
    np.testing.assert_array_equal(rows[:, 3:6], 0.0)
    np.testing.assert_array_equal(rows[:, 6:9], g["sh0"][:, 0].numpy())
    j = np.arange(9)
    expected_rest = 100 * (j // rest) + j % rest + np.arange(n)[:, None] / 10
    np.testing.assert_allclose(rows[:, 9:18], expected_rest, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(rows[:, 18], g["opacity_logits"].numpy())
    np.testing.assert_array_equal(rows[:, 19:22], g["log_scales"].numpy())
    np.testing.assert_array_equal(rows[:, 22:26], g["quats_wxyz"].numpy())


def test_reads_what_gsplat_exports(tmp_path):
    exporter = pytest.importorskip("gsplat.exporter")
    g = gaussians(64, 3, seed=3)
    data = exporter.export_splats(
        means=g["means"],
        scales=g["log_scales"],
        quats=g["quats_wxyz"],
        opacities=g["opacity_logits"],
        sh0=g["sh0"],
        shN=g["shN"],
        format="ply",
    )
    (tmp_path / "gs.ply").write_bytes(data)
    back = read_gaussian_ply(tmp_path / "gs.ply")  # gsplat writes no normals: not required
    assert back.sh_degree == 3
    for k in FIELDS:
        assert torch.equal(getattr(back, k), g[k]), k


def write_point_cloud(path, n: int = 10) -> None:
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + [
        ("red", "u1"), ("green", "u1"), ("blue", "u1")
    ])  # fmt: skip
    rec["x"] = np.arange(n)
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path.write_bytes(header.encode() + rec.tobytes())


def test_plain_point_cloud_names_the_missing_fields(tmp_path):
    path = tmp_path / "points.ply"
    write_point_cloud(path)
    with pytest.raises(GaussianPlyError) as e:
        read_gaussian_ply(path)
    msg = str(e.value)
    assert str(path) in msg and "not a 3D Gaussian splatting PLY" in msg
    for name in ("f_dc_0", "f_dc_2", "opacity", "scale_0", "scale_2", "rot_0", "rot_3"):
        assert name in msg
    assert "red" in msg  # what the file has


def test_truncated_file(tmp_path):
    g = gaussians(100, 2)
    path = write_gaussian_ply(tmp_path / "s.ply", *(g[k] for k in FIELDS))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(GaussianPlyError, match=r"truncated.*100 vertices.*99 complete"):
        read_gaussian_ply(path)
    path.write_bytes(data[:30])  # cut inside the header
    with pytest.raises(GaussianPlyError, match="end_header"):
        read_gaussian_ply(path)


def test_nan_values_are_reported_by_field(tmp_path):
    g = gaussians(20, 0)
    path = write_gaussian_ply(tmp_path / "s.ply", *(g[k] for k in FIELDS))
    lines, body = split_header(path.read_bytes())
    rows = np.frombuffer(body, dtype="<f4").reshape(20, 17).copy()
    rows[3, 9] = np.nan  # opacity
    rows[[1, 7], 10] = np.inf  # scale_0
    path.write_bytes(("\n".join(lines) + "\n").encode() + rows.tobytes())
    with pytest.raises(GaussianPlyError) as e:
        read_gaussian_ply(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "3 non-finite values" in msg and "1 in 'opacity'" in msg and "2 in 'scale_0'" in msg


def test_writer_refuses_nan_and_keeps_the_previous_file(tmp_path):
    g = gaussians(10, 1)
    path = write_gaussian_ply(tmp_path / "s.ply", *(g[k] for k in FIELDS))
    bad = dict(g, means=g["means"].clone())
    bad["means"][2, 1] = float("nan")
    with pytest.raises(GaussianPlyError, match=r"1 non-finite values.*'y'"):
        write_gaussian_ply(path, *(bad[k] for k in FIELDS))
    assert torch.equal(read_gaussian_ply(path).means, g["means"])
    with pytest.raises(ValueError, match="shN"):
        write_gaussian_ply(path, *(g[k] for k in FIELDS[:-1]), torch.zeros(10, 4, 3))


def test_wrong_f_rest_count(tmp_path):
    names = "x y z f_dc_0 f_dc_1 f_dc_2 f_rest_0 f_rest_1 f_rest_2 f_rest_3 opacity"
    names += " scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3"
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
    header += "".join(f"property float {p}\n" for p in names.split()) + "end_header\n"
    path = tmp_path / "s.ply"
    path.write_bytes(header.encode() + np.zeros((2, 18), "<f4").tobytes())
    with pytest.raises(GaussianPlyError, match=r"4 'f_rest_\*' properties.*0, 9, 24 or 45"):
        read_gaussian_ply(path)


def test_not_a_ply_and_missing_file(tmp_path):
    path = tmp_path / "s.ply"
    path.write_text("solid cube\nfacet normal 0 0 1\n")
    with pytest.raises(GaussianPlyError, match="not a PLY file"):
        read_gaussian_ply(path)
    with pytest.raises(GaussianPlyError, match="does not exist"):
        read_gaussian_ply(tmp_path / "nope.ply")


def test_ascii_and_big_endian_variants_read(tmp_path):
    g = gaussians(7, 1, seed=5)
    path = write_gaussian_ply(tmp_path / "s.ply", *(g[k] for k in FIELDS))
    lines, body = split_header(path.read_bytes())
    props = [ln.split()[2] for ln in lines if ln.startswith("property")]
    rows = np.frombuffer(body, dtype="<f4").reshape(7, len(props))

    # ASCII, with a comment, an extra property, shuffled columns and a face element after
    order = list(reversed(range(len(props))))
    text = ["ply", "format ascii 1.0", "comment written by hand", "element vertex 7"]
    text += ["property float confidence"] + [f"property float {props[i]}" for i in order]
    text += ["element face 1", "property list uchar int vertex_indices", "end_header"]
    text += [" ".join(["0.5"] + [repr(float(v)) for v in r[order]]) for r in rows]
    text += ["3 0 1 2"]
    (tmp_path / "a.ply").write_text("\n".join(text) + "\n")
    back = read_gaussian_ply(tmp_path / "a.ply")
    for k in FIELDS:
        assert torch.equal(getattr(back, k), g[k]), k

    # big endian, after an element of another kind
    head = lines[:2] + ["element camera 2", "property double f"] + lines[2:]
    head[1] = "format binary_big_endian 1.0"
    data = ("\n".join(head) + "\n").encode() + np.zeros(2, ">f8").tobytes()
    (tmp_path / "b.ply").write_bytes(data + rows.astype(">f4").tobytes())
    back = read_gaussian_ply(tmp_path / "b.ply")
    for k in FIELDS:
        assert torch.equal(getattr(back, k), g[k]), k


def test_ascii_truncated_and_non_numeric(tmp_path):
    names = "x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3"
    head = ["ply", "format ascii 1.0", "element vertex 3"]
    head += [f"property float {p}" for p in names.split()] + ["end_header"]
    row = " ".join(["1"] * 14)
    path = tmp_path / "a.ply"
    path.write_text("\n".join(head + [row, row]) + "\n")
    with pytest.raises(GaussianPlyError, match=r"truncated.*3 vertices.*2 complete"):
        read_gaussian_ply(path)
    path.write_text("\n".join(head + [row, row, row.replace("1", "x", 1)]) + "\n")
    with pytest.raises(GaussianPlyError, match="non-numeric vertex value 'x'"):
        read_gaussian_ply(path)


def test_200k_gaussians_write_and_read_fast(tmp_path):
    g = gaussians(200_000, 3)
    t0 = time.perf_counter()
    path = write_gaussian_ply(tmp_path / "big.ply", *(g[k] for k in FIELDS))
    back = read_gaussian_ply(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, f"200k Gaussians took {elapsed:.2f} s"
    assert torch.equal(back.shN, g["shN"]) and torch.equal(back.means, g["means"])
