"""gzip of chunks, fragments and shard data (deflate), shared by the store and the codecs."""
from __future__ import annotations

import deflate


def gzip_compress(data: bytes, level: int = 1) -> bytes:
    """A standard gzip member (RFC 1952), made with libdeflate."""
    return deflate.gzip_compress(data, level)


def gzip_decompress(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)
