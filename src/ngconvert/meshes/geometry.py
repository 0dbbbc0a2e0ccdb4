"""Small pure functions on triangle meshes (vertices ``[n, 3]`` float, faces ``[m, 3]`` int).

Welding duplicate vertices, cutting along axis-aligned planes so that pieces share their
cut vertices exactly, assigning faces to grid cells, transforms and winding.
"""
from __future__ import annotations

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]


def empty_mesh() -> Mesh:
    return np.zeros((0, 3), np.float64), np.zeros((0, 3), np.uint32)


def concat(meshes) -> Mesh:
    vs, fs, n = [], [], 0
    for v, f in meshes:
        vs.append(np.asarray(v, np.float64))
        fs.append(np.asarray(f, np.int64) + n)
        n += len(v)
    if not vs:
        return empty_mesh()
    return np.concatenate(vs), np.concatenate(fs)


def weld(v: np.ndarray, f: np.ndarray, decimals: int = 6) -> Mesh:
    """Merge vertices at the same position (after rounding to ``decimals``), drop unused
    vertices and faces that collapse to a line or point."""
    if len(v) == 0:
        return empty_mesh()
    key = np.round(np.asarray(v, np.float64), decimals)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    f = inverse[np.asarray(f, np.int64)]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    return compact(uniq, f[keep])


def compact(v: np.ndarray, f: np.ndarray) -> Mesh:
    """Keep only the vertices the faces use, renumbered in order of first use."""
    f = np.asarray(f, np.int64)
    if len(f) == 0:
        return np.zeros((0, 3), v.dtype), np.zeros((0, 3), np.int64)
    used, inverse = np.unique(f.reshape(-1), return_inverse=True)
    return v[used], inverse.reshape(-1, 3)


def split_by_plane(v: np.ndarray, f: np.ndarray, axis: int, t: float) -> tuple[Mesh, Mesh]:
    """Cut along the plane ``x[axis] == t``: (part with x <= t, part with x >= t).

    Triangles crossing the plane are split; a cut point is computed once per edge, so the
    two parts share identical vertices along the cut (they weld without gaps).  Winding
    is preserved.  Returned parts index into a common vertex array (not compacted).
    """
    v = np.asarray(v, np.float64)
    f = np.asarray(f, np.int64)
    d = v[:, axis] - t
    s = np.sign(d).astype(np.int8)
    sf = s[f]
    lo = (sf <= 0).all(axis=1)
    hi = (sf >= 0).all(axis=1) & ~lo
    cross = ~(lo | hi)
    if not cross.any():
        return (v, f[lo]), (v, f[hi])
    fc, sc = f[cross], sf[cross]
    n = len(fc)
    zero = (sc == 0).any(axis=1)
    # rotate each face so that vertex 0 is the lone one: the vertex on the plane (case B), or
    # the vertex alone on its side (case A); rotations keep the winding
    total = sc.sum(axis=1)
    lone = np.where(zero, np.argmin(np.abs(sc), axis=1),
                    np.where(total > 0, np.argmin(sc, axis=1), np.argmax(sc, axis=1)))
    order = (lone[:, None] + np.arange(3)[None, :]) % 3
    rows = np.arange(n)[:, None]
    fr, sr = fc[rows, order], sc[rows, order]
    a, b, c = fr[:, 0], fr[:, 1], fr[:, 2]

    # cut points, one per crossed edge (keyed by the sorted vertex pair)
    edges = np.concatenate([np.stack([a, b], 1)[~zero], np.stack([c, a], 1)[~zero], np.stack([b, c], 1)[zero]])
    key = np.sort(edges, axis=1)
    ukey, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    p, q = v[ukey[:, 0]], v[ukey[:, 1]]
    w = (t - p[:, axis]) / (q[:, axis] - p[:, axis])
    pts = p + w[:, None] * (q - p)
    pts[:, axis] = t
    base = len(v)
    vnew = np.concatenate([v, pts])
    na = int((~zero).sum())
    p_ab = base + inv[:na]
    p_ca = base + inv[na:2 * na]
    p_bc = base + inv[2 * na:]

    lo_parts, hi_parts = [f[lo]], [f[hi]]
    # case A: a alone on its side: (a, p_ab, p_ca) there; (p_ab, b, c), (p_ab, c, p_ca) on the other side
    A = ~zero
    aA, bA, cA = a[A], b[A], c[A]
    tri_a = np.stack([aA, p_ab, p_ca], 1)
    quad1 = np.stack([p_ab, bA, cA], 1)
    quad2 = np.stack([p_ab, cA, p_ca], 1)
    a_low = sr[A, 0] < 0
    lo_parts += [tri_a[a_low], quad1[~a_low], quad2[~a_low]]
    hi_parts += [tri_a[~a_low], quad1[a_low], quad2[a_low]]
    # case B: a on the plane, b and c on opposite sides: (a, b, p_bc) with b, (a, p_bc, c) with c
    B = zero
    aB, bB, cB = a[B], b[B], c[B]
    t1 = np.stack([aB, bB, p_bc], 1)
    t2 = np.stack([aB, p_bc, cB], 1)
    b_low = sr[B, 1] < 0
    lo_parts += [t1[b_low], t2[~b_low]]
    hi_parts += [t1[~b_low], t2[b_low]]
    return (vnew, np.concatenate(lo_parts)), (vnew, np.concatenate(hi_parts))


