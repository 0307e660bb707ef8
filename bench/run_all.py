"""Run every benchmark script in bench/ and gather their Markdown tables into one report.

Each script prints its own table to stdout; this runner only sequences them (one process
each, so one benchmark's memory or threads never skew the next) and writes
bench/results/RESULTS.md. Usage: `make bench` or `python -m bench.run_all [name ...]`.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bench_writer", "bench_curve", "bench_capture", "bench_journey_page"]


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    parts = [
        f"# flightlog benchmarks\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC · "
        f"{platform.processor() or platform.machine()} · Python {platform.python_version()}\n"
    ]
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent, capture_output=True, text=True)
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
