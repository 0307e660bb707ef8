"""Finished steps' records -> their `metrics` row values, a drain's worth at a time (drainer thread).

`StepRecord` is the one definition of the tuple the training thread stages per step
(step_capture.py's `_end_step` writes it as a plain tuple, in this field order, because building
a NamedTuple there costs more on the training thread); `StepValues` is the one definition of the
device values staged beside it, which the device buffer reads back as floats. The drainer turns a
drain's steps into one StepRecord and one StepValues of columns (`_make(zip(*rows))`) and reads
them by name. Names written: loss, grad_norm, lr (lr/group<i> for further
param groups), loss_scale (only when a live GradScaler is attached), step_skipped, step_time_s,
data_wait_s, tokens_seen, tokens_per_s, mfu, mem_allocated_bytes, mem_reserved_bytes.

Token semantics: `tokens_seen` is the run's global count, as a checkpoint's `tokens_seen`
holds it: this rank's tokens x the data-parallel size (tensor- and pipeline-parallel ranks of
one replica train on the same tokens), added to `start_tokens`. `tokens_per_s` is this rank's
own throughput, the number `mfu` (per device) is computed from.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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


_FLOAT = {float}


def _present(col: Sequence[Any]) -> bool:
    return col.count(None) != len(col)


def step_columns(v: StepValues, r: StepRecord, tc: TokenCount) -> tuple[dict[str, Sequence[Any]], list[float | None]]:
    """The metrics of many steps at once: `r` and `v` hold one column (a tuple) per field, a step per row.

    Returns ({name: its column, None where a step has no value}, in the order listed above, a name no step
    of the batch has left out; each step's loss, None where no loss was recorded). Column at a time: the
    drainer's Python work per step is a few list-comprehension items, not a function call per step and a
    dict store per name; `Writer.metrics_columns` takes the columns as they are.
    """
    cols: dict[str, Sequence[Any]] = {}
    dev = v.loss_device_sum
    if _present(dev):
        losses = [((d or 0.0) + h) / k if k else None for k, d, h in zip(r.n_loss, dev, r.loss_host_sum, strict=True)]
    else:
        losses = [(0.0 + h) / k if k else None for k, h in zip(r.n_loss, r.loss_host_sum, strict=True)]
    if _present(losses):
        cols["loss"] = losses
    if _present(v.grad_norm):
        cols["grad_norm"] = v.grad_norm
    lrs = r.lrs
    types = set(map(type, lrs))
    if list in types:  # several param groups: lr, lr/group1, ...
        rows = [x if type(x) is list else [x] for x in lrs]
        for i in range(max(map(len, rows))):
            col = [float(x[i]) if i < len(x) else None for x in rows]
            if _present(col):
                cols["lr" if i == 0 else f"lr/group{i}"] = col
    else:
        cols["lr"] = lrs if types == _FLOAT else [float(x) for x in lrs]
    if _present(v.loss_scale):
        cols["loss_scale"] = v.loss_scale
    if any(r.skipped):
        cols["step_skipped"] = [1.0 if s else None for s in r.skipped]
    step_time = r.step_time
    if _present(step_time):
        cols["step_time_s"] = step_time
    if _present(r.data_wait):
        cols["data_wait_s"] = r.data_wait
    tokens = r.tokens
    if any(tokens):
        dp = tc.dp_size
        seen = list(itertools.accumulate((t * dp for t in tokens), initial=tc.seen))
        tc.seen = seen[-1]
        cols["tokens_seen"] = [float(s) if t else None for t, s in zip(tokens, seen[1:], strict=True)]
        tps = [t / s if t and s else None for t, s in zip(tokens, step_time, strict=True)]
        if _present(tps):
            cols["tokens_per_s"] = tps
            if tc.model_flops_per_token and tc.peak_flops:
                f, peak = tc.model_flops_per_token, tc.peak_flops
                cols["mfu"] = [None if x is None else x * f / peak for x in tps]
    mem = r.mem
    if _present(mem):
        cols["mem_allocated_bytes"] = [None if m is None else float(m[0]) for m in mem]
        cols["mem_reserved_bytes"] = [None if m is None else float(m[1]) for m in mem]
    return cols, losses


def step_dicts(cols: dict[str, Sequence[Any]]) -> list[dict[str, float]]:
    """One {name: value} per step from `step_columns`' columns, None values left out (the mirror's rows, and
    the rows for a writer without `metrics_columns`)."""
    names, rows = list(cols), zip(*cols.values(), strict=True)
    if not any(None in c for c in cols.values()):  # the usual batch: every step has every name
        return [dict(zip(names, row, strict=True)) for row in rows]
    return [{k: x for k, x in zip(names, row, strict=True) if x is not None} for row in rows]
