"""The asyncio door of a Redis namespace: the same keys, bytes, locks and
circuit breaker as :class:`~librecache.backends.redis.RedisBackend`, through
a :mod:`redis.asyncio` client.

- :class:`AsyncClients`: one asyncio client per event loop for a
  registry's :class:`~librecache.connection.RedisConnection`, built by
  :func:`librecache.clients.async_client` from the same configuration as
  the sync client, created on first use in a loop and closed when that loop
  shuts down (``asyncio.run``'s ``shutdown_asyncgens``) or with the registry.
- :func:`aguard`: :meth:`RedisConnection.guard <librecache.connection.RedisConnection.guard>`
  for coroutines, sharing its breaker, its classification of errors, its
  counters and strict mode. Recovery is the sync maintenance thread's job,
  which every registry runs, so an async-only service reconnects too.
- :class:`AsyncRedisStore`: reads, writes, deletes and the creation lock of
  one namespace, made of the backend's own pieces: its key names, its
  signing (``_sealed``/``_opened``), its expiry (``expires_after_ms``), its
  lock key (:meth:`KeySpace.lock <librecache.keying.KeySpace.lock>`) and
  timeout, the remembered deletes, the near cache and its drop messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from ..clients import async_client
from ..config import CacheConfig
from ..connection import RedisConnection, _demoted, limited
from ..fastpath import reads_bytes
from ..health import OUTAGE, classify
from ..replies import text
from .redis import _RELEASE, LOCK_POLL_INTERVAL, RedisBackend, lock_expired, lock_token

__all__ = ["AsyncClients", "AsyncRedisStore", "Held", "aclose_clients", "aguard", "close_clients", "keyed_lock"]

log = logging.getLogger(__name__)

_LOCAL_ONLY = object()
_FAILED = object()
_AGAIN = object()  # a shared read's first reader was cancelled: read again


# --------------------------------------------------------------------------
# One asyncio client per event loop
# --------------------------------------------------------------------------


class _LoopClient:
    __slots__ = ("client", "closed", "keeper")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.keeper: Any = None
        self.closed = False


class AsyncClients:
    """The :mod:`redis.asyncio` clients of one registry, one per event loop.

    :param config: the registry's configuration.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._lock = threading.Lock()
        self.closed = False

    def get(self) -> Any:
        """The client of the running loop (created on first use).

        :raises redis.ConnectionError: the registry is closed.
        """
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            entry = self._open(loop)
        return entry.client

    def _open(self, loop: asyncio.AbstractEventLoop) -> _LoopClient:
        with self._lock:
            if self.closed:
                raise RedisConnectionError("the librecache registry is closed")
            for old in [old for old in self._loops if old.is_closed()]:  # loops closed without shutdown_asyncgens
                self._forget(old)
            entry = self._loops.get(loop)
            if entry is not None:
                return entry
            entry = _LoopClient(async_client(self.config))
            self._loops[loop] = entry
        entry.keeper = keeper = self._close_with_loop(loop, entry)
        # Started here, in the loop's thread: the loop's async-generator hooks
        # register it, and shutdown_asyncgens() (asyncio.run, uvicorn,
        # aiohttp's run_app) finishes it, which closes the client.
        try:
            keeper.asend(None).send(None)
        except StopIteration:
            pass
        return entry

    async def _close_with_loop(self, loop: asyncio.AbstractEventLoop, entry: _LoopClient) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not entry.closed:
                entry.closed = True
                with self._lock:
                    if self._loops.get(loop) is entry:
                        del self._loops[loop]
                try:
                    await entry.client.aclose()
                except Exception:  # closing must not raise on a dead server
                    log.debug("error while closing an asyncio Redis client", exc_info=True)

    def _forget(self, loop: asyncio.AbstractEventLoop) -> _LoopClient | None:
        """Drop the loop's entry without closing its client (the caller
        does, if the loop can still run it); finish its keeper at once."""
        entry = self._loops.pop(loop, None)
        if entry is not None and not entry.closed:
            entry.closed = True
            keeper, entry.keeper = entry.keeper, None
            if keeper is not None:
                try:  # entry.closed: the keeper's finally awaits nothing
                    keeper.aclose().send(None)
                except (StopIteration, RuntimeError):
                    pass
        return entry

    def close(self, timeout: float) -> None:
        """Close every loop's client (from any thread, within ``timeout``
        seconds): a running loop closes its own, a loop that is not running
        is run until it has, a closed loop's client is dropped."""
        with self._lock:
            self.closed = True
            entries = [(loop, self._forget(loop)) for loop in list(self._loops)]
        deadline = time.monotonic() + timeout
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, entry in entries:
            if entry is None or loop.is_closed():
                continue
            try:
                if loop is current:
                    task = loop.create_task(entry.client.aclose())
                    _closing.add(task)
                    task.add_done_callback(_closing.discard)
                elif loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(entry.client.aclose(), loop)
                    future.result(max(0.0, deadline - time.monotonic()))
                else:
                    loop.run_until_complete(asyncio.wait_for(entry.client.aclose(),
                                                             max(0.01, deadline - time.monotonic())))
            except Exception:  # closing must not raise or hang on a dead server or loop
                log.debug("error while closing an asyncio Redis client", exc_info=True)

    async def aclose(self) -> None:
        """Close the running loop's client (awaited), then the others'."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._forget(loop)
        if entry is not None:
            try:
                await entry.client.aclose()
            except Exception:
                log.debug("error while closing an asyncio Redis client", exc_info=True)
        await asyncio.to_thread(self.close, self.config.connect_timeout)


#: Close tasks scheduled by a sync close() called inside a running loop.
_closing: set[asyncio.Task[Any]] = set()

_clients: weakref.WeakKeyDictionary[RedisConnection, AsyncClients] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def clients_of(connection: RedisConnection) -> AsyncClients:
    """The asyncio clients of ``connection``'s registry."""
    clients = _clients.get(connection)
    if clients is None:
        with _clients_lock:
            clients = _clients.get(connection)
            if clients is None:
                clients = _clients[connection] = AsyncClients(connection.config)
    return clients


