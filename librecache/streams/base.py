"""What every stream store shares: names, validation, the event and status
types, the errors, and the listener count behind REDIS_MAX_LISTENERS."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, NamedTuple, Protocol

from ..errors import LibrecacheError

__all__ = [
    "END_MARK",
    "FinishStatus",
    "InvalidEventError",
    "ListenerCount",
    "StreamError",
    "StreamEvent",
    "StreamExistsError",
    "StreamFinishedError",
    "StreamStatus",
    "StreamStore",
    "UnknownStreamError",
    "check_after",
    "check_stream_id",
    "encode_event",
]

log = logging.getLogger("librecache.streams")

FinishStatus = Literal["done", "error", "aborted"]
FINISH_STATUSES = ("done", "error", "aborted")
#: The key that marks the terminal event; reserved in events.
END_MARK = "librecache"
_STREAM_ID = re.compile(r"^[^\s{}\x00-\x1f\x7f]{1,200}$")
_EVENT_ID = re.compile(r"^\d+-\d+$")


class StreamError(LibrecacheError):
    """Base class of the stream errors."""


class UnknownStreamError(StreamError, KeyError):
    """No stream with that id (never created, or expired)."""

    def __str__(self) -> str:
        return str(self.args[0])


class StreamExistsError(StreamError):
    """``create`` of a stream id that is already in use."""


class StreamFinishedError(StreamError):
    """``append`` or ``finish`` on a stream that has already finished."""


class InvalidEventError(StreamError, TypeError):
    """An event that is not a JSON-serialisable dict, or uses the reserved key."""


class StreamEvent(NamedTuple):
    """One event of a stream, as ``subscribe`` yields it.

    :ivar id: opaque, strictly increasing within the stream; send it back as
        ``after`` (a browser's ``Last-Event-ID``) to resume after it.
    :ivar data: the event as appended, or for the terminal event
        ``{"librecache": "end", "status": ..., "final": ...}``.
    """

    id: str
    data: dict[str, Any]

    @property
    def is_end(self) -> bool:
        """True for the terminal event, after which ``subscribe`` ends."""
        return self.data.get(END_MARK) == "end"


class StreamStatus(NamedTuple):
    """Where a stream stands.

    :ivar status: ``"running"``, ``"done"``, ``"error"`` or ``"aborted"``.
    :ivar abort_requested: an abort was requested (by any instance).
    :ivar abort_reason: the reason given with it, if any.
    """

    stream_id: str
    status: str
    meta: dict[str, Any]
    events: int
    last_event_id: str | None
    created: float
    updated: float
    abort_requested: bool
    abort_reason: str | None
    final: Any


def check_stream_id(stream_id: str) -> str:
    """A stream id: 1 to 200 characters, no blanks, control characters or
    braces (it becomes the cluster hash tag of the stream's keys)."""
    if not isinstance(stream_id, str) or not _STREAM_ID.match(stream_id):
        raise ValueError(f"invalid stream id {stream_id!r}: 1 to 200 characters without blanks or braces")
    return stream_id


def check_after(after: str | None) -> str:
    """``after`` as given to ``subscribe``: None, or an event id."""
    if after is None:
        return "0-0"
    if not isinstance(after, str) or not _EVENT_ID.match(after):
        raise ValueError(f"{after!r} is not an event id (expected the id of an event of this stream)")
    return after


def check_finish_status(status: str) -> str:
    """``status`` as given to ``finish``: done, error or aborted."""
    if status not in FINISH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINISH_STATUSES)}, not {status!r}")
    return status


def encode_event(event: Mapping[str, Any]) -> str:
    """The event as JSON; :class:`InvalidEventError` if it cannot be."""
    if not isinstance(event, Mapping):
        raise InvalidEventError(f"an event must be a dict, not {type(event).__name__}")
    if END_MARK in event:
        raise InvalidEventError(f"the key {END_MARK!r} is reserved for the terminal event")
    return encode_json(event, "the event")


def encode_json(value: Any, what: str) -> str:
    """``value`` as compact JSON; :class:`InvalidEventError` naming ``what``
    if it cannot be."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"{what} is not JSON-serialisable: {exc}") from None


def end_event(status: str, final: Any) -> dict[str, Any]:
    return {END_MARK: "end", "status": status, "final": final}


class ListenerCount:
    """Concurrent subscribers per stream in this store; past ``limit`` on one
    stream, one warning (as Node's MaxListenersExceededWarning); nobody is
    refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.warned: set[str] = set()

    def enter(self, stream_id: str) -> None:
        count = self.counts.get(stream_id, 0) + 1
        self.counts[stream_id] = count
        if self.limit and count > self.limit and stream_id not in self.warned:
            self.warned.add(stream_id)
            log.warning(
                "stream %s has %d concurrent subscribers, more than REDIS_MAX_LISTENERS=%d; "
                "a leak of subscriptions? (they are all served)", stream_id, count, self.limit,
            )

    def leave(self, stream_id: str) -> None:
        count = self.counts.get(stream_id, 1) - 1
        if count <= 0:
            self.counts.pop(stream_id, None)
            self.warned.discard(stream_id)
        else:
            self.counts[stream_id] = count


class StreamStore(Protocol):
    """The asyncio API every stream store implements."""

    async def create(self, stream_id: str, *, meta: Mapping[str, Any] | None = None) -> None: ...
    async def append(self, stream_id: str, event: Mapping[str, Any]) -> str: ...
    async def finish(self, stream_id: str, status: FinishStatus = "done", final: Any = None) -> str: ...
    async def abort(self, stream_id: str, reason: str | None = None) -> bool: ...
    async def is_aborted(self, stream_id: str) -> bool: ...
    async def status(self, stream_id: str) -> StreamStatus: ...
    async def active(self, owner: str | None = None) -> list[str]: ...
    def subscribe(self, stream_id: str, after: str | None = None) -> AsyncIterator[StreamEvent]: ...
    async def close(self) -> None: ...
