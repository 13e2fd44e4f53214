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

from .background import failed
from .flows import CREATED, OPS, WAITED, Detach, MultiOutcome, Outcome, Wait

__all__ = ["aresume", "arun", "count", "count_multi", "resume", "run"]

T = TypeVar("T")


def run(flow: Generator[Any, Any, T], port: Any) -> T:
    """Run ``flow`` to its outcome, performing each request with ``port``'s
    method of the request's name, in this thread; at a :class:`Detach`,
    the rest of the flow goes to the background (:func:`resume`)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if type(request) is Detach:
            port.region.background.submit(resume, flow, port)
            return _given(request.outcome)  # type: ignore[no-any-return]
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
        if type(request) is Detach:
            port.region.background.spawn(aresume(flow, port))
            return _given(request.outcome)  # type: ignore[no-any-return]
        try:
            value = await getattr(port, OPS[type(request)])(*request)
            error = None
        except BaseException as exc:  # cancellation included: the flow releases, then re-raises
            value, error = None, exc


def _given(outcome: Any) -> Any:
    """A detached flow's ``outcome`` for its caller (raised, when it is an exception)."""
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def resume(flow: Generator[Any, Any, Any], port: Any, value: Any = None, error: BaseException | None = None) -> None:
    """Run the rest of a detached ``flow`` in the background (sync door): a
    :class:`Wait` for a job still running does not hold the thread, the
    job's end resumes the flow. A failure is logged and counted
    (:func:`~librecache.engine.background.failed`), never raised."""
    while True:
        try:
            request = flow.send(value) if error is None else flow.throw(error)
        except StopIteration:
            return
        except Exception as exc:
            failed(port.region, exc)
            return
        if type(request) is Wait and not request.job.done():
            request.job.add_done_callback(lambda job: _resumed(flow, port, job))
            return
        try:
            value = getattr(port, OPS[type(request)])(*request)
            error = None
        except BaseException as exc:
            value, error = None, exc


def _resumed(flow: Generator[Any, Any, Any], port: Any, job: Any) -> None:
    error = job.exception()
    resume(flow, port, None if error is not None else (True, job.result()), error)


async def aresume(flow: Generator[Any, Any, Any], port: Any) -> None:
    """:func:`resume` for the async door: a task of the caller's loop."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.send(value) if error is None else flow.throw(error)
        except StopIteration:
            return
        except Exception as exc:
            failed(port.region, exc)
            return
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
