"""The cache namespaces (:class:`CacheKeys`) and their default time-to-live.

This module is the single table of namespaces: the docs, the configuration
checks and the registry all read it.
"""

from __future__ import annotations

import enum

__all__ = ["DEFAULT_TTLS", "CacheKeys", "parse_namespace"]


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

_VALID_NAMES = ", ".join(member.value for member in CacheKeys)


def parse_namespace(name: CacheKeys | str) -> CacheKeys:
    """Return the :class:`CacheKeys` member for ``name``.

    :param name: a member, or a member's name (surrounding blanks ignored).
    :raises librecache.UnknownNamespaceError: ``name`` is not a namespace;
        the message lists the valid names.
    """
    from .errors import UnknownNamespaceError

    if isinstance(name, CacheKeys):
        return name
    try:
        return CacheKeys(str(name).strip())
    except ValueError:
        raise UnknownNamespaceError(name, _VALID_NAMES) from None
