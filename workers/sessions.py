"""Engine.IO sessions that write WebSocket frames directly, and one pinger per worker.

python-engineio gives every WebSocket session two greenlets besides the one
reading it: a writer woken through a queue for every packet, and a pinger that
sleeps for the ping interval. On CPython 3.11 each greenlet holds its own
frame stack (16 KB at least) and its saved C stack, and every wake-up goes
through eventlet's hub: that was most of a worker's memory per idle
connection and 40% of its CPU in a room broadcast (docs/benchmarks.md).

Here a WebSocket session has one greenlet, its reader:

- `send()` builds the frame and writes it from the calling greenlet with one
  non-blocking send(). Server frames are not masked, so a broadcast (one
  Engine.IO packet object for all its recipients) is framed once and the same
  bytes go to every member. Only when the kernel will not take a frame whole
  does a flusher greenlet start; it owns the socket until the backlog is out,
  keeping frames in order, and a client that lets more than
  WRITE_BACKLOG_LIMIT pile up is cut off (it reconnects) rather than
  buffered without bound.
- Pings come from one `Pinger` per Engine.IO server (one queue ordered by
  due time for PINGs, one for PONG deadlines) instead of one sleeping
  greenlet per session.

Polling sessions, WebSockets with permessage-deflate (`--ws-compression
yes`), and anything not on eventlet keep python-engineio's own paths. On the
wire this is Engine.IO v4 as specified, where python-engineio differs (see
ClusterSocket; tests/test_protocol.py), and tests drive it with
python-socketio's client, the JS socket.io-client and Chromium.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
import time
import urllib.parse

import engineio.socket
import eventlet
import eventlet.greenio
from engineio import exceptions as eio_exceptions  # internals: engineio-exceptions
from engineio import packet as eio_packet

from imcluster.workers import internals, speedups
from imcluster.workers import reactor as reactor_mod
from imcluster.workers.http import HandingOver, handed_over

log = logging.getLogger("imcluster.worker")

# A client this far behind (bytes written for it but not yet taken by its
# socket) is disconnected; it reconnects and starts afresh.
WRITE_BACKLOG_LIMIT = 8 * 1024 * 1024


def ws_frame(payload: str | bytes) -> bytes:
    """One final, unmasked RFC 6455 frame: text for str, binary for bytes."""
    if isinstance(payload, str):
        data, first = payload.encode(), 0x81
    else:
        data, first = bytes(payload), 0x82
    n = len(data)
    if n < 126:
        return bytes((first, n)) + data
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + data
    return struct.pack("!BBQ", first, 127, n) + data


def frame_of(pkt: eio_packet.Packet) -> bytes:
    """The WebSocket frame of an Engine.IO packet, built once per packet object."""
    # A dict lookup, not getattr: a miss (every unicast packet) would raise and
    # catch an AttributeError. internals: engineio-packet
    attrs = pkt.__dict__
    frame = attrs.get("_imcluster_ws_frame")
    if frame is None:
        frame = attrs["_imcluster_ws_frame"] = ws_frame(pkt.encode())
    return frame


def shut_down(ws, close_data=None) -> None:
    """What a WebSocket's close() does here: a close frame, then shutdown().

    The session's reader wakes with end-of-file and its connection closes the
    fd when it ends. eventlet's own close() closes the fd at once, and a
    reader waiting on it then waits for a descriptor epoll has forgotten,
    until its timeout (a drain or a stop would hang on it).
    """
    try:
        internals.send_closing_frame(ws, close_data)  # internals: eventlet-ws-closing-frame
    except OSError:
        pass
    try:
        eventlet.greenio.shutdown_safe(ws.socket)
    except OSError:
        pass


class FrameWriter:
    """Writes whole frames to one WebSocket, in order, without a greenlet of its own."""

    __slots__ = ("ws", "sock", "raw", "backlog", "backlog_bytes", "flusher", "closing",
                 "broken")

    def __init__(self, ws):
        self.ws = ws
        self.sock = ws.socket  # eventlet GreenSocket (internals: eventlet-ws-socket)
        self.raw = internals.raw_socket(ws.socket)  # internals: eventlet-green-fd
        self.backlog: collections.deque | None = None  # set while a flusher owns the socket
        self.backlog_bytes = 0
        self.flusher = None
        self.closing = False
        self.broken = False
        # eventlet's own frames (pongs, close) go the same way.
        internals.route_ws_writes(ws, self.write)  # internals: eventlet-ws-send

    def write(self, frame: bytes) -> None:
        if self.broken:
            return
        if self.backlog is not None:
            self.backlog.append(frame)
            self.backlog_bytes += len(frame)
            if self.backlog_bytes > WRITE_BACKLOG_LIMIT:
                self._break(f"more than {WRITE_BACKLOG_LIMIT} bytes waiting")
            return
        try:
            sent = self.raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._break(None)
            return
        if sent < len(frame):
            rest = frame[sent:]
            self.backlog = collections.deque((rest,))
            self.backlog_bytes = len(rest)
            self.flusher = eventlet.spawn(self._flush)

    def _flush(self) -> None:
        try:
            while self.backlog:
                data = self.backlog.popleft()
                self.backlog_bytes -= len(data)
                self.sock.sendall(data)  # green: waits for room, up to the socket's timeout
        except OSError:  # timeouts included
            self._break(None)
            return
        finally:
            self.flusher = None
        self.backlog = None
        self.backlog_bytes = 0
        if self.closing:
            self._close_now()

    def _break(self, why: str | None) -> None:
        """Stop writing and wake the session's reader, which then closes it."""
        if why:
            log.info("closing a WebSocket: %s", why)
        self.broken = True
        self.backlog = None
        self.backlog_bytes = 0
        try:
            eventlet.greenio.shutdown_safe(self.sock)
        except OSError:
            pass

    def finish(self) -> None:
        """Close the WebSocket once every frame written so far has gone out."""
        if self.closing:
            return
        self.closing = True
        if self.backlog is None:
            self._close_now()

    def _close_now(self) -> None:
        self.ws.close()  # shut_down(), above

    def join(self) -> None:
        flusher = self.flusher
        if flusher is not None:
            flusher.wait()


