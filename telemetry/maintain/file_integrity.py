"""`verify`: the integrity of an archive's files, as a reader will meet them.

Checked for every live file: its Parquet footer opens, its schema fits its table, required columns
hold no nulls (footer statistics), every data page decodes (`deep=True`), and its row count matches
the manifest's; for an archive `flightlog publish` wrote, every file's size and sha256 too
(telemetry.maintain.publication_check). Staged files awaiting recovery and leftover temp files are
reported, not counted as problems.

Readers skip a broken file by its footer alone (cheap, at every open); `verify` also decodes
every page, which finds what a footer cannot show: a flipped bit in a data page makes DuckDB fail
every query over the table, so such a file must be found and set aside (`flightlog index
--quarantine`, telemetry.maintain.quarantine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from data_schema import SchemaError, conform, schema
from data_schema.layout import is_temp, parse_path
from telemetry.maintain.publication_check import publication_problems
from telemetry.read.broken_files import page_problem
from telemetry.read.catalog import Catalog
from telemetry.read.footers import LiveFile, schema_problems

NEWER_FORMAT = "written by a newer flightlog"  # how a skipped file of a newer format is described


@dataclass(slots=True)
class VerifyReport:
    problems: list[str]  # anything that makes the archive wrong, one line each ("path: what is wrong"); empty means ok
    files_checked: int
    rows: int
    rows_by_table: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # staged write-ahead files awaiting recovery
    warnings: list[str] = field(default_factory=list)  # harmless findings (leftover temp files, stale manifest)
    bad_files: dict[str, str] = field(default_factory=dict)  # files readers skip: {relative path: what is wrong}

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken_files(self) -> dict[str, str]:
        """Bad files that are broken (not merely of a newer format): what quarantine moves aside."""
        return {rel: why for rel, why in self.bad_files.items() if not why.startswith(NEWER_FORMAT)}


def _check_file(f: LiveFile) -> list[str]:
    problems = []
    table = f.key.table
    try:
        md = pq.read_metadata(f.local)
        arrow_schema = md.schema.to_arrow_schema()
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        return [f"{f.rel}: cannot read its Parquet footer ({exc})"]
    misfits = schema_problems(table, arrow_schema)
    try:
        conform(table, arrow_schema.empty_table())
    except SchemaError as exc:
        misfits.append(str(exc))
    if misfits:
        problems.append(f"{f.rel}: does not fit table {table!r}: {'; '.join(misfits)}")
    # required columns must hold no nulls: the footer's statistics say so without reading data
    required = {fld.name for fld in schema(table) if not fld.nullable}
    for i in range(md.num_columns):
        name = md.schema.column(i).path
        if name not in required:
            continue
        nulls = 0
        for g in range(md.num_row_groups):
            stats = md.row_group(g).column(i).statistics
            if stats is not None and stats.has_null_count:
                nulls += stats.null_count
        if nulls:
            problems.append(f"{f.rel}: required column {name!r} has {nulls} missing value(s)")
    return problems


def verify(url: str | None = None, *, storage_options: dict | None = None, cache_dir: str | None = None,
           deep: bool = True, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every live file of the archive at `url`; ArchiveError if there is no archive there.

    `deep` decodes every data page (slower: reads the whole archive); `progress(done, total)`
    is called as files are checked (the CLI draws a progress bar with it).
    """
    catalog = Catalog(url, storage_options=storage_options, cache_dir=cache_dir)
    catalog.check_exists_and_version()
    snap = catalog.scan()
    report = VerifyReport(problems=[], files_checked=0, rows=0)
    report.problems += [p for p in snap.problems if not any(p.startswith(f"skipped {rel}:") for rel in snap.skipped)]
    for rel, why in snap.skipped.items():
        report.bad_files[rel] = why
        report.problems.append(f"{rel}: {why}")
    live = snap.all_files()
    for i, f in enumerate(live):
        report.files_checked += 1
        if is_temp(f.rel):  # impossible by construction: a reader must never see one
            report.problems.append(f"{f.rel}: an in-progress file is visible to readers")
        found = _check_file(f)
        if deep and not found:
            broken = page_problem(f.local)
            if broken is not None:
                report.bad_files[f.rel] = broken
                found = [f"{f.rel}: {broken}"]
        report.problems.extend(found)
        report.rows += f.rows
        report.rows_by_table[f.key.table] = report.rows_by_table.get(f.key.table, 0) + f.rows
        if progress is not None:
            progress(i + 1, len(live))
    report.files_checked += len(snap.skipped)
    if snap.manifest is not None:
        by_rel = {f.rel: f for f in live}
        for rel, entry in sorted(snap.manifest.items()):
            rows = entry.get("rows", entry.get("num_rows"))
            f = by_rel.get(rel)
            if f is None and parse_path(rel) is None:
                continue  # not a table segment (e.g. a level-of-detail file): not ours to check
            if f is None:
                if rel not in snap.skipped:
                    report.problems.append(f"{rel}: listed in the manifest but missing from the archive "
                                           "(`flightlog index` rewrites the manifest)")
            elif rows is not None and int(rows) != f.rows:
                report.problems.append(f"{rel}: the manifest says {rows} rows, the file holds {f.rows}")
        if not snap.from_manifest:
            unlisted = [f.rel for f in live if f.rel not in snap.manifest]
            if unlisted:
                report.warnings.append(
                    f"{len(unlisted)} file(s) are not in the manifest yet (run `flightlog index`), e.g. {unlisted[0]}"
                )
    report.problems += publication_problems(catalog.fs, catalog.root, listable=catalog.listable)
    report.pending = list(snap.staged)
    report.warnings += [f"{rel}: leftover in-progress file, ignored by readers" for rel in snap.temp]
    report.warnings += [f"{rel}: not a file of the archive layout, ignored by readers" for rel in snap.ignored]
    return report

