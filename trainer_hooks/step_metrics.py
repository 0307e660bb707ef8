"""One finished step's record -> its `metrics` row values (drainer thread).

`StepRecord` is the one definition of the tuple the training thread stages per step
(step_capture.py's `_end_step` writes it as a plain tuple, in this field order, because building
a NamedTuple there costs more on the training thread); `StepValues` is the one definition of the
device values staged beside it, which the device buffer reads back as floats. The drainer reads
both by name through `_make`. Names written: loss, grad_norm, lr (lr/group<i> for further
param groups), loss_scale (only when a live GradScaler is attached), step_skipped, step_time_s,
data_wait_s, tokens_seen, tokens_per_s, mfu, mem_allocated_bytes, mem_reserved_bytes.

Token semantics: `tokens_seen` is the run's global count, as a checkpoint's `tokens_seen`
holds it: this rank's tokens x the data-parallel size (tensor- and pipeline-parallel ranks of
one replica train on the same tokens), added to `start_tokens`. `tokens_per_s` is this rank's
own throughput, the number `mfu` (per device) is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

STEP, LOG = 0, 1  # what a staged payload is: a step (a StepRecord) or a batch of obs.log() values


class StepRecord(NamedTuple):
    """What the training thread knows of one step, in the order `_end_step` stages it."""

    kind: int                 # STEP
    step: int
    n_loss: int               # record_loss calls (micro-batches) this step
    loss_host_sum: float      # the sum of the losses read on the host (CPU tensors, Python numbers)
    tokens: int               # this rank's tokens this step
    step_time: float | None   # seconds since the previous step ended (or this one's forward began)
    data_wait: float | None   # seconds between the previous step's end and this step's forward
    lrs: Any                  # the lr (one param group) or a list of them; a GPU tensor lr is copied
    mem: tuple[int, int] | None  # (allocated, reserved) bytes on a GPU
    chunk: int | None
    sample_ids: Any
    probe_calls: Any          # the layer probe's call names when this step was probed, else None
    skipped: bool             # GradScaler skipped the optimizer step
    wall_time: float


class StepValues(NamedTuple):
    """The step's staged device values, read back as floats (None where nothing was staged)."""

    loss_device_sum: float | None  # the sum of the losses kept on a GPU
    grad_norm: float | None
    loss_scale: float | None
    first_bad: float | None   # the layer probe's first non-finite call index


@dataclass(slots=True)
class TokenCount:
    """The drainer's running global token count and what mfu needs."""

    seen: int
    dp_size: int = 1
    model_flops_per_token: float | None = None
    peak_flops: float | None = None


def step_metrics(v: StepValues, r: StepRecord, tc: TokenCount) -> tuple[dict[str, float], float | None]:
    """(the step's metrics, its loss: None when no loss was recorded)."""
    m: dict[str, float] = {}
    loss = None
    if r.n_loss:
        loss = m["loss"] = ((v.loss_device_sum or 0.0) + r.loss_host_sum) / r.n_loss
    if v.grad_norm is not None:
        m["grad_norm"] = v.grad_norm
    lrs = r.lrs
    if isinstance(lrs, list):
        for i, lr in enumerate(lrs):
            m["lr" if i == 0 else f"lr/group{i}"] = float(lr)
    else:
        m["lr"] = float(lrs)
    if v.loss_scale is not None:
        m["loss_scale"] = v.loss_scale
    if r.skipped:
        m["step_skipped"] = 1.0
    step_time, tokens = r.step_time, r.tokens
    if step_time is not None:
        m["step_time_s"] = step_time
    if r.data_wait is not None:
        m["data_wait_s"] = r.data_wait
    if tokens:
        tc.seen += tokens * tc.dp_size
        m["tokens_seen"] = float(tc.seen)
        if step_time:
            m["tokens_per_s"] = tps = tokens / step_time
            if tc.model_flops_per_token and tc.peak_flops:
                m["mfu"] = tps * tc.model_flops_per_token / tc.peak_flops
    if r.mem is not None:
        m["mem_allocated_bytes"], m["mem_reserved_bytes"] = float(r.mem[0]), float(r.mem[1])
    return m, loss
