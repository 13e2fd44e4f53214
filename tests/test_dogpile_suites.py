"""dogpile.cache's own tests, run against librecache.

- The generic suites the installed dogpile.cache ships
  (``dogpile.testing.fixtures``: backend, mutex, serializer) over the
  ``librecache.memory`` and ``librecache.redis`` backends, the latter on a
  single Redis and on the 6-node cluster, given the arguments the registry
  builds;
- the region and decorator tests of dogpile's upstream suite
  (``tests/cache/test_region.py``, ``tests/cache/test_decorator.py``), which
  are not in the wheel: they are taken from the sdist of the *installed*
  version, fetched once with ``pip download`` into ``.dogpile-tests/``
  (git-ignored), so that the floors run tests its own dogpile version;
- the same region, decorator and generic tests over the regions
  :class:`~librecache.Caches` builds (memory, single Redis, cluster).

Where a test cannot apply, :data:`NOT_APPLICABLE` says why in one line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion
from dogpile.testing import fixtures

import librecache
from librecache.keyspace import KeySpace
from tests.test_resilience import wait_until

ROOT = Path(__file__).resolve().parent.parent
DOGPILE_VERSION = importlib.metadata.version("dogpile.cache")
#: The namespace every test here uses (no default TTL).
NAMESPACE = "ROLES"


def upstream_tests(version: str = DOGPILE_VERSION) -> Path:
    """The ``tests/cache`` folder of dogpile.cache ``version``'s sdist,
    fetched from the package index the first time."""
    folder = ROOT / ".dogpile-tests" / version
    found = sorted(folder.glob("*/tests/cache"))  # dogpile.cache-1.3.0/ or dogpile_cache-1.5.0/
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"dogpile.cache=={version}", "-d", str(folder)],
        check=True, capture_output=True,
    )
    (sdist,) = folder.glob("dogpile*cache-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if "/tests/" in m.name]
        safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
        archive.extractall(folder, members=members, **safe)
    (tests,) = folder.glob("*/tests/cache")
    return tests


def _load(name: str) -> ModuleType:
    path = upstream_tests() / f"{name}.py"
    # upstream's own module name: its tests expect keys made from it
    spec = importlib.util.spec_from_file_location(f"tests.cache.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upstream_region = _load("test_region")
upstream_decorator = _load("test_decorator")


#: Tests that cannot apply to librecache, with the reason (a deliberate
#: difference, or a test that inspects dogpile's own mock backend).
NOT_APPLICABLE: dict[str, str] = {
    "test_argument_dictionary_unmodified":
        "librecache's backends refuse unknown arguments (deliberate: a misspelt argument is an error)",
    "test_instance_from_dict": "configures dogpile's mock backend by name, not a backend under test",
    "test_instance_from_config_string": "configures dogpile's mock backend by name, not a backend under test",
    "test_dupe_config": "configures dogpile's mock backend by name, not a backend under test",
    "test_replace_backend_config": "configures dogpile's null and mock backends, not a backend under test",
    "test_replace_backend_config_with_custom_key_mangler":
        "configures dogpile's null and mock backends, not a backend under test",
    "test_key_mangler_impl": "reads the keys of dogpile's mock backend's dict",
    "test_should_cache_fn": "reads the counters of dogpile's mock backend's dict",
    "test_should_cache_fn_multi": "reads the counters of dogpile's mock backend's dict",
    "test_multi_namespace": "reads the keys of dogpile's memory backend's dict",
    "test_datetime_expiration_time": "checks dogpile's own configure(); no backend involved",
    "test_reject_invalid_expiration_time": "checks dogpile's own configure(); no backend involved",
    "test_no_config": "checks dogpile's own unconfigured region; no backend involved",
    "test_invalid_backend": "checks dogpile's own backend loader; no backend involved",
    "test_set_name": "checks dogpile's make_region(); no backend involved",
    "test_key_mangler_argument": "checks dogpile's own key mangler argument; no backend involved",
}

#: Only on the Redis backend: it is the backend's key mangler that puts keys
#: under ``{prefix}::{NAMESPACE}:``.
_PROXY_BYPASSED = ("dogpile sends a serializing backend's reads and writes through get_serialized()/"
                   "set_serialized(), around the test proxies' get()/set() (its own redis backend alike)")
NOT_APPLICABLE_TO_REDIS: dict[str, str] = {
    "test_uses_serializer": "reads the backend with an unmangled key; librecache.redis's key_mangler adds the prefix",
    "test_counter_proxies": _PROXY_BYPASSED,
    "test_instance_proxies": _PROXY_BYPASSED,
    "test_argument_proxies": _PROXY_BYPASSED,
}

#: A deliberate difference of the regions Caches builds (see docs/keys.rst).
SOFT_WITHOUT_TTL = "soft invalidation of a namespace without TTL is refused at invalidate() (never stored), not at the next read"

#: Only on the regions Caches builds: they are configured from variables,
#: and keep entries only until the TTL plus a grace (deliberate differences).
NOT_APPLICABLE_TO_CACHES: dict[str, str] = {
    "test_expire": "server-side expiry at TTL plus grace: ignore_expiration cannot reach an entry past that",
    "test_expire_multi": "server-side expiry at TTL plus grace: ignore_expiration cannot reach an entry past that",
    "test_soft_invalidate_requires_expire_time_get_first_call": SOFT_WITHOUT_TTL,
    "test_soft_invalidate_requires_expire_time_get_second_call": SOFT_WITHOUT_TTL,
    "test_soft_invalidate_requires_expire_time_get_multi_first_call": SOFT_WITHOUT_TTL,
    "test_soft_invalidate_requires_expire_time_get_multi_second_call": SOFT_WITHOUT_TTL,
}


# --------------------------------------------------------------------------
# The stacks under test
# --------------------------------------------------------------------------


@pytest.fixture(scope="class")
def _shared(request: pytest.FixtureRequest) -> Iterator[librecache.Caches]:
    """One registry per test class: its connection serves every test of the
    class, each test under its own prefix."""
    kind = request.cls.kind
    env: dict[str, str] = {}
    if kind != "memory":
        servers = request.getfixturevalue("redis_server" if kind == "single" else "redis_cluster")
        uri = servers.url if kind == "single" else servers.uri(3)
        env = {"USE_REDIS": "true", "REDIS_URI": uri, "REDIS_KEY_PREFIX": "dogpile-suites"}
    with librecache.Caches(env) as caches:
        yield caches



class Stack:
    """A backend under test: the ``backend`` name and the ``arguments``
    the registry builds, set per test by :meth:`_stack`."""

    backend: ClassVar[str]
    #: "memory", "single" or "cluster".
    kind: ClassVar[str]
    on_caches: ClassVar[bool] = False
    #: What the upstream class's own ``_region`` adds to ``configure``.
    extra_config: ClassVar[Callable[[], dict[str, Any]]] = staticmethod(dict)
    config_args: dict[str, Any]

    @classmethod
    def setup_class(cls) -> None:
        """dogpile's fixture builds a backend from class-level arguments;
        ours come from live servers, per test."""

    def child_environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        if self.kind == "memory":
            return {}
        env: dict[str, str] = request.getfixturevalue("redis_env" if self.kind == "single" else "cluster_env")
        return env

    @pytest.fixture(autouse=True)
    def _stack(
        self, request: pytest.FixtureRequest, make_caches: Callable[..., librecache.Caches],
        _shared: librecache.Caches, prefix: str,
    ) -> Iterator[None]:
        name = request.node.originalname
        reason = (NOT_APPLICABLE.get(name) or (self.on_caches and NOT_APPLICABLE_TO_CACHES.get(name))
                  or (self.backend == "librecache.redis" and NOT_APPLICABLE_TO_REDIS.get(name)))
        if reason:
            pytest.skip(reason)
        self._make_caches = make_caches
        if self.on_caches:
            self._env = self.child_environment(request)
        backend, arguments = _shared.backend_arguments(NAMESPACE)
        assert backend == self.backend
        if "keyspace" in arguments:
            arguments["keyspace"] = KeySpace(prefix)
        self.config_args = {**type(self).__dict__.get("config_args", {}), "arguments": arguments}
        yield

    def _region(self, *args: Any, **kwargs: Any) -> CacheRegion:
        """Both of dogpile's ``_region`` signatures (all its calls pass
        keywords): a plain dogpile region over our backend, or a region
        :class:`~librecache.Caches` builds."""
        assert not args
        init_args = {**kwargs.get("init_args", {}), **kwargs.get("region_args", {})}
        for cls in reversed(type(self).__mro__):
            init_args = {**cls.__dict__.get("region_args", {}), **init_args}
        config_args = {**self.config_args, **self.extra_config(), **kwargs.get("config_args", {})}
        if self.on_caches:
            return self._caches_region(init_args, config_args)
        config_args["arguments"] = self.config_args["arguments"]
        region = CacheRegion(**init_args)
        region.configure(self.backend, **config_args)
        self._region_inst = region
        return region

    def _caches_region(self, init_args: dict[str, Any], config_args: dict[str, Any]) -> CacheRegion:
        config_args.pop("arguments")
        ttl = config_args.pop("expiration_time", None)
        if init_args or config_args:
            pytest.skip(f"Caches builds regions from variables; no {', '.join([*init_args, *config_args])} argument")
        env = dict(self._env)
        if ttl is not None:
            if not isinstance(ttl, (int, float)) or ttl <= 0:
                pytest.skip(f"a TTL variable takes seconds > 0, not {ttl!r}")
            env["LIBRECACHE_NAMESPACE_TTLS"] = f"{NAMESPACE}={ttl}"
        region = self._make_caches(env).region(NAMESPACE)
        self._region_inst = region
        return region


class Memory(Stack):
    backend = "librecache.memory"
    kind = "memory"


class Single(Stack):
    backend = "librecache.redis"
    kind = "single"


class Cluster(Stack):
    backend = "librecache.redis"
    kind = "cluster"


class CachesMemory(Memory):
    on_caches = True


class CachesSingle(Single):
    on_caches = True


class CachesCluster(Cluster):
    on_caches = True


# --------------------------------------------------------------------------
# The suites, over every stack
# --------------------------------------------------------------------------

BACKEND_STACKS = (Memory, Single, Cluster)
ALL_STACKS = (*BACKEND_STACKS, CachesMemory, CachesSingle, CachesCluster)

SUITES: list[tuple[type, tuple[type[Stack], ...]]] = [
    (fixtures._GenericBackendTestSuite, ALL_STACKS),
    (fixtures._GenericMutexTestSuite, (Single, Cluster)),  # the memory backend has no mutex of its own
    (type("SerializerSuite", (fixtures._GenericSerializerTestSuite, fixtures._GenericBackendTestSuite), {}),
     BACKEND_STACKS),
    (upstream_region.RegionTest, ALL_STACKS),
    # proxies, invalidation strategies and logging are the region's: the
    # cluster adds nothing to what RegionTest checks there
    (type("ProxyRegionTest", (upstream_region.ProxyRegionTest,),
          {"extra_config": staticmethod(lambda: {"wrap": [ProxyBackend]})}), (Memory, Single)),
    (type("CustomInvalidationStrategyTest", (upstream_region.CustomInvalidationStrategyTest,),
          {"extra_config": staticmethod(lambda: {
              "region_invalidator": upstream_region.CustomInvalidationStrategyTest.CustomInvalidationStrategy()})}),
     (Memory, Single)),
    (upstream_region.ProxyBackendTest, (Memory, Single)),
    (upstream_region.LoggingTest, (Memory, Single)),
    (upstream_decorator.DecoratorTest, ALL_STACKS),
    (upstream_decorator.CacheDecoratorTest, ALL_STACKS),
]


def _suite_classes() -> dict[str, type]:
    made: dict[str, type] = {}
    for suite, stacks in SUITES:
        base = suite.__name__.lstrip("_").removeprefix("Generic").removesuffix("Suite").removesuffix("Test")
        for stack in stacks:
            name = f"Test{base}{stack.__name__}"
            namespace: dict[str, Any] = {"__module__": __name__}
            if "extra_config" in suite.__dict__:
                namespace["extra_config"] = suite.__dict__["extra_config"]
            made[name] = type(name, (stack, suite), namespace)
    return made


globals().update(_suite_classes())


# --------------------------------------------------------------------------
# The deliberate difference of expiry, and the way to keep dogpile's habit
# --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "single", "cluster"])
def stack_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Variables of a deployment on memory, a single Redis or the cluster."""
    if request.param == "memory":
        return {}
    env: dict[str, str] = request.getfixturevalue("redis_env" if request.param == "single" else "cluster_env")
    return env


