"""Reading redis-py replies."""

from __future__ import annotations

from typing import Any

__all__ = ["text"]


def text(value: Any) -> str:
    """A reply (``bytes`` or anything else) as ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
