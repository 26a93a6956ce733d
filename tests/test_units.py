"""Fast unit tests: sid codec, request-line parser, channel framing, lifecycle, settings."""

from __future__ import annotations

import argparse
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imcluster import channel as ch
from imcluster import httpline, sid
from imcluster import settings as cfgmod
from imcluster.master.lifecycle import (
    MAX_START_FAILURES,
    Role,
    State,
    TransitionError,
    WorkerProcess,
    backoff_delay,
)

# ---- sid codec ---------------------------------------------------------------


@pytest.mark.parametrize("wid", [0, 1, 255, 256, 0xFFF])
@pytest.mark.parametrize("host", [0, 1, 63, 64, 0xFFF])
def test_sid_names_its_host_and_worker_and_is_engineio_shaped(wid, host):
    s = sid.make_sid(wid, host)
    assert len(s) == 20 and re.fullmatch(r"[A-Za-z0-9_-]{20}", s)
    assert sid.owner_of(s) == (host, wid)
    assert sid.worker_of(s) == wid and sid.host_of(s) == host


def test_a_hosts_sids_share_a_two_character_prefix_no_other_host_has():
    """design.md invariant 8: a router matches the host as a plain string."""
    prefixes = {}
    for host in range(0, 0x1000):
        p = sid.host_prefix(host)
        assert len(p) == 2 and p not in prefixes
        prefixes[p] = host
        for wid in (1, 0xFFF):
            assert sid.make_sid(wid, host)[:2] == p
    assert sid.host_prefix(0) == "AA" and sid.host_prefix(1) == "AB"


def test_sids_are_random_beyond_host_and_worker():
    sids = {sid.make_sid(5, 7) for _ in range(2000)}
    assert len(sids) == 2000
    # 12 random bytes (96 bits): every position after the 4-character prefix varies.
    assert {s[:4] for s in sids} == {sid.make_sid(5, 7)[:4]}
    assert all(len({s[i] for s in sids}) > 20 for i in range(4, 20))


@pytest.mark.parametrize("wid,host", [(0x1000, 0), (-1, 0), (1, 0x1000), (1, -1)])
def test_make_sid_rejects_out_of_range(wid, host):
    with pytest.raises(ValueError):
        sid.make_sid(wid, host)


@given(st.one_of(st.text(max_size=40), st.binary(max_size=40)))
@settings(max_examples=500)
def test_owner_of_never_raises(value):
    owner = sid.owner_of(value)
    assert owner is None or (0 <= owner[0] <= 0xFFF and 0 <= owner[1] <= 0xFFF)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 19, "A" * 21, "+" * 20, "/" * 20,
                                 "AAAAAAAAAAAAAAAAAAA=", "é" * 20])
def test_worker_of_refuses_non_canonical(bad):
    assert sid.worker_of(bad) is None and sid.owner_of(bad) is None


# ---- request line --------------------------------------------------------------


def test_parse_finds_the_sid():
    s = sid.make_sid(42, 3)
    line = httpline.parse(f"GET /socket.io/?EIO=4&transport=polling&t=N&sid={s} HTTP/1.1\r\n"
                          "Host: x\r\n".encode())
    assert (line.method, line.version, line.sid, line.worker_id) == ("GET", "HTTP/1.1", s, 42)
    assert line.host_id == 3 and line.owner == (3, 42)


@pytest.mark.parametrize("target,expected", [
    ("/socket.io/?EIO=4&transport=polling", None),
    ("/socket.io/?sid=abc", "abc"),
    ("/x?a=1&sid=%41B&sid=zz", "AB"),
    ("/x?sidx=1", None),
    ("/x#sid=1", None),
    ("/x?sid=", None),
    ("/x?sid=&sid=ab", "ab"),  # python-engineio (parse_qs) skips the blank one too
])
def test_sid_from_target(target, expected):
    assert httpline.sid_from_target(target) == expected


@pytest.mark.parametrize("data", [b"", b"GE", b"GET /socket.io/?EIO=4", b"POST / HTTP/1.1"])
def test_parse_incomplete(data):
    with pytest.raises(httpline.Incomplete):
        httpline.parse(data)


