"""Step capture: the training-thread half of the Observer (its hooks and per-step state).

Everything here runs on the training thread, every step, within a budget of about 10 µs:
step boundaries come from `optimizer.register_step_post_hook` (`_end_step`); the pre-hook
computes the grad norm (`torch._foreach_norm`, on device) unless the loop's own
`clip_grad_norm_` result was seen (clip_watch.py) or handed to `grad_norm()`; the model's
forward marks the start of a step (data_wait_s; forward_mark.py, cheaper than a forward
pre-hook). Per step that is a few tensor references (GPU) or `.item()` reads (CPU, no sync
there), Python numbers, and one `DeviceBuffer.stage` of one plain tuple whose field order is
`step_metrics.StepRecord` (a NamedTuple built here would cost more; the drainer names the fields).

`StepCapture` is a base class of `Observer` (observer.py), not a collaborator: a delegating call
per `record_loss` would cost the loop a Python call each step. What it needs from the Observer
is declared below: the device buffer it stages into and the error hook.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from trainer_hooks import clip_watch, log_input
from trainer_hooks.config import ObserverConfig
from trainer_hooks.device_buffer import DeviceBuffer, norm_of_norms
from trainer_hooks.forensics import LayerProbe
from trainer_hooks.forward_mark import mark_forward_start
from trainer_hooks.step_metrics import LOG, STEP

_log = logging.getLogger("flightlog.hooks")
_perf = time.perf_counter
_wall = time.time
_Tensor = torch.Tensor


def _cuda_memory(index: int) -> tuple[int, int]:
    """(allocated, reserved) bytes of the caching allocator. torch.cuda.memory_allocated() flattens
    the allocator's whole nested stats dict in Python on every call (~0.4 ms on a GPU host, measured:
    most of the capture's host cost); the raw dict has both numbers for one cheap call."""
    try:
        stats = torch._C._cuda_memoryStats(index)
        return stats["allocated_bytes"]["all"]["current"], stats["reserved_bytes"]["all"]["current"]
    except (AttributeError, KeyError, TypeError):  # another torch's layout: the public, slower calls
        return torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index)


def _lr_value(lr: Any) -> Any:
    """A tensor lr (capturable optimizers) changes in place: read it now on CPU, copy it on a GPU."""
    if isinstance(lr, torch.Tensor):
        return lr.item() if lr.device.type == "cpu" else lr.detach().clone()
    return lr


