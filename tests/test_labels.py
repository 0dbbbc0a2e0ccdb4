"""Label tables: one atlas in every format, extra columns as segment properties, automatic
colours, and bad tables / bad --only/--exclude names through the command line.

Every segment-properties object produced here is held against the independent checker in
``segprops_rules.py`` (written from the Neuroglancer format, not from ngconvert).
"""
import colorsys
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ngconvert.core.errors import UserError
from ngconvert.properties.labels import auto_color, detect_format, read_labels, table_from_mapping
from ngconvert.properties.segment_properties import segment_colors, segment_properties
from segprops_rules import check_segment_properties

# ---------------------------------------------------------------- the atlas, in every format

# id, name, colour, description ("" = none); the description of 17 holds a comma on purpose
ATLAS = [
    (1, "Alpha", (255, 0, 0), "first structure"),
    (2, "Beta", (0, 255, 0), ""),
    (17, "Left-Hippocampus", (220, 216, 20), "hippocampus, left"),
    (53, "Right-Hippocampus", (220, 216, 10), ""),
]
IDS = [a[0] for a in ATLAS]


def _hex(c):
    return "#%02x%02x%02x" % c


def csv_hex():
    rows = ["id,name,color,description"]
    for i, name, c, desc in ATLAS:
        rows.append(f'{i},{name},{_hex(c)},"{desc}"' if "," in desc else f"{i},{name},{_hex(c)},{desc}")
    return "\n".join(rows) + "\n"


def csv_rgb():
    # acronym is a name column, red/green/blue a colour trio, alpha is ignored
    return "id,acronym,red,green,blue,alpha\n" + "".join(
        f"{i},{name},{c[0]},{c[1]},{c[2]},255\n" for i, name, c, _ in ATLAS)


def tsv():
    # colours as "r,g,b" text (no clash with the tab delimiter)
    return "id\tname\tcolor\tdescription\n" + "".join(
        f"{i}\t{name}\t{c[0]},{c[1]},{c[2]}\t{desc}\n" for i, name, c, desc in ATLAS)


def json_objects():
    return json.dumps({str(i): ({"name": n, "color": _hex(c), "description": d} if d else
                                {"name": n, "color": _hex(c)}) for i, n, c, d in ATLAS}, indent=2)


def json_names():
    return json.dumps({str(i): n for i, n, _, _ in ATLAS}, indent=2)


def json_list():
    return json.dumps([{"id": i, "name": n, "color": list(c), "description": d} for i, n, c, d in ATLAS],
                      indent=2)