@pytest.mark.parametrize("data,status", [
    (b"\x16\x03\x01\x00", 400),
    (b"GET / HTTP/2.0\r\n", 400),
    (b"GET  / HTTP/1.1\r\n", 400),
    (b"GET / FOO\r\n", 400),
    (b"G" * 40, 400),
    (b"GET /" + b"a" * 9000, 414),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
])
def test_parse_rejects(data, status):
    with pytest.raises(httpline.BadRequest) as e:
        httpline.parse(data)
    assert e.value.status == status


def test_parse_skips_leading_blank_lines():
    assert httpline.parse(b"\r\n\r\nGET / HTTP/1.0\r\n").target == "/"


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_parse_arbitrary_bytes_never_escapes(data):
    try:
        line = httpline.parse(data)
    except (httpline.Incomplete, httpline.BadRequest):
        return
    owner = line.owner
    assert owner is None or (0 <= owner[0] <= 0xFFF and 0 <= owner[1] <= 0xFFF)


@given(st.sampled_from(["GET", "POST", "OPTIONS"]),
       st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
               max_size=60),
       st.integers(0, 0xFFF), st.integers(0, 0xFFF))
def test_parse_routes_well_formed_lines_to_their_host_and_worker(method, junk, wid, host):
    s = sid.make_sid(wid, host)
    target = f"/socket.io/?{junk.replace('&', '').replace('#', '')}&sid={s}"
    line = httpline.parse(f"{method} {target} HTTP/1.1\r\n".encode())
    assert (line.host_id, line.worker_id) == (host, wid)


# ---- channel framing ------------------------------------------------------------


def test_every_channel_message_kind_has_a_byte_of_its_own():
    """One message per purpose: no two kinds share a byte, whatever their direction."""
    kinds = {name: value for name, value in vars(ch).items()
             if name.isupper() and isinstance(value, bytes) and len(value) == 1}
    assert {"HEARTBEAT", "LOAD", "ACK", "RELAY", "PUBLISH"} <= set(kinds)
    by_byte: dict[bytes, list[str]] = {}
    for name, value in kinds.items():
        by_byte.setdefault(value, []).append(name)
    assert not [names for names in by_byte.values() if len(names) > 1]
    for name in kinds:  # and the module's table documents each
        assert f"\n    {name} " in ch.__doc__, name


def test_frames_roundtrip_large_payload_over_a_real_socketpair():
    a, b = ch.socketpair()
    payload = bytes(range(256)) * 1000  # 256 KB: several fragments
    for f in ch.frames(ch.PUBLISH, payload):
        a.send(f)
    j = ch.Joiner()
    whole = None
    while whole is None:
        kind, flags, part, fds = ch.recv_frame(b)
        assert kind == ch.PUBLISH and fds == []
        whole = j.feed(kind, flags, part)
    assert whole == payload
    a.close()
    assert ch.recv_frame(b) is None
    b.close()


def test_fd_travels_with_its_frame():
    import os
    import socket

    a, b = ch.socketpair()
    x, y = socket.socketpair()
    a.sendmsg([ch.HANDOFF + b"\x00"], ch.fd_ancillary(x.fileno()))
    kind, flags, payload, fds = ch.recv_frame(b)
    assert kind == ch.HANDOFF and len(fds) == 1
    assert os.get_inheritable(fds[0]) is False  # received close-on-exec
    z = socket.socket(fileno=fds[0])
    z.sendall(b"ping")
    assert y.recv(4) == b"ping"
    for s in (a, b, x, y, z):
        s.close()


# ---- lifecycle ---------------------------------------------------------------


