"""Import MLflow runs from a SQLite tracking database or a file store, read directly (no mlflow).

SQLite (`sqlite:///path.db`): the `runs`, `experiments`, `params`, `tags` and `metrics`
tables, read with sqlite3 in read-only mode. File store (`./mlruns`, `file:///...`):
`<experiment>/<run>/meta.yaml`, `params/<key>`, `tags/<key>` and `metrics/<key>` files of
"timestamp value step" lines. MLflow stores NaN as value 0 with `is_nan = 1` and ±Inf as
±DBL_MAX (SQLite); both are turned back into NaN and ±Inf. Timestamps are milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa

from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    metrics_table,
    millis_to_ts,
    progress,
    source_id,
    write_run,
)

# MLflow run statuses (names in SQLite, RunStatus numbers in file-store meta.yaml)
_STATUS = {"FINISHED": "finished", "FAILED": "crashed", "KILLED": "killed", "RUNNING": "running",
           "SCHEDULED": "running", "3": "finished", "4": "crashed", "5": "killed", "1": "running", "2": "running"}
_MAX_DOUBLE = 1.7976931348623157e308


def restore_infinities(values: np.ndarray) -> np.ndarray:
    """MLflow stores ±Inf as ±DBL_MAX: turn them back (in place) into ±Inf."""
    values[values >= _MAX_DOUBLE] = math.inf
    values[values <= -_MAX_DOUBLE] = -math.inf
    return values


def _ts(ms: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if ms else None


def _run(run_uuid: str, name: str | None, experiment: str | None, status: str | None, start: int | None,
         end: int | None, params: dict, tags: dict, metrics: pa.Table, source_path: str) -> ImportedRun:
    user_tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    return ImportedRun(
        run_id=source_id("mlflow", run_uuid), name=name or tags.get("mlflow.runName") or run_uuid,
        source="mlflow", source_path=source_path, metrics=metrics,
        status=_STATUS.get(str(status), "finished"), project=experiment, created_at=_ts(start), ended_at=_ts(end),
        config=dict(params), extra={"source_run_id": run_uuid, "tags": user_tags, "mlflow_status": status},
    )


# ---- SQLite ---------------------------------------------------------------------------------------

def _sqlite_runs(db_path: str, bar) -> list[ImportedRun]:
    if not os.path.isfile(db_path):
        raise ImportSourceError(f"{db_path} does not exist: pass sqlite:///path/to/mlflow.db")
    try:
        con = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise ImportSourceError(f"{db_path} is not a readable SQLite database: {exc}") from None
    missing = {"runs", "metrics", "params", "experiments"} - tables
    if missing:
        raise ImportSourceError(f"{db_path} is not an MLflow tracking database (no {', '.join(sorted(missing))} "
                                "table)")
    try:
        experiments = dict(con.execute("SELECT experiment_id, name FROM experiments"))
        runs = con.execute("SELECT run_uuid, name, status, start_time, end_time, experiment_id, lifecycle_stage "
                           "FROM runs ORDER BY start_time, run_uuid").fetchall()
        out = []
        for run_uuid, name, status, start, end, exp_id, stage in runs:
            if stage == "deleted":
                continue
            params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_uuid,)))
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_uuid,))) \
                if "tags" in tables else {}
            rows = con.execute("SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ? "
                               "ORDER BY key, step", (run_uuid,)).fetchall()
            if rows:
                keys, values, stamps, steps, is_nan = zip(*rows, strict=True)
                vals = restore_infinities(np.array(values, dtype=np.float64))
                vals[np.array(is_nan, dtype=bool)] = math.nan
                metrics = metrics_table(pa.array(np.array(steps, np.int64)), list(keys), pa.array(vals),
                                        millis_to_ts(np.array(stamps, np.int64)))
            else:
                metrics = metrics_table([], [], [], None)
            out.append(_run(run_uuid, name, experiments.get(exp_id), status, start, end, params, tags, metrics,
                            str(Path(db_path).resolve())))
            bar.update(1)
        return out
    except sqlite3.DatabaseError as exc:
        raise ImportSourceError(f"cannot read MLflow database {db_path}: {exc}") from None
    finally:
        con.close()


# ---- file store -----------------------------------------------------------------------------------

def _meta(path: Path) -> dict[str, str]:
    """The flat `key: value` lines of an MLflow meta.yaml (no YAML library needed for these)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if ":" in line and not line.startswith((" ", "-")):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _read_tree(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {f.relative_to(folder).as_posix(): f.read_text(encoding="utf-8") for f in sorted(folder.rglob("*"))
            if f.is_file()}


def _metric_file(path: Path, key: str) -> tuple[list, list, list, int]:
    """(timestamps ms, values, steps) of one metric file; malformed lines are counted."""
    stamps, values, steps = [], [], []
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        try:
            if len(parts) == 3:
                stamps.append(int(parts[0]))
                values.append(float(parts[1]))  # "nan", "inf", "-inf" parse as such
                steps.append(int(parts[2]))
            elif len(parts) == 2:  # files of old MLflow versions have no step
                stamps.append(int(parts[0]))
                values.append(float(parts[1]))
                steps.append(0)
            elif parts:
                bad += 1
        except ValueError:
            bad += 1
    return stamps, values, steps, bad


def _file_runs(root: Path, bar) -> list[ImportedRun]:
    if not root.is_dir():
        raise ImportSourceError(f"{root} is not a folder: pass an MLflow file store (./mlruns) or sqlite:///db")
    out = []
    run_metas = sorted(p for p in root.glob("*/*/meta.yaml") if not p.parts[-3].startswith("."))
    if not run_metas and not list(root.glob("*/meta.yaml")):
        raise ImportSourceError(f"{root} is not an MLflow file store (no <experiment>/meta.yaml inside)")
    for meta_path in run_metas:
        run_dir = meta_path.parent
        meta = _meta(meta_path)
        if meta.get("lifecycle_stage") == "deleted" or "run_id" not in meta and "run_uuid" not in meta:
            continue
        exp_meta = run_dir.parent / "meta.yaml"
        experiment = _meta(exp_meta).get("name") if exp_meta.exists() else None
        keys, stamps, values, steps = [], [], [], []
        bad = 0
        metrics_dir = run_dir / "metrics"
        if metrics_dir.is_dir():
            for f in sorted(metrics_dir.rglob("*")):
                if not f.is_file():
                    continue
                key = f.relative_to(metrics_dir).as_posix()
                s, v, st, b = _metric_file(f, key)
                keys.extend([key] * len(v))
                stamps.extend(s)
                values.extend(v)
                steps.extend(st)
                bad += b
        metrics = metrics_table(steps, keys, values, millis_to_ts(np.array(stamps, np.int64)))
        run_uuid = meta.get("run_id") or meta["run_uuid"]
        start = int(meta["start_time"]) if meta.get("start_time", "").isdigit() else None
        end = int(meta["end_time"]) if meta.get("end_time", "").isdigit() else None
        run = _run(run_uuid, meta.get("run_name") or None, experiment, meta.get("status"), start, end,
                   _read_tree(run_dir / "params"), _read_tree(run_dir / "tags"), metrics, str(run_dir.resolve()))
        run.skipped["malformed metric lines"] = bad
        out.append(run)
        bar.update(1)
    return out


# ---- entry ----------------------------------------------------------------------------------------

def _locate(uri: str) -> tuple[str, str]:
    """("sqlite", db path) or ("file", store folder) for a tracking URI or a path."""
    if uri.startswith("sqlite:"):
        # SQLAlchemy form: sqlite:///relative.db, sqlite:////absolute/path.db
        if not uri.startswith("sqlite:///"):
            raise ImportSourceError(f"{uri}: only local SQLite files are supported (sqlite:///path/to/mlflow.db)")
        return "sqlite", unquote(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return "file", unquote(urlparse(uri).path)
    if "://" in uri:
        raise ImportSourceError(f"{uri}: flightlog reads MLflow SQLite files (sqlite:///...) and file stores "
                                "(./mlruns or file:///...), not tracking servers")
    p = Path(uri).expanduser()
    if p.is_file():
        return "sqlite", str(p)
    return "file", str(p)


def import_mlflow(uri: str, archive_url: str | None, *, quiet: bool = False,
                  storage_options: dict | None = None) -> ImportSummary:
    """Import every (not deleted) run of an MLflow SQLite database or file store."""
    kind, path = _locate(uri)
    summary = ImportSummary("mlflow")
    t0 = time.perf_counter()
    with progress(None, "import mlflow", unit="run", quiet=quiet) as bar:
        runs = _sqlite_runs(path, bar) if kind == "sqlite" else _file_runs(Path(path), bar)
        if not runs:
            raise ImportSourceError(f"{uri} holds no MLflow runs")
        for run in runs:
            summary.add(run, write_run(archive_url, run, storage_options=storage_options))
    summary.source_bytes = os.path.getsize(path) if kind == "sqlite" else sum(
        f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    summary.seconds = time.perf_counter() - t0
    return summary
