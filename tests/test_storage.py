"""Stores: options and URLs, the file store's raw access, and the network stores against
real servers on 127.0.0.1: S3 (moto's standalone server, see s3server.py), GCS
(gcp-storage-emulator) and plain HTTP (http.server)."""
from __future__ import annotations

import gzip
import io
import json
import multiprocessing as mp
import pickle
import threading
import time
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ngconvert.core.errors import UserError
from ngconvert.store.retry import RetryPolicy, StorageUnavailable
from ngconvert.store.local import FileStore, MemoryStore
from ngconvert.store.base import RawObject, StorageOptions, StoreItem, content_type_for, parallel_map
from ngconvert.store.open import open_store
from s3server import FlakyProxy, MotoServer, always, closed_port, every, first

pytest_plugins = ("s3server",)   # its fixtures, registered once for the whole session

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


def test_open_store_picks_the_store_for_each_url(tmp_path, s3_env):
    from ngconvert.store.gcs import GCSStore
    from ngconvert.store.http import HTTPStore
    from ngconvert.store.s3 import S3Store

    assert isinstance(open_store(tmp_path / "a"), FileStore)
    f = open_store(f"file://{tmp_path}/b")
    assert isinstance(f, FileStore) and f.root == tmp_path / "b"
    s = open_store("s3://my-bucket/some/prefix/", StorageOptions(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(s, S3Store) and (s.bucket, s.prefix, s.url) == ("my-bucket", "some/prefix",
                                                                     "s3://my-bucket/some/prefix")
    assert open_store("s3://my-bucket").prefix == ""
    g = open_store("gs://gbucket/x/y", StorageOptions(anonymous=True))
    assert isinstance(g, GCSStore) and (g.bucket, g.prefix) == ("gbucket", "x/y")
    h = open_store("https://example.org/data/vol/")
    assert isinstance(h, HTTPStore) and h.url == "https://example.org/data/vol"
    mem = MemoryStore()
    assert open_store(mem) is mem
    for url, match in [("ftp://x/y", "not supported"), ("s3:///path", "no bucket"),
                       ("gs://", "no bucket")]:
        with pytest.raises(UserError, match=match):
            open_store(url)
    with pytest.raises(UserError, match="endpoint-url"):
        open_store(tmp_path / "c", StorageOptions(endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(UserError, match="profile"):
        open_store("gs://b/p", StorageOptions(profile="lab"))
    with pytest.raises(UserError, match="region"):
        open_store("http://127.0.0.1:1/x", StorageOptions(region="us-east-1"))


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


# -- S3 against a real server (moto) ----------------------------------------------------

def s3_store(server: MotoServer, bucket_name: str, prefix: str = "data/vol", **kw):
    return open_store(f"s3://{bucket_name}/{prefix}", StorageOptions(endpoint_url=server.url, **kw))


def test_s3_put_get_list_delete_and_metadata(moto_server, bucket):
    s = s3_store(moto_server, bucket)
    s.check_writable()
    s.check_readable()
    assert s.is_empty()
    packed = gzip.compress(b"\x01\x02" * 500)
    info = b'{"type": "image"}'
    s.put("info", info)
    s.put(CHUNK, packed, content_encoding="gzip")
    s.put("8_8_40/64-128_0-64_0-16", b"plain chunk")

    client = moto_server.client()
    head = client.head_object(Bucket=bucket, Key=f"data/vol/{CHUNK}")
    assert head["ContentEncoding"] == "gzip"
    assert head["ContentType"] == "application/octet-stream"
    assert head["ContentLength"] == len(packed)
    assert client.get_object(Bucket=bucket, Key=f"data/vol/{CHUNK}")["Body"].read() == packed
    head = client.head_object(Bucket=bucket, Key="data/vol/info")
    assert head["ContentType"] == "application/json" and "ContentEncoding" not in head
    head = client.head_object(Bucket=bucket, Key="data/vol/8_8_40/64-128_0-64_0-16")
    assert "ContentEncoding" not in head

    assert s.get("info") == info
    assert s.get(CHUNK) == b"\x01\x02" * 500
    assert s.get_raw(CHUNK) == RawObject(packed, "gzip")
    assert s.get_raw("8_8_40/64-128_0-64_0-16") == (b"plain chunk", None)
    assert s.get("missing") is None and s.get_raw("missing") is None
    assert s.exists("info") and not s.exists("missing")
    assert dict(s.list()) == {"info": len(info), CHUNK: len(packed),
                              "8_8_40/64-128_0-64_0-16": 11}
    assert [k for k, _ in s.list("8_8_40/")] == [CHUNK, "8_8_40/64-128_0-64_0-16"]
    assert not s.is_empty()

    s.delete(CHUNK)
    s.delete(CHUNK)                   # deleting an absent key is not an error
    assert not s.exists(CHUNK)
    s.delete_prefix("8_8_40/")
    assert [k for k, _ in s.list()] == ["info"]
    s.clear()
    assert s.is_empty()


def test_s3_explicit_content_type_and_json_keys(moto_server, bucket):
    s = s3_store(moto_server, bucket, prefix="")
    s.put("transform.json", b"{}")
    s.put("blob", b"x", content_type="text/plain")
    client = moto_server.client()
    assert client.head_object(Bucket=bucket, Key="transform.json")["ContentType"] == "application/json"
    assert client.head_object(Bucket=bucket, Key="blob")["ContentType"] == "text/plain"
    assert dict(s.list()) == {"transform.json": 2, "blob": 1}


def test_s3_prefix_is_a_folder_not_a_string_prefix(moto_server, bucket):
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="data/vol2/info", Body=b"other dataset")
    client.put_object(Bucket=bucket, Key="data/volume", Body=b"a file beside")
    s = s3_store(moto_server, bucket)
    assert s.is_empty()
    s.put("info", b"{}")
    s.clear()
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]) == \
        ["data/vol2/info", "data/volume"]


def test_s3_listing_and_deleting_more_than_one_page(moto_server, bucket):
    s = s3_store(moto_server, bucket, max_in_flight=16)
    n = 1234
    s.put_many(StoreItem(f"c/{i}", b"x") for i in range(n))
    assert sorted(k for k, _ in s.list("c/")) == sorted(f"c/{i}" for i in range(n))
    got = dict(s.get_many([f"c/{i}" for i in range(0, n, 100)] + ["c/none"]))
    assert got["c/none"] is None and got["c/1200"] == b"x" and len(got) == 14
    s.delete_prefix("c/")
    assert s.is_empty()


def test_s3_store_survives_pickle_and_fork(moto_server, bucket):
    s = s3_store(moto_server, bucket)
    s.put("a", b"1")                    # the parent has a client now
    clone = pickle.loads(pickle.dumps(s))
    assert clone.get("a") == b"1"
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(partial(_put_in_worker, s), range(4))
    assert sorted(k for k, _ in s.list("w/")) == [f"w/{i}" for i in range(4)]


def _put_in_worker(store, i):
    store.put(f"w/{i}", str(i).encode())


def test_s3_missing_bucket_is_one_line(moto_server):
    s = s3_store(moto_server, "no-such-bucket-here")
    for check in (s.check_writable, s.check_readable, lambda: s.get("info"),
                  lambda: s.put("info", b"{}"), lambda: list(s.list())):
        with pytest.raises(UserError, match="bucket 'no-such-bucket-here' does not exist") as e:
            check()
        assert moto_server.url in one_line(e)


def test_s3_unreachable_endpoint_fails_fast_with_one_line(s3_env):
    port = closed_port()
    s = open_store("s3://bkt/x", StorageOptions(endpoint_url=f"http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    for check in (s.check_writable, s.check_readable):
        with pytest.raises(StorageUnavailable, match=f"cannot reach http://127.0.0.1:{port}") as e:
            check()
        assert "--endpoint-url" in one_line(e)
    assert time.monotonic() - t0 < 10
    with pytest.raises(StorageUnavailable, match="after 2 tries"):
        open_store("s3://bkt/x", StorageOptions(endpoint_url=f"http://127.0.0.1:{port}",
                                                retry_tries=2, **FAST)).get("info")


# -- credentials: a second moto server that checks them --------------------------------

@pytest.fixture(scope="module")
def auth_server(s3_env):
    """A moto server that authenticates every request after the first five (used to make
    two users and their keys): one allowed everything on S3, one allowed nothing."""
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"}).start()
    import boto3

    iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1")
    iam.create_user(UserName="writer")
    iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    writer = iam.create_access_key(UserName="writer")["AccessKey"]
    iam.create_user(UserName="nobody")
    powerless = iam.create_access_key(UserName="nobody")["AccessKey"]
    server.client(aws_access_key_id=writer["AccessKeyId"],
                  aws_secret_access_key=writer["SecretAccessKey"]).create_bucket(Bucket="locked")
    yield server, writer, powerless
    server.stop()


def creds_file(tmp_path, key, secret, **extra) -> str:
    path = tmp_path / f"creds-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"access_key": key, "secret_key": secret, **extra}))
    return str(path)


def test_s3_credentials_file_is_used(auth_server, tmp_path):
    server, writer, _ = auth_server
    path = creds_file(tmp_path, writer["AccessKeyId"], writer["SecretAccessKey"], region="us-east-1")
    s = open_store("s3://locked/p", StorageOptions(endpoint_url=server.url, credentials_file=path))
    s.check_writable()
    s.put("info", b"{}")
    assert s.get("info") == b"{}"


def test_s3_wrong_credentials_are_one_line(auth_server, tmp_path):
    server, writer, powerless = auth_server
    cases = [(creds_file(tmp_path, "AKIANOSUCHKEY0000000", "x"), "rejected the credentials file"),
             (creds_file(tmp_path, writer["AccessKeyId"], "wrong-secret"), "SignatureDoesNotMatch"),
             (creds_file(tmp_path, powerless["AccessKeyId"], powerless["SecretAccessKey"]),
              "access denied")]
    for path, match in cases:
        s = open_store("s3://locked/p", StorageOptions(endpoint_url=server.url, credentials_file=path))
        with pytest.raises(UserError, match=match) as e:
            s.check_writable()
        one_line(e)
        with pytest.raises(UserError, match=match):
            s.put("info", b"{}")
    # the environment's dummy keys are unknown to this server
    with pytest.raises(UserError, match="rejected the credentials from the environment") as e:
        open_store("s3://locked/p", StorageOptions(endpoint_url=server.url)).check_readable()
    assert "AWS_ACCESS_KEY_ID" in one_line(e)


def test_s3_profile_is_used(auth_server, tmp_path, monkeypatch):
    server, writer, _ = auth_server
    config = tmp_path / "credentials"
    config.write_text(f"[lab]\naws_access_key_id = {writer['AccessKeyId']}\n"
                      f"aws_secret_access_key = {writer['SecretAccessKey']}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config))
    s = open_store("s3://locked/q", StorageOptions(endpoint_url=server.url, profile="lab"))
    s.check_writable()
    with pytest.raises(UserError, match="AWS profile 'nope' is not in") as e:
        open_store("s3://locked/q", StorageOptions(endpoint_url=server.url, profile="nope"))
    one_line(e)


def test_bad_credentials_files_are_one_line(tmp_path, s3_env):
    bad = {"missing.json": None, "notjson.json": "{", "list.json": "[]",
           "nokey.json": json.dumps({"secret_key": "s"}),
           "typo.json": json.dumps({"access_key": "a", "secret_key": "s", "regoin": "x"})}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as e:
            open_store("s3://b/p", StorageOptions(credentials_file=str(tmp_path / name)))
        assert name in one_line(e)


# -- retries through a misbehaving proxy --------------------------------------------------

def test_s3_transient_503_is_retried_then_succeeds(moto_server, bucket):
    with FlakyProxy(moto_server.port, first(5)) as proxy:
        s = s3_store(proxy, bucket, **FAST)
        s.put(CHUNK, gzip.compress(b"abc"), content_encoding="gzip")
        assert proxy.seen == 6 and proxy.failed == 5
        assert s.get(CHUNK) == b"abc"
    assert s3_store(moto_server, bucket).get(CHUNK) == b"abc"


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (429, "TooManyRequests"),
                                         (0, "connection reset")])
def test_s3_other_transient_failures_are_retried(moto_server, bucket, status, code):
    with FlakyProxy(moto_server.port, every(2), status=status, code=code) as proxy:
        s = s3_store(proxy, bucket, **FAST)
        s.put_many(StoreItem(f"k/{i}", bytes([i])) for i in range(10))
        assert dict(s.get_many([f"k/{i}" for i in range(10)])) == {f"k/{i}": bytes([i]) for i in range(10)}
        assert sorted(k for k, _ in s.list("k/")) == sorted(f"k/{i}" for i in range(10))
        assert proxy.failed > 10


def test_s3_permanent_failure_gives_up_after_bounded_tries(moto_server, bucket):
    with FlakyProxy(moto_server.port, always) as proxy:
        s = s3_store(proxy, bucket, retry_tries=5, **FAST)
        with pytest.raises(StorageUnavailable) as e:
            s.put(CHUNK, b"x")
        msg = one_line(e)
        assert f"PUT s3://{bucket}/data/vol/{CHUNK} failed 5 times" in msg
        assert "503 SlowDown" in msg
        assert proxy.seen == 5
        with pytest.raises(StorageUnavailable, match="GET .*info failed 5 times"):
            s.get("info")


def test_s3_client_errors_are_not_retried(moto_server, bucket):
    with FlakyProxy(moto_server.port, always, status=400, code="InvalidArgument",
                    message="bad request") as proxy:
        s = s3_store(proxy, bucket, **FAST)
        with pytest.raises(UserError, match="400 InvalidArgument") as e:
            s.put("k", b"x")
        assert not isinstance(e.value, StorageUnavailable) and proxy.seen == 1


def test_s3_endpoint_from_environment(moto_server, bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    s = open_store(f"s3://{bucket}/env")
    s.put("info", b"{}")
    assert moto_server.client().get_object(Bucket=bucket, Key="env/info")["Body"].read() == b"{}"


# -- GCS against gcp-storage-emulator ----------------------------------------------------

@pytest.fixture(scope="module")
def gcs_server():
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    from s3server import free_port

    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_server})
    name = f"g-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return client.bucket(name)


def test_gcs_put_get_list_delete_and_metadata(gcs_server, gcs_bucket):
    opts = StorageOptions(endpoint_url=gcs_server, anonymous=True)
    s = open_store(f"gs://{gcs_bucket.name}/data/vol", opts)
    s.check_writable()
    s.check_readable()
    assert s.is_empty()
    packed = gzip.compress(b"\x05" * 1000)
    s.put("info", b'{"a": 1}')
    s.put(CHUNK, packed, content_encoding="gzip")
    blob = gcs_bucket.get_blob(f"data/vol/{CHUNK}")
    assert (blob.content_encoding, blob.content_type) == ("gzip", "application/octet-stream")
    blob = gcs_bucket.get_blob("data/vol/info")
    assert (blob.content_encoding, blob.content_type) == (None, "application/json")
    assert s.get_raw(CHUNK) == RawObject(packed, "gzip")
    assert s.get(CHUNK) == b"\x05" * 1000 and s.get("info") == b'{"a": 1}'
    assert s.get("missing") is None and s.exists("info") and not s.exists("missing")
    assert dict(s.list()) == {"info": 8, CHUNK: len(packed)}
    s.put_many(StoreItem(f"c/{i}", b"z") for i in range(30))
    assert len(dict(s.get_many(f"c/{i}" for i in range(30)))) == 30
    s.delete(CHUNK)
    s.delete(CHUNK)
    s.delete_prefix("c/")
    assert [k for k, _ in s.list()] == ["info"]
    s.clear()
    assert s.is_empty()


def test_gcs_missing_bucket_and_unreachable_endpoint(gcs_server):
    s = open_store("gs://no-such-gcs-bucket/x", StorageOptions(endpoint_url=gcs_server, anonymous=True))
    for check in (s.check_writable, s.check_readable):
        with pytest.raises(UserError, match="bucket 'no-such-gcs-bucket' does not exist") as e:
            check()
        one_line(e)
    port = closed_port()
    s = open_store("gs://b/x", StorageOptions(endpoint_url=f"http://127.0.0.1:{port}", anonymous=True))
    with pytest.raises(StorageUnavailable, match=f"cannot reach http://127.0.0.1:{port}") as e:
        s.check_writable()
    one_line(e)


def test_gcs_bad_key_file_is_one_line(tmp_path):
    (tmp_path / "key.json").write_text("{}")
    with pytest.raises(UserError, match="service-account key file") as e:
        open_store("gs://b/x", StorageOptions(credentials_file=str(tmp_path / "key.json")))
    one_line(e)


# -- HTTP against http.server -------------------------------------------------------------

class GzipStaticHandler(SimpleHTTPRequestHandler):
    """Serves ``KEY`` from ``KEY.gz`` with ``Content-Encoding: gzip`` (nginx gzip_static);
    the first ``fail`` requests of the server get a 503."""

    def log_message(self, *args):
        pass

    def send_head(self):
        self.server.requests += 1
        if self.server.requests <= self.server.fail:
            self.send_error(503, "busy")
            return None
        path = Path(self.translate_path(self.path))
        gz = path.with_name(path.name + ".gz")
        if not path.is_file() and gz.is_file():
            data = gz.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return io.BytesIO(data)
        return super().send_head()


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(GzipStaticHandler, directory=str(root)))
    server.requests, server.fail = 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, root
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_store_reads_gzip_and_404(http_server):
    server, root = http_server
    files = FileStore(root / "vol")
    packed = gzip.compress(b"voxels" * 100)
    files.put(CHUNK, packed, content_encoding="gzip")
    files.put("info", b'{"x": 1}')
    url = f"http://127.0.0.1:{server.server_address[1]}/vol"
    s = open_store(url)
    s.check_readable()
    assert s.get("info") == b'{"x": 1}'
    assert s.get(CHUNK) == b"voxels" * 100
    assert s.get_raw(CHUNK) == RawObject(packed, "gzip")
    assert s.get_raw("info") == (b'{"x": 1}', None)
    assert s.get("8_8_40/missing") is None and s.get_raw("nothing") is None
    assert s.exists("info") and not s.exists("nothing")
    assert dict(s.get_many(["info", "nothing"])) == {"info": b'{"x": 1}', "nothing": None}
    for write in (lambda: s.put("k", b"x"), s.check_writable, s.clear, lambda: s.delete("info")):
        with pytest.raises(UserError, match="read-only") as e:
            write()
        one_line(e)
    with pytest.raises(UserError, match="cannot list"):
        list(s.list())
    with pytest.raises(UserError, match="info was not found"):
        open_store(url + "/nope").check_readable()


