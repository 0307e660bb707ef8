"""Import any line-oriented text log with a regular expression: `flightlog import log FILE --pattern REGEX`.

The pattern's named groups say what a line holds: `step` (required) is the step, `wall_time`
(optional) the time (Unix seconds or an ISO timestamp), every other named group a metric of
that name. `step (?P<step>\\d+) \\| loss (?P<loss>\\S+) \\| lr (?P<lr>\\S+)` imports
`step 10 | loss 2.31 | lr 3e-4`. Lines the pattern does not match are counted and skipped;
a group that matched no text is no point; "nan"/"inf" are points with that value.

Also the line reading every text importer shares (the Megatron one too): a last line without its
newline is the torn write of a killed job, skipped and counted (its last number may be cut short,
so parsing it could import a wrong value); a step lower than the one before starts a new attempt
(the job was restarted from a checkpoint).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_schema.layout import run_id_from_name
from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    metrics_table,
    progress,
    seconds_to_ts,
    source_id,
    write_run,
)

TORN = "torn last line"
_RESERVED = ("step", "wall_time")


def iter_lines(path: str, bar=None) -> Iterator[tuple[int, str, bool]]:
    """(line number, text without the newline, whether it is a last line with no newline) for each line."""
    try:
        fh = open(path, "rb")  # closed by the `with` below; binary, so that odd bytes never stop an import
    except OSError as exc:
        raise ImportSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        done = 0
        for n, raw in enumerate(fh, start=1):
            torn = not raw.endswith(b"\n")
            if bar is not None:
                done += len(raw)
                if done >= 1 << 22:  # tqdm's update is not free: every 4 MiB
                    bar.update(done)
                    done = 0
            yield n, raw.decode("utf-8", "replace").rstrip("\r\n"), torn
        if bar is not None:
            bar.update(done)


def parse_time(text: str) -> float:
    """Unix seconds or an ISO timestamp (no zone: UTC) -> Unix seconds; ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        t = dt.datetime.fromisoformat(text.strip().replace(",", "."))
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@dataclass(slots=True)
class Points:
    """Points gathered line by line, with the attempts that a step going back starts.

    Column-wise (a line's step, wall time and attempt once; per metric the lines it is on and its values):
    one or two list appends per point instead of a row object, for a million-line log."""

    steps: list[int] = field(default_factory=list)        # per line
    walls: list[float] = field(default_factory=list)      # per line
    attempt_of: list[int] = field(default_factory=list)   # per line
    columns: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # name -> (lines, values)
    attempts: list[dict] = field(default_factory=list)  # per attempt: first/last step and wall time, start line
    events: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def new_attempt(self, line: int, resumed_from: int | None = None) -> None:
        self.attempts.append({"attempt": len(self.attempts), "first_step": None, "last_step": None, "line": line,
                              "first_wall": None, "last_wall": None, "resumed_from_step": resumed_from})

    def step(self, step: int, wall: float, line: int, *, restart_on_equal: bool) -> None:
        """Note a logged step: a step lower than the last one (or equal, when steps are unique) is a restart."""
        if not self.attempts:
            self.new_attempt(line)
        cur = self.attempts[-1]
        last = cur["last_step"]
        if last is not None and (step < last or (restart_on_equal and step == last)):
            self.new_attempt(line)
            cur = self.attempts[-1]
        if cur["first_step"] is None:
            cur["first_step"] = step
        cur["last_step"] = step
        if wall == wall:
            cur["first_wall"] = wall if cur["first_wall"] is None else cur["first_wall"]
            cur["last_wall"] = wall

    def line(self, step: int, wall: float, line: int, *, restart_on_equal: bool) -> int:
        """A logged line at `step` (see `step`); its index for `column(...)` appends."""
        self.step(step, wall, line, restart_on_equal=restart_on_equal)
        return self.at(step, wall)

    def at(self, step: int, wall: float) -> int:
        """A line of the current attempt that is not a new step (a validation line at its iteration)."""
        if not self.attempts:
            self.new_attempt(0)
        self.steps.append(step)
        self.walls.append(wall)
        self.attempt_of.append(len(self.attempts) - 1)
        return len(self.steps) - 1

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """(line indexes, values) of metric `name`: append a point's line index and value to them."""
        col = self.columns.get(name)
        if col is None:
            col = self.columns[name] = ([], [])
        return col

    def add(self, index: int, name: str, value: float) -> None:
        lines, values = self.column(name)
        lines.append(index)
        values.append(value)

    @property
    def points(self) -> int:
        return sum(len(v) for _, v in self.columns.values())

    def skip(self, why: str, n: int = 1) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + n

    def table(self) -> pa.Table:
        steps = np.asarray(self.steps, np.int64)
        walls = np.asarray(self.walls, np.float64)
        attempts = np.asarray(self.attempt_of, np.int32)
        parts = []
        for name, (lines, values) in self.columns.items():
            idx = np.asarray(lines, np.int64)
            t = metrics_table(pa.array(steps[idx]), pa.repeat(pa.scalar(name), len(idx)),
                              pa.array(np.asarray(values, np.float64)), seconds_to_ts(walls[idx]))
            parts.append(t.append_column("attempt", pa.array(attempts[idx])))
        return pa.concat_tables(parts)

    def attempt_rows(self, source: str, *, finished: bool) -> list[dict]:
        rows = []
        for a in self.attempts:
            last = a is self.attempts[-1]
            start = a["first_wall"]
            end = a["last_wall"]
            rows.append({
                "attempt": a["attempt"], "resumed_from_step": a["resumed_from_step"],
                "started_at": None if start is None else dt.datetime.fromtimestamp(start, dt.UTC),
                "ended_at": None if end is None else dt.datetime.fromtimestamp(end, dt.UTC),
                "end_status": ("finished" if finished else "crashed") if last else "crashed",
                "reason": f"imported from {source}" + ("" if a["attempt"] == 0 else
                                                        f": restarted at log line {a['line']}"),
            })
        return rows


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ImportSourceError(f"--pattern is not a valid regular expression: {exc}") from None
    if "step" not in rx.groupindex:
        raise ImportSourceError("--pattern has no (?P<step>...) group: name the step, e.g. "
                                r"'step (?P<step>\d+) \| loss (?P<loss>\S+)'")
    if not [g for g in rx.groupindex if g not in _RESERVED]:
        raise ImportSourceError("--pattern names no metric: every named group other than step and wall_time is one, "
                                r"e.g. (?P<loss>\S+)")
    return rx


