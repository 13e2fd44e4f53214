"""The Redis dogpile backend: one class for a single server and a cluster."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, BytesBackend, CacheMutex, SerializedReturnType
from redis.cluster import RedisCluster
from redis.exceptions import LockError
from redis.lock import Lock

from ..keying import KeySpace
from ..keys import CacheKeys
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
    """

    def __init__(self, lock: Lock) -> None:
        self._local = threading.Lock()
        self._redis = lock

    def acquire(self, wait: bool = True) -> bool:
        if not self._local.acquire(wait):
            return False
        try:
            acquired = bool(self._redis.acquire(blocking=wait))
        except BaseException:
            self._local.release()
            raise
        if not acquired:
            self._local.release()
        return acquired

    def release(self) -> None:
        try:
            self._redis.release()
        except LockError:
            log.warning(
                "creation lock %s expired before the value was stored; "
                "raise LIBRECACHE_LOCK_TIMEOUT if creating values takes that long",
                self._redis.name,
            )
        finally:
            self._local.release()

    def locked(self) -> bool:
        return self._local.locked()


class RedisBackend(BytesBackend):
    """Values of one namespace in Redis, under ``{prefix}::{NAMESPACE}:``.

    Arguments (all required but ``expires_after``):

    - ``client``: the :class:`redis.Redis` or
      :class:`redis.cluster.RedisCluster` shared by the registry;
    - ``keyspace``: the deployment's :class:`~librecache.keying.KeySpace`;
    - ``namespace``: the :class:`~librecache.CacheKeys` member;
    - ``expires_after``: server-side expiry of every key written, seconds,
      or ``None``;
    - ``lock_timeout``: lifetime of a creation lock, seconds.

    Multi-key operations never send a command across cluster slots: reads
    and deletes send one ``MGET``/``DEL`` per slot, writes a pipeline of
    ``SET`` commands (grouped per node by redis-py).
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        args = take_arguments(
            "librecache.redis", arguments,
            {"client", "keyspace", "namespace", "lock_timeout"}, {"expires_after"},
        )
        self.client = args["client"]
        self.cluster = isinstance(self.client, RedisCluster)
        self.keyspace: KeySpace = args["keyspace"]
        self.namespace: CacheKeys = args["namespace"]
        self.lock_timeout = float(args["lock_timeout"])
        expires = args.get("expires_after")
        self.expires_after_ms: int | None = max(1, int(expires * 1000)) if expires else None
        self.key_mangler = self.keyspace.mangler(self.namespace)

    # dogpile takes the region's serializer from the backend
    def serializer(self, payload: Any) -> bytes:  # type: ignore[override]
        return check_picklable(payload, f"namespace {self.namespace.value}")

    # -- reads ------------------------------------------------------------

    def get_serialized(self, key: str) -> SerializedReturnType:
        value = self.client.get(key)
        return NO_VALUE if value is None else value

    def get_serialized_multi(self, keys: Iterable[str]) -> Sequence[SerializedReturnType]:
        keys = list(keys)
        if not keys:
            return []
        values = self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys)
        return [NO_VALUE if value is None else value for value in values]

    # -- writes -----------------------------------------------------------

    def set_serialized(self, key: str, value: bytes) -> None:
        self.client.set(key, value, px=self.expires_after_ms)

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        if not mapping:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, value in mapping.items():
            pipe.set(key, value, px=self.expires_after_ms)
        pipe.execute()

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def delete_multi(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:  # redis-py's cluster client splits DEL per slot
            self.client.delete(*keys)

    # -- locks ------------------------------------------------------------

    def get_mutex(self, key: str) -> RedisMutex:
        return RedisMutex(
            self.client.lock(
                self.keyspace.lock(key),
                timeout=self.lock_timeout,
                sleep=LOCK_POLL_INTERVAL,
                thread_local=False,
            )
        )

    def has_lock_timeout(self) -> bool:
        return True

    # -- the namespace as a whole -----------------------------------------

    def _node_clients(self) -> list[Any]:
        if self.cluster:
            return [self.client.get_redis_connection(node) for node in self.client.get_primaries()]
        return [self.client]

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
