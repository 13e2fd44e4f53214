"""A TCP proxy on 127.0.0.1 with switchable faults, between the library and a
real ``redis-server`` (never anything but loopback).

Faults, each switched on and off while connections are open:

- :meth:`FaultProxy.latency`: a delay before each chunk is forwarded, per
  direction (1 ms each way is a 2 ms round trip);
- :meth:`FaultProxy.blackhole` / :meth:`FaultProxy.heal`: connections stay
  open and nothing is forwarded; healing delivers what queued meanwhile (as
  TCP retransmission would) or drops it;
- :meth:`FaultProxy.never_answer`: like a black hole, and new connections
  are accepted but never reach the server (a hung server, a firewall);
- :meth:`FaultProxy.reset_replies`: a chosen fraction of replies is cut in
  the middle by a TCP reset (seeded, so a run is repeatable);
- :meth:`FaultProxy.lose_reply_after`: the proxy reads the client's RESP
  commands; after a command matching a predicate it forwards the command
  but swallows the server's reply on that connection.

Replies are matched to commands by parsing both directions (RESP2 and
RESP3; push messages are not replies). A connection that subscribes is
passed through untouched from then on.

``python -m tests.faults --target-port P --latency 0.001`` runs a latency
proxy in a process of its own (a benchmark's link, whose pump threads must
not share the measured process's GIL): it prints its port on one line and
runs until its standard input closes.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

Command = list[bytes]
Predicate = Callable[[Command], bool]

_AGGREGATES = {b"*": 1, b"~": 1, b">": 1, b"%": 2, b"|": 2}
_BULKS = (b"$", b"!", b"=")


def resp_length(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """The end offset of the complete RESP2/RESP3 value at ``start``, or
    ``None`` when the buffer does not hold all of it yet."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind = bytes(buffer[start:start + 1])
    header = bytes(buffer[start + 1:line_end])
    position = line_end + 2
    if kind in _BULKS:
        size = int(header)
        if size < 0:
            return position
        end = position + size + 2
        return end if len(buffer) >= end else None
    if kind in _AGGREGATES:
        count = int(header)
        if kind == b"|":  # an attribute precedes the value it describes
            count = count * 2 + 1
        else:
            count = max(count, 0) * _AGGREGATES[kind]
        for _ in range(count):
            found = resp_length(buffer, position)
            if found is None:
                return None
            position = found
        return position
    return position  # + - : _ , # ( and inline lines


def parse_command(buffer: bytes | bytearray) -> tuple[Command, int] | None:
    """The first complete command (a RESP array of bulk strings) and its
    length, or ``None``."""
    end = resp_length(buffer)
    if end is None:
        return None
    if buffer[:1] != b"*":
        return bytes(buffer[:end]).split(), end
    args: Command = []
    line_end = buffer.find(b"\r\n")
    position = line_end + 2
    for _ in range(int(buffer[1:line_end])):
        header_end = buffer.find(b"\r\n", position)
        size = int(buffer[position + 1:header_end])
        args.append(bytes(buffer[header_end + 2:header_end + 2 + size]))
        position = header_end + 2 + size + 2
    return args, end


def command_is(name: str, *flags: str) -> Predicate:
    """A predicate: the command is ``name`` and carries every one of
    ``flags`` (case-insensitive), e.g. ``command_is("SET", "NX")``."""
    wanted = name.upper().encode()
    options = {flag.upper().encode() for flag in flags}

    def matches(command: Command) -> bool:
        return bool(command) and command[0].upper() == wanted and options <= {a.upper() for a in command[1:]}

    return matches


