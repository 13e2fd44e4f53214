"""Region invalidation shared by every process that uses one Redis and prefix.

dogpile's :meth:`~dogpile.cache.region.CacheRegion.invalidate` only marks the
calling process's region. Here an invalidation is a time stamp per
namespace and kind (hard or soft), stored in the hash
``{prefix}::librecache:invalidations`` and announced on the channel of the
same name. Each registry keeps the marks in memory, so checking a value
(which dogpile does on every read) costs no round trip: a listener thread
applies announcements as they arrive, and reloads the hash whenever it
(re)subscribes, so an announcement missed while disconnected is not lost.

Tags' invalidations (:mod:`librecache.tags`) travel the same way: the
sorted set and channel ``{prefix}::librecache:tags``, kept in the bus's
:class:`~librecache.tags.TagBook`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from dogpile.cache.region import RegionInvalidationStrategy

from . import forks
from .keyspace import KeySpace
from .logs import RateLimitedLog
from .namespaces import AnyNamespace
from .nearcache import NearCache, decode_drop, encode_drop
from .replies import text
from .tags import TagBook

__all__ = ["InvalidationBus", "SharedInvalidation"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

# Keep the larger of the stored and the new time stamp.
_RAISE_MARK = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

#: Longest pause between two attempts to reach Redis from the listener.
MAX_LISTENER_BACKOFF = 2.0


class SharedInvalidation(RegionInvalidationStrategy):
    """The invalidation strategy of one Redis region; see the module."""

    def __init__(self, bus: InvalidationBus, namespace: AnyNamespace) -> None:
        self._bus = bus
        self.namespace = namespace
        #: Time stamps of the latest hard and soft invalidation (0: none).
        self.hard = 0.0
        self.soft = 0.0
        #: Values created before this time are invalidated (hard or soft:
        #: ``is_invalidated(t)`` is ``t < valid_from`` once the marks are
        #: read); infinite while they are not, so that a reader that
        #: compares this one number (the hit path) judges nothing fresh
        #: before then. Kept by the bus, with the near cache's.
        self.valid_from = math.inf

    @property
    def bus(self) -> InvalidationBus:
        """The registry's bus these marks come from."""
        return self._bus

    def invalidate(self, hard: bool = True) -> None:
        self._bus.invalidate(self.namespace, hard)

    def is_invalidated(self, timestamp: float) -> bool:
        if not self._bus.loaded:
            self._bus.load()
        return timestamp < self.hard or timestamp < self.soft

    def is_hard_invalidated(self, timestamp: float) -> bool:
        if not self._bus.loaded:
            self._bus.load()
        return timestamp < self.hard

    def is_soft_invalidated(self, timestamp: float) -> bool:
        if not self._bus.loaded:
            self._bus.load()
        return timestamp < self.soft and self.soft > self.hard

    def was_hard_invalidated(self) -> bool:
        return self.hard > 0 and self.hard >= self.soft

    def invalidated_before(self) -> float:
        """The time stamp before which values are invalidated, hard or soft
        (``is_invalidated(t)`` is ``t < invalidated_before()``); 0: none."""
        if not self._bus.loaded:
            self._bus.load()
        return max(self.hard, self.soft)

    def was_soft_invalidated(self) -> bool:
        return self.soft > self.hard


