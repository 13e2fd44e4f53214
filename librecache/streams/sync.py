"""The sync twin of a stream store, for WSGI applications and threads.

It drives the very same asyncio store on a private event loop thread, so
the sync and async APIs cannot drift apart.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from .base import FinishStatus, StreamEvent, StreamStatus, StreamStore

__all__ = ["SyncStreamStore"]

T = TypeVar("T")


class SyncStreamStore:
    """Blocking methods of the same names as the async store's; ``subscribe``
    is a plain iterator. Close it when done (or use ``with``)."""

    def __init__(self, make_store: Callable[[], StreamStore]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="librecache-streams", daemon=True)
        self._thread.start()

        async def build() -> StreamStore:
            return make_store()

        #: The asyncio store this twin drives.
        self.store: StreamStore = self._run(build())

    def _run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]

    def create(self, stream_id: str, *, meta: Mapping[str, Any] | None = None) -> None:
        self._run(self.store.create(stream_id, meta=meta))

    def append(self, stream_id: str, event: Mapping[str, Any]) -> str:
        return self._run(self.store.append(stream_id, event))

    def finish(self, stream_id: str, status: FinishStatus = "done", final: Any = None) -> str:
        return self._run(self.store.finish(stream_id, status, final))

    def abort(self, stream_id: str, reason: str | None = None) -> bool:
        return self._run(self.store.abort(stream_id, reason))

    def is_aborted(self, stream_id: str) -> bool:
        return self._run(self.store.is_aborted(stream_id))

    def status(self, stream_id: str) -> StreamStatus:
        return self._run(self.store.status(stream_id))

    def active(self, owner: str | None = None) -> list[str]:
        return self._run(self.store.active(owner))

    def subscribe(self, stream_id: str, after: str | None = None) -> Iterator[StreamEvent]:
        """Everything after ``after``, then the live events, ending after the
        terminal event."""
        events = self.store.subscribe(stream_id, after)
        try:
            while True:
                try:
                    yield self._run(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the store and stop its loop thread."""
        if self._loop.is_closed():
            return
        self._run(self.store.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncStreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