class _Link:
    """One client connection and its upstream peer."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        #: For each command sent and not answered yet: swallow its reply?
        self.expect: deque[bool] = deque()
        self.passthrough = False
        self.lock = threading.Lock()
        self.closed = False

    def close(self, reset: bool = False) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to another loopback port, with faults (see
    the module). ``retarget`` sends new connections elsewhere while open ones
    keep their old peer, as when a DNS name or a service IP moves.

    :param target_port: the server's port.
    :param seed: seeds the choice of the replies that :meth:`reset_replies` cuts.
    """

    def __init__(self, target_port: int, seed: int = 0) -> None:
        self.target_port = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(256)
        self.port = int(self.sock.getsockname()[1])
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._links: list[_Link] = []
        self._held: list[bytearray] = []  # what black-holed pumps hold
        self._delay = {"up": 0.0, "down": 0.0}
        self._blackholed = False
        self._silent = False
        self._reset_fraction = 0.0
        self._lose: Predicate | None = None
        self._lose_left = 0
        #: Replies swallowed by :meth:`lose_reply_after`, and replies cut by resets.
        self.lost = 0
        self.resets = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}"

    # -- faults -----------------------------------------------------------------------

    def retarget(self, port: int) -> None:
        self.target_port = port

    def latency(self, to_server: float = 0.0, to_client: float = 0.0) -> None:
        """Delay every chunk by this many seconds, per direction."""
        self._delay = {"up": to_server, "down": to_client}

    def blackhole(self) -> None:
        """Forward nothing (connections stay open) until :meth:`heal`."""
        self._blackholed = True

    def never_answer(self) -> None:
        """A black hole where new connections never reach the server either."""
        self._silent = True
        self._blackholed = True

    def heal(self, deliver: bool = True) -> None:
        """End a black hole: deliver what queued meanwhile, or drop it.
        Connections accepted while :meth:`never_answer` held are closed."""
        with self._lock:
            if not deliver:
                for held in self._held:
                    held.clear()
            orphans = [link for link in self._links if link.upstream is None]
            self._silent = False
            self._blackholed = False
        for link in orphans:
            link.close()

    def reset_replies(self, fraction: float) -> None:
        """Cut this fraction of replies in the middle with a TCP reset (0: none)."""
        self._reset_fraction = fraction

    def lose_reply_after(self, predicate: Predicate | None, times: int = 1) -> None:
        """Swallow the server's reply to the next ``times`` commands matching
        ``predicate`` (the command itself reaches the server)."""
        with self._lock:
            self._lose, self._lose_left = predicate, times

    def clear(self) -> None:
        """Switch every fault off (a black hole heals, delivering)."""
        self.latency()
        self.reset_replies(0.0)
        self.lose_reply_after(None, 0)
        self.heal()

    def kill_connections(self) -> None:
        """Reset every open connection."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)

    # -- plumbing ---------------------------------------------------------------------

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            upstream = None
            if not self._silent:
                try:
                    upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=2)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            for direction in ("up", "down"):
                threading.Thread(target=self._pump, args=(link, direction), daemon=True).start()

    def _pump(self, link: _Link, direction: str) -> None:
        if link.upstream is None:  # never answered: hold the client until healed or closed
            return
        source = link.client if direction == "up" else link.upstream
        held = bytearray()
        with self._lock:
            self._held.append(held)
        parsed = bytearray()
        eof = False
        try:
            source.settimeout(0.02)
            while not link.closed and not self._stop.is_set():
                if not eof:
                    try:
                        data = source.recv(65536)
                        if not data:
                            eof = True
                        held += data
                    except TimeoutError:
                        pass
                if self._blackholed:
                    continue
                with self._lock:
                    chunk = bytes(held)
                    held.clear()
                if chunk:
                    delay = self._delay[direction]
                    if delay:
                        time.sleep(delay)
                    parsed += chunk
                    if not self._forward(link, direction, parsed):
                        return
                if eof:
                    sink = link.upstream if direction == "up" else link.client
                    if sink is not None:
                        sink.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                if held in self._held:
                    self._held.remove(held)
            if direction == "down" or eof:
                link.close()

    def _forward(self, link: _Link, direction: str, buffer: bytearray) -> bool:
        """Send the complete commands or replies in ``buffer`` on, applying
        the faults; False when the link was reset."""
        sink = link.upstream if direction == "up" else link.client
        assert sink is not None
        if link.passthrough:
            sink.sendall(buffer)
            buffer.clear()
            return True
        out = bytearray()
        while buffer:
            if direction == "up":
                found = parse_command(buffer)
                if found is None:
                    break
                command, end = found
                name = command[0].upper() if command else b""
                if name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"):
                    link.passthrough = True
                out += buffer[:end]
                del buffer[:end]
                with self._lock:
                    swallow = self._lose is not None and self._lose_left > 0 and self._lose(command)
                    if swallow:
                        self._lose_left -= 1
                with link.lock:
                    link.expect.append(bool(swallow))
                if link.passthrough:
                    out += buffer
                    buffer.clear()
            else:
                end_or_none = resp_length(buffer)
                if end_or_none is None:
                    break
                end = end_or_none
                reply = bytes(buffer[:end])
                del buffer[:end]
                if reply[:1] == b">":  # a push message answers no command
                    out += reply
                    continue
                with link.lock:
                    swallow = link.expect.popleft() if link.expect else False
                if swallow:
                    with self._lock:
                        self.lost += 1
                    continue
                if self._reset_fraction:
                    with self._lock:
                        cut = self._rng.random() < self._reset_fraction
                        if cut:
                            self.resets += 1
                    if cut:
                        sink.sendall(out + reply[:max(1, len(reply) // 2)])
                        link.close(reset=True)
                        return False
                out += reply
        if out:
            sink.sendall(out)
        return True

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    """A latency proxy in its own process (see the module): prints its port,
    runs until standard input closes."""
    parser = argparse.ArgumentParser(description="a latency proxy on 127.0.0.1 to a loopback port")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of delay each way")
    args = parser.parse_args()
    with FaultProxy(args.target_port) as proxy:
        proxy.latency(to_server=args.latency, to_client=args.latency)
        print(proxy.port, flush=True)
        sys.stdin.read()  # until the parent closes it (or exits)


if __name__ == "__main__":
    main()