class StepCapture:
    """The hooks on the training thread and the step they stage. Touched only by the training thread,
    except `_probe_for_good`, which the drainer sets once (a plain attribute write)."""

    # ---- provided by the Observer
    cfg: ObserverConfig
    scaler: Any
    _buf: DeviceBuffer
    _closed: bool
    _hook_error: Callable[[str, BaseException], None]  # a failure: logged, counted, an events row; never raised

    # ---- setup and teardown ----------------------------------------------------------------

    def _init_capture(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
                      dp_size: int) -> None:
        cfg = self.cfg
        self._cuda = device.type == "cuda"
        self._cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if self._cuda else None
        self._dp = dp_size  # tokens_seen counts every data-parallel replica
        self._warned: set[str] = set()
        self._step = cfg.start_step
        self._tokens_total = cfg.start_tokens
        self._open = False
        self._t_start: float | None = None
        self._t_end: float | None = None
        self._data_wait: float | None = None
        self._loss: torch.Tensor | None = None
        self._loss_f = 0.0
        self._n_loss = 0
        self._tokens = 0
        self._gn: Any = None
        self._gn_given = False
        self._chunk: int | None = None
        self._ids: Any = None
        self._extras: list[tuple[int, str, Any]] = []
        self._groups = optimizer.param_groups
        self._refresh_params()  # _params, _param_ids, _n_params, _n_groups
        self._probe = LayerProbe(model)
        self._probe_for_good = False  # set by the drainer after the first non-finite step
        self._probe_every = cfg.nan_layer_probe_every
        # A disabled GradScaler (enabled=False) scales nothing: no loss_scale metric for it.
        self._scaler_on = self.scaler is not None and bool(getattr(self.scaler, "_enabled", True))
        self._scaler_update = None

    def _install_hooks(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._hooks = [optimizer.register_step_post_hook(self._end_step), mark_forward_start(model, self._on_forward)]
        if self.cfg.compute_grad_norm:
            self._hooks.append(optimizer.register_step_pre_hook(self._pre_step))
        if self._scaler_on and hasattr(self.scaler, "update"):
            self._wrap_scaler(self.scaler)
        if self.cfg.observe_clip:
            clip_watch.watch(self)

    def _stop_capture(self) -> None:
        """Remove the hooks and stage the last obs.log() values (close())."""
        for h in self._hooks:
            h.remove()
        self._probe.disarm()
        if self._scaler_update is not None:
            self.scaler.update = self._scaler_update
        clip_watch.unwatch(self)
        self._stage_extras()

    def _wrap_scaler(self, scaler: Any) -> None:
        update = scaler.update

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            # GradScaler skips optimizer.step() on inf/NaN grads: no post-hook fired, close the step here.
            if self._open and self._n_loss and not self._closed:
                try:
                    self._end_step(skipped=True)
                except Exception as exc:  # noqa: BLE001
                    self._hook_error("scaler_update", exc)
            return update(*args, **kwargs)

        self._scaler_update = update
        scaler.update = wrapped

    # ---- public API (training thread) ----------------------------------------------------------

    @property
    def step(self) -> int:
        """The step in progress (or the next one, between steps)."""
        return self._step

    def record_loss(self, loss: Any, tokens: Any = None) -> None:
        """This micro-batch's loss (tensor, float, or an output with `.loss`) and token count.

        Call it before `optimizer.step()` (the step's boundary). Several calls before one step
        (gradient accumulation) are averaged. A loss tensor with several elements counts as
        its mean. `tokens`: a Python int (or CPU tensor) of tokens this rank trained on in this
        micro-batch; the `tokens_seen` metric multiplies by the data-parallel size.
        """
        try:
            if not self._open:
                self._on_forward(None, None)
            if type(loss) is _Tensor and loss.is_cpu and loss.numel() == 1:  # the common case: fewest calls
                self._loss_f += loss.item()  # a CPU read is no sync, and frees the tensor now
            else:
                self._add_loss(loss)
            self._n_loss += 1
            if tokens is not None:
                self._tokens += tokens if type(tokens) is int else (
                    self._host_int(tokens) if isinstance(tokens, torch.Tensor) else int(tokens))
        except Exception as exc:  # noqa: BLE001
            self._hook_error("record_loss", exc)

    def _add_loss(self, loss: Any) -> None:
        if not isinstance(loss, torch.Tensor):
            if not isinstance(loss, (int, float)) and hasattr(loss, "loss"):
                loss = loss.loss
            if not isinstance(loss, torch.Tensor):
                self._loss_f += float(loss)
                return
        if loss.numel() != 1:
            loss = loss.detach().float().mean()
        if loss.is_cpu:
            self._loss_f += loss.item()
        else:
            t = loss.detach()
            self._loss = t if self._loss is None else self._loss + t

    def grad_norm(self, value: Any) -> None:
        """Hand over the grad norm the trainer computed (e.g. clip_grad_norm_'s return value).

        Saves flightlog computing its own; a GPU tensor stays on device (no sync). Not needed
        after `torch.nn.utils.clip_grad_norm_`, whose result flightlog picks up by itself.
        """
        try:
            self._gn = self._host_or_device(value)
            self._gn_given = True
        except Exception as exc:  # noqa: BLE001
            self._hook_error("grad_norm", exc)

    def _clip_norm(self, params: Any, total: Any) -> None:
        """clip_watch: the loop clipped `params`; when they are this optimizer's, that is the step's norm."""
        try:
            if len(self._groups) != self._n_groups:
                self._refresh_params()
            if self._gn_given or len(params) != self._n_params:
                return
            ids = self._param_ids
            if params and id(params[0]) in ids and id(params[-1]) in ids:
                # _host_or_device, inlined: this runs every step of a clipping loop
                self._gn = (total.item() if total.is_cpu else total.detach()) if type(total) is _Tensor \
                    else self._host_or_device(total)
                self._gn_given = True
        except Exception as exc:  # noqa: BLE001
            self._hook_error("clip_grad_norm", exc)

    def _refresh_params(self) -> None:  # at start, and when the loop called optimizer.add_param_group()
        self._params = [p for g in self._groups for p in g["params"]]
        self._param_ids = frozenset(map(id, self._params))
        self._n_params = len(self._param_ids)
        self._n_groups = len(self._groups)

    def _host_or_device(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.item() if v.is_cpu else v.detach()  # item() reads a tensor that requires grad too
        return float(v)

    def set_batch(self, *, chunk: Any = None, sample_ids: Any = None) -> None:
        """The data chunk and sample ids of the batch being trained on (kept until changed)."""
        try:
            if isinstance(chunk, torch.Tensor):
                chunk = self._host_int(chunk)
            self._chunk = None if chunk is None else int(chunk)
            if isinstance(sample_ids, torch.Tensor) and sample_ids.device.type != "cpu":
                self._warn_once("ids", "flightlog: sample_ids on the GPU are not recorded (reading them would "
                                "sync); pass the dataloader's CPU ids")
                sample_ids = None
            self._ids = sample_ids
        except Exception as exc:  # noqa: BLE001
            self._hook_error("set_batch", exc)

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log extra scalars: Python/numpy numbers or 0-d/1-element tensors on any device.

        What cannot be stored faithfully (None, strings, complex numbers, tensors with several
        elements, meta tensors, empty or over-long names, negative steps) is skipped with one
        warning per name (log_input.py says what is accepted). `step=None` means the step in
        progress, or the step just finished between steps. Never raises, never syncs.
        """
        try:
            if not isinstance(values, Mapping):
                self._warn_once("log:values", f"flightlog: obs.log() takes a dict of {{name: value}}, got "
                                f"{type(values).__name__}; skipped")
                return
            if step is None:
                step = self._step if self._open or self._step == self.cfg.start_step else self._step - 1
                bad_step = None
            else:
                step, bad_step = log_input.step_of(step)
            extras = self._extras
            for name, v in values.items():
                why = bad_step or log_input.name_problem(name)
                if why is None:
                    if type(v) is float:
                        extras.append((step, name, v))
                        continue
                    v, why = log_input.value_of(v)
                    if why is None:
                        extras.append((step, name, v))
                        continue
                shown = name[:80] + "..." if isinstance(name, str) and len(name) > 80 else name
                kind = "step" if bad_step else re.sub(r"\d+", "#", why)[:30]  # not per value or per step
                self._warn_once(f"log:{name!r:.200}:{kind}",
                                f"flightlog: obs.log({shown!r}) {why}; skipped (said once per name)")
            if not self._open:
                self._stage_extras()
        except Exception as exc:  # noqa: BLE001
            self._hook_error("log", exc)

    # ---- hooks (training thread) ---------------------------------------------------------------

    def _on_forward(self, module: Any, args: Any) -> None:
        if self._open:
            return
        try:
            self._open = True
            t = self._t_start = _perf()
            self._data_wait = None if self._t_end is None else t - self._t_end
            every = self._probe_every
            if self._probe_for_good or (every and self._step % every == 0):
                self._probe.arm()
        except Exception as exc:  # noqa: BLE001
            self._hook_error("forward_pre_hook", exc)

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._gn_given:
            return
        try:
            if len(self._groups) != self._n_groups:
                self._refresh_params()
            grads = [g for p in self._params if (g := p.grad) is not None]  # one property read each
            if not grads:
                self._gn = None
            else:  # one norm per tensor in one multi-tensor op; float32 even for bf16 gradients
                norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
                if self._cuda:  # combined on device: one value to copy out
                    self._gn = torch.linalg.vector_norm(torch.stack(norms))
                else:  # CPU: read now. Per-tensor norms (or the gradients) kept alive until the drainer
                    # runs measured 5-10 µs/step slower: the next backward and forward lose the freed memory.
                    self._gn = norm_of_norms(norms)
        except Exception as exc:  # noqa: BLE001
            self._hook_error("grad_norm", exc)

    def _end_step(self, optimizer: Any = None, args: Any = None, kwargs: Any = None, skipped: bool = False) -> None:
        """The optimizer's step post-hook (registered as is: one Python call per step), or GradScaler.update
        closing a step whose optimizer.step() it skipped."""
        t = _perf()
        try:
            start = self._t_end if self._t_end is not None else self._t_start
            scale = self._read_scale() if self._scaler_on else None
            mem = first_bad = calls = None
            cuda = self._cuda
            if self._probe._handles:  # armed: the probe's device scalar and the call names
                first_bad, calls = self._probe.take()
                if not self._probe_for_good:
                    self._probe.disarm()
                if first_bad is not None and not cuda:
                    first_bad = first_bad.item()
            if cuda:
                mem = _cuda_memory(self._cuda_index)
            groups = self._groups
            if len(groups) == 1:
                lrs = groups[0]["lr"]
                if type(lrs) is not float:
                    lrs = _lr_value(lrs)
            else:
                lrs = [g["lr"] if type(g["lr"]) is float else _lr_value(g["lr"]) for g in groups]
            # One plain tuple per step, in StepValues and StepRecord order (step_metrics.py). CPU: numbers
            # already read (no sync), or the grad norm's per-tensor norms.
            values = (self._loss, None if skipped else self._gn, scale, first_bad)
            record = (STEP, self._step, self._n_loss, self._loss_f, self._tokens, None if start is None else t - start,
                      self._data_wait, lrs, mem, self._chunk, self._ids, calls, skipped, _wall())
            buf = self._buf
            queue = buf.host_queue
            if queue is not None and len(queue) < buf.ring:  # DeviceBuffer.stage's CPU path, without its frame
                queue.append((None, values, record))
            else:  # CUDA, or a full or closing buffer: stage decides, and counts a drop
                buf.stage(values, record)
        except Exception as exc:  # noqa: BLE001
            self._hook_error("step_post_hook", exc)
        finally:  # the step ends even when recording it failed
            self._tokens_total += self._tokens * self._dp
            self._step += 1
            self._t_end = t
            self._open = False
            self._loss, self._loss_f, self._n_loss, self._tokens = None, 0.0, 0, 0
            self._gn, self._gn_given = None, False
        if self._extras:
            try:
                self._stage_extras()
            except Exception as exc:  # noqa: BLE001
                self._hook_error("log", exc)

    def _read_scale(self) -> Any:
        s = getattr(self.scaler, "_scale", None)  # None until the scaler's first scale()
        if isinstance(s, torch.Tensor):
            # update() changes it in place, after this step was staged (stream order on a GPU)
            return s.item() if s.is_cpu else s
        return None if s is None else float(s)

    def _stage_extras(self) -> None:
        extras, self._extras = self._extras, []
        slots = self._buf.slots
        for i in range(0, len(extras), slots):
            part = extras[i:i + slots]
            self._buf.stage([v for _, _, v in part], (LOG, [(s, n) for s, n, _ in part]))

    def _last_step(self) -> int:
        return self._step if self._step == self.cfg.start_step else self._step - 1

    def _host_int(self, t: torch.Tensor) -> int:
        if t.device.type != "cpu":
            raise ValueError("a GPU tensor here would force a host-device sync; pass a Python int or CPU tensor")
        return int(t)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(msg)
