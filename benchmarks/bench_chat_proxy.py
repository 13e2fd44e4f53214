"""The resumable chat example: the latency a token gains by going through
nginx, against straight from an instance.

Starts the example (a private redis-server, 2 instances, nginx; all on
127.0.0.1), asks a question on one instance and follows the answer at the
same time through nginx and directly from the other instance. A token's
latency is its arrival at the reader minus the producer's timestamp in the
event (``ts``, taken just before the append; same machine, same clock), so
both paths are measured on the same tokens under the same load.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_chat_proxy [--rounds 5]``.
Prints a table and writes ``benchmarks/results/chat_proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any

import httpx

from benchmarks.timing import save
from examples.resumable_chat.run import ChatDeployment


def follow(url: str, latencies: list[float], ready: threading.Event) -> None:
    """Read the SSE stream to its end; note each token's latency in ms."""
    with httpx.stream("GET", url, timeout=30) as reply:
        ready.set()
        for line in reply.iter_lines():
            if not line.startswith("data:"):
                continue
            data = json.loads(line[5:])
            if data.get("type") == "token":
                latencies.append((time.time() - data["ts"]) * 1000)
            elif data.get("librecache") == "end":
                return


def one_round(deployment: ChatDeployment, number: int) -> dict[str, list[float]]:
    producer, direct = deployment.instance("app-1"), deployment.instance("app-2")
    stream_id = httpx.post(f"{producer.url}/api/ask", json={"question": f"round {number}"}).json()["id"]
    paths = {"nginx": f"{deployment.url}/api/stream/{stream_id}", "direct": f"{direct.url}/api/stream/{stream_id}"}
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    threads = []
    for name, url in paths.items():
        ready = threading.Event()
        thread = threading.Thread(target=follow, args=(url, latencies[name], ready))
        thread.start()
        ready.wait(10)
        threads.append(thread)
    for thread in threads:
        thread.join(60)
    # the first tokens may be a replay of what was written before the reader connected
    return {name: values[20:] for name, values in latencies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens (default 0.02)")
    args = parser.parse_args()
    env = {"CHAT_TOKEN_DELAY": str(args.delay)}
    rounds: list[dict[str, Any]] = []
    with ChatDeployment(instances=2, env=env) as deployment:
        for number in range(1, args.rounds + 1):
            measured = one_round(deployment, number)
            row = {name: {"median_ms": statistics.median(v), "p95_ms": statistics.quantiles(v, n=20)[-1],
                          "tokens": len(v)} for name, v in measured.items()}
            row["extra_median_ms"] = row["nginx"]["median_ms"] - row["direct"]["median_ms"]
            rounds.append(row)
            print(f"round {number}: direct median {row['direct']['median_ms']:.2f} ms "
                  f"p95 {row['direct']['p95_ms']:.2f} | nginx median {row['nginx']['median_ms']:.2f} ms "
                  f"p95 {row['nginx']['p95_ms']:.2f} | extra {row['extra_median_ms']:+.2f} ms", flush=True)
    extras = [row["extra_median_ms"] for row in rounds]
    summary = {"rounds": rounds, "extra_per_token_ms_median_of_rounds": statistics.median(extras),
               "load_average": os.getloadavg()}
    print(f"extra latency per token through nginx: median of rounds {statistics.median(extras):+.2f} ms "
          f"(range {min(extras):+.2f} .. {max(extras):+.2f}); load average {os.getloadavg()[0]:.1f}")
    save("chat_proxy", summary)


if __name__ == "__main__":
    main()
