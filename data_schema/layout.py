"""Where each file of an archive lives and how it is named (storage layout v1).

```
<archive>/flightlog.json                                   format version, created_at
<archive>/_staging/<table>/run_id=<id>/a<A>-r<R>-<seq>.arrows   write-ahead (Arrow IPC stream)
<archive>/<table>/run_id=<id>/part-a<A>-r<R>-<seq>.parquet      immutable segments
<archive>/<table>/run_id=<id>/compact-<lo>-<hi>-<uuid>.parquet  compacted segments
<archive>/_manifest/manifest.json                           live files, for archives that cannot list
<archive>/_quarantine/...                                   files that failed verification
```

A segment `part-a<A>-r<R>-<seq>` holds every staged batch of that (table, run, attempt,
rank) with a sequence number up to and including `<seq>`: recovery uses that to tell a
staged batch already in Parquet from one still to convert, so a crash between the two
steps neither loses nor doubles rows. Paths are always joined with "/" (fsspec style).
Every path segment built from user input goes through `validate_run_id`, so nothing can
escape the archive folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from data_schema.tables import TABLES

ROOT_FILE = "flightlog.json"
STAGING_DIR = "_staging"
MANIFEST_DIR = "_manifest"
MANIFEST_FILE = f"{MANIFEST_DIR}/manifest.json"
QUARANTINE_DIR = "_quarantine"
SEGMENT_SUFFIX = ".parquet"
STAGED_SUFFIX = ".arrows"
# In-progress files carry this marker and never end in a reader's suffix.
TEMP_MARKER = ".tmp-"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEGMENT = re.compile(r"^part-a(?P<attempt>\d+)-r(?P<rank>\d+)-(?P<seq>\d+)\.parquet$")
_COMPACT = re.compile(r"^compact-(?P<lo>-?\d+)-(?P<hi>-?\d+)-(?P<uid>[0-9a-f]+)\.parquet$")
_STAGED = re.compile(r"^a(?P<attempt>\d+)-r(?P<rank>\d+)-(?P<seq>\d+)\.arrows$")
_PARTITION = re.compile(r"^run_id=(?P<run_id>.+)$")


class LayoutError(ValueError):
    """A name or path that does not fit the archive layout."""


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is safe as a path segment and as a hive partition value.

    Letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128
    characters, not purely numeric (engines would infer an integer partition), no '..'.
    """
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise LayoutError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (run names may be free text; run ids name folders)"
        )
    if run_id.isdigit():
        raise LayoutError(f"invalid run id {run_id!r}: a run id must not be purely numeric (try 'run-{run_id}')")
    return run_id


def run_id_from_name(name: str) -> str:
    """A valid run id derived from free-text run name (same name -> same id)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)[:128].rstrip("-._")
    if not slug:
        slug = "run"
    if slug.isdigit():
        slug = f"run-{slug}"[:128]
    if slug != name:
        # "a/b" and "a-b" must not become one run: a name the slug changed gets its own suffix
        slug = f"{slug[:119]}-{hashlib.sha1(str(name).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return validate_run_id(slug)


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise LayoutError(f"unknown table {table!r}; the archive's tables are: {', '.join(TABLES)}")
    return table


def join(*parts: str) -> str:
    """Join path parts with '/', without doubling separators (works for URLs too)."""
    out = ""
    for part in parts:
        part = str(part)
        if not part:
            continue
        out = part if not out else out.rstrip("/") + "/" + part.lstrip("/")
    return out


def partition_dir(table: str, run_id: str) -> str:
    return f"{_check_table(table)}/run_id={validate_run_id(run_id)}"


def staging_dir(table: str, run_id: str) -> str:
    return f"{STAGING_DIR}/{partition_dir(table, run_id)}"


def segment_name(attempt: int, rank: int, seq: int) -> str:
    return f"part-a{int(attempt)}-r{int(rank)}-{int(seq):08d}{SEGMENT_SUFFIX}"


def segment_path(table: str, run_id: str, attempt: int, rank: int, seq: int) -> str:
    return f"{partition_dir(table, run_id)}/{segment_name(attempt, rank, seq)}"


def staged_name(attempt: int, rank: int, seq: int) -> str:
    return f"a{int(attempt)}-r{int(rank)}-{int(seq):08d}{STAGED_SUFFIX}"


def staged_path(table: str, run_id: str, attempt: int, rank: int, seq: int) -> str:
    return f"{staging_dir(table, run_id)}/{staged_name(attempt, rank, seq)}"


def compact_name(lo: int, hi: int, uid: str) -> str:
    return f"compact-{int(lo)}-{int(hi)}-{uid}{SEGMENT_SUFFIX}"


def temp_name(final_name: str, token: str) -> str:
    """Name of the in-progress twin of `final_name`: never matches a reader's suffix."""
    return f"{final_name}{TEMP_MARKER}{token}"


def is_temp(name: str) -> bool:
    return TEMP_MARKER in name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class FileKey:
    """What a segment's or staged file's path says about its contents."""

    table: str
    run_id: str
    kind: str  # "segment" | "compact" | "staged"
    attempt: int | None = None
    rank: int | None = None
    seq: int | None = None


def parse_path(path: str) -> FileKey | None:
    """Parse a path relative to the archive root; None for anything that is not a data file.

    Temp files, unknown tables and malformed names return None, so a reader that lists a
    folder only ever sees complete files of the layout.
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts or is_temp(parts[-1]):
        return None
    staged = parts[0] == STAGING_DIR
    if staged:
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in TABLES:
        return None
    table, partition, name = parts
    m = _PARTITION.match(partition)
    if not m:
        return None
    run_id = m.group("run_id")
    try:
        validate_run_id(run_id)
    except LayoutError:
        return None
    if staged:
        s = _STAGED.match(name)
        if not s:
            return None
        return FileKey(table, run_id, "staged", int(s["attempt"]), int(s["rank"]), int(s["seq"]))
    s = _SEGMENT.match(name)
    if s:
        return FileKey(table, run_id, "segment", int(s["attempt"]), int(s["rank"]), int(s["seq"]))
    if _COMPACT.match(name):
        return FileKey(table, run_id, "compact")
    return None


# ---- level-of-detail (LOD) tables: per-bucket summaries of `metrics`, built at compaction ----
LOD_DIR = "metrics_lod"
_LOD = re.compile(r"^lod-(?P<uid>[0-9a-f]+)\.parquet$")


def lod_dir(run_id: str) -> str:
    return f"{LOD_DIR}/run_id={validate_run_id(run_id)}"


def run_dirs(run_id: str, *, staged: bool = False) -> list[str]:
    """The folders that hold a run's files: each table's partition, its LOD, and (`staged`) its staged
    write-ahead."""
    return ([partition_dir(t, run_id) for t in TABLES] + [lod_dir(run_id)]
            + ([staging_dir(t, run_id) for t in TABLES] if staged else []))


def lod_path(run_id: str, uid: str) -> str:
    return f"{lod_dir(run_id)}/lod-{uid}{SEGMENT_SUFFIX}"


def parse_lod_path(path: str) -> str | None:
    """The run id of a level-of-detail file's path (relative to the root); None for anything else."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) != 3 or parts[0] != LOD_DIR or is_temp(parts[-1]) or not _LOD.match(parts[2]):
        return None
    m = _PARTITION.match(parts[1])
    if not m:
        return None
    try:
        return validate_run_id(m.group("run_id"))
    except LayoutError:
        return None
