"""A bounded, thread-safe in-memory dogpile backend."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, CacheBackend, CachedValue

from .. import forks
from ..engine.flows import ACQUIRED, ANY, CHANGED, HELD, LockReply
from ..engine.locks import KeyedLocks, LeasedKey
from ..errors import SerializationError
from . import take_arguments

__all__ = ["MemoryBackend", "check_picklable"]


def check_picklable(value: Any, where: str) -> bytes:
    """Pickle ``value``; raise :class:`SerializationError` naming ``where``
    and the value's type if it cannot be pickled."""
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickle raises PicklingError, TypeError, AttributeError...
        raise SerializationError(
            f"{where}: a value of type {type(value).__qualname__} cannot be pickled "
            f"({type(exc).__name__}: {exc}); nothing was cached"
        ) from exc


def _check_value(value: Any, where: str) -> None:
    """Refuse a value object whose payload cannot be pickled. Bytes (a region
    with a ``serializer``, or ``set_serialized``) are stored as they are."""
    if isinstance(value, CachedValue):
        check_picklable(value.payload, where)


class MemoryBackend(CacheBackend):
    """Process memory, bounded in time and size.

    Entries expire ``expires_after`` seconds after they were stored (never,
    when ``None``), and at most ``max_entries`` are kept: storing one more
    evicts the least recently used. Every operation is thread-safe.

    Values are stored as they are (no copy), as dogpile's memory backend
    does, but a value that could not be stored in Redis (one that cannot be
    pickled) is refused here too, so that the same code behaves the same
    with memory and with Redis. A region with a ``serializer`` hands this
    backend bytes (``set_serialized``), which are stored as they are.

    A namespace in the ``json`` or ``keyv`` format (``format``: its
    :class:`~librecache.formats.JsonFormat`) keeps what a Redis read would
    return (:meth:`~librecache.formats.JsonFormat.normalize`), and refuses
    what that format cannot represent, as Redis would.

    A key's creation lock is this process's queue for it (:attr:`locks`)
    and a lease kept here: a write or delete of the key revokes it, so a
    creation in flight never stores its older value after them (the
    engine's :class:`~librecache.engine.flows.Store`).

    Arguments: ``name`` (for messages), ``max_entries`` (required),
    ``expires_after`` (seconds or ``None``), ``format`` (``None``: pickle).
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        args = take_arguments("librecache.memory", arguments, {"name", "max_entries"}, {"expires_after", "format"})
        self.name: str = args["name"]
        self.max_entries: int = int(args["max_entries"])
        if self.max_entries < 1:
            raise ValueError("librecache.memory backend: max_entries must be at least 1")
        self.expires_after: float | None = args.get("expires_after") or None
        #: The namespace's :class:`~librecache.formats.JsonFormat`, or ``None`` (pickle).
        self.format: Any = args.get("format")
        self._data: OrderedDict[str, tuple[CachedValue, float]] = OrderedDict()
        self._lock = threading.Lock()
        #: This process's creation queue per key (threads), and the leases of creations in flight.
        self.locks = KeyedLocks()
        self._leases: dict[str, int] = {}
        self._tokens = itertools.count(1)
        forks.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._leases = {}  # the parent's creators are not here

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._current(key)

    def _current(self, key: str) -> Any:
        """The value under ``key`` (the lock held), or ``NO_VALUE``."""
        entry = self._data.get(key)
        if entry is None:
            return NO_VALUE
        if entry[1] and entry[1] < time.monotonic():
            del self._data[key]
            return NO_VALUE
        self._data.move_to_end(key)
        return entry[0]

    def get_multi(self, keys: Iterable[str]) -> Sequence[Any]:
        keys = list(keys)
        data = self._data
        with self._lock:
            entries = list(map(data.get, keys))
            try:  # recently used (LRU), all in one C loop when every key is there
                deque(map(data.move_to_end, keys), 0)
            except KeyError:
                for key in keys:
                    if key in data:
                        data.move_to_end(key)
        if not self.expires_after:
            return [NO_VALUE if entry is None else entry[0] for entry in entries]
        now = time.monotonic()
        found: list[Any] = []
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                found.append(NO_VALUE)
            elif entry[1] and entry[1] < now:
                with self._lock:
                    if data.get(key) is entry:
                        del data[key]
                found.append(NO_VALUE)
            else:
                found.append(entry[0])
        return found

    def _checked(self, value: Any, where: str) -> Any:
        if self.format is not None and isinstance(value, CachedValue):
            return CachedValue(self.format.normalize(value.payload), value.metadata)  # type: ignore[call-arg]
        _check_value(value, where)
        return value

    def set(self, key: str, value: Any) -> None:
        if type(key) is LeasedKey:  # a creation's value, through wrap= proxies
            key.stored = self.store_leased(str(key), value, key.lease)
            return
        self._store(key, self._checked(value, f"namespace {self.name}, key {key!r}"))

    def _store(self, key: str, value: Any, lease: int | None = None) -> bool:
        """Store ``value`` (revoking the lease of a creation in flight), or
        with ``lease`` only while it holds (releasing it); whether it was."""
        deadline = time.monotonic() + self.expires_after if self.expires_after else 0.0
        with self._lock:
            held = self._leases.pop(key, None)
            if lease is not None and held != lease:
                if held is not None:
                    self._leases[key] = held
                return False
            self._data[key] = (value, deadline)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return True

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        checked = {key: self._checked(value, f"namespace {self.name}") for key, value in mapping.items()}
        for key, value in checked.items():  # all or nothing
            self._store(key, value)

    def delete(self, key: str) -> None:
        self.delete_multi([key])

    def delete_multi(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)
                self._leases.pop(key, None)

    # -- creation locks and leases (the engine's TryLock, Store and Release) --------

    def try_lock(self, key: str, seen: Any) -> LockReply:
        """Take ``key``'s lease, unless what is stored is not ``seen`` (the
        object a read returned; ``CHANGED``, with it) or another creator
        holds it (the other door of this process)."""
        with self._lock:
            current = self._current(key)
            if seen is not ANY and current is not seen:
                return LockReply(CHANGED, current=current)
            if key in self._leases:
                return LockReply(HELD)
            token = self._leases[key] = next(self._tokens)
        return LockReply(ACQUIRED, token)

    def store_leased(self, key: str, value: Any, lease: int) -> bool:
        """Store ``value`` only while ``lease`` holds ``key``'s lock, and
        release it (whatever happens); whether it was stored."""
        try:
            checked = self._checked(value, f"namespace {self.name}, key {key!r}")
        except BaseException:
            self.release(key, lease)
            raise
        return self._store(key, checked, lease)

    def release(self, key: str, lease: int) -> None:
        """Release ``key``'s lease if ``lease`` still holds it."""
        with self._lock:
            if self._leases.get(key) == lease:
                del self._leases[key]

    def locked(self, key: str) -> bool:
        """Whether a creator of this process holds ``key``'s lock."""
        return key in self._leases or self.locks.locked(key)

    def clear(self, progress: Any = None) -> int:
        """Remove every entry; return how many there were."""
        with self._lock:
            count = len(self._data)
            self._data.clear()
            self._leases.clear()
            return count

    def keys(self) -> list[str]:
        """The keys currently held (expired ones included until touched)."""
        with self._lock:
            return list(self._data)
