"""Work a call leaves behind, and the creators that run beside their
callers: a creator that outlasts its soft or hard time-out goes on and
stores its value, an eager refresh runs after its hit has returned.

One :class:`Background` per registry:

- for the sync door, a small pool of daemon threads, started on first use
  (a process that never times a creator starts none), made anew in a
  forked child, and waited for by ``Caches.close()`` within its bound;
- for the async door, tasks on the caller's event loop, kept referenced
  and cancelled by ``Caches.aclose()``.

A creator is run in the pool (sync door) or as a task (async door) only
when its call has a time-out: otherwise it runs in the caller's thread or
task, as dogpile runs it. A creator's context variables go with it.

The jobs' helpers (:class:`SyncJobs`, :class:`AsyncJobs`) are the ports'
``start``, ``wait`` and ``note`` requests (:mod:`librecache.engine.flows`);
the doors run a detached flow's rest here (:func:`librecache.engine.doors.resume`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .. import forks
from ..logs import RateLimitedLog

__all__ = ["BACKGROUND_THREADS", "AsyncJobs", "Background", "SyncJobs"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, interval=30.0)

#: Threads of a registry's pool, at most.
BACKGROUND_THREADS = 8


class Background:
    """The background work of one registry (see the module).

    :param threads: the pool's threads, at most.
    """

    def __init__(self, threads: int = BACKGROUND_THREADS) -> None:
        self.threads = threads
        self._renew()
        forks.register(self)

    def _renew(self) -> None:
        self._lock = threading.Lock()
        #: Notified when a job of the pool has ended (its future's callbacks too).
        self._ended = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers = 0
        self._idle = 0
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def _after_fork(self) -> None:
        # the parent's threads are not in the child, nor is its loops' work
        self._renew()

    # -- the sync door ----------------------------------------------------

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``function(*args, **kwargs)`` in the pool, with the caller's
        context variables; once :meth:`close` has run, in this thread."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        context = contextvars.copy_context()
        with self._lock:
            inline = self.closed
            if not inline:
                self._futures.add(future)
                self._queue.put((future, context, function, args, kwargs))
                if self._idle > 0:
                    self._idle -= 1  # an idle thread takes it
                elif self._workers < self.threads:
                    self._workers += 1
                    threading.Thread(target=self._work, name="librecache-background", daemon=True).start()
        if inline:
            _run(future, context, function, args, kwargs)
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future = item[0]
            try:
                _run(*item)
            finally:
                with self._lock:
                    self._futures.discard(future)
                    self._idle += 1
                    self._ended.notify_all()

    def close(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the pool's work, then take no
        more (later work runs in its caller's thread); the threads end when
        idle. A creator still running is left to finish (a thread cannot be
        stopped): its threads are daemons, so it does not hold up the
        process's exit."""
        deadline = time.monotonic() + timeout
        with self._lock:
            # a job ends when its callbacks have run: the rest of a flow
            # that waited for it (its store) runs there
            while self._futures and self._ended.wait(max(0.0, deadline - time.monotonic())):
                pass
            self.closed = True
            for _ in range(self._workers):
                self._queue.put(None)
            self._workers = self._idle = 0

    # -- the async door ---------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` as a task of the running loop, kept referenced until
        it ends (or :meth:`aclose` cancels it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Cancel the running loop's tasks and wait for them to end."""
        loop = asyncio.get_running_loop()
        mine = [task for task in list(self._tasks) if task.get_loop() is loop]
        for task in mine:
            task.cancel()
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    @property
    def pending(self) -> int:
        """Work not ended yet: the pool's and every loop's."""
        return len(self._futures) + sum(not task.done() for task in list(self._tasks))


def _run(future: concurrent.futures.Future[Any], context: contextvars.Context, function: Callable[..., Any],
         args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = context.run(function, *args, **kwargs)
    except BaseException as exc:  # the job's outcome: whoever waits for it gets it
        future.set_exception(exc)
    else:
        future.set_result(result)


def noted(region: Any, event: str) -> None:
    """Count ``event`` (a counter's name) in ``region``'s counters."""
    stats = region.counters
    if stats is not None:
        setattr(stats, event, getattr(stats, event) + 1)


def failed(region: Any, error: BaseException) -> None:
    """Background work of ``region`` that raised: logged and counted, never
    raised into an unrelated caller."""
    noted(region, "background_failures")
    limited.warning(f"background:{region.name}", "namespace %s: background work failed: %s: %s", region.name,
                    type(error).__name__, error)


class SyncJobs:
    """The jobs' requests of a sync port (its region's :class:`Background`)."""

    region: Any

    def start(self, creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return self.region.background.submit(creator, *args, **kwargs)

    @staticmethod
    def wait(job: concurrent.futures.Future[Any], seconds: float | None) -> tuple[bool, Any]:
        try:
            return True, job.result(seconds)
        except (TimeoutError, concurrent.futures.TimeoutError):
            if job.done():  # the creator's own TimeoutError
                raise
            return False, None

    def note(self, event: str) -> None:
        noted(self.region, event)


class AsyncJobs:
    """The jobs' requests of an async port."""

    region: Any

    async def start(self, creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """A task of the creator when it is a coroutine function's (or
        returns an awaitable); a plain function runs here, on the loop, as
        the async door always runs it, and is done when this returns."""
        value = creator(*args, **kwargs)
        if inspect.isawaitable(value):
            return self.region.background.spawn(_awaited(value))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(value)
        return done

    @staticmethod
    async def wait(job: asyncio.Future[Any], seconds: float | None) -> tuple[bool, Any]:
        if not job.done():
            await asyncio.wait({job}, timeout=seconds)
            if not job.done():
                return False, None
        return True, job.result()

    async def note(self, event: str) -> None:
        noted(self.region, event)


async def _awaited(value: Any) -> Any:
    return await value
