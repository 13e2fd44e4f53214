"""The Redis dogpile backend: one class for a single server and a cluster."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, BytesBackend, CacheMutex, SerializedReturnType
from redis.exceptions import ConnectionError, NoScriptError

from ..connection import RedisConnection
from ..keying import KeySpace, same_slot
from ..keys import CacheKeys
from ..logs import RateLimitedLog
from ..nearcache import NearCache
from ..replies import text
from ..signing import Signer
from . import take_arguments
from .memory import check_picklable

__all__ = ["READ_OR_LOCK", "STORE_AND_RELEASE", "RedisBackend", "RedisMutex", "lock_expired", "lock_token"]

log = logging.getLogger(__name__)

#: How often a process waiting for another's creation lock looks again.
LOCK_POLL_INTERVAL = 0.02
#: Keys per SCAN step and per UNLINK pipeline.
SCAN_BATCH = 1000


_LOCAL_ONLY = object()
#: A blocking acquisition found the value stored: no lock is needed (dogpile's re-check will find it).
_FOUND = object()
#: No answer kept for dogpile's re-check.
_UNSET = object()


class _Script:
    """A Lua script sent by its SHA1 (``EVALSHA``), and in full the first
    time a server does not know it (``EVAL`` also caches it there)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()

    def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.text, len(keys), *keys, *args)


#: Releases a creation lock only if it still holds this acquisition's token.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

#: A blocking acquisition in one round trip: the value (KEYS[1]) if it is
#: stored ({1, value}); else the lock (KEYS[2]) as ``SET name token NX PX``
#: does ({2}); else who holds it ({0, holder}). Atomic, so "lock taken"
#: also answers dogpile's re-check: there was no value when it was taken.
READ_OR_LOCK = _Script("""
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0, redis.call('GET', KEYS[2])}
""")

#: The creator's value stored (KEYS[1], ARGV[1], expiry ARGV[3] ms or '')
#: and its lock (KEYS[2]) released as :data:`_RELEASE` does, in one round
#: trip: 1, or 0 when the lock no longer held this acquisition's token.
STORE_AND_RELEASE = _Script("""
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then return redis.call('DEL', KEYS[2]) end
return 0
""")


