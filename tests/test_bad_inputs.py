"""A corpus of bad inputs and faults, through the command line.

The promise every row of ``CASES`` checks: a bad input gives exit status 2, exactly one
non-empty line on stderr and no traceback; nothing that looks complete appears at the
destination (no ``info`` file where there was none); a dataset that was already at the
destination, and every source file, are byte-identical afterwards.

The fault tests below the table interrupt conversions with SIGTERM and SIGINT: no
traceback from the main process or its workers, nothing that looks complete, ``--resume``
finishes to exactly the output of a clean run, and no temporary copy is left in TMPDIR.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
DEFAULT_TIMEOUT = 60


# ---------------------------------------------------------------------------------------------
# helpers

def tree_digest(path) -> dict:
    """Relative path -> sha256 of every file under ``path``, ``"<dir>"`` for every folder.

    The root itself is ``"."``; a missing root gives ``{}``; a root that is a file gives
    ``{".": sha256}``.  Symbolic links are recorded by their target, not followed.
    """
    root = Path(path)
    if not os.path.lexists(root):
        return {}

    def one(p: Path) -> str:
        if p.is_symlink():
            return "<link>" + os.readlink(p)
        if p.is_dir():
            return "<dir>"
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    out = {".": one(root)}
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                out[p.relative_to(root).as_posix()] = one(p)
    return out


def cli(args, *, cwd=None, env=None, timeout=DEFAULT_TIMEOUT):
    """``ngconvert ARGS...`` in a new session; on timeout the whole group is killed.

    Returns ``(returncode, stdout, stderr, timed_out)``."""
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", *map(str, args)], cwd=cwd, env=env or ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return proc.returncode, out, err, True


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _infos(digest: dict) -> set:
    return {k for k in digest if k == "info" or k.endswith("/info")}


# ---------------------------------------------------------------------------------------------
# inputs, built once

def _label_volume(shape=(24, 24, 24)) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    out = np.zeros(shape, np.uint32)
    for lab, c in ((3, (6, 6, 6)), (7, (17, 8, 12)), (12, (10, 17, 17))):
        out[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 30] = lab
    return out


def _must(args, cwd):
    rc, out, err, timed_out = cli(args, cwd=cwd)
    assert rc == 0 and not timed_out, (args, rc, err)


OBJ_TETRA = "v 0 0 0\nv 10 0 0\nv 0 10 0\nv 0 0 10\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Small inputs shared by every case (never written to by a case)."""
    c = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 200, (24, 24, 24))).astype(np.uint8)
    lab = _label_volume()
    np.save(c / "img.npy", img)
    np.save(c / "img2.npy", img[::-1].copy())
    np.save(c / "lab.npy", lab)
    np.save(c / "float.npy", img.astype(np.float32) / 7)
    np.save(c / "negint.npy", (lab.astype(np.int16) - 5))
    np.save(c / "complex.npy", img.astype(np.complex64))
    np.save(c / "d4.npy", np.zeros((2, 3, 24, 24), np.uint8))
    np.save(c / "d5.npy", np.zeros((4, 4, 4, 2, 3), np.uint8))
    np.save(c / "zero.npy", np.zeros((24, 0, 24), np.uint8))
    np.save(c / "object.npy", np.array([[[{"a": 1}, None]]], dtype=object), allow_pickle=True)
    (c / "empty.npy").write_bytes(b"")
    data = (c / "img.npy").read_bytes()
    (c / "truncated.npy").write_bytes(data[: len(data) // 2])
    (c / "folder.npy").mkdir()                         # a folder where a file is expected

    nimg = nib.Nifti1Image(img, np.diag([1.0, 1.0, 1.0, 1.0]))
    nimg.header.set_xyzt_units("mm")
    nib.save(nimg, str(c / "img.nii.gz"))
    nib.save(nimg, str(c / "img.nii"))
    gz = (c / "img.nii.gz").read_bytes()
    (c / "truncated.nii.gz").write_bytes(gz[: len(gz) // 2])
    (c / "text.nii").write_text("this is not a NIfTI file\n")
    (c / "text.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI file either\n"))
    (c / "notes.txt").write_text("hello\n")

    (c / "labels.csv").write_text("id,name,color\n3,alpha,#ff0000\n7,beta,#00ff00\n12,gamma,#0000ff\n")
    (c / "dup.csv").write_text("id,name\n3,alpha\n3,beta\n7,gamma\n")
    (c / "badcolor.csv").write_text("id,name,color\n3,alpha,#gg0000\n7,beta,#00ff00\n")
    (c / "utf16.csv").write_bytes("id,name\n3,alpha\n7,beta\n".encode("utf-16"))
    (c / "negid.csv").write_text("id,name\n-3,alpha\n7,beta\n")
    (c / "badid.json").write_text('{"three": "alpha", "7": "beta"}')
    (c / "empty.csv").write_text("")

    # slice stacks
    from PIL import Image
    import tifffile

    (c / "png").mkdir()
    (c / "tif").mkdir()
    (c / "mixed_sizes").mkdir()
    (c / "corrupt_png").mkdir()
    (c / "empty_dir").mkdir()
    for z in range(3):
        Image.fromarray(img[:, :, z].T.copy()).save(c / "png" / f"s{z:02d}.png")
        tifffile.imwrite(c / "tif" / f"s{z:02d}.tif", img[:, :, z].T.copy())
        size = 24 if z != 1 else 20
        Image.fromarray(np.zeros((size, size), np.uint8)).save(c / "mixed_sizes" / f"s{z:02d}.png")
        Image.fromarray(img[:, :, z].T.copy()).save(c / "corrupt_png" / f"s{z:02d}.png")
    raw = (c / "corrupt_png" / "s01.png").read_bytes()
    (c / "corrupt_png" / "s01.png").write_bytes(raw[: len(raw) // 3])
    (c / "order.txt").write_text("s00 0\nmissing_slice 1\ns02 2\n")

    # assemble: masks
    (c / "masks").mkdir()
    (c / "overlap").mkdir()
    (c / "badmasks").mkdir()
    m = np.zeros((8, 8, 8), np.uint8)
    m[2:6, 2:6, 2:6] = 1
    np.save(c / "masks" / "alpha.npy", m)
    np.save(c / "masks" / "beta.npy", np.roll(m, 3, axis=0))
    np.save(c / "overlap" / "one.npy", np.ones((8, 8, 8), np.uint8))
    np.save(c / "overlap" / "two.npy", np.ones((8, 8, 8), np.uint8))
    (c / "badmasks" / "alpha.npy").write_text("not a numpy file")
    (c / "origins_bad.csv").write_text("alpha,1,2\nbeta,0,0,0\n")
    (c / "ids_bad.csv").write_text("alpha,x\nbeta,2\n")
    (c / "ids_zero.csv").write_text("alpha,0\nbeta,2\n")

    # meshes
    (c / "tetra.obj").write_text(OBJ_TETRA)
    (c / "garbage.obj").write_text("this is not\x00 a mesh at all\n")
    (c / "nan.obj").write_text(OBJ_TETRA.replace("v 10 0 0", "v nan 0 0"))
    (c / "tetra.xyz").write_text(OBJ_TETRA)
    (c / "transform5.txt").write_text("1 0 0 0 1\n")
    (c / "singular.txt").write_text("0 0 0 0\n0 0 0 0\n0 0 0 0\n0 0 0 1\n")
    (c / "ids_list_bad.csv").write_text(f"seven,{c / 'tetra.obj'}\n")

    # configs for ``run``
    def cfg(name, obj):
        (c / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))

    cfg("cfg_invalid.json", '{"source": "img.npy", ')
    cfg("cfg_list.json", [1, 2, 3])
    cfg("cfg_unknown.json", {"source": str(c / "img.npy"), "dest": "out", "colour": "red"})
    cfg("cfg_source_number.json", {"source": 17, "dest": "out"})
    cfg("cfg_option_unknown.json", {"source": str(c / "img.npy"), "dest": "out", "options": {"speed": 11}})
    cfg("cfg_option_type.json", {"source": str(c / "img.npy"), "dest": "out", "options": {"gzip_level": "high"}})
    cfg("cfg_option_resolution.json", {"source": str(c / "img.npy"), "dest": "out",
                                       "options": {"resolution": [1, 2]}})
    cfg("cfg_options_list.json", {"source": str(c / "img.npy"), "dest": "out", "options": ["encoding", "png"]})
    cfg("cfg_storage_unknown.json", {"source": str(c / "img.npy"), "dest": "out", "storage": {"bucket_size": 1}})
    cfg("cfg_workflow_missing.json", {"s3_bucket_name_for_download": "in-bucket"})
    cfg("cfg_workflow_types.json", {
        "s3_creds_file": "creds.json", "s3_bucket_name_for_download": "in", "sorted_filename": "order.txt",
        "folder_to_write_to": "w", "folder_to_convert_to": "o", "s3_bucket_name_for_upload": "up",
        "s3_dir_to_write_to": "d", "voxel_resolution": "3680,3680,20000"})
    cfg("cfg_workflow_overwrite.json", {
        "s3_creds_file": "creds.json", "s3_bucket_name_for_download": "in", "sorted_filename": "order.txt",
        "folder_to_write_to": "w", "folder_to_convert_to": "o", "s3_bucket_name_for_upload": "up",
        "s3_dir_to_write_to": "d", "voxel_resolution": [1, 1, 1], "overwrite": "yes"})

    # prepared datasets
    _must(["convert", c / "img.npy", c / "keep_img", "--workers", "1", "--quiet"], c)
    _must(["convert", c / "lab.npy", c / "keep_seg", "--type", "segmentation", "--labels", c / "labels.csv",
           "--workers", "1", "--quiet"], c)
    _must(["convert", c / "lab.npy", c / "keep_mesh", "--type", "segmentation", "--mesh", "--workers", "1",
           "--quiet"], c)
    (c / "bad_info").mkdir()
    (c / "bad_info" / "info").write_text("{ not json")
    (c / "info_no_scales").mkdir()
    (c / "info_no_scales" / "info").write_text('{"type": "image", "data_type": "uint8", "num_channels": 1}')
    _interrupted(c)
    return c


def _interrupted(c: Path) -> None:
    """``c/interrupted``: a conversion of ``c/mid.npy`` killed part way (state, no info)."""
    np.save(c / "mid.npy", np.random.default_rng(1).integers(0, 60000, (128, 128, 128)).astype(np.uint16))
    dest = c / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "convert", str(c / "mid.npy"), str(dest),
                             "--chunk-size", "16,16,16", "--task-memory", "1", "--workers", "1", "--quiet"],
                            env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    done = dest / ".ngconvert" / "done" / "0"
    deadline = time.time() + 60
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 2):
        time.sleep(0.01)
    _kill_group(proc)
    proc.wait()
    assert (dest / ".ngconvert" / "plan.json").exists() and not (dest / "info").exists(), \
        "could not prepare an interrupted conversion"


# ---------------------------------------------------------------------------------------------
# setups: prepare the case's folder; return (extra placeholders, protected subtrees, cleanup)

def _copy(name, to="out"):
    def setup(c: Path, w: Path):
        shutil.copytree(c / name, w / to, symlinks=True)
        return {}, [to], None
    return setup


def _nonempty(c, w):
    (w / "out").mkdir()
    (w / "out" / "notes.txt").write_text("mine\n")
    return {}, ["out"], None


def _dest_file(c, w):
    (w / "out").write_text("a file, not a folder\n")
    return {}, ["out"], None


def _src_in_dst(c, w):
    shutil.copytree(c / "keep_img", w / "out")
    shutil.copy(c / "img2.npy", w / "out" / "src.npy")
    return {}, ["out"], None


def _slices_copy(c, w):
    shutil.copytree(c / "png", w / "slices")
    return {}, ["slices"], None


def _keep_with_inner(c, w):
    shutil.copytree(c / "keep_img", w / "out")
    return {}, ["out"], None


def _busy_port(c, w):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return {"port": str(s.getsockname()[1])}, [], s.close


def _two(a, b):
    def setup(c, w):
        ea, pa, ca = a(c, w)
        eb, pb, cb = b(c, w)
        return {**ea, **eb}, pa + pb, None
    return setup


def _native_cfg(name, options, dest="out"):
    """A native config in the case's folder converting the corpus image into ``dest``."""
    def setup(c, w):
        (w / name).write_text(json.dumps({"source": str(c / "img.npy"), "dest": str(w / dest),
                                          "options": options}))
        return {}, [], None
    return setup


def _corrupt_seg(c, w):
    """``w/src``: the segmentation dataset with its full-resolution chunk cut in half."""
    shutil.copytree(c / "keep_seg", w / "src")
    scale = json.loads((w / "src" / "info").read_text())["scales"][0]["key"]
    for chunk in (w / "src" / scale).iterdir():
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2])
    return {}, ["src"], None


