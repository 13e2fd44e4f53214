"""The exceptions librecache raises."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "CreationTimeout",
    "LibrecacheError",
    "SerializationError",
    "UnknownNamespaceError",
    "UnknownVariableWarning",
]


class LibrecacheError(Exception):
    """Base class of every error librecache raises on its own account."""


class ConfigurationError(LibrecacheError, ValueError):
    """The environment (or a mapping given instead) is not a valid
    configuration.

    Raised when a :class:`~librecache.CacheConfig` is built, never later.
    The message names the variable, the offending value (passwords are never
    shown) and what is allowed.

    :ivar variable: the name of the offending variable, or ``None`` when the
        problem is a combination of several.
    """

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class UnknownNamespaceError(LibrecacheError, KeyError):
    """A namespace name that is not a member of :class:`~librecache.CacheKeys`.

    A :class:`KeyError`, so ``except KeyError`` catches it; unlike a plain
    ``KeyError`` its message is readable and lists the valid names.
    """

    def __init__(self, name: object, valid: str) -> None:
        super().__init__(name)
        self.name = name
        self.message = f"Unknown cache namespace {str(name)!r}. Valid namespaces: {valid}"

    def __str__(self) -> str:
        return self.message


class SerializationError(LibrecacheError, TypeError):
    """A value could not be pickled for the cache; nothing was stored."""


class CreationTimeout(LibrecacheError, TimeoutError):
    """A caller waited for a creator (its own, or another process's) until
    the hard time-out (LIBRECACHE_HARD_TIMEOUT, or ``hard_timeout=``). The
    creator goes on in the background and stores its value when it ends.

    :ivar namespace: the namespace's name.
    :ivar key: the key, as given to the call.
    :ivar seconds: the hard time-out.
    """

    def __init__(self, namespace: str, key: object, seconds: float | None) -> None:
        super().__init__(f"namespace {namespace}: no value for the key {key!r} within the hard time-out of "
                         f"{(seconds or 0) * 1000:g} ms; its creator goes on and stores it when it ends")
        self.namespace = namespace
        self.key = key
        self.seconds = seconds


class UnknownVariableWarning(UserWarning):
    """A ``LIBRECACHE_*`` variable that librecache does not know (a typo
    changes nothing, so it is said). Warned when a configuration is built;
    ``-W error::librecache.UnknownVariableWarning`` (or pytest's
    ``filterwarnings``) makes it an error."""
