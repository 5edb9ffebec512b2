"""A real S3-compatible server for tests: moto's standalone server (`python -m moto.server`) on
127.0.0.1, with the AWS variables pointed at it and fake credentials, so that no request leaves
the machine. Use the `s3` fixture (import it into the test module), or `moto_server()` for a
second server of one's own (e.g. one that checks credentials). A test module gets the server as
a fixture with

    @pytest.fixture(scope="module")
    def s3():
        with s3_support.serving() as server:
            yield server
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# fake credentials, an explicit endpoint, and no instance metadata or user config to fall back on
FAKE = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/curate-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/curate-tests/aws-credentials",
}


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # the AWS variables that point a process at this server

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_keys())

    def bucket(self, name: str) -> str:
        """Create a bucket (if new) and return its URL, `s3://name`."""
        with contextlib.suppress(self.client().exceptions.BucketAlreadyOwnedByYou):
            self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload(self, local: Path, url: str) -> str:
        """Copy a local file to `s3://bucket/key`; return the URL."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        self.client().put_object(Bucket=bucket, Key=key, Body=local.read_bytes())
        return url

    def keys(self, url: str) -> list[str]:
        """The keys under `s3://bucket/prefix`, sorted, relative to the prefix, without the empty
        `folder/` objects pyarrow leaves as directory markers."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = (o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))
        return sorted(k for k in keys if k and not k.endswith("/"))

    def get(self, url: str) -> bytes:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": FAKE["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": FAKE["AWS_SECRET_ACCESS_KEY"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(check_credentials: bool = False) -> Iterator[S3Server]:
    """Start moto's server on a free port of 127.0.0.1; stop it on exit. With `check_credentials`
    every request must be signed by a known IAM user, so the fake keys are refused (access denied)."""
    port = free_port()
    env = {**os.environ, **FAKE}
    if check_credentials:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, "moto's server exited at start-up"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.time() < deadline, "moto's server did not start listening"
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        yield S3Server(endpoint, {**FAKE, "AWS_ENDPOINT_URL": endpoint})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def aws_env(values: dict[str, str]) -> Iterator[None]:
    """Set AWS variables in this process for the block (clearing other AWS_* ones), then restore."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[key]
        os.environ.update(saved)


@contextlib.contextmanager
def serving() -> Iterator[S3Server]:
    """A moto server, with this process's AWS variables pointed at it meanwhile."""
    with moto_server() as server, aws_env(server.env):
        yield server
