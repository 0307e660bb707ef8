"""Import W&B runs straight from `.wandb` files (offline runs, or any run folder), no W&B server.

A `.wandb` file is a LevelDB-style log: a 7-byte W&B header (":W&B", magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each with a 7-byte header (checksum u32, length
u16, type u8: FULL/FIRST/MIDDLE/LAST); a block tail under 7 bytes is zero padding. The
checksum the SDK writes is CRC-32 (IEEE) over the type byte and the data; CRC-32C is
accepted as well (LevelDB's own choice). Each assembled record is a
`wandb_internal_pb2.Record`; history and stats values are JSON strings, where the SDK
writes NaN and ±Inf as the bare tokens NaN/Infinity/-Infinity (Python's json reads them).

A crashed run leaves a torn last block: every complete record is imported, the rest is
counted as skipped bytes. A chunk with a bad checksum skips the rest of its block, as
LevelDB readers do.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    as_number,
    flatten,
    metrics_table,
    progress,
    seconds_to_ts,
    source_id,
    system_table,
    write_run,
)

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_IDENT, _MAGIC = b":W&B", 0xBEE1
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(5)]
# history, summary, config, stats, run, exit: the record types worth parsing
_WANTED_FIELDS = {2, 3, 5, 7, 17, 18}
_BOOKKEEPING = {1, 16, 19, 200}  # num, control, uuid, _info
_SPECIAL = {"_step", "_timestamp", "_runtime", "_wandb"}


# ---- the log framing ---------------------------------------------------------------------------

@dataclass(slots=True)
class LogScan:
    records: list[bytes]
    skipped_bytes: int = 0
    bad_chunks: int = 0
    truncated: bool = False


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_C_TABLE: list[int] = []


def _crc32c(data: bytes) -> int:
    """Pure-Python CRC-32C: only used for chunks whose CRC-32 does not match."""
    if not _C_TABLE:
        _C_TABLE.extend(_crc32c_table())
    crc = 0xFFFFFFFF
    for b in data:
        crc = _C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _checksum_ok(crc: int, ctype: int, data: bytes) -> bool:
    if zlib.crc32(data, _TYPE_CRC[ctype]) == crc:
        return True
    c = _crc32c(bytes([ctype]) + data)
    masked = (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # LevelDB's masked form
    return crc in (c, masked)


def scan_log(raw: bytes | memoryview, path: str) -> LogScan:
    """Every complete record of a `.wandb` file; a torn tail is counted, not fatal."""
    if len(raw) < _HEADER.size:
        raise ImportSourceError(f"{path} is not a W&B .wandb file: it is only {len(raw)} bytes long")
    ident, magic, version = _HEADER.unpack_from(raw, 0)
    if ident != _IDENT or magic != _MAGIC:
        raise ImportSourceError(f"{path} is not a W&B .wandb file (no ':W&B' header): pass a run-*.wandb file "
                                "or a wandb/offline-run-* folder")
    if version != 0:
        raise ImportSourceError(f"{path} has W&B log version {version}; this flightlog reads version 0")
    out = LogScan([])
    view = memoryview(raw)
    n = len(raw)
    off = _HEADER.size
    parts: list[bytes] = []
    parts_bytes = 0
    unpack = _CHUNK.unpack_from
    crc32 = zlib.crc32
    while off < n:
        left = _BLOCK - off % _BLOCK
        if left < _CHUNK.size:  # zero padding at the end of a block
            off += left
            continue
        if off + _CHUNK.size > n:
            out.truncated = True
            out.skipped_bytes += n - off
            break
        crc, length, ctype = unpack(view, off)
        start = off + _CHUNK.size
        end = start + length
        if ctype == 0 and length == 0 and crc == 0:  # preallocated zeros: rest of the block is empty
            off += left
            continue
        if end > n or length > left - _CHUNK.size:
            out.truncated = end > n
            out.skipped_bytes += min(n, off + left) - off
            if end > n:
                break
            out.bad_chunks += 1
            off += left
            continue
        data = bytes(view[start:end])
        if ctype > _LAST or (crc32(data, _TYPE_CRC[ctype]) != crc and not _checksum_ok(crc, ctype, data)):
            out.bad_chunks += 1
            out.skipped_bytes += left
            parts, parts_bytes = [], 0
            off += left
            continue
        off = end
        if ctype == _FULL:
            if parts:  # a FIRST without its LAST: that record is lost
                out.skipped_bytes += parts_bytes
                parts, parts_bytes = [], 0
            out.records.append(data)
        elif ctype == _FIRST:
            out.skipped_bytes += parts_bytes
            parts, parts_bytes = [data], length + _CHUNK.size
        elif parts:
            parts.append(data)
            parts_bytes += length + _CHUNK.size
            if ctype == _LAST:
                out.records.append(b"".join(parts))
                parts, parts_bytes = [], 0
        else:  # MIDDLE/LAST without FIRST
            out.skipped_bytes += length + _CHUNK.size
    if parts:
        out.truncated = True
        out.skipped_bytes += parts_bytes
    return out


def _varint(rec: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = rec[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _record_kind(rec: bytes) -> int:
    """Field number of a Record's record_type, read from the wire without parsing the record.

    Skips `num` (1) and the bookkeeping fields control (16), uuid (19) and _info (200), which may
    come first. Lets the reader pass over records it does not use (output, files, telemetry).
    """
    i, n = 0, len(rec)
    try:
        while i < n:
            tag, i = _varint(rec, i)
            field, wire = tag >> 3, tag & 7
            if field not in _BOOKKEEPING:
                return field
            if wire == 0:
                _, i = _varint(rec, i)
            elif wire == 2:
                length, i = _varint(rec, i)
                i += length
            else:
                return field
    except IndexError:
        return 0
    return 0


# ---- records -> run -------------------------------------------------------------------------------

def _key(item: Any) -> str:
    nk = item.nested_key
    return "/".join(nk) if nk else item.key


def _nest(target: dict, key_parts: list[str], value: Any) -> None:
    for k in key_parts[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[key_parts[-1]] = value


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _system_name(key: str) -> tuple[str, int | None]:
    """W&B stats keys -> flightlog system names (gpu.<i>.gpu -> gpu.util with gpu_index i)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "gpu" and parts[1].isdigit():
        rest = ".".join(parts[2:])
        mapped = {"gpu": "gpu.util", "memoryAllocatedBytes": "gpu.mem_used_bytes", "powerWatts": "gpu.power_w",
                  "temp": "gpu.temp_c", "smClock": "gpu.sm_clock_mhz"}.get(rest, f"gpu.{rest}")
        return mapped, int(parts[1])
    return {"cpu": "cpu.util"}.get(key, key), None


