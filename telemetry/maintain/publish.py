"""`flightlog publish`: a self-contained, compacted copy of chosen runs, for anyone to read.

The copy goes to any fsspec destination: a folder a static web host serves, `s3://...`,
`hf://datasets/<user>/<repo>` (with huggingface_hub installed), `memory://`. A static host
cannot list folders, so `_manifest/manifest.json` names every file with its size, row count
and sha256: `Archive("https://host/path")` reads through it, and `flightlog verify URL`
checks every checksum.

How, so that a reader never sees a half-published archive:
1. the runs' live files (parts, compact files with their records, the chosen LOD) are copied
   into a local staging folder; there the runs are compacted (every part becomes a sorted
   compact file, the LOD is rebuilt) and only the files a reader would read are kept;
2. the staged copy is scanned like any archive: a problem there stops before any upload;
3. files are uploaded data first, then compaction records, then `flightlog.json`, and the
   manifest last; with `overwrite`, files of the former publication that are not in the new
   one are removed only after the new manifest is in place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from data_schema.layout import MANIFEST_FILE, ROOT_FILE, join, parse_lod_path, parse_path
from data_schema.tables import FORMAT_VERSION, TABLES
from telemetry.maintain.compaction import CompactionConfig, compact_bytes, compact_fs
from telemetry.maintain.publication_check import existing_files, sha256_of
from telemetry.maintain.wired import open_archive
from telemetry.read.catalog import Catalog
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import atomic_write_bytes, is_local, open_fs, remove
from telemetry.store.liveness import record_path_of
from telemetry.store.run_index import file_facts

# Filesystems that only read: publishing there is a user mistake with a clear answer.
_READ_ONLY = {"http", "https"}


@dataclass(kw_only=True, slots=True)
class PublishConfig:
    """How a publication is written."""

    overwrite: bool = False
    """Replace an earlier publication at the destination (never a folder that is not an archive)."""
    spark_compatible: bool = False
    """PLAIN float encoding instead of BYTE_STREAM_SPLIT, for readers that lack it (Spark 4 and
    DuckDB, Polars and pandas read BYTE_STREAM_SPLIT; some older engines do not)."""
    progress: bool = True
    """Show a progress bar (stderr)."""


@dataclass(slots=True)
class PublishReport:
    destination: str
    runs: list[str]
    files: int = 0
    bytes: int = 0
    rows_by_table: dict[str, int] = field(default_factory=dict)
    removed: int = 0                      # files of an earlier publication that were replaced
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        rows = sum(self.rows_by_table.values())
        return (f"published {len(self.runs)} run(s) ({', '.join(self.runs)}) to {self.destination}: "
                f"{self.files} file(s), {self.bytes / 1e6:.2f} MB, {rows} row(s) in {self.seconds:.1f} s")


# -- public entry ----------------------------------------------------------------------------
def publish(runs: Iterable[str] | None, destination: str, *, source: str | None = None,
            config: PublishConfig | None = None, storage_options: dict | None = None,
            dest_storage_options: dict | None = None) -> PublishReport:
    """Publish `runs` (names or ids; None = every run) of the archive at `source` to `destination`."""
    cfg = config or PublishConfig()
    t0 = time.perf_counter()
    fs, root = open_destination(destination, dest_storage_options)
    archive = open_archive(source, storage_options=storage_options)
    try:
        if _same_place(archive, fs, root):
            raise ArchiveError(f"cannot publish {archive.url} onto itself: choose another destination with --to")
        run_ids = _resolve_runs(archive, runs)
        old = _check_destination(fs, root, destination, cfg.overwrite)
        report = PublishReport(destination=destination, runs=run_ids)
        report.warnings += _live_warnings(archive, run_ids)
        stage = tempfile.mkdtemp(prefix="flightlog-publish-")
        try:
            with _bar(cfg, total=len(run_ids) + 1, desc="compact", unit="run") as bar:
                _copy_runs(archive, run_ids, stage)
                for run_id in run_ids:
                    _compact_staged(stage, run_id, cfg)
                    bar.update(1)
                files = _published_files(stage)
                if cfg.spark_compatible:
                    for rel in files:
                        _plain_floats(os.path.join(stage, *rel.split("/")))
                bar.update(1)
            manifest = build_manifest(stage, files, run_ids)
            _upload(fs, root, stage, manifest, cfg)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        published = {e["path"] for e in manifest["files"]} | {MANIFEST_FILE}
        for rel in sorted(old - published):
            remove(fs, join(root, rel))
            report.removed += 1
        report.files = len(manifest["files"]) + 1
        report.bytes = sum(e["size"] for e in manifest["files"])
        for e in manifest["files"]:
            if "rows" in e:
                report.rows_by_table[e["table"]] = report.rows_by_table.get(e["table"], 0) + e["rows"]
        report.seconds = time.perf_counter() - t0
        return report
    finally:
        archive.close()


# -- destination -----------------------------------------------------------------------------
def open_destination(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root) of a publish destination; ArchiveError for read-only or unavailable ones."""
    text = str(url)
    scheme = text.split("://", 1)[0].lower() if "://" in text else "file"
    if scheme in _READ_ONLY:
        raise ArchiveError(f"cannot publish to {text}: http(s) is read-only here. Publish to a folder your web "
                           "server serves (then open https://host/path), or to s3://bucket/path")
    if scheme == "hf":
        try:
            import huggingface_hub  # noqa: F401 - lazy: optional, needed only for hf:// destinations
        except ImportError:
            raise ArchiveError("publishing to hf:// needs huggingface_hub: pip install huggingface_hub, then "
                               "`huggingface-cli login` (or set HF_TOKEN)") from None
    try:
        return open_fs(text, storage_options)
    except ArchiveError:
        raise
    except (ImportError, ValueError, OSError) as exc:
        raise ArchiveError(f"cannot open the destination {text}: {exc}") from None


