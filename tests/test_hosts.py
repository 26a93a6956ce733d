"""Sessions know their host (issue 15): with `--host-id N` every sid names its host
and worker at a fixed prefix, and a request whose sid names another host is
refused by the master (400) before any worker sees it. Real clusters, raw HTTP
and python-socketio clients."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
import socketio
from conftest import wait_for
from rawhttp import EIO, Conn, poll_target, whoami_requests

from imcluster.sid import host_of, host_prefix, make_sid, owner_of


def counters(cluster) -> dict:
    return cluster.status()["master"]["counters"]


@pytest.fixture
def host5(cluster_factory):
    c = cluster_factory(workers=2, host_id=5)
    c.wait_ready()
    return c


def test_every_sid_names_its_host_engineio_and_namespace(host5):
    ids = {w["worker_id"] for w in host5.status()["workers"]}
    with Conn(host5.port) as c:  # raw: the OPEN packet and the CONNECT reply
        status, _, body = c.request("GET", EIO)
        eio = json.loads(body[1:])["sid"]
        assert c.request("POST", poll_target(eio), b"40")[2] == b"ok"
        status, _, body = c.request("GET", poll_target(eio))
        ns = json.loads(body[2:])["sid"]
    clients = []
    try:
        for transport in (["polling"], ["websocket"], ["polling", "websocket"]):
            sio = socketio.Client()
            clients.append(sio)
            sio.connect(host5.url, transports=transport, wait_timeout=10)
            assert sio.call("echo", "x", timeout=10) == "x"
            for s in (sio.eio.sid, sio.sid):
                assert s.startswith(host_prefix(5)), s
                assert owner_of(s)[0] == 5 and owner_of(s)[1] in ids
    finally:
        for sio in clients:
            sio.disconnect()
    for s in (eio, ns):
        assert s.startswith("AF") and owner_of(s)[0] == 5 and owner_of(s)[1] in ids


def test_a_sid_of_another_host_is_refused_by_the_master(host5):
    workers = [w["worker_id"] for w in host5.status()["workers"]]
    before = counters(host5)
    for other in (6, 0, 4095):
        foreign = make_sid(workers[0], other)  # a worker id this host has, another host
        with Conn(host5.port) as c:
            status, headers, body = c.request("GET", poll_target(foreign))
            assert status == 400 and b"Invalid session" in body, body
            assert f"host {other}".encode() in body and headers["connection"] == "close"
    after = counters(host5)
    assert after["other_host"] - before["other_host"] == 3
    assert after["handoffs"] == before["handoffs"]  # no worker saw any of them
    # Our own host's unknown sid still goes to its worker, which answers as Engine.IO does.
    with Conn(host5.port) as c:
        status, _, body = c.request("GET", poll_target(make_sid(workers[0], 5)))
    assert status == 400 and b"Invalid session" in body
    assert counters(host5)["handoffs"] == after["handoffs"] + 1


def test_another_hosts_sid_on_a_kept_alive_connection_is_refused_not_served(host5):
    """A worker holding a kept-alive connection hands the next request back when its
    sid names another host; the master refuses it (a worker would have served it
    if only the worker part were compared: same worker id)."""
    with Conn(host5.port) as c:
        status, _, body = c.request("GET", EIO)
        sid = json.loads(body[1:])["sid"]
        assert c.request("POST", poll_target(sid), b"40")[2] == b"ok"
        assert c.request("GET", poll_target(sid))[2].startswith(b"40")
        post, get = whoami_requests(sid, 1)
        c.send(post)
        assert c.read_response()[:3:2] == (200, b"ok")
        before = counters(host5)
        same_worker_other_host = sid[:2].replace("AF", "AG") + sid[2:]
        assert owner_of(same_worker_other_host) == (6, owner_of(sid)[1])
        status, _, body = c.request("GET", poll_target(same_worker_other_host))
        assert status == 400 and b"host 6" in body, body
        assert c.f.read() == b""  # and the connection ends there
    after = counters(host5)
    assert after["handbacks"] == before["handbacks"] + 1
    assert after["other_host"] == before["other_host"] + 1


def test_host_0_is_one_host_and_refuses_other_hosts_sids(cluster_factory):
    c = cluster_factory(workers=1)
    c.wait_ready()
    with Conn(c.port) as conn:
        status, _, body = conn.request("GET", EIO)
        assert status == 200 and host_of(json.loads(body[1:])["sid"]) == 0
    wid = c.status()["workers"][0]["worker_id"]
    with Conn(c.port) as conn:
        status, _, body = conn.request("GET", poll_target(make_sid(wid, 7)))
    assert status == 400 and b"Invalid session" in body
    assert counters(c)["other_host"] == 1


def test_a_tls_client_gets_400_and_the_log_says_where_tls_ends(cluster_factory):
    """A client that speaks TLS straight to a master (https:// to an imcluster
    port) fails its handshake on the master's plain 400, as before; the master's
    log now says why, once a minute, naming HAProxy's --cert; it serves on."""
    c = cluster_factory(workers=1)
    c.wait_ready()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", c.port), 5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                ctx.wrap_socket(raw).close()
    wait_for(lambda: counters(c)["bad_request"] == 3, 10, what="3 bad requests counted")
    wait_for(lambda: "spoke TLS" in c.log(), 10, what="the TLS hint in the log")
    assert c.log().count("spoke TLS") == 1
    assert "haproxy-config --cert" in c.log()
    with Conn(c.port) as conn:
        assert conn.request("GET", EIO)[0] == 200
