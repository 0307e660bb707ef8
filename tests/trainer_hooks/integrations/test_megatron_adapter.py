"""MegatronFlightlog: the (update_successful, grad_norm, num_zeros_in_grad) tuple of a Megatron-style step.

Megatron-Core's optimizers need CUDA, so the loop below computes the tuple as Megatron's
optimizer does (clip, count zero grads, skip the update on inf/NaN). The rank coordinates come
from the real `megatron.core.parallel_state`, initialised over gloo with tensor parallel size 2.
"""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.trainer_hooks.integrations.conftest import rows, series
from trainer_hooks.integrations.megatron import MegatronFlightlog

pytestmark = pytest.mark.timeout(180)

STEPS, BAD_STEP, VOCAB = 5, 3, 40


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)  # rows of unseen tokens get zero gradients: num_zeros > 0
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def megatron_style_step(model: torch.nn.Module, opt: torch.optim.Optimizer, clip: float):
    """What Megatron's optimizer.step() returns: skip on non-finite grads, else clip and step."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.get_total_norm(grads))
    if not math.isfinite(norm):
        return False, None, None
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), clip, torch.tensor(norm))
    zeros = int(sum((g == 0).sum() for g in grads))
    opt.step()
    return True, norm, zeros


def train(fl: MegatronFlightlog, seed: int) -> dict[int, dict]:
    """STEPS iterations; at BAD_STEP the loss is scaled by inf (an overflow). Returns what each step saw."""
    torch.manual_seed(seed)
    model = fl.observer.model
    opt = fl.optimizer
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    seen = {}
    for i in range(STEPS):
        step = fl.observer.step
        ids = torch.randint(0, VOCAB // 2, (4, 6))
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB), ids.roll(1, 1).reshape(-1))
        (loss * (math.inf if i == BAD_STEP else 1.0)).backward()
        lr = opt.param_groups[0]["lr"]
        ok, norm, zeros = megatron_style_step(model, opt, clip=0.1)
        fl.step(ok, norm, zeros, loss={"lm loss": torch.stack([loss.detach() * 24, torch.tensor(24.0)]),
                                       "z loss": loss.detach() * 0.01}, tokens=ids.numel())
        opt.zero_grad()
        if ok:
            sched.step()
        seen[step] = {"ok": ok, "norm": norm, "zeros": zeros, "loss": loss.item(), "lr": lr}
    return seen


def _worker(rank: int, port: int, archive: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2, create_gloo_process_groups=False)
    try:
        model = Tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        fl = MegatronFlightlog([model], opt, run="megatron-tp2", archive=archive, sample_gpu=False, seed=1)
        seen = train(fl, seed=10 + rank)
        fl.close()
        with open(f"{out}.{rank}.json", "w") as fh:
            json.dump({"run_id": fl.run_id, "seen": seen}, fh)
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_steps(archive: str, run_id: str, rank: int, seen: dict[int, dict]) -> None:
    assert sorted(seen) == list(range(STEPS))
    loss, gn, zeros, lr = (series(archive, run_id, n, rank) for n in ("loss", "grad_norm", "num_zeros", "lr"))
    skipped = series(archive, run_id, "step_skipped", rank)
    for step, s in seen.items():
        assert loss[step] == pytest.approx(s["loss"], rel=1e-5)  # [sum, count] pair -> sum / count
        assert lr[step] == pytest.approx(s["lr"], rel=1e-9)
        if s["ok"]:
            assert gn[step] == pytest.approx(s["norm"], rel=1e-6) and zeros[step] == s["zeros"] > 0
        else:
            assert step not in gn and step not in zeros and skipped == {step: 1.0}
    assert sorted(series(archive, run_id, "z loss", rank)) == list(range(STEPS))
    events = rows(archive, "SELECT step, kind, severity FROM events WHERE run_id = ? AND rank = ? "
                  "AND kind = 'skipped_update'", [run_id, rank])
    assert [(e["step"], e["severity"]) for e in events] == [(BAD_STEP, "warning")]


def test_every_step_is_recorded_including_a_skipped_update_with_ranks_from_parallel_state(archive):
    ps = pytest.importorskip("megatron.core.parallel_state")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ps.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
        model = Tiny()
        fl = MegatronFlightlog([model], torch.optim.SGD(model.parameters(), lr=0.5), run="megatron-1",
                               archive=archive, sample_gpu=False)
        assert fl.observer.topology.source == "megatron"
        seen = train(fl, seed=3)
        fl.close()
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    assert seen[BAD_STEP]["ok"] is False and all(s["ok"] for k, s in seen.items() if k != BAD_STEP)
    _check_steps(archive, fl.run_id, 0, seen)
    run = rows(archive, "SELECT framework, status FROM runs WHERE run_id = ?", [fl.run_id])[0]
    assert (run["framework"], run["status"]) == ("megatron", "finished")


@pytest.mark.slow
def test_tp2_ranks_take_their_coordinates_from_parallel_state(tmp_path, archive):
    pytest.importorskip("megatron.core.parallel_state")
    out = str(tmp_path / "seen")
    mp.spawn(_worker, args=(_free_port(), archive, out), nprocs=2)
    results = [json.load(open(f"{out}.{r}.json")) for r in (0, 1)]
    run_id = results[0]["run_id"]
    assert results[1]["run_id"] == run_id

    ranks = rows(archive, "SELECT rank, dp_rank, tp_rank, pp_rank FROM ranks WHERE run_id = ? ORDER BY rank", [run_id])
    assert [(r["rank"], r["dp_rank"], r["tp_rank"], r["pp_rank"]) for r in ranks] == [(0, 0, 0, 0), (1, 0, 1, 0)]
    run = rows(archive, "SELECT framework, world_size, dp_size, tp_size, pp_size FROM runs WHERE run_id = ?",
               [run_id])[0]
    assert (run["framework"], run["world_size"], run["dp_size"], run["tp_size"], run["pp_size"]) == (
        "megatron", 2, 1, 2, 1)

    for rank, res in enumerate(results):
        _check_steps(archive, run_id, rank, {int(k): v for k, v in res["seen"].items()})
