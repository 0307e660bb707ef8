"""`flightlog publish RUN... --to URL`: a compacted, checksummed copy of runs for anyone to read.

app/cli.py calls `add_publish_commands(subparsers)`. The handler prints one summary line on
stdout (warnings on stderr) and lets ArchiveError reach the CLI, which prints it as one line.
`flightlog verify URL` (app/cli.py) checks a publication's checksums and manifest.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK = 0


def cmd_publish(args: argparse.Namespace) -> int:
    from telemetry.maintain.publish import PublishConfig, publish
    from telemetry.store.errors import ArchiveError

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


def add_publish_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `publish` on the CLI's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "publish", help="publish runs as a compacted, checksummed archive (folder, s3://, hf://)",
        description="Write a self-contained, compacted copy of the chosen runs with a manifest and sha256 "
                    "checksums. A folder served by any static web host then opens with `flightlog ui "
                    "https://host/path`; `flightlog verify URL` checks it.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names or ids (see `flightlog runs`)")
    p.add_argument("--to", required=True, metavar="URL",
                   help="destination: a folder, s3://bucket/path, hf://datasets/user/repo (needs huggingface_hub)")
    p.add_argument("--archive", metavar="SRC", help="source archive (default $FLIGHTLOG_ARCHIVE or ./flightlog-archive)")
    p.add_argument("--all", action="store_true", help="publish every run of the source archive")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier publication at the destination")
    p.add_argument("--spark-compatible", action="store_true",
                   help="PLAIN float encoding instead of BYTE_STREAM_SPLIT, for older Parquet readers "
                        "(Spark 4, DuckDB, Polars and pandas do not need it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_publish)
    return p
