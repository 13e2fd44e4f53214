"""Start the whole chat on this machine: Redis, N instances of the app and
nginx in front, all on 127.0.0.1 free ports; print the URL; stop everything
on Ctrl-C.

    python -m examples.resumable_chat.run [--instances 3] [--redis-uri redis://...]

Without ``--redis-uri`` a private ``redis-server`` is started. Tests and the
benchmark use :class:`ChatDeployment` directly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from .nginx import nginx_binary, write_config

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]  # the folder holding examples/


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout} s")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        with urlopen(url, timeout=1) as reply:  # loopback only
            return bool(reply.status == 200)
    except (URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Instance:
    """One app process (uvicorn) on its own port."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = log_dir / f"{name}.log"
        self.env = {**env, "CHAT_INSTANCE": name}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Instance:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        environment = {**os.environ, **self.env, "PYTHONPATH": path}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "examples.resumable_chat.app:app",
                 "--host", LOOPBACK, "--port", str(self.port), "--no-access-log",
                 "--timeout-graceful-shutdown", "1"],
                cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(lambda: self._check() and _answers(self.url + "/health"), 20, f"instance {self.name}")
        return self

    def _check(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"instance {self.name} exited: {self.log.read_text()[-2000:]}")
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (its own streams end as producer-stopped)."""
        if self.process is not None:
            _stop(self.process)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)


class ChatDeployment:
    """Redis (given, or started here), ``instances`` app processes and nginx
    round robin in front of them, on 127.0.0.1.

    :param redis_uri: a Redis to share; ``None`` starts a private ``redis-server``.
    :param env: extra environment of the instances (``CHAT_TOKEN_DELAY``, ...).
    """

    def __init__(
        self, redis_uri: str | None = None, *, instances: int = 3, prefix: str = "chat",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="resumable-chat-"))
        self.redis_uri = redis_uri
        self.redis: subprocess.Popen[bytes] | None = None
        self.count = instances
        self.prefix = prefix
        self.extra_env = dict(env or {})
        self.instances: dict[str, Instance] = {}
        self.nginx: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server), or pass --redis-uri")
        port = free_port()
        self.redis = subprocess.Popen(
            [binary, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for(lambda: _redis_up(port), 10, "redis-server")
        return f"redis://{LOOPBACK}:{port}"

    def start(self) -> ChatDeployment:
        try:
            if self.redis_uri is None:
                self.redis_uri = self._start_redis()
            env = {"USE_REDIS": "true", "REDIS_URI": self.redis_uri, "REDIS_KEY_PREFIX": self.prefix,
                   **self.extra_env}
            for number in range(1, self.count + 1):
                instance = Instance(f"app-{number}", env, self.dir).start()
                self.instances[instance.name] = instance
            conf = write_config(self.dir / "nginx", self.port, [i.port for i in self.instances.values()])
            self.nginx = subprocess.Popen(
                [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log"),
                 "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            )
            wait_for(lambda: self._nginx_check() and _answers(self.url + "/health"), 10, "nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def _nginx_check(self) -> bool:
        if self.nginx is not None and self.nginx.poll() is not None:
            error = self.nginx.stderr.read().decode(errors="replace") if self.nginx.stderr else ""
            raise RuntimeError(f"nginx exited: {error[-2000:]}")
        return True

    def instance(self, name: str) -> Instance:
        return self.instances[name]

    def log_of(self, name: str) -> str:
        return self.instances[name].log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop nginx, the instances and the private Redis; remove the folder."""
        if self.nginx is not None:
            _stop(self.nginx)
            self.nginx = None
        for instance in self.instances.values():
            instance.kill()
        if self.redis is not None:
            _stop(self.redis)
            self.redis = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ChatDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_up(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3, help="app instances behind nginx (default 3)")
    parser.add_argument("--redis-uri", help="a Redis to use (default: start a private redis-server)")
    parser.add_argument("--prefix", default="chat", help="REDIS_KEY_PREFIX of the instances")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    deployment = ChatDeployment(args.redis_uri, instances=args.instances, prefix=args.prefix)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with deployment:
        for instance in deployment.instances.values():
            print(f"  {instance.name}: {instance.url}  (log: {instance.log})")
        print(f"  redis: {deployment.redis_uri}\n  nginx config: {deployment.dir / 'nginx' / 'nginx.conf'}")
        print(f"\nOpen {deployment.url}/  (Ctrl-C stops everything)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")


if __name__ == "__main__":
    main()
