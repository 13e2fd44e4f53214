"""The resumable chat example's server side, over plain HTTP (httpx): several
instances on the session's Redis, nginx in front (examples/resumable_chat)."""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.resumable_chat.model import answer_text, answer_tokens
from examples.resumable_chat.nginx import render
from examples.resumable_chat.run import ChatDeployment
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

#: A fast fake model for these tests: 300 tokens, one each 20 ms (6 s).
ENV = {"CHAT_TOKEN_DELAY": "0.02", "CHAT_PRODUCER_TIMEOUT": "1.5"}


def deployed(redis_server: RedisServer, instances: int, env: dict[str, str] = ENV) -> ChatDeployment:
    """A deployment on the session's Redis under a prefix of its own, not
    started yet (``with deployed(...) as chat:`` starts and stops it)."""
    return ChatDeployment(redis_server.url, instances=instances, prefix=f"chat{uuid.uuid4().hex[:8]}", env=env)


@pytest.fixture(scope="module")
def chat(redis_server: RedisServer) -> Iterator[ChatDeployment]:
    """Three instances and nginx, shared by the tests that kill nothing."""
    with deployed(redis_server, 3) as deployment:
        yield deployment


@pytest.fixture
def own_chat(redis_server: RedisServer) -> Iterator[ChatDeployment]:
    """Two instances and nginx for a test that stops or kills one; answers of
    3,000 tokens (60 s), so that no answer ends before the stop, however
    slowly a loaded machine delivers the first tokens or stops a process."""
    with deployed(redis_server, 2, {**ENV, "CHAT_TOKENS": "3000"}) as deployment:
        yield deployment


def ask(base: str, question: str) -> dict[str, Any]:
    reply = httpx.post(f"{base}/api/ask", json={"question": question}, timeout=10)
    reply.raise_for_status()
    return reply.json()  # type: ignore[no-any-return]


class Sse:
    """Events of one SSE response: ``(id, data)`` pairs and the instance's hello."""

    def __init__(self) -> None:
        self.hello: dict[str, Any] | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []

    @property
    def tokens(self) -> list[dict[str, Any]]:
        return [data for _, data in self.events if data.get("type") == "token"]

    @property
    def end(self) -> dict[str, Any] | None:
        last = self.events[-1][1] if self.events else {}
        return last if last.get("librecache") == "end" else None


def read_sse(
    url: str, *, headers: dict[str, str] | None = None, stop_after_tokens: int | None = None, timeout: float = 30,
) -> Sse:
    """Read an SSE response to its end (or until ``stop_after_tokens``
    tokens, then drop the connection as a closing tab would)."""
    seen = Sse()
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, headers=headers, timeout=10) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in reply.iter_lines():
            assert time.monotonic() < deadline, f"{url} did not end within {timeout} s"
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if fields.get("event") == "hello":
                seen.hello = json.loads(fields["data"])
            elif "data" in fields:
                seen.events.append((fields["id"], json.loads(fields["data"])))
                if seen.end is not None:
                    break
                if stop_after_tokens is not None and len(seen.tokens) >= stop_after_tokens:
                    break
            fields = {}
    return seen


def event_ids_increase(ids: list[str]) -> bool:
    keys = [tuple(int(part) for part in event_id.split("-")) for event_id in ids]
    return all(a < b for a, b in itertools.pairwise(keys))


def test_the_whole_answer_through_nginx_arrives_while_it_is_written(chat: ChatDeployment) -> None:
    started = ask(chat.url, "What is a resumable stream?")
    first = read_sse(f"{chat.url}/api/stream/{started['id']}", stop_after_tokens=1)
    # the first token came through nginx while the answer was still being written: no buffering
    status = httpx.get(f"{chat.url}/api/status/{started['id']}").json()
    assert status["status"] == "running", status
    assert first.events[0][1] == {"type": "start", "question": "What is a resumable stream?",
                                  "producer": started["producer"]}

    whole = read_sse(f"{chat.url}/api/stream/{started['id']}")
    assert "".join(t["t"] for t in whole.tokens) == answer_text("What is a resumable stream?")
    assert [t["i"] for t in whole.tokens] == list(range(len(answer_tokens("x"))))
    assert whole.end == {"librecache": "end", "status": "done", "final": {"tokens": 300}}
    assert event_ids_increase([event_id for event_id, _ in whole.events])


