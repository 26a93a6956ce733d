"""The master-worker channel: one SOCK_SEQPACKET socketpair per worker.

Each datagram is one frame: a kind byte, a flags byte, then the payload.
A hand-off frame carries exactly one client fd (SCM_RIGHTS). Payloads larger
than FRAGMENT are split into frames flagged MORE; the receiver joins them.
Seqpacket keeps frame boundaries and fds together, which a stream socket
does not. Both sides use the same codec; the I/O loops differ (selectors in
the master, eventlet in the workers).
"""

from __future__ import annotations

import array
import json
import socket
from collections.abc import Iterator

# master -> worker
SPEC = b"C"  # JSON: what the worker serves and how (Redis URL included); always the first message
HANDOFF = b"H"  # one client fd; the worker serves its first request whatever it names
RELAY = b"P"  # a pub/sub message published by another worker
STOP = b"S"  # drain and exit
# worker -> master
READY = b"R"  # app imported, serving
HANDBACK = b"B"  # one client fd whose next request belongs to another worker
PUBLISH = b"P"  # a pub/sub message for every other worker
STATS = b"T"  # JSON load report; also the worker's heartbeat
ERROR = b"E"  # why the worker is about to exit (e.g. the app failed to import)

MORE = 0x01

FRAGMENT = 60 * 1024
MAX_FRAME = FRAGMENT + 2
BUFFER_BYTES = 1 << 20
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


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
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]


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
