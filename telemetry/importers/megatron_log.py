"""Import a Megatron-LM stdout log: `flightlog import megatron FILE`.

`training_log` (megatron/training/training.py) prints, every `--log-interval` iterations, one line
of `key: value |` fields after the iteration:

    [2024-05-01 12:00:00] iteration      100/  100000 | consumed samples:        12800 |
    elapsed time per iteration (ms): 1234.5 | learning rate: 1.000000E-04 | global batch size:   128 |
    lm loss: 2.345678E+00 | loss scale: 1.0 | grad norm: 0.812 | number of skipped iterations:   0 |
    number of nan iterations:   0 |

(older versions: no timestamp; newer ones add throughput, skipped samples, params norm, MoE losses).
`evaluate_and_print_results` prints ` validation loss at iteration 100 | lm loss value: ... |
lm loss PPL: ... |` (at the end: `... at iteration N on validation set` / `on test set`).
Real logs carry prefixes (`[rank0]:`, srun's `0:`, a logger's timestamp): the fields are read from
the word `iteration` on. The bracketed timestamp Megatron writes (local time, no zone) is read as UTC.

Names: lm loss -> loss, learning rate -> lr, grad norm -> grad_norm, loss scale -> loss_scale,
params norm -> param_norm, elapsed time per iteration (ms) -> step_time_s (in seconds),
consumed samples -> consumed_samples, global batch size -> global_batch_size, throughput per GPU
(TFLOP/s/GPU) -> tflops_per_gpu; other fields keep their text as name. Validation: val/<key>
(lm loss: val/loss) and val/<key> ppl (lm loss: val/ppl; test set: test/...). Skipped and NaN
iterations of an interval are also `skipped_iterations` and `nan` events. A log that goes back to
an earlier iteration, or says it loaded a checkpoint after training began, is a new attempt (a restart).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from data_schema.layout import run_id_from_name
from telemetry.importers._common import ImportedRun, ImportSourceError, ImportSummary, progress, source_id, write_run
from telemetry.importers.text_log import TORN, Points, iter_lines, parse_time

_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)")
_VALID = re.compile(r"\b(validation|test) loss at iteration\s+(\d+)([^|]*)\|(.*)$")
_LOADED = re.compile(r"loaded checkpoint from .*? at iteration\s+(\d+)")
_NAMES = {
    "lm loss": "loss", "learning rate": "lr", "grad norm": "grad_norm", "loss scale": "loss_scale",
    "params norm": "param_norm", "consumed samples": "consumed_samples", "skipped samples": "skipped_samples",
    "global batch size": "global_batch_size", "throughput per GPU (TFLOP/s/GPU)": "tflops_per_gpu",
    "number of skipped iterations": "skipped_iterations", "number of nan iterations": "nan_iterations",
    "num zeros": "num_zeros", "decoupled learning rate": "decoupled_lr",
}
_MS = "elapsed time per iteration (ms)"
_MUST_PARSE = set(_NAMES) | {_MS}  # a known field that is not a number: the line is damaged


class _Damaged(ValueError):
    pass


def _fields(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split("|"):
        key, sep, value = part.partition(":")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


def _number(key: str, value: str) -> float | None:
    head = value.split("/", 1)[0].split()[0] if value.strip() else ""  # "1234.5/1100.2": the first is this interval's
    try:
        return float(head)
    except ValueError:
        if key in _MUST_PARSE:
            raise _Damaged(f"{key!r} is not a number: {value!r}") from None
        return None


def _ms_to_s(text: str, ms: float) -> float:
    """Milliseconds as printed -> seconds, exactly: the decimal's point moved (812.3 -> 0.8123), not ms / 1000."""
    try:
        return float(text.split("/", 1)[0].split()[0] + "e-3")
    except ValueError:  # a printed exponent already: the division is as close as it gets
        return ms / 1000.0


def _wall(prefix: str) -> float:
    found = _STAMP.findall(prefix)
    if not found:
        return float("nan")
    try:
        return parse_time(found[-1])
    except ValueError:
        return float("nan")


def _iteration(pts: Points, line: str, m: re.Match, n: int, restart: tuple[bool, int | None]) -> tuple[int, int]:
    step, total = int(m.group(1)), int(m.group(2))
    wall = _wall(line[:m.start()])
    got = []
    for key, value in _fields(line[m.end():]):
        x = _number(key, value)
        if x is None:
            pts.skip("non-numeric fields")
            continue
        if key == _MS:
            got.append(("step_time_s", _ms_to_s(value, x)))
        else:
            got.append((_NAMES.get(key, key), x))
    if restart[0]:
        pts.new_attempt(n, resumed_from=restart[1])
    i = pts.line(step, wall, n, restart_on_equal=True)
    attempt = len(pts.attempts) - 1
    for name, x in got:
        pts.add(i, name, x)
        if name in ("skipped_iterations", "nan_iterations") and x > 0:
            nan = name == "nan_iterations"
            pts.events.append({
                "attempt": attempt, "step": step, "kind": "nan" if nan else "skipped_iterations",
                "severity": "error" if nan else "warning",
                "message": f"{int(x)} {'NaN' if nan else 'skipped'} iteration(s) in the interval ending at {step}",
                "details_json": json.dumps({"count": int(x), "line": n})})
    return step, total


