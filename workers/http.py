"""HTTP serving in a worker, one request at a time, never reading ahead.

eventlet's own protocol reads through a buffer, so the next request on a
keep-alive or pipelined connection could already sit in this process when it
belongs to a session on another worker. Here the read side takes exactly the
bytes of the current request (`ExactReader`), and before each further request
the protocol peeks at its request line: a sid that names another worker sends
the connection back to the master (the fd is handed over untouched: detached,
never shut down).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import time
import weakref
from collections.abc import Callable

import eventlet
import eventlet.hubs
import eventlet.patcher
import eventlet.wsgi
from eventlet.hubs import trampoline

from imcluster import httpline
from imcluster.workers import internals

log = logging.getLogger("imcluster.worker")
# The blocking select module (a patched worker's has no poll()); poll(0) never blocks.
_select = eventlet.patcher.original("select")

PEEK_BYTES = 64 * 1024
# eventlet.wsgi's own refusals of an oversized head, which it answers itself
# (400) from handle_one_request. internals: eventlet-wsgi-canned-refusals
_CANNED_400 = (eventlet.wsgi.HeaderLineTooLong, eventlet.wsgi.HeadersTooLarge)
STATE_HANDED = "handed back"
# environ key: close the connection after this response (close_refused_upgrades).
CLOSE_AFTER = "imcluster.close_after"

# Client sockets whose session moved to another worker, or whose request was
# forwarded to it (workers/handover.py): their connection ends here without a
# shutdown, which would end it for the new owner too.
handed_over: weakref.WeakSet = weakref.WeakSet()
# Client sockets received with their next request's head already read by the
# worker that sent them (a polling session's parked GET, a forwarded request):
# the request is served from these bytes, then the rest from the socket.
replay_heads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class HandingOver(BaseException):
    """Ends a request, or a WebSocket's reader, whose connection leaves for
    another worker (workers/handover.py), without an answer or a shutdown.

    A BaseException, like eventlet's Timeout, so that no `except Exception`
    on the way (eventlet's frame reader and request handler, ours) takes it
    for an error and writes a 500 or closes the socket."""


class ExactReader:
    """A file-like read side that never consumes bytes past what is asked for.

    `readline` may consume up to the end of the header block (the first blank
    line) at once: from any point inside a request, that blank line still
    belongs to the same request, so nothing of the next one is taken.

    Once its socket is in `handed_over` it reads nothing more (EOF): the
    connection belongs to another worker, which reads the rest of the request
    (a forwarded POST's body) and the next ones. eventlet, when a request ends
    by HandingOver on a kept-alive connection, discards the unread rest of the
    body in its `finally` (internals: eventlet-wsgi-discard-body); read from
    the socket, that took the body from the new owner (whose POST then waited
    for it until the client gave up) or, when the body was not there yet, the
    first bytes of the client's next request there ("Bad HTTP/0.9 request
    type" at the new owner).
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buf = bytearray()
        self.closed = False

    def _peek(self) -> bytes:
        return self._sock.recv(PEEK_BYTES, socket.MSG_PEEK)

    def _take(self, n: int) -> bytes:
        """Consume exactly n bytes that a peek has shown are queued."""
        out = bytearray()
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def readline(self, limit: int = -1) -> bytes:
        if self._sock in handed_over:
            return b""
        limit = limit if limit is not None and limit >= 0 else 1 << 62
        while True:
            i = self._buf.find(b"\n", 0, limit)
            if i >= 0 or len(self._buf) >= limit:
                n = i + 1 if i >= 0 else limit
                line = bytes(self._buf[:n])
                del self._buf[:n]
                return line
            data = self._peek()
            if not data:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            j = data.find(b"\r\n\r\n")
            if j >= 0:
                self._buf += self._take(j + 4)
                continue
            i = data.find(b"\n")
            # A partial line may be taken whole: its newline is still ahead,
            # inside this request.
            self._buf += self._take(i + 1 if i >= 0 else len(data))

    def read(self, n: int = -1) -> bytes:
        if self._sock in handed_over:
            return b""
        if n is None or n < 0:
            out = bytes(self._buf)
            self._buf.clear()
            while chunk := self._sock.recv(PEEK_BYTES):
                out += chunk
            return out
        if len(self._buf) >= n:
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out
        out = bytes(self._buf)
        self._buf.clear()
        return out + self._take(n - len(out))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def take_head(self, n: int) -> None:
        """Consume a request's head, n bytes that a peek has shown are queued,
        into the buffer `readline` serves first."""
        if n:
            self._buf += self._take(n)

    def has_buffered(self) -> bool:
        return bool(self._buf)

    def close(self) -> None:
        self.closed = True


class GatherWriter:
    """The write side: gathers what eventlet's WSGI server writes, sends it on flush.

    eventlet writes a response as `writelines()` then `flush()`, so this costs
    nothing in syscalls, and unlike the 16 KB BufferedWriter of `makefile()`
    it holds no buffer between responses: a WebSocket keeps its HTTP
    connection's write side for its whole life, and that buffer was the
    largest single part of an idle connection's memory.
    """

    FLUSH_AT = 64 * 1024  # a large body goes out as it comes

    __slots__ = ("_sock", "_parts", "_size", "closed")

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._parts: list[bytes] = []
        self._size = 0
        self.closed = False

    def write(self, data) -> int:
        n = len(data)
        if n:
            self._parts.append(bytes(data))
            self._size += n
            if self._size >= self.FLUSH_AT:
                self.flush()
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts = []
            self._size = 0
            self._sock.sendall(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.flush()
            except OSError:  # the peer is gone: nothing left to tell it
                self._parts = []


def peek_request_line(sock: socket.socket, timeout: float) -> httpline.RequestLine | None:
    """Wait for the next request line on a kept-alive connection, without consuming it.

    Returns None when the client closes, goes silent past `timeout`, or
    sends a line we cannot parse (the caller then lets the normal request
    handling answer it).
    """
    lowat = False
    deadline = time.monotonic() + timeout
    raw = internals.raw_socket(sock)  # internals: eventlet-green-fd
    try:
        while True:
            try:
                data = raw.recv(httpline.MAX_REQUEST_LINE + 2, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                return None
            if data:
                try:
                    return httpline.parse(data)
                except httpline.BadRequest:
                    return httpline.RequestLine("?", "", "", None)
                except httpline.Incomplete:
                    lowat = True
            if not _sleep_for_more(raw, len(data) if data else 0, deadline):
                return None
    except OSError:
        return None
    finally:
        if lowat:
            _reset_low_water(raw)


def _sleep_for_more(raw: socket.socket, seen: int, deadline: float) -> bool:
    """Sleep until more than `seen` bytes are queued on `raw` (0: anything), or
    until `deadline` (a time.monotonic() value): False then. With `seen`, the
    socket's SO_RCVLOWAT is raised to seen + 1 so that a slow client, queued
    bytes already seen, does not wake us in a tight loop; the caller sets it
    back with `_reset_low_water` when done."""
    if seen:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, seen + 1)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    try:
        trampoline(raw, read=True, timeout=remaining, timeout_exc=socket.timeout)
    except TimeoutError:
        return False
    return True


def _reset_low_water(raw: socket.socket) -> None:
    """SO_RCVLOWAT back to 1 after `_sleep_for_more` raised it."""
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    except OSError:
        pass


HEAD_COMPLETE, HEAD_EOF, HEAD_TIMEOUT = "complete", "eof", "timeout"


def await_head(sock: socket.socket, deadline: float) -> tuple[str, int]:
    """Wait, without consuming it, until a request's whole head is queued on `sock`.

    A head is the request line and the header lines up to the empty line
    that ends them (RFC 9112 §2.1): bytes that stop before that line are not
    a request. Empty lines before the request line are consumed here (RFC
    9112 §2.2: a server SHOULD ignore at least one). `deadline` is a
    time.monotonic() value. Returns (HEAD_COMPLETE, the head's length in
    bytes), or (HEAD_COMPLETE, 0) when PEEK_BYTES are queued with no end in
    sight (the request handling then refuses the size), or (HEAD_EOF, 0)
    when the client closed first or the socket failed, or (HEAD_TIMEOUT, 0).
    Like `peek_request_line`, it sleeps until a byte more than it has seen
    arrives (SO_RCVLOWAT), so a client dripping bytes costs no busy loop.
    """
    lowat = False
    size = 4096
    raw = internals.raw_socket(sock)  # internals: eventlet-green-fd
    try:
        while True:
            try:
                # Most heads fit the first few KB; a larger peek only when not.
                data = raw.recv(size, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                return HEAD_EOF, 0
            if data:
                blank = len(data) - len(data.lstrip(b"\r\n"))
                if blank:
                    raw.recv(blank)  # empty lines before the request line
                    continue
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    return HEAD_COMPLETE, end + 4
                end = data.find(b"\n\n")
                if end >= 0:
                    return HEAD_COMPLETE, end + 2
                if len(data) >= PEEK_BYTES:
                    return HEAD_COMPLETE, 0
                if len(data) >= size:
                    size = PEEK_BYTES
                    continue
                if _peer_done(raw):
                    return HEAD_EOF, 0  # queued bytes, then the FIN: no more will come
                lowat = True
            if not _sleep_for_more(raw, len(data) if data else 0, deadline):
                return HEAD_TIMEOUT, 0
    except OSError:
        return HEAD_EOF, 0
    finally:
        if lowat:
            _reset_low_water(raw)


def _peer_done(raw: socket.socket) -> bool:
    """True when the peer has shut down its sending side (POLLRDHUP), even
    with bytes still queued (a peek cannot tell, and the fd stays readable)."""
    p = _select.poll()
    p.register(raw.fileno(), _select.POLLRDHUP)
    return any(ev & (_select.POLLRDHUP | _select.POLLHUP | _select.POLLERR)
               for _, ev in p.poll(0))


# The head parse_head() takes; anything else goes through http.server's parse.
# A request line: method, an origin-form target of visible ASCII (not "//",
# which http.server rewrites), HTTP/1.0 or HTTP/1.1, single spaces.
_PLAIN_REQUEST_LINE = re.compile(rb"([A-Z]+) (/(?!/)[\x21-\x7e]*) (HTTP/1\.[01])\r\n")
# A header line: a token, ":", optional blanks, then visible ASCII, space or tab
# (no obs-fold, no bare CR or LF, no byte past 0x7e).
_PLAIN_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*)")
# Below http.client's and eventlet's own limits (100 fields, 8 KB a line, 64 KB
# a head), so that a head near them still gets their errors.
PLAIN_HEAD = True  # off: every head goes through http.server's parse
_PLAIN_MAX_FIELDS = 64
_PLAIN_MAX_LINE = 4096
_PLAIN_MAX_HEAD = 32 * 1024


# internals: eventlet-wsgi-headers, eventlet-wsgi-headers-request,
# eventlet-wsgi-headers-response
class PlainHead:
    """A request's header fields, as much of email.message.Message as eventlet
    and http.server read of `self.headers` (`get`, `_headers`, and
    `get_content_type` when there is no Content-Type), for a head that
    `parse_head` accepted.

    For such a head `email`'s parse (compat32) gives each field as
    (name, value with leading blanks removed), in order, and `get` the first
    field of that name in any case: the same values here, without the
    feedparser (a fifth of a polling request's instructions in a worker).
    """

    __slots__ = ("_headers",)

    def __init__(self, fields: list[tuple[str, str]]):
        self._headers = fields

    def get(self, name: str, failobj=None):
        name = name.lower()
        for k, v in self._headers:
            if k.lower() == name:
                return v
        return failobj

    def get_content_type(self) -> str:
        # email.message.Message's answer when the head has no Content-Type.
        ct = self.get("content-type")
        if ct is not None:  # never asked so (eventlet asks only without one)
            raise AssertionError("get_content_type with a Content-Type field")
        return "text/plain"


def parse_head(request_line: bytes, fields: bytes | bytearray
               ) -> tuple[str, str, str, PlainHead] | None:
    """(method, target, version, fields) of a plain HTTP/1.x head, or None.

    `request_line` ends with CRLF; `fields` is the rest of the head, each field
    line ending with CRLF and the whole ending with the empty line (b"\r\n"
    when there are no fields). None when either is anything but the plain
    form above (`_PLAIN_REQUEST_LINE`, `_PLAIN_FIELD`, within the limits):
    the caller then lets http.server parse it, with its own errors (RFC 9112
    §2-§5 allow more than this takes: obs-fold, bare LF, other bytes).
    """
    m = _PLAIN_REQUEST_LINE.fullmatch(request_line)
    if m is None or len(fields) > _PLAIN_MAX_HEAD:
        return None
    if fields == b"\r\n":
        out: list[tuple[str, str]] = []
    else:
        if fields[-4:] != b"\r\n\r\n":
            return None
        lines = bytes(fields[:-4]).split(b"\r\n")
        if len(lines) > _PLAIN_MAX_FIELDS:
            return None
        out = []
        match = _PLAIN_FIELD.fullmatch
        for line in lines:
            f = match(line)
            if f is None or len(line) > _PLAIN_MAX_LINE:
                return None
            out.append((f[1].decode("ascii"), f[2].decode("ascii")))
    return m[1].decode("ascii"), m[2].decode("ascii"), m[3].decode("ascii"), PlainHead(out)


def error_response(status: int, reason: str) -> bytes:
    """A short plain-text error answer that closes the connection (no server banner)."""
    body = f"{status} {reason}\n".encode("ascii")
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("ascii") + body


def make_protocol(worker_id: int, host_id: int, hand_back: Callable[[socket.socket], bool],
                  keepalive: float, idle: dict, header_timeout: float = 10.0,
                  nodelay_set: bool = False):
    """An eventlet HttpProtocol that serves only this worker's requests.

    While a kept-alive connection waits for its next request its socket is in
    `idle` (socket -> the greenlet waiting on it), so a draining worker can close
    exactly those (no request in flight), or, with hand-over, pass them back to
    the master (`release_idle`).

    A request's head (request line and headers) must be whole within
    `header_timeout` seconds (the master's --header-timeout): counted from
    the hand-off for the connection's first request (the master has already
    bounded the request line from the accept), and from the arrival of the
    request line for each further one (the wait for that line is the
    keep-alive's, `keepalive` seconds). Past it the answer is 408 and the
    connection closes; a client that closes before its head ends gets no
    answer, and no request is served.

    `nodelay_set`: every client socket already has TCP_NODELAY (the master sets
    it on its listener, and Linux copies it to each accepted socket), so the
    protocol does not set it again, one setsockopt per connection less.
    """

    # internals: eventlet-wsgi-conn-state (self.request, self.conn_state)
    class ClusterProtocol(eventlet.wsgi.HttpProtocol):
        handed_back = False

        # internals: eventlet-wsgi-setup
        def setup(self) -> None:
            conn = self.connection = self.request
            if not nodelay_set:
                try:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                except OSError:
                    pass
            self.rfile = ExactReader(conn)
            head = replay_heads.pop(conn, None)
            if head:
                self.rfile._buf += head
            self.wfile = GatherWriter(conn)

        # internals: eventlet-wsgi-handle (a copy of eventlet's loop, with the peek)
        def handle(self) -> None:
            # The master routed the first request here; it is ours whatever it names.
            self.close_connection = True
            first = True
            deadline = time.monotonic() + header_timeout
            while True:
                if not first:
                    if not self._next_is_ours():
                        break
                    deadline = time.monotonic() + header_timeout
                first = False
                if not self.rfile.has_buffered() and not self._head_arrives(deadline):
                    break
                try:
                    self.handle_one_request()
                except HandingOver:
                    break  # the connection left with its request (finish() knows)
                # internals: eventlet-wsgi-canned-refusals
                if len(self.raw_requestline) >= self.server.url_length_limit:
                    # eventlet answered 414 itself, without a word in any log.
                    log.warning("bad request from %s: 414 Request URI Too Long (a request "
                                "line of %d bytes or more)", self.client_address[0],
                                self.server.url_length_limit)
                if internals.conn_status(self.conn_state) == internals.WSGI_STATE_CLOSE:
                    self.close_connection = 1
                elif getattr(self, "environ", None) and self.environ.get(CLOSE_AFTER):
                    # The app answered "Connection: close" (a refused WebSocket
                    # upgrade): eventlet sends the header but keeps the connection.
                    self.close_connection = 1
                else:
                    internals.set_conn_status(self.conn_state, internals.WSGI_STATE_IDLE)
                if self.close_connection:
                    break

        def _head_arrives(self, deadline: float) -> bool:
            """Wait for the whole head of the next request (`await_head`); on a
            timeout answer 408. False: nothing is to be served."""
            state, length = await_head(self.connection, deadline)
            if state == HEAD_COMPLETE:
                # Taken now, the head is read from the buffer, with no second peek.
                self.rfile.take_head(length)
                return True
            if state == HEAD_TIMEOUT:
                log.warning("request head from %s not complete within %gs: 408",
                            self.client_address[0], header_timeout)
                try:
                    self.wfile.write(error_response(408, "Request Timeout"))
                    self.wfile.flush()
                except OSError:
                    pass
            return False

        # internals: eventlet-wsgi-parse-request, eventlet-wsgi-headers
        def parse_request(self) -> bool:
            """http.server's parse, then an absolute-form target made origin-form
            with its host as Host (httpline.split_absolute, RFC 9112 §3.2.2), which
            the WSGI environ and Engine.IO route. A plain head (`parse_head`),
            whole in the read buffer, is parsed here instead, with the same results."""
            if self._parse_plain():
                return True
            try:
                if not super().parse_request():
                    return False
            except _CANNED_400 as e:
                # eventlet answers these itself (400) and logs nothing; say it as
                # send_error says http.server's refusals.
                # internals: eventlet-wsgi-canned-refusals
                why = "Header Line Too Long" if isinstance(
                    e, eventlet.wsgi.HeaderLineTooLong) else "Headers Too Large"
                log.warning("bad request from %s: 400 %s (a header line of %d bytes or more, "
                            "or headers of more than %d in all)", self.client_address[0], why,
                            eventlet.wsgi.MAX_HEADER_LINE, eventlet.wsgi.MAX_TOTAL_HEADER_SIZE)
                raise
            parts = httpline.split_absolute(self.path)
            if parts is not None:
                authority, self.path = parts
                if authority:
                    del self.headers["Host"]
                    self.headers["Host"] = authority
            return True

        # internals: http-server-parse-request (a copy of its outcome for a plain head)
        def _parse_plain(self) -> bool:
            """http.server's parse_request for a head `parse_head` accepts, when
            the head is whole in the read buffer (it is, after `_head_arrives`):
            the same attributes set, the same answer to Connection and Expect.
            False, with nothing consumed, for every other head."""
            if not PLAIN_HEAD:
                return False
            reader = getattr(self.rfile, "fp", None)  # eventlet's FileObjectForHeaders
            if type(reader) is not ExactReader:
                return False
            buf = reader._buf
            # The head's end, and nothing past it (ExactReader never reads on).
            if buf != b"\r\n" and buf.find(b"\r\n\r\n") != len(buf) - 4:
                return False
            raw = self.raw_requestline
            parsed = parse_head(raw, buf)
            if parsed is None:
                return False
            buf.clear()
            self.command, self.path, version, self.headers = parsed
            self.request_version = version
            self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
            # http.server: a 1.1 request to a 1.1 server keeps the connection
            # open unless it says close; anything else closes it unless it says
            # keep-alive (to a 1.1 server).
            self.close_connection = not (version == "HTTP/1.1"
                                         and self.protocol_version >= "HTTP/1.1")
            conntype = self.headers.get("Connection", "").lower()
            if conntype == "close":
                self.close_connection = True
            elif conntype == "keep-alive" and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            expect = self.headers.get("Expect", "")
            if (expect.lower() == "100-continue" and self.protocol_version >= "HTTP/1.1"
                    and version >= "HTTP/1.1"):
                return self.handle_expect_100()
            return True

        # internals: eventlet-wsgi-send-error
        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """http.server's error answer (a malformed request line, too many
            headers, an unsupported version...), plain and short, logged here."""
            reason = self.responses.get(code, ("Error",))[0]
            log.warning("bad request from %s: %d %s (%.200s)", self.client_address[0], code,
                        reason, message or reason)
            self.close_connection = True
            try:
                self.wfile.write(error_response(code, reason))
            except OSError:
                pass

        # internals: eventlet-wsgi-log-message
        def log_message(self, format: str, *args) -> None:
            log.info("%s: %s", self.client_address[0], format % args)

        def _next_is_ours(self) -> bool:
            if self.rfile.has_buffered():
                return True  # cannot happen with ExactReader; serve rather than lose bytes
            idle[self.connection] = eventlet.getcurrent()
            try:
                line = peek_request_line(self.connection, keepalive)
            except HandingOver:
                # A draining worker whose sessions moved (`release_idle`): the
                # master routes this connection's next request, which names a
                # session that is elsewhere now. Nothing of it was read here.
                if hand_back(self.connection):
                    self.handed_back = True
                    internals.set_conn_status(self.conn_state, STATE_HANDED)
                return False
            finally:
                idle.pop(self.connection, None)
            if line is None:
                return False
            owner = line.owner
            if owner == (host_id, worker_id):
                return True
            if owner is None and not line.is_handshake:
                return True  # a page or a file: any worker serves it
            # Another worker's session, a new session, or another host's session:
            # the master places the first two (least loaded) whatever connection
            # they arrive on, and refuses the last.
            # Flush before the fd leaves: the answer to the previous request
            # must reach the client before the next owner's answer.
            try:
                self.wfile.flush()
            except OSError:
                return False
            if hand_back(self.connection):
                self.handed_back = True
                internals.set_conn_status(self.conn_state, STATE_HANDED)
            return False

        # internals: eventlet-wsgi-finish
        def finish(self) -> None:
            if self.handed_back or self.connection in handed_over:
                # Never shutdown(): it would end the connection for its new owner too.
                try:
                    self.wfile.close()
                except OSError:
                    pass
                self.connection.close()
                return
            super().finish()

    return ClusterProtocol


def release_idle(idle: dict) -> None:
    """Pass every kept-alive connection waiting for its next request back to the
    master (HANDBACK) instead of closing it: a draining worker whose sessions were
    handed over, whose clients' next requests belong to their new owner."""
    hub = eventlet.hubs.get_hub()

    def release(sock, waiter) -> None:
        # Run by the hub: the waiter is parked in the peek exactly when it is
        # still in `idle` (it leaves `idle` before doing anything else).
        if idle.get(sock) is waiter:
            waiter.throw(HandingOver())

    for sock, waiter in list(idle.items()):
        hub.schedule_call_global(0, release, sock, waiter)


class FdListener:
    """What eventlet.wsgi.Server wants of a listening socket, for fds we receive."""

    family = socket.AF_INET

    def __init__(self, address: tuple[str, int]):
        self.address = address

    def getsockname(self) -> tuple[str, int]:
        return self.address

    def close(self) -> None:
        pass


def serve_connection(server: eventlet.wsgi.Server, sock: socket.socket,
                     on_close: Callable[[], None]) -> None:
    """Serve one handed-off client socket to its end (or its hand-back)."""
    try:
        addr = sock.getpeername()
    except OSError:
        addr = ("?", 0)
    conn = internals.new_conn_state(addr, sock)  # internals: eventlet-wsgi-conn-state
    try:
        server.process_request(conn)  # internals: eventlet-wsgi-process-request
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            log.exception("connection from %s failed", addr)
    except Exception:
        log.exception("connection from %s failed", addr)
    finally:
        # The protocol's finish() has usually shut down and closed it already
        # (a second shutdown would only raise EBADF): only an error on the way
        # leaves it open.
        if sock.fileno() != -1:
            if internals.conn_status(conn) != STATE_HANDED and sock not in handed_over:
                eventlet.greenio.shutdown_safe(sock)
            sock.close()
        on_close()


def close_refused_upgrades(wsgi):
    """Close the connection after a refused WebSocket upgrade.

    eventlet's WebSocketWSGI (python-engineio's WebSocket on eventlet) answers
    a bad upgrade (an unsupported Sec-WebSocket-Version: 426, a missing key:
    400) with `Connection: close`, but eventlet.wsgi keeps a keep-alive
    connection open whatever the app's headers say: the client waits for a
    close that never comes (a new-user trial). RFC 9110 9.6: a response with
    `close` ends the connection. Only requests that ask for an upgrade are
    looked at; the rest pass untouched."""
    def app(environ, start_response):
        if "HTTP_UPGRADE" not in environ:
            return wsgi(environ, start_response)

        def watched(status, headers, exc_info=None):
            if not status.startswith("101") and any(
                    k.lower() == "connection" and "close" in v.lower() for k, v in headers):
                environ[CLOSE_AFTER] = True
            return start_response(status, headers, exc_info)

        return wsgi(environ, watched)

    return app
