"""The W&B mirror: offline mode writes a .wandb file whose values import back exactly."""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("wandb")

from telemetry import Archive  # noqa: E402
from telemetry.importers import import_wandb  # noqa: E402
from trainer_hooks.mirror import WandbMirror  # noqa: E402


def test_offline_mirror_writes_a_wandb_file_that_imports_back_with_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    mirror = WandbMirror("mirrored run", {"lr": 3e-4, "layers": 2}, project="flightlog-test", dir=str(tmp_path))
    logged = {}
    for step in range(300):
        values = {"loss": 1.0 / (step + 1), "grad_norm": step * 0.37}
        if step == 100:
            values["loss"] = math.nan
        if step == 101:
            values["loss"] = math.inf
        mirror.log(values, step=step)
        logged.update({(step, k): v for k, v in values.items()})
    mirror.close()
    mirror.close()  # idempotent
    assert mirror.failed is None
    assert os.path.exists(mirror.sync_file)

    archive = str(tmp_path / "archive")
    summary = import_wandb(mirror.sync_file, archive, quiet=True)
    assert summary.points == len(logged)
    a = Archive(archive)
    rows = a.sql("SELECT step, name, value FROM metrics").to_pylist()
    got = {(r["step"], r["name"]): r["value"] for r in rows}
    assert got.keys() == logged.keys()
    for key, want in logged.items():
        assert got[key] == want or (math.isnan(want) and math.isnan(got[key])), key
    run = a.runs().iloc[0]
    assert run["name"] == "mirrored run" and run["status"] == "finished"
    a.close()


def test_a_failing_mirror_turns_itself_off_without_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    mirror = WandbMirror("broken", project="flightlog-test", dir=str(tmp_path))
    mirror.close()
    mirror._closed = False  # log after finish: W&B raises; the mirror must swallow it
    mirror.log({"loss": 1.0}, step=0)
    assert mirror.failed is not None


def test_attach_with_mirror_wandb_forwards_every_drained_step_from_the_drainer_thread(tmp_path, monkeypatch):
    import threading

    import torch

    import trainer_hooks
    from telemetry.importers.wandb_file import find_wandb_files, read_wandb_file
    from tests.trainer_hooks.conftest import batch, metric_series, tiny_model

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    archive = str(tmp_path / "archive")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="mirrored", archive=archive, sample_gpu=False, mirror="wandb",
                               config={"lr": 0.01})
    mirror = obs._mirror
    threads = []
    original_log = mirror.log
    monkeypatch.setattr(mirror, "log", lambda m, step: (threads.append(threading.current_thread()),
                                                        original_log(m, step=step)))
    for step in range(25):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss, tokens=8)
        opt.step()
        opt.zero_grad()
        obs.log({"extra": float(step)})
    obs.close()
    assert threads and all(t is not threading.main_thread() for t in threads)  # never the training thread
    assert mirror.failed is None

    (path,) = find_wandb_files(str(tmp_path / "wandb"))
    got = read_wandb_file(path).metrics.to_pylist()
    wandb_points = {(r["step"], r["name"]): r["value"] for r in got}
    archived = {name: metric_series(archive, name) for name in ("loss", "grad_norm", "lr", "tokens_seen", "extra")}
    for name, series in archived.items():
        assert sorted(series) == list(range(25)), name
        for step, value in series.items():
            assert wandb_points[(step, name)] == pytest.approx(value, rel=1e-12), (step, name)


def test_mirror_must_be_wandb_or_have_a_log_method():
    import trainer_hooks

    with pytest.raises(ValueError, match="'wandb' or"):
        trainer_hooks.ObserverConfig(mirror="tensorboard")
    with pytest.raises(ValueError, match="log"):
        trainer_hooks.ObserverConfig(mirror=object())
