"""Observer capture on CPU: what the loop computed is what the archive holds, step by step."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, details, metric_series, read_table, tiny_model

pytestmark = pytest.mark.timeout(120)


def _train(obs, model, opt, sched, steps: int, *, tokens: int = 32) -> list[dict]:
    """A plain loop; returns what the loop itself saw at each step."""
    seen = []
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        obs.record_loss(loss, tokens=tokens)
        seen.append({"loss": loss.item(), "grad_norm": grad_norm.item(),
                     "lrs": [g["lr"] for g in opt.param_groups]})
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return seen


def _two_group_adamw(model):
    return torch.optim.AdamW([{"params": model.embed.parameters(), "lr": 1e-2},
                              {"params": model.head.parameters(), "lr": 3e-3}], weight_decay=0.1)


def test_recorded_loss_grad_norm_and_lr_equal_what_the_loop_computed(archive):
    model = tiny_model()
    opt = _two_group_adamw(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    obs = trainer_hooks.attach(model, opt, run="capture", archive=archive, sample_gpu=False)
    seen = _train(obs, model, opt, sched, 20)
    obs.close()

    loss, gn = metric_series(archive, "loss"), metric_series(archive, "grad_norm")
    lr0, lr1 = metric_series(archive, "lr"), metric_series(archive, "lr/group1")
    assert sorted(loss) == list(range(20))
    for step, s in enumerate(seen):
        assert loss[step] == pytest.approx(s["loss"], rel=1e-6)
        assert gn[step] == pytest.approx(s["grad_norm"], rel=1e-5)
        assert lr0[step] == s["lrs"][0] and lr1[step] == s["lrs"][1]
    assert lr0[19] == pytest.approx(1e-2 / 20)  # the scheduler really moved: the lr used at that step
    tokens = metric_series(archive, "tokens_seen")
    assert [tokens[s] for s in range(20)] == [32.0 * (s + 1) for s in range(20)]
    assert all(v > 0 for v in metric_series(archive, "step_time_s").values())
    assert sorted(metric_series(archive, "data_wait_s")) == list(range(1, 20))  # needs a previous step end
    assert all(v > 0 for v in metric_series(archive, "tokens_per_s").values())
    assert "mfu" not in {r["name"] for r in read_table(archive, "metrics")}  # no flops given
    assert read_table(archive, "events", "kind = 'hook_error'") == []


def test_gradient_accumulation_averages_micro_batches_and_uses_a_handed_grad_norm(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    obs = trainer_hooks.attach(model, opt, run="accum", archive=archive, sample_gpu=False,
                               model_flops_per_token=1000.0, peak_flops=1e9)
    want = []
    for step in range(5):
        micro = []
        for k in range(3):
            x, y = batch(10 * step + k)
            loss = torch.nn.functional.mse_loss(model(x), y)
            (loss / 3).backward()
            obs.record_loss(loss, tokens=4)
            micro.append(loss.item())
        clipped = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
        obs.grad_norm(clipped)
        want.append((sum(micro) / 3, clipped.item()))
        opt.step()
        opt.zero_grad()
    obs.close()
    loss, gn = metric_series(archive, "loss"), metric_series(archive, "grad_norm")
    for step, (mean_loss, g) in enumerate(want):
        assert loss[step] == pytest.approx(mean_loss, rel=1e-6)
        assert gn[step] == pytest.approx(g, rel=1e-6)
    mfu, tps = metric_series(archive, "mfu"), metric_series(archive, "tokens_per_s")
    assert mfu[4] == pytest.approx(tps[4] * 1000.0 / 1e9)
    assert metric_series(archive, "tokens_seen")[4] == 60.0


def test_record_loss_takes_tensors_floats_and_model_outputs(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="loss-kinds", archive=archive, sample_gpu=False)
    for step, make in enumerate([lambda t: t, lambda t: t.item(), lambda t: SimpleNamespace(loss=t)]):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(make(loss))
        opt.step()
        opt.zero_grad()
        assert obs.step == step + 1
        obs.log({"expected": loss.item()})
    obs.close()
    loss, expected = metric_series(archive, "loss"), metric_series(archive, "expected")
    assert sorted(loss) == [0, 1, 2]
    for s in range(3):
        assert loss[s] == pytest.approx(expected[s], rel=1e-6)


def test_log_accepts_python_numpy_and_tensor_scalars_and_refuses_vectors(archive, caplog):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="log", archive=archive, sample_gpu=False)
    with caplog.at_level(logging.WARNING, logger="flightlog.hooks"):
        for step in range(3):
            x, y = batch(step)
            out = model(x)
            loss = torch.nn.functional.mse_loss(out, y)
            obs.log({"py_int": 7, "py_float": 0.25, "np_f32": np.float32(1.5), "np_i64": np.int64(-3),
                     "t0d": torch.tensor(2.5), "t1": torch.tensor([4.0]), "vec": out.detach(),
                     "word": "hello", "nan": float("nan")})
            loss.backward()
            opt.step()
            opt.zero_grad()
            obs.log({"after_step": torch.tensor(float(step))})  # between steps: the step just finished
        obs.log({"explicit": 9.0}, step=42)
    obs.close()
    got = {r["name"]: r for r in read_table(archive, "metrics", "step = 1")}
    assert got["py_int"]["value"] == 7.0 and got["py_float"]["value"] == 0.25
    assert got["np_f32"]["value"] == 1.5 and got["np_i64"]["value"] == -3.0
    assert got["t0d"]["value"] == 2.5 and got["t1"]["value"] == 4.0
    assert math.isnan(got["nan"]["value"])  # NaN is data
    assert metric_series(archive, "after_step") == {0: 0.0, 1: 1.0, 2: 2.0}
    assert metric_series(archive, "explicit") == {42: 9.0}
    assert "vec" not in got and "word" not in got
    refused = [r for r in caplog.records if "vec" in r.getMessage() or "word" in r.getMessage()]
    assert len(refused) == 2  # one line per name, not per call
    assert read_table(archive, "events", "kind = 'hook_error'") == []


def test_a_broken_hook_input_becomes_a_hook_error_event_not_an_exception(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="bad-input", archive=archive, sample_gpu=False)
    for step in range(3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss("not a loss")  # float("not a loss") raises inside the hook
        opt.step()
        opt.zero_grad()
    obs.close()
    errors = read_table(archive, "events", "kind = 'hook_error'")
    assert errors and all(e["severity"] == "error" for e in errors)
    assert "record_loss" in errors[0]["message"]
    assert sorted(metric_series(archive, "grad_norm")) == [0, 1, 2]  # the rest of capture went on


def test_archive_removed_mid_run_never_reaches_the_training_loop(archive, tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="doomed", archive=archive, sample_gpu=False)
    for step in range(30):
        if step == 10:
            shutil.rmtree(archive)
            with open(archive, "w") as fh:  # a file where the folder was: every write now fails
                fh.write("not an archive")
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss, tokens=4)
        opt.step()
        opt.zero_grad()
        obs.log({"step_seen": step})
    obs.close(timeout=3.0)  # returns although nothing can be written
    assert obs.step == 30
    assert os.path.isfile(archive)


def test_data_chunks_from_observed_batches(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="chunks", archive=archive, sample_gpu=False)
    loader = [{"x": batch(i)[0], "y": batch(i)[1], "chunk": i // 3, "sample_ids": torch.arange(4) + 4 * i}
              for i in range(7)]
    for b in trainer_hooks.observe_batches(loader, obs):
        loss = torch.nn.functional.mse_loss(model(b["x"]), b["y"])
        loss.backward()
        obs.record_loss(loss, tokens=16)
        opt.step()
        opt.zero_grad()
    obs.close()
    chunks = sorted((r["chunk_id"], r["first_step"], r["last_step"], r["tokens"])
                    for r in read_table(archive, "data_chunks"))
    assert chunks == [(0, 0, 2, 48), (1, 3, 5, 48), (2, 6, 6, 16)]
    starts = read_table(archive, "events", "kind = 'data_chunk_start'")
    assert sorted((e["step"], e["data_chunk"]) for e in starts) == [(0, 0), (3, 1), (6, 2)]


def test_grad_scaler_loss_scale_is_recorded(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    obs = trainer_hooks.attach(model, opt, run="scaler", archive=archive, sample_gpu=False, scaler=scaler)
    used = []
    for step in range(5):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        obs.record_loss(loss)
        used.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    obs.close()
    scale = metric_series(archive, "loss_scale")
    assert [scale[s] for s in range(5)] == used
    assert used[-1] > used[0]  # the scale grew: values differ per step


def test_observer_config_refuses_bad_values_with_clear_messages():
    with pytest.raises(ValueError, match="spike_window"):
        trainer_hooks.ObserverConfig(spike_window=0)
    with pytest.raises(ValueError, match="master_weights_dtype"):
        trainer_hooks.ObserverConfig(master_weights_dtype="fp33")
    with pytest.raises(TypeError):
        trainer_hooks.ObserverConfig(not_an_option=1)


def test_an_exception_in_the_with_block_ends_the_attempt_as_crashed(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(RuntimeError, match="boom"):
        with trainer_hooks.attach(model, opt, run="crash", archive=archive, sample_gpu=False) as obs:
            x, y = batch(0)
            torch.nn.functional.mse_loss(model(x), y).backward()
            obs.record_loss(1.0)
            opt.step()
            raise RuntimeError("boom")
    statuses = [r["end_status"] for r in read_table(archive, "attempts") if r["end_status"]]
    assert statuses == ["crashed"]
    assert metric_series(archive, "loss") == {0: 1.0}  # the finished step was still written
    assert opt._optimizer_step_post_hooks == {}  # hooks removed: the optimizer is as it was


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_capture_matches_the_loop_without_syncing(archive):
    dev = torch.device("cuda")
    model = tiny_model().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="cuda", archive=archive, sample_gpu=False)
    losses, norms = [], []
    data = [tuple(t.to(dev) for t in batch(step)) for step in range(10)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in data:
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
            obs.record_loss(loss, tokens=4)
            obs.log({"gpu_scalar": loss.detach() * 2})
            losses.append(loss.detach())
            opt.step()
            opt.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    obs.close()
    assert obs._errors == {}
    loss, gn = metric_series(archive, "loss"), metric_series(archive, "grad_norm")
    twice = metric_series(archive, "gpu_scalar")
    for s in range(10):
        assert loss[s] == pytest.approx(losses[s].item(), rel=1e-6)
        assert gn[s] == pytest.approx(norms[s].item(), rel=1e-5)
        assert twice[s] == pytest.approx(2 * losses[s].item(), rel=1e-6)
    assert metric_series(archive, "mem_allocated_bytes")[9] > 0


class _SlowMirror:
    """A mirror that stalls the drainer thread (think: a hung network logger)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, metrics: dict, step: int) -> None:
        time.sleep(0.05)
        self.steps.append(step)