# Written out, not read from TRANSITIONS: a change to the table must change this too.
ALLOWED_EDGES = {
    ("STARTING", "READY"), ("STARTING", "STOPPING"), ("STARTING", "EXITED"),
    ("READY", "DRAINING"), ("READY", "STOPPING"), ("READY", "EXITED"),
    ("DRAINING", "STOPPING"), ("DRAINING", "EXITED"),
    ("STOPPING", "EXITED"),
    ("EXITED", "BACKOFF"), ("EXITED", "FATAL"), ("EXITED", "STARTING"), ("EXITED", "QUEUED"),
    ("BACKOFF", "STARTING"), ("BACKOFF", "QUEUED"), ("BACKOFF", "EXITED"),
    ("FATAL", "STARTING"), ("FATAL", "QUEUED"), ("FATAL", "EXITED"),
    ("QUEUED", "STARTING"), ("QUEUED", "EXITED"),
}


@pytest.mark.parametrize("src,dst", [(s, d) for s in State for d in State])
def test_every_edge_is_allowed_or_refused(src, dst):
    w = WorkerProcess(slot=0, state=src)
    if (src.value, dst.value) in ALLOWED_EDGES:
        w.to(dst)
        assert w.state is dst
    else:
        with pytest.raises(TransitionError):
            w.to(dst)
        assert w.state is src


def test_exit_of_a_healthy_worker_respawns_quickly():
    w = WorkerProcess(slot=0, state=State.READY)
    w.ready_at = 0.0
    w.on_exit(-9, now=100.0)
    assert w.state is State.BACKOFF and w.failures == 0 and w.respawn_at == 100.0 + 0.1


def test_start_failures_back_off_then_go_fatal():
    w = WorkerProcess(slot=0, state=State.STARTING)
    delays = []
    for i in range(MAX_START_FAILURES):
        w.on_exit(1, now=float(i))
        if w.state is State.BACKOFF:
            delays.append(w.respawn_at - i)
            w.to(State.STARTING)
    assert w.state is State.FATAL and MAX_START_FAILURES == 5
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n) for n in (0, 6, 7, 20)] == [0.1, 16.0, 30.0, 30.0]


def test_stopped_and_retired_workers_are_not_respawned():
    w = WorkerProcess(slot=0, state=State.STOPPING)
    w.on_exit(0, now=1.0)
    assert w.state is State.EXITED
    r = WorkerProcess(slot=0, state=State.DRAINING, role=Role.RETIRED)
    r.on_exit(0, now=1.0)
    assert r.state is State.EXITED
    n = WorkerProcess(slot=0, state=State.STARTING, role=Role.REPLACEMENT)
    n.on_exit(4, now=1.0)
    assert n.state is State.EXITED


def test_load_counts_handoffs_not_yet_reported():
    w = WorkerProcess(slot=0, sessions=3, handoffs_acked=10, handoffs_sent=12)
    assert w.load == 5


# ---- settings ----------------------------------------------------------------


def _args(**kw):
    ns = argparse.Namespace(config=None, **{s.name: None for s in cfgmod.SETTINGS})
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_precedence_cli_env_file_default(tmp_path):
    f = tmp_path / "imcluster.toml"
    f.write_text('workers = 5\nbind = "127.0.0.1:9000"\nkeepalive = 30\n')
    env = {"IMCLUSTER_BIND": "127.0.0.1:9001", "IMCLUSTER_CONFIG": str(f)}
    cfg = cfgmod.resolve(_args(workers="2"), env)
    assert cfg.workers == 2 and cfg.sources["workers"] == "--workers"
    assert cfg.bind == ("127.0.0.1", 9001) and cfg.sources["bind"] == "IMCLUSTER_BIND"
    assert cfg.keepalive == 30.0
    assert cfg.header_timeout == 10.0 and cfg.sources["header_timeout"] == "default"
    assert cfg.control.endswith("imcluster-9001.sock")


