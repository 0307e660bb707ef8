"""Which files of an archive are live, and where DuckDB can read them.

Discovery lists every table folder (or reads `_manifest/manifest.json` where the store
cannot list, e.g. http), keeps only names `data_schema.layout.parse_path` accepts (never
temp files, never staged write-ahead), and opens each file's footer once: a file that does
not open is skipped and reported, not fatal. Remote archives are copied file by file into
a local cache folder; segments are immutable, so a cached copy is reused and DuckDB (and the
SQL sandbox) only ever reads local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema import FORMAT_VERSION, TABLES, schema
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
from telemetry.store.errors import ArchiveError, ArchiveNotFoundError, FormatVersionError, QueryError

# Stores that cannot list a folder: the manifest says which files are live.
_UNLISTABLE = {"http", "https"}


def open_fs(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """URL -> (filesystem, root path); telemetry.store.fs is the one place for this when present."""
    try:
        from telemetry.store.fs import open_fs as _open_fs
    except ImportError:
        _open_fs = None
    if _open_fs is not None:
        return _open_fs(url, storage_options)
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/") or root


def default_archive_url() -> str:
    try:
        from telemetry.store.fs import default_archive_url as _default
    except ImportError:
        return os.environ.get("FLIGHTLOG_ARCHIVE") or "./flightlog-archive"
    return _default()


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def protocols_of(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def default_cache_dir(url: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flightlog", hashlib.sha256(url.encode()).hexdigest()[:16])


class BrokenFileError(QueryError):
    """A query hit a file broken past its footer; the file is now left out (the query may run again)."""

    def __init__(self, found: dict[str, str]):
        self.found = dict(found)
        names = "; ".join(f"{rel}: {why}" for rel, why in self.found.items())
        super().__init__(f"query failed on a broken file, now left out of the archive's views "
                         f"(`flightlog verify` lists it, `flightlog index --quarantine` moves it aside): {names}")


# DuckDB errors that come from the query itself, never from a file's bytes: no file to look for
_QUERY_ERRORS = tuple(getattr(duckdb, n) for n in (
    "ParserException", "BinderException", "CatalogException", "InterruptException", "ConversionException",
    "OutOfMemoryException", "PermissionException", "SyntaxException", "TypeMismatchException") if hasattr(duckdb, n))


def may_be_a_broken_file(exc: BaseException) -> bool:
    """Whether a DuckDB error could come from a file's bytes (worth decoding the files to find it)."""
    return isinstance(exc, duckdb.Error) and not isinstance(exc, _QUERY_ERRORS)


@dataclass(frozen=True, slots=True)
class LiveFile:
    """One complete, readable Parquet file of a table."""

    rel: str  # path relative to the archive root, '/'-joined
    key: FileKey
    local: str  # the local path DuckDB reads (the file itself, or its cached copy)
    size: int | None
    rows: int
    columns: tuple[str, ...]
    step_range: tuple[int, int] | None  # from row-group statistics, when the file has them
    # compact files: ((attempt, min step, max step), ...) from the footer, so journey spans need no scan
    attempt_spans: tuple[tuple[int, int, int], ...] | None = None


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


