"""Stores: options, content types, the file and memory stores' raw access, batched puts and
gets, and the retry policy."""
from __future__ import annotations

import gzip
import json
import threading
import time

import pytest

from ngconvert.errors import UserError
from ngconvert.retry import RetryPolicy
from ngconvert.store import (FileStore, MemoryStore, RawObject, StorageOptions, StoreItem,
                             content_type_for, parallel_map)

CHUNK = "8_8_40/0-64_0-64_0-16"
FAST = dict(retry_base_delay=0.001, retry_max_delay=0.01)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# -- options, URLs, local stores -------------------------------------------------------

def test_storage_options_json_round_trip_and_validation(tmp_path):
    o = StorageOptions(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", profile="lab",
                       max_in_flight=8, retry_tries=3)
    assert StorageOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    assert o.retry_policy() == RetryPolicy(3, 0.25, 20.0)
    with pytest.raises(UserError, match="unknown storage option"):
        StorageOptions.from_json({"endpoint": "http://x"})
    with pytest.raises(UserError, match="max_in_flight must be an integer"):
        StorageOptions.from_json({"max_in_flight": "8"})
    with pytest.raises(UserError, match="anonymous must be true or false"):
        StorageOptions.from_json({"anonymous": 1})
    assert StorageOptions.from_json({"timeout": 5}).timeout == 5
    with pytest.raises(UserError, match="http:// or https://"):
        StorageOptions(endpoint_url="127.0.0.1:9000")
    with pytest.raises(UserError, match="not both"):
        StorageOptions(profile="a", credentials_file=str(tmp_path / "c.json"))
    with pytest.raises(UserError, match="anonymous"):
        StorageOptions(anonymous=True, profile="a")
    with pytest.raises(UserError, match="max_in_flight"):
        StorageOptions(max_in_flight=0)
    with pytest.raises(UserError, match="tries"):
        StorageOptions(retry_tries=0)


def test_content_types():
    assert content_type_for("info") == "application/json"
    assert content_type_for("transform.json") == "application/json"
    assert content_type_for("segment_properties/info") == "application/json"
    assert content_type_for(CHUNK) == "application/octet-stream"
    assert content_type_for("information") == "application/octet-stream"


def test_file_store_raw_access(tmp_path):
    s = FileStore(tmp_path)
    packed = gzip.compress(b"chunk" * 50)
    s.put(CHUNK, packed, content_encoding="gzip")
    s.put("info", b"{}")
    assert (tmp_path / (CHUNK + ".gz")).read_bytes() == packed
    assert s.get_raw(CHUNK) == RawObject(packed, "gzip")
    assert s.get(CHUNK) == b"chunk" * 50
    assert s.get_raw("info") == (b"{}", None)
    assert s.get_raw("missing") is None
    assert sorted(k for k, _ in s.list()) == [CHUNK, "info"]
    s.put(CHUNK, b"plain")               # a key is stored in one form only
    assert not (tmp_path / (CHUNK + ".gz")).exists() and s.get_raw(CHUNK) == (b"plain", None)
    with pytest.raises(UserError, match="only gzip"):
        s.put("x", b"..", content_encoding="br")
    with pytest.raises(UserError, match="not a folder"):
        FileStore(tmp_path / "nowhere").check_readable()


def test_memory_store_raw_and_many():
    s = MemoryStore()
    items = [StoreItem(f"k/{i}", gzip.compress(bytes([i]) * 10), "gzip") for i in range(20)]
    assert s.put_many(items) == sum(len(i.data) for i in items)
    assert s.get_raw("k/3").content_encoding == "gzip"
    assert dict(s.get_many(["k/3", "k/4", "none"])) == {"k/3": b"\x03" * 10, "k/4": b"\x04" * 10,
                                                        "none": None}


def test_corrupt_gzip_is_one_line_error():
    s = MemoryStore()
    s.put("k", b"not gzip at all", content_encoding="gzip")
    with pytest.raises(UserError, match="not valid gzip") as e:
        s.get("k")
    one_line(e)


def test_parallel_map_bounds_and_errors():
    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        if i == 37:
            raise ValueError("boom")
        return i

    assert sorted(parallel_map(work, range(30), 4)) == list(range(30))
    assert 1 < peak[0] <= 4
    with pytest.raises(ValueError, match="boom"):
        list(parallel_map(work, range(100), 4))


def test_retry_policy_backoff_is_bounded_and_jittered():
    import random

    p = RetryPolicy(tries=8, base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    delays = [[p.delay(a, rng) for _ in range(200)] for a in range(8)]
    assert all(0 <= d <= min(4.0, 0.5 * 2 ** a) for a, ds in enumerate(delays) for d in ds)
    assert max(delays[6]) > 3.0 and len(set(delays[6])) > 100    # capped, and jittered
    assert p.for_probe().tries == 3