@pytest.mark.parametrize("kw,env,msg", [
    ({"workers": "0"}, {}, "--workers='0': must be at least 1"),
    ({}, {"IMCLUSTER_BIND": "nope"}, "IMCLUSTER_BIND='nope': expected HOST:PORT"),
    ({"log_level": "loud"}, {}, "--log-level='loud'"),
    ({}, {"IMCLUSTER_REDIS_SILENCE_TIMEOUT": "0"},
     "IMCLUSTER_REDIS_SILENCE_TIMEOUT='0': must be greater than 0"),
    ({"host_id": "4096"}, {}, "--host-id='4096': must be 0 (one host) or a host number 1..4095"),
    ({}, {"IMCLUSTER_HOST_ID": "-1"}, "IMCLUSTER_HOST_ID='-1': must be 0"),
    ({"workers": "1000"}, {}, "--workers='1000': at most 256"),
    ({"redis": "http://127.0.0.1:6379/0"}, {}, "expected redis://HOST:PORT/DB"),
    ({}, {"IMCLUSTER_REDIS": "redis://h:notaport/0"}, "the port is not a number"),
    ({"redis": "redis://a:1/0,redis://b:2/0"}, {},
     "--redis: several Redis servers need --redis-channels interest"),
    ({"redis": "redis://a:1/0,,redis://b:2/0", "redis_channels": "interest"}, {},
     "an empty URL in the list"),
    ({"redis": "redis://a:1/0,http://b:2/0", "redis_channels": "interest"}, {},
     "expected redis://HOST:PORT/DB"),
    ({"redis_channels": "rooms"}, {}, "--redis-channels='rooms': single or interest"),
    ({"recovery_window": "inf"}, {}, "--recovery-window='inf': must be a number of seconds"),
    ({"recovery_window": "abc"}, {}, "--recovery-window='abc': must be a number of seconds"),
    ({"recovery_window": "1e12"}, {}, "--recovery-window='1e12': at most 86400 seconds"),
    ({}, {"IMCLUSTER_RECOVERY_WINDOW": "86401"}, "IMCLUSTER_RECOVERY_WINDOW='86401': at most"),
    ({"workers": "abc"}, {}, "--workers='abc': must be a whole number"),
    ({}, {"IMCLUSTER_HOST_ID": "x"}, "IMCLUSTER_HOST_ID='x': must be a whole number"),
    ({"bind": "127.0.0.1:0"}, {}, "--bind='127.0.0.1:0': port 0 (any free port) cannot be"),
    ({"redis": "redis://127.0.0.1:6379/abc"}, {}, "the database 'abc' is not a number"),
    ({}, {"IMCLUSTER_RECOVERY_WINDOW": "nan"}, "IMCLUSTER_RECOVERY_WINDOW='nan': must be a"),
    ({"redis_channels": "interest"}, {}, "--redis-channels: interest channels are Redis "
                                         "channels: give --redis URL too"),
    ({"redis": "redis+cluster://a:7000"}, {},
     "--redis: a Redis Cluster (redis+cluster://) needs --redis-channels interest"),
    ({"redis": "redis+cluster://a:7000,redis://b:2/0", "redis_channels": "interest"}, {},
     "not to be mixed with standalone servers"),
    ({"redis": "redis+cluster://a:7000/2", "redis_channels": "interest"}, {},
     "a Redis Cluster has database 0 only"),
    ({"redis": "redis://a:1/0", "redis_channels": "interest", "recovery_window": "30"}, {},
     "--recovery-window: connection state recovery with Redis needs --redis-channels single"),
])
def test_bad_values_name_their_source(kw, env, msg):
    with pytest.raises(cfgmod.SettingError, match=re.escape(msg)):
        cfgmod.resolve(_args(**kw), env)


def test_unknown_config_key_is_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("wrokers = 3\n")
    with pytest.raises(cfgmod.SettingError, match="unknown setting"):
        cfgmod.resolve(_args(config=str(f)), {})
    # A key spelt like the option gets the name to write.
    f.write_text("graceful-timeout = 3\nwrokers = 3\n")
    with pytest.raises(cfgmod.SettingError, match=re.escape(
            "unknown setting(s): graceful-timeout (write graceful_timeout), wrokers")):
        cfgmod.resolve(_args(config=str(f)), {})


