"""Hostile and careless input (issue 11, issue 12 items 2, 4 and 6): a clear
error naming the culprit, never a wrong value, never a secret in a message.

Everything that reaches Redis runs on memory, a single server and the
6-node cluster (``backend`` below, or the ``deployment`` fixture)."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import dogpile.cache.util
import pytest
import redis
from dogpile.cache.api import NO_VALUE
from dogpile.cache.exception import DogpileCacheException
from redis.exceptions import RedisClusterException, ResponseError

import librecache
from librecache import CacheKeys, ConfigurationError
from librecache.cli import main
from librecache.keygen import dogpile_key_generator, dogpile_multi_key_generator, function_key_generator
from librecache.keyspace import KeySpace
from tests.conftest import Deployment
from tests.servers import ServerFarm

Make = Callable[..., librecache.Caches]

#: Every URI delimiter and the sub-delimiters, in one password.
HOSTILE_PASSWORD = "Zq9:/?#[]@!$&'()*+,;=%zz-7wX"


@pytest.fixture(params=["memory", "single", "cluster"])
def env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables of a deployment on memory, a single server or the cluster."""
    if request.param == "memory":
        return {}
    fixture = "redis_env" if request.param == "single" else "cluster_env"
    return dict(request.getfixturevalue(fixture))


def all_nodes(deployment: Deployment) -> list[redis.Redis]:
    raw = deployment.raw
    if deployment.cluster:
        return [raw.get_redis_connection(node) for node in raw.get_nodes()]  # type: ignore[union-attr]
    return [raw]  # type: ignore[list-item]


# -- 1. passwords with every delimiter: they work, and never show ------------------


def with_userinfo(uris: str, userinfo: str) -> str:
    return ",".join(uri.replace("redis://", f"redis://{userinfo}@", 1) for uri in uris.split(","))


