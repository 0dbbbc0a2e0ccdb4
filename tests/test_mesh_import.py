"""Importing surface meshes: formats, units, transforms, winding, ids, and bad input."""
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import ngconvert
from ngconvert.meshes.meshing import MeshOptions
from conftest import one_line_error, run


def icosphere(radius=10.0, centre=(0, 0, 0)):
    """A closed, outward-facing triangle sphere (subdivided icosahedron), built here."""
    t = (1 + 5 ** 0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
         (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
         (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, float) / np.linalg.norm(p) for p in v]
    for _ in range(2):
        mid, nf = {}, []

        def m(a, b):
            k = (min(a, b), max(a, b))
            if k not in mid:
                p = v[a] + v[b]
                v.append(p / np.linalg.norm(p))
                mid[k] = len(v) - 1
            return mid[k]
        for a, b, c in f:
            ab, bc, ca = m(a, b), m(b, c), m(c, a)
            nf += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = nf
    return np.array(v) * radius + np.array(centre), np.array(f)


def signed_volume(v, f):
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


def write_gifti(path, v, f):
    g = nib.gifti.GiftiImage()
    g.add_gifti_data_array(nib.gifti.GiftiDataArray(v.astype(np.float32), intent="NIFTI_INTENT_POINTSET"))
    g.add_gifti_data_array(nib.gifti.GiftiDataArray(f.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE"))
    nib.save(g, str(path))


def write_obj(path, v, f):
    Path(path).write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v) +
                          "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f))


def write_off(path, v, f):
    Path(path).write_text(f"OFF\n{len(v)} {len(f)} 0\n" + "".join(f"{a} {b} {c}\n" for a, b, c in v) +
                          "".join(f"3 {a} {b} {c}\n" for a, b, c in f))


def write_ply(path, v, f):
    head = (f"ply\nformat ascii 1.0\nelement vertex {len(v)}\nproperty float x\nproperty float y\n"
            f"property float z\nelement face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    Path(path).write_text(head + "".join(f"{a} {b} {c}\n" for a, b, c in v) +
                          "".join(f"3 {a} {b} {c}\n" for a, b, c in f))


def write_stl(path, v, f):
    out = [b"\0" * 80, struct.pack("<I", len(f))]
    for a, b, c in f:
        out.append(struct.pack("<12fH", 0, 0, 0, *v[a], *v[b], *v[c], 0))
    Path(path).write_bytes(b"".join(out))


def write_vtk(path, v, f):
    Path(path).write_text("# vtk DataFile Version 3.0\nsphere\nASCII\nDATASET POLYDATA\n"
                          f"POINTS {len(v)} float\n" + "".join(f"{a} {b} {c}\n" for a, b, c in v) +
                          f"POLYGONS {len(f)} {4 * len(f)}\n" + "".join(f"3 {a} {b} {c}\n" for a, b, c in f))


def read_legacy(root, label):
    """Every fragment of a legacy mesh, parsed with the spec's binary layout."""
    import gzip

    root = Path(root)
    manifest = json.loads((root / f"{label}:0").read_text())
    vs, fs, n = [], [], 0
    for name in manifest["fragments"]:
        p = root / name
        data = p.read_bytes() if p.exists() else gzip.decompress((root / (name + ".gz")).read_bytes())
        nv = struct.unpack_from("<I", data)[0]
        vs.append(np.frombuffer(data, "<f4", 3 * nv, 4).reshape(nv, 3).astype(float))
        fs.append(np.frombuffer(data, "<u4", offset=4 + 12 * nv).reshape(-1, 3).astype(np.int64) + n)
        n += nv
    return np.concatenate(vs), np.concatenate(fs), manifest["fragments"]


@pytest.fixture
def layer(tmp_path):
    """A small segmentation layer with segment properties (ids 1 and 2) and a NIfTI affine."""
    a = np.zeros((40, 40, 40), np.uint16)
    a[5:20, 5:20, 5:20] = 1
    a[22:35, 22:35, 22:35] = 2
    aff = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -40], [0, 0, 2.0, -40], [0, 0, 0, 1]])
    img = nib.Nifti1Image(a, aff)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "a.nii.gz"))
    (tmp_path / "t.json").write_text(json.dumps({"1": "one", "2": "two", "42": "imported"}))
    run("convert", tmp_path / "a.nii.gz", tmp_path / "layer", "--labels", tmp_path / "t.json", "--quiet", check=0)
    return tmp_path / "layer"


