"""The configuration: every variable declared once, parsed into one frozen
:class:`CacheConfig`.

:data:`VARIABLES` is the single declaration of each variable (name, kind,
default, help text, example); :meth:`CacheConfig.from_env` reads each one's
text (from a mapping, :data:`os.environ` by default, and a ``.env`` file
read with python-dotenv), parses it with the parser of its kind, then checks
the combinations. Every check happens there, so a bad environment fails at
startup with one message that names the variable, the bad value (never a
secret) and what is allowed. The documentation's variable table is
generated from :data:`VARIABLES`.

How environs is used: the parsers raise :class:`environs.EnvError`, the
error type of environs' own readers, and :meth:`CacheConfig.from_env` turns
it into a :class:`~librecache.ConfigurationError`. environs' readers
themselves are not used: they read :data:`os.environ` only, and a
configuration must be buildable from any mapping (several registries in one
process, the tests, ``Caches(env)``), which is why the text is read here.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import os
import re
import ssl
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import environs
from dotenv import dotenv_values

from .errors import ConfigurationError, UnknownVariableWarning
from .formats import FORMAT_NAMES
from .keys import DEFAULT_TTLS, NAMESPACE_NAME, RESERVED_NAMES, AnyNamespace, CacheKeys, Namespace, parse_namespace
from .uris import RedisURI, parse_redis_uris

__all__ = ["VARIABLES", "CacheConfig", "Variable"]


# --------------------------------------------------------------------------
# Parsers, one per kind of variable. Each takes the raw text (None when the
# variable is unset and has no default) and raises environs.EnvError with a
# message that says what is allowed.
# --------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_ARITHMETIC = re.compile(r"^[0-9.\s+\-*/()]+$")
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _fail(raw: str, allowed: str) -> environs.EnvError:
    return environs.EnvError(f"{raw!r} is not {allowed}")


def parse_flag(raw: str | None) -> bool | None:
    """``true/false/1/0/yes/no/on/off`` in any case; anything else is an error."""
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _fail(raw, "a boolean (true/false, 1/0, yes/no, on/off)")


def parse_number(raw: str | None) -> float | None:
    """A plain number, or arithmetic of numbers with ``+ - * / ( )``
    (``1000 * 60 * 60 * 2``). Must be finite and not negative."""
    if raw is None:
        return None
    allowed = "a non-negative number or arithmetic like 1000 * 60 * 2"
    if not _ARITHMETIC.match(raw):
        raise _fail(raw, allowed)

    def evaluate(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(
            node.value, bool
        ):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](evaluate(node.left), evaluate(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](evaluate(node.operand))
        raise ValueError(node)

    try:
        value = evaluate(ast.parse(raw.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        raise _fail(raw, allowed) from None
    if not math.isfinite(value) or value < 0:
        raise _fail(raw, allowed)
    return value


def parse_count(raw: str | None) -> int | None:
    """A whole, non-negative number (arithmetic allowed)."""
    value = parse_number(raw)
    if value is None:
        return None
    if value != int(value):
        raise _fail(str(raw), "a whole number")
    return int(value)


def parse_milliseconds(raw: str | None) -> float | None:
    """A duration in milliseconds (arithmetic allowed), returned in seconds."""
    value = parse_number(raw)
    return None if value is None else value / 1000.0


def parse_text(raw: str | None) -> str | None:
    """Any text; surrounding blanks are removed."""
    return None if raw is None else raw.strip()


def parse_uris(raw: str | None) -> tuple[RedisURI, ...] | None:
    """One ``redis://`` or ``rediss://`` URI, or several separated by commas;
    or sentinel seeds (``redis+sentinel://``, ``rediss+sentinel://``)."""
    if raw is None:
        return None
    try:
        return parse_redis_uris(raw)
    except ValueError as exc:
        raise environs.EnvError(str(exc)) from None


#: Declared namespaces with their TTLs (seconds or ``None``), in declaration order.
Declared = tuple[tuple[Namespace, float | None], ...]


def _names(declared: Declared) -> list[Namespace]:
    return [namespace for namespace, _ in declared]


def parse_declarations(raw: str | None) -> Declared:
    """An application's own namespaces: comma-separated names (letters,
    digits and underscores, starting with a letter), each with an optional
    ``=seconds`` TTL (``none`` or 0: no expiry). Example:
    ``SEARCH_RESULTS=300,EMBEDDINGS,RATE_LIMITS=60``."""
    if raw is None:
        return ()
    builtins = {member.value.lower(): member.value for member in CacheKeys}
    declared: dict[str, float | None] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = (text.strip() for text in item.partition("="))
        if not NAMESPACE_NAME.fullmatch(name):
            raise environs.EnvError(
                f"{{variable}}: {name!r} is not a valid namespace name "
                "(letters, digits and underscores, starting with a letter)")
        if name.lower() in builtins:
            raise environs.EnvError(
                f"{{variable}}: {name} clashes with the built-in namespace {builtins[name.lower()]}; "
                "change a built-in's TTL with LIBRECACHE_NAMESPACE_TTLS instead")
        if name in RESERVED_NAMES:
            raise environs.EnvError(f"{{variable}}: {name} is reserved for librecache's own keys")
        if name in declared:
            raise environs.EnvError(f"{{variable}}: {name} is declared more than once")
        if sep and not value:
            raise environs.EnvError(f"{{variable}}: {name}= has no TTL; write {name} alone for none")
        try:
            seconds = None if not sep or value.lower() == "none" else parse_number(value)
        except environs.EnvError as exc:
            raise environs.EnvError(f"{{variable}}: the TTL of {name}: {exc}") from None
        declared[name] = seconds or None
    return tuple((Namespace(name), ttl) for name, ttl in declared.items())


def _namespace_in(name: str, declared: Declared) -> AnyNamespace:
    try:
        return parse_namespace(name, _names(declared))
    except KeyError as exc:
        raise environs.EnvError(f"{{variable}}: {exc}") from None


def parse_namespaces(raw: str | None, declared: Declared = ()) -> frozenset[AnyNamespace]:
    """A comma-separated list of namespace names (blanks trimmed): built-in
    :class:`CacheKeys` names, or names declared in LIBRECACHE_NAMESPACES."""
    if raw is None:
        return frozenset()
    names = [name.strip() for name in raw.split(",") if name.strip()]
    known = set(CacheKeys.__members__) | {namespace.value for namespace in _names(declared)}
    bad = [name for name in names if name not in known]
    if bad:
        valid = [*CacheKeys.__members__, *(namespace.value for namespace in _names(declared))]
        raise environs.EnvError(
            f"Invalid cache keys in {{variable}}: {', '.join(bad)}. Valid keys: {', '.join(valid)}"
        )
    return frozenset(parse_namespace(name, _names(declared)) for name in names)


def _pairs(raw: str, form: str) -> Iterator[tuple[str, str, str]]:
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = (text.strip() for text in item.partition("="))
        if not sep:
            raise _fail(item, form)
        yield item, name, value


def parse_ttls(raw: str | None, declared: Declared = ()) -> tuple[tuple[AnyNamespace, float | None], ...]:
    """``NAMESPACE=seconds`` pairs separated by commas; ``none`` (or 0) means
    no expiry. Example: ``ROLES=300,MESSAGES=none``."""
    if raw is None:
        return ()
    pairs: dict[AnyNamespace, float | None] = {}
    for _, name, value in _pairs(raw, "NAMESPACE=seconds"):
        namespace = _namespace_in(name, declared)
        seconds = None if value.lower() == "none" else parse_number(value)
        pairs[namespace] = seconds or None
    return tuple(sorted(pairs.items()))


def parse_formats(raw: str | None, declared: Declared = ()) -> tuple[tuple[AnyNamespace, str], ...]:
    """``NAMESPACE=format`` pairs separated by commas, the format one of
    ``pickle`` (the default), ``json`` or ``keyv``. Example:
    ``APP_CONFIG=keyv,SEARCH_RESULTS=json``."""
    if raw is None:
        return ()
    pairs: dict[AnyNamespace, str] = {}
    for item, name, value in _pairs(raw, "NAMESPACE=format"):
        namespace = _namespace_in(name, declared)
        if value.lower() not in FORMAT_NAMES:
            raise environs.EnvError(
                f"{{variable}}: {item!r}: {value!r} is not a format; the formats are {', '.join(FORMAT_NAMES)}")
        if namespace in pairs:
            raise environs.EnvError(f"{{variable}}: {namespace.value} is given a format more than once")
        pairs[namespace] = value.lower()
    return tuple(sorted(pairs.items()))


def parse_cafile(raw: str | None) -> Path | None:
    """A readable PEM file of one or more CA certificates."""
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise environs.EnvError(f"{raw!r} is not an existing file")
    if not os.access(path, os.R_OK):
        raise environs.EnvError(f"{raw!r} is not readable")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise environs.EnvError(f"{raw!r} is not a PEM file of CA certificates ({exc})") from None
    return path


_PREFIX_FORBIDDEN = re.compile(r"[\s{}\x00-\x1f\x7f]")


def parse_prefix(raw: str | None) -> str | None:
    """A key prefix: at most 128 characters, no blanks, control characters or
    braces (braces would change the cluster hash slot of every key), no
    ``::`` and no ``:`` at the end.

    Keys are written under ``{prefix}::``; with ``::`` or a final ``:``
    allowed, one deployment's keys could start with another's
    (``ovl::ROLES::...`` under ``ovl::``), and clearing or listing ``ovl``
    would reach them.
    """
    text = parse_text(raw)
    if text is None:
        return None
    if len(text) > 128 or _PREFIX_FORBIDDEN.search(text):
        raise _fail(text, "a prefix of at most 128 characters without blanks or braces")
    if "::" in text or text.endswith(":"):
        raise environs.EnvError(
            f"{text!r} is not a valid prefix: '::' and a final ':' are refused, so that no "
            "deployment's keys ('{prefix}::...') can start with another's"
        )
    return text


def parse_variable_name(raw: str | None) -> str | None:
    """The name of another environment variable."""
    text = parse_text(raw)
    if text is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise _fail(text, "the name of an environment variable")
    return text


_PARSERS: dict[str, Callable[..., Any]] = {
    "flag": parse_flag,
    "count": parse_count,
    "seconds": parse_number,
    "milliseconds": parse_milliseconds,
    "text": parse_text,
    "secret": parse_text,
    "uris": parse_uris,
    "declarations": parse_declarations,
    "namespaces": parse_namespaces,
    "ttls": parse_ttls,
    "graces": parse_ttls,
    "formats": parse_formats,
    "cafile": parse_cafile,
    "prefix": parse_prefix,
    "varname": parse_variable_name,
}

#: What each kind accepts, for the documentation.
KIND_DESCRIPTIONS: dict[str, str] = {
    "flag": "boolean: true/false, 1/0, yes/no, on/off (any case)",
    "count": "whole number (arithmetic allowed)",
    "seconds": "seconds (number or arithmetic)",
    "milliseconds": "milliseconds (number or arithmetic)",
    "text": "text",
    "secret": "text, never shown",
    "uris": "redis:// or rediss:// URI, or a comma-separated list (redis+sentinel:// for sentinels)",
    "declarations": "comma-separated names, each with an optional =seconds TTL",
    "namespaces": "comma-separated namespace names (CacheKeys or declared in LIBRECACHE_NAMESPACES)",
    "ttls": "NAMESPACE=seconds pairs, comma-separated; none = no expiry",
    "graces": "NAMESPACE=seconds pairs, comma-separated; none = dropped at the TTL",
    "formats": "NAMESPACE=format pairs, comma-separated; formats: pickle, json, keyv",
    "cafile": "path of a PEM file",
    "prefix": "text without blanks, braces or '::', not ending in ':', at most 128 characters",
    "varname": "name of an environment variable",
}


#: A value each kind refuses, for the documentation's "error" column.
KIND_BAD_EXAMPLES: dict[str, str | None] = {
    "flag": "maybe",
    "count": "ten",
    "seconds": "soon",
    "milliseconds": "2h",
    "text": None,
    "secret": None,
    "uris": "http://127.0.0.1:6379",
    "declarations": "1ST",
    "namespaces": "STATIC_CONFIG",
    "ttls": "ROLES",
    "graces": "ROLES",
    "formats": "ROLES=yaml",
    "cafile": "/missing/ca.pem",
    "prefix": "has space",
    "varname": "1ST",
}


@attrs.frozen
class Variable:
    """The declaration of one environment variable.

    :ivar name: the variable's name.
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
    kind: str = attrs.field(validator=attrs.validators.in_(_PARSERS))
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


#: The kinds whose parser also takes the declared namespaces.
_NAMESPACE_KINDS = frozenset({"namespaces", "ttls", "graces", "formats"})

#: Every variable librecache reads, in documentation order. LIBRECACHE_NAMESPACES
#: comes before every variable that names namespaces (they are parsed in order).
VARIABLES: tuple[Variable, ...] = (
    Variable("USE_REDIS", "flag", "false",
             "Back the cache namespaces with Redis instead of process memory. "
             "Requires REDIS_URI.", "true"),
    Variable("REDIS_URI", "uris", None,
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
    Variable("USE_REDIS_CLUSTER", "flag", "false",
             "Cluster mode with a single seed URI.", "true"),
    Variable("USE_REDIS_STREAMS", "flag", None,
             "Keep resumable streams in Redis (default: the value of USE_REDIS).", "true"),
    Variable("REDIS_USERNAME", "text", None,
             "ACL user name; overrides a user name written in REDIS_URI.", "librechat_user"),
    Variable("REDIS_PASSWORD", "secret", None,
             "Password; overrides a password written in REDIS_URI. Never shown.", "s3cret"),
    Variable("REDIS_SENTINEL_MASTER", "text", None,
             "The name the sentinels monitor the master by (their 'sentinel monitor <name> ...'). "
             "Required with redis+sentinel:// URIs, refused with any other.", "mymaster",
             rejects=("mymaster",)),
    Variable("REDIS_SENTINEL_USERNAME", "text", None,
             "ACL user name for sentinels that require authentication (the data nodes use "
             "REDIS_USERNAME or the URI's). Only with redis+sentinel:// URIs.", "sentinel-user",
             rejects=("sentinel-user",)),
    Variable("REDIS_SENTINEL_PASSWORD", "secret", None,
             "Password for sentinels that require authentication ('requirepass' of the sentinels; "
             "the data nodes use REDIS_PASSWORD or the URI's). Only with redis+sentinel:// URIs. "
             "Never shown.", "s3ntinel",
             rejects=("s3ntinel",)),
    Variable("REDIS_CA", "cafile", None,
             "PEM file of the CA that signed the server's certificate; requires rediss://.",
             "/etc/ssl/redis-ca.pem"),
    Variable("REDIS_USE_ALTERNATIVE_DNS_LOOKUP", "flag", "false",
             "TLS clusters behind a configuration endpoint (managed services): connect to "
             "nodes by the host names given or announced, never by resolved IPs, so that "
             "certificate host names match.", "true"),
    Variable("REDIS_KEY_PREFIX_VAR", "varname", None,
             "Name of another variable whose value is the key prefix (blue/green deploys).",
             "K_REVISION"),
    Variable("REDIS_KEY_PREFIX", "prefix", None,
             "Static key prefix; every key is written under '{prefix}::'.", "librechat-prod",
             accepts=("librechat:prod",), rejects=("ovl::ROLES", "ovl:")),
    Variable("REDIS_MAX_LISTENERS", "count", "40",
             "Concurrent subscribers of one stream before a warning is logged.", "100"),
    Variable("REDIS_PING_INTERVAL", "seconds", "0",
             "Keep-alive PING of every connection at this interval; 0 turns it off.", "300"),
    Variable("REDIS_RETRY_MAX_DELAY", "milliseconds", "3000",
             "Cap of the reconnect back-off.", "3000"),
    Variable("REDIS_RETRY_MAX_ATTEMPTS", "count", "10",
             "Quick reconnect attempts of one burst; after it, one attempt every REDIS_RETRY_MAX_DELAY, never "
             "giving up (LibreChat gives up); 0 = no burst limit.", "10"),
    Variable("REDIS_CONNECT_TIMEOUT", "milliseconds", "10000",
             "Time allowed to open one connection.", "10000"),
    Variable("LIBRECACHE_NAMESPACES", "declarations", None,
             "The application's own namespaces, besides LibreChat's 22: comma-separated names "
             "(letters, digits and underscores, starting with a letter), each with an optional "
             "TTL in seconds (NAME=seconds; none or no '=': no expiry). A declared namespace is a "
             "region like the built-ins (keys {prefix}::{NAME}:{key}) and can be named in every "
             "variable below that takes namespaces. A name may not clash with a built-in (change "
             "a built-in's TTL with LIBRECACHE_NAMESPACE_TTLS).",
             "SEARCH_RESULTS=300,EMBEDDINGS,RATE_LIMITS=60",
             accepts=("SEARCH_RESULTS = 60 * 5 , EMBEDDINGS=none",),
             rejects=("ROLES=60", "SEARCH,SEARCH", "SEARCH=soon", "SEARCH-RESULTS", "librecache")),
    Variable("LIBRECACHE_FORMATS", "formats", None,
             "How the values of some namespaces are stored: NAMESPACE=format pairs. pickle (the "
             "default): any picklable Python value. json: a JSON document any language can read "
             "(a value JSON cannot represent raises SerializationError and nothing is cached). "
             "keyv: LibreChat's format (keyv 5 with @keyv/redis 4), so that LibreChat's Node "
             "processes and Python share entries; its Redis expiry is the TTL exactly (no grace).",
             "APP_CONFIG=keyv,ROLES=keyv",
             accepts=("ROLES = json , MESSAGES=pickle",),
             rejects=("NOPE=json", "ROLES", "ROLES=keyv,ROLES=json")),
    Variable("FORCED_IN_MEMORY_CACHE_NAMESPACES", "namespaces", None,
             "Namespaces kept in process memory even when USE_REDIS is true.",
             "ROLES,MESSAGES"),
    Variable("BAN_DURATION", "milliseconds", "7200000",
             "Time-to-live of the BANS namespace.", "1000 * 60 * 60 * 2"),
    Variable("LIBRECACHE_NAMESPACE_TTLS", "ttls", None,
             "Per-namespace time-to-live overrides in seconds; none = no expiry.",
             "ROLES=300,MESSAGES=none"),
    Variable("LIBRECACHE_NAMESPACE_GRACE", "graces", None,
             "Per-namespace grace in seconds: how long an entry is kept past its TTL (in memory and "
             "in Redis), so that a caller whose creator fails can still serve the stale value with "
             "get(key, ignore_expiration=True); none = dropped at the TTL. Default: a tenth of the "
             "TTL, between 1 and 60 seconds.", "ROLES=3600,MESSAGES=none"),
    Variable("LIBRECACHE_MEMORY_MAX_ENTRIES", "count", "10000",
             "Most entries one in-memory namespace holds; the least recently used go first.",
             "50000"),
    Variable("LIBRECACHE_LOCK_TIMEOUT", "seconds", "30",
             "Lifetime of the Redis lock that lets one process compute a missing value "
             "while the others wait; a crashed holder releases it after this time.", "30"),
    Variable("LIBRECACHE_REDIS_RETENTION", "seconds", "604800",
             "Server-side expiry of Redis keys of namespaces that have no TTL, so that "
             "an abandoned prefix does not stay in Redis forever; 0 = never expire.",
             "86400"),
    Variable("LIBRECACHE_SOCKET_TIMEOUT", "seconds", "5",
             "Time allowed for one Redis command's reply.", "2"),
    Variable("LIBRECACHE_NEAR_CACHE_NAMESPACES", "namespaces", None,
             "Redis namespaces also held in each process's memory, kept coherent across instances by "
             "an invalidation channel (for small values read on every request).", "ROLES,APP_CONFIG"),
    Variable("LIBRECACHE_STRICT", "flag", "false",
             "Raise Redis errors to callers instead of degrading (reads as misses, writes dropped, "
             "memoised functions called through) while Redis is unavailable.", "true"),
    Variable("LIBRECACHE_METRICS", "flag", "true",
             "Count hits, misses, creations, lock waits, near hits, errors and fall-throughs per "
             "namespace in each process (Caches.stats(), librecache.metrics); false turns the "
             "counting off.", "false"),
    Variable("LIBRECACHE_SIGNING_KEY", "secret", None,
             "Sign cached values with HMAC-SHA256 and never unpickle a value whose signature does not "
             "verify, so that write access to Redis is not code execution in every instance. Several "
             "keys, comma-separated, for rotation: the first signs, any verifies. Each at least 16 "
             "characters. Never shown.", "a-long-random-secret,the-previous-secret"),
    Variable("LIBRECACHE_STREAM_FINISHED_TTL", "seconds", "300",
             "How long a finished resumable stream is kept for late subscribers.", "300"),
    Variable("LIBRECACHE_STREAM_IDLE_TTL", "seconds", "1200",
             "A running stream with no activity for this long expires.", "1200"),
    Variable("LIBRECACHE_STREAM_MEMORY_MAX", "count", "1000",
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
                          stacklevel=3)


def _secret_free(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


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
    memory_max_entries: int = 10000
    lock_timeout: float = 30.0
    redis_retention: float = 604800.0
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
        env = _Source(os.environ if environ is None else environ, None if env_file is None else Path(env_file))
        _warn_unknown(env.names())

        values: dict[str, Any] = {}
        secrets = [env.get(name) or "" for name in ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD")]
        for variable in VARIABLES:
            raw = env.get(variable.name)
            text = variable.default if raw is None else raw
            try:
                if variable.kind in _NAMESPACE_KINDS:
                    values[variable.name] = _PARSERS[variable.kind](text, values.get("LIBRECACHE_NAMESPACES", ()))
                else:
                    values[variable.name] = _PARSERS[variable.kind](text)
            except environs.EnvError as exc:
                detail = str(exc.args[0]) if exc.args else str(exc)
                detail = detail.replace("{variable}", variable.name)
                if variable.secret:
                    detail = "the value is not valid"
                if variable.name not in detail:
                    detail = f"{variable.name}: {detail}"
                message = _secret_free(detail, secrets)
                raise ConfigurationError(message, variable.name) from None

        prefix, prefix_source = cls._resolve_prefix(env, values)
        use_redis = bool(values["USE_REDIS"])
        streams = values["USE_REDIS_STREAMS"]
        return cls(
            use_redis=use_redis,
            redis_uris=values["REDIS_URI"] or (),
            use_redis_cluster=bool(values["USE_REDIS_CLUSTER"]),
            use_redis_streams=use_redis if streams is None else streams,
            redis_username=values["REDIS_USERNAME"],
            redis_password=values["REDIS_PASSWORD"],
            redis_ca=values["REDIS_CA"],
            sentinel_master=values["REDIS_SENTINEL_MASTER"],
            sentinel_username=values["REDIS_SENTINEL_USERNAME"],
            sentinel_password=values["REDIS_SENTINEL_PASSWORD"],
            alternative_dns_lookup=bool(values["REDIS_USE_ALTERNATIVE_DNS_LOOKUP"]),
            key_prefix=prefix,
            key_prefix_source=prefix_source,
            max_listeners=values["REDIS_MAX_LISTENERS"],
            ping_interval=values["REDIS_PING_INTERVAL"],
            retry_max_delay=values["REDIS_RETRY_MAX_DELAY"],
            retry_max_attempts=values["REDIS_RETRY_MAX_ATTEMPTS"],
            connect_timeout=values["REDIS_CONNECT_TIMEOUT"],
            declared=values["LIBRECACHE_NAMESPACES"],
            formats=values["LIBRECACHE_FORMATS"],
            forced_in_memory=values["FORCED_IN_MEMORY_CACHE_NAMESPACES"],
            ban_duration=values["BAN_DURATION"],
            ttl_overrides=values["LIBRECACHE_NAMESPACE_TTLS"],
            grace_overrides=values["LIBRECACHE_NAMESPACE_GRACE"],
            memory_max_entries=values["LIBRECACHE_MEMORY_MAX_ENTRIES"],
            lock_timeout=values["LIBRECACHE_LOCK_TIMEOUT"],
            redis_retention=values["LIBRECACHE_REDIS_RETENTION"],
            socket_timeout=values["LIBRECACHE_SOCKET_TIMEOUT"],
            stream_finished_ttl=values["LIBRECACHE_STREAM_FINISHED_TTL"],
            stream_idle_ttl=values["LIBRECACHE_STREAM_IDLE_TTL"],
            stream_memory_max=values["LIBRECACHE_STREAM_MEMORY_MAX"],
            strict=bool(values["LIBRECACHE_STRICT"]),
            metrics=bool(values["LIBRECACHE_METRICS"]),
            near_cache=values["LIBRECACHE_NEAR_CACHE_NAMESPACES"],
            signing_keys=tuple(key.strip() for key in (values["LIBRECACHE_SIGNING_KEY"] or "").split(",")
                               if key.strip()),
        )

    @staticmethod
    def _resolve_prefix(env: _Source, values: dict[str, Any]) -> tuple[str, str | None]:
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
        names = [namespace.value for namespace in _names(self.declared)]
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
        return (*CacheKeys, *_names(self.declared))

    def namespace(self, name: CacheKeys | str) -> AnyNamespace:
        """The namespace called ``name`` in this configuration.

        :raises UnknownNamespaceError: (a :class:`KeyError`) neither a
            built-in nor a declared namespace; the message lists the valid ones.
        """
        return parse_namespace(name, _names(self.declared))

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

    def storage_expiry(self, namespace: CacheKeys | str) -> float | None:
        """When a stored entry of ``namespace`` is dropped, in seconds.

        The TTL plus a grace, LIBRECACHE_NAMESPACE_GRACE's or by default a
        tenth of the TTL (at least 1 s, at most 60 s): dogpile regards the
        value as expired at the TTL, and during the grace one caller
        regenerates it while the others are still served the old value
        instead of all waiting (and ``get(key, ignore_expiration=True)``
        still finds it). ``None`` for namespaces without TTL.

        Namespaces in the keyv format have no grace: their entries expire
        at the TTL, as keyv's own (``PX`` = the TTL).
        """
        ttl = self.ttl(namespace)
        if ttl is None:
            return None
        member = self.namespace(namespace)
        if self.format(member) == "keyv":
            return ttl
        graces = dict(self.grace_overrides)
        if member in graces:
            return ttl + (graces[member] or 0.0)
        return ttl + min(max(ttl / 10.0, 1.0), 60.0)

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
