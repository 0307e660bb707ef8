"""Mark the start of each forward pass for the cost of one Python call (the step's `data_wait_s`).

A forward pre-hook would do, but any hook sends `nn.Module.__call__` down its slow path (hook
lists, a nested closure, a try block): measured 4-5 µs per step in a small CPU training loop,
as much as the rest of the capture. Instead `forward` is shadowed by an instance attribute (as
accelerate does for autocast): a method bound to the model that calls `on_start` and then the
class's forward, so `__call__` keeps its fast path.

- `inspect.signature(model.forward)` still gives the real signature (HF Trainer reads it to pick
  dataset columns): the function carries `__wrapped__`.
- `copy.deepcopy(model)` (an EMA or teacher copy) rebinds the method to the copy, which is not the
  model marked here: it just runs its forward.
- A model that already has an instance `forward` (someone else's wrapper) or is TorchScript gets
  the forward pre-hook instead.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch

StartFn = Callable[[Any, Any], None]  # (module, args), as a forward pre-hook gets them


class _ForwardMark:
    """The handle: `remove()` restores the class's forward (or leaves a wrapper stacked on top inert)."""

    def __init__(self, model: torch.nn.Module, method: Any, state: list) -> None:
        self._model = weakref.ref(model)
        self._method = method
        self._state = state

    def remove(self) -> None:
        self._state[0] = None  # inert even if another wrapper now calls it
        model = self._model()
        if model is not None and model.__dict__.get("forward") is self._method:
            del model.__dict__["forward"]


def mark_forward_start(model: torch.nn.Module, on_start: StartFn) -> Any:
    """Call `on_start(model, args)` at the start of every forward of `model`; returns a handle with `remove()`."""
    if "forward" in model.__dict__ or isinstance(model, torch.jit.ScriptModule):
        return model.register_forward_pre_hook(on_start)
    cls_forward = type(model).forward
    me = weakref.ref(model)
    state: list = [on_start]

    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        start = state[0]
        if start is not None and self is me():
            start(self, args)
        return cls_forward(self, *args, **kwargs)

    functools.update_wrapper(forward, cls_forward)
    method = types.MethodType(forward, model)
    model.forward = method  # an instance attribute: nn.Module.__setattr__ keeps plain callables in __dict__
    return _ForwardMark(model, method, state)
