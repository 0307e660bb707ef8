"""Import W&B runs straight from `.wandb` files (offline runs, or any run folder), no W&B server.

A `.wandb` file is a LevelDB-style log of records (its framing: telemetry.importers.wandb_records).
Each assembled record is a `wandb_internal_pb2.Record`; history and stats values are JSON strings,
where the SDK writes NaN and ±Inf as the bare tokens NaN/Infinity/-Infinity (Python's json reads them).

A crashed run leaves a torn last block: every complete record is imported, the rest is
counted as skipped bytes. A chunk with a bad checksum skips the rest of its block, as
LevelDB readers do.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
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
from telemetry.importers.wandb_records import record_kind, scan_log

# history, summary, config, stats, run, exit: the record types worth parsing
_WANTED_FIELDS = {2, 3, 5, 7, 17, 18}
_SPECIAL = {"_step", "_timestamp", "_runtime", "_wandb"}


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
        if record_kind(rec) not in wanted:
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