def test_resume_on_another_instance_with_last_event_id_or_after(chat: ChatDeployment) -> None:
    one, two, three = (chat.instance(f"app-{n}").url for n in (1, 2, 3))
    started = ask(one, "resume me elsewhere")
    assert started["producer"] == "app-1"
    part1 = read_sse(f"{two}/api/stream/{started['id']}", stop_after_tokens=40)
    assert part1.hello == {"instance": "app-2"}
    # a reconnecting EventSource sends Last-Event-ID; it wins over a stale ?after=
    part2 = read_sse(
        f"{three}/api/stream/{started['id']}?after={part1.events[1][0]}",
        headers={"Last-Event-ID": part1.events[-1][0]}, stop_after_tokens=40,
    )
    assert part2.hello == {"instance": "app-3"}
    part3 = read_sse(f"{one}/api/stream/{started['id']}?after={part2.events[-1][0]}")
    tokens = part1.tokens + part2.tokens + part3.tokens
    assert [t["i"] for t in tokens] == list(range(300))  # no gap, no repeat
    assert "".join(t["t"] for t in tokens) == answer_text("resume me elsewhere")
    assert part3.end is not None and part3.end["status"] == "done"


def test_abort_from_another_instance_stops_the_producer(chat: ChatDeployment) -> None:
    one, two, three = (chat.instance(f"app-{n}").url for n in (1, 2, 3))
    started = ask(one, "stop me")
    before = read_sse(f"{three}/api/stream/{started['id']}", stop_after_tokens=10)
    reply = httpx.post(f"{two}/api/abort/{started['id']}")
    assert reply.json() == {"stopping": True, "instance": "app-2"}
    rest = read_sse(f"{three}/api/stream/{started['id']}?after={before.events[-1][0]}", timeout=5)
    assert rest.end is not None and rest.end["status"] == "aborted"
    stopped_at = rest.end["final"]["tokens"]
    assert 10 <= stopped_at < 300
    assert [t["i"] for t in before.tokens + rest.tokens] == list(range(stopped_at))
    status = httpx.get(f"{chat.url}/api/status/{started['id']}").json()
    assert status["status"] == "aborted" and status["abort_requested"] is True
    # a second stop changes nothing
    assert httpx.post(f"{chat.url}/api/abort/{started['id']}").json()["stopping"] is False


def test_a_killed_producer_s_stream_is_marked_errored_within_the_bound(own_chat: ChatDeployment) -> None:
    producer, watcher = own_chat.instance("app-1"), own_chat.instance("app-2")
    started = ask(producer.url, "who will finish this?")
    before = read_sse(f"{watcher.url}/api/stream/{started['id']}", stop_after_tokens=20)
    producer.kill()
    killed = time.monotonic()
    rest = read_sse(f"{watcher.url}/api/stream/{started['id']}?after={before.events[-1][0]}", timeout=15)
    took = time.monotonic() - killed
    assert rest.end == {"librecache": "end", "status": "error",
                        "final": {"reason": "producer-lost", "producer": "app-1", "silent": 1.5}}
    # the bound: 1.5 s of silence, noticed within a watch interval (0.5 s); generous margin
    assert took < 1.5 + 0.5 + 3
    tokens = before.tokens + rest.tokens
    assert [t["i"] for t in tokens] == list(range(len(tokens)))  # what was written stays, in order
    # a subscriber arriving later (through nginx, on the surviving instance) sees the same end
    late = read_sse(f"{own_chat.url}/api/stream/{started['id']}")
    assert late.end == rest.end and len(late.tokens) == len(tokens)


