"""Payload limits, payload integrity, no internals leaked, CORS, control socket."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time

import pytest
import requests
import websocket
from conftest import ROOT
from pyclients import Client
from rawhttp import EIO, Conn, open_session, poll_target

from imcluster.control import ControlError, request

APPS = ROOT / "tests" / "apps"
LIMIT = 100_000


@pytest.fixture
def cluster(cluster_factory):
    c = cluster_factory(app="limits_app:app", workers=2, cwd=APPS)
    c.wait_ready()
    return c


def test_oversized_polling_post_is_refused_and_the_session_closed(cluster):
    sid = open_session(cluster.port)
    got = {}

    def long_poll():  # as a real client, keep a GET waiting meanwhile
        with Conn(cluster.port, timeout=20) as c:
            got["get"] = c.request("GET", poll_target(sid))

    t = threading.Thread(target=long_poll)
    t.start()
    time.sleep(0.3)
    with Conn(cluster.port, timeout=20) as c:
        status, _, answer = c.request("POST", poll_target(sid), b"4" + b"x" * (LIMIT + 10))
    t.join(20)
    assert status == 400, (status, answer)
    assert got["get"][0] == 200 and got["get"][2] == b"1"  # Engine.IO's close packet
    with Conn(cluster.port) as c:
        status, _, answer = c.request("GET", poll_target(sid))
    assert status == 400, answer  # the session is gone


def test_oversized_websocket_frame_closes_the_session(cluster):
    with Conn(cluster.port) as c:
        sid = json.loads(c.request("GET", EIO)[2][1:])["sid"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{cluster.port}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        timeout=10)
    ws.send("2probe")
    assert ws.recv() == "3probe"
    ws.send("5")  # upgrade
    ws.send("4" + "x" * (LIMIT + 10))
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError,
                        OSError)):
        for _ in range(5):
            if ws.recv() in ("", None):
                raise websocket.WebSocketConnectionClosedException()
    ws.close()
    with Conn(cluster.port) as c:
        assert c.request("GET", poll_target(sid))[0] == 400


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_binary_and_unicode_payloads_travel_intact(cluster, transport):
    c = Client(cluster.url, transport)
    try:
        blob = bytes(range(256)) * 40 + b"\xff\xfe\x80\xc3\x28"  # not valid UTF-8
        assert c.call("echo", blob) == blob
        text = "h\u00e9llo \u4e16\u754c \U0001f600 \u202e\x00 end"
        assert c.call("echo", text) == text
        nested = {"a": [blob[:10], {"b": text}], "n": None, "f": 1.5}
        assert c.call("echo", nested) == nested
    finally:
        c.close()


def test_no_traceback_or_internal_detail_reaches_a_client(cluster):
    r = requests.get(cluster.url + "/boom", timeout=10)
    assert r.status_code == 500
    for leak in ("Traceback", "secret", "RuntimeError", ".py"):
        assert leak not in r.text
    assert requests.get(cluster.url + "/ok", timeout=10).text == "plain wsgi"
    # A handler that raises: the client gets no answer at all, certainly no detail.
    c = Client(cluster.url, "websocket")
    try:
        with pytest.raises(Exception) as e:
            c.call("fail", timeout=2)
        assert "secret" not in str(e.value)
        assert c.call("echo", 1) == 1  # and the session carries on
    finally:
        c.close()


def _handshake(port: int, origin: str, extra: str = "") -> int:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall((f"GET {EIO} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n"
                   f"{extra}Connection: close\r\n\r\n").encode())
        return int(s.recv(4096).split(b" ")[1])


def test_cors_default_allows_only_the_own_origin(cluster_factory):
    c = cluster_factory(workers=1)
    c.wait_ready()
    assert _handshake(c.port, f"http://127.0.0.1:{c.port}") == 200
    assert _handshake(c.port, "http://evil.example") == 400


def test_cors_origins_setting(cluster_factory):
    c = cluster_factory(workers=1, args=("--cors-origins",
                                         "https://chat.example.com,https://admin.socket.io"))
    c.wait_ready()
    assert _handshake(c.port, "https://chat.example.com") == 200
    assert _handshake(c.port, "https://admin.socket.io") == 200
    assert _handshake(c.port, "http://evil.example") == 400
    assert _handshake(c.port, "https://chat.example.com.evil.example") == 400
    # Listing origins adds them: the app's own pages (same origin) still connect,
    # directly and behind a proxy that says where the browser was.
    assert _handshake(c.port, f"http://127.0.0.1:{c.port}") == 200
    fwd = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: chat.internal\r\n"
    assert _handshake(c.port, "https://chat.internal", fwd) == 200
    assert _handshake(c.port, "https://chat.internal") == 400


def test_control_socket_refuses_another_user(cluster_factory, tmp_path):
    # A world-traversable folder, so only the socket's own mode keeps others out.
    d = tempfile.mkdtemp(prefix="imcluster-ctl-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "ctl.sock")
    c = cluster_factory(workers=1, args=("--control", path))
    c.control = path
    c.wait_ready()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and tries the socket
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                request(path, "status")
                msg = "ALLOWED"
            except ControlError as e:
                msg = str(e)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert msg.startswith("permission denied on"), msg
    assert request(path, "status")["master"]["pid"] == c.pid  # its owner still can


def _control_line(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def test_control_socket_survives_hostile_requests(cluster_factory):
    """Whatever arrives on the control socket gets an error answer and the
    master serves on: a request nested 5,000 deep (json.loads raised
    RecursionError, not ValueError, and the master died with every worker:
    a new-user trial), garbage, a non-object, an unknown command, odd
    arguments. The clients connected meanwhile keep their sessions."""
    cluster = cluster_factory(workers=2)
    cluster.wait_ready()
    c = Client(cluster.url, "websocket")
    try:
        before = c.whoami()
        deep = b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}\n"
        assert _control_line(cluster.control, deep) == {
            "error": "bad request: nested too deeply"}
        for line in (b"garbage\n", b"[]\n", b"null\n", b'{"cmd": "nope"}\n',
                     b'{"cmd": "scale", "workers": "abc"}\n',
                     b'{"cmd": "scale", "workers": 1e308}\n'):
            answer = _control_line(cluster.control, line)
            assert set(answer) == {"error"} and answer["error"], (line, answer)
        assert request(cluster.control, "status")["master"]["pid"] == cluster.pid
        assert c.whoami() == before  # the same session, on the same worker
        assert "Traceback" not in cluster.log(), cluster.log()
    finally:
        c.close()


@pytest.mark.parametrize("version,status", [("99", b"426"), ("13", b"400")])
def test_a_refused_websocket_upgrade_closes_the_connection(cluster, version, status):
    """An upgrade with an unsupported Sec-WebSocket-Version (426) or without a
    key (400) is answered with `Connection: close`, and the connection then
    closes: eventlet kept it open, and the client waited (a new-user trial)."""
    key = "" if version == "13" else "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    with socket.create_connection(("127.0.0.1", cluster.port), 10) as s:
        s.sendall(("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{cluster.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\n{key}Sec-WebSocket-Version: {version}\r\n"
                   "\r\n").encode())
        got = b""
        while True:
            chunk = s.recv(4096)  # the socket's 10 s timeout: an open connection fails
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 " + status), got
    assert b"connection: close" in got.lower(), got


def _ws_upgrade_headers(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                   "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        return head.split(b"\r\n\r\n")[0].lower()


def test_websocket_compression_is_off_unless_asked(cluster_factory):
    plain = cluster_factory(workers=1)
    deflate = cluster_factory(workers=1, args=("--ws-compression", "yes"))
    plain.wait_ready()
    deflate.wait_ready()
    head = _ws_upgrade_headers(plain.port)
    assert head.startswith(b"http/1.1 101") and b"permessage-deflate" not in head
    head = _ws_upgrade_headers(deflate.port)
    assert head.startswith(b"http/1.1 101") and b"permessage-deflate" in head
