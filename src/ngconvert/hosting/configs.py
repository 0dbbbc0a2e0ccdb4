"""Hosting setups for datasets: an nginx server block, S3 CORS and public-read policy, GCS.

What every host must do for the viewer: answer with ``Access-Control-Allow-Origin`` (the
viewer runs on another origin), let the ``Range`` header through and expose
``Content-Range``/``Content-Encoding`` (shards and multi-resolution meshes are read by byte
range), and serve chunks stored gzipped with ``Content-Encoding: gzip``.  Our local layout
keeps gzipped chunks as ``KEY.gz``: nginx's ``gzip_static always`` serves them for ``KEY``;
``ngconvert upload`` stores them on S3/GCS as ``KEY`` with ``Content-Encoding: gzip``.
"""
from __future__ import annotations

import json
import os
import re

from ..core.errors import UserError
from ..store.s3 import S3Store

CORS_HEADERS = ["Range", "Content-Type", "Accept-Encoding"]
EXPOSE = ["Content-Range", "Content-Encoding", "Content-Length", "Accept-Ranges", "ETag"]


def check_port(port, flag: str = "--port", allow_zero: bool = False) -> int:
    """A TCP port 1-65535 (0 too with ``allow_zero``: the system picks a free one)."""
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        zero = " (0 picks a free one)" if allow_zero else ""
        raise UserError(f"{flag} {port}: give a port from {low} to 65535{zero}")
    return port


_SERVER_NAME = re.compile(r"^(\*\.|\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*"
                          r"[A-Za-z0-9_])?)*(\.\*)?$|^_$|^\[[0-9A-Fa-f:.]+\]$")
_LOCATION = re.compile(r"^[A-Za-z0-9._~%!*'()+,=:@/-]*$")


def check_server_names(server_name: str) -> list[str]:
    """The names of ``--server-name`` (space-separated host names, ``_``, ``*.example.org``,
    ``example.*``, ``.example.org``); anything else is refused, so nothing reaches the
    config but names."""
    names = str(server_name).split()
    if not names:
        raise UserError("--server-name '': give a host name such as example.org, or _ for any")
    for n in names:
        if not _SERVER_NAME.match(n) or len(n) > 253:
            raise UserError(f"--server-name {server_name!r}: {n!r} is not a host name; give names such as "
                            "example.org, *.example.org or _ (letters, digits, '-', '.', '_')")
    return names


def nginx_quote(text: str, what: str) -> str:
    """``text`` as one quoted nginx parameter (backslashes and double quotes escaped); ``$``
    (variables in nginx) and control characters are refused."""
    if "$" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UserError(f"{what} {text!r}: contains '$' or a control character, which nginx cannot take "
                        "literally; rename or move the folder")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_config(root: str, server_name: str = "_", port: int = 80, location: str = "/") -> str:
    root = os.path.abspath(root)
    names = " ".join(check_server_names(server_name))
    check_port(port, "--listen")
    if not _LOCATION.match(location or ""):
        raise UserError(f"--location {location!r}: give a URL path such as /data (letters, digits and "
                        "-._~%!*'()+,=:@/ only)")
    loc = "/" + location.strip("/") + "/" if location.strip("/") else "/"
    folder = nginx_quote(root.rstrip("/") + "/" if loc != "/" else root, "folder")
    alias = f"alias {folder};" if loc != "/" else f"root {folder};"
    shown = root.replace("\n", " ")
    return f"""# nginx server block for precomputed datasets in {shown} (made by ngconvert hosting nginx)
# needs nginx's gzip_static module (in the standard Debian/Ubuntu nginx packages)
server {{
    listen {port};
    server_name {names};

    location {loc} {{
        {alias}
        # chunks stored as KEY.gz are served for KEY with Content-Encoding: gzip, to every client
        gzip_static always;
        gunzip on;
        # never compress again on the fly (shards and mesh fragments are read by byte range)
        gzip off;
        default_type application/octet-stream;

        if ($request_method = OPTIONS) {{
            add_header Access-Control-Allow-Origin * always;
            add_header Access-Control-Allow-Methods "GET, HEAD, OPTIONS" always;
            add_header Access-Control-Allow-Headers "{", ".join(CORS_HEADERS)}" always;
            add_header Access-Control-Max-Age 86400 always;
            return 204;
        }}
        add_header Access-Control-Allow-Origin * always;
        add_header Access-Control-Expose-Headers "{", ".join(EXPOSE)}" always;
        # a missing chunk is a plain 404 (empty space for the viewer)
        limit_except GET HEAD OPTIONS {{ deny all; }}
        autoindex off;
    }}
}}
"""