def test_hostile_password_authenticates_and_never_shows(
    deployment: Deployment, make_caches: Make, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    for node in all_nodes(deployment):
        node.acl_setuser(user, enabled=True, passwords=[f"+{HOSTILE_PASSWORD}"], keys=["*"],
                         channels=["*"], commands=["+@all"])
    caplog.set_level(logging.DEBUG)
    in_uri = {**deployment.env, "REDIS_URI": with_userinfo(deployment.env["REDIS_URI"], f"{user}:{HOSTILE_PASSWORD}")}
    by_variable = {**deployment.env, "REDIS_USERNAME": user, "REDIS_PASSWORD": HOSTILE_PASSWORD}
    for variables in (in_uri, by_variable):
        caches = make_caches(variables)
        region = caches.region("ROLES")
        region.set("k", "v")
        assert region.get("k") == "v"
        assert caches.redis is not None and caches.redis.execute_command("ACL WHOAMI") in (user, user.encode())
        assert HOSTILE_PASSWORD not in repr(caches.config) and HOSTILE_PASSWORD not in repr(caches)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert main(["config"]) == 0
        assert main(["check"]) == 0
        for name in variables:
            monkeypatch.delenv(name)
        out, err = capsys.readouterr()
        assert user in out  # the user name row, from REDIS_USERNAME or the URI
        assert "***@" in out or "REDIS_PASSWORD" in variables
        for fragment in ("Zq9", "7wX", "%zz"):
            assert fragment not in out + err and fragment not in caplog.text
    # a wrong password: the errors and the log lines name no part of either password
    wrong = {**deployment.env, "REDIS_URI": with_userinfo(deployment.env["REDIS_URI"], f"{user}:{HOSTILE_PASSWORD}x"),
             "LIBRECACHE_STRICT": "true"}
    with pytest.raises((redis.RedisError, RedisClusterException)) as caught:
        make_caches(wrong).region("ROLES").set("k", "v")
    for text in (str(caught.value), caplog.text, *capsys.readouterr()):
        for fragment in ("Zq9", "7wX", HOSTILE_PASSWORD):
            assert fragment not in text


def test_database_the_server_refuses_is_one_line_naming_redis_uri(
    farm: ServerFarm, make_caches: Make, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = farm.server(config_lines=("databases 4",))
    env = {"USE_REDIS": "true", "REDIS_URI": f"redis://127.0.0.1:{server.port}/7", "REDIS_KEY_PREFIX": "db7"}
    # default mode: not an outage, so the call falls through, and one ERROR line names REDIS_URI
    region = make_caches(env).region("ROLES")
    with caplog.at_level(logging.WARNING, logger="librecache"):
        assert region.get("k") is NO_VALUE
        assert region.get_or_create("k", lambda: "made") == "made"
    refusals = [r for r in caplog.records if "REDIS_URI: the server refuses database 7" in r.getMessage()]
    assert len([r for r in refusals if r.levelno == logging.ERROR]) == 1  # once, however many calls
    # strict mode: raised at the call, one line
    region = make_caches({**env, "LIBRECACHE_STRICT": "true"}).region("ROLES")
    with pytest.raises(ResponseError) as caught:
        region.get("k")
    message = str(caught.value)
    assert message.startswith("REDIS_URI: the server refuses database 7 (DB index is out of range)")
    assert "\n" not in message
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "REDIS_URI: the server refuses database 7" in out
    # a database the server has works
    env["REDIS_URI"] = f"redis://127.0.0.1:{server.port}/3"
    region = make_caches(env).region("ROLES")
    region.set("k", "v")
    assert region.get("k") == "v"
    assert redis.Redis(port=server.port, db=3).get("db7::ROLES:k") is not None


# -- 3. prefixes cannot overlap -----------------------------------------------------


def test_nearest_allowed_prefixes_never_touch_each_other(
    deployment: Deployment, make_caches: Make, prefix: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="REDIS_KEY_PREFIX"):
        make_caches({**deployment.env, "REDIS_KEY_PREFIX": f"{prefix}::ROLES"})
    near = f"{prefix}:ROLES"  # the nearest prefix the rule allows
    mine = make_caches({**deployment.env, "REDIS_KEY_PREFIX": prefix})
    other = make_caches({**deployment.env, "REDIS_KEY_PREFIX": near})
    for caches in (mine, other):
        for key in ("a", ":x", "ROLES:b"):
            caches.region("ROLES").set(key, caches.config.key_prefix)
    assert sorted(mine.stored_keys("ROLES")) == sorted(f"{prefix}::ROLES:{key}" for key in ("a", ":x", "ROLES:b"))
    assert sorted(other.stored_keys("ROLES")) == sorted(f"{near}::ROLES:{key}" for key in ("a", ":x", "ROLES:b"))
    for name, value in {**deployment.env, "REDIS_KEY_PREFIX": prefix}.items():
        monkeypatch.setenv(name, value)
    assert main(["keys", "ROLES"]) == 0
    listed = capsys.readouterr().out
    assert f"{prefix}::ROLES:a" in listed and near not in listed
    assert main(["clear", "ROLES", "--yes"]) == 0
    assert mine.stored_keys("ROLES") == []
    assert [other.region("ROLES").get(key) for key in ("a", ":x", "ROLES:b")] == [near] * 3
    assert other.clear("ROLES") == 3
    assert deployment.keys(f"{near}::ROLES:*") == []


# -- 4. soft invalidation without TTL ------------------------------------------------


def test_soft_invalidation_without_ttl_is_refused_at_the_call(env: dict[str, str], make_caches: Make) -> None:
    caches = make_caches(env)
    region = caches.region("ROLES")
    assert region.expiration_time is None
    region.set("k", "v")
    with pytest.raises(DogpileCacheException, match=r"^namespace ROLES has no expiration time.*invalidate\(hard=True\)"):
        region.invalidate(hard=False)
    assert region.get("k") == "v"
    assert region.get_or_create("k", lambda: "new") == "v"
    if env:
        assert caches.redis is not None
        assert caches.redis.hgetall("librecache:invalidations") == {}  # never stored
        later = make_caches(env).region("ROLES")
        assert later.get_or_create("k", lambda: "new") == "v"
    # a namespace with a TTL keeps soft invalidation
    timed = make_caches(env, LIBRECACHE_NAMESPACE_TTLS="ROLES=60").region("ROLES")
    timed.invalidate(hard=False)
    assert timed.get_or_create("k", lambda: "new") == "new"


def test_soft_mark_stored_by_an_older_version_is_ignored_with_one_warning(
    deployment: Deployment, make_caches: Make, caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = deployment.env["REDIS_KEY_PREFIX"]
    deployment.raw.hset(f"{prefix}::librecache:invalidations", "ROLES:soft", repr(time.time() + 5))
    caplog.set_level(logging.WARNING, logger="librecache.invalidation")
    caches = make_caches(deployment.env)
    region = caches.region("ROLES")
    assert region.get_or_create("k", lambda: "v") == "v"
    assert region.get_or_create("k", lambda: "other") == "v"

    @region.cache_on_arguments()
    def square(x: int) -> int:
        return x * x

    assert square(3) == 9
    assert caches.invalidations is not None
    caches.invalidations.load(force=True)
    caches.invalidations.load(force=True)
    warnings = [r.getMessage() for r in caplog.records if "ignoring a soft invalidation mark" in r.getMessage()]
    assert warnings == ["namespace ROLES: ignoring a soft invalidation mark stored in Redis (the namespace has "
                        "no expiration time, so soft invalidation cannot apply; an older version stored it)"]


# -- 5. keys: the same on every backend ----------------------------------------------


def test_a_key_that_cannot_be_encoded_is_a_clear_error_everywhere(env: dict[str, str], make_caches: Make) -> None:
    region = make_caches(env).region("ROLES")
    bad = "bad\ud800key"
    calls: list[Callable[[], Any]] = [
        lambda: region.set(bad, 1), lambda: region.get(bad), lambda: region.delete(bad),
        lambda: region.get_or_create(bad, lambda: 1), lambda: region.get_multi(["ok", bad]),
        lambda: region.set_multi({"ok": 1, bad: 2}), lambda: region.set(bad * 200, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value).startswith(f"namespace ROLES: the key {bad!r} cannot be encoded as UTF-8") or \
            str(caught.value).startswith(f"namespace ROLES: the key {bad * 200!r} cannot be encoded")
    assert region.get("ok") is NO_VALUE  # set_multi wrote nothing
    # any other text is a key, long or not, on every backend
    for key in ("ключ", "🔑" * 300, "a b|c", ""):
        region.set(key, key)
        assert region.get(key) == key


def test_non_str_keys_work_the_same_everywhere(env: dict[str, str], make_caches: Make) -> None:
    region = make_caches(env).region("ROLES")
    region.set(1, "one")
    assert region.get(1) == "one" and region.get("1") == "one"  # as redis-py sends 1: b"1"
    region.set(2.5, "float")
    assert region.get("2.5") == "float"
    region.set(b"bytes", "b")
    assert region.get("bytes") == "b"
    assert region.get_or_create(7, lambda: "seven") == "seven" and region.get("7") == "seven"
    region.delete(1)
    assert region.get("1") is NO_VALUE
    for key in (None, True, ("a", 1), b"\xff"):
        with pytest.raises((TypeError, ValueError), match=r"^namespace ROLES: "):
            region.set(key, "x")


# -- 6. memoised arguments never collide -----------------------------------------------


def test_memoised_arguments_never_collide(env: dict[str, str], make_caches: Make) -> None:
    region = make_caches(env).region("ROLES")

    @region.cache_on_arguments()
    def pair(a: str, b: str) -> str:
        return f"{a}/{b}"

    @region.cache_on_arguments()
    def many(*parts: str) -> tuple[str, ...]:
        return parts

    assert pair("a", "b c") == "a/b c"
    assert pair("a b", "c") == "a b/c"
    assert pair("a", "b") == "a/b" and pair("a b", "") == "a b/" and pair("a", " b") == "a/ b"
    assert many() == () and many("") == ("",) and many("", "") == ("", "")
    assert many("x|y") == ("x|y",) and many("x", "y") == ("x", "y")

    with pytest.raises(TypeError, match=r"^.*pair: the argument b has no stable text"):
        pair("a", Plain())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"many: the argument \*parts\[1\] has no stable text"):
        many("a", [Plain()])  # type: ignore[arg-type]


def test_plain_arguments_keep_dogpile_keys_and_dogpile_generators_by_name(env: dict[str, str], make_caches: Make) -> None:
    def fn(a: Any, b: Any = 2) -> None: ...

    for namespace in (None, "v2"):
        for to_str in (str, repr):
            ours, theirs = function_key_generator(namespace, fn, to_str), dogpile_key_generator(namespace, fn, to_str)
            for args in ((1, 2), ("x", "y"), ("é", 3.5), (1, "1")):
                assert ours(*args) == theirs(*args)
            assert ours("a", "b c") != theirs("a", "b c")
    assert function_key_generator(None, fn)(1, 2) == function_key_generator(None, fn)("1", "2")  # 1 and "1": as dogpile

    region = make_caches(env).region("ROLES")

    @region.cache_on_arguments(function_key_generator=dogpile_key_generator)
    def shared(a: str, b: str) -> str:
        return f"{a}/{b}"

    @region.cache_multi_on_arguments(function_multi_key_generator=dogpile_multi_key_generator)
    def multi(*keys: str) -> list[str]:
        return [key.upper() for key in keys]

    assert shared("a", "b c") == "a/b c"
    assert shared("a b", "c") == "a/b c"  # dogpile's own collision, chosen by name
    assert region.get(dogpile.cache.util.function_key_generator(None, shared.original)("a", "b c")) == "a/b c"  # type: ignore[attr-defined]
    assert multi("x", "y") == ["X", "Y"]
    assert region.get(f"{__name__}:multi|x") == "X"

    @region.cache_multi_on_arguments()
    def ours_multi(*keys: Any) -> list[str]:
        return [str(key) for key in keys]

    assert ours_multi("p", "q r") == ["p", "q r"]
    with pytest.raises(TypeError, match="ours_multi: the argument"):
        ours_multi(object())


class Plain:
    """No __str__ or __repr__: its text is its memory address."""


class Named:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Named({self.n})"


def test_addresses_never_reach_a_key_even_inside_containers(env: dict[str, str], make_caches: Make) -> None:
    region = make_caches(env).region("ROLES")

    @region.cache_on_arguments()
    def ident(x: Any) -> Any:
        return x

    for bad in (Plain(), [Plain()], {"k": Plain()}):
        with pytest.raises(TypeError, match="ident: the argument x has no stable text"):
            ident(bad)
    values = [ident([Named(i)]) for i in range(20)]
    assert [value[0].n for value in values] == list(range(20))

    @region.cache_on_arguments(to_str=lambda obj: type(obj).__name__)
    def by_type(x: Any) -> str:
        return type(x).__name__

    assert by_type(Plain()) == "Plain"  # a to_str that names the value is the user's choice


# -- 7. signatures ------------------------------------------------------------------------


def test_memoised_functions_keep_their_signature(make_caches: Make) -> None:
    region = make_caches().region("ROLES")

    def original(a: int, b: str = "x", *rest: int, flag: bool = False, **extra: Any) -> str:
        return ""

    class Service:
        @region.cache_on_arguments()
        def lookup(self, user_id: int, full: bool = False) -> int:
            return user_id

    wrapped = region.cache_on_arguments()(original)
    assert inspect.getfullargspec(wrapped) == inspect.getfullargspec(original)
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert inspect.getfullargspec(Service.lookup).args == ["self", "user_id", "full"]
    assert list(inspect.signature(Service().lookup).parameters) == ["user_id", "full"]
    assert Service().lookup(3) == 3


# -- 8. lock names ----------------------------------------------------------------------------


def test_lock_names_are_one_per_key_and_stay_under_the_prefix() -> None:
    space = KeySpace("p")
    mangle = space.mangler(CacheKeys.ROLES)
    locks = [space.lock(key) for key in ("foo", "bar", mangle("foo"), mangle("bar"), "p::ROLES:foo"[3:])]
    assert len(set(locks)) == len(locks)
    assert all(lock.startswith("p::librecache:lock") for lock in locks)
    assert space.lock(mangle("foo")) == "p::librecache:lock:{p::ROLES:foo}"
    assert space.lock("foo") == "p::librecache:lock-raw:{foo}"
    bare = KeySpace("")
    assert bare.lock("foo") != bare.lock("bar")


def test_mutexes_of_raw_keys_do_not_block_each_other(deployment: Deployment, make_caches: Make) -> None:
    backend = make_caches(deployment.env).region("ROLES").backend
    foo, bar = backend.get_mutex("foo"), backend.get_mutex("bar")
    assert foo.acquire(wait=False)
    try:
        assert bar.acquire(wait=False)  # was: the same Redis lock, so it waited until the lock timeout
        bar.release()
        assert not backend.get_mutex("foo").acquire(wait=False)
    finally:
        foo.release()
    prefix = deployment.env["REDIS_KEY_PREFIX"]
    assert deployment.keys(f"{prefix}::librecache:lock*") == []

