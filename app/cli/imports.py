"""`flightlog import wandb|tensorboard|mlflow|csv|jsonl|hf-trainer|megatron|log|auto|evals ...`: runs logged elsewhere.

app/cli/parser.py calls `add_import_commands(subparsers)`; every handler returns an exit
code, prints one summary line on stdout and lets ArchiveError (ImportSourceError) reach the
CLI, which prints it as one line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.cli.common import EXIT_OK, add_archive_option, archive_url
from telemetry.importers._common import ImportSourceError
from telemetry.importers.evals import import_evals
from telemetry.importers.hf_trainer import import_hf_trainer, is_hf_trainer
from telemetry.importers.megatron_log import import_megatron, is_megatron_log
from telemetry.importers.mlflow import import_mlflow
from telemetry.importers.tabular import ColumnMap, import_csv, import_jsonl
from telemetry.importers.tensorboard import import_tensorboard
from telemetry.importers.text_log import import_text_log
from telemetry.importers.wandb_file import import_wandb


def _archive(args: argparse.Namespace) -> str:
    return archive_url(args.archive)


def _report(summary) -> int:
    print(summary.line())
    return EXIT_OK


def cmd_import_wandb(args: argparse.Namespace) -> int:
    return _report(import_wandb(args.path, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_tensorboard(args: argparse.Namespace) -> int:
    return _report(import_tensorboard(args.path, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_mlflow(args: argparse.Namespace) -> int:
    return _report(import_mlflow(args.tracking_uri, _archive(args), quiet=args.quiet))


def _columns(args: argparse.Namespace) -> ColumnMap:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    return ColumnMap(step_col=args.step_col, wall_time_col=args.wall_time_col, metrics=metrics)


def cmd_import_csv(args: argparse.Namespace) -> int:
    return _report(import_csv(args.file, _archive(args), columns=_columns(args), run_name=args.run,
                              quiet=args.quiet))


def cmd_import_jsonl(args: argparse.Namespace) -> int:
    return _report(import_jsonl(args.file, _archive(args), columns=_columns(args), run_name=args.run,
                                quiet=args.quiet))


def cmd_import_evals(args: argparse.Namespace) -> int:
    return _report(import_evals(list(args.files), _archive(args), args.run, step=args.step, tokens=args.tokens,
                                quiet=args.quiet))


def cmd_import_hf_trainer(args: argparse.Namespace) -> int:
    return _report(import_hf_trainer(args.path, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_megatron(args: argparse.Namespace) -> int:
    return _report(import_megatron(args.file, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_log(args: argparse.Namespace) -> int:
    if not args.pattern:
        if is_megatron_log(args.file):
            print(f"{args.file}: a Megatron-LM log (no --pattern given): imported as `flightlog import megatron`")
            return cmd_import_megatron(args)
        raise ImportSourceError("--pattern REGEX is required: name the step and each metric, e.g. "
                                r"--pattern 'step (?P<step>\d+) \| loss (?P<loss>\S+)'")
    return _report(import_text_log(args.file, _archive(args), pattern=args.pattern, run_name=args.run,
                                   quiet=args.quiet))


def detect_source(path: str) -> str | None:
    """Which importer reads `path`: hf-trainer, megatron, wandb or tensorboard; None when none is sure."""
    if is_hf_trainer(path):
        return "hf-trainer"
    if path.endswith(".wandb") or os.path.isdir(path) and any(Path(path).rglob("*.wandb")):
        return "wandb"
    if os.path.isdir(path) and any(Path(path).rglob("events.out.tfevents.*")):
        return "tensorboard"
    if os.path.isfile(path) and is_megatron_log(path):
        return "megatron"
    return None


def cmd_import_auto(args: argparse.Namespace) -> int:
    kind = detect_source(args.path)
    if kind is None:
        raise ImportSourceError(f"cannot tell what {args.path} holds (not a Trainer output, a Megatron-LM log, "
                                "W&B or TensorBoard files): name the source, e.g. `flightlog import csv FILE`")
    print(f"{args.path}: {kind}")
    if kind == "hf-trainer":
        return cmd_import_hf_trainer(args)
    if kind == "megatron":
        args.file = args.path
        return cmd_import_megatron(args)
    return cmd_import_wandb(args) if kind == "wandb" else cmd_import_tensorboard(args)


def add_import_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `import` and its sources on the CLI's subparsers; returns the `import` parser."""
    parser = subparsers.add_parser("import", help="import runs from W&B, TensorBoard, MLflow, CSV/JSONL, HF Trainer, "
                                                  "Megatron-LM or text logs, or eval scores",
                                   description="Import runs logged elsewhere. Re-importing the same source "
                                               "replaces that run.")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True

    def common(p: argparse.ArgumentParser, *, run_help: str | None) -> None:
        add_archive_option(p)
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if run_help:
            p.add_argument("--run", metavar="NAME", help=run_help)

    p = sources.add_parser("wandb", help="W&B .wandb files (offline runs), read without a W&B server")
    p.add_argument("path", metavar="PATH", help="a run-*.wandb file, a wandb/offline-run-* folder or a wandb/ folder")
    common(p, run_help="display name of the run (one file only)")
    p.set_defaults(func=cmd_import_wandb)

    p = sources.add_parser("tensorboard", help="TensorBoard event files, every scalar (one run per folder)")
    p.add_argument("path", metavar="PATH", help="a folder searched recursively for events.out.tfevents.* files")
    common(p, run_help="name of the run (one folder of event files only)")
    p.set_defaults(func=cmd_import_tensorboard)

    p = sources.add_parser("mlflow", help="an MLflow SQLite database or file store")
    p.add_argument("tracking_uri", metavar="TRACKING_URI", help="sqlite:///path/mlflow.db, ./mlruns or file:///...")
    common(p, run_help=None)
    p.set_defaults(func=cmd_import_mlflow)

    for kind, func in (("csv", cmd_import_csv), ("jsonl", cmd_import_jsonl)):
        p = sources.add_parser(kind, help=f"a {kind.upper()} log: one row per step, one column per metric")
        p.add_argument("file", metavar="FILE")
        common(p, run_help="run name (default: the file name)")
        p.add_argument("--step-col", metavar="COL", help="step column (default: step, _step, iteration, ...; "
                                                         "else the row number)")
        p.add_argument("--wall-time-col", metavar="COL", help="wall-time column: Unix seconds/ms or ISO time")
        p.add_argument("--metrics", metavar="A,B", help="metric columns (default: every numeric column)")
        p.set_defaults(func=func)

    p = sources.add_parser("evals", help="benchmark scores of a run's checkpoints: lm-evaluation-harness JSON or CSV",
                           description="Import lm-evaluation-harness result files (one per checkpoint) or a CSV "
                                       "(step,benchmark,metric,value[,stderr,n_shot,tokens_seen]) into a run's "
                                       "evals. Scores of the same (step, benchmark, metric) are replaced.")
    p.add_argument("files", nargs="+", metavar="FILE", help="results_*.json files of the harness, or a CSV")
    p.add_argument("--run", required=True, metavar="RUN", help="the run (name or id) the checkpoints belong to; "
                                                               "created when the archive has none of that name")
    common(p, run_help=None)
    p.add_argument("--step", type=int, metavar="N", help="the checkpoint's step (one file; default: from a "
                                                         "checkpoint name such as step1000 or ckpt_100)")
    p.add_argument("--tokens", type=int, metavar="N", help="tokens seen at that checkpoint (one file; default: "
                                                           "from the run's recorded checkpoint of that step)")
    p.set_defaults(func=cmd_import_evals)

    p = sources.add_parser("hf-trainer", help="a Hugging Face Trainer run: its trainer_state.json files",
                           description="Import a transformers.Trainer run: log_history (loss, grad_norm, lr, "
                                       "eval_*) and each checkpoint-N folder as a checkpoint.")
    p.add_argument("path", metavar="PATH", help="a trainer_state.json, a checkpoint-N folder or the output folder")
    common(p, run_help="name of the run (default: the output folder's name)")
    p.set_defaults(func=cmd_import_hf_trainer)

    p = sources.add_parser("megatron", help="a Megatron-LM stdout log (restarts become attempts)")
    p.add_argument("file", metavar="FILE")
    common(p, run_help="name of the run (default: the file name)")
    p.set_defaults(func=cmd_import_megatron)

    p = sources.add_parser("log", help="any text log, read with a regular expression",
                           description="Import a text log: --pattern names the step (?P<step>...), optionally "
                                       "(?P<wall_time>...), and each metric, e.g. "
                                       r"'step (?P<step>\d+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+)'.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--pattern", metavar="REGEX", help="named groups: step, wall_time (optional), metrics")
    common(p, run_help="name of the run (default: the file name)")
    p.set_defaults(func=cmd_import_log)

    p = sources.add_parser("auto", help="detect the source: Trainer output, Megatron-LM log, W&B or TensorBoard")
    p.add_argument("path", metavar="PATH")
    common(p, run_help="name of the run")
    p.set_defaults(func=cmd_import_auto)
    return parser