class BufferedReceive:
    """The read side of a WebSocket: one recv() takes what is queued, frames are cut from it.

    eventlet reads a frame in three or four recv() calls (header, length,
    mask, payload), each a syscall and often a wait in the hub. This reads
    what the kernel holds in one call and serves those small reads from it.
    Nothing is kept between bursts, so an idle connection holds no buffer.
    """

    CHUNK = 64 * 1024

    __slots__ = ("sock", "buf", "pos", "boundary", "parked", "raw", "fd", "reactor",
                 "ready", "more", "waiter", "since", "wait_limit")

    def __init__(self, sock, rest: bytes = b""):
        self.sock = sock
        self.buf = rest
        self.pos = 0
        # Waits go through the worker's reactor (workers/reactor.py) rather
        # than eventlet's hub: `reactor` is set while the socket is
        # registered there; `ready` is false only after a read found the
        # kernel's queue empty (EAGAIN, or a short read while `more` is false:
        # the next byte then reports an edge; workers/reactor.py says when a
        # short read proves nothing, and sets `more`).
        self.raw = internals.raw_socket(sock)  # internals: eventlet-green-fd
        self.fd = -1
        self.reactor = None
        self.ready = True
        self.more = True  # until a read says EAGAIN: no event seen yet
        self.waiter = None
        self.since = 0.0
        self.wait_limit: float | None = None
        # For a session hand-over (workers/handover.py): `boundary` is set by
        # the read loop before each message and cleared by the message's first
        # byte; `parked` while waiting in the socket's recv(). Both true, with
        # nothing buffered: the reader may be stopped and nothing is lost.
        self.boundary = False
        self.parked = False

    def recv(self, n: int) -> bytes:
        buf, pos = self.buf, self.pos
        if pos < len(buf):
            self.boundary = False
            out = buf[pos:pos + n]
            pos += len(out)
            if pos >= len(buf):
                self.buf, self.pos = b"", 0
            else:
                self.pos = pos
            return out
        self.parked = True
        try:
            data = self._recv(max(n, self.CHUNK))
        finally:
            self.parked = False
        self.boundary = False
        if len(data) <= n:
            return data
        self.buf, self.pos = data, n
        return data[:n]

    def fill(self) -> bool:
        """Wait for bytes if none are buffered; False at end of file (nothing
        taken: the next recv() sees it again, as a socket does)."""
        if self.pos < len(self.buf):
            return True
        self.parked = True
        try:
            data = self._recv(self.CHUNK)
        finally:
            self.parked = False
        if not data:
            return False
        self.buf, self.pos = data, 0
        return True

    # internals: eventlet-socket-closed (a copy of GreenSocket._recv_loop's rules)
    def _recv(self, size: int) -> bytes:
        """What the green socket's recv(size) returns (eventlet's _recv_loop:
        ECONNRESET, ENOTCONN and ESHUTDOWN read as end of file; socket.timeout
        after the socket's timeout), waiting through the reactor."""
        raw = self.raw
        while True:
            if self.ready:
                try:
                    data = raw.recv(size)
                except BlockingIOError:
                    self.ready = self.more = False
                except OSError as e:
                    if e.errno in reactor_mod.CLOSED_ERRNOS:
                        return b""
                    raise
                else:
                    # A short read empties the queue, unless an event said it
                    # may stop before an end of file or an urgent mark (`more`).
                    if len(data) < size and not self.more and data:
                        self.ready = False
                    return data
            if self.reactor is None:
                if self.fd < 0:
                    self.fd = raw.fileno()
                self.reactor = reactor_mod.reactor()
                self.reactor.register(self, self.fd)
            self.wait_limit = self.sock.gettimeout()
            reactor_mod.wait_readable(self)
            self.ready = True  # woken: by an event, or by whoever switched here

    def detach(self) -> None:
        """Leave the reactor: before the socket is handed over or closed (an
        epoll registration follows the open socket, not its number)."""
        r = self.reactor
        if r is not None:
            self.reactor = None
            r.unregister(self, self.fd)
        self.ready = self.more = True

    def take_text(self, limit: int) -> str | None:
        """The next message if the buffer holds it whole as one final, masked,
        uncompressed text frame of 1 to min(limit, 65535) bytes of valid UTF-8;
        else None, with nothing taken (eventlet's reader then reads it: other
        frames, and every error, stay eventlet's to handle)."""
        buf, pos = self.buf, self.pos
        end = len(buf)
        if end - pos < 6 or buf[pos] != 0x81:  # FIN, no RSV bits, opcode 1 (text)
            return None
        n = buf[pos + 1]
        if n < 0x80:  # a client's frame without a mask: eventlet refuses it
            return None
        n &= 0x7F
        start = pos + 2
        if n == 126:
            if end - pos < 8:
                return None
            n = (buf[start] << 8) | buf[start + 1]
            start += 2
        elif n == 127 or n == 0:
            return None
        stop = start + 4 + n
        if n > limit or stop > end:
            return None
        try:
            text = speedups.apply_mask(buf[start + 4:stop], buf[start:start + 4], n).decode()
        except UnicodeDecodeError:
            return None
        self.boundary = False
        if stop >= end:
            self.buf, self.pos = b"", 0
        else:
            self.pos = stop
        return text

    def __getattr__(self, name):  # shutdown, close, fileno...: the socket's own
        return getattr(self.sock, name)


