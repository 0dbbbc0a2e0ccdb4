"""Chunk encodings of the precomputed format, and gzip.

Every encoder takes a chunk as an ``[x, y, z, c]`` array of the layer's data type and
returns the bytes the spec defines for it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import imagecodecs
import numpy as np

from ..core.errors import UserError
# compressed_segmentation, compresso: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation", "compresso")

# data types each encoding accepts, and the channel counts it allows
_ALLOWED = {
    "raw": (None, None),
    "jpeg": ({"uint8"}, {1, 3}),
    "png": ({"uint8", "uint16"}, {1, 2, 3, 4}),
    "compressed_segmentation": ({"uint32", "uint64"}, None),
    "compresso": ({"uint8", "uint16", "uint32", "uint64"}, {1}),
}


@dataclass(frozen=True)
class EncodingOptions:
    encoding: str = "raw"
    jpeg_quality: int = 85
    png_level: int = 6
    cseg_block_size: tuple[int, int, int] = (8, 8, 8)


def check_codec_options(gzip_level=None, jpeg_quality=None, png_level=None, block_size=None) -> None:
    """One-line :class:`~ngconvert.core.errors.UserError` for a codec parameter out of its range
    (``None``: not given); shared by every command that encodes chunks."""

    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if gzip_level is not None and not (whole(gzip_level) and 1 <= gzip_level <= 12):
        raise UserError(f"--gzip-level {gzip_level}: choose 1 (fastest) to 12 (smallest)")
    if jpeg_quality is not None and not (whole(jpeg_quality) and 0 <= jpeg_quality <= 100):
        raise UserError(f"--jpeg-quality {jpeg_quality}: choose 0 to 100")
    if png_level is not None and not (whole(png_level) and 0 <= png_level <= 9):
        raise UserError(f"--png-level {png_level}: choose 0 to 9")
    if block_size is not None and (len(block_size) != 3 or any(not whole(b) or b < 1 for b in block_size)):
        raise UserError(f"--block-size {','.join(map(str, block_size))}: give three positive sizes, e.g. 8,8,8")


def encoding_problem(encoding: str, dtype: str, channels: int) -> str | None:
    """Why ``encoding`` cannot store ``dtype`` x ``channels``, or None when it can."""
    if encoding not in _ALLOWED:
        return f"unknown encoding {encoding!r} (choose one of {', '.join(ENCODINGS)})"
    dtypes, chans = _ALLOWED[encoding]
    if dtypes is not None and dtype not in dtypes:
        return f"encoding {encoding} stores {'/'.join(sorted(dtypes))} data, not {dtype}"
    if chans is not None and channels not in chans:
        return f"encoding {encoding} stores {' or '.join(map(str, sorted(chans)))} channels, not {channels}"
    return None


def _as_image(chunk: np.ndarray) -> np.ndarray:
    """The spec's 2-D layout: width x, height y*z, one pixel per voxel."""
    x, y, z, c = chunk.shape
    img = np.ascontiguousarray(chunk.transpose(2, 1, 0, 3)).reshape(z * y, x, c)
    return img[:, :, 0] if c == 1 else img


def encode_raw(chunk: np.ndarray) -> bytes:
    return np.asarray(chunk, dtype=chunk.dtype.newbyteorder("<")).tobytes(order="F")


def encode_jpeg(chunk: np.ndarray, quality: int) -> bytes:
    img = _as_image(chunk)
    # no chroma subsampling: colour channels of scientific data keep full resolution
    extra = {"subsampling": "444"} if img.ndim == 3 else {}
    return bytes(imagecodecs.jpeg8_encode(img, level=int(quality), **extra))


def encode_png(chunk: np.ndarray, level: int) -> bytes:
    return bytes(imagecodecs.png_encode(_as_image(chunk), level=int(level)))


def encode_compressed_segmentation(chunk: np.ndarray, block_size) -> bytes:
    """compressed_segmentation with the multi-channel header written here.

    The kernel encodes one channel at a time (it always emits a one-channel header,
    the word ``1``, which is dropped); channel offsets are in 32-bit words from the
    start of the chunk.
    """
    import compressed_segmentation as cseg

    channels = chunk.shape[3]
    bodies = []
    for c in range(channels):
        one = np.asfortranarray(chunk[:, :, :, c])
        bodies.append(cseg.compress(one, block_size=tuple(block_size), order="F")[4:])
    offsets, pos = [], channels
    for body in bodies:
        offsets.append(pos)
        pos += len(body) // 4
    return struct.pack(f"<{channels}I", *offsets) + b"".join(bodies)


def encode_compresso(chunk: np.ndarray) -> bytes:
    """compresso (labels, one channel): the library's stream for the ``[x, y, z]`` chunk."""
    import compresso

    return bytes(compresso.compress(np.asfortranarray(chunk[:, :, :, 0])))


def encode_chunk(chunk: np.ndarray, opts: EncodingOptions) -> bytes:
    if opts.encoding == "raw":
        return encode_raw(chunk)
    if opts.encoding == "jpeg":
        return encode_jpeg(chunk, opts.jpeg_quality)
    if opts.encoding == "png":
        return encode_png(chunk, opts.png_level)
    if opts.encoding == "compressed_segmentation":
        return encode_compressed_segmentation(chunk, opts.cseg_block_size)
    if opts.encoding == "compresso":
        return encode_compresso(chunk)
    raise ValueError(f"unknown encoding {opts.encoding!r}")


