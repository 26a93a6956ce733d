"""Engine.IO v4 and Socket.IO v5 as specified, where python-engineio 4.15 and
python-socketio 5.18 answer otherwise.

The rules come from the protocol documents (socket.io's "Engine.IO protocol"
and "Socket.IO protocol" pages; docs/engine.io-protocol/v4-current.md and
docs/socket.io-protocol/v5-current.md in socketio/socket.io) and from the test
suites published beside them, which settle what the prose leaves open. The
session-level rules (heartbeat, duplicate polls, second WebSockets) live in
`sessions.ClusterSocket`; the HTTP-level and namespace rules live here.

`adapt()` is applied by `WorkerServer.load()` to the app's servers once the app is
imported. It swaps each instance's class for a subclass of that same class
with the rules mixed in (`obj.__class__ = ...`), rather than setting wrapper
functions on the instance: the library calls these methods on itself
(`self._ok`, `self._handle_connect`), `isinstance` and an app's own subclass
keep working (its overrides are reached through `super()`), and nothing new
sits in the instance's `__dict__` where tools like `sio.instrument()` put
their own wrappers. Every method overridden below is listed, with what we
rely on, in workers/internals.py (`# internals: KEY` at each).
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import engineio
import engineio.payload
import socketio
from socketio import packet as sio_packet

from imcluster.workers import handover, internals

# Engine.IO v4, "Sending data" and the test suite: the answer to a POST.
POST_ANSWER = b"ok"
# Socket.IO v5 test suite ("should disallow connection to an unknown namespace").
INVALID_NAMESPACE = {"message": "Invalid namespace"}
# Event names a client may not send (socket.io-parser's RESERVED_EVENTS): a
# packet naming one is malformed.
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})

log = logging.getLogger("imcluster.worker")


def query_firsts(qs: str) -> dict[str, str]:
    """Each name's first value in query string `qs`, as `urllib.parse.parse_qs`
    (python-engineio's parse) gives it: `parse_qs(qs)[name][0]` for every name
    it has. A query of plain characters (no `%`, no `+`: nothing to decode, as
    Engine.IO clients write `EIO=4&transport=polling&sid=...&t=...`) is split
    here, without parse_qs's lists and decoding; any other goes to parse_qs."""
    if "%" in qs or "+" in qs:
        return {k: v[0] for k, v in urllib.parse.parse_qs(qs).items()}
    out: dict[str, str] = {}
    for part in qs.split("&"):
        name, eq, value = part.partition("=")
        # parse_qs drops a field with no "=" or an empty value (keep_blank_values=False).
        if value and name not in out:
            out[name] = value
    return out


class EngineRules:
    """HTTP-level rules for an engineio.Server (python-engineio 4.15).

    - A request without `transport` gets 400 (python-engineio takes it for
      polling); an unknown transport already gets 400 there. ("Query
      parameters": if a mandatory query parameter is missing, the server MUST
      respond with 400.)
    - A method other than GET, POST or OPTIONS gets 400, not 405 (the test
      suite's "fails with an invalid request method").
    - An accepted POST is answered `ok`, not `OK` ("Sending data").
    - A request naming a session whose PONG is overdue closes it and gets
      400; so does one naming a session closed but not yet forgotten
      (python-engineio answers a POST for one with a KeyError, a 500).
    """

    # internals: engineio-handle-request
    def handle_request(self, environ: dict, start_response) -> list[bytes]:
        if handover.enabled():
            # --handover yes: a request naming a session that moves waits, and
            # one naming a session that moved follows it (workers/handover.py).
            sid = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
            return handover.gate(environ, sid or None, self.sockets,
                                 lambda: self._handle_request(environ, start_response))
        return self._handle_request(environ, start_response)

    def _handle_request(self, environ: dict, start_response) -> list[bytes]:
        why = self._protocol_refusal(environ)
        if why is not None:
            # Built as python-engineio builds its own 400s.
            # internals: engineio-bad-request, engineio-cors-headers
            r = internals.bad_request(self, why)
            start_response(r["status"], r["headers"] + internals.cors_headers(self, environ))
            return [r["response"]]
        return super().handle_request(environ, start_response)

    def _protocol_refusal(self, environ: dict) -> str | None:
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS":
            return None  # a CORS preflight, answered by python-engineio
        if method not in ("GET", "POST"):
            return "Invalid request method"
        query = query_firsts(environ.get("QUERY_STRING", ""))
        if "transport" not in query:
            return "Invalid transport"
        sid = query.get("sid")
        if not sid:
            return None
        s = self.sockets.get(sid)  # internals: engineio-server-attrs
        if s is not None and s.connected and not s.closed:
            s.check_ping_timeout()  # closes the session if its PONG is late
        if s is None or s.closed:
            # python-engineio's own answer, without the ERROR it logs: in a
            # cluster an unknown session is routine (its worker died, or
            # drained), and the client makes a fresh handshake.
            self.sockets.pop(sid, None)
            return f"Invalid session {sid}"
        return None

    # internals: engineio-ok
    def _ok(self, packets=None, headers=None, jsonp_index=None) -> dict:
        # python-engineio 4.15 answers every packet-less 200 (POST, OPTIONS) "OK".
        r = super()._ok(packets, headers=headers, jsonp_index=jsonp_index)
        if packets is None:
            r["response"] = POST_ANSWER
        return r


class _Hold:
    """Packets for one Engine.IO session, held while a namespace connect is in progress."""

    __slots__ = ("items", "starts")

    def __init__(self):
        self.items: list[tuple[bool, Any]] = []  # (is a Socket.IO packet, packet)
        self.starts: dict[str, int] = {}  # namespace -> len(items) when its connect began


def malformed(pkt) -> str | None:
    """Why a decoded Socket.IO packet from a client is malformed, or None.

    socket.io-parser's Decoder (socket.io 4.x, the reference implementation
    of Socket.IO v5) refuses these, and socket.io's server then closes the
    connection: a type a client may not send (CONNECT_ERROR: python-socketio
    raises for it too), a payload of the wrong shape for its type (CONNECT:
    an object; DISCONNECT: none; EVENT: a non-empty array whose first element
    is a number or a string not in RESERVED_EVENTS; ACK: an array), a binary
    packet without a positive attachment count. An EVENT or ACK without a
    payload is not refused (socket.io ignores the first and calls the ack
    with no arguments: `SocketRules._imcluster_eio_message`)."""
    t, data = pkt.packet_type, pkt.data
    if t == sio_packet.CONNECT:
        ok = data is None or isinstance(data, dict)
    elif t == sio_packet.DISCONNECT:
        ok = data is None
    elif t in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        first = data[0] if type(data) is list and data else None
        ok = data is None or (
            (isinstance(first, (int, float)) and not isinstance(first, bool))
            or (isinstance(first, str) and first not in RESERVED_EVENTS))
    elif t in (sio_packet.ACK, sio_packet.BINARY_ACK):
        ok = data is None or type(data) is list
    elif t == sio_packet.CONNECT_ERROR:
        return "a client may not send CONNECT_ERROR"
    else:
        return f"unknown packet type {t!r}"
    if not ok:
        return f"invalid payload for packet type {t}"
    if t in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK) and pkt.attachment_count < 1:
        return "a binary packet without attachments"
    return None


