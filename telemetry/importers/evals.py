"""Import benchmark scores into a run's `evals` table: lm-evaluation-harness result JSON, or CSV.

LLM360 and Pythia publish one harness result file per intermediate checkpoint. Each file gives
one checkpoint's scores; its step comes from `--step` or from a checkpoint name in the file
name or the model arguments (`step143000`, `global_step500`, `iter_0001000`, `checkpoint-200`,
`ckpt_356`, `revision=step1000`). Its tokens come from `--tokens`, else from the run's recorded
checkpoint of that step. Both harness layouts are read: v0.4 (`"acc,none"`, `"n-shot"`) and
v0.3 (`"acc"`, `config.num_fewshot`). A plain CSV has columns
`step,benchmark,metric,value[,stderr,n_shot,tokens_seen]`.

Rows are keyed by (step, benchmark, metric): importing a file again replaces its scores. The run is
named as every command names one (telemetry.read.runs: id, display name or name); a run the archive
does not hold yet is created (an evaluation-only run, e.g. a published model's checkpoints).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from data_schema.layout import join, partition_dir, run_id_from_name
from telemetry.importers._common import ImportedRun, ImportSourceError, empty_metrics, progress, write_run
from telemetry.importers.rows import replace_rows
from telemetry.read.runs import known_runs, match_run
from telemetry.store.errors import UnknownRunError
from telemetry.store.fs import list_files, open_fs
from telemetry.store.liveness import live_filter, read_records

KEY = ["step", "benchmark", "metric"]
_CKPT = re.compile(r"(?<![A-Za-z])(?:global_step|step|iter|checkpoint|ckpt)[_\-=]?0*(\d+)", re.IGNORECASE)
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


@dataclass(slots=True)
class EvalImportSummary:
    run_id: str = ""
    files: int = 0
    rows: int = 0
    replaced: int = 0
    benchmarks: set[str] = field(default_factory=set)
    steps: set[int] = field(default_factory=set)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    created: bool = False   # the run was not in the archive: this import created it

    def line(self) -> str:
        skipped = ("; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
                   if self.skipped else "")
        into = f"new run {self.run_id} (created: the archive had no such run)" if self.created else \
            f"run {self.run_id}"
        return (f"imported {self.rows} eval scores from {self.files} file(s) into {into}: "
                f"{len(self.benchmarks)} benchmark(s) at {len(self.steps)} checkpoint(s), "
                f"{self.replaced} earlier score(s) replaced{skipped} in {self.seconds:.2f}s")


def step_from_name(text: str) -> int | None:
    """The step a checkpoint name carries (the last match: `runs/x/step1000` -> 1000)."""
    found = _CKPT.findall(text or "")
    return int(found[-1]) if found else None


def first_step(*texts: str) -> int | None:
    """The step of the first text that names a checkpoint (step 0 counts: it is not "no step")."""
    for text in texts:
        step = step_from_name(text)
        if step is not None:
            return step
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):  # the harness writes "N/A" for a stderr it could not compute
        try:
            return float(v)
        except ValueError:
            return None
    return None


def parse_harness_json(obj: Any, path: str) -> tuple[list[dict], dict[str, Any]]:
    """Rows (benchmark, metric, value, stderr, n_shot) of one harness result, and facts about it."""
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), dict):
        raise ImportSourceError(f"{path} is not an lm-evaluation-harness result: it has no \"results\" object")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    n_shots = obj.get("n-shot") if isinstance(obj.get("n-shot"), dict) else {}
    default_shot = config.get("num_fewshot")
    rows: list[dict] = []
    skipped = 0
    for bench, scores in obj["results"].items():
        if not isinstance(scores, dict):
            skipped += 1
            continue
        shot = n_shots.get(bench, default_shot)
        shot = int(shot) if isinstance(shot, (int, float)) and not isinstance(shot, bool) else None
        for name, raw in scores.items():
            metric, _, filt = name.partition(",")
            if metric in _NOT_METRICS or metric.endswith("_stderr"):
                continue
            value = _number(raw)
            if value is None:
                skipped += 1
                continue
            label = metric if filt in ("", "none") else f"{metric} ({filt})"
            err = _number(scores.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr"))
            rows.append({"benchmark": bench, "metric": label, "value": value, "stderr": err, "n_shot": shot})
    version = obj.get("lm_eval_version") or obj.get("git_hash")
    facts = {
        "model_args": str(config.get("model_args") or ""),
        "model_name": str(obj.get("model_name") or config.get("model") or ""),
        "harness": "lm-evaluation-harness" + (f" {version}" if version else ""),
        "skipped": skipped,
    }
    return rows, facts


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportSourceError(f"{path} does not exist: pass lm-evaluation-harness result files or a CSV") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ImportSourceError(f"{path} is not valid JSON ({exc}): pass an lm-evaluation-harness "
                                "results_*.json or a CSV") from None


def read_eval_csv(path: str) -> list[dict]:
    try:
        t = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportSourceError(f"{path} is not a readable CSV file: {' '.join(str(exc).split())}") from None
    need = ["step", "benchmark", "metric", "value"]
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise ImportSourceError(f"{path} has no column(s) {', '.join(missing)}: an eval CSV has columns "
                                "step,benchmark,metric,value[,stderr,n_shot,tokens_seen]")
    rows = []
    for i, r in enumerate(t.to_pylist(), start=2):
        if r["step"] is None or r["benchmark"] is None or r["metric"] is None:
            raise ImportSourceError(f"{path} line {i}: step, benchmark and metric must not be empty")
        try:
            rows.append({"step": int(r["step"]), "benchmark": str(r["benchmark"]), "metric": str(r["metric"]),
                         "value": _number(r["value"]), "stderr": _number(r.get("stderr")),
                         "n_shot": None if r.get("n_shot") is None else int(r["n_shot"]),
                         "tokens_seen": None if r.get("tokens_seen") is None else int(r["tokens_seen"])})
        except (TypeError, ValueError):
            raise ImportSourceError(f"{path} line {i}: step, n_shot and tokens_seen must be whole numbers") from None
    return rows


def _checkpoint_tokens(fs, root: str, run_id: str) -> dict[int, int]:
    """step -> tokens_seen of the run's recorded checkpoints (for scores whose tokens are not given)."""
    files = list_files(fs, root, partition_dir("checkpoints", run_id))
    keep, _ = live_filter(files, read_records(fs, root, run_id=run_id))
    out: dict[int, int] = {}
    for rel in keep:
        with fs.open(join(root, rel), "rb") as fh:
            for r in pq.read_table(fh, columns=["step", "tokens_seen"]).to_pylist():
                if r["step"] is not None and r["tokens_seen"] is not None:
                    out[int(r["step"])] = int(r["tokens_seen"])
    return out


