"""The step the training thread stages and the drainer reads: one definition (StepRecord, StepValues),
and the Observer's collaborators (writer, sampler, mirror) handed in by the caller."""

from __future__ import annotations

import collections

import pytest
import torch

import trainer_hooks
from telemetry import Writer
from tests.trainer_hooks.conftest import batch, metric_series, tiny_model
from trainer_hooks.observer import Observer
from trainer_hooks.step_metrics import STEP, StepRecord, StepValues

pytestmark = pytest.mark.timeout(120)


def _one_step(obs, model, opt, *, tokens: int = 32) -> float:
    x, y = batch(0)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    obs.record_loss(loss, tokens=tokens)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def test_the_tuple_a_step_stages_reads_field_by_field_as_a_step_record(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    obs = trainer_hooks.attach(model, opt, run="record", archive=archive, sample_gpu=False, start_step=7)
    staged = []

    class Recording(collections.deque):  # the step hook appends to the buffer's queue itself on CPU
        def append(self, item: tuple) -> None:
            staged.append(item[1:])
            super().append(item)

    obs._buf._pending = obs._buf.host_queue = Recording()
    obs.set_batch(chunk=3, sample_ids=[30, 31])
    loss = _one_step(obs, model, opt, tokens=40)
    obs.close()

    (values, payload), = staged
    assert type(payload) is tuple and len(payload) == len(StepRecord._fields)  # a plain tuple on the hot path
    r, v = StepRecord._make(payload), StepValues._make(values)
    assert (r.kind, r.step, r.n_loss, r.tokens) == (STEP, 7, 1, 40)
    assert (r.chunk, r.sample_ids, r.skipped) == (3, [30, 31], False)
    assert r.loss_host_sum == pytest.approx(loss) and r.lrs == 0.25 and r.mem is None and r.probe_calls is None
    assert r.step_time is not None and r.step_time > 0 and r.data_wait is None and r.wall_time > 1e9
    assert v.loss_device_sum is None and v.grad_norm > 0 and v.loss_scale is None and v.first_bad is None
    assert metric_series(archive, "loss") == {7: pytest.approx(loss)}
    assert metric_series(archive, "grad_norm") == {7: pytest.approx(v.grad_norm)}
    assert metric_series(archive, "tokens_seen") == {7: 40.0}


class _Sampler:
    stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class _Mirror:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))


def test_a_handed_in_writer_sampler_and_mirror_are_used_and_left_to_their_owner(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer, sampler, mirror = Writer(archive, "collaborators"), _Sampler(), _Mirror()
    obs = Observer(model, opt, run="collaborators", writer=writer, sampler=sampler, mirror=mirror)
    assert obs.sampler is sampler and obs.run_id == writer.run_id
    loss = _one_step(obs, model, opt)
    obs.close()
    assert sampler.stopped == 0  # the caller's sampler: the caller stops it
    assert [(s, m["loss"]) for s, m in mirror.logged] == [(0, pytest.approx(loss))]
    writer.metric(1, "after_close", 1.0)  # still open: the caller's writer
    writer.close()
    assert metric_series(archive, "after_close") == {1: 1.0}


def test_a_mirror_given_twice_is_refused():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="mirror"):
        Observer(model, opt, run="twice", options=trainer_hooks.ObserverConfig(mirror=_Mirror()), mirror=_Mirror())
