"""The Redis dogpile backend: one class for a single server and a cluster."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, BytesBackend, CacheMutex, SerializedReturnType
from redis.exceptions import ConnectionError, LockError
from redis.lock import Lock

from ..connection import RedisConnection
from ..keying import KeySpace
from ..keys import CacheKeys
from ..logs import RateLimitedLog
from ..nearcache import NearCache
from ..signing import Signer
from . import take_arguments
from .memory import check_picklable

__all__ = ["RedisBackend", "RedisMutex"]

log = logging.getLogger(__name__)

#: How often a process waiting for another's creation lock looks again.
LOCK_POLL_INTERVAL = 0.02
#: Keys per SCAN step and per UNLINK pipeline.
SCAN_BATCH = 1000


class RedisMutex(CacheMutex):
    """The creation lock of one key: a thread lock, then a Redis lock.

    Threads of one process queue on the thread lock, so only one of them
    polls Redis; processes meet at the Redis lock, which expires after the
    lock timeout so that a killed holder cannot block the key for ever.
    While Redis is unavailable the thread lock alone serves.
    """

    def __init__(self, connection: RedisConnection, name: str, timeout: float) -> None:
        self._local = threading.Lock()
        self._connection = connection
        self._name = name
        self._timeout = timeout
        self._redis: Lock | None = None

    def acquire(self, wait: bool = True) -> bool:
        if not self._local.acquire(wait):
            return False

        def take(client: Any) -> bool:
            lock = client.lock(self._name, timeout=self._timeout, sleep=LOCK_POLL_INTERVAL, thread_local=False)
            if lock.acquire(blocking=wait):
                self._redis = lock
                return True
            return False

        try:
            acquired = bool(self._connection.guard("lock", take, lambda: True))
        except BaseException:
            self._local.release()
            raise
        if not acquired:
            self._local.release()
        return acquired

    def release(self) -> None:
        lock, self._redis = self._redis, None
        try:
            if lock is not None:
                self._connection.guard("unlock", lambda client: lock.release(), lambda: None)
        except LockError:
            log.warning(
                "creation lock %s expired before the value was stored; "
                "raise LIBRECACHE_LOCK_TIMEOUT if creating values takes that long", self._name,
            )
        finally:
            self._local.release()

    def locked(self) -> bool:
        return self._local.locked()


class RedisBackend(BytesBackend):
    """Values of one namespace in Redis, under ``{prefix}::{NAMESPACE}:``.

    Arguments (all required but ``expires_after`` and ``signer``):

    - ``connection``: the registry's :class:`~librecache.connection.RedisConnection`;
    - ``keyspace``: the deployment's :class:`~librecache.keying.KeySpace`;
    - ``namespace``: the :class:`~librecache.CacheKeys` member;
    - ``expires_after``: server-side expiry of every key written, seconds,
      or ``None``;
    - ``lock_timeout``: lifetime of a creation lock, seconds;
    - ``signer``: a :class:`~librecache.signing.Signer`, or ``None``.

    Every operation goes through the connection's guard: while Redis is
    unavailable, reads are misses, writes are dropped and deletes are
    replayed when it is back (unless LIBRECACHE_STRICT).

    Multi-key operations never send a command across cluster slots: reads
    and deletes send one ``MGET``/``DEL`` per slot, writes a pipeline of
    ``SET`` commands (grouped per node by redis-py).
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        args = take_arguments(
            "librecache.redis", arguments,
            {"connection", "keyspace", "namespace", "lock_timeout"}, {"expires_after", "signer", "near"},
        )
        self.connection: RedisConnection = args["connection"]
        self.cluster = self.connection.cluster
        self.keyspace: KeySpace = args["keyspace"]
        self.namespace: CacheKeys = args["namespace"]
        self.lock_timeout = float(args["lock_timeout"])
        self.signer: Signer | None = args.get("signer")
        #: (near cache, publish(namespace, keys)) when the namespace has one.
        self.near: tuple[NearCache, Callable[[CacheKeys, list[str]], None]] | None = args.get("near")
        expires = args.get("expires_after")
        self.expires_after_ms: int | None = max(1, int(expires * 1000)) if expires else None
        self.key_mangler = self.keyspace.mangler(self.namespace)
        self._limited = RateLimitedLog(log)

    @property
    def client(self) -> Any:
        """The registry's client (``None`` while a cluster is unreachable)."""
        return self.connection.client

    # dogpile takes the region's serializer from the backend
    def serializer(self, payload: Any) -> bytes:  # type: ignore[override]
        return check_picklable(payload, f"namespace {self.namespace.value}")

    # -- signing ------------------------------------------------------------------

    def _sealed(self, key: str, value: bytes) -> bytes:
        return self.signer.sign(key, value) if self.signer is not None else value

    def _opened(self, key: str, value: bytes | None) -> SerializedReturnType:
        if value is None:
            return NO_VALUE
        if self.signer is None:
            return value
        payload = self.signer.verify(key, value)
        if payload is None:
            self._limited.warning(
                "unsigned",
                "namespace %s: a value that is not validly signed was found under %s; "
                "treated as a miss and never unpickled", self.namespace.value, key,
            )
            return NO_VALUE
        return payload

    # -- reads --------------------------------------------------------------------

    def get_serialized(self, key: str) -> SerializedReturnType:
        return self._opened(key, self.connection.guard("get", lambda c: c.get(key), lambda: None))

    def get_serialized_multi(self, keys: Iterable[str]) -> Sequence[SerializedReturnType]:
        keys = list(keys)
        if not keys:
            return []

        def read(client: Any) -> list[bytes | None]:
            return list(client.mget_nonatomic(keys) if self.cluster else client.mget(keys))

        values = self.connection.guard("mget", read, lambda: [None] * len(keys))
        return [self._opened(key, value) for key, value in zip(keys, values, strict=True)]

    # -- writes -------------------------------------------------------------------

    def _changed(self, keys: list[str]) -> None:
        """Other instances drop their near copies of ``keys``; so does this one
        (the region then keeps the value it just wrote)."""
        if self.near is not None:
            near, publish = self.near
            near.drop(keys)
            publish(self.namespace, keys)

    def set_serialized(self, key: str, value: bytes) -> None:
        sealed = self._sealed(key, value)
        self.connection.guard("set", lambda c: c.set(key, sealed, px=self.expires_after_ms), lambda: None,
                              write=True)
        self._changed([key])

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        if not mapping:
            return
        sealed = {key: self._sealed(key, value) for key, value in mapping.items()}

        def write(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            for key, value in sealed.items():
                pipe.set(key, value, px=self.expires_after_ms)
            pipe.execute()

        self.connection.guard("set_multi", write, lambda: None, write=True)
        self._changed(list(sealed))

    def delete(self, key: str) -> None:
        self.delete_multi([key])

    def delete_multi(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:  # redis-py's cluster client splits DEL per slot
            self.connection.guard("delete", lambda c: c.delete(*keys),
                                  lambda: self.connection.defer_delete(keys), write=True)
            self._changed(keys)

    # -- locks --------------------------------------------------------------------

    def get_mutex(self, key: str) -> RedisMutex:
        return RedisMutex(self.connection, self.keyspace.lock(key), self.lock_timeout)

    def has_lock_timeout(self) -> bool:
        return True

    # -- the namespace as a whole (operators' tools: errors are raised) ----------------

    def _node_clients(self) -> list[Any]:
        client = self.client
        if client is None:
            raise ConnectionError("the Redis cluster is not reachable")
        if self.cluster:
            return [client.get_redis_connection(node) for node in client.get_primaries()]
        return [client]

    def scan_keys(self, limit: int | None = None) -> Iterator[str]:
        """The keys of this namespace (full names), by ``SCAN`` on every
        master; at most ``limit`` of them."""
        pattern = self.keyspace.pattern(self.namespace)
        count = 0
        for node in self._node_clients():
            for key in node.scan_iter(match=pattern, count=SCAN_BATCH):
                yield key.decode("utf-8", "replace") if isinstance(key, bytes) else key
                count += 1
                if limit is not None and count >= limit:
                    return

    def clear(self, progress: Callable[[int], None] | None = None) -> int:
        """Remove every key of this namespace (``SCAN`` + ``UNLINK``, one
        key per command, on every master); return how many were removed.

        :param progress: called with the running count after each batch.
        """
        pattern = self.keyspace.pattern(self.namespace)
        removed = 0
        for node in self._node_clients():
            batch: list[bytes] = []
            for key in node.scan_iter(match=pattern, count=SCAN_BATCH):
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    removed += _unlink(node, batch)
                    batch = []
                    if progress is not None:
                        progress(removed)
            removed += _unlink(node, batch)
            if progress is not None:
                progress(removed)
        if self.near is not None:
            self.near[0].clear(self.near[0].enabled)
        return removed

    def memory_usage(self, keys: list[str]) -> int:
        """Bytes Redis reports for ``keys`` (``MEMORY USAGE``, pipelined)."""
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(size or 0 for size in pipe.execute())


def _unlink(node: Any, keys: list[bytes]) -> int:
    if not keys:
        return 0
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(pipe.execute())
