"""The CPU grad norm is reduced on the drainer thread only when that cannot change its value."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, metric_series, tiny_model
from trainer_hooks import grad_norm as grad_norm_mod

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def norm_threads(monkeypatch):
    """Names of the threads that ran torch._foreach_norm, in call order (instrumentation only)."""
    names: list[str] = []
    real = torch._foreach_norm

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", recording)
    return names


def _train(obs, model, opt, steps: int, set_to_none) -> dict[int, float]:
    """The loop's own pre-step grad norms; `set_to_none(step)` says how this step zeroes."""
    norms = {}
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        norms[step] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
        obs.record_loss(loss)
        opt.step()
        opt.zero_grad(set_to_none=set_to_none(step))
    return norms


def test_default_zeroing_defers_the_norm_to_the_drainer_and_records_the_loops_value(archive, norm_threads):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    obs = trainer_hooks.attach(model, opt, run="deferred", archive=archive, sample_gpu=False)
    reference = _train(obs, model, opt, 30, lambda s: True)
    obs.close()

    recorded = metric_series(archive, "grad_norm")
    assert sorted(recorded) == list(range(30))
    for step, value in reference.items():
        assert recorded[step] == pytest.approx(value, rel=1e-5)
    warm = grad_norm_mod.WARMUP_STEPS
    # The first steps are computed in place while the loop shows how it zeroes; then the drainer does it.
    assert norm_threads[:warm] == ["MainThread"] * warm
    assert norm_threads[warm:] == ["flightlog-drainer"] * (30 - warm)


def test_in_place_zeroing_keeps_the_norm_on_the_training_thread(archive, norm_threads):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    obs = trainer_hooks.attach(model, opt, run="in-place", archive=archive, sample_gpu=False)
    reference = _train(obs, model, opt, 20, lambda s: False)
    obs.close()

    recorded = metric_series(archive, "grad_norm")
    assert recorded == pytest.approx(reference, rel=1e-5)
    assert norm_threads == ["MainThread"] * 20


def test_a_loop_that_switches_to_in_place_zeroing_never_gets_a_wrong_norm(archive, norm_threads, caplog):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    obs = trainer_hooks.attach(model, opt, run="switch", archive=archive, sample_gpu=False)
    with caplog.at_level(logging.WARNING, logger="flightlog.hooks"):
        # Steps 0-9 drop their gradients; from the end of step 9 on they are zeroed in place, which
        # writes into the tensors step 9 handed to the drainer.
        reference = _train(obs, model, opt, 20, lambda s: s < 9)
        obs.close()

    recorded = metric_series(archive, "grad_norm")
    missing = sorted(set(reference) - set(recorded))
    assert len(missing) <= 1  # at most the step whose gradients were overwritten: never a wrong value
    for step, value in recorded.items():
        assert value == pytest.approx(reference[step], rel=1e-5)
    if missing:
        assert missing == [9]
        assert "written in place after optimizer.step()" in caplog.text
    # Steps 0-1 (warm-up) and 10-19 (kept gradients seen at step 10's start: in place for good) on the
    # training thread; 2-9 on the drainer.
    assert norm_threads.count("MainThread") == grad_norm_mod.WARMUP_STEPS + 10
    assert norm_threads.count("flightlog-drainer") == 10 - grad_norm_mod.WARMUP_STEPS


def test_large_models_keep_the_norm_in_place_to_bound_held_memory(archive, norm_threads, monkeypatch):
    monkeypatch.setattr(grad_norm_mod, "MAX_HELD_BYTES", 1024)  # the tiny model's gradients exceed it
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    obs = trainer_hooks.attach(model, opt, run="large", archive=archive, sample_gpu=False)
    reference = _train(obs, model, opt, 10, lambda s: True)
    obs.close()

    assert metric_series(archive, "grad_norm") == pytest.approx(reference, rel=1e-5)
    assert norm_threads == ["MainThread"] * 10
