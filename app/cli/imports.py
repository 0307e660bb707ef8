"""`flightlog import wandb|tensorboard|mlflow|csv|jsonl|evals ...`: bring runs logged elsewhere into the archive.

The lead's app/cli.py calls `add_import_commands(subparsers)`; every handler returns an exit
code, prints one summary line on stdout and lets ArchiveError (ImportSourceError) reach the
CLI, which prints it as one line.
"""

from __future__ import annotations

import argparse

EXIT_OK = 0


def _archive(args: argparse.Namespace) -> str:
    from telemetry.store.fs import default_archive_url

    return args.archive or default_archive_url()


def _report(summary) -> int:
    print(summary.line())
    return EXIT_OK


def cmd_import_wandb(args: argparse.Namespace) -> int:
    from telemetry.importers.wandb_file import import_wandb

    return _report(import_wandb(args.path, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_tensorboard(args: argparse.Namespace) -> int:
    from telemetry.importers.tensorboard import import_tensorboard

    return _report(import_tensorboard(args.path, _archive(args), run_name=args.run, quiet=args.quiet))


def cmd_import_mlflow(args: argparse.Namespace) -> int:
    from telemetry.importers.mlflow import import_mlflow

    return _report(import_mlflow(args.tracking_uri, _archive(args), quiet=args.quiet))


def _columns(args: argparse.Namespace):
    from telemetry.importers.tabular import ColumnMap

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    return ColumnMap(step_col=args.step_col, wall_time_col=args.wall_time_col, metrics=metrics)


def cmd_import_csv(args: argparse.Namespace) -> int:
    from telemetry.importers.tabular import import_csv

    return _report(import_csv(args.file, _archive(args), columns=_columns(args), run_name=args.run,
                              quiet=args.quiet))


def cmd_import_jsonl(args: argparse.Namespace) -> int:
    from telemetry.importers.tabular import import_jsonl

    return _report(import_jsonl(args.file, _archive(args), columns=_columns(args), run_name=args.run,
                                quiet=args.quiet))


def cmd_import_evals(args: argparse.Namespace) -> int:
    from telemetry.importers.evals import import_evals

    return _report(import_evals(list(args.files), _archive(args), args.run, step=args.step, tokens=args.tokens,
                                quiet=args.quiet))


def add_import_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `import` and its sources on the CLI's subparsers; returns the `import` parser."""
    parser = subparsers.add_parser("import", help="import runs from W&B, TensorBoard, MLflow, CSV or JSONL, or eval scores",
                                   description="Import runs logged elsewhere. Re-importing the same source "
                                               "replaces that run.")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True

    def common(p: argparse.ArgumentParser, *, run_help: str | None) -> None:
        p.add_argument("--archive", metavar="URL", help="archive folder or URL (default $FLIGHTLOG_ARCHIVE or "
                                                         "./flightlog-archive)")
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
    p.add_argument("--run", required=True, metavar="RUN", help="the run (name or id) the checkpoints belong to")
    common(p, run_help=None)
    p.add_argument("--step", type=int, metavar="N", help="the checkpoint's step (one file; default: from a "
                                                         "checkpoint name such as step1000 or ckpt_100)")
    p.add_argument("--tokens", type=int, metavar="N", help="tokens seen at that checkpoint (one file; default: "
                                                           "from the run's recorded checkpoint of that step)")
    p.set_defaults(func=cmd_import_evals)
    return parser
