"""The configuration: one frozen :class:`CacheConfig`, checked when built,
and what follows from it (topology, credentials, each namespace's TTL,
grace and storage).

:meth:`CacheConfig.from_env` reads the variables
(:mod:`librecache.variables` declares them, :mod:`librecache.parsing`
parses each kind), then checks the combinations. Every check happens
there, so a bad environment fails at startup with one message that names
the variable, the bad value (never a secret) and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from .engine.policy import DEFAULT_THROTTLE, Policy
from .errors import ConfigurationError
from .formats import FORMAT_NAMES
from .namespaces import DEFAULT_TTLS, AnyNamespace, CacheKeys, parse_namespace
from .parsing import Declared, declared_names
from .uris import RedisURI
from .variables import VARIABLES, Variable, read

#: Seconds a tag's invalidation is remembered at least (LIBRECACHE_TAG_RETENTION's floor by default).
DEFAULT_TAG_RETENTION = 86400.0

__all__ = ["VARIABLES", "CacheConfig", "Variable"]


# --------------------------------------------------------------------------
# The configuration object
# --------------------------------------------------------------------------


@attrs.frozen
class CacheConfig:
    """A deployment's cache configuration: immutable, checked when built.

    Build it with :meth:`from_env`; use :func:`attrs.evolve` to derive a
    variant (for instance with other ``ttl_overrides``): the checks run again.
    Durations are in seconds. The password is never part of ``repr``.
    """

    use_redis: bool = False
    redis_uris: tuple[RedisURI, ...] = ()
    use_redis_cluster: bool = False
    use_redis_streams: bool = False
    redis_username: str | None = None
    redis_password: str | None = attrs.field(default=None, repr=False)
    redis_ca: Path | None = None
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)
    alternative_dns_lookup: bool = False
    key_prefix: str = ""
    key_prefix_source: str | None = None
    max_listeners: int = 40
    ping_interval: float = 0.0
    retry_max_delay: float = 3.0
    retry_max_attempts: int = 10
    connect_timeout: float = 10.0
    declared: Declared = ()
    formats: tuple[tuple[AnyNamespace, str], ...] = ()
    forced_in_memory: frozenset[AnyNamespace] = frozenset()
    ban_duration: float = 7200.0
    ttl_overrides: tuple[tuple[AnyNamespace, float | None], ...] = ()
    grace_overrides: tuple[tuple[AnyNamespace, float | None], ...] = ()
    fail_safe: tuple[tuple[AnyNamespace, float], ...] = ()
    fail_safe_throttle: tuple[tuple[AnyNamespace, float], ...] = ()
    soft_timeout: tuple[tuple[AnyNamespace, float], ...] = ()
    hard_timeout: tuple[tuple[AnyNamespace, float], ...] = ()
    eager_refresh: tuple[tuple[AnyNamespace, float], ...] = ()
    ttl_jitter: tuple[tuple[AnyNamespace, float], ...] = ()
    memory_max_entries: int = 10000
    lock_timeout: float = 30.0
    redis_retention: float = 604800.0
    tag_retention: float | None = None
    socket_timeout: float = 5.0
    stream_finished_ttl: float = 300.0
    stream_idle_ttl: float = 1200.0
    stream_memory_max: int = 1000
    strict: bool = False
    metrics: bool = True
    near_cache: frozenset[AnyNamespace] = frozenset()
    signing_keys: tuple[str, ...] = attrs.field(default=(), repr=False)

    def __attrs_post_init__(self) -> None:
        self._check()

    # -- construction -----------------------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        env_file: str | os.PathLike[str] | None = None,
    ) -> CacheConfig:
        """Build the configuration from environment variables.

        :param environ: the variables; :data:`os.environ` when ``None``.
        :param env_file: a ``.env`` file read as well; a variable set in
            ``environ`` wins over the file. Blank values count as unset.
        :raises ConfigurationError: on the first problem, naming the variable.
        :warns UnknownVariableWarning: for each ``LIBRECACHE_*`` variable
            that is not one of librecache's (with the closest that is).
        """
        if env_file is not None and not Path(env_file).is_file():
            raise ConfigurationError(f"env file {os.fspath(env_file)!r} does not exist")
        return cls(**read(os.environ if environ is None else environ,
                          None if env_file is None else Path(env_file)))

    def _check(self) -> None:
        """The checks that involve several variables."""
        if self.use_redis and not self.redis_uris:
            raise ConfigurationError("USE_REDIS is enabled but REDIS_URI is not set.", "REDIS_URI")
        if self.use_redis_streams and not self.redis_uris:
            raise ConfigurationError(
                "USE_REDIS_STREAMS is enabled but REDIS_URI is not set.", "REDIS_URI"
            )
        if self.redis_ca is not None and self.redis_uris and not self.tls:
            raise ConfigurationError("REDIS_CA requires REDIS_URI to use rediss://", "REDIS_CA")
        self._check_sentinel()
        self._check_resilience()
        self._check_tags()
        if self.cluster and any(uri.db for uri in self.redis_uris):
            raise ConfigurationError(
                "REDIS_URI: a cluster has only database 0; remove the /<db> path", "REDIS_URI"
            )
        for name, variable in (
            ("connect_timeout", "REDIS_CONNECT_TIMEOUT"),
            ("socket_timeout", "LIBRECACHE_SOCKET_TIMEOUT"),
            ("lock_timeout", "LIBRECACHE_LOCK_TIMEOUT"),
            ("stream_finished_ttl", "LIBRECACHE_STREAM_FINISHED_TTL"),
            ("stream_idle_ttl", "LIBRECACHE_STREAM_IDLE_TTL"),
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{variable}: must be greater than 0", variable)
        if any(len(key) < 16 for key in self.signing_keys):
            raise ConfigurationError(
                "LIBRECACHE_SIGNING_KEY: every key must be at least 16 characters long", "LIBRECACHE_SIGNING_KEY"
            )
        if self.stream_memory_max < 1:
            raise ConfigurationError(
                "LIBRECACHE_STREAM_MEMORY_MAX: must be at least 1", "LIBRECACHE_STREAM_MEMORY_MAX"
            )
        if self.memory_max_entries < 1:
            raise ConfigurationError(
                "LIBRECACHE_MEMORY_MAX_ENTRIES: must be at least 1", "LIBRECACHE_MEMORY_MAX_ENTRIES"
            )
        names = [namespace.value for namespace in declared_names(self.declared)]
        if len(set(names)) != len(names) or any(name in CacheKeys.__members__ for name in names):
            raise ConfigurationError(
                "LIBRECACHE_NAMESPACES: a declared namespace is repeated or clashes with a built-in one",
                "LIBRECACHE_NAMESPACES")
        for namespace, form in self.formats:
            if form not in FORMAT_NAMES or namespace not in self.namespaces:
                raise ConfigurationError(
                    f"LIBRECACHE_FORMATS: {namespace}={form} names an unknown namespace or format "
                    f"(formats: {', '.join(FORMAT_NAMES)})", "LIBRECACHE_FORMATS")
        for namespace, grace in self.grace_overrides:
            if grace and self.format(namespace) == "keyv":
                raise ConfigurationError(
                    f"LIBRECACHE_NAMESPACE_GRACE: {namespace.value} uses the keyv format (LIBRECACHE_FORMATS), "
                    "whose entries expire in Redis at the TTL exactly, as keyv's do; remove its grace",
                    "LIBRECACHE_NAMESPACE_GRACE")

    def _check_resilience(self) -> None:
        """The fail-safe, time-outs, eager refresh and jitter make sense for
        each namespace they name; each is refused with its variable's name."""
        fail_safe = {namespace for namespace, seconds in self.fail_safe if seconds}
        for variable, pairs, needs_ttl in (
            ("LIBRECACHE_FAIL_SAFE", self.fail_safe, True),
            ("LIBRECACHE_FAIL_SAFE_THROTTLE", self.fail_safe_throttle, False),
            ("LIBRECACHE_SOFT_TIMEOUT", self.soft_timeout, False),
            ("LIBRECACHE_HARD_TIMEOUT", self.hard_timeout, False),
            ("LIBRECACHE_EAGER_REFRESH", self.eager_refresh, True),
            ("LIBRECACHE_TTL_JITTER", self.ttl_jitter, True),
        ):
            for namespace, value in pairs:
                if namespace not in self.namespaces:
                    raise ConfigurationError(f"{variable}: {namespace} is not a namespace", variable)
                if needs_ttl and value and self.ttl(namespace) is None:
                    raise ConfigurationError(
                        f"{variable}: {namespace.value} has no TTL, so its values never expire; "
                        "give it one (LIBRECACHE_NAMESPACE_TTLS) or remove it here", variable)
                if variable == "LIBRECACHE_FAIL_SAFE" and value and self.format(namespace) == "keyv":
                    raise ConfigurationError(
                        f"{variable}: {namespace.value} uses the keyv format (LIBRECACHE_FORMATS), whose "
                        "entries LibreChat's Node processes expire at the TTL; remove its fail-safe", variable)
                if variable == "LIBRECACHE_FAIL_SAFE_THROTTLE" and namespace not in fail_safe:
                    raise ConfigurationError(
                        f"{variable}: {namespace.value} has no fail-safe (LIBRECACHE_FAIL_SAFE), so nothing "
                        "is throttled; remove it here or give it a fail-safe", variable)
                if variable == "LIBRECACHE_FAIL_SAFE_THROTTLE" and value <= 0:
                    raise ConfigurationError(f"{variable}: {namespace.value}: must be greater than 0", variable)
        hard = dict(self.hard_timeout)
        for namespace, soft in self.soft_timeout:
            if namespace in hard and soft >= hard[namespace]:
                raise ConfigurationError(
                    f"LIBRECACHE_SOFT_TIMEOUT: {namespace.value}={soft * 1000:g} is not shorter than its "
                    f"LIBRECACHE_HARD_TIMEOUT ({hard[namespace] * 1000:g})", "LIBRECACHE_SOFT_TIMEOUT")

    def _check_tags(self) -> None:
        """A tag's record must outlive every entry that may carry the tag."""
        given = self.tag_retention
        if given is None:
            return
        variable = "LIBRECACHE_TAG_RETENTION"
        if given <= 0:
            raise ConfigurationError(f"{variable}: must be greater than 0", variable)
        longest = self.longest_storage()
        if longest is not None and given < longest[1]:
            raise ConfigurationError(
                f"{variable}: {given:g} s is shorter than the storage lifetime of {longest[0].value} "
                f"({longest[1]:g} s: TTL plus grace or fail-safe, plus jitter), so an invalidated tag "
                f"could be forgotten while entries carrying it are still served; give at least {longest[1]:g}",
                variable)

    def longest_storage(self) -> tuple[AnyNamespace, float] | None:
        """The namespace with a TTL whose entries are stored longest, and
        that lifetime (:meth:`storage_expiry`); ``None`` if none has a TTL."""
        lifetimes = [(namespace, self.storage_expiry(namespace)) for namespace in self.namespaces]
        known = [(namespace, seconds) for namespace, seconds in lifetimes if seconds is not None]
        return max(known, key=lambda pair: pair[1]) if known else None

    @property
    def tag_retention_seconds(self) -> float:
        """How long a tag's invalidation is remembered (:mod:`librecache.tags`):
        LIBRECACHE_TAG_RETENTION, by default the longest storage lifetime of
        a namespace with a TTL, and at least a day."""
        if self.tag_retention is not None:
            return self.tag_retention
        longest = self.longest_storage()
        return max(DEFAULT_TAG_RETENTION, longest[1] if longest is not None else 0.0)

    def _check_sentinel(self) -> None:
        """Sentinel seeds come with a master name and without cluster mode;
        the sentinel variables come only with sentinel seeds."""
        if self.sentinel:
            if not self.sentinel_master:
                raise ConfigurationError(
                    "REDIS_SENTINEL_MASTER is required with redis+sentinel:// URIs: "
                    "the name the sentinels monitor the master by", "REDIS_SENTINEL_MASTER")
            if self.use_redis_cluster:
                raise ConfigurationError(
                    "USE_REDIS_CLUSTER cannot be used with redis+sentinel:// URIs: "
                    "Sentinel manages one master, not a cluster", "USE_REDIS_CLUSTER")
            return
        for name, value in (("REDIS_SENTINEL_MASTER", self.sentinel_master),
                            ("REDIS_SENTINEL_USERNAME", self.sentinel_username),
                            ("REDIS_SENTINEL_PASSWORD", self.sentinel_password)):
            if value:
                raise ConfigurationError(
                    f"{name} is set but REDIS_URI lists no redis+sentinel:// URIs; "
                    f"name the sentinels in REDIS_URI or unset {name}", name)

    # -- derived facts ----------------------------------------------------

    @property
    def cluster(self) -> bool:
        """True when Redis is a cluster: several URIs, or USE_REDIS_CLUSTER."""
        if self.sentinel:
            return False
        return len(self.redis_uris) > 1 or (self.use_redis_cluster and bool(self.redis_uris))

    @property
    def sentinel(self) -> bool:
        """True when the URIs name the sentinels of a master (``redis+sentinel://``)."""
        return bool(self.redis_uris) and self.redis_uris[0].sentinel

    @property
    def tls(self) -> bool:
        """True when the URIs use ``rediss://`` (or ``rediss+sentinel://``)."""
        return bool(self.redis_uris) and self.redis_uris[0].tls

    @property
    def username(self) -> str | None:
        """The effective user name: REDIS_USERNAME, else the URI's."""
        if self.redis_username:
            return self.redis_username
        return self.redis_uris[0].username if self.redis_uris else None

    @property
    def password(self) -> str | None:
        """The effective password: REDIS_PASSWORD, else the URI's."""
        if self.redis_password:
            return self.redis_password
        return self.redis_uris[0].password if self.redis_uris else None

    @property
    def namespaces(self) -> tuple[AnyNamespace, ...]:
        """Every namespace of this configuration: LibreChat's 22
        (:class:`CacheKeys`), then those declared in LIBRECACHE_NAMESPACES."""
        return (*CacheKeys, *declared_names(self.declared))

    def namespace(self, name: CacheKeys | str) -> AnyNamespace:
        """The namespace called ``name`` in this configuration.

        :raises UnknownNamespaceError: (a :class:`KeyError`) neither a
            built-in nor a declared namespace; the message lists the valid ones.
        """
        return parse_namespace(name, declared_names(self.declared))

    def format(self, namespace: CacheKeys | str) -> str:
        """How ``namespace``'s values are stored: ``"pickle"``, ``"json"``
        or ``"keyv"`` (LIBRECACHE_FORMATS)."""
        return dict(self.formats).get(self.namespace(namespace), "pickle")

    def uses_redis(self, namespace: CacheKeys | str) -> bool:
        """True when ``namespace`` is backed by Redis in this configuration."""
        return self.use_redis and self.namespace(namespace) not in self.forced_in_memory

    def uses_near_cache(self, namespace: CacheKeys | str) -> bool:
        """True when ``namespace`` is a Redis namespace with a near cache."""
        return self.uses_redis(namespace) and self.namespace(namespace) in self.near_cache

    def ttl(self, namespace: CacheKeys | str) -> float | None:
        """The time-to-live of ``namespace`` in seconds, or ``None``."""
        member = self.namespace(namespace)
        overrides = dict(self.ttl_overrides)
        if member in overrides:
            ttl = overrides[member]
        elif member is CacheKeys.BANS:
            ttl = self.ban_duration
        elif isinstance(member, CacheKeys):
            ttl = DEFAULT_TTLS.get(member)
        else:
            ttl = dict(self.declared).get(member)
        return float(ttl) if ttl else None

    def grace(self, namespace: CacheKeys | str) -> float:
        """Seconds past the TTL during which a value of ``namespace`` is
        stale rather than absent: LIBRECACHE_NAMESPACE_GRACE's, or by default
        a tenth of the TTL (at least 1 s, at most 60 s). During the grace one
        caller regenerates the value while the others are still served the
        old one instead of all waiting (and ``get(key,
        ignore_expiration=True)`` still finds it). 0 for namespaces without
        TTL, and for those in the keyv format, whose entries expire at the
        TTL as keyv's own do."""
        ttl = self.ttl(namespace)
        member = self.namespace(namespace)
        if ttl is None or self.format(member) == "keyv":
            return 0.0
        graces = dict(self.grace_overrides)
        if member in graces:
            return graces[member] or 0.0
        return min(max(ttl / 10.0, 1.0), 60.0)

    def policy(self, namespace: CacheKeys | str) -> Policy:
        """What a call in ``namespace`` does when its creator is slow or
        fails, and how long its values live past the TTL
        (:class:`~librecache.engine.policy.Policy`): the grace, and
        LIBRECACHE_FAIL_SAFE, _FAIL_SAFE_THROTTLE, _SOFT_TIMEOUT,
        _HARD_TIMEOUT, _EAGER_REFRESH and _TTL_JITTER."""
        member = self.namespace(namespace)
        return Policy(
            grace=self.grace(member),
            fail_safe=dict(self.fail_safe).get(member, 0.0),
            fail_safe_throttle=dict(self.fail_safe_throttle).get(member, DEFAULT_THROTTLE),
            soft_timeout=dict(self.soft_timeout).get(member),
            hard_timeout=dict(self.hard_timeout).get(member),
            eager_refresh=dict(self.eager_refresh).get(member),
            ttl_jitter=dict(self.ttl_jitter).get(member, 0.0),
        )

    def storage_expiry(self, namespace: CacheKeys | str) -> float | None:
        """When a stored entry of ``namespace`` is dropped, in seconds: the
        TTL plus the larger of the grace and the fail-safe
        (:attr:`Policy.kept <librecache.engine.policy.Policy.kept>`), plus
        LIBRECACHE_TTL_JITTER (room for the longest jitter an entry's TTL
        can draw). ``None`` for namespaces without TTL."""
        ttl = self.ttl(namespace)
        if ttl is None:
            return None
        policy = self.policy(namespace)
        return ttl + policy.kept + policy.ttl_jitter

    def redis_expiry(self, namespace: CacheKeys | str) -> float | None:
        """The server-side expiry of ``namespace``'s Redis keys, in seconds:
        :meth:`storage_expiry`, or LIBRECACHE_REDIS_RETENTION for namespaces
        without TTL (``None`` when that is 0)."""
        return self.storage_expiry(namespace) or (self.redis_retention or None)

    def with_ttls(self, ttls: Mapping[CacheKeys | str, float | None]) -> CacheConfig:
        """A copy of this configuration with some namespaces' TTLs replaced
        (seconds; ``None`` or 0 for no expiry)."""
        merged = dict(self.ttl_overrides)
        merged.update({self.namespace(name): (ttl or None) for name, ttl in ttls.items()})
        return attrs.evolve(self, ttl_overrides=tuple(sorted(merged.items())))

    def describe(self) -> Iterator[tuple[str, str]]:
        """(setting, value) pairs for people, secrets masked."""
        yield "redis", ("on" if self.use_redis else "off")
        if self.redis_uris:
            yield "uris", ", ".join(uri.display() for uri in self.redis_uris)
            yield "topology", "cluster" if self.cluster else "sentinel" if self.sentinel else "single"
            if self.sentinel:
                yield "sentinel master", self.sentinel_master or "-"
                yield "sentinel user", self.sentinel_username or "-"
                yield "sentinel password", "***" if self.sentinel_password else "-"
            yield "tls", ("on" + (f" (CA {self.redis_ca})" if self.redis_ca else "")) if self.tls else "off"
            yield "user", self.username or "-"
            yield "password", "***" if self.password else "-"
        yield "streams", "redis" if self.use_redis_streams else "memory"
        if self.signing_keys:
            yield "signing", f"on ({len(self.signing_keys)} key{'s' if len(self.signing_keys) > 1 else ''})"
        if self.strict:
            yield "on failure", "raise (LIBRECACHE_STRICT)"
        source = f" (from {self.key_prefix_source})" if self.key_prefix_source else ""
        yield "key prefix", (self.key_prefix or "-") + source
