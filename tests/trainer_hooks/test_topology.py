"""Rank awareness: dp/tp/pp coordinates, per-rank files, one attempt number for all ranks."""

from __future__ import annotations

import glob
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import trainer_hooks
from tests.trainer_hooks.conftest import batch, read_table, tiny_model
from trainer_hooks.topology import discover, megatron_layout


def test_megatron_layout_puts_tp_fastest_then_dp_then_pp():
    # world 8 = tp 2 x dp 2 x pp 2
    coords = [megatron_layout(r, 8, 2, 2) for r in range(8)]
    assert [c["tp_rank"] for c in coords] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert [c["dp_rank"] for c in coords] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [c["pp_rank"] for c in coords] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert coords[0]["dp_size"] == 2
    with pytest.raises(ValueError, match="not divisible"):
        megatron_layout(0, 6, 4, 1)


def test_launcher_environment_gives_rank_and_coordinates(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    topo = discover(tp_size=2)
    assert (topo.rank, topo.local_rank, topo.world_size) == (5, 1, 8)
    assert (topo.dp_rank, topo.tp_rank, topo.pp_rank, topo.dp_size) == (2, 1, 0, 4)
    assert topo.source == "env" and topo.host == socket.gethostname()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, archive: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # Attempt 0: plain torch.distributed, every rank a data-parallel replica.
        model = torch.nn.parallel.DistributedDataParallel(tiny_model())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with trainer_hooks.attach(model, opt, run="ddp", archive=archive, sample_gpu=False) as obs:
            for step in range(4):
                x, y = batch(10 * step + rank)  # each rank its own data
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                obs.record_loss(loss, tokens=4)
                opt.step()
                opt.zero_grad()
        # Attempt 1 (a restart): a DeviceMesh says both ranks are tensor-parallel peers.
        mesh = dist.device_mesh.init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
        with trainer_hooks.attach(model, opt, run="ddp", archive=archive, sample_gpu=False, device_mesh=mesh) as obs:
            x, y = batch(99)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            obs.record_loss(loss)
            opt.step()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_write_their_own_files_and_agree_on_the_attempt(archive):
    mp.spawn(_worker, args=(2, _free_port(), archive), nprocs=2, join=True)

    files = sorted(os.path.basename(p) for p in glob.glob(f"{archive}/metrics/run_id=ddp/*.parquet"))
    assert any(f.startswith("part-a0-r0-") for f in files) and any(f.startswith("part-a0-r1-") for f in files)
    assert any(f.startswith("part-a1-r0-") for f in files) and any(f.startswith("part-a1-r1-") for f in files)
    ranks = sorted((r["attempt"], r["rank"], r["dp_rank"], r["tp_rank"], r["pp_rank"])
                   for r in read_table(archive, "ranks"))
    assert ranks == [(0, 0, 0, 0, 0), (0, 1, 1, 0, 0), (1, 0, 0, 0, 0), (1, 1, 0, 1, 0)]
    assert {r["host"] for r in read_table(archive, "ranks")} == {socket.gethostname()}
    losses = read_table(archive, "metrics", "name = 'loss'")
    assert sorted({(r["attempt"], r["rank"]) for r in losses}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # DDP averages gradients: both ranks saw the same grad norm at each step.
    gn = {(r["rank"], r["step"]): r["value"]
          for r in read_table(archive, "metrics", "name = 'grad_norm' AND attempt = 0")}
    assert all(gn[(0, s)] == pytest.approx(gn[(1, s)], rel=1e-6) for s in range(4))
    runs = read_table(archive, "runs")
    assert {r["world_size"] for r in runs} == {2}