def test_gifti_vertices_times_transform_in_nm(tmp_path, layer):
    v, f = icosphere(5.0, (3, -2, 7))
    write_gifti(tmp_path / "lh.surf.gii", v, f)
    m = np.array([[0.5, 0.1, 0, 30], [0, 0.8, 0, 40], [0.2, 0, 1.1, 25], [0, 0, 0, 1]])
    (tmp_path / "m.txt").write_text("\n".join(" ".join(map(str, r)) for r in m))
    run("mesh-import", tmp_path / "lh.surf.gii", layer, "--id", 42, "--transform", tmp_path / "m.txt",
        "--units", "mm", check=0)
    info = json.loads((layer / "info").read_text())
    assert info["mesh"] == "mesh"
    from cloudvolume import CloudVolume

    mesh = CloudVolume(f"file://{layer}", progress=False).mesh.get(42)
    mesh = mesh[42] if isinstance(mesh, dict) else mesh
    expect = (v.astype(np.float32).astype(float) @ m[:3, :3].T + m[:3, 3]) * 1e6
    got = np.asarray(mesh.vertices, float)
    assert got.shape == expect.shape
    order = lambda x: x[np.lexsort(np.round(x, -1).T[::-1])]      # the reader may reorder vertices
    np.testing.assert_allclose(order(got), order(expect), rtol=1e-6, atol=2.0)
    assert signed_volume(got, np.asarray(mesh.faces)) > 0


def test_from_world_uses_the_layer_affine(tmp_path, layer):
    # world (mm) -> voxel: (x + 40) / 2; voxel v -> layer nm (v + 0.5) * 2e6
    v, f = icosphere(6.0, (0, 0, 0))
    write_gifti(tmp_path / "s.surf.gii", v, f)
    run("mesh-import", tmp_path / "s.surf.gii", layer, "--id", 1, "--from-world", "--overwrite", check=0)
    got, _f, _names = read_legacy(layer / "mesh", 1)
    expect = ((v.astype(np.float32) + 40) / 2 + 0.5) * 2e6
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1.0)


def test_mirroring_transform_flips_winding(tmp_path):
    v, f = icosphere(4.0)
    write_obj(tmp_path / "s.obj", v, f)
    (tmp_path / "mirror.txt").write_text("-1 0 0 0  0 1 0 0  0 0 1 0  0 0 0 1")
    run("mesh-import", tmp_path / "s.obj", tmp_path / "plain", "--id", 3, check=0)
    run("mesh-import", tmp_path / "s.obj", tmp_path / "mirrored", "--id", 3, "--transform",
        tmp_path / "mirror.txt", check=0)
    v1, f1, _ = read_legacy(tmp_path / "plain", 3)
    v2, f2, _ = read_legacy(tmp_path / "mirrored", 3)
    np.testing.assert_allclose(v2[:, 0], -v1[:, 0], atol=1e-5)
    assert signed_volume(v1, f1) > 0 and signed_volume(v2, f2) > 0      # still facing outwards


@pytest.mark.parametrize("ext,writer", [(".obj", write_obj), (".off", write_off), (".ply", write_ply),
                                        (".stl", write_stl), (".vtk", write_vtk), (".surf.gii", write_gifti)])
def test_every_format_reads_the_same_surface(tmp_path, ext, writer):
    v, f = icosphere(12.0, (50, 60, 70))
    writer(tmp_path / f"s{ext}", v, f)
    units = ["--units", "um"]
    run("mesh-import", tmp_path / f"s{ext}", tmp_path / "out", "--id", 9, *units, check=0)
    got, gf, _ = read_legacy(tmp_path / "out", 9)
    assert len(gf) == len(f)
    # STL has no shared vertices: compare as point sets
    ref = np.unique(np.round(v.astype(np.float32) * 1e3, 0), axis=0)
    np.testing.assert_allclose(np.unique(np.round(got, 0), axis=0), ref, atol=1.0)
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert info["@type"] == "neuroglancer_legacy_mesh"