def import_evals(paths: list[str], archive_url: str | None, run: str, *, step: int | None = None,
                 tokens: int | None = None, quiet: bool = False, storage_options: dict | None = None
                 ) -> EvalImportSummary:
    """Read every file, then replace the run's scores of the same (step, benchmark, metric) in one swap.
    A run the archive does not hold is created first (summary.created)."""
    if not paths:
        raise ImportSourceError("no files given: pass lm-evaluation-harness result JSON files or a CSV")
    if (step is not None or tokens is not None) and len(paths) > 1:
        raise ImportSourceError("--step/--tokens name one checkpoint: pass one result file with them "
                                "(with several files the step comes from each file's checkpoint name)")
    t0 = time.perf_counter()
    summary = EvalImportSummary()
    fs, root = open_fs(archive_url, storage_options)
    known = known_runs(fs, root)
    try:
        run_id = match_run(run, known, where=root)
    except UnknownRunError:
        if run in known.values():  # a display name several runs share: ambiguous, not missing
            raise
        run_id = None
    ckpt_tokens = {} if run_id is None else _checkpoint_tokens(fs, root, run_id)
    rows: list[dict] = []
    with progress(len(paths), "import evals", unit="file", quiet=quiet) as bar:
        for path in paths:
            if not os.path.isfile(path):
                raise ImportSourceError(f"{path} is not a file: pass lm-evaluation-harness result files or a CSV")
            source = str(Path(path).resolve())
            if path.lower().endswith((".csv", ".tsv")):
                got = read_eval_csv(path)
                harness = "csv"
            else:
                got, facts = parse_harness_json(_read_json(path), path)
                where = step if step is not None else first_step(Path(path).name, facts["model_args"],
                                                                 facts["model_name"])
                if where is None:
                    raise ImportSourceError(
                        f"{path}: cannot tell which checkpoint it scores (no step in its file name or model "
                        "arguments): pass --step N")
                for r in got:
                    r["step"] = where
                    r["tokens_seen"] = tokens
                harness = facts["harness"]
                if facts["skipped"]:
                    summary.skipped["non-numeric scores"] = (summary.skipped.get("non-numeric scores", 0)
                                                             + facts["skipped"])
            for r in got:
                r["harness"], r["source"] = harness, source
                if r.get("tokens_seen") is None:
                    r["tokens_seen"] = ckpt_tokens.get(r["step"])
            empty = sum(r["value"] is None for r in got)
            if empty:
                summary.skipped["empty values"] = summary.skipped.get("empty values", 0) + empty
            rows.extend(r for r in got if r["value"] is not None)
            summary.files += 1
            bar.update(1)
    if not rows:
        raise ImportSourceError(f"no numeric scores found in {', '.join(paths)}")
    # the last file wins when two files score the same (step, benchmark, metric)
    unique = {(r["step"], r["benchmark"], r["metric"]): r for r in rows}
    table = pa.Table.from_pylist(list(unique.values()))
    if run_id is None:
        run_id = _create_run(archive_url, run, paths, storage_options)
        summary.created = True
    report = replace_rows(archive_url, "evals", run_id, table, KEY, storage_options=storage_options)
    summary.run_id = report.run_id
    summary.rows = report.rows_written
    summary.replaced = report.rows_replaced
    summary.benchmarks = {r["benchmark"] for r in unique.values()}
    summary.steps = {r["step"] for r in unique.values()}
    summary.seconds = time.perf_counter() - t0
    return summary


def _create_run(archive_url, run: str, paths: list[str], storage_options: dict | None) -> str:
    """An evaluation-only run named `run` (its id: the name's slug), for scores of a model not recorded here."""
    try:
        run_id = run_id_from_name(run)
    except ValueError as exc:
        raise ImportSourceError(f"--run {run!r} cannot name a new run: {exc}") from None
    folder = os.path.commonpath([str(Path(p).resolve().parent) for p in paths])
    write_run(archive_url, ImportedRun(run_id=run_id, name=run, source="evals", source_path=folder,
                                       metrics=empty_metrics(), extra={"created_by": "flightlog import evals"}),
              storage_options=storage_options)
    return run_id
