"""Typed uses of librecache, checked by mypy --strict (tests/test_typing.py):
a lost type or an unreported wrong call fails the test."""

from __future__ import annotations

import asyncio

from dogpile.cache.api import NoValue
from typing_extensions import assert_type

import librecache

roles = librecache.get_region("ROLES")


@roles.cache_on_arguments()
def permissions(role: str, *, strict: bool = False) -> list[str]:
    return [role]


@roles.cache_on_arguments(expiration_time=60, tags=lambda user_id: [f"user:{user_id}"])
async def profile(user_id: int) -> dict[str, int]:
    return {"id": user_id}


assert_type(permissions("admin"), list[str])
assert_type(permissions("admin", strict=True), list[str])
assert_type(permissions.get("admin"), list[str] | NoValue)
assert_type(permissions.refresh("admin"), list[str])
assert_type(permissions.invalidate("admin"), None)
assert_type(permissions.set(["read"], "admin"), None)
assert_type(permissions.original("admin"), list[str])
permissions(42)  # type: ignore[arg-type]
permissions.set("not a list", "admin")  # type: ignore[arg-type]


async def main() -> None:
    assert_type(await profile(7), dict[str, int])
    assert_type(await profile.get(7), dict[str, int] | NoValue)
    assert_type(await profile.refresh(7), dict[str, int])
    assert_type(await profile.invalidate(7), None)
    await profile.set({"id": 7}, 7)
    await profile("seven")  # type: ignore[arg-type]


asyncio.run(main())
