"""Meshes from label volumes (legacy and multi-resolution), read back by cloud-volume."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

import ngconvert
from ngconvert.meshes.meshing import MeshOptions, mesh_layer
from conftest import run


def cv_meshes(path, ids, lod=0):
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{Path(path).resolve()}", progress=False)
    out = {}
    for i in ids:
        m = cv.mesh.get(i, lod=lod) if lod else cv.mesh.get(i)
        m = m[i] if isinstance(m, dict) else m
        out[i] = (np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64))
    return out


def open_edges(v, f, decimals=2) -> int:
    """Edges used by one triangle only, after merging coincident vertices (written here, not
    taken from the library)."""
    _, inv = np.unique(np.round(v, decimals), axis=0, return_inverse=True)
    f = inv.reshape(-1)[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts == 1).sum())


def boundary_points(labels, label, offset, res):
    """Centres (nm) of the voxel faces between ``label`` and anything else; voxel v spans
    [v, v+1) * res, as the viewer draws it."""
    inside = np.pad(labels == label, 1)           # padded index q is voxel q - 1
    pts = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        idx = np.argwhere(inside[tuple(lo)] != inside[tuple(hi)]).astype(np.float64)
        pos = idx - 0.5                            # other axes: centre of voxel q - 1
        pos[:, axis] = idx[:, axis]                # the face between voxels p - 1 and p
        pts.append((pos + np.array(offset)) * np.array(res))
    return np.concatenate(pts)


def blobs(shape, seed=0, n=5):
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.uint32)
    grid = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij", sparse=True)
    for i in range(1, n + 1):
        c = [rng.uniform(0.25, 0.75) * s for s in shape]
        r = [rng.uniform(0.12, 0.22) * s for s in shape]
        a[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) < 1] = i * 7
    return a


@pytest.mark.parametrize("fmt", ["legacy", "multires"])
def test_meshes_lie_on_label_boundaries(tmp_path, fmt):
    a = blobs((60, 52, 30))
    res, off = (8.0, 8.0, 20.0), (10, -4, 3)
    ngconvert.write_segmentation(a, tmp_path / "seg", resolution=res, offset=off,
                                 mesh=MeshOptions(format=fmt, region=24))
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert info["mesh"] == "mesh"
    mesh_info = json.loads((tmp_path / "seg" / "mesh" / "info").read_text())
    assert mesh_info["@type"] == ("neuroglancer_legacy_mesh" if fmt == "legacy" else "neuroglancer_multilod_draco")
    ids = sorted(set(np.unique(a).tolist()) - {0})
    meshes = cv_meshes(tmp_path / "seg", ids)
    diagonal = float(np.linalg.norm(res))
    for i in ids:
        v, f = meshes[i]
        assert len(f) > 20, i
        tree = cKDTree(boundary_points(a, i, off, res))
        dist, _ = tree.query(v)
        assert dist.max() <= diagonal, (i, dist.max())
        assert open_edges(v, f) == 0, i                       # closed surfaces
        # and each label's surface encloses its voxels: the bounding boxes agree within a voxel
        vox = np.argwhere(a == i)
        lo = (vox.min(axis=0) + np.array(off)) * res
        hi = (vox.max(axis=0) + 1 + np.array(off)) * res
        assert np.all(v.min(axis=0) >= lo - np.array(res)) and np.all(v.max(axis=0) <= hi + np.array(res))


def test_sphere_cut_by_regions_has_no_gaps(tmp_path):
    n = 50
    g = np.meshgrid(*(np.arange(n) for _ in range(3)), indexing="ij", sparse=True)
    a = (((g[0] - 24.6) ** 2 + (g[1] - 25.2) ** 2 + (g[2] - 23.9) ** 2) < 21 ** 2).astype(np.uint32) * 3
    ngconvert.write_segmentation(a, tmp_path / "s", resolution=(1, 1, 1),
                                 mesh=MeshOptions(format="legacy", region=16))      # 4x4x4 regions
    v, f = cv_meshes(tmp_path / "s", [3])[3]
    assert open_edges(v, f) == 0
    r = np.linalg.norm(v - np.array([25.1, 25.7, 24.4]), axis=1)   # voxel centres sit at i + 0.5
    assert abs(r.mean() - 21) < 0.6 and r.max() - r.min() < 2.5


def parse_manifest(data: bytes):
    """The multires manifest read with the spec's layout (independently of the writer)."""
    n = struct.unpack_from("<I", data, 24)[0]
    counts = struct.unpack_from(f"<{n}I", data, 28 + 16 * n)
    assert len(data) == 28 + 20 * n + 16 * sum(counts)
    at, lods = 28 + 20 * n, []
    for c in counts:
        pos = np.frombuffer(data, "<u4", 3 * c, at).reshape(3, c).T
        at += 12 * c
        sizes = np.frombuffer(data, "<u4", c, at)
        at += 4 * c
        lods.append((pos, sizes))
    return n, lods


