"""What the benchmarks share: one timing loop, a threaded one, and where
the results go."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def rate(operation: Callable[[], Any], seconds: float, batch: int = 20) -> float:
    """Calls per second of ``operation``, called in batches of ``batch``
    for about ``seconds`` (one round; callers interleave rounds and keep
    the best, so that a noisy machine slows every side alike)."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(batch):
            operation()
        count += batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def threaded_rate(operation: Callable[[], Any], seconds: float, threads: int, batch: int = 20) -> float:
    """Calls per second of ``operation`` made by ``threads`` threads at once
    for about ``seconds``, all together (aggregate throughput)."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(index: int) -> None:
        start.wait()
        while not stop.is_set():
            for _ in range(batch):
                operation()
            counts[index] += batch

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    stop.wait(seconds)
    stop.set()  # each thread finishes its batch: counted, and timed
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def save(name: str, data: Any) -> Path:
    """Write ``data`` as ``benchmarks/results/{name}.json``; return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def paired_ratio(ours: Callable[[], Any], base: Callable[[], Any], seconds: float = 0.05, least: int = 20,
                 most: int = 300, tolerance: float = 0.01,
                 measure: Callable[[Callable[[], Any], float], float] = rate) -> dict[str, float]:
    """Time per call of ``ours`` / ``base``, from short rounds run back to
    back (which one goes first alternates), repeated until the running
    median of the pairs' ratios has moved less than ``tolerance`` (relative)
    over the last ``least`` pairs, or ``most`` pairs were made. A load that
    comes and goes slows both sides of a pair alike, so the median of pairs
    is steadier than a ratio of two separate bests. ``measure`` times one
    round (:func:`rate`, or a threaded rate).

    :returns: ``median``, the quartiles ``q1`` and ``q3``, and ``pairs``.
    """
    ratios: list[float] = []
    medians: list[float] = []
    while len(ratios) < most:
        if len(ratios) % 2 == 0:
            took_ours = 1 / measure(ours, seconds)
            took_base = 1 / measure(base, seconds)
        else:
            took_base = 1 / measure(base, seconds)
            took_ours = 1 / measure(ours, seconds)
        ratios.append(took_ours / took_base)
        medians.append(statistics.median(ratios))
        recent = medians[-least:]
        if len(ratios) >= least and max(recent) - min(recent) <= tolerance * medians[-1]:
            break
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"median": medians[-1], "q1": q1, "q3": q3, "pairs": float(len(ratios))}
