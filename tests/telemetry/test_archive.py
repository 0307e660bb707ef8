"""Archive: views over real Parquet written by the real Writer, curves, journey, errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_schema import rows_to_table, run_id_from_name, segment_path
from telemetry import Archive, Writer
from telemetry.store.errors import ArchiveNotFoundError, FormatVersionError, QueryError, UnknownRunError

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
INF = math.inf
NAME = "Übung λ run"
RID = run_id_from_name(NAME)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def write_every_table(url: str, **kw) -> None:
    """One run touching every table, with NaN, ±Inf, unicode and out-of-order/duplicate steps."""
    with Writer(url, run="Übung λ run", project="proj ✈", seed=7, config={"lr": 3e-4}, **kw) as w:
        w.rank_info(local_rank=0, host="h0", gpu_uuid="GPU-0", dp_rank=0, tp_rank=0, pp_rank=0)
        for step in (3, 1, 2, 2, 0):  # out of order, step 2 twice
            w.metric(step, "loss", float(step), wall_time=at(step))
        w.metric(4, "loss", math.nan, wall_time=at(4))
        w.metric(5, "loss", INF, wall_time=at(5))
        w.metric(6, "loss", -INF, wall_time=at(6))
        w.metric(1, "δ/grad_norm (L2)", 0.5, wall_time=at(1))
        w.system("gpu.util", 97.0, gpu_index=0, gpu_uuid="GPU-0", wall_time=at(1))
        w.event("nan", step=4, severity="error", message="loss is NaN — stop?", data_chunk=11, sample_ids=[5, 9],
                layer="blocks.3.attn", details={"where": "fwd"})
        w.checkpoint(step=5, tokens_seen=5000, uri="s3://b/ckpt-5", bytes=123, has_optimizer_state=False,
                     weights_dtypes=["bfloat16"], optimizer_dtypes=[], data_chunk=11, sha256="ab", problems=["bf16"])
        w.data_chunk(11, first_step=0, last_step=6, tokens=7000, source_mix={"web": 0.5, "code": 0.5})
        w.row("evals", step=6, benchmark="hellaswag", metric="acc", value=0.31, stderr=0.01, n_shot=0,
              harness="lm-eval", source="flightlog")
        w.row("memorization", step=6, data_chunk=11, k=32, l=32, n_sequences=100, token_match=0.2, full_match=0.01)


@pytest.fixture()
def archive_url(tmp_path) -> str:
    url = str(tmp_path / "archive")
    write_every_table(url)
    return url


def test_every_table_round_trips_through_writer_and_sql(archive_url):
    a = Archive(archive_url)
    assert a.problems == []
    counts = {t: a.sql(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py() for t in (
        "runs", "attempts", "ranks", "metrics", "system", "events", "checkpoints", "data_chunks", "evals",
        "memorization")}
    assert counts == {"runs": 1, "attempts": 1, "ranks": 1, "metrics": 9, "system": 1, "events": 1,
                      "checkpoints": 1, "data_chunks": 1, "evals": 1, "memorization": 1}
    run = a.sql("SELECT * FROM runs").to_pylist()[0]
    assert run["name"] == "Übung λ run" and run["project"] == "proj ✈" and run["status"] == "finished"
    assert json.loads(run["config_json"]) == {"lr": 3e-4}
    loss = a.sql("SELECT step, value FROM metrics WHERE name = 'loss' ORDER BY step, value").to_pylist()
    assert [r["step"] for r in loss] == [0, 1, 2, 2, 3, 4, 5, 6]  # the duplicate step is kept
    values = [r["value"] for r in loss]
    assert math.isnan(values[5]) and values[6] == INF and values[7] == -INF
    assert a.metric_names("Übung λ run") == ["loss", "δ/grad_norm (L2)"]
    ev = a.sql("SELECT * FROM events").to_pylist()[0]
    assert ev["sample_ids"] == [5, 9] and ev["message"] == "loss is NaN — stop?" and ev["layer"] == "blocks.3.attn"
    ck = a.sql("SELECT * FROM checkpoints").to_pylist()[0]
    assert ck["has_optimizer_state"] is False and ck["weights_dtypes"] == ["bfloat16"] and ck["problems"] == ["bf16"]
    assert a.sql("SELECT seed FROM attempts").column("seed")[0].as_py() == 7
    assert a.sql("SELECT gpu_uuid FROM ranks").column("gpu_uuid")[0].as_py() == "GPU-0"
    assert a.sql("SELECT value FROM evals").column("value")[0].as_py() == pytest.approx(0.31)
    assert a.sql("SELECT full_match FROM memorization").column("full_match")[0].as_py() == pytest.approx(0.01)
    ts = a.sql("SELECT wall_time FROM metrics WHERE step = 6").column("wall_time")[0].as_py()
    assert ts == at(6)


def test_runs_summarises_each_run(archive_url):
    runs = Archive(archive_url).runs()
    assert list(runs.columns)[:11] == ["run_id", "name", "project", "status", "created_at", "steps", "tokens",
                                       "attempts", "ranks", "last_loss", "incidents"]
    r = runs.iloc[0]
    assert (r.run_id, r["name"], r.status, r.steps, r.attempts, r.ranks, r.incidents) == (
        RID, NAME, "finished", 6, 1, 1, 1)
    assert r.last_loss == -INF  # the loss at the last step, whatever it is


def test_resolve_run_takes_name_or_id_and_lists_known_runs_otherwise(archive_url):
    a = Archive(archive_url)
    assert a.resolve_run(NAME) == a.resolve_run(RID) == RID
    with pytest.raises(UnknownRunError, match=f"known runs: {RID}"):
        a.resolve_run("nope")


def two_attempt_archive(url: str) -> None:
    with Writer(url, run="r", seed=1) as w:  # attempt 0 reaches step 9, then crashes
        for s in range(10):
            w.metrics(s, {"loss": 10.0 + s, "tokens_seen": 100.0 * s}, wall_time=at(s))
        w.event("nan", step=8, data_chunk=3)
        w.data_chunk(3, first_step=6, last_step=9)
    with Writer(url, run="r", seed=2, resumed_from_step=5) as w:  # attempt 1 resumes from step 5
        for s in range(5, 13):
            w.metrics(s, {"loss": 100.0 + s, "tokens_seen": 100.0 * s}, wall_time=at(100 + s))
        w.event("loss_spike", step=7)  # no chunk given: found from data_chunks by step
        w.data_chunk(3, first_step=7, last_step=8)


def test_journey_metrics_takes_the_later_attempt_for_overlapping_steps(tmp_path):
    url = str(tmp_path / "a")
    two_attempt_archive(url)
    a = Archive(url)
    rows = a.sql("SELECT step, attempt, value FROM journey_metrics WHERE name = 'loss' ORDER BY step").to_pylist()
    assert [r["step"] for r in rows] == list(range(13))
    assert all(r["attempt"] == (0 if r["step"] < 5 else 1) for r in rows)
    assert rows[6]["value"] == 106.0
    df = a.metrics("r", ["loss"])
    assert list(df["value"]) == [10.0 + s for s in range(5)] + [100.0 + s for s in range(5, 13)]
    everything = a.metrics("r", ["loss"], journey=False)
    assert len(everything) == 18
    curve = a.curve("r", "loss", buckets=13)
    assert list(curve["max"]) == [10.0 + s for s in range(5)] + [100.0 + s for s in range(5, 13)]
    lineage = a.attempt_lineage("r")
    assert list(lineage["attempt"]) == [0, 1]
    assert list(lineage["first_step"]) == [0, 5] and list(lineage["last_step"]) == [9, 12]
    assert list(lineage["abandoned_steps"]) == [5, 0]
    assert lineage["resumed_from_step"].iloc[1] == 5
    summary = a.runs().iloc[0]
    assert (summary.attempts, summary.steps, summary.last_loss) == (2, 12, 112.0)


def test_incidents_are_listed_per_data_chunk_across_attempts_and_seeds(tmp_path):
    url = str(tmp_path / "a")
    two_attempt_archive(url)
    a = Archive(url)
    inc = a.incidents("r")
    assert list(inc["data_chunk"]) == [3, 3] and list(inc["seed"]) == [2, 1]
    chunks = a.chunk_incidents("r")
    row = chunks.iloc[0]
    assert (row.data_chunk, row.n_incidents, row.n_attempts, list(row.seeds)) == (3, 2, 2, [1, 2])
    assert list(a.sql("SELECT data_chunk FROM chunk_incidents").column("data_chunk").to_pylist()) == [3]


def write_series(url: str, run: str, steps: np.ndarray, values: np.ndarray) -> None:
    with Writer(url, run=run) as w:
        for s, v in zip(steps.tolist(), values.tolist(), strict=True):
            w.metric(s, "loss", v, wall_time=at(s))


@pytest.mark.parametrize("buckets", [1, 2, 3, 7, 50, 999, 1000, 5000])
def test_curve_keeps_a_single_spike_visible_at_any_bucket_count(tmp_path, buckets):
    url = str(tmp_path / "a")
    steps = np.arange(1000)
    values = np.full(1000, 2.0)
    values[617] = 1e6
    write_series(url, "spiky", steps, values)
    c = Archive(url).curve("spiky", "loss", buckets=buckets)
    assert len(c) == min(buckets, 1000)
    assert c["max"].max() == 1e6
    hit = c[c["max"] == 1e6]
    assert len(hit) == 1 and hit.x_lo.iloc[0] <= 617 <= hit.x_hi.iloc[0]
    assert c["count"].sum() == 1000


def test_curve_counts_nan_and_inf_per_bucket_and_never_drops_them(tmp_path):
    url = str(tmp_path / "a")
    steps = np.arange(100)
    values = np.ones(100)
    values[[10, 11, 55]] = math.nan
    values[12] = INF
    values[[13, 99]] = -INF
    write_series(url, "r", steps, values)
    c = Archive(url).curve("r", "loss", buckets=10).set_index("bucket")
    assert c.loc[1, ["nan_count", "posinf_count", "neginf_count", "count"]].tolist() == [2, 1, 1, 10]
    assert c.loc[1, "min"] == c.loc[1, "max"] == 1.0  # min/max/mean over finite values only
    assert c.loc[5, "nan_count"] == 1 and c.loc[9, "neginf_count"] == 1 and c.loc[9, "last"] == -INF
    assert c[["nan_count", "posinf_count", "neginf_count"]].sum().tolist() == [3, 1, 2]


def full_scan_curve(steps: np.ndarray, values: np.ndarray, buckets: int) -> pd.DataFrame:
    lo, hi = steps.min(), steps.max()
    b = ((steps - lo) * buckets) // (hi - lo + 1)
    rows = []
    for k in np.unique(b):
        s, v = steps[b == k], values[b == k]
        fin = v[np.isfinite(v)]
        order = np.argsort(s, kind="stable")
        rows.append({"bucket": int(k), "x_lo": int(s.min()), "x_hi": int(s.max()),
                     "min": fin.min() if len(fin) else np.nan, "max": fin.max() if len(fin) else np.nan,
                     "mean": fin.mean() if len(fin) else np.nan, "first": v[order[0]], "last": v[order[-1]],
                     "count": len(v), "nan_count": int(np.isnan(v).sum()), "posinf_count": int((v == INF).sum()),
                     "neginf_count": int((v == -INF).sum())})
    return pd.DataFrame(rows)


def test_curve_equals_a_full_scan_computation(tmp_path):
    url = str(tmp_path / "a")
    rng = np.random.default_rng(3)
    steps = rng.permutation(5000)[:3000]  # gaps and out-of-order writes
    values = rng.normal(size=3000)
    values[rng.integers(0, 3000, 40)] = math.nan
    values[rng.integers(0, 3000, 10)] = INF
    values[rng.integers(0, 3000, 10)] = -INF
    write_series(url, "r", steps, values)
    got = Archive(url).curve("r", "loss", buckets=37)
    want = full_scan_curve(steps, values, 37)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, rtol=1e-12)


def test_curve_by_tokens_and_by_time(tmp_path):
    url = str(tmp_path / "a")
    two_attempt_archive(url)
    a = Archive(url)
    by_tokens = a.curve("r", "loss", x="tokens", buckets=100)
    assert by_tokens["x_lo"].min() == 0 and by_tokens["x_hi"].max() == 1200
    assert by_tokens["count"].sum() == 13 and by_tokens["max"].max() == 112.0
    by_time = a.curve("r", "loss", x="time", buckets=4)
    assert by_time["count"].sum() == 13
    assert by_time["x_lo"].min() == pd.Timestamp(at(0)) and by_time["x_hi"].max() == pd.Timestamp(at(112))
    window = a.curve("r", "loss", lo=2, hi=3, buckets=10)
    assert list(window["first"]) == [12.0, 13.0]
    with pytest.raises(QueryError, match="unknown x"):
        a.curve("r", "loss", x="epoch")


def test_missing_archive_says_what_to_do(tmp_path):
    with pytest.raises(ArchiveNotFoundError, match=r"no flightlog archive at .*nowhere.*flightlog demo"):
        Archive(str(tmp_path / "nowhere"))


def test_archive_of_a_newer_format_is_refused(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    (root / "flightlog.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(FormatVersionError, match="format version 99"):
        Archive(str(root))


def test_unreadable_and_in_progress_files_are_skipped_never_fatal(archive_url):
    folder = os.path.join(archive_url, "metrics", f"run_id={RID}")
    with open(os.path.join(folder, "part-a0-r0-00009999.parquet"), "wb") as fh:
        fh.write(b"PAR1 half a file, no footer")
    with open(os.path.join(folder, "part-a0-r0-00009998.parquet.tmp-abc"), "wb") as fh:
        fh.write(b"in progress")
    a = Archive(archive_url)
    assert len(a.problems) == 1 and "part-a0-r0-00009999.parquet" in a.problems[0]
    assert a.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 9
    assert all(".tmp-" not in f.rel for f in a.snapshot.all_files())


def test_files_written_directly_with_pyarrow_are_read_too(tmp_path):
    root = tmp_path / "a"
    rows = [{"run_id": "ext", "attempt": 0, "rank": 0, "step": s, "name": "loss", "value": 1.0 / (s + 1)}
            for s in range(5)]
    path = root / segment_path("metrics", "ext", 0, 0, 1)
    path.parent.mkdir(parents=True)
    pq.write_table(rows_to_table("metrics", rows).drop_columns(["wall_time"]), path)  # an older file, fewer columns
    a = Archive(str(root))
    assert a.runs()["run_id"].tolist() == ["ext"]
    assert a.sql("SELECT count(wall_time) AS n, count(*) AS m FROM metrics").to_pylist() == [{"n": 0, "m": 5}]


def test_refresh_sees_new_segments_and_changes_version(archive_url):
    a = Archive(archive_url)
    before = a.version
    assert a.refresh() is False and a.version == before
    with Writer(archive_url, run="second") as w:
        w.metric(0, "loss", 1.0)
    assert a.refresh() is True and a.version != before
    assert sorted(a.runs()["run_id"]) == sorted([RID, "second"])


def test_bad_sql_raises_query_error_with_duckdbs_message(archive_url):
    with pytest.raises(QueryError, match="no_such_table"):
        Archive(archive_url).sql("SELECT * FROM no_such_table")


def test_empty_archive_has_typed_empty_views(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    (root / "flightlog.json").write_text(json.dumps({"format_version": 1}))
    a = Archive(str(root))
    assert a.runs().empty
    schema = a.sql("SELECT * FROM metrics").schema
    assert str(schema.field("value").type) == "double" and str(schema.field("step").type) == "int64"
    assert a.sql("SELECT * FROM journey_metrics").num_rows == 0