def test_a_cleanly_stopped_producer_ends_its_streams_at_once(own_chat: ChatDeployment) -> None:
    producer, watcher = own_chat.instance("app-1"), own_chat.instance("app-2")
    started = ask(producer.url, "shutting down")
    read_sse(f"{watcher.url}/api/stream/{started['id']}", stop_after_tokens=5)
    producer.stop()  # SIGTERM: uvicorn's shutdown cancels the producer task
    status = httpx.get(f"{watcher.url}/api/status/{started['id']}").json()
    assert producer.process is not None
    assert status["status"] == "error", (  # what the stopped instance did, for a failure seen only under load
        f"{status}; exit code {producer.process.returncode}; its log:\n{producer.log.read_text()[-4000:]}")
    assert status["final"] == {"reason": "producer-stopped", "producer": "app-1"}


def test_bad_requests_get_clear_errors(chat: ChatDeployment) -> None:
    base = chat.url
    assert httpx.post(f"{base}/api/ask", content=b"not json").status_code == 400
    assert httpx.post(f"{base}/api/ask", json={"question": "  "}).status_code == 400
    unknown = uuid.uuid4().hex
    for reply in (httpx.get(f"{base}/api/stream/{unknown}"), httpx.post(f"{base}/api/abort/{unknown}"),
                  httpx.get(f"{base}/api/status/{unknown}")):
        assert reply.status_code == 404 and unknown in reply.json()["error"]
    bad = httpx.get(f"{base}/api/stream/not-an-id")
    assert bad.status_code == 400 and "not-an-id" in bad.json()["error"]
    started = ask(base, "bad resume")
    bad_after = httpx.get(f"{base}/api/stream/{started['id']}", headers={"Last-Event-ID": "yesterday"})
    assert bad_after.status_code == 400 and "yesterday" in bad_after.json()["error"]
    httpx.post(f"{base}/api/abort/{started['id']}")


def test_nginx_config_streams_unbuffered_over_keepalive() -> None:
    text = render(Path("/srv/chat"), 8080, [9001, 9002])
    assert "server 127.0.0.1:9001" in text and "server 127.0.0.1:9002" in text
    assert "proxy_buffering off;" in text and "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text and "keepalive 16;" in text
    assert "listen 127.0.0.1:8080;" in text and "pid /srv/chat/nginx.pid;" in text
    with pytest.raises(ValueError, match="at least one upstream"):
        render(Path("/srv/chat"), 8080, [])


def test_nginx_runs_unprivileged_from_its_own_folder(tmp_path: Path) -> None:
    """The generated configuration needs no privilege: nginx started as
    ``nobody`` (when the suite runs as root) or as the current user serves
    the page through it."""
    import os
    import shutil
    import subprocess
    import tempfile

    from examples.resumable_chat.nginx import nginx_binary, write_config
    from tests.servers import free_port

    as_nobody: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("runuser is needed to run nginx as nobody")
        as_nobody = ["runuser", "-u", "nobody", "--"]
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(upstream_port := free_port())],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (tmp_path / "hello.txt").write_text("through nginx\n")
    own = Path(tempfile.mkdtemp(prefix="librecache-nginx-"))  # pytest's tmp_path is root's only
    folder = own / "nginx"
    conf = write_config(folder, port := free_port(), [upstream_port])
    if as_nobody:
        subprocess.run(["chown", "-R", "nobody", str(own)], check=True)
    nginx = subprocess.Popen(
        [*as_nobody, nginx_binary(), "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log"),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else ""
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/hello.txt", timeout=1)
                if reply.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (folder / "error.log").read_text()
            time.sleep(0.05)
        assert reply.text == "through nginx\n"
        assert "[emerg]" not in (folder / "error.log").read_text()
    finally:
        nginx.terminate()
        nginx.wait(10)
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(own, ignore_errors=True)