def close_clients(connection: RedisConnection, timeout: float) -> None:
    """Close the asyncio clients of ``connection``'s registry (with the registry)."""
    clients = _clients.get(connection)
    if clients is not None:
        clients.close(timeout)


async def aclose_clients(connection: RedisConnection) -> None:
    """Close the asyncio clients of ``connection``'s registry, awaiting the running loop's."""
    clients = _clients.get(connection)
    if clients is not None:
        await clients.aclose()


# --------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------


async def aguard(connection: RedisConnection, operation: str, action: Callable[[Any], Awaitable[Any]],
                 fallback: Callable[[], Any], write: bool = False, stats: Any = None,
                 clients: AsyncClients | None = None) -> Any:
    """:meth:`RedisConnection.guard <librecache.connection.RedisConnection.guard>`
    for a coroutine ``action(client)`` on the running loop's asyncio client
    (of ``clients``, by default :func:`clients_of` ``connection``): the same
    breaker, the same fall-through, the same strict mode."""
    connection.client  # noqa: B018  (in a forked child, starts the maintenance thread)
    if connection.falls_through(False, write, stats):
        return fallback()
    try:
        client = (clients or clients_of(connection)).get()
        try:
            return await action(client)
        except (ReadOnlyError, RedisConnectionError) as exc:
            if not _demoted(exc):
                raise
            limited.warning("readonly", "READONLY reply during %s: reconnecting to the current master", operation)
            await _reset(client)
            return await action(client)
    except Exception as exc:
        connection.failed(exc, operation, write, stats)
        return fallback()


async def _reset(client: Any) -> None:
    """Forget the connections (and a cluster's map) of an asyncio client."""
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        await manager.initialize()
    else:
        await client.connection_pool.disconnect(inuse_connections=False)


# --------------------------------------------------------------------------
# Creation locks
# --------------------------------------------------------------------------


class Held:
    """What a creation lock gave: ``acquired`` (go on and create) and
    ``confirmed`` (store what is created: the lock was really held)."""

    __slots__ = ("acquired", "confirmed")

    def __init__(self, acquired: bool, confirmed: bool) -> None:
        self.acquired = acquired
        self.confirmed = confirmed


