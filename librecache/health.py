"""Is Redis usable now? The circuit breaker behind "degrade, don't die".

When a command finds Redis unreachable (refused, timed out, cluster down),
the breaker opens: cache calls stop touching the network and fall through
at once (reads are misses, writes are dropped and deletes remembered), and
a background thread reconnects: a burst of REDIS_RETRY_MAX_ATTEMPTS
attempts (0: no limit) with exponential back-off capped by
REDIS_RETRY_MAX_DELAY, then one attempt every REDIS_RETRY_MAX_DELAY for as
long as it takes: it never gives up. When a probe succeeds the breaker
closes and caching resumes by itself. The same thread pings, every
REDIS_PING_INTERVAL seconds, the pooled connections idle that long, one at
a time and in place (callers keep every other connection), and drops those
that do not answer.
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
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from . import forks
from ._compat import borrow_idle_connection
from .logs import RateLimitedLog

__all__ = ["FULL", "OUTAGE", "REFUSED", "UNAVAILABLE", "Breaker", "HealthReport", "classify", "is_transient"]

log = logging.getLogger("librecache.health")

#: The errors that mean "Redis is not there right now" (``LOADING`` is a
#: :class:`~redis.exceptions.BusyLoadingError`, ``MASTERDOWN`` a
#: :class:`~redis.exceptions.ClusterDownError`, both counted here; socket
#: errors are :class:`OSError`).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, ClusterDownError, TryAgainError, RedisClusterException,
    MaxConnectionsError, socket.timeout, ConnectionRefusedError, OSError,
)

#: What a failed Redis command means, by :func:`classify`:
#: an outage (the breaker opens, the background reconnects), a full Redis
#: (writes are dropped, reads go on), or a refusal that trying again cannot
#: mend (logged once per distinct error, counted, the call falls through).
OUTAGE, FULL, REFUSED = "outage", "full", "refused"

#: Distinct refusals logged in full, once each; past this many, they are rate-limited.
MAX_REFUSALS_LOGGED = 256

#: Replies of a server that is alive but cannot serve now.
_BUSY_REPLIES = ("BUSY ", "LOADING ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ")


def classify(error: BaseException) -> str:
    """:data:`OUTAGE`, :data:`FULL` or :data:`REFUSED` for an exception a
    Redis command raised.

    Outages: connection errors and time-outs, ``LOADING``, ``MASTERDOWN``,
    ``BUSY``, ``TRYAGAIN``, ``CLUSTERDOWN``, an exhausted pool, socket errors
    (:class:`OSError`) and a socket closed under a reader (``ValueError: I/O
    operation on closed file``). Full: ``OOM``. Refused: everything else (a
    command the server or an ACL refuses, an unexpected exception type)."""
    if isinstance(error, OutOfMemoryError):
        return FULL
    if isinstance(error, UNAVAILABLE):
        return OUTAGE
    if isinstance(error, ResponseError):
        return OUTAGE if str(error).startswith(_BUSY_REPLIES) or str(error) in ("BUSY", "LOADING") else REFUSED
    if isinstance(error, ValueError) and "closed file" in str(error):
        return OUTAGE
    return REFUSED


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
    answered without Redis), ``dropped_writes``, ``full`` (writes Redis
    refused for lack of memory), ``refused`` (errors that are not outages:
    logged once per distinct error), ``pending_deletes``,
    ``recoveries``, ``keepalive_pings``, ``keepalive_drops``, ``last_error``,
    ``down_for`` (seconds), ``reconnect_attempts`` (in the current outage)."""


