"""Atlas layers: label volume + table round trips, selection, id warnings, assembly of masks."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import ngconvert
from checks import check_dataset
from conftest import one_line_error, read_cloudvolume, read_info, run
from segprops_rules import check_segment_properties


def blobs(shape, ids, seed=0) -> np.ndarray:
    """Labelled ellipsoids, one per id, on a zero background."""
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, dtype=np.uint16)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij", sparse=True)
    for i in ids:
        c = [rng.uniform(0.2, 0.8) * n for n in shape]
        r = [rng.uniform(0.08, 0.2) * n for n in shape]
        a[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) < 1] = i
    return a


def props(path) -> dict:
    info = json.loads((Path(path) / "segment_properties" / "info").read_text())
    assert check_segment_properties(info) == []
    return info


def by_id(info) -> dict:
    """id -> {property id: value} from a segment properties info."""
    inline = info["inline"]
    out = {int(i): {} for i in inline["ids"]}
    for p in inline["properties"]:
        for i, v in zip(inline["ids"], p["values"]):
            out[int(i)][p["id"]] = [p["tags"][k] for k in v] if p["type"] == "tags" else v
    return out


def colors(path) -> dict:
    obj = json.loads((Path(path) / "segment_colors.json").read_text())
    assert obj["@type"] == "ngconvert_segment_colors_v1"
    return {int(k): v for k, v in obj["colors"].items()}


TABLE_CSV = """id,name,color,description,volume_ml,cortical
17,Left-Hippocampus,#dcd814,left hippocampus,4.2,yes
53,Right-Hippocampus,"220,216,20",right hippocampus,4.1,yes
10,Left-Thalamus,#00760e,,7,no
49,Right-Thalamus,0 118 14,,7,no
99,Not-In-Volume,#123456,,1,no
"""


@pytest.fixture
def atlas(tmp_path):
    a = blobs((61, 47, 38), [17, 53, 10, 49, 200])       # 200 is not in the table
    img = nib.Nifti1Image(a, np.diag([0.5, 0.5, 0.5, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "atlas.nii.gz"))
    (tmp_path / "labels.csv").write_text(TABLE_CSV)
    return a, tmp_path / "atlas.nii.gz", tmp_path / "labels.csv"


def test_volume_and_table_round_trip(tmp_path, atlas):
    a, nii, table = atlas
    dest = tmp_path / "out"
    p = run("convert", nii, dest, "--labels", table, check=0)
    warns = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warns) == 2, p.stderr
    assert "1 id(s) of" in warns[0] and ": 99" in warns[0]
    assert "1 id(s) in the volume" in warns[1] and ": 200" in warns[1]

    info = read_info(dest)
    assert info["type"] == "segmentation" and info["segment_properties"] == "segment_properties"
    assert info["scales"][0]["encoding"] == "compressed_segmentation"
    check_dataset(dest, a, "cloudvolume", "mode")          # labels voxel for voxel, every scale
    sp = by_id(props(dest))
    assert sorted(sp) == [10, 17, 49, 53]                    # in table and volume
    assert sp[17]["label"] == "Left-Hippocampus" and sp[17]["description"] == "left hippocampus"
    assert sp[17]["volume_ml"] == pytest.approx(4.2) and sp[10]["volume_ml"] == 7
    assert sp[17]["tags"] == ["cortical"] and sp[10]["tags"] == []
    col = colors(dest)
    assert col[17] == "#dcd814" and col[53] == "#dcd814" and col[49] == "#00760e"
    assert set(col) == {10, 17, 49, 53, 200} and col[200].startswith("#")


def test_colours_for_unlisted_ids_are_stable(tmp_path, atlas):
    a, nii, table = atlas
    run("convert", nii, tmp_path / "one", "--labels", table, "--quiet", check=0)
    run("convert", nii, tmp_path / "two", "--labels", table, "--quiet", "--workers", "1", check=0)
    assert colors(tmp_path / "one") == colors(tmp_path / "two")
    assert (tmp_path / "one" / "segment_properties" / "info").read_bytes() == \
        (tmp_path / "two" / "segment_properties" / "info").read_bytes()


def test_all_labels_lists_absent_ids(tmp_path, atlas):
    a, nii, table = atlas
    p = run("convert", nii, tmp_path / "out", "--labels", table, "--all-labels", check=0)
    assert "listed in the segment properties" in p.stderr
    assert sorted(by_id(props(tmp_path / "out"))) == [10, 17, 49, 53, 99]


@pytest.mark.parametrize("option,value,kept", [
    ("--only", "Left-Hippocampus,right-hippocampus", {17, 53}),
    ("--only", "17,49", {17, 49}),
    ("--exclude", "left-thalamus,200", {17, 53, 49}),
])
def test_selection(tmp_path, atlas, option, value, kept):
    a, nii, table = atlas
    dest = tmp_path / "out"
    p = run("convert", nii, dest, "--labels", table, option, value, check=0)
    expect = np.where(np.isin(a, list(kept)), a, 0)
    check_dataset(dest, expect, "cloudvolume", "mode")
    assert sorted(by_id(props(dest))) == sorted(kept)
    assert set(colors(dest)) == kept
    assert "warning" not in p.stderr or ": 99" in p.stderr     # only the genuinely absent id is reported


def test_selection_without_table_and_bad_selection(tmp_path, atlas):
    a, nii, table = atlas
    run("convert", nii, tmp_path / "out", "--only", "200", "--quiet", check=0)
    check_dataset(tmp_path / "out", np.where(a == 200, a, 0), "cloudvolume", "mode")
    assert not (tmp_path / "out" / "segment_properties").exists()
    line = one_line_error(run("convert", nii, tmp_path / "x", "--only", "SC"))
    assert "--only 'SC'" in line and "--labels" in line
    line = one_line_error(run("convert", nii, tmp_path / "x", "--labels", table, "--only", "hippocampus"))
    assert "did you mean" in line
    line = one_line_error(run("convert", nii, tmp_path / "x", "--labels", table, "--type", "image"))
    assert "segmentation" in line
    assert not (tmp_path / "x").exists()


def test_python_api_write_segmentation(tmp_path):
    a = blobs((40, 33, 21), [1, 2, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ngconvert.write_segmentation(
            a, tmp_path / "atlas", labels={1: {"name": "SC", "color": "#ff0000", "description": "superior colliculus"},
                                           2: "IC", 4: "absent"},
            resolution=(10, 10, 20), units="um", offset=(5, -3, 7))
    msgs = [str(w.message) for w in caught]
    assert any("not in the volume" in m and "4" in m for m in msgs)
    assert any("not in the label table" in m and "3" in m for m in msgs)
    assert res.labels_present == [1, 2, 3]
    info = read_info(tmp_path / "atlas")
    assert info["scales"][0]["voxel_offset"] == [5, -3, 7]
    assert info["scales"][0]["resolution"] == [10000, 10000, 20000]
    check_dataset(tmp_path / "atlas", a, "cloudvolume", "mode", offset=(5, -3, 7))
    sp = by_id(props(tmp_path / "atlas"))
    assert sp == {1: {"label": "SC", "description": "superior colliculus"}, 2: {"label": "IC", "description": ""}}
    assert colors(tmp_path / "atlas")[1] == "#ff0000"


def test_kill_then_resume_keeps_every_id(tmp_path):
    """Ids seen by tasks of the killed run come from their done markers."""
    a = blobs((192, 160, 128), list(range(1, 40)), seed=3)
    np.save(tmp_path / "v.npy", a)
    table = tmp_path / "t.json"
    table.write_text(json.dumps({str(i): f"region {i}" for i in range(1, 41)}))
    args = ["--labels", table, "--chunk-size", "32,32,32", "--task-memory", "1", "--workers", "1", "--quiet",
            "--gzip-level", "12"]
    run("convert", tmp_path / "v.npy", tmp_path / "clean", *args, check=0)
    dest = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ngconvert", "convert", str(tmp_path / "v.npy"), str(dest),
                             *map(str, args)])
    done = dest / ".ngconvert" / "done" / "0"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 4):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (dest / "info").exists() and not (dest / "segment_properties").exists()
    run("convert", tmp_path / "v.npy", dest, *args, "--resume", check=0)
    for key in ("info", "segment_properties/info", "segment_colors.json"):
        assert (dest / key).read_bytes() == (tmp_path / "clean" / key).read_bytes(), key
    assert sorted(by_id(props(dest))) == sorted(set(np.unique(a).tolist()) - {0})


# ---------------------------------------------------------------- assembly


def cube(shape, lo, hi, dtype=np.uint8):
    m = np.zeros(shape, dtype=dtype)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


def expected_assembly(parts, rule):
    """Reference: parts = [(id, mask, origin)] placed in order; returns volume and offset."""
    start = np.min([o for _, _, o in parts], axis=0)
    stop = np.max([np.add(o, m.shape) for _, m, o in parts], axis=0)
    out = np.zeros(tuple(stop - start), dtype=np.int64)
    for label, m, o in parts:
        sl = tuple(slice(a - s, a - s + n) for a, s, n in zip(o, start, m.shape))
        region = out[sl]
        inside = m != 0
        if rule == "last":
            region[inside] = label
        else:
            region[inside & (region == 0)] = label
    return out, tuple(int(s) for s in start)


@pytest.fixture
def masks():
    return {
        "SC_L": (cube((12, 10, 8), (2, 2, 2), (10, 9, 7)), (-4, 3, 0)),
        "SC_R": (cube((12, 10, 8), (2, 2, 2), (10, 9, 7)), (14.5, 3, 0)),      # rounds up to 15
        "IC": (cube((9, 9, 9), (0, 0, 0), (9, 9, 9)), (4, 8, 4)),             # overlaps SC_L
    }


TABLE_JSON = {"5": {"name": "Left SC", "color": "#ff0000"}, "6": {"name": "Right SC", "color": "#0000ff"},
              "300": {"name": "IC", "description": "inferior colliculus"}}


@pytest.mark.parametrize("rule", ["first", "last"])
def test_assembly_overlap_rules(tmp_path, masks, rule):
    asm = ngconvert.assemble(masks, labels=TABLE_JSON, overlap=rule)
    assert asm.ids == {"SC_L": 5, "SC_R": 6, "IC": 300}                    # L/R names through the table
    assert asm.dtype == "uint16"                                           # 300 needs 16 bits
    parts = [(5, masks["SC_L"][0], (-4, 3, 0)), (6, masks["SC_R"][0], (15, 3, 0)),
             (300, masks["IC"][0], (4, 8, 4))]
    ref, start = expected_assembly(parts, rule)
    assert asm.offset == start == (-4, 3, 0)
    np.testing.assert_array_equal(asm.volume, ref)
    assert sum(asm.overlaps.values()) > 0
    assert any("halves up" in n for n in asm.notes)


def test_assembly_overlap_error_names_the_pairs(masks):
    with pytest.raises(ngconvert.UserError) as e:
        ngconvert.assemble(masks, labels=TABLE_JSON)
    msg = str(e.value)
    assert "SC_L and IC" in msg and "voxel" in msg and "--overlap" in msg


def test_assembly_ids_and_dtype_without_table():
    m = cube((4, 4, 4), (0, 0, 0), (4, 4, 4))
    asm = ngconvert.assemble({"a": (m, (0, 0, 0)), "b": (m, (4, 0, 0))})
    assert asm.ids == {"a": 1, "b": 2} and asm.dtype == "uint8" and asm.table.labels[2].name == "b"
    asm = ngconvert.assemble({"a": (m, (0, 0, 0)), "b": (m, (4, 0, 0))}, ids={"a": 70000, "b": 3})
    assert asm.dtype == "uint32" and asm.volume[5, 0, 0] == 3 and asm.volume[0, 0, 0] == 70000


def test_assemble_cli_end_to_end(tmp_path, masks):
    folder = tmp_path / "structures"
    folder.mkdir()
    lines = ["name,x,y,z"]
    for name, (m, origin) in masks.items():
        if name == "IC":     # NIfTI masks work alongside .npy
            img = nib.Nifti1Image(m, np.diag([0.025, 0.025, 0.025, 1]))
            img.header.set_xyzt_units("mm")
            nib.save(img, str(folder / f"{name}.nii.gz"))
        else:
            np.save(folder / f"{name}.npy", m)
        lines.append(f"{name},{origin[0]},{origin[1]},{origin[2]}")
    (tmp_path / "origins.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "table.json").write_text(json.dumps(TABLE_JSON))
    dest = tmp_path / "atlas"
    common = [folder, dest, "--origins", tmp_path / "origins.csv", "--labels", tmp_path / "table.json"]
    line = one_line_error(run("assemble", *common))
    assert "overlap" in line and "SC_L and IC" in line
    assert not dest.exists()
    p = run("assemble", *common, "--overlap", "last", check=0)
    assert "assembled 3 structures" in p.stderr
    parts = [(5, masks["SC_L"][0], (-4, 3, 0)), (6, masks["SC_R"][0], (15, 3, 0)),
             (300, masks["IC"][0], (4, 8, 4))]
    ref, start = expected_assembly(parts, "last")
    info = read_info(dest)
    s0 = info["scales"][0]
    assert s0["voxel_offset"] == list(start) and s0["size"] == list(ref.shape)
    assert s0["resolution"] == [25000, 25000, 25000]         # from the NIfTI mask
    assert s0["encoding"] == "compressed_segmentation" and info["type"] == "segmentation"
    check_dataset(dest, ref.astype(np.uint32), "cloudvolume", "mode", offset=start)
    sp = by_id(props(dest))
    assert sp == {5: {"label": "Left SC", "description": ""}, 6: {"label": "Right SC", "description": ""},
                  300: {"label": "IC", "description": "inferior colliculus"}}
    assert colors(dest)[5] == "#ff0000"
    # the same origins file order decides "first"
    run("assemble", *common, "--overlap", "first", "--overwrite", "--quiet", check=0)
    ref, _ = expected_assembly(parts, "first")
    np.testing.assert_array_equal(read_cloudvolume(dest, 0)[..., 0], ref)
    # --resume is idempotent; a moved origin (another assembly) is named and refused
    before = (dest / "info").read_bytes(), sorted(p.name for p in dest.rglob("*"))
    assert "already complete" in run("assemble", *common, "--overlap", "first", "--resume").stderr
    assert ((dest / "info").read_bytes(), sorted(p.name for p in dest.rglob("*"))) == before
    (tmp_path / "origins.csv").write_text((tmp_path / "origins.csv").read_text().replace("SC_R,14.5", "SC_R,16.5"))
    line = one_line_error(run("assemble", *common, "--overlap", "first", "--resume"))
    assert "changed" in line and "--overwrite" in line


def test_assemble_bad_input(tmp_path, masks):
    folder = tmp_path / "s"
    folder.mkdir()
    np.save(folder / "SC_L.npy", masks["SC_L"][0])
    np.save(folder / "Mystery.npy", masks["SC_L"][0])
    (tmp_path / "table.json").write_text(json.dumps(TABLE_JSON))
    line = one_line_error(run("assemble", folder, tmp_path / "o", "--labels", tmp_path / "table.json"))
    assert "Mystery" in line and "not in" in line
    (tmp_path / "origins.csv").write_text("SC_L,1,2,3\n")
    line = one_line_error(run("assemble", folder, tmp_path / "o", "--origins", tmp_path / "origins.csv"))
    assert "no origin for 1 structure" in line and "Mystery" in line
    (tmp_path / "origins.csv").write_text("name,x,y,z\nSC_L,1,2,3\nMystery,1,two,3\n")
    line = one_line_error(run("assemble", folder, tmp_path / "o", "--origins", tmp_path / "origins.csv"))
    assert "origins.csv:3:" in line
    np.save(folder / "Flat.npy", np.zeros((4, 4), np.uint8))
    line = one_line_error(run("assemble", folder, tmp_path / "o"))
    assert "Flat.npy" in line and "3-D" in line
    assert not (tmp_path / "o").exists()


def test_example_atlas_both_routes_give_the_same_labels(tmp_path):
    """The built-in example: label volume + table, and the same atlas assembled from masks."""
    run("example", tmp_path / "data", check=0)
    data = tmp_path / "data"
    run("convert", data / "phantom_labels.nii.gz", tmp_path / "labels", "--labels", data / "phantom_labels.csv",
        "--quiet", check=0)
    run("assemble", data / "structures", tmp_path / "assembled", "--origins", data / "structures_origins.csv",
        "--labels", data / "phantom_labels.csv", "--resolution", "1,1,1", "--units", "mm", "--quiet", check=0)
    full = read_cloudvolume(tmp_path / "labels", 0)[..., 0]
    part = read_cloudvolume(tmp_path / "assembled", 0)[..., 0]
    off = read_info(tmp_path / "assembled")["scales"][0]["voxel_offset"]
    window = full[tuple(slice(o, o + n) for o, n in zip(off, part.shape))]
    np.testing.assert_array_equal(window, part)
    assert full.sum() == window.sum()                  # nothing outside the assembled box
    assert (tmp_path / "labels" / "segment_properties" / "info").read_bytes() == \
        (tmp_path / "assembled" / "segment_properties" / "info").read_bytes()
    assert colors(tmp_path / "labels") == colors(tmp_path / "assembled")
    assert by_id(props(tmp_path / "labels"))[5]["label"] == "Left-Thalamus"


def test_one_layer_per_structure(tmp_path, atlas):
    a, nii, table = atlas
    dest = tmp_path / "split"
    p = run("convert", nii, dest, "--labels", table, "--split", "--exclude", "Right-Thalamus", check=0)
    assert "not in the volume and got no layer: 99" in p.stderr
    layers = sorted(d.name for d in dest.iterdir())
    assert layers == ["10-Left-Thalamus", "17-Left-Hippocampus", "53-Right-Hippocampus"]
    for name in layers:
        label = int(name.split("-")[0])
        got = read_cloudvolume(dest / name, 0)[..., 0]
        np.testing.assert_array_equal(got, np.where(a == label, a, 0).astype(got.dtype))
        assert sorted(by_id(props(dest / name))) == [label]
        assert set(colors(dest / name)) == {label}
    assert run("check", dest / "17-Left-Hippocampus", "--full").returncode == 0
    line = one_line_error(run("convert", nii, tmp_path / "x", "--split"))
    assert "--labels" in line