def test_the_app_comes_from_the_argument_then_the_environment_then_the_config_file(tmp_path):
    """A supervisor program entry may name everything in the config file (a new
    user's trial: `app = ...` was refused as an unknown setting)."""
    f = tmp_path / "c.toml"
    f.write_text('app = "chat:socketio"\nworkers = 2\n')
    cfg = cfgmod.resolve(_args(config=str(f)), {})
    assert (cfg.app, cfg.sources["app"], cfg.workers) == ("chat:socketio", f"{f}: app", 2)
    cfg = cfgmod.resolve(_args(config=str(f)), {"IMCLUSTER_APP": "other:sio"})
    assert (cfg.app, cfg.sources["app"]) == ("other:sio", "IMCLUSTER_APP")
    cfg = cfgmod.resolve(_args(config=str(f), app="mine:create_app()"), {"IMCLUSTER_APP": "x"})
    assert (cfg.app, cfg.sources["app"]) == ("mine:create_app()", "argument")
    assert cfgmod.resolve(_args(), {}).app is None  # the chat demo
    f.write_text("[imcluster]\napp = 3\n")
    with pytest.raises(cfgmod.SettingError, match="app = 3: expected"):
        cfgmod.resolve(_args(config=str(f)), {})


def test_the_default_control_socket_is_looked_for_in_xdg_runtime_dir_then_tmp(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert cfgmod.default_control_paths(8123, env) == [f"{tmp_path}/imcluster-8123.sock",
                                                       "/tmp/imcluster-8123.sock"]
    assert cfgmod.default_control_paths(8123, {}) == ["/tmp/imcluster-8123.sock"]
    assert cfgmod.default_control_paths(8123, {"XDG_RUNTIME_DIR": "/tmp"}) == [
        "/tmp/imcluster-8123.sock"]
    # The first that exists; `run`'s own (the first) when none does.
    assert cfgmod.find_control(8123, env) == f"{tmp_path}/imcluster-8123.sock"


def test_redis_silence_timeout_defaults_to_15s_and_reads_the_environment():
    assert cfgmod.resolve(_args(), {}).redis_silence_timeout == 15.0
    cfg = cfgmod.resolve(_args(), {"IMCLUSTER_REDIS_SILENCE_TIMEOUT": "2.5"})
    assert cfg.redis_silence_timeout == 2.5


def test_redis_channels_default_single_and_several_servers_with_interest():
    cfg = cfgmod.resolve(_args(), {})
    assert cfg.redis_channels == "single" and cfg.redis is None
    cfg = cfgmod.resolve(_args(redis="redis://a:1/0, redis://b:2/0"),
                         {"IMCLUSTER_REDIS_CHANNELS": "Interest"})
    assert cfg.redis == "redis://a:1/0,redis://b:2/0" and cfg.redis_channels == "interest"


def test_a_redis_cluster_is_named_by_its_seed_nodes():
    cfg = cfgmod.resolve(_args(redis="redis+cluster://a:7000, rediss+cluster://:pw@b:7001/0",
                               redis_channels="interest"), {})
    assert cfg.redis == "redis+cluster://a:7000,rediss+cluster://:pw@b:7001/0"
    assert cfgmod.is_redis_cluster(cfg.redis)
    assert not cfgmod.is_redis_cluster("redis://a:1/0") and not cfgmod.is_redis_cluster(None)


def test_host_id_defaults_to_0_one_host():
    assert cfgmod.resolve(_args(), {}).host_id == 0
    assert cfgmod.resolve(_args(host_id="4095"), {}).host_id == 4095


def test_default_bind_is_loopback():
    assert cfgmod.resolve(_args(), {}).bind[0] == "127.0.0.1"


@pytest.mark.parametrize("target,expected", [
    ("/socket.io/?EIO=4&transport=polling&t=x", True),
    ("/socket.io/?transport=websocket&EIO=4", True),
    (f"/socket.io/?EIO=4&transport=polling&sid={sid.make_sid(1)}", False),
    ("/static/chat.js", False),
    ("/?NEO=4", False),
])
def test_is_handshake(target, expected):
    assert httpline.parse(f"GET {target} HTTP/1.1\r\n".encode()).is_handshake is expected


# ---- worker speedups ---------------------------------------------------------


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4), st.integers(0, 11),
       st.integers(0, 700))
