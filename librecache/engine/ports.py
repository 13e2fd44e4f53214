"""Ports: the I/O of one region for one door, as the flows ask for it
(:data:`~librecache.engine.flows.OPS` names each method).

Sync ports:

- :class:`RedisPort`: a Redis namespace (single, cluster, Sentinel), by
  the backend's own commands and scripts;
- :class:`MemoryPort`: a memory namespace;
- :class:`ProxiedPort`: a namespace whose backend is wrapped in dogpile
  ``wrap=`` proxies: reads and writes go through the proxies (as dogpile
  sends them), locks and leases to the librecache backend under them.

Async ports: :class:`~librecache.backends.aio_redis.AsyncRedisStore` for
Redis namespaces (a :mod:`redis.asyncio` client; ``wrap=`` proxies are
sync code and are bypassed), :class:`AsyncLocalPort` for the others (the
sync port's calls, which never wait on I/O, behind an asyncio queue).

Besides the flows' requests, each port has ``hit(key, expiration_time)``:
the direct path of a call (a near hit, or one read judged fresh) that
returns the payload, or the :class:`~librecache.engine.flows.Found` a flow
goes on from; and ``locked(key)``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue, CacheMutex

from .._compat import DOGPILE_METADATA_DELIMITER
from ..invalidation import SharedInvalidation
from .background import AsyncJobs, SyncJobs
from .flows import ACQUIRED, ANY, CHANGED, Call, Found, LockReply
from .judge import (
    CREATION_TIMES,
    FRESH,
    TAGGED_OUT,
    TAGGED_TIMES,
    expiration_of,
    refresh_due,
    tagged_time,
    usual_time,
    verdict,
)
from .locks import AsyncKeyedLocks, LeasedKey
from .policy import PLAIN, Policy, jitter

__all__ = ["AsyncLocalPort", "MemoryPort", "ProxiedPort", "RedisPort"]


def judged(region: Any, found: Found, timeout: float | None, policy: Policy = PLAIN, key: str = "") -> Any:
    """``found``'s payload if it is fresh for a call with ``timeout`` (its
    ``expiration_time`` argument) and ``policy``, and not due for an eager
    refresh, else ``found``, for a flow to go on from."""
    expiration = expiration_of(region, timeout)
    if policy.plain_hit:  # a fresh value is fresh whatever else the policy says
        kind, payload = verdict(region, found.value, expiration)
    else:
        kind, payload = verdict(region, found.value, expiration, policy, key)
        if kind is FRESH and policy.eager_refresh is not None and refresh_due(found.value, expiration, policy, key):
            return found
    if kind is FRESH:
        return payload
    # a tag's invalidation: the flow goes on as from nothing stored (judged, and counted, once)
    return found if payload is not TAGGED_OUT else Found(NO_VALUE, found.seen)


def near_expiry(expires: float | None, policy: Policy) -> float | None:
    """The expiration time a near copy is judged by: a call's, or its
    eager-refresh point (a copy past it goes to the flow, which refreshes
    it). A near copy's TTL has no jitter: it may only end sooner."""
    if policy.eager_refresh is None or expires is None or expires == -1:
        return expires
    return expires * policy.eager_refresh


def found_of(port: Any, key: str, stored: bytes | None) -> Found:
    """What a Redis port's read of ``stored`` (the bytes under ``key``, or
    ``None``) found: parsed as the region parses values (checked for a lost
    write and a signature). Both doors."""
    if stored is None:
        return Found(NO_VALUE, None)
    if port.connection.is_pending(key):  # a write of it was lost: what Redis holds may be older
        return Found(NO_VALUE, ANY)
    return Found(port.region.parse_stored(port.backend.opened(key, stored)), stored)


def hit_judgement(region: Any) -> tuple[Any, bool]:
    """``(invalidation, pickled)`` of a Redis port of ``region``: its
    invalidation strategy, and whether :func:`stored_hit` judges values from their bytes
    (dogpile's pickles, and marks kept as one number,
    :attr:`SharedInvalidation.valid_from <librecache.invalidation.SharedInvalidation.valid_from>`)."""
    invalidation = region.region_invalidator
    pickled = region.deserializer is not None and region.value_format is None \
        and isinstance(invalidation, SharedInvalidation)
    return invalidation, pickled


