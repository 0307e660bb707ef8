"""Hugging Face `transformers.Trainer` → flightlog: one callback.

    from trainer_hooks.integrations.hf import FlightlogCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[FlightlogCallback(run="my-run", archive="./archive")])
    trainer.train()

Per optimizer step (from the model's forward outputs, no extra sync): `loss`, `lr`, `tokens_seen`,
`tokens_per_s`, `step_time_s`, `data_wait_s`, NaN/spike events. At each logging step (what
the Trainer logs): `grad_norm` (the Trainer's pre-clipping norm), `epoch`, `eval/<metric>`,
`train/<summary>`. Evaluations also become `evals` rows; each saved `checkpoint-N` folder is
audited (optimizer state present? weight dtypes?) into `checkpoints` rows and
`checkpoint_saved` events. Step numbers are the Trainer's `global_step` (first step = 1).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer_hooks.integrations.step_clock import StepClock
from trainer_hooks.observer import Observer, attach

_log = logging.getLogger("flightlog.hooks")

# Trainer log keys the Observer already records per step, under its own names.
_PER_STEP_KEYS = {"learning_rate"}
_PREFIXES = ("eval", "test", "train", "predict")
_NOT_EVAL_SCORES = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
              "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def metric_name(key: str) -> str:
    """Trainer log key → archive metric name: `eval_loss` → `eval/loss`, `train_runtime` → `train/runtime`."""
    head, _, rest = key.partition("_")
    return f"{head}/{rest}" if rest and head in _PREFIXES else key


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def safetensors_dtypes(path: str) -> dict[str, torch.dtype]:
    """Tensor name → dtype from a .safetensors header (8-byte length + JSON); no tensor data is read."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: _ST_DTYPES.get(v.get("dtype"), torch.uint8) for k, v in header.items() if k != "__metadata__"}


def checkpoint_contents(folder: str) -> dict[str, Any]:
    """What a Trainer `checkpoint-N` folder holds, in the shape `audit_object` reads.

    Weights: dtypes from the safetensors headers (empty tensors stand in); `pytorch_model.bin`
    is memory-mapped. Optimizer: `optimizer.pt` memory-mapped (absent with `save_only_model`).
    """
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if name.endswith(".safetensors") and name.startswith(("model", "adapter_model")):
            weights.update({k: torch.empty(0, dtype=dt) for k, dt in safetensors_dtypes(p).items()})
        elif name.startswith("pytorch_model") and name.endswith(".bin"):
            weights.update(torch.load(p, map_location="cpu", weights_only=True, mmap=True))
    out: dict[str, Any] = {"model": weights}
    opt = os.path.join(folder, "optimizer.pt")
    if os.path.exists(opt):
        out["optimizer"] = torch.load(opt, map_location="cpu", weights_only=True, mmap=True)
    return out


