"""`flightlog demo` and `flightlog train`: the reference trainer, which needs the training extra (torch).

Everything after the command belongs to the trainer's own parser, `--help` included.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from app.cli.common import EXIT_ERROR, EXIT_OK, TRAIN_EXTRA, has_torch
from app.ui.server import serve
from telemetry.store.errors import ArchiveError

DEMO, TRAIN = "trainer_hooks.reference.demo", "trainer_hooks.reference.train"


def run_trainer(module: str, command: str, argv: list[str], **kwargs: Any) -> int:
    """`module`.main(argv): a missing torch is one line naming the extra to install."""
    if not has_torch():
        print(f"flightlog {command} needs the training extra: {TRAIN_EXTRA}", file=sys.stderr)
        return EXIT_ERROR
    try:
        # lazy: the reference trainer imports torch, which `flightlog --help` and the other commands never need
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
    # the demo opens the app through this callback: trainer_hooks never imports app
    return run_trainer(DEMO, "demo", list(args.rest), serve=serve)


def cmd_train(args: argparse.Namespace) -> int:
    return run_trainer(TRAIN, "train", list(args.rest))
