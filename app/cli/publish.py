"""`flightlog publish RUN... --to URL`: a compacted, checksummed copy of runs for anyone to read.

The handler prints one summary line on stdout (warnings on stderr) and lets ArchiveError reach
the CLI, which prints it as one line. `flightlog verify URL` (app/cli/verify.py) checks a
publication's checksums and manifest.
"""

from __future__ import annotations

import argparse
import sys

from app.cli.common import EXIT_OK
from telemetry.maintain.publish import PublishConfig, publish
from telemetry.store.errors import ArchiveError


def cmd_publish(args: argparse.Namespace) -> int:
    if args.all and args.runs:
        raise ArchiveError("pass run names or --all, not both")
    if not args.all and not args.runs:
        raise ArchiveError("name the runs to publish (`flightlog runs` lists them), or pass --all")
    config = PublishConfig(overwrite=args.overwrite, spark_compatible=args.spark_compatible, progress=not args.quiet)
    report = publish(None if args.all else args.runs, args.to, source=args.archive, config=config)
    for w in report.warnings:
        print(f"flightlog: warning: {w}", file=sys.stderr)
    print(report.line())
    print(f"check it with `flightlog verify {args.to}`; once served, `flightlog ui https://host/path` opens it")
    return EXIT_OK
