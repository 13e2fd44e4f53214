"""The asyncio door of a Redis namespace: the same keys, bytes, locks and
circuit breaker as :class:`~librecache.backends.redis.RedisBackend`, through
a :mod:`redis.asyncio` client.

- :class:`AsyncClients`: one asyncio client per event loop for a
  registry's :class:`~librecache.guard.RedisConnection`, built by
  :func:`librecache.clients.async_client` from the same configuration as
  the sync client, created on first use in a loop and closed when that loop
  shuts down (``asyncio.run``'s ``shutdown_asyncgens``) or with the registry.
- :func:`aguard`: :meth:`RedisConnection.guard <librecache.guard.RedisConnection.guard>`
  for coroutines, sharing its breaker, its classification of errors, its
  counters and strict mode. Recovery is the sync maintenance thread's job,
  which every registry runs, so an async-only service reconnects too.
- :class:`AsyncRedisStore`: the async door's port of one namespace (reads,
  writes, deletes, creation locks and leases), made of the backend's own
  pieces: its key names, its signing (``sealed``/``opened``), its expiry
  (``expires_after_ms``), its scripts and lock keys
  (:meth:`KeySpace.lock <librecache.keyspace.KeySpace.lock>`), the
  remembered deletes, the near cache and its drop messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from ..clients import async_client
from ..config import CacheConfig
from ..engine.background import AsyncJobs
from ..engine.flows import ANY, CHANGED, Found, LockReply
from ..engine.judge import reads_bytes
from ..engine.locks import AsyncKeyedLocks
from ..engine.policy import PLAIN, Policy
from ..engine.ports import created, found_of, hit_judgement, judged, near_expiry, stored_hit
from ..guard import RedisConnection, demoted, limited
from ..health import OUTAGE, classify
from .redis import (
    READ_OR_LOCK,
    RELEASE,
    SET_AND_REVOKE,
    STORE_AND_RELEASE,
    RedisBackend,
    ascripts_pipelined,
    lost_lease,
)

__all__ = ["AsyncClients", "AsyncRedisStore", "aclose_clients", "aguard", "close_clients"]

log = logging.getLogger(__name__)

_FAILED = object()
_AGAIN = object()  # a shared read's first reader was cancelled: read again


def _nothing() -> None:
    """What a read that fell through found."""


def _failed() -> bool:
    """What a write that fell through did."""
    return False


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
    """:meth:`RedisConnection.guard <librecache.guard.RedisConnection.guard>`
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
            if not demoted(exc):
                raise
            limited.warning("readonly", "READONLY reply during %s: reconnecting to the current master", operation)
            await _reset(client)
            return await action(client)
    except Exception as exc:
        connection.failed(exc, operation, write, stats)
        return fallback()


async def apublish(client: Any, channel: str, message: str) -> Any:
    """``PUBLISH`` through an asyncio client. redis-py's asyncio
    ``RedisCluster`` has no ``publish()`` before 5.2 (the floor is 5.1): the
    command then goes to any node, which relays it to the whole cluster."""
    publish = getattr(client, "publish", None)
    if publish is not None:
        return await publish(channel, message)
    return await client.execute_command("PUBLISH", channel, message, target_nodes=client.get_random_node())


async def aannounce_tags(connection: RedisConnection, bus: Any) -> None:
    """:meth:`InvalidationBus.announce_tags
    <librecache.invalidation.InvalidationBus.announce_tags>` on the running
    loop's client; what fails stays pending (announced when Redis is back)."""
    pending = bus.pending_tags()
    if not pending:
        return
    stores, message = bus.tag_commands(pending)

    async def announce(client: Any) -> bool:
        try:
            for method, arguments, keywords in stores:
                await getattr(client, method)(*arguments, **keywords)
        finally:
            await apublish(client, *message)
        return True

    if await aguard(connection, "invalidate tags", announce, lambda: False):
        bus.tags_announced(pending)


async def _reset(client: Any) -> None:
    """Forget the connections (and a cluster's map) of an asyncio client."""
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        await manager.initialize()
    else:
        await client.connection_pool.disconnect(inuse_connections=False)


# --------------------------------------------------------------------------
# Shared reads
# --------------------------------------------------------------------------


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


