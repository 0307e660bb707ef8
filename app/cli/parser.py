"""The `flightlog` argument parser: every command, its options, and the function that runs it.

Each command's function is named by `Handler("module:function")` and imported only when that
command runs (app/cli/common.py says why), so building this parser, and `flightlog --help`,
imports none of DuckDB, pandas or torch.
"""

from __future__ import annotations

import argparse

from app.cli.common import SQL_FORMATS, TEXT_FORMATS, Handler, add_archive_option
from app.cli.imports import add_import_commands
from telemetry.store.fs import DEFAULT_ARCHIVE

TRAINER_COMMANDS = {"demo": Handler("app.cli.trainer:cmd_demo"), "train": Handler("app.cli.trainer:cmd_train")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flightlog",
        description="Flight recorder and open archive for LLM training runs.",
        epilog=f"The archive defaults to $FLIGHTLOG_ARCHIVE or {DEFAULT_ARCHIVE}.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_query_commands(sub)
    _add_maintenance_commands(sub)
    _add_incidents_and_ui_commands(sub)
    add_import_commands(sub)
    _add_checkpoint_commands(sub)
    _add_publish_command(sub)
    _add_compact_command(sub)
    for name, text in (("demo", "record a small demo run (needs torch)"),
                       ("train", "train the reference model with flightlog attached (needs torch)")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=TRAINER_COMMANDS[name])
    return parser


def _add_query_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs of an archive")
    add_archive_option(p)
    p.add_argument("--format", choices=TEXT_FORMATS, default="table",
                   help="json: one array; jsonl: one object per line")
    p.set_defaults(func=Handler("app.cli.runs:cmd_runs"))

    p = sub.add_parser("sql", help="run a read-only SQL query over the archive")
    p.add_argument("query", metavar="QUERY", help='e.g. "SELECT * FROM runs"')
    add_archive_option(p)
    p.add_argument("--format", choices=SQL_FORMATS, default="table",
                   help="json: one array; jsonl: one object per line; parquet needs --output")
    p.add_argument("--output", metavar="FILE", help="write the result here instead of stdout")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the query after this long")
    p.add_argument("--max-rows", type=int, default=10_000_000, metavar="N", help="cap on result rows")
    p.set_defaults(func=Handler("app.cli.sql:cmd_sql"))


def _add_incidents_and_ui_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incidents", help="incidents of a run per data chunk, across attempts and seeds")
    p.add_argument("run", metavar="RUN", help="run name or id")
    add_archive_option(p)
    p.add_argument("--format", choices=TEXT_FORMATS, default="table",
                   help="json: one array; jsonl: one object per line")
    p.set_defaults(func=Handler("app.cli.incidents:cmd_incidents"))

    p = sub.add_parser("ui", help="open the journey app in a browser")
    p.add_argument("archive_url", nargs="?", metavar="ARCHIVE_URL",
                   help="folder or URL (s3://, gs://, hf://, http(s):// of a published archive)")
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    p.add_argument("--address", default="127.0.0.1", metavar="HOST",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 serves other hosts: the app can "
                        "open any archive path the server can read, so put it behind authentication)")
    p.set_defaults(func=Handler("app.cli.ui:cmd_ui"))


def _add_maintenance_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="recover staged data and write the manifest")
    p.add_argument("url", nargs="?", metavar="URL")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--quarantine", action="store_true",
                   help="decode every page and move broken files to _quarantine/ (default: readers skip them)")
    p.set_defaults(func=Handler("app.cli.index:cmd_index"))

    p = sub.add_parser("verify", help="check every file of the archive (exit 1 on problems)")
    p.add_argument("url", nargs="?", metavar="URL")
    p.add_argument("--quick", action="store_true", help="check footers only, do not decode every page")
    p.set_defaults(func=Handler("app.cli.verify:cmd_verify"))


def _add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("checkpoints", help="re-verify a run's recorded checkpoints")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("verify", help="re-read each checkpoint: size, hash, optimizer state, dtypes, steps "
                                          "against tokens, identical weights (exit 1 on problems)")
    p.add_argument("run", metavar="RUN", help="run name or id")
    add_archive_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--files-only", action="store_true", help="sizes, hashes and tokens only (no torch.load)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=Handler("app.cli.checkpoints:cmd_checkpoints_verify"))

    p = sub.add_parser(
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
    p.add_argument("--n", type=int, default=1000,
                   help="sequences sampled per chunk (at most the chunk's; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences decoded at once (default 256)")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out perplexity eval rows")
    add_archive_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=Handler("app.cli.checkpoints:cmd_memorization"))


def _add_publish_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish", help="publish runs as a compacted, checksummed archive (folder, s3://, hf://)",
        description="Write a self-contained, compacted copy of the chosen runs with a manifest and sha256 "
                    "checksums. A folder served by any static web host then opens with `flightlog ui "
                    "https://host/path`; `flightlog verify URL` checks it.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names or ids (see `flightlog runs`)")
    p.add_argument("--to", required=True, metavar="URL",
                   help="destination: a folder, s3://bucket/path, hf://datasets/user/repo (needs huggingface_hub)")
    add_archive_option(p, metavar="SRC", help=f"source archive (default $FLIGHTLOG_ARCHIVE or {DEFAULT_ARCHIVE})")
    p.add_argument("--all", action="store_true", help="publish every run of the source archive")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier publication at the destination")
    p.add_argument("--spark-compatible", action="store_true",
                   help="PLAIN float encoding instead of BYTE_STREAM_SPLIT, for older Parquet readers "
                        "(Spark 4, DuckDB, Polars and pandas do not need it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=Handler("app.cli.publish:cmd_publish"))


def _add_compact_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact", help="merge segments into large sorted files, rebuild LOD tables, remove replaced files",
        description="Merge each run's segments into large files sorted by (name, step), rebuild its "
                    "level-of-detail table, and delete files replaced more than --grace seconds ago. "
                    "Segments of writers that are still running are left alone. Exit 1 when a problem "
                    "was found (listed on stderr).")
    p.add_argument("url", nargs="?", metavar="URL",
                   help=f"archive folder or URL (default $FLIGHTLOG_ARCHIVE or {DEFAULT_ARCHIVE})")
    p.add_argument("--run", metavar="RUN", help="only this run (name or id); default every run")
    p.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                   help="delete replaced files only after this long (default 600: readers that opened the "
                        "archive before may still read them)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--follow", action="store_true",
                   help="keep compacting live runs until Ctrl-C (a sidecar for jobs whose rank 0 runs with "
                        "WriterConfig(live_compaction=False)); one progress line per pass")
    p.add_argument("--interval", type=float, default=30.0, metavar="SECONDS",
                   help="with --follow: seconds between passes (default 30)")
    p.add_argument("--passes", type=int, default=None, metavar="N", help="with --follow: stop after N passes")
    p.set_defaults(func=Handler("app.cli.compact:cmd_compact"))
