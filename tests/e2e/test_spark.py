"""Other engines read the archive's files directly and agree with DuckDB: PySpark in local mode
(partition discovery of `run_id=`), pandas and Polars, exactly as the README shows them."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from telemetry import Archive, Writer
from telemetry.maintain.compaction import compact
from telemetry.maintain.publish import PublishConfig, publish

RUNS = {"alpha": 1, "beta": 2, "gamma": 1}  # run -> ranks
STEPS = 400
NAN_STEPS = {"alpha": (17, 230), "beta": (99,), "gamma": ()}

# Per run: loss points, NaN count, and min/max/avg over finite values (NaN and ±Inf are data,
# but an average over them means nothing), plus the last wall time in microseconds.
DUCKDB_AGG = """
SELECT run_id, count(*) AS n, count(*) FILTER (WHERE isnan(value)) AS nans,
       min(value) FILTER (WHERE isfinite(value)) AS lo, max(value) FILTER (WHERE isfinite(value)) AS hi,
       avg(value) FILTER (WHERE isfinite(value)) AS mean, epoch_us(max(wall_time)) AS last_us
FROM metrics WHERE name = 'loss' GROUP BY run_id ORDER BY run_id"""
SPARK_AGG = """
SELECT run_id, count(*) AS n, count_if(isnan(value)) AS nans,
       min(value) FILTER (WHERE NOT isnan(value) AND abs(value) != double('inf')) AS lo,
       max(value) FILTER (WHERE NOT isnan(value) AND abs(value) != double('inf')) AS hi,
       avg(value) FILTER (WHERE NOT isnan(value) AND abs(value) != double('inf')) AS mean,
       unix_micros(max(wall_time)) AS last_us
FROM metrics WHERE name = 'loss' GROUP BY run_id ORDER BY run_id"""


def java_missing() -> str | None:
    if shutil.which("java") is None:
        return "PySpark needs a Java runtime (Java 17): apt install openjdk-17-jre-headless"
    try:
        subprocess.run(["java", "-version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"java is on PATH but does not run ({exc})"
    return None


def write_runs(root: str) -> None:
    """Three runs with the real Writer: NaN, +Inf and a spike in the loss, two ranks in beta."""
    for run, ranks in RUNS.items():
        writers = [Writer(root, run, rank=r, world_size=ranks) for r in range(ranks)]
        for step in range(STEPS):
            for r, w in enumerate(writers):
                loss = 3.0 / (1 + step / 50) + 0.01 * r
                if step in NAN_STEPS[run]:
                    loss = math.nan
                elif run == "beta" and step == 300:
                    loss = math.inf
                elif run == "gamma" and step == 250:
                    loss = 40.0
                w.metrics(step, {"loss": loss, "lr": 1e-3}, wall_time=1_767_225_600.0 + step)
        for w in reversed(writers):
            w.close()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """(compacted source archive, its published copy)."""
    base = tmp_path_factory.mktemp("engines")
    root = str(base / "archive")
    write_runs(root)
    # grace 0: the pass deletes the parts it replaced, so a plain directory read (which knows
    # nothing of compaction records) sees each row once
    compact(root, grace_s=0)
    site = str(base / "site")
    publish(None, site, source=root, config=PublishConfig(progress=False))
    return root, site


def duckdb_rows(url: str) -> list[dict]:
    return Archive(url, recover=False).sql(DUCKDB_AGG).to_pylist()


def assert_same(rows: list[dict], expected: list[dict]) -> None:
    assert [r["run_id"] for r in rows] == [e["run_id"] for e in expected] == sorted(RUNS)
    for r, e in zip(rows, expected, strict=True):
        assert (int(r["n"]), int(r["nans"]), int(r["last_us"])) == (e["n"], e["nans"], e["last_us"]), r["run_id"]
        for k in ("lo", "hi", "mean"):
            assert r[k] == pytest.approx(e[k], rel=1e-12), (r["run_id"], k)


def test_the_expected_aggregates_hold_in_duckdb(archives):
    root, _ = archives
    rows = {r["run_id"]: r for r in duckdb_rows(root)}
    assert rows["beta"]["n"] == 2 * STEPS and rows["beta"]["nans"] == 2  # both ranks
    assert rows["alpha"]["nans"] == 2 and rows["gamma"]["hi"] == 40.0


@pytest.fixture(scope="module")
def spark():
    reason = java_missing()
    if reason:
        pytest.skip(reason)
    pyspark = pytest.importorskip("pyspark", reason="pip install pyspark (see .lock-additions)")
    session = (pyspark.sql.SparkSession.builder.master("local[1]").appName("flightlog-test")
               .config("spark.driver.memory", "512m").config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "1").config("spark.sql.session.timeZone", "UTC")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["compacted", "published"])
def test_spark_reads_the_archive_with_partition_discovery_and_agrees_with_duckdb(spark, archives, which):
    root, site = archives
    url = root if which == "compacted" else site
    df = spark.read.parquet(f"{url}/metrics")  # run_id= folders become the run_id column
    assert {"run_id", "step", "name", "value", "wall_time"} <= set(df.columns)
    assert dict(df.dtypes)["wall_time"] == "timestamp" and dict(df.dtypes)["value"] == "double"
    df.createOrReplaceTempView("metrics")
    rows = [r.asDict() for r in spark.sql(SPARK_AGG).collect()]
    assert_same(rows, duckdb_rows(url))


def test_pandas_reads_the_archive_as_the_readme_shows(archives):
    pd = pytest.importorskip("pandas")
    root, _ = archives
    # README: the files carry run_id already, so the folder names are not parsed again
    df = pd.read_parquet(f"{root}/metrics", partitioning=None)
    loss = df[df["name"] == "loss"]
    per_run = loss.groupby("run_id")["value"].agg(n="size", nans=lambda v: int(v.isna().sum()))
    expected = {r["run_id"]: r for r in duckdb_rows(root)}
    assert sorted(per_run.index) == sorted(RUNS)
    for run, row in per_run.iterrows():
        assert (row["n"], row["nans"]) == (expected[run]["n"], expected[run]["nans"])


def test_polars_reads_the_archive_as_the_readme_shows(archives):
    pl = pytest.importorskip("polars", reason="pip install polars")
    root, _ = archives
    # README snippet
    per_run = (
        pl.scan_parquet(f"{root}/metrics/**/*.parquet")
        .filter(pl.col("name") == "loss")
        .group_by("run_id")
        .agg(n=pl.len(), nans=pl.col("value").is_nan().sum(),
             mean=pl.col("value").filter(pl.col("value").is_finite()).mean())
        .sort("run_id")
        .collect()
    )
    expected = duckdb_rows(root)
    assert per_run["run_id"].to_list() == [e["run_id"] for e in expected]
    assert per_run["n"].to_list() == [e["n"] for e in expected]
    assert per_run["nans"].to_list() == [e["nans"] for e in expected]
    assert per_run["mean"].to_list() == pytest.approx([e["mean"] for e in expected], rel=1e-12)
