"""Every reach of a worker into private parts of eventlet, python-engineio and python-socketio.

A worker depends on more of these libraries than their documented API: it
overrides private methods in subclasses (its Engine.IO socket, the protocol
rules, the pub/sub manager, eventlet's HTTP protocol), replaces a few
attributes and methods (a WebSocket's frame writer and mask, the module's
Socket class, socketio.Server's constructor), calls private helpers, and
stores attributes of its own on library objects. A minor release may change
any of it without notice, and most such changes would not fail at import but
per connection, silently (a session never pinged, a broadcast dropped).

So each reach is listed here once, in `REACHES`, with what we rely on, and
tests/test_internals.py checks every entry against the installed library:
the target exists, its signature has the parameters we pass or receive, the
attributes we read exist on a freshly made object, the attributes we add are
free, and the upstream source still contains the lines our code copies or
depends on. A change fails that test with one line naming the library, the
version, the reach and the file of ours that uses it. The test runs on the
newest releases (scripts/test) and on the lowest that setup.cfg admits
(scripts/test-min); setup.cfg's upper bounds are the next minor release after
`CHECKED_WITH`, which the test also checks.

Code elsewhere gets a reach through this module: a named function or
constant below, or, for an override in a subclass or a replaced attribute,
a comment `# internals: KEY` beside it naming its entry. The test also
checks that every library method our classes override has an entry, and
that the file an entry names mentions its key.

Upgrading a library: run tests/test_internals.py on the new version, read
the upstream change for each entry it names, adapt the code, then raise
`CHECKED_WITH` and the bound in setup.cfg together.
"""

from __future__ import annotations

from dataclasses import dataclass

import engineio.socket
import eventlet.websocket
import eventlet.wsgi

# The newest minor release of each library every entry was read against.
# setup.cfg admits versions below the next minor (tests/test_internals.py).
CHECKED_WITH = {"eventlet": "0.41", "python-engineio": "4.15", "python-socketio": "5.18",
                "flask-socketio": "5.7"}
# Libraries reached only when the app uses them, which imcluster does not
# install: their bound is in setup.cfg's `test` extra, and a worker whose
# installed version lacks what an entry names says so in its log and goes on
# without that reach (workers/handover.py: the Flask-SocketIO session stays behind).
OPTIONAL = {"flask-socketio"}


@dataclass(frozen=True)
class Reach:
    """One dependency on a library's private parts.

    `target` is "module:Qualified.name" (the upstream object reached); `how`
    is override (a subclass method of ours replaces it), replace (we assign
    it, on a class, a module or an instance), call, read (attributes) or copy
    (our code repeats upstream lines); `where` is our file and class or
    function; `why` what we rely on, for the person reading a failure.
    """

    library: str
    target: str
    how: str
    where: str
    why: str
    # Parameter names (after self, "*args" for a star parameter). For an
    # override or a replacement, the upstream signature must be exactly this
    # (upstream calls it with them); for a call, it must accept these, in order.
    params: tuple[str, ...] | None = None
    # For a call: how many of `params` we pass by position (they must lead the signature).
    positional: int = 0
    # Lines the upstream source must still contain (compared without whitespace),
    # in the function `source_in` ("module:Qualified.name"; default: target).
    source: tuple[str, ...] = ()
    source_in: str | None = None
    # Attributes a freshly made instance of `target` (a class) must have, or
    # the module/class itself when it is not instantiated by the test.
    attrs: tuple[str, ...] = ()
    # Attributes we add to instances of `target`: they must be free, and settable.
    adds: tuple[str, ...] = ()


_EIO, _SIO, _EV = "python-engineio", "python-socketio", "eventlet"
_FSIO = "flask-socketio"

