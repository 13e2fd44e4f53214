"""The chat server: one instance of many behind a load balancer.

Every instance is the same ASGI app (Starlette) on one Redis, reached
through librecache's environment variables (``USE_REDIS``, ``REDIS_URI``,
``REDIS_KEY_PREFIX``, ...) and :func:`librecache.streams.open_streams`:

- ``POST /api/ask`` ``{"question": ...}`` creates a stream, starts the fake
  model as a background task of *this* instance (the producer) and returns
  ``{"id": ..., "producer": ...}``;
- ``GET /api/stream/{id}`` is Server-Sent Events, on any instance: every
  event with its id, resuming after ``Last-Event-ID`` (what a reconnecting
  ``EventSource`` sends) or else the ``after`` query parameter;
- ``POST /api/abort/{id}`` asks the producer, wherever it runs, to stop;
- ``GET /api/status/{id}`` tells where a stream stands; ``GET /`` is the page.

Producer death: the producer appends a token every ``CHAT_TOKEN_DELAY``
seconds. An instance serving a subscriber that has seen no event for a
while looks at the stream; if it is still running and its last event is
older than ``CHAT_PRODUCER_TIMEOUT`` seconds, it finishes the stream with
status ``error`` and ``final = {"reason": "producer-lost"}``, which every
subscriber receives as the terminal event. ``finish`` is atomic and only
succeeds on a running stream, so two watchers cannot both finish it and a
producer that was only slow gets :class:`~librecache.streams.StreamFinishedError`
on its next append and stops: the stream never has two writers. An instance
that shuts down cleanly finishes its own streams at once with
``{"reason": "producer-stopped"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from librecache.streams import (
    StreamError,
    StreamEvent,
    StreamFinishedError,
    StreamStore,
    UnknownStreamError,
    open_streams,
)

from .model import TOKENS, answer_tokens

log = logging.getLogger("resumable_chat")

#: This instance's name, shown by the page ("served by").
INSTANCE = os.environ.get("CHAT_INSTANCE", f"pid-{os.getpid()}")
#: Seconds between two tokens of the fake model.
TOKEN_DELAY = float(os.environ.get("CHAT_TOKEN_DELAY", "0.025"))
#: Tokens per answer.
TOKEN_COUNT = int(os.environ.get("CHAT_TOKENS", str(TOKENS)))
#: A running stream whose last event is older than this has lost its producer.
PRODUCER_TIMEOUT = float(os.environ.get("CHAT_PRODUCER_TIMEOUT", "3"))
#: How long a subscriber waits for an event before looking at the producer.
WATCH_INTERVAL = min(1.0, PRODUCER_TIMEOUT / 3)
#: An SSE comment is sent after this many idle seconds (keeps proxies from timing out).
KEEPALIVE = 10.0
#: The reconnection delay the SSE stream asks browsers for, in ms.
RETRY_MS = 300

STATIC = Path(__file__).resolve().parent / "static"
_EVENT_ID = re.compile(r"^\d+-\d+$")


class Chat:
    """The instance's state: its stream store and its producer tasks."""

    def __init__(self) -> None:
        self.store: StreamStore | None = None
        self.producers: set[asyncio.Task[None]] = set()

    @property
    def streams(self) -> StreamStore:
        assert self.store is not None, "the app has not started"
        return self.store


chat = Chat()


async def produce(stream_id: str, question: str) -> None:
    """The fake model: append the answer token by token at a steady pace,
    stop when an abort was requested (from any instance)."""
    store = chat.streams
    tokens = answer_tokens(question, TOKEN_COUNT)
    try:
        for index, token in enumerate(tokens):
            if await store.is_aborted(stream_id):
                await store.finish(stream_id, "aborted", final={"tokens": index})
                return
            await store.append(stream_id, {"type": "token", "i": index, "t": token, "ts": time.time()})
            await asyncio.sleep(TOKEN_DELAY)
        await store.finish(stream_id, "done", final={"tokens": len(tokens)})
    except StreamFinishedError:
        log.warning("stream %s was finished by another instance (declared lost); producer stops", stream_id)
    except asyncio.CancelledError:
        with contextlib.suppress(StreamError):
            await store.finish(stream_id, "error", final={"reason": "producer-stopped", "producer": INSTANCE})
        raise


async def ask(request: Request) -> Response:
    try:
        body = await request.json()
        question = str(body["question"]).strip()
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'expected a JSON body {"question": "..."}'}, status_code=400)
    if not question or len(question) > 2000:
        return JSONResponse({"error": "the question must have 1 to 2000 characters"}, status_code=400)
    stream_id = uuid.uuid4().hex
    store = chat.streams
    await store.create(stream_id, meta={"producer": INSTANCE, "question": question})
    await store.append(stream_id, {"type": "start", "question": question, "producer": INSTANCE})
    task = asyncio.create_task(produce(stream_id, question))
    chat.producers.add(task)
    task.add_done_callback(chat.producers.discard)
    return JSONResponse({"id": stream_id, "producer": INSTANCE})