def next_message(ws, buf: BufferedReceive):
    """The WebSocket's next message, as eventlet's ws.wait() returns it (str, bytes,
    or None once the connection closed); a text frame already whole in the buffer
    is cut from it here, without eventlet's frame reader (a third of a worker's
    busy time under the echo benchmark, docs/benchmarks.md)."""
    try:
        if not buf.fill():
            return ws.wait()  # end of file: eventlet's reader sees it and ends
    except Exception:
        # What eventlet's frame reader does when the socket fails under it
        # (RFC6455WebSocket._iter_frames): a close frame 1011, then the error.
        # internals: eventlet-ws-iter-frames
        ws.close(close_data=(1011, "Internal Server Error"))
        raise
    text = buf.take_text(min(ws.max_frame_length, 65535))
    return ws.wait() if text is None else text


class Schedule:
    """Sessions due for one action after one fixed delay, served by one greenlet.

    Every entry gets the same delay, so appending keeps the deque in time
    order and the greenlet only ever sleeps until its head: no entry added
    later can be due earlier.
    """

    def __init__(self, action):
        self.action = action  # action(socket, token)
        self.due: collections.deque = collections.deque()  # (when, socket, token)
        self.runner = None

    def add(self, delay: float, s: engineio.socket.Socket, token=None) -> None:
        self.due.append((time.monotonic() + delay, s, token))
        if self.runner is None:
            self.runner = eventlet.spawn(self._run)

    def _run(self) -> None:
        due = self.due
        try:
            while due:
                wait = due[0][0] - time.monotonic()
                if wait > 0:
                    eventlet.sleep(wait)
                    continue
                _, s, token = due.popleft()
                try:
                    self.action(s, token)
                except Exception:  # one session's trouble must not stop the others'
                    log.exception("%s: ping schedule", getattr(s, "sid", "?"))
        finally:
            self.runner = None


