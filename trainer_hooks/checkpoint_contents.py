"""Re-verify checkpoints by their contents (torch side of `flightlog checkpoints verify`).

telemetry.maintain.checkpoint_files checks sizes, hashes and tokens against steps without torch;
this module opens each file (`torch.load(weights_only=True)`, memory-mapped when local) and
checks what the save-time audit recorded: optimizer state present, weight and optimizer
dtypes, the step and tokens stored inside the checkpoint, and whether two checkpoints of
different steps hold identical weights (training that did not move, or a copied file under a
new name, which LLM360-style releases have shipped).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import torch
from tqdm import tqdm

from telemetry.maintain.checkpoint_files import CheckedCheckpoint, CheckpointVerifyReport, verify_checkpoints
from trainer_hooks.checkpoint_audit import MODEL_KEYS, NOT_WEIGHTS_KEYS, OPTIMIZER_KEYS, audit_object, load_for_audit

STEP_KEYS = ("iteration", "step", "global_step")
TOKEN_KEYS = ("tokens_seen", "consumed_tokens", "tokens")


def _load(uri: str) -> Any:
    if "://" in uri and not uri.startswith("file://"):
        with fsspec.open(uri, "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    return load_for_audit(uri.removeprefix("file://"))


def _named_tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif depth < 12 and isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _named_tensors(obj[k], f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif depth < 12 and isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _named_tensors(v, f"{prefix}.{i}", depth + 1)


def weights_digest(obj: Any) -> str | None:
    """sha256 over the model weights only (names, dtypes, shapes, bytes): equal iff the weights are equal,
    whatever else (step counter, RNG state, optimizer) the checkpoints hold."""
    if isinstance(obj, Mapping):
        model = next((obj[k] for k in MODEL_KEYS if k in obj), None)
        if model is None:
            model = {k: v for k, v in obj.items() if k not in OPTIMIZER_KEYS and k not in NOT_WEIGHTS_KEYS}
    else:
        model = obj
    h = hashlib.sha256()
    n = 0
    for name, t in _named_tensors(model):
        if not t.is_floating_point():
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        n += 1
    return h.hexdigest() if n else None


def _stored(state: Any, keys: tuple[str, ...]) -> int | None:
    if not isinstance(state, Mapping):
        return None
    for k in keys:
        v = state.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return int(v.item())
    return None


def check_contents(c: CheckedCheckpoint) -> tuple[str | None, list[str]]:
    """Compare one file's contents with its record (flags go on `c`); returns (weights digest, weight dtypes)."""
    try:
        state = _load(c.uri)
    except Exception as exc:  # noqa: BLE001 - a damaged or unsafe file is a finding, not a crash
        c.flag("unreadable", f"torch.load failed: {type(exc).__name__}: {str(exc)[:200]}")
        return None, []
    audit = audit_object(state)
    rec = c.recorded
    if not audit.has_optimizer_state:
        if rec.get("has_optimizer_state"):
            c.flag("optimizer_state_changed", "recorded with optimizer state, but the file has none now")
        else:
            c.flag("missing_optimizer_state", "no optimizer state: resuming restarts the optimizer's moments")
    elif rec.get("has_optimizer_state") is False:
        c.notes.append("optimizer state present now, though the save-time audit found none")
    want_w = sorted(rec.get("weights_dtypes") or [])
    if want_w and want_w != audit.weights_dtypes:
        c.flag("weights_dtype_changed", f"weights recorded as {want_w}, the file holds {audit.weights_dtypes}")
    want_o = sorted(rec.get("optimizer_dtypes") or [])
    if want_o and audit.optimizer_dtypes and want_o != audit.optimizer_dtypes:
        c.flag("optimizer_dtype_changed", f"optimizer state recorded as {want_o}, the file holds "
                                          f"{audit.optimizer_dtypes}")
    step = _stored(state, STEP_KEYS)
    if step is not None and c.step is not None and step != c.step:
        c.flag("step_mismatch", f"recorded as step {c.step}, the checkpoint says step {step}")
    tokens = _stored(state, TOKEN_KEYS)
    if tokens is not None and c.tokens_seen is not None and tokens != c.tokens_seen:
        c.flag("tokens_mismatch", f"recorded {c.tokens_seen:,} tokens, the checkpoint says {tokens:,}")
    return weights_digest(state), audit.weights_dtypes


def verify_run_checkpoints(archive_url: str | None, run: str, *, storage_options: dict | None = None,
                           progress: bool = False) -> CheckpointVerifyReport:
    """Everything `flightlog checkpoints verify` checks: files (telemetry side), then contents."""
    report = verify_checkpoints(archive_url, run, storage_options=storage_options, progress=progress)
    digests: dict[str, list[CheckedCheckpoint]] = {}
    dtypes: dict[int, tuple[str, ...]] = {}
    readable = [c for c in report.checkpoints if c.uri and c.bytes is not None and c.sha256 is not None]
    for c in tqdm(readable, desc="reading checkpoints", unit="file", disable=not progress, leave=False):
        d, w = check_contents(c)
        if d:
            digests.setdefault(d, []).append(c)
        if w:
            dtypes[id(c)] = tuple(w)
    for same in digests.values():
        steps = sorted({c.step for c in same})
        if len(steps) > 1:
            for c in same:
                c.flag("identical_weights", f"the same weights as step(s) {[s for s in steps if s != c.step]}: "
                                            "training did not change them, or a file was copied")
    if len(dtypes) >= 2:
        usual, count = Counter(dtypes.values()).most_common(1)[0]
        if count > len(dtypes) / 2:
            for c in readable:
                got = dtypes.get(id(c))
                if got is not None and got != usual:
                    c.flag("weights_dtype_differs", f"weights in {list(got)} while the run's other checkpoints "
                                                    f"are {list(usual)}")
    report.contents_checked = True
    return report
