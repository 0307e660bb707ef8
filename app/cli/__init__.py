"""The `flightlog` command line: one function per command, errors as one line, never a traceback.

No torch here: `demo` and `train` import the reference trainer lazily, only when asked.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from data_schema import LayoutError, SchemaError
from telemetry.store.errors import ArchiveError

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
TRAIN_EXTRA = "pip install 'flightlog[train]'"


def _default_archive() -> str:
    from telemetry.store.fs import default_archive_url

    return default_archive_url()


def _not_a_file(url: str) -> str:
    """A local path that is a plain file is no archive: say so before any reader trips over it."""
    if "://" not in url and os.path.isfile(url):
        raise ArchiveError(f"{url} is a file, not an archive folder: pass the folder that holds flightlog.json")
    return url


def _open(url: str | None):
    from telemetry.maintain.wired import open_archive

    return open_archive(_not_a_file(url or _default_archive()))


# -- output ----------------------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v


def write_frame(df, fmt: str) -> None:
    """A pandas DataFrame (from the query helpers) as table/csv/json on stdout."""
    import pandas as pd

    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        for row in df.to_dict("records"):
            clean = {k: (None if v is pd.NaT else _json_value(v.tolist() if hasattr(v, "tolist") else v))
                     for k, v in row.items()}
            sys.stdout.write(json.dumps(clean, ensure_ascii=False, default=str) + "\n")
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            sys.stdout.write(df.to_string(index=False) + "\n")


def write_table(table, fmt: str, output: str | None) -> None:
    """An Arrow table as table/csv/json/parquet, to a file or stdout."""
    import pyarrow as pa

    if fmt == "parquet":
        if not output:
            raise ArchiveError("--format parquet writes binary data: give a file with --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output, compression="zstd")
        return
    if fmt == "csv":
        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(_csv_safe(table, pa), buf)
        text = buf.getvalue().decode("utf-8")
    elif fmt == "json":
        # NaN and ±Inf stay NaN/Infinity tokens (data, never turned into null)
        rows = [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
        text = "\n".join(json.dumps(row, ensure_ascii=False, default=str) for row in rows) + ("\n" if rows else "")
    else:
        text = _pretty(table)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def _csv_safe(table, pa):
    """pyarrow's CSV writer refuses list columns: write them as JSON text."""
    cols = []
    for col in table.columns:
        if pa.types.is_list(col.type) or pa.types.is_struct(col.type) or pa.types.is_map(col.type):
            col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


def _pretty(table) -> str:
    import pandas as pd

    if table.num_columns == 0:
        return "(no columns)\n"
    df = table.to_pandas()
    if df.empty:
        return "  ".join(table.column_names) + "\n(no rows)\n"
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 60):
        return df.to_string(index=False) + "\n"


