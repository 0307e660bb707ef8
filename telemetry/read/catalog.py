"""Which files of an archive are live, what their footers say, and where DuckDB can read them.

Discovery lists the archive (or reads `_manifest/manifest.json` where the store cannot list, e.g.
http), keeps only names `data_schema.layout.parse_path` accepts (never temp files, never staged
write-ahead), and drops what compaction records replaced (telemetry.store.liveness). What each live
file's footer says comes, in this order, from this reader's memory, from the run's index
(telemetry.store.run_index) or the manifest's entry while the listed size matches, and only then
from the footer itself (remote: one batch of ranged reads of the files' tails): an archive whose
runs are indexed opens without opening a data file, and a refresh reads only the footers of new
files. A file that does not open is skipped and reported, not fatal.

A remote archive's files are copied into a local cache only when a query reads them
(`ensure_local`, telemetry.read.remote_cache), so DuckDB and the SQL sandbox only ever read local
files; `Catalog(..., lazy=False)` copies every live file at each scan (verify reads them all).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Iterable
from typing import Any

import pyarrow.parquet as pq

from data_schema import TABLES
from data_schema.layout import (
    MANIFEST_FILE,
    QUARANTINE_DIR,
    STAGING_DIR,
    FileKey,
    is_temp,
    join,
    parse_lod_path,
    parse_path,
)
from telemetry.read.archive_root import check_root, read_json
from telemetry.read.broken_files import page_problem
from telemetry.read.footer_facts import FactSource, Stamp
from telemetry.read.footers import LiveFile, from_facts, one_line, parquet_error
from telemetry.read.listing import list_archive, list_run_ids, list_runs
from telemetry.read.lod import choose_lod, info_from_json
from telemetry.read.remote_cache import FileCache, default_cache_dir
from telemetry.read.snapshot import Snapshot
from telemetry.store.errors import ArchiveError, ArchiveNotFoundError
from telemetry.store.fs import default_archive_url, is_local, open_fs
from telemetry.store.liveness import live_filter, read_records, resolve
from telemetry.store.manifest_file import parse_manifest, read_manifest
from telemetry.store.run_index import file_facts, run_of_index

log = logging.getLogger(__name__)

# Stores that cannot list a folder: the manifest says which files are live.
_UNLISTABLE = {"http", "https"}
_UNREADABLE = "not a readable Parquet file ("


def _protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


class Catalog:
    """Discovery, footer facts and (remote archives) the local cache of one archive's files (no DuckDB here)."""

    reads_staged = False  # a scan of some runs lists their staged write-ahead only for a live view (live.py)

    def __init__(self, url: str | None = None, *, storage_options: dict | None = None, cache_dir: str | None = None,
                 cache_max_bytes: int | None = None, lazy: bool = False):
        url = str(url) if url is not None else default_archive_url()
        self.url = url
        self.storage_options = storage_options
        try:
            self.fs, self.root = open_fs(url, storage_options)
        except (ValueError, ImportError, OSError) as exc:
            raise ArchiveNotFoundError(f"cannot open archive {url!r}: {exc}") from None
        self.local = is_local(self.fs)
        self.listable = not (_protocols(self.fs) & _UNLISTABLE)
        self.lazy = lazy
        self.cache: FileCache | None = None
        if self.local:
            self.root = os.path.abspath(self.root)
            self.local_root = self.root
        else:
            self.local_root = os.path.abspath(cache_dir or default_cache_dir(url))
            self.cache = FileCache(self.fs, self.root, url, self.local_root, cache_max_bytes)
        self._footers: dict[str, tuple[Stamp, LiveFile | str]] = {}
        self._records: dict[str, dict] = {}  # compaction records (immutable as far as readers care)
        self._lod_footers: dict[str, tuple[Stamp, Any]] = {}
        self._sizes: dict[str, int | None] = {}  # listed size of each live file at the last scan
        self._keys: dict[str, FileKey] = {}
        self.root_problems: list[str] = []  # what is wrong with flightlog.json (set by check_exists_and_version)
        # files found broken past their footer (a corrupt data page): left out until they change
        self.broken: dict[str, tuple[Stamp, str]] = {}
        self._pages_ok: dict[str, Stamp] = {}
        # remote files that could not be copied when a query wanted them: left out until listed anew
        self.unfetchable: dict[str, tuple[Stamp, str]] = {}
        # footer facts this reader does not remember: from indexes or the manifest, else the footers
        self.facts = FactSource(self.fs, self.root, self.url, self._local_path,
                                write_index=self.local and os.access(self.root, os.W_OK))

    @property
    def footers_read(self) -> int:
        """Footers this catalog had to open (the rest came from indexes, the manifest or memory)."""
        return self.facts.footers_read

    def _remembered(self, rel: str, stamp: Stamp) -> bool:
        return any(rel in d and d[rel][0] == stamp for d in (self._footers, self._lod_footers, self.broken,
                                                              self.unfetchable))

    # -- archive-level checks ------------------------------------------------------------
    def path(self, rel: str) -> str:
        return join(self.root, rel)

    def read_json(self, rel: str) -> Any | None:
        """A JSON file of the archive (None when it has none); ArchiveError when it does not read."""
        return read_json(self.fs, self.root, rel, self.url)

    def check_exists_and_version(self) -> dict | None:
        """The archive's flightlog.json (None for an archive without one); errors for missing/newer
        (telemetry.read.archive_root); what is wrong with it goes to `root_problems`."""
        info, self.root_problems = check_root(self.fs, self.root, self.url, self.listable)
        return info

    # -- files broken past their footer ------------------------------------------------------
    def find_broken(self, snap: Snapshot, message: str = "") -> dict[str, str]:
        """Decode the snapshot's files (the one `message` names, else all) after a query failed
        reading data; files found broken are left out of every later scan until they change.

        Each file's pages are decoded at most once per (size, mtime): a second failing query
        costs nothing more. Returns the newly found {relative path: what is wrong}.
        """
        files = snap.local_paths()
        named = [(rel, local) for rel, local in files if local and local in message]
        found: dict[str, str] = {}
        for rel, local in named or files:
            try:
                st = os.stat(local)
            except OSError:
                continue
            stamp = self._stamp(st)
            if self._pages_ok.get(rel) == stamp or (rel in self.broken and self.broken[rel][0] == stamp):
                continue
            why = page_problem(local)
            if why is None:
                self._pages_ok[rel] = stamp
            else:
                self.broken[rel] = (stamp, why)
                found[rel] = why
        return found

    # -- discovery --------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, dict] | None:
        try:
            obj = read_manifest(self.fs, self.root)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ArchiveError(f"the manifest of {self.url} is not valid JSON: {exc}") from None
        return parse_manifest(obj) if obj is not None else None

    def _stamp(self, st: os.stat_result) -> Stamp:
        return (st.st_size, st.st_mtime_ns if self.local else None)

    def run_ids(self) -> set[str]:
        """The runs the archive holds, from its tables' folders (or the manifest), without listing files."""
        if self.listable:
            return list_run_ids(self.fs, self.root)
        return {r for r in map(_run_of, self._read_manifest() or {}) if r is not None}

    def scan(self, runs: Collection[str] | None = None) -> Snapshot:
        """List (or read the manifest), drop replaced files, learn every live file's footer facts; with
        `runs`, of those runs only (what a query about them reads, whatever the archive's size)."""
        scope = None if runs is None else frozenset(runs)
        snap = Snapshot(files={t: [] for t in TABLES}, scope=scope)
        snap.problems.extend(self.root_problems)
        try:  # a listable store's scan of some runs needs no manifest (verify compares it on whole scans)
            snap.manifest = self._read_manifest() if scope is None or not self.listable else None
        except (ArchiveError, OSError, ValueError) as exc:
            snap.problems.append(f"cannot read the manifest: {exc}")
        if self.listable:
            listing = list_archive(self.fs, self.root) if scope is None else list_runs(
                self.fs, self.root, scope, staged=self.reads_staged)
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
            listing = {rel: (_int(e.get("bytes", e.get("size"))), None) for rel, e in snap.manifest.items()
                       if scope is None or _run_of(rel) in scope}
            snap.from_manifest = True
        candidates: list[tuple[str, FileKey, Stamp]] = []
        lod_candidates: list[tuple[str, str, Stamp]] = []
        index_stamps: dict[str, Stamp] = {}
        for rel in sorted(listing):
            top = rel.split("/", 1)[0]
            if (run := run_of_index(rel)) is not None:
                index_stamps[run] = listing[rel]
                continue
            if top in (QUARANTINE_DIR,) or top.startswith("_") and top != STAGING_DIR:
                continue
            if is_temp(rel):
                snap.temp.append(rel)
                continue
            key = self._keys.get(rel) or parse_path(rel)  # names are immutable: parsed once
            if key is not None:
                self._keys[rel] = key
            if key is None and (lod_run := parse_lod_path(rel)) is not None:
                lod_candidates.append((rel, lod_run, listing[rel]))
                continue
            if key is None:
                if top in TABLES or top == STAGING_DIR:
                    snap.ignored.append(rel)
                continue
            if key.kind == "staged":
                snap.staged.append(rel)
                continue
            candidates.append((rel, key, listing[rel]))
        candidates = self._apply_compactions(candidates, snap, scope)
        self._sizes = {rel: stamp[0] for rel, _, stamp in candidates} | {r: s[0] for r, _, s in lod_candidates}
        items = [(rel, key.run_id, stamp) for rel, key, stamp in candidates] + lod_candidates
        fresh = [it for it in items if not self._remembered(it[0], it[2])]
        facts = self.facts.resolve(fresh, snap.manifest if snap.from_manifest else None, index_stamps,
                                   keep=set(self._sizes))
        for rel, key, stamp in candidates:
            info = self._live_file(rel, key, stamp, facts.get(rel))
            if isinstance(info, str):
                snap.skipped[rel] = info
                snap.problems.append(f"skipped {rel}: {info}")
            elif info is not None:
                snap.files[key.table].append(info)
        if lod_candidates:
            self._choose_lods(lod_candidates, facts, snap)
        if not self.lazy and self.cache is not None:
            self._materialize(snap)
        digest = hashlib.sha256()
        for f in snap.all_files():
            digest.update(f"{f.rel}\0{f.size}\0{f.rows}\n".encode())
        for run_id, info in sorted(snap.lod.items()):
            digest.update(f"lod\0{run_id}\0{info.rel}\n".encode())
        snap.version = digest.hexdigest()[:16]
        return snap

    def _local_path(self, rel: str) -> str:
        """Where DuckDB reads the file: the file itself, or (remote archives) its cached copy."""
        base = self.root if self.local else self.local_root
        return base + os.sep + rel.replace("/", os.sep)  # os.path.join of 10k paths cost 0.3 s a scan

    def _known(self, rel: str, stamp: Stamp) -> LiveFile | str | None:
        """What this reader already found of `rel` while it is unchanged (same stamp): the reason it is
        broken, or its footer facts; None when it must be read."""
        for memo in (self.broken, self._footers):
            seen = memo.get(rel)
            if seen is not None and seen[0] == stamp:
                return seen[1]
        return None

    def _live_file(self, rel: str, key: FileKey, stamp: Stamp, facts: dict | str | None) -> LiveFile | str | None:
        if rel in self.unfetchable and self.unfetchable[rel][0] == stamp:
            return self.unfetchable[rel][1]
        known = self._known(rel, stamp)
        if known is not None:
            return known
        if facts is None:
            return None
        info = facts if isinstance(facts, str) else from_facts(rel, key, self._local_path(rel), stamp[0], facts)
        self._footers[rel] = (stamp, info)
        return info

    # -- compaction and level of detail ----------------------------------------------------
    def _apply_compactions(self, candidates: list[tuple[str, FileKey, Stamp]], snap: Snapshot,
                           scope: frozenset[str] | None) -> list[tuple[str, FileKey, Stamp]]:
        """Drop parts replaced by a compact file, and compact files without an accepted record."""
        compacts = [rel for rel, key, _ in candidates if key.kind == "compact"]
        if not compacts:
            return candidates
        try:
            if scope is not None and self.listable:  # only the scanned runs' records (one folder per run)
                records = [rec for run in sorted({k.run_id for _, k, _ in candidates if k.kind == "compact"})
                           for rec in read_records(self.fs, self.root, run_id=run, cache=self._records)]
            else:
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

    def _choose_lods(self, lod_candidates: list[tuple[str, str, Stamp]], facts: dict[str, dict | str],
                     snap: Snapshot) -> None:
        by_run: dict[str, list[Any]] = {}
        for rel, _, stamp in lod_candidates:
            cached = self._lod_footers.get(rel)
            if rel in self.broken and self.broken[rel][0] == stamp:
                got: Any = self.broken[rel][1]
            elif cached is not None and cached[0] == stamp:
                got = cached[1]
            else:
                got = facts.get(rel)
                if isinstance(got, dict):
                    got = info_from_json(rel, got.get("lod"), int(got.get("rows", 0)), self._local_path(rel))
                self._lod_footers[rel] = (stamp, got)
            if isinstance(got, str):  # an unreadable LOD file is not used: curves read raw rows
                inner = got[len(_UNREADABLE):-1] if got.startswith(_UNREADABLE) else got
                why = f"not a readable level-of-detail file ({inner}); curves read raw rows instead"
                snap.skipped[rel] = why
                snap.problems.append(f"skipped {rel}: {why}")
                continue
            if got is not None:
                by_run.setdefault(got.run_id, []).append(got)
        for run_id, infos in by_run.items():
            live = [f.rel for f in snap.files.get("metrics", []) if f.key.run_id == run_id]
            chosen = choose_lod(infos, live)
            if chosen is not None:
                snap.lod[run_id] = chosen

    # -- remote archives: copies made when a query reads the files -----------------------------
    def ensure_local(self, rels: Iterable[str]) -> dict[str, str]:
        """Copy these live files into the local cache (remote archives; nothing to do on a local disk);
        {rel: why} for those that cannot be copied: left out of every later scan until listed anew."""
        if self.cache is None:
            return {}
        failed = self.cache.ensure([(rel, self._sizes.get(rel)) for rel in rels])
        for rel, why in failed.items():
            self.unfetchable[rel] = ((self._sizes.get(rel), None), why)
        return failed

    def _materialize(self, snap: Snapshot) -> None:
        rels = [f.rel for f in snap.all_files()] + [i.rel for i in snap.lod.values()]
        failed = self.ensure_local(rels)
        if not failed:
            return
        for table, files in snap.files.items():
            snap.files[table] = [f for f in files if f.rel not in failed]
        snap.lod = {run: i for run, i in snap.lod.items() if i.rel not in failed}
        for rel, why in failed.items():
            snap.skipped[rel] = why
            snap.problems.append(f"skipped {rel}: {why}")

    # -- footers of local files the catalog makes itself (telemetry.read.live) -----------------
    def _footer_local(self, rel: str, key: FileKey, local: str) -> LiveFile | str:
        try:
            stamp = self._stamp(os.stat(local))
        except OSError as exc:
            return f"cannot stat it ({one_line(exc)})"
        known = self._known(rel, stamp)
        if known is not None:
            return known
        try:
            facts: dict | str = file_facts(rel, pq.read_metadata(local))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            facts = f"not a readable Parquet file ({parquet_error(exc)})"
        info = facts if isinstance(facts, str) else from_facts(rel, key, local, stamp[0], facts)
        self._footers[rel] = (stamp, info)
        return info


def _run_of(rel: str) -> str | None:
    """The run a data, LOD or index file belongs to (None for anything else)."""
    key = parse_path(rel)
    return key.run_id if key is not None else parse_lod_path(rel) or run_of_index(rel)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