def _same_place(archive: Any, fs: fsspec.AbstractFileSystem, root: str) -> bool:
    return is_local(fs) and os.path.abspath(root) == os.path.abspath(archive.local_root)


def _check_destination(fs: fsspec.AbstractFileSystem, root: str, url: str, overwrite: bool) -> set[str]:
    """The files already at the destination (to replace); errors unless it is empty or may be overwritten."""
    old = existing_files(fs, root)
    if old and not overwrite:
        raise ArchiveError(f"destination {url} is not empty ({len(old)} file(s)): pass --overwrite to replace "
                           "an earlier publication there, or choose an empty folder")
    if old and ROOT_FILE not in old and MANIFEST_FILE not in old:
        raise ArchiveError(f"destination {url} holds files that are not a flightlog archive: refusing to "
                           "overwrite them; choose an empty folder")
    probe = join(root, f".flightlog-publish-probe-{uuid.uuid4().hex[:8]}")
    try:
        _put_bytes(fs, probe, b"probe")
        remove(fs, probe)
    except (OSError, ValueError, PermissionError, NotImplementedError) as exc:
        raise ArchiveError(f"destination {url} is not writable: {exc}") from None
    return old


# -- choosing and copying runs -----------------------------------------------------------------
def _resolve_runs(archive: Any, runs: Iterable[str] | None) -> list[str]:
    if runs is None:
        ids = sorted(str(r) for r in archive.runs()["run_id"])
        if not ids:
            raise ArchiveError(f"the archive {archive.url} holds no runs to publish")
        return ids
    runs = list(runs)
    if not runs:
        raise ArchiveError("name at least one run to publish (or --all); `flightlog runs` lists them")
    out: list[str] = []
    for run in runs:
        run_id = archive.resolve_run(run)  # UnknownRunError lists the known runs
        if run_id not in out:
            out.append(run_id)
    return out


def _live_warnings(archive: Any, run_ids: list[str]) -> list[str]:
    staged: dict[str, int] = {}
    for rel in archive.snapshot.staged:
        key = parse_path(rel)
        if key is not None and key.run_id in run_ids:
            staged[key.run_id] = staged.get(key.run_id, 0) + 1
    return [f"run {r} is still being written: {n} staged batch file(s) are not published yet "
            "(publish again when it has finished)" for r, n in sorted(staged.items())]


def _copy_runs(archive: Any, run_ids: list[str], stage: str) -> None:
    """The runs' live files (as the archive reads them) and the records of their compact files."""
    snap = archive.local_snapshot()  # a remote archive's files are copied when read
    wanted = set(run_ids)
    catalog = archive._catalog  # noqa: SLF001 - the records live next to the files it reads
    for table in TABLES:
        for f in snap.files.get(table, []):
            if f.key.run_id not in wanted:
                continue
            _copy_local(f.local, stage, f.rel)
            if f.key.kind == "compact":
                record = record_path_of(f.rel)
                if record:
                    body = catalog.fs.cat_file(join(catalog.root, record))
                    _write_local(stage, record, body)
    for run_id in run_ids:
        info = snap.lod.get(run_id)
        if info is not None and info.local:
            _copy_local(info.local, stage, info.rel)
    _write_local(stage, ROOT_FILE, json.dumps({
        "format_version": FORMAT_VERSION, "created_at": dt.datetime.now(dt.UTC).isoformat(), "published": True,
    }).encode())