class Pinger:
    """Sends every session's Engine.IO PING when its interval is up, and closes
    the session when no PONG came within the ping timeout: two greenlets per
    Engine.IO server instead of one per session.

    python-engineio closes a silent session only when its service task next
    passes by (up to a ping timeout late) or when something is sent to it; a
    client's pending poll meanwhile waits. Here the session closes at its
    deadline, and a poll it holds is answered with a CLOSE packet (Engine.IO
    v4, "Heartbeat": the server SHOULD consider the connection closed).
    """

    PING = eio_packet.Packet(eio_packet.PING)

    def __init__(self):
        self.pings = Schedule(self._ping)
        self.deadlines = Schedule(self._deadline)

    def add(self, s: engineio.socket.Socket) -> None:
        self.pings.add(s.server.ping_interval, s)

    def _ping(self, s: engineio.socket.Socket, _token) -> None:
        if s.closing or s.closed:
            return
        s.last_ping = sent = time.time()
        self.deadlines.add(s.server.ping_timeout, s, sent)
        try:
            s.send(self.PING)
        except Exception:  # a session that went away meanwhile
            pass

    def _deadline(self, s: engineio.socket.Socket, sent: float) -> None:
        # last_ping is cleared by the PONG (schedule_ping) and set anew by the next PING.
        if s.last_ping == sent and not s.closing and not s.closed:
            s.close_on_ping_timeout()


