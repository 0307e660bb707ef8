"""Re-check a run's recorded checkpoints against their files now, and against each other, without torch.

What the `checkpoints` table says at save time (size, sha256) is compared with what the file
holds now (local path or any fsspec URL), and the run's checkpoints are compared with each
other: tokens must grow with steps at the run's rate, and two checkpoints of different steps
must not be the same file. The torch side (trainer_hooks.checkpoint_contents) adds what needs
the file's contents: optimizer state, dtypes, the step stored inside, identical weights.

Problems are short codes with a sentence each, so the CLI prints them and tests match them:
missing_file, size_mismatch, hash_mismatch, identical_file, tokens_not_increasing,
tokens_per_step_mismatch, and (torch side) missing_optimizer_state, optimizer_state_changed,
weights_dtype_changed, weights_dtype_differs, optimizer_dtype_changed, step_mismatch,
tokens_mismatch, identical_weights, unreadable.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import url_to_fs
from tqdm import tqdm

from telemetry.maintain.wired import Archive

TOKENS_PER_STEP_TOLERANCE = 0.02  # relative; batch-size ramps change the rate gradually, not one checkpoint


@dataclass(slots=True)
class CheckedCheckpoint:
    step: int | None
    attempt: int | None
    rank: int | None
    uri: str | None
    tokens_seen: int | None
    recorded: dict[str, Any]                 # the row of the checkpoints table
    bytes: int | None = None                 # found now
    sha256: str | None = None                # found now (None for folders and missing files)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def flag(self, code: str, message: str) -> None:
        self.problems.append(f"{code}: {message}")

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class CheckpointVerifyReport:
    run_id: str
    checkpoints: list[CheckedCheckpoint]
    contents_checked: bool = False           # whether the torch side looked inside the files
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checkpoints)

    @property
    def problems(self) -> list[str]:
        return [f"step {c.step} ({c.uri}): {p}" for c in self.checkpoints for p in c.problems]


def recorded_checkpoints(archive_url: str | None, run: str, storage_options: dict | None = None
                         ) -> tuple[str, list[dict]]:
    """(run_id, rows): the latest row per checkpoint file (a later save to the same path supersedes)."""
    archive = Archive(archive_url, storage_options=storage_options)
    try:
        run_id = archive.resolve_run(run)
        rows = archive.sql("""
            SELECT * FROM checkpoints WHERE run_id = ?
            QUALIFY row_number() OVER (PARTITION BY coalesce(uri, step::VARCHAR || '/' || attempt::VARCHAR)
                                       ORDER BY wall_time DESC NULLS LAST, attempt DESC) = 1
            ORDER BY step, rank, attempt""", [run_id]).to_pylist()
    finally:
        archive.close()
    return run_id, rows


def digest(uri: str, chunk: int = 1 << 20) -> tuple[int | None, str | None]:
    """(bytes, sha256) of a checkpoint file; a folder (sharded checkpoint) gives its total size and no hash.
    FileNotFoundError when it is gone."""
    fs, path = url_to_fs(uri)
    if fs.isdir(path):
        return sum(int(info.get("size") or 0) for info in fs.find(path, detail=True).values()), None
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    h = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def check_files(checked: list[CheckedCheckpoint]) -> None:
    """Size and hash of every file against the record; missing files."""
    for c in checked:
        if not c.uri:
            c.notes.append("no file recorded (audited in memory): nothing to re-read")
            continue
        try:
            c.bytes, c.sha256 = digest(c.uri)
        except FileNotFoundError:
            c.flag("missing_file", f"the checkpoint file is gone ({c.uri})")
            continue
        except OSError as exc:
            c.flag("missing_file", f"cannot read {c.uri}: {exc}")
            continue
        want_bytes, want_sha = c.recorded.get("bytes"), c.recorded.get("sha256")
        if want_bytes is not None and c.bytes != want_bytes:
            c.flag("size_mismatch", f"recorded {want_bytes:,} bytes, the file has {c.bytes:,}")
        if want_sha and c.sha256 and c.sha256 != want_sha:
            c.flag("hash_mismatch", f"sha256 {c.sha256[:12]}… differs from the recorded {want_sha[:12]}…")
        if not want_sha and c.sha256:
            c.notes.append("no sha256 recorded: contents cannot be compared with the save")


def check_consistency(checked: list[CheckedCheckpoint]) -> None:
    """Tokens against steps across the run, and identical files under different steps."""
    with_tokens = sorted((c for c in checked if c.step and c.tokens_seen is not None), key=lambda c: c.step)
    best_before: CheckedCheckpoint | None = None
    for c in with_tokens:
        if best_before is not None and c.step > best_before.step and c.tokens_seen <= best_before.tokens_seen:
            c.flag("tokens_not_increasing", f"{c.tokens_seen:,} tokens at step {c.step}, but already "
                                            f"{best_before.tokens_seen:,} at step {best_before.step}")
        if best_before is None or c.tokens_seen > best_before.tokens_seen:
            best_before = c
    rates = [c.tokens_seen / c.step for c in with_tokens if c.step > 0]
    if len(rates) >= 3:
        rate = statistics.median(rates)
        for c in with_tokens:
            if rate > 0 and abs(c.tokens_seen / c.step - rate) > TOKENS_PER_STEP_TOLERANCE * rate:
                c.flag("tokens_per_step_mismatch",
                       f"{c.tokens_seen:,} tokens at step {c.step:,} is {c.tokens_seen / c.step:,.0f} tokens/step; "
                       f"the run's checkpoints have {rate:,.0f}: the step or the token count is wrong")
    by_hash: dict[str, list[CheckedCheckpoint]] = {}
    for c in checked:
        if c.sha256:
            by_hash.setdefault(c.sha256, []).append(c)
    for same in by_hash.values():
        steps = sorted({c.step for c in same})
        if len(steps) > 1:
            for c in same:
                c.flag("identical_file", f"the same file content as the checkpoint(s) of step(s) "
                                         f"{[s for s in steps if s != c.step]}")


def verify_checkpoints(archive_url: str | None, run: str, *, storage_options: dict | None = None,
                       progress: bool = False) -> CheckpointVerifyReport:
    """Size/hash and step/token checks of every recorded checkpoint of `run` (no torch needed)."""
    run_id, rows = recorded_checkpoints(archive_url, run, storage_options)
    checked = [CheckedCheckpoint(step=r.get("step"), attempt=r.get("attempt"), rank=r.get("rank"), uri=r.get("uri"),
                                 tokens_seen=r.get("tokens_seen"), recorded=r) for r in rows]
    for c in tqdm(checked, desc="hashing checkpoints", unit="file", disable=not progress, leave=False):
        check_files([c])
    check_consistency(checked)
    return CheckpointVerifyReport(run_id, checked)
