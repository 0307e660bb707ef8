"""`flightlog verify [URL]`: check every file of an archive or publication; exit 1 on problems."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from app.cli.common import EXIT_FAILED, EXIT_OK, archive_url, not_a_file
from telemetry.maintain.file_integrity import verify


def cmd_verify(args: argparse.Namespace) -> int:
    url = not_a_file(archive_url(args.url))
    bars: list[tqdm] = []  # opened at the first file: an archive that does not open shows no bar, only its error

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="verify", unit="file", file=sys.stderr, disable=args.quick))
        bars[0].update(done - bars[0].n)

    try:
        report = verify(url, deep=not args.quick, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if report.pending:
        print(f"{len(report.pending)} staged file(s) pending recovery (`flightlog index` converts them)")
    if report.ok:
        print(f"ok: {report.files_checked} file(s), {report.rows} row(s) checked in {url}")
        return EXIT_OK
    print(f"{len(report.problems)} problem(s) in {url}:", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return EXIT_FAILED