def _unwrap_optimizer(optimizer: Any) -> Any:
    # accelerate's AcceleratedOptimizer (and DeepSpeed's wrappers) keep the torch optimizer in `.optimizer`.
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _run_config(args: Any, model: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    try:
        cfg["training_args"] = args.to_dict()
    except Exception:  # noqa: BLE001 - the config is a courtesy; recording must go on without it
        pass
    mc = getattr(model, "config", None)
    if mc is not None and hasattr(mc, "to_dict"):
        try:
            cfg["model_config"] = mc.to_dict()
        except Exception:  # noqa: BLE001 - as above: a courtesy
            pass
    return cfg


class FlightlogCallback(TrainerCallback):
    """Records a `transformers.Trainer` run into a flightlog archive.

    `run`: the run's name (default: `args.run_name`, else the output folder's name).
    `archive`: archive URL (default `$FLIGHTLOG_ARCHIVE` or ./flightlog-archive).
    `options`: ObserverConfig fields (seed=, sample_gpu=, master_weights_dtype=, ...).
    After training, `callback.observer` is the closed Observer (run_id, attempt).
    """

    def __init__(self, run: str | None = None, archive: str | None = None, **options: Any) -> None:
        self.run, self.archive, self.options = run, archive, options
        self.observer: Observer | None = None
        self._clock: StepClock | None = None
        self._hook: Any = None
        self._reset_step()
        self._saw_loss = False
        self._scale = 1.0

    def _reset_step(self) -> None:
        self._loss: torch.Tensor | None = None
        self._n = 0
        self._tokens = 0
        self._summed = False

    # ---- training begins / ends ------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.observer is not None:
            self._close()  # a second trainer.train(): a new attempt of the same run
        opt = _unwrap_optimizer(optimizer)
        self._clock = StepClock(opt.param_groups if opt is not None else ())
        opts = {"framework": "transformers", "start_step": state.global_step + 1, **self.options}
        if state.global_step and "resumed_from_step" not in opts:
            opts.setdefault("reason", "resumed")
            opts["resumed_from_step"] = state.global_step
        opts.setdefault("seed", getattr(args, "seed", None))
        run = self.run or getattr(args, "run_name", None) or os.path.basename(os.path.abspath(args.output_dir))
        self.observer = attach(model, self._clock, run=run, archive=self.archive, config=_run_config(args, model),
                               **opts)
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        # With average_tokens_across_devices the Trainer multiplies each rank's loss by the world size.
        world = max(1, int(getattr(args, "world_size", 1) or 1))
        self._scale = float(world) if getattr(args, "average_tokens_across_devices", False) else 1.0
        self._reset_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()

    def _close(self, status: str = "finished") -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.observer is not None:
            self.observer.close(status)

    # ---- per micro-batch and per step ------------------------------------------------------------

    def _on_forward(self, module: Any, args: Any, kwargs: dict, output: Any) -> None:
        if not module.training or self.observer is None:
            return
        try:
            loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
            if not isinstance(loss, torch.Tensor):
                return
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss
            self._n += 1
            # num_items_in_batch: the model divided by the whole step's token count, so the
            # micro-batch losses add up to the step's loss instead of averaging to it.
            self._summed = kwargs.get("num_items_in_batch") is not None
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                self._tokens += ids.numel()  # shape only: no device sync
        except Exception as exc:  # noqa: BLE001
            self.observer._hook_error("hf_forward_hook", exc)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        obs = self.observer
        if obs is None:
            return
        if self._n:
            loss = self._loss if self._summed else self._loss / self._n
            if self._summed and self._scale != 1.0:
                loss = loss * self._scale
            obs.record_loss(loss, tokens=self._tokens or None)
            self._saw_loss = True
        self._reset_step()
        # After the real step and before the scheduler's: the lr recorded is the one just used.
        self._clock.step()

    # ---- what the Trainer logs ------------------------------------------------------------------

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        obs = self.observer
        if obs is None or not logs or not state.is_world_process_zero:
            return
        values: dict[str, float] = {}
        for key, v in logs.items():
            x = _number(v)
            if x is None or key in _PER_STEP_KEYS or (key == "loss" and self._saw_loss):
                continue
            values[metric_name(key)] = x
        if values:
            obs.log(values, step=state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        obs = self.observer
        if obs is None or not metrics or not state.is_world_process_zero:
            return
        try:
            for key, v in metrics.items():
                x = _number(v)
                bench, _, metric = key.partition("_")
                if x is None or not metric or metric in _NOT_EVAL_SCORES:
                    continue
                obs.writer.row("evals", step=state.global_step, benchmark=bench, metric=metric,
                               value=x, harness="transformers.Trainer", source="flightlog")
        except Exception as exc:  # noqa: BLE001
            obs._hook_error("hf_on_evaluate", exc)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        obs = self.observer
        if obs is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            return
        try:
            contents = checkpoint_contents(folder)
        except Exception as exc:  # noqa: BLE001 - unreadable: recorded as such by the audit of the path
            _log.warning("flightlog: could not read %s (%s); recording its size only", folder, exc)
            contents = None
        obs.checkpoint_saved(folder, step=state.global_step, _loaded=contents)
