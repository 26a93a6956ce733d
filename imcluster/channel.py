"""The master-worker channel: one SOCK_SEQPACKET socketpair per worker.

Each datagram is one frame: a kind byte, a flags byte, then the payload.
A HANDOFF frame carries one to MAX_FDS client fds (SCM_RIGHTS), every other
frame with an fd exactly one. Payloads larger
than FRAGMENT are split into frames flagged MORE; the receiver joins them.
Seqpacket keeps frame boundaries and fds together, which a stream socket
does not. Both sides use the same codec; the I/O loops differ (selectors in
the master, eventlet in the workers). One message per purpose, each kind a
byte of its own in both directions (M: master, W: worker):

    kind       byte  from  payload                            sent
    SPEC       C     M     JSON object (1)                    first, once: nothing is read before it
    HANDOFF    H     M     empty, with 1 to MAX_FDS client    per connection routed to it (2); the
                           fds                                connections routed to it since the
                                                              last send go in one frame (11)
    RELAY      M     M     a pub/sub message (3)              per PUBLISH, to every other worker
    STOP       S     M     empty, or the heir's worker id     to drain and exit (retire, scale
                           (ASCII; --handover)                down); the heir takes its sessions.
                                                              Again while it drains: a new heir
                                                              (the first stopped taking sessions)
    HANDOVER   V     M, W  JSON object (7), one client fd     W: a draining worker's session
                                                              leaves; M: relayed to its new owner
    REPLAY     W     M     Engine.IO sid, LF, a RELAY's       after a HANDOVER, each relay its old
                           payload                            worker had not handled (7)
    RESTORED   Z     M     JSON object (10)                   answer to each RESTORE
    FORWARD    G     M, W  an HTTP request's head (8), one    W: a request for a session it handed
                           client fd                          over; M: relayed to its new owner
    EMPTIED    J     M, W  empty                              W: a draining worker handed over what
                                                              could move (9); M: the answer
    READY      R     W     empty                              once: app imported, serving
    HANDBACK   B     W     empty, with one client fd          a kept-alive connection's next request
                                                              is another worker's (or a new session)
    PUBLISH    P     W     a pub/sub message (3)              per broadcast (relay mode)
    HEARTBEAT  T     W     empty                              every HEARTBEAT_INTERVAL (1 s)
    LOAD       L     W     JSON object (4)                    with the heartbeat, when it changed
    ACK        A     W     ASCII decimal integer (5)          every 16 hand-offs, and with the
                                                              heartbeat when it changed
    ERROR      E     W     UTF-8 text: why it exits           once, before exiting on an error (6)
    SESSION    X     W     JSON object (10)                   a recoverable session changed
    RESTORE    Y     W     JSON object (10)                   a CONNECT asks to recover a session

1. What the worker serves and how: app, cwd, worker_id, slot, log_level,
   keepalive (s), graceful_timeout (s), cors_origins, ws_compression, redis (a
   URL, password included: never on a command line), redis_silence_timeout
   (s), allow_untested_versions, handover,
   recovery_window (s, 0 = off), client_nodelay (the listener has
   TCP_NODELAY, which every accepted socket inherits: the worker does not set
   it again).
2. The worker serves the connection's first request whatever sid it names.
3. python-socketio's pub/sub JSON, as PubSubManager._publish is given it.
4. `{"sessions": Engine.IO sessions held, "connections": TCP connections
   served}`, both counts as of sending; with `--handover yes` also
   "moved_in" (sessions handed over to it it has taken in, HANDOVER frames,
   since it started) and "held" (the worker ids, sorted, that the sids of the
   handed-over sessions it still holds name): the master drops a retired
   worker's forwarding entry once its holder holds none of its sessions.
5. Hand-offs received since the worker started, cumulative: the master keeps
   at most `--handoff-window` unacknowledged in the kernel's queue (what is
   there dies with the worker; what the master still holds can be re-routed).
6. The app failed to import, or a library is outside the tested range.
7. One session's state (workers/handover.py), at most FRAGMENT bytes: a
   hand-over is never fragmented, so its fd and its state arrive together.
   The master counts the relayed frame in the receiver's hand-off window,
   and the receiver counts it in its ACK, like a HANDOFF (when it carries
   an fd). Sent only with
   `--handover yes`. Its "relay_seen" is how many RELAY messages the old
   worker had handled when the session left; the master numbers what it
   relays to each worker and sends the new owner, as REPLAY, those after
   that number that it still holds (the last REPLAY_KEEP), for that session
   alone. Relaying it, the master sets its "heir_seen" (room left by the old
   worker) to the number of PUBLISH messages it had from the new owner by
   then; the new owner numbers its own publishes alike and delivers the
   session those after that number when it arrives (workers/handover.py).
   A polling session's HANDOVER carries the socket of the GET it had
   parked (the new owner answers it; the state holds that request's head),
   or no fd when none was parked.
8. The request line and headers, already read by the worker that sends it
   (rebuilt from its WSGI environ), at most FRAGMENT bytes; the body, if any,
   is still unread in the socket. The new owner serves the request from these
   bytes, then reads on from the socket. The master sends it to the worker the
   sender's sessions moved to (`Core.moved`), or closes it. Counted in the
   hand-off window like a HANDOFF. Sent only with `--handover yes`.
9. From then on the master routes requests naming the worker to the worker
   its sessions went to (`Core.moved`), not to it, and answers EMPTIED: what
   the master sent before that answer (hand-offs of requests for sessions that
   moved, which the worker forwards) has reached the worker, nothing follows,
   and the worker may exit once it has served them. Without this a connection
   routed to it in its last instant died with it. `--handover yes` only.
10. Connection state recovery (`--recovery-window`), described in
    workers/recovery.py; only sent when it is on. With it on, RELAY also goes
    back to the worker that published (every broadcast, in the master's order,
    with its offset).
11. The fds in the order the connections were routed; each counts as one
    hand-off (in the window and in ACK) and is served as its own connection.
    One wake-up of the master often routes several connections: one frame
    for them is one sendmsg for the master and one recvmsg for the worker.

The master counts any frame as a sign of life (`--heartbeat-timeout`); it
routes new sessions by LOAD's sessions plus the hand-offs not yet acknowledged.
"""