# -- commands --------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    archive = _open(args.archive)
    df = archive.runs()
    for p in archive.problems:
        print(f"flightlog: warning: {p}", file=sys.stderr)
    if df.empty:
        print(f"no runs in {archive.url} yet: `flightlog demo` records one", file=sys.stderr)
        return EXIT_OK
    write_frame(df, args.format)
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    import math

    from telemetry.read.sandbox import SandboxedQuery

    if args.max_rows is not None and args.max_rows < 1:
        raise ArchiveError(f"--max-rows must be a positive number of rows, got {args.max_rows}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ArchiveError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    archive = _open(args.archive)
    # the user's own archive: no time limit unless asked, a generous row cap, still read-only
    sandbox = SandboxedQuery(archive, row_limit=args.max_rows, timeout_s=args.timeout)
    try:
        result = sandbox.run_result(args.query)
    finally:
        sandbox.close()  # ends the query process
    try:
        write_table(result.table, args.format, args.output)
    except OSError as exc:
        raise ArchiveError(f"cannot write --output {args.output}: {exc.strerror or exc}") from None
    if result.truncated:
        print(f"flightlog: warning: output cut at {args.max_rows} rows (raise it with --max-rows N)", file=sys.stderr)
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from telemetry.read.catalog import Catalog

    url = _not_a_file(args.url or _default_archive())
    Catalog(url).check_exists_and_version()
    steps = ["recover staged data", "check files", "write manifest"]
    with tqdm(total=len(steps), desc="index", unit="step", file=sys.stderr, disable=args.quiet) as bar:
        try:
            from telemetry.maintain.recovery import recover
        except ImportError:
            recover = None
        bar.set_postfix_str(steps[0])
        report = recover(url) if recover is not None else None
        bar.update(1)
        try:
            from telemetry.maintain.manifest import write_manifest
        except ImportError:
            raise ArchiveError("this flightlog cannot write manifests (telemetry.maintain.manifest is missing)") from None
        from telemetry.maintain.quarantine import bad_file_lines, check_and_set_aside

        bar.set_postfix_str(steps[1])
        check, moved = check_and_set_aside(url, move=args.quarantine,
                                           progress=lambda i, n: bar.set_postfix_str(f"{steps[1]} {i}/{n}"))
        bar.update(1)
        bar.set_postfix_str(steps[2])
        manifest = write_manifest(url, exclude=set(check.broken_files))
        bar.update(1)
    for line in bad_file_lines(check, moved):  # after the bar: a warning never mixes with its redraws
        print(f"flightlog: warning: {line}", file=sys.stderr)
    if report is not None:
        print(f"recovered: {_describe(report)}")
    files = _count_files(manifest)
    print(f"indexed {url}" + (f": {files} live file(s) in the manifest" if files is not None else ""))
    return EXIT_OK


def _describe(obj: Any) -> str:
    fields = getattr(obj, "__dataclass_fields__", None)
    if not fields:
        return str(obj)
    return ", ".join(f"{k}={len(v) if isinstance(v, (list, tuple, set)) else v}" for k, v in
                     ((k, getattr(obj, k)) for k in fields))


def _count_files(manifest: Any) -> int | None:
    from telemetry.store.manifest_file import parse_manifest

    if manifest is None:
        return None
    if not isinstance(manifest, (dict, list)):
        manifest = getattr(manifest, "files", None)
        if manifest is None:
            return None
    return len(parse_manifest(manifest if not isinstance(manifest, list) else {"files": manifest}))


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from telemetry.maintain.file_integrity import verify

    url = _not_a_file(args.url or _default_archive())
    bars: list = []  # opened at the first file: an archive that does not open shows no bar, only its error

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="verify", unit="file", file=sys.stderr, disable=args.quick))
        bars[0].update(done - bars[0].n)

    try:
        report = verify(url, deep=not args.quick, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if report.pending:
        print(f"{len(report.pending)} staged file(s) pending recovery (`flightlog index` converts them)")
    if report.ok:
        print(f"ok: {report.files_checked} file(s), {report.rows} row(s) checked in {url}")
        return EXIT_OK
    print(f"{len(report.problems)} problem(s) in {url}:", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return EXIT_FAILED


def cmd_incidents(args: argparse.Namespace) -> int:
    archive = _open(args.archive)
    run_id = archive.resolve_run(args.run)
    chunks = archive.chunk_incidents(run_id)
    events = archive.incidents(run_id)
    if events.empty:
        print(f"no incidents in run {run_id}")
        return EXIT_OK
    if args.format != "table":
        write_frame(events, args.format)
        return EXIT_OK
    print(f"incidents of run {run_id} per data chunk (across attempts and seeds):")
    if chunks.empty:
        print("  (no incident carries a data chunk)")
    for row in chunks.itertuples():
        seeds = ", ".join(str(s) for s in _present(row.seeds))
        flag = "  <- fails in every attempt" if row.n_attempts > 1 else ""
        print(f"  chunk {row.data_chunk}: {row.n_incidents} incident(s) in {row.n_attempts} attempt(s), "
              f"seeds [{seeds}], kinds {', '.join(row.kinds)}, steps {row.first_step}-{row.last_step}{flag}")
    print(f"\n{len(events)} incident(s):")
    cols = ["attempt", "seed", "step", "kind", "severity", "data_chunk", "message"]
    write_frame(events[cols], "table")
    return EXIT_OK


def _present(values: Any) -> list:
    """The non-null items of a list column's cell (DuckDB gives a list, an array, or NA)."""
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        return []
    return [v for v in values if v is not None and v == v]


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from app.ui.server import serve
    except ImportError as exc:
        raise ArchiveError(f"the journey app is not available in this install ({exc})") from None
    if not 1 <= args.port <= 65535:
        raise ArchiveError(f"--port must be a TCP port between 1 and 65535, got {args.port}")
    url = args.archive_url or _default_archive()
    _open(url).close()  # a missing archive is a clear error here, not a blank page
    result = serve(url, port=args.port, address=args.address)
    return int(result) if isinstance(result, int) else EXIT_OK


def _run_trainer(module: str, command: str, argv: list[str], **kwargs: Any) -> int:
    if importlib.util.find_spec("torch") is None:
        print(f"flightlog {command} needs the training extra: {TRAIN_EXTRA}", file=sys.stderr)
        return EXIT_ERROR
    try:
        entry = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in ("torch",) or (exc.name or "").startswith("torch."):
            print(f"flightlog {command} needs the training extra: {TRAIN_EXTRA}", file=sys.stderr)
            return EXIT_ERROR
        if (exc.name or "").startswith("trainer_hooks"):
            raise ArchiveError(f"flightlog {command} is not available in this install ({module} is missing)") from None
        raise
    result = entry.main(argv, **kwargs)
    return int(result) if isinstance(result, int) else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo opens the app through this callback: trainer_hooks never imports app.
    def serve(archive: str, **options: Any) -> object:
        from app.ui.server import serve as serve_app

        return serve_app(archive, **options)

    return _run_trainer("trainer_hooks.reference.demo", "demo", list(args.rest), serve=serve)


def cmd_train(args: argparse.Namespace) -> int:
    return _run_trainer("trainer_hooks.reference.train", "train", list(args.rest))


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flightlog",
        description="Flight recorder and open archive for LLM training runs.",
        epilog="The archive defaults to $FLIGHTLOG_ARCHIVE or ./flightlog-archive.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def archive_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--archive", metavar="URL", help="archive folder or URL (s3://, memory://, http(s)://, ...)")

    p = sub.add_parser("runs", help="list the runs of an archive")
    archive_opt(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("sql", help="run a read-only SQL query over the archive")
    p.add_argument("query", metavar="QUERY", help='e.g. "SELECT * FROM runs"')
    archive_opt(p)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--output", metavar="FILE", help="write the result here instead of stdout")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the query after this long")
    p.add_argument("--max-rows", type=int, default=10_000_000, metavar="N", help="cap on result rows")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("index", help="recover staged data and write the manifest")
    p.add_argument("url", nargs="?", metavar="URL")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--quarantine", action="store_true",
                   help="decode every page and move broken files to _quarantine/ (default: readers skip them)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("verify", help="check every file of the archive (exit 1 on problems)")
    p.add_argument("url", nargs="?", metavar="URL")
    p.add_argument("--quick", action="store_true", help="check footers only, do not decode every page")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("incidents", help="incidents of a run per data chunk, across attempts and seeds")
    p.add_argument("run", metavar="RUN", help="run name or id")
    archive_opt(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_incidents)

    p = sub.add_parser("ui", help="open the journey app in a browser")
    p.add_argument("archive_url", nargs="?", metavar="ARCHIVE_URL",
                   help="folder or URL (s3://, gs://, hf://, http(s):// of a published archive)")
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    p.add_argument("--address", default="127.0.0.1", metavar="HOST",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 serves other hosts: the app can "
                        "open any archive path the server can read, so put it behind authentication)")
    p.set_defaults(func=cmd_ui)

    from app.cli.imports import add_import_commands

    add_import_commands(sub)
    from app.cli.checkpoints import add_checkpoints_commands
    add_checkpoints_commands(sub)
    from app.cli.publish import add_publish_commands
    add_publish_commands(sub)
    from app.cli.compact import add_compact_commands
    add_compact_commands(sub)

    for name, func, text in (("demo", cmd_demo, "record a small demo run (needs torch)"),
                             ("train", cmd_train, "train the reference model with flightlog attached (needs torch)")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("demo", "train"):
        # everything after the command belongs to the trainer, `--help` included
        args = argparse.Namespace(rest=argv[1:], func=cmd_demo if argv[0] == "demo" else cmd_train)
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ArchiveError, SchemaError, LayoutError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever DuckDB or a library wrote
        print(f"flightlog: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("flightlog: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flightlog sql ... | head`
        return EXIT_OK
    except Exception as exc:  # a bug of ours: still one line, the traceback only on request
        if os.environ.get("FLIGHTLOG_DEBUG"):
            raise
        print(f"flightlog: internal error: {type(exc).__name__}: {exc} (set FLIGHTLOG_DEBUG=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