def test_http_store_retries_and_gives_up(http_server):
    server, root = http_server
    FileStore(root / "vol").put("info", b"{}")
    url = f"http://127.0.0.1:{server.server_address[1]}/vol"
    server.fail = 3
    assert open_store(url, StorageOptions(**FAST)).get("info") == b"{}"
    assert server.requests == 4
    server.requests, server.fail = 0, 10 ** 6
    with pytest.raises(StorageUnavailable, match="GET .*/vol/info failed 4 times") as e:
        open_store(url, StorageOptions(retry_tries=4, **FAST)).get("info")
    one_line(e)
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        open_store(f"http://127.0.0.1:{closed_port()}/x", StorageOptions(**FAST)).check_readable()


def test_gcs_ranged_reads_and_whole_shards(gcs_server, gcs_bucket, tmp_path):
    """Sharded output straight to gs:// (shards uploaded from files), read back through ranged
    reads, checked, and downloaded voxel for voxel."""
    import numpy as np

    import ngconvert
    from conftest import label_volume, read_cloudvolume

    opts = StorageOptions(endpoint_url=gcs_server, anonymous=True)
    a = label_volume((60, 50, 40))
    url = f"gs://{gcs_bucket.name}/sharded"
    ngconvert.write_volume(a, url, layer_type="segmentation", chunk_size=(16, 16, 16), sharded=True,
                           shard_bytes=32 << 10, storage=opts)
    store = open_store(url, opts)
    info = json.loads(store.get("info"))
    key = info["scales"][0]["key"]
    shard = next(k for k, _ in store.list(key + "/") if k.endswith(".shard"))
    whole = store.get_raw(shard).data
    assert store.get_range(shard, 5, 37) == whole[5:37]
    from ngconvert.datasets.check import check

    assert check(url, opts, full=True).problems == []
    from ngconvert.datasets.transfer import download

    download(url, tmp_path / "back", opts)
    np.testing.assert_array_equal(read_cloudvolume(tmp_path / "back", 0)[..., 0], a)
