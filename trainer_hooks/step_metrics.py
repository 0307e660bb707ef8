"""One finished step's record -> its `metrics` row values (drainer thread).

The record is the tuple `Observer._end_step` stages; the values are what the device buffer
read back (loss sum, grad norm, loss scale, first non-finite probe index). Names written:
loss, grad_norm, lr (lr/group<i> for further param groups), loss_scale (only when a live
GradScaler is attached), step_skipped, step_time_s, data_wait_s, tokens_seen, tokens_per_s,
mfu, mem_allocated_bytes, mem_reserved_bytes.

Token semantics: `tokens_seen` is the run's global count, as a checkpoint's `tokens_seen`
holds it: this rank's tokens x the data-parallel size (tensor- and pipeline-parallel ranks of
one replica train on the same tokens), added to `start_tokens`. `tokens_per_s` is this rank's
own throughput, the number `mfu` (per device) is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class TokenCount:
    """The drainer's running global token count and what mfu needs."""

    seen: int
    dp_size: int = 1
    model_flops_per_token: float | None = None
    peak_flops: float | None = None


def step_metrics(values: list[Any], payload: tuple, tc: TokenCount) -> tuple:
    """(step, metrics, loss, grad_norm, loss_scale, first_bad, tokens, chunk, sample_ids, probe_calls)."""
    (_, step, n_loss, loss_f, tokens, step_time, data_wait, lrs, mem, chunk, ids, calls, skipped, _wall) = payload
    loss_sum, gn, scale, first_bad = values
    m: dict[str, float] = {}
    loss = None
    if n_loss:
        loss = m["loss"] = ((loss_sum or 0.0) + loss_f) / n_loss
    if gn is not None:
        m["grad_norm"] = gn
    if isinstance(lrs, list):
        for i, lr in enumerate(lrs):
            m["lr" if i == 0 else f"lr/group{i}"] = float(lr)
    else:
        m["lr"] = float(lrs)
    if scale is not None:
        m["loss_scale"] = scale
    if skipped:
        m["step_skipped"] = 1.0
    if step_time is not None:
        m["step_time_s"] = step_time
    if data_wait is not None:
        m["data_wait_s"] = data_wait
    if tokens:
        tc.seen += tokens * tc.dp_size
        m["tokens_seen"] = float(tc.seen)
        if step_time:
            m["tokens_per_s"] = tps = tokens / step_time
            if tc.model_flops_per_token and tc.peak_flops:
                m["mfu"] = tps * tc.model_flops_per_token / tc.peak_flops
    if mem is not None:
        m["mem_allocated_bytes"], m["mem_reserved_bytes"] = float(mem[0]), float(mem[1])
    return step, m, loss, gn, scale, first_bad, tokens, chunk, ids, calls
