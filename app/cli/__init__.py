"""The `flightlog` command line (`app.cli:main`, `python -m app.cli`).

parser.py wires every command to its function in a module of this package (runs, sql, incidents,
index, verify, ui, compact, publish, checkpoints, imports, trainer); common.py holds what they share:
exit codes, the archive a command works on, and errors as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli.common import run_command
from app.cli.parser import TRAINER_COMMANDS, build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINER_COMMANDS:
        # everything after the command belongs to the trainer, `--help` included
        args = argparse.Namespace(rest=argv[1:], func=TRAINER_COMMANDS[argv[0]])
    else:
        args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
