"""`flightlog sql QUERY`: a read-only SQL query over the archive's views, in the sandbox."""

from __future__ import annotations

import argparse
import math
import sys

from app.cli.archive import open_for_command
from app.cli.common import EXIT_OK
from app.cli.output import write_table
from telemetry.read.sandbox import SandboxedQuery
from telemetry.store.errors import ArchiveError


def cmd_sql(args: argparse.Namespace) -> int:
    if args.max_rows is not None and args.max_rows < 1:
        raise ArchiveError(f"--max-rows must be a positive number of rows, got {args.max_rows}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ArchiveError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    archive = open_for_command(args.archive)
    # the user's own archive: no time limit unless asked, a generous row cap, still read-only
    sandbox = SandboxedQuery(archive, row_limit=args.max_rows, timeout_s=args.timeout)
    try:
        result = sandbox.run_result(args.query)
    finally:
        sandbox.close()  # ends the query process
    try:
        write_table(result.table, args.format, args.output)
    except OSError as exc:
        raise ArchiveError(f"cannot write --output {args.output}: {exc.strerror or exc}") from None
    if result.truncated:
        print(f"flightlog: warning: output cut at {args.max_rows} rows (raise it with --max-rows N)", file=sys.stderr)
    return EXIT_OK
