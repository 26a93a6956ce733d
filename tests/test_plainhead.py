"""A plain request head is parsed by the worker itself (workers/http.py
`parse_head`, `ClusterProtocol._parse_plain`) instead of http.client's email
feedparser; what eventlet then builds from it must be what it builds after
http.server's parse.

For generated heads (plain ones, and near misses: other versions, odd
targets, blanks, tabs, underscores, obs-fold, bare LF, bytes past ASCII,
duplicates), either the worker's parse declines (and http.server parses as
before), or both parses leave the protocol in the same state (command, path,
version, request line, whether the connection closes) and eventlet's
`get_environ` makes the same environ from either. A real cluster then answers
the same long-polling requests with the same bytes whether their head takes
the worker's parse or, with one non-ASCII byte in an extra field, http.server's.
"""

from __future__ import annotations

import json
import re
import socket

import eventlet.wsgi
import pytest
from conftest import ROOT, Cluster
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rawhttp import EIO, poll_target

from imcluster.workers import http as whttp

APPS = ROOT / "tests" / "apps"

Protocol = whttp.make_protocol(1, 0, lambda sock: False, 5.0, {})


def _protocol(raw: bytes):
    """A ClusterProtocol with request head `raw` in its read buffer, as after
    `_head_arrives`, its request line read (eventlet's _read_request_line);
    nothing more comes from its socket."""
    a, b = socket.socketpair()
    b.shutdown(socket.SHUT_WR)  # a head cut short reads as the end, never waits
    server = eventlet.wsgi.Server(whttp.FdListener(("127.0.0.1", 8000)), ("127.0.0.1", 8000),
                                  None, protocol=Protocol, keepalive=5.0, log_output=False,
                                  debug=False, socket_timeout=None)
    p = Protocol.__new__(Protocol)
    p.server = server
    p.request = p.connection = a
    p.client_address = ("127.0.0.1", 40000)
    p.conn_state = [p.client_address, a, eventlet.wsgi.STATE_REQUEST]
    p.rfile = whttp.ExactReader(a)
    p.rfile._buf += raw
    p.wfile = whttp.GatherWriter(a)
    p.raw_requestline = p.rfile.readline(8192)
    p.close_connection = 1
    sent: list = []
    p.send_error = lambda code, message=None, explain=None: sent.append(code)  # noqa: ARG005
    p._socks = (a, b)
    p._sent = sent
    return p


def _state(p) -> dict:
    state = {"command": p.command, "path": p.path, "version": p.request_version,
             "requestline": p.requestline, "close": bool(p.close_connection),
             "content-length": p.headers.get("content-length"),
             "transfer-encoding": p.headers.get("transfer-encoding")}
    try:
        # eventlet's handle_one_request refuses these before it builds the environ.
        if state["content-length"] is not None and int(state["content-length"]) < 0:
            raise ValueError
    except ValueError:
        return state
    env = p.get_environ()
    inp = env.pop("wsgi.input")
    assert env.pop("eventlet.input") is inp
    env.pop("eventlet.set_idle", None)  # eventlet 0.36 and later
    return {**state, "env": env,
            "input": (inp.content_length, inp.chunked_input, inp.wfile_line)}


def _both(raw: bytes):
    """(the worker's parse, or None if it declined; http.server's parse) of `raw`,
    each as the protocol's state and environ, or the error http.server answered."""
    fast = _protocol(raw)
    slow = _protocol(raw)
    try:
        fast.rfile = eventlet.wsgi.FileObjectForHeaders(fast.rfile)
        took = fast._parse_plain()
        fast.rfile = fast.rfile.fp
        mine = _state(fast) if took else None
        slow.rfile = eventlet.wsgi.FileObjectForHeaders(slow.rfile)
        try:
            ok = eventlet.wsgi.HttpProtocol.parse_request(slow)
        except (eventlet.wsgi.HeaderLineTooLong, eventlet.wsgi.HeadersTooLarge) as e:
            ok, slow._sent[:] = False, [type(e).__name__]
        slow.rfile = slow.rfile.fp
        theirs = _state(slow) if ok else ("refused", list(slow._sent))
        return mine, theirs
    finally:
        for s in fast._socks + slow._socks:
            s.close()


