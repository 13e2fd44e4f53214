"""Resumable streams: events per second appended, and delivered end to end
(appended by a producer, received by a live subscriber on another store
instance), and the time to replay a 10,000-event stream; on memory, a single
Redis and the 6-node cluster, on loopback.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_streams``.
Prints a table and writes ``benchmarks/results/streams.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from benchmarks.timing import save
from librecache.streams import StreamStore, open_streams
from tests.servers import ServerFarm

EVENT = {"type": "chunk", "text": "a token or two of the answer"}


async def measure(make: Any, events: int, replay: int) -> dict[str, float]:
    producer: StreamStore = make()
    reader: StreamStore = make()
    try:
        # appended: the producer alone
        stream = f"bench-{uuid.uuid4().hex[:8]}"
        await producer.create(stream)
        started = time.perf_counter()
        for _ in range(events):
            await producer.append(stream, EVENT)
        appended = events / (time.perf_counter() - started)
        await producer.finish(stream)

        # delivered end to end: a live subscriber receives while the producer appends
        stream = f"bench-{uuid.uuid4().hex[:8]}"
        await producer.create(stream)
        received = 0

        async def follow() -> None:
            nonlocal received
            async for event in reader.subscribe(stream):
                if not event.is_end:
                    received += 1

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        for _ in range(events):
            await producer.append(stream, EVENT)
        await producer.finish(stream)
        await follower
        delivered = received / (time.perf_counter() - started)

        # replay of a finished stream by a late subscriber
        stream = f"bench-{uuid.uuid4().hex[:8]}"
        await producer.create(stream)
        for start in range(0, replay, 500):
            await asyncio.gather(*(producer.append(stream, EVENT) for _ in range(min(500, replay - start))))
        await producer.finish(stream)
        started = time.perf_counter()
        count = 0
        async for _event in reader.subscribe(stream):
            count += 1
        replay_seconds = time.perf_counter() - started
        assert count == replay + 1
        return {"appended_per_s": appended, "delivered_per_s": delivered, "replay_10k_s": replay_seconds}
    finally:
        await producer.close()
        if reader is not producer:
            await reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--replay", type=int, default=10000)
    args = parser.parse_args()
    farm = ServerFarm()
    results: dict[str, dict[str, float]] = {}
    try:
        single = farm.server()
        cluster = farm.cluster()
        memory = open_streams({})
        topologies: dict[str, Any] = {
            "memory": lambda: memory,  # one process: one store
            "single redis": lambda: open_streams({"USE_REDIS": "true", "REDIS_URI": single.url,
                                                  "REDIS_KEY_PREFIX": "bench"}),
            "cluster": lambda: open_streams({"USE_REDIS": "true", "REDIS_URI": cluster.uri(3),
                                             "REDIS_KEY_PREFIX": "bench"}),
        }
        for name, make in topologies.items():
            results[name] = asyncio.run(measure(make, args.events, args.replay))
    finally:
        farm.stop()
    print(f"{'topology':<14}{'appended/s':>14}{'delivered/s':>14}{'replay 10k':>14}")
    for name, row in results.items():
        print(f"{name:<14}{row['appended_per_s']:>14,.0f}{row['delivered_per_s']:>14,.0f}"
              f"{row['replay_10k_s'] * 1000:>11,.0f} ms")
    save("streams", results)


if __name__ == "__main__":
    main()
