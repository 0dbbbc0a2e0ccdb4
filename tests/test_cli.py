"""The command line: bad input, safety (overwrite, interruption, resume), stats and dry runs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from checks import check_dataset
from conftest import one_line_error, run, smooth_volume


@pytest.fixture
def nifti(tmp):
    path = tmp / "brain.nii.gz"
    img = nib.Nifti1Image(smooth_volume((70, 60, 50), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def test_convert_and_stats(tmp, nifti):
    p = run("convert", nifti, tmp / "out", check=0)
    assert "auto chose image" in p.stderr and "wrote" in p.stderr
    assert (tmp / "out" / "info").exists() and (tmp / "out" / "transform.json").exists()
    assert list((tmp / "out" / "1000000_1000000_1000000").glob("*.gz"))
    p = run("stats", tmp / "out", check=0)
    assert "1000000_1000000_1000000" in p.stdout and "total" in p.stdout
    p = run("stats", tmp / "out", "--json", check=0)
    import json

    rows = json.loads(p.stdout)["scales"]
    assert rows[0]["stored_chunks"] == rows[0]["chunks"] == 2
    assert rows[-1]["stored_chunks"] == 1


def test_dry_run_writes_nothing(tmp, nifti):
    p = run("convert", nifti, tmp / "out", "--dry-run", check=0)
    assert "stage 0" in p.stdout and "raw" in p.stdout
    assert not (tmp / "out").exists()


def test_plain_files_with_compress_none(tmp, nifti):
    run("convert", nifti, tmp / "out", "--compress", "none", "--quiet", check=0)
    files = [f for f in (tmp / "out").rglob("*") if f.is_file()]
    assert files and not any(f.suffix == ".gz" for f in files)


def test_existing_destination_is_refused_without_overwrite(tmp, nifti):
    run("convert", nifti, tmp / "out", "--quiet", check=0)
    before = (tmp / "out" / "info").read_bytes()
    line = one_line_error(run("convert", nifti, tmp / "out"))
    assert "--overwrite" in line
    (tmp / "keep").mkdir()
    (tmp / "keep" / "notes.txt").write_text("mine")
    assert "no precomputed dataset" in one_line_error(run("convert", nifti, tmp / "keep"))
    assert "no precomputed dataset" in one_line_error(run("convert", nifti, tmp / "keep", "--overwrite"))
    assert (tmp / "keep" / "notes.txt").read_text() == "mine"
    run("convert", nifti, tmp / "out", "--overwrite", "--quiet", "--encoding", "png", check=0)
    assert (tmp / "out" / "info").read_bytes() != before


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_kill_then_resume_gives_identical_output(tmp):
    a = smooth_volume((256, 256, 192), np.uint16, noise=200)
    np.save(tmp / "v.npy", a)
    args = ["--type", "image", "--chunk-size", "32,32,32", "--task-memory", "1", "--workers", "1",
            "--gzip-level", "12", "--quiet"]
    run("convert", tmp / "v.npy", tmp / "clean", *args, check=0)

    dest = tmp / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "convert", str(tmp / "v.npy"), str(dest), *args])
    done = dest / ".ngconvert" / "done" / "0"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (dest / "info").exists(), "killed run must not look complete"
    assert (dest / ".ngconvert" / "plan.json").exists()

    assert "--resume" in one_line_error(run("convert", tmp / "v.npy", dest, *args))
    p = run("convert", tmp / "v.npy", dest, *args, "--resume", check=0)
    assert p.stderr == ""
    assert _files(dest) == _files(tmp / "clean")
    # --resume is idempotent: the same run is complete (nothing changes), another one is refused
    p = run("convert", tmp / "v.npy", dest, *args, "--resume", check=0)
    assert _files(dest) == _files(tmp / "clean")
    assert "chunk_size [32, 32, 32] -> [64, 64, 64]" in one_line_error(run("convert", tmp / "v.npy", dest, "--resume"))
    check_dataset(dest, a, "cloudvolume", "average")


def test_resume_without_state(tmp, nifti):
    # a scheduler's restart or a retry loop always passes --resume: with nothing there it converts
    run("convert", nifti, tmp / "new", "--resume", "--quiet", check=0)
    before = _files(tmp / "new")
    p = run("convert", nifti, tmp / "new", "--resume", check=0)
    assert "already complete" in p.stderr and _files(tmp / "new") == before


# ---- bad input: one line, exit 2, no traceback, nothing that looks complete ----

def test_missing_file(tmp):
    line = one_line_error(run("convert", tmp / "nope.nii.gz", tmp / "out"))
    assert "nope.nii.gz" in line and "no such file" in line
    assert not (tmp / "out" / "info").exists()


def test_truncated_nii_gz(tmp, nifti):
    data = nifti.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    line = one_line_error(run("convert", tmp / "cut.nii.gz", tmp / "out"))
    assert "cut.nii.gz" in line and "truncated" in line
    assert not (tmp / "out" / "info").exists()


def test_corrupt_nii_gz(tmp, nifti):
    data = bytearray(nifti.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    (tmp / "bad.nii.gz").write_bytes(bytes(data))
    line = one_line_error(run("convert", tmp / "bad.nii.gz", tmp / "out"))
    assert "bad.nii.gz" in line and ("corrupt" in line or "truncated" in line)


def test_truncated_uncompressed_nii(tmp):
    img = nib.Nifti1Image(smooth_volume((40, 40, 40), np.uint8), np.eye(4))
    nib.save(img, str(tmp / "v.nii"))
    data = (tmp / "v.nii").read_bytes()
    (tmp / "v.nii").write_bytes(data[:-5000])
    assert "truncated" in one_line_error(run("convert", tmp / "v.nii", tmp / "out"))


def test_not_a_volume(tmp):
    (tmp / "x.nii").write_text("hello")
    assert "x.nii" in one_line_error(run("convert", tmp / "x.nii", tmp / "out"))
    (tmp / "y.txt").write_text("hello")
    assert "unknown volume format" in one_line_error(run("convert", tmp / "y.txt", tmp / "out"))


def test_unsupported_dtype_for_encoding(tmp):
    np.save(tmp / "f.npy", smooth_volume((20, 20, 20), np.float32))
    line = one_line_error(run("convert", tmp / "f.npy", tmp / "out", "--encoding", "jpeg"))
    assert "jpeg" in line and "float32" in line
    assert not (tmp / "out" / "info").exists()
    np.save(tmp / "l.npy", np.ones((20, 20, 20), np.uint32))
    line = one_line_error(run("convert", tmp / "l.npy", tmp / "out2", "--type", "segmentation", "--encoding", "jpeg"))
    assert "lossy" in line


def test_five_d_data(tmp):
    img = nib.Nifti1Image(np.zeros((5, 5, 5, 2, 3), np.uint8), np.eye(4))
    nib.save(img, str(tmp / "v5.nii"))
    assert "5-D" in one_line_error(run("convert", tmp / "v5.nii", tmp / "out"))


def test_zero_size_axis(tmp):
    np.save(tmp / "z.npy", np.zeros((10, 0, 10), np.uint8))
    assert "zero-size" in one_line_error(run("convert", tmp / "z.npy", tmp / "out"))


@pytest.mark.parametrize("text", ["4,4", "a,b,c", "4,4,4,4", "0,4,4", "-1,4,4"])
def test_bad_resolution(tmp, nifti, text):
    line = one_line_error(run("convert", nifti, tmp / "out", "--resolution", text))
    assert "--resolution" in line or "voxel size" in line


def test_destination_not_writable(tmp, nifti):
    (tmp / "afile").write_text("x")
    line = one_line_error(run("convert", nifti, tmp / "afile" / "out"))
    assert "not writable" in line


def test_time_series_refused(tmp):
    img = nib.Nifti1Image(np.zeros((5, 5, 5, 40), np.int16), np.eye(4))
    nib.save(img, str(tmp / "ts.nii"))
    assert "time series" in one_line_error(run("convert", tmp / "ts.nii", tmp / "out"))


def test_debug_shows_traceback(tmp):
    p = run("--debug", "convert", tmp / "nope.nii", tmp / "out")
    assert p.returncode != 0 and "Traceback" in p.stderr


def _stderr_on_terminal(args):
    """Run the CLI with stderr on a pseudo-terminal; return what it showed there."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", *map(str, args)], stderr=slave,
                            stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp, nifti):
    rc, shown = _stderr_on_terminal(["convert", nifti, tmp / "a", "--workers", "1"])
    assert rc == 0 and "pyramid" in shown and "task" in shown and "MB written" in shown
    rc, shown = _stderr_on_terminal(["convert", nifti, tmp / "b", "--quiet"])
    assert rc == 0 and shown == ""
    p = run("convert", nifti, tmp / "c", check=0)           # stderr is a pipe: notes, no bar
    assert "pyramid" not in p.stderr and "task/s" not in p.stderr


