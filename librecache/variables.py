"""Every variable librecache reads, declared once (:data:`VARIABLES`:
name, the :class:`~librecache.CacheConfig` attribute it sets, kind,
default, help text, examples), and :func:`read`, which turns a mapping's
text into that object's keyword arguments. The documentation's variable
table is generated from :data:`VARIABLES` (``docs/_ext``); the parsers of
each kind are :mod:`librecache.parsing`'s.

How environs is used: the parsers raise :class:`environs.EnvError`, the
error type of environs' own readers, and :func:`read` turns it into a
:class:`~librecache.ConfigurationError`. environs' readers themselves are
not used: they read :data:`os.environ` only, and a configuration must be
buildable from any mapping (several registries in one process, the tests,
``Caches(env)``), which is why the text is read here.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import environs
from dotenv import dotenv_values

from .errors import ConfigurationError, UnknownVariableWarning
from .parsing import KIND_BAD_EXAMPLES, NAMESPACE_KINDS, PARSERS, parse_prefix

__all__ = ["OWN_PREFIX", "VARIABLES", "Variable", "read"]


@attrs.frozen
class Variable:
    """The declaration of one environment variable.

    :ivar name: the variable's name.
    :ivar field: the :class:`~librecache.CacheConfig` attribute it sets
        (REDIS_KEY_PREFIX and REDIS_KEY_PREFIX_VAR together set
        ``key_prefix`` and ``key_prefix_source``).
    :ivar kind: one of :data:`KIND_DESCRIPTIONS`' keys; selects the parser.
    :ivar default: the default as text (as it would be written in ``.env``),
        or ``None`` for none.
    :ivar help: what it does.
    :ivar example: a valid example value.
    :ivar accepts: further valid values worth showing (forms the kind's
        description does not make obvious), for the documentation.
    :ivar rejects: values this variable refuses beyond the kind's
        :data:`KIND_BAD_EXAMPLES`; the documentation shows the error of each
        (a test checks that every one is refused).
    """

    name: str
    field: str
    kind: str = attrs.field(validator=attrs.validators.in_(PARSERS))
    default: str | None
    help: str
    example: str
    accepts: tuple[str, ...] = attrs.field(default=(), kw_only=True)
    rejects: tuple[str, ...] = attrs.field(default=(), kw_only=True)

    def bad_values(self) -> tuple[str, ...]:
        """Every value the documentation shows being refused."""
        kind_bad = KIND_BAD_EXAMPLES[self.kind]
        return ((kind_bad,) if kind_bad is not None else ()) + self.rejects

    @property
    def secret(self) -> bool:
        """True when the value must never be shown."""
        return self.kind == "secret"


#: Every variable librecache reads, in documentation order. LIBRECACHE_NAMESPACES
#: comes before every variable that names namespaces (they are parsed in order).
VARIABLES: tuple[Variable, ...] = (
    Variable("USE_REDIS", "use_redis", "flag", "false",
             "Back the cache namespaces with Redis instead of process memory. "
             "Requires REDIS_URI.", "true"),
    Variable("REDIS_URI", "redis_uris", "uris", None,
             "Redis to connect to. More than one URI (comma-separated) means a cluster. "
             "Host: a host name, an IPv4 address or an IPv6 address in brackets; port 1 to 65535 "
             "(default 6379); database 0 to 15 (default 0; a server whose 'databases' setting "
             "refuses it is reported at first use, naming REDIS_URI). The user name and password "
             "end at the last '@' and may hold any character; percent-encoding is decoded "
             "(write a literal '%' as %25). No part of them is ever shown. "
             "redis+sentinel:// URIs (rediss+sentinel:// for TLS to the data nodes) name the "
             "sentinels of a Sentinel-managed master instead (see REDIS_SENTINEL_MASTER); the "
             "path is the database number, the same in each.",
             "redis://127.0.0.1:6379",
             accepts=("rediss://user:p%40ss@cache.example.com:6380/2", "redis://[::1]:6379",
                      "redis://:p@ss/w#rd?@10.0.0.5:6379/1",
                      "redis://10.0.0.1:7001,redis://10.0.0.2:7002",
                      "redis+sentinel://10.0.0.5:26379/0,redis+sentinel://10.0.0.6:26379/0"),
             rejects=("redis://my host:6379", "redis:// 127.0.0.1", "redis://127.0.0.1:0",
                      "redis://127.0.0.1:65536", "redis://user:p@ss/w#rd@127.0.0.1:63 79",
                      "redis://127.0.0.1/16", "redis://::1", "redis://[::1:6379",
                      "redis://999.0.0.1", "redis://127.0.0.1?ssl=true", "redis://127.0.0.1/x",
                      "redis://127.0.0.1,,redis://127.0.0.2",
                      "redis+sentinel://127.0.0.1:26379,redis://127.0.0.1:6379",
                      "redis+sentinel://127.0.0.1:26379/0,redis+sentinel://127.0.0.1:26380/1")),
    Variable("USE_REDIS_CLUSTER", "use_redis_cluster", "flag", "false",
             "Cluster mode with a single seed URI.", "true"),
    Variable("USE_REDIS_STREAMS", "use_redis_streams", "flag", None,
             "Keep resumable streams in Redis (default: the value of USE_REDIS).", "true"),
    Variable("REDIS_USERNAME", "redis_username", "text", None,
             "ACL user name; overrides a user name written in REDIS_URI.", "librechat_user"),
    Variable("REDIS_PASSWORD", "redis_password", "secret", None,
             "Password; overrides a password written in REDIS_URI. Never shown.", "s3cret"),
    Variable("REDIS_SENTINEL_MASTER", "sentinel_master", "text", None,
             "The name the sentinels monitor the master by (their 'sentinel monitor <name> ...'). "
             "Required with redis+sentinel:// URIs, refused with any other.", "mymaster",
             rejects=("mymaster",)),
    Variable("REDIS_SENTINEL_USERNAME", "sentinel_username", "text", None,
             "ACL user name for sentinels that require authentication (the data nodes use "
             "REDIS_USERNAME or the URI's). Only with redis+sentinel:// URIs.", "sentinel-user",
             rejects=("sentinel-user",)),
    Variable("REDIS_SENTINEL_PASSWORD", "sentinel_password", "secret", None,
             "Password for sentinels that require authentication ('requirepass' of the sentinels; "
             "the data nodes use REDIS_PASSWORD or the URI's). Only with redis+sentinel:// URIs. "
             "Never shown.", "s3ntinel",
             rejects=("s3ntinel",)),
    Variable("REDIS_CA", "redis_ca", "cafile", None,
             "PEM file of the CA that signed the server's certificate; requires rediss://.",
             "/etc/ssl/redis-ca.pem"),
    Variable("REDIS_USE_ALTERNATIVE_DNS_LOOKUP", "alternative_dns_lookup", "flag", "false",
             "TLS clusters behind a configuration endpoint (managed services): connect to "
             "nodes by the host names given or announced, never by resolved IPs, so that "
             "certificate host names match.", "true"),
    Variable("REDIS_KEY_PREFIX_VAR", "key_prefix_source", "varname", None,
             "Name of another variable whose value is the key prefix (blue/green deploys).",
             "K_REVISION"),
    Variable("REDIS_KEY_PREFIX", "key_prefix", "prefix", None,
             "Static key prefix; every key is written under '{prefix}::'.", "librechat-prod",
             accepts=("librechat:prod",), rejects=("ovl::ROLES", "ovl:")),
    Variable("REDIS_MAX_LISTENERS", "max_listeners", "count", "40",
             "Concurrent subscribers of one stream before a warning is logged.", "100"),
    Variable("REDIS_PING_INTERVAL", "ping_interval", "seconds", "0",
             "Keep-alive PING of every connection at this interval; 0 turns it off.", "300"),
    Variable("REDIS_RETRY_MAX_DELAY", "retry_max_delay", "milliseconds", "3000",
             "Cap of the reconnect back-off.", "3000"),
    Variable("REDIS_RETRY_MAX_ATTEMPTS", "retry_max_attempts", "count", "10",
             "Quick reconnect attempts of one burst; after it, one attempt every REDIS_RETRY_MAX_DELAY, never "
             "giving up (LibreChat gives up); 0 = no burst limit.", "10"),
    Variable("REDIS_CONNECT_TIMEOUT", "connect_timeout", "milliseconds", "10000",
             "Time allowed to open one connection.", "10000"),
    Variable("LIBRECACHE_NAMESPACES", "declared", "declarations", None,
             "The application's own namespaces, besides LibreChat's 22: comma-separated names "
             "(letters, digits and underscores, starting with a letter), each with an optional "
             "TTL in seconds (NAME=seconds; none or no '=': no expiry). A declared namespace is a "
             "region like the built-ins (keys {prefix}::{NAME}:{key}) and can be named in every "
             "variable below that takes namespaces. A name may not clash with a built-in (change "
             "a built-in's TTL with LIBRECACHE_NAMESPACE_TTLS).",
             "SEARCH_RESULTS=300,EMBEDDINGS,RATE_LIMITS=60",
             accepts=("SEARCH_RESULTS = 60 * 5 , EMBEDDINGS=none",),
             rejects=("ROLES=60", "SEARCH,SEARCH", "SEARCH=soon", "SEARCH-RESULTS", "librecache")),
    Variable("LIBRECACHE_FORMATS", "formats", "formats", None,
             "How the values of some namespaces are stored: NAMESPACE=format pairs. pickle (the "
             "default): any picklable Python value. json: a JSON document any language can read "
             "(a value JSON cannot represent raises SerializationError and nothing is cached). "
             "keyv: LibreChat's format (keyv 5 with @keyv/redis 4), so that LibreChat's Node "
             "processes and Python share entries; its Redis expiry is the TTL exactly (no grace).",
             "APP_CONFIG=keyv,ROLES=keyv",
             accepts=("ROLES = json , MESSAGES=pickle",),
             rejects=("NOPE=json", "ROLES", "ROLES=keyv,ROLES=json")),
    Variable("FORCED_IN_MEMORY_CACHE_NAMESPACES", "forced_in_memory", "namespaces", None,
             "Namespaces kept in process memory even when USE_REDIS is true.",
             "ROLES,MESSAGES"),
    Variable("BAN_DURATION", "ban_duration", "milliseconds", "7200000",
             "Time-to-live of the BANS namespace.", "1000 * 60 * 60 * 2"),
    Variable("LIBRECACHE_NAMESPACE_TTLS", "ttl_overrides", "ttls", None,
             "Per-namespace time-to-live overrides in seconds; none = no expiry.",
             "ROLES=300,MESSAGES=none"),
    Variable("LIBRECACHE_NAMESPACE_GRACE", "grace_overrides", "graces", None,
             "Per-namespace grace in seconds: how long an entry is kept past its TTL (in memory and "
             "in Redis), so that a caller whose creator fails can still serve the stale value with "
             "get(key, ignore_expiration=True); none = dropped at the TTL. Default: a tenth of the "
             "TTL, between 1 and 60 seconds.", "ROLES=3600,MESSAGES=none"),
    Variable("LIBRECACHE_FAIL_SAFE", "fail_safe", "lifetimes", None,
             "Per-namespace fail-safe in seconds: how long a value is kept past its TTL to be served "
             "when its creator fails (raises, or outlasts LIBRECACHE_SOFT_TIMEOUT). Entries are kept "
             "in memory and in Redis for the TTL plus the larger of the grace and the fail-safe. "
             "Only for namespaces with a TTL and not in the keyv format; 0 = off (the default).",
             "TOKEN_CONFIG=86400,FLOWS=3600", rejects=("MESSAGES=none", "BANS=-5", "ROLES=60")),
    Variable("LIBRECACHE_FAIL_SAFE_THROTTLE", "fail_safe_throttle", "lifetimes", None,
             "Per-namespace seconds that a value served by the fail-safe is kept as fresh, in every "
             "process, before its creator is called again. Only for namespaces with a fail-safe. "
             "Default: 30.", "TOKEN_CONFIG=30", rejects=("MESSAGES=0",)),
    Variable("LIBRECACHE_SOFT_TIMEOUT", "soft_timeout", "timeouts", None,
             "Per-namespace milliseconds after which callers of a creator that is still running get "
             "the stale value, when there is one (within the grace or the fail-safe); the creator "
             "goes on in the background and stores its value when it ends.", "ROLES=200",
             rejects=("ROLES=soon",)),
    Variable("LIBRECACHE_HARD_TIMEOUT", "hard_timeout", "timeouts", None,
             "Per-namespace milliseconds after which callers waiting for a creator (their own or "
             "another process's) give up with librecache.CreationTimeout; the creator still "
             "finishes and stores its value in the background. Longer than the soft timeout.",
             "ROLES=2000"),
    Variable("LIBRECACHE_EAGER_REFRESH", "eager_refresh", "fractions", None,
             "Per-namespace fraction of the TTL after which a hit returns the value at once and "
             "starts one refresh in the background (one across all processes: it holds the "
             "creation lock). No timer runs: keys nobody reads still expire. Only for namespaces "
             "with a TTL.", "TOKEN_CONFIG=0.8", rejects=("ROLES=0.8", "FLOWS=1")),
    Variable("LIBRECACHE_TTL_JITTER", "ttl_jitter", "lifetimes", None,
             "Per-namespace seconds: each value's TTL is lengthened by 0 to this many seconds, "
             "drawn when it is stored, so that values written together do not expire together. Only "
             "for namespaces with a TTL.", "TOKEN_CONFIG=30", rejects=("ROLES=30",)),
    Variable("LIBRECACHE_MEMORY_MAX_ENTRIES", "memory_max_entries", "count", "10000",
             "Most entries one in-memory namespace holds; the least recently used go first.",
             "50000"),
    Variable("LIBRECACHE_LOCK_TIMEOUT", "lock_timeout", "seconds", "30",
             "Lifetime of the Redis lock that lets one process compute a missing value "
             "while the others wait; a crashed holder releases it after this time.", "30"),
    Variable("LIBRECACHE_REDIS_RETENTION", "redis_retention", "seconds", "604800",
             "Server-side expiry of Redis keys of namespaces that have no TTL, so that "
             "an abandoned prefix does not stay in Redis forever; 0 = never expire.",
             "86400"),
    Variable("LIBRECACHE_TAG_RETENTION", "tag_retention", "seconds", None,
             "How long a tag's invalidation (Caches.invalidate_tags) is remembered. Default: the "
             "longest storage lifetime of a namespace with a TTL (TTL plus grace or fail-safe, plus "
             "jitter), at least 86400; a shorter value is refused. A tagged entry older than this "
             "(in a namespace without a TTL) is a miss.", "604800", rejects=("60",)),
    Variable("LIBRECACHE_SOCKET_TIMEOUT", "socket_timeout", "seconds", "5",
             "Time allowed for one Redis command's reply.", "2"),
    Variable("LIBRECACHE_NEAR_CACHE_NAMESPACES", "near_cache", "namespaces", None,
             "Redis namespaces also held in each process's memory, kept coherent across instances by "
             "an invalidation channel (for small values read on every request).", "ROLES,APP_CONFIG"),
    Variable("LIBRECACHE_STRICT", "strict", "flag", "false",
             "Raise Redis errors to callers instead of degrading (reads as misses, writes dropped, "
             "memoised functions called through) while Redis is unavailable.", "true"),
    Variable("LIBRECACHE_METRICS", "metrics", "flag", "true",
             "Count hits, misses, creations, lock waits, near hits, errors and fall-throughs per "
             "namespace in each process (Caches.stats(), librecache.metrics); false turns the "
             "counting off.", "false"),
    Variable("LIBRECACHE_SIGNING_KEY", "signing_keys", "secret", None,
             "Sign cached values with HMAC-SHA256 and never unpickle a value whose signature does not "
             "verify, so that write access to Redis is not code execution in every instance. Several "
             "keys, comma-separated, for rotation: the first signs, any verifies. Each at least 16 "
             "characters. Never shown.", "a-long-random-secret,the-previous-secret"),
    Variable("LIBRECACHE_STREAM_FINISHED_TTL", "stream_finished_ttl", "seconds", "300",
             "How long a finished resumable stream is kept for late subscribers.", "300"),
    Variable("LIBRECACHE_STREAM_IDLE_TTL", "stream_idle_ttl", "seconds", "1200",
             "A running stream with no activity for this long expires.", "1200"),
    Variable("LIBRECACHE_STREAM_MEMORY_MAX", "stream_memory_max", "count", "1000",
             "Most streams the in-memory stream store keeps (finished ones go first).", "5000"),
)


class _Source:
    """The raw text of each variable: the given mapping first, then the env
    file (read with python-dotenv, as environs reads one); blank values
    count as unset. Public API only: environs has no public way to read a
    mapping other than :data:`os.environ`, so the text is read here and
    parsed by librecache's parsers, which raise :class:`environs.EnvError`."""

    def __init__(self, mapping: Mapping[str, str], env_file: Path | None = None) -> None:
        self._sources: list[Mapping[str, Any]] = [mapping]
        if env_file is not None:
            self._sources.append(dotenv_values(env_file))

    def names(self) -> set[str]:
        """Every variable set, blank or not."""
        return {str(name) for source in self._sources for name in source}

    def get(self, name: str) -> str | None:
        for source in self._sources:
            value = source.get(name)
            if value is not None and str(value).strip():
                return str(value)
        return None


