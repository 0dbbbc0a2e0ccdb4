"""`ngconvert run CONFIG.json` against a real S3-compatible server (moto on 127.0.0.1)."""
import json
import subprocess
import sys

import imagecodecs
import numpy as np
import pytest

from conftest import smooth_volume

pytest_plugins = ("s3server",)


def read_s3(server, bucket, path, scale=0):
    import tensorstore as ts

    spec = {"driver": "neuroglancer_precomputed", "scale_index": scale,
            "kvstore": {"driver": "s3", "bucket": bucket, "path": path.rstrip("/") + "/",
                        "endpoint": server.url, "aws_region": "us-east-1"}}
    return np.asarray(ts.open(spec, read=True).result().read().result())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ngconvert", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def slice_bucket(moto_server, bucket):
    """A bucket with PNG slices stored the S3 utility's way: prefix + name + parts + ext."""
    vol = smooth_volume((40, 30, 5), np.uint8)
    client = moto_server.client()
    names = [f"MD585-N{z}-2015.07.16" for z in range(5)]
    for z, name in enumerate(names):
        img = np.ascontiguousarray(vol[:, :, z].T)
        client.put_object(Bucket=bucket, Key=f"CSHL/MD585/{name}_prep2_gray.png", Body=imagecodecs.png_encode(img))
    client.put_object(Bucket=bucket, Key="CSHL/MD585/unrelated.png", Body=b"x")
    return bucket, vol, names


def legacy_config(tmp_path, moto_server, in_bucket, out_bucket, order_lines, **extra):
    (tmp_path / "creds.json").write_text(json.dumps({"access_key": "testing", "secret_key": "testing",
                                                     "region": "us-east-1"}))
    (tmp_path / "sorted.txt").write_text("".join(line + "\n" for line in order_lines))
    cfg = {
        "s3_creds_file": "creds.json", "s3_bucket_name_for_download": in_bucket,
        "sorted_filename": "sorted.txt", "ext": ".png", "s3_prefix": "CSHL/MD585/",
        "s3_parts": "_prep2_gray", "folder_to_write_to": "work/MD585", "folder_to_convert_from": "work/MD585",
        "folder_to_convert_to": "work/MD585_precomputed", "s3_bucket_name_for_upload": out_bucket,
        "s3_dir_to_write_to": "precomputed/MD585", "voxel_resolution": [3680, 3680, 20000],
        "voxel_offset": [0, 0, 0], "overwrite": False, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_legacy_config_downloads_converts_and_uploads(tmp_path, moto_server, slice_bucket):
    in_bucket, vol, names = slice_bucket
    out_bucket = in_bucket + "-out"
    moto_server.client().create_bucket(Bucket=out_bucket)
    order = [f"{names[0]} 0", "Placeholder 1", f"{names[2]} 2", f"{names[4]} 4"]      # z=3 is a gap
    cfg = legacy_config(tmp_path, moto_server, in_bucket, out_bucket, order)
    p = run_cli("run", cfg, "--endpoint-url", moto_server.url, "--quiet")
    assert p.returncode == 0, p.stderr
    got = read_s3(moto_server, out_bucket, "precomputed/MD585")[..., 0]
    assert got.shape == (40, 30, 5)
    np.testing.assert_array_equal(got[:, :, 0], vol[:, :, 0])
    assert not got[:, :, 1].any() and not got[:, :, 3].any()
    np.testing.assert_array_equal(got[:, :, 2], vol[:, :, 2])
    np.testing.assert_array_equal(got[:, :, 4], vol[:, :, 4])
    client = moto_server.client()
    info = json.loads(client.get_object(Bucket=out_bucket, Key="precomputed/MD585/info")["Body"].read())
    assert info["scales"][0]["resolution"] == [3680, 3680, 20000]
    chunk = f"precomputed/MD585/{info['scales'][0]['key']}/0-40_0-30_0-5"
    head = client.head_object(Bucket=out_bucket, Key=chunk)
    assert head["ContentEncoding"] == "gzip"
    # a second run converts nothing again and changes nothing in the bucket (info is never
    # deleted and uploaded again: the public dataset never looks absent)
    def objects():
        listed = client.list_objects_v2(Bucket=out_bucket).get("Contents", [])
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}
    before = objects()
    p = run_cli("run", cfg, "--endpoint-url", moto_server.url)
    assert p.returncode == 0 and "already converted" in p.stderr and "nothing to upload" in p.stderr
    assert objects() == before