def stored_hit(port: Any, key: str, stored: bytes | None, timeout: float | None, policy: Policy = PLAIN) -> Any:
    """A Redis port's hit path after its read of ``stored``: the payload,
    when fresh for a call with ``timeout`` (its ``expiration_time``
    argument), else the :class:`Found` a flow goes on from. Both doors.

    dogpile's pickles in its usual header
    (:func:`~librecache.engine.judge.usual_time`, remembered for hot keys)
    are judged from their bytes, without parsing them into a
    :class:`CachedValue` (every hit takes
    this path, so :func:`~librecache.engine.judge.verdict`'s rules for a
    value that is there are written out here: expiry, hard or soft
    invalidation); any other form is parsed and judged by ``verdict``."""
    if stored is None:
        return Found(NO_VALUE, None)
    waiting = port.connection.deletes_waiting
    if waiting and key in waiting:  # a write of it was lost: what Redis holds may be older
        return Found(NO_VALUE, ANY)
    backend, region = port.backend, port.region
    raw = stored if backend.signer is None else backend.opened(key, stored)
    if port.pickled and raw is not NO_VALUE:
        header, _, pickled = raw.partition(DOGPILE_METADATA_DELIMITER)
        created = CREATION_TIMES.get(header)
        if created is None:
            created = usual_time(header)
            if created is None:  # tagged? judged here while its tags are valid
                tagged = TAGGED_TIMES.get(header) or tagged_time(header)
                if tagged is not None and region.tag_book.valid(tagged[1], tagged[0]):
                    created = tagged[0]
        if created is not None:  # else another form, which JSON may read or refuse: parsed below
            expires = region.expiration_time if timeout is None else timeout
            if not policy.plain_hit and expires is not None and expires != -1:
                if policy.ttl_jitter:
                    expires += jitter(key, created, policy.ttl_jitter)
                if policy.eager_refresh is not None:
                    expires *= policy.eager_refresh
            if (expires is None or expires == -1 or time.time() - created <= expires) \
                    and created >= port.invalidation.valid_from:
                try:
                    return region.deserializer(pickled)
                except Exception:  # not unpickled: parsed below, as the region reads it (logged)
                    pass
    return judged(region, Found(region.parse_stored(raw), stored), timeout, policy, key)


class _Handed(CacheMutex):
    """The mutex dogpile's ``async_creation_runner`` releases when it has
    recreated a stale value: the flow's lease and queue."""

    def __init__(self, port: Any, key: str, handle: Any, lease: Any) -> None:
        self._port, self._key, self._handle, self._lease = port, key, handle, lease

    def acquire(self, wait: bool = True) -> bool:
        return False  # held already: the flow took it

    def release(self) -> None:
        port, key, handle, lease = self._port, self._key, self._handle, self._lease
        self._handle = self._lease = None
        try:
            if lease is not None:
                port.release(key, lease)
        finally:
            if handle is not None:
                port.dequeue(key, handle)

    def locked(self) -> bool:
        return self._handle is not None


