"""FlightlogCallback on a real transformers.Trainer: a tiny random GPT-2 trained a few steps on CPU."""

from __future__ import annotations

import pytest
import torch

from tests.trainer_hooks.integrations.conftest import rows, series

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(120)

from trainer_hooks.integrations.hf import FlightlogCallback, metric_name  # noqa: E402

SEQ, BATCH, ACCUM, STEPS = 16, 4, 2, 6


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 100, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(tmp_path, archive: str, **args) -> tuple[transformers.Trainer, FlightlogCallback]:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                                                 n_positions=SEQ))
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM, learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=2,
        max_grad_norm=0.5, logging_steps=1, eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=8,
        save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=7, **args)
    cb = FlightlogCallback(run="hf-tiny", archive=archive, sample_gpu=False)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=TokenDataset(BATCH * ACCUM * STEPS, 1),
                                   eval_dataset=TokenDataset(16, 2), callbacks=[cb])
    return trainer, cb


def test_trainer_run_holds_loss_grad_norm_lr_evals_and_checkpoints_per_step(tmp_path, archive):
    trainer, cb = _trainer(tmp_path, archive)
    trainer.train()
    run_id = cb.observer.run_id
    hf_train = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    hf_eval = {h["step"]: h for h in trainer.state.log_history if "eval_loss" in h}
    assert sorted(hf_train) == list(range(1, STEPS + 1)) and sorted(hf_eval) == [3, 6]

    # Per-step loss comes from the model's outputs: it matches what the Trainer logged, with
    # gradient accumulation (micro-batch losses combined as the Trainer combines them).
    loss = series(archive, run_id, "loss")
    assert sorted(loss) == sorted(hf_train)
    for step, h in hf_train.items():
        assert loss[step] == pytest.approx(h["loss"], rel=1e-5)
    grad_norm, lr = series(archive, run_id, "grad_norm"), series(archive, run_id, "lr")
    for step, h in hf_train.items():
        assert grad_norm[step] == pytest.approx(h["grad_norm"], rel=1e-6)  # the pre-clipping norm
        assert lr[step] == pytest.approx(h["learning_rate"], rel=1e-9)
    assert max(grad_norm.values()) > 0.5  # clipping at 0.5 happened, and the unclipped norm was kept
    tokens = series(archive, run_id, "tokens_seen")
    assert tokens[STEPS] == STEPS * ACCUM * BATCH * SEQ
    assert all(v > 0 for v in series(archive, run_id, "tokens_per_s").values())

    ev = series(archive, run_id, "eval/loss")
    assert {s: pytest.approx(h["eval_loss"], rel=1e-9) for s, h in hf_eval.items()} == ev
    evals = rows(archive, "SELECT step, benchmark, metric, value, harness FROM evals WHERE run_id = ? ORDER BY step",
                 [run_id])
    assert [(r["step"], r["benchmark"], r["metric"]) for r in evals] == [(3, "eval", "loss"), (6, "eval", "loss")]
    assert evals[0]["value"] == pytest.approx(hf_eval[3]["eval_loss"]) and evals[0]["harness"] == "transformers.Trainer"

    ckpts = rows(archive, "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step", [run_id])
    assert [c["step"] for c in ckpts] == [3, 6]
    for c in ckpts:
        assert c["uri"].endswith(f"checkpoint-{c['step']}")
        assert c["has_optimizer_state"] is True and c["problems"] == []
        assert c["weights_dtypes"] == ["float32"] and c["optimizer_dtypes"] == ["float32"]
        assert c["bytes"] > 100_000 and c["tokens_seen"] == c["step"] * ACCUM * BATCH * SEQ
    saved = rows(archive, "SELECT step FROM events WHERE run_id = ? AND kind = 'checkpoint_saved' ORDER BY step",
                 [run_id])
    assert [e["step"] for e in saved] == [3, 6]
    run = rows(archive, "SELECT framework, status, config_json FROM runs WHERE run_id = ?", [run_id])[0]
    assert run["framework"] == "transformers" and run["status"] == "finished"
    assert '"gradient_accumulation_steps": 2' in run["config_json"] and '"n_layer": 2' in run["config_json"]


def test_weights_only_checkpoints_are_flagged_missing_optimizer_state(tmp_path, archive):
    trainer, cb = _trainer(tmp_path, archive, save_only_model=True)
    trainer.train()
    ckpts = rows(archive, "SELECT step, has_optimizer_state, problems FROM checkpoints WHERE run_id = ? ORDER BY step",
                 [cb.observer.run_id])
    assert [(c["step"], c["has_optimizer_state"], c["problems"]) for c in ckpts] == [
        (3, False, ["missing_optimizer_state"]), (6, False, ["missing_optimizer_state"])]


def test_trainer_log_keys_get_namespaced_metric_names():
    assert [metric_name(k) for k in ("eval_loss", "train_runtime", "grad_norm", "epoch", "test_accuracy")] == [
        "eval/loss", "train/runtime", "grad_norm", "epoch", "test/accuracy"]


def test_importing_the_integrations_package_loads_no_training_framework():
    import subprocess
    import sys

    code = ("import sys, trainer_hooks.integrations as i; assert i.__all__; "
            "print(sorted(m for m in ('transformers', 'lightning', 'megatron') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
