"""A local S3-compatible server for tests: moto's server mode on a free loopback port, with dummy credentials.

`AWS_ENDPOINT_URL` points boto3, botocore and s3fs (hence fsspec's `s3://`) at it; `MLFLOW_S3_ENDPOINT_URL`
does the same for MLflow's S3 artifact repository. Subprocesses (training workers, kiln-model-server, an MLflow
server) inherit the variables.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.servers import free_port


@dataclass(frozen=True)
class S3:
    """One bucket on the test S3 server."""

    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def new_bucket(self, purpose: str) -> S3:
        """A bucket no other test writes to: `kiln-<purpose>-<random>`."""
        import boto3

        bucket = f"kiln-{purpose}-{uuid.uuid4().hex[:8]}"[:63].lower().replace("_", "-")
        boto3.client("s3").create_bucket(Bucket=bucket)
        return S3(self.endpoint, bucket)


@contextmanager
def moto_s3() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "kiln-test", "AWS_SECRET_ACCESS_KEY": "kiln-test",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                            "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        _forget_s3_clients()
        try:
            yield S3Server(endpoint)
        finally:
            _forget_s3_clients()
            server.stop()


def _forget_s3_clients() -> None:
    """s3fs keeps file system instances (and their endpoint) per process: start from none."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
