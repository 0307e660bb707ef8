"""`flightlog incidents RUN`: a run's incidents per data chunk, across attempts and seeds, then each
incident with its rank (every rank reports its own NaN: rows that differ only by rank are not duplicates)."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.archive import open_for_command
from app.cli.common import EXIT_OK
from app.cli.output import write_frame

TABLE_COLUMNS = ["attempt", "seed", "rank", "step", "kind", "severity", "data_chunk", "message"]


def cmd_incidents(args: argparse.Namespace) -> int:
    archive = open_for_command(args.archive)
    run_id = archive.resolve_run(args.run)
    chunks = archive.chunk_incidents(run_id)
    events = archive.incidents(run_id)
    if events.empty:
        print(f"no incidents in run {run_id}")
        return EXIT_OK
    # the ranks of one step side by side, in rank order (the archive orders by step and attempt only)
    events = events.sort_values(["step", "attempt", "rank"], na_position="last", kind="stable")
    if args.format != "table":
        write_frame(events, args.format)
        return EXIT_OK
    print(f"incidents of run {run_id} per data chunk (across attempts and seeds):")
    if chunks.empty:
        print("  (no incident carries a data chunk)")
    for row in chunks.itertuples():
        seeds = ", ".join(str(s) for s in _present(row.seeds))
        flag = "  <- fails in every attempt" if row.n_attempts > 1 else ""
        print(f"  chunk {row.data_chunk}: {row.n_incidents} incident(s) in {row.n_attempts} attempt(s), "
              f"seeds [{seeds}], kinds {', '.join(row.kinds)}, steps {row.first_step}-{row.last_step}{flag}")
    print(f"\n{len(events)} incident(s):")
    write_frame(events[TABLE_COLUMNS], "table")
    return EXIT_OK


def _present(values: Any) -> list:
    """The non-null items of a list column's cell (DuckDB gives a list, an array, or NA)."""
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        return []
    return [v for v in values if v is not None and v == v]
