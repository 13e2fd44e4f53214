"""Resumable streams in Redis: a Redis Stream per generation.

Keys, all under the deployment's prefix, with the stream id as the cluster
hash tag so that one stream's keys share a slot:

- ``{prefix}::stream:{<id>}:events``: the events (``XADD``), read with
  ``XREAD BLOCK`` from the last id a subscriber saw, so a resume is exact;
- ``{prefix}::stream:{<id>}:state``: a hash of status, meta, times, abort
  request and final value;
- ``{prefix}::streams:active`` and ``{prefix}::streams:owner:<owner>``:
  indexes of running streams (pruned as they finish or expire).

State changes are Lua scripts over the two keys of one stream, so a check
(``is it still running?``) and the change it guards are one atomic step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from redis.exceptions import ResponseError

from ..clients import async_client
from ..config import CacheConfig
from ..keyspace import KeySpace
from ..replies import text
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

__all__ = ["RedisStreamStore"]

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'running', 'meta', ARGV[1], 'created', ARGV[2], 'updated', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RUNNING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('LIBRECACHE_UNKNOWN') end
if status ~= 'running' then return redis.error_reply('LIBRECACHE_FINISHED ' .. status) end
"""

# A retried append or finish (its first reply was lost) returns the first
# attempt's id instead of adding the event again: each producer (a store)
# keeps the token and id of its latest change of the stream in the field
# "p:<producer>"; the last two arguments are the producer and the token.
_ALREADY_DONE = """
local producer = 'p:' .. ARGV[#ARGV - 1]
local done = redis.call('HGET', KEYS[1], producer)
if done then
  local space = string.find(done, ' ', 1, true)
  if space and string.sub(done, 1, space - 1) == ARGV[#ARGV] then return string.sub(done, space + 1) end
end
"""

_APPEND = (
    _ALREADY_DONE
    + _RUNNING
    + """
local id = redis.call('XADD', KEYS[2], '*', 'd', ARGV[1])
redis.call('HSET', KEYS[1], 'updated', ARGV[2], producer, ARGV[#ARGV] .. ' ' .. id)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return id
"""
)

_FINISH = (
    _ALREADY_DONE
    + _RUNNING
    + """
local id = redis.call('XADD', KEYS[2], '*', 'd', ARGV[3])
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'final', ARGV[2], 'updated', ARGV[4], producer, ARGV[#ARGV] .. ' ' .. id)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return id
"""
)

