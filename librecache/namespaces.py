"""The cache namespaces: LibreChat's 22 (:class:`CacheKeys`), their default
time-to-live, and the namespaces an application declares
(:class:`Namespace`, LIBRECACHE_NAMESPACES).

This module is the single table of built-in namespaces: the docs, the
configuration checks and the registry all read it. A configuration's full
list (built-ins, then declared ones) is
:attr:`CacheConfig.namespaces <librecache.CacheConfig.namespaces>`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

__all__ = ["DEFAULT_TTLS", "NAMESPACE_NAME", "AnyNamespace", "CacheKeys", "Namespace", "parse_namespace"]


class CacheKeys(str, enum.Enum):
    """The cache namespaces of LibreChat's ``CacheKeys`` enum.

    Each member's value is its name, so ``CacheKeys("ROLES") is
    CacheKeys.ROLES`` and a member can be used wherever a string is expected.
    """

    CONFIG_STORE = "CONFIG_STORE"
    ROLES = "ROLES"
    PLUGINS = "PLUGINS"
    GEN_TITLE = "GEN_TITLE"
    TOOLS = "TOOLS"
    MODELS_CONFIG = "MODELS_CONFIG"
    MODEL_QUERIES = "MODEL_QUERIES"
    STARTUP_CONFIG = "STARTUP_CONFIG"
    ENDPOINT_CONFIG = "ENDPOINT_CONFIG"
    TOKEN_CONFIG = "TOKEN_CONFIG"
    APP_CONFIG = "APP_CONFIG"
    ABORT_KEYS = "ABORT_KEYS"
    BANS = "BANS"
    ENCODED_DOMAINS = "ENCODED_DOMAINS"
    AUDIO_RUNS = "AUDIO_RUNS"
    MESSAGES = "MESSAGES"
    FLOWS = "FLOWS"
    PENDING_REQ = "PENDING_REQ"
    S3_EXPIRY_INTERVAL = "S3_EXPIRY_INTERVAL"
    OPENID_EXCHANGED_TOKENS = "OPENID_EXCHANGED_TOKENS"
    OPENID_SESSION = "OPENID_SESSION"
    SAML_SESSION = "SAML_SESSION"

    def __str__(self) -> str:
        return self.value


#: Default time-to-live of each namespace, in seconds; ``None`` means the
#: entries do not expire. ``BANS`` is absent: its TTL is ``BAN_DURATION``.
DEFAULT_TTLS: dict[CacheKeys, float | None] = {
    CacheKeys.ABORT_KEYS: 10 * 60,
    CacheKeys.TOKEN_CONFIG: 30 * 60,
    CacheKeys.GEN_TITLE: 2 * 60,
    CacheKeys.S3_EXPIRY_INTERVAL: 30 * 60,
    CacheKeys.AUDIO_RUNS: 10 * 60,
    CacheKeys.MESSAGES: 60,
    CacheKeys.FLOWS: 3 * 60,
    CacheKeys.OPENID_EXCHANGED_TOKENS: 10 * 60,
}

#: What a declared namespace may be called: letters, digits and underscores,
#: starting with a letter.
NAMESPACE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

#: Names no namespace may take: ``{prefix}::librecache:...`` holds the
#: library's own keys (locks, invalidation marks).
RESERVED_NAMES = frozenset({"librecache"})


class Namespace(str):
    """A namespace an application declared (LIBRECACHE_NAMESPACES).

    Like a :class:`CacheKeys` member it is a ``str`` equal to its name and
    has ``.value`` and ``.name``, so every API that takes a namespace takes
    either, and a declared name is used exactly as a built-in one.
    """

    __slots__ = ()

    @property
    def value(self) -> str:
        """The name (as :attr:`CacheKeys.value <enum.Enum.value>`)."""
        return str.__str__(self)

    @property
    def name(self) -> str:
        """The name (as :attr:`CacheKeys.name <enum.Enum.name>`)."""
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Namespace({str.__str__(self)!r})"


#: A namespace: a built-in (:class:`CacheKeys`) or a declared one (:class:`Namespace`).
AnyNamespace = CacheKeys | Namespace


def parse_namespace(name: CacheKeys | str, declared: Iterable[Namespace] = ()) -> AnyNamespace:
    """Return the namespace called ``name``: the :class:`CacheKeys` member,
    or the one of ``declared`` (a configuration's declared namespaces).

    :param name: a member, a :class:`Namespace`, or a name (surrounding
        blanks ignored).
    :param declared: the namespaces declared besides the built-ins.
    :raises librecache.UnknownNamespaceError: ``name`` is not a namespace;
        the message lists the valid names, declared ones included.
    """
    from .errors import UnknownNamespaceError

    if isinstance(name, CacheKeys):
        return name
    text = str.__str__(name).strip() if isinstance(name, str) else str(name).strip()
    member = CacheKeys.__members__.get(text)
    if member is not None:
        return member
    for namespace in declared:
        if namespace == text:
            return namespace
    valid = [member.value for member in CacheKeys] + [namespace.value for namespace in declared]
    raise UnknownNamespaceError(name, ", ".join(valid))
