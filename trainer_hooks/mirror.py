"""Mirror flightlog's metrics to W&B, for teams that keep a W&B dashboard alongside the archive.

`wandb` is imported only when a mirror is made. A failing mirror never reaches the training
loop: the first error is logged once, the mirror turns itself off, and `failed` says why.
Offline mode (the default) writes a `.wandb` file that `flightlog import wandb` reads back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

_log = logging.getLogger("flightlog.mirror")


class WandbMirror:
    """log(metrics, step) and close(), forwarded to one W&B run of its own."""

    def __init__(self, run_name: str, config: Mapping[str, Any] | None = None, project: str | None = None,
                 mode: str | None = "offline", *, dir: str | None = None) -> None:  # noqa: A002 - wandb's name
        if mode not in ("offline", "online", "disabled", None):
            raise ValueError(f"WandbMirror mode must be 'offline', 'online', 'disabled' or None, got {mode!r}")
        try:
            import wandb  # lazy: optional, and seconds to import; only a mirror needs it
        except ImportError:
            raise ImportError("mirror='wandb' needs the wandb package: pip install wandb") from None
        self.failed: str | None = None
        self._closed = False
        # create_new: a user's own wandb run in the same process stays untouched
        self._run = wandb.init(project=project or "flightlog", name=run_name, config=dict(config or {}),
                               mode=mode, dir=dir, reinit="create_new")

    @property
    def run_id(self) -> str:
        return self._run.id

    @property
    def sync_file(self) -> str:
        """The run's `.wandb` file (what `flightlog import wandb` reads)."""
        return self._run.settings.sync_file

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._closed or self.failed:
            return
        try:
            self._run.log({k: _plain(v) for k, v in metrics.items()}, step=int(step))
        except Exception as exc:  # noqa: BLE001 - a mirror never breaks the training step
            self._fail(exc)

    def close(self, exit_code: int = 0) -> None:
        """Idempotent: finish the W&B run (exit code 0 = finished)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        _log.warning("flightlog: W&B mirror turned off after an error: %s", self.failed)


def _plain(v: Any) -> Any:
    """Tensors/numpy scalars -> Python numbers (W&B serialises those exactly, NaN/Inf included)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    item = getattr(v, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return math.nan
    return v


def wandb_mirror_for(run: str, config: Any, *, project: str | None = None) -> WandbMirror:
    """The mirror `attach(mirror="wandb")` makes: offline unless $WANDB_MODE says otherwise, in $WANDB_DIR."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif config is not None and not isinstance(config, Mapping):
        config = vars(config) if hasattr(config, "__dict__") else None
    # $WANDB_DIR passed on: wandb reads its environment once per process, not per run
    return WandbMirror(run, config, project=project, dir=os.environ.get("WANDB_DIR") or None,
                       mode=None if os.environ.get("WANDB_MODE") else "offline")
