"""Resumable streams: one suite over memory, a single Redis and the cluster;
cross-instance and cross-process behaviour on Redis."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from redis.crc import key_slot

from librecache.streams import (
    InvalidEventError,
    StreamEvent,
    StreamExistsError,
    StreamFinishedError,
    StreamStore,
    UnknownStreamError,
    open_streams,
    open_streams_sync,
)
from tests import processes

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def collect(store: StreamStore, stream_id: str, after: str | None = None) -> list[StreamEvent]:
    return [event async for event in store.subscribe(stream_id, after)]


def ids_increase(events: list[StreamEvent]) -> bool:
    keys = [tuple(int(part) for part in event.id.split("-")) for event in events]
    return all(a < b for a, b in itertools.pairwise(keys))


class StreamConformance:
    """Every stream store passes these. Subclasses define ``environment``."""

    @pytest.fixture
    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    @pytest.fixture
    def make(self, environment: dict[str, str]) -> Iterator[Callable[..., StreamStore]]:
        """Build stores (each test runs its coroutines in one event loop)."""
        stores: list[StreamStore] = []

        def build(**extra: str) -> StreamStore:
            store = open_streams({**environment, **extra})
            stores.append(store)
            return store

        yield build

    def test_events_in_order_then_the_end(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            store = make()
            await store.create("conv-1", meta={"owner": "u1", "model": "gpt"})
            ids = [await store.append("conv-1", {"type": "chunk", "text": f"t{i}"}) for i in range(50)]
            end_id = await store.finish("conv-1", "done", final={"tokens": 50})
            events = await collect(store, "conv-1")
            assert [e.id for e in events] == [*ids, end_id]
            assert [e.data for e in events[:-1]] == [{"type": "chunk", "text": f"t{i}"} for i in range(50)]
            assert events[-1].is_end and events[-1].data == {"librecache": "end", "status": "done", "final": {"tokens": 50}}
            assert ids_increase(events)
            status = await store.status("conv-1")
            assert (status.status, status.events, status.last_event_id, status.final) == ("done", 51, end_id, {"tokens": 50})
            assert status.meta == {"owner": "u1", "model": "gpt"}
            await store.close()

        run(scenario())

    def test_resume_after_any_event_has_no_gap_and_no_duplicate(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            producer, reader = make(), make()
            await producer.create("conv-2")
            ids = [await producer.append("conv-2", {"n": i}) for i in range(30)]
            seen: list[StreamEvent] = []
            async for event in reader.subscribe("conv-2"):
                seen.append(event)
                if len(seen) == 12:
                    break  # the tab closes mid-stream
            later = [await producer.append("conv-2", {"n": i}) for i in range(30, 40)]
            await producer.finish("conv-2")
            resumed = await collect(reader, "conv-2", after=seen[-1].id)
            assert [e.data.get("n") for e in resumed[:-1]] == list(range(12, 40))
            assert [e.id for e in resumed[:-1]] == ids[12:] + later
            assert resumed[-1].is_end
            await producer.close()
            await reader.close()

        run(scenario())

    def test_concurrent_subscribers_get_identical_live_sequences(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            producer = make()
            await producer.create("conv-3")
            readers = [make() for _ in range(3)]
            tasks = [asyncio.create_task(collect(reader, "conv-3")) for reader in readers]
            await asyncio.sleep(0.1)  # the subscribers are waiting for live events
            for i in range(100):
                await producer.append("conv-3", {"n": i})
                if i % 10 == 0:
                    await asyncio.sleep(0.005)
            await producer.finish("conv-3")
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert results[0] == results[1] == results[2]
            assert [e.data.get("n") for e in results[0][:-1]] == list(range(100)) and results[0][-1].is_end
            for store in [producer, *readers]:
                await store.close()

        run(scenario())

    def test_a_late_subscriber_gets_the_full_replay_and_ends(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            store = make()
            await store.create("conv-4")
            for i in range(5):
                await store.append("conv-4", {"n": i})
            await store.finish("conv-4", "error", final={"message": "model failed"})
            events = await asyncio.wait_for(collect(make(), "conv-4"), 5)
            assert [e.data.get("n") for e in events[:-1]] == list(range(5))
            assert events[-1].data["status"] == "error" and events[-1].data["final"] == {"message": "model failed"}
            assert await asyncio.wait_for(collect(store, "conv-4", after=events[-1].id), 2) == []

        run(scenario())

    def test_abort_is_seen_by_the_producer(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            producer, other = make(), make()
            await producer.create("conv-5")
            await producer.append("conv-5", {"n": 0})
            assert await producer.is_aborted("conv-5") is False
            assert await other.abort("conv-5", reason="user pressed stop") is True
            assert await producer.is_aborted("conv-5") is True
            status = await producer.status("conv-5")
            assert status.abort_requested and status.abort_reason == "user pressed stop" and status.status == "running"
            await producer.finish("conv-5", "aborted")
            assert await other.abort("conv-5") is False  # already over
            events = await collect(other, "conv-5")
            assert events[-1].data["status"] == "aborted"
            await producer.close()
            await other.close()

        run(scenario())

    def test_active_streams_all_and_by_owner(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            store = make()
            await store.create("a1", meta={"owner": "alice"})
            await store.create("a2", meta={"owner": "alice"})
            await store.create("b1", meta={"owner": "bob"})
            await store.finish("a2")
            assert set(await store.active()) >= {"a1", "b1"} and "a2" not in await store.active()
            assert await store.active("alice") == ["a1"]
            assert await store.active("bob") == ["b1"]
            assert await store.active("nobody") == []
            await store.close()

        run(scenario())

    def test_bad_input_is_a_clear_error_and_loses_nothing(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            store = make()
            with pytest.raises(UnknownStreamError, match="no stream 'ghost'"):
                await store.append("ghost", {"n": 1})
            with pytest.raises(UnknownStreamError):
                await store.status("ghost")
            with pytest.raises(UnknownStreamError):
                await collect(store, "ghost")
            with pytest.raises(ValueError, match="invalid stream id"):
                await store.create("bad {id}")
            await store.create("conv-6")
            with pytest.raises(StreamExistsError):
                await store.create("conv-6")
            first = await store.append("conv-6", {"n": 1})
            with pytest.raises(InvalidEventError, match="not JSON-serialisable"):
                await store.append("conv-6", {"n": object()})
            with pytest.raises(InvalidEventError, match="reserved"):
                await store.append("conv-6", {"librecache": "end"})
            with pytest.raises(InvalidEventError, match="must be a dict"):
                await store.append("conv-6", ["not", "a", "dict"])  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="not an event id"):
                await collect(store, "conv-6", after="yesterday")
            with pytest.raises(ValueError, match="status must be one of"):
                await store.finish("conv-6", "finished")  # type: ignore[arg-type]
            await store.finish("conv-6")
            with pytest.raises(StreamFinishedError, match="has finished"):
                await store.append("conv-6", {"n": 2})
            with pytest.raises(StreamFinishedError):
                await store.finish("conv-6")
            events = await collect(store, "conv-6")
            assert [e.id for e in events][:1] == [first] and len(events) == 2  # nothing lost, nothing added
            await store.close()

        run(scenario())

    def test_finished_and_idle_streams_expire(self, make: Callable[..., StreamStore]) -> None:
        async def scenario() -> None:
            store = make(LIBRECACHE_STREAM_FINISHED_TTL="0.5", LIBRECACHE_STREAM_IDLE_TTL="1")
            await store.create("done-soon")
            await store.append("done-soon", {"n": 1})
            await store.finish("done-soon")
            await store.create("idle")
            await store.append("idle", {"n": 1})
            follower = asyncio.create_task(collect(store, "idle"))
            await asyncio.sleep(0.7)
            with pytest.raises(UnknownStreamError):
                await store.status("done-soon")
            assert (await store.status("idle")).status == "running"
            with pytest.raises(UnknownStreamError, match="expired"):
                await asyncio.wait_for(follower, 8)
            with pytest.raises(UnknownStreamError):
                await store.append("idle", {"n": 2})
            assert "idle" not in await store.active()
            await store.close()

        run(scenario())

    def test_more_listeners_than_the_limit_warn_once_and_are_served(
        self, make: Callable[..., StreamStore], caplog: pytest.LogCaptureFixture
    ) -> None:
        async def scenario() -> None:
            store = make(REDIS_MAX_LISTENERS="2")
            await store.create("busy")
            tasks = [asyncio.create_task(collect(store, "busy")) for _ in range(4)]
            await asyncio.sleep(0.1)
            await store.append("busy", {"n": 1})
            await store.finish("busy")
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert all(len(events) == 2 for events in results)
            await store.close()

        with caplog.at_level(logging.WARNING, logger="librecache.streams"):
            run(scenario())
        warnings = [r for r in caplog.records if "REDIS_MAX_LISTENERS=2" in r.getMessage()]
        assert len(warnings) == 1 and "4 concurrent subscribers" not in warnings[0].getMessage()

    @pytest.fixture
    def sync_pair(self, environment: dict[str, str]) -> Iterator[tuple[Any, Any]]:
        """(producer, reader): two sync stores, as two instances would have."""
        with open_streams_sync(environment) as producer, open_streams_sync(environment) as reader:
            yield producer, reader

    def test_the_sync_twin(self, sync_pair: tuple[Any, Any]) -> None:
        producer, reader = sync_pair
        producer.create("sync-1", meta={"owner": "wsgi"})
        received: list[StreamEvent] = []
        thread = threading.Thread(target=lambda: received.extend(reader.subscribe("sync-1")))
        thread.start()
        time.sleep(0.1)
        ids = [producer.append("sync-1", {"n": i}) for i in range(20)]
        producer.finish("sync-1")
        thread.join(10)
        assert [e.id for e in received[:-1]] == ids and received[-1].is_end
        assert producer.status("sync-1").status == "done"
        replay = list(reader.subscribe("sync-1", after=ids[9]))
        assert [e.data.get("n") for e in replay[:-1]] == list(range(10, 20)) and replay[-1].is_end


class TestMemoryStreams(StreamConformance):
    @pytest.fixture
    def environment(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def make(self, environment: dict[str, str]) -> Iterator[Callable[..., StreamStore]]:
        # one process, one store: instances of the memory store do not share
        shared: dict[str, StreamStore] = {}

        def build(**extra: str) -> StreamStore:
            key = repr(sorted(extra.items()))
            if key not in shared:
                shared[key] = open_streams({**environment, **extra})
            return shared[key]

        yield build

    def test_the_memory_store_is_bounded(self) -> None:
        async def scenario() -> None:
            store = open_streams({"LIBRECACHE_STREAM_MEMORY_MAX": "10"})
            for i in range(10):
                await store.create(f"s{i}")
            await store.finish("s3")
            await store.create("s10")  # the finished one goes first
            with pytest.raises(UnknownStreamError):
                await store.status("s3")
            await store.create("s11")  # then the longest idle
            with pytest.raises(UnknownStreamError):
                await store.status("s0")
            assert len(await store.active()) == 10

        run(scenario())

    @pytest.fixture
    def sync_pair(self, environment: dict[str, str]) -> Iterator[tuple[Any, Any]]:
        with open_streams_sync(environment) as store:  # one process, one store
            yield store, store


class TestSingleRedisStreams(StreamConformance):
    @pytest.fixture
    def environment(self, redis_env: dict[str, str]) -> dict[str, str]:
        return redis_env


class TestClusterStreams(StreamConformance):
    @pytest.fixture
    def environment(self, cluster_env: dict[str, str]) -> dict[str, str]:
        return cluster_env


# -- Redis only: keys, instances, processes ---------------------------------------------


def test_stream_keys_are_hash_tagged_under_the_prefix(deployment: Any, prefix: str) -> None:
    async def scenario() -> None:
        store = open_streams(deployment.env)
        await store.create("conv:42", meta={"owner": "u"})
        await store.append("conv:42", {"n": 1})
        await store.close()

    run(scenario())
    keys = [key.decode() for key in deployment.keys(f"{prefix}::stream:*")]
    assert sorted(keys) == [f"{prefix}::stream:{{conv:42}}:events", f"{prefix}::stream:{{conv:42}}:state"]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert 0 < deployment.raw.pttl(keys[0]) <= 1_200_000
    assert all(key.decode().startswith(f"{prefix}::") for key in deployment.keys("*conv:42*"))


@pytest.mark.slow
def test_a_producer_in_another_process(deployment: Any) -> None:
    env = {**deployment.env, "STREAM": "remote-1", "EVENTS": "200"}
    producer = processes.start("produce", env)
    assert processes.read_line(producer) == {"created": True}

    async def follow() -> list[StreamEvent]:
        store = open_streams(deployment.env)
        try:
            first: list[StreamEvent] = []
            async for event in store.subscribe("remote-1"):
                first.append(event)
                if len(first) == 50:
                    break  # reconnect, as a browser would, to another instance
            other = open_streams(deployment.env)
            try:
                rest = [event async for event in other.subscribe("remote-1", after=first[-1].id)]
            finally:
                await other.close()
            return first + rest
        finally:
            await store.close()

    events = run(asyncio.wait_for(follow(), 30))
    assert producer.wait(30) == 0
    assert [e.data.get("n") for e in events[:-1]] == list(range(200))
    assert ids_increase(events) and events[-1].is_end


@pytest.mark.slow
def test_abort_from_another_process_reaches_the_producer(deployment: Any) -> None:
    env = {**deployment.env, "STREAM": "remote-2", "EVENTS": "100000", "UNTIL_ABORTED": "1"}
    producer = processes.start("produce", env)
    assert processes.read_line(producer) == {"created": True}

    async def stop() -> list[StreamEvent]:
        store = open_streams(deployment.env)
        try:
            await asyncio.sleep(0.3)
            assert await store.abort("remote-2", reason="stop button") is True
            return await asyncio.wait_for(collect(store, "remote-2"), 20)
        finally:
            await store.close()

    events = run(stop())
    report = processes.read_line(producer)
    assert producer.wait(30) == 0
    assert report["aborted"] is True and report["appended"] < 100000
    assert events[-1].data["status"] == "aborted" and len(events) == report["appended"] + 1


def test_a_registry_opens_the_stream_store_of_its_configuration(make_caches: Any, redis_env: dict[str, str]) -> None:
    from librecache.streams import MemoryStreamStore, RedisStreamStore, SyncStreamStore

    assert isinstance(make_caches({}).open_streams(), MemoryStreamStore)
    store = make_caches(redis_env).open_streams()
    assert isinstance(store, RedisStreamStore)
    run(store.close())
    off = make_caches({**redis_env, "USE_REDIS_STREAMS": "false"}).open_streams()
    assert isinstance(off, MemoryStreamStore)
    with make_caches(redis_env).open_streams(asynchronous=False) as sync:
        assert isinstance(sync, SyncStreamStore)
        sync.create("from-registry")
        assert "from-registry" in sync.active()


def test_streams_on_a_hostname_only_tls_cluster(hostname_tls_cluster: Any, ca_file: Any) -> None:
    """REDIS_USE_ALTERNATIVE_DNS_LOOKUP reaches the asyncio client of the stream store too."""
    env = {"USE_REDIS": "true", "REDIS_URI": hostname_tls_cluster.uri(1, host="localhost"), "USE_REDIS_CLUSTER": "true",
           "REDIS_CA": str(ca_file), "REDIS_USE_ALTERNATIVE_DNS_LOOKUP": "true", "REDIS_KEY_PREFIX": "altdns-streams"}

    async def scenario(env: dict[str, str] = env) -> list[StreamEvent]:
        store = open_streams(env)
        try:
            for n in range(20):
                stream = f"host-{n}"  # over many slots, so over every node
                await store.create(stream)
                await store.append(stream, {"n": n})
                await store.finish(stream)
            return [e async for e in store.subscribe("host-7")]
        finally:
            await store.close()

    events = run(scenario())
    assert events[0].data == {"n": 7} and events[-1].is_end
    with pytest.raises(Exception, match="certificate"):  # without the flag, the certificate check fails
        run(scenario({**env, "REDIS_USE_ALTERNATIVE_DNS_LOOKUP": "false", "REDIS_KEY_PREFIX": "no-altdns"}))