KEEP_IMG, KEEP_SEG, KEEP_MESH = _copy("keep_img"), _copy("keep_seg"), _copy("keep_mesh")
INTERRUPTED = _copy("interrupted")

# ---------------------------------------------------------------------------------------------
# the table: (id, arguments, setup).  {c}: the shared corpus, {w}: the case's folder,
# {out}: {w}/out, the usual destination.

C = "{c}"
OUT = "{out}"
CV = ["convert", "{c}/img.npy", OUT, "--workers", "1"]           # a good conversion, to add one bad thing to
CL = ["convert", "{c}/lab.npy", OUT, "--workers", "1"]

CASES = [
    # ---- convert: sources
    ("convert-missing-source", ["convert", "{c}/nope.npy", OUT], None),
    ("convert-source-folder-named-npy", ["convert", "{c}/folder.npy", OUT], None),
    ("convert-text-named-nii", ["convert", "{c}/text.nii", OUT], None),
    ("convert-text-named-nii-gz", ["convert", "{c}/text.nii.gz", OUT], None),
    ("convert-truncated-nii-gz", ["convert", "{c}/truncated.nii.gz", OUT], None),
    ("convert-truncated-npy", ["convert", "{c}/truncated.npy", OUT], None),
    ("convert-empty-npy", ["convert", "{c}/empty.npy", OUT], None),
    ("convert-complex64-npy", ["convert", "{c}/complex.npy", OUT], None),
    ("convert-4d-npy-three-axes", ["convert", "{c}/d4.npy", OUT, "--axes", "zyx"], None),
    ("convert-5d-npy", ["convert", "{c}/d5.npy", OUT], None),
    ("convert-object-npy", ["convert", "{c}/object.npy", OUT], None),
    ("convert-zero-size-axis", ["convert", "{c}/zero.npy", OUT], None),
    ("convert-unknown-format", ["convert", "{c}/notes.txt", OUT], None),
    ("convert-empty-slice-folder", ["convert", "{c}/empty_dir", OUT], None),
    ("convert-slices-mixed-sizes", ["convert", "{c}/mixed_sizes", OUT], None),
    ("convert-slices-corrupt-png", ["convert", "{c}/corrupt_png", OUT, "--workers", "1"], None),
    ("convert-slices-order-missing-file", ["convert", "{c}/png", OUT, "--order", "{c}/nope.txt"], None),
    ("convert-slices-order-names-missing-slice", ["convert", "{c}/png", OUT, "--order", "{c}/order.txt",
                                                  "--workers", "1"], None),
    ("convert-slices-pattern-matches-nothing", ["convert", "{c}/png/*.jpg", OUT], None),
    ("convert-flip-unknown-axis", ["convert", "{c}/tif", OUT, "--flip", "w"], None),
    # ---- convert: option values
    ("convert-resolution-two-numbers", CV + ["--resolution", "1,2"], None),
    ("convert-resolution-zero", CV + ["--resolution", "0,1,1"], None),
    ("convert-resolution-negative", CV + ["--resolution", "1,-1,1"], None),
    ("convert-resolution-nan", CV + ["--resolution", "nan,1,1"], None),
    ("convert-resolution-inf", CV + ["--resolution", "1,1,1e309"], None),
    ("convert-offset-two-numbers", CV + ["--offset", "1,2"], None),
    ("convert-offset-overflows-int64", CV + ["--offset", "9223372036854775800,0,0"], None),
    ("convert-units-unknown", CV + ["--units", "parsec"], None),
    ("convert-type-unknown", CV + ["--type", "mask"], None),
    ("convert-dtype-unknown", CV + ["--dtype", "float128"], None),
    ("convert-axes-repeated", CV + ["--axes", "xxy"], None),
    ("convert-axes-letters", CV + ["--axes", "abc"], None),
    ("convert-chunk-size-zero", CV + ["--chunk-size", "0,8,8"], None),
    ("convert-chunk-size-negative", CV + ["--chunk-size=-8,8,8"], None),
    ("convert-chunk-size-huge", CV + ["--chunk-size", "1099511627776,1099511627776,1099511627776"], None),
    ("convert-factor-zero", CV + ["--factor", "0,2,2"], None),
    ("convert-factor-one", CV + ["--factor", "1,1,1"], None),
    ("convert-factor-negative", CV + ["--factor=-2,2,2"], None),
    ("convert-max-mips-negative", CV + ["--max-mips", "-1"], None),
    ("convert-downsample-unknown", CV + ["--downsample", "median"], None),
    ("convert-encoding-unknown", CV + ["--encoding", "webp"], None),
    ("convert-gzip-level-zero", CV + ["--gzip-level", "0"], None),
    ("convert-gzip-level-13", CV + ["--gzip-level", "13"], None),
    ("convert-jpeg-quality-101", CV + ["--encoding", "jpeg", "--jpeg-quality", "101"], None),
    ("convert-jpeg-quality-negative", CV + ["--encoding", "jpeg", "--jpeg-quality", "-1"], None),
    ("convert-png-level-10", CV + ["--encoding", "png", "--png-level", "10"], None),
    ("convert-block-size-zero", CL + ["--type", "segmentation", "--block-size", "0,8,8"], None),
    ("convert-workers-zero", ["convert", "{c}/img.npy", OUT, "--workers", "0"], None),
    ("convert-workers-negative", ["convert", "{c}/img.npy", OUT, "--workers", "-2"], None),
    ("convert-dask-workers-zero", CV + ["--dask-workers", "0"], None),
    ("convert-task-memory-zero", CV + ["--task-memory", "0"], None),
    ("convert-shard-size-zero", CV + ["--sharded", "--shard-size", "0"], None),
    ("convert-shard-size-negative", CV + ["--sharded", "--shard-size", "-5"], None),
    ("convert-shard-hash-unknown", CV + ["--sharded", "--shard-hash", "md5"], None),
    ("convert-sharding-bad-json", CV + ["--sharding", "{preshift_bits: 6"], None),
    ("convert-sharding-json-list", CV + ["--sharding", "[6, 3, 4]"], None),
    ("convert-sharding-negative-bits", CV + ["--sharding", '{"@type": "neuroglancer_uint64_sharded_v1", '
                                             '"preshift_bits": -1, "hash": "identity", "minishard_bits": 3, '
                                             '"shard_bits": 2, "minishard_index_encoding": "gzip", '
                                             '"data_encoding": "gzip"}'], None),
    ("convert-sharding-unknown-hash", CV + ["--sharding", '{"preshift_bits": 0, "hash": "sha1", '
                                            '"minishard_bits": 0, "shard_bits": 0}'], None),
    # ---- convert: incompatible combinations
    ("convert-jpeg-of-uint32-labels", CL + ["--type", "segmentation", "--encoding", "jpeg"], None),
    ("convert-png-of-float32", ["convert", "{c}/float.npy", OUT, "--encoding", "png", "--workers", "1"], None),
    ("convert-jpeg-of-float32", ["convert", "{c}/float.npy", OUT, "--encoding", "jpeg", "--workers", "1"], None),
    ("convert-segmentation-of-float", ["convert", "{c}/float.npy", OUT, "--type", "segmentation",
                                       "--workers", "1"], None),
    ("convert-cseg-of-negative-ints", ["convert", "{c}/negint.npy", OUT, "--type", "segmentation",
                                       "--encoding", "compressed_segmentation", "--workers", "1"], None),
    ("convert-cseg-of-float", ["convert", "{c}/float.npy", OUT, "--encoding", "compressed_segmentation",
                               "--workers", "1"], None),
    ("convert-mesh-of-image", CV + ["--type", "image", "--mesh"], None),
    ("convert-split-without-labels", CL + ["--split"], None),
    ("convert-split-dry-run", CL + ["--labels", "{c}/labels.csv", "--split", "--dry-run"], None),
    # (--resume with nothing to resume is a new run: --resume is idempotent, see test_destination.py)
    ("convert-dry-run-bad-chunk-size", CV + ["--dry-run", "--chunk-size", "0,0,0"], None),
    # ---- convert: label tables and segment options
    ("convert-labels-missing", CL + ["--labels", "{c}/nope.csv"], None),
    ("convert-labels-empty", CL + ["--labels", "{c}/empty.csv"], None),
    ("convert-labels-duplicate-ids", CL + ["--labels", "{c}/dup.csv"], None),
    ("convert-labels-bad-colour", CL + ["--labels", "{c}/badcolor.csv"], None),
    ("convert-labels-negative-id", CL + ["--labels", "{c}/negid.csv"], None),
    ("convert-labels-json-non-integer-id", CL + ["--labels", "{c}/badid.json"], None),
    ("convert-labels-binary-file", CL + ["--labels", "{c}/img.npy"], None),
    ("convert-labels-of-float", ["convert", "{c}/float.npy", OUT, "--labels", "{c}/labels.csv",
                                 "--workers", "1"], None),
    ("convert-only-name-without-table", CL + ["--only", "alpha"], None),
    ("convert-only-unknown-name", CL + ["--labels", "{c}/labels.csv", "--only", "delta"], None),
    ("convert-exclude-not-an-id", CL + ["--exclude", "3,x!"], None),
    # ---- convert: mesh options
    ("convert-mesh-lods-zero", CL + ["--type", "segmentation", "--mesh", "--mesh-format", "multires",
                                     "--lods", "0"], None),
    ("convert-mesh-dust-negative", CL + ["--type", "segmentation", "--mesh", "--dust", "-1"], None),
    ("convert-mesh-scale-too-coarse", CL + ["--type", "segmentation", "--mesh", "--mesh-scale", "99"], None),
    ("convert-mesh-ids-not-ids", CL + ["--type", "segmentation", "--mesh", "--mesh-ids", "a,b"], None),
    ("convert-mesh-max-error-nan", CL + ["--type", "segmentation", "--mesh", "--max-error", "nan"], None),
    ("convert-mesh-dir-escapes", CL + ["--type", "segmentation", "--mesh", "--mesh-dir", "../escaped"], None),
    ("convert-mesh-quantization-12", CL + ["--type", "segmentation", "--mesh", "--mesh-format", "multires",
                                           "--quantization-bits", "12"], None),
    # ---- convert: destinations
    ("convert-dest-is-file", CV, _dest_file),
    ("convert-dest-under-file", ["convert", "{c}/img.npy", "{out}/sub", "--workers", "1"], _dest_file),
    ("convert-dest-nonempty-folder", CV, _nonempty),
    ("convert-dest-nonempty-folder-overwrite", CV + ["--overwrite"], _nonempty),
    ("convert-dest-existing-dataset", CV, KEEP_IMG),
    ("convert-dest-is-source", ["convert", "{c}/img.npy", "{c}/img.npy"], None),
    ("convert-source-inside-dest-overwrite", ["convert", "{out}/src.npy", OUT, "--overwrite", "--workers", "1"],
     _src_in_dst),
    ("convert-dest-inside-source-folder", ["convert", "{w}/slices", "{w}/slices/out", "--workers", "1"],
     _slices_copy),
    ("convert-dest-is-source-folder", ["convert", "{w}/slices", "{w}/slices", "--overwrite", "--workers", "1"],
     _slices_copy),
    ("convert-dest-inside-existing-dataset", ["convert", "{c}/img.npy", "{out}/scale_inside", "--workers", "1"],
     KEEP_IMG),
    ("convert-resume-different-source", ["convert", "{c}/img.npy", OUT, "--resume", "--workers", "1"],
     INTERRUPTED),
    ("convert-resume-different-options", ["convert", "{c}/mid.npy", OUT, "--resume", "--workers", "1",
                                          "--chunk-size", "32,32,32", "--task-memory", "1"], INTERRUPTED),
    ("convert-overwrite-bad-gzip-level", CV + ["--overwrite", "--gzip-level", "99"], KEEP_IMG),
    ("convert-overwrite-bad-resolution", CV + ["--overwrite", "--resolution", "0,0,0"], KEEP_IMG),
    ("convert-overwrite-missing-source", ["convert", "{c}/nope.npy", OUT, "--overwrite"], KEEP_IMG),
    ("convert-overwrite-truncated-source", ["convert", "{c}/truncated.nii.gz", OUT, "--overwrite",
                                            "--workers", "1"], KEEP_IMG),
    ("convert-overwrite-corrupt-slices", ["convert", "{c}/corrupt_png", OUT, "--overwrite", "--workers", "1"],
     KEEP_IMG),
    ("convert-overwrite-jpeg-labels", CL + ["--overwrite", "--type", "segmentation", "--encoding", "jpeg"],
     KEEP_SEG),
    ("convert-overwrite-duplicate-labels", CL + ["--overwrite", "--labels", "{c}/dup.csv"], KEEP_SEG),
    ("convert-overwrite-mesh-of-image", CV + ["--overwrite", "--type", "image", "--mesh"], KEEP_IMG),
    ("convert-overwrite-interrupted-bad-option", ["convert", "{c}/mid.npy", OUT, "--overwrite",
                                                  "--jpeg-quality", "500", "--encoding", "jpeg"], INTERRUPTED),
    # ---- assemble
    ("assemble-missing-folder", ["assemble", "{c}/nope", OUT], None),
    ("assemble-empty-folder", ["assemble", "{c}/empty_dir", OUT], None),
    ("assemble-bad-mask-file", ["assemble", "{c}/badmasks", OUT], None),
    ("assemble-overlap-error", ["assemble", "{c}/overlap", OUT, "--workers", "1"], None),
    ("assemble-overlap-unknown", ["assemble", "{c}/masks", OUT, "--overlap", "both"], None),
    ("assemble-origins-missing", ["assemble", "{c}/masks", OUT, "--origins", "{c}/nope.csv"], None),
    ("assemble-origins-two-numbers", ["assemble", "{c}/masks", OUT, "--origins", "{c}/origins_bad.csv"], None),
    ("assemble-ids-not-integer", ["assemble", "{c}/masks", OUT, "--ids", "{c}/ids_bad.csv"], None),
    ("assemble-ids-zero", ["assemble", "{c}/masks", OUT, "--ids", "{c}/ids_zero.csv"], None),
    ("assemble-threshold-nan", ["assemble", "{c}/masks", OUT, "--threshold", "nan", "--workers", "1"], None),
    ("assemble-resolution-two", ["assemble", "{c}/masks", OUT, "--resolution", "1,2"], None),
    ("assemble-dry-run", ["assemble", "{c}/masks", OUT, "--dry-run"], None),
    ("assemble-labels-bad-colour", ["assemble", "{c}/masks", OUT, "--labels", "{c}/badcolor.csv"], None),
    ("assemble-dest-existing-dataset", ["assemble", "{c}/masks", OUT, "--workers", "1"], KEEP_SEG),
    ("assemble-overwrite-overlap", ["assemble", "{c}/overlap", OUT, "--overwrite", "--workers", "1"], KEEP_SEG),
    # ---- mesh
    ("mesh-missing-dataset", ["mesh", "{w}/nope"], None),
    ("mesh-not-a-dataset", ["mesh", "{c}/empty_dir"], None),
    ("mesh-image-layer", ["mesh", OUT, "--workers", "1"], KEEP_IMG),
    ("mesh-lods-zero", ["mesh", OUT, "--format", "multires", "--lods", "0", "--workers", "1"], KEEP_SEG),
    ("mesh-dust-negative", ["mesh", OUT, "--dust", "-1", "--workers", "1"], KEEP_SEG),
    ("mesh-scale-too-coarse", ["mesh", OUT, "--mesh-scale", "9", "--workers", "1"], KEEP_SEG),
    ("mesh-scale-negative", ["mesh", OUT, "--mesh-scale", "-1", "--workers", "1"], KEEP_SEG),
    ("mesh-ids-not-ids", ["mesh", OUT, "--mesh-ids", "3,x"], KEEP_SEG),
    ("mesh-max-error-negative", ["mesh", OUT, "--max-error", "-1", "--workers", "1"], KEEP_SEG),
    ("mesh-format-unknown", ["mesh", OUT, "--format", "stl"], KEEP_SEG),
    ("mesh-workers-zero", ["mesh", OUT, "--workers", "0"], KEEP_SEG),
    ("mesh-sharded-legacy", ["mesh", OUT, "--sharded", "--format", "legacy", "--workers", "1"], KEEP_SEG),
    ("mesh-dir-escapes", ["mesh", OUT, "--mesh-dir", "../escaped", "--workers", "1"], KEEP_SEG),
    ("mesh-existing-meshes", ["mesh", OUT, "--workers", "1"], KEEP_MESH),
    ("mesh-overwrite-bad-lods", ["mesh", OUT, "--overwrite", "--format", "multires", "--lods", "-3",
                                 "--workers", "1"], KEEP_MESH),
    # ---- mesh-import
    ("mesh-import-no-id", ["mesh-import", "{c}/tetra.obj", OUT], KEEP_SEG),
    ("mesh-import-id-and-ids", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3", "--ids", "{c}/ids_list_bad.csv"],
     KEEP_SEG),
    ("mesh-import-id-negative", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "-1"], KEEP_SEG),
    ("mesh-import-id-zero", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "0"], KEEP_SEG),
    ("mesh-import-missing-file", ["mesh-import", "{c}/nope.obj", OUT, "--id", "3"], KEEP_SEG),
    ("mesh-import-garbage-obj", ["mesh-import", "{c}/garbage.obj", OUT, "--id", "3"], KEEP_SEG),
    ("mesh-import-nan-vertex", ["mesh-import", "{c}/nan.obj", OUT, "--id", "3"], KEEP_SEG),
    ("mesh-import-unknown-format", ["mesh-import", "{c}/tetra.xyz", OUT, "--id", "3"], KEEP_SEG),
    ("mesh-import-transform-five-numbers", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3", "--transform",
                                            "{c}/transform5.txt"], KEEP_SEG),
    ("mesh-import-transform-singular", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3", "--transform",
                                        "{c}/singular.txt"], KEEP_SEG),
    ("mesh-import-ids-list-bad-id", ["mesh-import", OUT, "--ids", "{c}/ids_list_bad.csv"], KEEP_SEG),
    ("mesh-import-into-image-layer", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3"], KEEP_IMG),
    ("mesh-import-into-nonempty-folder", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3"], _nonempty),
    ("mesh-import-from-world-without-affine", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3",
                                               "--from-world"], KEEP_SEG),
    ("mesh-import-lods-zero", ["mesh-import", "{c}/tetra.obj", "{w}/new", "--id", "3", "--format", "multires",
                               "--lods", "0"], None),
    ("mesh-import-existing-id", ["mesh-import", "{c}/tetra.obj", OUT, "--id", "3"], KEEP_MESH),
    ("mesh-import-labels-bad-colour", ["mesh-import", "{c}/tetra.obj", "{w}/new", "--id", "3", "--labels",
                                       "{c}/badcolor.csv"], None),
    # ---- reencode
    ("reencode-no-change", ["reencode", "{c}/keep_img", OUT], None),
    ("reencode-missing-source", ["reencode", "{c}/nope", OUT, "--encoding", "png"], None),
    ("reencode-source-not-dataset", ["reencode", "{c}/empty_dir", OUT, "--encoding", "png"], None),
    ("reencode-source-bad-info", ["reencode", "{c}/bad_info", OUT, "--encoding", "png"], None),
    ("reencode-into-own-source", ["reencode", OUT, OUT, "--encoding", "png", "--overwrite", "--workers", "1"],
     KEEP_IMG),
    ("reencode-into-own-source-no-overwrite", ["reencode", OUT, OUT, "--encoding", "png", "--workers", "1"],
     KEEP_IMG),
    ("reencode-dest-inside-source", ["reencode", OUT, "{out}/png", "--encoding", "png", "--workers", "1"],
     KEEP_IMG),
    ("reencode-dest-existing-dataset", ["reencode", "{c}/keep_img", OUT, "--encoding", "png", "--workers", "1"],
     KEEP_SEG),
    ("reencode-jpeg-of-segmentation", ["reencode", "{c}/keep_seg", OUT, "--encoding", "jpeg"], None),
    ("reencode-cseg-of-uint8-image", ["reencode", "{c}/keep_img", OUT, "--encoding", "compressed_segmentation"],
     None),
    ("reencode-jpeg-quality-200", ["reencode", "{c}/keep_img", OUT, "--encoding", "jpeg", "--jpeg-quality", "200"],
     None),
    ("reencode-gzip-level-zero", ["reencode", "{c}/keep_img", OUT, "--compress", "gzip", "--gzip-level", "0"],
     None),
    ("reencode-chunk-size-zero", ["reencode", "{c}/keep_img", OUT, "--chunk-size", "0,1,1"], None),
    ("reencode-block-size-zero", ["reencode", "{c}/keep_seg", OUT, "--block-size", "0,8,8"], None),
    ("reencode-shard-size-zero", ["reencode", "{c}/keep_img", OUT, "--sharded", "--shard-size", "0"], None),
    ("reencode-workers-zero", ["reencode", "{c}/keep_img", OUT, "--encoding", "png", "--workers", "0"], None),
    ("reencode-sharded-and-unsharded", ["reencode", "{c}/keep_img", OUT, "--sharded", "--unsharded"], None),
    ("reencode-overwrite-bad-gzip-level", ["reencode", "{c}/keep_img", OUT, "--overwrite", "--compress", "gzip",
                                           "--gzip-level", "99"], KEEP_SEG),
    ("reencode-overwrite-jpeg-of-segmentation", ["reencode", "{c}/keep_seg", OUT, "--overwrite", "--encoding",
                                                 "jpeg"], KEEP_IMG),
    ("reencode-source-corrupt-chunk", ["reencode", "{w}/src", OUT, "--encoding", "raw", "--workers", "1"],
     _corrupt_seg),
    ("transfer-source-corrupt-chunk", ["transfer", "{w}/src", OUT, "--chunk-size", "8,8,8", "--workers", "1"],
     _corrupt_seg),
    # (a mesh run that fails on a damaged chunk keeps its finished tasks for --resume, and the
    # layer's info and old meshes as they were: see test_destination.py)
    # ---- transfer
    ("transfer-missing-source", ["transfer", "{c}/nope", OUT], None),
    ("transfer-source-not-dataset", ["transfer", "{c}/empty_dir", OUT], None),
    ("transfer-source-info-no-scales", ["transfer", "{c}/info_no_scales", OUT], None),
    ("transfer-into-own-source", ["transfer", OUT, OUT, "--overwrite", "--workers", "1"], KEEP_IMG),
    ("transfer-dest-inside-source", ["transfer", OUT, "{out}/copy", "--workers", "1"], KEEP_IMG),
    ("transfer-dest-existing-dataset", ["transfer", "{c}/keep_img", OUT, "--workers", "1"], KEEP_SEG),
    ("transfer-dest-is-file", ["transfer", "{c}/keep_img", OUT, "--workers", "1"], _dest_file),
    ("transfer-chunk-size-zero", ["transfer", "{c}/keep_img", OUT, "--chunk-size", "0,0,0"], None),
    ("transfer-encoding-jpeg-of-segmentation", ["transfer", "{c}/keep_seg", OUT, "--encoding", "jpeg"], None),
    ("transfer-unknown-scheme", ["transfer", "{c}/keep_img", "ftp://example.invalid/x"], None),
    ("transfer-overwrite-bad-chunk-size", ["transfer", "{c}/keep_img", OUT, "--overwrite",
                                           "--chunk-size=-1,16,16"], KEEP_SEG),
    # ---- check
    ("check-missing", ["check", "{c}/nope"], None),
    ("check-a-file", ["check", "{c}/notes.txt"], None),
    ("check-sample-zero", ["check", "{c}/keep_img", "--sample", "0"], None),
    ("check-sample-negative", ["check", "{c}/keep_img", "--sample", "-4"], None),
    ("check-unknown-scheme", ["check", "ftp://example.invalid/data"], None),
    ("check-sample-not-a-number", ["check", "{c}/keep_img", "--sample", "many"], None),
    # ---- stats
    ("stats-missing", ["stats", "{c}/nope"], None),
    ("stats-a-file", ["stats", "{c}/notes.txt"], None),
    ("stats-empty-folder", ["stats", "{c}/empty_dir"], None),
    ("stats-info-not-json", ["stats", "{c}/bad_info"], None),
    ("stats-info-no-scales", ["stats", "{c}/info_no_scales"], None),
    # ---- serve (must not hang)
    ("serve-missing-folder", ["serve", "{c}/nope", "--port", "0"], None),
    ("serve-folder-is-file", ["serve", "{c}/notes.txt", "--port", "0"], None),
    ("serve-port-70000", ["serve", "{c}/keep_img", "--port", "70000"], None),
    ("serve-port-negative", ["serve", "{c}/keep_img", "--port", "-1"], None),
    ("serve-port-not-a-number", ["serve", "{c}/keep_img", "--port", "http"], None),
    ("serve-port-in-use", ["serve", "{c}/keep_img", "--port", "{port}"], _busy_port),
    ("serve-bind-bad-address", ["serve", "{c}/keep_img", "--port", "0", "--bind", "999.1.1.1"], None),
    # ---- view --no-browser (bad input only; must not hang)
    ("view-missing-dataset", ["view", "{c}/nope", "--no-browser", "--port", "0"], None),
    ("view-not-a-dataset", ["view", "{c}/empty_dir", "--no-browser", "--port", "0"], None),
    ("view-a-file", ["view", "{c}/notes.txt", "--no-browser", "--port", "0"], None),
    ("view-port-70000", ["view", "{c}/keep_img", "--no-browser", "--port", "70000"], None),
    ("view-port-in-use", ["view", "{c}/keep_img", "--no-browser", "--port", "{port}"], _busy_port),
    ("view-segments-not-ids", ["view", "{c}/keep_seg", "--no-browser", "--port", "0", "--segments", "x,y"], None),
    ("view-layout-unknown", ["view", "{c}/keep_seg", "--no-browser", "--layout", "5panel"], None),
    # ---- url
    ("url-local-without-base-url", ["url", "{c}/keep_img"], None),
    ("url-missing-folder", ["url", "{c}/nope", "--base-url", "http://host/nope"], None),
    ("url-not-a-dataset", ["url", "{c}/empty_dir", "--base-url", "http://host/empty"], None),
    ("url-too-many-base-urls", ["url", "{c}/keep_img", "--base-url", "http://a/x", "--base-url", "http://b/y"],
     None),
    ("url-segments-not-ids", ["url", "{c}/keep_seg", "--base-url", "http://h/seg", "--segments", "three"], None),
    ("url-unknown-scheme", ["url", "ftp://example.invalid/data"], None),
    ("url-base-url-not-a-url", ["url", "{c}/keep_img", "--base-url", "not a url"], None),
    # ---- hosting
    ("hosting-nginx-missing-folder", ["hosting", "nginx", "{c}/nope"], None),
    ("hosting-nginx-folder-is-file", ["hosting", "nginx", "{c}/notes.txt"], None),
    ("hosting-nginx-listen-70000", ["hosting", "nginx", "{c}/keep_img", "--listen", "70000"], None),
    ("hosting-nginx-listen-zero", ["hosting", "nginx", "{c}/keep_img", "--listen", "0"], None),
    ("hosting-nginx-listen-negative", ["hosting", "nginx", "{c}/keep_img", "--listen", "-1"], None),
    ("hosting-nginx-location-relative", ["hosting", "nginx", "{c}/keep_img", "--location", "data; rm"], None),
    ("hosting-s3-no-bucket", ["hosting", "s3"], None),
    ("hosting-s3-empty-bucket", ["hosting", "s3", "--bucket", ""], None),
    ("hosting-s3-invalid-bucket-name", ["hosting", "s3", "--bucket", "Bad_Bucket!"], None),
    ("hosting-gcs-empty-bucket", ["hosting", "gcs", "--bucket", ""], None),
    ("hosting-gcs-invalid-bucket-name", ["hosting", "gcs", "--bucket", "no/slashes"], None),
    ("hosting-unknown-host", ["hosting", "azure"], None),
    # ---- upload / download
    ("upload-missing-source", ["upload", "{c}/nope", OUT], None),
    ("upload-source-not-dataset", ["upload", "{c}/empty_dir", OUT], None),
    ("upload-onto-existing-dataset", ["upload", "{c}/keep_img", OUT], KEEP_SEG),
    ("upload-onto-nonempty-folder", ["upload", "{c}/keep_img", OUT], _nonempty),
    ("upload-onto-itself", ["upload", OUT, OUT], KEEP_IMG),
    ("upload-dest-inside-source", ["upload", OUT, "{out}/copy"], KEEP_IMG),
    ("upload-unknown-scheme", ["upload", "{c}/keep_img", "ftp://example.invalid/x"], None),
    ("upload-s3-unreachable", ["upload", "{c}/keep_img", "s3://bucket/x", "--endpoint-url", "http://127.0.0.1:9",
                               "--anonymous"], None),
    ("download-missing-source", ["download", "{c}/nope", OUT], None),
    ("download-http-unreachable", ["download", "http://127.0.0.1:9/data", OUT], None),
    ("download-onto-existing-dataset", ["download", "{c}/keep_img", OUT], KEEP_SEG),
    ("download-dest-is-file", ["download", "{c}/keep_img", OUT], _dest_file),
    ("download-onto-itself", ["download", OUT, OUT], KEEP_IMG),
    # ---- run (JSON configs)
    ("run-missing-config", ["run", "{c}/nope.json"], None),
    ("run-invalid-json", ["run", "{c}/cfg_invalid.json"], None),
    ("run-config-is-list", ["run", "{c}/cfg_list.json"], None),
    ("run-unknown-field", ["run", "{c}/cfg_unknown.json"], None),
    ("run-source-is-number", ["run", "{c}/cfg_source_number.json"], None),
    ("run-unknown-option", ["run", "{c}/cfg_option_unknown.json"], None),
    ("run-option-wrong-type", ["run", "{c}/cfg_option_type.json"], None),
    ("run-option-resolution-two", ["run", "{c}/cfg_option_resolution.json"], None),
    ("run-options-not-object", ["run", "{c}/cfg_options_list.json"], None),
    ("run-storage-unknown-field", ["run", "{c}/cfg_storage_unknown.json"], None),
    ("run-workflow-missing-fields", ["run", "{c}/cfg_workflow_missing.json"], None),
    ("run-workflow-resolution-string", ["run", "{c}/cfg_workflow_types.json"], None),
    ("run-workflow-overwrite-string", ["run", "{c}/cfg_workflow_overwrite.json"], None),
    ("run-config-is-folder", ["run", "{c}/empty_dir"], None),
    ("run-workers-zero", ["run", "{w}/cfg.json", "--workers", "0"], _native_cfg("cfg.json", {})),
    ("run-dest-existing-dataset", ["run", "{w}/cfg.json"], _two(KEEP_IMG, _native_cfg("cfg.json", {}))),
    ("run-overwrite-bad-option", ["run", "{w}/cfg.json"],
     _two(KEEP_IMG, _native_cfg("cfg.json", {"overwrite": True, "gzip_level": 99}))),
    ("run-overwrite-resolution-strings", ["run", "{w}/cfg.json"],
     _two(KEEP_IMG, _native_cfg("cfg.json", {"overwrite": True, "resolution": ["a", "b", "c"]}))),
    # ---- example
    ("example-folder-is-file", ["example", OUT], _dest_file),
    ("example-folder-under-file", ["example", "{out}/sub"], _dest_file),
    ("example-onto-existing-dataset", ["example", OUT], KEEP_IMG),
    # ---- the command line itself
    ("cli-no-command", [], None),
    ("cli-unknown-command", ["frobnicate"], None),
    ("cli-unknown-flag", ["convert", "{c}/img.npy", OUT, "--colour", "red"], None),
    ("cli-convert-missing-dest", ["convert", "{c}/img.npy"], None),
]