class Breaker:
    """The state shared by a registry's Redis operations.

    :param retry_max_delay: cap of the reconnect back-off, seconds.
    :param retry_max_attempts: quick reconnect attempts of one burst (0:
        no limit); after them, one attempt every ``retry_max_delay``.
    """

    def __init__(self, retry_max_delay: float, retry_max_attempts: int) -> None:
        self.up = True
        self.retry_max_delay = retry_max_delay
        self.retry_max_attempts = retry_max_attempts
        self.errors = 0
        self.fallthroughs = 0
        self.dropped_writes = 0
        self.full = 0
        self.refused = 0
        self._refusals_logged: set[tuple[str, str]] = set()
        self.recoveries = 0
        self.keepalive_pings = 0
        self.keepalive_drops = 0
        self.last_error: str | None = None
        self.down_since: float | None = None
        self.reconnect_attempts = 0
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self.limited = RateLimitedLog(log, interval=30.0)
        forks.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.wake = threading.Event()

    def failure(self, error: BaseException, operation: str) -> None:
        """Record that ``operation`` met an unavailable Redis; open the breaker."""
        forks.check()  # a child forked without Python's hooks must still reconnect
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

    def out_of_memory(self, error: BaseException, operation: str) -> None:
        """Record that Redis refused a write for lack of memory; the breaker
        stays closed (reads go on)."""
        self.full += 1
        self.limited.warning("full", "Redis is full (%s during %s): writes are dropped, reads go on; raise "
                             "maxmemory or choose an evicting maxmemory-policy", error, operation)

    def refusal(self, error: BaseException, operation: str) -> None:
        """Record an error that is not an outage (a command refused, an
        unexpected exception type): logged once per distinct error, counted, never
        retried as an outage."""
        self.refused += 1
        kind = (type(error).__name__, str(error)[:200])
        if kind in self._refusals_logged:
            return
        if len(self._refusals_logged) < MAX_REFUSALS_LOGGED:
            self._refusals_logged.add(kind)
            log.error("Redis %s failed with %s: %s; this is not an outage: the call falls through to the "
                      "function (logged once for this error)", operation, type(error).__name__, error,
                      exc_info=error)
        else:
            self.limited.warning("refused", "Redis %s failed with %s: %s; the call falls through to the function",
                                 operation, type(error).__name__, error)

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
            self.reconnect_attempts = 0
            self.down_since = None
            self.recoveries += 1
        log.warning("Redis is back after %.1f s; caching resumes", away)
        return away

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (0-based) of a burst:
        doubling from 50 ms, capped by REDIS_RETRY_MAX_DELAY, with jitter;
        once the burst is over, the cap itself."""
        if self.exhausted(attempt):
            return self.retry_max_delay
        delay = min(self.retry_max_delay, 0.05 * (2 ** min(attempt, 20)))
        return float(delay * random.uniform(0.8, 1.0))

    def exhausted(self, attempt: int) -> bool:
        """Whether ``attempt`` is past the quick burst (REDIS_RETRY_MAX_ATTEMPTS)."""
        return self.retry_max_attempts > 0 and attempt >= self.retry_max_attempts

    def report(self, pending_deletes: int = 0) -> HealthReport:
        down_for = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return HealthReport(
            up=self.up, errors=self.errors, fallthroughs=self.fallthroughs, dropped_writes=self.dropped_writes,
            full=self.full, refused=self.refused,
            pending_deletes=pending_deletes, recoveries=self.recoveries, keepalive_pings=self.keepalive_pings,
            keepalive_drops=self.keepalive_drops, last_error=self.last_error, down_for=round(down_for, 3),
            reconnect_attempts=self.reconnect_attempts,
        )


def ping_idle_connections(pool: Any, idle_for: float, timeout: float, breaker: Breaker,
                          stop: threading.Event | None = None) -> None:
    """PING, in place, each connection of ``pool`` that has been idle for
    ``idle_for`` seconds; drop those that do not answer within ``timeout``
    so that the next command reconnects.

    At most one connection is out of the pool at a time, so callers never
    run short of idle connections because of the keep-alive (the pool
    grows by one at most), and busy connections are never pinged.
    """
    seen: set[int] = set()
    while stop is None or not stop.is_set():
        with borrow_idle_connection(pool, idle_for, seen) as connection:
            if connection is None:
                return
            try:
                connection.send_command("PING", check_health=False)
                if not connection.can_read(timeout=timeout):  # read_response(timeout=) is redis-py 6+ only
                    raise TimeoutError(f"no PING reply within {timeout} s")
                connection.read_response()
                breaker.keepalive_pings += 1
            except Exception as exc:  # any failure: this connection is not usable
                connection.disconnect()
                if stop is not None and stop.is_set():
                    return  # closed under our feet by close()
                breaker.keepalive_drops += 1
                breaker.limited.warning("keepalive", "keep-alive PING failed (%s); connection dropped", exc)


def run_maintenance(
    breaker: Breaker,
    stop: threading.Event,
    probe: Callable[[], None],
    on_recovery: Callable[[], None],
    keepalive: Callable[[], None] | None,
    ping_interval: float,
) -> None:
    """The loop of a registry's maintenance thread (see the module)."""
    next_ping = time.monotonic() + ping_interval if ping_interval > 0 else float("inf")
    while not stop.is_set():
        if not breaker.up:
            attempt = breaker.reconnect_attempts
            if breaker.retry_max_attempts > 0 and attempt == breaker.retry_max_attempts:
                log.error("Redis still unreachable after %d quick reconnect attempts (REDIS_RETRY_MAX_ATTEMPTS); "
                          "trying again every %.1f s (REDIS_RETRY_MAX_DELAY) until it is back",
                          attempt, breaker.retry_max_delay)
            if breaker.wake.wait(breaker.backoff(attempt)):  # Caches.reconnect(): try now, a new burst
                breaker.wake.clear()
                if not stop.is_set():
                    breaker.reconnect_attempts = attempt = 0
            if stop.is_set():
                return
            try:
                probe()
            except Exception as exc:  # a probe must never kill the thread
                breaker.reconnect_attempts = attempt + 1
                if isinstance(exc, UNAVAILABLE):
                    breaker.limited.warning("reconnect", "reconnect attempt %d failed: %s", attempt + 1, exc)
                else:
                    log.exception("reconnect attempt %d failed", attempt + 1)
                continue
            if stop.is_set():
                return
            try:
                # before the breaker closes: calls still fall through, so no
                # write of theirs can race with the replayed deletes
                on_recovery()
            except UNAVAILABLE as exc:
                breaker.reconnect_attempts = attempt + 1
                breaker.limited.warning("reconnect", "replaying the work deferred while Redis was away failed: %s",
                                        exc)
                continue
            except Exception:
                log.exception("replaying work deferred while Redis was away failed")
            breaker.recovered()
            continue
        timeout = max(0.0, next_ping - time.monotonic()) if ping_interval > 0 else None
        if breaker.wake.wait(timeout):
            breaker.wake.clear()
        if stop.is_set():
            return
        if keepalive is not None and ping_interval > 0 and time.monotonic() >= next_ping:
            try:
                keepalive()
            except Exception:
                log.exception("keep-alive round failed")
            next_ping = time.monotonic() + ping_interval