def s3_cors() -> dict:
    return {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"],
                           "AllowedHeaders": ["*"], "ExposeHeaders": EXPOSE, "MaxAgeSeconds": 86400}]}


def s3_policy(bucket: str, prefix: str = "") -> dict:
    resource = f"arn:aws:s3:::{bucket}/{prefix.strip('/') + '/' if prefix.strip('/') else ''}*"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "PublicReadPrecomputed", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
         "Resource": [resource]}]}


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")


def check_bucket(bucket: str, scheme: str) -> str:
    """A bucket name as S3 and GCS take them: 3-63 lower-case letters, digits, dots and
    hyphens (underscores too on GCS), starting and ending with a letter or digit."""
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket or \
            (scheme == "s3" and "_" in bucket):
        raise UserError(f"--bucket {bucket!r}: not a valid {scheme} bucket name (3-63 lower-case letters, digits, "
                        "dots and hyphens, e.g. my-atlas-data)")
    return bucket


def s3_text(bucket: str, prefix: str = "") -> str:
    check_bucket(bucket, "s3")
    cors = json.dumps(s3_cors(), indent=2)
    policy = json.dumps(s3_policy(bucket, prefix), indent=2)
    return f"""# S3 setup for serving precomputed datasets from s3://{bucket}/{prefix}
# 1. CORS (save as cors.json):
#    aws s3api put-bucket-cors --bucket {bucket} --cors-configuration file://cors.json
{cors}
# 2. public read (save as policy.json; the bucket's Block Public Access must allow policies):
#    aws s3api put-bucket-policy --bucket {bucket} --policy file://policy.json
{policy}
# 3. Content-Encoding: 'ngconvert upload' (or convert/transfer straight to s3://) stores gzipped
#    chunks with Content-Encoding: gzip; files copied by other tools need it set per object.
# 4. In the viewer: precomputed://s3://{bucket}/{prefix.strip('/')}  (or 'ngconvert url ... --base-url')
#    --apply sets 1 and 2 with your credentials ('ngconvert hosting s3 --bucket {bucket} --apply').
"""


def apply_s3(bucket: str, prefix: str, storage) -> None:
    store = S3Store(f"s3://{bucket}/{prefix}", storage)
    client = store._client()
    try:
        client.put_bucket_cors(Bucket=bucket, CORSConfiguration=s3_cors())
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(s3_policy(bucket, prefix)))
    except Exception as e:     # botocore raises many types; all are one line for the user
        raise UserError(f"s3://{bucket}: could not set CORS and the policy ({str(e).splitlines()[0]}); "
                        "check the credentials and the bucket's public access settings") from None


def gcs_text(bucket: str, prefix: str = "") -> str:
    check_bucket(bucket, "gs")
    cors = json.dumps([{"origin": ["*"], "method": ["GET", "HEAD"], "responseHeader": EXPOSE + CORS_HEADERS,
                        "maxAgeSeconds": 86400}], indent=2)
    return f"""# Google Cloud Storage setup for serving precomputed datasets from gs://{bucket}/{prefix}
# 1. CORS (save as cors.json):
#    gcloud storage buckets update gs://{bucket} --cors-file=cors.json
{cors}
# 2. public read:
#    gcloud storage buckets add-iam-policy-binding gs://{bucket} --member=allUsers --role=roles/storage.objectViewer
# 3. Content-Encoding: objects uploaded by ngconvert carry Content-Encoding: gzip and are stored
#    as they are; GCS then decompresses for clients that do not accept gzip, and Range requests
#    on shards and mesh fragments work because those are stored uncompressed.
# 4. In the viewer: precomputed://gs://{bucket}/{prefix.strip('/')}
"""
