"""FlightlogLightningCallback on a real lightning.Trainer, and attach_fabric on a real Fabric loop (CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer_hooks.integrations.conftest import rows, series

L = pytest.importorskip("lightning")
pytestmark = pytest.mark.timeout(120)

from trainer_hooks.integrations.lightning import FlightlogLightningCallback, attach_fabric  # noqa: E402

VOCAB, SEQ, BATCH, ACCUM, STEPS = 50, 8, 4, 2, 6


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


class TinyModule(L.LightningModule):
    """Keeps its own record of each micro-batch loss, pre-clip grad norm and lr, to compare with the archive."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"vocab": VOCAB, "lr": 1e-2})
        self.lm = TinyLM()
        self.micro_losses: dict[int, list[float]] = {}
        self.norms: dict[int, float] = {}
        self.lrs: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        loss = lm_loss(self.lm, batch[0])
        self.micro_losses.setdefault(self.global_step, []).append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", lm_loss(self.lm, batch[0]))

    def on_before_optimizer_step(self, optimizer):
        self.norms[self.global_step] = float(torch.nn.utils.clip_grad_norm_(self.parameters(), math.inf))
        self.lrs[self.global_step] = optimizer.param_groups[0]["lr"]

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _ids(n: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randint(0, VOCAB, (n, SEQ), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=BATCH)


def test_lightning_run_holds_loss_grad_norm_lr_val_metrics_and_checkpoints_per_step(tmp_path, archive):
    torch.manual_seed(0)
    module = TinyModule()
    cb = FlightlogLightningCallback(run="lightning-tiny", archive=archive, sample_gpu=False)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, accumulate_grad_batches=ACCUM,
                        gradient_clip_val=0.05, val_check_interval=ACCUM * 3, limit_val_batches=2,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb, ckpt])
    trainer.fit(module, _ids(BATCH * ACCUM * STEPS, 1), _ids(8, 2))
    run_id = cb.observer.run_id

    loss, grad_norm, lr = (series(archive, run_id, n) for n in ("loss", "grad_norm", "lr"))
    assert sorted(loss) == list(range(STEPS))  # Lightning's global_step numbering
    for step, micro in module.micro_losses.items():
        assert len(micro) == ACCUM
        assert loss[step] == pytest.approx(sum(micro) / ACCUM, rel=1e-5)  # accumulation undone, then averaged
        assert grad_norm[step] == pytest.approx(module.norms[step], rel=1e-5)  # before clipping at 0.05
        assert lr[step] == pytest.approx(module.lrs[step], rel=1e-9)
    assert min(grad_norm.values()) > 0.05 and lr[0] > lr[5]
    assert series(archive, run_id, "tokens_seen")[STEPS - 1] == STEPS * ACCUM * BATCH * SEQ

    val = series(archive, run_id, "val_loss")
    assert sorted(val) == [2, 5] and all(math.isfinite(v) for v in val.values())
    assert val[5] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    evals = rows(archive, "SELECT step, benchmark, metric FROM evals WHERE run_id = ? ORDER BY step", [run_id])
    assert [(e["step"], e["benchmark"], e["metric"]) for e in evals] == [(2, "val", "loss"), (5, "val", "loss")]

    ckpts = rows(archive, "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step", [run_id])
    assert [(c["step"], c["uri"].rsplit("/", 1)[-1]) for c in ckpts] == [(2, "epoch=0-step=3.ckpt"),
                                                                       (5, "epoch=0-step=6.ckpt")]
    for c in ckpts:
        assert c["has_optimizer_state"] is True and c["problems"] == [] and len(c["sha256"]) == 64
        assert c["weights_dtypes"] == ["float32"]
    run = rows(archive, "SELECT framework, status, config_json FROM runs WHERE run_id = ?", [run_id])[0]
    assert run["framework"] == "lightning" and run["status"] == "finished" and '"vocab": 50' in run["config_json"]


def test_a_crash_inside_fit_marks_the_run_crashed(tmp_path, archive):
    class Exploding(TinyModule):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = FlightlogLightningCallback(run="lightning-crash", archive=archive, sample_gpu=False)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Exploding(), _ids(BATCH * STEPS, 1))
    run = rows(archive, "SELECT status FROM runs WHERE run_id = ?", [cb.observer.run_id])[0]
    assert run["status"] == "crashed"
    assert sorted(series(archive, cb.observer.run_id, "loss")) == [0, 1]


def test_fabric_loop_records_each_step_with_the_clipped_norm_handed_over(archive):
    fabric = L.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    net = TinyLM()
    model, opt = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=1e-2))
    obs = attach_fabric(fabric, model, opt, run="fabric-tiny", archive=archive, sample_gpu=False)
    assert obs.rank == 0 and obs.model is model.module
    expected: dict[int, tuple[float, float]] = {}
    for step, (ids,) in enumerate(_ids(BATCH * 4, 3)):
        loss = lm_loss(model, ids)
        fabric.backward(loss)
        obs.record_loss(loss, tokens=ids.numel())
        norm = fabric.clip_gradients(model, opt, max_norm=0.05)
        obs.grad_norm(norm)
        expected[step] = (loss.item(), float(norm))
        opt.step()
        opt.zero_grad()
    obs.close()
    loss, gn = series(archive, obs.run_id, "loss"), series(archive, obs.run_id, "grad_norm")
    assert sorted(loss) == [0, 1, 2, 3]
    for step, (l_, n) in expected.items():
        assert loss[step] == pytest.approx(l_, rel=1e-6) and gn[step] == pytest.approx(n, rel=1e-6)
    framework = rows(archive, "SELECT framework FROM runs WHERE run_id = ?", [obs.run_id])[0]["framework"]
    assert framework == "lightning.fabric"
