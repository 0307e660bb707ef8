"""The forward-start mark that replaced the forward pre-hook: same data_wait_s, and the model stays a normal model."""

from __future__ import annotations

import copy
import inspect
import time

import torch

import trainer_hooks
from tests.trainer_hooks.conftest import metric_series
from trainer_hooks.forward_mark import mark_forward_start


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.lin(x) * scale


def test_mark_calls_on_start_keeps_signature_and_fast_call_path() -> None:
    model, seen = Net(), []
    handle = mark_forward_start(model, lambda m, args: seen.append((m, args)))
    x = torch.ones(1, 4)
    out = model(x, scale=2.0)
    assert seen == [(model, (x,))]
    assert torch.equal(out, Net.forward(model, x, 2.0))
    assert list(inspect.signature(model.forward).parameters) == ["x", "scale"]  # HF Trainer reads this
    assert not model._forward_pre_hooks  # __call__ keeps its hook-free path
    handle.remove()
    assert "forward" not in model.__dict__
    model(x)
    assert len(seen) == 1


def test_deepcopy_of_a_marked_model_runs_its_own_weights_and_is_not_marked() -> None:
    model, seen = Net(), []
    mark_forward_start(model, lambda m, args: seen.append(m))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lin.weight.zero_()
        twin.lin.bias.zero_()
    assert torch.equal(twin(torch.ones(1, 4)), torch.zeros(1, 2))  # its own parameters, not the original's
    assert seen == []
    model(torch.ones(1, 4))
    assert seen == [model]


def test_model_with_its_own_instance_forward_gets_a_pre_hook() -> None:
    model, seen = Net(), []
    inner = model.forward
    model.forward = lambda *a, **k: inner(*a, **k)  # someone else's wrapper, as accelerate installs
    handle = mark_forward_start(model, lambda m, args: seen.append(m))
    model(torch.ones(1, 4))
    assert seen == [model] and len(model._forward_pre_hooks) == 1
    handle.remove()
    assert not model._forward_pre_hooks


def test_data_wait_is_time_from_step_end_to_next_forward(archive) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = trainer_hooks.attach(model, opt, run="fwd-mark", archive=archive, sample_gpu=False)
    for _ in range(3):
        time.sleep(0.02)  # the "data loader"
        loss = model(torch.ones(2, 4)).pow(2).mean()
        loss.backward()
        obs.record_loss(loss, tokens=2)
        opt.step()
        opt.zero_grad()
    obs.close()
    assert "forward" not in model.__dict__
    waits = metric_series(archive, "data_wait_s")
    assert sorted(waits) == [1, 2]  # the first step has no previous end to wait from
    assert all(0.015 <= w < 1.0 for w in waits.values())
