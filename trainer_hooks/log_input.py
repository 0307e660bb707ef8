"""What `obs.log({name: value}, step=)` accepts, and the one-line reason when it refuses something.

Runs on the training thread, so it never reads a device value (no sync) and never raises:
each check returns either the value to stage or a reason, and the Observer logs the reason
once per name. Accepted and stored as float64: Python/numpy ints, floats and bools (True ->
1.0), NaN and ±Inf (data, guarantee 4), 0-d and 1-element tensors on any real device (CPU:
read now; GPU: staged on device, read by the drainer). Refused: None, strings, complex
numbers, integers beyond float64's range, arrays/tensors with several elements, tensors on
the meta device. Names are stored as given (`/`, `=`, `..` and any Unicode are plain text in
the `name` column, never paths); empty or very long names are refused. Steps must be
integers >= 0; decreasing or repeated steps are stored as given (each call is its own row).
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import torch

MAX_NAME_CHARS = 1000


def name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"has a name of type {type(name).__name__}; names must be strings"
    if not name.strip():
        return "has an empty name"
    if len(name) > MAX_NAME_CHARS:
        return f"has a name of {len(name)} characters (at most {MAX_NAME_CHARS})"
    return None


def step_of(step: Any) -> tuple[int | None, str | None]:
    """(step, None) or (None, reason)."""
    if isinstance(step, bool):
        return None, f"got step={step!r}; steps are integers >= 0"
    if isinstance(step, torch.Tensor):
        if step.device.type != "cpu" or step.numel() != 1 or step.is_floating_point() or step.is_complex():
            return None, "got a step tensor that is not one integer on the CPU (reading a GPU step would sync)"
        step = step.item()
    try:
        s = operator.index(step)
    except TypeError:
        if isinstance(step, float) and step.is_integer():
            s = int(step)
        else:
            return None, f"got step={step!r:.40}; steps are integers >= 0"
    if s < 0:
        return None, f"got a negative step ({s}); steps are integers >= 0"
    if s >= 1 << 63:
        return None, f"got step {s}, beyond int64"
    return s, None


def value_of(v: Any) -> tuple[Any, str | None]:
    """(float or device tensor to stage, None) or (None, reason)."""
    t = type(v)
    if t is float:
        return v, None
    if t is int or t is bool:
        try:
            return float(v), None
        except OverflowError:
            return None, "got an integer too large for a float64 value"
    if v is None:
        return None, "got None, not a number"
    if isinstance(v, torch.Tensor):
        return _tensor_value(v)
    if isinstance(v, (str, bytes)):
        return None, f"got a {t.__name__}, not a number"
    if hasattr(v, "dtype") and hasattr(v, "size"):  # numpy scalars and arrays
        return _array_value(v)
    if isinstance(v, numbers.Complex) and not isinstance(v, numbers.Real):
        return None, "got a complex number; log its abs() or .real"
    try:
        return float(v), None
    except OverflowError:
        return None, f"got a {t.__name__} too large for a float64 value"
    except (TypeError, ValueError):
        return None, f"got {t.__name__}, not a number"


def _tensor_value(v: torch.Tensor) -> tuple[Any, str | None]:
    if v.is_meta:
        return None, "got a tensor on the meta device, which holds no value"
    if v.is_complex():
        return None, "got a complex tensor; log its .abs() or .real"
    if v.numel() != 1:
        return None, f"got a tensor of {v.numel()} elements; log a scalar such as .mean() or .max()"
    v = v.detach()
    if v.layout is not torch.strided:
        v = v.to_dense()
    v = v.reshape(())
    if v.device.type == "cpu":
        return float(v.item()), None  # a CPU read is no sync
    return v.clone(), None  # the caller may change it in place before the drainer reads it


def _array_value(v: Any) -> tuple[Any, str | None]:
    if v.size != 1:
        return None, f"got an array of {v.size} elements; log a scalar"
    kind = getattr(v.dtype, "kind", "")
    if kind == "c":
        return None, "got a complex number; log its abs() or .real"
    if kind not in "biuf":
        return None, f"got a numpy {v.dtype} value, not a number"
    try:
        return float(v.item() if hasattr(v, "item") else v), None
    except OverflowError:
        return None, "got a value too large for a float64 value"