_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def keyed_lock(name: str, wait: bool, deadline: float | None) -> AsyncIterator[bool]:
    """The asyncio lock of ``name`` in the running loop (so that one task of
    the process goes on and the others queue); yields whether it was taken
    (``wait``: by ``deadline``, :func:`time.monotonic`, or for ever when
    ``None``; otherwise only if free)."""
    loop = asyncio.get_running_loop()
    table = _tables.get(loop)
    if table is None:
        table = _tables[loop] = {}
    entry = table.get(name)
    if entry is None:
        entry = table[name] = [asyncio.Lock(), 0]
    entry[1] += 1
    lock: asyncio.Lock = entry[0]
    got = False
    try:
        if not wait:
            got = not lock.locked() and await lock.acquire()
        elif deadline is None:
            got = await lock.acquire()
        else:
            try:
                got = await asyncio.wait_for(lock.acquire(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                got = False
        yield got
    finally:
        if got:
            lock.release()
        entry[1] -= 1
        if entry[1] == 0 and table.get(name) is entry:
            del table[name]


def _settle(flights: list[list[Any]], exc: BaseException) -> None:
    """The read of ``flights`` failed with ``exc``: raise it in their
    readers; a cancelled read makes them read again."""
    for flight in flights:
        future = flight[0]
        if future is None or future.done():
            continue
        if isinstance(exc, Exception):
            future.set_exception(exc)
            future.exception()  # retrieved: a reader that was cancelled meanwhile logs nothing
        else:
            future.set_result(_AGAIN)


# --------------------------------------------------------------------------
# One namespace
# --------------------------------------------------------------------------


class AsyncRedisStore:
    """The asyncio twin of a region's :class:`RedisBackend` I/O. Values are
    dogpile :class:`~dogpile.cache.api.CachedValue` objects, turned into the
    region's bytes exactly as the sync path turns them."""

    def __init__(self, region: Any, backend: RedisBackend) -> None:
        self.region = region
        self.backend = backend
        self.connection = backend.connection
        self.stats = backend.stats
        self.near = backend.near[0] if backend.near is not None else None
        self.bus = getattr(region.region_invalidator, "bus", None)
        self.clients = clients_of(self.connection)
        #: Per event loop: the reads in flight, by key, and the keys of the
        #: next MGET (see :meth:`_shared_get`).
        self._flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = \
            weakref.WeakKeyDictionary()
        self._batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = \
            weakref.WeakKeyDictionary()
        self._sending: set[asyncio.Task[None]] = set()

    def marks_due(self) -> bool:
        """Whether :meth:`marks` has anything to do (a plain check, no await)."""
        return self.bus is not None and not self.bus.loaded

    # -- invalidation marks -----------------------------------------------

    async def marks(self) -> None:
        """Read the stored invalidation marks before the first judgement
        (the sync path does it on its first read; here without blocking)."""
        bus = self.bus
        if bus is None or not bus.load_due():
            return
        stored = await aguard(self.connection, "load invalidations", lambda c: c.hgetall(bus.key),
                              lambda: _FAILED)
        if stored is _FAILED:
            bus.load_failed(RedisConnectionError("Redis is not reachable"))
        else:
            bus.apply_stored(stored)

    # -- reads --------------------------------------------------------------

    def _checked(self, key: str, raw: bytes | None) -> Any:
        """``raw`` read under ``key``, checked for a lost write and a
        signature (the bytes the region parses), or ``NO_VALUE``."""
        if self.connection.is_pending(key):  # a write of it was lost: what Redis holds may be older
            return NO_VALUE
        return self.backend._opened(key, raw)

    def raw_reads(self) -> bool:
        """Whether a value read by :meth:`read` may be judged from its bytes
        (:func:`librecache.fastpath.fresh_payload`): :func:`librecache.fastpath.reads_bytes`."""
        return reads_bytes(self.region)

    async def read(self, key: str) -> Any:
        """The bytes stored under ``key`` as the region parses them (checked
        for a lost write and a signature), or ``NO_VALUE``."""
        raw = await aguard(self.connection, "get", lambda c: self._shared_get(c, key), lambda: None,
                           stats=self.stats, clients=self.clients)
        return self._checked(key, raw)

    def parse(self, serialized: Any) -> Any:
        """What :meth:`read` returned, as a dogpile value (``NO_VALUE`` for a miss)."""
        return self.region._parse_serialized_from_backend(serialized)

    async def _shared_get(self, client: Any, key: str) -> bytes | None:
        """``GET key``, shared by the tasks of this loop: a read of a key
        already in flight waits for that read (single flight), and while
        any read is in flight, the reads of other keys that start meanwhile
        go together as one ``MGET`` (per slot on a cluster) in the next
        loop iteration. So a burst of concurrent hits costs one or two round
        trips, not one command each; a lone read is sent at once. Each
        reader then checks and decodes its own copy. A failure is raised in
        every reader (each degrades as it would alone); a reader's
        cancellation cancels no other (a cancelled first reader hands the
        read over: the others read again)."""
        loop = asyncio.get_running_loop()
        flights = self._flights.get(loop)
        if flights is None:
            flights = self._flights[loop] = {}
        flight = flights.get(key)
        if flight is None and flights:  # other reads are in flight: this one goes in the next MGET
            flight = self._batched(loop, flights, client, key)
        if flight is not None:
            future = flight[0]
            if future is None:
                future = flight[0] = loop.create_future()
            outcome = await asyncio.shield(future)
            if outcome is not _AGAIN:
                return outcome  # type: ignore[no-any-return]
            return await self._shared_get(client, key)
        flight = flights[key] = [None]
        try:
            raw: bytes | None = await client.get(key)
        except BaseException as exc:
            _settle([flight], exc)
            raise
        finally:
            if flights.get(key) is flight:
                del flights[key]
        future = flight[0]
        if future is not None and not future.done():
            future.set_result(raw)
        return raw

    def _batched(self, loop: asyncio.AbstractEventLoop, flights: dict[str, list[Any]], client: Any,
                 key: str) -> list[Any]:
        """Queue ``key`` for this loop's next ``MGET`` (sent by a task that
        starts in the next loop iteration); its flight."""
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = {}
            task = loop.create_task(self._mget(loop, flights, client, batch))
            self._sending.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._sending.discard)
        flight = flights[key] = batch[key] = [loop.create_future()]
        return flight

    async def _mget(self, loop: asyncio.AbstractEventLoop, flights: dict[str, list[Any]], client: Any,
                    batch: dict[str, list[Any]]) -> None:
        if self._batches.get(loop) is batch:
            del self._batches[loop]
        keys = list(batch)
        try:
            raws = await self._mget_all(client, keys)
        except BaseException as exc:
            _settle(list(batch.values()), exc)
            if not isinstance(exc, Exception):
                raise
            return  # raised in every reader of the batch
        finally:
            for key, flight in batch.items():
                if flights.get(key) is flight:
                    del flights[key]
        for flight, raw in zip(batch.values(), raws, strict=True):
            if not flight[0].done():
                flight[0].set_result(raw)

    def _land(self, keys: list[str]) -> None:
        """Reads of ``keys`` in flight in this loop are not shared any more: a
        read that starts after a write of this store sees it."""
        flights = self._flights.get(asyncio.get_running_loop())
        if flights:
            for key in keys:
                flights.pop(key, None)

    async def get(self, key: str) -> Any:
        near = self.near
        generation = 0
        if near is not None and near.enabled:
            region = self.region
            value = near.lookup(key, region.expiration_time)
            if value is not NO_VALUE:
                return value
            generation = near.generation
        value = self.parse(await self.read(key))
        if near is not None and near.enabled and isinstance(value, CachedValue):
            near.store(key, value, generation)
        return value

    async def read_multi(self, keys: list[str]) -> list[Any]:
        """The bytes stored under each of ``keys`` as the region parses them
        (checked for a lost write and a signature), or ``NO_VALUE``: one
        ``MGET`` (one per slot on a cluster)."""
        raws = await aguard(self.connection, "mget", lambda client: self._mget_all(client, keys),
                            lambda: [None] * len(keys), stats=self.stats)
        return [self._checked(key, raw) for key, raw in zip(keys, raws, strict=True)]

    async def _mget_all(self, client: Any, keys: list[str]) -> list[bytes | None]:
        """``MGET`` of ``keys`` (one per slot on a cluster)."""
        return list(await (client.mget_nonatomic(keys) if self.backend.cluster else client.mget(keys)))

    async def get_multi(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        near = self.near
        found: dict[str, Any] = {}
        generation = 0
        if near is not None and near.enabled:
            region = self.region
            for key in keys:
                found[key] = near.lookup(key, region.expiration_time)
            generation = near.generation
        missing = [key for key in keys if found.get(key, NO_VALUE) is NO_VALUE]
        if missing:
            for key, raw in zip(missing, await self.read_multi(missing), strict=True):
                value = found[key] = self.parse(raw)
                if near is not None and near.enabled and isinstance(value, CachedValue):
                    near.store(key, value, generation)
        return [found[key] for key in keys]

    # -- writes -------------------------------------------------------------

    def _bytes(self, key: str, value: CachedValue) -> bytes:
        return self.backend._sealed(key, self.region._serialized_cached_value(value))

    async def set(self, key: str, value: CachedValue, keep_near: bool = False) -> None:
        sealed = self._bytes(key, value)
        px = self.backend.expires_after_ms
        await self._write("set", [key], lambda c: c.set(key, sealed, px=px))
        if keep_near and self.near is not None:
            self.near.store(key, self.region._near_copy(value), self.near.generation)

    async def set_multi(self, mapping: Mapping[str, CachedValue], keep_near: bool = False) -> None:
        if not mapping:
            return
        sealed = {key: self._bytes(key, value) for key, value in mapping.items()}
        px = self.backend.expires_after_ms

        async def write(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)  # grouped per node by a cluster client
            for key, value in sealed.items():
                pipe.set(key, value, px=px)
            await pipe.execute()
            return True

        await self._write("set_multi", list(sealed), write)
        near = self.near
        if keep_near and near is not None:
            generation = near.generation
            for key, value in mapping.items():
                near.store(key, self.region._near_copy(value), generation)

    async def delete_multi(self, keys: list[str]) -> None:
        if keys:  # redis-py's cluster client splits DEL per slot

            async def delete(client: Any) -> bool:
                await client.delete(*keys)
                return True

            await self._write("delete", keys, delete)

    async def _write(self, operation: str, keys: list[str], action: Callable[[Any], Awaitable[Any]]) -> None:
        """:meth:`RedisBackend._write`: a write that failed or was dropped
        leaves no older value to be served."""
        connection = self.connection
        self._land(keys)
        written = await aguard(connection, operation, action, lambda: False, write=True, stats=self.stats)
        self._land(keys)  # and reads sent while it was in flight
        if written is False:
            await self._discard(keys)
        else:
            connection.written(keys)
        await self._changed(keys)

    async def _discard(self, keys: list[str]) -> None:
        """:meth:`RedisConnection.discard`, without blocking the loop."""
        connection = self.connection
        if connection.breaker.up and not connection.strict:
            try:
                await clients_of(connection).get().delete(*keys)
                connection.written(keys)
                return
            except Exception as exc:
                if classify(exc) == OUTAGE:
                    connection.breaker.failure(exc, "delete")
        connection.defer_delete(keys, self.backend.namespace)

    async def _changed(self, keys: list[str]) -> None:
        """Other instances drop their near copies of ``keys``; so does this one."""
        near, bus = self.near, self.bus
        if near is None or bus is None:
            return
        near.drop(keys)
        message = bus.drop_message(self.backend.namespace, keys)
        await aguard(self.connection, "near-cache drop", lambda c: c.publish(bus.near_channel, message),
                     lambda: None)

    # -- the creation lock ----------------------------------------------------

    @asynccontextmanager
    async def lock(self, key: str, wait: bool, started: float) -> AsyncIterator[Held]:
        """The creation lock of ``key``: :class:`RedisMutex`'s protocol
        (same lock key, token, expiry and release script), so sync and
        async callers of every process exclude each other. Tasks of this
        loop queue on an asyncio lock first. Waiting is bounded by the call
        budget counted from ``started``; a caller that runs out of it goes
        on without the lock and does not store (``confirmed`` False)."""
        connection = self.connection
        name = self.backend.keyspace.lock(key)
        deadline = started + connection.call_budget
        async with keyed_lock(name, wait, deadline) as local:
            if not local:
                yield Held(wait, False)
                return
            token = await self._take(name, deadline if wait else 0.0)
            if token is None:
                yield Held(wait, False)
                return
            try:
                yield Held(True, True)
            finally:
                if token is not _LOCAL_ONLY:
                    await self._release(name, str(token))

    async def _take(self, name: str, deadline: float) -> Any:
        """The token of the Redis lock ``name`` (``_LOCAL_ONLY`` while Redis
        cannot take locks), or ``None`` when it is held elsewhere past ``deadline``."""
        connection = self.connection
        token = lock_token()
        lifetime = self.backend.lock_timeout
        lifetime_ms = max(1, int(lifetime * 1000))

        async def attempt(client: Any) -> bool | None:
            if await client.set(name, token, nx=True, px=lifetime_ms):
                return True
            holder = await client.get(name)
            if holder is None:
                return None  # released meanwhile: try again at once
            holder = text(holder)
            if holder == token:
                return True  # our own SET, whose first reply was lost
            if connection.is_abandoned(name, holder):
                await client.eval(_RELEASE, 1, name, holder)
                return None
            return False

        while True:
            tried = connection.breaker.up

            def unsure(tried: bool = tried) -> object:
                if tried:  # the SET may have landed or may still land
                    connection.abandon_lock(name, token, lifetime)
                return _LOCAL_ONLY

            try:
                result = await aguard(connection, "lock", attempt, unsure, stats=self.stats)
            except asyncio.CancelledError:
                unsure()  # cancelled mid-command: our SET may land; a waiter here takes it over
                raise
            if result is None:
                continue
            if result is _LOCAL_ONLY:
                return _LOCAL_ONLY
            if result is True:
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(LOCK_POLL_INTERVAL, remaining))

    async def _release(self, name: str, token: str) -> None:
        connection = self.connection
        released = await aguard(
            connection, "unlock", lambda c: c.eval(_RELEASE, 1, name, token),
            lambda: connection.abandon_lock(name, token, self.backend.lock_timeout),
        )
        if released == 0:
            lock_expired(name)