def _stored_for(caches: librecache.Caches, key: str) -> float | None:
    """How long the storage keeps ``key`` (seconds; None: no expiry)."""
    backend = caches.region(NAMESPACE).backend
    if caches.backend_name(NAMESPACE) == "memory":
        return float(backend.expires_after) if backend.expires_after else None
    redis = caches.redis
    assert redis is not None
    milliseconds = redis.pttl(f"{NAMESPACE}:{key}")
    return None if milliseconds < 0 else milliseconds / 1000.0


def test_entries_are_dropped_at_ttl_plus_grace(stack_env: dict[str, str], make_caches: Callable[..., librecache.Caches]) -> None:
    caches = make_caches({**stack_env, "LIBRECACHE_NAMESPACE_TTLS": f"{NAMESPACE}=0.5"})
    region = caches.region(NAMESPACE)
    region.set("k", "v")
    stored = _stored_for(caches, "k")
    assert stored is not None and stored <= 1.5  # TTL + the default grace (at least 1 s)
    wait_until(lambda: region.get("k") is NO_VALUE, timeout=10)
    wait_until(lambda: region.get("k", ignore_expiration=True) is NO_VALUE, timeout=10)


def test_a_namespace_grace_keeps_a_stale_value_for_a_failing_creator(
    stack_env: dict[str, str], make_caches: Callable[..., librecache.Caches]
) -> None:
    caches = make_caches({**stack_env, "LIBRECACHE_NAMESPACE_TTLS": f"{NAMESPACE}=0.5",
                          "LIBRECACHE_NAMESPACE_GRACE": f"{NAMESPACE}=3600,MESSAGES=none"})
    assert caches.config.storage_expiry(NAMESPACE) == 3600.5
    assert caches.config.storage_expiry("MESSAGES") == 60  # its TTL, no grace
    region = caches.region(NAMESPACE)
    region.set("k", "v")
    stored = _stored_for(caches, "k")
    assert stored is not None and stored > 3000
    wait_until(lambda: region.get("k") is NO_VALUE, timeout=10)

    def failing() -> str:
        raise RuntimeError("the source is down")

    try:
        value = region.get_or_create("k", failing)
    except RuntimeError:  # the pattern the documentation shows
        value = region.get("k", ignore_expiration=True)
    assert value == "v"


