"""Import Hugging Face `transformers.Trainer` runs from their `trainer_state.json` files.

The Trainer writes its `TrainerState` (transformers' trainer_callback.py) as JSON into every
`checkpoint-N/` folder (and, with `save_state()`, into the output folder): `global_step`,
`max_steps`, `num_input_tokens_seen`, `best_metric`, `best_global_step`, `best_model_checkpoint`
and `log_history`, one dict per `Trainer.log` call: the logged values plus `"step": global_step`.
Training entries hold loss, grad_norm, learning_rate, epoch; evaluation entries eval_*; the
last entry of a finished run holds the train_runtime/train_loss/total_flos summary.

Names follow the live callback (trainer_hooks.integrations.hf): `learning_rate` -> `lr`,
`num_input_tokens_seen` -> `tokens_seen`, `eval_loss` -> `eval/loss`, `train_runtime` ->
`train/runtime`; every other key keeps its name. The summary entry's values are points at
their step (as the callback records them) and also kept in `runs.config_json` ("summary").

A folder of checkpoints: each `checkpoint-N` becomes a `checkpoints` row (step, tokens,
size, optimizer state present, weight dtypes from the safetensors headers), and the histories,
which overlap (each holds every entry up to its step), give each (step, metric) once: a later
checkpoint's value wins (a run resumed from an older checkpoint re-logged those steps). A
checkpoint whose trainer_state.json is torn (a crash while saving) is kept as a row with a
problem, and its history is skipped and counted.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_schema.layout import run_id_from_name
from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    metrics_table,
    progress,
    source_id,
    write_run,
)

STATE_FILE = "trainer_state.json"
_CKPT_DIR = re.compile(r"^checkpoint-(\d+)$")
_RENAMED = {"learning_rate": "lr", "num_input_tokens_seen": "tokens_seen"}
_PREFIXES = ("eval", "test", "train", "predict")
_SUMMARY_KEYS = ("train_runtime", "train_loss", "total_flos")  # only the final entry of a finished run has them
_STATE_FACTS = ("global_step", "max_steps", "epoch", "num_train_epochs", "logging_steps", "eval_steps", "save_steps",
                "train_batch_size", "num_input_tokens_seen", "total_flos", "best_metric", "best_global_step",
                "best_model_checkpoint", "is_hyper_param_search", "trial_name", "trial_params")
# safetensors dtype codes -> the dtype names the checkpoint audit writes (torch's, without "torch.")
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


def metric_name(key: str) -> str:
    """A log_history key -> the archive's metric name (the live callback's rule)."""
    if key in _RENAMED:
        return _RENAMED[key]
    head, _, rest = key.partition("_")
    return f"{head}/{rest}" if rest and head in _PREFIXES else key


@dataclass(slots=True)
class _State:
    path: str
    global_step: int
    state: dict[str, Any] | None   # None: the file is torn or unreadable
    problem: str | None = None


# ---- finding and reading the states --------------------------------------------------------------

def find_states(path: str) -> tuple[str, list[str], list[str]]:
    """(output folder, trainer_state.json files of its checkpoint-N folders in step order, other state files).

    PATH may be a trainer_state.json, a checkpoint-N folder or an output folder of checkpoints."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImportSourceError(f"{path} does not exist: pass a trainer_state.json, a checkpoint-N folder or "
                                "the Trainer's output folder")
    if p.is_file():
        if p.name != STATE_FILE and not p.name.endswith(".json"):
            raise ImportSourceError(f"{path} is not a trainer_state.json")
        in_ckpt = _CKPT_DIR.match(p.parent.name) is not None
        out_dir = p.parent.parent if in_ckpt else p.parent
        return str(out_dir.resolve()), ([str(p)] if in_ckpt else []), ([] if in_ckpt else [str(p)])
    if _CKPT_DIR.match(p.name):
        state = p / STATE_FILE
        if not state.is_file():
            raise ImportSourceError(f"{path} holds no {STATE_FILE}: is it a Trainer checkpoint folder?")
        return str(p.parent.resolve()), [str(state)], []
    ckpts = sorted(((int(m.group(1)), d) for d in p.iterdir() if d.is_dir() and (m := _CKPT_DIR.match(d.name))),
                   key=lambda t: t[0])
    states = [str(d / STATE_FILE) for _, d in ckpts]
    top = [str(p / STATE_FILE)] if (p / STATE_FILE).is_file() else []
    if not ckpts and not top:
        raise ImportSourceError(f"no checkpoint-N folders and no {STATE_FILE} in {path}: pass a Trainer output "
                                "folder, a checkpoint-N folder or a trainer_state.json")
    return str(p.resolve()), states, top


