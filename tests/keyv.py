"""A real keyv client (keyv 5 with @keyv/redis 4, as LibreChat uses them),
driven from the tests: tests/keyv_client.cjs run by Node.

The packages are installed from the npm registry into ``.node/`` at the
repository root (git-ignored), once: ``scripts/test.sh`` does it up front
(``python -m tests.keyv``); a test that finds them missing installs them
under a file lock. Tests skip, saying why, only when Node or npm is absent.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.processes import ROOT

NODE_DIR = ROOT / ".node"
#: What LibreChat's cache layer is built on (its package.json: keyv ^5, @keyv/redis ^4).
PACKAGES = ("keyv@5", "@keyv/redis@4")
SCRIPT = Path(__file__).with_name("keyv_client.cjs")

#: keyv's ``undefined`` (a miss).
UNDEFINED = object()


def missing_tools() -> str | None:
    """Why keyv cannot run here, or ``None``."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs Debian's nodejs and npm)"
    return None


def installed() -> bool:
    modules = NODE_DIR / "node_modules"
    return (modules / "keyv" / "package.json").is_file() and (modules / "@keyv" / "redis" / "package.json").is_file()


def install() -> Path:
    """Install keyv and @keyv/redis into ``.node/`` unless they are there;
    return the ``node_modules`` folder."""
    NODE_DIR.mkdir(exist_ok=True)
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed():
            subprocess.run(
                ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error",
                 *PACKAGES],
                check=True, cwd=NODE_DIR, timeout=600,
            )
    return NODE_DIR / "node_modules"


def to_node(value: Any) -> Any:
    """A Python value as the JSON the script revives (bytes as Buffers)."""
    if isinstance(value, bytes):
        return {"$buffer": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_node(item) for item in value]
    if isinstance(value, dict):
        return {key: to_node(item) for key, item in value.items()}
    return value


def from_node(value: Any) -> Any:
    """What the script printed, as Python values (Buffers as bytes)."""
    if isinstance(value, list):
        return [from_node(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"$buffer"}:
            return base64.b64decode(value["$buffer"])
        if set(value) == {"$undefined"}:
            return UNDEFINED
        return {key: from_node(item) for key, item in value.items()}
    return value


class KeyvClient:
    """LibreChat's ``standardCache(namespace, ttl)`` of a deployment.

    :param env: the deployment's variables (REDIS_URI, REDIS_KEY_PREFIX).
    :param namespace: the cache namespace (``ROLES``...).
    :param ttl_ms: the Keyv's default TTL in milliseconds, as LibreChat gives it.
    """

    def __init__(self, env: Mapping[str, str], namespace: str, ttl_ms: int | None = None) -> None:
        reason = missing_tools()
        if reason is not None:
            import pytest

            pytest.skip(f"keyv tests need Node and npm: {reason}")
        self.modules = install()
        self.uris = [uri.strip() for uri in env["REDIS_URI"].split(",")]
        self.prefix = env.get("REDIS_KEY_PREFIX", "")
        self.namespace = namespace
        self.ttl_ms = ttl_ms

    def run(self, *ops: dict[str, Any]) -> list[Any]:
        """Run operations in one Node process; their results in order."""
        request = {"uris": self.uris, "prefix": self.prefix, "namespace": self.namespace, "ttl": self.ttl_ms,
                   "ops": list(ops)}
        done = subprocess.run(
            ["node", str(SCRIPT)], input=json.dumps(request), capture_output=True, text=True, timeout=60,
            env={**os.environ, "NODE_PATH": str(self.modules)},
        )
        if done.returncode != 0:
            raise RuntimeError(f"the keyv client failed ({done.returncode}): {done.stderr.strip()}")
        results: list[Any] = from_node(json.loads(done.stdout))
        return results

    def get_after(self, action: Callable[[], Any], key: str) -> Any:
        """``action()`` (a write, say) once the Node process is started and
        connected, then keyv's read of ``key``: the read follows the action
        by a round trip, however long Node took to start."""
        request = {"uris": self.uris, "prefix": self.prefix, "namespace": self.namespace, "ttl": self.ttl_ms,
                   "ops": [{"op": "get", "key": key}, {"op": "pause"}, {"op": "get", "key": key}]}
        process = subprocess.Popen(
            ["node", str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NODE_PATH": str(self.modules)},
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            paused = process.stdout.readline()
            if paused.strip() != '{"paused": true}':
                process.wait(60)
                raise RuntimeError(f"the keyv client failed: {paused} {process.stderr.read() if process.stderr else ''}")
            action()
            out, err = process.communicate("\n", timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"the keyv client failed ({process.returncode}): {err.strip()}")
        return from_node(json.loads(out))[-1]

    def set(self, key: str, value: Any, ttl_ms: int | None = None) -> Any:
        return self.run({"op": "set", "key": key, "value": to_node(value), "ttl": ttl_ms})[0]

    def get(self, key: str, raw: bool = False) -> Any:
        return self.run({"op": "get", "key": key, "raw": raw})[0]

    def delete(self, key: str) -> Any:
        return self.run({"op": "delete", "key": key})[0]


if __name__ == "__main__":  # scripts/test.sh: install up front, so that tests do not wait for it
    reason = missing_tools()
    if reason is not None:
        print(f"keyv: not installed: {reason}", file=sys.stderr)
        sys.exit(0)
    print(f"keyv: {', '.join(PACKAGES)} in {install()}")
