"""What a new writer learns from the archive before its first write, and the run's identity rows.

The archive is the only record of earlier launches of a run. File names carry (attempt, rank,
seq) (data_schema.layout), so a listing answers both questions a writer has at open:
- which attempt it is, when not told: one more than the highest attempt any `attempts` segment
  or staged file names (rank 0 writes that row at open, which claims the number);
- which seq it starts from, when told an attempt that may already have files: the first seq no
  file of (attempt, file rank) uses, so a reused attempt never overwrites a file.
Rank 0 writes the `runs` and `attempts` rows ("running" at open, the end status at close); a
resumed run (attempt > 0) keeps its `created_at` and the fields this launch did not give.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import fsspec

from data_schema.layout import join, parse_path, partition_dir, staging_dir
from data_schema.tables import TABLES
from telemetry.store import encodings, staging
from telemetry.store.fs import list_files
from telemetry.write.once_log import log
from telemetry.write.record_batches import json_text

# Fields of the runs row a resumed launch takes from the latest row when it does not give them.
_CARRIED_RUN_FIELDS = ("project", "config_json", "git_sha", "framework", "dp_size", "tp_size", "pp_size")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_attempt(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> int:
    found = [-1]
    for folder in (partition_dir("attempts", run_id), staging_dir("attempts", run_id)):
        for rel in list_files(fs, root, folder):
            key = parse_path(rel)
            if key and key.attempt is not None:
                found.append(key.attempt)
    return max(found) + 1


def next_seq(fs: fsspec.AbstractFileSystem, root: str, run_id: str, attempt: int, file_rank: int) -> int:
    """First free seq of (attempt, file rank): a reused attempt must not overwrite files."""
    top = 0
    for table in TABLES:
        for folder in (partition_dir(table, run_id), staging_dir(table, run_id)):
            for rel in list_files(fs, root, folder):
                key = parse_path(rel)
                if key and key.attempt == attempt and key.rank == file_rank and key.seq:
                    top = max(top, key.seq)
    return top + 1


def latest_run_row(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> dict | None:
    """The run's `runs` row with the latest `updated_at`, from its segments and staged files."""
    rows: list[dict] = []
    for folder in (partition_dir("runs", run_id), staging_dir("runs", run_id)):
        for rel in list_files(fs, root, folder):
            key = parse_path(rel)
            if key is None:
                continue
            raw = fs.cat_file(join(root, rel))
            if key.kind == "staged":
                dec = staging.decode_staged(raw, "runs")
                if dec.data is None:
                    continue
                rows.extend(staging.full_table("runs", dec.data, run_id=run_id, attempt=0, rank=0).to_pylist())
            else:
                rows.extend(encodings.read_segment(raw).to_pylist())
    rows = [r for r in rows if r.get("updated_at") is not None]
    return max(rows, key=lambda r: r["updated_at"]) if rows else None


class RunIdentity:
    """The `runs` and `attempts` rows of one launch: "running" at open, the end status at close."""

    def __init__(self, *, run_id: str, attempt: int, now: dt.datetime, run: dict[str, Any],
                 attempt_fields: dict[str, Any]) -> None:
        # run: project, name, world_size, dp/tp/pp_size, config (a dict), git_sha, host, framework
        # attempt_fields: resumed_from_step, resumed_from_checkpoint, seed, reason
        fields = dict(run)
        fields["config_json"] = json_text(fields.pop("config"))
        self.run_row: dict[str, Any] = {"run_id": run_id, "created_at": now, "status": "running", **fields,
                                        "updated_at": now}
        self.attempt_row: dict[str, Any] = {"run_id": run_id, "attempt": attempt, "started_at": now,
                                            "ended_at": None, "end_status": None, **attempt_fields,
                                            "updated_at": now}

    def carry_from(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        """A resumed run keeps its created_at and the fields this launch did not give."""
        run_id = self.run_row["run_id"]
        try:
            latest = latest_run_row(fs, root, run_id)
        except Exception as exc:  # noqa: BLE001 - best effort: the new row is still a valid row of the run
            log.warning("flightlog: cannot read the earlier runs row of %r (%r); this launch's row keeps "
                        "only the fields it was given", run_id, exc)
            return
        if not latest:
            return
        self.run_row["created_at"] = latest.get("created_at") or self.run_row["created_at"]
        for k in _CARRIED_RUN_FIELDS:
            if self.run_row.get(k) is None and latest.get(k) is not None:
                self.run_row[k] = latest[k]

    def open_rows(self) -> list[tuple[str, dict]]:
        return [("runs", dict(self.run_row)), ("attempts", dict(self.attempt_row))]

    def close_rows(self, status: str) -> list[tuple[str, dict]]:
        now = utc_now()
        return [("attempts", {**self.attempt_row, "ended_at": now, "end_status": status, "updated_at": now}),
                ("runs", {**self.run_row, "status": status, "updated_at": now})]