async def declare_lost_if_stalled(stream_id: str) -> None:
    """Finish the stream as errored if its producer stopped appending."""
    store = chat.streams
    try:
        status = await store.status(stream_id)
    except UnknownStreamError:
        return  # expired: the subscription ends by itself
    if status.status != "running" or time.time() - status.updated <= PRODUCER_TIMEOUT:
        return
    final = {"reason": "producer-lost", "producer": status.meta.get("producer"), "silent": PRODUCER_TIMEOUT}
    try:
        await store.finish(stream_id, "error", final=final)
        log.warning("stream %s: producer %s silent for %.1f s, marked errored",
                    stream_id, status.meta.get("producer"), time.time() - status.updated)
    except StreamFinishedError:
        pass  # it finished meanwhile, or another watcher was first


def sse(event: StreamEvent) -> str:
    return f"id: {event.id}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n"


async def sse_events(stream_id: str, after: str | None) -> AsyncIterator[str]:
    """The stream as SSE, with a watch on its producer while idle."""
    yield f"retry: {RETRY_MS}\nevent: hello\ndata: {json.dumps({'instance': INSTANCE})}\n\n"
    queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for event in chat.streams.subscribe(stream_id, after=after):
                await queue.put(event)
        finally:
            await queue.put(None)

    pumping = asyncio.create_task(pump())
    getter: asyncio.Future[StreamEvent | None] | None = None
    idle_since = time.monotonic()
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=WATCH_INTERVAL)
            if not done:
                await declare_lost_if_stalled(stream_id)
                if time.monotonic() - idle_since > KEEPALIVE:
                    idle_since = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            item, getter = getter.result(), None
            if item is None:
                return
            idle_since = time.monotonic()
            yield sse(item)
    finally:
        for task in (getter, pumping):
            if task is not None:
                task.cancel()
        await asyncio.gather(pumping, return_exceptions=True)


def _bad_id(stream_id: str) -> Response | None:
    if not re.fullmatch(r"[0-9a-f]{32}", stream_id):
        return JSONResponse({"error": f"invalid stream id {stream_id!r}"}, status_code=400)
    return None


def _unknown(stream_id: str) -> Response:
    return JSONResponse({"error": f"no stream {stream_id} (never created, or expired)"}, status_code=404)


async def stream(request: Request) -> Response:
    stream_id = request.path_params["stream_id"]
    if (bad := _bad_id(stream_id)) is not None:
        return bad
    after = request.headers.get("last-event-id") or request.query_params.get("after") or None
    if after is not None and not _EVENT_ID.match(after):
        return JSONResponse({"error": f"{after!r} is not an event id"}, status_code=400)
    try:
        await chat.streams.status(stream_id)
    except UnknownStreamError:
        return _unknown(stream_id)
    return StreamingResponse(
        sse_events(stream_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def abort(request: Request) -> Response:
    stream_id = request.path_params["stream_id"]
    if (bad := _bad_id(stream_id)) is not None:
        return bad
    try:
        stopping = await chat.streams.abort(stream_id, reason=f"stop button (via {INSTANCE})")
    except UnknownStreamError:
        return _unknown(stream_id)
    return JSONResponse({"stopping": stopping, "instance": INSTANCE})


async def status(request: Request) -> Response:
    stream_id = request.path_params["stream_id"]
    if (bad := _bad_id(stream_id)) is not None:
        return bad
    try:
        state = await chat.streams.status(stream_id)
    except UnknownStreamError:
        return _unknown(stream_id)
    body: dict[str, Any] = {
        "status": state.status, "producer": state.meta.get("producer"), "question": state.meta.get("question"),
        "events": state.events, "last_event_id": state.last_event_id, "abort_requested": state.abort_requested,
        "final": state.final, "instance": INSTANCE,
    }
    return JSONResponse(body)


async def health(request: Request) -> Response:
    return JSONResponse({"instance": INSTANCE, "producing": len(chat.producers)})


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    chat.store = open_streams()  # librecache's variables, from the environment
    try:
        yield
    finally:
        producers = set(chat.producers)
        while producers:  # each finishes its stream: producer-stopped
            for task in producers:
                # again while it runs: on Python 3.10 asyncio.wait_for (redis-py's
                # bound of a command there) can swallow a cancellation that meets
                # the command's reply (CPython gh-86296, fixed in 3.12)
                task.cancel()
            _, producers = await asyncio.wait(producers, timeout=0.2)
        await chat.streams.close()
        chat.store = None


app = Starlette(
    routes=[
        Route("/", page),
        Route("/health", health),
        Route("/api/ask", ask, methods=["POST"]),
        Route("/api/stream/{stream_id}", stream),
        Route("/api/abort/{stream_id}", abort, methods=["POST"]),
        Route("/api/status/{stream_id}", status),
    ],
    lifespan=lifespan,
)
