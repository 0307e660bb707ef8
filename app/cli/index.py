"""`flightlog index [URL]`: recover staged data of crashed writers, compact their crashed attempts
(nobody compacted those on close), check the files (and with --quarantine move broken ones aside),
then write the manifest readers list the archive from."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tqdm import tqdm

from app.cli.common import EXIT_OK, archive_url, not_a_file, one_line
from app.cli.compact import summary_line
from telemetry.maintain.live_compactor import compact_crashed
from telemetry.maintain.manifest import write_manifest
from telemetry.maintain.quarantine import bad_file_lines, check_and_set_aside
from telemetry.maintain.recovery import recover
from telemetry.read.catalog import Catalog
from telemetry.store.fs import open_fs
from telemetry.store.manifest_file import parse_manifest

STEPS = ("recover staged data", "compact crashed attempts", "check files", "write manifest")


def cmd_index(args: argparse.Namespace) -> int:
    url = not_a_file(archive_url(args.url))
    Catalog(url).check_exists_and_version()
    with tqdm(total=len(STEPS), desc="index", unit="step", file=sys.stderr, disable=args.quiet) as bar:
        bar.set_postfix_str(STEPS[0])
        report = recover(url)
        bar.update(1)
        bar.set_postfix_str(STEPS[1])
        compacted = compact_crashed(*open_fs(url))
        bar.update(1)
        bar.set_postfix_str(STEPS[2])
        check, moved = check_and_set_aside(url, move=args.quarantine,
                                           progress=lambda i, n: bar.set_postfix_str(f"{STEPS[2]} {i}/{n}"))
        bar.update(1)
        bar.set_postfix_str(STEPS[3])
        manifest = write_manifest(url, exclude=set(check.broken_files))
        bar.update(1)
    for line in bad_file_lines(check, moved):  # after the bar: a warning never mixes with its redraws
        print(f"flightlog: warning: {line}", file=sys.stderr)
    print(f"recovered: {describe(report)}")
    if compacted.runs:
        print(f"crashed attempts: {summary_line(compacted)}")
    for p in compacted.problems:
        print(f"flightlog: warning: {one_line(p)}", file=sys.stderr)
    print(f"indexed {url}: {len(parse_manifest(manifest))} live file(s) in the manifest")
    return EXIT_OK


def describe(report: object) -> str:
    """A report dataclass as `field=value, ...` (collections as their length)."""
    if not dataclasses.is_dataclass(report):
        return str(report)
    values = ((f.name, getattr(report, f.name)) for f in dataclasses.fields(report))
    return ", ".join(f"{k}={len(v) if isinstance(v, (list, tuple, set)) else v}" for k, v in values)