def read_state(path: str, *, strict: bool) -> _State:
    """One trainer_state.json; strict: a damaged file raises ImportSourceError naming its line."""
    step_of_dir = _CKPT_DIR.match(Path(path).parent.name)
    fallback = int(step_of_dir.group(1)) if step_of_dir else -1
    problem = None
    try:
        text = Path(path).read_text(encoding="utf-8")
        state = json.loads(text)  # json reads the NaN/Infinity tokens json.dumps writes
    except FileNotFoundError:
        problem = f"{STATE_FILE} missing"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"{STATE_FILE} unreadable: {exc}"
    except json.JSONDecodeError as exc:
        problem = f"{path} line {exc.lineno}: not valid JSON ({exc.msg}; a torn or truncated {STATE_FILE}?)"
    else:
        problem = _check(state, path)
        if problem is None:
            return _State(path, int(state.get("global_step") or 0), state)
    if strict:
        raise ImportSourceError(problem if path in problem else f"{path}: {problem}")
    return _State(path, fallback, None, problem)


def _check(state: Any, path: str) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        return f"{path} is not a Trainer state: it has no \"log_history\" list"
    for i, entry in enumerate(state["log_history"]):
        if not isinstance(entry, dict) or isinstance(entry.get("step"), bool) or \
                not isinstance(entry.get("step"), int):
            return f"{path}: log_history entry {i} has no whole-number \"step\""
    return None


# ---- histories -> points ----------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _same_entry(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def merge_histories(histories: list[list[dict]]) -> tuple[dict[tuple[int, str], float], dict[str, int]]:
    """(step, metric) -> value over histories in save order (later wins); skipped counts."""
    points: dict[tuple[int, str], float] = {}
    skipped = {"values replaced by a later log of the same step": 0, "non-numeric values": 0}
    newest = histories[-1] if histories else []
    for hist in histories:
        # a checkpoint's history is normally a prefix of the next one's: then the newest adds the same points
        if hist is not newest and hist and len(hist) <= len(newest) and _same_entry(hist[-1], newest[len(hist) - 1]):
            continue
        for entry in hist:
            step = entry["step"]
            for key, value in entry.items():
                if key == "step":
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    skipped["non-numeric values"] += 1
                    continue
                k = (step, metric_name(key))
                old = points.get(k)
                if old is not None and not _same(old, float(value)):
                    skipped["values replaced by a later log of the same step"] += 1
                points[k] = float(value)
    return points, skipped


def _points_table(points: dict[tuple[int, str], float]) -> pa.Table:
    steps = np.fromiter((s for s, _ in points), np.int64, len(points))
    names = [n for _, n in points]
    values = np.fromiter(points.values(), np.float64, len(points))
    return metrics_table(pa.array(steps), names, pa.array(values), None)


