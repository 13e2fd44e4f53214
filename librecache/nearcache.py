"""A near cache: a namespace's values also held in process memory, kept
coherent across instances through a channel under the deployment's prefix.

Opt-in per namespace (LIBRECACHE_NEAR_CACHE_NAMESPACES), for small values
read on every request (ROLES, CONFIG_STORE, APP_CONFIG, ...). A hit costs a
dictionary lookup instead of a round trip. Coherence:

- every write or delete of the namespace, in any instance, publishes the
  key names on ``{prefix}::librecache:near``; every instance drops its copy
  of them when the message arrives (milliseconds);
- a read that raced with such a drop does not keep what it read (a
  generation count tells);
- region invalidations apply to near hits as to any other (dogpile's marks);
- while the subscription to the channel is down, the near cache is empty
  and serves nothing, so a lost channel can never mean stale reads; it
  starts again empty once resubscribed.

Works on any Redis 7.0 and on clusters; needs no client-side-caching support
from the server (redis-py's needs Redis 7.4+).

A near hit is as independent as a Redis read: each hit returns its own
copy, so a caller that changes what it got changes nothing for the next
reader. Values that cannot change (strings, numbers, ``None``, and tuples
or frozensets of those) are shared; others are kept pickled and unpickled
per hit, which costs a fifth of :func:`copy.deepcopy` (1.4 against 6.8 us
for a small dict, 2.2 against 15 us for a nested role map).
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue

from . import forks

__all__ = ["NEAR_SEPARATOR", "NearCache"]

#: Separates the fields of a near-cache message: origin, namespace, keys...
NEAR_SEPARATOR = "\x00"

_ATOMS = (str, bytes, int, float, complex, bool, type(None))


def is_immutable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` cannot be changed in place by whoever receives it
    (so one object can be handed to every reader)."""
    if type(value) in _ATOMS:
        return True
    if type(value) in (tuple, frozenset) and depth < 8:
        return all(is_immutable(item, depth + 1) for item in value)
    return False


class _Pickled:
    """A near entry of a mutable value: unpickled afresh on every hit."""

    __slots__ = ("blob", "metadata")

    def __init__(self, blob: bytes, metadata: Mapping[str, Any]) -> None:
        self.blob = blob
        self.metadata = metadata


class NearCache:
    """The in-process copy of one namespace's values.

    :param namespace: the namespace's name (for messages).
    :param max_entries: most entries kept; the oldest stored go first.
    """

    def __init__(self, namespace: str, max_entries: int) -> None:
        self.namespace = namespace
        self.max_entries = max_entries
        self._data: dict[str, CachedValue | _Pickled] = {}
        self._lock = threading.Lock()
        #: Counts drops; a read stores its value only if none happened meanwhile.
        self.generation = 0
        #: Serving only while subscribed to the channel.
        self.enabled = False
        self.hits = 0
        forks.register(self)

    def _after_fork(self) -> None:
        # empty and off until the child's own listener has subscribed
        self._lock = threading.Lock()
        self.hits = 0  # the child's own
        self.clear(False)

    def lookup(self, key: str, expiration_time: float | None, invalidator: Any) -> Any:
        """The fresh :class:`CachedValue` under the (mangled) ``key``, or
        :data:`NO_VALUE`: a value dogpile's ``get_or_create`` would
        regenerate is not served (``expiration_time`` as dogpile reads it:
        ``None`` or ``-1``, never expires; ``0``, always expired)."""
        value = self._data.get(key)
        if value is None:
            return NO_VALUE
        metadata = value.metadata
        created = metadata["ct"]
        if expiration_time is not None and expiration_time != -1 and time.time() - created > expiration_time:
            return NO_VALUE
        if invalidator.is_invalidated(created):
            return NO_VALUE
        self.hits += 1
        if type(value) is _Pickled:
            return CachedValue(pickle.loads(value.blob), metadata)  # type: ignore[call-arg]
        return value

    def store(self, key: str, value: CachedValue, generation: int) -> None:
        """Keep ``value`` if the cache serves and nothing was dropped since
        ``generation`` was read."""
        if not self.enabled or generation != self.generation:
            return
        entry: CachedValue | _Pickled = value
        if not is_immutable(value.payload):
            try:
                entry = _Pickled(pickle.dumps(value.payload, pickle.HIGHEST_PROTOCOL), value.metadata)
            except Exception:  # not picklable: then it never reached Redis either
                return
        with self._lock:
            if not self.enabled or generation != self.generation:
                return
            self._data[key] = entry
            if len(self._data) > self.max_entries:
                del self._data[next(iter(self._data))]

    def drop(self, keys: Iterable[str]) -> None:
        with self._lock:
            self.generation += 1
            for key in keys:
                self._data.pop(key, None)

    def clear(self, enabled: bool) -> None:
        """Forget everything; serve from now on only if ``enabled``."""
        with self._lock:
            self.generation += 1
            self._data.clear()
            self.enabled = enabled

    def __len__(self) -> int:
        return len(self._data)


def encode_drop(origin: str, namespace: str, keys: Iterable[str]) -> str:
    """A message: ``origin`` (the sending registry), the namespace, the keys."""
    return NEAR_SEPARATOR.join([origin, namespace, *keys])


def decode_drop(message: str) -> tuple[str, str, list[str]] | None:
    parts = message.split(NEAR_SEPARATOR)
    if len(parts) < 3:
        return None
    return parts[0], parts[1], parts[2:]
