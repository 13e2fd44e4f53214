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

from .namespaces import AnyNamespace

__all__ = ["MAX_KEY_LENGTH", "KeySpace", "key_text", "memory_mangler", "slot_tag"]

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
    :raises ValueError: the prefix holds a brace.
    """

    __slots__ = ("prefix", "root")

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:  # the configuration refuses them (parse_prefix)
            raise ValueError(f"a key prefix holds no brace (a cluster hash tag would move every key): {prefix!r}")
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
        key space gives ``{prefix}::librecache:lock:...``, any other (a
        user's key mangler, or ``backend.get_mutex(key)`` called directly)
        ``{prefix}::librecache:lock-raw:...``. Always in the value's cluster
        slot, so that one script reads the value and takes the lock, and
        one stores it only while the lock holds: a brace-free value key is
        the lock's hash tag (``...:lock:{{prefix}::{NS}:{key}}``); a value
        key with braces of its own follows a hash tag of the value's slot
        (:func:`slot_tag`).
        """
        kind = "lock" if value_key.startswith(self.root) else "lock-raw"
        if "{" not in value_key and "}" not in value_key:
            return self.internal(kind, "{" + value_key + "}")
        return self.internal(kind, "{" + slot_tag(key_slot(value_key.encode("utf-8"))) + "}" + value_key)

    def pattern(self, namespace: AnyNamespace | None = None) -> str:
        """A SCAN ``MATCH`` pattern for every value key of ``namespace``, or
        for every key of the deployment when ``namespace`` is ``None``."""
        base = self.root if namespace is None else self.namespace(namespace)
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in base)
        return escaped + "*"


#: A brace-free hash tag for each cluster slot met so far, and where the search stopped.
_SLOT_TAGS: dict[int, str] = {}
_searched = [0]


def slot_tag(slot: int) -> str:
    """A short brace-free text whose cluster slot is ``slot`` (found once by
    trying ``0``, ``1``, ... in hexadecimal: about 16,000 tries for the
    first slot asked for, each remembered, so a cluster's slots are all
    known after about 160,000)."""
    tag = _SLOT_TAGS.get(slot)
    while tag is None:
        candidate = format(_searched[0], "x")
        _searched[0] += 1
        found = key_slot(candidate.encode("ascii"))
        _SLOT_TAGS.setdefault(found, candidate)
        if found == slot:
            tag = candidate
    return tag
