"""Resumable streams in one process's memory (USE_REDIS_STREAMS off)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..config import CacheConfig
from .base import (
    FinishStatus,
    ListenerCount,
    StreamEvent,
    StreamExistsError,
    StreamFinishedError,
    StreamStatus,
    UnknownStreamError,
    check_after,
    check_finish_status,
    check_stream_id,
    encode_event,
    encode_json,
    end_event,
)

__all__ = ["MemoryStreamStore"]


def _parse_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


class _Stream:
    __slots__ = ("abort_reason", "abort_requested", "changed", "created", "deadline", "events",
                 "final", "id", "last", "meta", "status", "updated")

    def __init__(self, stream_id: str, meta: dict[str, Any], idle_ttl: float) -> None:
        self.id = stream_id
        self.meta = meta
        self.events: list[StreamEvent] = []
        self.status = "running"
        self.created = self.updated = time.time()
        self.deadline = time.monotonic() + idle_ttl
        self.abort_requested = False
        self.abort_reason: str | None = None
        self.final: Any = None
        self.last = (0, 0)
        self.changed = asyncio.Event()

    def next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self.last
        self.last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self.last[0]}-{self.last[1]}"

    def add(self, data: dict[str, Any]) -> str:
        event = StreamEvent(self.next_id(), data)
        self.events.append(event)
        self.updated = time.time()
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
        return event.id


class MemoryStreamStore:
    """The stream store of a single process: the API and semantics of the
    Redis store, with streams kept in memory.

    Bounded: a finished stream is dropped after LIBRECACHE_STREAM_FINISHED_TTL,
    a running one after LIBRECACHE_STREAM_IDLE_TTL without activity, and at
    most LIBRECACHE_STREAM_MEMORY_MAX streams are kept (finished ones are
    dropped first, then the longest idle).
    """

    def __init__(self, config: CacheConfig) -> None:
        self.finished_ttl = config.stream_finished_ttl
        self.idle_ttl = config.stream_idle_ttl
        self.max_streams = config.stream_memory_max
        self.listeners = ListenerCount(config.max_listeners)
        self._streams: dict[str, _Stream] = {}

    # -- housekeeping ---------------------------------------------------------------

    def _prune(self, room: int = 0) -> None:
        """Drop expired streams, then enough others to leave ``room`` free."""
        now = time.monotonic()
        for stream_id in [sid for sid, stream in self._streams.items() if stream.deadline <= now]:
            self._drop(stream_id)
        excess = len(self._streams) + room - self.max_streams
        if excess > 0:
            by_age = sorted(self._streams.values(), key=lambda s: (s.status == "running", s.updated))
            for stream in by_age[:excess]:
                self._drop(stream.id)

    def _drop(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id)
        stream.changed.set()  # wake subscribers, which then find it gone

    def _get(self, stream_id: str) -> _Stream:
        check_stream_id(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None and stream.deadline <= time.monotonic():
            self._drop(stream_id)
            stream = None
        if stream is None:
            raise UnknownStreamError(f"no stream {stream_id!r} (never created, or expired)")
        return stream

    def _running(self, stream_id: str) -> _Stream:
        stream = self._get(stream_id)
        if stream.status != "running":
            raise StreamFinishedError(f"stream {stream_id!r} has finished ({stream.status})")
        return stream

    # -- the API ----------------------------------------------------------------------

    async def create(self, stream_id: str, *, meta: Mapping[str, Any] | None = None) -> None:
        check_stream_id(stream_id)
        meta_copy = json.loads(encode_json(dict(meta or {}), "meta"))
        self._prune(room=1)
        existing = self._streams.get(stream_id)
        if existing is not None and existing.deadline > time.monotonic():
            raise StreamExistsError(f"stream {stream_id!r} already exists ({existing.status})")
        self._streams[stream_id] = _Stream(stream_id, meta_copy, self.idle_ttl)

    async def append(self, stream_id: str, event: Mapping[str, Any]) -> str:
        data = json.loads(encode_event(event))  # the same JSON round trip as Redis
        stream = self._running(stream_id)
        stream.deadline = time.monotonic() + self.idle_ttl
        return stream.add(data)

    async def finish(self, stream_id: str, status: FinishStatus = "done", final: Any = None) -> str:
        check_finish_status(status)
        final_copy = json.loads(encode_json(final, "final"))
        stream = self._running(stream_id)
        stream.status = status
        stream.final = final_copy
        stream.deadline = time.monotonic() + self.finished_ttl
        return stream.add(end_event(status, final_copy))

    async def abort(self, stream_id: str, reason: str | None = None) -> bool:
        stream = self._get(stream_id)
        if stream.status != "running":
            return False
        stream.abort_requested = True
        stream.abort_reason = reason
        return True

    async def is_aborted(self, stream_id: str) -> bool:
        return self._get(stream_id).abort_requested

    async def status(self, stream_id: str) -> StreamStatus:
        s = self._get(stream_id)
        return StreamStatus(
            s.id, s.status, dict(s.meta), len(s.events), s.events[-1].id if s.events else None,
            s.created, s.updated, s.abort_requested, s.abort_reason, s.final,
        )

    async def active(self, owner: str | None = None) -> list[str]:
        self._prune()
        return sorted(
            sid for sid, s in self._streams.items()
            if s.status == "running" and (owner is None or s.meta.get("owner") == owner)
        )

    async def subscribe(self, stream_id: str, after: str | None = None) -> AsyncIterator[StreamEvent]:
        """Everything after ``after`` (from the start when None), then the
        live events, ending after the terminal event."""
        position = _parse_id(check_after(after))
        stream = self._get(stream_id)
        self.listeners.enter(stream_id)
        try:
            index = 0
            while index < len(stream.events) and _parse_id(stream.events[index].id) <= position:
                index += 1
            while True:
                while index < len(stream.events):
                    event = stream.events[index]
                    index += 1
                    yield event
                    if event.is_end:
                        return
                if stream.status != "running":
                    return  # subscribed after the end
                try:
                    await asyncio.wait_for(stream.changed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
                if self._streams.get(stream_id) is not stream or stream.deadline <= time.monotonic():
                    if self._streams.get(stream_id) is stream:
                        self._drop(stream_id)
                    raise UnknownStreamError(f"stream {stream_id!r} expired while followed")
        finally:
            self.listeners.leave(stream_id)

    async def close(self) -> None:
        """Nothing to release; the streams stay until the store is dropped."""
