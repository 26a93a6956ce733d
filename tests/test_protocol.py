"""Engine.IO v4 and Socket.IO v5 on the wire, as the protocol documents and
their test suites say (workers/protocol.py, sessions.ClusterSocket). Driven
by raw HTTP and raw WebSocket clients through a real cluster; the official JS
client where what it makes of an answer is the point.

Two clusters serve tests/apps/protocol_app.py: `sio` (25.5 s ping interval,
so a poll stays pending as long as a test needs) and `quick` (300 ms interval,
3 s timeout, for the heartbeat rules).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import pytest
import websocket
from conftest import JS, ROOT, Cluster, wait_for
from rawhttp import EIO, Conn, handshake, open_session, poll_target, ws_url

APPS = ROOT / "tests" / "apps"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    made = {name: Cluster(tmp, app=f"protocol_app:{name}", workers=2, cwd=APPS)
            for name in ("sio", "quick")}
    try:
        for c in made.values():
            c.wait_ready()
        yield made
    finally:
        for c in made.values():
            c.stop()


@pytest.fixture
def port(servers) -> int:
    return servers["sio"].port


@pytest.fixture
def quick_port(servers) -> int:
    return servers["quick"].port


def ws_open(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=10)


def ws_until(ws: websocket.WebSocket, want) -> list[str]:
    """Frames up to and including the first for which want(frame) holds (PINGs skipped)."""
    seen = []
    while True:
        frame = ws.recv()
        if frame == "2":
            continue
        seen.append(frame)
        if want(frame):
            return seen


def upgraded(port: int, sid: str) -> websocket.WebSocket:
    """A WebSocket that has completed the upgrade of polling session `sid`
    (probe, UPGRADE) and connected the default namespace over it."""
    ws = ws_open(ws_url(port, sid))
    ws.send("2probe")
    assert ws.recv() == "3probe"
    ws.send("5")
    ws.send("40")
    ws_until(ws, lambda f: f.startswith("40{"))
    return ws


def echo_over(ws: websocket.WebSocket, text: str) -> None:
    ws.send(f'427["echo","{text}"]')
    ws_until(ws, lambda f: f == f'437["{text}"]')


# ---- Engine.IO: handshake and HTTP ------------------------------------------

def test_handshake_gives_ping_interval_and_timeout_in_milliseconds(servers):
    """"Handshake": pingInterval and pingTimeout in ms. python-engineio sent
    the interval in whole seconds (300 ms as 0, 25.5 s as 25000) and
    truncated the timeout (16.06 s as 16059)."""
    want = {"sio": (25500, 16060), "quick": (300, 3000)}
    for name, (interval, timeout) in want.items():
        p = servers[name].port
        opened = handshake(p)
        assert (opened["pingInterval"], opened["pingTimeout"]) == (interval, timeout), name
        ws = ws_open(ws_url(p))
        try:
            opened = json.loads(ws.recv()[1:])
        finally:
            ws.close()
        assert (opened["pingInterval"], opened["pingTimeout"]) == (interval, timeout), name


def test_accepted_post_is_answered_ok(port):
    """"Sending data": the server MUST answer 200 with `ok` (not `OK`)."""
    sid = handshake(port)["sid"]
    with Conn(port) as c:
        status, _, body = c.request("POST", poll_target(sid), b"40")
    assert (status, body) == (200, b"ok")


def test_a_post_carries_as_many_packets_as_its_payload_holds(port):
    """"Sending data": a POST's payload is packets separated by 0x1e, as many as
    fit in the maxPayload the handshake announced; the official client sends
    all it queued in one. python-engineio dropped a POST of more than 16
    packets whole, while answering it ok: every one of the 100 echoes here is
    acked, in order."""
    sid = open_session(port)
    n = 100
    body = "\x1e".join(f'42{i}["echo",{i}]' for i in range(n)).encode()
    acks: list[int] = []
    with Conn(port) as c:
        assert c.request("POST", poll_target(sid), body)[::2] == (200, b"ok")
        deadline = time.monotonic() + 20
        while len(acks) < n and time.monotonic() < deadline:
            status, _, got = c.request("GET", poll_target(sid))
            assert status == 200, got
            for packet in got.split(b"\x1e"):
                if packet.startswith(b"43"):
                    i = int(packet[2:packet.index(b"[")])
                    assert json.loads(packet[packet.index(b"["):]) == [i]
                    acks.append(i)
    assert acks == list(range(n))


def test_request_without_a_known_transport_gets_400(port):
    """"Query parameters": transport is mandatory; without it (or with an
    unknown one) the answer is 400, never a session (python-engineio took a
    missing transport for polling)."""
    sid = handshake(port)["sid"]
    for target in ("/socket.io/?EIO=4", "/socket.io/?EIO=4&transport=",
                   "/socket.io/?EIO=4&transport=abc", f"/socket.io/?EIO=4&sid={sid}"):
        with Conn(port) as c:
            status, _, body = c.request("GET", target)
        assert status == 400, (target, body)
    # A WebSocket request without it is refused too ("the server MUST close").
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_open(f"ws://127.0.0.1:{port}/socket.io/?EIO=4")
    assert refused.value.status_code == 400


def test_unsupported_method_gets_400(port):
    """The test suite's "fails with an invalid request method": 400, not 405.
    A CORS preflight (OPTIONS) is still answered."""
    sid = handshake(port)["sid"]
    for method in ("PUT", "DELETE", "PATCH"):
        for target in (EIO, poll_target(sid)):
            with Conn(port) as c:
                status, _, body = c.request(method, target)
            assert status == 400, (method, target, body)
    with Conn(port) as c:
        assert c.request("OPTIONS", EIO)[0] == 200


def test_second_pending_get_poll_closes_the_session(port):
    """"Receiving data": a second active GET gets 400 and the session is
    closed; the pending GET is answered with a CLOSE packet (the test suite's
    "closes the session upon duplicate poll requests")."""
    sid = handshake(port)["sid"]
    with Conn(port) as first:
        first.send(Conn.build("GET", poll_target(sid)))
        wait_for(first.taken_by_server, 10, 0.01, "the first poll to reach its worker")
        with Conn(port) as second:
            status, _, body = second.request("GET", poll_target(sid) + "&t=burst")
        assert status == 400, body
        assert first.read_response()[::2] == (200, b"1")
    with Conn(port) as c:
        assert c.request("GET", poll_target(sid))[0] == 400


# ---- Engine.IO: after an upgrade ----------------------------------------------

def test_upgraded_session_refuses_polling_and_a_second_websocket(port):
    """After the upgrade, a polling request with the sid gets 400 and a second
    WebSocket is refused ("WebSocket": the server MUST close it), while the
    upgraded WebSocket carries on."""
    sid = handshake(port)["sid"]
    ws = upgraded(port, sid)
    try:
        for method, body in (("GET", b""), ("POST", b'42["echo","x"]')):
            with Conn(port) as c:
                assert c.request(method, poll_target(sid), body)[0] == 400, method
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_open(ws_url(port, sid))
        assert refused.value.status_code == 400
        echo_over(ws, "still here")
    finally:
        ws.close()


def test_second_websocket_refused_while_the_first_probes(port):
    """A client MUST NOT open more than one WebSocket per session, also while
    the first is still probing (python-engineio refused only once upgraded,
    and ran a second probe beside the first)."""
    sid = handshake(port)["sid"]
    ws = ws_open(ws_url(port, sid))
    try:
        ws.send("2probe")
        assert ws.recv() == "3probe"
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_open(ws_url(port, sid)).close()
        assert refused.value.status_code == 400
        ws.send("5")
        ws.send("40")
        ws_until(ws, lambda f: f.startswith("40{"))
        echo_over(ws, "first one")
    finally:
        ws.close()


# ---- Engine.IO: heartbeat and close -------------------------------------------

def test_polling_session_closes_on_ping_timeout(quick_port):
    """"Heartbeat": without a PONG the session closes at the deadline; a poll
    it holds then is answered with a CLOSE packet (python-engineio: an empty
    body, whenever its service task came by), and later requests get 400."""
    sid = handshake(quick_port)["sid"]
    with Conn(quick_port) as c:
        assert c.request("GET", poll_target(sid))[::2] == (200, b"2")
        # No PONG: this poll is pending at the deadline, 3 s after the PING.
        assert c.request("GET", poll_target(sid))[::2] == (200, b"1")
        assert c.request("GET", poll_target(sid))[0] == 400
        assert c.request("POST", poll_target(sid), b"3")[0] == 400


def test_websocket_session_closes_on_ping_timeout_with_close_packet(quick_port):
    """The same over WebSocket: a CLOSE packet, then the close (python-engineio
    closed the connection without the packet)."""
    ws = ws_open(ws_url(quick_port))
    try:
        assert ws.recv().startswith("0{")
        assert ws.recv() == "2"
        frames = []
        while frame := ws.recv():  # "" once the server has closed the connection
            frames.append(frame)
        assert frames == ["1"]
    finally:
        ws.close()


def test_client_close_packet_over_polling_closes_the_session(port):
    """A CLOSE packet from a polling client: the POST is answered `ok`, the
    pending GET with a NOOP (the test suite's "forcefully closes the
    session"; python-engineio answered it with an empty body), and later
    requests get 400."""
    sid = handshake(port)["sid"]
    with Conn(port) as pending:
        pending.send(Conn.build("GET", poll_target(sid)))
        wait_for(pending.taken_by_server, 10, 0.01, "the poll to reach its worker")
        with Conn(port) as c:
            assert c.request("POST", poll_target(sid), b"1")[::2] == (200, b"ok")
        assert pending.read_response()[::2] == (200, b"6")
    for method, body in (("GET", b""), ("POST", b"40")):
        with Conn(port) as c:
            assert c.request(method, poll_target(sid), body)[0] == 400, method



def _connected(port: int) -> str:
    """A polling session connected to the default namespace (its greeting
    read): its Engine.IO sid."""
    sid = handshake(port)["sid"]
    with Conn(port) as c:
        assert c.request("POST", poll_target(sid), b"40")[0] == 200
        body = b""
        while b'42["hello"' not in body:
            body += c.request("GET", poll_target(sid))[2]
    return sid


@contextlib.contextmanager
def _pending_get(port: int, sid: str):
    """A GET of session `sid` parked at its worker (a Conn; read its answer)."""
    with Conn(port) as pending:
        pending.send(Conn.build("GET", poll_target(sid)))
        wait_for(pending.taken_by_server, 10, 0.01, "the poll to reach its worker")
        yield pending


# Payloads with a packet engine.io-parser refuses (decodePacket: ERROR_PACKET).
MALFORMED_PAYLOADS = [
    b"abc",  # the Engine.IO test suite's case: "a" is no packet type
    b"9",  # nor is a digit past 6
    b"",  # an empty body: one empty packet
    b'42["echo","before"]\x1e',  # a good packet, then an empty one (a stray separator)
]


@pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
def test_a_malformed_engineio_payload_closes_the_session(port, payload):
    """A polling POST with a packet Engine.IO's parser refuses, as Node's engine.io
    answers it (6.6: `decodePayload` stops at the ERROR packet, `Socket.onPacket`
    closes on it, "parse error"; the POST's `onEnd` still answers 200 `ok`): the
    pending GET ends with the CLOSE packet and later requests get 400 (the test
    suite's "closes the session upon invalid packet format"). python-engineio
    answered `abc` and the empty packets `ok` and went on with the session (the
    pending GET stayed pending), and `9` with a 400."""
    sid = _connected(port)
    with _pending_get(port, sid) as pending:
        with Conn(port) as c:
            assert c.request("POST", poll_target(sid), payload)[::2] == (200, b"ok")
        status, _, body = pending.read_response()
        # (an echo before the malformed packet may be acked in the same answer)
        assert status == 200 and body.split(b"\x1e")[-1] == b"1", body
    for method, body in (("GET", b""), ("POST", b"40")):
        with Conn(port) as c:
            assert c.request(method, poll_target(sid), body)[0] == 400, method

# ---- Socket.IO ------------------------------------------------------------------

def test_connect_to_unknown_namespace_gets_invalid_namespace(servers, port):
    """The v5 test suite: CONNECT to a namespace the app does not serve gets
    CONNECT_ERROR `{"message": "Invalid namespace"}` (python-socketio sent the
    string "Unable to connect"), which the JS client reports as the error's
    message."""
    ws = ws_open(ws_url(port))
    try:
        ws.recv()  # OPEN
        ws.send("40/nowhere,")
        assert ws_until(ws, lambda f: True) == ['44/nowhere,{"message":"Invalid namespace"}']
    finally:
        ws.close()
    script = (
        'import { io } from "socket.io-client";'
        f'const s = io("{servers["sio"].url}/nowhere", '
        '{transports: ["websocket"], reconnection: false});'
        's.on("connect_error", (e) => { console.log(JSON.stringify({message: e.message}));'
        ' process.exit(0); });'
        'setTimeout(() => { console.log("{}"); process.exit(0); }, 10000);')
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=JS,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"message": "Invalid namespace"}


def test_emit_from_connect_handler_follows_the_connect_reply(port):
    """The app's connect handler emits `hello`: the client hears the CONNECT
    reply first (python-socketio sent the event before it), over polling and
    over WebSocket."""
    sid = handshake(port)["sid"]
    packets: list[bytes] = []
    with Conn(port) as c:
        assert c.request("POST", poll_target(sid), b'40{"token":"p"}')[0] == 200
        while len(packets) < 2:
            status, _, body = c.request("GET", poll_target(sid))
            assert status == 200, body
            packets += body.split(b"\x1e")
    assert packets[0].startswith(b"40{") and packets[1] == b'42["hello",{"token":"p"}]', packets

    ws = ws_open(ws_url(port))
    try:
        ws.recv()  # OPEN
        ws.send('40{"token":"w"}')
        frames = ws_until(ws, lambda f: f.startswith("42"))
        assert frames[0].startswith("40{") and frames[1:] == ['42["hello",{"token":"w"}]'], frames
    finally:
        ws.close()


# ---- malformed Socket.IO packets: the connection closes, as socket.io's does ------
# socket.io's server closes the Engine.IO connection on a packet its decoder
# refuses (Client.onerror -> conn.close()); the v5 test suite's "should close the
# connection upon invalid format" cases are the first three. python-socketio
# dropped each with an ERROR and kept the session.
MALFORMED = [
    "4abc",  # unknown packet type
    "42{}",  # invalid payload format (an EVENT's payload is an array)
    '42abc["echo",1]',  # invalid ack id
    "42[]",  # an EVENT without its name
    '42["connect"]',  # a reserved event name
    '42[true,"x"]',  # a name that is neither a string nor a number
    '431{"a":1}',  # an ACK whose payload is not an array
    '44{"message":"x"}',  # CONNECT_ERROR: only a server sends it
    '45["x"]',  # a binary EVENT without an attachment count
    '41{"a":1}',  # DISCONNECT with a payload
    '40"token"',  # CONNECT whose auth is not an object
]


def _closed(ws: websocket.WebSocket) -> list[str]:
    """Frames until the server closes the connection ("" from recv), PINGs skipped."""
    frames = []
    while frame := ws.recv():
        if frame != "2":
            frames.append(frame)
    return frames


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_packet_over_websocket_closes_the_connection(port, text):
    """A client connected to the default namespace, an echo answered (the fast
    path, workers/fastpath.py, took it), then one malformed packet: the server
    closes the connection and forgets the session."""
    ws = ws_open(ws_url(port))
    try:
        sid = json.loads(ws.recv()[1:])["sid"]
        ws.send("40")
        ws_until(ws, lambda f: f.startswith("42"))  # CONNECT reply, hello
        echo_over(ws, "before")
        ws.send(text)
        assert _closed(ws) in ([], ["1"])
    finally:
        ws.close()
    with Conn(port) as c:
        assert c.request("GET", poll_target(sid))[0] == 400


def test_binary_data_nobody_announced_closes_the_connection(port):
    """A binary frame where no binary packet awaits attachments, and text where
    one does: socket.io's decoder refuses both."""
    for first in (None, '451-["echo",{"_placeholder":true,"num":0}]'):
        ws = ws_open(ws_url(port))
        try:
            ws.recv()
            ws.send("40")
            ws_until(ws, lambda f: f.startswith("42"))
            if first is None:
                ws.send_binary(b"\x01\x02")
            else:
                ws.send(first)
                ws.send('42["echo","text, not the attachment"]')
            assert _closed(ws) in ([], ["1"])
        finally:
            ws.close()


def test_a_malformed_packet_over_polling_closes_the_session(port):
    """The POST is answered `ok` (its payload was read), the pending GET with the
    CLOSE packet, and later requests get 400 (a packet after the malformed one
    in the same payload changes none of that)."""
    sid = _connected(port)
    with _pending_get(port, sid) as pending:
        with Conn(port) as c:
            status, _, body = c.request("POST", poll_target(sid),
                                        b'42{}\x1e421["echo","after"]')
            assert (status, body) == (200, b"ok")
        assert pending.read_response()[::2] == (200, b"1")
    with Conn(port) as c:
        assert c.request("GET", poll_target(sid))[0] == 400


def test_the_js_client_reconnects_after_its_connection_was_closed(servers):
    """What a client makes of the close: the official client sees its transport
    close and reconnects on its own, and its next ack is answered."""
    script = (
        'import { io } from "socket.io-client";'
        f'const s = io("{servers["sio"].url}", {{transports: ["websocket"],'
        ' reconnectionDelay: 100});'
        'let n = 0;'
        's.on("connect", async () => { n += 1;'
        '  if (n === 1) { s.io.engine.write("2{}"); return; }'  # 42{}: malformed
        '  const r = await s.timeout(5000).emitWithAck("echo", "again");'
        '  console.log(JSON.stringify({connects: n, echo: r})); process.exit(0); });'
        's.on("disconnect", (why) => console.error(why));'
        'setTimeout(() => { console.log("{}"); process.exit(1); }, 20000);')
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=JS,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"connects": 2, "echo": "again"}
    assert "transport close" in out.stderr
