"""Shared fixtures. Per-package fixtures live in each tests/<package>/conftest.py."""

import os

# Tests never write to a user's default archive or phone home.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")

import socket  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 API on loopback (moto server) with one bucket, `flightlog-test`.

    Yields endpoint_url, bucket, port, the s3fs storage_options, and `server` (stop() and
    start() it again to simulate an outage; moto keeps its state in-process across restarts).
    """
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ[k] = v
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="flightlog-test")
    storage_options = {
        "key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint},
        # fail fast during a simulated outage: the writer retries on its own schedule
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5},
        "skip_instance_cache": True,
    }
    yield {"endpoint_url": endpoint, "bucket": "flightlog-test", "port": port, "server": server,
           "storage_options": storage_options}
    server.stop()
