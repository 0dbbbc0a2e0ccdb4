"""Bad input gives one line on stderr naming the value and the fix, exit status 2, no traceback."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import one_line_error, read_tensorstore, run


@pytest.fixture
def npy(tmp):
    path = tmp / "v.npy"
    np.save(path, (np.arange(16 * 16 * 16) % 251).astype(np.uint8).reshape(16, 16, 16))
    return path


@pytest.fixture
def dataset(tmp):
    from ngconvert import write_volume

    a = (np.arange(16 * 16 * 16) % 251).astype(np.uint8).reshape(16, 16, 16)
    write_volume(a, str(tmp / "ds"), layer_type="image", workers=1)
    return tmp / "ds"


# ------------------------------------------------------------- 4: damaged info


@pytest.mark.parametrize("damage", ["json", "type"])
@pytest.mark.parametrize("command", ["stats", "url", "view", "mesh", "transfer", "reencode"])
def test_damaged_info_is_one_line_for_every_command(tmp, dataset, command, damage):
    info = json.loads((dataset / "info").read_text())
    if damage == "json":
        (dataset / "info").write_text("{not json")
    else:
        info["scales"][0]["size"] = "abc"
        (dataset / "info").write_text(json.dumps(info))
    args = {"stats": ["stats", dataset], "url": ["url", dataset, "--base-url", "http://x/"],
            "view": ["view", dataset, "--no-browser", "--port", "0"], "mesh": ["mesh", dataset],
            "transfer": ["transfer", dataset, tmp / "copy"],
            "reencode": ["reencode", dataset, tmp / "copy", "--encoding", "raw"]}[command]
    line = one_line_error(run(*args))
    assert f"{dataset}/info: " in line and "fix it or re-run the conversion" in line
    assert ("not valid JSON" in line) if damage == "json" else ("size 'abc'" in line)
    assert not (tmp / "copy").exists()


# ------------------------------------------------------------- 11, 21: codec values and counts


@pytest.mark.parametrize("command", ["reencode", "transfer"])
@pytest.mark.parametrize("flag,value,says", [("--jpeg-quality", "900", "0 to 100"), ("--gzip-level", "99", "1 (fastest)"),
                                             ("--png-level", "20", "0 to 9"), ("--shard-size", "0", "1 MB"),
                                             ("--workers", "0", "1 or more"), ("--dask-workers", "0", "1 or more")])
def test_reencode_values_checked_before_writing(tmp, dataset, command, flag, value, says):
    line = one_line_error(run(command, dataset, tmp / "out", "--encoding", "raw", flag, value))
    assert f"{flag} {value}" in line and says in line
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("flags,says", [
    (["--shard-size", "0", "--sharded"], "--shard-size 0"), (["--dask-workers", "0"], "--dask-workers 0"),
    (["--workers", "0"], "--workers 0"), (["--lods", "0", "--mesh"], "--lods 0"),
    (["--task-memory", "0"], "--task-memory 0"), (["--max-mips", "-1"], "--max-mips -1"),
    (["--gzip-level", "0"], "--gzip-level 0"), (["--flip", "w"], "--flip w")])
def test_convert_counts_checked(tmp, npy, flags, says):
    line = one_line_error(run("convert", npy, tmp / "out", *flags))
    assert says in line
    assert not (tmp / "out").exists()


def test_mesh_and_check_counts(tmp, dataset):
    assert "--lods 0" in one_line_error(run("mesh", dataset, "--format", "multires", "--lods", "0"))
    assert "--workers 0" in one_line_error(run("mesh", dataset, "--workers", "0"))
    assert "--sample 0" in one_line_error(run("check", dataset, "--sample", "0"))


# ------------------------------------------------------------- 9, 12, 13: plan limits and values


def test_too_many_chunks_refused_unless_forced(tmp):
    path = tmp / "big.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(256, 256, 256)).flush()
    line = one_line_error(run("convert", path, tmp / "out", "--chunk-size", "1,1,1", "--dry-run"))
    assert "16777216 chunks" in line and "2000000" in line and "larger --chunk-size" in line
    p = run("convert", path, tmp / "out", "--chunk-size", "1,1,1", "--dry-run", "--force-chunks", "--max-mips", "0")
    assert p.returncode == 0, p.stderr


def test_huge_offset_refused_before_writing(tmp, npy):
    line = one_line_error(run("convert", npy, tmp / "out", "--offset", f"{2 ** 63 - 1},0,0"))
    assert str(2 ** 63 - 1) in line and "2^40" in line
    assert not (tmp / "out").exists()
    line = one_line_error(run("convert", npy, tmp / "out", "--offset", f"{2 ** 40 - 4},0,0"))
    assert "would end at" in line


def test_float32_overflow_refused(tmp):
    path = tmp / "f.npy"
    a = np.ones((8, 8, 8))
    a[3, 4, 5] = 1e300
    a[0, 0, 0] = np.nan
    np.save(path, a)
    line = one_line_error(run("convert", path, tmp / "out", "--dtype", "float32"))
    assert "1e+300 do not fit float32" in line
    assert not (tmp / "out").exists()


# ------------------------------------------------------------- 10: --flip/--transpose for every source


def _oriented(a, flip, transpose):
    out = a.swapaxes(0, 1) if transpose else a
    for k, axis in enumerate("xyz"):
        if axis in flip:
            out = np.flip(out, k)
    return out


@pytest.mark.parametrize("kind", ["npy", "nii"])
@pytest.mark.parametrize("flip,transpose", [("x", False), ("y,z", False), ("", True), ("x,z", True)])
def test_flip_and_transpose_every_source(tmp, kind, flip, transpose):
    import nibabel as nib

    a = np.random.default_rng(0).integers(0, 200, (20, 24, 28)).astype(np.uint8)
    affine = np.array([[0.5, 0, 0, -3], [0, 0.7, 0, 4], [0, 0, 1.1, 5], [0, 0, 0, 1]])
    path = tmp / f"v.{kind}"
    if kind == "npy":
        np.save(path, a)
    else:
        img = nib.Nifti1Image(a, affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(path))
    args = ["convert", path, tmp / "out", "--quiet", "--type", "image", "--compress", "none",
            "--chunk-size", "8,8,8"] + (["--flip", flip] if flip else []) + (["--transpose"] if transpose else [])
    run(*args, check=0)
    expected = _oriented(a, flip, transpose)
    assert np.array_equal(read_tensorstore(tmp / "out", 0)[..., 0], expected)
    if kind == "nii":
        info = json.loads((tmp / "out" / "info").read_text())
        res = info["scales"][0]["resolution"]
        want = [7e5, 5e5, 1.1e6] if transpose else [5e5, 7e5, 1.1e6]
        assert np.allclose(res, want)
        t = np.array(json.loads((tmp / "out" / "transform.json").read_text())["voxel_to_world"])
        n = expected.shape
        for j in [(0, 0, 0), (3, 5, 7), (n[0] - 1, 2, n[2] - 1)]:
            i = [n[k] - 1 - j[k] if axis in flip else j[k] for k, axis in enumerate("xyz")]
            if transpose:
                i[0], i[1] = i[1], i[0]
            # the voxel shows the same value and sits at the same world position as before
            assert expected[j] == a[tuple(i)]
            assert np.allclose(t @ [*j, 1], affine @ [*i, 1])


def test_flip_of_an_array_through_the_python_api(tmp):
    from ngconvert import write_volume

    a = np.random.default_rng(1).integers(0, 200, (9, 10, 11)).astype(np.uint8)
    write_volume(a, str(tmp / "out"), layer_type="image", flip="y", transpose=True, compress="none", workers=1)
    assert np.array_equal(read_tensorstore(tmp / "out", 0)[..., 0], _oriented(a, "y", True))


# ------------------------------------------------------------- 5, 18: ports and the nginx config


@pytest.mark.parametrize("args,says", [
    (["serve", ".", "--port", "70000"], "--port 70000"), (["serve", ".", "--port", "-1"], "--port -1"),
    (["view", ".", "--port", "65536", "--no-browser"], "--port 65536"),
    (["hosting", "nginx", ".", "--listen", "0"], "--listen 0"),
    (["hosting", "nginx", ".", "--listen", "70000"], "--listen 70000")])
def test_ports_out_of_range(args, says):
    line = one_line_error(run(*args))
    assert says in line and "65535" in line


@pytest.mark.parametrize("flag,value", [("--server-name", "x; include /etc/passwd;"), ("--server-name", "a{b}"),
                                        ("--location", "/a; include x"), ("--location", "/a b")])
def test_nginx_names_validated(tmp, flag, value):
    line = one_line_error(run("hosting", "nginx", tmp, flag, value))
    assert flag in line and repr(value) in line


@pytest.mark.parametrize("location", ["/", "/data"])
def test_nginx_config_with_a_spaced_folder_passes_nginx_t(tmp, location):
    import shutil
    import subprocess

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    folder = tmp / 'my data "v1"; x'
    folder.mkdir()
    p = run("hosting", "nginx", folder, "--server-name", "example.org *.example.org", "--location", location,
            "--listen", "8089", check=0)
    assert f'"{str(folder)}'.replace('"v1"', '\\"v1\\"') in p.stdout
    if not os.path.exists(nginx):
        pytest.skip("no nginx here")
    run_dir = tmp / "run"
    run_dir.mkdir()
    temps = " ".join(f"{k}_temp_path {run_dir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = run_dir / "nginx.conf"
    conf.write_text(f"worker_processes 1;\nerror_log {run_dir}/error.log;\npid {run_dir}/nginx.pid;\n"
                    f"events {{ worker_connections 8; }}\nhttp {{\n access_log off;\n {temps}\n{p.stdout}\n}}\n")
    t = subprocess.run([nginx, "-t", "-p", str(run_dir), "-c", str(conf)], capture_output=True, text=True)
    assert t.returncode == 0, t.stderr


def test_nginx_folder_with_dollar_refused(tmp):
    folder = tmp / "a$b"
    folder.mkdir()
    assert "'$'" in one_line_error(run("hosting", "nginx", folder))


# ------------------------------------------------------------- 3, 16: assemble origins and threshold


@pytest.fixture
def masks(tmp):
    folder = tmp / "masks"
    folder.mkdir()
    np.save(folder / "Brain.npy", np.ones((4, 4, 4), np.uint8))
    np.save(folder / "Cortex.npy", np.ones((3, 3, 3), np.uint8))
    return folder


@pytest.mark.parametrize("text,says", [
    ("name,x,y,z\nBrain,1,x,3\nCortex,0,0,0\n", ":2: 'x' is not a number"),
    ("Brain,100000000,0,0\nCortex,0,0,0\n", "Brain is at origin 100000000,0,0"),
    ("Brain,-100000000,0,0\nCortex,0,0,0\n", "Brain is at origin -100000000,0,0"),
    ("Brain,1e10,0,0\nCortex,0,0,0\n", "Brain at origin 10000000000,0,0 is beyond"),
    ("Brain,0,0,0\nCortex,3000000000,0,0\n", "Cortex at origin 3000000000,0,0 is beyond")])
def test_assemble_bad_origins(tmp, masks, text, says):
    (tmp / "o.csv").write_text(text)
    line = one_line_error(run("assemble", masks, tmp / "out", "--origins", tmp / "o.csv"))
    assert says in line and str(tmp / "o.csv") in line
    assert not (tmp / "out").exists()


def test_assemble_sparse_box_allowed_when_forced(tmp, masks, monkeypatch):
    import importlib

    asm = importlib.import_module("ngconvert.pipelines.assemble")
    from ngconvert.core.errors import UserError

    (tmp / "o.csv").write_text("Brain,0,0,0\nCortex,200000,0,0\n")     # 3.2 M voxels of mostly nothing
    monkeypatch.setattr(asm, "SPARSE_VOXELS", 1000)
    with pytest.raises(UserError, match="over 1000 times their own 91.*Cortex is at origin 200000,0,0"):
        asm.plan_assembly(str(masks), origins=str(tmp / "o.csv"))
    assembly, _readers = asm.plan_assembly(str(masks), origins=str(tmp / "o.csv"), max_voxels=None)
    assert assembly.shape == (200003, 4, 4)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-16-be"])
def test_assemble_origins_with_a_bom(tmp, masks, encoding):
    text = "name,x,y,z\nBrain,1,2,3\nCortex,0,0,0\n"
    data = text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode("utf-16-be")
    (tmp / "o.csv").write_bytes(data)
    run("assemble", masks, tmp / "out", "--origins", tmp / "o.csv", "--quiet", check=0)
    info = json.loads((tmp / "out" / "info").read_text())
    assert info["scales"][0]["size"] == [5, 6, 7]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_assemble_threshold_must_be_finite(tmp, masks, value):
    line = one_line_error(run("assemble", masks, tmp / "out", f"--threshold={value}"))
    assert f"--threshold {value}" in line and "finite" in line


# ------------------------------------------------------------- 2, 8: order files


@pytest.fixture
def slices(tmp):
    from PIL import Image

    folder = tmp / "slices"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 6), 40 * i + 10, np.uint8)).save(folder / f"s{i}.png")
    return folder


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le-bom", "utf-8-sig", "utf-32"])
def test_order_file_with_a_bom_is_read(tmp, slices, encoding):
    text = "s2.png 0\ns0.png 1\ns1.png 2\n"
    data = (b"\xff\xfe" + text.encode("utf-16-le")) if encoding == "utf-16-le-bom" else text.encode(encoding)
    (tmp / "order.txt").write_bytes(data)
    run("convert", slices, tmp / "out", "--order", tmp / "order.txt", "--quiet", "--compress", "none",
        "--type", "image", check=0)
    got = read_tensorstore(tmp / "out", 0)[..., 0]
    assert got[0, 0].tolist() == [90, 10, 50]


def test_order_file_utf16_without_bom_is_one_line(tmp, slices):
    (tmp / "order.txt").write_bytes("s2.png 0\n".encode("utf-16-le"))
    line = one_line_error(run("convert", slices, tmp / "out", "--order", tmp / "order.txt"))
    assert "order.txt" in line and "UTF-8" in line


def test_order_file_far_z_refused(tmp, slices):
    (tmp / "order.txt").write_text("s0.png 0\ns1.png 100000000\n")
    p = run("convert", slices, tmp / "out", "--order", tmp / "order.txt", "--dry-run")
    line = one_line_error(p)
    assert f"{tmp / 'order.txt'}:2: z index 100000000" in line and "limit of 1000" in line


# ------------------------------------------------------------- 7: run CONFIG.json


@pytest.mark.parametrize("option,says", [
    ('"resolution": "abc"', 'options.resolution is "abc"; give a list of 3 numbers or null'),
    ('"workers": "2"', 'options.workers is "2"; give an integer or null'),
    ('"chunk_size": [1, 2]', "options.chunk_size is [1, 2]; give a list of 3 integers or null"),
    ('"overwrite": "yes"', 'options.overwrite is "yes"; give true or false'),
    ('"gzip_level": 1.5', "options.gzip_level is 1.5; give an integer"),
    ('"mesh": {"lods": "3"}', 'options.mesh.lods is "3"; give an integer')])
def test_run_config_option_types(tmp, npy, option, says):
    cfg = tmp / "c.json"
    cfg.write_text(f'{{"source": "{npy}", "dest": "{tmp / "out"}", "options": {{{option}}}}}')
    line = one_line_error(run("run", cfg))
    assert str(cfg) in line and says in line
    assert not (tmp / "out").exists()


def test_run_config_paths_are_beside_the_config(tmp, npy):
    folder = tmp / "project"
    folder.mkdir()
    os.replace(npy, folder / "v.npy")
    (folder / "labels.csv").write_text("id,name\n1,One\n")
    (folder / "c.json").write_text('{"source": "v.npy", "dest": "out", "options": {"labels": "labels.csv", '
                                   '"chunk_size": [8, 8, 8], "quiet": true}}')
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "ngconvert", "run", str(folder / "c.json")], cwd=elsewhere,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH", "")])})
    assert p.returncode == 0, p.stderr
    assert (folder / "out" / "info").exists() and not (elsewhere / "out").exists()
    assert json.loads((folder / "out" / "info").read_text())["scales"][0]["chunk_sizes"] == [[8, 8, 8]]


# ------------------------------------------------------------- 1, 6, 20: paths


def test_example_into_a_file_or_under_a_file(tmp):
    (tmp / "f").write_text("x")
    assert "exists and is not a folder" in one_line_error(run("example", tmp / "f"))
    line = one_line_error(run("example", tmp / "f" / "sub"))
    assert str(tmp / "f" / "sub") in line and "Not a directory" in line


def test_example_into_a_read_only_folder(tmp):
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable anyway")
        line = one_line_error(run("example", ro / "x"))
        assert "cannot write the example" in line and "Permission denied" in line
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("where", ["dest-parent", "dest", "source", "example", "stats"])
def test_name_too_long(tmp, npy, where):
    long = "a" * 300
    args = {"dest-parent": ["convert", npy, tmp / long / "x"], "dest": ["convert", npy, tmp / long],
            "source": ["convert", tmp / f"{long}.npy", tmp / "out"], "example": ["example", tmp / long],
            "stats": ["stats", tmp / long]}[where]
    line = one_line_error(run(*args))
    assert "is 30" in line and "at most 255" in line


@pytest.mark.parametrize("args,what", [(["convert", "", "OUT"], "source"), (["convert", "NPY", ""], "folder"),
                                        (["transfer", "DS", ""], "folder"), (["upload", "", "OUT"], "folder"),
                                        (["stats", ""], "folder"), (["example", ""], "example folder")])
def test_empty_paths(tmp, npy, dataset, args, what):
    subst = {"OUT": tmp / "out", "NPY": npy, "DS": dataset}
    line = one_line_error(run(*[subst.get(a, a) for a in args]))
    assert f"the {what} path is empty ('')" in line


# ------------------------------------------------------------- 14: advice names only flags the command has


@pytest.mark.parametrize("argv,has,lacks", [
    (["upload", "a", "b"], "--resume", "--skip-existing"), (["download", "a", "b"], "--resume", "--skip-existing"),
    (["check", "a"], "again", "--resume"), (["convert", "a", "b"], "--resume", "--skip-existing"),
    (["run", "c.json"], "--resume", "--skip-existing")])
def test_interrupt_and_task_failure_advice_fits_the_command(argv, has, lacks):
    from ngconvert.cli.main import _continue_advice, _fit_advice, build_parser
    from ngconvert.tasks.executors import TasksFailed

    args = build_parser().parse_args(argv)
    advice = _continue_advice(args)
    failed = _fit_advice(args, str(TasksFailed([("t", RuntimeError("boom"))])))
    assert lacks not in advice and lacks not in failed
    assert has in (failed if argv[0] == "run" else advice)
    assert "boom" in failed
    p = run("upload", "/nonexistent-folder-xyz", "/tmp/never-written-xyz")
    assert "--resume" not in p.stderr


# ------------------------------------------------------------- 15, 17, 19: ids, colours, viewer URL


@pytest.fixture
def obj_mesh(tmp):
    path = tmp / "tetra.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    return path


@pytest.mark.parametrize("value", [str(2 ** 64), "-3", "0"])
def test_mesh_import_id_out_of_range(tmp, obj_mesh, value):
    line = one_line_error(run("mesh-import", obj_mesh, tmp / "out", f"--id={value}"))
    assert f"segment id {value}" in line and str(2 ** 64 - 1) in line
    (tmp / "ids.csv").write_text(f"id,file\n{value},{obj_mesh}\n")
    line = one_line_error(run("mesh-import", tmp / "out", "--ids", tmp / "ids.csv"))
    assert str(tmp / "ids.csv") + ":2" in line and value in line
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("name,text,says", [
    ("t.csv", "id,name,color\n1,Brain,300\n", ":2: colour '300' is one number"),
    ("t.tsv", "id\tname\tcolor\n1\tBrain\t300,0,0\n", ":2: colour '300,0,0': component 300 is not a whole number 0-255"),
    ("t.csv", "id,name,r,g,b\n1,Brain,0,256,0\n", "component 256"),
    ("lut.txt", "1 Brain 300 0 0 0\n", ":1: colour '300,0,0': component 300"),
    ("t.json", '{"1": {"name": "a", "color": [0, 0, 300]}}', "component 300")])
def test_colour_components_out_of_range(tmp, npy, name, text, says):
    (tmp / name).write_text(text)
    line = one_line_error(run("convert", npy, tmp / "out", "--labels", tmp / name, "--dry-run"))
    assert str(tmp / name) in line and says in line


def test_colour_hex_shorthand_still_read():
    from ngconvert.properties.labels import parse_color

    assert parse_color("#300") == (0x33, 0, 0) and parse_color("fff") == (255, 255, 255)
    assert parse_color("300,0,0".replace("300", "200")) == (200, 0, 0)


@pytest.mark.parametrize("flag,value", [("--viewer", "not a url"), ("--viewer", "ftp://host"),
                                        ("--viewer", "https://"), ("--base-url", "data/atlas")])
def test_url_needs_http_urls(dataset, flag, value):
    args = ["url", dataset, "--base-url", "http://h/a"] if flag == "--viewer" else ["url", dataset]
    line = one_line_error(run(*args, flag, value))
    assert f"{flag} {value!r}" in line and "http://" in line
