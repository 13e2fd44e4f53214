"""The conformance suite over every backend and topology."""

from __future__ import annotations

import pytest

from tests.conformance import RegionConformance
from tests.servers import RedisClusterFarm, RedisServer


class TestMemoryRegions(RegionConformance):
    expected_backend = "memory"

    @pytest.fixture
    def environment(self) -> dict[str, str]:
        return {}


class TestForcedMemoryRegionsWithRedisOn(RegionConformance):
    """USE_REDIS=true, but every namespace forced into memory."""

    expected_backend = "memory"

    @pytest.fixture
    def environment(self, redis_env: dict[str, str]) -> dict[str, str]:
        from librecache import CacheKeys

        return {**redis_env, "FORCED_IN_MEMORY_CACHE_NAMESPACES": ",".join(CacheKeys.__members__)}


class TestSingleRedisRegions(RegionConformance):
    expected_backend = "redis"

    @pytest.fixture
    def environment(self, redis_env: dict[str, str]) -> dict[str, str]:
        return redis_env


class TestSingleRedisRegionsWithoutPrefix(RegionConformance):
    expected_backend = "redis"

    @pytest.fixture
    def environment(self, bare_redis_server: RedisServer) -> dict[str, str]:
        return {"USE_REDIS": "true", "REDIS_URI": bare_redis_server.url}


class TestClusterRegions(RegionConformance):
    """Three seed URIs of a 6-node cluster."""

    expected_backend = "redis"

    @pytest.fixture
    def environment(self, cluster_env: dict[str, str]) -> dict[str, str]:
        return cluster_env


class TestClusterRegionsFromOneSeed(RegionConformance):
    """One seed URI and USE_REDIS_CLUSTER=true."""

    expected_backend = "redis"

    @pytest.fixture
    def environment(self, cluster_env: dict[str, str], redis_cluster: RedisClusterFarm) -> dict[str, str]:
        return {**cluster_env, "REDIS_URI": redis_cluster.uri(1), "USE_REDIS_CLUSTER": "true"}
