"""NaN/Inf forensics and spike detection.

Detection runs on the drainer thread from values already copied to the host, so it adds no
host-device synchronization. The layer probe is the only part on the training thread: when
armed, a forward hook on every submodule folds "is this output finite?" into one device
scalar holding the index (in execution order) of the first module whose output was not
finite. Forward hooks fire when a module *returns*, so children report before their parent
and the first index is the innermost, earliest module that produced a non-finite value.

The probe is off by default (`nan_layer_probe_every=0`). After the first non-finite step it
is armed for good, so every later non-finite step names its own layer. The event of a step
that was not probed waits for the next probed step that is non-finite too and carries the
layer seen there, saying so in `details_json` (`layer_probe_step`: the step the layer was
observed at). It is written without a layer after PROBE_WAIT finite probed steps, or at
close. `nan_layer_probe_every=N` also probes every N-th step, which names the layer of the
very step that went non-finite when that step is probed.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_isfinite = math.isfinite
PROBE_WAIT = 50  # finite probed steps a non-finite step's event waits for a layer before it is written
_FIRST_NONE = float(2**24)  # "no module yet"; exact in float32, larger than any call count we record


def _floating_tensors(out: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.is_complex():
            yield out
    elif depth < 3 and isinstance(out, (list, tuple)):
        for o in out:
            yield from _floating_tensors(o, depth + 1)
    elif depth < 3 and isinstance(out, dict):
        for o in out.values():
            yield from _floating_tensors(o, depth + 1)


class LayerProbe:
    """Forward hooks that find the first module whose output holds NaN or Inf (training thread)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._modules = [(name or type(model).__name__, m) for name, m in model.named_modules()]
        self._handles: list = []
        self._first: torch.Tensor | None = None
        self._calls: list[str] = []
        self.armed_for_good = False

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self._modules]

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._first = None
        self._calls = []

    def _hook(self, name: str) -> Callable:
        def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
            bads = [~torch.isfinite(t).all() for t in _floating_tensors(out)]
            if not bads:
                return
            index = len(self._calls)
            self._calls.append(name)
            bad = bads[0] if len(bads) == 1 else torch.stack(bads).any()
            if self._first is None:
                self._first = torch.full((), _FIRST_NONE, device=bad.device)
            # Keep the first bad index: min(first, index if bad else NONE), all on device.
            cand = torch.where(bad, torch.full_like(self._first, float(index)), self._first)
            self._first = torch.minimum(self._first, cand)
        return hook

    def take(self) -> tuple[torch.Tensor | None, tuple[str, ...]] | None:
        """End of a step: (device index of first bad call, call names) or None when not armed."""
        if not self._handles:
            return None
        first, calls = self._first, tuple(self._calls)
        self._first, self._calls = None, []
        return first, calls


def layer_from_probe(first: float | None, calls: tuple[str, ...]) -> str | None:
    if first is None or not math.isfinite(first) or first >= _FIRST_NONE:
        return None
    i = int(first)
    return calls[i] if 0 <= i < len(calls) else None


def _finite_part(values: Sequence[float | None]) -> tuple[list[int] | None, list[float]]:
    """(indices of the finite values, or None when all are; those values). One C-level sum decides the
    usual case (its overflow to inf only sends a finite batch down the exact path)."""
    if None not in values and _isfinite(sum(values, 0.0)):
        return None, list(values)
    idx = [i for i, v in enumerate(values) if v is not None and _isfinite(v)]
    return idx, [values[i] for i in idx]


def _none_non_finite(values: Sequence[float | None]) -> bool:
    """No NaN or Inf among `values` (None is no value): the sum in C first, then exactly if that overflowed."""
    if None in values:
        values = [v for v in values if v is not None]
    return _isfinite(sum(values, 0.0)) or all(map(_isfinite, values))


_NUMPY_RENEWALS = 6  # from this many renewals in one drain, numpy's fixed cost (~30 µs) is the cheaper way


