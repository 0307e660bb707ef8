"""Process-wide state of the write path, in one place: which writers are open, and three hooks.

A Writer is per rank, but a few things belong to the process, not to a writer, and are installed
once, by the first Writer made:
- atexit: a training script that ends (or is killed by an exception) without `close()` still gets
  its final segments and its end rows. The run ends "finished", or "crashed" when
- sys.excepthook saw an uncaught exception first (the previous hook still runs);
- os.register_at_fork: threads do not survive fork, so a forked child's writers get a flush thread
  of their own (Writer._after_fork_child) and never write the parent's files.
The registry is a WeakSet: a writer that is garbage-collected unclosed does not linger here, and
an open writer is kept alive by its flush thread anyway. Writers are duck-typed (`close(status)`,
`_after_fork_child()`) so that this module imports nothing of the writer's.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any

from telemetry.write.once_log import log

_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()
_STATE = {"installed": False, "uncaught": False}


def register(writer: Any) -> None:
    """Track an open writer; the first one installs the process-wide hooks."""
    _OPEN.add(writer)
    if not _STATE["installed"]:
        _STATE["installed"] = True
        atexit.register(close_all)
        previous = sys.excepthook

        def hook(exc_type, exc, tb):  # an uncaught exception means the run crashed
            _STATE["uncaught"] = True
            previous(exc_type, exc, tb)

        sys.excepthook = hook
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=after_fork_in_child)


def unregister(writer: Any) -> None:
    _OPEN.discard(writer)


def close_all() -> None:
    """At interpreter exit: close every writer still open, "crashed" after an uncaught exception."""
    status = "crashed" if _STATE["uncaught"] else "finished"
    for w in list(_OPEN):
        try:
            w.close(status)
        except Exception as exc:  # noqa: BLE001 - interpreter exit: close the other writers too
            log.warning("flightlog: closing writer of run %r at exit failed: %r", getattr(w, "run_id", "?"), exc)


def after_fork_in_child() -> None:
    for w in list(_OPEN):
        w._after_fork_child()