def read_wandb_file(path: str, *, run_name: str | None = None) -> ImportedRun:
    """Parse one `.wandb` file into an ImportedRun (no archive I/O)."""
    from wandb.proto import wandb_internal_pb2 as pb  # protobuf classes only; no W&B reader or server

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ImportSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    scan = scan_log(raw, path)

    steps: list[int] = []
    names: list[str] = []
    jsons: list[str] = []
    wts: list[float] = []
    sys_t: list[float] = []
    sys_n: list[str] = []
    sys_j: list[str] = []
    config: dict[str, Any] = {}
    summary_raw: dict[tuple[str, ...], str] = {}
    info: dict[str, Any] = {"exit_code": None, "run_id": None}
    unparsable = 0
    record = pb.Record()
    parse = record.ParseFromString
    wanted = _WANTED_FIELDS
    nan = float("nan")
    for rec in scan.records:
        if _record_kind(rec) not in wanted:
            continue
        try:
            parse(rec)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged record is skipped and counted
            unparsable += 1
            continue
        kind = record.WhichOneof("record_type")
        if kind == "history":
            h = record.history
            step = None
            ts = nan
            n0 = len(names)
            for item in h.item:
                nk = item.nested_key
                key = (nk[0] if len(nk) == 1 else "/".join(nk)) if nk else item.key
                if key in _SPECIAL:
                    if key == "_step":
                        step = item.value_json
                    elif key == "_timestamp":
                        ts = item.value_json
                    continue
                names.append(key)
                jsons.append(item.value_json)
            k = len(names) - n0
            if k:
                s = int(float(step)) if step is not None else h.step.num
                steps.extend([s] * k)
                wts.extend([float(ts)] * k)
        elif kind == "stats":
            st = record.stats
            t = st.timestamp.seconds + st.timestamp.nanos / 1e9
            for item in st.item:
                sys_n.append(item.key)
                sys_j.append(item.value_json)
                sys_t.append(t)
        elif kind == "summary":
            # raw JSON kept per key, decoded once at the end: W&B writes a summary record per step
            for item in record.summary.update:
                nk = item.nested_key
                summary_raw[tuple(nk) if nk else (item.key,)] = item.value_json
            for item in record.summary.remove:
                nk = item.nested_key
                summary_raw.pop(tuple(nk) if nk else (item.key,), None)
        elif kind in ("config", "run"):
            if kind == "run":
                r = record.run
                info.update(run_id=r.run_id, project=r.project or None, name=r.display_name or None,
                            host=r.host or None, entity=r.entity or None,
                            created=r.start_time.seconds + r.start_time.nanos / 1e9 if r.start_time.seconds else None)
                cfg = r.config
            else:
                cfg = record.config
            for item in cfg.update:
                parts = list(item.nested_key) or [item.key]
                if parts[0] != "_wandb":
                    _nest(config, parts, _loads(item.value_json))
            for item in cfg.remove:
                config.pop(item.key, None)
        elif kind == "exit":
            info["exit_code"] = record.exit.exit_code

    summary: dict[str, Any] = {}
    for parts, text in summary_raw.items():
        if parts and parts[0] not in _SPECIAL:
            _nest(summary, list(parts), _loads(text))
    values, bad = _values(names, jsons, steps, wts)
    metrics = metrics_table(steps, names, values, seconds_to_ts(wts))
    sys_values, sys_bad = _values(sys_n, sys_j, None, sys_t)
    sys_names, sys_gpu = [], []
    for key in sys_n:
        name, gpu = _system_name(key)
        sys_names.append(name)
        sys_gpu.append(gpu)

    run_id = info["run_id"] or Path(path).stem.removeprefix("run-")
    if info["exit_code"] is None:
        status = "crashed"  # the run never wrote its exit record: killed, crashed, or still running
    else:
        status = "finished" if info["exit_code"] == 0 else "crashed"
    created = info.get("created")
    events = []
    if scan.skipped_bytes or scan.bad_chunks:
        events.append({"kind": "note", "severity": "warning", "step": None,
                       "message": f"import skipped {scan.skipped_bytes} bytes of {os.path.basename(path)} "
                                  f"({'torn last block' if scan.truncated else 'damaged chunks'})",
                       "details_json": json.dumps({"skipped_bytes": scan.skipped_bytes,
                                                   "bad_chunks": scan.bad_chunks})})
    skipped = {"bytes of a torn or damaged log": scan.skipped_bytes, "unreadable records": unparsable,
               "non-numeric values": bad, "non-numeric system values": sys_bad}
    wall = [w for w in wts if w == w]
    return ImportedRun(
        run_id=source_id("wandb", run_id), name=run_name or info.get("name") or run_id, source="wandb",
        source_path=str(Path(path).resolve()), metrics=metrics, status=status, project=info.get("project"),
        created_at=dt.datetime.fromtimestamp(created, dt.UTC) if created else None,
        ended_at=dt.datetime.fromtimestamp(max(wall), dt.UTC) if wall else None,
        host=info.get("host"), config=config,
        extra={"source_run_id": run_id, "summary": summary, "exit_code": info["exit_code"],
               "entity": info.get("entity")},
        system=system_table(seconds_to_ts(sys_t), sys_names, sys_values, sys_gpu, info.get("host"))
        if sys_n else None,
        events=events, skipped=skipped,
    )