def cut_into_cells(v: np.ndarray, f: np.ndarray, origin, cell) -> dict[tuple[int, int, int], Mesh]:
    """Cut a mesh along every plane of the grid ``origin + k * cell`` that it crosses and
    return the pieces by cell index (each piece compacted; no triangle crosses a plane)."""
    v = np.asarray(v, np.float64)
    f = np.asarray(f, np.int64)
    if len(f) == 0:
        return {}
    origin = np.asarray(origin, np.float64)
    cell = np.asarray(cell, np.float64)
    for axis in range(3):
        lo_k = int(np.floor((v[:, axis].min() - origin[axis]) / cell[axis])) + 1
        hi_k = int(np.ceil((v[:, axis].max() - origin[axis]) / cell[axis])) - 1
        for k in range(lo_k, hi_k + 1):
            (v, f_lo), (_v, f_hi) = split_by_plane(v, f, axis, origin[axis] + k * cell[axis])
            f = np.concatenate([f_lo, f_hi])
    centroid = v[f].mean(axis=1)
    idx = np.floor((centroid - origin) / cell).astype(np.int64)
    out = {}
    order = np.lexsort(idx.T[::-1])
    idx, f = idx[order], f[order]
    if len(idx) == 0:
        return out
    change = np.flatnonzero(np.any(np.diff(idx, axis=0) != 0, axis=1)) + 1
    for start, stop in zip(np.r_[0, change], np.r_[change, len(idx)]):
        out[tuple(int(x) for x in idx[start])] = compact(v, f[start:stop])
    return out


def transform(v: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 (or 3x4) affine to points."""
    m = np.asarray(matrix, np.float64)
    return np.asarray(v, np.float64) @ m[:3, :3].T + m[:3, 3]


def mirrors(matrix) -> bool:
    """True when the affine flips handedness (then triangle winding must be reversed)."""
    return bool(np.linalg.det(np.asarray(matrix, np.float64)[:3, :3]) < 0)


def flip_winding(f: np.ndarray) -> np.ndarray:
    return np.asarray(f)[:, [0, 2, 1]]


def boundary_edge_count(v: np.ndarray, f: np.ndarray) -> int:
    """Edges used by exactly one triangle after welding (0 for a closed surface)."""
    v, f = weld(v, f)
    if len(f) == 0:
        return 0
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _u, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts == 1).sum())