@settings(max_examples=500)
def test_fast_websocket_mask_matches_eventlet(data, mask, offset, length):
    from imcluster.workers import internals, speedups

    original = internals.ORIGINAL_APPLY_MASK
    n = min(length, len(data))
    assert speedups.apply_mask(data, mask, n, offset) == original(data, mask, n, offset)
    assert speedups.apply_mask(bytearray(data), mask, offset=offset) == \
        original(data, mask, offset=offset)


# ---- the worker's direct WebSocket writer ------------------------------------


def _websocket(sock):
    import eventlet.websocket

    return eventlet.websocket.RFC6455WebSocket(sock, {}, version=13)


@given(st.one_of(st.text(max_size=70_000), st.binary(max_size=70_000)))
@settings(max_examples=200, deadline=None)
def test_ws_frame_matches_eventlet(payload):
    from imcluster.workers import sessions

    assert sessions.ws_frame(payload) == _websocket(None)._pack_message(payload)


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_ws_frame_length_boundaries(n):
    from imcluster.workers import sessions

    for payload in ("x" * n, b"\x00" * n):
        assert sessions.ws_frame(payload) == _websocket(None)._pack_message(payload)


def test_frame_writer_keeps_order_past_a_full_socket():
    import eventlet
    from eventlet.green import socket as gsocket

    from imcluster.workers import sessions

    a, b = gsocket.socketpair()
    try:
        w = sessions.FrameWriter(_websocket(a))
        frames = [f"{i:06d}".encode() * 200 for i in range(3000)]  # ~3.6 MB: the kernel takes less
        for f in frames:
            w.write(f)
        assert w.backlog, "the socket never filled: the flusher was not exercised"
        want = b"".join(frames)
        got = bytearray()

        def read_all():
            while len(got) < len(want):
                got.extend(b.recv(1 << 16))

        eventlet.spawn(read_all).wait()
        w.join()
        assert bytes(got) == want
        assert w.backlog is None and w.flusher is None and not w.broken
    finally:
        a.close()
        b.close()


def test_frame_writer_cuts_off_a_client_that_stops_reading(monkeypatch):
    from eventlet.green import socket as gsocket

    from imcluster.workers import sessions

    monkeypatch.setattr(sessions, "WRITE_BACKLOG_LIMIT", 1 << 20)
    a, b = gsocket.socketpair()
    try:
        w = sessions.FrameWriter(_websocket(a))
        chunk = b"z" * 65536
        for _ in range(400):  # 26 MB offered, nothing read
            w.write(chunk)
            if w.broken:
                break
        assert w.broken, "the backlog grew without bound"
        assert w.backlog is None
        drained = 0
        while True:  # what the kernel held, then end-of-file: the reader is woken
            data = b.recv(1 << 20)
            if not data:
                break
            drained += len(data)
        assert drained < 26 * (1 << 20)
    finally:
        a.close()
        b.close()


