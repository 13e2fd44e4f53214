"""What happens when one Redis command fails: the retry policy.

A transient failure (a dropped connection, a time-out) is retried once, to
replace a pooled connection that the server or a provider dropped; a
permanent one (a refused password or certificate: :func:`is_transient`) is
reported at once. What a failure then means for the caller (fall through,
the breaker, strict mode) is :meth:`librecache.guard.RedisConnection.guard`'s
business, and which failures are outages is :func:`librecache.health.classify`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry

from .._compat import call_transient_only, call_transient_only_async, jitter_backoff
from ..config import CacheConfig
from ..health import is_transient

__all__ = ["MAX_COMMAND_RETRIES", "AsyncFailFastRetry", "Closing", "FailFastRetry", "retry_policy"]

#: Retries of one command after a connection error or time-out: one, to
#: replace a pooled connection that the server or a provider dropped. The
#: whole schedule of REDIS_RETRY_MAX_ATTEMPTS is never waited out by a call:
#: it governs the background reconnects (see librecache.health). So a cache
#: call waits at most two attempts, each bounded by REDIS_CONNECT_TIMEOUT
#: (connect, TLS, AUTH) and LIBRECACHE_SOCKET_TIMEOUT (the reply); once one
#: call has failed, the breaker is open and calls fall through at once.
MAX_COMMAND_RETRIES = 1


class Closing:
    """Whether a registry is closing, shared by the retry policies of all
    its connections (redis-py deep-copies a policy into each connection; a
    copy of this is itself). Once set, a failed attempt is not retried: a
    connect that ``close()`` cut short by shutting its socket does not
    connect again and wait for the server once more."""

    def __init__(self) -> None:
        self.closing = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Closing:
        return self


class FailFastRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry` that does not retry permanent
    failures (:func:`is_transient`): they are reported at once, with the
    reason, instead of after the whole back-off schedule.

    The first attempt runs outside redis-py's retry loop (nearly every
    command succeeds at once, and the loop's wrapping costs on each); a
    failure of it is handed to the loop as the loop's own first attempt:
    the same ``fail`` call, back-off and count of attempts. Nothing is
    retried once :attr:`closing` is set."""

    closing: Closing | None = None

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return do()
        except Exception as exc:
            if self.closing is not None and self.closing.closing:
                raise
            first = exc
        return call_transient_only(super().call_with_retry, do, fail, args, kwargs, is_transient, first)


def retry_policy(config: CacheConfig, retry_class: type[Retry] | type[AsyncRetry] = FailFastRetry,
                 closing: Closing | None = None) -> Any:
    """The retry object of one client: at most :data:`MAX_COMMAND_RETRIES`
    retry of a transient failure, after a short jittered back-off; none
    once ``closing`` is set (:class:`FailFastRetry` only)."""
    attempts = config.retry_max_attempts
    retries = MAX_COMMAND_RETRIES if attempts == 0 else min(attempts, MAX_COMMAND_RETRIES)
    policy: Any = retry_class(jitter_backoff(base=0.01, cap=config.retry_max_delay), retries)
    if closing is not None:
        policy.closing = closing
    return policy


class AsyncFailFastRetry(AsyncRetry):
    """The asyncio twin of :class:`FailFastRetry`. The first attempt is
    awaited directly (most commands succeed at once: no coroutine layers
    per command); after a transient failure of it, redis-py's schedule runs
    from that failure on, exactly as if it had made the first attempt."""

    async def call_with_retry(  # type: ignore[override]
        self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await do()
        except Exception as exc:
            first = exc
        return await call_transient_only_async(super().call_with_retry, do, fail, args, kwargs, is_transient, first)
