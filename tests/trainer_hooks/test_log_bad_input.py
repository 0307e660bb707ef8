"""obs.log() with odd input: each value is stored faithfully or refused with one warning per name.

Never an exception into the training loop, never a `hook_error`, never a host-device sync.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, read_table, tiny_model

pytestmark = pytest.mark.timeout(120)

STEPS = 4
LONG = "x" * 10_000
ODD_NAMES = ["损失/δ ✈", "a/b", "k=v", "../../etc/passwd", "name with spaces", "x" * 1000]

# name -> value logged at every step, and what the archive must hold (None: refused)
STORED = {
    "nan": (math.nan, math.nan),
    "pos_inf": (math.inf, math.inf),
    "neg_inf": (-math.inf, -math.inf),
    "true": (True, 1.0),
    "false": (False, 0.0),
    "int_2_62": (2**62, float(2**62)),
    "np_f16": (np.float16(0.5), 0.5),
    "np_i8": (np.int8(-7), -7.0),
    "np_u64_max": (np.uint64(2**64 - 1), float(2**64 - 1)),
    "np_bool": (np.bool_(True), 1.0),
    "np_nan": (np.float32("nan"), math.nan),
    "np_1x1": (np.array([[3.0]]), 3.0),
    "t_0d": (torch.tensor(2.5), 2.5),
    "t_1x1": (torch.tensor([[4.0]]), 4.0),
    "t_int64": (torch.tensor(2**40), float(2**40)),
    "t_bool": (torch.tensor(True), 1.0),
    "t_bf16": (torch.tensor(1.5, dtype=torch.bfloat16), 1.5),
    "t_inf": (torch.tensor(-math.inf), -math.inf),
    "t_grad": (torch.tensor(6.0, requires_grad=True) * 1, 6.0),
}
REFUSED = {
    "none": None,
    "word": "hello",
    "np_word": np.str_("hello"),
    "bytes": b"\x00",
    "huge_int": 10**400,
    "complex": 1 + 2j,
    "np_complex": np.complex64(1 + 2j),
    "t_complex": torch.tensor(1 + 2j),
    "np_vec": np.arange(3.0),
    "t_vec": torch.arange(5.0),
    "t_meta": torch.empty((), device="meta"),
    "t_empty": torch.empty(0),
    "object": object(),
    "list": [1.0],
}


def _values_by_name(archive: str) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {}
    for r in read_table(archive, "metrics"):
        out.setdefault(r["name"], {}).setdefault(r["step"], []).append(r["value"])
    return out


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_odd_values_and_names_are_stored_faithfully_or_refused_once_per_name(archive, caplog):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="odd-values", archive=archive, sample_gpu=False)
    with caplog.at_level(logging.WARNING, logger="flightlog.hooks"):
        for step in range(STEPS):
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            obs.record_loss(loss)
            obs.log({name: v for name, (v, _) in STORED.items()})
            obs.log(REFUSED)
            obs.log({name: float(step) for name in ODD_NAMES})
            obs.log({"": 1.0, LONG: 1.0, 5: 1.0})  # empty, 10k-character and non-string names
            opt.step()
            opt.zero_grad()
    obs.close()

    got = _values_by_name(archive)
    for name, (_, want) in STORED.items():
        assert sorted(got[name]) == list(range(STEPS)), name
        assert all(len(v) == 1 and _same(v[0], want) for v in got[name].values()), (name, got[name])
    for name in ODD_NAMES:  # plain text in the name column, never a path
        assert got[name] == {s: [float(s)] for s in range(STEPS)}, name
    assert not set(REFUSED) & set(got) and "" not in got and LONG not in got and "5" not in got

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in [*REFUSED, ""]:
        said = [m for m in warnings if m.startswith(f"flightlog: obs.log({name!r})")]
        assert len(said) == 1, (name, said)  # once per name, not once per step
        assert "skipped" in said[0]
    assert sum(1 for m in warnings if "10000 characters" in m) == 1
    assert all(len(m) < 400 for m in warnings)  # a 10k-character name is not echoed whole
    assert read_table(archive, "events", "kind = 'hook_error'") == []


def test_negative_steps_are_refused_and_decreasing_or_repeated_steps_are_kept(archive, caplog):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="odd-steps", archive=archive, sample_gpu=False)
    with caplog.at_level(logging.WARNING, logger="flightlog.hooks"):
        for s in (10, 5, 7, 7, 0):
            obs.log({"eval": float(s)}, step=s)
        obs.log({"eval": 1.0}, step=np.int64(3))
        obs.log({"eval": 2.0}, step=torch.tensor(4))
        obs.log({"eval": 2.0}, step=8.0)
        for bad in (-1, -5, 2.5, True, "3", float("nan"), torch.tensor(1.5), 2**70):
            obs.log({"eval": 99.0, "other": 99.0}, step=bad)
        obs.log([("eval", 1.0)])  # not a dict
        obs.log({"eval": 1.0}, step=-2)
    obs.close()
    got = _values_by_name(archive)["eval"]
    assert got == {10: [10.0], 5: [5.0], 7: [7.0, 7.0], 0: [0.0], 3: [1.0], 4: [2.0], 8: [2.0]}
    assert "other" not in _values_by_name(archive)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warnings if m.startswith("flightlog: obs.log('eval')")]) == 1
    assert len([m for m in warnings if m.startswith("flightlog: obs.log('other')")]) == 1
    assert len([m for m in warnings if "takes a dict" in m]) == 1
    assert read_table(archive, "events", "kind = 'hook_error'") == []


def test_logging_between_steps_before_the_first_step_and_after_close_never_raises(archive):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="edges", archive=archive, sample_gpu=False)
    obs.log({"before": math.nan})
    obs.log({})
    obs.close()
    obs.log({"after_close": 1.0})  # dropped: the buffer is closed; no exception
    got = _values_by_name(archive)
    assert math.isnan(got["before"][0][0]) and "after_close" not in got


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_odd_gpu_values_are_stored_or_refused_without_a_sync(archive):
    dev = torch.device("cuda")
    model = tiny_model().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="odd-gpu", archive=archive, sample_gpu=False)
    x, y = (t.to(dev) for t in batch(0))
    # made before the check: torch.tensor(value, device="cuda") is itself a synchronizing copy
    values = {"g_nan": torch.tensor(math.nan, device=dev), "g_int": torch.tensor(7, device=dev),
              "g_bool": torch.tensor(True, device=dev), "g_vec": torch.ones(3, device=dev),
              "g_complex": torch.tensor(1j, device=dev), "g_bf16": torch.tensor(0.25, device=dev).bfloat16()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss)
        obs.log(values)
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    obs.close()
    got = _values_by_name(archive)
    assert math.isnan(got["g_nan"][0][0]) and got["g_int"][0] == [7.0] and got["g_bool"][0] == [1.0]
    assert got["g_bf16"][0] == [0.25] and "g_vec" not in got and "g_complex" not in got
    assert obs._errors == {}