def _summary(history: list[dict]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {k: v for k, v in last.items() if k != "step"} if any(k in last for k in _SUMMARY_KEYS) else {}


# ---- checkpoints -----------------------------------------------------------------------------------

def _weight_dtypes(folder: Path) -> list[str]:
    """Dtypes named in the safetensors headers (8-byte length + JSON); no tensor data is read."""
    found: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        if not f.name.startswith(("model", "adapter_model")):
            continue
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, ValueError):
            continue  # an unreadable weights file: the row says so through its size; dtypes stay unknown
        found.update(_ST_DTYPES.get(v.get("dtype"), str(v.get("dtype")).lower())
                     for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
    return sorted(found)


def checkpoint_row(st: _State) -> dict[str, Any]:
    folder = Path(st.path).parent
    files = [f for f in folder.rglob("*") if f.is_file()]
    state = st.state or {}
    tokens = state.get("num_input_tokens_seen")
    mtime = os.path.getmtime(st.path) if os.path.exists(st.path) else folder.stat().st_mtime
    return {
        "step": st.global_step, "tokens_seen": int(tokens) if isinstance(tokens, (int, float)) and tokens else None,
        "uri": str(folder.resolve()), "wall_time": dt.datetime.fromtimestamp(mtime, dt.UTC),
        "bytes": sum(f.stat().st_size for f in files),
        "has_optimizer_state": any(f.name.startswith("optimizer") for f in files),
        "weights_dtypes": _weight_dtypes(folder), "problems": [st.problem] if st.problem else [],
    }


# ---- the run -----------------------------------------------------------------------------------------

def read_hf_trainer(path: str, *, run_name: str | None = None, bar=None) -> ImportedRun:
    """Parse a trainer_state.json, a checkpoint-N folder or an output folder into an ImportedRun."""
    out_dir, ckpt_states, top_states = find_states(path)
    single = len(ckpt_states) + len(top_states) == 1
    states = [read_state(f, strict=single) for f in ckpt_states]
    if bar is not None:
        bar.update(len(states))
    # the output folder's own state (save_state() at the end): the run's final one
    top = [read_state(f, strict=not ckpt_states) for f in top_states]
    readable = sorted((s for s in states + top if s.state is not None), key=lambda s: s.global_step)
    if not readable:
        raise ImportSourceError(f"no readable {STATE_FILE} under {path}: " + "; ".join(s.problem or "" for s in states))
    points, skipped = merge_histories([s.state["log_history"] for s in readable])
    latest = readable[-1].state
    torn = [s for s in states + top if s.state is None]
    skipped[f"checkpoints with a torn or missing {STATE_FILE}"] = len(torn)
    events = [{"kind": "note", "severity": "warning", "step": s.global_step if s.global_step >= 0 else None,
               "message": f"import skipped the history of {Path(s.path).parent.name}: {s.problem}",
               "details_json": json.dumps({"file": s.path})} for s in torn]
    summary = _summary(latest["log_history"])
    max_steps = latest.get("max_steps") or 0
    finished = bool(summary) or (max_steps > 0 and latest.get("global_step", 0) >= max_steps)
    model_config = _model_config(Path(readable[-1].path).parent)
    name = run_name or Path(out_dir).name
    ident = run_id_from_name(run_name) if run_name else source_id("hf", Path(out_dir).name)
    created = min((os.path.getmtime(s.path) for s in readable), default=None)
    return ImportedRun(
        run_id=ident, name=name, source="hf-trainer", source_path=out_dir, metrics=_points_table(points),
        status="finished" if finished else "crashed", config={"model": model_config} if model_config else {},
        extra={"trainer_state": {k: latest.get(k) for k in _STATE_FACTS if k in latest}, "summary": summary,
               "files": [s.path for s in states + top]},
        created_at=dt.datetime.fromtimestamp(created, dt.UTC) if created else None,
        checkpoints=[checkpoint_row(s) for s in states], events=events, skipped=skipped,
    )


def _model_config(folder: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no model config saved next to the state (or not JSON): the run simply has none
    return cfg if isinstance(cfg, dict) else None


def is_hf_trainer(path: str) -> bool:
    """Whether `path` looks like a Trainer state, checkpoint or output folder (for `flightlog import auto`)."""
    p = Path(path)
    if p.is_file():
        return p.name == STATE_FILE
    return (p / STATE_FILE).is_file() or any((d / STATE_FILE).is_file() for d in p.glob("checkpoint-*"))


def import_hf_trainer(path: str, archive_url: str | None, *, run_name: str | None = None, quiet: bool = False,
                      storage_options: dict | None = None) -> ImportSummary:
    """Import one Trainer run (a trainer_state.json, a checkpoint-N folder or an output folder)."""
    summary = ImportSummary("hf-trainer")
    t0 = time.perf_counter()
    _, ckpts, top = find_states(path)
    with progress(len(ckpts) + len(top), "import hf-trainer", unit="file", quiet=quiet) as bar:
        run = read_hf_trainer(path, run_name=run_name, bar=bar)
        summary.add(run, write_run(archive_url, run, storage_options=storage_options))
        bar.update(len(top))
    summary.source_bytes = sum(os.path.getsize(f) for f in ckpts + top if os.path.exists(f))
    summary.seconds = time.perf_counter() - t0
    return summary
