"""`flightlog compact [URL] [--run RUN] [--grace SECONDS]`: merge a run's small segments into large
sorted files, rebuild its level-of-detail table, and delete files replaced long enough ago.

Writers compact their own run while it is live (rank 0's background thread) and on close; this command
is for archives written by older writers, imports, crashed runs (after recovery) and for removing
replaced parts once their grace period (readers of an older file list may still read them) is over.
`--follow` runs the live compactor (telemetry.maintain.live_compactor) as a sidecar until Ctrl-C,
for jobs whose rank 0 cannot spare the thread.
"""

from __future__ import annotations

import argparse
import sys
import threading

from tqdm import tqdm

from app.cli.common import EXIT_FAILED, EXIT_OK, archive_url, one_line
from telemetry.maintain.compaction import all_runs, compact
from telemetry.maintain.live_compactor import LivePolicy, PassReport, follow
from telemetry.read.catalog import Catalog
from telemetry.read.runs import resolve_run
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import open_fs

DEFAULT_GRACE_S = 600.0  # readers that listed the archive before compaction may still read replaced files


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def summary_line(report) -> str:
    """One line: what was written, replaced and removed (the CLI's stdout)."""
    text = (f"compacted {report.runs} run(s) in {report.seconds:.1f} s: {report.files_written} file(s) written, "
            f"{report.segments_replaced} segment(s) replaced, {report.rows:,} rows, "
            f"{_mib(report.bytes_before)} -> {_mib(report.bytes_after)}")
    if report.lod_files:
        text += f", {report.lod_files} LOD table(s) rebuilt"
    text += f", {report.removed} old file(s) removed"
    if report.skipped_live:
        text += f", {report.skipped_live} segment(s) of live writers skipped"
    if report.problems:
        text += f", {len(report.problems)} problem(s)"
    return text


def _resolve_run(url: str, run: str) -> str:
    """A run's id, display name or name -> its id (telemetry.read.runs: the rule every command shares)."""
    fs, root = open_fs(url)
    return resolve_run(fs, root, run, where=url)


def cmd_compact(args: argparse.Namespace) -> int:
    url = archive_url(args.url)
    grace_s = DEFAULT_GRACE_S if args.grace is None else args.grace
    if grace_s < 0:
        raise ArchiveError(f"--grace must be 0 or more seconds, got {grace_s:g}")
    Catalog(url).check_exists_and_version()  # a clear message for a wrong URL, before any work
    run = _resolve_run(url, args.run) if args.run else None
    if getattr(args, "follow", False):
        return _follow(url, run, grace_s, args)
    total = 1 if run else len(all_runs(url))
    with tqdm(total=total, desc="compact", unit="run", file=sys.stderr, disable=args.quiet) as bar:
        def progress(done: int, _total: int, run_id: str) -> None:
            bar.set_postfix_str(run_id, refresh=False)
            bar.update(1)

        report = compact(url, run, grace_s=grace_s, progress=progress)
    print(summary_line(report))
    for p in report.problems:
        print(f"flightlog: problem: {one_line(p)}", file=sys.stderr)
    return EXIT_FAILED if report.problems else EXIT_OK


def pass_line(n: int, report: PassReport) -> str:
    """One line per --follow pass."""
    text = (f"pass {n}: {report.runs} run(s) in {report.seconds:.1f} s: {report.parts_merged} part(s) and "
            f"{report.tier_merges} compact file(s) merged into {report.files_written}, {report.rows:,} rows, "
            f"{report.removed} old file(s) removed, lag {report.lag_s:.0f} s")
    if report.skipped_busy:
        text += f", {report.skipped_busy} run(s) held by another compactor"
    if report.problems:
        text += f", {len(report.problems)} problem(s)"
    return text


def _follow(url: str, run: str | None, grace_s: float, args: argparse.Namespace) -> int:
    if args.interval is None or not args.interval >= 0:
        raise ArchiveError(f"--interval must be 0 or more seconds, got {args.interval}")
    stop = threading.Event()
    passes = [0]

    def on_pass(report: PassReport) -> None:
        passes[0] += 1
        print(pass_line(passes[0], report), flush=True)
        for p in report.problems:
            print(f"flightlog: problem: {one_line(p)}", file=sys.stderr, flush=True)

    try:
        follow(url, stop, policy=LivePolicy(interval_s=args.interval, grace_s=grace_s),
               runs=[run] if run else None, on_pass=on_pass, max_passes=args.passes)
    except KeyboardInterrupt:
        stop.set()  # Ctrl-C: a swap is all-or-nothing, so stopping anywhere leaves the archive whole
        print(f"stopped after {passes[0]} pass(es)", file=sys.stderr)
    return EXIT_OK
