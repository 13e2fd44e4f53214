"""Registries of regions: :class:`Caches`, and the process default.

A :class:`Caches` builds one :class:`dogpile.cache.region.CacheRegion` per
namespace of its configuration (LibreChat's 22 :class:`~librecache.CacheKeys`
and those declared in LIBRECACHE_NAMESPACES). The process default registry's
regions are created unconfigured, so that
``@get_region("ROLES").cache_on_arguments()`` works at import time (for a
declared namespace too, read from the environment's LIBRECACHE_NAMESPACES);
the first use of any of them configures the default from the environment,
and :func:`configure` re-points them all at a new configuration.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import environs
from dogpile.cache.api import NO_VALUE, CachedValue, CantDeserializeException
from dogpile.cache.exception import DogpileCacheException
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion, DefaultInvalidationStrategy
from dogpile.util import memoized_property
from redis.exceptions import ConnectionError as RedisConnectionError

from . import aio, forks, keygen
from . import backends as _backends  # noqa: F401  (registers the backends)
from ._compat import DOGPILE_METADATA_DELIMITER, RegionHooks
from .backends import aio_redis
from .backends.aio_redis import aclose_clients, close_clients
from .backends.routing import sync_port
from .config import CacheConfig
from .engine.background import Background
from .engine.judge import parse_metadata, tagged_out
from .engine.locks import LeasedKey
from .engine.policy import PLAIN, Policy
from .errors import ConfigurationError
from .fastpath import (
    MULTI_SETTINGS,
    get_multi,
    get_or_create,
    get_or_create_multi,
    memoize,
    policy_of,
    tagged_multi_companions,
    with_settings,
)
from .formats import JsonFormat, format_for
from .guard import CLOSE_TIMEOUT, RedisConnection
from .health import HealthReport
from .invalidation import InvalidationBus
from .keyspace import KeySpace, memory_mangler
from .logs import RateLimitedLog
from .memoised import Memoiser
from .namespaces import AnyNamespace, CacheKeys, parse_namespace
from .nearcache import NearCache
from .parsing import parse_declarations
from .prefixing import PrefixedRedis, PrefixedRedisCluster
from .signing import EnvelopeSigner, Signer
from .stats import NamespaceStats, snapshot
from .tags import TAG_FIELD, TagBook, Tags, checked_tags, stored_tags

__all__ = ["Caches", "LibreRegion", "ainvalidate_tags", "configure", "get_caches", "get_region", "invalidate_tags",
           "redis_client"]

log = logging.getLogger(__name__)

ConfigSource = CacheConfig | Mapping[str, str] | None

# dogpile's own method, called without super() on the hot path
_region_get = CacheRegion.get

#: dogpile :class:`~dogpile.cache.proxy.ProxyBackend` classes (or factories
#: returning one) to wrap every namespace's backend with, or a mapping
#: ``{namespace: [...]}`` for some namespaces only.
Wrap = Sequence[Callable[[], ProxyBackend]] | Mapping[CacheKeys | str, Sequence[Callable[[], ProxyBackend]]] | None


def wrappers_of(
    wrap: Wrap, namespace_of: Callable[[CacheKeys | str], AnyNamespace] = parse_namespace,
) -> Callable[[AnyNamespace], list[ProxyBackend]]:
    """The proxies of each namespace: fresh instances per region (dogpile
    binds a proxy instance to one backend).

    :param namespace_of: resolves a mapping's names (a configuration's
        :meth:`~librecache.CacheConfig.namespace`, for declared names).
    :raises UnknownNamespaceError: a mapping names an unknown namespace.
    :raises TypeError: something given is not callable.
    """
    if wrap is None:
        return lambda namespace: []
    every: list[Callable[[], ProxyBackend]] = []
    per_namespace: dict[AnyNamespace, list[Callable[[], ProxyBackend]]] = {}
    if isinstance(wrap, Mapping):
        per_namespace = {namespace_of(name): list(proxies) for name, proxies in wrap.items()}
    else:
        every = list(wrap)
    for proxies in [every, *per_namespace.values()]:
        for proxy in proxies:
            if not callable(proxy):
                raise TypeError(f"wrap: {proxy!r} is not a ProxyBackend class or factory")

    def build(namespace: AnyNamespace) -> list[ProxyBackend]:
        proxies = per_namespace.get(namespace, every)
        return [make() for make in proxies] if proxies else []

    return build


#: The background of a region no registry configured yet (its work runs as any other's).
_UNOWNED = Background()
#: The tags of a region no registry configured yet: nothing invalidated.
_NO_TAGS = TagBook(float("inf"), live=True)


class LibreRegion(RegionHooks):
    # dogpile's internals are reached through librecache._compat.RegionHooks,
    # whose public methods are overridden here (DOGPILE_REGION_PRIVATES lists
    # them, and why; tests/test_compat.py checks them).
    """The :class:`~dogpile.cache.region.CacheRegion` of one namespace.

    All of dogpile's API is here unchanged. Two additions: a region of the
    process default registry configures that registry from the environment
    on first use, and a value that cannot be read back (corrupt or foreign
    bytes under a key) is a cache miss, logged, instead of an exception.

    :ivar namespace: the :class:`~librecache.CacheKeys` member, or the
        declared :class:`~librecache.namespaces.Namespace`.
    """

    def __init__(self, namespace: AnyNamespace, on_first_use: Callable[[], Any] | None = None) -> None:
        self.namespace = namespace
        self._on_first_use = on_first_use
        self._limited = RateLimitedLog(log)
        #: The namespace's format (:mod:`librecache.formats`); ``None``: pickle, dogpile's own.
        self.value_format: JsonFormat | None = None
        #: The near cache of this namespace, when configured.
        self.near_cache: NearCache | None = None
        #: The counters of this namespace in its registry (``None``: LIBRECACHE_METRICS=false).
        self.counters: NamespaceStats | None = None
        #: [backend, sync port, async port] of the current backend (librecache.backends.routing).
        self.ports: list[Any] | None = None
        #: The namespace's fail-safe, time-outs, eager refresh and jitter
        #: (:class:`~librecache.engine.policy.Policy`); a call's keyword arguments apply over it.
        self.policy: Policy = PLAIN
        #: The registry's background work (:class:`~librecache.engine.background.Background`).
        self.background: Background = _UNOWNED
        #: The tags' invalidation times this registry knows (:mod:`librecache.tags`).
        self.tag_book: TagBook = _NO_TAGS
        super().__init__(
            name=namespace.value, key_mangler=self._mangle_on_first_use,
            function_key_generator=keygen.function_key_generator,
            function_multi_key_generator=keygen.function_multi_key_generator,
        )

    def __repr__(self) -> str:
        state = "configured" if self.is_configured else "not configured"
        return f"<LibreRegion {self.namespace.value} ({state})>"

    def _first_use(self) -> None:
        hook = self.__dict__.get("_on_first_use")
        if hook is None:
            from dogpile.cache.exception import RegionNotConfigured

            raise RegionNotConfigured(f"the region of {self.namespace.value} is not configured")
        hook()

    def _mangle_on_first_use(self, key: str) -> str:
        self._first_use()
        mangler = self.key_mangler
        return mangler(key) if mangler is not None else key

    @memoized_property
    def backend(self) -> Any:
        self._first_use()
        return self.__dict__["backend"]

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes that configure() sets.
        if name == "expiration_time" and self.__dict__.get("_on_first_use"):
            self._first_use()
            return self.__dict__[name]
        raise AttributeError(name)

    def invalidate(self, hard: bool = True) -> None:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.invalidate`,
        shared with every process of the deployment for Redis namespaces.

        :raises DogpileCacheException: ``hard=False`` on a namespace without
            expiration time. dogpile raises this from every later read
            instead; refused here, the mark is never stored, so it cannot
            break the namespace in other processes.
        """
        if not self.is_configured:
            self._first_use()
        if not hard and self.expiration_time is None:
            raise DogpileCacheException(
                f"namespace {self.namespace.value} has no expiration time, and soft invalidation needs one "
                "(dogpile: 'Non-None expiration time required for soft invalidation'); use "
                f"invalidate(hard=True), or give {self.namespace.value} a TTL in LIBRECACHE_NAMESPACE_TTLS"
            )
        super().invalidate(hard)

    def serialize_elements(self, payload: Any, metadata: Any) -> bytes:
        form = self.value_format
        if form is None:
            return super().serialize_elements(payload, metadata)
        return form.encode(payload, metadata)

    def parse_stored(self, value: Any) -> Any:
        if value is None or value is NO_VALUE:
            return NO_VALUE
        try:
            form = self.value_format
            if form is not None:
                return form.decode(value)
            header, _, payload = value.partition(DOGPILE_METADATA_DELIMITER)
            metadata = parse_metadata(header)
            if not isinstance(metadata.get("ct"), (int, float)):
                raise ValueError("no creation time in the metadata")
            if TAG_FIELD in metadata:
                stored_tags(metadata[TAG_FIELD])
            try:
                return CachedValue(self.deserializer(payload), metadata)  # type: ignore[misc]
            except CantDeserializeException:
                return NO_VALUE
        except Exception as exc:
            self._limited.warning(
                "corrupt",
                "namespace %s: a cached value cannot be read (%s: %s); treated as a miss",
                self.namespace.value, type(exc).__name__, exc,
            )
            return NO_VALUE

    # -- the near cache: read through, write through -----------------------------------

    def read_cached(self, key: str) -> Any:
        near = self.near_cache
        if near is None or not near.enabled:
            return super().read_cached(key)
        value = near.lookup(key, self.expiration_time)
        if value is not NO_VALUE:
            return value
        generation = near.generation
        fetched = super().read_cached(key)
        if isinstance(fetched, CachedValue):
            near.store(key, fetched, generation)
        return fetched

    def read_cached_many(self, keys: Any) -> Any:
        near = self.near_cache
        if near is None or not near.enabled:
            return super().read_cached_many(keys)
        keys = list(keys)
        found = {key: near.lookup(key, self.expiration_time) for key in keys}
        missing = [key for key, value in found.items() if value is NO_VALUE]
        if missing:
            generation = near.generation
            for key, value in zip(missing, super().read_cached_many(missing), strict=True):
                found[key] = value
                if value is not NO_VALUE:
                    near.store(key, value, generation)
        return [found[key] for key in keys]

    def near_copy(self, value: Any) -> Any:
        """What a read of ``value`` from Redis would give (its format's form)."""
        form = self.value_format
        if form is None:
            return value
        return CachedValue(form.normalize(value.payload), value.metadata)  # type: ignore[call-arg]

    def write_cached(self, key: str, value: Any) -> None:
        super().write_cached(key, value)
        if type(key) is LeasedKey and not key.stored:  # a creation whose lease was revoked meanwhile
            return
        near = self.near_cache
        if near is not None:
            near.store(key, self.near_copy(value), near.generation)

    def write_cached_many(self, mapping: Any) -> None:
        super().write_cached_many(mapping)
        near = self.near_cache
        if near is not None:
            generation = near.generation
            for key, value in mapping.items():
                near.store(key, self.near_copy(value), generation)

    # -- tags (librecache.tags) -----------------------------------------------------------

    def unexpired_value_fn(self, expiration_time: Any, ignore_expiration: bool) -> Callable[[Any], Any]:
        """dogpile's judgement of a ``get`` (both doors), and a value whose
        tag was invalidated after its creation is a miss (unless
        ``ignore_expiration``, which dogpile's invalidations do not cover either)."""
        judge = super().unexpired_value_fn(expiration_time, ignore_expiration)
        if ignore_expiration:
            return judge

        def judged(value: Any) -> Any:
            value = judge(value)
            if value is not NO_VALUE and TAG_FIELD in value.metadata and tagged_out(self, value.metadata):
                return NO_VALUE
            return value

        return judged

    def tags_for_writing(self, tags: Any) -> tuple[str, ...]:
        """``tags`` checked for a write to this namespace (:func:`~librecache.tags.checked_tags`).

        :raises TypeError, ValueError: a tag that is not a non-empty string,
            or a namespace in the ``keyv`` format (LibreChat's Node
            processes, which read it, know nothing of tags).
        """
        checked = checked_tags(tags)
        form = self.value_format
        if checked and form is not None and form.keyv:
            raise ValueError(f"namespace {self.namespace.value} uses the keyv format (LIBRECACHE_FORMATS), read by "
                             "LibreChat's Node processes, which know nothing of tags: its entries cannot carry tags")
        return checked

    def decorator_tags(self, tags: Tags) -> Tags:
        """A memoised function's ``tags=``: ``None``, a function (called per
        creation), or a sequence, checked now.

        :raises TypeError, ValueError: a bad tag, named."""
        if tags is None or callable(tags):
            return tags
        return self.tags_for_writing(tags)

    def tagged_metadata(self, tags: tuple[str, ...]) -> dict[str, Any]:
        """Metadata of a value written now, carrying ``tags``."""
        metadata = self.new_metadata()
        if tags:
            metadata[TAG_FIELD] = list(tags)
        return metadata  # type: ignore[no-any-return]

    def set(self, key: Any, value: Any, tags: Sequence[str] | None = None) -> None:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.set`; with
        ``tags``, the entry carries them (:meth:`Caches.invalidate_tags`).

        :raises TypeError, ValueError: a bad tag, named."""
        if tags is None:
            super().set(key, value)
            return
        checked = self.tags_for_writing(tags)
        if self.key_mangler is not None:
            key = self.key_mangler(key)
        self.write_cached(key, self.new_value(value, self.tagged_metadata(checked)))

    def set_multi(self, mapping: Mapping[Any, Any], tags: Sequence[str] | None = None) -> None:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.set_multi`;
        with ``tags``, every entry carries them."""
        if tags is None:
            super().set_multi(mapping)
            return
        checked = self.tags_for_writing(tags)
        if not mapping:
            return
        metadata = self.tagged_metadata(checked)
        mangler = self.key_mangler
        self.write_cached_many({(mangler(key) if mangler is not None else key): self.new_value(value, metadata)
                                for key, value in mapping.items()})

    # -- counting (librecache.stats): each call once, as a hit or a miss ---------------

    def get(self, key: Any, expiration_time: float | None = None, ignore_expiration: bool = False) -> Any:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get`, counted
        as a hit or a miss (:mod:`librecache.stats`)."""
        value = _region_get(self, key, expiration_time, ignore_expiration)
        stats = self.counters
        if stats is not None:
            if value is NO_VALUE:
                stats.misses += 1
            else:
                stats.hits += 1
        return value

    def get_multi(self, keys: Any, expiration_time: float | None = None, ignore_expiration: bool = False) -> Any:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_multi`;
        each key counted as a hit or a miss."""
        values = get_multi(self, keys, expiration_time, ignore_expiration)
        stats = self.counters
        if stats is not None:
            missed = values.count(NO_VALUE)
            stats.misses += missed
            stats.hits += len(values) - missed
        return values

    def get_or_create(self, key: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                      should_cache_fn: Callable[[Any], bool] | None = None,
                      creator_args: tuple[Any, Mapping[str, Any]] | None = None, tags: Sequence[str] | None = None,
                      **settings: float | None) -> Any:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_or_create`,
        by the engine (:mod:`librecache.engine`), counted once: a hit, or a
        miss whose creator run is a creation (a call that waited for the
        creation lock and got another creator's value is a hit and a lock
        wait). A value created by a call that began before an invalidation
        or a write of its key is returned, not stored (``docs/design.rst``).

        :param settings: this call's ``fail_safe``, ``fail_safe_throttle``,
            ``soft_timeout``, ``hard_timeout`` (seconds), ``eager_refresh``
            (a fraction of the TTL) and ``ttl_jitter`` (seconds), over the
            namespace's (``docs/failsafe.rst``).
        :param tags: tags the created value carries (``docs/tags.rst``).
        :raises CreationTimeout: the hard time-out passed.
        :raises TypeError, ValueError: a bad tag, named.
        """
        return get_or_create(self, key, creator, expiration_time, should_cache_fn, creator_args,
                             policy_of(self, settings), self.tags_for_writing(tags) if tags is not None else ())

    def get_or_create_multi(self, keys: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                            should_cache_fn: Callable[[Any], bool] | None = None, tags: Sequence[str] | None = None,
                            **settings: float | None) -> Any:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_or_create_multi`,
        by the engine; each key counted as a hit or a miss, the creator run
        as a creation. ``settings`` and ``tags``: as :meth:`get_or_create`'s."""
        bound: Any = self.tags_for_writing(tags) if tags is not None else ()
        if not settings and tags is None:
            settings, bound = MULTI_SETTINGS.get() or ({}, ())
        return get_or_create_multi(self, keys, creator, expiration_time, should_cache_fn, policy_of(self, settings),
                                   bound)

    def cache_on_arguments(  # type: ignore[override]
        self,
        namespace: str | None = None,
        expiration_time: float | Callable[[], float] | None = None,
        should_cache_fn: Callable[[Any], bool] | None = None,
        to_str: Callable[[Any], str] = str,
        function_key_generator: Callable[..., Any] | None = None,
        tags: Tags = None,
        **settings: float | None,
    ) -> Memoiser:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.cache_on_arguments`,
        with the same keys and attributes (``set``, ``get``, ``invalidate``,
        ``refresh``, ``original``), but without binding the signature with
        :mod:`inspect` on every call (see :mod:`librecache.fastpath`). Type
        checkers see the function's own parameters and return type, and
        typed companions (:mod:`librecache.memoised`).

        :param tags: tags the function's values carry (``docs/tags.rst``): a
            sequence, or a function of the same arguments returning them
            (called when a value is created); a sequence is checked here.
        :param settings: the function's ``fail_safe``, ``soft_timeout``...
            as :meth:`get_or_create`'s; checked here.
        """
        make_keys = function_key_generator or self.function_key_generator
        PLAIN.for_call(**settings)
        tags = self.decorator_tags(tags)

        def decorator(user_func: Callable[..., Any], /) -> Any:
            if to_str is str:
                key_generator = make_keys(namespace, user_func)
            else:
                key_generator = make_keys(namespace, user_func, to_str)
            if inspect.iscoroutinefunction(user_func):  # an async def: awaitable, same keys (librecache.aio)
                return aio.memoize_async(self, key_generator, user_func, expiration_time, should_cache_fn, settings,
                                         tags)
            return memoize(self, key_generator, user_func, expiration_time, should_cache_fn, settings, tags)

        return decorator

    def cache_multi_on_arguments(  # type: ignore[override]
        self,
        namespace: str | None = None,
        expiration_time: float | Callable[[], float] | None = None,
        should_cache_fn: Callable[[Any], bool] | None = None,
        asdict: bool = False,
        to_str: Callable[[Any], str] = str,
        function_multi_key_generator: Callable[..., Any] | None = None,
        tags: Tags = None,
        **settings: float | None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """dogpile's :meth:`~dogpile.cache.region.CacheRegion.cache_multi_on_arguments`;
        on an ``async def``, an ``async def`` with awaitable companions
        (:mod:`librecache.aio`). ``settings`` and ``tags``: as
        :meth:`cache_on_arguments`'s, checked here (one set of tags for
        the values of one call)."""
        PLAIN.for_call(**settings)
        tags = self.decorator_tags(tags)
        sync = super().cache_multi_on_arguments(namespace, expiration_time, should_cache_fn, asdict, to_str,
                                                function_multi_key_generator)
        make_keys = function_multi_key_generator or self.function_multi_key_generator

        def decorator(user_func: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.iscoroutinefunction(user_func):
                decorated = sync(user_func)
                if not settings and tags is None:
                    return decorated  # type: ignore[no-any-return]
                decorated = with_settings(decorated, settings, tags)
                if tags is not None:
                    tagged_multi_companions(self, decorated, make_keys(namespace, user_func, to_str=to_str), user_func,
                                            asdict, tags)
                return decorated
            key_generator = make_keys(namespace, user_func, to_str=to_str)
            return aio.memoize_multi_async(self, key_generator, user_func, expiration_time, should_cache_fn, asdict,
                                           settings, tags)

        return decorator

    # -- awaitable calls (librecache.aio), named as Django's async cache API names them --

    async def aget(self, key: Any, expiration_time: float | None = None, ignore_expiration: bool = False) -> Any:
        """:meth:`get`, awaitable: the value, or ``NO_VALUE``."""
        return await aio.aget(self, key, expiration_time, ignore_expiration)

    async def aget_multi(self, keys: Any, expiration_time: float | None = None,
                         ignore_expiration: bool = False) -> list[Any]:
        """:meth:`get_multi`, awaitable."""
        return await aio.aget_multi(self, keys, expiration_time, ignore_expiration)

    async def aset(self, key: Any, value: Any, tags: Sequence[str] | None = None) -> None:
        """:meth:`set`, awaitable."""
        await aio.aset(self, key, value, self.tags_for_writing(tags) if tags is not None else ())

    async def aset_multi(self, mapping: Mapping[Any, Any], tags: Sequence[str] | None = None) -> None:
        """:meth:`set_multi`, awaitable."""
        await aio.aset_multi(self, mapping, self.tags_for_writing(tags) if tags is not None else ())

    async def adelete(self, key: Any) -> None:
        """:meth:`~dogpile.cache.region.CacheRegion.delete`, awaitable."""
        await aio.adelete(self, key)

    async def adelete_multi(self, keys: Any) -> None:
        """:meth:`~dogpile.cache.region.CacheRegion.delete_multi`, awaitable."""
        await aio.adelete_multi(self, keys)

    async def aget_or_create(self, key: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                             should_cache_fn: Callable[[Any], bool] | None = None,
                             creator_args: tuple[Any, Mapping[str, Any]] | None = None,
                             tags: Sequence[str] | None = None, **settings: float | None) -> Any:
        """:meth:`get_or_create`, awaitable; ``creator`` may be sync or async
        (a sync creator runs on the loop, and is not timed)."""
        return await aio.aget_or_create(self, key, creator, expiration_time, should_cache_fn, creator_args,
                                        policy_of(self, settings),
                                        self.tags_for_writing(tags) if tags is not None else ())

    async def aget_or_create_multi(self, keys: Any, creator: Callable[..., Any],
                                   expiration_time: float | None = None,
                                   should_cache_fn: Callable[[Any], bool] | None = None,
                                   tags: Sequence[str] | None = None, **settings: float | None) -> list[Any]:
        """:meth:`get_or_create_multi`, awaitable; ``creator`` may be sync or async."""
        return await aio.aget_or_create_multi(self, keys, creator, expiration_time, should_cache_fn,
                                              policy_of(self, settings),
                                              self.tags_for_writing(tags) if tags is not None else ())

    def key_is_locked(self, key: Any) -> bool:
        """True while a creator holds ``key``'s creation lock, in this
        process or (Redis namespaces) any other. The key is mangled as
        :meth:`get_or_create` mangles it; the lock of the key as given
        (``backend.get_mutex(key)``, as dogpile's own tests take it) counts
        too."""
        mangled = self.key_mangler(key) if self.key_mangler is not None else key
        port = sync_port(self)
        return bool(port.locked(mangled) or (mangled != key and port.locked(key)))

    @property
    def unwrapped_backend(self) -> Any:
        """The librecache backend under the ``wrap=`` proxies (dogpile's
        ``actual_backend`` is computed once and not renewed by a new
        ``configure``)."""
        backend = self.backend
        while isinstance(backend, ProxyBackend):
            backend = backend.proxied
        return backend



class Caches:
    """A registry: one region per namespace, built from one configuration.

    :param config: a :class:`CacheConfig`, a mapping of environment
        variables, or ``None`` to read :data:`os.environ`.
    :param wrap: dogpile :class:`~dogpile.cache.proxy.ProxyBackend` classes
        (or factories) wrapping every namespace's backend, in dogpile's
        ``wrap=`` order, or ``{namespace: [...]}`` for some namespaces;
        each region gets its own instances.

    Iterating yields ``(name, region)`` pairs. Close it (or use it as a
    context manager) to release its connections and its listener thread.
    """

    def __init__(self, config: ConfigSource = None, *, wrap: Wrap = None,
                 _regions: dict[AnyNamespace, LibreRegion] | None = None) -> None:
        self.config = config if isinstance(config, CacheConfig) else CacheConfig.from_env(config)
        self.wrap = wrap
        self._wrappers = wrappers_of(wrap, self.config.namespace)
        self.keyspace = KeySpace(self.config.key_prefix)
        self._connection = RedisConnection(self.config) if self.config.use_redis else None
        self._bus = InvalidationBus(self._connection, self.keyspace) if self._connection else None
        #: The tags' invalidation times (:mod:`librecache.tags`): the bus's
        #: when Redis is used, kept current by its listener; this process's own otherwise.
        self.tag_book = self._bus.tag_book if self._bus is not None and \
            any(self.config.uses_redis(ns) for ns in self.config.namespaces) else \
            TagBook(self.config.tag_retention_seconds, live=True)
        keys = self.config.signing_keys
        self._signer = Signer(keys) if keys else None
        self._envelope_signer = EnvelopeSigner(keys) if keys else None
        #: Creators that outlast their callers, eager refreshes (librecache.engine.background).
        self._background = Background()
        namespaces = self.config.namespaces
        if _regions is None:
            self._regions: dict[AnyNamespace, LibreRegion] = {ns: LibreRegion(ns) for ns in namespaces}
        else:  # the process default's regions: one per namespace ever declared, kept
            for ns in namespaces:
                if ns not in _regions:
                    _regions[ns] = LibreRegion(ns, on_first_use=_ensure_default)
            self._regions = {ns: _regions[ns] for ns in namespaces}
            valid = ", ".join(ns.value for ns in namespaces)
            for ns, region in _regions.items():
                if ns not in self._regions:  # declared by an earlier configuration only
                    region.configure("librecache.undeclared", arguments={"name": ns.value, "valid": valid},
                                     replace_existing_backend=True)
                    region.set_key_mangler(memory_mangler(ns))
                    region.near_cache = region.counters = region.value_format = None
        #: This registry's counters (:mod:`librecache.stats`), fresh for every registry.
        self._stats = {namespace.value: NamespaceStats(namespace.value) for namespace in self._regions}
        for namespace, region in self._regions.items():
            self._configure(region, namespace)
        if self._bus is not None and any(self.config.uses_redis(ns) for ns in namespaces):
            self._bus.start()
        self.closed = False
        #: Calls of :meth:`invalidate_tags` made by this process.
        self._tag_invalidations = 0

    def backend_arguments(self, name: CacheKeys | str) -> tuple[str, dict[str, Any]]:
        """The dogpile backend name and the arguments this registry gives the
        backend of a namespace (to configure a region of one's own alike).

        The ``json`` and ``keyv`` formats are written and read by
        :class:`LibreRegion` (:mod:`librecache.formats`); a plain dogpile
        region configured with these arguments stores dogpile's pickles, so
        use them for ``pickle`` namespaces."""
        config = self.config
        namespace = config.namespace(name)
        form = self.format(namespace)
        if not config.uses_redis(namespace):
            return "librecache.memory", {
                "name": namespace.value,
                "max_entries": config.memory_max_entries,
                "expires_after": config.storage_expiry(namespace),
                "format": form,
            }
        assert self._connection is not None and self._bus is not None
        arguments: dict[str, Any] = {
            "connection": self._connection,
            "signer": self._signer if form is None else self._envelope_signer,
            "keyspace": self.keyspace,
            "namespace": namespace,
            "expires_after": config.redis_expiry(namespace),
            "lock_timeout": config.lock_timeout,
            "stats": self._stats[namespace.value] if config.metrics else None,
        }
        if config.uses_near_cache(namespace):
            near = self._bus.near_cache(namespace, config.memory_max_entries)
            arguments["near"] = (near, self._bus.publish_drop)
        return "librecache.redis", arguments

    def format(self, name: CacheKeys | str) -> JsonFormat | None:
        """The format object of a namespace's values (:mod:`librecache.formats`);
        ``None`` for ``pickle``, dogpile's own."""
        namespace = self.config.namespace(name)
        return format_for(self.config.format(namespace), namespace.value, self.config.ttl(namespace))

    def _configure(self, region: LibreRegion, namespace: AnyNamespace) -> None:
        config = self.config
        backend, arguments = self.backend_arguments(namespace)
        if self._bus is not None and backend == "librecache.redis":
            invalidator: Any = self._bus.strategy(namespace)
        else:
            invalidator = DefaultInvalidationStrategy()
        region.configure(
            backend, expiration_time=config.ttl(namespace), arguments=arguments, wrap=self._wrappers(namespace),
            replace_existing_backend=True, region_invalidator=invalidator,
        )
        redis = backend == "librecache.redis"
        region.set_key_mangler(region.unwrapped_backend.key_mangler if redis else memory_mangler(namespace))
        near = arguments["near"][0] if "near" in arguments else None
        region.near_cache = near
        region.value_format = arguments.get("format") if not redis else self.format(namespace)
        region.policy = config.policy(namespace)
        region.background = self._background
        region.tag_book = self.tag_book
        stats = self._stats[namespace.value]
        stats.near = near if config.metrics else None
        region.counters = stats if config.metrics else None

    # -- lookup -----------------------------------------------------------

    def region(self, name: CacheKeys | str) -> LibreRegion:
        """The region of a namespace, by :class:`CacheKeys` member or name
        (declared namespaces included).

        :raises UnknownNamespaceError: (a :class:`KeyError`) for an unknown
            name; the message lists the valid ones.
        """
        return self._regions[self.config.namespace(name)]

    __getitem__ = region

    def __iter__(self) -> Iterator[tuple[str, LibreRegion]]:
        return ((namespace.value, region) for namespace, region in self._regions.items())

    def __len__(self) -> int:
        return len(self._regions)

    def backend_name(self, name: CacheKeys | str) -> str:
        """``"redis"`` or ``"memory"``: what backs the namespace."""
        return "redis" if self.config.uses_redis(name) else "memory"

    @property
    def redis(self) -> PrefixedRedis | PrefixedRedisCluster | None:
        """The shared raw redis-py client whose commands prefix every key
        with ``{prefix}::``; ``None`` when Redis is off. Unlike the regions,
        it raises redis-py's errors when Redis is unavailable.

        :raises redis.ConnectionError: a cluster that has not been reached yet.
        """
        if self._connection is None:
            return None
        if self._connection.prefixed is None:
            raise RedisConnectionError("the Redis cluster has not been reached yet (reconnecting)")
        return self._connection.prefixed

    def health(self) -> HealthReport | None:
        """Counters of the Redis side (``None`` when Redis is off): whether it
        is up, failures met, calls that fell through, writes dropped,
        deletes waiting, recoveries, keep-alive pings and drops."""
        if self._connection is None:
            return None
        return self._connection.breaker.report(self._connection.pending_deletes)

    def stats(self) -> dict[str, Any]:
        """This process's counters of this registry, as a plain mapping:
        ``{namespace: {"hits": ..., "misses": ..., "creations": ...,
        "lock_waits": ..., "near_hits": ..., "errors": ..., "fallthroughs":
        ..., "creation_seconds": {"sum", "count", "buckets"}}}`` (see
        :mod:`librecache.metrics`), plus ``"redis"``: :meth:`health` (``None``
        when Redis is off), and ``"tag_invalidations"``: this process's
        calls of :meth:`invalidate_tags`. All zero with LIBRECACHE_METRICS=false."""
        report: dict[str, Any] = snapshot(self._stats)
        report["redis"] = self.health()
        report["tag_invalidations"] = self._tag_invalidations
        return report

    # -- tags -------------------------------------------------------------

    def invalidate_tags(self, *tags: str) -> int:
        """Invalidate every entry that carries any of ``tags``, in every
        namespace: a miss in this process once this returns, in every other
        process sharing the Redis and the prefix when the announcement
        reaches it (``docs/tags.rst``). A handful of commands, whatever the
        number of entries; while Redis is unreachable, announced when it is
        back. Returns the number of distinct tags.

        :raises TypeError: a tag that is not a string.
        :raises ValueError: an empty tag, or no tag at all.
        """
        checked = self._tags_invalidated(tags)
        bus = self._bus
        if bus is not None and bus.tag_book is self.tag_book:
            connection = self._connection
            assert connection is not None
            connection.guard("invalidate tags", bus.announce_tags, lambda: None)
        return len(checked)

    async def ainvalidate_tags(self, *tags: str) -> int:
        """:meth:`invalidate_tags`, awaitable (the running loop's client)."""
        checked = self._tags_invalidated(tags)
        bus = self._bus
        if bus is not None and bus.tag_book is self.tag_book:
            assert self._connection is not None
            await aio_redis.aannounce_tags(self._connection, bus)
        return len(checked)

    def _tags_invalidated(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        """``tags`` checked and invalidated in this process (and pending for
        the other processes, when Redis is used); counted."""
        checked = checked_tags(tags)
        if not checked:
            raise ValueError("invalidate_tags() needs at least one tag")
        bus = self._bus
        if bus is not None and bus.tag_book is self.tag_book:
            bus.invalidate_tags(checked)
        else:
            self.tag_book.invalidated(checked, time.time())
        if self.config.metrics:
            self._tag_invalidations += 1
        return checked

    def reconnect(self) -> None:
        """Try to reach Redis now, while it is marked unavailable (a new
        quick burst of REDIS_RETRY_MAX_ATTEMPTS attempts; the background
        thread never stops trying anyway)."""
        if self._connection is not None:
            self._connection.reconnect()

    @property
    def invalidations(self) -> InvalidationBus | None:
        """The invalidation channel of this registry (``None`` without Redis)."""
        return self._bus

    def open_streams(self, asynchronous: bool = True) -> Any:
        """A resumable stream store of this registry's configuration: the
        asyncio one, or its sync twin (:mod:`librecache.streams`)."""
        from .streams import open_streams, open_streams_sync

        return open_streams(self.config) if asynchronous else open_streams_sync(self.config)

    # -- whole namespaces -------------------------------------------------

    def stored_keys(self, name: CacheKeys | str, limit: int | None = None) -> list[str]:
        """The keys stored in a namespace (full Redis key names for Redis
        namespaces), at most ``limit``."""
        backend = self.region(name).unwrapped_backend
        if hasattr(backend, "scan_keys"):
            return list(backend.scan_keys(limit))
        return list(backend.keys()[:limit])

    def clear(self, name: CacheKeys | str, progress: Callable[[int], None] | None = None) -> int:
        """Remove every entry of a namespace in this deployment (this prefix
        only; on a cluster, ``SCAN`` + ``UNLINK`` on every master, never a
        multi-key command across slots); return how many were removed.

        :param progress: called with the running count on large clears.
        """
        return int(self.region(name).unwrapped_backend.clear(progress))

    # -- lifetime ---------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop the listener and the maintenance thread and close the Redis
        connections; return within ``timeout`` seconds whatever Redis does
        (by default :data:`~librecache.guard.CLOSE_TIMEOUT`, 1 s, or
        REDIS_CONNECT_TIMEOUT if shorter).

        Every socket is shut down first, which wakes the background threads
        blocked reading one; they are then waited for until ``timeout`` (they
        are daemons, and end by themselves)."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + (min(CLOSE_TIMEOUT, self.config.connect_timeout) if timeout is None else timeout)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self._background.close(left() / 2)  # work that stores goes first, while Redis is there
        if self._bus is not None:
            self._bus.stop()
        if self._connection is not None:
            self._connection.stop()
            close_clients(self._connection, timeout=left() / 2)
        if self._bus is not None:
            self._bus.close(timeout=left())
        if self._connection is not None:
            self._connection.close(timeout=left())

    async def aclose(self) -> None:
        """:meth:`close` from a coroutine: the running loop's asyncio
        client is closed there, the rest in a worker thread (never blocking
        the loop)."""
        if self.closed:
            return
        await self._background.aclose()
        if self._connection is not None:
            await aclose_clients(self._connection)
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Caches:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Caches:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        redis_count = sum(self.config.uses_redis(ns) for ns in self._regions)
        prefix = self.config.key_prefix or "-"
        return f"<Caches prefix={prefix} redis={redis_count} memory={len(self._regions) - redis_count}>"


# --------------------------------------------------------------------------
# The process default
# --------------------------------------------------------------------------

_lock = threading.RLock()
_default: Caches | None = None


def _renew_lock() -> None:
    global _lock
    _lock = threading.RLock()


forks.register_function(_renew_lock)


def _ensure_default() -> None:
    if _default is None:
        with _lock:
            if _default is None:
                configure()


#: The process default's regions: LibreChat's 22, and every namespace ever
#: declared (a region asked for keeps following every later configure()).
_default_regions: dict[AnyNamespace, LibreRegion] = {
    namespace: LibreRegion(namespace, on_first_use=_ensure_default) for namespace in CacheKeys
}


_KEEP: Any = object()


def configure(config: ConfigSource = None, wrap: Wrap = _KEEP) -> Caches:
    """Build the process default registry and return it.

    :param config: a :class:`CacheConfig`, a mapping of variables, or
        ``None`` to read :data:`os.environ`.
    :param wrap: dogpile ``ProxyBackend`` classes for every namespace's
        backend, or ``{namespace: [...]}`` (see :class:`Caches`); when not
        given, those of the previous default are kept, so proxies survive
        reconfiguration; ``None`` removes them.
    :raises ConfigurationError: the configuration is not valid; the
        previous default, if any, stays in place.

    The regions returned by :func:`get_region` (before or after) follow the
    new configuration; the previous default's connections are closed.
    """
    global _default
    built = config if isinstance(config, CacheConfig) else CacheConfig.from_env(config)
    with _lock:
        if wrap is _KEEP:
            wrap = _default.wrap if _default is not None else None
        caches = Caches(built, wrap=wrap, _regions=_default_regions)
        previous, _default = _default, caches
    if previous is not None:
        previous.close()
    return caches


def get_caches() -> Caches:
    """The process default registry, configured from the environment if
    :func:`configure` was not called yet."""
    _ensure_default()
    assert _default is not None
    return _default


def get_region(name: CacheKeys | str) -> LibreRegion:
    """The region of a namespace in the process default registry.

    The region can be used (``@get_region("ROLES").cache_on_arguments()``)
    before anything is configured: the default registry is configured from
    the environment when the region is first used. A namespace declared in
    LIBRECACHE_NAMESPACES can be asked for as early: before the default is
    configured, that one variable is read from the environment; after, the
    default's configuration says which namespaces exist.

    :raises UnknownNamespaceError: (a :class:`KeyError`) for an unknown name.
    :raises ConfigurationError: LIBRECACHE_NAMESPACES is not valid.
    """
    member = name if isinstance(name, CacheKeys) else CacheKeys.__members__.get(str(name).strip())
    if member is not None:
        return _default_regions[member]
    current = _default
    if current is not None:
        namespace = current.config.namespace(name)
    else:
        import os

        raw = os.environ.get("LIBRECACHE_NAMESPACES")
        try:
            declared = parse_declarations(raw if raw and raw.strip() else None)
        except environs.EnvError as exc:
            detail = str(exc).replace("{variable}", "LIBRECACHE_NAMESPACES")
            raise ConfigurationError(detail, "LIBRECACHE_NAMESPACES") from None
        namespace = parse_namespace(name, [ns for ns, _ in declared])
    region = _default_regions.get(namespace)
    if region is None:
        with _lock:
            region = _default_regions.setdefault(namespace, LibreRegion(namespace, on_first_use=_ensure_default))
    return region


def redis_client() -> PrefixedRedis | PrefixedRedisCluster | None:
    """The default registry's raw, prefixing Redis client (``None`` when
    Redis is off)."""
    return get_caches().redis


def invalidate_tags(*tags: str) -> int:
    """:meth:`Caches.invalidate_tags` of the process default registry."""
    return get_caches().invalidate_tags(*tags)


async def ainvalidate_tags(*tags: str) -> int:
    """:meth:`Caches.ainvalidate_tags` of the process default registry."""
    return await get_caches().ainvalidate_tags(*tags)
