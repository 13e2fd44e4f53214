"""Background work never hurts callers: the keep-alive never takes the callers'
connections, the reconnect probe never closes a connection another thread
is using, and ``close()`` returns within the connect time-out even when
Redis hangs. Real servers, real threads."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import librecache
from librecache import _compat
from tests.servers import RedisServer, SilentPeer, free_port
from tests.test_resilience import FAST_RETRY, wait_until

Make = Callable[..., librecache.Caches]
FIGURES: dict[str, float] = {}  # printed at the end of the module


def health(caches: librecache.Caches) -> dict[str, Any]:
    report = caches.health()
    assert report is not None
    return dict(report)


# -- keep-alive ------------------------------------------------------------------------------


@pytest.mark.slow
def test_keepalive_never_starves_callers_of_connections(make_caches: Make, own_server: RedisServer) -> None:
    """32 threads of load, REDIS_PING_INTERVAL=1, three rounds with idle
    pauses between them (when connections are idle long enough to be
    pinged): the connections Redis sees stay about one per thread."""
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_PING_INTERVAL="1",
                         LIBRECACHE_SOCKET_TIMEOUT="1")
    region = caches.region("TOOLS")
    admin = redis.Redis(port=own_server.port)
    errors: list[BaseException] = []
    peak = 0
    for _ in range(3):
        stop = threading.Event()

        def work(n: int, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    region.get_or_create(f"k{n % 8}", lambda: "value")
                    region.set(f"w{n}", n)
                except BaseException as exc:  # reported below
                    errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            peak = max(peak, len(admin.client_list(_type="normal")) - 1)  # not the admin's own
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
        pings = health(caches)["keepalive_pings"]
        wait_until(lambda pings=pings: health(caches)["keepalive_pings"] > pings, 5)  # idle: pinged
    report = health(caches)
    FIGURES["keep-alive under 32 threads: peak connections seen by Redis"] = peak
    admin.close()
    assert errors == []
    assert report["errors"] == 0 and report["up"] is True  # the breaker never opened
    assert report["keepalive_pings"] > 0 and report["keepalive_drops"] == 0
    # 32 callers, the invalidation listener, the keep-alive's one borrowed
    # connection, and slack for a connection being replaced
    assert peak <= 32 + 4


# -- the reconnect probe ---------------------------------------------------------------------


def test_the_reconnect_probe_never_closes_a_connection_in_use(make_caches: Make, redis_env: dict[str, str],
                                                              redis_server: RedisServer) -> None:
    caches = make_caches({**redis_env, **FAST_RETRY})
    connection = caches._connection
    assert connection is not None and isinstance(connection.client, redis.Redis)
    pool = connection.client.connection_pool
    key = f"{redis_env['REDIS_KEY_PREFIX']}::queue"
    held = _compat.pooled_connection(pool)  # another thread's connection, waiting for a reply
    replies: list[Any] = []

    def blocked_reader() -> None:
        try:
            held.send_command("BLPOP", key, 5)
            replies.append(held.read_response())
        except BaseException as exc:  # the bug this test is about
            replies.append(exc)

    reader = threading.Thread(target=blocked_reader)
    reader.start()
    time.sleep(0.1)
    connection.breaker.failure(redis.ConnectionError("simulated"), "test")  # the maintenance thread probes
    wait_until(lambda: health(caches)["recoveries"] == 1 and health(caches)["up"] is True, 5)
    admin = redis.Redis(port=redis_server.port)
    admin.rpush(key, "delivered")
    reader.join(10)
    pool.release(held)
    admin.close()
    assert replies == [[key.encode(), b"delivered"]]


# -- close() against a hung Redis --------------------------------------------------------------


@pytest.mark.parametrize("hang", ["SIGSTOP", "CLIENT PAUSE"])
def test_close_returns_within_the_connect_timeout_when_redis_hangs(
    make_caches: Make, own_server: RedisServer, hang: str
) -> None:
    caches = librecache.Caches({
        "USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_CONNECT_TIMEOUT": "500",
        "LIBRECACHE_SOCKET_TIMEOUT": "5", "REDIS_PING_INTERVAL": "0.2", "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES",
    })
    region = caches.region("ROLES")
    region.set("k", 1)
    assert caches.invalidations is not None and caches.invalidations.wait_subscribed(5)
    admin = redis.Redis(port=own_server.port)
    assert own_server.process is not None
    if hang == "SIGSTOP":
        os.kill(own_server.process.pid, signal.SIGSTOP)
    else:
        admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    try:
        def caller() -> None:  # stuck reading a reply when the registry closes under it
            try:
                region.get("other")
            except Exception:  # a call racing close() (closed-socket errors: issue 10, part B)
                pass

        threading.Thread(target=caller, daemon=True).start()
        time.sleep(0.6)  # the keep-alive and the listener's ping wait for replies too
        started = time.monotonic()
        caches.close()
        took = time.monotonic() - started
    finally:
        if hang == "SIGSTOP":
            os.kill(own_server.process.pid, signal.SIGCONT)
    FIGURES[f"close() with Redis hung by {hang} (REDIS_CONNECT_TIMEOUT 0.5 s)"] = took
    admin.close()
    assert took <= 0.5 + 0.25
    connection, bus = caches._connection, caches.invalidations
    assert connection is not None and connection._thread is not None and bus._thread is not None
    wait_until(lambda: not connection._thread.is_alive() and not bus._thread.is_alive(), 10)  # they end


def test_close_returns_within_the_connect_timeout_against_a_silent_peer() -> None:
    with SilentPeer() as peer:
        caches = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": f"redis://127.0.0.1:{peer.port}",
                                    "REDIS_CONNECT_TIMEOUT": "500", "LIBRECACHE_SOCKET_TIMEOUT": "5",
                                    "REDIS_RETRY_MAX_DELAY": "100"})
        assert caches.region("ROLES").get_or_create("k", lambda: "computed") == "computed"
        accepted = len(peer._held)
        wait_until(lambda: len(peer._held) > accepted, 10)  # the reconnect probe now waits for its PONG (5 s)
        time.sleep(0.1)
        started = time.monotonic()
        caches.close()
        took = time.monotonic() - started
    FIGURES["close() against a server that never answers"] = took
    assert took <= 0.5 + 0.25


def test_close_returns_within_a_second_while_probes_wait_on_a_silent_peer() -> None:
    """Four registries with the default time-outs (10 s to connect, 5 s for a
    reply): Redis refuses at first (the breakers open), then a peer that
    accepts and never answers takes its port, so every reconnect probe and
    listener waits in the handshake. Each close() returns within a second."""
    port = free_port()
    env = {"USE_REDIS": "true", "REDIS_URI": f"redis://127.0.0.1:{port}", "REDIS_RETRY_MAX_DELAY": "200"}
    registries = [librecache.Caches({**env, "REDIS_KEY_PREFIX": f"silent{n}"}) for n in range(4)]
    try:
        for caches in registries:
            assert caches.region("ROLES").get_or_create("k", lambda: "computed") == "computed"  # refused: falls through
            wait_until(lambda caches=caches: health(caches)["up"] is False, 5)
        with SilentPeer(port) as peer:
            wait_until(lambda: len(peer._held) >= 4, 10)  # the probes are connected and wait for a reply
            time.sleep(1)
            took = []
            for caches in registries:
                started = time.monotonic()
                caches.close()
                took.append(time.monotonic() - started)
    finally:
        for caches in registries:
            caches.close()
    FIGURES["close() while probes wait on a silent peer (worst of 4)"] = max(took)
    assert max(took) <= 1.0, took


def test_background_figures_are_reported() -> None:
    """Runs last in this module: prints what the tests measured."""
    for name, value in FIGURES.items():
        print(f"BACKGROUND {name}: {value:.3f}")
