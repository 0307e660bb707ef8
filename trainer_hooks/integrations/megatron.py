"""Megatron-LM / Megatron-Core style loops → flightlog: one call per iteration with what the optimizer returned.

Megatron's optimizer is not a `torch.optim.Optimizer`: its `step()` clips, checks for overflow,
maybe skips the update, and returns `(update_successful, grad_norm, num_zeros_in_grad)`. The
adapter takes that tuple (plus the reduced loss) and ends the step itself, so skipped updates
are recorded too. Rank coordinates (dp/tp/pp) come from `megatron.core.parallel_state` when it
is initialised (trainer_hooks.topology), else from torch.distributed and `tp_size`/`pp_size`.

Lines to add to Megatron-LM (`megatron/training/training.py`, which `pretrain_gpt.py` runs
through `pretrain()`):

    # in pretrain(), after `model, optimizer, opt_param_scheduler = setup_model_and_optimizer(...)`:
    from trainer_hooks.integrations.megatron import MegatronFlightlog
    args.flightlog = MegatronFlightlog(model, optimizer, run=args.wandb_exp_name or "gpt", config=vars(args),
                                       seed=args.seed, start_step=args.iteration + 1)

    # in train_step(), at the end, just before `return loss_reduced, skipped_iter, grad_norm, ...`
    # (on pipeline stages other than the last, loss_reduced is {}: pass loss=None):
    args.flightlog.step(update_successful, grad_norm, num_zeros_in_grad, loss=loss_reduced or None,
                        tokens=args.micro_batch_size * get_num_microbatches() * args.seq_length)

    # after each `save_checkpoint(iteration, model, optimizer, ...)` in train():
    args.flightlog.checkpoint_saved(get_checkpoint_name(args.save, iteration), step=iteration)

    # at the end of pretrain() (and in an exit handler): args.flightlog.close()

With `start_step=args.iteration + 1` the archive's step numbers are Megatron's printed
iteration numbers. Metrics: `loss` (the `lm loss` entry; other entries of the loss dict by
their own names), `grad_norm`, `num_zeros`, `lr`, `tokens_seen`, `tokens_per_s`,
`step_time_s`; a skipped update adds `step_skipped` = 1 and a `skipped_update` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trainer_hooks.integrations.step_clock import StepClock
from trainer_hooks.observer import Observer, attach

LOSS_KEYS = ("lm loss", "loss")


class MegatronFlightlog:
    """One rank's recorder for a Megatron-style loop. Build it on every rank after the model and optimizer."""

    def __init__(self, model: Any, optimizer: Any, *, run: str, archive: str | None = None, config: Any = None,
                 **options: Any) -> None:
        # Virtual pipeline stages give a list of model chunks; the first one marks the step's start.
        module = model[0] if isinstance(model, (list, tuple)) else model
        self.model, self.optimizer = model, optimizer
        self.clock = StepClock(list(getattr(optimizer, "param_groups", ())))
        options.setdefault("framework", "megatron")
        self.observer: Observer = attach(module, self.clock, run=run, archive=archive, config=config, **options)

    @property
    def run_id(self) -> str:
        return self.observer.run_id

    def step(self, update_successful: bool, grad_norm: Any = None, num_zeros_in_grad: Any = None, *,
             loss: Any = None, tokens: int | None = None) -> None:
        """End one iteration. `loss`: a number, a tensor, or Megatron's reduced loss dict.

        Never raises: a failure becomes a `hook_error` event (the Observer's policy).
        """
        obs = self.observer
        step = obs.step
        extras: dict[str, Any] = {}
        try:
            if isinstance(loss, Mapping):
                key = next((k for k in LOSS_KEYS if k in loss), None)
                extras.update({str(k): _scalar(v) for k, v in loss.items() if k != key})
                loss = loss.get(key) if key is not None else None
            if loss is not None:
                obs.record_loss(_scalar(loss), tokens=tokens)
            if grad_norm is not None:
                obs.grad_norm(grad_norm)
            if num_zeros_in_grad is not None:
                extras["num_zeros"] = num_zeros_in_grad
            if not update_successful:
                extras["step_skipped"] = 1.0
                obs.writer.event("skipped_update", step=step, severity="warning",
                                 message=f"optimizer skipped the update at step {step} (inf/NaN gradients)",
                                 details={"grad_norm": None if grad_norm is None else float(grad_norm)})
            if extras:
                obs.log(extras, step=step)
        except Exception as exc:  # noqa: BLE001
            obs._hook_error("megatron_step", exc)
        self.clock.step()  # the Observer closes the step: lr, timing, tokens, NaN/spike checks

    def checkpoint_saved(self, path_or_state: Any, *, step: int | None = None, tokens: int | None = None) -> None:
        self.observer.checkpoint_saved(path_or_state, step=step, tokens=tokens)

    def checkpoint_loaded(self, path: Any, *, step: int | None = None) -> None:
        self.observer.checkpoint_loaded(path, step=step)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        self.observer.log(values, step=step)

    def close(self, status: str = "finished") -> None:
        self.observer.close(status)

    def __enter__(self) -> MegatronFlightlog:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("crashed" if exc_type is not None else "finished")


def _scalar(v: Any) -> Any:
    """Megatron's new loss reporting keeps [sum, count] pairs: their ratio is the loss."""
    if isinstance(v, torch.Tensor) and v.numel() == 2:
        return v[0] / v[1]
    return v