ITK_HEADER = """################################################
# ITK-SNAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    IDX:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def itksnap():
    return ITK_HEADER + '    0     0    0    0        0  0  0    "Clear Label"\n' + "".join(
        f'{i:5d} {c[0]:5d} {c[1]:4d} {c[2]:4d}        1  1  1    "{n}"\n' for i, n, c, _ in ATLAS)


def freesurfer():
    return ("#$Id: FreeSurferColorLUT.txt,v 1.70 2011/07/19 $\n\n"
            "#No. Label Name:                            R   G   B   A\n\n"
            "0   Unknown                                 0   0   0   0\n"
            + "".join(f"{i:<4d}{n:<40s}{c[0]:<4d}{c[1]:<4d}{c[2]:<4d}0\n" for i, n, c, _ in ATLAS))


def slicer():
    return ("# Color table file /home/user/Atlas/GenericAnatomyColors.txt\n"
            f"# {len(ATLAS) + 1} values\n"
            "0 Background 0 0 0 0\n"
            + "".join(f"{i} {n} {c[0]} {c[1]} {c[2]} 255\n" for i, n, c, _ in ATLAS))


# name -> (writer, file name, detected kind, colours?, descriptions?, has a background row 0?)
FORMATS = {
    "csv-hex": (csv_hex, "atlas.csv", "csv", True, True, False),
    "csv-rgb": (csv_rgb, "atlas.csv", "csv", True, False, False),
    "tsv": (tsv, "atlas.tsv", "tsv", True, True, False),
    "json-objects": (json_objects, "atlas.json", "json", True, True, False),
    "json-names": (json_names, "atlas.json", "json", False, False, False),
    "json-list": (json_list, "atlas.json", "json", True, True, False),
    "itk-snap": (itksnap, "atlas.label", "itk-snap", True, False, True),
    "freesurfer": (freesurfer, "FreeSurferColorLUT.lut", "freesurfer", True, False, True),
    "slicer": (slicer, "atlas.txt", "slicer", True, False, True),
    "slicer-ctbl": (slicer, "atlas.ctbl", "slicer", True, False, True),
}


def assert_is_atlas(table, colours: bool, descriptions: bool, background: bool):
    ids = list(table.labels)
    if background:
        assert ids[0] == 0 and table.labels[0].name in ("Clear Label", "Unknown", "Background")
        ids = ids[1:]
    assert ids == IDS                                   # the source order, nothing more or less
    for i, name, colour, desc in ATLAS:
        lab = table.labels[i]
        assert lab.id == i and lab.name == name
        assert lab.color == (colour if colours else None)
        assert lab.description == (desc if descriptions else "")
        assert lab.tags == ()
    assert table.extra_columns == []                    # alpha/opacity columns are not properties


@pytest.mark.parametrize("fmt, as_txt", [(f, t) for f in FORMATS for t in (False, True)
                                         if not (t and FORMATS[f][1].endswith((".ctbl", ".txt")))],
                         ids=lambda v: {False: "own-ext", True: "txt-ext"}.get(v, v) if isinstance(v, bool) else v)
def test_same_atlas_in_every_format(tmp_path, fmt, as_txt):
    """Each format with its own extension and again named .txt (found from the content)."""
    writer, filename, kind, colours, descriptions, background = FORMATS[fmt]
    if as_txt:
        filename = filename.rsplit(".", 1)[0] + ".txt"
    path = tmp_path / filename
    text = writer()
    path.write_text(text)
    assert detect_format(str(path), text) == kind
    table = read_labels(path)
    assert table.kind == kind
    assert_is_atlas(table, colours, descriptions, background)
    # the table survives its JSON form (how it travels inside a conversion plan)
    again = type(table).from_json(json.loads(json.dumps(table.to_json())))
    assert [(x.id, x.name, x.color, x.description) for x in again.labels.values()] == \
           [(x.id, x.name, x.color, x.description) for x in table.labels.values()]
    info, notes = segment_properties(table, IDS)
    assert check_segment_properties(info) == [] and notes == []
    props = {p["type"]: p for p in info["inline"]["properties"]}
    assert info["inline"]["ids"] == ["1", "2", "17", "53"]
    assert props["label"]["values"] == [a[1] for a in ATLAS]
    assert ("description" in props) == descriptions
    colors = segment_colors(table, IDS)["colors"]
    for i, _, c, _ in ATLAS:
        assert colors[str(i)] == (_hex(c) if colours else _hex(auto_color(i)))


def test_python_mappings_give_the_same_atlas():
    as_objects = {i: {"name": n, "color": c, "description": d} for i, n, c, d in ATLAS}
    assert_is_atlas(table_from_mapping(as_objects), True, True, False)
    wrapped = {"labels": [{"label_id": i, "name": n, "color": _hex(c), "desc": d} for i, n, c, d in ATLAS]}
    assert_is_atlas(table_from_mapping(wrapped), True, True, False)
    assert_is_atlas(table_from_mapping({i: n for i, n, _, _ in ATLAS}), False, False, False)


@pytest.mark.parametrize("text, kind", [
    ("id,name\n1,A\n", "csv"),
    ("id;name;color\n1;A;#ff0000\n", "csv"),
    ("id\tname\n1\tA\n", "tsv"),
    ('{"1": "A"}', "json"),
    ('  [{"id": 1, "name": "A"}]', "json"),
    ('# comment\n    1   255    0    0        1  1  1    "A"\n', "itk-snap"),
    ("17  Left-Hippocampus   220 216  20   0\n", "freesurfer"),
    ("# Color table file x.txt\n17 Left-Hippocampus 220 216 20 255\n", "slicer"),
])
def test_detect_format_from_content_of_txt_files(tmp_path, text, kind):
    path = tmp_path / "table.txt"
    path.write_text(text)
    assert detect_format(str(path), text) == kind
    assert read_labels(path).kind == kind


def test_detect_format_by_extension_wins(tmp_path):
    assert detect_format("x.json", "id,name\n1,A\n") == "json"
    assert detect_format("x.TSV", "id,name\n1,A\n") == "tsv"
    assert detect_format("x.ctbl", "17 Left-Hippocampus 220 216 20 255\n") == "slicer"
    with pytest.raises(UserError, match=r"^x\.txt:1: cannot tell the label table format"):
        detect_format("x.txt", "hello world\n")


# ---------------------------------------------------------------- extra columns -> properties

EXTRA_CSV = """id,name,voxels,small,offset,mean_fa,hemisphere,in cortex,tags
1,Alpha,12,1,-5,0.25,left,yes,a;b
2,Beta,300,2,100,0.5,right,no,b
17,Left-Hippocampus,7,3,0,1,left,Yes,
53,Right-Hippocampus,250,255,-128,0.125,right,,A
"""


def _props(info):
    return {p["id"]: p for p in info["inline"]["properties"]}


def test_extra_columns_become_typed_properties(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text(EXTRA_CSV)
    table = read_labels(path)
    assert table.extra_columns == ["voxels", "small", "offset", "mean_fa", "hemisphere", "in cortex"]
    info, notes = segment_properties(table, IDS)
    assert check_segment_properties(info) == []
    p = _props(info)
    assert [x["id"] for x in info["inline"]["properties"]] == \
           ["label", "voxels", "small", "offset", "mean_fa", "hemisphere", "tags"]
    assert p["voxels"] == {"id": "voxels", "type": "number", "data_type": "uint16", "values": [12, 300, 7, 250]}
    assert p["small"]["data_type"] == "uint8" and p["small"]["values"] == [1, 2, 3, 255]
    assert p["offset"]["data_type"] == "int8" and p["offset"]["values"] == [-5, 100, 0, -128]
    assert p["mean_fa"]["type"] == "number" and p["mean_fa"]["data_type"] == "float32"
    assert p["mean_fa"]["values"] == [0.25, 0.5, 1, 0.125]
    assert p["hemisphere"] == {"id": "hemisphere", "type": "string", "values": ["left", "right", "left", "right"]}
    # tags: the tags column (a;b split, 'A' is the same tag as 'a') and the yes/no column,
    # whose name's space becomes an underscore
    tags = p["tags"]
    assert tags["type"] == "tags" and "description" not in tags
    assert sorted(t.lower() for t in tags["tags"]) == ["a", "b", "in_cortex"]
    named = [sorted(tags["tags"][k] for k in v) for v in tags["values"]]
    assert named == [["a", "b", "in_cortex"], ["b"], ["in_cortex"], ["a"]]
    assert any("in_cortex" in n for n in notes)


def test_json_extra_keys_tags_and_booleans():
    table = table_from_mapping({
        "1": {"name": "Alpha", "tags": ["grey matter", "Deep#1"], "cortical": True, "volume": 3},
        "2": {"name": "Beta", "tags": ["GREY MATTER"], "cortical": False, "volume": 2.5},
    })
    info, notes = segment_properties(table, [1, 2])
    assert check_segment_properties(info) == []
    p = _props(info)
    assert p["volume"]["type"] == "number" and p["volume"]["data_type"] == "float32"
    assert p["volume"]["values"] == [3, 2.5]
    assert p["tags"]["tags"] == ["grey_matter", "Deep1", "cortical"]
    assert p["tags"]["values"] == [[0, 1, 2], [0]]
    assert "tag 'grey matter' written as 'grey_matter' (tags cannot hold spaces or '#')" in notes


@pytest.mark.parametrize("values, data_type", [
    ([0, 255], "uint8"), ([0, 256], "uint16"), ([-1, 127], "int8"), ([-128, 0], "int8"),
    ([-129, 0], "int16"), ([-1, 128], "int16"), ([0, 65535], "uint16"), ([0, 65536], "uint32"),
    ([-32768, 32767], "int16"), ([-32769, 0], "int32"), ([-1, 32768], "int32"),
    ([0, 2 ** 32 - 1], "uint32"), ([-2 ** 31, 2 ** 31 - 1], "int32"),
    (["0.5", 1], "float32"), (["1.0", 2], "float32"), (["1e3", 2], "float32"),
])
def test_smallest_fitting_number_type(tmp_path, values, data_type):
    path = tmp_path / "n.csv"
    path.write_text(f"id,name,n\n1,A,{values[0]}\n2,B,{values[1]}\n")
    info, _ = segment_properties(read_labels(path), [1, 2])
    assert check_segment_properties(info) == []
    n = _props(info)["n"]
    assert n["type"] == "number" and n["data_type"] == data_type
    assert n["values"] == [float(v) for v in values]


def test_integers_beyond_32_bits_still_give_valid_properties(tmp_path):
    # there is no 64-bit number type; whatever the library picks must be valid
    path = tmp_path / "n.csv"
    path.write_text(f"id,name,n,m\n1,A,{2 ** 40},-1\n2,B,0,{2 ** 31}\n")
    info, _ = segment_properties(read_labels(path), [1, 2])
    assert check_segment_properties(info) == []


def test_property_ids_do_not_clash_with_reserved_ones():
    table = table_from_mapping([{"id": 1, "name": "A", "label": "x", "Label": "y", "TAGS_": 3}])
    info, _ = segment_properties(table, [1])
    assert check_segment_properties(info) == []
    ids = [p["id"].lower() for p in info["inline"]["properties"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- the checker itself


def _valid_info():
    return {"@type": "neuroglancer_segment_properties", "inline": {
        "ids": ["1", "18446744073709551615"],
        "properties": [
            {"id": "label", "type": "label", "values": ["a", "b"]},
            {"id": "description", "type": "description", "values": ["", "x"]},
            {"id": "kind", "type": "string", "values": ["p", "q"]},
            {"id": "n", "type": "number", "data_type": "int8", "values": [-128, 127]},
            {"id": "f", "type": "number", "data_type": "float32", "values": [0.5, 3e38]},
            {"id": "tags", "type": "tags", "tags": ["x", "Y"], "tag_descriptions": ["", ""],
             "values": [[], [0, 1]]},
        ]}}


def _mutate(path, value):
    info = _valid_info()
    *head, last = path
    obj = info
    for k in head:
        obj = obj[k]
    if value is KeyError:
        del obj[last]
    elif last == "+":
        obj.append(value)
    else:
        obj[last] = value
    return info


PROPS = ("inline", "properties")
BROKEN = {
    "type": (("@type",), "neuroglancer_segment_property"),
    "no inline": (("inline",), KeyError),
    "id not string": (("inline", "ids", 0), 1),
    "negative id": (("inline", "ids", 0), "-1"),
    "hex id": (("inline", "ids", 0), "0x1"),
    "id 2^64": (("inline", "ids", 1), "18446744073709551616"),
    "duplicate id": (("inline", "ids", 1), "1"),
    "unknown type": ((*PROPS, 2, "type"), "text"),
    "duplicate property id": ((*PROPS, 2, "id"), "label"),
    "property id not string": ((*PROPS, 2, "id"), 5),
    "short values": ((*PROPS, 2, "values"), ["p"]),
    "second label": ((*PROPS, "+"), {"id": "l2", "type": "label", "values": ["a", "b"]}),
    "second tags": ((*PROPS, "+"), {"id": "t2", "type": "tags", "tags": [], "values": [[], []]}),
    "label not string": ((*PROPS, 0, "values", 1), 2),
    "string not string": ((*PROPS, 2, "values", 1), None),
    "int64": ((*PROPS, 3, "data_type"), "int64"),
    "float64": ((*PROPS, 4, "data_type"), "float64"),
    "no data_type": ((*PROPS, 3, "data_type"), KeyError),
    "int8 overflow": ((*PROPS, 3, "values", 1), 128),
    "int8 fraction": ((*PROPS, 3, "values", 1), 1.5),
    "number as text": ((*PROPS, 3, "values", 1), "3"),
    "number as bool": ((*PROPS, 3, "values", 1), True),
    "float32 overflow": ((*PROPS, 4, "values", 1), 1e39),
    "nan": ((*PROPS, 4, "values", 1), float("nan")),
    "tag with #": ((*PROPS, 5, "tags", 0), "x#"),
    "tag with space": ((*PROPS, 5, "tags", 0), "x y"),
    "tags repeat ignoring case": ((*PROPS, 5, "tags", 0), "y"),
    "tags missing": ((*PROPS, 5, "tags"), KeyError),
    "tags description key": ((*PROPS, 5, "description"), "no"),
    "tag_descriptions length": ((*PROPS, 5, "tag_descriptions"), [""]),
    "tag index out of range": ((*PROPS, 5, "values", 1), [0, 2]),
    "tag indices unsorted": ((*PROPS, 5, "values", 1), [1, 0]),
    "tag indices repeated": ((*PROPS, 5, "values", 1), [0, 0]),
    "tag value not list": ((*PROPS, 5, "values", 1), 0),
}


def test_checker_accepts_a_valid_object():
    assert check_segment_properties(_valid_info()) == []


@pytest.mark.parametrize("case", list(BROKEN))
def test_checker_rejects(case):
    path, value = BROKEN[case]
    problems = check_segment_properties(_mutate(path, value))
    assert problems, case


# ---------------------------------------------------------------- automatic colours


def _dist(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def test_auto_color_is_deterministic_across_processes():
    ids = [0, 1, 2, 17, 53, 1000, 2 ** 32 + 5, 2 ** 63]
    here = [auto_color(i) for i in ids]
    assert here == [auto_color(i) for i in ids]
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in here)
    code = f"from ngconvert.properties.labels import auto_color; print([list(auto_color(i)) for i in {ids!r}])"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == [list(c) for c in here]


def test_auto_color_distinct_for_small_ids():
    colours = {i: auto_color(i) for i in range(1, 51)}
    assert len(set(colours.values())) == 50
    assert min(_dist(colours[a], colours[b]) for a, b in itertools.combinations(colours, 2)) > 10
    # neighbouring ids (the usual case: 17 next to 18) must be told apart at a glance
    assert min(_dist(colours[i], colours[i + 1]) for i in range(1, 50)) > 100


def test_auto_color_distinct_for_large_ids():
    base = 2 ** 60
    colours = [auto_color(base + k) for k in range(10)]
    hues = {round(colorsys.rgb_to_hsv(*(v / 255 for v in c))[0], 2) for c in colours}
    assert len(hues) > 5
    assert min(_dist(a, b) for a, b in zip(colours, colours[1:])) > 100


# ---------------------------------------------------------------- bad tables through the CLI


@pytest.fixture
def volume(tmp_path):
    a = np.zeros((8, 8, 4), np.uint32)
    a[:4] = 1
    a[4:, :4] = 2
    a[4:, 4:, :2] = 17
    a[4:, 4:, 2:] = 53
    path = tmp_path / "vol.npy"
    np.save(path, a)
    return path


def run_convert(vol, dest, *args):
    return subprocess.run([sys.executable, "-m", "ngconvert", "convert", str(vol), str(dest), "--workers", "1",
                           "--resolution", "1,1,1", *map(str, args)], capture_output=True, text=True)


def one_error_line(p) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("ngconvert: error: "), lines[0]
    return lines[0]


# file name, content, line the error must name (None: the file as a whole), words in the message
BAD_TABLES = {
    "non-integer id": ("nonint.csv", "id,name\n1,A\nx1,B\n", 3, "not a non-negative integer"),
    "fractional id": ("frac.csv", "id,name\n1,A\n2,B\n1.5,C\n", 4, "not a non-negative integer"),
    "negative id": ("neg.csv", "id,name\n1,A\n2,B\n-4,C\n", 4, "not a non-negative integer"),
    "id beyond 2^64": ("huge.csv", f"id,name\n{2 ** 64},A\n", 2, "not a non-negative integer"),
    "duplicate id": ("dup.csv", "id,name\n1,A\n2,B\n01,C\n", 4, "listed twice (first on line 2)"),
    "colour #ff00": ("c1.csv", "id,name,color\n1,A,#ff0000\n2,B,#ff00\n", 3, "#ff00"),
    "colour 300,0,0": ("c2.csv", 'id,name,color\n1,A,#ff0000\n2,B,"300,0,0"\n', 3, "0-255"),
    "colour red-ish": ("c3.csv", "id,name,color\n1,A,#ff0000\n2,B,red-ish\n", 3, "red-ish"),
    "colour column 256": ("c4.csv", "id,name,r,g,b\n1,A,1,2,3\n2,B,4,256,6\n", 3, "0-255"),
    "tsv colour": ("c5.tsv", "id\tname\tcolor\n1\tA\t1 2\n", 2, "colour"),
    "json syntax": ("syntax.json", '{\n  "1": "A",\n  "2": "B"\n  "3": "C"\n}\n', 4, "not valid JSON"),
    "json negative id": ("negj.json", '{\n  "1": "A",\n  "-2": "B"\n}\n', 3, "not a non-negative integer"),
    "json bad colour": ("colj.json", '{\n  "1": {"name": "A"},\n  "2": {"name": "B", "color": "#ff00"}\n}\n',
                        3, "#ff00"),
    "json list bad id": ("listj.json", '[\n  {"id": 1, "name": "A"},\n  {"id": "x", "name": "B"}\n]\n', 3,
                         "not a non-negative integer"),
    "no id column": ("noid.csv", "name,color\nA,#ff0000\n", 1, "no id column"),
    "headerless csv": ("nohead.csv", "1,A,#ff0000\n2,B,#00ff00\n", 1, "header"),
    "empty file": ("empty.csv", "", None, "no label rows"),
    "only comments": ("comments.txt", "# nothing\n\n# here\n", None, "no label rows"),
    "header only": ("header.csv", "id,name,color\n", None, "no labels"),
    "empty json": ("empty.json", "", 1, "not valid JSON"),
    "itk-snap malformed": ("bad.label", ITK_HEADER + '    0     0    0    0        0  0  0    "Clear Label"\n'
                           '    1   255    0    0        1  1      "Alpha"\n', 16, "IDX R G B A VIS MSH"),
    "itk-snap colour": ("badc.label", '    1   255    0    0        1  1  1    "Alpha"\n'
                        '    2   255  999    0        1  1  1    "Beta"\n', 2, "0-255"),
    "freesurfer short line": ("bad.lut", "#No. Label Name: R G B A\n0 Unknown 0 0 0 0\n17 Left-Hippocampus 220\n",
                              3, "expected 'id name R G B A'"),
    "slicer bad colour": ("bad.ctbl", "# Color table file x\n0 Background 0 0 0 0\n1 Alpha 255 x 0 255\n",
                          3, "not a number"),
    "unknown format": ("what.txt", "# notes\nhello world\n", 2, "cannot tell the label table format"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_table_is_one_line_with_file_and_line(tmp_path, volume, case):
    name, content, line, words = BAD_TABLES[case]
    table = tmp_path / name
    table.write_text(content)
    dest = tmp_path / "out"
    msg = one_error_line(run_convert(volume, dest, "--labels", table))
    if line is None:
        assert f"{table}: " in msg and not re.search(re.escape(name) + r":\d+:", msg), msg
    else:
        assert f"{table}:{line}: " in msg, msg
    assert words in msg, msg
    assert ";" in msg.split(f"{name}", 1)[1], msg         # "what; fix"
    assert not dest.exists()


def test_missing_table_is_one_line(tmp_path, volume):
    msg = one_error_line(run_convert(volume, tmp_path / "out", "--labels", tmp_path / "nope.csv"))
    assert "nope.csv" in msg and "no such label table" in msg
    assert not (tmp_path / "out").exists()


# library bugs in error line numbers (see the reasons)

def test_json_object_with_a_repeated_id_is_an_error(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{\n  "1": "A",\n  "2": "B",\n  "1": "C"\n}\n')
    with pytest.raises(UserError, match=r"dup\.json:4: .*twice"):
        read_labels(path)


def test_json_list_repeated_id_names_the_repeat_line(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('[\n  {"id": 1, "name": "A"},\n  {"id": 2, "name": "B"},\n  {"id": 1, "name": "C"}\n]\n')
    with pytest.raises(UserError, match=r"dup\.json:4: id 1 is listed twice \(first on line 2\)"):
        read_labels(path)


def test_no_id_column_names_the_header_line_after_comments(tmp_path):
    path = tmp_path / "noid.csv"
    path.write_text("# exported by X\n# version 2\nname,color\nA,#ff0000\n")
    with pytest.raises(UserError, match=r"noid\.csv:3: no id column"):
        read_labels(path)


def test_line_numbers_after_a_multiline_quoted_field(tmp_path):
    path = tmp_path / "ml.csv"
    path.write_text('id,name,description\n1,A,"two\nlines"\n2,B,x\n-3,C,y\n')
    with pytest.raises(UserError, match=r"ml\.csv:5: label id '-3'"):
        read_labels(path)


def test_csv_tag_with_a_space_becomes_one_underscored_tag(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,name,tags\n1,A,grey matter;deep\n")
    info, _ = segment_properties(read_labels(path), [1])
    assert _props(info)["tags"]["tags"] == ["grey_matter", "deep"]


# library bugs in the generated properties

def test_number_column_beyond_float32_is_valid(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("id,name,vol\n1,A,1e39\n2,B,2\n")
    info, _ = segment_properties(read_labels(path), [1, 2])
    assert check_segment_properties(info) == []


def test_json_nan_does_not_make_an_invalid_number_property(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"1": {"name": "A", "vol": NaN}, "2": {"name": "B", "vol": 1}}')
    info, _ = segment_properties(read_labels(path), [1, 2])
    assert check_segment_properties(info) == []


# ---------------------------------------------------------------- --only / --exclude


@pytest.fixture
def atlas_csv(tmp_path):
    path = tmp_path / "atlas.csv"
    path.write_text(csv_hex())
    return path


def test_only_and_exclude_by_name_through_the_cli(tmp_path, volume, atlas_csv):
    p = run_convert(volume, tmp_path / "a", "--labels", atlas_csv, "--only", "left-hippocampus,2")
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "a" / "segment_properties" / "info").read_text())
    assert check_segment_properties(info) == []
    assert info["inline"]["ids"] == ["2", "17"]
    p = run_convert(volume, tmp_path / "b", "--labels", atlas_csv, "--exclude", "ALPHA")
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "b" / "segment_properties" / "info").read_text())
    assert check_segment_properties(info) == []
    assert info["inline"]["ids"] == ["2", "17", "53"]
    colors = json.loads((tmp_path / "b" / "segment_colors.json").read_text())["colors"]
    assert colors["17"] == "#dcd814" and "1" not in colors


@pytest.mark.parametrize("option, item, hint", [
    ("--only", "hipocampus", "did you mean 'Left-Hippocampus', 'Right-Hippocampus'?"),
    ("--exclude", "alpah", "did you mean 'Alpha'?"),
    ("--only", "2,Gamma", "check the table's names"),
])
def test_unknown_name_suggests(tmp_path, volume, atlas_csv, option, item, hint):
    msg = one_error_line(run_convert(volume, tmp_path / "out", "--labels", atlas_csv, option, item))
    bad = item.split(",")[-1]
    assert f"{option} {bad!r}: no label of that name in {atlas_csv}" in msg, msg
    assert hint in msg, msg
    assert not (tmp_path / "out").exists()


def test_names_without_a_table_and_empty_selection(tmp_path, volume, atlas_csv):
    msg = one_error_line(run_convert(volume, tmp_path / "out", "--only", "Alpha"))
    assert "--only 'Alpha': names need a label table (--labels)" in msg
    msg = one_error_line(run_convert(volume, tmp_path / "out", "--labels", atlas_csv,
                                     "--only", "alpha", "--exclude", "1"))
    assert "nothing would be left" in msg
    assert not (tmp_path / "out").exists()


def test_extra_columns_through_the_cli(tmp_path, volume):
    table = tmp_path / "extra.csv"
    table.write_text(EXTRA_CSV)
    p = run_convert(volume, tmp_path / "out", "--labels", table)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "out" / "segment_properties" / "info").read_text())
    assert check_segment_properties(info) == []
    assert [x["type"] for x in info["inline"]["properties"]] == \
           ["label", "number", "number", "number", "number", "string", "tags"]
    assert json.loads((tmp_path / "out" / "info").read_text())["segment_properties"] == "segment_properties"
