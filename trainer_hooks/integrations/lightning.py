"""PyTorch Lightning → flightlog: a `Callback` for `Trainer`, and `attach_fabric` for Fabric loops.

    from trainer_hooks.integrations.lightning import FlightlogLightningCallback
    trainer = lightning.Trainer(..., callbacks=[FlightlogLightningCallback(run="my-run", archive="./archive")])

    # Fabric / Lit-GPT style loops (LLM360's Amber was trained this way):
    obs = attach_fabric(fabric, model, optimizer, run="my-run", archive="./archive")
    ...; fabric.backward(loss); obs.record_loss(loss, tokens=input_ids.numel())
    obs.grad_norm(fabric.clip_gradients(model, optimizer, max_norm=1.0)); optimizer.step()

Step numbers are Lightning's `global_step` (first optimizer step = 0, as `self.log` sees it).
The callback records per step `loss` (gradient accumulation averaged), `grad_norm` (before
clipping), `lr`, `tokens_seen`/`tokens_per_s` when batches carry token ids, `step_time_s`;
validation metrics (names starting with one of `eval_prefixes`) as metrics and `evals` rows;
each checkpoint Lightning writes as a `checkpoints` row (audited from the saved dict, hashed
from the file).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from lightning.pytorch import Callback

from trainer_hooks.observer import Observer, attach


def count_tokens(batch: Any) -> int | None:
    """Tokens in a batch of token ids: `input_ids` of a dict, or an integer tensor (first of a tuple)."""
    if isinstance(batch, dict):
        batch = batch.get("input_ids")
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, torch.Tensor) and not batch.is_floating_point() and batch.dtype != torch.bool:
        return batch.numel()  # shape only: no device sync
    return None


def _unwrap_optimizer(opt: Any) -> Any:
    # LightningOptimizer and Fabric's optimizer wrapper keep the torch optimizer in `.optimizer`.
    while not isinstance(opt, torch.optim.Optimizer) and getattr(opt, "optimizer", None) not in (None, opt):
        opt = opt.optimizer
    return opt


def attach_fabric(fabric: Any, model: Any, optimizer: Any, *, run: str, archive: str | None = None,
                  config: Any = None, **options: Any) -> Observer:
    """An Observer on the module and optimizer behind Fabric's wrappers, with Fabric's rank layout.

    Call it on every rank after `fabric.setup(model, optimizer)`. Hand over the grad norm
    `fabric.clip_gradients` returns with `obs.grad_norm(...)`; otherwise the Observer computes it.
    """
    module = model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
    opt = _unwrap_optimizer(optimizer)
    opts = {"rank": fabric.global_rank, "local_rank": fabric.local_rank, "world_size": fabric.world_size,
            "framework": "lightning.fabric", **options}
    return attach(module, opt, run=run, archive=archive, config=config, **opts)


class FlightlogLightningCallback(Callback):
    """Records a `lightning.pytorch.Trainer` run into a flightlog archive.

    `run`: the run's name (default: the logger's name/version, else "lightning").
    `tokens`: batch -> tokens in it (default `count_tokens`). `eval_prefixes`: which logged
    metrics count as evaluations. `options`: ObserverConfig fields (seed=, sample_gpu=, ...).
    """

    def __init__(self, run: str | None = None, archive: str | None = None, *, tokens: Any = count_tokens,
                 eval_prefixes: tuple[str, ...] = ("val", "valid", "test", "eval"), **options: Any) -> None:
        self.run, self.archive, self.options = run, archive, options
        self.tokens, self.eval_prefixes = tokens, tuple(eval_prefixes)
        self.observer: Observer | None = None
        self._opt: Any = None
        self._pending_tokens: int | None = None
        self._pending_ckpt: tuple[dict, float] | None = None

    # ---- fit begins / ends -----------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.optimizers:
            return
        self._opt = _unwrap_optimizer(trainer.optimizers[0])
        opts = {"rank": trainer.global_rank, "local_rank": trainer.local_rank, "world_size": trainer.world_size,
                "framework": "lightning", "start_step": trainer.global_step, **self.options}
        if trainer.global_step and "resumed_from_step" not in opts:
            opts["resumed_from_step"] = trainer.global_step
            opts.setdefault("resumed_from_checkpoint", trainer.ckpt_path)
            opts.setdefault("reason", "resumed")
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: loss_scale and skipped steps
        run = self.run or self._default_run(trainer)
        self.observer = attach(pl_module, self._opt, run=run, archive=self.archive,
                               config=dict(getattr(pl_module, "hparams", {}) or {}), scaler=scaler, **opts)

    @staticmethod
    def _default_run(trainer: Any) -> str:
        logger = trainer.logger
        if logger is not None and getattr(logger, "name", None):
            return f"{logger.name}-{logger.version}" if getattr(logger, "version", None) is not None else logger.name
        return "lightning"

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._record_checkpoint(trainer)
        if self.observer is not None:
            self.observer.close("finished")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.observer is not None:
            self.observer.close("killed" if isinstance(exception, KeyboardInterrupt) else "crashed")

    # ---- per micro-batch / per step --------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._pending_tokens = self.tokens(batch) if self.tokens is not None else None

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        obs = self.observer
        if obs is None:
            return
        loss = loss.detach()
        # Automatic optimization divides each micro-batch's loss by accumulate_grad_batches before
        # backward; undo it so the step's loss is the mean of the micro-batch losses.
        k = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        obs.record_loss(loss * k if k != 1 else loss, tokens=self._pending_tokens)
        self._pending_tokens = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # Grads are complete here and not yet clipped (Lightning clips after this hook).
        obs = self.observer
        if obs is None or _unwrap_optimizer(optimizer) is not self._opt:
            return
        grads = [p.grad for g in self._opt.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            obs.grad_norm(torch.nn.utils.get_total_norm(grads))  # stays on device: no sync

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending_ckpt is not None:
            self._record_checkpoint(trainer)

    # ---- validation ---------------------------------------------------------------------------------

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        obs = self.observer
        if obs is None or trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith(self.eval_prefixes) and (not isinstance(v, torch.Tensor) or v.numel() == 1)}
        step = max(trainer.global_step - 1, 0)  # the last finished optimizer step
        if values:
            obs.log(values, step=step)
            if trainer.is_global_zero:
                for k, v in values.items():
                    bench, metric = _split_eval_name(k)
                    obs.writer.row("evals", step=step, benchmark=bench, metric=metric, value=v,
                                   harness="lightning", source="flightlog")
        self._record_checkpoint(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._record_checkpoint(trainer)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Called with the dict just before it is written; the file's path is known only afterwards.
        if self.observer is not None and trainer.is_global_zero:
            self._record_checkpoint(trainer)
            self._pending_ckpt = (checkpoint, time.time())

    def _record_checkpoint(self, trainer: Any) -> None:
        pending, self._pending_ckpt = self._pending_ckpt, None
        if pending is None or self.observer is None:
            return
        checkpoint, since = pending
        path = _newest_checkpoint_file(trainer, since)
        step = max(int(checkpoint.get("global_step", trainer.global_step)) - 1, 0)
        self.observer.checkpoint_saved(path if path is not None else checkpoint, step=step,
                                       _loaded=checkpoint if path is not None else None)


def _split_eval_name(name: str) -> tuple[str, str]:
    for sep in ("/", "_"):
        head, s, rest = name.partition(sep)
        if s and rest:
            return head, rest
    return name, name


def _newest_checkpoint_file(trainer: Any, since: float) -> str | None:
    """The file a ModelCheckpoint wrote at or after `since` (its public path attributes)."""
    paths: set[str] = set()
    for cb in getattr(trainer, "checkpoint_callbacks", []):
        paths.update(p for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")) if p)
        paths.update(getattr(cb, "best_k_models", {}) or {})
    found = [(os.path.getmtime(p), p) for p in paths if os.path.isfile(p) and os.path.getmtime(p) >= since - 1.0]
    return max(found)[1] if found else None