class AsyncRedisStore(AsyncJobs):
    """The async door's port of a Redis namespace (see
    :mod:`librecache.engine.ports`): the same keys, bytes, scripts, locks
    and leases as the sync door's :class:`~librecache.engine.ports.RedisPort`,
    through the running loop's :mod:`redis.asyncio` client; and the
    awaitable region calls' reads, writes and deletes."""

    def __init__(self, region: Any, backend: RedisBackend) -> None:
        self.region = region
        self.backend = backend
        self.connection = backend.connection
        self.stats = backend.stats
        self.near = backend.near[0] if backend.near is not None else None
        self.bus = getattr(region.region_invalidator, "bus", None)
        self.clients = clients_of(self.connection)
        self.invalidation, self.pickled = hit_judgement(region)
        self.budget: float | None = self.connection.call_budget
        #: This loop's creation queue per key (tasks).
        self.queues = AsyncKeyedLocks()
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
        (the sync door does it on its first read; here without blocking)."""
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

    def raw_reads(self) -> bool:
        """Whether :meth:`read_multi`'s bytes are judged as they are
        (:func:`librecache.engine.judge.reads_bytes`)."""
        return reads_bytes(self.region)

    async def _stored(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` (a shared read), or ``None``."""
        return await aguard(self.connection, "get", lambda c: self._shared_get(c, key), _nothing,  # type: ignore[no-any-return]
                            stats=self.stats, clients=self.clients)

    async def hit(self, key: str, timeout: float | None, policy: Policy = PLAIN) -> Any:
        """:meth:`RedisPort.hit <librecache.engine.ports.RedisPort.hit>`, awaited."""
        if self.marks_due():
            await self.marks()
        near = self.near
        if near is not None and near.enabled:
            expires = self.region.expiration_time if timeout is None else timeout
            payload = near.fetch(key, expires if policy.plain_hit else near_expiry(expires, policy))
            if payload is not NO_VALUE:
                return payload
            generation = near.generation
            found = await self.read(key)
            if isinstance(found.value, CachedValue):
                near.store(key, found.value, generation)
            return judged(self.region, found, timeout, policy, key)
        return stored_hit(self, key, await self._stored(key), timeout, policy)

    async def spare(self, key: str) -> Any:
        """:meth:`RedisPort.spare <librecache.engine.ports.RedisPort.spare>`."""
        near = self.near
        return NO_VALUE if near is None else near.spare(key)

    async def read(self, key: str) -> Found:
        if self.connection.is_pending(key):
            return Found(NO_VALUE, ANY)
        return found_of(self, key, await self._stored(key))

    async def read_many(self, keys: list[str]) -> list[Found]:
        stored = await aguard(self.connection, "mget", lambda client: self._mget_all(client, keys),
                              lambda: [None] * len(keys), stats=self.stats)
        return [found_of(self, key, raw) for key, raw in zip(keys, stored, strict=True)]

    async def read_multi(self, keys: list[str]) -> list[Any]:
        """The bytes stored under each of ``keys`` as the region parses them
        (checked for a lost write and a signature), or ``NO_VALUE``: one
        ``MGET`` (one per slot on a cluster)."""
        raws = await aguard(self.connection, "mget", lambda client: self._mget_all(client, keys),
                            lambda: [None] * len(keys), stats=self.stats)
        connection, backend = self.connection, self.backend
        return [NO_VALUE if connection.is_pending(key) else backend.opened(key, raw)
                for key, raw in zip(keys, raws, strict=True)]

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

    async def _mget_all(self, client: Any, keys: list[str]) -> list[bytes | None]:
        """``MGET`` of ``keys`` (one per slot on a cluster)."""
        return list(await (client.mget_nonatomic(keys) if self.backend.cluster else client.mget(keys)))

    async def get(self, key: str) -> Any:
        """The value under ``key`` as dogpile's :class:`CachedValue` (or
        ``NO_VALUE``), its near copy first when the namespace has a near cache."""
        near = self.near
        generation = 0
        if near is not None and near.enabled:
            value = near.lookup(key, self.region.expiration_time)
            if value is not NO_VALUE:
                return value
            generation = near.generation
        value = (await self.read(key)).value
        if near is not None and near.enabled and isinstance(value, CachedValue):
            near.store(key, value, generation)
        return value

    async def get_multi(self, keys: list[str]) -> list[Any]:
        """The values under ``keys`` as dogpile's :class:`CachedValue` (or
        ``NO_VALUE``), near copies first when the namespace has a near cache."""
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
            for key, got in zip(missing, await self.read_many(missing), strict=True):
                value = found[key] = got.value
                if near is not None and near.enabled and isinstance(value, CachedValue):
                    near.store(key, value, generation)
        return [found[key] for key in keys]

    # -- writes -------------------------------------------------------------

    def _bytes(self, key: str, value: CachedValue) -> bytes:
        return self.backend.sealed(key, self.region.serialized(value))

    async def set(self, key: str, value: CachedValue) -> None:
        keys, args = (key, self.backend.keyspace.lock(key)), (self._bytes(key, value),
                                                              self.backend.expires_after_ms or "")
        await self._write("set", [key], lambda client: SET_AND_REVOKE.acall(client, keys, args))

    async def set_multi(self, mapping: Mapping[str, CachedValue]) -> None:
        if not mapping:
            return
        sealed = {key: self._bytes(key, value) for key, value in mapping.items()}

        async def write(client: Any) -> bool:
            await self.backend.write_pipeline(client, sealed).execute()
            return True

        await self._write("set_multi", list(sealed), write)

    async def delete_multi(self, keys: list[str]) -> None:
        if keys:  # redis-py's cluster client splits DEL per slot; a lock shares its value's slot
            doomed = self.backend.revoking(keys)

            async def delete(client: Any) -> bool:
                await client.delete(*doomed)
                return True

            await self._write("delete", keys, delete)

    async def _write(self, operation: str, keys: list[str], action: Callable[[Any], Awaitable[Any]]) -> None:
        """:meth:`RedisBackend._write`: a write that failed or was dropped
        leaves no older value to be served."""
        self._land(keys)
        written = await aguard(self.connection, operation, action, _failed, write=True, stats=self.stats)
        self._land(keys)  # and reads sent while it was in flight
        await self._written(keys, written is not False)
        await self._changed(keys)

    async def _written(self, keys: list[str], written: bool) -> None:
        """After a write of ``keys``: no delete of them waits any more, or
        (not written) :meth:`RedisConnection.discard`, without blocking the loop."""
        connection = self.connection
        if written:
            connection.written(keys)
            return
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
        await aguard(self.connection, "near-cache drop", lambda c: apublish(c, bus.near_channel, message),
                     lambda: None)

    # -- creation locks and leases (the flows' requests) ----------------------

    async def queue(self, key: str, wait: bool, deadline: float | None) -> Any:
        return await self.queues.acquire(key, wait, deadline)

    async def dequeue(self, key: str, handle: Any) -> None:
        self.queues.release(key, handle)

    async def try_lock(self, key: str, seen: Any) -> LockReply:
        attempt = self.backend.lock_attempt(key, seen)
        try:
            reply = await aguard(self.connection, "lock",
                                 lambda client: READ_OR_LOCK.acall(client, attempt.keys, attempt.args),
                                 attempt.unsure, stats=self.stats)
        except asyncio.CancelledError:
            attempt.unsure()  # cancelled mid-command: our SET may land; a waiter here breaks it
            raise
        answer = attempt.reply(reply)
        if answer.state is CHANGED:
            return answer._replace(current=found_of(self, key, answer.current))
        return answer

    async def break_lock(self, key: str, holder: str) -> None:
        keys, args = (self.backend.keyspace.lock(key),), (holder,)
        await aguard(self.connection, "unlock", lambda client: RELEASE.acall(client, keys, args), _nothing,
                     stats=self.stats)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def create(self, creator: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return await created(creator, args, kwargs)

    async def store(self, key: str, value: CachedValue, lease: str) -> bool:
        """:meth:`RedisBackend.store_leased`, awaited."""
        backend, connection = self.backend, self.connection
        try:
            sealed = self._bytes(key, value)
        except BaseException:
            await self.release(key, lease)
            raise
        name = backend.keyspace.lock(key)
        keys, args = (key, name), (sealed, lease, backend.expires_after_ms or "")
        near = self.near
        generation = 0
        if near is not None:  # the copy here is older whatever happens
            near.drop([key])
            generation = near.generation
        self._land([key])
        stored = await aguard(connection, "set", lambda client: STORE_AND_RELEASE.acall(client, keys, args),
                              _failed, write=True, stats=self.stats)
        self._land([key])
        if stored is False:  # the script may have run or not: no older value is served, the lock is broken here
            connection.abandon_lock(name, lease, backend.lock_timeout)
            await self._written([key], False)
            return False
        if not stored:
            lost_lease(name, value.metadata["ct"], backend.lock_timeout)
            return False
        connection.written([key])
        if near is not None:
            near.store(key, self.region.near_copy(value), generation)
            await self._changed([key])
        return True

    async def store_many(self, items: list[tuple[str, CachedValue, str]]) -> list[bool]:
        """:meth:`RedisBackend.store_many`, awaited."""
        backend, connection = self.backend, self.connection
        try:
            calls = [((key, backend.keyspace.lock(key)), (self._bytes(key, value), lease,
                                                          backend.expires_after_ms or ""))
                     for key, value, lease in items]
        except BaseException:
            for key, _, lease in items:
                await self.release(key, lease)
            raise
        keys = [key for key, _, _ in items]
        self._land(keys)
        replies = await aguard(connection, "set_multi",
                               lambda client: ascripts_pipelined(client, STORE_AND_RELEASE, calls, backend.cluster),
                               _failed, write=True, stats=self.stats)
        self._land(keys)
        if replies is False:
            for key, _, lease in items:
                connection.abandon_lock(backend.keyspace.lock(key), lease, backend.lock_timeout)
            await self._written(keys, False)
            return [False] * len(items)
        stored = [reply == 1 for reply in replies]
        for (key, value, _), ok in zip(items, stored, strict=True):
            if not ok:
                lost_lease(backend.keyspace.lock(key), value.metadata["ct"], backend.lock_timeout)
        kept = [key for key, ok in zip(keys, stored, strict=True) if ok]
        connection.written(kept)
        await self._changed(kept)
        return stored

    async def release(self, key: str, lease: str) -> None:
        connection, name = self.connection, self.backend.keyspace.lock(key)
        keys, args = (name,), (lease,)
        await aguard(connection, "unlock", lambda client: RELEASE.acall(client, keys, args),
                     lambda: connection.abandon_lock(name, lease, self.backend.lock_timeout))

    def locked(self, key: str) -> bool:
        return self.queues.locked(key) or bool(self.backend.locked(key))