def test_a_stalled_drainer_drops_and_counts_steps_instead_of_blocking_the_loop(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mirror = _SlowMirror()
    obs = trainer_hooks.attach(model, opt, run="stalled", archive=archive, sample_gpu=False, ring_size=4,
                               mirror=mirror)
    t0 = time.perf_counter()
    for step in range(60):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss)
        opt.step()
        opt.zero_grad()
    loop_s = time.perf_counter() - t0
    obs.close()
    assert loop_s < 1.5  # 60 steps x 50 ms of mirror time would be 3 s if the loop waited
    dropped = obs._buf.dropped
    assert dropped > 10
    (e,) = read_table(archive, "events", "kind = 'dropped_records'")
    assert details(e)["steps"] == dropped
    assert len(metric_series(archive, "loss")) == 60 - dropped == len(mirror.steps)


def test_steps_the_grad_scaler_skips_are_still_steps_marked_skipped(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    obs = trainer_hooks.attach(model, opt, run="skips", archive=archive, sample_gpu=False, scaler=scaler)
    overflow = {0, 1, 5}
    for step in range(8):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in overflow:  # what an fp16 overflow looks like: an inf in the scaled gradients
            model.head.bias.grad[0] = float("inf")
        obs.record_loss(loss)
        scaler.step(opt)  # skips optimizer.step(): no step hook fires
        scaler.update()
        opt.zero_grad()
    obs.close()
    loss, skipped = metric_series(archive, "loss"), metric_series(archive, "step_skipped")
    assert sorted(loss) == list(range(8))  # every iteration is a step, skipped or not
    assert sorted(skipped) == sorted(overflow)
    assert sorted(metric_series(archive, "grad_norm")) == [2, 3, 4, 6, 7]  # no norm for a skipped update
    scale = metric_series(archive, "loss_scale")
    assert [scale[s] for s in range(8)] == [1024.0, 512.0, 256.0, 256.0, 256.0, 256.0, 128.0, 128.0]
    assert read_table(archive, "events", "kind IN ('nan', 'inf', 'hook_error')") == []  # overflow is routine
