"""Adapters that attach flightlog to the trainer a user already has, each a thin layer over `attach()`.

    from trainer_hooks.integrations.hf import FlightlogCallback            # transformers.Trainer
    from trainer_hooks.integrations.lightning import FlightlogLightningCallback, attach_fabric
    from trainer_hooks.integrations.megatron import MegatronFlightlog      # Megatron-LM / -Core loops

Names are resolved lazily: importing this package never imports transformers, lightning or
megatron (each is an optional dependency of the `[integrations]` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FlightlogCallback": "hf",
    "FlightlogLightningCallback": "lightning",
    "attach_fabric": "lightning",
    "MegatronFlightlog": "megatron",
    "StepClock": "step_clock",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
