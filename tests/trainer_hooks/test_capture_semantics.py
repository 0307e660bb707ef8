"""What default capture records: loss_scale only with a live scaler, global tokens_seen, clip's grad norm."""

from __future__ import annotations

import pytest
import torch

import trainer_hooks
from tests.trainer_hooks.conftest import batch, metric_series, read_table, tiny_model

pytestmark = pytest.mark.timeout(120)


def _steps(obs, model, opt, n: int, *, tokens: int | None = None, scaler=None, clip=None) -> list[float]:
    """A plain loop; returns the norms its own clipping saw (when it clips)."""
    norms = []
    for step in range(n):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        obs.record_loss(loss, tokens=tokens)
        if clip is not None:
            norms.append(clip(model.parameters(), 1e-3).item())  # a generator, as most loops pass it
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return norms


def _names(archive: str) -> set[str]:
    return {r["name"] for r in read_table(archive, "metrics")}


def test_no_loss_scale_metric_without_a_scaler_or_with_a_disabled_one(archive, tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="no-scaler", archive=archive, sample_gpu=False)
    _steps(obs, model, opt, 5)
    obs.close()
    assert "loss_scale" not in _names(archive) and "loss" in _names(archive)

    other = str(tmp_path / "other")
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # what `enabled=use_fp16` gives a bf16 run
    obs = trainer_hooks.attach(model, opt, run="off-scaler", archive=other, sample_gpu=False, scaler=scaler)
    _steps(obs, model, opt, 5, scaler=scaler)
    obs.close()
    assert "loss_scale" not in _names(other)
    assert sorted(metric_series(other, "loss")) == list(range(5))


def test_tokens_seen_is_the_global_count_a_checkpoint_stores(archive, tmp_path):
    # Rank 0 of 4 ranks with tensor parallel 2: two data-parallel replicas, each training on 32 tokens a step.
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="dp2", archive=archive, sample_gpu=False, rank=0, world_size=4,
                               tp_size=2, start_step=10, start_tokens=10 * 64)
    assert obs.topology.dp_size == 2
    _steps(obs, model, opt, 3, tokens=32)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    obs.checkpoint_saved(str(ckpt))  # tokens not given: the Observer's own global count
    obs.close()
    tokens = metric_series(archive, "tokens_seen")
    assert tokens == {10: 11 * 64.0, 11: 12 * 64.0, 12: 13 * 64.0}
    (row,) = read_table(archive, "checkpoints")
    assert (row["step"], row["tokens_seen"]) == (12, 13 * 64)  # the same count as the metric at that step
    tps, times = metric_series(archive, "tokens_per_s"), metric_series(archive, "step_time_s")
    assert tps[11] == pytest.approx(32 / times[11])  # throughput stays this rank's own (mfu is per device)


@pytest.mark.parametrize("how", ["attribute", "imported after attach"])
def test_grad_norm_is_the_pre_clip_norm_the_loops_clip_grad_norm_returned(archive, how):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    obs = trainer_hooks.attach(model, opt, run="clip", archive=archive, sample_gpu=False)
    if how == "attribute":
        def clip(params, max_norm):
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        from torch.nn.utils import clip_grad_norm_ as clip  # noqa: PLC0415 - the point of the test
    norms = _steps(obs, model, opt, 6, clip=clip)
    obs.close()
    gn = metric_series(archive, "grad_norm")
    assert sorted(gn) == list(range(6))
    for step, want in enumerate(norms):
        assert want > 1e-2  # far above max_norm: a norm of the clipped gradients would read 1e-3
        assert gn[step] == pytest.approx(want, rel=1e-6)


def test_clipping_another_models_parameters_does_not_replace_the_grad_norm(archive):
    model, other = tiny_model(), tiny_model(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    obs = trainer_hooks.attach(model, opt, run="clip-other", archive=archive, sample_gpu=False)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.functional.mse_loss(other(x), y).backward()
    own = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    obs.record_loss(1.0)
    torch.nn.utils.clip_grad_norm_(other.parameters(), 1.0)
    opt.step()
    obs.close()
    assert metric_series(archive, "grad_norm")[0] == pytest.approx(own, rel=1e-5)
