"""Forked workers are fully alive: real forks (``os.fork``, :mod:`multiprocessing`,
gunicorn ``--preload``, Celery prefork) against real servers. Every child is
bounded by a deadline: a child that does not answer in time counts as hung."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from tests.conformance import Counter
from tests.conftest import Deployment
from tests.processes import ROOT, child_environment, stop_process
from tests.servers import LOOPBACK, RedisServer, free_port
from tests.test_resilience import FAST_RETRY, RECOVERY, wait_until

CHILD_DEADLINE = 15.0  # seconds a child may take before it counts as hung
FIGURES: dict[str, float] = {}  # printed at the end of the module


class Hung(AssertionError):
    """A child did not answer within its deadline."""


class Child:
    """A child made by ``os.fork`` that runs ``serve(conn)``; the parent talks
    to it over a pipe, each answer bounded by a deadline."""

    def __init__(self, serve: Callable[[Connection], None]) -> None:
        parent_end, child_end = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                parent_end.close()
                serve(child_end)
            except BaseException:
                code = 1
                try:
                    child_end.send(("error", traceback.format_exc()))
                except BaseException:
                    pass
            finally:
                os._exit(code)
        child_end.close()
        self.pid = pid
        self.conn = parent_end

    def answer(self, timeout: float = CHILD_DEADLINE) -> Any:
        if not self.conn.poll(timeout):
            raise Hung(f"child {self.pid} gave no answer within {timeout} s")
        reply = self.conn.recv()
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise AssertionError(f"child {self.pid} failed:\n{reply[1]}")
        return reply

    def ask(self, *request: Any, timeout: float = CHILD_DEADLINE) -> Any:
        self.conn.send(request)
        return self.answer(timeout)

    def end(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self.conn.close()


def serve_requests(handlers: dict[str, Callable[..., Any]]) -> Callable[[Connection], None]:
    """A child loop: answer ``(name, *args)`` requests until ``("stop",)``."""

    def serve(conn: Connection) -> None:
        while True:
            name, *args = conn.recv()
            if name == "stop":
                conn.send("stopped")
                return
            conn.send(handlers[name](*args))

    return serve


class Busy:
    """Threads keeping every lock of a registry busy: creators holding
    creation mutexes, writes, invalidations (the listener reloading marks),
    near-cache traffic."""

    def __init__(self, threads: int = 6) -> None:
        self._stop = threading.Event()
        self.errors: list[BaseException] = []

        def work(n: int) -> None:
            rng = random.Random(n)
            while not self._stop.is_set():
                try:
                    tools, roles = librecache.get_region("TOOLS"), librecache.get_region("ROLES")
                    key = f"k{rng.randrange(4)}"
                    tools.get_or_create(key, lambda: time.sleep(0.002) or "parent")
                    if rng.random() < 0.3:
                        tools.delete(key)
                    roles.set(key, n)
                    roles.get(key)
                    if rng.random() < 0.05:
                        roles.invalidate()
                    librecache.get_region("FLOWS").set(key, n)  # a memory namespace
                except BaseException as exc:
                    self.errors.append(exc)

        self._threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def first_calls() -> dict[str, Any]:
    """What a child does first: a memoised call, a creation another thread
    of the parent may have been in the middle of, a near-cached read, a
    memory namespace."""
    started = time.monotonic()
    tools = librecache.get_region("TOOLS")
    value = tools.get_or_create("k0", lambda: "child")
    roles = librecache.get_region("ROLES").get_or_create(f"child-{os.getpid()}", os.getpid)
    flows = librecache.get_region("FLOWS")
    flows.set("child", 1)
    return {"value": value, "roles": roles, "flows": flows.get("child"), "seconds": time.monotonic() - started}


@pytest.mark.slow
def test_thirty_forks_while_threads_are_busy_never_hang(fresh_default: None, deployment: Deployment) -> None:
    env = {**deployment.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES", "REDIS_PING_INTERVAL": "0.05",
           "FORCED_IN_MEMORY_CACHE_NAMESPACES": "FLOWS", "LIBRECACHE_LOCK_TIMEOUT": "5"}
    hung, timings, errors = 0, [], []
    busy = None
    try:
        for n in range(30):
            if n % 3 == 0:  # right after configure(): its threads are starting, busy threads too
                if busy is not None:
                    busy.stop()
                    errors += busy.errors
                librecache.configure(env)
                busy = Busy()
            child = Child(lambda conn: conn.send(first_calls()))
            try:
                report = child.answer()
                assert report["value"] in ("parent", "child") and report["roles"] == child.pid
                assert report["flows"] == 1
                timings.append(report["seconds"])
            except Hung:
                hung += 1
            finally:
                child.end()
    finally:
        if busy is not None:
            busy.stop()
            errors += busy.errors
    topology = "cluster" if deployment.cluster else "single"
    FIGURES[f"os.fork under load ({topology}): slowest first call of 30 children (s)"] = max(timings, default=0.0)
    assert hung == 0
    assert errors == []


def invalidation_round(conn: Connection) -> None:
    """A child of the invalidation tests: a memoised ``version()`` that
    reads a counter in Redis; reports what it got."""
    caches = librecache.get_caches()
    client = caches.redis
    assert client is not None
    computed = Counter(lambda: int(client.get("version") or 0))

    @caches.region("ROLES").cache_on_arguments()
    def version() -> int:
        return int(computed())

    def subscribed() -> bool:
        version()
        bus = caches.invalidations
        return bus is not None and bus.wait_subscribed(5)

    serve_requests({
        "subscribed": subscribed,
        "version": lambda: (version(), computed.calls),
        "bump_and_invalidate": lambda: (client.incr("version"), caches.region("ROLES").invalidate()),
    })(conn)


@pytest.mark.slow
def test_multiprocessing_fork_workers_see_invalidations(fresh_default: None, redis_env: dict[str, str]) -> None:
    caches = librecache.configure(redis_env)
    client = caches.redis
    assert client is not None
    client.set("version", 1)

    @caches.region("ROLES").cache_on_arguments()
    def version() -> int:
        return int(client.get("version") or 0)

    assert version() == 1  # cached by the parent before the fork
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for _ in range(4):
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=invalidation_round, args=(child_end,), daemon=True)
        worker.start()
        pipes.append(parent_end)
        workers.append(worker)

    def ask_all(*request: Any) -> list[Any]:
        for pipe in pipes:
            pipe.send(request)
        answers = []
        for pipe in pipes:
            if not pipe.poll(CHILD_DEADLINE):
                raise Hung("a multiprocessing worker hung")
            answers.append(pipe.recv())
        return answers

    try:
        assert ask_all("subscribed") == [True] * 4
        assert ask_all("version") == [(1, 0)] * 4  # served from Redis: nobody recomputed
        client.set("version", 2)
        caches.region("ROLES").invalidate()  # by the parent
        wait_until(lambda: all(answer[0] == 2 for answer in ask_all("version")), 5)
        pipes[0].send(("bump_and_invalidate",))  # by another process: version 3
        assert pipes[0].poll(CHILD_DEADLINE) and pipes[0].recv()[0] == 3
        wait_until(lambda: all(answer[0] == 3 for answer in ask_all("version")), 5)
        assert version() == 3  # and the parent too
        ask_all("stop")
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()


def test_near_cache_in_a_child_drops_what_another_process_rewrote(
    fresh_default: None, redis_env: dict[str, str]
) -> None:
    env = {**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
    caches = librecache.configure(env)
    region = caches.region("ROLES")
    region.set("admin", ["read"])
    assert region.get("admin") == ["read"]  # near-cached in the parent

    def near_ready() -> bool:
        roles = librecache.get_region("ROLES")
        roles.get("admin")
        bus = librecache.get_caches().invalidations
        assert bus is not None and bus.wait_subscribed(5)
        near = bus.near_caches["ROLES"]
        wait_until(lambda: near.enabled, 5)
        roles.get("admin")
        return len(near) == 1  # held in the child's own near cache

    child = Child(serve_requests({"ready": near_ready, "get": lambda: librecache.get_region("ROLES").get("admin")}))
    try:
        assert child.ask("ready") is True
        assert child.ask("get") == ["read"]
        with librecache.Caches(env) as other:  # another process's registry
            other.region("ROLES").set("admin", ["read", "write"])
            written = time.monotonic()
            wait_until(lambda: child.ask("get") == ["read", "write"], 5)
            FIGURES["near cache in a child: rewritten value seen after (s)"] = time.monotonic() - written
        child.ask("stop")
    finally:
        child.end()


def test_preloaded_children_drop_their_near_copy_when_the_parent_rewrites(
    fresh_default: None, redis_env: dict[str, str]
) -> None:
    """gunicorn ``--preload``: the parent configures, reads and writes, then
    forks; each child holds the key in its own near cache, then the parent
    writes. Every child must drop its copy (the parent's announcement is
    another process's, whatever the child inherited)."""
    env = {**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES", "REDIS_PING_INTERVAL": "1"}
    for name, value in env.items():
        os.environ[name] = value  # the default registry, read from the environment
    try:
        roles = librecache.get_region("ROLES")
        roles.set("near-key", "v1")
        assert roles.get("near-key") == "v1"

        def held() -> bool:
            region = librecache.get_region("ROLES")
            assert region.get("near-key") == "v1"
            bus = librecache.get_caches().invalidations
            assert bus is not None
            near = bus.near_caches["ROLES"]
            wait_until(lambda: near.enabled, 5)
            wait_until(lambda: region.get("near-key") == "v1" and len(near) == 1, 5)
            return True

        children = [Child(serve_requests({"held": held, "get": lambda: librecache.get_region("ROLES").get("near-key")}))
                    for _ in range(2)]
        try:
            for child in children:
                assert child.ask("held") is True
            roles.set("near-key", "v2")
            written = time.monotonic()
            for child in children:
                wait_until(lambda child=child: child.ask("get") == "v2", 2)
            FIGURES["preloaded child: the parent's rewrite seen after (s)"] = time.monotonic() - written
            for child in children:
                child.ask("stop")
        finally:
            for child in children:
                child.end()
    finally:
        for name in env:
            os.environ.pop(name, None)


def test_a_connection_imports_nothing_a_fork_could_catch(redis_server: RedisServer) -> None:
    """A fork copies Python's module locks as they are: a module that a
    background thread (the listener, a reconnect) is importing at that
    instant stays locked in the child, whose first import of it hangs for
    ever (seen: gunicorn --preload workers on redis-py 8, whose connections
    read the package's version with importlib.metadata, importing email and
    friends on first use). After ``import librecache``, making connections
    and subscribing import nothing more."""
    code = (
        "import sys, librecache, redis\n"
        "before = set(sys.modules)\n"
        f"client = redis.Redis(port={redis_server.port})\n"
        "client.ping()\n"
        "pubsub = client.pubsub()\n"
        "pubsub.subscribe('channel')\n"
        "pubsub.get_message(timeout=0.1)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_environment({}), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_keepalive_runs_in_a_child(fresh_default: None, redis_env: dict[str, str]) -> None:
    caches = librecache.configure({**redis_env, "REDIS_PING_INTERVAL": "0.2"})
    caches.region("TOOLS").set("k", 1)

    def pings() -> int:
        health = librecache.get_caches().health()
        assert health is not None
        return int(health["keepalive_pings"])

    def keepalive_ticks() -> int:
        assert librecache.get_region("TOOLS").get("k") == 1  # first use: starts the child's threads
        before = pings()
        wait_until(lambda: pings() >= before + 2, 5)
        names = [thread.name for thread in threading.enumerate()]
        assert any(name.startswith("librecache-maintenance") for name in names)
        return pings() - before

    child = Child(serve_requests({"keepalive": keepalive_ticks}))
    try:
        assert child.ask("keepalive") >= 2
        child.ask("stop")
    finally:
        child.end()


def outage_child(conn: Connection) -> None:
    """Answers: a memoised call (with how many times it was computed), and
    waits until caching works again, reporting when."""
    caches = librecache.get_caches()
    computed = Counter(lambda key: f"value-of-{key}")

    @caches.region("TOOLS").cache_on_arguments()
    def load(key: str) -> str:
        return str(computed(key))

    def resumed() -> float:
        # caching is back when a call is answered from Redis: computed no more
        def cached() -> bool:
            load("probe")
            before = computed.calls
            return load("probe") == "value-of-probe" and computed.calls == before

        wait_until(cached, 20)
        tools = caches.region("TOOLS")  # and a plain write is read back
        wait_until(lambda: tools.set("set-after", 1) or tools.get("set-after") == 1, 5)
        return time.time()

    serve_requests({"call": lambda key: (load(key), computed.calls), "resumed": resumed})(conn)


#: The settings of the reported case: the default socket time-out, a 300 ms back-off cap.
ISSUE_RETRY = {"REDIS_CONNECT_TIMEOUT": "500", "REDIS_RETRY_MAX_DELAY": "300", "REDIS_RETRY_MAX_ATTEMPTS": "0"}


@pytest.mark.slow
@pytest.mark.parametrize("retry", [FAST_RETRY, ISSUE_RETRY], ids=["fast", "reported"])
def test_children_resume_caching_after_an_outage(
    fresh_default: None, own_server: RedisServer, retry: dict[str, str]
) -> None:
    env = {"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "forked", **retry}
    caches = librecache.configure(env)
    caches.region("TOOLS").set("warm", 1)
    before = Child(outage_child)  # forked while Redis is up
    during = None
    try:
        assert before.ask("call", "a")[0] == "value-of-a"
        own_server.stop()
        assert caches.region("TOOLS").get("warm") is NO_VALUE  # the parent notices the outage
        wait_until(lambda: caches.health()["up"] is False, 5)  # type: ignore[index]
        during = Child(outage_child)  # forked during the outage, breaker open
        for child in (before, during):
            assert child.ask("call", "b")[0] == "value-of-b"  # falls through, no error
        restarted = time.time()
        own_server.restart()
        for name, child in (("forked before", before), ("forked during", during)):
            resumed_at = child.ask("resumed", timeout=30)
            FIGURES[f"outage: child {name} caches again after the restart (s)"] = resumed_at - restarted
    finally:
        for child in (before, during):
            if child is not None:
                child.end()


# -- gunicorn --preload --------------------------------------------------------------------------------


def wait_for_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers; else fail with the end of the server's
    ``log`` (its stderr), where a server still running has first written
    every thread's stack, its children's too (PYTHONFAULTHANDLER: SIGABRT
    for the server, SIGSEGV for its children, whose SIGABRT gunicorn's
    workers handle themselves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    try:
        subprocess.run(["pkill", "-SEGV", "-P", str(process.pid)], check=False)
    except OSError:  # no pkill: the server's own stacks only
        pass
    time.sleep(1)  # the children's dumps first
    process.send_signal(signal.SIGABRT)
    process.wait(10)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text(errors='replace')[-12000:]}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def by_worker(url: str, expect: Callable[[dict[str, Any]], bool], workers: int, timeout: float) -> dict[int, Any]:
    """Ask ``url`` until ``workers`` different worker pids answered with
    ``expect(answer)`` true; their answers by pid. Each round sends one
    request per worker at once, each held 0.3 s by the app, so that every
    sync worker must take one (an idle worker that hung would show)."""
    seen: dict[int, Any] = {}
    last: dict[int, Any] = {}
    failures: list[str] = []

    def done() -> bool:
        answers: list[Any] = []

        def ask() -> None:
            try:
                answers.append(get_json(f"{url}?hold=0.3"))
            except OSError as exc:  # a worker that does not answer: shown if the wait fails
                failures.append(repr(exc))

        threads = [threading.Thread(target=ask) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for answer in answers:
            last[answer["pid"]] = answer
            if expect(answer):
                seen[answer["pid"]] = answer
        return len(seen) >= workers

    try:
        wait_until(done, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer of each worker: {last}; failed requests: {failures[-5:]}") \
            from None
    return seen


@pytest.mark.slow
def test_gunicorn_preload_workers(own_server: RedisServer, tmp_path: Path) -> None:
    env = child_environment({"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "gunicorn",
                             "PYTHONFAULTHANDLER": "1", **FAST_RETRY})
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as stderr:
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-k", "sync", "-b", f"{LOOPBACK}:{port}",
             "--graceful-timeout", "2", "tests.forkapp:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    base = f"http://{LOOPBACK}:{port}"
    admin = redis.Redis(port=own_server.port)
    try:
        wait_for_http(f"{base}/version", 30, gunicorn, log)
        admin.set("gunicorn::version", 1)
        get_json(f"{base}/invalidate")
        first = by_worker(f"{base}/version", lambda a: a["version"] == 1, 2, 60)
        assert len(first) == 2
        # one worker invalidates: every worker recomputes
        admin.set("gunicorn::version", 2)
        get_json(f"{base}/invalidate")
        assert len(by_worker(f"{base}/version", lambda a: a["version"] == 2, 2, 20)) == 2
        # Redis restarts: every worker caches again by itself
        own_server.stop()
        for _ in range(4):
            assert get_json(f"{base}/version")["up"] in (True, False)  # answered: no error reaches the app
        restarted = time.monotonic()
        own_server.restart()
        admin = redis.Redis(port=own_server.port)
        admin.set("gunicorn::version", 3)

        def caching(answer: dict[str, Any]) -> bool:
            return bool(answer["up"]) and answer["version"] == 3 and answer["cached"]

        assert len(by_worker(f"{base}/version", caching, 2, 30)) == 2
        FIGURES["gunicorn --preload: both workers cache again after a Redis restart (s)"] = time.monotonic() - restarted
    finally:
        admin.close()
        stop_process(gunicorn, 15)


# -- Celery prefork ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_celery_prefork_children(own_server: RedisServer, tmp_path: Path) -> None:
    from celery import Celery
    from kombu import Connection
    from kombu.exceptions import VersionMismatch

    broker, backend = f"redis://{LOOPBACK}:{own_server.port}/1", f"redis://{LOOPBACK}:{own_server.port}/2"
    try:
        with Connection(broker) as probe:
            probe.default_channel  # noqa: B018  (loads kombu's redis transport)
    except VersionMismatch as exc:  # the test's broker, not librecache, refuses this redis-py
        pytest.skip(f"kombu's redis transport (this test's broker) refuses the installed redis-py: {exc}")
    env = child_environment({"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "celery",
                             "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend})
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celeryapp", "worker", "-P", "prefork", "-c", "2",
         "-O", "fair", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING", "-n", f"forks-{tmp_path.name}@localhost"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    app = Celery("librecache-forks-test", broker=broker, backend=backend)
    admin = redis.Redis(port=own_server.port)

    def children_answering(expected: int, timeout: float) -> set[int]:
        """The pids of the prefork children that answered ``expected``."""
        seen: set[int] = set()

        def both() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"celery exited: {worker.stderr.read().decode()[-3000:] if worker.stderr else ''}")
            for result in [app.send_task("tests.celeryapp.version") for _ in range(6)]:
                pid, version = result.get(timeout=CHILD_DEADLINE)
                if version == expected:
                    seen.add(pid)
            return len(seen) >= 2

        wait_until(both, timeout)
        return seen

    try:
        admin.set("celery::version", 1)
        children = children_answering(1, 60)
        admin.set("celery::version", 2)
        with librecache.Caches({"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "celery"}) as other:
            other.region("ROLES").invalidate()  # from another process
        assert children_answering(2, 30) == children  # both children recomputed
    finally:
        admin.close()
        app.close()
        stop_process(worker, 20)


def test_fork_figures_are_reported() -> None:
    """Runs last in this module: prints what the fork tests measured."""
    for name, seconds in {**FIGURES, **{k: v for k, v in RECOVERY.items() if "fork" in k}}.items():
        print(f"FORKS {name}: {seconds * 1000:.0f} ms")


def test_lock_tokens_differ_between_a_parent_and_its_forked_children() -> None:
    """Creation-lock tokens are a random per-process prefix and a counter:
    a forked child draws a new prefix, so it never repeats its parent's
    tokens (or a sibling's)."""
    from librecache.backends.redis import lock_token

    parent = {lock_token() for _ in range(100)}
    assert len(parent) == 100
    seen: list[set[str]] = []
    for _ in range(3):
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os.write(write, " ".join(lock_token() for _ in range(100)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            seen.append(set(pipe.read().split()))
        os.waitpid(child, 0)
    for tokens in seen:
        assert len(tokens) == 100 and not tokens & parent
    assert not seen[0] & seen[1] and not seen[1] & seen[2]