def test_case_ids_are_unique():
    ids = [row[0] for row in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CASES) >= 100


def _fill(args, values) -> list[str]:
    """Arguments with their {name} placeholders replaced (other braces, as in JSON, stay)."""
    out = []
    for a in map(str, args):
        for k, v in values.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


@pytest.mark.parametrize("args,setup", [pytest.param(a, s, id=i) for i, a, s in CASES])
def test_bad_input(corpus, tmp_path, args, setup):
    w = tmp_path / "w"
    w.mkdir()
    values = {"c": str(corpus), "w": str(w), "out": str(w / "out")}
    protected, cleanup = [], None
    if setup is not None:
        extra, protected, cleanup = setup(corpus, w)
        values.update(extra)
    argv = _fill(args, values)

    corpus_before = tree_digest(corpus)
    work_before = tree_digest(w)
    kept_before = {p: tree_digest(w / p) for p in protected}
    try:
        rc, out, err, timed_out = cli(argv, cwd=w)
    finally:
        if cleanup:
            cleanup()

    print(f"$ ngconvert {' '.join(argv)}\n{err}", end="")      # shown for failures (and in -rA reports)
    problems = []
    if timed_out:
        problems.append(f"did not finish in {DEFAULT_TIMEOUT} s (killed)")
    if rc != 2:
        problems.append(f"exit status {rc}, not 2")
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} non-empty stderr lines, not 1")
    if "Traceback" in err:
        problems.append("traceback on stderr")

    work_after = tree_digest(w)
    for p, before in kept_before.items():
        after = tree_digest(w / p)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            problems.append(f"{p} changed: {len(changed)} path(s), e.g. {changed[:4]}")
    gone = sorted(k for k, v in work_before.items() if work_after.get(k) != v)
    if gone:
        problems.append(f"pre-existing paths changed or removed: {gone[:4]}")
    new_infos = sorted(_infos(work_after) - _infos(work_before))
    if new_infos:
        problems.append(f"an info file appeared: {new_infos[:4]}")
    corpus_after = tree_digest(corpus)
    if corpus_after != corpus_before:
        changed = sorted(k for k in set(corpus_before) | set(corpus_after)
                         if corpus_before.get(k) != corpus_after.get(k))
        problems.append(f"source corpus changed: {changed[:4]}")
    assert not problems, "; ".join(problems) + f"\n$ ngconvert {' '.join(argv)}\n--- stderr ---\n{err[-3000:]}"