def morton(p):
    code = 0
    for bit in range(16):
        for axis in range(3):
            code |= ((int(p[axis]) >> bit) & 1) << (3 * bit + axis)
    return code


def test_multires_manifest_lods_and_fragments(tmp_path):
    a = blobs((96, 96, 64), seed=2, n=3)
    dest = tmp_path / "seg"
    ngconvert.write_segmentation(a, dest, resolution=(4, 4, 4))
    mesh_layer(dest, MeshOptions(format="multires", lods=3))
    ids = sorted(set(np.unique(a).tolist()) - {0})
    for i in ids:
        manifest = (dest / "mesh" / f"{i}.index").read_bytes()
        n, lods = parse_manifest(manifest)
        assert n == 3
        assert len(lods[-1][0]) == 1                        # one root node
        frag_bytes = (dest / "mesh" / str(i)).stat().st_size
        assert frag_bytes == sum(int(s.sum()) for _, s in lods)
        for pos, _sizes in lods:
            codes = [morton(p) for p in pos]
            assert codes == sorted(codes)                   # z-order
        for lod in range(1, n):                              # every node's parent exists
            parents = {tuple(p // 2) for p in lods[lod - 1][0]}
            assert parents <= {tuple(p) for p in lods[lod][0]}
    fine = cv_meshes(dest, ids, lod=0)
    coarse = cv_meshes(dest, ids, lod=2)
    for i in ids:
        assert 0 < len(coarse[i][1]) < len(fine[i][1])
        tree = cKDTree(boundary_points(a, i, (0, 0, 0), (4, 4, 4)))
        assert tree.query(fine[i][0])[0].max() <= np.linalg.norm((4, 4, 4))
        assert tree.query(coarse[i][0])[0].max() <= 8 * np.linalg.norm((4, 4, 4))


def test_mesh_command_options_and_safety(tmp_path):
    a = blobs((40, 40, 40), seed=4, n=3)
    a[1:3, 1:3, 1:3] = 99                                   # 8 voxels: dust
    np.save(tmp_path / "a.npy", a)
    dest = tmp_path / "seg"
    run("convert", tmp_path / "a.npy", dest, "--type", "segmentation", "--chunk-size", "16,16,16", "--quiet",
        check=0)
    p = run("mesh", dest, "--dust", "20", check=0)
    assert "1 under --dust skipped" in p.stderr
    assert not (dest / "mesh" / "99:0").exists() and (dest / "mesh" / "7:0").exists()
    p = run("mesh", dest)
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    run("mesh", dest, "--overwrite", "--format", "multires", "--mesh-scale", "1", "--mesh-ids", "7,14",
        "--quiet", check=0)
    assert sorted(x.name for x in (dest / "mesh").iterdir()) == ["14", "14.index", "7", "7.index", "info"]
    assert not (dest / ".ngconvert").exists()
    p = run("mesh", tmp_path / "nothing")
    assert p.returncode == 2 and "no info" in p.stderr
    img = tmp_path / "img"
    ngconvert.write_volume(np.zeros((8, 8, 8), np.float32), img)
    p = run("mesh", img)
    assert p.returncode == 2 and "segmentation" in p.stderr


def test_serial_and_parallel_meshes_are_identical(tmp_path):
    a = blobs((64, 48, 40), seed=5)
    np.save(tmp_path / "a.npy", a)
    for w in ("1", "2"):
        run("convert", tmp_path / "a.npy", tmp_path / w, "--type", "segmentation", "--mesh", "--mesh-format",
            "multires", "--workers", w, "--quiet", check=0)
    files = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "1") == files(tmp_path / "2")


def test_interrupted_meshing_resumes_to_the_same_bytes(tmp_path):
    from ngconvert.tasks.executors import SerialExecutor

    a = blobs((64, 64, 48), seed=7, n=6)
    for name in ("clean", "broken"):
        ngconvert.write_segmentation(a, tmp_path / name, resolution=(2, 2, 3))
    opts = dict(format="multires", region=16)
    mesh_layer(tmp_path / "clean", MeshOptions(**opts), workers=1)

    class Interrupted(SerialExecutor):
        def run(self, fn, items, context):
            for n, pair in enumerate(super().run(fn, items, context)):
                if n == 5:
                    raise RuntimeError("worker lost")
                yield pair

    with pytest.raises(RuntimeError, match="worker lost"):
        mesh_layer(tmp_path / "broken", MeshOptions(**opts), executor=Interrupted())
    assert "mesh" not in json.loads((tmp_path / "broken" / "info").read_text())
    with pytest.raises(ngconvert.UserError, match="--resume"):
        mesh_layer(tmp_path / "broken", MeshOptions(**opts), workers=1)
    mesh_layer(tmp_path / "broken", workers=1, resume=True)
    files = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "broken") == files(tmp_path / "clean")


