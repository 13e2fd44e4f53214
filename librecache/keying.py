"""Key names: ``{prefix}::{NAMESPACE}:{key}``, and the library's own keys.

Every key librecache writes lives under ``{prefix}::`` when a prefix is set.
Values live at ``{prefix}::{NAMESPACE}:{key}``; the library's bookkeeping
(locks, invalidation marks) lives at ``{prefix}::librecache:...``, which no
namespace can produce because namespace names are upper case.
"""

from __future__ import annotations

import hashlib

from .keys import CacheKeys

__all__ = ["MAX_KEY_LENGTH", "KeySpace"]

#: Keys longer than this many characters keep their readable head and hash
#: the rest (memcached's limit, and a sensible bound for Redis memory).
MAX_KEY_LENGTH = 250
_HEAD = 64


class KeySpace:
    """The key names of one deployment (one prefix).

    :param prefix: the deployment's key prefix; ``""`` for none.
    """

    __slots__ = ("prefix", "root")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: What every key of this deployment starts with.
        self.root = f"{prefix}::" if prefix else ""

    def namespace(self, namespace: CacheKeys) -> str:
        """The start of every value key of ``namespace``: ``{prefix}::{NS}:``."""
        return f"{self.root}{namespace.value}:"

    def mangler(self, namespace: CacheKeys):  # type: ignore[no-untyped-def]
        """A dogpile key mangler: user key to ``{prefix}::{NS}:{key}``.

        Keys longer than :data:`MAX_KEY_LENGTH` keep ``{prefix}::{NS}:``, the
        first 64 characters of the key, then ``~`` and the SHA-256 of the
        whole key.
        """
        head = self.namespace(namespace)
        room = MAX_KEY_LENGTH - len(head)

        def mangle(key: str) -> str:
            if len(key) <= room:
                return head + key
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
            return f"{head}{key[:_HEAD]}~{digest}"

        return mangle

    def internal(self, *parts: str) -> str:
        """A bookkeeping key: ``{prefix}::librecache:part:part...``."""
        return self.root + "librecache:" + ":".join(parts)

    def lock(self, value_key: str) -> str:
        """The key of the creation lock of the value stored at ``value_key``."""
        return self.internal("lock", value_key[len(self.root):])

    def pattern(self, namespace: CacheKeys | None = None) -> str:
        """A SCAN ``MATCH`` pattern for every value key of ``namespace``, or
        for every key of the deployment when ``namespace`` is ``None``."""
        base = self.root if namespace is None else self.namespace(namespace)
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in base)
        return escaped + "*"
