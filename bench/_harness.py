"""Shared helpers of the benchmark scripts: child processes with peak memory, timing, Markdown.

Every measurement that compares tools runs in a fresh interpreter (`run_child`), so one tool's
imports, threads, caches and heap never skew another's. The child prints one result line
(`RESULT_PREFIX` + JSON); the parent reaps it with `os.wait4`, whose rusage gives the child's
peak RSS (including helper processes it waited for), and samples the RSS of the whole process
tree meanwhile (helpers a tool leaves running, such as wandb's service, are not waited for).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
GIB = 1024**3


@dataclass(slots=True)
class ChildResult:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss: int = 0          # bytes, os.wait4 of the child (it and the helpers it reaped)
    peak_tree_rss: int = 0     # bytes, sampled sum over the child's process tree
    timed_out: bool = False
    error: str = ""


def emit(data: dict[str, Any]) -> None:
    """Print a child's result line (the parent reads the last one)."""
    print(RESULT_PREFIX + json.dumps(data), flush=True)


def self_peak_rss() -> int:
    """Peak RSS of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    # The child runs in its own session: its group holds only processes this harness started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_child(module: str, task: dict[str, Any], *, timeout_s: float, env: dict[str, str] | None = None,
              sample_every_s: float = 0.2) -> ChildResult:
    """Run `python -m module --child <json task>` in a new session; parse its result line."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(task)]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=full_env, start_new_session=True)
        deadline = t0 + timeout_s
        tree_peak, timed_out = 0, False
        # WNOWAIT: see the exit without reaping, so the group id stays ours while leftovers are ended
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            tree_peak = max(tree_peak, _tree_rss(proc.pid))
            if time.perf_counter() > deadline:
                timed_out = True
                break
            time.sleep(sample_every_s)
        wall = time.perf_counter() - t0
        _kill_group(proc.pid)  # on timeout the child; else helpers the tool left behind (e.g. a service process)
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res = ChildResult(ok=False, wall_s=wall, peak_rss=rusage.ru_maxrss * 1024,
                      peak_tree_rss=tree_peak, timed_out=timed_out)
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if lines:
        res.data = json.loads(lines[-1][len(RESULT_PREFIX):])
    res.ok = bool(lines) and proc.returncode == 0 and not timed_out
    if not res.ok:
        why = "timed out" if timed_out else f"exit code {proc.returncode}"
        tail = (stderr.strip().splitlines() or [""])[-1][:200]
        res.error = f"{why}{': ' + tail if tail else ''}"
        sys.stderr.write(f"[{module} {task.get('task', '')}] {why}\n{stderr[-3000:]}\n")
    res.peak_tree_rss = max(res.peak_tree_rss, res.peak_rss)
    return res


def child_task(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The task of a `--child <json>` invocation, else None (the script runs as the parent)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "--child":
        return json.loads(args[1])
    return None


# ---- timing ---------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


# ---- disk -----------------------------------------------------------------------------------

def tree_bytes(path: str | os.PathLike, pattern: str = "*") -> int:
    """Bytes of the regular files under `path` (or the file itself) whose name matches `pattern`."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.exists():
        return 0
    return sum(f.stat().st_size for f in p.rglob(pattern) if f.is_file() and not f.is_symlink())


# ---- formatting -----------------------------------------------------------------------------

def fmt_s(s: float | None) -> str:
    if s is None or s != s:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_us(us: float | None) -> str:
    return "—" if us is None or us != us else (f"{us:.2f}" if us < 10 else f"{us:,.1f}" if us < 1000 else f"{us:,.0f}")


def fmt_rate(per_s: float | None) -> str:
    if per_s is None or per_s != per_s:
        return "—"
    return f"{per_s / 1e6:.2f} M" if per_s >= 1e6 else f"{per_s / 1e3:.1f} k" if per_s >= 1e3 else f"{per_s:.0f}"


def fmt_bytes(n: float | None) -> str:
    if n is None or n != n:
        return "—"
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_ratio(x: float | None) -> str:
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return "—"
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 1 else f"{x:.2f}×"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**miss**")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; `align` has one letter per column (l or r), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_note() -> str:
    """One line on the machine and how busy it was (numbers on a shared box are noisy)."""
    la = os.getloadavg()
    mem = psutil.virtual_memory()
    return (f"{os.cpu_count()} CPUs, load average {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
            f"{mem.total / GIB:.0f} GiB RAM ({mem.available / GIB:.0f} GiB available), Python {sys.version.split()[0]}")


def flightlog_live_bytes(archive: str | os.PathLike, table: str = "metrics") -> int:
    """Bytes of the table's files a reader reads: parts replaced by a compaction (kept for a grace
    period so running readers keep working) are not counted, nor compact files without a record."""
    from telemetry.store.fs import list_files, open_fs
    from telemetry.store.liveness import live_filter, read_records

    fs, root = open_fs(str(archive))
    files = [r for r in list_files(fs, root, table) if r.endswith(".parquet")]
    live, _ = live_filter(files, read_records(fs, root))
    return sum(os.path.getsize(os.path.join(str(archive), r)) for r in live)


# ---- the report's summary table ---------------------------------------------------------------

SUMMARY_PREFIX = "BENCH_SUMMARY "


def summary(area: str, measurement: str, flightlog: str, compare: str = "", ok: bool | None = None,
            peak_rss: int | None = None) -> None:
    """One row of REPORT.md's summary table (bench.run_all collects these lines from stdout)."""
    print(SUMMARY_PREFIX + json.dumps({"area": area, "measurement": measurement, "flightlog": flightlog,
                                       "compare": compare, "verdict": verdict(ok) if ok is not None else "",
                                       "peak": fmt_bytes(peak_rss) if peak_rss else ""}), flush=True)
