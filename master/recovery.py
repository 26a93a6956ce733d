"""The master's store for connection state recovery (design: workers/recovery.py).

Pure data, no I/O: the shell (loop.py) feeds it the broadcasts it relays and
the session changes workers report, and asks it for a session and the
broadcasts it missed when a client comes back. Bounded in time (a session
that went down is kept `window` seconds; a broadcast is kept `window`
seconds) and in memory (MAX_PACKETS broadcasts and MAX_LOG_BYTES of them at
most; a session's data up to MAX_DATA_BYTES).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

MAX_PACKETS = 10_000
MAX_LOG_BYTES = 32 << 20
MAX_DATA_BYTES = 64 << 10


@dataclass
class Session:
    """One recoverable Socket.IO session (one namespace of one client)."""

    sid: str
    namespace: str
    holder: str  # the Engine.IO sid of the connection that holds it now
    worker: int
    rooms: list[str] = field(default_factory=list)
    data: bytes = b"null"  # JSON
    down_at: float | None = None  # monotonic seconds; None while held

    def hears(self, namespace: str, room: object, skip: object) -> bool:
        """Whether a broadcast to `room` (None, a room, a list) skipping `skip`
        (None, a sid, a list) reached this session, as python-socketio's
        Manager.emit chooses participants."""
        if namespace != self.namespace:
            return False
        if skip == self.sid or (isinstance(skip, list) and self.sid in skip):
            return False
        if room is None:
            return True
        if isinstance(room, str):
            return room in self.rooms or room == self.sid
        if isinstance(room, list):
            return any(r in self.rooms or r == self.sid for r in room)
        return False


@dataclass
class Logged:
    offset: int
    at: float
    namespace: str
    room: object
    skip: object
    payload: bytes  # the relayed JSON message, offset included


class RecoveryStore:
    """Sessions by pid, and the log of broadcasts by offset.

    Offsets are consecutive integers from 1 (sent as decimal strings: the JS
    client keeps only a string last argument as its offset). Every offset
    above `floor` is in the log, so an offset is recoverable exactly when
    `floor <= offset <= last`: nothing the client may have missed was dropped.
    """

    def __init__(self, window: float, max_packets: int = MAX_PACKETS,
                 max_log_bytes: int = MAX_LOG_BYTES):
        self.window = window
        self.max_packets = max_packets
        self.max_log_bytes = max_log_bytes
        self.sessions: dict[str, Session] = {}
        self.log: deque[Logged] = deque()
        self.log_bytes = 0
        self.last = 0  # the last offset given
        self.floor = 0  # every offset > floor is still in the log
        self.counters = {"restored": 0, "restore_refused": 0, "expired": 0}

    # ---- broadcasts ------------------------------------------------------------------

    def publish(self, message: dict, payload: bytes, now: float) -> bytes:
        """Give `message` (a python-socketio "emit" message, JSON `payload`) the
        next offset, log it, and return the payload with `"offset": "N"` added."""
        self.last += 1
        tagged = payload[:-1] + b',"offset":"%d"}' % self.last
        ns = message.get("namespace") or "/"
        self.log.append(Logged(self.last, now, ns, message.get("room"),
                               message.get("skip_sid"), tagged))
        self.log_bytes += len(tagged)
        while self.log and (len(self.log) > self.max_packets
                            or self.log_bytes > self.max_log_bytes):
            self._drop_oldest()
        return tagged

    def _drop_oldest(self) -> None:
        old = self.log.popleft()
        self.log_bytes -= len(old.payload)
        self.floor = old.offset

    # ---- sessions --------------------------------------------------------------------

    def apply(self, worker: int, op: dict, now: float) -> str | None:
        """One change a worker reports (workers/recovery.py lists them); None when
        applied, else why it was ignored."""
        kind, pid, holder = op.get("op"), op.get("pid"), op.get("eio_sid")
        if not isinstance(pid, str) or not isinstance(holder, str):
            return "no pid or eio_sid"
        if kind == "up":
            sid, ns = op.get("sid"), op.get("namespace")
            if not isinstance(sid, str) or not isinstance(ns, str):
                return "no sid or namespace"
            s = self.sessions[pid] = Session(sid, ns, holder, worker)
            return self._set(s, op)
        s = self.sessions.get(pid)
        if s is None or s.holder != holder:
            return "not the holder"  # a connection the session has moved away from
        if kind == "change":
            return self._set(s, op)
        if kind == "down":
            s.down_at = now
            return None
        if kind == "gone":
            del self.sessions[pid]
            return None
        return f"unknown op {kind!r}"

    def _set(self, s: Session, op: dict) -> str | None:
        rooms = op.get("rooms")
        if isinstance(rooms, list):
            s.rooms = [r for r in rooms if isinstance(r, str)]
        if "data" in op:
            data = json.dumps(op["data"], separators=(",", ":")).encode()
            if len(data) > MAX_DATA_BYTES:
                return "session data too large: not kept"
            s.data = data
        return None

    def worker_gone(self, worker: int, now: float) -> None:
        """Every session the worker held went down with it."""
        for s in self.sessions.values():
            if s.worker == worker and s.down_at is None:
                s.down_at = now

    def expire(self, now: float) -> None:
        """Drop sessions down longer than the window, and broadcasts older than it."""
        horizon = now - self.window
        gone = [pid for pid, s in self.sessions.items()
                if s.down_at is not None and s.down_at < horizon]
        for pid in gone:
            del self.sessions[pid]
        self.counters["expired"] += len(gone)
        while self.log and self.log[0].at < horizon:
            self._drop_oldest()

    def restore(self, pid: object, offset: object, now: float) -> bytes | None:
        """The session `pid` with every broadcast after `offset` that reached it,
        as the JSON text `{"sid", "namespace", "rooms", "data", "missed": [messages]}`,
        or None (unknown or expired pid, offset not a known one). The session
        leaves the store: the worker that restores it reports it "up" again."""
        s = self.sessions.get(pid) if isinstance(pid, str) else None
        try:
            n = int(offset) if isinstance(offset, str) else -1
        except ValueError:
            n = -1
        if (s is None or not self.floor <= n <= self.last
                or (s.down_at is not None and s.down_at < now - self.window)):
            self.counters["restore_refused"] += 1
            return None
        del self.sessions[pid]
        self.counters["restored"] += 1
        missed = [m.payload for m in self.log
                  if m.offset > n and s.hears(m.namespace, m.room, m.skip)]
        head = json.dumps({"sid": s.sid, "namespace": s.namespace, "rooms": s.rooms},
                          separators=(",", ":")).encode()
        return (head[:-1] + b',"data":' + s.data + b',"missed":['
                + b",".join(missed) + b"]}")

    def stats(self) -> dict:
        return {"sessions": len(self.sessions), "packets": len(self.log),
                "log_bytes": self.log_bytes, **self.counters}
