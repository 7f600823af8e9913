"""Shared pytest fixtures: a real 127.0.0.1 image/fault HTTP server per test or per session."""
from __future__ import annotations

import pytest

from tests.fault_server import ImageServer


@pytest.fixture
def image_server():
    """A fresh ImageServer for one test (its own hit counters and routes)."""
    with ImageServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def shared_image_server():
    """One ImageServer for the whole session; do not rely on its hit counters."""
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def moto_s3(monkeypatch):
    """A real S3 endpoint (moto's server mode) on 127.0.0.1 with bucket 'bkt'; AWS_* variables point at it.

    Yields a boto3 client for arranging and inspecting objects.
    """
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="bkt")
        yield s3
    finally:
        server.stop()