# internals: engineio-socket-attrs (every attribute of the session read below)
class ClusterSocket(internals.ENGINE_SOCKET):
    """python-engineio's Socket, with the direct WebSocket writer and the shared
    pinger, and the session rules of Engine.IO v4 where python-engineio 4.15
    differs (docs/engine.io-protocol/v4-current.md in socketio/socket.io, and
    its test suite):

    - the handshake gives pingInterval and pingTimeout in milliseconds,
      exactly (python-engineio sends the interval in whole seconds);
    - a second GET while one is pending closes the session and is refused
      ("Receiving data": the server MUST return 400 and close the session);
      the pending one is answered with a CLOSE packet;
    - a second WebSocket for a session is refused while the first is still
      probing, not only once it has upgraded ("WebSocket": a client MUST NOT
      open more than one WebSocket per session);
    - a session whose PONG is late closes with a CLOSE packet to the client
      (python-engineio's own close on ping timeout drops that packet);
    - a client's CLOSE packet over polling answers the pending GET with a
      NOOP, as the protocol's test suite expects (python-engineio: an empty
      body, which is no valid payload);
    - a polling POST whose payload holds a packet Engine.IO's parser refuses
      closes the session (`handle_post_request`).
    """

    writer: FrameWriter | None = None
    probe_noop = None  # the NOOP that ends the pending poll when an upgrade begins
    polling = False  # a GET poll is waiting for packets
    ws_claimed = False  # a WebSocket is open or opening for this session
    ping_scheduled = False  # the first PING was scheduled (after the handshake)
    reader = None  # the greenlet reading the WebSocket (a hand-over stops it)
    receive_buffer: BufferedReceive | None = None
    handover_state: str | None = None  # "stopping", "moved", "failed" (workers/handover.py)
    handover_stopped = None  # an eventlet Event: the reader stopped for a hand-over
    handover_done = None  # an eventlet Event: True once the session left
    handover_parked = None  # an eventlet Event: what became of the GET a hand-over asked for

    def _eventlet(self) -> bool:
        return self.server.async_mode == "eventlet"

    # internals: engineio-socket-send, engineio-open-packet
    def send(self, pkt):
        if pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
            pkt.data.update(handshake_timings(self.server))
        writer = self.writer
        if writer is None:
            return super().send(pkt)
        if self.check_ping_timeout():
            writer.write(frame_of(pkt))
            # As python-engineio's send(), for apps built with engineio_logger=True.
            logger = self.server.logger
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: Sending packet %s data %s", self.sid,
                            eio_packet.packet_names[pkt.packet_type],
                            pkt.data if not isinstance(pkt.data, bytes) else "<binary>")

    # internals: engineio-socket-close
    def close(self, wait=True, abort=False, reason=None):
        writer = self.writer
        if writer is None:
            return super().close(wait=wait, abort=abort, reason=reason)
        # Nothing reads the queue any more, so never wait on it.
        super().close(wait=False, abort=abort, reason=reason)
        writer.finish()
        if wait:
            writer.join()

    # internals: engineio-socket-poll (a copy, changed)
    def poll(self):
        """python-engineio's poll, except that a poll ended by an upgrade's probe
        takes nothing queued after the probe's NOOP: that goes out on the
        WebSocket, in order. (A client may read its last poll and its new
        WebSocket at the same time: python-engineio's client does not pause
        polling before it upgrades, as the protocol asks.)"""
        if self.polling:
            # Engine.IO v4, "Receiving data": a second active GET closes the
            # session; the pending GET takes the CLOSE packet, this one gets 400.
            self.close(wait=False, abort=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise DuplicatePoll("a GET poll is already pending for this session")
        empty = self.server.get_queue_empty_exception()
        self.polling = True
        try:
            while True:
                try:
                    pkt = self.queue.get(
                        timeout=self.server.ping_interval + self.server.ping_timeout)
                    self.queue.task_done()
                except empty:
                    raise eio_exceptions.QueueEmpty() from None
                if pkt is not PARK:
                    break
                parked = self.handover_parked
                if parked is None or parked.ready():
                    continue  # a mark left by a hand-over that gave up
                # A hand-over (workers/handover.py) asks for this GET: it
                # leaves unanswered, with its socket, for the session's new
                # owner to answer. If the move fails, it waits on here.
                self.handover_parked.send("parked")
                if self.handover_done.wait():
                    raise HandingOver()
        finally:
            self.polling = False
        packets = [pkt]
        if pkt is None:
            return []
        if pkt is not self.probe_noop:
            for pkt in self._take_queued():
                if pkt is None:
                    self.queue.put(None)  # the close mark stays for the next poll
                    break
                if pkt is PARK:
                    parked = self.handover_parked
                    if parked is None or parked.ready():
                        continue  # a mark left by a hand-over that gave up
                    # The hand-over asked too late: this GET is answered here,
                    # and what was queued after the mark moves with the session.
                    parked.send("answered")
                    break
                packets.append(pkt)
                if pkt is self.probe_noop:
                    break
        return packets

    def _take_queued(self):
        """What the queue holds now, in order, without waiting (None: closed)."""
        empty = self.server.get_queue_empty_exception()
        while True:
            try:
                pkt = self.queue.get(block=False)
            except empty:
                return
            self.queue.task_done()
            yield pkt

    # internals: engineio-socket-check-ping-timeout (a copy)
    def check_ping_timeout(self):
        """python-engineio 4.15's check, closing through close_on_ping_timeout."""
        if self.closed:
            raise eio_exceptions.SocketIsClosedError()
        last_ping = self.last_ping
        if last_ping and time.time() - last_ping > self.server.ping_timeout:
            self.close_on_ping_timeout()
            return False
        return True

    def close_on_ping_timeout(self) -> None:
        """Close the session because its PONG is late, with a CLOSE packet.

        python-engineio 4.15 closes with abort=False so that a CLOSE packet
        goes out, but close() sends it through send(), which checks the ping
        timeout again and drops it: forget the ping first.
        """
        self.server.logger.info("%s: no PONG within the ping timeout, closing", self.sid)
        self.last_ping = None
        self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)

    # internals: engineio-socket-handle-post-request (a copy, changed), engineio-payload-jsonp
    def handle_post_request(self, environ):
        """Read a long-polling POST's payload and receive its packets in order.

        python-engineio 4.15's, except for a payload with a packet Engine.IO's
        parser refuses: a type other than 0-6 (or `b`, base64), an empty packet
        (an empty body, a stray separator), a body that is not UTF-8. Node's
        engine.io (engine.io-parser `decodePayload` stops at the first such
        packet; `Socket.onPacket` closes on it, "parse error") handles the
        packets before it, answers the POST 200 `ok`, ends the pending GET with
        a CLOSE packet and forgets the session: a later request gets 400 (the
        Engine.IO test suite's "closes the session upon invalid packet format").
        Here it is the same. python-engineio instead refused the whole payload
        and went on with the session, answering `ok` and logging a traceback
        (a type that is not a digit, an empty packet), or closed it answering
        the POST 400 (a digit 7-9).

        Raises ContentTooLongError past `max_http_buffer_size` (a 400, as before).
        """
        length = int(environ.get("CONTENT_LENGTH", "0"))
        if length > self.server.max_http_buffer_size:
            raise eio_exceptions.ContentTooLongError()
        body = environ["wsgi.input"].read(length)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse_payload("it is not UTF-8")
        if text.startswith("d="):  # a JSONP POST's form field, as python-engineio reads it
            text = urllib.parse.parse_qs(text).get("d", [""])[0]
        for encoded in text.split("\x1e"):
            if self.closed or self.closing:
                return None  # a CLOSE earlier in the payload
            try:
                pkt = eio_packet.Packet(encoded_packet=encoded)
            except ValueError:
                return self._refuse_payload(f"a packet it cannot decode: {encoded[:20]!r}")
            if not eio_packet.OPEN <= pkt.packet_type <= eio_packet.NOOP:
                return self._refuse_payload(f"an unknown packet type: {encoded[:20]!r}")
            self.receive(pkt)
        return None

    def _refuse_payload(self, why: str) -> None:
        log.warning("%s: malformed Engine.IO payload (%s); closing the session, as "
                    "engine.io does", self.sid, why)
        # internals: engineio-server-attrs (reason)
        self.close(wait=False, abort=False, reason=self.server.reason.SERVER_DISCONNECT)

    # internals: engineio-socket-receive
    def receive(self, pkt):
        if pkt.packet_type == eio_packet.CLOSE and not self.upgraded:
            # The GET a polling client may have pending ends with a NOOP (the
            # protocol's test suite), not with python-engineio's empty body.
            self.queue.put(eio_packet.Packet(eio_packet.NOOP))
        return super().receive(pkt)

    # internals: engineio-socket-upgrade-websocket
    def _upgrade_websocket(self, environ, start_response):
        # python-engineio 4.15 refuses a second WebSocket only once the first
        # has upgraded; while the first is still probing, a second one would
        # run the probe beside it. Claim the session before any yield.
        if self.ws_claimed or self.upgraded:
            self.server.logger.info("%s: a second WebSocket for the session, refused", self.sid)
            # internals: engineio-bad-request
            return internals.bad_request(self.server, "Session already has a WebSocket")
        self.ws_claimed = True
        try:
            return super()._upgrade_websocket(environ, start_response)
        finally:
            if not self.upgraded:
                self.ws_claimed = False  # the upgrade failed: the client may try again

    # internals: engineio-socket-schedule-ping
    def schedule_ping(self):
        """Called once after the handshake and on every PONG: the next PING is due.

        Like python-engineio, a PONG schedules one only when it answers a PING
        (last_ping set). The first call does not depend on last_ping: python-engineio
        4.15 sets it when the session is made, 4.11 leaves it None, and under
        4.11 no session was ever pinged.
        """
        if not self._eventlet():
            return super().schedule_ping()
        if self.last_ping or not self.ping_scheduled:
            self.ping_scheduled = True
            self.last_ping = None
            # When the PING is due (wall clock): a hand-over keeps it (workers/handover.py).
            self.next_ping_at = time.time() + self.server.ping_interval
            # internals: engineio-server-attrs (an attribute of ours on the server)
            pinger = self.server.__dict__.get("_imcluster_pinger")
            if pinger is None:
                pinger = self.server._imcluster_pinger = Pinger()
            pinger.add(self)

    def ping_at(self, when: float) -> None:
        """A session handed over between two PINGs: its next PING at `when` (wall
        clock, as its old worker had it due), not one interval from the move: the
        client expects one within pingInterval + pingTimeout of the last."""
        if not self._eventlet():
            return super().schedule_ping()
        # internals: engineio-server-attrs (an attribute of ours on the server)
        pinger = self.server.__dict__.get("_imcluster_pinger")
        if pinger is None:
            pinger = self.server._imcluster_pinger = Pinger()
        self.ping_scheduled = True
        self.next_ping_at = when
        # Not in the pinger's schedule: every entry there has the same delay.
        eventlet.spawn_after(max(0.0, when - time.time()), pinger._ping, self, None)

    def await_pong(self) -> None:
        """A session handed over with a PING pending (last_ping set): close it
        if the PONG does not come within the ping timeout from now."""
        if not self._eventlet():
            return
        # internals: engineio-server-attrs (an attribute of ours on the server)
        pinger = self.server.__dict__.get("_imcluster_pinger")
        if pinger is None:
            pinger = self.server._imcluster_pinger = Pinger()
        self.ping_scheduled = True
        pinger.deadlines.add(self.server.ping_timeout, self, self.last_ping)

    # internals: engineio-socket-websocket-handler (a copy, changed), eventlet-ws-socket
    def _websocket_handler(self, ws):
        if not self._eventlet() or "permessage-deflate" in ws.extensions:
            # Compressed frames cannot be shared (one compressor per
            # connection), and compressing eagerly for members that cannot
            # keep up costs more than python-engineio's writer, which
            # compresses only what a client takes.
            ws.close = functools.partial(shut_down, ws)  # internals: eventlet-ws-close
            return super()._websocket_handler(ws)
        ws.close = functools.partial(shut_down, ws)
        server = self.server
        limit = server.max_http_buffer_size

        def receive():
            data = ws.wait() if buf is None else next_message(ws, buf)
            if data and len(data) > limit:
                raise ValueError("packet is too large")
            return data

        buf = None  # the buffered reader, once the probe exchange is over
        # A fallback for a silent client: the pinger closes it first, at its
        # PONG deadline, with a CLOSE packet. (python-engineio's interval +
        # timeout would race that deadline for a client that never sent a frame.)
        ws.socket.settimeout(server.ping_interval + 2 * server.ping_timeout)
        if self.connected:
            # An upgrade from polling: the probe exchange of the Engine.IO
            # protocol, while packets sent meanwhile wait in the queue.
            self.upgrading = True
            pkt = eio_packet.Packet(encoded_packet=receive())
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                self.upgrading = False
                return []
            ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.probe_noop = eio_packet.Packet(eio_packet.NOOP)
            self.queue.put(self.probe_noop)  # ends the pending poll
            pkt = eio_packet.Packet(encoded_packet=receive())
            if pkt.packet_type != eio_packet.UPGRADE:
                self.upgrading = False
                return []
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        writer = FrameWriter(ws)
        ws.socket = self.receive_buffer = buf = BufferedReceive(ws.socket)
        # What was queued before the writer took over (a direct WebSocket's
        # OPEN packet, what was sent during the probe) goes first, in order.
        # No yield from here until self.writer is set.
        closed = False
        for pkt in self._take_queued():
            if pkt is None:
                closed = True
            else:
                writer.write(frame_of(pkt))
        self.writer = writer
        if closed or self.closed:
            writer.finish()
        return self._read_loop(ws, writer, receive)

    def adopt_websocket(self, ws, rest: bytes = b"") -> None:
        """Take over a WebSocket session handed over by another worker
        (workers/handover.py): `ws` is over the received socket, `rest` the
        bytes the old worker read but did not parse. From here on, what is
        sent to the session is written; `resume_websocket` then reads it."""
        server = self.server
        ws.close = functools.partial(shut_down, ws)  # internals: eventlet-ws-close
        ws.socket.settimeout(server.ping_interval + 2 * server.ping_timeout)
        self.writer = FrameWriter(ws)
        ws.socket = self.receive_buffer = BufferedReceive(ws.socket, rest)

    def resume_websocket(self, ws) -> list:
        """Read a session taken over with `adopt_websocket` until it ends."""
        limit = self.server.max_http_buffer_size
        buf = self.receive_buffer

        def receive():
            data = next_message(ws, buf)
            if data and len(data) > limit:
                raise ValueError("packet is too large")
            return data

        return self._read_loop(ws, self.writer, receive)

    def _read_loop(self, ws, writer: FrameWriter, receive) -> list:
        """Read the session's packets until it ends, or until a hand-over
        stops the reader (HandingOver, thrown in while it waits between two
        messages), and then end without closing the moved socket."""
        buf = self.receive_buffer
        try:
            return self._read_messages(ws, writer, receive, buf)
        finally:
            buf.detach()  # whatever ended the loop: the socket closes after this

    def _read_messages(self, ws, writer: FrameWriter, receive, buf: BufferedReceive) -> list:
        server = self.server
        self.reader = eventlet.getcurrent()
        # A text EVENT the short way, when the server has it (workers/fastpath.py)
        # and nothing replaced this class's receive. internals: engineio-server-attrs
        fast = server.__dict__.get("_imcluster_fast")
        if type(self).receive is not ClusterSocket.receive:
            fast = None
        while True:
            buf.boundary = True
            try:
                data = receive()
            except HandingOver:
                buf.detach()  # before the socket leaves: see BufferedReceive.detach
                self.handover_stopped.send()
                if self.handover_done.wait():
                    handed_over.add(ws.socket.sock)
                    return []  # moved: nothing here may close or shut it down
                break  # the move failed: close the session as a drain does
            except Exception as e:
                if not self.closed:
                    server.logger.info('%s: Unexpected error "%s", closing connection',
                                       self.sid, e)
                break
            if data is None:  # the client closed the connection
                break
            try:
                if (fast is not None and data.__class__ is str and data.startswith("42")
                        and fast.receive(self, data)):
                    continue
                self.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                break
            except Exception:
                server.logger.exception("Unknown receive error")
                break
        buf.detach()  # before anything closes the socket
        self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        writer.finish()
        writer.join()
        return []


# Put in a polling session's queue by a hand-over (workers/handover.py): the
# GET waiting for packets, if one is, takes it and leaves with the session.
PARK = object()


class DuplicatePoll(eio_exceptions.EngineIOError):
    """A second GET poll for a session while one is pending (answered 400)."""


def handshake_timings(server) -> dict:
    """pingInterval and pingTimeout of the OPEN packet, in milliseconds (ints).

    Engine.IO v4, "Handshake": both in milliseconds. python-engineio 4.15
    sends int(interval + grace) * 1000, whole seconds (300 ms becomes 0, and
    a JS client then declares a server that pings every 300 ms dead after
    pingTimeout alone), and int(timeout * 1000), which truncates 2.01 s to
    2009. The grace period of an (interval, grace) ping_interval is included,
    as python-engineio does, so that clients wait for it.
    """
    interval = server.ping_interval + server.ping_interval_grace_period
    return {"pingInterval": round(interval * 1000),
            "pingTimeout": round(server.ping_timeout * 1000)}


def install() -> None:
    """Make every Engine.IO server in this process create ClusterSockets."""
    internals.install_socket_class(ClusterSocket)  # internals: engineio-socket-class