METHODS = st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "get", "G_T"])
TARGETS = st.one_of(
    st.sampled_from([f"{EIO}", f"{EIO}&sid=AAAAabcdefghijklmnop&t=Px1", "/", "//evil/x",
                     "/socket.io/?EIO=4&transport=polling&sid=a%20b", "*",
                     "http://h:1/socket.io/?EIO=4", "/a b", "/caf\xe9"]),
    st.text(alphabet="/?&=%+abc:\t", min_size=1, max_size=12))
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.10", "HTTP/01.1",
                            "http/1.1", "HTTP/1.1 ", "HTTP/0.9"])
NAMES = st.one_of(
    st.sampled_from(["Host", "Connection", "connection", "Content-Length", "content-type",
                     "Expect", "Origin", "Accept", "Transfer-Encoding", "X_Under",
                     "X-Forwarded-For", "Cookie", "Upgrade", "Access-Control-Request-Headers"]),
    st.text(alphabet="abAB-_!~ :\t", min_size=1, max_size=6))
VALUES = st.one_of(
    st.sampled_from(["close", "keep-alive", "Keep-Alive", "CLOSE", "100-continue", "12", "0",
                     "-1", "text/plain;charset=UTF-8", "chunked", "127.0.0.1:8000", "",
                     "http://example.com"]),
    st.text(alphabet="ab \t:,;\xe9\x7f\x01", max_size=8))
FIELD = st.tuples(NAMES, VALUES, st.sampled_from([": ", ":", ":  \t", " : "]),
                  st.sampled_from(["\r\n"] * 8 + ["\n", "\r\n "]))


def _head(method: str, target: str, version: str, fields, sep: str = " ") -> bytes:
    text = f"{method}{sep}{target}{sep}{version}\r\n"
    text += "".join(f"{n}{colon}{v}{end}" for n, v, colon, end in fields)
    return text.encode("latin-1") + b"\r\n"


PLAIN = [
    _head("GET", EIO, "HTTP/1.1", [("Host", "127.0.0.1:8000", ": ", "\r\n"),
                                   ("Accept", "*/*", ": ", "\r\n"),
                                   ("Connection", "close", ": ", "\r\n")]),
    _head("POST", poll_target("AAAAabcdefghijklmnop"), "HTTP/1.1",
          [("Host", "x", ": ", "\r\n"), ("Content-Type", "text/plain;charset=UTF-8", ": ", "\r\n"),
           ("Content-Length", "24", ": ", "\r\n"), ("Origin", "http://x", ": ", "\r\n")]),
    _head("GET", "/", "HTTP/1.0", []),
    _head("GET", "/x", "HTTP/1.0", [("Connection", "keep-alive", ": ", "\r\n")]),
    _head("POST", "/x", "HTTP/1.1", [("Expect", "100-continue", ": ", "\r\n"),
                                      ("Content-Length", "3", ": ", "\r\n"),
                                      ("X-A", "1 \t", ":\t", "\r\n"), ("x-a", "2", ":", "\r\n")]),
]


@pytest.mark.parametrize("raw", PLAIN)
def test_plain_heads_take_the_workers_parse(raw):
    """Engine.IO clients' heads are plain: the worker parses them (else the
    fast parse would save nothing), with http.server's result."""
    mine, theirs = _both(raw)
    assert mine is not None
    assert mine == theirs


