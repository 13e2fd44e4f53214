"""The Redis dogpile backend: one class for a single server and a cluster."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, BytesBackend, CacheMutex, SerializedReturnType
from redis.exceptions import ConnectionError, NoScriptError

from .._compat import CLUSTER_PIPELINE_SCRIPTS
from ..engine.doors import run
from ..engine.flows import ABANDONED, ACQUIRED, ANY, CHANGED, HELD, LockReply, acquire
from ..engine.locks import KeyedLocks, LeasedKey
from ..guard import RedisConnection
from ..keyspace import KeySpace
from ..logs import RateLimitedLog
from ..namespaces import CacheKeys
from ..nearcache import NearCache
from ..replies import text
from ..signing import Signer
from . import take_arguments
from .memory import check_picklable

__all__ = ["READ_OR_LOCK", "RELEASE", "SET_AND_REVOKE", "STORE_AND_RELEASE", "LockAttempt", "RedisBackend",
           "RedisMutex", "fingerprint", "lock_token"]

log = logging.getLogger(__name__)

#: Keys per SCAN step and per UNLINK pipeline.
SCAN_BATCH = 1000


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

    async def acall(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The same, on a :mod:`redis.asyncio` client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)


#: One attempt at a creation lock (KEYS[2]) that also looks at its value
#: (KEYS[1]): when the value is not the one the caller judged (ARGV[3]: the
#: SHA1 of its bytes, '' for none), it is returned ({1, value}) and no lock
#: is taken; else the lock is taken as ``SET name token NX PX`` ({2}); else
#: its holder is returned ({0, holder}). ARGV[3] '*': no look at the value.
#: Atomic, so "lock taken" also answers dogpile's re-check: the value was
#: the one judged when it was taken.
READ_OR_LOCK = _Script("""
if ARGV[3] ~= '*' then
  local value = redis.call('GET', KEYS[1])
  if value and (ARGV[3] == '' or redis.sha1hex(value) ~= ARGV[3]) then return {1, value} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0, redis.call('GET', KEYS[2])}
