"""StepClock: a stand-in optimizer whose `step()` tells an Observer that a training step ended.

The Observer finds step boundaries through `optimizer.register_step_post_hook`. Some trainers
make that boundary the wrong one: Megatron's optimizer is not a torch optimizer and skips the
inner step on overflow; HF Trainer clips gradients before the step, so a norm taken in the
pre-step hook would be the clipped one. Those adapters attach the Observer to a StepClock
instead and call `clock.step()` at the real boundary. The clock owns no parameters (the
Observer computes no grad norm of its own; the trainer's norm is handed over) and shows the
real optimizer's learning rates through read-only views of its param groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


class _LrView(Mapping):
    """A param group as the Observer reads it: the real group's values, but no parameters."""

    def __init__(self, group: Mapping) -> None:
        self._group = group

    def __getitem__(self, key: str) -> Any:
        return () if key == "params" else self._group[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)


class StepClock(torch.optim.Optimizer):
    """`attach(model, StepClock(real_optimizer.param_groups), ...)`, then `clock.step()` once per step."""

    def __init__(self, param_groups: Any = ()) -> None:
        # torch refuses an optimizer without parameters; this empty one is never read.
        super().__init__([torch.nn.Parameter(torch.zeros(0))], {"lr": 0.0})
        self.param_groups = [_LrView(g) for g in param_groups]  # type: ignore[misc]

    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the hooks around it are the point
        return None
