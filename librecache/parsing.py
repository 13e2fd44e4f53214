"""What each kind of variable accepts: the parser of each kind (``flag``,
``count``, ``seconds``, ``uris``, ``ttls``...), what it accepts in words,
and a value it refuses, for the documentation.

A parser takes the raw text (``None`` when the variable is unset and has
no default) and raises :class:`environs.EnvError` with a message that says
what is allowed; ``{variable}`` in it stands for the variable's name. The
variables themselves are declared in :mod:`librecache.variables`.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import environs

from .formats import FORMAT_NAMES
from .namespaces import NAMESPACE_NAME, RESERVED_NAMES, AnyNamespace, CacheKeys, Namespace, parse_namespace
from .uris import RedisURI, parse_redis_uris

__all__ = ["KIND_BAD_EXAMPLES", "KIND_DESCRIPTIONS", "NAMESPACE_KINDS", "PARSERS", "Declared", "declared_names"]


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


def parse_uris(raw: str | None) -> tuple[RedisURI, ...]:
    """One ``redis://`` or ``rediss://`` URI, or several separated by commas;
    or sentinel seeds (``redis+sentinel://``, ``rediss+sentinel://``)."""
    if raw is None:
        return ()
    try:
        return parse_redis_uris(raw)
    except ValueError as exc:
        raise environs.EnvError(str(exc)) from None


#: Declared namespaces with their TTLs (seconds or ``None``), in declaration order.
Declared = tuple[tuple[Namespace, float | None], ...]


def declared_names(declared: Declared) -> list[Namespace]:
    """The declared namespaces, without their TTLs."""
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
        return parse_namespace(name, declared_names(declared))
    except KeyError as exc:
        raise environs.EnvError(f"{{variable}}: {exc}") from None


def parse_namespaces(raw: str | None, declared: Declared = ()) -> frozenset[AnyNamespace]:
    """A comma-separated list of namespace names (blanks trimmed): built-in
    :class:`CacheKeys` names, or names declared in LIBRECACHE_NAMESPACES."""
    if raw is None:
        return frozenset()
    names = [name.strip() for name in raw.split(",") if name.strip()]
    known = set(CacheKeys.__members__) | {namespace.value for namespace in declared_names(declared)}
    bad = [name for name in names if name not in known]
    if bad:
        valid = [*CacheKeys.__members__, *(namespace.value for namespace in declared_names(declared))]
        raise environs.EnvError(
            f"Invalid cache keys in {{variable}}: {', '.join(bad)}. Valid keys: {', '.join(valid)}"
        )
    return frozenset(parse_namespace(name, declared_names(declared)) for name in names)


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


def _numbers(raw: str, declared: Declared, unit: str, check: Callable[[float], bool], wanted: str,
             scale: float = 1.0) -> tuple[tuple[AnyNamespace, float], ...]:
    """``NAMESPACE=number`` pairs, each number passing ``check`` (``wanted``
    says what passes), multiplied by ``scale``."""
    pairs: dict[AnyNamespace, float] = {}
    for item, name, value in _pairs(raw, f"NAMESPACE={unit}"):
        namespace = _namespace_in(name, declared)
        try:
            number = parse_number(value)
        except environs.EnvError:
            raise environs.EnvError(f"{{variable}}: {item!r}: {value!r} is not {wanted}") from None
        if number is None or not check(number):
            raise environs.EnvError(f"{{variable}}: {item!r}: {value!r} is not {wanted}")
        pairs[namespace] = number * scale
    return tuple(sorted(pairs.items()))


def parse_lifetimes(raw: str | None, declared: Declared = ()) -> tuple[tuple[AnyNamespace, float], ...]:
    """``NAMESPACE=seconds`` pairs separated by commas, each 0 or more (0:
    off). Example: ``ROLES=86400,APP_CONFIG=3600``."""
    if raw is None:
        return ()
    return _numbers(raw, declared, "seconds", lambda number: number >= 0, "a number of seconds, 0 or more")


def parse_timeouts(raw: str | None, declared: Declared = ()) -> tuple[tuple[AnyNamespace, float], ...]:
    """``NAMESPACE=milliseconds`` pairs separated by commas, each more than
    0; returned in seconds. Example: ``ROLES=200,TOOLS=50``."""
    if raw is None:
        return ()
    return _numbers(raw, declared, "milliseconds", lambda number: number > 0,
                    "a number of milliseconds greater than 0", 0.001)


def parse_fractions(raw: str | None, declared: Declared = ()) -> tuple[tuple[AnyNamespace, float], ...]:
    """``NAMESPACE=fraction`` pairs separated by commas, each between 0 and
    1 (both excluded). Example: ``ROLES=0.8``."""
    if raw is None:
        return ()
    return _numbers(raw, declared, "fraction", lambda number: 0 < number < 1,
                    "a fraction between 0 and 1 (both excluded)")


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


#: The parser of each kind.
PARSERS: dict[str, Callable[..., Any]] = {
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
    "lifetimes": parse_lifetimes,
    "timeouts": parse_timeouts,
    "fractions": parse_fractions,
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
    "lifetimes": "NAMESPACE=seconds pairs, comma-separated; 0 = off",
    "timeouts": "NAMESPACE=milliseconds pairs, comma-separated; each greater than 0",
    "fractions": "NAMESPACE=fraction pairs, comma-separated; each between 0 and 1, both excluded",
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
    "lifetimes": "ROLES=-1",
    "timeouts": "ROLES=0",
    "fractions": "ROLES=1.5",
    "cafile": "/missing/ca.pem",
    "prefix": "has space",
    "varname": "1ST",
}

#: The kinds whose parser also takes the declared namespaces.
NAMESPACE_KINDS = frozenset({"namespaces", "ttls", "graces", "formats", "lifetimes", "timeouts", "fractions"})
