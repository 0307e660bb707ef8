"""verify(): every live file opens and fits its table; manifest agrees; staged data is pending."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schema import rows_to_table, segment_path
from telemetry import Writer, verify
from telemetry.store.errors import ArchiveNotFoundError


@pytest.fixture()
def url(tmp_path) -> str:
    url = str(tmp_path / "archive")
    with Writer(url, run="r") as w:
        for s in range(20):
            w.metrics(s, {"loss": 1.0, "lr": 1e-3})
        w.event("note", step=3, message="hello")
    return url


def test_a_freshly_written_archive_verifies(url):
    report = verify(url)
    assert report.ok, report.problems
    assert report.rows_by_table["metrics"] == 40
    assert report.files_checked == sum(1 for _, _, files in os.walk(url) for f in files if f.endswith(".parquet"))
    assert report.pending == []


def test_a_file_without_footer_is_a_problem(url):
    path = os.path.join(url, segment_path("metrics", "r", 0, 0, 999))
    with open(path, "wb") as fh:
        fh.write(b"PAR1 truncated")
    report = verify(url)
    assert not report.ok
    assert any("part-a0-r0-00000999.parquet" in p and "not a readable Parquet file" in p for p in report.problems)


def test_a_file_that_does_not_fit_its_table_is_a_problem(url):
    bad = pa.table({"run_id": ["r"], "attempt": [0], "rank": [0], "step": [1], "name": ["loss"], "value": ["high"]})
    pq.write_table(bad, os.path.join(url, segment_path("metrics", "r", 0, 0, 998)))
    missing = rows_to_table("metrics", [{"run_id": "r", "attempt": 0, "rank": 0, "step": 1, "name": "x"}])
    pq.write_table(missing.drop_columns(["step"]), os.path.join(url, segment_path("metrics", "r", 0, 0, 997)))
    problems = verify(url).problems
    assert any("00000998" in p and "'value'" in p for p in problems), problems
    assert any("00000997" in p and "'step'" in p for p in problems), problems


def test_null_in_a_required_column_is_a_problem(url):
    table = pa.table({"run_id": pa.array(["r", None]), "attempt": pa.array([0, 0], pa.int32()),
                      "rank": pa.array([0, 0], pa.int32()), "step": pa.array([1, 2], pa.int64()),
                      "name": ["loss", "loss"], "value": [1.0, 2.0]})
    pq.write_table(table, os.path.join(url, segment_path("metrics", "r", 0, 0, 996)))
    assert any("00000996" in p and "'run_id' has 1 missing" in p for p in verify(url).problems)


def test_staged_files_are_pending_recovery_and_temp_files_never_live(tmp_path):
    url = str(tmp_path / "live")
    w = Writer(url, run="live")
    try:
        w.metric(0, "loss", 1.0)
        assert w.flush(timeout=10)
        folder = os.path.join(url, "metrics", "run_id=live")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "part-a0-r0-00000050.parquet.tmp-1234"), "wb") as fh:
            fh.write(b"half")
        report = verify(url)
        assert report.ok, report.problems
        assert any(p.startswith("_staging/metrics/run_id=live/") for p in report.pending)
        assert any(".tmp-1234" in warning for warning in report.warnings)
    finally:
        w.close()


def test_manifest_row_counts_and_files_must_match(url):
    manifest = pytest.importorskip("telemetry.maintain.manifest")
    manifest.write_manifest(url)
    assert verify(url).ok
    live = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(url, "metrics")) for f in fs]
    victim = live[0]
    data = pq.read_table(victim)
    pq.write_table(data.slice(0, 1), victim)  # same name, fewer rows than the manifest says
    problems = verify(url).problems
    assert any("the manifest says" in p for p in problems), problems
    os.remove(victim)
    assert any("listed in the manifest but missing" in p for p in verify(url).problems)


def test_verify_of_a_missing_archive_is_a_clear_error(tmp_path):
    with pytest.raises(ArchiveNotFoundError, match="no flightlog archive"):
        verify(str(tmp_path / "nowhere"))