class _Tokens:
    """Creation-lock tokens: unique across processes (a random prefix of
    64 bits, drawn again in every forked child) and within one (a
    counter); a tenth of the cost of :func:`uuid.uuid4` per lock."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


#: A new creation-lock token (shared by the sync and asyncio locks).
lock_token = _Tokens()


def _nothing() -> None:
    """What a read that fell through found."""


def lock_expired(name: str) -> None:
    """Log that the creation lock ``name`` expired before its holder stored
    the value (another creator may have run meanwhile)."""
    log.warning("creation lock %s expired before the value was stored; "
                "raise LIBRECACHE_LOCK_TIMEOUT if creating values takes that long", name)


class RedisMutex(CacheMutex):
    """The creation lock of one key: a thread lock, then a Redis lock.

    Threads of one process queue on the thread lock, so only one of them
    polls Redis; processes meet at the Redis lock, which expires after the
    lock timeout so that a killed holder cannot block the key for ever.
    While Redis is unavailable or full the thread lock alone serves.

    Taking the Redis lock is idempotent: each acquisition writes its own
    token (``SET name token NX PX``), and when that command is answered "no"
    the holder's token is read back, so an acquisition whose reply was lost
    and whose command was retried finds its own token and holds the lock.
    A token of this process's abandoned acquisitions (the command failed,
    but may land later) is taken over rather than waited for.

    When the lock and the value it guards may meet in one script (always on
    a single server; on a cluster when both keys hash to one slot), a
    blocking acquisition reads the value and takes the lock in one round
    trip (:data:`READ_OR_LOCK`) and keeps what it read for dogpile's
    re-check, and the creator's value is stored and the lock released in
    one more (:data:`STORE_AND_RELEASE`): a miss costs three round trips,
    as dogpile's own unlocked backend, instead of five.
    """

    def __init__(self, connection: RedisConnection, name: str, timeout: float, stats: Any = None,
                 value_key: str | None = None, held: dict[str, RedisMutex] | None = None) -> None:
        self._stats = stats
        self._local = threading.Lock()
        self._connection = connection
        self._name = name
        self._timeout = timeout
        self._token: str | None = None
        #: The value's key, when one script may touch it and the lock; the
        #: backend's register of locks held, by value key.
        self._value_key = value_key
        self._held = held
        #: The thread holding this mutex, and what its acquisition read for dogpile's re-check.
        self._owner = 0
        self._recheck: Any = _UNSET

    def acquire(self, wait: bool = True) -> bool:
        return self.acquire_before(None if wait else 0.0)

    def acquire_within(self, started: float) -> bool:
        """Acquire before the budget of a call that started at ``started``
        (:func:`time.monotonic`) runs out (:attr:`RedisConnection.call_budget`);
        False if that was not possible."""
        return self.acquire_before(started + self._connection.call_budget)

    def acquire_before(self, deadline: float | None) -> bool:
        """Acquire; give up at ``deadline`` (:func:`time.monotonic`; 0: try
        once; ``None``: wait as long as it takes)."""
        if deadline is None:
            got = self._local.acquire()
        else:
            remaining = deadline - time.monotonic()
            got = self._local.acquire(True, remaining) if remaining > 0 else self._local.acquire(False)
        if not got:
            return False
        try:
            acquired = self._take(deadline)
        except BaseException:
            self._local.release()
            raise
        if not acquired:
            self._local.release()
        return acquired

    def _take(self, deadline: float | None) -> bool:
        connection = self._connection
        token = lock_token()
        lifetime_ms = max(1, int(self._timeout * 1000))
        # a blocking acquisition is followed by dogpile's re-check of the value
        value_key = self._value_key if deadline != 0.0 else None

        def attempt(client: Any) -> Any:
            if value_key is not None:
                reply = READ_OR_LOCK(client, (value_key, self._name), (token, lifetime_ms))
                if reply[0] == 1:
                    self._recheck = reply[1]
                    return _FOUND
                if reply[0] == 2:
                    self._recheck = None
                    return True
                holder = reply[1] if len(reply) > 1 else None
            elif client.set(self._name, token, nx=True, px=lifetime_ms):
                return True
            else:
                holder = client.get(self._name)
            if holder is None:
                return None  # released meanwhile: try again at once
            holder = text(holder)
            if holder == token:
                # our own SET, whose first reply was lost (the script saw no value)
                self._recheck = None if value_key is not None else _UNSET
                return True
            if connection.is_abandoned(self._name, holder):
                client.eval(_RELEASE, 1, self._name, holder)
                return None
            return False

        while True:
            tried = connection.breaker.up

            def unsure(tried: bool = tried) -> object:
                if tried:  # the SET may have landed or may still land
                    connection.abandon_lock(self._name, token, self._timeout)
                return _LOCAL_ONLY

            self._recheck = _UNSET
            result = connection.guard("lock", attempt, unsure, stats=self._stats)
            if result is None:
                continue
            if result is _LOCAL_ONLY or result is _FOUND:  # the thread lock alone serves
                self._token = None
                self._hold()
                return True
            if result is True:
                self._token = token
                self._hold()
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause = LOCK_POLL_INTERVAL
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def _hold(self) -> None:
        self._owner = threading.get_ident()
        if self._held is not None and self._value_key is not None:
            self._held[self._value_key] = self

    def recheck(self) -> Any:
        """What this thread's acquisition read of the value (raw bytes or
        ``None``), once; :data:`_UNSET` when it read nothing or another
        thread asks."""
        found = self._recheck
        if found is _UNSET or self._owner != threading.get_ident():
            return _UNSET
        self._recheck = _UNSET
        return found

    def store_and_release(self, client: Any, value: bytes, expires_ms: int | None) -> bool:
        """Store the value this thread created and release the Redis lock,
        in one round trip (:data:`STORE_AND_RELEASE`); False when this
        thread does not hold the Redis lock (nothing was sent)."""
        token = self._token
        if token is None or self._value_key is None or self._owner != threading.get_ident():
            return False
        released = STORE_AND_RELEASE(client, (self._value_key, self._name), (value, token, expires_ms or ""))
        self._token = None
        if released == 0:
            lock_expired(self._name)
        return True

    def release(self) -> None:
        token, self._token = self._token, None
        self._owner = 0
        self._recheck = _UNSET
        if self._held is not None and self._value_key is not None and self._held.get(self._value_key) is self:
            del self._held[self._value_key]
        try:
            if token is not None:
                released = self._connection.guard(
                    "unlock", lambda client: client.eval(_RELEASE, 1, self._name, token),
                    lambda: self._connection.abandon_lock(self._name, token, self._timeout),
                )
                if released == 0:
                    lock_expired(self._name)
        finally:
            self._local.release()

    def locked(self) -> bool:
        """Whether a creator holds this lock: a thread of this process, or
        any process (the Redis lock)."""
        if self._local.locked():
            return True
        return bool(self._connection.guard("lock check", lambda client: client.exists(self._name), lambda: False))


class _Remembered(threading.local):
    key: str | None = None
    value: Any = None


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
            {"connection", "keyspace", "namespace", "lock_timeout"}, {"expires_after", "signer", "near", "stats"},
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
        #: The namespace's counters (:mod:`librecache.metrics`), or ``None``.
        self.stats: Any = args.get("stats")
        self.key_mangler = self.keyspace.mangler(self.namespace)
        self._limited = RateLimitedLog(log)
        #: The creation locks held by this process's threads, by value key (see :class:`RedisMutex`).
        self._held: dict[str, RedisMutex] = {}
        #: A read handed on to this thread's next read of the same key (:meth:`remember_read`).
        self._read = _Remembered()

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

    def remember_read(self, key: str | None, value: SerializedReturnType | None) -> None:
        """This thread just read ``value`` under ``key`` (by
        :meth:`get_serialized`): its next read of ``key`` gets it without a
        round trip (a memoised call that found no fresh value hands its read
        to dogpile's ``get_or_create``). ``None``: forget it."""
        self._read.key = key
        self._read.value = value

    def get_serialized(self, key: str) -> SerializedReturnType:
        read = self._read
        if read.key is not None and read.key == key:
            read.key = None
            return read.value  # type: ignore[no-any-return]
        connection = self.connection
        if connection.is_pending(key):  # a write of it was lost: what Redis holds may be older
            return NO_VALUE
        if self._held:  # dogpile's re-check after a creation lock: the lock's script read the value
            mutex = self._held.get(key)
            if mutex is not None:
                found = mutex.recheck()
                if found is not _UNSET:
                    return self._opened(key, found)
        client = connection.client
        value: bytes | None
        if client is not None and connection.breaker.up:  # guard's own call, without its frames (every hit)
            try:
                value = client.get(key)  # type: ignore[assignment]  # bytes: decode_responses is off
            except Exception as exc:
                value = connection.recover(exc, "get", lambda c: c.get(key), _nothing, stats=self.stats)
        else:
            value = connection.guard("get", lambda c: c.get(key), _nothing, stats=self.stats)
        if self.signer is None:  # _opened's first two cases, without the call (every hit takes this)
            return NO_VALUE if value is None else value
        return self._opened(key, value)

    def get_serialized_multi(self, keys: Iterable[str]) -> Sequence[SerializedReturnType]:
        keys = list(keys)
        if not keys:
            return []

        def read(client: Any) -> list[bytes | None]:
            return list(client.mget_nonatomic(keys) if self.cluster else client.mget(keys))

        connection = self.connection
        values = connection.guard("mget", read, lambda: [None] * len(keys), stats=self.stats)
        if self.signer is None and not connection.pending_deletes:
            return [NO_VALUE if value is None else value for value in values]
        return [NO_VALUE if connection.is_pending(key) else self._opened(key, value)
                for key, value in zip(keys, values, strict=True)]

    # -- writes -------------------------------------------------------------------

    def _changed(self, keys: list[str]) -> None:
        """Other instances drop their near copies of ``keys``; so does this one
        (the region then keeps the value it just wrote)."""
        if self.near is not None:
            near, publish = self.near
            near.drop(keys)
            publish(self.namespace, keys)

    def _write(self, operation: str, keys: list[str], action: Callable[[Any], Any]) -> None:
        """Run a write through the guard. A write that failed or was dropped
        may leave an older value in Redis: it is deleted now (a full Redis
        still accepts DEL) or when Redis is back, and read as a miss until
        then (:meth:`RedisConnection.discard`)."""
        connection = self.connection
        if connection.guard(operation, action, lambda: False, write=True, stats=self.stats) is False:
            connection.discard(keys, self.namespace)
        else:
            connection.written(keys)
        self._changed(keys)

    def set_serialized(self, key: str, value: bytes) -> None:
        sealed = self._sealed(key, value)
        mutex = self._held.get(key) if self._held else None
        if mutex is not None:  # the creator's value: stored and its lock released at once
            expires = self.expires_after_ms

            def store(client: Any) -> bool:
                return mutex.store_and_release(client, sealed, expires) or bool(client.set(key, sealed, px=expires))

            self._write("set", [key], store)
            return
        self._write("set", [key], lambda c: c.set(key, sealed, px=self.expires_after_ms))

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        if not mapping:
            return
        sealed = {key: self._sealed(key, value) for key, value in mapping.items()}

        def write(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)
            for key, value in sealed.items():
                pipe.set(key, value, px=self.expires_after_ms)
            pipe.execute()
            return True

        self._write("set_multi", list(sealed), write)

    def delete(self, key: str) -> None:
        self.delete_multi([key])

    def delete_multi(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:  # redis-py's cluster client splits DEL per slot
            self._write("delete", keys, lambda c: c.delete(*keys) >= 0)

    # -- locks --------------------------------------------------------------------

    def get_mutex(self, key: str) -> RedisMutex:
        name = self.keyspace.lock(key)
        # one script may touch the value and its lock only when both live in one slot
        together = not self.cluster or same_slot(key, name)
        return RedisMutex(self.connection, name, self.lock_timeout, self.stats,
                          value_key=key if together else None, held=self._held)

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
