"""A reader whose snapshot names files deleted since (a compaction's grace period over, a level of detail
rebuilt by a live compactor) looks again and answers, instead of failing the query."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa

from data_schema import schema, segment_path
from telemetry import Archive
from telemetry.maintain.compaction import compact
from telemetry.store.encodings import segment_bytes
from telemetry.store.fs import ensure_root_file, open_fs


def write_parts(root: str, run: str, *, parts: int, first: int = 0) -> None:
    ensure_root_file(*open_fs(root))
    for seq in range(first, first + parts):
        steps = np.arange(seq * 100, seq * 100 + 100, dtype=np.int64)
        table = pa.table({"run_id": [run] * 100, "attempt": pa.array(np.zeros(100, np.int32)),
                          "rank": pa.array(np.zeros(100, np.int32)), "step": steps, "name": ["loss"] * 100,
                          "value": 1.0 / (steps + 1.0),
                          "wall_time": pa.array(steps * 1_000_000).cast(pa.timestamp("us", tz="UTC"))},
                         schema=schema("metrics"))
        path = os.path.join(root, segment_path("metrics", run, 0, 0, seq))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(memoryview(segment_bytes(table)))


def test_a_query_after_the_replaced_parts_were_deleted_looks_again_and_counts_every_row(tmp_path):
    root = str(tmp_path / "a")
    write_parts(root, "r", parts=4)
    a = Archive(root)
    assert a.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 400
    compact(root, "r", grace_s=0)  # the parts the snapshot names are gone now
    assert a.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 400
    assert a.curve("r", "loss", buckets=4)["count"].sum() == 400


def test_a_curve_after_its_level_of_detail_was_rebuilt_and_the_old_one_deleted_looks_again(tmp_path):
    root = str(tmp_path / "a")
    write_parts(root, "r", parts=4)
    compact(root, "r", grace_s=0)
    a = Archive(root)
    assert a.curve("r", "loss", buckets=4)["count"].sum() == 400
    old_lods = glob.glob(os.path.join(root, "metrics_lod", "run_id=r", "*.parquet"))
    assert old_lods
    write_parts(root, "r", parts=2, first=4)
    compact(root, "r", grace_s=0)  # a new compact file and a new LOD over both
    for path in old_lods:  # what a compactor's cleanup does once the grace period is over
        if os.path.exists(path):
            os.remove(path)
    a2 = Archive(root)
    assert a2.curve("r", "loss", buckets=4)["count"].sum() == 600
    # the first reader's snapshot still names the deleted LOD: the curve refreshes instead of failing
    got = a.curve("r", "loss", buckets=4)
    assert got["count"].sum() == 600
