"""NaN/Inf forensics and spike detection, on real CPU training."""

from __future__ import annotations

import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, details, read_table, tiny_model
from trainer_hooks.forensics import SpikeDetector

pytestmark = pytest.mark.timeout(120)

POISON_CHUNK = 7


def _train_with_poison(obs, model, opt, steps: int, poison_steps: set[int]) -> None:
    """A loop that, like many trainers, skips the update when the loss is not finite.

    `obs.drain()` after each step stands for a real step's duration: the drainer keeps up, so
    the probe armed after the first NaN is in place for the next poisoned step.
    """
    for step in range(steps):
        x, y = batch(step)
        chunk, ids = step // 5, list(range(100 * step, 100 * step + 4))
        if step in poison_steps:
            x = x.clone()
            x[2] = 1e30  # finite input; embed stays finite, square overflows to inf, head makes NaN
            chunk, ids = POISON_CHUNK, [9000 + step, 9001 + step, 9002 + step, 9003 + step]
        obs.set_batch(chunk=chunk, sample_ids=torch.tensor(ids))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss, tokens=4)
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)  # skip the update, keep the step boundary
        opt.step()
        opt.zero_grad(set_to_none=True)
        obs.drain()


def test_nan_event_names_chunk_step_sample_ids_seed_and_first_nonfinite_layer(archive):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="nan", archive=archive, sample_gpu=False, seed=1234)
    _train_with_poison(obs, model, opt, 12, poison_steps={4, 9})
    obs.close()

    events = sorted(read_table(archive, "events", "kind IN ('nan', 'inf')"), key=lambda e: e["step"])
    assert [(e["kind"], e["step"]) for e in events] == [("nan", 4), ("nan", 9)]
    first, later = events
    for e, step in ((first, 4), (later, 9)):
        assert e["severity"] == "error" and e["rank"] == 0
        assert e["data_chunk"] == POISON_CHUNK
        assert e["sample_ids"] == [9000 + step, 9001 + step, 9002 + step, 9003 + step]
        d = details(e)
        assert d["seed"] == 1234 and d["metric"] == "loss" and d["loss"] == "nan"
        assert e["layer"] == "square"  # not "embed" (finite), not "head" (comes later)
    # The first NaN was found before the probe was armed: its layer comes from the probe step.
    assert details(first)["layer_probe_step"] == 9
    assert details(later)["layer_probe_step"] == 9
    assert "square" in later["message"]


def test_probing_every_step_names_the_layer_of_the_poisoned_step_itself(archive):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="probe", archive=archive, sample_gpu=False, nan_layer_probe_every=1)
    _train_with_poison(obs, model, opt, 6, poison_steps={3})
    obs.close()
    (e,) = read_table(archive, "events", "kind IN ('nan', 'inf')")
    assert (e["step"], e["layer"], details(e)["layer_probe_step"]) == (3, "square", 3)
    assert e["data_chunk"] == POISON_CHUNK


def test_a_nan_at_the_last_step_is_still_reported_at_close(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="nan-last", archive=archive, sample_gpu=False)
    _train_with_poison(obs, model, opt, 4, poison_steps={3})
    obs.close()
    (e,) = read_table(archive, "events", "kind IN ('nan', 'inf')")
    assert e["step"] == 3 and e["layer"] is None and details(e)["layer_probe_step"] is None


def test_inf_grad_norm_gives_an_inf_event(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="inf", archive=archive, sample_gpu=False)
    for step in range(3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss)
        if step == 1:
            obs.grad_norm(torch.tensor(float("inf")))
        opt.step()
        opt.zero_grad()
    obs.close()
    (e,) = read_table(archive, "events", "kind IN ('nan', 'inf')")
    assert (e["kind"], e["step"], details(e)["metric"]) == ("inf", 1, "grad_norm")


def test_loss_and_grad_spikes_are_detected_at_the_spiking_step_only(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="spike", archive=archive, sample_gpu=False)
    for step in range(60):
        x, y = batch(step, n=64)  # large enough batches for a steady loss (max 3.8 robust sigmas)
        if step == 45:
            y = y + 30.0  # a bad batch: the loss jumps
        obs.set_batch(chunk=step // 10)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss)
        opt.step()
        opt.zero_grad()
    obs.close()
    spikes = read_table(archive, "events", "kind IN ('loss_spike', 'grad_spike')")
    assert sorted((e["kind"], e["step"]) for e in spikes) == [("grad_spike", 45), ("loss_spike", 45)]
    loss_spike = next(e for e in spikes if e["kind"] == "loss_spike")
    d = details(loss_spike)
    assert loss_spike["data_chunk"] == 4 and loss_spike["severity"] == "warning"
    assert d["zscore"] > 6 and d["window"] == 45


def test_spike_detector_needs_min_points_and_ignores_drops_and_non_finite_values():
    det = SpikeDetector(window=100, zscore=6.0, min_points=20)
    assert all(det.update(1.0 + 0.01 * (i % 3)) is None for i in range(19))
    assert det.update(100.0) is None  # only 19 points so far: too early to judge
    det = SpikeDetector(window=10, zscore=6.0, min_points=5)
    for i in range(10):
        det.update(1.0 + 0.01 * (i % 3))
    assert det.update(0.0) is None  # a sudden drop is not an incident
    assert det.update(float("nan")) is None
    assert det.update(5.0)["zscore"] > 6
    flat = SpikeDetector(window=10, zscore=6.0, min_points=5)
    for _ in range(10):
        flat.update(2.0)
    assert flat.update(2.0) is None and flat.update(2.1) is not None
