"""A built-in example: a synthetic head phantom and its label volume, as NIfTI files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserError
# nibabel: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

# label id -> (name, centre (fraction of the field), radii (fraction), intensity)
STRUCTURES = {
    1: ("skull", (0.5, 0.5, 0.5), (0.46, 0.40, 0.44), 60),
    2: ("brain", (0.5, 0.5, 0.5), (0.42, 0.36, 0.40), 140),
    3: ("left ventricle", (0.42, 0.52, 0.55), (0.05, 0.12, 0.08), 30),
    4: ("right ventricle", (0.58, 0.52, 0.55), (0.05, 0.12, 0.08), 30),
    5: ("left thalamus", (0.44, 0.48, 0.42), (0.06, 0.07, 0.06), 170),
    6: ("right thalamus", (0.56, 0.48, 0.42), (0.06, 0.07, 0.06), 170),
}
# the label table written beside the phantom: id, name, colour, description, a number and a tag
TABLE = [
    (1, "Skull", "#e3dcc2", "bone around the brain", 410.5, "no"),
    (2, "Brain", "#f5f5f5", "brain tissue outside the structures below", 1180.0, "yes"),
    (3, "Left-Lateral-Ventricle", "#781286", "", 9.6, "no"),
    (4, "Right-Lateral-Ventricle", "#781286", "", 9.6, "no"),
    (5, "Left-Thalamus", "#00760e", "relay of sensory and motor signals", 7.1, "yes"),
    (6, "Right-Thalamus", "#00760e", "relay of sensory and motor signals", 7.1, "yes"),
]
# file names of the per-structure masks (the assemble example): sides written the other way
MASK_NAMES = {1: "Skull", 2: "Brain", 3: "Lateral-Ventricle_L", 4: "Lateral-Ventricle_R",
              5: "Thalamus_L", 6: "Thalamus_R"}


def phantom(shape=(192, 224, 192), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with noise and the uint16 labels it was drawn from, indexed [x, y, z]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    labels = np.zeros(shape, dtype=np.uint16)
    image = np.zeros(shape, dtype=np.float32)
    for lab, (_name, c, r, value) in STRUCTURES.items():
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r)) < 1
        labels[inside] = lab
        image[inside] = value
    image += 12 * np.sin(grids[0] * 40) * np.cos(grids[1] * 30) * (labels == 2)   # "gyri"
    image += rng.normal(0, 3, shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels


EXAMPLE_FILES = ("phantom.nii.gz", "phantom_labels.nii.gz", "phantom_labels.csv", "structures",
                 "structures_origins.csv")


def write_example(folder, overwrite: bool = False) -> list[Path]:
    """Write ``phantom.nii.gz`` (1 mm, RAS, centred), ``phantom_labels.nii.gz``, its label
    table ``phantom_labels.csv``, and the same atlas as one cropped mask per structure in
    ``structures/`` with ``structures_origins.csv`` (the input of ``ngconvert assemble``).

    Files already there are never replaced without ``overwrite``: a folder that holds the
    example unchanged is left as it is; one with edited or other files is refused."""
    import nibabel as nib


    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder to write the example into")
    present = [n for n in EXAMPLE_FILES if (folder / n).exists()]
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXAMPLE_FILES + (".ngconvert-example",)) \
        if folder.is_dir() else []
    if others and not overwrite:
        raise UserError(f"{folder} is not empty (it holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); "
                        "choose a new or empty folder for the example")
    if present and not overwrite:
        if len(present) == len(EXAMPLE_FILES) and _unchanged(folder):
            return [folder / n for n in EXAMPLE_FILES]
        raise UserError(f"{folder} already holds {', '.join(present[:3])}{' ...' if len(present) > 3 else ''} "
                        "(edited or not the example); pass --overwrite to write the example again, or choose "
                        "another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ngconvert-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{folder}: cannot write the example there ({e.strerror or e}); choose another "
                        "folder") from None
    image, labels = phantom()
    affine = np.eye(4)
    affine[:3, 3] = [-(n - 1) / 2 for n in image.shape]
    paths = []
    for name, data in (("phantom.nii.gz", image), ("phantom_labels.nii.gz", labels)):
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        if "labels" in name:
            img.header.set_intent("label")
        nib.save(img, str(folder / name))
        paths.append(folder / name)
    table = folder / "phantom_labels.csv"
    table.write_text("id,name,color,description,volume_ml,cortical\n" + "".join(
        f"{i},{n},{c},{d},{v},{t}\n" for i, n, c, d, v, t in TABLE))
    paths.append(table)
    masks = folder / "structures"
    masks.mkdir(exist_ok=True)
    origins = ["name,x,y,z"]
    for label, name in MASK_NAMES.items():
        inside = labels == label
        lo = [int(np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != d))).min()) for d in range(3)]
        hi = [int(np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != d))).max()) + 1 for d in range(3)]
        np.save(masks / f"{name}.npy", inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.uint8))
        origins.append(f"{name},{lo[0]},{lo[1]},{lo[2]}")
    (folder / "structures_origins.csv").write_text("\n".join(origins) + "\n")
    paths += [masks, folder / "structures_origins.csv"]
    (folder / ".ngconvert-example").write_text(_digest(folder))
    return paths


def _digest(folder: Path) -> str:
    """A hash of the example's files as written (to tell an untouched example from an edited one)."""
    import hashlib

    h = hashlib.sha256()
    for name in EXAMPLE_FILES:
        p = folder / name
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.relative_to(folder).as_posix().encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _unchanged(folder: Path) -> bool:
    mark = folder / ".ngconvert-example"
    return mark.is_file() and mark.read_text().strip() == _digest(folder)
