"""The Observer: per-step capture from optimizer/model hooks, with no host-device sync.

    obs = trainer_hooks.attach(model, optimizer, run="my-run", archive="./archive")
    for batch in loader:
        loss = model(batch).loss
        loss.backward()
        obs.record_loss(loss, tokens=batch_tokens)
        optimizer.step(); optimizer.zero_grad(); scheduler.step()
    obs.close()

This module is the Observer's public face and lifecycle: `attach()`, opening its collaborators
(the rank's Writer, the NVML/host sampler, an optional W&B mirror), the drainer thread's side
of each step, checkpoints, flush and close. The hooks on the training thread and the step they
stage are step_capture.py. The drainer thread turns each wake-up's steps into `metrics` rows a
column at a time (step_metrics.py), checks them for NaN/Inf and spikes (forensics.py), tracks data
chunks and mirrors to another logger.
A failure inside any hook is caught here: one log line, an `events` row of kind
`hook_error`, and training goes on.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import weakref
from typing import Any

import torch

from trainer_hooks.checkpoint_audit import CheckpointRecorder
from trainer_hooks.config import ObserverConfig
from trainer_hooks.data import ChunkTracker
from trainer_hooks.device_buffer import DeviceBuffer
from trainer_hooks.forensics import Forensics
from trainer_hooks.mirror import wandb_mirror_for
from trainer_hooks.nvml_sampler import NvmlSampler
from trainer_hooks.step_capture import StepCapture
from trainer_hooks.step_metrics import LOG, STEP, StepRecord, StepValues, TokenCount, step_columns, step_dicts
from trainer_hooks.topology import discover, open_rank_writer

_log = logging.getLogger("flightlog.hooks")

__all__ = ["Observer", "ObserverConfig", "attach"]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class Observer(StepCapture):
    """Captures one rank's training telemetry into a `telemetry.Writer`. Build it with `attach()`.

    Collaborators may be handed in (tests swap them; a framework may share its own): `writer` (an
    open telemetry.Writer), `sampler` (a started sampler, anything with `.stop()`, instead of the
    NVML/host sampler), `mirror` (anything with `.log(metrics, step=)`, instead of `options.mirror`).
    What is handed in stays its owner's: close() neither closes nor stops it.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, run: str,
                 archive: str | None = None, config: Any = None, options: ObserverConfig | None = None,
                 scaler: Any = None, device_mesh: Any = None, writer: Any = None, nvml: Any = None,
                 sampler: Any = None, mirror: Any = None) -> None:
        self.cfg = cfg = options or ObserverConfig()
        if mirror is not None and cfg.mirror is not None:
            raise TypeError("pass a mirror either as mirror=... or as the mirror option, not both")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device = _model_device(model)
        self.topology = topo = discover(device_mesh=device_mesh, rank=cfg.rank, local_rank=cfg.local_rank,
                                        world_size=cfg.world_size, tp_size=cfg.tp_size, pp_size=cfg.pp_size,
                                        device=self.device)
        self._own_writer = writer is None
        if writer is None:
            writer = open_rank_writer(
                archive, run, topo, attempt=cfg.attempt, config=config, project=cfg.project, framework=cfg.framework,
                resumed_from_step=cfg.resumed_from_step, resumed_from_checkpoint=cfg.resumed_from_checkpoint,
                seed=cfg.seed, reason=cfg.reason, storage_options=cfg.storage_options, writer_config=cfg.writer_config)
        self.writer = writer
        self.writer.rank_info(local_rank=topo.local_rank, host=topo.host, gpu_uuid=topo.gpu_uuid,
                              dp_rank=topo.dp_rank, tp_rank=topo.tp_rank, pp_rank=topo.pp_rank)
        self._errors: dict[str, int] = {}
        self._closed = False
        dp = max(1, int(topo.dp_size or 1))
        self._init_capture(model, optimizer, device=self.device, dp_size=dp)  # training-thread state

        # ---- drainer-thread state
        self._chunks = ChunkTracker(self.writer)
        self._dp_tokens = TokenCount(seen=cfg.start_tokens, dp_size=dp,
                                     model_flops_per_token=cfg.model_flops_per_token, peak_flops=cfg.peak_flops)
        if mirror is not None:
            self._mirror, self._own_mirror = mirror, False
        else:
            self._mirror, self._own_mirror = self._open_mirror(run, config)
        self.forensics = Forensics(self._emit, self._want_probe, spike_window=cfg.spike_window,
                                   spike_zscore=cfg.spike_zscore, spike_min_points=cfg.spike_min_points, seed=cfg.seed)
        self._buf = DeviceBuffer(self.device, self._on_drain, ring=cfg.ring_size, on_error=self._hook_error)
        self._ckpt = CheckpointRecorder(self.writer, master_weights_dtype=cfg.master_weights_dtype,
                                        on_error=self._hook_error)

        self._install_hooks(model, optimizer)
        self.sampler: Any = sampler
        self._own_sampler = False
        if sampler is None and cfg.sample_gpu:
            self._start_sampler(nvml)
        # A script that never calls close() still gets its last steps: registered after the
        # Writer's own exit hook, so it runs first (atexit is last-in, first-out).
        ref = weakref.ref(self)
        self._atexit = lambda: (o := ref()) is not None and o.close()
        atexit.register(self._atexit)

    # ---- collaborators -----------------------------------------------------------------------

    def _start_sampler(self, nvml: Any) -> None:
        topo = self.topology
        uuids = [topo.gpu_uuid] if topo.gpu_uuid else None
        if uuids is None and topo.local_rank != 0:
            return  # CPU ranks: local rank 0 samples the host once for the node
        try:
            cfg = self.cfg
            self.sampler = NvmlSampler(self.writer, nvml=nvml, gpu_uuids=uuids, interval_s=cfg.gpu_sample_interval_s,
                                       ecc_interval_s=cfg.ecc_interval_s, host_metrics=topo.local_rank == 0,
                                       step_fn=lambda: self._step, on_error=self._hook_error).start()
            self._own_sampler = True
        except Exception as exc:  # noqa: BLE001 - no sampler: steps are still recorded; the error is an event
            self._hook_error("nvml_sampler", exc)

    def _open_mirror(self, run: str, config: Any) -> tuple[Any, bool]:
        if self.cfg.mirror != "wandb":
            return self.cfg.mirror, False
        if self.topology.rank != 0:
            return None, False  # one W&B run per training run, as W&B users expect: rank 0's view
        try:
            return wandb_mirror_for(run, config, project=self.cfg.project), True
        except Exception as exc:  # noqa: BLE001 - no W&B: the archive still records everything
            self._hook_error("mirror", exc)
            return None, False

    # ---- public API ----------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.writer.run_id

    @property
    def attempt(self) -> int:
        return self.writer.attempt

    @property
    def rank(self) -> int:
        return self.topology.rank

    def checkpoint_saved(self, path_or_state: Any, *, step: int | None = None, tokens: int | None = None,
                         _loaded: Any = None) -> None:
        """Audit a checkpoint just written: a path (hashed and loaded in the background) or a state dict."""
        try:
            self._ckpt.saved(path_or_state, step=self._last_step() if step is None else step,
                             tokens=self._tokens_total if tokens is None else tokens, chunk=self._chunk,
                             loaded=_loaded)
        except Exception as exc:  # noqa: BLE001
            self._hook_error("checkpoint_saved", exc)

    def checkpoint_loaded(self, path: Any, *, step: int | None = None) -> None:
        """Record that training resumed from `path` (a `checkpoint_loaded` event)."""
        try:
            uri = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
            self.writer.event("checkpoint_loaded", step=self._step if step is None else step, severity="info",
                              message=f"loaded checkpoint {uri or '(in memory)'}", data_chunk=self._chunk,
                              details={"uri": uri, "resumed_step": step})
        except Exception as exc:  # noqa: BLE001
            self._hook_error("checkpoint_loaded", exc)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the drainer handled every finished step (its metrics, NaN and spike checks)."""
        return self._buf.flush(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every finished step reached the writer, then flush the writer."""
        self._buf.flush(timeout)
        self._ckpt.wait(timeout)
        return self.writer.flush(timeout)

    def close(self, status: str = "finished", timeout: float = 30.0) -> None:
        """Remove the hooks, drain the last steps, end the attempt. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        try:
            self._stop_capture()
            self._buf.close(timeout)
            self.forensics.close()
            self._chunks.end()
            if self._own_sampler:
                self.sampler.stop()
            self._ckpt.wait(timeout)
            if self._buf.dropped:
                self.writer.event("dropped_records", severity="warning", step=self._last_step(),
                                  message=f"{self._buf.dropped} steps dropped: the drainer fell behind",
                                  details={"steps": self._buf.dropped})
            if self._own_mirror:
                self._mirror.close(0 if status == "finished" else 1)
        except Exception as exc:  # noqa: BLE001
            self._hook_error("close", exc)
        if self._own_writer:
            self.writer.close(status, timeout)

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("crashed" if exc_type is not None else "finished")

    # ---- drainer thread --------------------------------------------------------------------------

    def _on_drain(self, batch: list[tuple[list[float | None], tuple]]) -> None:
        """Every step staged since the last wake-up, oldest first: a column operation per field, not a
        call per step (step_metrics.step_columns, Forensics.observe_steps). The columns go to the writer as
        they are (`Writer.metrics_columns`; a writer without it gets a `metrics()` call per step). The metric
        rows are computed before any is written: a batch whose rows fail is handed over again step by step
        (DeviceBuffer) without doubles."""
        steps = [b for b in batch if b[1][0] == STEP]
        logs = [b for b in batch if b[1][0] == LOG] if len(steps) < len(batch) else []
        writer = self.writer
        rows = None
        if steps:
            vals, recs = zip(*steps, strict=True)
            v, r = StepValues._make(zip(*vals, strict=True)), StepRecord._make(zip(*recs, strict=True))
            cols, losses = step_columns(v, r, self._dp_tokens)
            by_columns = getattr(writer, "metrics_columns", None)
            if by_columns is not None:
                by_columns(r.step, cols, r.wall_time)
            else:
                rows = step_dicts(cols)
                metrics = writer.metrics
                for step, m, wall in zip(r.step, rows, r.wall_time, strict=True):
                    metrics(step, m, wall_time=wall)
            self._track_chunks(r.step, r.chunk, r.tokens)
            self.forensics.observe_steps(r.step, losses, v.grad_norm, loss_scales=v.loss_scale, data_chunks=r.chunk,
                                         sample_ids=r.sample_ids, probe_calls=r.probe_calls, first_bads=v.first_bad)
        for values, (_, points) in logs:
            for (step, name), x in zip(points, values, strict=True):
                writer.metric(step, name, x)
        if self._mirror is not None:
            if rows is None and steps:
                rows = step_dicts(cols)
            self._mirror_batch(batch, iter(rows or ()))

    def _track_chunks(self, steps: tuple[int, ...], chunks: tuple[int | None, ...], tokens: tuple[int, ...]) -> None:
        """ChunkTracker.step for each run of steps on one chunk: its first step, then its last with the rest
        of its tokens (the same rows and events as a call per step)."""
        n = len(steps)
        runs = [(0, n)] if chunks.count(chunks[0]) == n else [
            (g[0], g[-1] + 1) for _, grp in itertools.groupby(range(n), key=chunks.__getitem__) if (g := list(grp))]
        for i, j in runs:
            self._chunks.step(steps[i], chunks[i], tokens[i])
            if j - i > 1:
                self._chunks.step(steps[j - 1], chunks[i], sum(tokens[i + 1:j]))

    def _mirror_batch(self, batch: list[tuple[list[float | None], tuple]], rows: Any) -> None:
        """The mirror gets what it got step by step before: each step's metrics, each obs.log() batch
        grouped by step, in staged order (W&B refuses a step older than one already logged)."""
        for values, payload in batch:
            if payload[0] == STEP:
                self._mirror_log(next(rows), payload[1])
                continue
            by_step: dict[int, dict[str, float]] = {}
            for (step, name), x in zip(payload[1], values, strict=True):
                by_step.setdefault(step, {})[name] = x
            for step, m in by_step.items():
                self._mirror_log(m, step)

    def _mirror_log(self, m: dict[str, float], step: int) -> None:
        try:
            self._mirror.log(m, step=step)
        except Exception as exc:  # noqa: BLE001
            self._hook_error("mirror", exc)

    def _want_probe(self) -> None:
        self._probe_for_good = True  # read by the training thread at the next forward

    # ---- failures and records -----------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        self.writer.event(kind, **fields)

    def _hook_error(self, where: str, exc: BaseException) -> None:
        """A telemetry failure: one log line per place, an events row, never an exception."""
        n = self._errors.get(where, 0) + 1
        self._errors[where] = n
        if n == 1:
            _log.warning("flightlog: %s failed (%s: %s); training continues", where, type(exc).__name__, exc)
        if n <= 10 or math.log10(n).is_integer():
            try:
                self.writer.event("hook_error", step=self._step, severity="error", message=f"{where}: {exc!r}"[:500],
                                  details={"where": where, "error": repr(exc)[:2000], "count": n})
            except Exception:  # noqa: BLE001 - the writer itself is broken: the log line above must do
                pass


def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, run: str, archive: str | None = None,
           config: Any = None, scaler: Any = None, device_mesh: Any = None, writer: Any = None, nvml: Any = None,
           **options: Any) -> Observer:
    """Start recording `model`/`optimizer` into `archive` as run `run`.

    `config` is the training configuration (dict, dataclass or namespace) stored with the run.
    `options` are ObserverConfig fields (or pass `options=ObserverConfig(...)`). Live objects:
    `scaler` (a GradScaler, for loss_scale and skipped steps), `device_mesh` (dp/tp/pp names),
    `writer` (an open telemetry.Writer to use instead of opening one), `nvml` (a module standing
    in for pynvml).
    """
    opts = options.pop("options", None)
    if opts is not None and options:
        raise TypeError("pass ObserverConfig fields either as keywords or as options=ObserverConfig(...), not both")
    opts = opts if opts is not None else ObserverConfig(**options)
    return Observer(model, optimizer, run=run, archive=archive, config=config, options=opts, scaler=scaler,
                    device_mesh=device_mesh, writer=writer, nvml=nvml)