class _SyncPort(SyncJobs):
    """What every sync port does alike: this process's queue (the backend's
    thread locks), pauses, the creator and its jobs, dogpile's runner."""

    region: Any
    backend: Any
    #: The namespace's near cache, if any.
    near: Any = None

    def spare(self, key: str) -> Any:
        near = self.near
        return NO_VALUE if near is None else near.spare(key)

    def queue(self, key: str, wait: bool, deadline: float | None) -> Any:
        return self.backend.locks.acquire(key, wait, deadline)

    def dequeue(self, key: str, handle: Any) -> None:
        self.backend.locks.release(key, handle)

    sleep = staticmethod(time.sleep)

    @staticmethod
    def create(creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return creator(*args, **kwargs)

    def hand_off(self, call: Call, handle: Any, lease: Any) -> None:
        args, kwargs, creator = call.args, call.kwargs, call.creator

        def create() -> Any:
            return creator(*args, **kwargs)

        call.runner(call.region, call.orig_key, create, _Handed(self, call.key, handle, lease))

    def release(self, key: str, lease: Any) -> None:
        self.backend.release(key, lease)

    def break_lock(self, key: str, holder: Any) -> None:
        self.backend.break_lock(key, holder)

    def locked(self, key: str) -> bool:
        return bool(self.backend.locked(key))

    def store_many(self, items: list[tuple[str, CachedValue, Any]]) -> list[bool]:
        """:meth:`store` of each item in turn; the leases of those not reached
        are released when one raises."""
        stored = []
        for index, (key, value, lease) in enumerate(items):
            try:
                stored.append(self.store(key, value, lease))
            except BaseException:
                for later, _, its in items[index + 1:]:
                    self.release(later, its)
                raise
        return stored

    def store(self, key: str, value: CachedValue, lease: Any) -> bool:
        raise NotImplementedError


class RedisPort(_SyncPort):
    """The sync door of a Redis namespace (see the module)."""

    def __init__(self, region: Any, backend: Any) -> None:
        self.region = region
        self.backend = backend
        self.connection = backend.connection
        self.near = backend.near[0] if backend.near is not None else None
        #: How long a call waits for another creator (a Redis call's budget)
        self.budget: float | None = self.connection.call_budget
        self.read_stored = backend.read_stored
        self.invalidation, self.pickled = hit_judgement(region)

    def hit(self, key: str, timeout: float | None, policy: Policy = PLAIN) -> Any:
        near = self.near
        if near is not None and near.enabled:
            expires = self.region.expiration_time if timeout is None else timeout
            payload = near.fetch(key, expires if policy.plain_hit else near_expiry(expires, policy))
            if payload is not NO_VALUE:
                return payload
            generation = near.generation
            found = self.read(key)
            if isinstance(found.value, CachedValue):
                near.store(key, found.value, generation)
            return judged(self.region, found, timeout, policy, key)
        return stored_hit(self, key, self.read_stored(key), timeout, policy)

    def read(self, key: str) -> Found:
        if self.connection.is_pending(key):
            return Found(NO_VALUE, ANY)
        return found_of(self, key, self.backend.read_stored(key))

    def read_many(self, keys: list[str]) -> list[Found]:
        return [found_of(self, key, stored) for key, stored in zip(keys, self.backend.read_stored_multi(keys),
                                                                    strict=True)]

    def try_lock(self, key: str, seen: Any) -> LockReply:
        reply: LockReply = self.backend.try_lock(key, seen)
        if reply.state is CHANGED:
            return reply._replace(current=found_of(self, key, reply.current))
        return reply

    def store(self, key: str, value: CachedValue, lease: Any) -> bool:
        region = self.region
        try:
            serialized = region.serialized(value)
        except BaseException:
            self.backend.release(key, lease)
            raise
        near_copy = region.near_copy(value) if self.near is not None else None
        return bool(self.backend.store_leased(key, serialized, lease, value.metadata["ct"], near_copy))

    def store_many(self, items: list[tuple[str, CachedValue, Any]]) -> list[bool]:
        region = self.region
        try:
            serialized = [(key, region.serialized(value), lease) for key, value, lease in items]
        except BaseException:
            for key, _, lease in items:
                self.backend.release(key, lease)
            raise
        return list(self.backend.store_many(serialized, items[0][1].metadata["ct"]))


class MemoryPort(_SyncPort):
    """The sync door of a memory namespace (see the module). What is seen
    of a value is the stored object itself."""

    #: A caller waits for another creator as long as it takes (as dogpile's memory mutex).
    budget = None

    def __init__(self, region: Any, backend: Any) -> None:
        self.region = region
        self.backend = backend

    def hit(self, key: str, timeout: float | None, policy: Policy = PLAIN) -> Any:
        return judged(self.region, self.read(key), timeout, policy, key)

    def read(self, key: str) -> Found:
        value = self.backend.get(key)
        return Found(value, value)

    def read_many(self, keys: list[str]) -> list[Found]:
        return [Found(value, value) for value in self.backend.get_multi(keys)]

    def try_lock(self, key: str, seen: Any) -> LockReply:
        reply: LockReply = self.backend.try_lock(key, seen)
        if reply.state is CHANGED:
            return reply._replace(current=Found(reply.current, reply.current))
        return reply

    def store(self, key: str, value: CachedValue, lease: Any) -> bool:
        return bool(self.backend.store_leased(key, value, lease))


class ProxiedPort(_SyncPort):
    """The sync door of a namespace behind ``wrap=`` proxies: values read
    and written through them (as dogpile's own calls are), creation locks
    and leases by the librecache backend under them (``inner``, its own
    port; ``None`` for a backend of no librecache kind: dogpile's calls
    then raise its error). A value created is stored under a
    :class:`~librecache.engine.locks.LeasedKey`."""

    def __init__(self, region: Any, inner: Any) -> None:
        self.region = region
        self.inner = inner
        self.backend = inner.backend if inner is not None else region.backend
        self.budget = inner.budget if inner is not None else None

    def hit(self, key: str, timeout: float | None, policy: Policy = PLAIN) -> Any:
        return judged(self.region, self.read(key), timeout, policy, key)

    def read(self, key: str) -> Found:
        return Found(self.region.read_cached(key), ANY)

    def read_many(self, keys: list[str]) -> list[Found]:
        return [Found(value, ANY) for value in self.region.read_cached_many(keys)]

    def try_lock(self, key: str, seen: Any) -> LockReply:
        reply: LockReply = self.inner.try_lock(key, ANY)
        if reply.state is ACQUIRED:  # what the proxies read now, for the re-check
            return reply._replace(current=self.read(key))
        return reply

    def store(self, key: str, value: CachedValue, lease: Any) -> bool:
        if lease is None:
            return False
        leased = LeasedKey(key, lease)
        try:
            self.region.write_cached(leased, value)
        finally:
            if not leased.stored:  # refused, or a proxy that did not pass it on: the lock is released
                self.inner.release(key, lease)
        return leased.stored

    def release(self, key: str, lease: Any) -> None:
        self.inner.release(key, lease)


class AsyncLocalPort(AsyncJobs):
    """The async door of a memory namespace (or one behind proxies whose
    backend is memory): the sync port's calls, which never wait on I/O,
    behind an asyncio queue per key; also the awaitable region calls'
    reads, writes and deletes (as :class:`~librecache.backends.aio_redis.AsyncRedisStore` has)."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.region = sync.region
        self.budget = sync.budget
        self.queues = AsyncKeyedLocks()

    # -- the flows' requests

    async def hit(self, key: str, timeout: float | None, policy: Policy = PLAIN) -> Any:
        return self.sync.hit(key, timeout, policy)

    async def read(self, key: str) -> Found:
        return self.sync.read(key)  # type: ignore[no-any-return]

    async def read_many(self, keys: list[str]) -> list[Found]:
        return self.sync.read_many(keys)  # type: ignore[no-any-return]

    async def queue(self, key: str, wait: bool, deadline: float | None) -> Any:
        return await self.queues.acquire(key, wait, deadline)

    async def dequeue(self, key: str, handle: Any) -> None:
        self.queues.release(key, handle)

    async def try_lock(self, key: str, seen: Any) -> LockReply:
        return self.sync.try_lock(key, seen)  # type: ignore[no-any-return]

    async def spare(self, key: str) -> Any:
        return self.sync.spare(key)

    async def break_lock(self, key: str, holder: Any) -> None:
        self.sync.break_lock(key, holder)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def create(self, creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return await created(creator, args, kwargs)

    async def store(self, key: str, value: CachedValue, lease: Any) -> bool:
        return self.sync.store(key, value, lease)  # type: ignore[no-any-return]

    async def store_many(self, items: list[tuple[str, CachedValue, Any]]) -> list[bool]:
        return self.sync.store_many(items)  # type: ignore[no-any-return]

    async def release(self, key: str, lease: Any) -> None:
        self.sync.release(key, lease)

    def locked(self, key: str) -> bool:
        return self.queues.locked(key) or bool(self.sync.locked(key))

    # -- the awaitable region calls

    def marks_due(self) -> bool:
        return False

    async def marks(self) -> None:
        return None

    def raw_reads(self) -> bool:
        return False

    async def get(self, key: str) -> Any:
        return self.region.read_cached(key)

    async def get_multi(self, keys: list[str]) -> list[Any]:
        return list(self.region.read_cached_many(keys)) if keys else []

    async def set(self, key: str, value: CachedValue) -> None:
        self.region.write_cached(key, value)

    async def set_multi(self, mapping: dict[str, CachedValue]) -> None:
        self.region.write_cached_many(mapping)

    async def delete_multi(self, keys: list[str]) -> None:
        if keys:
            self.region.backend.delete_multi(keys)


async def created(creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run a sync or async creator (the async door's :class:`~librecache.engine.flows.Create`)."""
    value = creator(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value