# ---------------------------------------------------------------------------------------------
# faults: signals during a conversion

BIG_ARGS = ["--type", "image", "--chunk-size", "16,16,16", "--task-memory", "1", "--workers", "2",
            "--gzip-level", "12", "--quiet"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 256^3 uint16 volume (a few seconds to convert) and its clean conversion."""
    d = tmp_path_factory.mktemp("big")
    np.save(d / "v.npy", np.random.default_rng(2).integers(0, 60000, (256, 256, 256)).astype(np.uint16))
    rc, _out, err, timed_out = cli(["convert", d / "v.npy", d / "clean", *BIG_ARGS], timeout=300)
    assert rc == 0 and not timed_out, err
    return d


def _interrupt(args, dest: Path, sig, to_group: bool, env=None, ready=None):
    """Start ``ngconvert ARGS``, wait until it is working (``ready()`` or some chunks done, at least
    0.5 s), send ``sig`` to it (or to its whole process group, as Ctrl-C does) and wait."""
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", *map(str, args)], env=env or ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    started = time.time()
    done = dest / ".ngconvert" / "done"

    def working():
        if ready is not None:
            return ready()
        return done.is_dir() and sum(len(files) for _r, _d, files in os.walk(done)) >= 2

    while time.time() - started < 60 and proc.poll() is None and not (working() and time.time() - started > 0.5):
        time.sleep(0.01)
    finished_early = proc.poll() is not None
    if not finished_early:
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"did not stop within 60 s of {sig.name}; stderr: {err[-2000:]}")
    leftover = True                   # a worker still running 5 s after its main process ended
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            leftover = False
            break
        time.sleep(0.05)
    if leftover:
        _kill_group(proc)
    return proc.returncode, err, finished_early, leftover


@pytest.mark.parametrize("sig,to_group", [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGINT, False)],
                         ids=["sigterm-main", "sigint-group", "sigint-main"])
def test_signal_then_resume_equals_clean(big, tmp_path, sig, to_group):
    dest = tmp_path / "out"
    rc, err, finished_early, leftover = _interrupt(["convert", big / "v.npy", dest, *BIG_ARGS], dest, sig, to_group)
    assert not finished_early, "the conversion finished before the signal; the test needs a bigger volume"
    problems = []
    expected = 130 if sig == signal.SIGINT else 143
    if rc not in (130, 143):
        problems.append(f"exit status {rc}, expected {expected}")
    if "Traceback" in err:
        problems.append("traceback on stderr: " + err[err.index("Traceback"):][:600])
    if leftover:
        problems.append("worker processes outlived the main process")
    if (dest / "info").exists():
        problems.append("an info file exists after the interruption")

    rc, _out, err2, timed_out = cli(["convert", big / "v.npy", dest, *BIG_ARGS, "--resume"], timeout=300)
    if rc != 0 or timed_out:
        problems.append(f"--resume failed with exit status {rc}: {err2.strip()[-300:]}")
    else:
        clean, resumed = tree_digest(big / "clean"), tree_digest(dest)
        differ = sorted(k for k in set(clean) | set(resumed) if clean.get(k) != resumed.get(k))
        if differ:
            problems.append(f"after --resume {len(differ)} path(s) differ from a clean conversion, "
                            f"e.g. {differ[:6]}")
    assert not problems, "; ".join(problems) + f"\n--- stderr of the interrupted run ---\n{err[-3000:]}"


def test_sigterm_during_nii_gz_removes_decompressed_copy(tmp_path):
    vol = np.random.default_rng(3).integers(0, 4000, (192, 192, 192)).astype(np.uint16)
    src = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    (tmpdir / "mine.txt").write_text("the test's own file\n")
    env = {**ENV, "TMPDIR": str(tmpdir), "TMP": str(tmpdir), "TEMP": str(tmpdir)}
    dest = tmp_path / "out"
    done = dest / ".ngconvert" / "done"

    def ready():
        copied = [p for p in tmpdir.rglob("*") if p.is_file() and p.name != "mine.txt"]
        return bool(copied) and done.is_dir() and any(files for _r, _d, files in os.walk(done))

    rc, err, finished_early, leftover = _interrupt(
        ["convert", src, dest, "--chunk-size", "16,16,16", "--task-memory", "1", "--workers", "2", "--quiet"],
        dest, signal.SIGTERM, False, env=env, ready=ready)
    assert not finished_early, "the conversion finished before the signal; the test needs a bigger volume"
    left = sorted(p.relative_to(tmpdir).as_posix() for p in tmpdir.rglob("*"))
    problems = []
    if left != ["mine.txt"]:
        problems.append(f"TMPDIR holds {left[:6]} after the interruption")
    if (tmpdir / "mine.txt").read_text() != "the test's own file\n":
        problems.append("the test's own file in TMPDIR changed")
    if rc not in (130, 143):
        problems.append(f"exit status {rc}, expected 143")
    if "Traceback" in err:
        problems.append("traceback on stderr: " + err[err.index("Traceback"):][:600])
    if leftover:
        problems.append("worker processes outlived the main process")
    if (dest / "info").exists():
        problems.append("an info file exists after the interruption")
    assert not problems, "; ".join(problems) + f"\n--- stderr ---\n{err[-3000:]}"