def parse_manifest(obj: Any) -> dict[str, dict]:
    """Manifest JSON -> {relative path: entry (rows, bytes, ...)}; tolerant of list or dict forms."""
    entries: dict[str, dict] = {}

    def add(item: Any, rel: str | None = None) -> None:
        if isinstance(item, str):
            entries[item.lstrip("/")] = {}
        elif isinstance(item, dict):
            path = rel or item.get("path") or item.get("file") or item.get("name")
            if isinstance(path, str):
                entries[path.lstrip("/")] = dict(item)

    if isinstance(obj, dict):
        files = obj.get("files")
        if isinstance(files, list):
            for item in files:
                add(item)
        elif isinstance(files, dict):
            for rel, item in files.items():
                add(item if isinstance(item, dict) else {}, rel)
        tables = obj.get("tables")
        if isinstance(tables, dict):
            for items in tables.values():
                for item in items if isinstance(items, list) else []:
                    add(item)
    elif isinstance(obj, list):
        for item in obj:
            add(item)
    return entries


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
        self.local = is_local_fs(self.fs)
        self.listable = not (protocols_of(self.fs) & _UNLISTABLE)
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
            self.root_problems = [f"{ROOT_FILE}: {_one_line(exc)}; rewrite it as "
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
            version = _as_version(root_info.get("format_version", FORMAT_VERSION))
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
        if hasattr(self.fs, "invalidate_cache"):
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
            from telemetry.maintain.manifest import read_manifest
        except ImportError:
            read_manifest = None
        if read_manifest is not None:
            try:
                obj = read_manifest(self.fs, self.root)
            except FileNotFoundError:
                return None
            except ValueError as exc:
                raise ArchiveError(f"the manifest of {self.url} is not valid JSON: {exc}") from None
        else:
            obj = self.read_json(MANIFEST_FILE)
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
        from telemetry.store.liveness import live_filter, read_records, resolve

        try:
            records = read_records(self.fs, self.root, cache=self._records,
                                   compact_rels=None if self.listable else compacts)
        except Exception as exc:  # noqa: BLE001 - without records no compact file counts: parts stay live
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
        from telemetry.read.lod import choose_lod, info_from_metadata

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
                why = f"not a readable level-of-detail file ({_parquet_error(exc)}); curves read raw rows instead"
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
        files += [(i.rel, i.local) for i in snap.lod.values() if getattr(i, "local", None)]
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
    def _localize(self, candidates: list[tuple[str, FileKey, int | None]], snap: Snapshot) -> dict[str, str]:
        if self.local:
            return {rel: os.path.join(self.root, *rel.split("/")) for rel, _, _ in candidates}
        out: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for rel, _, size in candidates:
            local = os.path.join(self.local_root, *rel.split("/"))
            if os.path.exists(local) and (size is None or os.path.getsize(local) == size):
                out[rel] = local
            else:
                missing.append((rel, local))
        if missing:
            incoming = os.path.join(self.local_root, ".incoming", uuid.uuid4().hex)
            os.makedirs(incoming, exist_ok=True)
            tmps = [os.path.join(incoming, rel.replace("/", "__")) for rel, _ in missing]
            try:
                try:  # one batched copy: async stores (s3, gs, http) fetch the files concurrently
                    self.fs.get([self.path(rel) for rel, _ in missing], tmps)
                except Exception:  # noqa: BLE001 - a failed batch may leave partial files: redo one by one
                    for tmp in tmps:
                        if os.path.exists(tmp):
                            os.remove(tmp)
                for (rel, local), tmp in zip(missing, tmps, strict=True):
                    if not os.path.exists(tmp):
                        try:
                            self.fs.get_file(self.path(rel), tmp)
                        except (OSError, ValueError) as exc:
                            why = ("listed in the manifest but missing from the archive"
                                   if isinstance(exc, FileNotFoundError) or "404" in str(exc)
                                   else f"cannot copy it from {self.url}: {_one_line(exc)}")
                            snap.skipped[rel] = why
                            snap.problems.append(f"skipped {rel}: {why}")
                            continue
                    os.makedirs(os.path.dirname(local), exist_ok=True)
                    os.replace(tmp, local)  # atomic: a half-copied file is never reused
                    out[rel] = local
            finally:
                _remove_tree(incoming)
        return out

    def _footer(self, rel: str, key: FileKey, local: str, size: int | None) -> LiveFile | str:
        try:
            st = os.stat(local)
        except OSError as exc:
            return f"cannot stat it ({_one_line(exc)})"
        stamp = (st.st_size, st.st_mtime_ns)
        broken = self.broken.get(rel)
        if broken is not None and broken[0] == stamp:
            return broken[1]
        cached = self._footers.get(rel)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            md = pq.read_metadata(local)
            arrow_schema = md.schema.to_arrow_schema()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            result: LiveFile | str = f"not a readable Parquet file ({_parquet_error(exc)})"
        else:
            version = file_format_version(md)
            misfits = schema_problems(key.table, arrow_schema)
            if version is not None and version > FORMAT_VERSION:
                result = (f"written by a newer flightlog (format version {version}, this one reads {FORMAT_VERSION}): "
                          "upgrade flightlog to read it")
            elif misfits:
                result = f"does not fit table {key.table!r}: {'; '.join(misfits)}"
            else:
                columns = tuple(arrow_schema.names)
                result = LiveFile(rel, key, local, st.st_size, md.num_rows, columns, _step_range(md, columns),
                                  _compact_spans(md) if key.kind == "compact" else None)
        self._footers[rel] = (stamp, result)
        return result


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    for name, test in (("int", pa.types.is_integer), ("float", pa.types.is_floating), ("bool", pa.types.is_boolean),
                       ("time", pa.types.is_timestamp), ("null", pa.types.is_null)):
        if test(t):
            return name
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list<" + _kind(t.value_type) + ">"
    return str(t)


def schema_problems(table: str, actual: pa.Schema) -> list[str]:
    """Why a file's schema does not fit its table (missing required column, incompatible type)."""
    problems = []
    for f in schema(table):
        if f.name not in actual.names:
            if not f.nullable:
                problems.append(f"required column {f.name!r} is missing")
            continue
        got, want = _kind(actual.field(f.name).type), _kind(f.type)
        ok = got in (want, "null") or (want == "float" and got == "int") or (
            want.startswith("list<") and got.startswith("list<") and got[5:-1] in (want[5:-1], "null", "int"))
        if not ok:
            problems.append(f"column {f.name!r} has type {actual.field(f.name).type}, expected {f.type}")
    return problems


def _step_range(md: pq.FileMetaData, columns: tuple[str, ...]) -> tuple[int, int] | None:
    if "step" not in columns or md.num_row_groups == 0:
        return None
    idx = None
    for i in range(md.num_columns):
        if md.schema.column(i).path == "step":
            idx = i
            break
    if idx is None:
        return None
    lo = hi = None
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(idx).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (int(lo), int(hi)) if lo is not None else None


def _compact_spans(md: pq.FileMetaData) -> tuple[tuple[int, int, int], ...] | None:
    raw = (md.metadata or {}).get(b"flightlog.compaction")
    if raw is None:
        return None
    try:
        spans = json.loads(raw)["attempt_spans"]
        return tuple(sorted((int(a), int(s[0]), int(s[1])) for a, s in spans.items()))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def page_problem(path: str) -> str | None:
    """Decode every page of a Parquet file; what is wrong with it, or None when it reads whole.

    A footer that opens says nothing of the pages: a flipped bit in one fails every DuckDB
    query over its table, so `verify` and a failed query come here to find the file.
    """
    try:
        pf = pq.ParquetFile(path)
        rows = 0
        for g in range(pf.metadata.num_row_groups):
            rows += pf.read_row_group(g).num_rows
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the finding itself
        return f"a data page does not decode ({_one_line(exc)})"
    if rows != pf.metadata.num_rows:
        return f"its footer says {pf.metadata.num_rows} rows, its pages hold {rows}"
    return None


def file_format_version(md: pq.FileMetaData) -> int | None:
    """The flightlog format version a Parquet file's schema metadata declares (None: not declared)."""
    raw = (md.metadata or {}).get(b"flightlog.format_version")
    if raw is None:
        return None
    version = _as_version(raw.decode("utf-8", "replace"))
    return version if version is not None else FORMAT_VERSION + 1  # unreadable version: not ours to read


def _as_version(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _parquet_error(exc: BaseException) -> str:
    """pyarrow's message for a broken file, in words a user can act on."""
    text = _one_line(exc)
    if "size is 0 bytes" in text:
        return "empty file, 0 bytes"
    if "magic bytes not found" in text:
        return "truncated or not Parquet at all: no Parquet footer"
    return text


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())
