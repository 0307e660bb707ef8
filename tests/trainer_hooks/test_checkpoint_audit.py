"""Checkpoint audit: missing optimizer state and BF16 weights are caught when saved."""

from __future__ import annotations

import hashlib

import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, details, read_table, tiny_model

pytestmark = pytest.mark.timeout(120)


def _trained(steps: int = 3):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt


def _run(obs, model, opt, steps: int) -> None:
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        obs.record_loss(loss, tokens=4)
        opt.step()
        opt.zero_grad()


def test_checkpoint_without_optimizer_state_and_one_with_bf16_weights_are_flagged(archive, tmp_path):
    model, opt = _trained()
    obs = trainer_hooks.attach(model, opt, run="ckpt", archive=archive, sample_gpu=False,
                               master_weights_dtype="float32")
    obs.set_batch(chunk=11)
    _run(obs, model, opt, 3)
    full = tmp_path / "full.pt"
    trainer_hooks.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3},
                                  full, obs=obs)
    _run(obs, model, opt, 2)
    weights_only = tmp_path / "weights_only.pt"
    torch.save({"model": model.state_dict()}, weights_only)
    obs.checkpoint_saved(weights_only, step=5, tokens=20)
    bf16 = tmp_path / "bf16.pt"
    torch.save({"model": {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict()}, bf16)
    obs.checkpoint_saved(str(bf16))
    obs.close()

    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in read_table(archive, "checkpoints")}
    assert set(rows) == {"full.pt", "weights_only.pt", "bf16.pt"}
    f, w, b = rows["full.pt"], rows["weights_only.pt"], rows["bf16.pt"]
    assert f["problems"] == [] and f["has_optimizer_state"] is True
    assert f["weights_dtypes"] == ["float32"] and f["optimizer_dtypes"] == ["float32"]
    assert (f["step"], f["tokens_seen"], f["data_chunk"]) == (2, 12, 11)  # last finished step, its tokens
    assert f["bytes"] == full.stat().st_size
    assert f["sha256"] == hashlib.sha256(full.read_bytes()).hexdigest()
    assert w["problems"] == ["missing_optimizer_state"] and w["has_optimizer_state"] is False
    assert (w["step"], w["tokens_seen"]) == (5, 20)
    assert b["problems"] == ["weights_not_fp32"] and b["weights_dtypes"] == ["bfloat16"]
    assert b["has_optimizer_state"] is True and b["step"] == 4

    saved = {details(e)["uri"].rsplit("/", 1)[-1]: e
             for e in read_table(archive, "events", "kind = 'checkpoint_saved'")}
    assert saved["full.pt"]["severity"] == "info"
    assert saved["weights_only.pt"]["severity"] == "warning"
    assert "missing_optimizer_state" in saved["weights_only.pt"]["message"]
    assert details(saved["bf16.pt"])["problems"] == ["weights_not_fp32"]


def test_optimizer_state_before_the_first_step_counts_as_missing():
    model, opt = _trained()
    a = trainer_hooks.audit_object({"model": model.state_dict(), "optimizer": opt.state_dict()})
    assert a.has_optimizer_state is False and a.problems == ["missing_optimizer_state"]


def test_megatron_style_nested_checkpoint_is_understood(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(batch(0)[0]).sum().backward()
    opt.step()
    state = {"model": {k: v.half() for k, v in model.state_dict().items()},
             "optimizer": {"optimizer": opt.state_dict(), "fp32_from_fp16_params": [[p.detach() for p in
                                                                                     model.parameters()]]},
             "rng_state": [{"torch_rng_state": torch.get_rng_state()}], "iteration": 1}
    path = tmp_path / "mp_rank_00" / "model_optim_rng.pt"
    path.parent.mkdir()
    torch.save(state, path)
    a = trainer_hooks.audit_file(path, master_weights_dtype="float32")
    assert a.has_optimizer_state is True
    assert a.weights_dtypes == ["float16"] and a.optimizer_dtypes == ["float32"]
    assert a.problems == ["weights_not_fp32"]
    assert a.bytes == path.stat().st_size and len(a.sha256) == 64


def test_an_unreadable_file_is_recorded_not_raised(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    a = trainer_hooks.audit_file(bad)
    assert a.problems == ["unreadable"] and a.error and a.bytes == 24


def test_checkpoint_loaded_is_an_event(archive, tmp_path):
    model, opt = _trained()
    obs = trainer_hooks.attach(model, opt, run="resume", archive=archive, sample_gpu=False, start_step=100)
    obs.checkpoint_loaded(tmp_path / "step100.pt", step=100)
    _run(obs, model, opt, 2)
    obs.close()
    (e,) = read_table(archive, "events", "kind = 'checkpoint_loaded'")
    assert e["step"] == 100 and details(e)["uri"].endswith("step100.pt")
    assert sorted({r["step"] for r in read_table(archive, "metrics", "name = 'loss'")}) == [100, 101]
