"""What every `flightlog` command shares: exit codes, the archive a command works on, handlers loaded
when their command runs, and errors as one line (a traceback only with FLIGHTLOG_DEBUG=1).

Cheap to import on purpose: `flightlog --help` imports this and app/cli/parser.py only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

from data_schema import LayoutError, SchemaError
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import DEFAULT_ARCHIVE, default_archive_url

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
TRAIN_EXTRA = "pip install 'flightlog[train]'"
# output formats (app/cli/output.py writes them): json is one array, jsonl one object per line
TEXT_FORMATS = ("table", "csv", "json", "jsonl")
SQL_FORMATS = (*TEXT_FORMATS, "parquet")
ARCHIVE_HELP = (f"archive folder or URL: s3://, memory://, http(s)://, ... "
                f"(default $FLIGHTLOG_ARCHIVE or {DEFAULT_ARCHIVE})")


def add_archive_option(parser: argparse.ArgumentParser, *, metavar: str = "URL", help: str = ARCHIVE_HELP) -> None:
    """`--archive URL`, the same on every command that reads or writes an archive."""
    parser.add_argument("--archive", metavar=metavar, help=help)


def archive_url(given: str | None) -> str:
    """The archive a command works on: the one given, else $FLIGHTLOG_ARCHIVE or ./flightlog-archive."""
    return given or default_archive_url()


def not_a_file(url: str) -> str:
    """A local path that is a plain file is no archive: say so before any reader trips over it."""
    if "://" not in url and os.path.isfile(url):
        raise ArchiveError(f"{url} is a file, not an archive folder: pass the folder that holds flightlog.json")
    return url


def has_torch() -> bool:
    """Whether the training extra (torch) is installed, without importing it."""
    return importlib.util.find_spec("torch") is not None


class Handler:
    """A command's function, named "module:function" and imported only when that command runs.

    This keeps `flightlog --help` and every command free of what the others import: `runs` and `sql`
    need DuckDB and pandas, `memorization` torch. The command modules import what they use at the top.
    """

    def __init__(self, target: str) -> None:
        self.module, _, self.function = target.partition(":")

    def __call__(self, args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(self.module), self.function)
        return func(args)

    def __repr__(self) -> str:
        return f"Handler('{self.module}:{self.function}')"


def one_line(text: object) -> str:
    """An error message on one line, whatever DuckDB or a library wrote."""
    return " ".join(str(text).split())


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command: mistakes are one line and exit code 2, never a traceback."""
    try:
        return args.func(args)
    except (ArchiveError, SchemaError, LayoutError) as exc:
        print(f"flightlog: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("flightlog: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `flightlog sql ... | head`: the reader has all it wanted
        return EXIT_OK
    except Exception as exc:  # a bug of ours: reported as one line, the traceback only on request
        if os.environ.get("FLIGHTLOG_DEBUG"):
            raise
        print(f"flightlog: internal error: {type(exc).__name__}: {exc} (set FLIGHTLOG_DEBUG=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return EXIT_ERROR
