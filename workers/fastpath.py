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

from imcluster.workers import dispatch, fastpacket

# The functions whose work receive() does in their place: if any is not what
# the server's class uses, the fast path stays off for that server.
# (ClusterSocket's read loop checks its own receive: workers/sessions.py.)
# internals: socketio-handle-eio-message, engineio-trigger-event,
# engineio-socket-receive-message, engineio-packet-decode
_EIO_MESSAGE = socketio.Server._handle_eio_message
_TRIGGER = engineio.Server._trigger_event

_MAX_ID_DIGITS = 18  # a longer id goes to python-socketio (its limit is 100 digits)


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
    if type(data) is not list or not data or type(data[0]) is not str:
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
        if (getattr(handler, "__func__", None) is not _EIO_MESSAGE
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


def install(sio: socketio.Server) -> dict[str, bool]:
    """Every per-event saving that applies to `sio`: FastPacket as its packet class
    (workers/fastpacket.py), handlers started directly (workers/dispatch.py), and
    text events taken the short way (here). Which were installed, by name."""
    return {"packets": fastpacket.install(sio), "dispatch": dispatch.install(sio),
            "events": install_events(sio)}


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

