"""Pure kernels: pooling, casting and chunk encodings."""
import struct

import numpy as np
import pytest

from ngconvert.codecs.chunks import EncodingOptions, encode_chunk, encoding_problem
from ngconvert.codecs.kernels import mean_from_sums, pool_sum, pool_values
from ngconvert.core.geometry import Box
from ngconvert.tasks.regions import cast


def test_pool_sum_exact_with_unaligned_start_and_edges():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 4, 3, 1)).astype(np.uint8)
    box = Box((3, 0, -1), (8, 4, 2))                   # odd start on x and z
    sums, out = pool_sum(np.asfortranarray(a), box, (2, 2, 2))
    assert out == Box((1, 0, -1), (4, 2, 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                xs = [x for x in (2 * (out.start[0] + i), 2 * (out.start[0] + i) + 1) if 3 <= x < 8]
                zs = [z for z in (2 * (out.start[2] + k), 2 * (out.start[2] + k) + 1) if -1 <= z < 2]
                ys = [2 * j, 2 * j + 1]
                want = sum(int(a[x - 3, y, z + 1, 0]) for x in xs for y in ys for z in zs)
                assert sums[i, j, k, 0] == want
    mean = mean_from_sums(sums, out, box, (2, 2, 2), np.uint8)
    assert mean.dtype == np.uint8


def test_accumulator_never_overflows_uint16_data():
    a = np.full((8, 8, 8, 1), 65535, np.uint16, order="F")
    box = Box((0, 0, 0), (8, 8, 8))
    s, b = pool_sum(a, box, (2, 2, 2))
    s, b = pool_sum(s, b, (2, 2, 2))
    s, b = pool_sum(s, b, (2, 2, 2))
    assert s[0, 0, 0, 0] == 65535 * 512
    assert mean_from_sums(s, b, box, (8, 8, 8), np.uint16)[0, 0, 0, 0] == 65535


@pytest.mark.parametrize("factor", [(2, 2, 2), (2, 2, 1), (1, 1, 2), (2, 1, 1), (3, 1, 1)])
def test_mode_picks_a_majority_and_never_invents(factor):
    rng = np.random.default_rng(1)
    a = np.asfortranarray(rng.choice(np.array([5, 9, 1000], np.uint32), size=(12, 12, 12, 1)))
    out, _ = pool_values(a, Box((0, 0, 0), (12, 12, 12)), factor, "mode")
    fx, fy, fz = factor
    blocks = a[:, :, :, 0].reshape(12 // fx, fx, 12 // fy, fy, 12 // fz, fz).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(out.shape[:3] + (-1,))
    assert (blocks == out[..., :1]).any(axis=-1).all()
    for idx in np.ndindex(out.shape[:3]):
        vals, counts = np.unique(blocks[idx], return_counts=True)
        if counts.max() * 2 > blocks[idx].size:
            assert out[idx + (0,)] == vals[counts.argmax()]


def test_cast_rounds_and_clips():
    assert cast(np.array([-5, 3, 2**40], np.int64), np.dtype(np.uint32)).tolist() == [0, 3, 2**32 - 1]
    assert cast(np.array([np.nan, -3.6, 1e12], np.float32), np.dtype(np.int16)).tolist() == [0, -4, 32767]


def test_compressed_segmentation_multichannel_header():
    rng = np.random.default_rng(2)
    chunk = np.asfortranarray(rng.integers(0, 4, (8, 8, 8, 2)).astype(np.uint32))
    data = encode_chunk(chunk, EncodingOptions("compressed_segmentation"))
    off0, off1 = struct.unpack("<2I", data[:8])
    assert off0 == 2 and 2 < off1 < len(data) // 4


def test_jpeg_geometry_is_x_by_y_times_z():
    import imagecodecs

    chunk = np.asfortranarray(np.arange(36 * 26 * 6, dtype=np.uint32).reshape(36, 26, 6, 1) % 251).astype(np.uint8)
    img = imagecodecs.jpeg8_decode(encode_chunk(chunk, EncodingOptions("jpeg", jpeg_quality=100)))
    assert img.shape[:2] == (26 * 6, 36)


def test_encoding_rules():
    assert encoding_problem("jpeg", "uint16", 1)
    assert encoding_problem("jpeg", "uint8", 2)
    assert encoding_problem("png", "uint16", 4) is None
    assert encoding_problem("compressed_segmentation", "uint8", 1)
    assert encoding_problem("raw", "float32", 7) is None


def test_pool_sum_and_means_across_many_z_slabs(monkeypatch):
    import ngconvert.codecs.kernels as ds

    rng = np.random.default_rng(3)
    a = np.asfortranarray(rng.integers(0, 65535, (13, 11, 29, 2)).astype(np.uint16))
    box = Box((1, -3, 5), (14, 8, 34))                 # unaligned on every axis
    whole_sums, out = pool_sum(a, box, (2, 2, 2))
    whole_mean = mean_from_sums(whole_sums, out, box, (2, 2, 2), np.uint16)
    monkeypatch.setattr(ds, "SLAB_BYTES", 1)            # one output plane per slab
    sums, out2 = pool_sum(a, box, (2, 2, 2))
    assert out2 == out
    np.testing.assert_array_equal(sums, whole_sums)
    np.testing.assert_array_equal(mean_from_sums(sums, out, box, (2, 2, 2), np.uint16), whole_mean)
    # and against a direct computation
    pad = np.zeros((14, 12, 30, 2), np.int64)
    pad[1:, 1:, 1:, :] = a
    ref = pad.reshape(7, 2, 6, 2, 15, 2, 2).sum(axis=(1, 3, 5))
    np.testing.assert_array_equal(sums, ref)
