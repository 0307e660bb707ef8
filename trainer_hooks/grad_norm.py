"""The step's gradient norm when the loop did not clip: on a GPU launched in place, on CPU deferred.

On a GPU the reduction is queued on the device (`torch._foreach_norm`, then one norm of the
norms) and costs the training thread only its launches. On CPU the same reduction runs on the
training thread itself (measured ~8-10 µs/step on a small model, most of the capture's cost),
so it is handed to the drainer thread instead: the pre-step hook keeps references to the
gradient tensors, and the drainer reduces them later (torch releases the GIL inside the op).

That is only correct while nobody writes into those tensors after the step. torch's default
`zero_grad(set_to_none=True)` drops them and the next backward allocates new ones, so the old
ones are never written again. `zero_grad(set_to_none=False)` (or a loop that accumulates across
steps) zeroes them in place instead, so deferring is switched on only after the loop was seen
releasing its gradients at `WARMUP_STEPS` step starts in a row; until then, and for good once a
step start finds them kept, the norm is computed on the training thread. As a last guard the
drainer compares the first and last gradients' version counters (bumped by every in-place
write) with those taken at the step; a changed one means a write it did not foresee, and that
step gets no grad norm (logged once) rather than a wrong one.

Memory: deferred gradients stay alive until the drainer reduces them (it polls every 50 ms), so
deferring is allowed only while (staged steps x gradient bytes) stays under `MAX_HELD_BYTES`:
small CPU models defer every step, large ones (whose steps take long enough for 10 µs not to
matter) keep computing in place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

_log = logging.getLogger("flightlog.hooks")
_item = torch.Tensor.item

WARMUP_STEPS = 2
MAX_HELD_BYTES = 64 * 2**20


class DeferredGradNorm:
    """One step's gradients, reduced to their total L2 norm on the drainer thread."""

    __slots__ = ("grads", "v_first", "v_last")

    def __init__(self, grads: list[torch.Tensor]) -> None:
        self.grads = grads
        self.v_first, self.v_last = grads[0]._version, grads[-1]._version

    def value(self) -> float | None:
        grads = self.grads
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        if grads[0]._version != self.v_first or grads[-1]._version != self.v_last:
            _warn_changed()
            return None
        self.grads = None  # let the memory go now
        return norm_of_norms(norms)


def norm_of_norms(norms: Sequence[torch.Tensor]) -> float:
    """Total L2 norm from per-tensor norms (CPU 0-d tensors): one C call, no temporaries."""
    return math.hypot(*map(_item, norms))


_warned = False


def _warn_changed() -> None:
    global _warned
    if not _warned:
        _warned = True
        _log.warning("flightlog: gradients were written in place after optimizer.step() (e.g. "
                     "zero_grad(set_to_none=False)); that step's grad_norm is not recorded and later ones are "
                     "computed on the training thread")


class GradNormPolicy:
    """Decides, per step on the training thread, whether the CPU grad norm may be deferred."""

    __slots__ = ("enabled", "released_in_a_row", "kept_seen", "watched", "watched_grad", "max_backlog")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.released_in_a_row = 0
        self.kept_seen = False
        self.watched: torch.Tensor | None = None  # a parameter whose gradient shows how the loop zeroes
        self.watched_grad: torch.Tensor | None = None
        self.max_backlog = 0

    def set_params(self, params: list[torch.Tensor]) -> None:
        trained = [p for p in params if p.requires_grad]
        self.watched = trained[0] if trained else None
        grad_bytes = sum(p.numel() * p.element_size() for p in trained)
        self.max_backlog = MAX_HELD_BYTES // max(1, grad_bytes)

    def at_step_start(self) -> None:
        """Was the previous step's gradient of the watched parameter released (set to None or replaced)?"""
        last = self.watched_grad
        if last is None:
            return
        self.watched_grad = None
        if self.watched.grad is last:  # kept: it is zeroed or accumulated into in place
            self.kept_seen = True
            self.released_in_a_row = 0
        else:
            self.released_in_a_row += 1

    def defer(self, backlog: int) -> bool:
        """At the pre-step hook: may this step's norm be left to the drainer?"""
        w = self.watched
        if w is not None:
            self.watched_grad = w.grad
        return (self.enabled and not self.kept_seen and self.released_in_a_row >= WARMUP_STEPS
                and backlog < self.max_backlog)
