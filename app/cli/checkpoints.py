"""`flightlog checkpoints verify RUN` and `flightlog memorization ...`: checkpoint science from the CLI.

`checkpoints verify` needs no torch for sizes, hashes and tokens against steps; with torch
installed it also opens each file (optimizer state, dtypes, stored step, identical weights).
`memorization` loads checkpoints of the reference trainer, so it needs torch; the import is
lazy (inside the command) so that the viewing path never pulls torch in.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
TRAIN_EXTRA = "pip install 'flightlog[train]'"


def _archive(args: argparse.Namespace) -> str:
    from telemetry.store.fs import default_archive_url

    return args.archive or default_archive_url()


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


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
    archive = _archive(args)
    progress = not args.quiet and sys.stderr.isatty()
    if args.files_only or not _has_torch():
        from telemetry.maintain.checkpoint_files import verify_checkpoints

        if not args.files_only:
            print(f"flightlog: note: torch is not installed, so only sizes, hashes and tokens are checked "
                  f"(for optimizer state and dtypes: {TRAIN_EXTRA})", file=sys.stderr)
        report = verify_checkpoints(archive, args.run, progress=progress)
    else:
        from trainer_hooks.checkpoint_contents import verify_run_checkpoints

        report = verify_run_checkpoints(archive, args.run, progress=progress)
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
        from telemetry.store.errors import ArchiveError

        raise ArchiveError(f"{what} must be whole numbers (e.g. 100 200) or 'all', got {text!r}") from None


def cmd_memorization(args: argparse.Namespace) -> int:
    from telemetry.store.errors import ArchiveError

    if not _has_torch():
        print(f"flightlog memorization loads checkpoints into the model and needs torch: {TRAIN_EXTRA}",
              file=sys.stderr)
        return EXIT_ERROR
    from trainer_hooks.reference.science import CheckpointError, measure_run

    if args.k < 1 or args.l < 1 or args.n < 1:
        raise ArchiveError("--k, --l and --n must be >= 1")
    steps = _ints(" ".join(args.checkpoint), "--checkpoint")
    chunks = _ints(" ".join(args.chunk), "--chunk") if args.chunk else None
    try:
        report = measure_run(_archive(args), args.run, chunks=chunks, steps=steps, k=args.k, l=args.l, n=args.n,
                             seed=args.seed, heldout=not args.no_heldout, batch_size=args.batch_size,
                             progress=not args.quiet)
    except CheckpointError as exc:
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


def add_checkpoints_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `checkpoints verify` and `memorization` on the CLI's subparsers."""
    def archive_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--archive", metavar="URL", help="archive folder or URL (default $FLIGHTLOG_ARCHIVE or "
                                                         "./flightlog-archive)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = subparsers.add_parser("checkpoints", help="re-verify a run's recorded checkpoints")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("verify", help="re-read each checkpoint: size, hash, optimizer state, dtypes, steps "
                                          "against tokens, identical weights (exit 1 on problems)")
    p.add_argument("run", metavar="RUN", help="run name or id")
    archive_opt(p)
    p.add_argument("--files-only", action="store_true", help="sizes, hashes and tokens only (no torch.load)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_checkpoints_verify)

    p = subparsers.add_parser(
        "memorization", help="memorization score of a run's checkpoints on its data chunks (needs torch)",
        description="Biderman et al.'s memorization score for checkpoints of the reference trainer: for N sequences "
                    "sampled (seeded) from each data chunk, the first k tokens prompt greedy decoding of l tokens; "
                    "token_match is the fraction of those equal to the data, full_match the fraction of sequences "
                    "reproduced exactly. Writes memorization rows (and a held-out perplexity per checkpoint).")
    p.add_argument("--run", required=True, metavar="RUN", help="run name or id")
    p.add_argument("--checkpoint", nargs="+", default=["all"], metavar="STEP",
                   help="checkpoint step(s), or 'all' (default)")
    p.add_argument("--chunk", nargs="+", metavar="C", help="data chunk id(s) (default: chunks spread over the run "
                                                           "plus two it never read)")
    p.add_argument("--k", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--l", type=int, default=32, help="decoded tokens compared with the data (default 32)")
    p.add_argument("--n", type=int, default=1000, help="sequences sampled per chunk (at most the chunk's; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences decoded at once (default 256)")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out perplexity eval rows")
    archive_opt(p)
    p.set_defaults(func=cmd_memorization)