REACHES: dict[str, Reach] = {r_key: r for r_key, r in [
    # ---- eventlet --------------------------------------------------------------------
    ("eventlet-apply-mask", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket._apply_mask", "replace",
        "workers/speedups.py install", "a static method that unmasks every client frame; "
        "we install a faster one with the same arguments",
        params=("data", "mask", "length", "offset"),
        source=("self._apply_mask(d, mask, length=dlen, offset=received)",),
        source_in="eventlet.websocket:RFC6455WebSocket._recv_frame")),
    ("eventlet-ws-send", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket._send", "replace",
        "workers/sessions.py FrameWriter", "every frame eventlet writes (a message, a pong, "
        "the close frame) goes through self._send(frame), one whole frame per call; "
        "our writer takes its place per connection",
        params=("frame",), source=("self._send(payload)",),
        source_in="eventlet.websocket:RFC6455WebSocket.send")),
    ("eventlet-ws-closing-frame", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket._send_closing_frame", "call",
        "workers/sessions.py shut_down", "sends the close frame without closing the fd",
        params=("ignore_send_errors", "close_data"))),
    ("eventlet-ws-close", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket.close", "replace",
        "workers/sessions.py ClusterSocket._websocket_handler", "eventlet and python-engineio "
        "close a WebSocket through ws.close(close_data=...); ours shuts the socket down "
        "instead of closing its fd under a waiting reader",
        params=("close_data",), source=("self.close(close_data=(status, ''))",),
        source_in="eventlet.websocket:RFC6455WebSocket._handle_control_frame")),
    ("eventlet-ws-socket", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket", "read",
        "workers/sessions.py FrameWriter, BufferedReceive, next_message, "
        "ClusterSocket._websocket_handler",
        "a WebSocket's green socket is ws.socket and every read is self.socket.recv(n), so "
        "a buffered reader can take its place; ws.extensions holds the negotiated ones",
        attrs=("socket", "extensions", "max_frame_length"),
        source=("self.socket.recv(length - received)",),
        source_in="eventlet.websocket:RFC6455WebSocket._recv_frame")),
    ("eventlet-ws-iter-frames", Reach(
        _EV, "eventlet.websocket:RFC6455WebSocket._iter_frames", "copy",
        "workers/sessions.py next_message", "ws.wait() returns the next message from "
        "_iter_frames, which holds no state between two messages (a fragment is pending only "
        "inside one call), decodes a final text frame with a UTF-8 decoder, refuses frames "
        "above max_frame_length, and on a socket error sends a close frame (1011) and raises; "
        "next_message cuts whole text frames itself and repeats that last rule",
        params=(), source=("yield data", "except Exception:",
                           "self.close(close_data=(1011, 'Internal Server Error'))"))),
    ("eventlet-green-fd", Reach(
        _EV, "eventlet.greenio.base:GreenSocket", "read",
        "workers/sessions.py FrameWriter; workers/http.py peek_request_line",
        "a green socket's .fd is the non-blocking socket under it (a send or a MSG_PEEK "
        "that must not wait in the hub)", attrs=("fd",))),
    # ---- WebSocket readers woken by our own epoll (workers/reactor.py) -----------------
    ("eventlet-hub-listener", Reach(
        _EV, "eventlet.hubs.hub:BaseHub.add", "call", "workers/reactor.py Reactor",
        "hub.add(READ, fd, cb, tb, mark_as_closed) keeps a listener until hub.remove(); the "
        "poll hub calls cb(fileno) from its own greenlet for every event, re-raises "
        "SYSTEM_EXCEPTIONS and squelches the rest; the reactor's epoll is one such listener",
        params=("evtype", "fileno", "cb", "tb", "mark_as_closed"), positional=5,
        source=("listener.cb(fileno)", "except SYSTEM_EXCEPTIONS:"),
        source_in="eventlet.hubs.poll:Hub.wait")),
    ("eventlet-hub-squelch", Reach(
        _EV, "eventlet.hubs.hub:BaseHub", "read", "workers/reactor.py Reactor._resume",
        "a greenlet woken from the reactor is resumed as the hub resumes one: SYSTEM_EXCEPTIONS "
        "go on up, anything else is printed with squelch_generic_exception(exc_info)",
        attrs=("SYSTEM_EXCEPTIONS", "squelch_generic_exception"))),
    ("eventlet-socket-closed", Reach(
        _EV, "eventlet.greenio.base:GreenSocket._recv_loop", "copy",
        "workers/reactor.py CLOSED_ERRNOS; workers/sessions.py BufferedReceive._recv",
        "a green recv() retries on SOCKET_BLOCKING, reads SOCKET_CLOSED errnos as end of file "
        "and raises socket.timeout('timed out') after the socket's timeout; our reader "
        "repeats that (tests/test_reactor.py compares the errno sets)",
        params=("recv_meth", "empty_val", "*args"),
        source=("if get_errno(e) in SOCKET_BLOCKING:", "elif get_errno(e) in SOCKET_CLOSED:",
                "return empty_val"))),
    ("eventlet-socket-errnos", Reach(
        _EV, "eventlet.greenio.base", "read", "workers/reactor.py CLOSED_ERRNOS",
        "SOCKET_CLOSED, the errnos a green recv() reads as end of file; SOCKET_BLOCKING is "
        "EAGAIN/EWOULDBLOCK on Linux (BlockingIOError)", attrs=("SOCKET_CLOSED",))),
    ("eventlet-wsgi-setup", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.setup", "override",
        "workers/http.py ClusterProtocol", "setup() sets self.connection, rfile and wfile; "
        "eventlet then reads requests through rfile.readline(limit) and read(n), and checks "
        "rfile.closed", params=(),
        source=("self.rfile.readline(self.server.url_length_limit)", "if self.rfile.closed:"),
        source_in="eventlet.wsgi:HttpProtocol._read_request_line")),
    ("eventlet-wsgi-handle", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.handle", "copy",
        "workers/http.py ClusterProtocol.handle", "our handle() repeats eventlet's request "
        "loop, with a peek before each further request", params=(),
        # (0.36+ also marks the connection idle between requests; ours does too.)
        source=("self.handle_one_request()", "if self.conn_state[2] == STATE_CLOSE:",
                "self.close_connection = 1"))),
    ("eventlet-wsgi-finish", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.finish", "override",
        "workers/http.py ClusterProtocol", "eventlet's finish() shuts the socket down, which "
        "would end a handed-back connection for its next owner too", params=(),
        source=("greenio.shutdown_safe(self.connection)",))),
    ("eventlet-wsgi-parse-request", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.parse_request", "override",
        "workers/http.py ClusterProtocol", "http.server's parse_request() -> bool sets "
        "self.path from the request line; eventlet's get_environ splits self.path into "
        "PATH_INFO and QUERY_STRING, so an absolute-form target is made origin-form between",
        params=(), source=("pq = self.path.split('?', 1)",),
        source_in="eventlet.wsgi:HttpProtocol.get_environ")),
    ("eventlet-wsgi-canned-refusals", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.handle_one_request", "read",
        "workers/http.py ClusterProtocol.handle, parse_request",
        "eventlet answers 414 itself when the request line it read (raw_requestline) "
        "reaches the server's url_length_limit, and 400 when parse_request raises "
        "HeaderLineTooLong or HeadersTooLarge (MAX_HEADER_LINE, MAX_TOTAL_HEADER_SIZE); "
        "we log each, as send_error logs http.server's refusals",
        source=("if len(self.raw_requestline) >= self.server.url_length_limit:",
                "self.wfile.write(RESPONSE_414)", "except HeaderLineTooLong:",
                "except HeadersTooLarge:"))),
    ("eventlet-wsgi-headers", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.get_environ", "read",
        "workers/http.py ClusterProtocol._parse_plain, PlainHead",
        "what eventlet reads of self.headers after http.server's parse (an "
        "email.message.Message): get(name[, default]), .type or get_content_type() when "
        "there is no Content-Type, and the (name, value) list ._headers; a plain head's "
        "PlainHead gives those, and _parse_plain sets what http.server's parse_request sets",
        source=("ct = self.headers.get('content-type')", "ct = self.headers.type",
                "ct = self.headers.get_content_type()", "headers = self.headers.headers",
                "headers = self.headers._headers",
                "length = self.headers.get('content-length')"))),
    ("eventlet-wsgi-headers-response", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.handle_one_response", "read",
        "workers/http.py PlainHead", "the response reads the client's Connection field "
        "through self.headers.get",
        source=("client_conn = self.headers.get('Connection', '').lower()",))),
    ("eventlet-wsgi-headers-request", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.handle_one_request", "read",
        "workers/http.py PlainHead", "the request checks Content-Length and "
        "Transfer-Encoding through self.headers.get, before get_environ",
        source=("content_length = self.headers.get('content-length')",
                "transfer_encoding = self.headers.get('transfer-encoding')"))),
    ("http-server-parse-request", Reach(
        _EV, "http.server:BaseHTTPRequestHandler.parse_request", "copy",
        "workers/http.py ClusterProtocol._parse_plain", "_parse_plain sets what this sets "
        "for a plain head (command, path, request_version, requestline, close_connection "
        "from the version and the Connection field, Expect: 100-continue)",
        source=("conntype = self.headers.get('Connection', \"\")",
                "if conntype.lower() == 'close':",
                "elif (conntype.lower() == 'keep-alive' and",
                "if version_number >= (1, 1) and self.protocol_version >= \"HTTP/1.1\":",
                "if not self.handle_expect_100():"))),
    ("eventlet-wsgi-send-error", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.send_error", "override",
        "workers/http.py ClusterProtocol", "http.server's parse_request answers a malformed "
        "head (400, 414, 431, 505) through send_error(code, message, explain); ours writes "
        "a short plain answer and logs it, instead of an HTML page with the Python version",
        params=("code", "message", "explain"),
        source=('"Too many headers"', "self.send_error("),
        source_in="http.server:BaseHTTPRequestHandler.parse_request")),
    ("eventlet-wsgi-log-message", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.log_message", "override",
        "workers/http.py ClusterProtocol", "http.server writes its messages to stderr "
        "through log_message(format, *args); ours goes to the worker's logger",
        params=("format", "*args"))),
    ("eventlet-wsgi-conn-state", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.__init__", "read",
        "workers/http.py ClusterProtocol, serve_connection",
        "a connection's state is the list [client address, socket, status] with status "
        "eventlet.wsgi.STATE_IDLE / STATE_REQUEST / STATE_CLOSE",
        params=("conn_state", "server"),
        source=("self.request = conn_state[1]", "self.client_address = conn_state[0]",
                "self.conn_state = conn_state"))),
    ("eventlet-wsgi-states", Reach(
        _EV, "eventlet.wsgi", "read", "workers/internals.py WSGI_STATE_IDLE, WSGI_STATE_CLOSE",
        "the status values of a connection's state", attrs=("STATE_IDLE", "STATE_CLOSE"))),
    ("eventlet-wsgi-environ", Reach(
        _EV, "eventlet.wsgi:Input", "read", "workers/handover.py gate, _move_out_polling",
        "a request's environ holds its connection as environ['eventlet.input'].get_socket() "
        "(as eventlet's own WebSocket code takes it) and the undecoded path as "
        "RAW_PATH_INFO: a request that follows its session to another worker is rebuilt "
        "from them", attrs=("get_socket",),
        source=("env['RAW_PATH_INFO'] = pq[0]",
                "env['wsgi.input'] = env['eventlet.input'] = Input("),
        source_in="eventlet.wsgi:HttpProtocol.get_environ")),
    ("eventlet-wsgi-discard-body", Reach(
        _EV, "eventlet.wsgi:HttpProtocol.handle_one_response", "read",
        "workers/http.py ExactReader",
        "when a request ends, even by an exception (HandingOver), on a connection kept "
        "alive, eventlet reads and discards the rest of its body through the request's "
        "rfile (Input.discard -> rfile.read): our rfile reads nothing once the connection "
        "left for another worker, whose request the body is",
        params=(), source=("request_input.discard()", "if self.close_connection == 0:"))),
    ("eventlet-wsgi-server", Reach(
        _EV, "eventlet.wsgi:Server.__init__", "call", "workers/main.py serve",
        "the class under eventlet.wsgi.server(), built directly to serve fds we receive: "
        "it only stores the listener (our FdListener) and reads its arguments",
        params=("socket", "address", "app", "protocol", "keepalive", "log_output", "debug",
                "socket_timeout"), positional=3,
        source=("self.socket = socket",))),
    ("eventlet-wsgi-process-request", Reach(
        _EV, "eventlet.wsgi:Server.process_request", "call", "workers/http.py serve_connection",
        "serves one connection given its state list, by making the protocol with it "
        "(0.41: self.protocol(conn_state, self); 0.35: proto.__init__(conn_state, self))",
        params=("conn_state",), source=("(conn_state, self)",))),

    # ---- python-engineio -------------------------------------------------------------
    ("engineio-service-task", Reach(
        _EIO, "engineio.server:Server._service_task", "call", "workers/handover.py move_in",
        "closed sessions leave `sockets` in the service task, which _handle_connect "
        "starts at the first handshake (start_service_task, service_task_handle); a "
        "worker whose sessions all came by hand-over starts it as the handshake would",
        params=(),
        source=("if self.start_service_task:", "self.start_service_task = False",
                "self.service_task_handle = self.start_background_task(",
                "self._service_task)"),
        source_in="engineio.server:Server._handle_connect")),
    ("engineio-payload-max-packets", Reach(
        _EIO, "engineio.payload:Payload", "replace", "workers/protocol.py adapt",
        "a POST's payload is refused as a whole beyond the class attribute "
        "max_decode_packets; we raise it to what max_http_buffer_size admits",
        attrs=("max_decode_packets",),
        source=("if len(encoded_packets) > self.max_decode_packets:",),
        source_in="engineio.payload:Payload.decode")),
    ("engineio-socket-class", Reach(
        _EIO, "engineio.socket:Socket", "replace", "workers/sessions.py install",
        "the server makes each session with socket.Socket(self, sid), looked up in the "
        "module at that moment, so replacing the module attribute makes ClusterSockets",
        source=("s = socket.Socket(self, sid)",),
        source_in="engineio.server:Server._handle_connect")),
    ("engineio-socket-attrs", Reach(
        _EIO, "engineio.socket:Socket", "read",
        "workers/sessions.py ClusterSocket, Pinger; workers/main.py _close_session",
        "the session's state, read and set by our Socket subclass and pinger",
        attrs=("server", "sid", "queue", "last_ping", "connected", "upgrading", "upgraded",
               "closing", "closed"), adds=("next_ping_at",))),
    ("engineio-socket-send", Reach(
        _EIO, "engineio.socket:Socket.send", "override", "workers/sessions.py ClusterSocket",
        "every packet to a session, the OPEN packet included, goes through send(pkt); it "
        "drops the packet when check_ping_timeout() is False",
        params=("pkt",), source=("if not self.check_ping_timeout():",))),
    ("engineio-socket-close", Reach(
        _EIO, "engineio.socket:Socket.close", "override", "workers/sessions.py ClusterSocket",
        "close puts None in the queue (the close mark our writer and poll look for) and "
        "waits for the queue only with wait=True",
        params=("wait", "abort", "reason"),
        source=("self.queue.put(None)", "if wait:", "self.queue.join()"))),
    ("engineio-socket-poll", Reach(
        _EIO, "engineio.socket:Socket.poll", "copy", "workers/sessions.py ClusterSocket.poll",
        "our poll repeats upstream's: one blocking get bounded by interval + timeout, then "
        "what is queued, keeping the None close mark for the next poll", params=(),
        source=("timeout=self.server.ping_interval + self.server.ping_timeout)",
                "raise exceptions.QueueEmpty()", "if pkt is None:", "self.queue.put(None)"))),
    ("engineio-socket-check-ping-timeout", Reach(
        _EIO, "engineio.socket:Socket.check_ping_timeout", "copy",
        "workers/sessions.py ClusterSocket.check_ping_timeout",
        "our check repeats upstream's (closed: SocketIsClosedError; a PING unanswered past "
        "ping_timeout: close with abort=False, return False)", params=(),
        source=("raise exceptions.SocketIsClosedError()",
                "> self.server.ping_timeout:",
                "self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)",
                "return False"))),
    ("engineio-socket-handle-post-request", Reach(
        _EIO, "engineio.socket:Socket.handle_post_request", "copy",
        "workers/sessions.py ClusterSocket.handle_post_request",
        "our read of a polling POST repeats upstream's (past max_http_buffer_size: "
        "ContentTooLongError; the body read from wsgi.input and decoded as UTF-8, as one "
        "Payload whose packets go to receive() in order), decoding packet by packet so that "
        "a malformed one closes the session",
        params=("environ",),
        source=("length = int(environ.get('CONTENT_LENGTH', '0'))",
                "if length > self.server.max_http_buffer_size:",
                "raise exceptions.ContentTooLongError()",
                "body = environ['wsgi.input'].read(length).decode('utf-8')",
                "p = payload.Payload(encoded_payload=body)",
                "self.receive(pkt)"))),
    ("engineio-payload-jsonp", Reach(
        _EIO, "engineio.payload:Payload.decode", "copy",
        "workers/sessions.py ClusterSocket.handle_post_request",
        "a JSONP POST's payload is the form field d (upstream's Payload.decode, which ours "
        "no longer calls for a POST), and packets are separated by 0x1e",
        params=("encoded_payload",),
        source=("if encoded_payload.startswith('d='):",
                "encoded_payload)['d'][0]",
                "encoded_packets = encoded_payload.split('\\x1e')"))),
    ("engineio-socket-receive", Reach(
        _EIO, "engineio.socket:Socket.receive", "override", "workers/sessions.py ClusterSocket",
        "a client's packets arrive through receive(pkt); a PONG calls schedule_ping(), a "
        "CLOSE closes the session",
        params=("pkt",), source=("self.schedule_ping()",
                                 "reason=self.server.reason.CLIENT_DISCONNECT)"))),
    ("engineio-socket-schedule-ping", Reach(
        _EIO, "engineio.socket:Socket.schedule_ping", "override",
        "workers/sessions.py ClusterSocket", "called once after the handshake and on every "
        "PONG; ours puts the session in the shared pinger instead of a greenlet of its own",
        params=(), source=("s.send(pkt)", "s.schedule_ping()"),
        source_in="engineio.server:Server._handle_connect")),
    ("engineio-socket-upgrade-websocket", Reach(
        _EIO, "engineio.socket:Socket._upgrade_websocket", "override",
        "workers/sessions.py ClusterSocket", "a WebSocket request for the session, upgrade "
        "or direct, comes through _upgrade_websocket(environ, start_response), which "
        "answers with the server's _bad_request",
        params=("environ", "start_response"),
        source=("self._websocket_handler, self.server)",))),
    ("engineio-socket-websocket-handler", Reach(
        _EIO, "engineio.socket:Socket._websocket_handler", "copy",
        "workers/sessions.py ClusterSocket._websocket_handler", "ours repeats upstream's "
        "probe exchange (PING probe, PONG probe, NOOP to end the poll, UPGRADE) and read "
        "loop, with the direct writer in place of the writer greenlet",
        params=("ws",),
        source=("if self.connected:", "self.upgrading = True",
                "if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != 'probe':",
                "ws.send(packet.Packet(packet.PONG, data='probe').encode())",
                "self.queue.put(packet.Packet(packet.NOOP))",
                "if decoded_pkt.packet_type != packet.UPGRADE:",
                "self.upgraded = True", "self.connected = True", "ws.close()",
                "except exceptions.UnknownPacketError:",
                "except exceptions.SocketIsClosedError:"))),
    ("engineio-server-attrs", Reach(
        _EIO, "engineio:Server", "read",
        "workers/sessions.py, workers/protocol.py, workers/main.py, workers/fastpath.py",
        "the server's settings, sessions and event handlers as our code reads them",
        attrs=("sockets", "ping_interval", "ping_timeout", "ping_interval_grace_period",
               "max_http_buffer_size", "logger", "async_mode", "cors_allowed_origins",
               "get_queue_empty_exception", "reason.PING_TIMEOUT", "reason.TRANSPORT_ERROR",
               "reason.TRANSPORT_CLOSE", "reason.SERVER_DISCONNECT", "handlers",
               "async_handlers"),
        adds=("_imcluster_pinger", "_imcluster_fast"))),
    ("engineio-cors-origins", Reach(
        _EIO, "engineio.base_server:BaseServer._cors_allowed_origins", "read",
        "workers/main.py WorkerServer.load", "cors_allowed_origins set after the server is built "
        "still applies: it is read per request; a callable is asked (origin, environ) "
        "(workers/main.py listed_or_own_origin)",
        source=("self.cors_allowed_origins", "callable(self.cors_allowed_origins)",
                "self.cors_allowed_origins(origin, environ)"))),
    ("engineio-generate-id", Reach(
        _EIO, "engineio:Server.generate_id", "replace",
        "workers/main.py WorkerServer.load; workers/pubsub.py ClusterPubSubManager.pre_connect",
        "the server makes every sid with self.generate_id(), so an instance attribute "
        "(ours names the worker) takes its place",
        params=(), source=("sid = self.generate_id()",),
        source_in="engineio.server:Server._handle_connect")),
    ("engineio-open-packet", Reach(
        _EIO, "engineio.server:Server._handle_connect", "read",
        "workers/sessions.py ClusterSocket.send, handshake_timings",
        "the OPEN packet's data is a dict with pingInterval and pingTimeout, sent with "
        "s.send(pkt), where we correct them",
        source=("pkt = packet.Packet(packet.OPEN, {", "'pingTimeout':", "'pingInterval':"))),
    ("engineio-ok", Reach(
        _EIO, "engineio:Server._ok", "override", "workers/protocol.py EngineRules",
        "every 200 answer is built by _ok(packets, headers, jsonp_index); without packets "
        "(an accepted POST, a preflight) its body is b'OK'",
        params=("packets", "headers", "jsonp_index"), source=("'response': b'OK'",))),
    ("engineio-handle-request", Reach(
        _EIO, "engineio:Server.handle_request", "override", "workers/protocol.py EngineRules",
        "the WSGI entry of every Engine.IO request", params=("environ", "start_response"))),
    ("engineio-bad-request", Reach(
        _EIO, "engineio:Server._bad_request", "call",
        "workers/internals.py bad_request (workers/protocol.py, workers/sessions.py)",
        "builds upstream's 400 answer as {status, headers, response}", params=("message",),
        source=("'status': '400 BAD REQUEST'",))),
    ("engineio-cors-headers", Reach(
        _EIO, "engineio:Server._cors_headers", "call",
        "workers/internals.py cors_headers (workers/protocol.py)",
        "the CORS headers upstream adds to its own answers", params=("environ",))),
    ("engineio-packet", Reach(
        _EIO, "engineio.packet:Packet", "read", "workers/sessions.py frame_of",
        "an Engine.IO packet object takes an attribute of ours: its WebSocket frame, built "
        "once for all the members of a broadcast", adds=("_imcluster_ws_frame",))),
    ("engineio-exceptions", Reach(
        _EIO, "engineio.exceptions", "read", "workers/sessions.py ClusterSocket",
        "the exceptions upstream's session code raises and catches",
        attrs=("EngineIOError", "QueueEmpty", "SocketIsClosedError", "UnknownPacketError"))),
    ("engineio-log-handler", Reach(
        _EIO, "engineio.base_server:BaseServer.__init__", "read",
        "workers/main.py _one_handler_per_line", "a server built with logger=True/False adds "
        "a bare logging.StreamHandler() to the 'engineio.server' logger, which we remove",
        source=("self.logger.addHandler(logging.StreamHandler())",))),

    # ---- python-socketio -------------------------------------------------------------
    ("socketio-server-attrs", Reach(
        _SIO, "socketio:Server", "read", "workers/protocol.py SocketRules; workers/main.py",
        "the server's engine, manager and handler tables",
        attrs=("eio", "manager", "manager_initialized", "handlers", "namespace_handlers",
               "namespaces", "packet_class", "_binary_packet", "reason.CLIENT_DISCONNECT"),
        adds=("_imcluster_holds", "_imcluster_recovery"))),
    ("socketio-server-init", Reach(
        _SIO, "socketio:Server.__init__", "replace",
        "workers/main.py WorkerServer._default_manager",
        "we wrap the constructor while the app imports; its first parameter is "
        "client_manager, and without one the server makes a plain socketio.Manager",
        source=("if client_manager is None:", "client_manager = manager.Manager()",
                "self.manager = client_manager"),
        source_in="socketio.base_server:BaseServer.__init__")),
    ("socketio-server-init-params", Reach(
        _SIO, "socketio.base_server:BaseServer.__init__", "call",
        "workers/main.py WorkerServer._default_manager", "client_manager is the first parameter",
        params=("client_manager",), positional=1)),
    ("socketio-manager-swap", Reach(
        _SIO, "socketio:Server._handle_eio_connect", "read",
        "workers/main.py WorkerServer._install_manager", "the server initialises its manager "
        "once, on the first Engine.IO connect, unless manager_initialized is set: we set "
        "sio.manager and initialise it ourselves",
        source=("if not self.manager_initialized:", "self.manager_initialized = True",
                "self.manager.initialize()"))),
    ("socketio-handle-connect", Reach(
        _SIO, "socketio:Server._handle_connect", "override",
        "workers/protocol.py SocketRules; workers/recovery.py RecoveryRules",
        "a CONNECT packet arrives as _handle_connect(eio_sid, namespace, data); our "
        "_serves repeats its test of whether a namespace is served",
        params=("eio_sid", "namespace", "data"),
        source=("namespace = namespace or '/'",
                "if namespace in self.handlers or namespace in self.namespace_handlers "
                "or self.namespaces == '*' or namespace in self.namespaces:"))),
    ("socketio-send-packet", Reach(
        _SIO, "socketio:Server._send_packet", "override",
        "workers/protocol.py SocketRules; workers/recovery.py RecoveryRules (CONNECT's pid); "
        "workers/fastpath.py install_acks (direct acks only while these are the overrides)",
        "every Socket.IO packet to a client goes through _send_packet(eio_sid, pkt) (an "
        "emit with a callback among them)",
        params=("eio_sid", "pkt"), source=("self.server._send_packet(eio_sid, pkt)",),
        source_in="socketio.manager:Manager.emit")),
    ("socketio-send-eio-packet", Reach(
        _SIO, "socketio:Server._send_eio_packet", "override", "workers/protocol.py SocketRules",
        "an emit without a callback sends its encoded packet through "
        "_send_eio_packet(eio_sid, eio_pkt)",
        params=("eio_sid", "eio_pkt"), source=("self.server._send_eio_packet(eio_sid, p)",),
        source_in="socketio.manager:Manager.emit")),
    ("socketio-log-handler", Reach(
        _SIO, "socketio.base_server:BaseServer.__init__", "read",
        "workers/main.py _one_handler_per_line", "a server built with logger=True/False adds "
        "a bare logging.StreamHandler() to the 'socketio.server' logger, which we remove",
        source=("self.logger.addHandler(logging.StreamHandler())",))),
    ("socketio-return-callback", Reach(
        _SIO, "socketio:PubSubManager._return_callback", "override",
        "workers/pubsub.py ClusterPubSubManager", "a remote emit's ack is returned through "
        "_return_callback(host_id, sid, namespace, callback_id, *args), which publishes "
        "{'method': 'callback', ..., 'args': args}",
        params=("host_id", "sid", "namespace", "callback_id", "*args"),
        source=("'id': callback_id, 'args': args})",))),
    ("socketio-return-callback-use", Reach(
        _SIO, "socketio:PubSubManager._handle_emit", "read",
        "workers/pubsub.py ClusterPubSubManager", "a relayed emit with a callback gets "
        "partial(self._return_callback, host_id, *callback) as its callback",
        source=("callback = partial(self._return_callback, remote_host_id, "
                "*remote_callback)",))),
    ("socketio-handle-callback", Reach(
        _SIO, "socketio:PubSubManager._handle_callback", "override",
        "workers/pubsub.py ClusterPubSubManager", "every 'callback' message arrives through "
        "_handle_callback(message), which reads message['args']",
        params=("message",), source=("args = message['args']",))),
    ("socketio-publish", Reach(
        _SIO, "socketio:PubSubManager._publish", "override",
        "workers/relay.py MasterRelayManager; workers/redis_manager.py ClusterRedisManager, "
        "InterestRedisManager", "a backend's way to publish one message (a dict)",
        params=("data",))),
    ("socketio-listen", Reach(
        _SIO, "socketio:PubSubManager._listen", "override",
        "workers/pubsub.py ClusterPubSubManager", "the generator of received messages "
        "that PubSubManager._thread reads (ours decodes them and handles our own kinds)",
        params=(), source=("for message in self._listen():",),
        source_in="socketio:PubSubManager._thread")),
    # ---- connection state recovery (workers/recovery.py, workers/pubsub.py) ----------
    ("socketio-handle-disconnect", Reach(
        _SIO, "socketio:Server._handle_disconnect", "override",
        "workers/recovery.py RecoveryRules", "every disconnect the client or its transport "
        "causes arrives as _handle_disconnect(eio_sid, namespace, reason), the reason "
        "telling a lost transport (recoverable) from a client's goodbye",
        params=("eio_sid", "namespace", "reason"),
        source=("self._handle_disconnect(eio_sid, n, reason)",),
        source_in="socketio:Server._handle_eio_disconnect")),
    ("socketio-disconnect", Reach(
        _SIO, "socketio:Server.disconnect", "override", "workers/recovery.py RecoveryRules",
        "the app's (and the manager's) disconnect of a sid: a session gone for good",
        params=("sid", "namespace", "ignore_queue"))),
    ("socketio-save-session", Reach(
        _SIO, "socketio:Server.save_session", "override", "workers/recovery.py RecoveryRules",
        "every change of a session's data goes through save_session (the session() "
        "context manager calls it too)", params=("sid", "session", "namespace"))),
    ("socketio-handle-emit", Reach(
        _SIO, "socketio:PubSubManager._handle_emit", "override",
        "workers/pubsub.py ClusterPubSubManager", "PubSubManager.emit delivers on this host "
        "through self._handle_emit(message) before it publishes; with recovery the master "
        "sends it back with its offset instead",
        params=("message",), source=("self._handle_emit(message)",),
        source_in="socketio:PubSubManager.emit")),
    ("socketio-pre-connect", Reach(
        _SIO, "socketio:PubSubManager.pre_connect", "override",
        "workers/pubsub.py ClusterPubSubManager", "a namespace sid is made in pre_connect with "
        "self.server.eio.generate_id(); a recovered session gets its old one there",
        params=("eio_sid", "namespace"), source=("sid = self.server.eio.generate_id()",))),
    ("socketio-enter-room-path", Reach(
        _SIO, "socketio:PubSubManager.basic_enter_room", "override",
        "workers/pubsub.py ClusterPubSubManager", "every room a sid enters, on this host, "
        "goes through basic_enter_room (reported to the master for recovery)",
        params=("sid", "namespace", "room", "eio_sid"),
        source=("self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)",),
        source_in="socketio.manager:Manager.enter_room")),
    ("socketio-leave-room-path", Reach(
        _SIO, "socketio:PubSubManager.basic_leave_room", "override",
        "workers/pubsub.py ClusterPubSubManager", "every room a sid leaves, on this host",
        params=("sid", "namespace", "room"),
        source=("self.basic_leave_room(sid, namespace, room)",),
        source_in="socketio.manager:Manager.leave_room")),
    ("socketio-manager-emit-encode", Reach(
        _SIO, "socketio.manager:Manager.emit", "copy", "workers/pubsub.py ClusterPubSubManager",
        "a broadcast with its offset is encoded as Manager.emit encodes an emit without a "
        "callback, and sent per participant through _send_eio_packet",
        source=("pkt = self.server.packet_class(packet.EVENT, namespace=namespace, "
                "data=[event] + data)",
                "encoded_packet = pkt.encode()",
                "eio_pkt = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded_packet]"))),
    ("socketio-basic-enter-room", Reach(
        _SIO, "socketio.base_manager:BaseManager.basic_enter_room", "override",
        "workers/redis_manager.py InterestRedisManager", "every socket entering a room "
        "passes through basic_enter_room(sid, namespace, room, eio_sid): connect (rooms "
        "None and the sid's own), enter_room, and the hand-over's move in; the interest "
        "scheme subscribes to a room's channel when its first local member enters",
        params=("sid", "namespace", "room", "eio_sid"),
        source=("self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)",
                "self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)"),
        source_in="socketio.base_manager:BaseManager.pre_connect")),
    ("socketio-basic-leave-room", Reach(
        _SIO, "socketio.base_manager:BaseManager.basic_leave_room", "override",
        "workers/redis_manager.py InterestRedisManager", "every socket leaving a room "
        "passes through basic_leave_room(sid, namespace, room): leave_room, close_room, "
        "and disconnect (each of its rooms); a room without members is deleted from "
        "rooms[namespace], when the scheme unsubscribes",
        params=("sid", "namespace", "room"),
        source=("self.basic_leave_room(sid, namespace, room)",),
        source_in="socketio.base_manager:BaseManager.basic_disconnect")),
    ("socketio-remote-enter-room", Reach(
        _SIO, "socketio:PubSubManager.enter_room", "override",
        "workers/redis_manager.py InterestRedisManager", "enter_room(sid, namespace, room, "
        "eio_sid) acts locally for a sid of this worker and publishes {'method': "
        "'enter_room', 'sid', 'room', 'namespace', 'host_id'} otherwise; the interest "
        "scheme publishes it too, then waits for the sid's worker",
        params=("sid", "namespace", "room", "eio_sid"),
        source=("message = {'method': 'enter_room', 'sid': sid, 'room': room,",))),
    ("socketio-remote-leave-room", Reach(
        _SIO, "socketio:PubSubManager.leave_room", "override",
        "workers/redis_manager.py InterestRedisManager", "leave_room(sid, namespace, room), "
        "as enter_room", params=("sid", "namespace", "room"),
        source=("message = {'method': 'leave_room', 'sid': sid, 'room': room,",))),
    ("socketio-can-disconnect", Reach(
        _SIO, "socketio:PubSubManager.can_disconnect", "override",
        "workers/redis_manager.py InterestRedisManager", "can_disconnect(sid, namespace), "
        "what Server.disconnect asks: true for a sid of this worker; otherwise it "
        "publishes {'method': 'disconnect', 'sid', 'namespace', 'host_id'}; the interest "
        "scheme publishes it too, then waits for the sid's worker",
        params=("sid", "namespace"),
        source=("message = {'method': 'disconnect', 'sid': sid,",))),
    ("socketio-remote-disconnect", Reach(
        _SIO, "socketio:PubSubManager.disconnect", "override",
        "workers/redis_manager.py InterestRedisManager", "disconnect(sid, namespace, "
        "**kwargs): with ignore_queue, the local disconnect; otherwise as can_disconnect",
        params=("sid", "namespace", "**kwargs"),
        source=("if kwargs.get('ignore_queue'):",
                "message = {'method': 'disconnect', 'sid': sid,"))),
    ("socketio-manager-name", Reach(
        _SIO, "socketio:PubSubManager.name", "override",
        "workers/relay.py MasterRelayManager; workers/redis_manager.py ClusterRedisManager",
        "a manager's name, which python-socketio logs and reports")),
    ("socketio-manager-attrs", Reach(
        _SIO, "socketio:PubSubManager", "read", "workers/pubsub.py, workers/relay.py, "
        "workers/redis_manager.py", "the manager's host id (compared for equality and "
        "carried in messages only: the interest scheme sets its own, naming the worker), "
        "JSON module, channel, logger and callback trigger",
        attrs=("host_id", "json", "channel", "trigger_callback", "_get_logger"))),
    # ---- faster packets (workers/fastpacket.py) ---------------------------------------
    ("socketio-packet-class", Reach(
        _SIO, "socketio:Server", "read", "workers/fastpacket.py install",
        "every Socket.IO packet the server and its manager make is self.packet_class(...) "
        "(the `serializer` argument); we swap in a subclass when it is the default Packet "
        "with python-engineio's JSON module (Packet.json)",
        attrs=("packet_class",), source=("pkt = self.packet_class(encoded_packet=data)",),
        source_in="socketio:Server._handle_eio_message")),
    ("socketio-packet-encode", Reach(
        _SIO, "socketio.packet:Packet.encode", "override", "workers/fastpacket.py FastPacket",
        "a text packet is str(type), the namespace and ',' unless '/', the id, then "
        "json.dumps(data, separators=(',', ':')) unless data is None; binary ones are "
        "left to upstream", params=(),
        source=("encoded_packet = str(self.packet_type)",
                "if self.namespace is not None and self.namespace != '/':",
                "encoded_packet += self.namespace + ','", "encoded_packet += str(self.id)",
                "encoded_packet += self.json.dumps(data, separators=(',', ':'))"))),
    ("socketio-packet-decode", Reach(
        _SIO, "socketio.packet:Packet.decode", "override", "workers/fastpacket.py FastPacket",
        "upstream's decode parses the payload with self.json.loads(ep), which ours points "
        "at a faster module for the call", params=("encoded_packet",),
        source=("self.data = self.json.loads(ep)",))),
    ("socketio-packet-binary", Reach(
        _SIO, "socketio.packet:Packet.data_is_binary", "override",
        "workers/fastpacket.py FastPacket", "a classmethod: True when bytes or bytearray "
        "sit anywhere in lists and dict values; ours answers the same",
        params=("data",), source=("if isinstance(data, (bytes, bytearray)):",
                                  "elif isinstance(data, list):",
                                  "elif isinstance(data, dict):",
                                  "for item in data.values()],"))),
    ("engineio-json-loads", Reach(
        _EIO, "engineio.json:loads", "copy", "workers/fastpacket.py _safe_int",
        "python-engineio's loads refuses integers longer than 100 digits (parse_int); "
        "our decoder does the same", source=("if len(s) > 100:",),
        source_in="engineio.json:_safe_int")),
    # ---- handlers started directly (workers/dispatch.py) ------------------------------
    ("socketio-handle-event", Reach(
        _SIO, "socketio:Server._handle_event", "copy", "workers/dispatch.py InlineEvents",
        "ours repeats upstream's (sid lookup, log, connected check) and starts "
        "_handle_event_internal(self, sid, eio_sid, data, namespace, id) with run_now in "
        "place of start_background_task", params=("eio_sid", "namespace", "id", "data"),
        source=("namespace = namespace or '/'",
                "sid = self.manager.sid_from_eio_sid(eio_sid, namespace)",
                "if not self.manager.is_connected(sid, namespace):",
                "if self.async_handlers:",
                "self.start_background_task(self._handle_event_internal, self, sid,",
                "eio_sid, data, namespace, id)"))),
    ("eventlet-hub-switch-out", Reach(
        _EV, "eventlet.hubs.hub:BaseHub.switch", "read", "workers/dispatch.py HandlerGreenlet",
        "a greenlet that waits goes through hub.switch(), which first calls the greenlet's "
        "switch_out() if it has one, then makes the hub its parent",
        params=(), source=("switch_out = getattr(cur, 'switch_out', None)", "switch_out()",
                           "cur.parent = self.greenlet"))),
    ("eventlet-current-thread-link", Reach(
        _EV, "eventlet.green.threading:current_thread", "read",
        "workers/dispatch.py HandlerGreenlet.link", "for a greenlet with link(), eventlet's "
        "current_thread() makes a _GreenThread of its own and links a callback that "
        "forgets it at the end; without link() it answers the main thread",
        params=(), source=("g.link(cleanup)", "t = active[g_id] = _GreenThread(g)",
                           "def cleanup(g):", "del active[g_id]"))),
    ("eventlet-hub-debug-exceptions", Reach(
        _EV, "eventlet.hubs.hub:BaseHub.squelch_timer_exception", "read",
        "workers/dispatch.py HandlerGreenlet.run", "an exception escaping a GreenThread is "
        "printed to stderr when the hub's debug_exceptions is set; ours is logged then",
        source=("if self.debug_exceptions:", "traceback.print_exception(*exc_info)"))),
    # ---- plain acks written directly (workers/fastpath.py DirectAcks) ------------------
    ("socketio-handle-event-internal-copy", Reach(
        _SIO, "socketio:Server._handle_event_internal", "copy",
        "workers/fastpath.py DirectAcks", "ours repeats upstream's (the handler through "
        "server._trigger_event, its return value as the ack's list) and writes a plain ack "
        "itself, else sends upstream's ACK packet through _send_packet",
        params=("server", "sid", "eio_sid", "data", "namespace", "id"),
        source=("r = server._trigger_event(data[0], namespace, sid, *data[1:])",
                "if r != self.not_handled and id is not None:", "if r is None:",
                "elif isinstance(r, tuple):", "data = list(r)", "data = [r]",
                "server._send_packet(eio_sid, self.packet_class(",
                "packet.ACK, namespace=namespace, id=id, data=data))"))),
    ("engineio-server-send", Reach(
        _EIO, "engineio:Server.send", "read", "workers/fastpath.py write_ack",
        "a Socket.IO packet's text goes out as a MESSAGE Packet to the session's "
        "send(pkt), found in sockets (a closed one is dropped there, with a warning)",
        params=("sid", "data"),
        source=("self.send_packet(sid, packet.Packet(packet.MESSAGE, data=data))",))),
    ("engineio-message-encode", Reach(
        _EIO, "engineio.packet:Packet.encode", "read", "workers/fastpath.py ack_text",
        "a text MESSAGE is encoded as its type ('4') followed by the text, unchanged",
        params=("b64",), source=("encoded_packet = str(self.packet_type)",
                                 "if isinstance(self.data, str):",
                                 "encoded_packet += self.data"))),
    # ---- text events the short way (workers/fastpath.py) -------------------------------
    ("socketio-handle-eio-message", Reach(
        _SIO, "socketio:Server._handle_eio_message", "read", "workers/fastpath.py",
        "what FastEvents.receive does in its place for a text EVENT: no binary packet "
        "pending for the session, a packet decoded by packet_class, then "
        "_handle_event(eio_sid, namespace, id, data)", params=("eio_sid", "data"),
        source=("if eio_sid in self._binary_packet:",
                "pkt = self.packet_class(encoded_packet=data)",
                "elif pkt.packet_type == packet.EVENT:",
                "self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)"))),
    ("socketio-handle-eio-message-copy", Reach(
        _SIO, "socketio:Server._handle_eio_message", "copy",
        "workers/protocol.py SocketRules._imcluster_eio_message",
        "ours repeats upstream's dispatch (attachments of a pending binary packet, else "
        "decode with packet_class, then the handler per type) and closes the session "
        "where upstream raises or lets a malformed packet through; registered as the "
        "engine's 'message' handler in the place of upstream's bound method",
        params=("eio_sid", "data"),
        source=("if eio_sid in self._binary_packet:", "pkt = self._binary_packet[eio_sid]",
                "if pkt.add_attachment(data):", "del self._binary_packet[eio_sid]",
                "pkt = self.packet_class(encoded_packet=data)",
                "self._handle_connect(eio_sid, pkt.namespace, pkt.data)",
                "self._handle_disconnect(eio_sid, pkt.namespace,",
                "self.reason.CLIENT_DISCONNECT)",
                "self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)",
                "self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)",
                "if not self.manager.sid_from_eio_sid(eio_sid,",
                "self._binary_packet[eio_sid] = pkt"))),
    ("engineio-trigger-event", Reach(
        _EIO, "engineio:Server._trigger_event", "read", "workers/fastpath.py",
        "a message reaches handlers['message'](sid, data), run inline unless "
        "async_handlers, anything it raises logged as 'message handler error'",
        source=("return self.handlers[event](*args)",
                "self.logger.exception(event + ' handler error')",
                "if run_async:"))),
    ("engineio-socket-receive-message", Reach(
        _EIO, "engineio.socket:Socket.receive", "read", "workers/fastpath.py",
        "a MESSAGE is logged at INFO and passed to _trigger_event('message', sid, data, "
        "run_async=async_handlers); its text is the packet less its type, as python-"
        "engineio's decode gives it for a Socket.IO packet (it refuses JSON that starts "
        "with a digit)",
        source=("self.server._trigger_event('message', self.sid, pkt.data,",
                "run_async=self.server.async_handlers)"))),
    ("engineio-packet-decode", Reach(
        _EIO, "engineio.packet:Packet.decode", "read", "workers/fastpath.py",
        "a text MESSAGE whose data is not JSON keeps its data as the string; a Socket.IO "
        "EVENT ('2' then '[' or '/' or an id) never is (4.15 refuses data starting with a "
        "digit before trying JSON, 4.11 tries JSON, which fails on the text after the '2')",
        source=("self.json.loads(encoded_packet[1:])", "self.data = encoded_packet[1:]"))),
    # ---- session hand-over (workers/handover.py) ---------------------------------------
    ("socketio-handover-state", Reach(
        _SIO, "socketio:Server", "read", "workers/handover.py move_out, move_in",
        "a session's per-eio-sid request environ and half-received binary packet, which "
        "the old worker reads (and refuses a move for) and the new one fills in",
        attrs=("environ", "_binary_packet"))),
    ("socketio-manager-callbacks", Reach(
        _SIO, "socketio:PubSubManager", "read",
        "workers/handover.py _take_state, move_in; workers/pubsub.py emit_to_session",
        "the server's pending acks by Socket.IO sid, {0: itertools.count, id: callback}: "
        "a moving session waits for them and carries the counter's next id",
        attrs=("callbacks", "rooms", "basic_disconnect", "basic_enter_room", "get_namespaces"),
        source=("self.callbacks[sid] = {0: itertools.count(1)}",
                "id = next(self.callbacks[sid][0])"),
        source_in="socketio.base_manager:BaseManager._generate_ack_id")),
    ("socketio-handle-event-internal", Reach(
        _SIO, "socketio:Server._handle_event_internal", "replace",
        "workers/drain.py RunningHandlers",
        "each event runs in a background task "
        "through this method (async_handlers); wrapped per instance to count the handlers "
        "running, by event name (a drain waits for them) and by session (a hand-over "
        "waits for a session's own: workers/handover.py _take_state)",
        params=("server", "sid", "eio_sid", "data", "namespace", "id"),
        source=("self.start_background_task(self._handle_event_internal, self, sid,",),
        source_in="socketio:Server._handle_event")),
    # ---- Flask-SocketIO (workers/app.py, workers/handover.py) ------------------------
    ("flask-socketio-middleware", Reach(
        _FSIO, "flask_socketio:_SocketIOMiddleware.__call__", "read",
        "workers/app.py find, _outermost; workers/handover.py move_in",
        "SocketIO(app) wraps app.wsgi_app in its middleware, kept as socketio.sockio_mw, "
        "which sets environ['flask.app'] = self.flask_app on every request; every handler "
        "reads it (_handle_event), so a session moved in gets this worker's Flask app there",
        params=("environ", "start_response"),
        source=("environ['flask.app'] = self.flask_app",))),
    ("flask-socketio-session", Reach(
        _FSIO, "flask_socketio:_ManagedSession", "call",
        "workers/handover.py _take_state, move_in",
        "with manage_session (the default) a connection's Flask session is "
        "environ['saved_session'], a _ManagedSession (a dict with Flask's SessionMixin) "
        "made from flask.session at the first event and read by every later one: its "
        "items move with the session and are wrapped in one again on arrival",
        source=("app = environ['flask.app']",
                "if 'saved_session' not in environ:",
                "environ['saved_session'] = _ManagedSession(flask.session)",
                "session_obj = environ['saved_session']"),
        source_in="flask_socketio:SocketIO._handle_event")),
    ("socketio-binary", Reach(
        _SIO, "socketio.packet:Packet", "read", "workers/pubsub.py ClusterPubSubManager",
        "the binary attachment codec emits use, for acks that carry bytes",
        attrs=("data_is_binary", "deconstruct_binary", "reconstruct_binary"))),
    # ---- python-socketio's Admin UI instrumentation (workers/admin.py) ----------------
    ("socketio-admin-server", Reach(
        _SIO, "socketio.admin:InstrumentedServer", "replace",
        "workers/admin.py install", "Server.instrument() imports InstrumentedServer from "
        "socketio.admin when called, so our subclass in its place is what it builds",
        source=("from .admin import InstrumentedServer",),
        source_in="socketio:Server.instrument")),
    ("socketio-admin-connect", Reach(
        _SIO, "socketio.admin:InstrumentedServer.admin_connect", "copy",
        "workers/admin.py ClusterInstrumentedServer", "ours repeats upstream's auth check and "
        "config task (config, then all_sockets in development mode, after 0.1 s) but sends "
        "them to the admin that connected (upstream's loop rebinds its sid)",
        params=("sid", "environ", "client_auth"),
        source=("authenticated = client_auth == self.auth",
                "authenticated = client_auth in self.auth",
                "authenticated = self.auth(client_auth)",
                "raise ConnectionRefusedError('authentication failed')",
                "self.sio.sleep(0.1)", "features = ['AGGREGATED_EVENTS']",
                "features += ['EMIT', 'JOIN', 'LEAVE', 'DISCONNECT', 'MJOIN',",
                "features.append('ALL_EVENTS')",
                "self.sio.emit('config', {'supportedFeatures': features},",
                "for sid, eio_sid in self.sio.manager.get_participants(",
                "self.serialize_socket(sid, nsp, eio_sid))",
                "self.sio.emit('all_sockets', all_sockets, to=sid,",
                "self.sio.start_background_task(config, sid)"))),
    ("socketio-admin-actions", Reach(
        _SIO, "socketio.admin:InstrumentedServer.admin_enter_room", "override",
        "workers/admin.py ClusterInstrumentedServer", "the UI's join, leave and disconnect "
        "actions are these handlers on the admin namespace; ours act on every worker",
        params=("_", "namespace", "room", "room_filter"),
        source=("self.sio.on('join', self.admin_enter_room,",),
        source_in="socketio.admin:InstrumentedServer.instrument")),
    ("socketio-admin-leave", Reach(
        _SIO, "socketio.admin:InstrumentedServer.admin_leave_room", "override",
        "workers/admin.py ClusterInstrumentedServer (socketio-admin-actions)",
        "the UI's leave action", params=("_", "namespace", "room", "room_filter"))),
    ("socketio-admin-disconnect", Reach(
        _SIO, "socketio.admin:InstrumentedServer.admin_disconnect", "override",
        "workers/admin.py ClusterInstrumentedServer (socketio-admin-actions)",
        "the UI's disconnect action", params=("_", "namespace", "close", "room_filter"))),
    ("socketio-admin-emit", Reach(
        _SIO, "socketio.admin:InstrumentedServer._emit", "override",
        "workers/admin.py ClusterInstrumentedServer", "development mode installs _emit as "
        "the manager's emit; it sees `all_sockets` go to an admin",
        params=("event", "data", "namespace", "room", "skip_sid", "callback", "**kwargs"))),
    ("socketio-admin-stats", Reach(
        _SIO, "socketio.admin:InstrumentedServer._emit_server_stats", "call",
        "workers/admin.py ClusterInstrumentedServer", "the stats task; upstream starts it at "
        "the first connection (stats_task, stop_stats_event), ours at instrument()",
        params=(), source=("self.stats_task = self.sio.start_background_task(",),
        source_in="socketio.admin:InstrumentedServer._handle_eio_connect")),
]}


