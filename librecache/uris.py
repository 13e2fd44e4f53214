"""Parsing of ``REDIS_URI``: one URI, or several separated by commas.

Every check happens here, when the configuration is built, so that a bad URI
fails at startup. Passwords are kept out of every ``repr`` and message.

The parser is written for what a person types, secrets included: the
user name and password (the *userinfo*) end at the **last** ``@`` after
``scheme://`` (the path can only be a database number and query strings are
refused, so no ``@`` can follow it), and are split off before anything else
is looked at. A password may therefore hold any character, unencoded
``/ # ? @ : [ ]`` included; percent-encoding (``%40``) is decoded, so a
literal ``%`` followed by two hex digits must be written ``%25``. No message
ever shows any part of the userinfo: it is replaced by ``***``.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

import attrs

__all__ = ["MAX_DATABASE", "RedisURI", "mask_uri", "parse_redis_uris"]

_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
#: Highest database number accepted (Redis' default ``databases 16``).
MAX_DATABASE = 15

# where a comma starts the next entry: before another ``scheme://``
_NEXT_ENTRY = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# RFC 3986 reg-name (unreserved / pct-encoded / sub-delims), comma excepted
# (commas separate the entries of a list)
_REG_NAME = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+$")
_DOTTED = re.compile(r"^[0-9.]+$")


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
        """The URI as text, with the user name and password masked."""
        auth = "***@" if self.username or self.password else ""
        return f"{self.scheme}://{auth}{self.address}/{self.db}"


def _split_entries(raw: str) -> list[str]:
    """The entries of a list: a comma separates two entries only where the
    next one starts with ``scheme://`` (a comma in a password stays)."""
    return [entry.strip() for entry in _NEXT_ENTRY.split(raw)]


def _split_userinfo(text: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, the rest)`` of one entry. Without
    ``scheme://``, everything before the last ``@`` is taken as userinfo."""
    match = _SCHEME.match(text)
    head = match.group(0) if match else ""
    rest = text[len(head):]
    if "@" not in rest:
        return head, None, rest
    userinfo, _, rest = rest.rpartition("@")
    return head, userinfo, rest


def mask_uri(text: str) -> str:
    """``text`` (one URI or a comma-separated list) with every user name and
    password replaced by ``***``, whatever characters they hold."""
    masked = []
    for entry in _NEXT_ENTRY.split(text):
        head, userinfo, rest = _split_userinfo(entry)
        masked.append(head + ("***@" if userinfo is not None else "") + rest)
    return ",".join(masked)


def _decoded(text: str) -> str | None:
    return unquote(text) if text else None


def _parse_host(shown: str, authority: str) -> tuple[str, str | None]:
    """``(host, port text or None)`` of ``host[:port]`` or ``[v6][:port]``."""
    if authority.startswith("["):
        inside, bracket, after = authority[1:].partition("]")
        if not bracket:
            raise ValueError(f"{shown!r}: the IPv6 address has no closing ]")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"{shown!r}: [{inside}] is not a valid IPv6 address") from None
        if after and not after.startswith(":"):
            raise ValueError(f"{shown!r}: only :port may follow the IPv6 address")
        return host, after[1:] if after else None
    host, colon, port = authority.partition(":")
    if colon and ":" in port:
        raise ValueError(f"{shown!r}: an IPv6 address must be written in brackets, like redis://[::1]:6379")
    if not host:
        raise ValueError(f"{shown!r} has no host")
    if not _REG_NAME.match(host):
        raise ValueError(f"{shown!r}: the host {host!r} is not a host name or IP address")
    if _DOTTED.match(host):
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{shown!r}: {host!r} is not a valid IPv4 address") from None
    else:
        host = unquote(host)
        if not host.isprintable() or " " in host:
            raise ValueError(f"{shown!r}: the host is not a host name or IP address")
    return host, port if colon else None


def _where_blank(rest: str) -> str:
    """Which part of ``host[:port][/db]`` holds a blank, for the message."""
    authority, _, path = rest.partition("/")
    if any(ch.isspace() for ch in path):
        return "database number"
    end = authority.find("]") if authority.startswith("[") else -1
    host = authority[:end + 1] if end >= 0 else authority.partition(":")[0]
    return "host" if any(ch.isspace() for ch in host) or not host else "port"


def _parse_one(text: str) -> RedisURI:
    shown = mask_uri(text)
    head, userinfo, rest = _split_userinfo(text)
    scheme = head[:-3].lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"{shown!r} must start with redis:// or rediss:// (redis+sentinel:// or rediss+sentinel:// for sentinels)"
        )
    if userinfo is not None and any(ch.isspace() for ch in userinfo):
        raise ValueError(f"{shown!r}: the user name or password holds a blank; percent-encode it (%20)")
    if "," in rest:
        raise ValueError(f"{shown!r}: a comma must be followed by another redis:// or rediss:// URI")
    if any(ch.isspace() for ch in rest):
        raise ValueError(f"{shown!r}: the {_where_blank(rest)} holds a blank")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{shown!r}: query parameters are not supported; use the REDIS_* variables instead")
    authority, _, path = rest.partition("/")
    host, port_text = _parse_host(shown, authority)
    port = DEFAULT_PORT
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"{shown!r}: the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{shown!r}: the port {port} is not a number from 1 to 65535")
    db = 0
    if path:
        if not (path.isascii() and path.isdigit()):
            raise ValueError(f"{shown!r}: the path must be a database number, like /0")
        db = int(path)
        if db > MAX_DATABASE:
            raise ValueError(
                f"{shown!r}: database {db} is not a number from 0 to {MAX_DATABASE} "
                f"(Redis' default number of databases)"
            )
    username = password = None
    if userinfo is not None:
        user_text, colon, password_text = userinfo.partition(":")
        username = _decoded(user_text)
        password = _decoded(password_text) if colon else None
    return RedisURI(scheme=scheme, host=host, port=port, db=db, username=username, password=password)


def parse_redis_uris(raw: str) -> tuple[RedisURI, ...]:
    """Parse a comma-separated ``REDIS_URI`` value.

    :raises ValueError: an entry is malformed, or the entries mix
        ``redis://`` and ``rediss://``, or carry different credentials.
        The message never contains any part of a user name or password.
    """
    entries = _split_entries(raw)
    if not all(entries) or any(_split_userinfo(entry)[2].rstrip().endswith(",") for entry in entries) \
            or raw.lstrip().startswith(","):
        raise ValueError("REDIS_URI has an empty entry (two commas in a row, or a comma at either end)")
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
