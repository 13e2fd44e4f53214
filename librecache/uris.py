"""Parsing of ``REDIS_URI``: one URI, or several separated by commas.

Every check happens here, when the configuration is built, so that a bad URI
fails at startup. Passwords are kept out of every ``repr`` and message.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, urlsplit

import attrs

__all__ = ["RedisURI", "mask_uri", "parse_redis_uris"]

_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379


@attrs.frozen
class RedisURI:
    """One entry of ``REDIS_URI``, parsed.

    :ivar scheme: ``redis`` or ``rediss`` (TLS); ``redis+sentinel`` or
        ``rediss+sentinel`` for a sentinel seed (TLS to the data nodes).
    :ivar host: host name or IP address (IPv6 without brackets).
    :ivar port: TCP port.
    :ivar db: database number (single server or Sentinel only).
    :ivar username: user name written in the URI, percent-decoding applied.
    :ivar password: password written in the URI; never shown in ``repr``.
    """

    scheme: str
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """True for ``rediss://`` (and ``rediss+sentinel://``)."""
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        """True for a sentinel seed (``redis+sentinel://``, ``rediss+sentinel://``)."""
        return self.scheme.endswith("+sentinel")

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def display(self) -> str:
        """The URI as text, with the password masked."""
        auth = ""
        if self.username or self.password:
            auth = (self.username or "") + (":***" if self.password else "") + "@"
        return f"{self.scheme}://{auth}{self.address}/{self.db}"


def mask_uri(text: str) -> str:
    """``text`` with any ``user:password@`` part's password replaced by ``***``."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest, scheme = text, ""
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        auth, _, hostport = netloc.rpartition("@")
        if ":" in auth:
            auth = auth.split(":", 1)[0] + ":***"
        netloc = f"{auth}@{hostport}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _parse_one(text: str) -> RedisURI:
    shown = mask_uri(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a valid URI ({exc})") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{shown!r} must start with redis:// or rediss:// (redis+sentinel:// or rediss+sentinel:// for sentinels)"
        )
    if not parts.hostname:
        raise ValueError(f"{shown!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{shown!r}: query parameters are not supported; "
            "use the REDIS_* variables instead"
        )
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{shown!r}: the path must be a database number, like /0")
    host = parts.hostname
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return RedisURI(
        scheme=parts.scheme,
        host=host,
        port=port or DEFAULT_PORT,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def parse_redis_uris(raw: str) -> tuple[RedisURI, ...]:
    """Parse a comma-separated ``REDIS_URI`` value.

    :raises ValueError: an entry is malformed, or the entries mix
        ``redis://`` and ``rediss://``, or carry different credentials.
        The message never contains a password.
    """
    entries = [entry.strip() for entry in raw.split(",")]
    if not all(entries):
        raise ValueError(f"{mask_uri(raw)!r} has an empty entry")
    uris = tuple(_parse_one(entry) for entry in entries)
    check_sentinel_uris(uris)
    if len({uri.scheme for uri in uris}) > 1:
        raise ValueError("All REDIS_URI entries must use the same protocol")
    if len({(uri.username, uri.password) for uri in uris}) > 1:
        raise ValueError("All REDIS_URI entries must carry the same credentials")
    if len({uri.address for uri in uris}) != len(uris):
        raise ValueError("REDIS_URI lists the same address twice")
    return uris


def check_sentinel_uris(uris: tuple[RedisURI, ...]) -> None:
    """Sentinel seeds are all sentinel seeds, of one database.

    :raises ValueError: sentinel and plain URIs are mixed, or the sentinel
        seeds name different database numbers.
    """
    kinds = {uri.sentinel for uri in uris}
    if len(kinds) > 1:
        raise ValueError(
            "REDIS_URI mixes sentinel seeds (redis+sentinel://) with plain URIs; "
            "list either the sentinels or the Redis servers"
        )
    if True in kinds and len({uri.db for uri in uris}) > 1:
        raise ValueError("REDIS_URI: every sentinel seed must name the same database number (/<db>)")
