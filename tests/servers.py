"""Real ``redis-server`` processes on 127.0.0.1 for the tests and benchmarks.

Nothing here binds or contacts any address but loopback. Each server runs in
its own directory under a temporary folder and is stopped by ``stop()``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def redis_server_binary() -> str:
    """The path of ``redis-server``; a clear error when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not installed; run the README's test command "
            "(scripts/test.sh), which installs it"
        )
    return path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH", b"-NOPERM"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process.

    :param root: folder for this server's files (created).
    :param extra: extra command-line arguments, e.g. ``["--cluster-enabled", "yes"]``.
    :param config_lines: lines written into the server's configuration file
        (``user ...`` ACL lines, for instance).
    :param tls: when set, a ``(cert, key, ca)`` triple: the server listens
        with TLS only.
    """

    def __init__(
        self,
        root: Path,
        *,
        extra: Sequence[str] = (),
        config_lines: Sequence[str] = (),
        tls: tuple[Path, Path, Path] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = root / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.config_lines = list(config_lines)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    def command(self) -> list[str]:
        conf = self.dir / "redis.conf"
        conf.write_text("\n".join(self.config_lines) + "\n")
        args = [
            redis_server_binary(), str(conf),
            "--bind", LOOPBACK,
            "--dir", str(self.dir),
            "--logfile", str(self.logfile),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]
        if self.tls:
            cert, key, ca = self.tls
            args += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            ]
        else:
            args += ["--port", str(self.port)]
        return args + self.extra

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited: {self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start: {self.log_tail()}")

    def _ready(self) -> bool:
        if self.tls:
            return "Ready to accept connections" in self.log_text()
        return _ping(self.port)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class ServerFarm:
    """Every server a test session started, stopped together."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="librecache-redis-"))
        self.servers: list[RedisServer] = []

    def server(self, **kwargs: object) -> RedisServer:
        server = RedisServer(self.root, **kwargs).start()  # type: ignore[arg-type]
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)
