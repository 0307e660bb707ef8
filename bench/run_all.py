"""Run every benchmark script in bench/ and gather their results into one report.

Each script prints its own Markdown tables to stdout, plus `BENCH_SUMMARY {json}` lines
(bench._harness.summary) for the report's summary table; this runner sequences them (one
process each, so one benchmark's memory or threads never skew the next) and writes
bench/results/REPORT.md: machine info, one summary table (every comparison with peers and every
budget with pass/miss and peak memory), then each script's own tables. Usage: `make bench` or
`python -m bench.run_all [--quick] [name ...]`.

`--quick` (small sizes, minutes instead of an hour) is forwarded to scripts that accept it;
scripts that do not get the small sizes of QUICK_ARGS instead.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench._harness import SUMMARY_PREFIX, machine_note, md_table  # noqa: E402

ORDER = ["bench_writer", "bench_curve", "bench_capture", "bench_gpu_step", "bench_peers", "bench_scale",
         "bench_cross_run", "bench_import", "bench_lod", "bench_journey_page", "bench_growth"]
# Small sizes for scripts without their own --quick.
QUICK_ARGS = {
    "bench_writer": ["--points", "1000000"],
    "bench_curve": ["--points", "1000000", "--repeat", "3"],
    "bench_capture": ["--steps", "500", "--trials", "2"],
    "bench_import": ["--steps", "2000"],
    "bench_lod": ["--points", "1000000", "--repeat", "3"],
    "bench_journey_page": ["--steps", "100000"],
}
_BUDGET_HEADER = re.compile(r"^\|\s*budget\s*\|\s*measured\s*\|\s*verdict\s*\|", re.I)
_MEASUREMENT_HEADER = re.compile(r"^\|\s*measurement\s*\|\s*(time|value)\s*\|\s*budget\s*\|", re.I)


def script_args(name: str, quick: bool) -> list[str]:
    if not quick:
        return []
    if '"--quick"' in (HERE / f"{name}.py").read_text():
        return ["--quick"]
    return QUICK_ARGS.get(name, [])


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def budget_rows(name: str, text: str) -> list[list[str]]:
    """Rows of the script's budget tables (`| budget | measured | verdict |`, or `| measurement |
    time | budget |` ones with a budget given), as summary-table rows."""
    rows, mode = [], None
    for line in text.splitlines():
        if _BUDGET_HEADER.match(line):
            mode = "budget"
            continue
        if _MEASUREMENT_HEADER.match(line):
            mode = "measurement"
            continue
        if mode and line.startswith("|"):
            cells = _cells(line)
            if set("".join(cells)) <= set("-: ") or len(cells) < 3:
                continue
            if mode == "budget":
                rows.append([name, cells[0], cells[1], "budget", cells[2], ""])
            elif cells[2] not in ("", "—", "-"):
                rows.append([name, cells[0], cells[1], cells[2], _check(cells[1], cells[2]), ""])
        else:
            mode = None
    return rows


_UNITS = {"µs": (1e-6, "s"), "ms": (1e-3, "s"), "s": (1.0, "s"), "B": (1.0, "B")}


def _quantity(text: str) -> tuple[float, str] | None:
    """The first number with a unit (µs, ms, s, B) in `text`, as (value in s or B, "s" or "B")."""
    m = re.search(r"(-?[\d.,]+)\s*(µs|ms|s|B)(?![\w/])", text)
    if not m:
        return None
    scale, kind = _UNITS[m.group(2)]
    return float(m.group(1).replace(",", "")) * scale, kind


def _check(measured: str, budget: str) -> str:
    """pass/miss of "≤ X" budgets on times or bytes (one or several '/'-separated values, the first
    ones of `measured` against those of `budget`)."""
    if not budget.strip().startswith("≤"):
        return ""
    want = [_quantity(p) for p in budget.split("/")]
    got = [_quantity(p) for p in measured.split("/")][: len(want)]
    if None in got or None in want or len(got) != len(want) or any(
            g[1] != w[1] for g, w in zip(got, want, strict=True)):  # type: ignore[index]
        return ""
    return "pass" if all(g[0] <= w[0] for g, w in zip(got, want, strict=True)) else "**miss**"  # type: ignore[index]


def split_summary(stdout: str) -> tuple[str, list[list[str]]]:
    """(the script's text without summary lines, its summary rows)."""
    keep, rows = [], []
    for line in stdout.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            d = json.loads(line[len(SUMMARY_PREFIX):])
            rows.append([d["area"], d["measurement"], d["flightlog"], d["compare"], d["verdict"], d["peak"]])
        else:
            keep.append(line)
    return "\n".join(keep), rows


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    quick = "--quick" in args
    names = [a for a in args if a != "--quick"] or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    sections, summary, failed = [], [], []
    t_all = time.perf_counter()
    for name in names:
        extra = script_args(name, quick)
        print(f"== {name} {' '.join(extra)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *extra], cwd=HERE.parent, capture_output=True,
                              text=True)
        took = time.perf_counter() - t0
        text, rows = split_summary(proc.stdout)
        sys.stdout.write(text + "\n")
        if proc.returncode != 0:
            failed.append(name)
            sys.stderr.write(proc.stderr[-4000:])
        summary += rows + budget_rows(name, text)
        sections.append(f"## {name} ({took:.0f} s{', FAILED' if proc.returncode else ''})\n\n{text.strip()}\n")
    misses = sum(r[4] == "**miss**" for r in summary)
    passes = sum(r[4] == "pass" for r in summary)
    head = [
        f"# flightlog benchmarks{' (--quick: small sizes)' if quick else ''}\n",
        f"{started:%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · {platform.platform()} · "
        f"{machine_note()} · total {time.perf_counter() - t_all:.0f} s\n",
        f"Budgets: {passes} pass, {misses} miss" + (f"; scripts failed: {', '.join(failed)}" if failed else "") +
        ". Timings on a shared machine are noisy; each script's section below has the details.\n",
        "## Summary\n",
        md_table(["area", "measurement", "flightlog", "peers / budget", "verdict", "peak RSS"], summary,
                 "llrrrr"),
        "",
    ]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(head + sections))
    print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