# --------------------------------------------------------------------------
# Difference 1: bytes reach the memory backend (a region serializer)
# --------------------------------------------------------------------------


def test_memory_backend_with_a_json_serializer_keeps_its_bounds_and_refuses_unpicklable_objects() -> None:
    import json
    import threading

    from librecache.errors import SerializationError

    arguments = {"name": NAMESPACE, "max_entries": 2, "expires_after": 0.2}
    region = CacheRegion(serializer=lambda value: json.dumps(value).encode(), deserializer=json.loads)
    region.configure("librecache.memory", arguments=arguments)
    for key in ("a", "b", "c"):
        region.set(key, {"key": key})
    assert isinstance(region.backend.get_serialized("c"), bytes)
    assert region.get("a") is NO_VALUE  # bounded: the least recently used went
    assert region.get_multi(["b", "c"]) == [{"key": "b"}, {"key": "c"}]
    region.backend.set_serialized("d", region.backend.get_serialized("c"))
    assert region.get("d") == {"key": "c"}
    wait_until(lambda: region.get("d", ignore_expiration=True) is NO_VALUE, timeout=5)  # TTL

    plain = CacheRegion()
    plain.configure("librecache.memory", arguments=arguments)
    with pytest.raises(SerializationError, match=NAMESPACE):
        plain.set("lock", threading.Lock())
    assert plain.get("lock") is NO_VALUE