class SocketRules:
    """Namespace rules for a socketio.Server (python-socketio 5.18).

    - A CONNECT to a namespace the app does not serve gets CONNECT_ERROR with
      `{"message": "Invalid namespace"}` (python-socketio: the string
      "Unable to connect", from which the JS client makes an Error without a
      message).
    - What the app sends to a client while its connect handler runs reaches
      the client after the CONNECT reply. python-socketio runs the handler
      before it sends CONNECT (it decides between CONNECT and CONNECT_ERROR),
      so an `emit` from the handler used to arrive first. Packets for the
      connecting Engine.IO session are held during the handler; the CONNECT
      goes in front of everything sent since the handler began, and the rest
      follows in order. A refused connection keeps python-socketio's order
      (its CONNECT_ERROR comes last). Other namespaces of the same session
      wait too, for the length of the handler: packets cannot be told apart
      by namespace once encoded (binary attachments, msgpack).
    - A malformed Socket.IO packet (one socket.io-parser's Decoder refuses:
      `malformed`, or one python-socketio cannot decode) closes the Engine.IO
      session, as socket.io's server does on a decode error (its Client's
      `onerror`: `conn.close()`), instead of being dropped with an ERROR while
      the session goes on; the Socket.IO v5 test suite's "should close the
      connection upon invalid format" cases. The app's disconnect handlers run
      (reason "server disconnect"); the worker logs one WARNING. So does a
      text packet where binary attachments are due, or an attachment that is
      not due. (A well-formed packet for a namespace the session has not
      joined is still ignored with python-socketio's warning, where socket.io
      would close.)
    """

    _imcluster_holds: dict[str, _Hold]

    # internals: socketio-handle-eio-message-copy (a copy, changed)
    def _imcluster_eio_message(self, eio_sid, data):
        """python-socketio's `_handle_eio_message` (the Engine.IO 'message' handler,
        registered in its place by `adapt`), closing the session on a malformed
        packet (see the class doc)."""
        s = self.eio.sockets.get(eio_sid)  # internals: engineio-server-attrs (sockets)
        if s is not None and s.closed:
            # What followed a malformed packet in the same polling payload: the
            # connection is closed (socket.io stops listening to it at once).
            return None
        if eio_sid in self._binary_packet:
            if isinstance(data, str):
                return self._refuse_malformed(eio_sid, "text where a binary attachment is due")
            pkt = self._binary_packet[eio_sid]
            if pkt.add_attachment(data):
                del self._binary_packet[eio_sid]
                if pkt.packet_type == sio_packet.BINARY_EVENT:
                    self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
                else:
                    self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)
            return None
        if not isinstance(data, str):
            return self._refuse_malformed(eio_sid, "a binary attachment that is not due")
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as e:  # python-socketio raises ValueError, JSON errors and more
            return self._refuse_malformed(eio_sid, f"cannot decode it: {e}")
        why = malformed(pkt)
        if why is not None:
            return self._refuse_malformed(eio_sid, why)
        t = pkt.packet_type
        if t == sio_packet.CONNECT:
            self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif t == sio_packet.DISCONNECT:
            self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif t == sio_packet.EVENT:
            if pkt.data is not None:  # an event without a name: socket.io ignores it too
                self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif t == sio_packet.ACK:
            self._handle_ack(eio_sid, pkt.namespace, pkt.id,
                             [] if pkt.data is None else pkt.data)
        elif not self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/"):
            # BINARY_EVENT or BINARY_ACK (malformed() let no other type through):
            # python-socketio raises "Unexpected binary packet" for this one.
            return self._refuse_malformed(eio_sid, "a binary packet outside a namespace")
        else:
            self._binary_packet[eio_sid] = pkt
        return None

    def _refuse_malformed(self, eio_sid: str, why: str) -> None:
        self._binary_packet.pop(eio_sid, None)
        s = self.eio.sockets.get(eio_sid)  # internals: engineio-server-attrs (sockets)
        if s is None or s.closed or s.closing:
            return  # what came after the packet that closed it, in the same payload
        log.warning("%s: malformed Socket.IO packet (%s); closing the connection, as "
                    "socket.io does", eio_sid, why)
        s.close(wait=False, abort=False, reason=self.eio.reason.SERVER_DISCONNECT)

    def _serves(self, namespace: str) -> bool:
        # python-socketio 5.18's own test in Server._handle_connect (a copy).
        # internals: socketio-handle-connect, socketio-server-attrs
        return (namespace in self.handlers or namespace in self.namespace_handlers
                or self.namespaces == "*" or namespace in self.namespaces)

    # internals: socketio-handle-connect
    def _handle_connect(self, eio_sid, namespace, data):
        namespace = namespace or "/"
        if not self._serves(namespace):
            self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data=dict(INVALID_NAMESPACE), namespace=namespace))
            return None
        holds = self._imcluster_holds
        hold = holds.get(eio_sid)
        if hold is None:
            hold = holds[eio_sid] = _Hold()
        mine = namespace not in hold.starts  # else a second CONNECT for it, refused upstream
        if mine:
            hold.starts[namespace] = len(hold.items)
        try:
            return super()._handle_connect(eio_sid, namespace, data)
        finally:
            if mine:
                del hold.starts[namespace]
            if not hold.starts:
                self._release(eio_sid, hold)

    def _release(self, eio_sid: str, hold: _Hold) -> None:
        if self._imcluster_holds.get(eio_sid) is hold:
            del self._imcluster_holds[eio_sid]
        # Sending never yields to another greenlet (a queue put, or one
        # non-blocking write), so nothing sent later can overtake these.
        for is_sio, pkt in hold.items:
            if is_sio:
                super()._send_packet(eio_sid, pkt)
            else:
                super()._send_eio_packet(eio_sid, pkt)

    # internals: socketio-send-packet
    def _send_packet(self, eio_sid, pkt):
        hold = self._imcluster_holds.get(eio_sid)
        if hold is None:
            return super()._send_packet(eio_sid, pkt)
        start = None
        if pkt.packet_type == sio_packet.CONNECT:
            start = hold.starts.get(pkt.namespace or "/")
        if start is None:
            hold.items.append((True, pkt))
            return None
        hold.items.insert(start, (True, pkt))
        for ns, i in hold.starts.items():
            if i > start:
                hold.starts[ns] = i + 1
        return None

    # internals: socketio-send-eio-packet (python-socketio's Manager.emit sends through it)
    def _send_eio_packet(self, eio_sid, eio_pkt):
        hold = self._imcluster_holds.get(eio_sid)
        if hold is None:
            return super()._send_eio_packet(eio_sid, eio_pkt)
        hold.items.append((False, eio_pkt))
        return None


