"""ObserverConfig: what an Observer records and how (every field is a keyword of `attach()`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(kw_only=True, slots=True)
class ObserverConfig:
    """What an Observer records and how; every field is a keyword of attach()."""

    attempt: int | None = None
    """Launch number of this run; None: rank 0 finds the next one in the archive and broadcasts it."""
    rank: int | None = None
    """Global rank; None: from Megatron, torch.distributed or $RANK."""
    local_rank: int | None = None
    world_size: int | None = None
    tp_size: int = 1
    """Tensor-parallel size, used when neither Megatron nor a DeviceMesh says (dp = world / (tp*pp))."""
    pp_size: int = 1
    project: str | None = None
    framework: str = "pytorch"
    seed: int | None = None
    """The run's seed: stored on the attempt and in every NaN/spike event."""
    start_step: int = 0
    """Step number of the first optimizer step of this attempt (the resumed step on a restart)."""
    start_tokens: int = 0
    """Global tokens (all data-parallel replicas) trained before this attempt's first step, as a
    checkpoint's `tokens_seen` holds them; the `tokens_seen` metric continues from here."""
    resumed_from_step: int | None = None
    resumed_from_checkpoint: str | None = None
    reason: str | None = None
    master_weights_dtype: str | None = None
    """E.g. "float32": checkpoints whose floating weights are another dtype get a `weights_not_fp32` problem."""
    model_flops_per_token: float | None = None
    """Training FLOPs per token (about 6 x parameters); with peak_flops gives `mfu`."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device (e.g. 989e12 for an H100 in bf16)."""
    spike_window: int = 100
    spike_zscore: float = 6.0
    spike_min_points: int = 20
    nan_layer_probe_every: int = 0
    """Probe which layer goes non-finite every N steps; 0: only from the first non-finite step on."""
    sample_gpu: bool = True
    """Run the NVML/host sampler thread."""
    gpu_sample_interval_s: float = 2.0
    ecc_interval_s: float = 30.0
    mirror: Any = None
    """Also send each step's metrics to W&B: "wandb" (a `WandbMirror` of this run, offline unless
    $WANDB_MODE says otherwise) or an object with `.log(dict, step=)`. Called on the drainer thread."""
    compute_grad_norm: bool = True
    """Compute the grad norm in the optimizer's pre-step hook when the loop neither clipped with
    `clip_grad_norm_` nor called `obs.grad_norm()` that step. One reduction over every gradient:
    the largest part of capture's host cost on CPU (about 10 µs/step on a small model)."""
    observe_clip: bool = True
    """Take the grad norm from `torch.nn.utils.clip_grad_norm_` when the loop clips this optimizer's
    parameters (L2 norm), instead of computing it again."""
    ring_size: int = 256
    """Steps the drainer may fall behind before steps are dropped (and counted)."""
    writer_config: Any = None
    """A telemetry.WriterConfig for the Writer this Observer opens."""
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        for name in ("tp_size", "pp_size", "spike_window", "spike_min_points", "ring_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ObserverConfig.{name} must be an integer >= 1, got {v!r}")
        for name in ("attempt", "rank", "local_rank", "start_step", "start_tokens", "nan_layer_probe_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"ObserverConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("spike_zscore", "gpu_sample_interval_s", "ecc_interval_s", "model_flops_per_token", "peak_flops"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"ObserverConfig.{name} must be a number > 0, got {v!r}")
        if self.master_weights_dtype is not None:
            dt = getattr(torch, str(self.master_weights_dtype).removeprefix("torch."), None)
            if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
                raise ValueError(f"ObserverConfig.master_weights_dtype must name a float dtype such as 'float32', "
                                 f"got {self.master_weights_dtype!r}")
        if isinstance(self.mirror, str):
            if self.mirror != "wandb":
                raise ValueError(f"ObserverConfig.mirror must be 'wandb' or an object with .log(metrics, step=), "
                                 f"got {self.mirror!r}")
        elif self.mirror is not None and not callable(getattr(self.mirror, "log", None)):
            raise ValueError("ObserverConfig.mirror must be 'wandb' or have a .log(metrics, step=) method "
                             "(e.g. a wandb run)")
