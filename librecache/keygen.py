"""Keys of memoised calls: dogpile's format, without its collisions.

dogpile's default :func:`~dogpile.cache.util.function_key_generator` makes
``{module}:{function}[|{namespace}]|{arg} {arg} ...`` from ``str()`` of the
arguments, joined with single spaces. Two calls can then share a key:
``pair("a", "b c")`` and ``pair("a b", "c")``, ``f()`` and ``f("")``, and
any two objects whose ``str()`` is the default ``<Foo object at 0x...>``
when the second reuses the first one's address. A cache that returns
another call's value is the worst bug a cache can have.

:func:`function_key_generator` (the default of every librecache region)
gives the **same key as dogpile** when no argument's text is empty or holds
a separator (a blank or ``|``), so keys written by dogpile code stay valid,
and otherwise an unambiguous form that the plain one cannot produce: a
blank right after the ``|`` (no plain argument starts with one), then each
argument as ``{length}:{text}``, blank-separated. An argument whose text
holds a default ``<... object at 0x...>`` representation is refused with a
:class:`TypeError` naming the function and the argument.

``1`` and ``"1"`` give the same key, as in dogpile (both are ``"1"``).
Users who share keys with plain dogpile code can pass dogpile's generators,
re-exported here as :data:`dogpile_key_generator` and
:data:`dogpile_multi_key_generator`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from dogpile.cache.util import function_key_generator as dogpile_key_generator
from dogpile.cache.util import function_multi_key_generator as dogpile_multi_key_generator

__all__ = [
    "dogpile_key_generator",
    "dogpile_multi_key_generator",
    "function_key_generator",
    "function_multi_key_generator",
]

#: Python's default ``repr``: ``<module.Class object at 0x7f...>``.
_ADDRESS = re.compile(r" object at 0x[0-9A-Fa-f]+>")


def _prefix(namespace: str | None, fn: Callable[..., Any]) -> str:
    if namespace is None:
        return f"{fn.__module__}:{fn.__name__}"
    return f"{fn.__module__}:{fn.__name__}|{namespace}"


def _argument_names(fn: Callable[..., Any]) -> tuple[list[str], str | None, bool]:
    """(positional parameter names, name of ``*args`` or None, has self)."""
    spec = inspect.getfullargspec(fn)
    has_self = bool(spec.args) and spec.args[0] in ("self", "cls")
    return spec.args, spec.varargs, has_self


def _check_addresses(fn: Callable[..., Any], texts: Sequence[str], skip: int) -> None:
    for index, text in enumerate(texts):
        if " at 0x" in text and _ADDRESS.search(text):
            names, varargs, _ = _argument_names(fn)
            position = index + skip
            name = names[position] if position < len(names) else f"*{varargs}[{position - len(names)}]"
            raise TypeError(
                f"{fn.__qualname__}: the argument {name} has no stable text ({text!r} holds a memory "
                "address, which another object can reuse): give its class a __str__ (or __repr__) that "
                "names its value, or pass function_key_generator= / to_str= to the decorator"
            )


def _kwargs_refused() -> ValueError:
    return ValueError("dogpile.cache's default key creation function does not accept keyword arguments.")


def function_key_generator(
    namespace: str | None, fn: Callable[..., Any], to_str: Callable[[Any], str] = str
) -> Callable[..., str]:
    """The key generator of ``cache_on_arguments``: dogpile's signature and
    keys, collision-free (see the module).

    :raises TypeError: (from the generated function) an argument's text holds
        a default ``<... object at 0x...>`` representation.
    :raises ValueError: (likewise) keyword arguments, as dogpile's.
    """
    prefix = _prefix(namespace, fn) + "|"
    _, _, has_self = _argument_names(fn)
    skip = 1 if has_self else 0

    def generate_key(*args: Any, **kw: Any) -> str:
        if kw:
            raise _kwargs_refused()
        texts = list(map(to_str, args[skip:] if skip else args))
        joined = " ".join(texts)
        # plain (dogpile's key) when splitting at the blanks gives the texts back
        if joined.count(" ") == len(texts) - 1 and "|" not in joined and "" not in texts:
            return prefix + joined
        if not texts:
            return prefix
        _check_addresses(fn, texts, skip)
        return prefix + " " + " ".join(f"{len(text)}:{text}" for text in texts)

    return generate_key


def function_multi_key_generator(
    namespace: str | None, fn: Callable[..., Any], to_str: Callable[[Any], str] = str
) -> Callable[..., list[str]]:
    """The key generator of ``cache_multi_on_arguments``: dogpile's keys
    (one argument per key, so no two arguments meet), with arguments whose
    text holds a memory address refused as in :func:`function_key_generator`."""
    prefix = _prefix(namespace, fn) + "|"
    _, _, has_self = _argument_names(fn)
    skip = 1 if has_self else 0

    def generate_keys(*args: Any, **kw: Any) -> list[str]:
        if kw:
            raise _kwargs_refused()
        texts = [to_str(arg) for arg in args[skip:]]
        _check_addresses(fn, texts, skip)
        return [prefix + text for text in texts]

    return generate_keys