def test_multires_node_holding_only_sub_quantum_geometry():
    """A node whose triangles all collapse at 10-bit precision gets an empty fragment (Draco
    refuses a mesh of degenerate triangles)."""
    from ngconvert.meshes.formats import collapse_quantized, multires_segment, parse_multires_manifest
    from ngconvert.meshes.geometry import concat

    g = np.meshgrid(*(np.arange(40) for _ in range(3)), indexing="ij", sparse=True)
    import zmesh

    m = zmesh.Mesher((1, 1, 1))
    m.mesh(((g[0] - 20) ** 2 + (g[1] - 20) ** 2 + (g[2] - 20) ** 2 < 15 ** 2).astype(np.uint32))
    sphere = m.get(1, normals=False)
    speck = (np.array([[200.0, 200, 200], [200.001, 200, 200], [200, 200.001, 200]]), np.array([[0, 1, 2]]))
    mesh = concat([(np.asarray(sphere.vertices, float), np.asarray(sphere.faces)), speck])
    seg = multires_segment([mesh], voxel_nm=1.0, bits=10, lods=3)
    parsed = parse_multires_manifest(seg.manifest)
    assert any((s == 0).any() for s in parsed["sizes"])           # the speck's node is empty
    q, f = collapse_quantized(np.array([[1, 1, 1], [1, 1, 1], [2, 1, 1], [1, 2, 1]]), np.array([[0, 1, 2], [0, 2, 3]]))
    assert len(q) == 3 and q[f].tolist() == [[[1, 1, 1], [2, 1, 1], [1, 2, 1]]]     # same triangle, same winding


def test_coarse_lods_of_an_off_grid_mesh_finish(tmp_path):
    """A welded LOD-0 mesh whose vertices are off the simplifier's half-voxel grid once made
    zmesh's simplifier loop forever (label 564 of the 128 benchmark volume)."""
    code = ("import numpy as np\nfrom ngconvert.meshes.meshing import simplify_levels\n"
            f"d = np.load({str(Path(__file__).parent / 'data' / 'mesh_564.npz')!r})\n"
            "lv = simplify_levels((d['v'], d['f']), 500.0, 1000.0, 3)\n"
            "print([len(f) for _v, f in lv])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    counts = json.loads(p.stdout)
    assert counts[0] == 784 and counts[0] > counts[1] > counts[2] > 0
