"""The exporters of librecache's counters (:mod:`librecache.stats`, where
each counter is described): :class:`PrometheusCollector` for
:mod:`prometheus_client` and :func:`instrument` for OpenTelemetry. They sit
above the registry, which keeps the counters."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import __version__
from .registry import Caches, get_caches
from .stats import BUCKETS, COUNTERS, NamespaceStats, snapshot

__all__ = [
    "BUCKETS",
    "COUNTERS",
    "NamespaceStats",
    "PrometheusCollector",
    "instrument",
    "snapshot",
]


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: install librecache[{extra}] "
                          f"(pip install 'librecache[{extra}]')") from exc


def _registry(caches: Caches | None) -> Caches:
    if caches is not None:
        return caches
    return get_caches()


def _namespaces(report: dict[str, Any]) -> dict[str, Any]:
    """The per-namespace counters of :meth:`Caches.stats() <librecache.Caches.stats>`
    (without its registry-wide entries: ``redis``, ``tag_invalidations``)."""
    return {name: counts for name, counts in report.items() if name not in REGISTRY_WIDE}


#: The entries of :meth:`Caches.stats() <librecache.Caches.stats>` that are not a namespace's.
REGISTRY_WIDE = ("redis", "tag_invalidations")


class PrometheusCollector:
    """A :mod:`prometheus_client` custom collector of a registry's counters:
    ``librecache_{counter}_total`` (label ``namespace``) for each of
    :data:`COUNTERS`, the histogram ``librecache_creation_seconds`` (label
    ``namespace``), the counter ``librecache_tag_invalidations_total`` and
    the gauge ``librecache_redis_up`` (1 or 0; absent when Redis is off).

    :param caches: the registry; ``None``: the process default registry
        as it is at each scrape, so a :func:`~librecache.configure` that
        replaces it is followed.
    :raises ImportError: ``prometheus_client`` is not installed (the
        ``librecache[prometheus]`` extra).

    Register it on any registry: ``REGISTRY.register(PrometheusCollector())``.
    """

    def __init__(self, caches: Caches | None = None) -> None:
        self._metrics = _need("prometheus_client.core", "prometheus")
        self._caches = caches

    def collect(self) -> Iterator[Any]:
        core = self._metrics
        caches = _registry(self._caches)
        report = caches.stats()
        health = report["redis"]
        stats = _namespaces(report)
        for counter in COUNTERS:
            family = core.CounterMetricFamily(
                f"librecache_{counter}", f"librecache {counter.replace('_', ' ')} per namespace",
                labels=["namespace"],
            )
            for namespace, counts in stats.items():
                family.add_metric([namespace], counts[counter])
            yield family
        histogram = core.HistogramMetricFamily(
            "librecache_creation_seconds", "Time spent creating values (creators, memoised functions)",
            labels=["namespace"],
        )
        for namespace, counts in stats.items():
            seconds = counts["creation_seconds"]
            buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
                       for bound, count in seconds["buckets"].items()]
            histogram.add_metric([namespace], buckets, seconds["sum"])
        yield histogram
        invalidations = core.CounterMetricFamily("librecache_tag_invalidations",
                                                 "Calls of invalidate_tags made by this process")
        invalidations.add_metric([], report["tag_invalidations"])
        yield invalidations
        if health is not None:
            yield core.GaugeMetricFamily("librecache_redis_up", "1 while Redis is reachable",
                                         value=1 if health["up"] else 0)

    def describe(self) -> Iterable[Any]:
        """Nothing: registering does not scrape, and no name is reserved."""
        return []


# --------------------------------------------------------------------------
# OpenTelemetry
# --------------------------------------------------------------------------


def instrument(caches: Caches | None = None, meter_provider: Any = None) -> list[Any]:
    """Register observable counters of a registry's counters with
    OpenTelemetry: ``librecache_{counter}_total`` for each of
    :data:`COUNTERS` (attribute ``namespace``), ``librecache_creation_seconds_sum``
    and ``librecache_creation_seconds_count``, ``librecache_tag_invalidations_total``,
    and the observable gauge ``librecache_redis_up``.

    :param caches: the registry; ``None``: the process default registry as
        it is at each collection.
    :param meter_provider: an OpenTelemetry ``MeterProvider``; ``None``: the
        global one.
    :returns: the instruments created.
    :raises ImportError: ``opentelemetry-api`` is not installed (the
        ``librecache[otel]`` extra).
    """
    metrics_api = _need("opentelemetry.metrics", "otel")
    meter = metrics_api.get_meter("librecache", __version__, meter_provider)

    def observe(read: Callable[[dict[str, Any]], float]) -> Callable[[Any], list[Any]]:
        def callback(_options: Any) -> list[Any]:
            stats = _namespaces(_registry(caches).stats())
            return [metrics_api.Observation(read(counts), {"namespace": namespace})
                    for namespace, counts in stats.items()]
        return callback

    def counter_reader(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda counts: counts[name]

    instruments = [
        meter.create_observable_counter(f"librecache_{name}_total", [observe(counter_reader(name))],
                                        description=f"librecache {name.replace('_', ' ')} per namespace")
        for name in COUNTERS
    ]
    instruments.append(meter.create_observable_counter(
        "librecache_creation_seconds_sum", [observe(lambda counts: counts["creation_seconds"]["sum"])],
        unit="s", description="Time spent creating values"))
    instruments.append(meter.create_observable_counter(
        "librecache_creation_seconds_count", [observe(lambda counts: counts["creation_seconds"]["count"])],
        description="Values created"))

    def tag_invalidations(_options: Any) -> list[Any]:
        return [metrics_api.Observation(_registry(caches).stats()["tag_invalidations"])]

    instruments.append(meter.create_observable_counter(
        "librecache_tag_invalidations_total", [tag_invalidations],
        description="Calls of invalidate_tags made by this process"))

    def redis_up(_options: Any) -> list[Any]:
        health = _registry(caches).health()
        return [] if health is None else [metrics_api.Observation(1 if health["up"] else 0)]

    instruments.append(meter.create_observable_gauge("librecache_redis_up", [redis_up],
                                                     description="1 while Redis is reachable"))
    return instruments
