"""`flightlog checkpoints verify RUN` and `flightlog memorization ...`: checkpoint science from the CLI.

`checkpoints verify` needs no torch for sizes, hashes and tokens against steps; with torch
installed it also opens each file (optimizer state, dtypes, stored step, identical weights).
`memorization` loads checkpoints of the reference trainer, so it needs torch. The trainer_hooks
modules that do this import torch, so they are imported when these commands run, never before.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from app.cli.common import EXIT_ERROR, EXIT_FAILED, EXIT_OK, TRAIN_EXTRA, archive_url, has_torch
from telemetry.maintain.checkpoint_files import verify_checkpoints
from telemetry.store.errors import ArchiveError

# lazy: each imports torch (an extra); the files-only check and `flightlog --help` must work without it
CONTENTS, SCIENCE = "trainer_hooks.checkpoint_contents", "trainer_hooks.reference.science"


def _report_json(report) -> str:
    return json.dumps({
        "run_id": report.run_id, "ok": report.ok, "contents_checked": report.contents_checked,
        "checkpoints": [{"step": c.step, "attempt": c.attempt, "rank": c.rank, "uri": c.uri,
                         "tokens_seen": c.tokens_seen, "bytes": c.bytes, "sha256": c.sha256, "ok": c.ok,
                         "problems": c.problems, "notes": c.notes} for c in report.checkpoints],
    }, indent=1)


def _report_text(report) -> str:
    bad = sum(not c.ok for c in report.checkpoints)
    how = "files and contents" if report.contents_checked else "files only (sizes, hashes, tokens)"
    lines = [f"checkpoints of run {report.run_id}: {len(report.checkpoints)} checked ({how}), "
             + (f"{bad} with problems" if bad else "all ok")]
    for c in report.checkpoints:
        tag = "ok" if c.ok else "PROBLEMS"
        size = f"{c.bytes:,} B" if c.bytes is not None else "-"
        lines.append(f"  step {c.step if c.step is not None else '?':>8}  attempt {c.attempt}  {size:>14}  {tag:8}  "
                     f"{c.uri or '(no file)'}")
        lines.extend(f"      {p}" for p in c.problems)
    return "\n".join(lines)


def cmd_checkpoints_verify(args: argparse.Namespace) -> int:
    archive = archive_url(args.archive)
    progress = not args.quiet and sys.stderr.isatty()
    if args.files_only or not has_torch():
        if not args.files_only:
            print(f"flightlog: note: torch is not installed, so only sizes, hashes and tokens are checked "
                  f"(for optimizer state and dtypes: {TRAIN_EXTRA})", file=sys.stderr)
        report = verify_checkpoints(archive, args.run, progress=progress)
    else:
        report = importlib.import_module(CONTENTS).verify_run_checkpoints(archive, args.run, progress=progress)
    if not report.checkpoints:
        print(f"run {report.run_id} has no recorded checkpoints: nothing to verify")
        return EXIT_OK
    print(_report_json(report) if args.format == "json" else _report_text(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _ints(text: str, what: str) -> list[int] | None:
    if text.strip().lower() == "all":
        return None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ArchiveError(f"{what} must be whole numbers (e.g. 100 200) or 'all', got {text!r}") from None


def cmd_memorization(args: argparse.Namespace) -> int:
    if not has_torch():
        print(f"flightlog memorization loads checkpoints into the model and needs torch: {TRAIN_EXTRA}",
              file=sys.stderr)
        return EXIT_ERROR
    science = importlib.import_module(SCIENCE)
    if args.k < 1 or args.l < 1 or args.n < 1:
        raise ArchiveError("--k, --l and --n must be >= 1")
    steps = _ints(" ".join(args.checkpoint), "--checkpoint")
    chunks = _ints(" ".join(args.chunk), "--chunk") if args.chunk else None
    try:
        report = science.measure_run(archive_url(args.archive), args.run, chunks=chunks, steps=steps, k=args.k,
                                     l=args.l, n=args.n, seed=args.seed, heldout=not args.no_heldout,
                                     batch_size=args.batch_size, progress=not args.quiet)
    except science.CheckpointError as exc:
        raise ArchiveError(str(exc)) from None
    print(f"memorization of run {report.run_id} (k={args.k}, l={args.l}, seed {args.seed}):")
    print(f"  {'step':>8}  {'chunk':>6}  {'n':>5}  {'token match':>11}  {'full match':>10}")
    for r in report.results:
        print(f"  {r['step']:>8}  {r['data_chunk']:>6}  {r['n_sequences']:>5}  {r['token_match']:>11.4f}  "
              f"{r['full_match']:>10.4f}")
    print(f"wrote {report.memorization_rows} memorization row(s)"
          + (f" and {report.eval_rows} held-out perplexity row(s)" if report.eval_rows else "")
          + f" for {len(report.checkpoints)} checkpoint(s)")
    for p in report.problems:
        print(f"flightlog: warning: {p}", file=sys.stderr)
    return EXIT_OK if report.checkpoints else EXIT_FAILED
