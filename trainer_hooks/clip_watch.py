"""Pick up the grad norm a training loop already computes with `clip_grad_norm_`.

Most LLM loops clip gradients every step, and `torch.nn.utils.clip_grad_norm_` returns the
total L2 norm of the gradients before clipping: the very number flightlog would otherwise
compute again in the optimizer's pre-step hook (one more reduction over every gradient, the
largest part of the capture cost on CPU). `watch(observer)` wraps the function once per
process; every call is forwarded unchanged, and when its parameters are those of a live
observer's optimizer its result is handed to that observer (`Observer._clip_norm`). The
result stays a device tensor: nothing is read, so nothing syncs.

The wrapper is installed on first use and left in place (a later `from torch.nn.utils import
clip_grad_norm_` in user code gets it too); with no observer alive it costs one extra call.
Loops that imported the function before `attach()` bypass it and keep the computed norm.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

# Weak references to the observers watching, as a tuple replaced on every change: the wrapper
# reads it without a lock and loops over it without WeakSet's iteration guard (a few µs a call).
_watchers: tuple[weakref.ref, ...] = ()
_lock = threading.Lock()
_installed = False


def watch(observer: Any) -> None:
    """Hand `observer` the result of every `clip_grad_norm_` call over its parameters."""
    global _installed, _watchers
    with _lock:
        _watchers = (*(r for r in _watchers if r() is not None), weakref.ref(observer))
        if not _installed:
            _install()
            _installed = True


def unwatch(observer: Any) -> None:
    global _watchers
    with _lock:
        _watchers = tuple(r for r in _watchers if (o := r()) is not None and o is not observer)


def _install() -> None:
    original = torch.nn.utils.clip_grad.clip_grad_norm_

    @functools.wraps(original)
    def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0, *args: Any, **kwargs: Any) -> Any:
        watchers = _watchers
        if not watchers or norm_type != 2.0:
            return original(parameters, max_norm, norm_type, *args, **kwargs)
        # clip_grad_norm_ itself turns an iterable into a list; doing it first lets us look at it too.
        kind = type(parameters)  # type() first: isinstance against torch.Tensor costs its metaclass check
        if kind is not list and kind is not tuple:
            if isinstance(parameters, torch.Tensor):  # one tensor: never an optimizer's parameter list
                return original(parameters, max_norm, norm_type, *args, **kwargs)
            parameters = list(parameters)
        total = original(parameters, max_norm, norm_type, *args, **kwargs) if args or kwargs \
            else original(parameters, max_norm, norm_type)
        for ref in watchers:
            obs = ref()
            if obs is not None:
                obs._clip_norm(parameters, total)
        return total

    clip_grad_norm_.__flightlog_original__ = original  # type: ignore[attr-defined]
    torch.nn.utils.clip_grad.clip_grad_norm_ = clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
