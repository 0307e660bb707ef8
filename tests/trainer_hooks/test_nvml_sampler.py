"""The GPU/host sampler, with a fake NVML module at the library boundary."""

from __future__ import annotations

import logging
import time

import pytest
import torch

import trainer_hooks
from telemetry import Writer
from tests.trainer_hooks.conftest import FakeNvml, batch, details, read_table, tiny_model
from trainer_hooks.nvml_sampler import NvmlSampler

pytestmark = pytest.mark.timeout(120)

GPU_NAMES = {"gpu.util", "gpu.mem_used_bytes", "gpu.power_w", "gpu.energy_j", "gpu.temp_c", "gpu.sm_clock_mhz",
             "gpu.clock_event_reasons", "gpu.ecc_errors", "gpu.ecc_corrected_errors"}


def test_fake_nvml_gives_system_rows_per_gpu_and_throttle_and_xid_events(archive, fake_nvml):
    w = Writer(archive, "nvml")
    s = NvmlSampler(w, nvml=fake_nvml, interval_s=60.0, ecc_interval_s=60.0, step_fn=lambda: 17)
    s.gpu_enabled = s._init_nvml()  # sampled by hand below: no timing in the test
    s.sample_once()
    fake_nvml.reasons[1] = 0x1 | 0x40 | 0x4  # GPU 1: idle + hw thermal + sw power cap
    fake_nvml.xids.append((0, 79))           # GPU 0 fell off the bus
    s.sample_once()
    fake_nvml.reasons[1] = 0x1
    s.sample_once()
    s.stop()
    w.close()

    rows = read_table(archive, "system")
    assert {r["name"] for r in rows if r["gpu_index"] == 0} == GPU_NAMES
    by = {(r["gpu_index"], r["name"]): r for r in rows}
    assert by[(1, "gpu.util")]["value"] == 91 and by[(1, "gpu.util")]["gpu_uuid"] == "GPU-fake-1"
    assert by[(0, "gpu.mem_used_bytes")]["value"] == 1 << 30
    assert by[(0, "gpu.power_w")]["value"] == 350.0 and by[(0, "gpu.energy_j")]["value"] == 1234.0
    assert by[(0, "gpu.temp_c")]["value"] == 71 and by[(0, "gpu.sm_clock_mhz")]["value"] == 1980
    assert by[(0, "gpu.ecc_corrected_errors")]["value"] == 3
    ecc = [r for r in rows if r["name"] == "gpu.ecc_errors"]
    assert len(ecc) == 2  # one per GPU: ECC is read every ecc_interval_s, not every sample
    assert sum(r["name"] == "gpu.util" for r in rows) == 6  # 3 samples x 2 GPUs

    throttle = sorted(read_table(archive, "events", "kind = 'gpu_throttle'"), key=lambda e: e["wall_time"])
    assert len(throttle) == 2
    start, end = throttle
    assert details(start)["reasons"] == ["sw_power_cap", "hw_thermal_slowdown"] and start["severity"] == "warning"
    assert details(start)["gpu_uuid"] == "GPU-fake-1" and start["step"] == 17
    assert details(end)["reasons"] == [] and end["severity"] == "info"
    (xid,) = read_table(archive, "events", "kind = 'gpu_xid'")
    assert details(xid)["xid"] == 79 and details(xid)["gpu_index"] == 0 and xid["severity"] == "critical"
    assert fake_nvml.shutdown_called


def test_an_unsupported_query_is_skipped_for_that_gpu(archive):
    nv = FakeNvml(n_gpus=1, unsupported=("power",))
    w = Writer(archive, "no-power")
    s = NvmlSampler(w, nvml=nv, interval_s=60.0, host_metrics=False)
    s.gpu_enabled = s._init_nvml()
    s.sample_once()
    s.sample_once()
    s.stop()
    w.close()
    names = {r["name"] for r in read_table(archive, "system")}
    assert "gpu.power_w" not in names and "gpu.util" in names
    assert (0, "power") in s._unsupported


def test_sampler_thread_writes_host_rows_and_is_attached_by_observer(archive, fake_nvml):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    obs = trainer_hooks.attach(model, opt, run="sampled", archive=archive, nvml=fake_nvml,
                               gpu_sample_interval_s=0.05)
    assert obs.sampler is not None and obs.sampler.gpu_enabled
    assert obs.sampler._thread.name == "flightlog-nvml"
    for step in range(3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss)
        opt.step()
        opt.zero_grad()
    time.sleep(0.2)  # a few sampler ticks
    obs.close()
    names = {r["name"] for r in read_table(archive, "system")}
    assert {"gpu.util", "cpu.util", "host.mem_used_bytes"} <= names


@pytest.mark.parametrize("nvml", [FakeNvml(fail_init=True), None], ids=["nvml_init_fails", "real_pynvml_no_gpu"])
def test_without_nvml_the_sampler_says_so_once_and_training_works(archive, caplog, nvml):
    if nvml is None and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with caplog.at_level(logging.INFO, logger="flightlog"):
        with trainer_hooks.attach(model, opt, run="no-gpu", archive=archive, nvml=nvml) as obs:
            for step in range(3):
                x, y = batch(step)
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                obs.record_loss(loss)
                opt.step()
                opt.zero_grad()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "GPU sampler off" in m]) == 1
    assert len(lines) == 1, lines  # and nothing else was logged
    assert read_table(archive, "events", "kind = 'hook_error'") == []
    assert not any(r["name"].startswith("gpu.") for r in read_table(archive, "system"))
    assert len(read_table(archive, "metrics", "name = 'loss'")) == 3
