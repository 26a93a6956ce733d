"""python-socketio clients driving a cluster, mirroring tests/js/clients.mjs."""

from __future__ import annotations

import collections
import threading
import time

import engineio
import socketio

TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"],
              "default": ["polling", "websocket"]}


class InOrderEngineIOClient(engineio.Client):
    """python-engineio's client, handing received messages on one at a time, in order.

    python-engineio 4.15's client starts a thread per received message
    (`Client._receive_packet`, run_async=True). python-socketio's client reads a
    binary event as a header message and then one message per attachment, joined
    through shared state, so two threads can take them out of order and the event
    is lost ("Unexpected binary attachment", python-socketio issue #436). Tests
    that carry bytes use this: the reader thread runs each handler itself, so
    handlers must not wait for the server.
    """

    def _receive_packet(self, pkt):
        # Reach into python-engineio 4.15's private Client._receive_packet.
        if pkt.packet_type == engineio.packet.MESSAGE:
            self._trigger_event("message", pkt.data, run_async=False)
        else:
            super()._receive_packet(pkt)


class InOrderClient(socketio.Client):
    """python-socketio's client on InOrderEngineIOClient."""

    def _engineio_client_class(self):
        return InOrderEngineIOClient


class Client:
    """One python-socketio client that records what it hears."""

    def __init__(self, url: str, transport: str = "default", reconnection: bool = False,
                 room: str | None = None, headers: dict | None = None):
        self.said: list[dict] = []
        self.disconnects = 0
        self.connects = 0
        self.room = room
        self.sio = socketio.Client(reconnection=reconnection, reconnection_delay=0.5,
                                   reconnection_delay_max=2, request_timeout=10)
        self.sio.on("said", self.said.append)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.connect(url, transports=TRANSPORTS[transport], headers=headers or {},
                         wait_timeout=10)

    def _on_connect(self):
        self.connects += 1
        if self.room and self.connects > 1:
            # The server forgets rooms with the session: join again after a reconnect.
            threading.Thread(target=self._rejoin, daemon=True).start()

    def _rejoin(self):
        try:
            self.join(self.room)
        except Exception:
            pass  # lost again meanwhile: the next connect rejoins; tests check membership

    def _on_disconnect(self, *args):
        self.disconnects += 1

    def call(self, event: str, data=None, timeout: float = 10):
        return self.sio.call(event, data, timeout=timeout)

    def whoami(self) -> int:
        return self.call("whoami")

    def join(self, room: str) -> bool:
        self.room = room
        return self.call("join", {"room": room})

    def wait_upgrade(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.sio.transport() != "websocket" and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.sio.disconnect()


def room_roundtrip(url: str, transport: str, n: int = 30, room: str = "r") -> dict:
    """Connect n clients, check each stays on one worker, join a room, deliver one `say`."""
    clients: list[Client] = []
    errors: list[str] = []
    stable = 0
    pids: collections.Counter = collections.Counter()
    try:
        for _ in range(n):
            try:
                c = Client(url, transport)
            except Exception as e:  # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")
                continue
            clients.append(c)
            before = c.whoami()
            if transport == "default":
                c.wait_upgrade()
            after = c.whoami()
            stable += before == after
            pids[after] += 1
            assert c.join(room) is True
        transports = collections.Counter(c.sio.transport() for c in clients)
        text = f"hello-{time.monotonic()}"
        clients[0].sio.emit("say", {"room": room, "text": text, "ts": time.time()})
        deadline = time.monotonic() + 10
        got = lambda: sum(any(m.get("text") == text for m in c.said) for c in clients)
        while got() < len(clients) and time.monotonic() < deadline:
            time.sleep(0.05)
        dups = sum(sum(m.get("text") == text for m in c.said) > 1 for c in clients)
        return {"connected": len(clients), "errors": errors, "pids": dict(pids),
                "stable": stable, "transports": dict(transports), "received": got(),
                "duplicates": dups}
    finally:
        for c in clients:
            c.close()


def one_per_worker(url: str, transport: str, room: str, workers: int = 3) -> list[Client]:
    """One client on each of `workers` workers (found by `whoami`), each in `room`;
    the spares connected on the way are closed."""
    by_pid: dict[int, Client] = {}
    spare = []
    for _ in range(6 * workers):
        c = Client(url, transport)
        pid = c.whoami()
        if pid in by_pid:
            spare.append(c)
            continue
        by_pid[pid] = c
        if len(by_pid) == workers:
            break
    for c in spare:
        c.close()
    assert len(by_pid) == workers, f"sessions reached only {len(by_pid)} workers"
    for c in by_pid.values():
        assert c.join(room) is True
    return list(by_pid.values())