#: The prefix of librecache's own variables: any other name under it is a mistake.
OWN_PREFIX = "LIBRECACHE_"


def _warn_unknown(names: set[str]) -> None:
    """Warn of each ``LIBRECACHE_*`` name in ``names`` that is not a
    variable, with the closest one that is."""
    known = [variable.name for variable in VARIABLES]
    own = [name[len(OWN_PREFIX):] for name in known if name.startswith(OWN_PREFIX)]
    for name in sorted(names):
        if name.startswith(OWN_PREFIX) and name not in known:
            close = difflib.get_close_matches(name[len(OWN_PREFIX):], own, n=1)  # the prefix matches any
            hint = f"; did you mean {OWN_PREFIX}{close[0]}?" if close else ""
            warnings.warn(f"{name} is not a librecache variable and is ignored{hint}", UnknownVariableWarning,
                          stacklevel=4)


def _secret_free(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def _resolve_prefix(env: _Source, values: dict[str, Any]) -> tuple[str, str | None]:
    """The key prefix and the variable it came from: REDIS_KEY_PREFIX, or
    the variable REDIS_KEY_PREFIX_VAR names."""
    var, static = values["REDIS_KEY_PREFIX_VAR"], values["REDIS_KEY_PREFIX"]
    if var and static:
        raise ConfigurationError(
            "Only either REDIS_KEY_PREFIX_VAR or REDIS_KEY_PREFIX can be set.",
            "REDIS_KEY_PREFIX_VAR",
        )
    if static:
        return static, "REDIS_KEY_PREFIX"
    if not var:
        return "", None
    raw = env.get(var)
    if raw is None:
        raise ConfigurationError(
            f"REDIS_KEY_PREFIX_VAR names {var}, which is not set (or is blank); "
            "set it or unset REDIS_KEY_PREFIX_VAR",
            "REDIS_KEY_PREFIX_VAR",
        )
    try:
        prefix = parse_prefix(raw)
    except environs.EnvError as exc:
        raise ConfigurationError(
            f"REDIS_KEY_PREFIX_VAR: the value of {var}, {exc}", "REDIS_KEY_PREFIX_VAR"
        ) from None
    return prefix or "", var


def read(environ: Mapping[str, str], env_file: Path | None = None) -> dict[str, Any]:
    """The keyword arguments of :class:`~librecache.CacheConfig` that the
    variables give: each read from ``environ``, then ``env_file`` (blank
    values count as unset), its default otherwise, parsed by its kind.

    :raises ConfigurationError: on the first value refused, naming the
        variable (and never showing a secret).
    :warns UnknownVariableWarning: for each ``LIBRECACHE_*`` variable that
        is not one of librecache's (with the closest that is).
    """
    env = _Source(environ, env_file)
    _warn_unknown(env.names())
    secrets = [env.get(name) or "" for name in ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD")]
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        raw = env.get(variable.name)
        text = variable.default if raw is None else raw
        try:
            if variable.kind in NAMESPACE_KINDS:
                values[variable.name] = PARSERS[variable.kind](text, values.get("LIBRECACHE_NAMESPACES", ()))
            else:
                values[variable.name] = PARSERS[variable.kind](text)
        except environs.EnvError as exc:
            detail = str(exc.args[0]) if exc.args else str(exc)
            detail = detail.replace("{variable}", variable.name)
            if variable.secret:
                detail = "the value is not valid"
            if variable.name not in detail:
                detail = f"{variable.name}: {detail}"
            message = _secret_free(detail, secrets)
            raise ConfigurationError(message, variable.name) from None

    fields = {variable.field: values[variable.name] for variable in VARIABLES}
    if fields["use_redis_streams"] is None:
        fields["use_redis_streams"] = fields["use_redis"]
    fields["key_prefix"], fields["key_prefix_source"] = _resolve_prefix(env, values)
    fields["signing_keys"] = tuple(key.strip() for key in (fields["signing_keys"] or "").split(",") if key.strip())
    return fields
