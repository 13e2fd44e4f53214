"""Logging that does not flood: a failure that repeats is logged once per
interval, with a count of the repeats in between."""

from __future__ import annotations

import logging
import threading
import time

from . import forks

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log a recurring condition at most once per ``interval`` seconds.

    :param logger: where to log.
    :param interval: seconds between two lines about the same ``topic``.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def warning(self, topic: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``topic`` was logged less than
        ``interval`` ago; return True when a line was written."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
                return False
            self._last[topic] = now
            repeats = self._suppressed.pop(topic, 0)
        if repeats:
            message += " (%d more since the last report)"
            args = (*args, repeats)
        self.logger.warning(message, *args)
        return True