class InvalidationBus:
    """The invalidation marks of one registry, kept current from Redis.

    :param connection: the registry's :class:`~librecache.guard.RedisConnection`.
    :param keyspace: the deployment's key names.

    While Redis is unavailable an invalidation takes effect here at once and
    is announced when Redis is back.
    """

    def __init__(self, connection: Any, keyspace: KeySpace) -> None:
        self._connection = connection
        self.key = self.channel = keyspace.internal("invalidations")
        self.near_channel = keyspace.internal("near")
        self.tags_key = self.tags_channel = keyspace.internal("tags")
        #: The tags' invalidation times, live while the listener is subscribed.
        self.tag_book = TagBook(connection.config.tag_retention_seconds)
        self._pending_tags: dict[str, float] = {}
        #: This registry's name on the near-cache channel (its own messages are skipped).
        self.origin = uuid.uuid4().hex
        self.near_caches: dict[str, NearCache] = {}
        self._strategies: dict[str, SharedInvalidation] = {}
        self._ignored_soft: set[str] = set()  # namespaces whose stored soft mark was ignored (logged once)
        self._pending: dict[str, float] = {}
        connection.on_recovery.append(self._announce_pending)
        connection.on_overflow.append(self._invalidate_all)
        connection.on_master_switch.append(self._resubscribe)
        self._master_moved = False
        self.loaded = False
        self._retry_at = 0.0
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ping_sent = False
        #: The listener's subscription while it has one (close() shuts its socket).
        self._pubsub: Any = None
        #: Whether a listener should run (start() was called, close() was not).
        self._wanted = False
        forks.register(self)

    def _after_fork(self) -> None:
        """In a forked child: a name of its own on the near-cache channel (the
        parent's announcements are another process's), new locks and events,
        no listener (the first read starts the child's own), and the stored
        marks are read again before the child trusts a cached value."""
        self.origin = uuid.uuid4().hex
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        closed = self._stop.is_set()
        self._stop = threading.Event()
        if closed:
            self._stop.set()
        self._thread = None
        self._pubsub = None
        self._ping_sent = False
        self.loaded = False
        self._retry_at = 0.0
        self.tag_book.lost()  # until the child's own listener has read the record
        self._mark()

    def strategy(self, namespace: AnyNamespace) -> SharedInvalidation:
        """The strategy of ``namespace``'s region (one per namespace)."""
        strategy = self._strategies.get(namespace.value)
        if strategy is None:
            strategy = self._strategies[namespace.value] = SharedInvalidation(self, namespace)
            self._mark(namespace.value)
        return strategy

    def near_cache(self, namespace: AnyNamespace, max_entries: int) -> NearCache:
        """The near cache of ``namespace`` (created once); it serves only
        while this bus is subscribed."""
        near = self.near_caches.get(namespace.value)
        if near is None:
            near = self.near_caches[namespace.value] = NearCache(namespace.value, max_entries, self.tag_book)
            self._mark(namespace.value)
        return near

    def _mark(self, namespace: str | None = None) -> None:
        """Set the ``valid_from`` of ``namespace``'s strategy and near cache
        (of every namespace's if ``None``) to the latest of its marks,
        hard or soft; infinite while the marks are not read."""
        names = set(self._strategies) | set(self.near_caches) if namespace is None else {namespace}
        for name in names:
            strategy = self._strategies.get(name)
            valid_from = math.inf if not self.loaded else \
                max(strategy.hard, strategy.soft) if strategy is not None else 0.0
            if strategy is not None:
                strategy.valid_from = valid_from
            near = self.near_caches.get(name)
            if near is not None:
                near.valid_from = valid_from

    def publish_drop(self, namespace: AnyNamespace, keys: Iterable[str]) -> None:
        """Tell every other instance to drop its near copy of ``keys``."""
        message = self.drop_message(namespace, keys)
        self._connection.guard("near-cache drop", lambda client: client.publish(self.near_channel, message),
                               lambda: None)

    def drop_message(self, namespace: AnyNamespace, keys: Iterable[str]) -> str:
        """The message of :meth:`publish_drop` (on :attr:`near_channel`)."""
        return encode_drop(self.origin, namespace.value, keys)

    def _near_message(self, data: Any) -> None:
        decoded = decode_drop(text(data))
        if decoded is None:
            return
        origin, namespace, keys = decoded
        near = self.near_caches.get(namespace)
        if near is not None and origin != self.origin:
            near.drop(keys)

    def _near_serving(self, enabled: bool) -> None:
        for near in self.near_caches.values():
            near.clear(enabled, keep_spares=not enabled)  # a lost channel: kept for the fail-safe only

    def start(self) -> None:
        """Start the listener thread (once)."""
        with self._lock:
            self._wanted = True
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._listen, name=f"librecache-invalidations[{self.channel}]", daemon=True
                )
                self._thread.start()

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the listener is subscribed; True if it is."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        """Tell the listener thread to end, without waiting: its
        subscription's socket is shut down, which wakes it even when Redis
        hangs (it is a daemon and ends by itself)."""
        self._stop.set()
        pubsub = self._pubsub
        connection = getattr(pubsub, "connection", None)
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:  # the listener may be closing it at the same time
                pass

    def close(self, timeout: float = 1.0) -> None:
        """:meth:`stop`, then wait for the listener ``timeout`` seconds at most."""
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    # -- marks ------------------------------------------------------------

    def _note(self, field: str, stamp: float) -> None:
        namespace, _, kind = field.rpartition(":")
        strategy = self._strategies.get(namespace)
        if strategy is None or kind not in ("hard", "soft"):
            return
        if kind == "soft" and self._connection.config.ttl(strategy.namespace) is None:
            # stored by a version that did not refuse it; applied, every read would raise
            if namespace not in self._ignored_soft:
                self._ignored_soft.add(namespace)
                log.warning(
                    "namespace %s: ignoring a soft invalidation mark stored in Redis (the namespace has no "
                "expiration time, so soft invalidation cannot apply; an older version stored it)", namespace,
                )
            return
        if stamp > getattr(strategy, kind):
            setattr(strategy, kind, stamp)
            self._mark(namespace)

    def invalidate(self, namespace: AnyNamespace, hard: bool) -> None:
        """Invalidate ``namespace`` everywhere: here at once, in the other
        processes when the announcement reaches them (milliseconds), and in
        processes started later through the stored marks."""
        field = f"{namespace.value}:{'hard' if hard else 'soft'}"
        stamp = time.time()
        self._note(field, stamp)
        self._pending[field] = stamp
        self._connection.guard("invalidate", lambda client: self._announce(client), lambda: None)

    def _invalidate_all(self, namespaces: set[AnyNamespace]) -> None:
        """Hard-invalidate ``namespaces`` (too many lost writes to remember)."""
        for namespace in namespaces:
            self.invalidate(namespace, hard=True)

    def _announce(self, client: Any) -> None:
        """Store and publish the marks not announced yet. Stored first: a
        process that subscribes in between reads the stored marks once
        subscribed, so it cannot miss both. Published even when the store
        failed: a full Redis refuses the stored mark but still delivers the
        message (the mark stays pending, and is stored when this is retried)."""
        for field, stamp in list(self._pending.items()):
            try:
                client.eval(_RAISE_MARK, 1, self.key, field, repr(stamp))
            finally:
                client.publish(self.channel, f"{field}={stamp!r}")
            if self._pending.get(field) == stamp:
                del self._pending[field]

    def _announce_pending(self) -> None:
        client = self._connection.client
        if self._pending and client is not None:
            self._announce(client)
        if self._pending_tags and client is not None:
            self.announce_tags(client)

    # -- tags ---------------------------------------------------------------

    def invalidate_tags(self, tags: tuple[str, ...]) -> None:
        """Invalidate ``tags`` here at once, and record them to announce
        (:meth:`announce_tags`; pending while Redis is away, announced when
        it is back)."""
        stamp = time.time()
        self.tag_book.invalidated(tags, stamp)
        for tag in tags:
            self._pending_tags[tag] = stamp

    def pending_tags(self) -> dict[str, float]:
        """The tags invalidated here and not announced yet (tag -> time)."""
        return dict(self._pending_tags)

    def tag_commands(self, pending: dict[str, float]) -> tuple[list[tuple[str, tuple[Any, ...], dict[str, Any]]],
                                                                tuple[str, str]]:
        """What announces ``pending`` (tag -> time): the stored record's
        commands (the times raised, records past the retention dropped, the
        set's own expiry renewed), and the message to publish, as
        ``(method name, arguments, keywords)`` of redis-py's clients, sync or async."""
        retention = self.tag_book.retention
        horizon = time.time() - retention
        stores: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("zadd", (self.tags_key, pending), {"gt": True}),
            ("zremrangebyscore", (self.tags_key, "-inf", f"({horizon!r}"), {}),
            ("expire", (self.tags_key, max(1, math.ceil(retention))), {}),
        ]
        return stores, (self.tags_channel, json.dumps({"tags": pending}))

    def announce_tags(self, client: Any) -> None:
        """Store and publish the pending tags (sync client). Published even
        when the store failed, as :meth:`_announce` does."""
        pending = self.pending_tags()
        if not pending:
            return
        stores, message = self.tag_commands(pending)
        try:
            for method, arguments, keywords in stores:
                getattr(client, method)(*arguments, **keywords)
        finally:
            client.publish(*message)
        self.tags_announced(pending)

    def tags_announced(self, pending: dict[str, float]) -> None:
        """``pending`` reached Redis: no longer pending, unless invalidated again meanwhile."""
        for tag, stamp in pending.items():
            if self._pending_tags.get(tag) == stamp:
                del self._pending_tags[tag]

    def _load_tags(self, client: Any) -> None:
        """Read the stored record into the book, which is live from then on."""
        horizon = time.time() - self.tag_book.retention
        stored = client.zrangebyscore(self.tags_key, horizon, "+inf", withscores=True)
        self.tag_book.load((text(tag), float(stamp)) for tag, stamp in stored)

    def _tag_message(self, data: Any) -> None:
        try:
            announced = json.loads(text(data))["tags"]
            items = [(str(tag), float(stamp)) for tag, stamp in announced.items()]
        except Exception:  # not ours: ignored, as a foreign near-cache message is
            limited.warning("tag-message", "ignoring a malformed message on %s", self.tags_channel)
            return
        for tag, stamp in items:
            self.tag_book.invalidated((tag,), stamp)

    def load(self, force: bool = False) -> None:
        """Read the stored marks, once (again when ``force``). While Redis
        fails, readers try again at most once a second."""
        forks.check()
        with self._load_lock:
            if self._wanted and self._thread is None:
                self.start()  # first read in a forked child
            if not force and not self.load_due():
                return
            try:
                client = self._connection.client
                if client is None:
                    raise ConnectionError("Redis is not reachable")
                stored = client.hgetall(self.key)
            except Exception as exc:
                self.load_failed(exc)
                return
            self.apply_stored(stored)

    def apply_stored(self, stored: dict[Any, Any]) -> None:
        """Take the marks read from the hash :attr:`key` (``HGETALL``), by
        :meth:`load` or its asyncio twin."""
        for field, value in stored.items():
            self._note(text(field), float(value))
        self.loaded = True
        self._mark()

    def load_failed(self, exc: BaseException) -> None:
        """Reading the stored marks failed: readers try again in a second."""
        self._retry_at = time.monotonic() + 1.0
        limited.warning("load", "cannot read invalidation marks from Redis: %s", exc)

    def load_due(self) -> bool:
        """Whether a reader should read the stored marks now (not loaded yet,
        and no failed attempt in the last second)."""
        return not self.loaded and time.monotonic() >= self._retry_at

    # -- the listener -----------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self._connection.client
                if client is None:
                    raise ConnectionError("Redis is not reachable")
                pubsub = self._pubsub = client.pubsub()
                # the tags' record is read first, then the marks (subscribed from then on), then near copies serve
                pubsub.subscribe(self.tags_channel, self.channel, self.near_channel)
                last_heard = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if self._master_moved:
                        self._master_moved = False
                        raise ConnectionError("Sentinel moved the master; subscribing there")
                    if message is None:
                        self._keep_alive(pubsub, last_heard)
                        continue
                    last_heard = time.monotonic()
                    self._ping_sent = False
                    channel = text(message.get("channel"))
                    if message["type"] == "subscribe" and channel == self.tags_channel:
                        self._load_tags(client)
                    elif message["type"] == "message" and channel == self.tags_channel:
                        self._tag_message(message["data"])
                    elif message["type"] == "subscribe" and channel == self.near_channel:
                        self._near_serving(True)
                    elif message["type"] == "subscribe":
                        self.load(force=True)
                        self._subscribed.set()
                        backoff = 0.05
                    elif message["type"] == "message" and channel == self.near_channel:
                        self._near_message(message["data"])
                    elif message["type"] == "message":
                        field, _, stamp = text(message["data"]).partition("=")
                        self._note(field, float(stamp))
            except Exception as exc:
                self._near_serving(False)  # a lost channel must never mean stale reads
                self.tag_book.lost()
                self._subscribed.clear()
                if not self._stop.is_set():
                    limited.warning("listen", "invalidation channel lost (%s); reconnecting", exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_LISTENER_BACKOFF)
            finally:
                if self._stop.is_set():
                    self._near_serving(False)
                    self.tag_book.lost()
                if pubsub is not None:
                    self._pubsub = None
                    try:
                        pubsub.close()
                    except Exception:
                        pass


    def _resubscribe(self) -> None:
        """Subscribe again (on the new master, after a Sentinel failover)."""
        self._master_moved = True

    def _keep_alive(self, pubsub: Any, last_heard: float) -> None:
        """With REDIS_PING_INTERVAL, PING the subscription when it has been
        quiet that long; no answer within the reply time-out drops it (the
        listener then reconnects and reloads the marks)."""
        config = self._connection.config
        interval = config.ping_interval
        if interval <= 0:
            return
        quiet = time.monotonic() - last_heard
        if quiet >= interval + config.socket_timeout and self._ping_sent:
            self._ping_sent = False
            raise TimeoutError(f"no answer to a keep-alive PING within {config.socket_timeout:g} s")
        if quiet >= interval and not self._ping_sent:
            pubsub.ping()
            self._ping_sent = True

