"""This process's queues for creation locks, and the key that carries a lease.

- :class:`KeyedLocks`: a lock per key for the threads of this process
  (the sync door's :class:`~librecache.engine.flows.Queue`), made on first
  use and forgotten when nobody holds or waits for it.
- :class:`AsyncKeyedLocks`: the same for the tasks of an event loop (the
  async door's queue).
- :class:`LeasedKey`: a key that carries its creation lock's lease through
  dogpile ``wrap=`` proxies to a librecache backend, which stores the value
  only while the lease holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any

from .. import forks

__all__ = ["AsyncKeyedLocks", "KeyedLocks", "LeasedKey"]


class KeyedLocks:
    """Thread locks by key (one backend's creation queue in this process)."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Any]] = {}  # key -> [lock, users]
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork(self) -> None:
        # a parent thread may have held any of them
        self._entries = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, wait: bool, deadline: float | None) -> Any:
        """Take ``key``'s lock: if ``wait``, until ``deadline``
        (:func:`time.monotonic`; ``None``: for ever), else only if free.
        Returns a handle for :meth:`release`, or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [threading.Lock(), 0]
            entry[1] += 1
        lock: threading.Lock = entry[0]
        if not wait:
            got = lock.acquire(False)
        elif deadline is None:
            got = lock.acquire()
        else:
            remaining = deadline - time.monotonic()
            got = lock.acquire(True, remaining) if remaining > 0 else lock.acquire(False)
        if got:
            return entry
        self._leave(key, entry)
        return None

    def release(self, key: str, handle: Any) -> None:
        handle[0].release()
        self._leave(key, handle)

    def _leave(self, key: str, entry: list[Any]) -> None:
        with self._lock:
            entry[1] -= 1
            if entry[1] == 0 and self._entries.get(key) is entry:
                del self._entries[key]

    def locked(self, key: str) -> bool:
        """Whether a thread of this process holds ``key``'s lock."""
        entry = self._entries.get(key)
        return entry is not None and bool(entry[0].locked())


class AsyncKeyedLocks:
    """asyncio locks by key, one table per event loop."""

    def __init__(self) -> None:
        self._tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = \
            weakref.WeakKeyDictionary()

    async def acquire(self, key: str, wait: bool, deadline: float | None) -> Any:
        """:meth:`KeyedLocks.acquire` for the tasks of the running loop."""
        loop = asyncio.get_running_loop()
        table = self._tables.get(loop)
        if table is None:
            table = self._tables[loop] = {}
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [asyncio.Lock(), 0, table]
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
        finally:
            if not got:
                self._leave(key, entry)
        return entry if got else None

    def release(self, key: str, handle: Any) -> None:
        handle[0].release()
        self._leave(key, handle)

    @staticmethod
    def _leave(key: str, entry: list[Any]) -> None:
        entry[1] -= 1
        table = entry[2]
        if entry[1] == 0 and table.get(key) is entry:
            del table[key]

    def locked(self, key: str) -> bool:
        """Whether a task of any loop holds ``key``'s lock."""
        return any(entry[0].locked() for table in list(self._tables.values())
                   if (entry := table.get(key)) is not None)


class LeasedKey(str):
    """A key, and the lease of its creation lock: what a creation stores
    through ``wrap=`` proxies carries it, so that the librecache backend
    under them stores the value only while the lease holds (proxies pass
    keys through as they are). The backend sets :attr:`stored`."""

    lease: Any
    stored: bool

    def __new__(cls, key: str, lease: Any) -> LeasedKey:
        leased = super().__new__(cls, key)
        leased.lease = lease
        leased.stored = False
        return leased