def read_megatron_log(path: str, *, run_name: str | None = None, bar=None) -> ImportedRun:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImportSourceError(f"{path} is not a file: pass a Megatron-LM stdout log")
    pts = Points()
    total_iters = 0
    restart: tuple[bool, int | None] = (False, None)
    for n, line, torn in iter_lines(str(p), bar):
        if "iteration" not in line:
            continue
        if torn:
            pts.skip(TORN)
            continue
        try:
            m = _ITER.search(line)
            if m is not None:
                _, total_iters = _iteration(pts, line, m, n, restart)
                restart = (False, None)
                continue
            v = _VALID.search(line)
            if v is not None:
                _validation(pts, v, line, n)
                continue
        except _Damaged as exc:
            raise ImportSourceError(f"{path} line {n}: {exc}") from None
        loaded = _LOADED.search(line)
        if loaded is not None:
            if pts.attempts:  # a checkpoint loaded after training began: the job restarted
                restart = (True, int(loaded.group(1)))
            else:  # the log's first job resumed a run: attempt 0 starts from that checkpoint
                pts.new_attempt(n, resumed_from=int(loaded.group(1)))
    if not pts.points:
        raise ImportSourceError(f"{path} holds no Megatron-LM training log line (' iteration N/ M | ... |')")
    last = pts.attempts[-1]["last_step"]
    finished = bool(total_iters) and last is not None and last >= total_iters
    events = pts.events + [
        {"attempt": a["attempt"], "kind": "restart", "severity": "warning", "step": a["first_step"],
         "message": f"the log starts again at iteration {a['first_step']} (line {a['line']}): attempt {a['attempt']}",
         "details_json": json.dumps({"line": a["line"], "resumed_from_step": a["resumed_from_step"]})}
        for a in pts.attempts[1:]]
    label = run_name or p.stem
    ident = run_id_from_name(run_name) if run_name else source_id("megatron", p.stem)
    return ImportedRun(run_id=ident, name=label, source="megatron", source_path=str(p.resolve()),
                       metrics=pts.table(), status="finished" if finished else "crashed",
                       config={"train_iters": total_iters}, attempts=pts.attempt_rows("megatron", finished=finished),
                       events=events, skipped=pts.skipped)


def _validation(pts: Points, v: re.Match, line: str, n: int) -> None:
    split = "test" if v.group(1) == "test" or "test set" in v.group(3) else "val"
    step = int(v.group(2))
    wall = _wall(line[:v.start()])
    i = pts.at(step, wall)  # the validation of the attempt's iteration: not a new step, so never a restart
    for key, value in _fields(v.group(4)):
        x = _number("validation " + key, value)
        if x is None:
            pts.skip("non-numeric fields")
            continue
        if key.endswith(" PPL"):
            name = _NAMES.get(key.removesuffix(" PPL"), key.removesuffix(" PPL"))
            name = "ppl" if name == "loss" else f"{name} ppl"
        else:
            name = _NAMES.get(key.removesuffix(" value"), key.removesuffix(" value"))
        pts.add(i, f"{split}/{name}", x)


def is_megatron_log(path: str, *, lines: int = 5000) -> bool:
    """Whether the first lines of `path` hold a Megatron training log line (for `flightlog import auto`)."""
    try:
        with open(path, "rb") as fh:
            for _ in range(lines):
                raw = fh.readline()
                if not raw:
                    break
                text = raw.decode("utf-8", "replace")
                if _ITER.search(text) and "elapsed time per iteration" in text:
                    return True
    except OSError:
        return False
    return False


def import_megatron(path: str, archive_url: str | None, *, run_name: str | None = None, quiet: bool = False,
                    storage_options: dict | None = None) -> ImportSummary:
    """Import one Megatron-LM stdout log (restarts become attempts)."""
    summary = ImportSummary("megatron")
    t0 = time.perf_counter()
    size = os.path.getsize(path) if os.path.isfile(path) else None
    with progress(size, "import megatron", quiet=quiet) as bar:
        run = read_megatron_log(path, run_name=run_name, bar=bar)
        summary.add(run, write_run(archive_url, run, storage_options=storage_options))
    summary.source_bytes = size or 0
    summary.seconds = time.perf_counter() - t0
    return summary
