"""The two doors: each runs a flow (:mod:`librecache.engine.flows`) by
performing its requests with a port, the sync door by calling the port's
methods, the async door by awaiting them. A request's failure is thrown
into the flow, so its ``finally`` releases what it holds (through the port)
before the exception reaches the caller.

The counters (:mod:`librecache.stats`) are kept from a flow's outcome
(:func:`count`, :func:`count_multi`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from .flows import CREATED, OPS, WAITED, MultiOutcome, Outcome

__all__ = ["arun", "count", "count_multi", "run"]

T = TypeVar("T")


def run(flow: Generator[Any, Any, T], port: Any) -> T:
    """Run ``flow`` to its outcome, performing each request with ``port``'s
    method of the request's name, in this thread."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            value = getattr(port, OPS[type(request)])(*request)
            error = None
        except BaseException as exc:  # thrown into the flow, which releases what it holds
            value, error = None, exc


async def arun(flow: Generator[Any, Any, T], port: Any) -> T:
    """:func:`run` for the async door: each port method is awaited."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            value = await getattr(port, OPS[type(request)])(*request)
            error = None
        except BaseException as exc:  # cancellation included: the flow releases, then re-raises
            value, error = None, exc


def count(stats: Any, outcome: Outcome) -> None:
    """Count a single-key call: a creation (a miss, with the creator's
    time), or a hit (and a lock wait when it got another creator's value)."""
    if stats is None:
        return
    kind = outcome.kind
    if kind is CREATED:
        stats.created(outcome.seconds)
        return
    stats.hits += 1
    if kind is WAITED:
        stats.lock_waits += 1


def count_multi(stats: Any, outcome: MultiOutcome, asked: int) -> None:
    """Count a multi-key call of ``asked`` keys: each key created is a miss
    (one creator run), every other key a hit."""
    if stats is None:
        return
    if outcome.seconds is not None:
        stats.created(outcome.seconds)
        stats.misses += outcome.created - 1
    stats.hits += asked - outcome.created
    stats.lock_waits += outcome.waited
