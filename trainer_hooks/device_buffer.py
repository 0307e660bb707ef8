"""Sync-free hand-off of per-step scalars from the training thread to a drainer thread.

On CUDA the training thread copies each step's device scalars into a preallocated device
tensor of slots (`copy_`, stream-ordered), copies the slots into one of a ring of pinned
host buffers with `non_blocking=True`, and records a CUDA event. The drainer thread waits
on that event (`event.synchronize()` blocks the drainer, never the trainer), reads the
pinned buffer and hands plain floats to a callback. Nothing on the training thread reads
a device value, so no host-device synchronization is added (guarantee 2).

On CPU there is nothing to wait for and reading a scalar is no sync: the Observer reads
each value with `.item()` (about 0.1 µs) as it gets it, so `stage` only appends one tuple
to a deque, and the drainer does the rest (metrics rows, NaN and spike checks) off the
training thread, a wake-up's worth of steps at a time (one `on_drain` call per batch). Keeping
thousands of small tensors alive until the drainer runs measured slower.

On CUDA the step's device scalars are written into the slot tensor with one `torch.stack(...,
out=)` (one kernel when they share a dtype, as loss, grad norm, loss scale and the probe do)
instead of one `copy_` launch per value; with the pinned copy and the event record that is
three launches per step whatever the number of values.

Values handed over may be a tensor, a list of tensors (per-parameter norms, combined into
one norm), a Python number, or None.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import operator
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

_log = logging.getLogger("flightlog.hooks")
_item = torch.Tensor.item

DrainFn = Callable[[list[tuple[list[float | None], Any]]], None]  # [(values as floats, payload), ...]


def norm_of_norms(norms: Sequence[torch.Tensor]) -> float:
    """Total L2 norm from per-tensor norms (CPU 0-d tensors): one C call, no temporaries."""
    return math.hypot(*map(_item, norms))


class _Slot(int):
    """Marks a staged value that lives in slot i of the pinned copy (a plain int would be a host value)."""


_SLOTS = [_Slot(i) for i in range(1024)]


_PLAIN = frozenset((float, type(None)))
_values_of = operator.itemgetter(1)


def _host_value(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, (list, tuple)):
        return norm_of_norms(v)
    return float(v)


class DeviceBuffer:
    """A ring of step records between the training thread (`stage`) and a drainer thread.

    `stage` never blocks: when the drainer is `ring` steps behind, the step is dropped and
    counted in `dropped`. `on_drain(batch)` runs on the drainer thread with every step staged since
    it last ran, oldest first, as (values as floats, None where nothing was staged; payload unchanged).
    """

    def __init__(self, device: torch.device | str, on_drain: DrainFn, *, slots: int = 32, ring: int = 256,
                 poll_s: float = 0.05, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.slots = slots
        self.ring = ring
        self.dropped = 0
        self._on_drain = on_drain
        self._on_error = on_error
        self._poll_s = poll_s
        self._pending: collections.deque = collections.deque()
        # On CPU, the queue itself: the Observer's step hook appends (None, values, payload) while its length
        # is below `ring` (one Python frame less per step than `stage`); None on CUDA and once closing.
        self.host_queue: collections.deque | None = None if self.cuda else self._pending
        self._next = 0
        self._stop = threading.Event()
        self._closing = False
        self._wake = threading.Event()
        self._idle = threading.Condition()
        if self.cuda:
            self._slots = torch.zeros(slots, dtype=torch.float32, device=self.device)
            self._prefix = [self._slots[:n] for n in range(slots + 1)]  # cached: slicing costs a view per call
            self._pinned = [torch.zeros(slots, dtype=torch.float32, pin_memory=True) for _ in range(ring)]
            self._events = [torch.cuda.Event() for _ in range(ring)]
        self._thread = threading.Thread(target=self._run, name="flightlog-drainer", daemon=True)
        self._thread.start()

    # ---- training thread ---------------------------------------------------------------------

    def stage(self, values: Sequence[Any], payload: Any) -> bool:
        """Hand one step's values over; returns False (and counts) when dropped."""
        pending = self._pending
        if len(pending) >= self.ring or self._closing:  # a plain bool: Event.is_set() is a Python call
            self.dropped += 1
            return False
        if not self.cuda:
            pending.append((None, values, payload))  # host values: read on the drainer when not floats
            return True
        if len(values) > self.slots:
            raise ValueError(f"{len(values)} device values in one step; the buffer has {self.slots} slots")
        k = self._next
        self._next = (k + 1) % self.ring
        kinds, srcs = [], []
        for v in values:
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor) and v[0].is_cuda:
                v = torch.linalg.vector_norm(torch.stack(list(v)).float())
            if isinstance(v, torch.Tensor) and v.is_cuda:
                kinds.append(_SLOTS[len(srcs)])
                srcs.append(v.detach().reshape(()))
            else:
                kinds.append(v)  # host value (number, CPU tensor or None): read on the drainer
        if srcs:
            torch.stack(srcs, out=self._prefix[len(srcs)])
        self._pinned[k].copy_(self._slots, non_blocking=True)
        self._events[k].record()
        pending.append((k, kinds, payload))
        return True

    # ---- drainer thread ----------------------------------------------------------------------

    def _read(self, items: list[tuple]) -> list[tuple[list[float | None], Any]]:
        """Staged items -> (values as floats, payload). CPU values were read when staged (no sync
        there); a CUDA item waits for its event (this thread only) and reads its pinned copy."""
        if not self.cuda:
            if _PLAIN.issuperset(map(type, itertools.chain.from_iterable(map(_values_of, items)))):
                return [(values, payload) for _, values, payload in items]  # the usual batch: all floats, in C
            return [([v if v is None or type(v) is float else _host_value(v) for v in values], payload)
                    for _, values, payload in items]
        out = []
        for k, values, payload in items:
            self._events[k].synchronize()  # blocks this thread only
            host = self._pinned[k].tolist()
            out.append(([host[v] if type(v) is _Slot else _host_value(v) for v in values], payload))
        return out

    def _drain_all(self) -> None:
        """Hand everything staged to on_drain as one batch, oldest first: the drainer holds the GIL for
        one burst per wake-up, not a call per step. A batch that fails is handed over again step by
        step, so a bad step loses only itself."""
        pending = self._pending
        while pending:
            items = list(pending)  # a snapshot: copied in C under the GIL, so no append lands halfway
            try:
                self._on_drain(self._read(items))
            except Exception as exc:  # noqa: BLE001 - telemetry never stops the drainer; retried one by one
                self._one_by_one(items, exc)
            for _ in items:
                pending.popleft()  # frees the ring slots only after they were read

    def _one_by_one(self, items: list[tuple], batch_exc: Exception) -> None:
        failed = False
        for item in items:
            try:
                self._on_drain(self._read([item]))
            except Exception as exc:  # noqa: BLE001 - reported below
                failed = True
                self._report(exc)
        if not failed:  # the batch failed where no single step does: say so once
            self._report(batch_exc)

    def _report(self, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error("drainer", exc)
        else:
            _log.warning("flightlog: drainer failed: %r", exc)

    def _run(self) -> None:
        while True:
            self._drain_all()
            with self._idle:
                self._idle.notify_all()
            if self._stop.is_set() and not self._pending:
                return
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every staged step was handed to `on_drain` (used by close and tests)."""
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Drain what is staged, then stop the thread. Idempotent."""
        self._closing = True
        self.host_queue = None
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def backlog(self) -> int:
        return len(self._pending)