# Heads near the plain form, most of which the worker takes.
NEAR_PLAIN = st.builds(
    _head, st.sampled_from(["GET", "POST", "OPTIONS", "PUT"]),
    st.sampled_from([EIO, f"{EIO}&sid=AAAAabcdefghijklmnop&t=Px1", "/", "/a?b=c%20d",
                     "/socket.io/?EIO=4&transport=polling&j=1"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.lists(st.tuples(
        st.sampled_from(["Host", "Connection", "connection", "Content-Length",
                         "content-type", "Content-Type", "Expect", "Origin", "X_Under",
                         "Transfer-Encoding", "X-Forwarded-For", "X-Forwarded-Host"]),
        st.one_of(VALUES.filter(lambda v: all(" " <= c <= "~" or c == "\t" for c in v)),
                  st.sampled_from(["close", "keep-alive", "3", "100-continue"])),
        st.sampled_from([": ", ":", ":\t", ":  "]), st.just("\r\n")), max_size=6))
WILD = st.builds(_head, METHODS, TARGETS, VERSIONS, st.lists(FIELD, max_size=6),
                 st.sampled_from([" ", "  "]))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(NEAR_PLAIN, WILD))
@example(_head("GET", EIO, "HTTP/1.1", [("Host", "h", ": ", "\r\n")] * 3))
@example(_head("GET", EIO, "HTTP/1.1", [("X", "a" * 5000, ": ", "\r\n")]))
@example(_head("GET", EIO, "HTTP/1.1", [("X", "a" * 8200, ": ", "\r\n")]))
@example(_head("GET", EIO, "HTTP/1.1", [("X", "a", ": ", "\r\n")] * 101))
@example(_head("GET", EIO, "HTTP/1.1", [("Transfer-Encoding", "chunked", ": ", "\r\n"),
                                        ("Content-Length", "3", ": ", "\r\n")]))
def test_the_workers_parse_is_http_servers(raw):
    mine, theirs = _both(raw)
    if mine is not None:
        assert mine == theirs


# ---- through a real cluster ---------------------------------------------------------

DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """One request on a new connection; the whole response, its Date field blanked."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"\r\nContent-Length: (\d+)", top)[1])
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, data
            rest += chunk
    return DATE.sub(b"\r\nDate: -\r\n", top + b"\r\n\r\n" + rest)


def _request(method: str, target: str, body: bytes, extra: list[str], plain: bool,
             version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1", "Accept: */*", *extra]
    if method == "POST":
        lines += ["Content-Type: text/plain;charset=UTF-8", f"Content-Length: {len(body)}"]
    head = "\r\n".join(lines).encode() + b"\r\n"
    if not plain:
        head += b"X-Pad: caf\xe9\r\n"  # one byte past ASCII: http.server's parse
    return head + b"\r\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("plainhead"), app="protocol_app:sio", workers=2,
                cwd=APPS)
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()


EXTRAS = [["Connection: close"], ["Connection: close", "Origin: http://127.0.0.1"],
          ["Connection: close", "Origin: http://elsewhere.example"],
          ["Connection: close", "Access-Control-Request-Headers: x-a", "Cookie: a=b"],
          ["Connection: keep-alive"]]


@pytest.mark.parametrize("extra", EXTRAS, ids=["close", "origin", "foreign-origin",
                                                "acrh-cookie", "keep-alive"])
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_polling_answers_are_the_same_bytes_either_way(cluster, extra, version):
    """Handshake, CONNECT, its reply, an event with its ack, an unknown
    session, a bad transport: each asked with a plain head and then with a
    head that takes http.server's parse, on a new connection each (as Node's
    client polls); the answers must be byte for byte the same (Date aside, and
    the handshake's new sid)."""
    port = cluster.port

    def both(method, target, body=b""):
        a = _exchange(port, _request(method, target, body, extra, True, version), body)
        b = _exchange(port, _request(method, target, body, extra, False, version), body)
        return a, b

    opened = []
    for plain in (True, False):
        r = _exchange(port, _request("GET", EIO, b"", extra, plain, version))
        top, _, body = r.partition(b"\r\n\r\n")
        sid = json.loads(body[1:])["sid"] if body[:1] == b"0" else ""
        opened.append((top, body.replace(sid.encode(), b"SID")))
    assert opened[0] == opened[1]
    if not sid:  # refused (a foreign origin): the session is opened without it
        extra_open = ["Connection: close"]
        r = _exchange(port, _request("GET", EIO, b"", extra_open, True, version))
        sid = json.loads(r.partition(b"\r\n\r\n")[2][1:])["sid"]
    else:
        extra_open = extra
    target = poll_target(sid)
    assert _exchange(port, _request("POST", target, b"40", extra_open, True, version),
                     b"40").endswith(b"\r\n\r\nok")
    assert b"\r\n\r\n40{" in _exchange(port, _request("GET", target, b"", extra_open, True,
                                                         version))
    target = poll_target(sid)
    event = b'425["echo","x"]'
    answers = []
    for plain in (True, False):
        posted = _exchange(port, _request("POST", target, event, extra, plain, version), event)
        polled = (_exchange(port, _request("GET", target, b"", extra, plain, version))
                  if posted.endswith(b"\r\n\r\nok") else None)
        answers.append((posted, polled))
    assert answers[0] == answers[1]
    if extra is EXTRAS[2]:
        assert b" 400 " in answers[0][0]
    else:
        assert answers[0][1].endswith(b'\r\n\r\n435["x"]')
    for method, t in (("GET", poll_target("AAAAnosuchsession000")),
                      ("POST", poll_target("AAAAnosuchsession000")),
                      ("GET", "/socket.io/?EIO=4&transport=carrier-pigeon"),
                      ("GET", "/socket.io/?EIO=4")):
        a, b = both(method, t, b"1:6" if method == "POST" else b"")
        assert a == b, (method, t)
