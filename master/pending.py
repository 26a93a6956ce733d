"""Connections the master holds until their request line says where they go.

Each connection is peeked at (MSG_PEEK: no byte is consumed) until a whole
request line is queued, then offered to the master for delivery (the choice
of worker is `router.choose`'s). A client that is slow, silent, or sends
something that is not HTTP gets a short error answer and a close; a partial
line never makes the loop spin, because SO_RCVLOWAT keeps the socket
unreadable until more bytes arrive.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from imcluster import httpline

log = logging.getLogger("imcluster.master")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    414: "URI Too Long",
    503: "Service Unavailable",
}
# After an error answer we read and drop what the client still sends, so the
# close does not turn into a reset that could destroy the answer in flight.
LINGER_SECONDS = 2.0
# A socket is peeked at before it is made non-blocking (most are routed at once).
PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def error_response(status: int, detail: str = "") -> bytes:
    body = (detail or REASONS[status]).encode() + b"\n"
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class Pending:
    __slots__ = ("sock", "fd", "deadline", "seen", "line", "closing", "watched")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.seen = 0  # bytes seen by the last peek
        self.line: httpline.RequestLine | None = None  # parsed, waiting for a worker
        self.closing = False  # answered with an error; lingering before close
        self.watched = False  # in `pending` and registered with the selector


class PendingConnections:
    """Owns every client socket between accept (or hand-back) and hand-off."""

    def __init__(self, selector: selectors.BaseSelector, header_timeout: float,
                 max_pending: int, deliver: Callable[[socket.socket, httpline.RequestLine],
                                                     bool | tuple[str | None, int, str]]):
        self.selector = selector
        self.header_timeout = header_timeout
        self.max_pending = max_pending
        # deliver(sock, line) -> True if taken (this table forgets the socket),
        # False if no worker can take it now (this table keeps it waiting), or
        # (cause, status, reason) to answer it that (a refusal counted under cause,
        # or the readiness answer, cause None).
        self.deliver = deliver
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.waiting: OrderedDict[int, Pending] = OrderedDict()
        self.counters = {"routed": 0, "bad_request": 0, "too_long": 0, "timeout": 0,
                         "evicted": 0, "unavailable": 0, "other_host": 0}
        self.tls_hint_after = 0.0  # monotonic time before which no TLS hint is logged

    def __len__(self) -> int:
        return len(self.pending) + len(self.waiting)

    def add(self, sock: socket.socket, now: float) -> None:
        """Take a fresh client socket (accepted, or handed back by a worker).

        Its request line is usually queued already: it is peeked at at once,
        and the socket is watched (registered, made non-blocking) only when
        it has to wait for more bytes or lingers after an error answer. A
        connection routed at once costs no selector call and no fcntl: the
        peek says MSG_DONTWAIT, and the worker makes the fd non-blocking."""
        if len(self.pending) >= self.max_pending:
            # Slowloris and idle floods fill this table; the oldest entry is the
            # likeliest abuser, since honest clients send their line at once.
            # It gets a best-effort 408 and an immediate close: no lingering,
            # so the table really shrinks.
            _, oldest = next(iter(self.pending.items()))
            self.counters["evicted"] += 1
            if not oldest.closing:
                try:
                    oldest.sock.send(error_response(408, "too many pending connections"))
                except OSError:
                    pass
            self._drop(oldest)
        self._examine(Pending(sock, now + self.header_timeout), now)

    def _watch(self, p: Pending) -> None:
        """Track `p` (deadline, eviction) and wake up when it is readable."""
        if not p.watched:
            p.sock.setblocking(False)
            self.pending[p.fd] = p
            self.selector.register(p.sock, selectors.EVENT_READ, self._on_readable)
            p.watched = True

    def _on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        p = self.pending.get(key.fd)
        if p is not None:
            self._examine(p, time.monotonic())

    def _examine(self, p: Pending, now: float) -> None:
        if p.closing:
            self._linger(p)
            return
        try:
            data = p.sock.recv(httpline.MAX_REQUEST_LINE + 2, PEEK)
        except (BlockingIOError, InterruptedError):
            self._watch(p)
            return
        except OSError:
            self._drop(p)
            return
        if not data:
            self._drop(p)  # the client went away before saying anything
            return
        try:
            line = httpline.parse(data)
        except httpline.Incomplete:
            p.seen = len(data)
            # Readable again only once a byte more than we have seen arrives.
            _set_lowat(p.sock, p.seen + 1)
            self._watch(p)
            return
        except httpline.BadRequest as e:
            self.counters["too_long" if e.status == 414 else "bad_request"] += 1
            if data[:1] == b"\x16" and data[1:2] == b"\x03":
                self._hint_tls(p, now)
            self._fail(p, e.status, e.reason, now)
            return
        if p.seen:
            _set_lowat(p.sock, 1)  # the option travels with the fd to the worker
        self._route(p, line)

    def _hint_tls(self, p: Pending, now: float) -> None:
        """Say once a minute, in the log, why a TLS client got 400: the first bytes
        were a TLS handshake record (content type 22, version 3.x; RFC 8446 5.1),
        and no imcluster port speaks TLS (it ends at HAProxy)."""
        if now < self.tls_hint_after:
            return
        self.tls_hint_after = now + 60.0
        try:
            host, port = p.sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "a client"
        log.warning("%s spoke TLS to this plain-HTTP port (answered 400; said once a "
                    "minute): TLS ends at HAProxy in front, `imcluster haproxy-config "
                    "--cert PEM` (README, HTTPS)", peer)

    def _route(self, p: Pending, line: httpline.RequestLine) -> None:
        fd = self._forget(p)
        verdict = self.deliver(p.sock, line)
        if verdict is True:
            self.counters["routed"] += 1
            return
        if verdict:
            self._refuse(p, verdict)
            return
        # No READY worker right now (all starting or restarting): hold it until
        # one is, or until its deadline. It is unregistered meanwhile, so a
        # client sending more bytes costs nothing.
        p.line = line
        self.waiting[fd] = p

    def retry_waiting(self) -> None:
        """Offer held connections again; call when a worker became READY."""
        for p in list(self.waiting.values()):
            fd = p.sock.fileno()
            verdict = self.deliver(p.sock, p.line)
            if not verdict:
                break
            self.waiting.pop(fd, None)
            if verdict is True:
                self.counters["routed"] += 1
            else:
                self._refuse(p, verdict)

    def _refuse(self, p: Pending, verdict: tuple[str | None, int, str]) -> None:
        cause, status, reason = verdict
        if cause is not None:
            self.counters[cause] = self.counters.get(cause, 0) + 1
        self._fail(p, status, reason, time.monotonic())

    def expire(self, now: float) -> None:
        """Answer or close every connection past its deadline."""
        for p in list(self.pending.values()):
            if p.deadline > now:
                continue
            if p.closing:
                self._drop(p)
            else:
                self.counters["timeout"] += 1
                self._fail(p, 408, "request line not received in time", now)
        for p in list(self.waiting.values()):
            if p.deadline > now:
                continue
            self.waiting.pop(p.sock.fileno(), None)
            self.counters["unavailable"] += 1
            self._fail(p, 503, "no worker is ready; try again", now)

    def close_all(self) -> None:
        for p in list(self.pending.values()) + list(self.waiting.values()):
            self._drop(p)

    def _fail(self, p: Pending, status: int, reason: str, now: float) -> None:
        try:
            # (a socket not watched yet is still blocking: never wait on it)
            p.sock.send(error_response(status, reason), socket.MSG_DONTWAIT)
            p.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(p)
            return
        _set_lowat(p.sock, 1)
        if p.watched:
            self.pending.move_to_end(p.fd)  # the eviction order: its time starts now
        else:
            self._watch(p)
        p.closing = True
        p.deadline = now + LINGER_SECONDS
        self._linger(p)

    def _linger(self, p: Pending) -> None:
        try:
            # Bounded, so a client that keeps sending cannot hold the loop.
            for _ in range(16):
                if not p.sock.recv(65536):
                    break
            else:
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._drop(p)

    def _forget(self, p: Pending) -> int:
        """Stop tracking and watching `p`; returns its fd."""
        fd = p.fd
        self.pending.pop(fd, None)
        self.waiting.pop(fd, None)
        if p.watched:
            p.watched = False
            try:
                self.selector.unregister(p.sock)
            except (KeyError, ValueError):
                pass
        return fd

    def _drop(self, p: Pending) -> None:
        self._forget(p)
        p.sock.close()


def _set_lowat(sock: socket.socket, n: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
    except OSError as e:
        if e.errno not in (errno.EBADF, errno.ENOTCONN):
            log.debug("SO_RCVLOWAT: %s", e)
