"""Fixtures of the telemetry suites: a fresh archive folder, fast writer settings, and a
reader that goes straight to the Parquet files with DuckDB (no flightlog reader involved)."""

from __future__ import annotations

import glob
import io
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from telemetry import WriterConfig
from telemetry.store.fs import open_fs


@pytest.fixture()
def archive(tmp_path) -> str:
    return str(tmp_path / "archive")


@pytest.fixture()
def fast() -> WriterConfig:
    """Writer settings for tests: stage every 0.1 s, segment only at close."""
    return WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, close_timeout_s=20)


def segment_files(root: str, table: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, table, "run_id=*", "*.parquet")))


def read_local(root: str, table: str) -> pa.Table:
    """Every row of `table` in the segments under a local archive, read by DuckDB directly."""
    files = segment_files(root, table)
    if not files:
        return pa.table({})
    return duckdb.sql(f"SELECT * FROM read_parquet({files!r}, hive_partitioning=false)").to_arrow_table()


def read_fs(url: str, table: str, storage_options: dict | None = None) -> pa.Table:
    """Every row of `table` in the Parquet files under any fsspec archive URL (s3://, memory://, ...)."""
    fs, root = open_fs(url, storage_options)
    fs.invalidate_cache()
    files = [p for p in fs.find(f"{root}/{table}") if p.endswith(".parquet")]
    if not files:
        return pa.table({})
    return pa.concat_tables(pq.read_table(io.BytesIO(fs.cat_file(p))) for p in files)


@pytest.fixture()
def read_table():
    return read_local


class _Reader:
    table = staticmethod(read_local)
    segments = staticmethod(segment_files)


@pytest.fixture()
def rd() -> _Reader:
    """rd.table(root, table) -> pyarrow.Table; rd.segments(root, table) -> segment paths."""
    return _Reader()