_MIXED: dict[tuple[type, type], type] = {}


def _with_rules(cls: type, rules: type) -> type:
    if issubclass(cls, rules):
        return cls
    mixed = _MIXED.get((cls, rules))
    if mixed is None:
        mixed = _MIXED[(cls, rules)] = type(cls.__name__, (rules, cls), {"__module__": __name__})
    return mixed


# The same mixing for other modules' rules (workers/dispatch.py).
with_rules = _with_rules


def adapt(eio: engineio.Server, sio: socketio.Server | None = None, recovery=None) -> None:
    """Make the app's servers follow the protocols as written (see the module doc);
    with `recovery` (a workers.recovery.Recovery), add connection state recovery."""
    eio.__class__ = _with_rules(type(eio), EngineRules)
    # A long-polling POST may carry as many packets as fit in the payload the
    # server announced (the handshake's maxPayload, `max_http_buffer_size`
    # bytes): the official client fills it with every packet it queued. The
    # Engine.IO protocol sets no count; python-engineio refuses more than 16 and
    # drops the whole POST while answering it "ok" (the client's messages were
    # silently lost under load). Each packet takes at least two bytes with its
    # separator, so this bound is the payload's own.
    # internals: engineio-payload-max-packets
    engineio.payload.Payload.max_decode_packets = max(
        engineio.payload.Payload.max_decode_packets, eio.max_http_buffer_size // 2 + 1)
    if sio is not None:
        sio._imcluster_holds = {}
        sio.__class__ = _with_rules(type(sio), SocketRules)
        # python-socketio registers its bound _handle_eio_message as the engine's
        # 'message' handler when it is built; ours takes its place, unless the
        # app replaced either (workers/fastpath.py accepts both as the handler).
        # internals: engineio-server-attrs (handlers), socketio-handle-eio-message-copy
        handler = eio.handlers.get("message")
        if (getattr(handler, "__func__", None) is socketio.Server._handle_eio_message
                and handler.__self__ is sio
                and type(sio)._handle_eio_message is socketio.Server._handle_eio_message):
            eio.on("message", sio._imcluster_eio_message)
        if recovery is not None:
            from imcluster.workers.recovery import RecoveryRules

            sio._imcluster_recovery = recovery
            sio.__class__ = _with_rules(type(sio), RecoveryRules)
