"""Run every benchmark script in bench/ and gather their Markdown tables into one report.

Each script prints its own table to stdout; this runner only sequences them (one process
each, so one benchmark's memory or threads never skew the next) and writes
bench/results/RESULTS.md. Usage: `make bench` or `python -m bench.run_all [--quick] [name ...]`.

`--quick` (small sizes, minutes instead of an hour) is forwarded to scripts that accept it;
scripts that do not get the small sizes of QUICK_ARGS instead.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bench_writer", "bench_curve", "bench_capture", "bench_peers", "bench_scale", "bench_import", "bench_lod",
         "bench_journey_page"]
# Small sizes for scripts without their own --quick.
QUICK_ARGS = {
    "bench_writer": ["--points", "1000000"],
    "bench_curve": ["--points", "1000000", "--repeat", "3"],
    "bench_capture": ["--steps", "500", "--trials", "2"],
    "bench_import": ["--steps", "2000"],
    "bench_lod": ["--points", "1000000", "--repeat", "3"],
    "bench_journey_page": ["--steps", "100000"],
}


def script_args(name: str, quick: bool) -> list[str]:
    if not quick:
        return []
    if '"--quick"' in (HERE / f"{name}.py").read_text():
        return ["--quick"]
    return QUICK_ARGS.get(name, [])


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    quick = "--quick" in args
    names = [a for a in args if a != "--quick"] or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    parts = [
        f"# flightlog benchmarks{' (--quick)' if quick else ''}\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · "
        f"{platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · load average "
        f"{os.getloadavg()[0]:.2f} · Python {platform.python_version()}\n"
    ]
    failed = 0
    for name in names:
        extra = script_args(name, quick)
        print(f"== {name} {' '.join(extra)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *extra], cwd=HERE.parent, capture_output=True,
                              text=True)
        took = time.perf_counter() - t0
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            failed += 1
            sys.stderr.write(proc.stderr[-4000:])
        parts.append(f"## {name} ({took:.0f} s{', FAILED' if proc.returncode else ''})\n\n{proc.stdout.strip()}\n")
    report = out_dir / "RESULTS.md"
    report.write_text("\n".join(parts))
    print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
