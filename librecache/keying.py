"""Key names: ``{prefix}::{NAMESPACE}:{key}``, and the library's own keys.

Every key librecache writes lives under ``{prefix}::`` when a prefix is set.
Values live at ``{prefix}::{NAMESPACE}:{key}``; the library's bookkeeping
(locks, invalidation marks) lives at ``{prefix}::librecache:...``, which no
namespace can produce: the built-ins are upper case, and LIBRECACHE_NAMESPACES
refuses the name ``librecache``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot

from .keys import AnyNamespace

__all__ = ["MAX_KEY_LENGTH", "KeySpace", "key_text", "memory_mangler", "same_slot"]

#: Keys longer than this many characters keep their readable head and hash
#: the rest (memcached's limit, and a sensible bound for Redis memory).
MAX_KEY_LENGTH = 250
_HEAD = 64


def key_text(namespace: str, key: object) -> str:
    """A cache key as the text every backend stores it under.

    ``str`` keys are themselves; ``int`` and ``float`` keys are their
    ``str()`` (as redis-py sends them, so ``1`` and ``"1"`` are the same key,
    on memory as on Redis); ``bytes`` must be UTF-8. Every key must encode as
    UTF-8 (Redis stores bytes).

    :raises TypeError: a key of another type (``None``, ``bool``, a tuple...).
    :raises ValueError: a key that cannot be encoded (a lone surrogate).
        Both messages name the namespace and the key's ``repr``.
    """
    if type(key) is str:
        text = key
    elif isinstance(key, (int, float)) and not isinstance(key, bool):
        return str(key)
    elif isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"namespace {namespace}: the key {key!r} is not UTF-8") from None
    elif isinstance(key, str):
        text = str.__str__(key)
    else:
        raise TypeError(
            f"namespace {namespace}: a cache key must be a str (or an int, float or UTF-8 bytes), "
            f"not {type(key).__qualname__}: {key!r}"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"namespace {namespace}: the key {key!r} cannot be encoded as UTF-8 "
                f"({exc.reason} at position {exc.start}); nothing was read or written"
            ) from None
    return text


def memory_mangler(namespace: AnyNamespace) -> Callable[[object], str]:
    """The key mangler of a memory region: :func:`key_text`, so that a key
    means the same in memory as in Redis (and fails the same way)."""
    name = namespace.value

    def mangle(key: object) -> str:
        if type(key) is str and key.isascii():
            return key
        return key_text(name, key)

    def mangle_many(keys: list[Any]) -> list[str]:
        if _plain(keys):
            return keys
        return [mangle(key) for key in keys]

    mangle.many = mangle_many  # type: ignore[attr-defined]
    return mangle


def _plain(keys: list[Any]) -> bool:
    """Whether every key is an ASCII ``str`` (its own text)."""
    return (not keys or set(map(type, keys)) == {str}) and "".join(keys).isascii()


class KeySpace:
    """The key names of one deployment (one prefix).

    :param prefix: the deployment's key prefix; ``""`` for none.
    """

    __slots__ = ("prefix", "root")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: What every key of this deployment starts with.
        self.root = f"{prefix}::" if prefix else ""

    def namespace(self, namespace: AnyNamespace) -> str:
        """The start of every value key of ``namespace``: ``{prefix}::{NS}:``."""
        return f"{self.root}{namespace.value}:"

    def mangler(self, namespace: AnyNamespace) -> Callable[[object], str]:
        """A dogpile key mangler: user key to ``{prefix}::{NS}:{key}``; its
        attribute ``many`` mangles a list of keys at once (ASCII ``str``
        keys in one step).

        The key is first made text by :func:`key_text` (errors name the
        namespace and the key). Keys longer than :data:`MAX_KEY_LENGTH` keep
        ``{prefix}::{NS}:``, the first 64 characters of the key, then ``~``
        and the SHA-256 of the whole key.
        """
        head = self.namespace(namespace)
        room = MAX_KEY_LENGTH - len(head)
        name = namespace.value

        def mangle(key: object) -> str:
            text = key if type(key) is str and key.isascii() else key_text(name, key)
            if len(text) <= room:
                return head + text
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            return f"{head}{text[:_HEAD]}~{digest}"

        def mangle_many(keys: list[Any]) -> list[str]:
            if _plain(keys) and (not keys or max(map(len, keys)) <= room):
                return list(map(head.__add__, keys))
            return [mangle(key) for key in keys]

        mangle.many = mangle_many  # type: ignore[attr-defined]
        return mangle

    def internal(self, *parts: str) -> str:
        """A bookkeeping key: ``{prefix}::librecache:part:part...``."""
        return self.root + "librecache:" + ":".join(parts)

    def lock(self, value_key: str) -> str:
        """The key of the creation lock of the value stored at ``value_key``.

        Always under ``{prefix}::`` and one per value key: a key made by this
        key space gives ``{prefix}::librecache:lock:{{prefix}::{NS}:{key}}``,
        any other (a user's key mangler, or ``backend.get_mutex(key)`` called
        directly) ``{prefix}::librecache:lock-raw:{value_key}``, each with the
        value key in braces: a cluster's hash tag, so that the lock lives in
        the value's slot (one script may read the value and take the lock)
        whenever the value key holds no brace of its own.
        """
        kind = "lock" if value_key.startswith(self.root) else "lock-raw"
        return self.internal(kind, "{" + str(value_key) + "}")

    def pattern(self, namespace: AnyNamespace | None = None) -> str:
        """A SCAN ``MATCH`` pattern for every value key of ``namespace``, or
        for every key of the deployment when ``namespace`` is ``None``."""
        base = self.root if namespace is None else self.namespace(namespace)
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in base)
        return escaped + "*"


def same_slot(key: str, lock: str) -> bool:
    """Whether a cluster keeps ``key`` and its creation ``lock`` (as
    :meth:`KeySpace.lock` names it) in one slot. Without computing slots
    when the key holds no brace and the lock's first brace opens it: the
    hash tag is then the whole key."""
    if "{" not in key and "}" not in key and lock.find("{") == len(lock) - len(key) - 2:
        return True
    return bool(key_slot(key.encode("utf-8")) == key_slot(lock.encode("utf-8")))
