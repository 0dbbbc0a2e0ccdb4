"""Upload, download and store-to-store copies: order, skip-existing, failures, and a round
trip through a real S3 server (moto, see s3server.py) read back by tensorstore's own s3
driver, which proves the Content-Encoding of the uploaded chunks is right."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import ngconvert
from conftest import label_volume, read_cloudvolume, smooth_volume
from ngconvert.core.errors import UserError
from ngconvert.store.retry import StorageUnavailable
from ngconvert.store.local import FileStore, MemoryStore
from ngconvert.store.base import StorageOptions
from ngconvert.store.open import open_store
from ngconvert.datasets.transfer import TransferResult, copy_dataset, download, upload
from s3server import FlakyProxy, every

pytest_plugins = ("s3server",)   # its fixtures, registered once for the whole session

FAST = dict(retry_base_delay=0.001, retry_max_delay=0.01)


class RecordingStore(MemoryStore):
    """A memory store that records puts and listings, and can fail on chosen keys."""

    def __init__(self, fail_on: set[str] = frozenset()):
        super().__init__()
        self.puts: list[str] = []
        self.listings = 0
        self.fail_on = set(fail_on)

    def put(self, key, data, content_encoding=None, content_type=None):
        if key in self.fail_on:
            raise UserError(f"cannot write {key}")
        if not key.startswith(".ngconvert"):      # the lock and run records are not the dataset
            self.puts.append(key)
        super().put(key, data, content_encoding, content_type)

    def list(self, prefix=""):
        if not prefix.startswith(".ngconvert"):   # listings of the scratch area are not of the dataset
            self.listings += 1
        return super().list(prefix)


class Bar:
    def __init__(self):
        self.total = None
        self.objects = self.bytes = 0

    def start(self, total_objects, total_bytes):
        self.total = (total_objects, total_bytes)

    def update(self, n=1, nbytes=0):
        self.objects += n
        self.bytes += nbytes


def small_dataset(keys=("a/1", "a/10", "a/100", "b/7")) -> MemoryStore:
    src = MemoryStore("memory://src")
    src.put("info", b'{"type": "image"}')
    for i, k in enumerate(keys):
        src.put(k, gzip.compress(bytes([i]) * 100), content_encoding="gzip")
    return src


# -- the copy itself (memory stores) ------------------------------------------------------

def test_copy_writes_info_last_and_keeps_encodings():
    src = small_dataset()
    src.put(".ngconvert/plan.json", b"{}")          # scratch of a conversion: never copied
    src.put("a/", b"")                              # a console's folder placeholder: neither
    dst = RecordingStore()
    bar = Bar()
    res = copy_dataset(src, dst, workers=3, progress=bar)
    assert dst.puts[-1] == "info" and sorted(dst.puts) == sorted(["a/1", "a/10", "a/100", "b/7", "info"])
    assert dst.objects == {k: v for k, v in src.objects.items()
                           if not k.startswith(".ngconvert") and not k.endswith("/")}
    sizes = sum(len(v[0]) for k, v in dst.objects.items())
    assert res == TransferResult("memory://src", "memory://", 5, sizes, 0, 0, res.seconds)
    assert bar.total == (5, sizes) and (bar.objects, bar.bytes) == (5, sizes)


def test_skip_existing_compares_exact_keys_from_one_listing():
    src = small_dataset()
    dst = RecordingStore()
    dst.put("a/10", b"already there")               # a/1 and a/100 must NOT be skipped for it
    dst.put("info", b"old")
    dst.puts.clear()
    res = copy_dataset(src, dst, skip_existing=True)
    assert dst.listings == 1
    assert dst.puts == ["a/1", "a/100", "b/7", "info"]
    assert (res.copied, res.skipped, res.skipped_bytes) == (4, 1, len(src.objects["a/10"][0]))
    assert dst.get("a/10") == b"already there" and dst.get("info") == b'{"type": "image"}'


def test_failed_copy_never_looks_complete():
    src = small_dataset()
    dst = RecordingStore(fail_on={"b/7"})
    with pytest.raises(UserError, match="cannot write b/7"):
        copy_dataset(src, dst, workers=2)
    assert not dst.exists("info")                   # info comes last: nothing looks complete
    dst.fail_on.clear()
    res = copy_dataset(src, dst, resume=True)
    assert dst.get("info") == b'{"type": "image"}' and res.skipped >= 1
    old = MemoryStore()
    old.put("info", b"an older complete dataset")
    with pytest.raises(UserError, match="--overwrite"):
        copy_dataset(src, old)                      # never replaced without asking
    assert old.get("info") == b"an older complete dataset"
    copy_dataset(src, old, overwrite=True)
    assert old.get("info") == b'{"type": "image"}' 


def test_copy_refuses_a_source_without_info(tmp_path):
    src = MemoryStore()
    src.put(".ngconvert/plan.json", b"{}")
    src.put("8_8_8/0-1_0-1_0-1", b"x")
    with pytest.raises(UserError, match="no 'info'"):
        copy_dataset(src, MemoryStore())
    with pytest.raises(UserError, match="not a folder"):
        upload(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(UserError, match="must be a local folder"):
        upload("s3://bkt/x", str(tmp_path))


def test_download_from_http_is_refused_clearly(tmp_path):
    from ngconvert.store.http import HTTPStore

    class Reachable(HTTPStore):
        def check_readable(self):
            pass

    with pytest.raises(UserError, match="plain HTTP cannot list"):
        copy_dataset(Reachable("http://127.0.0.1:1/x"), FileStore(tmp_path))


def test_local_to_local_round_trip_is_byte_identical(tmp_path):
    vol = smooth_volume((40, 30, 12), np.uint16)
    ngconvert.write_volume(vol, tmp_path / "a", resolution=(4, 4, 40), chunk_size=(16, 16, 8))
    res = copy_dataset(FileStore(tmp_path / "a"), FileStore(tmp_path / "b"))
    assert tree(tmp_path / "a") == tree(tmp_path / "b") and res.copied == len(tree(tmp_path / "a"))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- against a real S3 server ---------------------------------------------------------------

def read_tensorstore_s3(server, bucket_name: str, path: str, scale_index: int) -> np.ndarray:
    import tensorstore as ts

    spec = {"driver": "neuroglancer_precomputed", "scale_index": scale_index,
            "kvstore": {"driver": "s3", "bucket": bucket_name, "path": path + "/",
                        "endpoint": server.url, "aws_region": "us-east-1"}}
    return np.asarray(ts.open(spec, read=True).result().read().result())


@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_upload_then_tensorstore_reads_s3_voxel_for_voxel(tmp_path, moto_server, bucket, kind):
    if kind == "image":
        vol = smooth_volume((70, 45, 20), np.uint16)
        opts = dict(layer_type="image", encoding="raw")
    else:
        vol = label_volume((70, 45, 20), np.uint32)
        opts = dict(layer_type="segmentation", encoding="compressed_segmentation")
    local = tmp_path / "vol"
    ngconvert.write_volume(vol, local, resolution=(4, 4, 40), chunk_size=(32, 32, 8),
                           compress="gzip", **opts)
    files = tree(local)
    assert any(k.endswith(".gz") for k in files)

    bar = Bar()
    res = upload(local, f"s3://{bucket}/data/{kind}", StorageOptions(endpoint_url=moto_server.url),
                 progress=bar)
    assert res.copied == len(files) and res.copied_bytes == sum(map(len, files.values()))
    assert bar.objects == len(files)

    client = moto_server.client()
    info = json.loads(client.get_object(Bucket=bucket, Key=f"data/{kind}/info")["Body"].read())
    chunk = next(k[:-3] for k in files if k.endswith(".gz"))
    head = client.head_object(Bucket=bucket, Key=f"data/{kind}/{chunk}")
    assert head["ContentEncoding"] == "gzip" and head["ContentType"] == "application/octet-stream"
    assert client.get_object(Bucket=bucket, Key=f"data/{kind}/{chunk}")["Body"].read() == files[chunk + ".gz"]
    assert client.head_object(Bucket=bucket, Key=f"data/{kind}/info")["ContentType"] == "application/json"

    got = read_tensorstore_s3(moto_server, bucket, f"data/{kind}", 0)
    np.testing.assert_array_equal(got[..., 0], vol)
    assert len(info["scales"]) > 1
    for i in range(1, len(info["scales"])):
        np.testing.assert_array_equal(read_tensorstore_s3(moto_server, bucket, f"data/{kind}", i),
                                      read_cloudvolume(local, i))

    back = tmp_path / "back"
    res = download(f"s3://{bucket}/data/{kind}", back, StorageOptions(endpoint_url=moto_server.url))
    assert tree(back) == files and res.copied == len(files)


def test_skip_existing_upload_resumes_exactly(tmp_path, moto_server, bucket):
    local = tmp_path / "ds"
    store = FileStore(local)
    store.put("info", b'{"scales": []}')
    for k in ("a/1", "a/10", "a/100", "a/2"):
        store.put(k, gzip.compress(k.encode()), content_encoding="gzip")
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="up/a/10", Body=b"kept", ContentEncoding="gzip")
    opts = StorageOptions(endpoint_url=moto_server.url)
    dst = open_store(f"s3://{bucket}/up", opts)
    listings = []
    real_list = dst.list
    dst.list = lambda prefix="": (listings.append(prefix), real_list(prefix))[1]
    res = copy_dataset(FileStore(local), dst, skip_existing=True)
    assert listings == [""]
    assert (res.copied, res.skipped) == (4, 1)
    assert client.get_object(Bucket=bucket, Key="up/a/10")["Body"].read() == b"kept"
    for k in ("a/1", "a/100", "a/2"):
        obj = client.get_object(Bucket=bucket, Key=f"up/{k}")
        assert obj["ContentEncoding"] == "gzip" and gzip.decompress(obj["Body"].read()) == k.encode()
    res = upload(local, f"s3://{bucket}/up", opts, skip_existing=True)
    assert (res.copied, res.skipped) == (1, 4)        # only info again


def test_upload_through_a_throttling_server(tmp_path, moto_server, bucket):
    vol = label_volume((40, 40, 16), np.uint32)
    local = tmp_path / "seg"
    ngconvert.write_volume(vol, local, resolution=(8, 8, 8), layer_type="segmentation",
                           chunk_size=(16, 16, 16))
    with FlakyProxy(moto_server.port, every(3)) as proxy:
        res = upload(local, f"s3://{bucket}/seg", StorageOptions(endpoint_url=proxy.url, **FAST), workers=8)
        assert proxy.failed > 5
    assert res.copied == len(tree(local))
    np.testing.assert_array_equal(read_tensorstore_s3(moto_server, bucket, "seg", 0)[..., 0], vol)


def test_upload_that_keeps_failing_stops_with_one_line_and_no_info(tmp_path, moto_server, bucket):
    vol = smooth_volume((40, 40, 16), np.uint8)
    local = tmp_path / "img"
    ngconvert.write_volume(vol, local, resolution=(8, 8, 8), chunk_size=(16, 16, 16))
    # the probe, the lock and the look at the destination (about 12 requests) and the first
    # uploads get through, then the server fails for good
    with FlakyProxy(moto_server.port, lambda i: i > 18) as proxy:
        with pytest.raises(StorageUnavailable, match=r"PUT s3://.*/img/.* failed 3 times") as e:
            upload(local, f"s3://{bucket}/img",
                   StorageOptions(endpoint_url=proxy.url, retry_tries=3, **FAST), workers=2)
    assert "\n" not in str(e.value)
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and "img/info" not in keys


def test_convert_writes_straight_to_s3(tmp_path, moto_server, bucket, monkeypatch):
    """The converter itself on an S3 destination (endpoint from AWS_ENDPOINT_URL_S3),
    with worker processes, read back by tensorstore."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    vol = smooth_volume((50, 40, 18), np.uint16)
    ngconvert.write_volume(vol, f"s3://{bucket}/direct", resolution=(4, 4, 40),
                           chunk_size=(16, 16, 8), workers=2)
    keys = {k for k, _ in open_store(f"s3://{bucket}/direct").list()}
    assert "info" in keys and not any(k.startswith(".ngconvert") for k in keys)
    np.testing.assert_array_equal(read_tensorstore_s3(moto_server, bucket, "direct", 0)[..., 0], vol)
