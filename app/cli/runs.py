"""`flightlog runs`: the runs of an archive."""

from __future__ import annotations

import argparse
import sys

from app.cli.archive import open_for_command
from app.cli.common import EXIT_OK
from app.cli.output import write_frame


def cmd_runs(args: argparse.Namespace) -> int:
    archive = open_for_command(args.archive)
    df = archive.runs()
    for p in archive.problems:
        print(f"flightlog: warning: {p}", file=sys.stderr)
    if df.empty:
        print(f"no runs in {archive.url} yet: `flightlog demo` records one", file=sys.stderr)
        return EXIT_OK
    write_frame(df, args.format)
    return EXIT_OK
