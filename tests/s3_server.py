"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, a free port.

pyarrow (the client distrec and Ray Train use) and boto3 (the tests' independent reader) both
talk HTTP to it; nothing in the client is mocked. The AWS_* variables pointing at it are set
for the life of the context and restored after.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

NODE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "distrec-test", "AWS_SECRET_ACCESS_KEY": "distrec-test"}
"""Static keys for the test server (moto accepts any); conftest gives them to the local Ray cluster."""


@contextlib.contextmanager
def s3_bucket(bucket: str) -> Iterator[str]:
    """Start the server, create ``bucket`` and yield ``s3://<bucket>``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        **NODE_CREDENTIALS,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3_client().create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def boto3_client():
    """A boto3 S3 client for the server (reads the AWS_* variables :func:`s3_bucket` set)."""
    import boto3

    return boto3.client("s3")


def keys(bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix`` in ``bucket``, listed by boto3, sorted."""
    pages = boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def get(bucket: str, key: str) -> bytes:
    return boto3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
