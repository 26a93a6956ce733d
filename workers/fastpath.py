"""A client's text EVENT, read from a WebSocket, taken straight to the Socket.IO server.

Between the frame and the app's handler python-engineio and python-socketio
each make a packet object and pass the message through several layers: an
Engine.IO Packet whose decode tries JSON on every Socket.IO message and
catches the ValueError it raises for it, the session's receive (which logs
the packet at INFO), the server's `_trigger_event` with a closure per call,
`_handle_eio_message` and a Socket.IO Packet. Profiled on a worker under the
echo benchmark (docs/benchmarks.md, "Per-ack cost"), that was about an
eighth of the busy time.

`FastEvents.receive` reads the common shape itself: `42`, an optional
namespace and `,`, an optional id in ASCII digits, then a JSON array whose
first element is a string (the event name), and calls the server's
`_handle_event(eio_sid, namespace, id, data)` as `_handle_eio_message` would,
reporting an exception as python-engineio's `run_handler` does. Everything
else is declined and takes the usual path: binary events and attachments,
CONNECT, DISCONNECT, ACK, a namespace with a query, unusual ids or payloads,
and any server or session whose layers someone replaced (an app's subclass,
Engine.IO logging at INFO, another serializer). tests/test_fastpath.py
compares what it accepts with what python-socketio decodes (hypothesis).
"""

from __future__ import annotations

import logging

import engineio
import socketio
from socketio import packet as sio_packet

from imcluster.workers import dispatch, fastpacket, protocol, pubsub, sessions

# The functions whose work receive() does in their place: if any is not what
# the server's class uses, the fast path stays off for that server.
# (ClusterSocket's read loop checks its own receive: workers/sessions.py.)
# internals: socketio-handle-eio-message, engineio-trigger-event,
# engineio-socket-receive-message, engineio-packet-decode
_EIO_MESSAGE = socketio.Server._handle_eio_message
# The engine's 'message' handlers whose work receive() may do: upstream's, and
# the copy workers/protocol.py registers in its place (malformed packets).
_EIO_MESSAGE_HANDLERS = (_EIO_MESSAGE, protocol.SocketRules._imcluster_eio_message)
_TRIGGER = engineio.Server._trigger_event

_MAX_ID_DIGITS = 18  # a longer id goes to python-socketio (its limit is 100 digits)

# What an ack passes through between the handler and the socket; DirectAcks
# writes the frame itself only while each is python-socketio's, python-engineio's
# or ours as read here. internals: socketio-handle-event-internal-copy,
# socketio-send-packet, engineio-server-send, engineio-message-encode,
# engineio-socket-send
_EVENT_INTERNAL = socketio.Server._handle_event_internal
_SEND_PACKET_OK = {socketio.Server._send_packet}  # plus the rules below, at install
_EIO_SEND = (engineio.Server.send, engineio.Server.send_packet)
_SESSION_SEND = sessions.ClusterSocket.send


def parse_event(text: str, start: int = 0) -> tuple[str | None, int | None, list] | None:
    """(namespace, id, data) of a text Socket.IO EVENT `text[start:]` ("2..."), or
    None when it is not in the common shape (the caller then lets python-socketio
    decode it). `data` is a non-empty list with a str first."""
    if text[start:start + 1] != "2":
        return None
    n = len(text)
    i = start + 1  # past the type
    namespace = None
    if i < n and text[i] == "/":
        sep = text.find(",", i)
        if sep < 0:
            return None
        namespace = text[i:sep]
        if "?" in namespace:
            return None
        i = sep + 1
    j = i
    while j < n and "0" <= text[j] <= "9":
        j += 1
    if j - i > _MAX_ID_DIGITS or j >= n or text[j] != "[":
        return None
    try:
        data = fastpacket.loads(text[j:])
    except Exception:
        return None  # python-socketio raises its own error for it, its own way
    if (type(data) is not list or not data or type(data[0]) is not str
            or data[0] in protocol.RESERVED_EVENTS):  # malformed: protocol.py closes it
        return None
    return namespace, (int(text[i:j]) if j > i else None), data


class FastEvents:
    """The fast path of one Socket.IO server (see the module doc)."""

    __slots__ = ("sio", "eio")

    def __init__(self, sio: socketio.Server):
        self.sio = sio
        self.eio = sio.eio

    def receive(self, s, data: str) -> bool:
        """Handle Engine.IO message `data` ("42...") of session `s`; False: not taken."""
        eio, sio = self.eio, self.sio
        handler = eio.handlers.get("message")  # internals: engineio-server-attrs (handlers)
        if (getattr(handler, "__func__", None) not in _EIO_MESSAGE_HANDLERS
                or handler.__self__ is not sio or eio.async_handlers
                or eio.logger.isEnabledFor(logging.INFO)
                or s.sid in sio._binary_packet):  # internals: socketio-handle-eio-message
            return False
        parsed = parse_event(data, 1)
        if parsed is None:
            return False
        namespace, id, payload = parsed
        try:
            sio._handle_event(s.sid, namespace, id, payload)
        except BaseException:
            # python-engineio's run_handler catches everything a message handler raises.
            eio.logger.exception("message handler error")
        return True