def _row_median(sorted_rows: np.ndarray) -> np.ndarray:
    """Per row of sorted values, the median as statistics.median computes it ((a + b) / 2 for an even count)."""
    n = sorted_rows.shape[1]
    return sorted_rows[:, n // 2] if n % 2 else (sorted_rows[:, n // 2 - 1] + sorted_rows[:, n // 2]) / 2


def _middle_deviations(s: list[float], med: float, k: int) -> tuple[float, float]:
    """The k-1-th and k-th smallest (from 0; k >= 1) of abs(v - med) over the sorted `s`.

    The values below the median give deviations that grow as i goes down from p - 1 (s[:p] < med <= s[p:]),
    those at or above it as j goes up from p (fl(v - med) is monotone in v), so the k + 1 smallest are the
    first i of one run and the first k + 1 - i of the other, for the one i a binary search finds. The same
    float operations as computing every deviation, so the same values, without a list and a sort."""
    p = bisect.bisect_left(s, med)
    a, b = max(0, k + 1 - (len(s) - p)), min(k + 1, p)  # how many of the k + 1 smallest lie below the median
    while a < b:
        i = (a + b) // 2  # too few from below when the next one below is smaller than the last one above
        if abs(s[p - 1 - i] - med) < abs(s[p + k - i] - med):
            a = i + 1
        else:
            b = i
    # the k + 1 smallest: below, s[p - a:p]; above, s[p:p + k + 1 - a]. Their largest two, in order:
    top = sorted([abs(v - med) for v in s[p - a:min(p, p - a + 2)] + s[p + max(0, k - 1 - a):p + k + 1 - a]])
    return top[-2], top[-1]


class SpikeDetector:
    """Robust z-score of a new value against the median/MAD of a rolling window (upward spikes).

    Runs on the drainer thread, whose Python time the training thread waits for (the GIL): the
    median and MAD are recomputed every `refresh` values into a candidate threshold (half the
    z-score), and only a value above it is judged on statistics recomputed from the window as it
    is now. `update_many` takes a drain's values at once: between two refreshes the threshold is
    fixed, so a run of values costs one `max()` and one `deque.extend` in C, and the drain's
    refreshes are computed together in numpy.
    """

    def __init__(self, *, window: int = 100, zscore: float = 6.0, min_points: int = 20, refresh: int = 16) -> None:
        self.window: collections.deque[float] = collections.deque(maxlen=window)
        self.zscore = zscore
        self.min_points = min_points
        self._refresh = refresh
        self._age = refresh
        self._candidate_above = math.inf

    def _stats(self, values: Sequence[float] | None = None) -> tuple[float, float, float]:
        """(median, MAD, scale) of the window now (or of `values`). 1.4826 x MAD estimates sigma for
        normal data; a flat window falls back to a tiny scale."""
        s = sorted(self.window if values is None else values)
        n = len(s)
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        # The median of the deviations |v - med|, as statistics.median takes it, without sorting them: they
        # are two sorted runs (outward from the median), so their k-th smallest is a binary search away.
        if n == 1:
            mad = 0.0
        else:
            below, at = _middle_deviations(s, med, n // 2)
            mad = at if n % 2 else (below + at) / 2
        return med, mad, 1.4826 * mad if mad > 0 else max(abs(med) * 1e-6, 1e-12)

    def update(self, value: float | None) -> dict[str, float] | None:
        """Add `value`; return the statistics when it is a spike, else None. Non-finite values are skipped."""
        found = self.update_many((value,))
        return found[0][1] if found else None

    def update_many(self, values: Sequence[float | None]) -> list[tuple[int, dict[str, float]]]:
        """`update` of each value in turn: (index in `values`, statistics) of each spike, in order."""
        idx, vals = _finite_part(values)
        found: list[tuple[int, dict[str, float]]] = []
        window, n, pos = self.window, len(vals), 0
        while pos < n and len(window) < self.min_points:  # too few points to judge yet: collect
            take = min(n - pos, self.min_points - len(window))
            window.extend(vals[pos:pos + take])
            pos += take
        # Each value ages the threshold; the one whose age reaches `refresh` renews it first, from the window
        # before it. The window does not depend on the verdicts, so every renewal of the drain is computed
        # up front, in one numpy pass when there are several.
        first = pos + max(0, self._refresh - 1 - self._age)
        renewals = range(first, n, self._refresh)
        thresholds = iter(self._thresholds(vals, pos, renewals) if renewals else ())
        for r in renewals:
            if r > pos:
                self._judge(vals, pos, r, idx, found)
            self._candidate_above = next(thresholds)
            self._judge(vals, r, r + 1, idx, found)
            pos = r + 1
            self._age = 0
        if pos < n:
            self._judge(vals, pos, n, idx, found)
            self._age += n - pos
        return found

    def _thresholds(self, vals: list[float], pos: int, renewals: range) -> list[float]:
        """The candidate threshold renewed at each of `renewals` (indices into vals; the window holds what
        came before vals[pos])."""
        head, size, half_z = list(self.window), self.window.maxlen or 0, 0.5 * self.zscore
        ends = [len(head) + r - pos for r in renewals]  # the window before renewal r ends here in head + vals[pos:]
        if len(ends) < _NUMPY_RENEWALS or ends[0] < size:  # few renewals, or the window still filling
            full = head + vals[pos:]
            return [med + half_z * scale for med, _, scale in
                    (self._stats(full[max(0, e - (size or e)):e]) for e in ends)]
        full = np.asarray(head + vals[pos:], dtype=float)
        s = np.sort(full[np.add.outer(np.asarray(ends) - size, np.arange(size))], axis=1)  # a window per renewal
        med = _row_median(s)
        dev = np.abs(s - med[:, None])
        dev.sort(axis=1)
        mad = _row_median(dev)
        scale = np.where(mad > 0, 1.4826 * mad, np.maximum(np.abs(med) * 1e-6, 1e-12))
        return (med + half_z * scale).tolist()  # the same float operations as _stats, so the same thresholds

    def _judge(self, vals: list[float], a: int, b: int, idx: list[int] | None, found: list) -> None:
        """Add vals[a:b] to the window, judging each one above the candidate threshold on the window before it."""
        window, above = self.window, self._candidate_above
        start = a
        if max(vals[a:b]) > above:  # rare: a candidate
            for j in range(a, b):
                value = vals[j]
                if value > above:
                    window.extend(vals[start:j])
                    start = j
                    med, mad, scale = self._stats()
                    z = (value - med) / scale
                    if z > self.zscore:
                        found.append((j if idx is None else idx[j],
                                      {"value": value, "median": med, "mad": mad, "zscore": z, "window": len(window)}))
        window.extend(vals[start:b])


def sample_id_list(ids: Any) -> list[int] | None:
    """Sample ids as a list of ints (converted only when an event needs them)."""
    if ids is None:
        return None
    if hasattr(ids, "tolist"):  # a CPU tensor or a numpy array
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        ids = [ids]
    out: list[int] = []
    for i in ids:
        if isinstance(i, (list, tuple)):
            out.extend(int(j) for j in i)
        else:
            out.append(int(i))
    return out


def _json_float(v: float | None) -> float | str | None:
    return v if v is None or math.isfinite(v) else str(v)


@dataclass(slots=True)
class StepFacts:
    """What the drainer knows about one finished step."""

    step: int
    loss: float | None
    grad_norm: float | None
    loss_scale: float | None
    data_chunk: int | None
    sample_ids: Any  # list, CPU tensor or numpy array; converted by sample_id_list when an event is written
    probed: bool = False
    layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Forensics:
    """Turns step facts into `nan`/`inf`/`loss_spike`/`grad_spike` events (drainer thread)."""

    def __init__(self, emit: Callable[..., None], request_probe: Callable[[], None], *, spike_window: int = 100,
                 spike_zscore: float = 6.0, spike_min_points: int = 20, seed: int | None = None) -> None:
        self._emit = emit
        self._request_probe = request_probe
        self._seed = seed
        self._spikes = {
            "loss": SpikeDetector(window=spike_window, zscore=spike_zscore, min_points=spike_min_points),
            "grad_norm": SpikeDetector(window=spike_window, zscore=spike_zscore, min_points=spike_min_points),
        }
        self._waiting: list[tuple[StepFacts, dict]] = []  # non-finite steps waiting for a probed step
        self.nonfinite_steps = 0

    def observe(self, f: StepFacts) -> None:
        bad_name = next((name for name, v in (("loss", f.loss), ("grad_norm", f.grad_norm))
                         if v is not None and not math.isfinite(v)), None)
        if f.probed and self._waiting:
            # Steps waiting for a layer take it from the next probed step that is non-finite too
            # (a misbehaving chunk usually fails again); after PROBE_WAIT finite probed steps they go without.
            done = []
            for item in self._waiting:
                wf, details = item
                if bad_name is not None:
                    details["layer_probe_step"] = f.step
                    self._nonfinite_event(wf, details, f.layer)
                    done.append(item)
                else:
                    details["finite_probed_steps"] = details.get("finite_probed_steps", 0) + 1
                    if details["finite_probed_steps"] >= PROBE_WAIT:
                        details["layer_probe_step"] = None
                        self._nonfinite_event(wf, details, None)
                        done.append(item)
            self._waiting = [item for item in self._waiting if item not in done]
        if bad_name is not None:
            self.nonfinite_steps += 1
            details = {"metric": bad_name, "loss": _json_float(f.loss), "grad_norm": _json_float(f.grad_norm),
                       "loss_scale": _json_float(f.loss_scale), "seed": self._seed, **f.extra}
            if f.probed:
                details["layer_probe_step"] = f.step
                self._nonfinite_event(f, details, f.layer)
            else:
                self._waiting.append((f, details))
                self._request_probe()
            return
        self._check_spikes((f.step,), (f.loss,), (f.grad_norm,), (f.data_chunk,), (f.sample_ids,))

    def observe_steps(self, steps: Sequence[int], losses: Sequence[float | None],
                      grad_norms: Sequence[float | None], *, loss_scales: Sequence[float | None],
                      data_chunks: Sequence[int | None], sample_ids: Sequence[Any], probe_calls: Sequence[Any],
                      first_bads: Sequence[float | None]) -> None:
        """`observe` for a drain's steps, one column per fact. The usual drain (finite values, no step
        probed, none waiting for a layer) goes to the spike checks a column at a time; any other is
        observed step by step, in order."""
        if (not self._waiting and probe_calls.count(None) == len(probe_calls)
                and _none_non_finite(losses) and _none_non_finite(grad_norms)):
            self._check_spikes(steps, losses, grad_norms, data_chunks, sample_ids)
            return
        for i, step in enumerate(steps):
            calls = probe_calls[i]
            self.observe(StepFacts(step=step, loss=losses[i], grad_norm=grad_norms[i], loss_scale=loss_scales[i],
                                   data_chunk=data_chunks[i], sample_ids=sample_ids[i], probed=calls is not None,
                                   layer=None if calls is None else layer_from_probe(first_bads[i], calls)))

    def _check_spikes(self, steps: Sequence[int], losses: Sequence[float | None],
                      grad_norms: Sequence[float | None], data_chunks: Sequence[int | None],
                      sample_ids: Sequence[Any]) -> None:
        found = [(i, name, spike) for name, col in (("loss", losses), ("grad_norm", grad_norms))
                 for i, spike in self._spikes[name].update_many(col)]
        for i, name, spike in sorted(found, key=lambda f: f[0]):  # step order; loss before grad_norm
            kind = "loss_spike" if name == "loss" else "grad_spike"
            self._emit(kind, step=steps[i], severity="warning", data_chunk=data_chunks[i],
                       sample_ids=sample_id_list(sample_ids[i]),
                       message=f"{name} {spike['value']:.6g} is {spike['zscore']:.1f} robust sigmas above the median "
                               f"{spike['median']:.6g} of the last {spike['window']} steps",
                       details={**spike, "metric": name, "seed": self._seed})

    def _nonfinite_event(self, f: StepFacts, details: dict, layer: str | None) -> None:
        value = details["loss"] if details["metric"] == "loss" else details["grad_norm"]
        kind = "nan" if value == "nan" else "inf"
        where = f" first non-finite output: {layer}" if layer else ""
        self._emit(kind, step=f.step, severity="error", data_chunk=f.data_chunk,
                   sample_ids=sample_id_list(f.sample_ids), layer=layer,
                   message=f"{details['metric']} is {value} at step {f.step}{where}", details=details)

    def close(self) -> None:
        """Emit non-finite events still waiting for a probed step (the run ended first)."""
        for wf, details in self._waiting:
            details["layer_probe_step"] = None
            self._nonfinite_event(wf, details, None)
        self._waiting = []
