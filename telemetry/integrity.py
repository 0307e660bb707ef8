"""Integrity check of an archive: every live file opens, fits its table, and matches the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.parquet as pq

from data_schema import SchemaError, conform, schema
from data_schema.layout import is_temp, parse_path
from telemetry.catalog import Catalog, LiveFile, schema_problems


@dataclass(slots=True)
class VerifyReport:
    problems: list[str]  # anything that makes the archive wrong; empty means ok
    files_checked: int
    rows: int
    rows_by_table: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # staged write-ahead files awaiting recovery
    warnings: list[str] = field(default_factory=list)  # harmless findings (leftover temp files, stale manifest)

    @property
    def ok(self) -> bool:
        return not self.problems


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


def verify(url: str | None = None, *, storage_options: dict | None = None, cache_dir: str | None = None) -> VerifyReport:
    """Check every live file of the archive at `url`; ArchiveError if there is no archive there."""
    catalog = Catalog(url, storage_options=storage_options, cache_dir=cache_dir)
    catalog.check_exists_and_version()
    snap = catalog.scan()
    report = VerifyReport(problems=list(snap.problems), files_checked=0, rows=0)
    live = snap.all_files()
    for f in live:
        report.files_checked += 1
        if is_temp(f.rel):  # impossible by construction: a reader must never see one
            report.problems.append(f"{f.rel}: an in-progress file is visible to readers")
        report.problems.extend(_check_file(f))
        report.rows += f.rows
        report.rows_by_table[f.key.table] = report.rows_by_table.get(f.key.table, 0) + f.rows
    report.files_checked += sum(1 for p in snap.problems if p.startswith("skipped "))
    if snap.manifest is not None:
        by_rel = {f.rel: f for f in live}
        for rel, entry in sorted(snap.manifest.items()):
            rows = entry.get("rows", entry.get("num_rows"))
            f = by_rel.get(rel)
            if f is None and parse_path(rel) is None:
                continue  # not a table segment (e.g. a level-of-detail file): not ours to check
            if f is None:
                if not any(p.startswith(f"skipped {rel}:") for p in snap.problems):
                    report.problems.append(f"{rel}: listed in the manifest but missing from the archive")
            elif rows is not None and int(rows) != f.rows:
                report.problems.append(f"{rel}: the manifest says {rows} rows, the file holds {f.rows}")
        if not snap.from_manifest:
            unlisted = [f.rel for f in live if f.rel not in snap.manifest]
            if unlisted:
                report.warnings.append(
                    f"{len(unlisted)} file(s) are not in the manifest yet (run `flightlog index`), e.g. {unlisted[0]}"
                )
    report.pending = list(snap.staged)
    report.warnings += [f"{rel}: leftover in-progress file, ignored by readers" for rel in snap.temp]
    report.warnings += [f"{rel}: not a file of the archive layout, ignored by readers" for rel in snap.ignored]
    return report
