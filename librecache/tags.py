"""Tags: invalidate every entry that carries a tag, in every namespace and
process, with a handful of commands whatever the number of entries. No I/O
here: the rules and this process's record of the tags' invalidations.

An entry carries its tags in its metadata (``"tg"``, beside dogpile's
``"ct"``, its creation time). Invalidating a tag records its time; an
entry carrying the tag and created before that time is a miss from then
on. Nothing is deleted or scanned: the entries go when their TTL does.

The record of a deployment with Redis is the sorted set
``{prefix}::librecache:tags`` (a tag's invalidation time as its score),
announced on the channel of the same name; each process keeps the scores
in memory (:class:`TagBook`), loaded whenever its listener (re)subscribes
(:class:`~librecache.invalidation.InvalidationBus`), so a hit on a tagged
entry makes no round trip. While that channel is down, this process may
miss another's invalidation: tagged entries are then misses (their
creators run, their values are stored, and serve again once the channel
is back). A memory-only registry keeps its record in memory alone.

A record is kept for the *tag retention* (LIBRECACHE_TAG_RETENTION): at
least the longest storage lifetime of a namespace with a TTL (TTL plus
grace or fail-safe, plus jitter), so every entry a record concerns is gone
before the record is. A tagged entry older than the retention (possible
only in a namespace without a TTL) is a miss: no record can vouch for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["TAG_FIELD", "CallTags", "TagBook", "Tags", "bound_tags", "checked_tags", "resolved_tags", "stored_tags"]

#: The metadata field that holds an entry's tags (a sorted list of strings).
TAG_FIELD = "tg"

#: A call's ``tags=``: strings, or a callable returning them from the
#: memoised function's arguments.
Tags = Sequence[str] | Callable[..., Sequence[str]] | None
#: The tags of one call's creations: checked, or a function of no argument
#: returning them (called when a creation starts).
CallTags = tuple[str, ...] | Callable[[], Any]


def checked_tags(tags: Any) -> tuple[str, ...]:
    """``tags`` (an iterable of non-empty strings) as stored: sorted, once each.

    :raises TypeError: ``tags`` is a string (one tag is ``[tag]``) or not
        iterable, or holds something other than a string, named.
    :raises ValueError: an empty tag.
    """
    if isinstance(tags, (str, bytes)):
        raise TypeError(f"tags={tags!r}: a sequence of tags is expected (one tag: tags=[{tags!r}])")
    try:
        given = list(tags)
    except TypeError:
        raise TypeError(f"tags={tags!r}: a sequence of strings is expected") from None
    for tag in given:
        if type(tag) is not str:
            raise TypeError(f"tag {tag!r} is a {type(tag).__name__}: tags are strings")
        if not tag:
            raise ValueError("tag '' is empty: tags are non-empty strings")
    return tuple(sorted(set(given)))


def stored_tags(tags: Any) -> list[str]:
    """The ``"tg"`` field of an entry read back, checked.

    :raises ValueError: it is not a list of strings (a corrupt or foreign
        entry: read as a miss, logged).
    """
    if type(tags) is not list or not all(type(tag) is str for tag in tags):
        raise ValueError(f"the entry's tags ({TAG_FIELD!r}) are not a list of strings")
    return tags


def resolved_tags(tags: Tags, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The tags of one creation: ``tags`` checked, or, when it is callable,
    what it returns for the memoised function's ``args`` and ``kwargs``."""
    if tags is None:
        return ()
    if callable(tags):
        tags = tags(*args, **(kwargs or {}))
    return checked_tags(tags)


def bound_tags(tags: Tags, args: Sequence[Any], kwargs: dict[str, Any]) -> CallTags:
    """A memoised function's ``tags`` for one call (:data:`CallTags`): as
    given, or, when callable, bound to the call's ``args`` and ``kwargs``."""
    if tags is None:
        return ()
    if callable(tags):
        function = tags
        return lambda: function(*args, **kwargs)
    return tuple(tags)


#: New records after which those past the retention are forgotten.
PRUNE_EVERY = 4096


class TagBook:
    """This process's record of the tags' invalidation times (see the module).

    :param retention: seconds a record is kept (LIBRECACHE_TAG_RETENTION).
    :param live: whether the record is complete from the start (a
        memory-only registry's); otherwise it is once :meth:`load` has run
        and until :meth:`lost`.
    """

    def __init__(self, retention: float, live: bool = False) -> None:
        self.retention = retention
        #: tag -> the time of its latest invalidation known here.
        self.times: dict[str, float] = {}
        #: Whether every invalidation of the deployment reaches this record
        #: (its channel is up): tagged entries are judged only then.
        self.live = live
        self._always_live = live
        self._lock = threading.Lock()
        #: Records added since the last time those past the retention were forgotten.
        self._added = 0

    def valid(self, tags: Iterable[str], created: float) -> bool:
        """Whether an entry carrying ``tags``, created at ``created``, may be
        served: the record is live, the entry is within the retention, and
        no tag of it was invalidated after its creation began."""
        if not self.live or created < time.time() - self.retention:
            return False
        times = self.times
        return all(created >= times.get(tag, 0.0) for tag in tags)

    def invalidated(self, tags: Iterable[str], stamp: float) -> None:
        """Record an invalidation of ``tags`` at ``stamp`` (this process's
        own, an announcement, or the stored record): a later time wins."""
        with self._lock:
            times = self.times
            for tag in tags:
                if stamp > times.get(tag, 0.0):
                    if tag not in times:
                        self._added += 1
                    times[tag] = stamp
            if self._added >= PRUNE_EVERY:  # a long-lived process invalidating many tags: bounded
                self._added = 0
                horizon = time.time() - self.retention
                self.times = {tag: at for tag, at in times.items() if at >= horizon}

    def load(self, stored: Iterable[tuple[str, float]]) -> None:
        """Take the stored record (read once subscribed): the record is
        live from now on; records past the retention are forgotten."""
        horizon = time.time() - self.retention
        with self._lock:
            times = {tag: stamp for tag, stamp in self.times.items() if stamp >= horizon}
            for tag, stamp in stored:
                if stamp > times.get(tag, 0.0):
                    times[tag] = stamp
            self.times = times
            self.live = True

    def lost(self) -> None:
        """The channel is down: invalidations may be missed from now on."""
        if not self._always_live:
            self.live = False

    def reset(self) -> None:
        """Forget everything (a forked child reads the record again)."""
        with self._lock:
            self.times = {}
            self.live = self._always_live