class DirectAcks:
    """python-socketio's `_handle_event_internal`, writing a plain ack's frame itself.

    Upstream answers a handler's return value with an ACK Packet, encodes it,
    and hands the text to python-engineio's `send`, which wraps it in a MESSAGE
    Packet for the session's `send`, which frames it: two packet objects and
    five calls per ack (about 6% of a worker's instructions per echo,
    docs/benchmarks.md). Here, for a session whose WebSocket our frame writer
    holds and an ack whose data orjson writes as `json` does (`FastPacket`'s
    rule: no bytes, plain types), the text `43[/ns,]id[...]` is written as the
    session's `send` would write it, after the same ping-timeout check. Any
    other case (polling, a closed or unknown session, packets held for a
    CONNECT by workers/protocol.py, binary or unusual data, Engine.IO logging
    at INFO) takes upstream's way.

    Either way, the ack of a handler that queued broadcasts for Redis waits
    until Redis took them (pubsub.wait_pushed; workers/redis_manager.py says
    why and how long at most). So this class is installed whenever the
    server's `_handle_event_internal` is still python-socketio's, direct
    writing or not (`_imcluster_direct_acks`).
    """

    _imcluster_direct_acks = False  # set per server by install_acks

    # internals: socketio-handle-event-internal-copy (a copy, changed)
    def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        r = server._trigger_event(data[0], namespace, sid, *data[1:])
        acked = r != self.not_handled and id is not None
        if pubsub.pushed():
            # The handler's broadcasts reach Redis before its ack leaves
            # (workers/redis_manager.py, the module's last paragraph).
            pubsub.wait_pushed(acked)
        if acked:
            # send ACK packet with the response returned by the handler
            # tuples are expanded as multiple arguments
            if r is None:
                data = []
            elif isinstance(r, tuple):
                data = list(r)
            else:
                data = [r]
            if not (self._imcluster_direct_acks and write_ack(self, eio_sid, namespace, id, data)):
                server._send_packet(eio_sid, self.packet_class(
                    sio_packet.ACK, namespace=namespace, id=id, data=data))


def ack_text(namespace: str | None, id: int, data: list) -> str | None:
    """The Engine.IO MESSAGE text of a Socket.IO ACK ("43...") as python-socketio's
    Packet and python-engineio's encode make it, or None when `data` is not what
    orjson writes as `json` does (fastpacket.FastPacket's rule)."""
    if not fastpacket.plain(data):
        return None
    try:
        body = fastpacket.orjson_dumps(data)
    except TypeError:  # lone surrogates, deep nesting: upstream's json decides
        return None
    if body is None:
        return None
    if namespace is not None and namespace != "/":
        return "43" + namespace + "," + str(id) + body
    return "43" + str(id) + body


def write_ack(sio, eio_sid: str, namespace: str | None, id: int, data: list) -> bool:
    """Write the ACK of `id` to session `eio_sid` if it can go the direct way
    (DirectAcks); False, with nothing done, when upstream's way must take it."""
    if sio.packet_class is not fastpacket.FastPacket:  # an app chose its own since
        return False
    s = sio.eio.sockets.get(eio_sid)  # internals: engineio-server-attrs
    if (s is None or type(s).send is not _SESSION_SEND or s.closed or s.writer is None
            or s.upgrading):
        return False
    holds = sio.__dict__.get("_imcluster_holds")  # workers/protocol.py, CONNECT order
    if holds and eio_sid in holds:
        return False
    if sio.eio.logger.isEnabledFor(logging.INFO):
        return False
    text = ack_text(namespace, id, data)
    if text is None:
        return False
    if s.check_ping_timeout():
        s.writer.write(sessions.ws_frame(text))
    return True


def install_acks(sio: socketio.Server) -> bool:
    """Answer `sio`'s events through DirectAcks (acks after the handler's Redis
    broadcasts) when its `_handle_event_internal` is python-socketio's, and
    write plain acks directly when nothing an ack passes through was replaced
    either; True if acks are written directly. Direct writing needs FastPacket."""
    if not isinstance(sio, socketio.Server):
        return False
    eio = sio.eio
    ok_send = _SEND_PACKET_OK | {protocol.SocketRules._send_packet, _recovery_send_packet()}
    cls = type(sio)
    if (cls._handle_event_internal not in (_EVENT_INTERNAL, DirectAcks._handle_event_internal)
            or "_handle_event_internal" in sio.__dict__):
        return False  # the app answers events its own way
    if cls._handle_event_internal is _EVENT_INTERNAL:
        sio.__class__ = protocol.with_rules(cls, DirectAcks)
    if (sio.packet_class is not fastpacket.FastPacket or "_send_packet" in sio.__dict__
            or any("_send_packet" in vars(k) and vars(k)["_send_packet"] not in ok_send
                   for k in cls.__mro__)
            or (type(eio).send, type(eio).send_packet) != _EIO_SEND
            or "send" in eio.__dict__ or "send_packet" in eio.__dict__):
        return False
    sio._imcluster_direct_acks = True
    return True


def _recovery_send_packet():
    from imcluster.workers import recovery  # imports eventlet-only parts: only when asked
    return recovery.RecoveryRules._send_packet


def install(sio: socketio.Server) -> dict[str, bool]:
    """Every per-event saving that applies to `sio`: FastPacket as its packet class
    (workers/fastpacket.py), handlers started directly (workers/dispatch.py), and
    text events taken the short way (here). Which were installed, by name."""
    return {"packets": fastpacket.install(sio), "dispatch": dispatch.install(sio),
            "events": install_events(sio), "acks": install_acks(sio)}


def install_events(sio: socketio.Server) -> bool:
    """Take `sio`'s text events the short way when nothing in between was replaced;
    True if so. Needs FastPacket (workers/fastpacket.py) as its packet class."""
    eio = sio.eio
    if (not isinstance(sio, socketio.Server) or sio.packet_class is not fastpacket.FastPacket
            or type(sio)._handle_eio_message is not _EIO_MESSAGE
            or type(eio)._trigger_event is not _TRIGGER):
        return False
    eio._imcluster_fast = FastEvents(sio)  # internals: engineio-server-attrs
    return True