def _from_image(img: np.ndarray, shape, channels: int) -> np.ndarray:
    x, y, z = shape
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    return np.asfortranarray(img.reshape(z, y, x, channels).transpose(2, 1, 0, 3))


def validate_cseg(words: np.ndarray, shape, block, width: int) -> None:
    """Check one channel of compressed_segmentation before the kernel reads it (the kernel
    trusts its input: a truncated or damaged chunk would make it read out of bounds).

    Per block: two header words (lookup table offset and bit width, values offset); the bit
    packed values must lie inside the channel, and so must every table entry they use."""
    n = len(words)
    grid = [-(-s // b) for s, b in zip(shape, block)]
    blocks = grid[0] * grid[1] * grid[2]
    if n < 2 * blocks:
        raise ValueError(f"compressed_segmentation channel has {n} words, fewer than its {2 * blocks} header words")
    head = words[: 2 * blocks].reshape(blocks, 2).astype(np.int64)
    table, bits, values = head[:, 0] & 0xFFFFFF, head[:, 0] >> 24, head[:, 1]
    if not np.isin(bits, (0, 1, 2, 4, 8, 16, 32)).all():
        raise ValueError("compressed_segmentation block header has an invalid bit width")
    per_block = int(np.prod(block))
    nwords = -(-per_block * bits // 32)
    if (values + nwords > n).any() or (table + width > n).any() or (values < 2 * blocks).any():
        raise ValueError("compressed_segmentation block data lies outside the chunk (truncated?)")
    for b in np.unique(bits):
        if b == 0:
            continue
        sel = np.flatnonzero(bits == b)
        w = -(-per_block * int(b) // 32)
        rows = words[values[sel, None] + np.arange(w)[None, :]]
        if b >= 8:
            idx = rows.view({8: "<u1", 16: "<u2", 32: "<u4"}[int(b)]).reshape(len(sel), -1)[:, :per_block]
        else:
            bitsarr = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little")
            groups = bitsarr[:, : per_block * int(b)].reshape(len(sel), per_block, int(b))
            idx = (groups * (1 << np.arange(int(b), dtype=np.uint32))).sum(axis=2)
        top = idx.max(axis=1).astype(np.int64)
        if (table[sel] + (top + 1) * width > n).any():
            raise ValueError("compressed_segmentation lookup table lies outside the chunk (truncated?)")


def decode_chunk(data: bytes, encoding: str, shape, dtype, channels: int = 1,
                 block_size=(8, 8, 8)) -> np.ndarray:
    """Bytes of one stored chunk (gzip already undone) -> ``[x, y, z, c]`` F-ordered array.

    Raises ``ValueError`` when the bytes do not decode to ``shape``."""
    dtype = np.dtype(dtype)
    x, y, z = (int(n) for n in shape)
    if encoding == "raw":
        need = x * y * z * channels * dtype.itemsize
        if len(data) != need:
            raise ValueError(f"raw chunk has {len(data)} bytes, {need} expected for {x}x{y}x{z}x{channels} {dtype}")
        arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape((x, y, z, channels), order="F")
        return np.asfortranarray(arr.astype(dtype, copy=False))
    if encoding in ("jpeg", "png"):
        if encoding == "jpeg" and not bytes(data[-2:]) == b"\xff\xd9":
            raise ValueError("JPEG data has no end-of-image marker (truncated)")
        img = imagecodecs.jpeg8_decode(data) if encoding == "jpeg" else imagecodecs.png_decode(data)
        if img.size != x * y * z * channels:
            raise ValueError(f"{encoding} chunk decodes to {img.shape}, not {x}x{y * z}x{channels}")
        return _from_image(img.astype(dtype, copy=False), shape, channels)
    if encoding == "compressed_segmentation":
        import compressed_segmentation as cseg

        words = np.frombuffer(data[: 4 * channels], dtype="<u4")
        if len(words) != channels:
            raise ValueError("compressed_segmentation chunk is shorter than its channel header")
        out = np.empty((x, y, z, channels), dtype=dtype, order="F")
        ends = list(words[1:]) + [len(data) // 4]
        if len(data) % 4:
            raise ValueError(f"compressed_segmentation chunk has {len(data)} bytes, not a whole number of words")
        for c in range(channels):
            if not channels <= int(words[c]) <= int(ends[c]) <= len(data) // 4:
                raise ValueError(f"compressed_segmentation channel {c} offset {int(words[c])} is out of range")
            body = b"\x01\x00\x00\x00" + data[4 * int(words[c]): 4 * int(ends[c])]
            validate_cseg(np.frombuffer(body, "<u4")[1:], (x, y, z), tuple(block_size), dtype.itemsize // 4)
            try:
                out[:, :, :, c] = cseg.decompress(body, (x, y, z), dtype, tuple(block_size), order="F")
            except Exception as e:      # the kernel reports bad data with several error types
                raise ValueError(f"compressed_segmentation chunk does not decode ({e})") from None
        return out
    if encoding == "compresso":
        import compresso

        try:
            arr = compresso.decompress(bytes(data))
        except Exception as e:      # the library raises its own types for damaged streams
            raise ValueError(f"compresso chunk does not decode ({e})") from None
        if arr.size != x * y * z:
            raise ValueError(f"compresso chunk decodes to {arr.shape}, not {x}x{y}x{z}")
        return np.asfortranarray(arr.reshape((x, y, z)).astype(dtype, copy=False)[..., None])
    raise ValueError(f"unknown encoding {encoding!r}")


DATA_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