# ---- the reaches, by name -----------------------------------------------------------

# eventlet-apply-mask
ORIGINAL_APPLY_MASK = eventlet.websocket.RFC6455WebSocket._apply_mask


def install_apply_mask(apply_mask) -> None:
    """Make every eventlet WebSocket unmask with `apply_mask` (eventlet-apply-mask)."""
    eventlet.websocket.RFC6455WebSocket._apply_mask = staticmethod(apply_mask)


def route_ws_writes(ws, write) -> None:
    """Send every frame `ws` writes through `write(frame)` (eventlet-ws-send)."""
    ws._send = write


def send_closing_frame(ws, close_data=None) -> None:
    """Write `ws`'s close frame, leaving its socket open (eventlet-ws-closing-frame)."""
    ws._send_closing_frame(ignore_send_errors=True, close_data=close_data)


def raw_socket(sock):
    """The non-blocking socket under an eventlet green socket (eventlet-green-fd)."""
    return sock.fd


# eventlet-wsgi-states, eventlet-wsgi-conn-state
WSGI_STATE_IDLE = eventlet.wsgi.STATE_IDLE
WSGI_STATE_CLOSE = eventlet.wsgi.STATE_CLOSE
_STATUS = 2  # conn_state[2]


def new_conn_state(addr, sock) -> list:
    """The connection state eventlet's Server.process_request takes."""
    return [addr, sock, WSGI_STATE_IDLE]


def conn_status(conn_state: list):
    return conn_state[_STATUS]


def set_conn_status(conn_state: list, status) -> None:
    conn_state[_STATUS] = status


# engineio-socket-class: the class ClusterSocket extends, captured before any swap.
ENGINE_SOCKET = engineio.socket.Socket


def install_socket_class(cls: type) -> None:
    """Make every Engine.IO server in this process create `cls` sessions."""
    engineio.socket.Socket = cls


def bad_request(server, message: str | None = None) -> dict:
    """python-engineio's own 400 answer, {status, headers, response} (engineio-bad-request)."""
    return server._bad_request(message)


def cors_headers(server, environ: dict) -> list:
    """The CORS headers python-engineio adds to its answers (engineio-cors-headers)."""
    return server._cors_headers(environ)


# flask-socketio-session: the environ key and the class of Flask-SocketIO's
# per-connection session.
FLASK_SOCKETIO_SESSION = "saved_session"


def flask_socketio_session(items: dict):
    """A Flask-SocketIO per-connection session holding `items`, as its
    `_handle_event` makes one (flask-socketio-session). Raises ImportError or
    AttributeError when flask_socketio is missing or no longer has the class."""
    import flask_socketio

    return flask_socketio._ManagedSession(items)
