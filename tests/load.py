"""Load for fault tests: threads calling a memoised function without pause.

Shared by the resilience, fault, Sentinel and fork suites: every result is
checked, every exception that reaches a caller is kept, each call is timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FAST_RETRY", "Load", "value_of", "wait_until"]

#: Quick reconnects and short time-outs, so that fault tests take seconds.
FAST_RETRY = {"REDIS_RETRY_MAX_DELAY": "200", "REDIS_RETRY_MAX_ATTEMPTS": "0", "REDIS_CONNECT_TIMEOUT": "500",
              "LIBRECACHE_SOCKET_TIMEOUT": "1"}


def value_of(key: str) -> str:
    """What the memoised function returns for ``key``."""
    return f"value-of-{key}"


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - started


class Load:
    """``threads`` threads calling a memoised function of ``region`` without
    pause over ``keys`` keys, each call timed (:attr:`worst`); wrong results
    and exceptions that reached a caller are kept."""

    def __init__(self, region: Any, threads: int = 4, keys: int = 100) -> None:
        self.calls = 0
        self.creations = 0
        self.worst = 0.0
        self.wrong: list[tuple[str, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

        @region.cache_on_arguments()
        def load(key: str) -> str:
            with self._lock:
                self.creations += 1
            return value_of(key)

        def work(n: int) -> None:
            i = n * keys // max(1, threads)  # threads start spread over the keys
            while not self._stop.is_set():
                key = f"k{i % keys}"
                i += 1
                started = time.monotonic()
                try:
                    result = load(key)
                except BaseException as exc:  # counted: an error that reached a caller
                    self.errors.append(exc)
                    continue
                finally:
                    took = time.monotonic() - started
                    with self._lock:
                        self.calls += 1
                        self.worst = max(self.worst, took)
                if result != value_of(key):
                    self.wrong.append((key, result))

        self._threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def creations_during(self, seconds: float) -> int:
        before = self.creations
        time.sleep(seconds)
        return self.creations - before

    def wait_cached(self, timeout: float) -> float:
        """Seconds until a 0.3 s window without a single creation (every key
        served from the cache again)."""
        started = time.monotonic()
        while self.creations_during(0.3) != 0:
            assert time.monotonic() - started < timeout, f"caching did not resume within {timeout} s"
        return time.monotonic() - started

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
