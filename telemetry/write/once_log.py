"""The writer's logger and its rate limit: a problem that recurs every flush is logged once a minute.

The flush thread meets the same storage error, invalid record or unreadable spool file again and
again; logging each would flood a training job's output. Every module of the write path logs
through `log` ("flightlog.writer") and repeats through one `OnceLog` per writer.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("flightlog.writer")


class OnceLog:
    """Log a recurring problem once per `every_s`, with how often it happened meanwhile."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warn(self, key: str, msg: str) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -math.inf) >= self.every_s:
            n = self._count.pop(key)
            self._last[key] = now
            log.warning("%s%s", msg, f" ({n} times since last report)" if n > 1 else "")
