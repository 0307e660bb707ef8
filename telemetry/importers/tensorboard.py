"""Import TensorBoard event files: every scalar point (not TensorBoard's 1,000-per-tag sample).

One run per folder that holds `events.out.tfevents.*` files (searched recursively); the
files of a folder are read in name order (a restarted writer adds a file). Event files are
TFRecords (u64 length, u32 masked CRC-32C of the length, data, u32 masked CRC-32C of the
data) of `tensorboard.Event` protobufs. CRCs are not recomputed (pure-Python CRC-32C would
dominate the import); framing is checked by lengths and protobuf parsing instead, and a
torn tail from a killed writer is counted as skipped bytes. Scalars come as `simple_value`
(SummaryWriter's default) or as a one-element numeric tensor (the v2 `scalars` plugin).
Values are float32 in the file: the archive holds them exactly, widened to float64.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import time
from pathlib import Path

import numpy as np

from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    metrics_table,
    progress,
    seconds_to_ts,
    source_id,
    write_run,
)

_LEN = struct.Struct("<Q")
_EVENT_GLOB = "events.out.tfevents*"
# dtype enum of tensorboard's types.proto -> numpy dtype of tensor_content
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16, 4: np.uint8, 5: np.int16,
           6: np.int8, 17: np.uint16, 22: np.uint32, 23: np.uint64}
_NOT_SCALAR_PLUGINS = {"histograms", "images", "audio", "text", "pr_curves", "hparams", "graphs", "mesh",
                       "custom_scalars", "projector"}


def _tensor_scalar(t) -> float | None:
    """The value of a one-element numeric TensorProto, or None."""
    if any(d.size != 1 for d in t.tensor_shape.dim):
        return None
    if t.tensor_content:
        dtype = _DTYPES.get(t.dtype)
        if dtype is None or len(t.tensor_content) != np.dtype(dtype).itemsize:
            return None
        return float(np.frombuffer(t.tensor_content, dtype=dtype)[0])
    for vals in (t.float_val, t.double_val, t.int64_val, t.int_val):
        if len(vals) == 1:
            return float(vals[0])
    if len(t.half_val) == 1:
        return float(np.array([t.half_val[0]], np.uint16).view(np.float16)[0])
    return None


def _records(raw: bytes) -> tuple[list[bytes], int]:
    """Complete TFRecord payloads of one file, and the bytes of a torn tail."""
    out = []
    n = len(raw)
    off = 0
    unpack = _LEN.unpack_from
    while off + 12 <= n:
        (length,) = unpack(raw, off)
        end = off + 12 + length + 4
        if end > n:
            break
        out.append(raw[off + 12:off + 12 + length])
        off = end
    return out, n - off


def read_event_folder(folder: str, files: list[str], *, run_id: str, name: str) -> ImportedRun:
    # lazy: an optional package, needed only by this importer (its protobuf classes; no TensorFlow, no torch)
    from tensorboard.compat.proto import event_pb2

    steps: list[int] = []
    tags: list[str] = []
    values: list[float] = []
    wts: list[float] = []
    plugin: dict[str, str] = {}
    skipped_bytes = unparsable = not_scalar = 0
    event = event_pb2.Event()
    parse = event.ParseFromString
    first_wall = None
    for path in files:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ImportSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
        records, torn = _records(raw)
        skipped_bytes += torn
        if (raw and not records) or (records and not _looks_like_event_file(records[0], event_pb2)):
            raise ImportSourceError(f"{path} is not a TensorBoard event file (its first record is not an Event)")
        for rec in records:
            try:
                parse(rec)
            except Exception:  # noqa: BLE001 - protobuf DecodeError: a damaged record is skipped and counted
                unparsable += 1
                continue
            if not event.HasField("summary"):
                if first_wall is None and event.wall_time:
                    first_wall = event.wall_time
                continue
            step = event.step
            wt = event.wall_time
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    x = v.simple_value
                elif kind == "tensor":
                    tag = v.tag
                    if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
                        plugin[tag] = v.metadata.plugin_data.plugin_name
                    if plugin.get(tag) in _NOT_SCALAR_PLUGINS:
                        not_scalar += 1
                        continue
                    x = _tensor_scalar(v.tensor)
                    if x is None:
                        not_scalar += 1
                        continue
                else:
                    not_scalar += 1
                    continue
                steps.append(step)
                tags.append(v.tag)
                values.append(x)
                wts.append(wt)
    if not files:
        raise ImportSourceError(f"no event files in {folder}")
    created = first_wall or (min(wts) if wts else None)
    return ImportedRun(
        run_id=run_id, name=name, source="tensorboard", source_path=str(Path(folder).resolve()),
        metrics=metrics_table(steps, tags, values, seconds_to_ts(wts)), status="finished",
        created_at=dt.datetime.fromtimestamp(created, dt.UTC) if created else None,
        ended_at=dt.datetime.fromtimestamp(max(wts), dt.UTC) if wts else None,
        extra={"event_files": [os.path.basename(f) for f in files]},
        skipped={"bytes of a torn event file": skipped_bytes, "unreadable events": unparsable,
                 "non-scalar values": not_scalar},
    )


def _looks_like_event_file(first: bytes, event_pb2) -> bool:
    ev = event_pb2.Event()
    try:
        ev.ParseFromString(first)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: not an event record, so not an event file
        return False
    return ev.HasField("file_version") or ev.HasField("summary") or ev.wall_time > 0


def find_event_folders(path: str) -> dict[str, list[str]]:
    """{folder: its event files in name order} under `path` (a folder, or one event file)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImportSourceError(f"{path} does not exist: pass a folder of TensorBoard event files")
    if p.is_file():
        if not p.name.startswith("events.out.tfevents"):
            raise ImportSourceError(f"{path} is not a TensorBoard event file (expected events.out.tfevents.*)")
        return {str(p.parent): [str(p)]}
    out: dict[str, list[str]] = {}
    for f in sorted(p.rglob(_EVENT_GLOB)):
        if f.is_file():
            out.setdefault(str(f.parent), []).append(str(f))
    if not out:
        raise ImportSourceError(f"no TensorBoard event files (events.out.tfevents.*) under {path}")
    return out


