"""Crash soak: SIGKILL a multi-rank writer workload at random moments, again and again, on one run.

    python -m bench.soak_crash [--kills 50] [--ranks 2] [--seed 0] [--flush-interval 0.5]

Each round launches one attempt of the run: `--ranks` processes, each a `telemetry.Writer` of
its own rank, logging two metrics and one `note` event per step with a known pattern. After a
random delay every rank is SIGKILLed at once (a lost node). Then, with the real CLI in
subprocesses, `flightlog index` recovers and `flightlog verify` must pass; every *.parquet file
must open with pyarrow and every DuckDB view of the archive must read. Per rank of the killed
attempt, the recovered steps must be 0..last exactly once (no gap, no duplicate, the pattern's
values), and the last recovered step must have been logged at most one flush interval (plus
`--slack`) before the kill (guarantee 3). Earlier attempts are checked again after each round:
recovery of a new attempt must never change an old one. Prints a table of counts; exit 1 when
any check failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = "crash-soak"
STEP_SLEEP_S = 0.002


# ---- the workload: one rank ---------------------------------------------------------------------

def loss_of(attempt: int, rank: int, step: int) -> float:
    """The known pattern: every recovered value can be checked, not only counted."""
    return 10.0 / (1 + step) + rank * 1e-3 + attempt * 1e-6


def rank_main(archive: str, attempt: int, rank: int, world: int, flush_s: float, ready: str) -> None:
    from telemetry import Writer, WriterConfig

    # Segments every second: kills also land between "segment written" and "staged deleted".
    cfg = WriterConfig(flush_interval_s=flush_s, segment_interval_s=1.0, compact_on_close=False)
    w = Writer(archive, RUN, rank=rank, attempt=attempt, world_size=world, dp_size=world, writer_config=cfg,
               reason="soak relaunch" if attempt else None)
    with open(ready + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.replace(ready + ".tmp", ready)
    step = 0
    while True:
        t = time.time()
        w.metrics(step, {"loss": loss_of(attempt, rank, step), "tokens_seen": float(step * 1024)}, wall_time=t)
        w.event("note", step=step, message=f"rank {rank} step {step}", wall_time=t)
        step += 1
        time.sleep(STEP_SLEEP_S)


# ---- one round: launch, kill, recover, check -------------------------------------------------------

@dataclass(slots=True)
class SoakReport:
    kills: int = 0
    recovered: int = 0          # `flightlog index` exit 0
    verify_passed: int = 0      # `flightlog verify` exit 0
    unreadable_files: int = 0   # *.parquet that pyarrow cannot open, views DuckDB cannot read
    ranks_checked: int = 0
    steps_recovered: int = 0
    gaps: int = 0
    duplicates: int = 0
    wrong_values: int = 0
    late_ranks: int = 0         # ranks that lost more than flush interval + slack
    old_attempts_changed: int = 0
    not_crashed: int = 0        # killed attempts whose end_status is not 'crashed' after index
    max_loss_s: float = 0.0
    max_loss_steps: int = 0
    loss_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        rows = [("kills", self.kills), ("recovered (flightlog index exit 0)", self.recovered),
                ("verify passed (flightlog verify exit 0)", self.verify_passed),
                ("unreadable files or views", self.unreadable_files), ("rank attempts checked", self.ranks_checked),
                ("steps recovered", self.steps_recovered), ("gaps", self.gaps), ("duplicates", self.duplicates),
                ("wrong values", self.wrong_values), ("ranks over the loss bound", self.late_ranks),
                ("old attempts changed", self.old_attempts_changed),
                ("killed attempts not marked crashed", self.not_crashed),
                ("max loss per rank (s)", f"{self.max_loss_s:.3f}"),
                ("max loss per rank (steps, est.)", self.max_loss_steps)]
        if self.loss_s:
            srt = sorted(self.loss_s)
            rows.append(("median loss per rank (s)", f"{srt[len(srt) // 2]:.3f}"))
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'what':<{width}} | count |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        return "\n".join(lines)


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("flightlog")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _launch(archive: str, attempt: int, ranks: int, flush_s: float, workdir: str) -> tuple[list, list[str]]:
    readies = [os.path.join(workdir, f"ready-a{attempt}-r{r}") for r in range(ranks)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__)), "--worker", archive, str(attempt), str(r),
                               str(ranks), str(flush_s), readies[r]], env=env, cwd=ROOT)
             for r in range(ranks)]
    return procs, readies


def _wait_ready(procs: list, readies: list[str], timeout_s: float = 120.0) -> list[float]:
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(p) for p in readies):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError("a rank of the soak workload failed to start")
        time.sleep(0.02)
    return [float(open(p).read()) for p in readies]


def _segment_files(archive: str, table: str) -> list[str]:
    """The table's live files: `flightlog index` compacts crashed attempts, and a plain glob would
    also read the parts a compaction replaced (they stay for a grace period)."""
    from telemetry.store.fs import open_fs
    from telemetry.store.liveness import live_filter, read_records

    everything = glob.glob(os.path.join(archive, table, "run_id=*", "*.parquet"))
    rels = {os.path.relpath(path, archive).replace(os.sep, "/") for path in everything}
    fs, root = open_fs(archive)
    live, _ = live_filter(rels, read_records(fs, root))
    return sorted(os.path.join(archive, rel) for rel in live)


def _check_files(archive: str, report: SoakReport) -> None:
    """Every Parquet file opens; every view of the archive reads (DuckDB)."""
    import pyarrow.parquet as pq

    from telemetry import Archive

    for path in glob.glob(os.path.join(archive, "**", "*.parquet"), recursive=True):
        try:
            pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            report.unreadable_files += 1
            report.failures.append(f"unreadable {path}: {exc}")
    a = Archive(archive, recover=False)
    try:
        views = [r[0] for r in a.con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        for v in views:
            try:
                a.con.execute(f"SELECT count(*) FROM {v}").fetchall()
            except Exception as exc:  # noqa: BLE001
                report.unreadable_files += 1
                report.failures.append(f"view {v} unreadable: {exc}")
    finally:
        a.close()


def _rows_by_rank(archive: str) -> dict[tuple[int, int], dict]:
    """(attempt, rank) -> steps, values and wall times of `loss`, and steps of `note` events."""
    import duckdb

    out: dict[tuple[int, int], dict] = {}
    files = _segment_files(archive, "metrics")
    if files:
        for attempt, rank, steps, values, wts in duckdb.sql(
                f"SELECT attempt, rank, list(step ORDER BY step), list(value ORDER BY step), "
                f"list(epoch(wall_time) ORDER BY step) FROM read_parquet({files!r}, hive_partitioning=false) "
                "WHERE name = 'loss' GROUP BY ALL").fetchall():
            out[(attempt, rank)] = {"steps": steps, "values": values, "wall": wts, "notes": []}
    files = _segment_files(archive, "events")
    if files:
        for attempt, rank, steps in duckdb.sql(
                f"SELECT attempt, rank, list(step ORDER BY step) FROM read_parquet({files!r}, hive_partitioning=false) "
                "WHERE kind = 'note' GROUP BY ALL").fetchall():
            out.setdefault((attempt, rank), {"steps": [], "values": [], "wall": [], "notes": []})["notes"] = steps
    return out


def _end_status(archive: str, attempt: int) -> str | None:
    import duckdb

    files = _segment_files(archive, "attempts")
    rows = duckdb.sql(f"SELECT end_status FROM read_parquet({files!r}, hive_partitioning=false) WHERE attempt = "
                      f"{int(attempt)} ORDER BY updated_at DESC LIMIT 1").fetchall() if files else []
    return rows[0][0] if rows else None


def _check_rank(key: tuple[int, int], got: dict | None, kill_t: float, ready_t: float, bound_s: float,
                report: SoakReport) -> None:
    attempt, rank = key
    steps = (got or {}).get("steps", [])
    report.ranks_checked += 1
    report.steps_recovered += len(steps)
    if len(set(steps)) != len(steps):
        report.duplicates += len(steps) - len(set(steps))
        report.failures.append(f"attempt {attempt} rank {rank}: duplicate steps")
    if sorted(set(steps)) != list(range(len(set(steps)))):
        report.gaps += 1
        report.failures.append(f"attempt {attempt} rank {rank}: steps are not 0..n without gaps")
    notes = (got or {}).get("notes", [])
    if notes != list(range(len(notes))):  # one note per step: each exactly once, none missing before the last
        report.gaps += 1
        report.failures.append(f"attempt {attempt} rank {rank}: note events are not steps 0..n exactly once")
    bad = sum(1 for s, v in zip(steps, (got or {}).get("values", []), strict=False) if v != loss_of(attempt, rank, s))
    if bad:
        report.wrong_values += bad
        report.failures.append(f"attempt {attempt} rank {rank}: {bad} value(s) differ from the pattern")
    last_t = max((got or {}).get("wall") or [ready_t])
    lost_s = max(0.0, kill_t - last_t)
    report.loss_s.append(lost_s)
    report.max_loss_s = max(report.max_loss_s, lost_s)
    wall = (got or {}).get("wall") or []
    if len(wall) > 1 and wall[-1] > wall[0]:  # steps lost, estimated at this rank's own step rate
        report.max_loss_steps = max(report.max_loss_steps, round(lost_s * (len(wall) - 1) / (wall[-1] - wall[0])))
    if lost_s > bound_s:
        report.late_ranks += 1
        report.failures.append(f"attempt {attempt} rank {rank}: lost {lost_s:.3f}s > {bound_s:.3f}s")


def soak(archive: str, *, kills: int = 50, ranks: int = 2, seed: int = 0, flush_s: float = 0.5, slack_s: float = 0.5,
         min_delay_s: float = 0.2, max_delay_s: float = 3.0, progress: bool = True) -> SoakReport:
    """Run `kills` rounds on one run of `archive`; return the counts (never raises on a failed check)."""
    from tqdm import tqdm

    rng = random.Random(seed)
    report = SoakReport()
    snapshot: dict[tuple[int, int], int] = {}   # rows per (attempt, rank) after its own round
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir, \
            tqdm(total=kills, desc="crash soak", unit="kill", disable=not progress, file=sys.stderr) as bar:
        for attempt in range(kills):
            procs, readies = _launch(archive, attempt, ranks, flush_s, workdir)
            try:
                ready_ts = _wait_ready(procs, readies)
                time.sleep(rng.uniform(min_delay_s, max_delay_s))
            finally:
                kill_t = time.time()
                for p in procs:
                    p.send_signal(signal.SIGKILL)
                for p in procs:
                    p.wait(30)
            report.kills += 1
            index = _cli("index", "--quiet", archive)
            if index.returncode == 0:
                report.recovered += 1
            else:
                report.failures.append(
                    f"round {attempt}: flightlog index exit {index.returncode}: {index.stderr[-300:]}")
            check = _cli("verify", archive)
            if check.returncode == 0:
                report.verify_passed += 1
            else:
                report.failures.append(
                    f"round {attempt}: flightlog verify exit {check.returncode}: {check.stderr[-500:]}")
            _check_files(archive, report)
            if _end_status(archive, attempt) != "crashed":
                report.not_crashed += 1
                report.failures.append(f"round {attempt}: the killed attempt is not marked crashed")
            rows = _rows_by_rank(archive)
            for r in range(ranks):
                _check_rank((attempt, r), rows.get((attempt, r)), kill_t, ready_ts[r], flush_s + slack_s, report)
                snapshot[(attempt, r)] = len(rows.get((attempt, r), {}).get("steps", []))
            changed = [k for k, n in snapshot.items() if k[0] < attempt
                       and len(rows.get(k, {}).get("steps", [])) != n]
            if changed:
                report.old_attempts_changed += len(changed)
                report.failures.append(f"round {attempt}: rows of earlier attempts changed: {changed}")
            bar.set_postfix(max_loss=f"{report.max_loss_s:.2f}s", failures=len(report.failures))
            bar.update(1)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak_crash", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50, help="rounds of launch + SIGKILL (default 50)")
    p.add_argument("--ranks", type=int, default=2, help="writer processes per attempt (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--flush-interval", type=float, default=0.5, help="writer flush interval, s (default 0.5)")
    p.add_argument("--slack", type=float, default=0.5, help="allowed loss beyond the flush interval, s (default 0.5)")
    p.add_argument("--archive", help="archive folder (default: a fresh temporary one)")
    p.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    args = p.parse_args(argv)
    if args.kills < 1 or args.ranks < 1 or args.flush_interval <= 0 or args.slack < 0:
        p.error("--kills and --ranks must be >= 1, --flush-interval > 0, --slack >= 0")
    with tempfile.TemporaryDirectory(prefix="soak-archive-") as tmp:
        archive = args.archive or os.path.join(tmp, "archive")
        t = time.monotonic()
        report = soak(archive, kills=args.kills, ranks=args.ranks, seed=args.seed, flush_s=args.flush_interval,
                      slack_s=args.slack)
        wall = time.monotonic() - t
    print(f"crash soak: {args.kills} kills x {args.ranks} ranks, seed {args.seed}, flush interval "
          f"{args.flush_interval}s (+{args.slack}s slack), {wall:.0f}s\n")
    print(report.table())
    for f in report.failures[:20]:
        print(f"FAILED: {f}")
    if args.json:
        d = {k: getattr(report, k) for k in report.__dataclass_fields__ if k not in ("loss_s", "failures")}
        print(json.dumps({**d, "failures": len(report.failures), "wall_s": round(wall, 1)}))
    return 0 if report.ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        a = sys.argv[2:]
        rank_main(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5])
    else:
        sys.exit(main())