def read_text_log(path: str, pattern: str, *, run_name: str | None = None, bar=None) -> ImportedRun:
    rx = compile_pattern(pattern)
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImportSourceError(f"{path} is not a file: pass a text log")
    metrics = [g for g in rx.groupindex if g not in _RESERVED]
    has_time = "wall_time" in rx.groupindex
    pts = Points()
    targets = [(name, *pts.column(name)) for name in metrics]
    nan = float("nan")
    for n, line, torn in iter_lines(str(p), bar):
        if torn:
            pts.skip(TORN)
            continue
        m = rx.search(line)
        if m is None:
            pts.skip("lines not matching the pattern" if line.strip() else "empty lines")
            continue
        groups = m.groupdict()
        try:
            if groups["step"] is None:
                pts.skip("matched lines without a step")
                continue
            step = int(groups["step"])
            wall = parse_time(groups["wall_time"]) if has_time and groups["wall_time"] else nan
            got = [float(v) if (v := groups[name]) is not None else None for name in metrics]
        except ValueError as exc:
            raise ImportSourceError(f"{path} line {n}: {_what(exc, groups)} ({line.strip()[:120]!r})") from None
        i = pts.line(step, wall, n, restart_on_equal=False)
        for (_, lines, values), x in zip(targets, got, strict=True):
            if x is not None:
                lines.append(i)
                values.append(x)
    if not pts.points:
        raise ImportSourceError(f"no line of {path} matches --pattern {pattern!r}")
    label = run_name or p.stem
    ident = run_id_from_name(run_name) if run_name else source_id("log", p.stem)
    return ImportedRun(run_id=ident, name=label, source="log", source_path=str(p.resolve()), metrics=pts.table(),
                       status="finished", config={"pattern": pattern}, attempts=pts.attempt_rows("log", finished=True),
                       events=_restart_events(pts), skipped=pts.skipped)


def _what(exc: ValueError, groups: dict) -> str:
    bad = [f"{k}={v!r}" for k, v in groups.items() if v is not None and not _number_like(k, v)]
    return f"not a number: {', '.join(bad)}" if bad else str(exc)


def _number_like(name: str, text: str) -> bool:
    try:
        if name == "wall_time":
            parse_time(text)
        elif name == "step":
            int(text)
        else:
            float(text)
    except ValueError:
        return False
    return True


def _restart_events(pts: Points) -> list[dict]:
    return [{"attempt": a["attempt"], "kind": "restart", "severity": "warning", "step": a["first_step"],
             "message": f"the log starts again at step {a['first_step']} (line {a['line']}): attempt {a['attempt']}",
             "details_json": json.dumps({"line": a["line"], "resumed_from_step": a["resumed_from_step"]})}
            for a in pts.attempts[1:]]


def import_text_log(path: str, archive_url: str | None, *, pattern: str, run_name: str | None = None,
                    quiet: bool = False, storage_options: dict | None = None) -> ImportSummary:
    """Import a text log read with `pattern` (named groups: step, optional wall_time, metrics)."""
    compile_pattern(pattern)  # a bad pattern fails before any reading
    summary = ImportSummary("log")
    t0 = time.perf_counter()
    size = os.path.getsize(path) if os.path.isfile(path) else None
    with progress(size, "import log", quiet=quiet) as bar:
        run = read_text_log(path, pattern, run_name=run_name, bar=bar)
        summary.add(run, write_run(archive_url, run, storage_options=storage_options))
    summary.source_bytes = size or 0
    summary.seconds = time.perf_counter() - t0
    return summary