def _copy_local(src: str, stage: str, rel: str) -> None:
    dst = os.path.join(stage, *rel.split("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def _write_local(stage: str, rel: str, body: bytes) -> None:
    dst = os.path.join(stage, *rel.split("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as fh:
        fh.write(body)


def _compact_staged(stage: str, run_id: str, cfg: PublishConfig) -> None:
    ccfg = CompactionConfig(value_encoding="PLAIN" if cfg.spark_compatible else "BYTE_STREAM_SPLIT")
    report = compact_fs(LocalFileSystem(), stage, run_id, grace_s=0.0, config=ccfg)
    if report.problems:
        raise ArchiveError(f"cannot publish run {run_id}: compacting it failed: {'; '.join(report.problems)}")


def _published_files(stage: str) -> list[str]:
    """What a reader of the staged copy reads: live data files, the chosen LODs, their records."""
    snap = Catalog(stage).scan()
    if snap.problems:
        raise ArchiveError(f"cannot publish: the compacted copy has problems: {'; '.join(snap.problems)}")
    files = [ROOT_FILE]
    for f in snap.all_files():
        if f.rows == 0 and f.key.kind == "segment":
            continue  # empty watermarks only matter to writers of the source archive
        files.append(f.rel)
        if f.key.kind == "compact" and (record := record_path_of(f.rel)):
            files.append(record)
    files += [info.rel for _, info in sorted(snap.lod.items())]
    return files


def _plain_floats(path: str) -> None:
    """Rewrite a Parquet file with PLAIN floats if any column uses BYTE_STREAM_SPLIT (same rows, metadata)."""
    if not path.endswith(".parquet"):
        return
    md = pq.read_metadata(path)
    uses_bss = any("BYTE_STREAM_SPLIT" in md.row_group(g).column(i).encodings
                   for g in range(md.num_row_groups) for i in range(md.num_columns))
    if not uses_bss:
        return
    rows = max((md.row_group(g).num_rows for g in range(md.num_row_groups)), default=1)
    body = compact_bytes(pq.read_table(path), CompactionConfig(value_encoding="PLAIN", row_group_rows=max(rows, 1)))
    with open(path, "wb") as fh:
        fh.write(body)


# -- manifest and upload ------------------------------------------------------------------------
def build_manifest(stage: str, files: list[str], run_ids: list[str]) -> dict[str, Any]:
    """`_manifest/manifest.json` of a publication: every file with size and sha256 (rows for Parquet)."""
    entries = []
    for rel in files:
        local = os.path.join(stage, *rel.split("/"))
        with open(local, "rb") as fh:
            entry: dict[str, Any] = {"path": rel, "size": os.path.getsize(local), "sha256": sha256_of(fh)[0]}
        key = parse_path(rel)
        lod_run = parse_lod_path(rel)
        if key is not None or lod_run is not None:
            entry.update(file_facts(rel, pq.read_metadata(local)))  # readers need no footer read to open it
            entry["table"] = key.table if key is not None else "metrics_lod"
            entry["run_id"] = key.run_id if key is not None else lod_run
        entries.append(entry)
    return {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "published": {"runs": run_ids, "checksums": "sha256"},
        "files": entries,
    }


def _upload_order(rel: str) -> int:
    if rel == ROOT_FILE:
        return 2
    return 1 if rel.startswith("_") else 0


def _upload(fs: fsspec.AbstractFileSystem, root: str, stage: str, manifest: dict[str, Any], cfg: PublishConfig) -> None:
    entries = sorted(manifest["files"], key=lambda e: (_upload_order(e["path"]), e["path"]))
    total = sum(e["size"] for e in entries)
    with _bar(cfg, total=total, desc="upload", unit="B", unit_scale=True) as bar:
        for e in entries:
            local = os.path.join(stage, *e["path"].split("/"))
            try:
                _put_file(fs, local, join(root, e["path"]))
            except (OSError, ValueError, PermissionError) as exc:
                raise ArchiveError(f"publishing stopped: cannot write {e['path']} to the destination: {exc}") from None
            bar.update(e["size"])
        _put_bytes(fs, join(root, MANIFEST_FILE), json.dumps(manifest, indent=1).encode())


def _put_file(fs: fsspec.AbstractFileSystem, local: str, path: str) -> None:
    if is_local(fs):
        with open(local, "rb") as fh:
            _put_bytes(fs, path, fh.read())
    else:
        fs.put_file(local, path)  # one upload per file: object stores never show a partial object


def _put_bytes(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> None:
    if not is_local(fs):
        parent = path.rsplit("/", 1)[0]
        try:
            fs.makedirs(parent, exist_ok=True)
        except (OSError, NotImplementedError):
            pass  # stores without folders
    atomic_write_bytes(fs, path, body)


def _bar(cfg: PublishConfig, **kwargs: Any) -> Any:
    return tqdm(file=sys.stderr, disable=not cfg.progress, leave=False, **kwargs)


__all__ = ["PublishConfig", "PublishReport", "build_manifest", "open_destination", "publish"]