def test_legacy_config_missing_slices_listed(tmp_path, moto_server, slice_bucket):
    in_bucket, _vol, names = slice_bucket
    order = [f"{names[0]} 0"] + [f"gone{i} {i + 1}" for i in range(12)]
    cfg = legacy_config(tmp_path, moto_server, in_bucket, in_bucket, order)
    p = run_cli("run", cfg, "--endpoint-url", moto_server.url)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "12 slice(s)" in line and "gone9_prep2_gray.png" in line and "2 more" in line


def test_legacy_names_are_literal_not_patterns(tmp_path, moto_server, slice_bucket):
    in_bucket, _vol, names = slice_bucket
    pattern = names[0].replace(".", "?")       # would match as a regular expression or glob
    cfg = legacy_config(tmp_path, moto_server, in_bucket, in_bucket, [f"{pattern} 0"])
    p = run_cli("run", cfg, "--endpoint-url", moto_server.url)
    assert p.returncode == 2 and "1 slice(s)" in p.stderr


def test_config_errors(tmp_path, moto_server, slice_bucket):
    in_bucket, _vol, names = slice_bucket
    cfg = legacy_config(tmp_path, moto_server, in_bucket, in_bucket, [f"{names[0]} 0"], s3_bucket_typo="x")
    p = run_cli("run", cfg)
    assert p.returncode == 2 and "s3_bucket_typo" in p.stderr
    obj = json.loads(cfg.read_text())
    del obj["s3_bucket_typo"], obj["voxel_resolution"]
    cfg.write_text(json.dumps(obj))
    p = run_cli("run", cfg)
    assert p.returncode == 2 and "voxel_resolution" in p.stderr
    (tmp_path / "bad.json").write_text("{nope")
    p = run_cli("run", tmp_path / "bad.json")
    assert p.returncode == 2 and "not valid JSON" in p.stderr


def test_native_config_local_to_s3(tmp_path, moto_server, bucket):
    vol = smooth_volume((50, 40, 20), np.uint16)
    np.save(tmp_path / "v.npy", vol)
    cfg = {"source": str(tmp_path / "v.npy"), "dest": f"s3://{bucket}/native/v",
           "options": {"resolution": [4, 4, 40], "layer_type": "image", "quiet": True},
           "storage": {"endpoint_url": moto_server.url}}
    (tmp_path / "n.json").write_text(json.dumps(cfg))
    p = run_cli("run", tmp_path / "n.json")
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(read_s3(moto_server, bucket, "native/v")[..., 0], vol)


def test_convert_slices_from_one_bucket_into_another(tmp_path, moto_server, slice_bucket):
    in_bucket, vol, names = slice_bucket
    client = moto_server.client()
    client.delete_object(Bucket=in_bucket, Key="CSHL/MD585/unrelated.png")
    out_bucket = in_bucket + "-conv"
    client.create_bucket(Bucket=out_bucket)
    p = run_cli("convert", f"s3://{in_bucket}/CSHL/MD585/", f"s3://{out_bucket}/precomputed/MD585",
                "--endpoint-url", moto_server.url, "--resolution", "3680,3680,20000", "--type", "image",
                "--workers", "2")
    assert p.returncode == 0, p.stderr
    got = read_s3(moto_server, out_bucket, "precomputed/MD585")[..., 0]
    np.testing.assert_array_equal(got, vol)
    info = json.loads(client.get_object(Bucket=out_bucket, Key="precomputed/MD585/info")["Body"].read())
    assert len(info["scales"]) >= 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert not any(".ngconvert" in k for k in keys)


def test_convert_from_a_missing_bucket_is_one_line(tmp_path, moto_server):
    p = run_cli("convert", "s3://no-such-bucket-here/x/", tmp_path / "out", "--endpoint-url", moto_server.url)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no-such-bucket-here" in p.stderr