def test_several_files_one_id_and_id_lists(tmp_path):
    a, fa = icosphere(3.0, (0, 0, 0))
    b, fb = icosphere(3.0, (10, 0, 0))
    write_obj(tmp_path / "a.obj", a, fa)
    write_obj(tmp_path / "b.obj", b, fb)
    run("mesh-import", tmp_path / "a.obj", tmp_path / "b.obj", tmp_path / "one", "--id", 5, check=0)
    _v, _f, names = read_legacy(tmp_path / "one", 5)
    assert len(names) == 2                                   # fragments of one segment
    (tmp_path / "ids.csv").write_text("id,file\n5,a.obj,b.obj\n6,b.obj\n")
    (tmp_path / "labels.csv").write_text("id,name,color\n5,pair,#ff0000\n6,single,#00ff00\n")
    run("mesh-import", tmp_path / "many", "--ids", tmp_path / "ids.csv", "--format", "multires",
        "--labels", tmp_path / "labels.csv", check=0)
    root = tmp_path / "many"
    info = json.loads((root / "info").read_text())
    assert info["@type"] == "neuroglancer_multilod_draco" and info["segment_properties"] == "segment_properties"
    props = json.loads((root / "segment_properties" / "info").read_text())
    assert props["inline"]["ids"] == ["5", "6"]
    for i in (5, 6):
        data = (root / f"{i}.index").read_bytes()
        n = struct.unpack_from("<I", data, 24)[0]
        counts = struct.unpack_from(f"<{n}I", data, 28 + 16 * n)
        assert len(data) == 28 + 20 * n + 16 * sum(counts)


def test_generated_and_imported_multires_meshes_share_a_layer(tmp_path):
    a = np.zeros((32, 32, 32), np.uint32)
    a[4:28, 4:28, 4:28] = 1
    ngconvert.write_segmentation(a, tmp_path / "l", resolution=(1000, 1000, 1000),
                                 mesh=MeshOptions(format="multires"))
    v, f = icosphere(5.0, (16, 16, 16))
    write_obj(tmp_path / "s.obj", v, f)
    p = run("mesh-import", tmp_path / "s.obj", tmp_path / "l", "--id", 2, "--units", "um", check=0)
    assert "not segments" not in p.stderr                    # no segment properties: nothing to check
    line = one_line_error(run("mesh-import", tmp_path / "s.obj", tmp_path / "l", "--id", 2, "--format", "legacy"))
    assert "multires" in line
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{tmp_path / 'l'}", progress=False)
    for i in (1, 2):
        m = cv.mesh.get(i)
        m = m[i] if isinstance(m, dict) else m
        assert len(m.faces) > 0
    m = cv.mesh.get(2)
    m = m[2] if isinstance(m, dict) else m
    c = np.asarray(m.vertices).mean(axis=0)
    np.testing.assert_allclose(c, [16000, 16000, 16000], atol=200)


def test_bad_mesh_input(tmp_path, layer):
    v, f = icosphere(2.0)
    write_obj(tmp_path / "ok.obj", v, f)
    Path(tmp_path / "range.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    Path(tmp_path / "nan.obj").write_text("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    Path(tmp_path / "empty.obj").write_text("# nothing\n")
    Path(tmp_path / "junk.ply").write_bytes(b"ply\nthis is not a mesh\x00\x01")
    (tmp_path / "t3.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    dest = tmp_path / "new"
    cases = [
        (["range.obj", "--id", 1], "range.obj"),
        (["nan.obj", "--id", 1], "not finite"),
        (["empty.obj", "--id", 1], "empty"),
        (["junk.ply", "--id", 1], "junk.ply"),
        (["missing.obj", "--id", 1], "no such mesh file"),
        (["ok.obj", "--id", 1, "--transform", tmp_path / "t3.txt"], "16 numbers"),
        (["ok.obj"], "--id"),
        (["ok.obj", "--id", 0], "1 or more"),
    ]
    for args, text in cases:
        args = [tmp_path / a if isinstance(a, str) and a.endswith((".obj", ".ply")) else a for a in args]
        line = one_line_error(run("mesh-import", args[0], dest, *args[1:]))
        assert text in line, (args, line)
    assert not dest.exists()
    p = run("mesh-import", tmp_path / "ok.obj", layer, "--id", 77, check=0)
    assert "warning: 1 id(s) are not segments" in p.stderr and "77" in p.stderr
