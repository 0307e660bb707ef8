"""Live view: an Archive whose views also hold the staged write-ahead of writers still running.

A running writer stages a batch every flush interval (`_staging/.../a<A>-r<R>-<seq>.arrows`)
but turns them into Parquet segments only every segment interval (60 s by default): a page
that read segments alone would lag a live run by a minute. Each staged file is written once
and never changed, so it is decoded once into a Parquet copy under `<local root>/_live_view/`
(a "_" folder every reader skips; inside the local root so the SQL sandbox may read it), and
refreshes after that only list files: footers of known files come from the catalog's cache
(keyed by size and mtime), and known staged files are not fetched or decoded again.
A staged batch already covered by a segment of its (table, run, attempt, rank) with seq >= its
seq is left out, the same rule recovery uses, so no row is counted twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Collection

from data_schema.layout import FileKey, parse_path
from telemetry.read.archive import Archive
from telemetry.read.catalog import Catalog
from telemetry.read.footers import LiveFile
from telemetry.read.snapshot import Snapshot
from telemetry.store import encodings, staging

VIEW_DIR = "_live_view"


class LiveCatalog(Catalog):
    """A Catalog whose scans add the staged batches of live writers as Parquet files."""

    reads_staged = True

    def _setup_live(self) -> None:
        # one folder per reader: two app processes on one archive never delete each other's copies
        folder = os.path.join(self.local_root, VIEW_DIR, uuid.uuid4().hex[:12])
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".probe-{uuid.uuid4().hex[:8]}")
            open(probe, "wb").close()
            os.remove(probe)
        except OSError:  # a read-only archive folder: decode elsewhere (the SQL console may not read these)
            folder = tempfile.mkdtemp(prefix="flightlog-live-")
        self.view_dir = folder
        self._views: dict[str, str] = {}  # staged rel -> its Parquet copy
        self.staged_decoded = 0  # staged files fetched and decoded so far (each one once)

    def scan(self, runs: Collection[str] | None = None) -> Snapshot:
        snap = super().scan(runs)
        if not hasattr(self, "view_dir"):
            self._setup_live()
        covered: dict[tuple, int] = {}
        # Parts a compact file replaced are not read, but their seqs still cover staged batches:
        # a staged file left behind for such a part must not count its rows a second time.
        keys = [f.key for files in snap.files.values() for f in files] + [parse_path(r) for r in snap.replaced]
        for key in keys:
            if key is not None and key.kind == "segment":
                group = (key.table, key.run_id, key.attempt, key.rank)
                covered[group] = max(covered.get(group, -1), int(key.seq or 0))
        wanted = set()
        for rel in snap.staged:
            key = parse_path(rel)
            if key is None or key.seq is None:
                continue
            if key.seq <= covered.get((key.table, key.run_id, key.attempt, key.rank), -1):
                continue
            local = self._view_of(rel, key)
            if local is None:
                continue  # gone meanwhile: its writer just turned it into a segment
            wanted.add(rel)
            info = self._footer_local(rel, key, local)
            if isinstance(info, LiveFile):
                snap.files[key.table].append(info)
        for rel in set(self._views) - wanted:  # segmented since: the copy is not needed any more
            key = parse_path(rel)
            if key is None or snap.covers(key.run_id):  # a run this scan did not look at keeps its copies
                _unlink(self._views.pop(rel))
        digest = hashlib.sha256(snap.version.encode())
        for rel in sorted(wanted):
            digest.update(f"staged\0{rel}\n".encode())
        snap.version = digest.hexdigest()[:16]
        return snap

    def _view_of(self, rel: str, key: FileKey) -> str | None:
        local = self._views.get(rel)
        if local is not None and os.path.exists(local):
            return local
        try:
            raw = self.fs.cat_file(self.path(rel))
        except (FileNotFoundError, OSError):
            return None
        decoded = staging.decode_staged(raw, key.table)
        self.staged_decoded += 1
        if decoded.data is None or decoded.data.num_rows == 0:
            return None
        data = staging.full_table(key.table, decoded.data, run_id=key.run_id, attempt=int(key.attempt),
                                  rank=int(decoded.constants.get("rank", key.rank)))
        local = os.path.join(self.view_dir, rel.replace("/", "__") + ".parquet")
        tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(encodings.segment_bytes(data))
        os.replace(tmp, local)
        self._views[rel] = local
        return local

    def close(self) -> None:
        if hasattr(self, "view_dir"):
            shutil.rmtree(self.view_dir, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self.view_dir))  # the shared parent, once empty
            except OSError:
                pass  # another reader's copies are still in it: the last one out removes it


class LiveArchive(Archive):
    """`Archive` plus the staged data of running writers (see the module docstring)."""

    def __init__(self, url: str | None = None, **kwargs):
        super().__init__(url, **kwargs)
        base = self._catalog
        live = LiveCatalog.__new__(LiveCatalog)
        live.__dict__.update(base.__dict__)  # same filesystem, root and footer cache
        self._catalog = live
        self.refresh()

    @property
    def staged_decoded(self) -> int:
        return self._catalog.staged_decoded

    def close(self) -> None:
        self._catalog.close()
        super().close()


def _unlink(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass  # already gone: a copy is only a cache of a staged file
