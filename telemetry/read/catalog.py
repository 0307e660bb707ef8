"""Which files of an archive are live, and where DuckDB can read them.

Discovery lists every table folder (or reads `_manifest/manifest.json` where the store
cannot list, e.g. http), keeps only names `data_schema.layout.parse_path` accepts (never
temp files, never staged write-ahead), and opens each file's footer once (telemetry.read.footers):
a file that does not open is skipped and reported, not fatal. Remote archives are copied file by
file into a local cache folder (telemetry.read.remote_cache), so DuckDB (and the SQL sandbox)
only ever reads local files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from data_schema import FORMAT_VERSION, TABLES
from data_schema.layout import (
    MANIFEST_FILE,
    QUARANTINE_DIR,
    ROOT_FILE,
    STAGING_DIR,
    FileKey,
    is_temp,
    join,
    parse_lod_path,
    parse_path,
)
from telemetry.read.broken_files import page_problem
from telemetry.read.footers import LiveFile, as_version, one_line, parquet_error, read_footer
from telemetry.read.lod import choose_lod, info_from_metadata
from telemetry.read.remote_cache import default_cache_dir, localize
from telemetry.store.errors import ArchiveError, ArchiveNotFoundError, FormatVersionError
from telemetry.store.fs import default_archive_url, is_local, open_fs
from telemetry.store.liveness import live_filter, read_records, resolve
from telemetry.store.manifest_file import parse_manifest, read_manifest

log = logging.getLogger(__name__)

# Stores that cannot list a folder: the manifest says which files are live.
_UNLISTABLE = {"http", "https"}


def _protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


@dataclass(slots=True)
class Snapshot:
    """The live files of an archive at one moment, plus what discovery had to say."""

    files: dict[str, list[LiveFile]]
    staged: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # files readers leave out, {relative path: what is wrong}; each also has a "skipped ..." line in problems
    skipped: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, dict] | None = None
    from_manifest: bool = False
    version: str = ""
    replaced: list[str] = field(default_factory=list)  # parts swapped out by compaction (not read)
    lod: dict[str, Any] = field(default_factory=dict)  # run_id -> telemetry.read.lod.LodInfo in use

    def all_files(self) -> list[LiveFile]:
        return [f for table in TABLES for f in self.files.get(table, [])]


class Catalog:
    """Discovery and local caching of one archive's files (no DuckDB here)."""

    def __init__(self, url: str | None = None, *, storage_options: dict | None = None, cache_dir: str | None = None):
        url = str(url) if url is not None else default_archive_url()
        self.url = url
        self.storage_options = storage_options
        try:
            self.fs, self.root = open_fs(url, storage_options)
        except (ValueError, ImportError, OSError) as exc:
            raise ArchiveNotFoundError(f"cannot open archive {url!r}: {exc}") from None
        self.local = is_local(self.fs)
        self.listable = not (_protocols(self.fs) & _UNLISTABLE)
        if self.local:
            self.root = os.path.abspath(self.root)
            self.local_root = self.root
        else:
            self.local_root = os.path.abspath(cache_dir or default_cache_dir(url))
        self._footers: dict[str, tuple[tuple, LiveFile | str]] = {}
        self._records: dict[str, dict] = {}  # compaction records (immutable as far as readers care)
        self._lod_footers: dict[str, tuple[tuple, Any]] = {}
        self.root_problems: list[str] = []  # what is wrong with flightlog.json (set by check_exists_and_version)
        # files found broken past their footer (a corrupt data page): left out until they change
        self.broken: dict[str, tuple[tuple, str]] = {}
        self._pages_ok: dict[str, tuple] = {}

    # -- archive-level checks ------------------------------------------------------------
    def path(self, rel: str) -> str:
        return join(self.root, rel)

    def read_json(self, rel: str) -> Any | None:
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                return json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if "404" in str(exc) or "Not Found" in str(exc):
                return None
            raise ArchiveError(f"cannot read {rel} of archive {self.url!r}: {exc}") from None

    def check_exists_and_version(self) -> dict | None:
        """The archive's flightlog.json (None for an archive without one); errors for missing/newer.

        An unreadable flightlog.json is a problem of the archive, not a reason to refuse its
        segments: each file carries its own format version (checked per file in `_footer`).
        """
        try:
            root_info = self.read_json(ROOT_FILE)
        except ArchiveError as exc:
            root_info = {}
            self.root_problems = [f"{ROOT_FILE}: {one_line(exc)}; rewrite it as "
                                  f'{{"format_version": {FORMAT_VERSION}}} (readers go on without it)']
        if root_info is None and not self._has_any_table():
            raise ArchiveNotFoundError(
                f"no flightlog archive at {self.url}: found neither {ROOT_FILE} nor table folders. "
                "Pass the archive's URL (--archive URL or $FLIGHTLOG_ARCHIVE), or record a run first "
                "(`flightlog demo` writes one)"
            )
        if root_info is not None and not isinstance(root_info, dict):
            self.root_problems = [f"{ROOT_FILE}: holds {type(root_info).__name__}, not a JSON object "
                                  "(readers go on without it)"]
        if isinstance(root_info, dict):
            version = as_version(root_info.get("format_version", FORMAT_VERSION))
            if version is None:
                self.root_problems = [f"{ROOT_FILE}: format_version {root_info.get('format_version')!r} is not "
                                      "a whole number (readers go on as if it were "
                                      f"{FORMAT_VERSION})"]
            elif version > FORMAT_VERSION:
                raise FormatVersionError(
                    f"archive {self.url} has format version {version}, newer than this flightlog reads "
                    f"({FORMAT_VERSION}): upgrade flightlog (pip install -U flightlog)"
                )
        return root_info if isinstance(root_info, dict) else None

    def _has_any_table(self) -> bool:
        if not self.listable:
            return self.read_json(MANIFEST_FILE) is not None
        try:
            return any(self.fs.isdir(self.path(t)) for t in TABLES) or self.fs.exists(self.path(MANIFEST_FILE))
        except OSError:
            return False

    # -- discovery --------------------------------------------------------------------------
    def _list(self) -> dict[str, int | None]:
        """Every file under the root as {relative path: size}."""
        self.fs.invalidate_cache(self.root)  # object stores cache listings; we want the present
        prefix = self.root.rstrip("/") + "/"
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, int | None] = {}
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            path = path if not self.local else path.replace(os.sep, "/")
            if path.startswith(prefix):
                out[path[len(prefix):]] = info.get("size")
        return out

    def _read_manifest(self) -> dict[str, dict] | None:
        try:
            obj = read_manifest(self.fs, self.root)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ArchiveError(f"the manifest of {self.url} is not valid JSON: {exc}") from None
        return parse_manifest(obj) if obj is not None else None

    def scan(self) -> Snapshot:
        """List (or read the manifest), cache remote files locally, open every footer once."""
        snap = Snapshot(files={t: [] for t in TABLES})
        snap.problems.extend(self.root_problems)
        try:
            snap.manifest = self._read_manifest()
        except (ArchiveError, OSError, ValueError) as exc:
            snap.problems.append(f"cannot read the manifest: {exc}")
        if self.listable:
            listing = self._list()
        else:
            if snap.manifest is None and snap.problems[len(self.root_problems):]:
                # the manifest is this store's only listing: unreadable, nothing can be found
                raise ArchiveError(f"archive {self.url} cannot be listed and {snap.problems[-1]}: run "
                                   "`flightlog index` where the archive is written, then publish it again")
            if snap.manifest is None:
                raise ArchiveError(
                    f"archive {self.url} cannot be listed and has no {MANIFEST_FILE}: "
                    "run `flightlog index` where the archive is written, then publish it again"
                )
            listing = {rel: e.get("bytes", e.get("size")) for rel, e in snap.manifest.items()}
            snap.from_manifest = True
        candidates: list[tuple[str, FileKey, int | None]] = []
        lod_candidates: list[tuple[str, Any, int | None]] = []
        for rel in sorted(listing):
            top = rel.split("/", 1)[0]
            if top in (QUARANTINE_DIR,) or top.startswith("_") and top != STAGING_DIR:
                continue
            if is_temp(rel):
                snap.temp.append(rel)
                continue
            key = parse_path(rel)
            if key is None and parse_lod_path(rel) is not None:
                lod_candidates.append((rel, None, listing[rel]))
                continue
            if key is None:
                if top in TABLES or top == STAGING_DIR:
                    snap.ignored.append(rel)
                continue
            if key.kind == "staged":
                snap.staged.append(rel)
                continue
            candidates.append((rel, key, listing[rel]))
        candidates = self._apply_compactions(candidates, snap)
        local_paths = self._localize(candidates, snap)
        for rel, key, size in candidates:
            local = local_paths.get(rel)
            if local is None:
                continue
            info = self._footer(rel, key, local, size)
            if isinstance(info, str):
                snap.skipped[rel] = info
                snap.problems.append(f"skipped {rel}: {info}")
            else:
                snap.files[key.table].append(info)
        if lod_candidates:
            self._choose_lods(lod_candidates, snap)
        digest = hashlib.sha256()
        for f in snap.all_files():
            digest.update(f"{f.rel}\0{f.size}\0{f.rows}\n".encode())
        for run_id, info in sorted(snap.lod.items()):
            digest.update(f"lod\0{run_id}\0{info.rel}\n".encode())
        snap.version = digest.hexdigest()[:16]
        return snap

    # -- compaction and level of detail ----------------------------------------------------
    def _apply_compactions(self, candidates: list[tuple[str, FileKey, int | None]], snap: Snapshot
                           ) -> list[tuple[str, FileKey, int | None]]:
        """Drop parts replaced by a compact file, and compact files without an accepted record."""
        compacts = [rel for rel, key, _ in candidates if key.kind == "compact"]
        if not compacts:
            return candidates
        try:
            records = read_records(self.fs, self.root, cache=self._records,
                                   compact_rels=None if self.listable else compacts)
        except Exception as exc:  # noqa: BLE001 - without records no compact file counts: parts stay live
            log.warning("cannot read the compaction records of %s: %s", self.url, one_line(exc))
            snap.problems.append(f"cannot read compaction records: {exc}")
            records = []
        rels = [rel for rel, _, _ in candidates]
        _, skip = live_filter(rels, records)
        snap.replaced = sorted(skip)
        if snap.manifest:
            # the manifest may still list replaced parts (deleted after the grace period): not live files
            for rel in skip | resolve(records, set(rels)).replaced:
                snap.manifest.pop(rel, None)
        return [c for c in candidates if c[0] not in skip]

    def _choose_lods(self, lod_candidates: list[tuple[str, Any, int | None]], snap: Snapshot) -> None:
        local_paths = self._localize(lod_candidates, snap)
        by_run: dict[str, list[Any]] = {}
        for rel, _, _ in lod_candidates:
            local = local_paths.get(rel)
            if local is None:
                continue
            try:
                st = os.stat(local)
                stamp = (st.st_size, st.st_mtime_ns)
                if rel in self.broken and self.broken[rel][0] == stamp:
                    raise ValueError(self.broken[rel][1])
                cached = self._lod_footers.get(rel)
                info = cached[1] if cached and cached[0] == stamp else info_from_metadata(
                    rel, pq.read_metadata(local), local)
                self._lod_footers[rel] = (stamp, info)
            except Exception as exc:  # noqa: BLE001 - an unreadable LOD file is not used: curves read raw rows
                why = f"not a readable level-of-detail file ({parquet_error(exc)}); curves read raw rows instead"
                snap.skipped[rel] = why
                snap.problems.append(f"skipped {rel}: {why}")
                continue
            if info is not None:
                by_run.setdefault(info.run_id, []).append(info)
        for run_id, infos in by_run.items():
            live = [f.rel for f in snap.files.get("metrics", []) if f.key.run_id == run_id]
            chosen = choose_lod(infos, live)
            if chosen is not None:
                snap.lod[run_id] = chosen

    # -- files broken past their footer ------------------------------------------------------
    def find_broken(self, snap: Snapshot, message: str = "") -> dict[str, str]:
        """Decode the snapshot's files (the one `message` names, else all) after a query failed
        reading data; files found broken are left out of every later scan until they change.

        Each file's pages are decoded at most once per (size, mtime): a second failing query
        costs nothing more. Returns the newly found {relative path: what is wrong}.
        """
        files = [(f.rel, f.local) for f in snap.all_files()]
        files += [(i.rel, i.local) for i in snap.lod.values() if i.local]
        named = [(rel, local) for rel, local in files if local and local in message]
        found: dict[str, str] = {}
        for rel, local in named or files:
            try:
                st = os.stat(local)
            except OSError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            if self._pages_ok.get(rel) == stamp or (rel in self.broken and self.broken[rel][0] == stamp):
                continue
            why = page_problem(local)
            if why is None:
                self._pages_ok[rel] = stamp
            else:
                self.broken[rel] = (stamp, why)
                found[rel] = why
        return found

    # -- caching and footers ----------------------------------------------------------------
    def _localize(self, candidates: list[tuple[str, Any, int | None]], snap: Snapshot) -> dict[str, str]:
        """{relative path: the local file DuckDB reads}: the file itself, or its cached copy."""
        if self.local:
            return {rel: os.path.join(self.root, *rel.split("/")) for rel, _, _ in candidates}
        skipped: dict[str, str] = {}
        out = localize(self.fs, self.root, self.url, self.local_root, candidates, skipped)
        for rel, why in skipped.items():
            snap.skipped[rel] = why
            snap.problems.append(f"skipped {rel}: {why}")
        return out

    def _footer(self, rel: str, key: FileKey, local: str, size: int | None) -> LiveFile | str:
        try:
            st = os.stat(local)
        except OSError as exc:
            return f"cannot stat it ({one_line(exc)})"
        stamp = (st.st_size, st.st_mtime_ns)
        broken = self.broken.get(rel)
        if broken is not None and broken[0] == stamp:
            return broken[1]
        cached = self._footers.get(rel)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result = read_footer(rel, key, local, st)
        self._footers[rel] = (stamp, result)
        return result

