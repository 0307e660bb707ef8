"""Run resolution: the one rule that turns what a person typed (an id, a name, a display name) into a run id.

Every command and API that takes a run goes through `match_run`: `Archive.resolve_run` with the runs
it knows from its views, and the commands that work on files without DuckDB (`compact --run`,
`import evals --run`) with `known_runs`, which reads the same facts from the file listing and the
small `runs` table. The order: the id itself, then a display name (`runs.name`, e.g. a W&B run's
name), then the id the name's slug gives (`data_schema.layout.run_id_from_name`).
"""

from __future__ import annotations

from collections.abc import Mapping

import fsspec
import pyarrow.parquet as pq

from data_schema.layout import join, parse_path, run_id_from_name
from data_schema.tables import TABLES
from telemetry.store.errors import UnknownRunError
from telemetry.store.fs import list_files
from telemetry.store.liveness import live_filter, read_records


def match_run(run: str, known: Mapping[str, str | None], *, where: str = "the archive") -> str:
    """`run` -> the run id it names among `known` (run id -> display name or None).

    Raises UnknownRunError listing the known runs (or how to list them), or naming the runs an
    ambiguous display name could mean.
    """
    run = str(run)
    if run in known:
        return run
    by_name = sorted(rid for rid, name in known.items() if name == run)
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise UnknownRunError(f"run name {run!r} is ambiguous: it names runs {', '.join(by_name)}; pass a run id")
    try:
        slug = run_id_from_name(run)
    except ValueError:  # a name no id can be made of is simply unknown
        slug = None
    if slug in known:
        return slug
    ids = sorted(known)
    hint = f"known runs: {', '.join(ids)}" if 0 < len(ids) <= 20 else (
        f"{len(ids)} runs are known; `flightlog runs` lists them" if ids else "the archive holds no runs yet")
    raise UnknownRunError(f"unknown run {run!r} in {where}: {hint}")


def known_runs(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str | None]:
    """Run id -> display name of every run with a data file, read from the listing and the `runs` table
    (its latest row per run), without DuckDB."""
    known: dict[str, str | None] = {}
    for table in TABLES:
        for rel in list_files(fs, root, table):
            key = parse_path(rel)
            if key is not None:
                known.setdefault(key.run_id, None)
    runs_files = list_files(fs, root, "runs")
    if runs_files:
        keep, _ = live_filter(runs_files, read_records(fs, root))
        latest: dict[str, tuple] = {}
        for rel in sorted(keep):
            with fs.open(join(root, rel), "rb") as f:
                rows = pq.read_table(f, columns=["run_id", "name", "updated_at"]).to_pylist()
            for row in rows:  # runs is a state log: the newest row per run holds its name
                stamp, before = row["updated_at"], latest.get(row["run_id"])
                if before is None or before[0] is None or (stamp is not None and stamp >= before[0]):
                    latest[row["run_id"]] = (stamp, row["name"])
        for rid, (_, name) in latest.items():
            known[rid] = name
    return known


def resolve_run(fs: fsspec.AbstractFileSystem, root: str, run: str, *, where: str | None = None) -> str:
    """`run` (an id, a display name or a name) -> its run id in the archive at `root`; UnknownRunError otherwise."""
    return match_run(run, known_runs(fs, root), where=where or root)
