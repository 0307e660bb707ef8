"""Where this process sits in the job: rank, local rank, host, GPU, and dp/tp/pp coordinates.

Sources, first match wins:
1. Megatron's `megatron.core.parallel_state`, when the job has imported and initialised it.
2. A `DeviceMesh` passed to attach(), with dimension names among dp/tp/pp (aliases below).
3. `torch.distributed` world/rank, with tp_size/pp_size from the config and dp = world/(tp*pp).
   Ranks are laid out as Megatron does by default: tp varies fastest, then dp, then pp.
4. The launcher's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`), else a single process.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch
import torch.distributed as dist

import telemetry  # its public names load on first use: `telemetry.Writer` below, not at import (duckdb)

_log = logging.getLogger("flightlog.hooks")

_MESH_ALIASES = {
    "dp": ("dp", "data", "data_parallel", "dp_shard", "fsdp", "ddp"),
    "tp": ("tp", "tensor", "tensor_parallel"),
    "pp": ("pp", "pipe", "pipeline", "pipeline_parallel"),
}


@dataclass(kw_only=True, slots=True)
class Topology:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    host: str = ""
    gpu_uuid: str | None = None
    dp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    pp_size: int = 1
    source: str = "single"


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _from_megatron() -> dict[str, Any] | None:
    # A Megatron job has imported parallel_state long before attach(); importing it ourselves would
    # cost seconds (and warnings) in every job that merely has megatron-core installed.
    ps = sys.modules.get("megatron.core.parallel_state")
    if ps is None:
        return None
    try:
        if not ps.model_parallel_is_initialized():
            return None
        return {
            "dp_rank": ps.get_data_parallel_rank(), "dp_size": ps.get_data_parallel_world_size(),
            "tp_rank": ps.get_tensor_model_parallel_rank(), "tp_size": ps.get_tensor_model_parallel_world_size(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(), "pp_size": ps.get_pipeline_model_parallel_world_size(),
            "source": "megatron",
        }
    except Exception as exc:  # noqa: BLE001
        _log.warning("flightlog: Megatron parallel state unreadable (%r); using torch.distributed", exc)
        return None


def _from_mesh(mesh: Any) -> dict[str, Any]:
    names = tuple(mesh.mesh_dim_names or ())
    if not names:
        raise ValueError("device_mesh has no dimension names; create it with mesh_dim_names=('dp', 'tp', ...)")
    out: dict[str, Any] = {"source": "device_mesh"}
    for dim, aliases in _MESH_ALIASES.items():
        hit = next((n for n in names if n in aliases), None)
        if hit is not None:
            out[f"{dim}_rank"] = mesh.get_local_rank(hit)
            out[f"{dim}_size"] = mesh.size(names.index(hit))
    return out


def megatron_layout(rank: int, world: int, tp_size: int, pp_size: int) -> dict[str, int]:
    """dp/tp/pp coordinates of `rank` in Megatron's default order (tp fastest, then dp, then pp)."""
    if world % (tp_size * pp_size):
        raise ValueError(f"world size {world} is not divisible by tp_size*pp_size = {tp_size}*{pp_size}; "
                         "set tp_size/pp_size to the job's real parallelism")
    dp_size = world // (tp_size * pp_size)
    return {"tp_rank": rank % tp_size, "dp_rank": (rank // tp_size) % dp_size, "pp_rank": rank // (tp_size * dp_size),
            "tp_size": tp_size, "dp_size": dp_size, "pp_size": pp_size}


def gpu_uuid(device: torch.device | None = None) -> str | None:
    """UUID of this rank's GPU as NVML prints it ("GPU-..."), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    try:
        idx = torch.cuda.current_device() if device is None or device.index is None else device.index
        uuid = str(torch.cuda.get_device_properties(idx).uuid)
        return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    except Exception:  # noqa: BLE001 - older drivers/builds: the column stays empty
        return None


def discover(*, device_mesh: Any = None, rank: int | None = None, local_rank: int | None = None,
             world_size: int | None = None, tp_size: int = 1, pp_size: int = 1,
             device: torch.device | None = None) -> Topology:
    """This process's Topology; explicit arguments override what is discovered."""
    initialised = dist.is_available() and dist.is_initialized()
    r = rank if rank is not None else dist.get_rank() if initialised else _env_int("RANK") or 0
    w = world_size if world_size is not None else dist.get_world_size() if initialised else _env_int("WORLD_SIZE") or 1
    lr = local_rank if local_rank is not None else _env_int("LOCAL_RANK")
    if lr is None:
        lr = device.index if device is not None and device.type == "cuda" and device.index is not None else r
    coords = _from_megatron()
    if coords is None and device_mesh is not None:
        coords = _from_mesh(device_mesh)
    if coords is None:
        coords = {**megatron_layout(r, w, tp_size, pp_size),
                  "source": "torch.distributed" if initialised else "env" if "RANK" in os.environ else "single"}
    topo = Topology(rank=r, local_rank=lr, world_size=w, host=socket.gethostname(), gpu_uuid=gpu_uuid(device))
    for k, v in coords.items():
        setattr(topo, k, v)
    return topo


def agree_attempt(attempt: int | None) -> int | None:
    """Rank 0's attempt number on every rank (one broadcast at attach time; a sync here is fine).

    Other ranks pass anything (None); with no initialised process group the input is returned.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return attempt
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([-1 if attempt is None else attempt], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    value = int(t.item())
    return None if value < 0 else value


def open_rank_writer(archive: str | None, run: str, topo: Topology, *, attempt: int | None, config: Any = None,
                     **writer_kwargs: Any) -> Any:
    """This rank's telemetry.Writer. With `attempt=None` rank 0 finds the next attempt of the run
    in the archive and every rank uses rank 0's number (all ranks must call this)."""
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    elif config is not None and not isinstance(config, dict):
        config = dict(vars(config))
    if archive is None:
        archive = os.environ.get("FLIGHTLOG_ARCHIVE", "./flightlog-archive")
    common = dict(rank=topo.rank, world_size=topo.world_size, config=config, host=topo.host, dp_size=topo.dp_size,
                  tp_size=topo.tp_size, pp_size=topo.pp_size, **writer_kwargs)
    if attempt is None:
        first = telemetry.Writer(archive, run, attempt=None, **common) if topo.rank == 0 else None
        attempt = agree_attempt(first.attempt if first is not None else None)
        if first is not None:
            return first
    return telemetry.Writer(archive, run, attempt=attempt, **common)
