"""The same writer core on memory:// and on s3:// (a real moto server on loopback)."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from telemetry import Writer, WriterConfig
from telemetry.maintain.manifest import write_manifest
from telemetry.maintain.recovery import recover
from telemetry.store.fs import open_fs
from telemetry.store.manifest_file import read_manifest
from tests.telemetry.conftest import read_fs

CFG = WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, close_timeout_s=20)


def _round_trip(url: str, storage_options: dict | None = None) -> None:
    w = Writer(url, "remote run", storage_options=storage_options, writer_config=CFG)
    for step in (2, 0, 1, 1):
        w.metric(step, "loss", float(step))
    w.metric(3, "loss ✈", math.nan)
    w.metric(4, "loss", -math.inf)
    w.event("checkpoint_saved", step=4, details={"uri": "s3://x"})
    w.checkpoint(step=4, uri="s3://x", has_optimizer_state=True)
    assert w.flush(10)
    w.close()
    rows = read_fs(url, "metrics", storage_options).to_pylist()
    assert sorted(r["step"] for r in rows) == [0, 1, 1, 2, 3, 4]
    assert any(math.isnan(r["value"]) for r in rows if r["name"] == "loss ✈")
    assert [r["value"] for r in rows if r["step"] == 4] == [-math.inf]
    assert read_fs(url, "events", storage_options).num_rows == 1
    assert read_fs(url, "checkpoints", storage_options).to_pylist()[0]["has_optimizer_state"] is True
    statuses = sorted(r["status"] for r in read_fs(url, "runs", storage_options).to_pylist())
    assert statuses == ["finished", "running"]
    fs, root = open_fs(url, storage_options)
    fs.invalidate_cache()
    assert not [p for p in fs.find(f"{root}/_staging") if p.endswith(".arrows")]
    assert fs.exists(f"{root}/flightlog.json")
    w2 = Writer(url, "remote run", storage_options=storage_options, writer_config=CFG, resumed_from_step=2)
    assert w2.attempt == 1
    w2.close()


def test_memory_archive_round_trip():
    _round_trip(f"memory://flightlog-{uuid.uuid4().hex}")


def test_s3_archive_round_trip(moto_server):
    _round_trip(f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}", moto_server["storage_options"])


def test_s3_recovery_converts_staged_batches(moto_server):
    url = f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}"
    so = moto_server["storage_options"]
    w = Writer(url, "s3 dead", storage_options=so, writer_config=CFG)
    for i in range(50):
        w.metric(i, "loss", float(i))
    assert w.flush(10)
    report = recover(url, storage_options=so, force=True)  # as if the writer had died
    assert report.converted_batches >= 1
    w.close()
    assert sorted(r["step"] for r in read_fs(url, "metrics", so).to_pylist()) == list(range(50))


def test_s3_outage_never_raises_and_data_arrives_after_restart(moto_server):
    url = f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}"
    so = moto_server["storage_options"]
    w = Writer(url, "s3 outage", storage_options=so, writer_config=CFG)
    w.metric(0, "loss", 0.0)
    assert w.flush(10)
    server = moto_server["server"]
    server.stop()
    try:
        for i in range(1, 100):
            w.metric(i, "loss", float(i))  # must not raise while the store is away
        assert w.flush(timeout=1.0) is False
    finally:
        server.start()
    time.sleep(0.2)
    assert w.flush(timeout=30)
    w.close()
    assert sorted(r["step"] for r in read_fs(url, "metrics", so).to_pylist()) == list(range(100))
    kinds = [r["kind"] for r in read_fs(url, "events", so).to_pylist()]
    assert "storage_error" in kinds


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_manifest_lists_every_live_segment_with_rows(scheme, tmp_path):
    url = str(tmp_path / "a") if scheme == "local" else f"memory://m-{uuid.uuid4().hex}"
    w = Writer(url, "manifested", writer_config=CFG)
    for i in range(10):
        w.metric(i, "loss", 1.0)
    w.close()
    manifest = write_manifest(url)
    fs, root = open_fs(url)
    assert read_manifest(fs, root) == manifest
    by_table = {}
    for f in manifest["files"]:
        by_table[f["table"]] = by_table.get(f["table"], 0) + f["rows"]
        assert f["size"] > 0 and not f["path"].startswith("_")
    assert by_table["metrics"] == 10 and by_table["runs"] == 2
