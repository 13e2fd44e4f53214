"""How a namespace's values are stored (LIBRECACHE_FORMATS).

- ``pickle`` (the default): dogpile's own form, ``{"ct": ..., "v": ...}|``
  followed by a pickle. Any picklable value; only Python reads it.
- ``json``: one JSON document, ``{"value": <the value>, "ct": <creation
  time, epoch seconds>, "v": <dogpile's value version>}``, UTF-8. Any
  language reads it.
- ``keyv``: the form LibreChat's cache layer (keyv 5, @keyv/redis 4)
  writes and reads: ``{"value": <the value>, "expires": <epoch ms>}``
  (``expires`` only for namespaces with a TTL), with keyv's escapes
  (a string that starts with ``:`` gets one more ``:``; ``bytes`` are
  Buffers, ``":base64:<base64>"``), plus ``ct`` and ``v``, which keyv
  ignores. Integers beyond 2**53 are refused (JavaScript would round them).

For ``json`` and ``keyv`` a value must be JSON: ``None``, ``bool``, ``int``,
finite ``float``, ``str``, lists and tuples (read back as lists), and dicts
with ``str`` keys; ``bytes`` too for ``keyv``. Anything else raises
:class:`~librecache.SerializationError` and nothing is cached.

Reading: an entry whose ``expires`` has passed is a miss (as keyv reads
it). dogpile needs a creation time to judge expiry and invalidation; an
entry written by keyv has none, so it is taken to be ``expires`` minus the
namespace's TTL when both are known (dogpile's and keyv's expiry then
agree), and the moment of reading otherwise (such an entry is fresh until
Redis or a delete removes it). Bytes that are not such a document are a
miss, logged, as corrupt bytes are in any namespace.

The region calls :meth:`JsonFormat.encode` and :meth:`JsonFormat.decode`
(``LibreRegion``); the memory backend and the near cache keep
:meth:`JsonFormat.normalize`'s copy, so a value reads back the same from
memory, the near cache and Redis. Pickle namespaces keep dogpile's own
code path (``format_for`` returns ``None``).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.region import value_version

from .errors import SerializationError
from .tags import TAG_FIELD, stored_tags

__all__ = ["FORMAT_NAMES", "JsonFormat", "KeyvFormat", "format_for"]

#: The formats LIBRECACHE_FORMATS accepts; the first is the default.
FORMAT_NAMES = ("pickle", "json", "keyv")

#: Largest integer JavaScript's numbers hold exactly.
MAX_SAFE_INTEGER = 2**53 - 1

_BASE64 = ":base64:"

#: Where a JSON document has a string that starts with ``:`` (so keyv's
#: escapes may need undoing): a ``"`` opening a string right after ``:``,
#: ``[`` or ``,`` (blanks allowed). An unescaped ``"`` outside a string is
#: always a delimiter, so text inside strings never matches; a key that
#: starts with ``:`` may (then the walk runs for nothing: keys are not escaped).
_COLON_STRING = re.compile(rb'[:\[,]\s*":')


class _Unrepresentable(Exception):
    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason
        self.path: list[str] = []


class JsonFormat:
    """The ``json`` format of one namespace.

    :param namespace: the namespace's name (for messages).
    :param ttl: the namespace's TTL in seconds, or ``None``.
    """

    name = "json"
    keyv = False

    def __init__(self, namespace: str, ttl: float | None) -> None:
        self.namespace = namespace
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.namespace} ttl={self.ttl}>"

    # -- writing --------------------------------------------------------------------

    def _out(self, value: Any) -> Any:
        """``value`` as JSON data (keyv's escapes applied), or :class:`_Unrepresentable`."""
        kind = type(value)
        if kind is str:
            return ":" + value if self.keyv and value.startswith(":") else value
        if value is None or kind is bool:
            return value
        if kind is int:
            if self.keyv and abs(value) > MAX_SAFE_INTEGER:
                raise _Unrepresentable(value, "an integer beyond 2**53, which JavaScript cannot hold exactly")
            return value
        if kind is float:
            if not math.isfinite(value):
                raise _Unrepresentable(value, f"{value!r} is not a JSON number")
            return value
        if kind is dict:
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Unrepresentable(key, f"a dict key of type {type(key).__qualname__} (JSON keys are strings)")
                try:
                    out[str.__str__(key)] = self._out(item)
                except _Unrepresentable as exc:
                    exc.path.append(f"[{key!r}]")
                    raise
            return out
        if kind is list or kind is tuple:
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(self._out(item))
                except _Unrepresentable as exc:
                    exc.path.append(f"[{index}]")
                    raise
            return items
        if self.keyv and kind in (bytes, bytearray, memoryview):
            return _BASE64 + base64.b64encode(bytes(value)).decode("ascii")
        # subclasses of the JSON types (str enums, IntEnum, ...): their plain value
        for base in (bool, str, int, float):
            if isinstance(value, base):
                return self._out(base(value) if base is not str else str.__str__(value))
        if isinstance(value, (list, tuple)):
            return self._out(list(value))
        if isinstance(value, dict):
            return self._out(dict(value))
        raise _Unrepresentable(value, f"{type(value).__qualname__} is not a JSON type")

    def encode(self, payload: Any, metadata: dict[str, Any]) -> bytes:
        """The stored bytes of ``payload`` created at ``metadata["ct"]``.

        :raises SerializationError: the value cannot be represented.
        """
        try:
            envelope: dict[str, Any] = {"value": self._out(payload)}
        except _Unrepresentable as exc:
            where = "value" + "".join(reversed(exc.path)) if exc.path else "the value"
            raise SerializationError(
                f"namespace {self.namespace}: {where} cannot be stored in the {self.name} format: {exc.reason}; "
                "nothing was cached"
            ) from None
        except RecursionError:
            raise SerializationError(
                f"namespace {self.namespace}: the value is nested too deeply for the {self.name} format; "
                "nothing was cached"
            ) from None
        created = float(metadata["ct"])
        if self.keyv and self.ttl:
            envelope["expires"] = round((created + self.ttl) * 1000)
        envelope["ct"] = created
        envelope["v"] = metadata.get("v", value_version)
        if "fs" in metadata:  # served by the fail-safe: fresh until then (librecache.engine.judge.throttled)
            envelope["fs"] = float(metadata["fs"])
        if TAG_FIELD in metadata:  # its tags (librecache.tags)
            envelope[TAG_FIELD] = list(metadata[TAG_FIELD])
        text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"namespace {self.namespace}: the value holds a string that is not valid Unicode "
                f"({exc.reason}); nothing was cached"
            ) from None

    # -- reading --------------------------------------------------------------------

    def _in(self, value: Any) -> Any:
        """keyv's escapes undone (what keyv's deserializer does)."""
        if not self.keyv:
            return value
        kind = type(value)
        if kind is str:
            if value.startswith(_BASE64):
                return base64.b64decode(value[len(_BASE64):])
            return value[1:] if value.startswith(":") else value
        if kind is list:
            return [self._in(item) for item in value]
        if kind is dict:
            return {key: self._in(item) for key, item in value.items()}
        return value

    def decode(self, data: bytes) -> Any:
        """The :class:`CachedValue` stored as ``data``, or :data:`NO_VALUE`
        for an entry whose ``expires`` has passed.

        :raises ValueError: ``data`` is not an entry of this format.
        """
        envelope = json.loads(data)
        if not isinstance(envelope, dict) or "value" not in envelope:
            raise ValueError(f"not a {self.name} entry (no 'value' field)")
        now = time.time()
        stamp: Any = envelope.get("expires")
        expires: float | None = float(stamp) if _is_number(stamp) else None
        if expires is not None and now * 1000 > expires:
            return NO_VALUE
        created = envelope.get("ct")
        if not _is_number(created):
            # written by keyv (or another client): no creation time
            created = min(now, expires / 1000 - self.ttl) if expires is not None and self.ttl else now
        version = envelope.get("v")
        if type(version) is not int:
            version = value_version
        value = envelope["value"]
        if self.keyv and _COLON_STRING.search(data if isinstance(data, bytes) else data.encode("utf-8")):
            value = self._in(value)
        metadata = {"ct": created, "v": version}
        if _is_number(envelope.get("fs")):
            metadata["fs"] = float(envelope["fs"])
        if TAG_FIELD in envelope:
            metadata[TAG_FIELD] = stored_tags(envelope[TAG_FIELD])
        return CachedValue(value, metadata)  # type: ignore[call-arg]

    def normalize(self, payload: Any) -> Any:
        """What a reader gets back for ``payload`` (tuples as lists, ...).

        :raises SerializationError: the value cannot be represented.
        """
        value = self.decode(self.encode(payload, {"ct": time.time(), "v": value_version}))
        return value.payload if value is not NO_VALUE else self._in(self._out(payload))


class KeyvFormat(JsonFormat):
    """The ``keyv`` format of one namespace (see the module)."""

    name = "keyv"
    keyv = True


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def format_for(name: str, namespace: str, ttl: float | None) -> JsonFormat | None:
    """The format object of a namespace, ``None`` for ``pickle`` (dogpile's own).

    :param name: one of :data:`FORMAT_NAMES`.
    """
    if name == "json":
        return JsonFormat(namespace, ttl)
    if name == "keyv":
        return KeyvFormat(namespace, ttl)
    if name != "pickle":
        raise ValueError(f"unknown format {name!r}; the formats are {', '.join(FORMAT_NAMES)}")
    return None