""")

#: The creator's value (ARGV[1]) stored at KEYS[1] with expiry ARGV[3] ms
#: (or none: '') and its lock (KEYS[2]) released, only while the lock
#: holds this acquisition's token (ARGV[2], the lease): 1; else nothing is
#: stored (a write or delete revoked the lease, or the lock expired): 0.
STORE_AND_RELEASE = _Script("""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[2])
return 1
""")

#: Releases a creation lock (KEYS[1]) only if it still holds this token (ARGV[1]).
RELEASE = _Script("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")

#: A write (ARGV[1] at KEYS[1], expiry ARGV[2] ms or '') that revokes the
#: lease of a creation in flight (deletes its lock, KEYS[2]): that
#: creator's older value is never stored over it. The SET goes first: a
#: script that has written may write on past ``maxmemory``, so a full Redis
#: must refuse the SET before the DEL.
SET_AND_REVOKE = _Script("""
local reply
if ARGV[2] == '' then reply = redis.call('SET', KEYS[1], ARGV[1])
else reply = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('DEL', KEYS[2])
return reply
""")


def fingerprint(seen: Any) -> str:
    """:data:`READ_OR_LOCK`'s ARGV[3] for what a read ``seen`` (stored bytes,
    ``None`` for nothing, :data:`~librecache.engine.flows.ANY`)."""
    if seen is None:
        return ""
    if seen is ANY:
        return "*"
    return hashlib.sha1(seen).hexdigest()


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


#: A new creation-lock token (shared by the sync and asyncio doors).
lock_token = _Tokens()


def _nothing() -> None:
    """What a read that fell through found."""


def _failed() -> bool:
    """What a write that fell through did."""
    return False


def lock_reply(connection: RedisConnection, name: str, token: str, reply: Any) -> LockReply:
    """The :class:`~librecache.engine.flows.LockReply` of a
    :data:`READ_OR_LOCK` reply (``None``: Redis could not be asked, and
    this process's queue alone serves: no lease); ``CHANGED``'s ``current``
    is the stored bytes. Shared by both doors."""
    if reply is None:
        return LockReply(ACQUIRED)
    if reply[0] == 2:
        return LockReply(ACQUIRED, token)
    if reply[0] == 1:
        return LockReply(CHANGED, current=reply[1])
    holder = text(reply[1])
    if holder == token:  # our own SET, whose first reply was lost and which was sent again
        return LockReply(ACQUIRED, token)
    if connection.is_abandoned(name, holder):
        return LockReply(ABANDONED, holder=holder)
    return LockReply(HELD)


class LockAttempt:
    """One :data:`READ_OR_LOCK` attempt at a key's creation lock: its keys,
    its arguments (a new token), and what its reply means (both doors).

    An attempt that failed midway (:meth:`unsure`, the guard's fallback)
    may still land: its token is remembered as abandoned, so that a waiter
    of this process breaks the lock rather than waiting for it to expire.
    """

    __slots__ = ("args", "connection", "keys", "lifetime", "name", "token", "tried")

    def __init__(self, backend: RedisBackend, key: str, seen: Any) -> None:
        self.connection = backend.connection
        self.name = backend.keyspace.lock(key)
        self.token = lock_token()
        self.lifetime = backend.lock_timeout
        self.keys = (key, self.name)
        self.args = (self.token, backend._lock_ms, fingerprint(seen))
        self.tried = self.connection.breaker.up

    def unsure(self) -> None:
        if self.tried:  # the SET may have landed or may still land
            self.connection.abandon_lock(self.name, self.token, self.lifetime)

    def reply(self, reply: Any) -> LockReply:
        """What ``reply`` means (``None``: Redis could not be asked)."""
        return lock_reply(self.connection, self.name, self.token, reply)


def lost_lease(name: str, started: float, lifetime: float) -> None:
    """Log that a creation's value was not stored: its lock expired (the
    creator ran past ``lifetime``: a warning) or a write or delete of the
    key revoked it meanwhile (as it should: debug)."""
    if time.time() - started >= lifetime:
        log.warning("creation lock %s expired before the value was stored, so it was returned but not stored; "
                    "raise LIBRECACHE_LOCK_TIMEOUT if creating values takes that long", name)
    else:
        log.debug("creation lock %s was revoked by a write or delete of its key: the value was not stored", name)


class RedisMutex(CacheMutex):
    """A key's creation lock through dogpile's mutex API
    (``backend.get_mutex(key)``): this process's queue for the key, then
    the Redis lock, taken as the engine takes them
    (:func:`librecache.engine.flows.acquire`), so dogpile's users and the
    engine's flows exclude each other.

    Threads of one process queue on a thread lock, so only one of them
    polls Redis; processes meet at the Redis lock, which expires after the
    lock timeout so that a killed holder cannot block the key for ever.
    While Redis is unavailable the thread lock alone serves.
    """

    def __init__(self, backend: RedisBackend, key: str) -> None:
        self._backend = backend
        self._key = key
        self._handle: Any = None
        self._lease: Any = None

    def acquire(self, wait: bool = True) -> bool:
        backend, key = self._backend, self._key
        handle = backend.locks.acquire(key, wait, None if wait else 0.0)
        if handle is None:
            return False
        try:
            reply = run(acquire(key, ANY, wait, None), backend)
        except BaseException:
            backend.locks.release(key, handle)
            raise
        if reply.state is not ACQUIRED:
            backend.locks.release(key, handle)
            return False
        self._handle, self._lease = handle, reply.lease
        return True

    def release(self) -> None:
        handle, lease, self._handle, self._lease = self._handle, self._lease, None, None
        try:
            if lease is not None:
                self._backend.release(self._key, lease)
        finally:
            if handle is not None:
                self._backend.locks.release(self._key, handle)

    def locked(self) -> bool:
        """Whether a creator holds this lock: a thread of this process, or
        any process (the Redis lock)."""
        return self._backend.locked(self._key)


class RedisBackend(BytesBackend):
    """Values of one namespace in Redis, under ``{prefix}::{NAMESPACE}:``.

    Arguments (all required but ``expires_after``, ``signer``, ``near`` and ``stats``):

    - ``connection``: the registry's :class:`~librecache.guard.RedisConnection`;
    - ``keyspace``: the deployment's :class:`~librecache.keyspace.KeySpace`;
    - ``namespace``: the :class:`~librecache.CacheKeys` member;
    - ``expires_after``: server-side expiry of every key written, seconds,
      or ``None``;
    - ``lock_timeout``: lifetime of a creation lock, seconds;
    - ``signer``: a :class:`~librecache.signing.Signer`, or ``None``.

    Every operation goes through the connection's guard: while Redis is
    unavailable, reads are misses, writes are dropped and deletes are
    replayed when it is back (unless LIBRECACHE_STRICT).

    Every write and delete of a key also revokes the lease of a creation of
    it in flight (deletes its creation lock), so that creator's value,
    which may be older, is never stored after it (see the engine's
    :class:`~librecache.engine.flows.Store`).

    Multi-key operations never send a command across cluster slots: reads
    and deletes send one ``MGET``/``DEL`` per slot, writes a pipeline
    (grouped per node by redis-py).
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
        self._lock_ms = max(1, int(self.lock_timeout * 1000))
        self.signer: Signer | None = args.get("signer")
        #: (near cache, publish(namespace, keys)) when the namespace has one.
        self.near: tuple[NearCache, Callable[[CacheKeys, list[str]], None]] | None = args.get("near")
        expires = args.get("expires_after")
        self.expires_after_ms: int | None = max(1, int(expires * 1000)) if expires else None
        #: The namespace's counters (:mod:`librecache.metrics`), or ``None``.
        self.stats: Any = args.get("stats")
        self.key_mangler = self.keyspace.mangler(self.namespace)
        self._limited = RateLimitedLog(log)
        #: This process's creation queue per key (threads).
        self.locks = KeyedLocks()

    @property
    def client(self) -> Any:
        """The registry's client (``None`` while a cluster is unreachable)."""
        return self.connection.client

    # dogpile takes the region's serializer from the backend
    def serializer(self, payload: Any) -> bytes:  # type: ignore[override]
        return check_picklable(payload, f"namespace {self.namespace.value}")

    # -- signing ------------------------------------------------------------------

    def sealed(self, key: str, value: bytes) -> bytes:
        return self.signer.sign(key, value) if self.signer is not None else value

    def opened(self, key: str, value: bytes | None) -> SerializedReturnType:
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

    def read_stored(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` as they are (signed, when signing
        is on), or ``None`` (none, or Redis unavailable: a miss)."""
        connection = self.connection
        client = connection.client
        if client is not None and connection.breaker.up:  # guard's own call, without its frames (every hit)
            try:
                return client.get(key)  # type: ignore[no-any-return,return-value]  # bytes: decode_responses is off
            except Exception as exc:
                return connection.recover(exc, "get", lambda c: c.get(key), _nothing, stats=self.stats)  # type: ignore[no-any-return]
        return connection.guard("get", lambda c: c.get(key), _nothing, stats=self.stats)  # type: ignore[no-any-return]

    def get_serialized(self, key: str) -> SerializedReturnType:
        if self.connection.is_pending(key):  # a write of it was lost: what Redis holds may be older
            return NO_VALUE
        value = self.read_stored(key)
        if self.signer is None:  # opened's first two cases, without the call
            return NO_VALUE if value is None else value
        return self.opened(key, value)

    def read_stored_multi(self, keys: list[str]) -> list[bytes | None]:
        """:meth:`read_stored` of each of ``keys``: one ``MGET`` (one per slot on a cluster)."""
        def read(client: Any) -> list[bytes | None]:
            return list(client.mget_nonatomic(keys) if self.cluster else client.mget(keys))

        return self.connection.guard("mget", read, lambda: [None] * len(keys), stats=self.stats)  # type: ignore[no-any-return]

    def get_serialized_multi(self, keys: Iterable[str]) -> Sequence[SerializedReturnType]:
        keys = list(keys)
        if not keys:
            return []
        connection = self.connection
        values = self.read_stored_multi(keys)
        if self.signer is None and not connection.pending_deletes:
            return [NO_VALUE if value is None else value for value in values]
        return [NO_VALUE if connection.is_pending(key) else self.opened(key, value)
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
        if connection.guard(operation, action, _failed, write=True, stats=self.stats) is False:
            connection.discard(keys, self.namespace)
        else:
            connection.written(keys)
        self._changed(keys)

    def set_serialized(self, key: str, value: bytes) -> None:
        if type(key) is LeasedKey:  # a creation's value, through wrap= proxies
            key.stored = self.store_leased(str(key), value, key.lease, time.time())
            return
        sealed = self.sealed(key, value)
        keys, args = (key, self.keyspace.lock(key)), (sealed, self.expires_after_ms or "")
        self._write("set", [key], lambda client: SET_AND_REVOKE(client, keys, args))

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        if not mapping:
            return
        sealed = {key: self.sealed(key, value) for key, value in mapping.items()}
        self._write("set_multi", list(sealed), lambda client: self.write_pipeline(client, sealed).execute())

    def write_pipeline(self, client: Any, sealed: Mapping[str, bytes]) -> Any:
        """A pipeline that writes ``sealed`` (stored bytes by key), each key's
        creation lock deleted first (a lease revoked; a creator's store that
        lands between the two finds no lock); shared by both doors."""
        pipe = client.pipeline(transaction=False)  # grouped per node by a cluster client
        lock = self.keyspace.lock
        px = self.expires_after_ms
        for key, value in sealed.items():
            pipe.delete(lock(key))
            pipe.set(key, value, px=px)
        return pipe

    def revoking(self, keys: list[str]) -> list[str]:
        """``keys`` and their creation locks: what a delete removes (the
        lease of a creation in flight revoked with its value)."""
        lock = self.keyspace.lock
        return [*keys, *map(lock, keys)]

    def delete(self, key: str) -> None:
        self.delete_multi([key])

    def delete_multi(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:  # redis-py's cluster client splits DEL per slot; a lock shares its value's slot
            doomed = self.revoking(keys)
            self._write("delete", keys, lambda c: c.delete(*doomed) >= 0)

    # -- creation locks and leases (the engine's TryLock, Store and Release) --------

    def lock_attempt(self, key: str, seen: Any) -> LockAttempt:
        """The arguments of one :data:`READ_OR_LOCK` attempt at ``key``'s
        creation lock (both doors)."""
        return LockAttempt(self, key, seen)

    def try_lock(self, key: str, seen: Any) -> LockReply:
        """One :data:`READ_OR_LOCK` attempt at ``key``'s creation lock, looking
        at the value unless ``seen`` is ``ANY`` (``CHANGED``: ``current`` is
        the stored bytes)."""
        attempt = LockAttempt(self, key, seen)
        reply = self.connection.guard("lock", lambda client: READ_OR_LOCK(client, attempt.keys, attempt.args),
                                      attempt.unsure, stats=self.stats)
        return attempt.reply(reply)

    def break_lock(self, key: str, holder: str) -> None:
        """Release ``key``'s lock held by ``holder``, a token this process abandoned."""
        keys, args = (self.keyspace.lock(key),), (holder,)
        self.connection.guard("unlock", lambda client: RELEASE(client, keys, args), _nothing, stats=self.stats)

    sleep = staticmethod(time.sleep)

    def store_leased(self, key: str, value: bytes, lease: str, started: float,
                     near_copy: Any = None) -> bool:
        """Store ``value`` (serialized) under ``key`` and release its lock,
        only while ``lease`` holds the lock (:data:`STORE_AND_RELEASE`);
        whether it was stored. ``started``: when the creation started (for
        the log of a lease lost). ``near_copy``: kept in the near cache when
        stored, unless another instance's write was announced meanwhile."""
        connection = self.connection
        name = self.keyspace.lock(key)
        keys, args = (key, name), (self.sealed(key, value), lease, self.expires_after_ms or "")
        near = self.near[0] if self.near is not None else None
        generation = 0
        if near is not None:  # the copy here is older whatever happens
            near.drop([key])
            generation = near.generation
        stored = connection.guard("set", lambda client: STORE_AND_RELEASE(client, keys, args), _failed,
                                  write=True, stats=self.stats)
        if stored is False:  # the script may have run or not: no older value is served, the lock is broken here
            connection.abandon_lock(name, lease, self.lock_timeout)
            connection.discard([key], self.namespace)
            return False
        if not stored:
            lost_lease(name, started, self.lock_timeout)
            return False
        connection.written([key])
        if near is not None:
            if near_copy is not None:
                near.store(key, near_copy, generation)
            self.near[1](self.namespace, [key])  # type: ignore[index]
        return True

    def store_many(self, items: list[tuple[str, bytes, str]], started: float) -> list[bool]:
        """:meth:`store_leased` of each ``(key, serialized value, lease)``, in
        one pipeline (per node on a cluster)."""
        connection = self.connection
        sealed = [(key, self.sealed(key, value), lease) for key, value, lease in items]

        def store(client: Any) -> list[Any]:
            return scripts_pipelined(client, STORE_AND_RELEASE, [
                ((key, self.keyspace.lock(key)), (value, lease, self.expires_after_ms or ""))
                for key, value, lease in sealed], self.cluster)

        replies = connection.guard("set_multi", store, _failed, write=True, stats=self.stats)
        keys = [key for key, _, _ in items]
        if replies is False:
            for key, _, lease in items:
                connection.abandon_lock(self.keyspace.lock(key), lease, self.lock_timeout)
            connection.discard(keys, self.namespace)
            return [False] * len(items)
        stored = [reply == 1 for reply in replies]
        for key, ok in zip(keys, stored, strict=True):
            if not ok:
                lost_lease(self.keyspace.lock(key), started, self.lock_timeout)
        connection.written([key for key, ok in zip(keys, stored, strict=True) if ok])
        self._changed([key for key, ok in zip(keys, stored, strict=True) if ok])
        return stored

    def release(self, key: str, lease: str) -> None:
        """Release ``key``'s lock if ``lease`` still holds it (:data:`RELEASE`);
        when that fails, the lease is remembered as abandoned."""
        connection = self.connection
        name = self.keyspace.lock(key)
        keys, args = (name,), (lease,)
        connection.guard("unlock", lambda client: RELEASE(client, keys, args),
                         lambda: connection.abandon_lock(name, lease, self.lock_timeout))

    def locked(self, key: str) -> bool:
        """Whether a creator holds ``key``'s lock: a thread of this process,
        or any process (the Redis lock exists)."""
        if self.locks.locked(key):
            return True
        name = self.keyspace.lock(key)
        return bool(self.connection.guard("lock check", lambda client: client.exists(name), _failed))

    def get_mutex(self, key: str) -> RedisMutex:
        return RedisMutex(self, key)

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


def scripts_pipelined(client: Any, script: _Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
                      cluster: bool) -> list[Any]:
    """The replies of ``script`` run once per ``(keys, args)`` of ``calls``,
    by SHA in one pipeline (per node on a cluster); calls that meet a server
    that does not know the script (``NOSCRIPT``) are sent again in full, one
    by one. One by one too on a cluster whose redis-py pipelines no scripts
    (:data:`~librecache._compat.CLUSTER_PIPELINE_SCRIPTS`)."""
    if cluster and not CLUSTER_PIPELINE_SCRIPTS:
        return [script(client, keys, args) for keys, args in calls]
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    replies = pipe.execute(raise_on_error=False)
    for index, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[index]
            replies[index] = client.eval(script.text, len(keys), *keys, *args)
        elif isinstance(reply, Exception):
            raise reply
    return list(replies)


async def ascripts_pipelined(client: Any, script: _Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
                             cluster: bool) -> list[Any]:
    """:func:`scripts_pipelined` on a :mod:`redis.asyncio` client."""
    if cluster and not CLUSTER_PIPELINE_SCRIPTS:
        return [await script.acall(client, keys, args) for keys, args in calls]
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    replies = await pipe.execute(raise_on_error=False)
    for index, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[index]
            replies[index] = await client.eval(script.text, len(keys), *keys, *args)
        elif isinstance(reply, Exception):
            raise reply
    return list(replies)


def _unlink(node: Any, keys: list[bytes]) -> int:
    if not keys:
        return 0
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(pipe.execute())