_ABORT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('LIBRECACHE_UNKNOWN') end
if status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'abort', '1', 'abort_reason', ARGV[1])
return 1
"""

#: Events read per XREAD.
READ_BATCH = 500
#: Short commands in flight at once per store; more wait their turn instead
#: of exhausting the connection pool (blocked subscribers are not counted).
MAX_IN_FLIGHT = 64



class RedisStreamStore:
    """Resumable streams shared by every instance on one Redis (single or
    cluster) and prefix. See the module for the keys. Use it from asyncio;
    :func:`librecache.streams.open_streams_sync` gives the sync twin."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.keyspace = KeySpace(config.key_prefix)
        self.client = async_client(config)
        self.listeners = ListenerCount(config.max_listeners)
        self._gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        #: This store's name as a producer (see _ALREADY_DONE).
        self._producer = uuid.uuid4().hex
        self.idle_ms = int(config.stream_idle_ttl * 1000)
        self.finished_ms = int(config.stream_finished_ttl * 1000)
        # XREAD BLOCK must return before the socket time-out fires
        self.block_ms = max(50, min(5000, int(config.socket_timeout * 1000 * 0.8)))
        self._create = self.client.register_script(_CREATE)
        self._append = self.client.register_script(_APPEND)
        self._finish = self.client.register_script(_FINISH)
        self._abort = self.client.register_script(_ABORT)

    # -- keys -----------------------------------------------------------------------

    def _keys(self, stream_id: str) -> tuple[str, str]:
        base = f"{self.keyspace.root}stream:{{{check_stream_id(stream_id)}}}:"
        return base + "state", base + "events"

    def _index(self, owner: str | None = None) -> str:
        return f"{self.keyspace.root}streams:" + ("active" if owner is None else f"owner:{owner}")

    @staticmethod
    def _raise(stream_id: str, error: ResponseError) -> None:
        message = str(error)
        if "LIBRECACHE_UNKNOWN" in message:
            raise UnknownStreamError(f"no stream {stream_id!r} (never created, or expired)") from None
        if "LIBRECACHE_FINISHED" in message:
            status = message.rsplit(" ", 1)[-1]
            raise StreamFinishedError(f"stream {stream_id!r} has finished ({status})") from None
        raise error

    async def _gated(self, script: Any, *, keys: list[str], args: list[Any]) -> Any:
        async with self._gate:
            return await script(keys=keys, args=args)

    # -- the API --------------------------------------------------------------------

    async def create(self, stream_id: str, *, meta: Mapping[str, Any] | None = None) -> None:
        """Start a stream. ``meta`` (JSON) is kept with it; ``meta["owner"]``
        makes it listed by ``active(owner)``."""
        state, events = self._keys(stream_id)
        meta_json = encode_json(dict(meta or {}), "meta")
        now = time.time()
        if not await self._gated(self._create, keys=[state, events], args=[meta_json, repr(now), self.idle_ms]):
            raise StreamExistsError(f"stream {stream_id!r} already exists")
        await self.client.zadd(self._index(), {stream_id: now})
        owner = (meta or {}).get("owner")
        if owner is not None:
            await self.client.zadd(self._index(str(owner)), {stream_id: now})

    async def append(self, stream_id: str, event: Mapping[str, Any]) -> str:
        """Add an event; return its id. Nothing is stored if the event is not
        JSON-serialisable or the stream is unknown or finished. Exactly
        once: when the reply is lost and the command retried, the retry
        returns the first attempt's id."""
        data = encode_event(event)
        state, events = self._keys(stream_id)
        try:
            event_id = await self._gated(
                self._append, keys=[state, events],
                args=[data, repr(time.time()), self.idle_ms, self._producer, uuid.uuid4().hex],
            )
        except ResponseError as error:
            self._raise(stream_id, error)
        return text(event_id)

    async def finish(self, stream_id: str, status: FinishStatus = "done", final: Any = None) -> str:
        """End the stream with ``status`` and an optional JSON ``final`` value;
        subscribers receive the terminal event and stop. Returns its id."""
        check_finish_status(status)
        final_json = encode_json(final, "final")
        end_json = encode_json(end_event(status, final), "final")
        state, events = self._keys(stream_id)
        try:
            event_id = await self._gated(
                self._finish,
                keys=[state, events],
                args=[status, final_json, end_json, repr(time.time()), self.finished_ms, self._producer,
                      uuid.uuid4().hex],
            )
        except ResponseError as error:
            self._raise(stream_id, error)
        meta = await self._meta(state)
        await self.client.zrem(self._index(), stream_id)
        if meta.get("owner") is not None:
            await self.client.zrem(self._index(str(meta["owner"])), stream_id)
        return text(event_id)

    async def abort(self, stream_id: str, reason: str | None = None) -> bool:
        """Ask the producer (on any instance) to stop; True if the stream was
        running. The producer sees it through :meth:`is_aborted`."""
        state, _ = self._keys(stream_id)
        try:
            return bool(await self._gated(self._abort, keys=[state], args=[reason or ""]))
        except ResponseError as error:
            self._raise(stream_id, error)
            raise  # pragma: no cover

    async def is_aborted(self, stream_id: str) -> bool:
        state, _ = self._keys(stream_id)
        flag, status = await self.client.hmget(state, ["abort", "status"])
        if status is None:
            raise UnknownStreamError(f"no stream {stream_id!r} (never created, or expired)")
        return flag == b"1"

    async def _meta(self, state: str) -> dict[str, Any]:
        raw = await self.client.hget(state, "meta")
        return json.loads(raw) if raw else {}

    async def status(self, stream_id: str) -> StreamStatus:
        state, events = self._keys(stream_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(state)
        pipe.xlen(events)
        pipe.xrevrange(events, count=1)
        fields, length, last = await pipe.execute()
        if not fields:
            raise UnknownStreamError(f"no stream {stream_id!r} (never created, or expired)")
        values = {text(k): text(v) for k, v in fields.items()}
        return StreamStatus(
            stream_id,
            values["status"],
            json.loads(values.get("meta", "{}")),
            int(length),
            text(last[0][0]) if last else None,
            float(values["created"]),
            float(values["updated"]),
            values.get("abort") == "1",
            values.get("abort_reason") or None,
            json.loads(values["final"]) if "final" in values else None,
        )

    async def active(self, owner: str | None = None) -> list[str]:
        """The running streams (of one ``owner``, given in ``meta``)."""
        index = self._index(owner)
        ids = [text(member) for member in await self.client.zrange(index, 0, -1)]
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for stream_id in ids:
            pipe.hget(self._keys(stream_id)[0], "status")
        statuses = await pipe.execute()
        gone = [sid for sid, status in zip(ids, statuses, strict=True) if status != b"running"]
        if gone:
            await self.client.zrem(index, *gone)
        return sorted(sid for sid, status in zip(ids, statuses, strict=True) if status == b"running")

    async def subscribe(self, stream_id: str, after: str | None = None) -> AsyncIterator[StreamEvent]:
        """Everything after ``after`` (from the start when None), then the
        live events, ending after the terminal event.

        :raises UnknownStreamError: the stream does not exist, or expires
            while followed.
        """
        last = check_after(after)
        state, events = self._keys(stream_id)
        if not await self.client.exists(state):
            raise UnknownStreamError(f"no stream {stream_id!r} (never created, or expired)")
        self.listeners.enter(stream_id)
        try:
            block: int | None = None  # the first read does not wait
            while True:
                reply = await self.client.xread({events: last}, count=READ_BATCH, block=block)
                entries = _entries(reply)
                if not entries:
                    status = await self.client.hget(state, "status")
                    if status is None:
                        raise UnknownStreamError(f"stream {stream_id!r} expired while followed")
                    if status == b"running":
                        block = self.block_ms
                        continue
                    # finished: read once more, the end event may have just been written
                    entries = _entries(await self.client.xread({events: last}, count=READ_BATCH))
                    if not entries:
                        return  # subscribed after the end
                for event_id, fields in entries:
                    last = text(event_id)
                    event = StreamEvent(last, json.loads(fields[b"d"] if b"d" in fields else fields["d"]))
                    yield event
                    if event.is_end:
                        return
        finally:
            self.listeners.leave(stream_id)

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREAD reply of one stream, RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {name: [[entry, ...]]}
        (value,) = reply.values()
        return list(value[0]) if value and isinstance(value[0], list) else list(value)
    return list(reply[0][1])  # RESP2: [[name, [entry, ...]]]