def _values(names: list[str], jsons: list[str], steps: list[int] | None, wts: list[float]) -> tuple[list, int]:
    """Decode every JSON value at once (one C call); expand dict values, drop non-numbers in place."""
    if not jsons:
        return [], 0
    try:
        decoded = json.loads("[" + ",".join(jsons) + "]")
    except ValueError:
        decoded = [_loads(j) for j in jsons]
    if set(map(type, decoded)) <= {float, int}:  # the common case: every value already a number
        return decoded, 0
    out: list[float] = []
    new_names: list[str] = []
    new_steps: list[int] = []
    new_wts: list[float] = []
    bad = 0
    for i, v in enumerate(decoded):
        pairs = flatten(v, names[i]) if isinstance(v, dict) and "_type" not in v else ((names[i], v),)
        for name, leaf in pairs:
            x = as_number(leaf)
            if x is None:
                bad += 1
                continue
            out.append(x)
            new_names.append(name)
            new_wts.append(wts[i])
            if steps is not None:
                new_steps.append(steps[i])
    names[:] = new_names
    wts[:] = new_wts
    if steps is not None:
        steps[:] = new_steps
    return out, bad


# ---- sources: a file, a run folder, a folder of runs ---------------------------------------------

def find_wandb_files(path: str) -> list[str]:
    """`.wandb` files under `path` (itself a file, a run folder, or a wandb/ folder), deduplicated."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImportSourceError(f"{path} does not exist: pass a run-*.wandb file or a wandb/ run folder")
    if p.is_file():
        return [str(p)]
    seen: dict[str, str] = {}
    for f in sorted(p.rglob("*.wandb")):
        real = os.path.realpath(f)  # wandb/latest-run is a link to a run folder
        if "latest-run" in f.parts and real in seen:
            continue
        seen.setdefault(real, str(f))
    if not seen:
        raise ImportSourceError(f"no .wandb files under {path}: pass a run-*.wandb file or a wandb/ run folder")
    return sorted(seen.values())


def import_wandb(path: str, archive_url: str | None, *, run_name: str | None = None, quiet: bool = False,
                 storage_options: dict | None = None) -> ImportSummary:
    """Import every W&B run under `path` into the archive."""
    files = find_wandb_files(path)
    if run_name and len(files) > 1:
        raise ImportSourceError(f"--run names one run, but {path} holds {len(files)} .wandb files")
    summary = ImportSummary("wandb")
    t0 = time.perf_counter()
    with progress(sum(os.path.getsize(f) for f in files), "import wandb", quiet=quiet) as bar:
        for f in files:
            run = read_wandb_file(f, run_name=run_name)
            summary.add(run, write_run(archive_url, run, storage_options=storage_options))
            summary.source_bytes += os.path.getsize(f)
            bar.update(os.path.getsize(f))
    summary.seconds = time.perf_counter() - t0
    return summary
