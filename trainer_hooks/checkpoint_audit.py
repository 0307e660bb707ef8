"""Checkpoint audit at save time: what a saved checkpoint really holds, recorded next to the run.

LLM360's Amber shipped checkpoints without optimizer state and in BF16 instead of FP32;
nobody noticed until someone tried to resume. The audit records, per checkpoint: size,
sha256 (files), whether an optimizer state with a non-empty `state` is inside, the dtypes
of the floating-point weights and of the optimizer state, the current data chunk, and a
problems list (`missing_optimizer_state`, `weights_not_fp32` when the run declares FP32
master weights). Files are read with `torch.load(map_location="cpu", weights_only=True)`,
memory-mapped where the format allows, on a background thread. Later, `flightlog checkpoints
verify` re-checks the records: telemetry.maintain.checkpoint_files (the files, no torch) and
checkpoint_contents.py (what they hold).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

OPTIMIZER_KEYS = ("optimizer", "optim", "optimizer_state_dict", "optimizer_states", "optimizer_state")
MODEL_KEYS = ("model", "model_state_dict", "state_dict", "module", "weights", "params")
NOT_WEIGHTS_KEYS = ("rng_state", "rng_states", "scheduler", "lr_scheduler", "scaler", "grad_scaler", "args", "config")


@dataclass(kw_only=True, slots=True)
class CheckpointAudit:
    uri: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    has_optimizer_state: bool = False
    weights_dtypes: list[str] = field(default_factory=list)
    optimizer_dtypes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 12 and isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif depth < 12 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)


def _optimizer_subtrees(obj: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 6 or not isinstance(obj, Mapping):
        return
    for k, v in obj.items():
        if k in OPTIMIZER_KEYS:
            yield v
        elif k not in NOT_WEIGHTS_KEYS and isinstance(v, Mapping):
            yield from _optimizer_subtrees(v, depth + 1)


def _holds_state(opt: Any, depth: int = 0) -> bool:
    """An optimizer state dict (possibly nested, e.g. Megatron's) with a non-empty 'state'."""
    if not isinstance(opt, Mapping) or depth > 6:
        return isinstance(opt, (list, tuple)) and any(_holds_state(o, depth + 1) for o in opt)
    state = opt.get("state")
    if isinstance(state, Mapping) and len(state) > 0:
        return True
    return any(_holds_state(v, depth + 1) for v in opt.values() if isinstance(v, (Mapping, list, tuple)))


def _weights(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for k in MODEL_KEYS:
            if k in obj:
                yield from _tensors(obj[k])
                return
        for k, v in obj.items():
            if k not in OPTIMIZER_KEYS and k not in NOT_WEIGHTS_KEYS:
                yield from _tensors(v)
    else:
        yield from _tensors(obj)


def audit_object(obj: Any, *, master_weights_dtype: str | None = None, uri: str | None = None) -> CheckpointAudit:
    """Audit an in-memory checkpoint (a state dict, or a dict of model/optimizer/... entries).

    Reads only tensor metadata (dtype, size): no data is touched, so CUDA tensors cause no sync.
    """
    opts = list(_optimizer_subtrees(obj)) if isinstance(obj, Mapping) else []
    has_opt = any(_holds_state(o) for o in opts)
    # Integer buffers (step counters, num_batches_tracked) are not weights; only floats count.
    weights = [t for t in _weights(obj) if t.is_floating_point()]
    opt_tensors = [t for o in opts for t in _tensors(o) if t.is_floating_point()]
    a = CheckpointAudit(
        uri=uri, has_optimizer_state=has_opt,
        weights_dtypes=sorted({dtype_name(t.dtype) for t in weights}),
        optimizer_dtypes=sorted({dtype_name(t.dtype) for t in opt_tensors}),
        bytes=sum(t.numel() * t.element_size() for t in _tensors(obj)),
    )
    if not has_opt:
        a.problems.append("missing_optimizer_state")
    if master_weights_dtype:
        want = dtype_name(getattr(torch, master_weights_dtype.removeprefix("torch.")))
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(want, want)
        if any(d != want for d in a.weights_dtypes):
            a.problems.append(f"weights_not_{short}")
    return a


def file_digest(path: str, chunk: int = 1 << 20) -> tuple[int, str | None]:
    """(bytes, sha256) of a file; a directory (sharded checkpoint) gives its total size and no hash."""
    if os.path.isdir(path):
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
        return total, None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return os.path.getsize(path), h.hexdigest()


def load_for_audit(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format cannot mmap


def audit_file(path: str | os.PathLike, *, master_weights_dtype: str | None = None,
               loaded: Any = None) -> CheckpointAudit:
    """Audit a checkpoint file. `loaded` skips torch.load when the caller still has the object."""
    path = os.fspath(path)
    size, sha = file_digest(path)
    if loaded is None and os.path.isdir(path):
        return CheckpointAudit(uri=path, bytes=size, error="sharded checkpoint folder: contents not inspected")
    try:
        obj = load_for_audit(path) if loaded is None else loaded
    except Exception as exc:  # noqa: BLE001 - unreadable or unsafe pickle: recorded, not raised
        return CheckpointAudit(uri=path, bytes=size, sha256=sha, problems=["unreadable"],
                               error=f"{type(exc).__name__}: {exc}"[:500])
    a = audit_object(obj, master_weights_dtype=master_weights_dtype, uri=path)
    a.bytes, a.sha256 = size, sha
    return a


def save_checkpoint(obj: Any, path: str | os.PathLike, *, obs: Any = None, step: int | None = None,
                    tokens: int | None = None, **save_kwargs: Any) -> None:
    """`torch.save(obj, path)`, then audit it through `obs` (in the background) when given.

    The save itself is the caller's: its errors raise as torch.save's would. The audit never raises.
    """
    torch.save(obj, path, **save_kwargs)
    if obs is not None:
        obs.checkpoint_saved(path, step=step, tokens=tokens, _loaded=obj)


class CheckpointRecorder:
    """Audits checkpoints for one Observer and writes `checkpoints` rows and `checkpoint_saved` events.

    A path is hashed and loaded on a background thread (checkpoints are rare, one thread each);
    an in-memory object is audited at once (tensor metadata only).
    """

    def __init__(self, writer: Any, *, master_weights_dtype: str | None, on_error: Any) -> None:
        self.writer = writer
        self.master_weights_dtype = master_weights_dtype
        self._on_error = on_error
        self._threads: list[threading.Thread] = []

    def saved(self, path_or_state: Any, *, step: int, tokens: int | None, chunk: int | None,
              loaded: Any = None) -> None:
        mw = self.master_weights_dtype
        if not isinstance(path_or_state, (str, os.PathLike)):
            self._record(audit_object(path_or_state, master_weights_dtype=mw), step, tokens, chunk)
            return
        path = os.fspath(path_or_state)
        pre = audit_object(loaded, master_weights_dtype=mw, uri=path) if loaded is not None else None

        def job() -> None:
            try:
                a = audit_file(path, master_weights_dtype=mw, loaded=pre)
                if pre is not None:  # the object was audited already; the file adds size and hash
                    pre.bytes, pre.sha256, a = a.bytes, a.sha256, pre
                self._record(a, step, tokens, chunk)
            except Exception as exc:  # noqa: BLE001
                self._on_error("checkpoint_audit", exc)

        t = threading.Thread(target=job, name="flightlog-ckpt-audit", daemon=True)
        t.start()
        self._threads.append(t)

    def _record(self, a: CheckpointAudit, step: int, tokens: int | None, chunk: int | None) -> None:
        self.writer.checkpoint(step=step, tokens_seen=tokens, uri=a.uri, bytes=a.bytes,
                               has_optimizer_state=a.has_optimizer_state, weights_dtypes=a.weights_dtypes,
                               optimizer_dtypes=a.optimizer_dtypes, data_chunk=chunk, sha256=a.sha256,
                               problems=a.problems)
        msg = f"checkpoint at step {step}" + (f": {', '.join(a.problems)}" if a.problems else "")
        self.writer.event("checkpoint_saved", step=step, severity="warning" if a.problems else "info", message=msg,
                          data_chunk=chunk, details={"uri": a.uri, "bytes": a.bytes, "sha256": a.sha256,
                                                     "problems": a.problems, "error": a.error})

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