def test_truncated_npy(tmp):
    np.save(tmp / "v.npy", np.zeros((40, 40, 40), np.uint16))
    data = (tmp / "v.npy").read_bytes()
    (tmp / "v.npy").write_bytes(data[:-1000])
    line = one_line_error(run("convert", tmp / "v.npy", tmp / "out"))
    assert "v.npy" in line and "truncated" in line


def _subparsers():
    import argparse

    from ngconvert.cli.main import build_parser

    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, action.choices


def test_every_command_has_the_same_run_conventions():
    """Commands that run tasks take the same run flags; every command that writes a
    destination takes the destination flags; --debug is global.  The flags mean the same
    everywhere because they are added by one helper."""
    import argparse

    top, commands = _subparsers()
    assert "--debug" in top._option_string_actions
    tasks = {"convert", "assemble", "mesh", "reencode", "transfer", "run"}
    writers = tasks | {"upload", "download", "mesh-import"}
    run_flags = {"--quiet", "--workers", "--dask-workers", "--scheduler", "--resume", "--overwrite", "--break-lock"}
    for name, sub in commands.items():
        flags = set(sub._option_string_actions)
        if name in tasks:
            assert run_flags <= flags, (name, run_flags - flags)
        if name in writers:
            assert {"--quiet", "--overwrite", "--break-lock"} <= flags, name
        for flag in flags & run_flags:
            action = sub._option_string_actions[flag]
            kind = {"--workers": argparse._StoreAction, "--dask-workers": argparse._StoreAction,
                    "--scheduler": argparse._StoreAction}.get(flag, argparse._StoreTrueAction)
            assert isinstance(action, kind), (name, flag)
    for name in ("convert", "mesh-import", "upload"):
        p = run(name, "--help", check=0)
        assert "--quiet" in p.stdout and "--break-lock" in p.stdout