from __future__ import annotations

import array
import json
import socket
import sys
from collections.abc import Iterator

# master -> worker
SPEC = b"C"
HANDOFF = b"H"
RELAY = b"M"
STOP = b"S"
# both ways
HANDOVER = b"V"
# both ways: a request for a session handed over, and its socket
FORWARD = b"G"
# both ways: a draining worker's sessions have moved; the master's answer
EMPTIED = b"J"
# master -> worker, after a HANDOVER
REPLAY = b"W"
# Relayed messages the master keeps per worker for REPLAY.
REPLAY_KEEP = 4096
RESTORED = b"Z"
# worker -> master
READY = b"R"
HANDBACK = b"B"
PUBLISH = b"P"
HEARTBEAT = b"T"
LOAD = b"L"
ACK = b"A"
ERROR = b"E"
SESSION = b"X"
RESTORE = b"Y"

MORE = 0x01

FRAGMENT = 60 * 1024
MAX_FRAME = FRAGMENT + 2
BUFFER_BYTES = 1 << 20
# Client fds one HANDOFF frame may carry (the kernel's limit is SCM_MAX_FD, 253).
MAX_FDS = 64
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i", [0]).itemsize)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A (master end, worker end) channel pair with roomy buffers."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, BUFFER_BYTES)
            except OSError:
                pass
    return a, b


def frames(kind: bytes, payload: bytes = b"", flags: int = 0) -> Iterator[bytes]:
    """Encode one message as one or more frames."""
    if len(payload) <= FRAGMENT:
        yield kind + bytes([flags]) + payload
        return
    for i in range(0, len(payload), FRAGMENT):
        more = MORE if i + FRAGMENT < len(payload) else 0
        yield kind + bytes([flags | more]) + payload[i:i + FRAGMENT]


def fd_ancillary(fd: int) -> list[tuple[int, int, bytes]]:
    """The SCM_RIGHTS ancillary data that passes `fd` (one C int, native order)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(_INT, _ORDER, signed=True))]


def fds_ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """The SCM_RIGHTS ancillary data that passes `fds` (C ints, native order),
    at most MAX_FDS of them."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


_INT = array.array("i").itemsize
_ORDER = sys.byteorder


def recv_frame(sock: socket.socket) -> tuple[bytes, int, bytes, list[int]] | None:
    """Receive one frame: (kind, flags, payload, fds), or None at EOF.

    Received fds are close-on-exec, so a worker spawned later never inherits
    them. Raises BlockingIOError when nothing is queued (non-blocking socket).
    """
    data, ancdata, msg_flags, _ = sock.recvmsg(MAX_FRAME, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[: len(cdata) - (len(cdata) % arr.itemsize)])
            fds.extend(arr)
    if msg_flags & socket.MSG_CTRUNC:
        # More fds than we asked for: a broken or hostile peer. Close them all.
        for fd in fds:
            _close_fd(fd)
        raise ValueError("channel frame carried unexpected fds")
    if not data and not fds:
        return None
    if len(data) < 2:
        for fd in fds:
            _close_fd(fd)
        raise ValueError("short channel frame")
    return data[:1], data[1], data[2:], fds


class Joiner:
    """Reassembles fragmented messages; one per receiving end."""

    def __init__(self) -> None:
        self._parts: dict[bytes, list[bytes]] = {}

    def feed(self, kind: bytes, flags: int, payload: bytes) -> bytes | None:
        """The whole payload once its last frame arrived, else None."""
        parts = self._parts.get(kind)
        if flags & MORE:
            self._parts.setdefault(kind, []).append(payload)
            return None
        if parts:
            parts.append(payload)
            del self._parts[kind]
            return b"".join(parts)
        return payload


def encode_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _close_fd(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
