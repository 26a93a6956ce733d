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
- Pings come from one `Pinger` per Engine.IO server, a queue ordered by due
  time, instead of one sleeping greenlet per session.

Polling sessions, WebSockets with permessage-deflate (`--ws-compression
yes`), and anything not on eventlet keep python-engineio's own paths. The
wire protocol is unchanged: tests drive it with python-socketio's client,
the JS socket.io-client and Chromium.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
import time

import engineio.socket
import eventlet
import eventlet.greenio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

log = logging.getLogger("imcluster.worker")

# A client this far behind (bytes written for it but not yet taken by its
# socket) is disconnected; it reconnects and starts afresh.
WRITE_BACKLOG_LIMIT = 8 * 1024 * 1024

_ORIGINAL_SOCKET = engineio.socket.Socket


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
    try:
        return pkt._imcluster_ws_frame
    except AttributeError:
        frame = pkt._imcluster_ws_frame = ws_frame(pkt.encode())
        return frame


def shut_down(ws, close_data=None) -> None:
    """What a WebSocket's close() does here: a close frame, then shutdown().

    The session's reader wakes with end-of-file and its connection closes the
    fd when it ends. eventlet's own close() closes the fd at once, and a
    reader waiting on it then waits for a descriptor epoll has forgotten,
    until its timeout (a drain or a stop would hang on it).
    """
    try:
        ws._send_closing_frame(ignore_send_errors=True, close_data=close_data)
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
        self.sock = ws.socket            # eventlet GreenSocket
        self.raw = ws.socket.fd          # the non-blocking socket under it
        self.backlog: collections.deque | None = None  # set while a flusher owns the socket
        self.backlog_bytes = 0
        self.flusher = None
        self.closing = False
        self.broken = False
        ws._send = self.write  # eventlet's own frames (pongs, close) go the same way

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

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self.buf, self.pos
        if pos < len(buf):
            out = buf[pos:pos + n]
            pos += len(out)
            if pos >= len(buf):
                self.buf, self.pos = b"", 0
            else:
                self.pos = pos
            return out
        data = self.sock.recv(max(n, self.CHUNK))
        if len(data) <= n:
            return data
        self.buf, self.pos = data, n
        return data[:n]

    def __getattr__(self, name):  # shutdown, close, fileno...: the socket's own
        return getattr(self.sock, name)


class Pinger:
    """Sends every session's Engine.IO PING when its interval is up, from one greenlet."""

    PING = eio_packet.Packet(eio_packet.PING)

    def __init__(self):
        self.due: collections.deque = collections.deque()  # (when, socket), in time order
        self.runner = None

    def add(self, s: engineio.socket.Socket) -> None:
        # The interval is the server's, so appending keeps the deque in time order.
        self.due.append((time.monotonic() + s.server.ping_interval, s))
        if self.runner is None:
            self.runner = eventlet.spawn(self._run)

    def _run(self) -> None:
        due = self.due
        try:
            while due:
                when, s = due[0]
                wait = when - time.monotonic()
                if wait > 0:
                    eventlet.sleep(wait)
                    continue
                due.popleft()
                if not s.closing and not s.closed:
                    s.last_ping = time.time()
                    try:
                        s.send(self.PING)
                    except Exception:  # a session that went away meanwhile
                        pass
        finally:
            self.runner = None


class ClusterSocket(_ORIGINAL_SOCKET):
    """python-engineio's Socket, with the direct WebSocket writer and the shared pinger."""

    writer: FrameWriter | None = None
    probe_noop = None  # the NOOP that ends the pending poll when an upgrade begins

    def _eventlet(self) -> bool:
        return self.server.async_mode == "eventlet"

    def send(self, pkt):
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

    def close(self, wait=True, abort=False, reason=None):
        writer = self.writer
        if writer is None:
            return super().close(wait=wait, abort=abort, reason=reason)
        # Nothing reads the queue any more, so never wait on it.
        super().close(wait=False, abort=abort, reason=reason)
        writer.finish()
        if wait:
            writer.join()

    def poll(self):
        """python-engineio's poll, except that a poll ended by an upgrade's probe
        takes nothing queued after the probe's NOOP: that goes out on the
        WebSocket, in order. (A client may read its last poll and its new
        WebSocket at the same time: python-engineio's client does not pause
        polling before it upgrades, as the protocol asks.)"""
        empty = self.server.get_queue_empty_exception()
        try:
            packets = [self.queue.get(
                timeout=self.server.ping_interval + self.server.ping_timeout)]
            self.queue.task_done()
        except empty:
            raise eio_exceptions.QueueEmpty() from None
        if packets[0] is None:
            return []
        if packets[0] is not self.probe_noop:
            for pkt in self._take_queued():
                if pkt is None:
                    self.queue.put(None)  # the close mark stays for the next poll
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

    def schedule_ping(self):
        if not self._eventlet():
            return super().schedule_ping()
        # Like engineio: only after the previous ping was answered.
        if self.last_ping:
            self.last_ping = None
            pinger = self.server.__dict__.get("_imcluster_pinger")
            if pinger is None:
                pinger = self.server._imcluster_pinger = Pinger()
            pinger.add(self)

    def _websocket_handler(self, ws):
        if not self._eventlet() or "permessage-deflate" in ws.extensions:
            # Compressed frames cannot be shared (one compressor per
            # connection), and compressing eagerly for members that cannot
            # keep up costs more than python-engineio's writer, which
            # compresses only what a client takes.
            ws.close = functools.partial(shut_down, ws)
            return super()._websocket_handler(ws)
        ws.close = functools.partial(shut_down, ws)
        server = self.server
        limit = server.max_http_buffer_size

        def receive():
            data = ws.wait()
            if data and len(data) > limit:
                raise ValueError("packet is too large")
            return data

        ws.socket.settimeout(server.ping_interval + server.ping_timeout)
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
        ws.socket = BufferedReceive(ws.socket)
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

        while True:
            try:
                data = receive()
            except Exception as e:
                if not self.closed:
                    server.logger.info('%s: Unexpected error "%s", closing connection',
                                       self.sid, e)
                break
            if data is None:  # the client closed the connection
                break
            try:
                self.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                break
            except Exception:
                server.logger.exception("Unknown receive error")
                break
        self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        writer.finish()
        writer.join()
        return []


def install() -> None:
    """Make every Engine.IO server in this process create ClusterSockets."""
    engineio.socket.Socket = ClusterSocket