def _run_identity(root: Path, folder: str) -> tuple[str, str]:
    """(run id, name): the root's name plus the folder's path below it; stable across machines."""
    rel = os.path.relpath(folder, root) if root.is_dir() else "."
    label = root.name if rel == "." else f"{root.name}/{rel}"
    if not root.is_dir():
        label = Path(folder).name
    return source_id("tb", label.replace(os.sep, "-")), label


def import_tensorboard(path: str, archive_url: str | None, *, run_name: str | None = None, quiet: bool = False,
                       storage_options: dict | None = None) -> ImportSummary:
    """Import every run (folder of event files) under `path`."""
    folders = find_event_folders(path)
    if run_name and len(folders) > 1:
        raise ImportSourceError(f"--run names one run, but {path} holds event files in {len(folders)} folders")
    root = Path(path).expanduser().resolve()
    summary = ImportSummary("tensorboard")
    t0 = time.perf_counter()
    total = sum(os.path.getsize(f) for fs in folders.values() for f in fs)
    with progress(total, "import tensorboard", quiet=quiet) as bar:
        for folder, files in folders.items():
            run_id, label = _run_identity(root, str(Path(folder).resolve()))
            if run_name:
                run_id, label = source_id("tb", run_name), run_name
            run = read_event_folder(folder, files, run_id=run_id, name=label)
            size = sum(os.path.getsize(f) for f in files)
            summary.add(run, write_run(archive_url, run, storage_options=storage_options))
            summary.source_bytes += size
            bar.update(size)
    summary.seconds = time.perf_counter() - t0
    return summary
