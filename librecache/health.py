"""Is Redis usable now? The circuit breaker behind "degrade, don't die".

When a command finds Redis unreachable (refused, timed out, cluster down),
the breaker opens: cache calls stop touching the network and fall through
at once (reads are misses, writes are dropped and deletes remembered), and
a background thread reconnects with capped exponential back-off
(REDIS_RETRY_MAX_DELAY, REDIS_RETRY_MAX_ATTEMPTS; 0 = for ever). When a
probe succeeds the breaker closes and caching resumes by itself. The same
thread pings every idle connection every REDIS_PING_INTERVAL seconds and
drops those that do not answer.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

from .logs import RateLimitedLog

__all__ = ["UNAVAILABLE", "Breaker", "HealthReport", "is_transient"]

log = logging.getLogger("librecache.health")

#: The errors that mean "Redis is not there right now".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, ClusterDownError, TryAgainError, RedisClusterException,
    MaxConnectionsError, socket.timeout, ConnectionRefusedError,
)


def is_transient(error: BaseException) -> bool:
    """False for failures that trying again cannot mend: a rejected user or
    password, a refused certificate, a TLS protocol mismatch."""
    if isinstance(error, (AuthenticationError, AuthorizationError)):
        return False
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return False
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    return "CERTIFICATE_VERIFY_FAILED" not in text and "WRONG_VERSION_NUMBER" not in text


class HealthReport(dict[str, Any]):
    """Counters of a registry's Redis health (a plain dict, for logs and
    metrics): ``up``, ``errors`` (failures met), ``fallthroughs`` (calls
    answered without Redis), ``dropped_writes``, ``pending_deletes``,
    ``recoveries``, ``keepalive_pings``, ``keepalive_drops``, ``last_error``,
    ``down_for`` (seconds)."""


class Breaker:
    """The state shared by a registry's Redis operations.

    :param retry_max_delay: cap of the reconnect back-off, seconds.
    :param retry_max_attempts: reconnect attempts before giving up; 0 = for ever.
    """

    def __init__(self, retry_max_delay: float, retry_max_attempts: int) -> None:
        self.up = True
        self.retry_max_delay = retry_max_delay
        self.retry_max_attempts = retry_max_attempts
        self.errors = 0
        self.fallthroughs = 0
        self.dropped_writes = 0
        self.recoveries = 0
        self.keepalive_pings = 0
        self.keepalive_drops = 0
        self.last_error: str | None = None
        self.down_since: float | None = None
        self.gave_up = False
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self.limited = RateLimitedLog(log, interval=30.0)

    def failure(self, error: BaseException, operation: str) -> None:
        """Record that ``operation`` met an unavailable Redis; open the breaker."""
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self.errors += 1
            self.last_error = reason
            opened = self.up
            if opened:
                self.up = False
                self.down_since = time.monotonic()
        if opened:
            if is_transient(error):
                log.warning("Redis unavailable (%s during %s); cache calls fall through to the functions "
                            "until it is back", reason, operation)
            else:
                log.error("Redis refuses this configuration (%s during %s): fix the credentials or TLS "
                          "settings; meanwhile cache calls fall through to the functions", reason, operation)
            self.wake.set()
        else:
            self.limited.warning("failure", "Redis still unavailable (%s during %s)", reason, operation)

    def fallthrough(self, write: bool = False) -> None:
        """Count a call answered without Redis."""
        self.fallthroughs += 1
        if write:
            self.dropped_writes += 1

    def recovered(self) -> float:
        """Close the breaker; return how long Redis was away."""
        with self._lock:
            away = time.monotonic() - (self.down_since or time.monotonic())
            self.up = True
            self.gave_up = False
            self.down_since = None
            self.recoveries += 1
        log.warning("Redis is back after %.1f s; caching resumes", away)
        return away

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (0-based): doubling
        from 50 ms, capped by REDIS_RETRY_MAX_DELAY, with jitter."""
        delay = min(self.retry_max_delay, 0.05 * (2 ** min(attempt, 20)))
        return float(delay * random.uniform(0.8, 1.0))

    def exhausted(self, attempt: int) -> bool:
        return self.retry_max_attempts > 0 and attempt >= self.retry_max_attempts

    def report(self, pending_deletes: int = 0) -> HealthReport:
        down_for = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return HealthReport(
            up=self.up, errors=self.errors, fallthroughs=self.fallthroughs, dropped_writes=self.dropped_writes,
            pending_deletes=pending_deletes, recoveries=self.recoveries, keepalive_pings=self.keepalive_pings,
            keepalive_drops=self.keepalive_drops, last_error=self.last_error, down_for=round(down_for, 3),
            gave_up=self.gave_up,
        )


def ping_idle_connections(pool: Any, timeout: float, breaker: Breaker) -> None:
    """PING every idle connection of ``pool``; drop those that do not answer
    within ``timeout`` so that the next command reconnects."""
    lock = getattr(pool, "_lock", None)
    available = getattr(pool, "_available_connections", None)
    in_use = getattr(pool, "_in_use_connections", None)
    if lock is None or available is None or in_use is None:
        return
    with lock:
        # only connected ones: pinging a closed connection would reconnect it
        idle = [connection for connection in available if getattr(connection, "_sock", None) is not None]
        for connection in idle:
            available.remove(connection)
        in_use.update(idle)
    for connection in idle:
        try:
            connection.send_command("PING")
            if not connection.can_read(timeout=timeout):  # read_response(timeout=) is redis-py 6+ only
                raise TimeoutError(f"no PING reply within {timeout} s")
            connection.read_response()
            breaker.keepalive_pings += 1
        except Exception as exc:  # any failure: this connection is not usable
            breaker.keepalive_drops += 1
            breaker.limited.warning("keepalive", "keep-alive PING failed (%s); connection dropped", exc)
            connection.disconnect()
        finally:
            pool.release(connection)


def run_maintenance(
    breaker: Breaker,
    stop: threading.Event,
    probe: Callable[[], None],
    on_recovery: Callable[[], None],
    keepalive: Callable[[], None] | None,
    ping_interval: float,
) -> None:
    """The loop of a registry's maintenance thread (see the module)."""
    attempt = 0
    next_ping = time.monotonic() + ping_interval if ping_interval > 0 else float("inf")
    while not stop.is_set():
        if not breaker.up:
            if breaker.exhausted(attempt):
                if not breaker.gave_up:
                    breaker.gave_up = True
                    log.error("Redis unreachable after %d reconnect attempts; giving up (REDIS_RETRY_MAX_"
                              "ATTEMPTS). Cache calls keep falling through; Caches.reconnect() tries again.",
                              attempt)
                breaker.wake.wait()
                breaker.wake.clear()
                attempt = 0 if not breaker.gave_up else attempt
                continue
            if stop.wait(breaker.backoff(attempt)):
                return
            try:
                probe()
            except UNAVAILABLE as exc:
                attempt += 1
                breaker.limited.warning("reconnect", "reconnect attempt %d failed: %s", attempt, exc)
                continue
            except Exception:  # a probe must never kill the thread
                attempt += 1
                log.exception("reconnect attempt %d failed", attempt)
                continue
            attempt = 0
            breaker.recovered()
            try:
                on_recovery()
            except Exception:
                log.exception("replaying work deferred while Redis was away failed")
            continue
        timeout = max(0.0, next_ping - time.monotonic()) if ping_interval > 0 else None
        if breaker.wake.wait(timeout):
            breaker.wake.clear()
        if stop.is_set():
            return
        if keepalive is not None and ping_interval > 0 and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + ping_interval
            try:
                keepalive()
            except Exception:
                log.exception("keep-alive round failed")
