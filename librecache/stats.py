"""What the cache does, counted per registry and namespace (a leaf module:
the exporters of :mod:`librecache.metrics` read these counters).

Each :class:`~librecache.Caches` keeps one :class:`NamespaceStats` per
namespace, always on (plain integer increments, no lock: under CPython's
GIL an ``obj.count += 1`` of a slotted object is not interleaved by another
thread's bytecode); LIBRECACHE_METRICS=false turns the counting off.
:meth:`Caches.stats() <librecache.Caches.stats>` returns them as a plain
mapping; :class:`~librecache.metrics.PrometheusCollector` and
:func:`~librecache.metrics.instrument` export them.

Every cache call is counted once, as a hit or a miss, however many reads
dogpile makes (it reads twice on a miss: outside the creation lock, then
inside it):

``hits``
    calls answered with a cached value (near hits included, and calls that
    waited for another creator and then got its value);
``misses``
    calls that found nothing usable: a ``get`` that returned ``NO_VALUE``,
    a ``get_or_create`` or memoised call that ran its creator; each key of
    ``get_multi`` / ``get_or_create_multi`` is one call;
``creations``
    creator or memoised-function runs (their durations in the histogram
    ``creation_seconds``);
``lock_waits``
    calls that found no value, went for the key's creation lock, and then
    got the value another creator had stored meanwhile (also hits);
``near_hits``
    calls answered by the namespace's near cache (also hits);
``errors``
    Redis failures met by the namespace's operations (outages, ``OOM``,
    refused commands);
``fallthroughs``
    Redis operations of the namespace answered without Redis (a read that
    became a miss, a write dropped, a creation lock taken in this process
    only). One call can count several: a memoised call during an outage
    counts its read, its lock and its write.
``stale_served``
    calls served a stale value by the fail-safe (its creator failed, or
    outlasted the soft time-out), also hits;
``soft_timeouts``, ``hard_timeouts``
    calls whose wait for a creator reached the soft time-out (then served
    the fail-safe's value) or the hard one (then raised
    :class:`~librecache.CreationTimeout`);
``eager_refreshes``
    refreshes started in the background by a hit past the eager-refresh
    point;
``background_failures``
    background work that failed (a creator that outlasted its caller, an
    eager refresh), logged and never raised;
``tag_misses``
    tagged entries read and found invalid: a tag of theirs was invalidated
    after their creation began (:mod:`librecache.tags`), or the tags'
    record was not live (also misses, or creations).

A stampede of 8 threads on one cold key counts 1 miss, 1 creation, 7 hits
and (when the 7 found the key empty and queued on its lock) 7 lock waits.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from . import forks

__all__ = ["BUCKETS", "COUNTERS", "NamespaceStats", "snapshot"]

#: The counters of a namespace, in the order they are reported.
COUNTERS = ("hits", "misses", "creations", "lock_waits", "near_hits", "errors", "fallthroughs", "stale_served",
            "soft_timeouts", "hard_timeouts", "eager_refreshes", "background_failures", "tag_misses")

#: Upper bounds (seconds) of the ``creation_seconds`` histogram buckets (Prometheus' defaults).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

class NamespaceStats:
    """The counters of one namespace in one registry (see the module)."""

    __slots__ = (
        "__weakref__",
        "background_failures",
        "buckets",
        "creation_sum",
        "creations",
        "eager_refreshes",
        "errors",
        "fallthroughs",
        "hard_timeouts",
        "hits",
        "lock_waits",
        "misses",
        "namespace",
        "near",
        "soft_timeouts",
        "stale_served",
        "tag_misses",
    )

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: The namespace's near cache (it counts its own hits), when it has one.
        self.near: Any = None
        self._reset()
        forks.register(self)

    def _reset(self) -> None:
        self.hits = 0
        self.misses = 0
        self.creations = 0
        self.lock_waits = 0
        self.errors = 0
        self.fallthroughs = 0
        self.stale_served = 0
        self.soft_timeouts = 0
        self.hard_timeouts = 0
        self.eager_refreshes = 0
        self.background_failures = 0
        self.tag_misses = 0
        #: Seconds spent in creators, and creations per bucket (the last: above every bound).
        self.creation_sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def _after_fork(self) -> None:
        # a forked worker counts its own calls, not its parent's
        self._reset()

    def created(self, seconds: float) -> None:
        """Count a creator run of ``seconds``."""
        self.misses += 1
        self.creations += 1
        self.creation_sum += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1

    @property
    def near_hits(self) -> int:
        near = self.near
        return int(near.hits) if near is not None else 0

    def as_dict(self) -> dict[str, Any]:
        """The counters, plus ``creation_seconds`` (sum and cumulative buckets)."""
        counts = {name: getattr(self, name) for name in COUNTERS}
        cumulative, total = {}, 0
        for bound, count in zip((*BUCKETS, float("inf")), self.buckets, strict=True):
            total += count
            cumulative[bound] = total
        counts["creation_seconds"] = {"sum": self.creation_sum, "count": total, "buckets": cumulative}
        return counts


def snapshot(stats: Mapping[str, NamespaceStats]) -> dict[str, dict[str, Any]]:
    """``{namespace: counters}`` of a registry's stats."""
    return {name: namespace.as_dict() for name, namespace in stats.items()}