class _Chunks:
    """A socket whose recv() returns the given chunks, one per call, then b''."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.fd = self  # as eventlet's green socket: the raw one under it (never EAGAIN)

    def recv(self, n):
        if not self.chunks:
            return b""
        head = self.chunks[0][:n]
        rest = self.chunks[0][n:]
        if rest:
            self.chunks[0] = rest
        else:
            self.chunks.pop(0)
        return head


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20),
       st.lists(st.integers(1, 200), min_size=1, max_size=50))
def test_buffered_receive_returns_the_stream_in_order(chunks, sizes):
    from imcluster.workers import sessions

    r = sessions.BufferedReceive(_Chunks(chunks))
    want = b"".join(chunks)
    got = bytearray()
    i = 0
    while True:
        n = sizes[i % len(sizes)]
        i += 1
        d = r.recv(n)
        assert len(d) <= n
        if not d:
            break
        got += d
    assert bytes(got) == want
    assert r.buf == b"" and r.pos == 0  # nothing held once the stream is read


# ---- HAProxy config helpers ------------------------------------------------------


def test_haproxy_host_specs():
    from imcluster import haproxy

    h = haproxy.parse_host("3=10.0.0.3:8000")
    assert (h.id, h.address, h.server, h.prefix) == (3, "10.0.0.3:8000", "host3", "AD")
    for bad in ("0=a:1", "4096=a:1", "x=a:1", "3=a", "3", "3=:80", "3=a:0"):
        with pytest.raises(ValueError):
            haproxy.parse_host(bad)
    assert haproxy.runtime_commands("remove", h, "/m")[0] == "del map /m AD"
    assert haproxy.parse_host_id("3").prefix == "AD"
    for bad in ("0", "x", "4096"):
        with pytest.raises(ValueError):
            haproxy.parse_host_id(bad)


def test_origin_form_of_absolute_targets():
    from imcluster.httpline import origin_form, sid_from_target, split_absolute
    assert origin_form("http://127.0.0.1:8000/socket.io/?EIO=4&sid=a") == "/socket.io/?EIO=4&sid=a"
    assert origin_form("HTTPS://h") == "/" and origin_form("http://h?x=1") == "/?x=1"
    assert origin_form("/a?b") == "/a?b" and origin_form("*") == "*"
    assert sid_from_target("http://h:1/socket.io/?EIO=4&sid=abc") == "abc"
    assert split_absolute("http://u:p@h:1?a") == ("h:1", "/?a")
    assert split_absolute("/x") is None


def test_recovery_window_takes_up_to_one_day():
    assert cfgmod.resolve(_args(recovery_window="86400"), {}).recovery_window == 86400.0
    assert cfgmod.resolve(_args(recovery_window="0"), {}).recovery_window == 0.0


@pytest.mark.parametrize("target, ready", [
    ("/_imcluster/ready", True), ("/_imcluster/ready?x=1", True),
    ("http://h:8000/_imcluster/ready", True), ("https://h/_imcluster/ready?x", True),
    ("http://h:8000/_imcluster/readyz", False), ("http://h:8000/", False),
    ("/socket.io/?EIO=4&transport=polling", False),
])
def test_readiness_path_in_origin_and_absolute_form(target, ready):
    """RFC 9112 §3.2.2: absolute-form is accepted wherever origin-form is."""
    assert httpline.parse(f"GET {target} HTTP/1.1\r\n".encode()).is_readiness is ready


@pytest.mark.parametrize("thrown", [RuntimeError("store broke"), KeyboardInterrupt()])
def test_a_recovery_that_fails_while_asked_leaves_broadcasts_flowing(thrown):
    """A reconnecting client's CONNECT pauses relayed broadcasts while its stored
    copy is asked for; whatever the ask raises (a store error, an exception thrown
    into the waiting greenlet), the pause ends with it, or the worker's recovered
    clients would hear no later room message."""
    import socketio

    from imcluster.workers import protocol, recovery

    class Store:
        def restore(self, pid, offset):
            raise thrown

    sio = socketio.Server(async_mode="eventlet")
    rec = recovery.Recovery(link=None, store=Store())
    protocol.adapt(sio.eio, sio, rec)
    with pytest.raises(type(thrown)):
        sio._handle_connect("eio-sid", "/", {recovery.OPT_IN: True, "pid": "p",
                                             "offset": "0"})
    assert rec.paused == 0
    rec.wait_resumed()  # returns at once: nothing waits for a resume that never comes


def test_accepted_sockets_inherit_the_listeners_tcp_nodelay():
    """The workers skip TCP_NODELAY on each client socket (spec client_nodelay)
    because the master's listener has it and Linux copies it into every socket
    it accepts: if a kernel stops doing so, this fails."""
    import socket

    from imcluster.master import loop

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = loop.Listener(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with listener:
            assert loop._set_nodelay(listener) is True
            listener.bind((host, 0))
            listener.listen()
            with socket.create_connection(listener.getsockname()[:2]) as client:
                conn, _ = listener.accept()
                with conn:
                    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                    # and a plain listener's do not have it: the check can fail
                    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
