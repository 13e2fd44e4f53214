"""Run the worker processes of tests/workers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any cache variable, plus ``env``,
    with the repository on the path: what a child process under test gets."""
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("REDIS_", "USE_REDIS", "LIBRECACHE_", "FORCED_IN_MEMORY"))}
    return {**base, **env, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}


def start(role: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start a worker; read its JSON lines with :func:`read_line`."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers", role],
        cwd=ROOT, env=child_environment(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        assert process.stderr is not None
        raise AssertionError(f"worker ended without a report: {process.stderr.read()[-2000:]}")
    return json.loads(line)  # type: ignore[no-any-return]


def reports_of(workers: list[subprocess.Popen[str]], timeout: float = 30) -> list[dict[str, Any]]:
    """The first report of each of ``workers``, started together; each must
    then end well within ``timeout`` seconds (its pipes are closed)."""
    reports = [read_line(worker) for worker in workers]
    for worker in workers:
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:  # where it hangs: its threads' stacks (PYTHONFAULTHANDLER)
            worker.send_signal(signal.SIGABRT)
            worker.wait(10)
            assert worker.stderr is not None
            raise AssertionError(f"a worker did not end: {worker.stderr.read()[-6000:]}") from None
        assert worker.returncode == 0
        for pipe in (worker.stdin, worker.stdout, worker.stderr):
            assert pipe is not None
            pipe.close()
    return reports


def run(role: str, env: Mapping[str, str], timeout: float = 60) -> list[dict[str, Any]]:
    """Run a worker to the end; return its reports."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.workers", role],
        cwd=ROOT, env=child_environment(env), capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def stop_process(process: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if ``process`` is still running after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
