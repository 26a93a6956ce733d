"""Per-request routing: keep-alive and pipelined connections that mix sessions of
different workers, stale and forged sids. Driven by a raw HTTP client, since
node's socket.io-client never reuses a connection for polling."""

from __future__ import annotations

import json

import pytest
from rawhttp import EIO, Conn, open_session, parse_ack, poll_target, whoami_requests

from imcluster.sid import make_sid, worker_of


@pytest.fixture
def cluster(cluster_factory):
    c = cluster_factory(workers=3)
    c.wait_ready()
    return c


def sessions_on_two_workers(port: int) -> tuple[str, str]:
    """Open sessions until two sit on different workers (the sid says which)."""
    first = open_session(port)
    for _ in range(10):
        other = open_session(port)
        if worker_of(other) != worker_of(first):
            return first, other
    raise AssertionError("every new session went to one worker")


def whoami_own_connection(port: int, sid: str) -> int:
    post, get = whoami_requests(sid, 9)
    with Conn(port) as c:
        c.send(post)
        assert c.read_response()[0] == 200
        c.send(get)
        status, _, body = c.read_response()
        assert status == 200, body
        return parse_ack(body, 9)


def test_keepalive_connection_alternating_between_workers(cluster):
    a, b = sessions_on_two_workers(cluster.port)
    pid_a, pid_b = whoami_own_connection(cluster.port, a), whoami_own_connection(cluster.port, b)
    assert pid_a != pid_b
    with Conn(cluster.port) as c:
        for i in range(1, 9):  # a, b, a, b ... over one connection
            sid, pid = (a, pid_a) if i % 2 else (b, pid_b)
            post, get = whoami_requests(sid, i)
            c.send(post)
            status, _, body = c.read_response()
            assert (status, body) == (200, b"ok")
            c.send(get)
            status, _, body = c.read_response()
            assert status == 200, body
            assert parse_ack(body, i) == pid, f"request {i} for {sid} answered by the wrong worker"


def test_pipelined_requests_for_two_workers(cluster):
    a, b = sessions_on_two_workers(cluster.port)
    pid_a, pid_b = whoami_own_connection(cluster.port, a), whoami_own_connection(cluster.port, b)
    batch = b""
    expected = []
    for i, (sid, pid) in enumerate([(a, pid_a), (b, pid_b), (a, pid_a), (b, pid_b)], 1):
        post, get = whoami_requests(sid, i)
        batch += post + get
        expected.append((i, pid))
    with Conn(cluster.port) as c:
        c.send(batch)  # all eight requests in one write
        for i, pid in expected:
            status, _, body = c.read_response()
            assert (status, body) == (200, b"ok")
            status, _, body = c.read_response()
            assert status == 200 and parse_ack(body, i) == pid


def test_handshake_then_requests_on_one_connection(cluster):
    """A browser-like client: handshake, connect and polling all on one connection."""
    with Conn(cluster.port) as c:
        status, _, body = c.request("GET", EIO)
        sid = json.loads(body[1:])["sid"]
        assert c.request("POST", poll_target(sid), b"40")[2] == b"ok"
        assert c.request("GET", poll_target(sid))[2].startswith(b"40")
        post, get = whoami_requests(sid, 3)
        c.send(post + get)
        assert c.read_response()[2] == b"ok"
        assert parse_ack(c.read_response()[2], 3) in cluster.worker_pids()


@pytest.mark.parametrize("kind", ["other-worker", "no-such-worker", "not-ours", "closed"])
def test_forged_and_stale_sids_get_unknown_session(cluster, kind):
    real = open_session(cluster.port)
    if kind == "other-worker":
        others = {w["worker_id"] for w in cluster.status()["workers"]} - {worker_of(real)}
        sid = make_sid(others.pop())  # right worker id, random rest: a guess
    elif kind == "no-such-worker":
        sid = make_sid(4000)  # a worker id this master never made
    elif kind == "not-ours":
        sid = "x" * 7
    else:
        with Conn(cluster.port) as c:
            assert c.request("POST", poll_target(real), b"1")[0] == 200  # close packet
        sid = real
    with Conn(cluster.port) as c:
        status, _, body = c.request("GET", poll_target(sid))
    # Engine.IO's own refusal (the client then makes a fresh handshake); a closed
    # session may still be named "disconnected" for a moment before it is forgotten.
    assert status == 400
    assert any(m in body for m in (b"Invalid session", b"Session is disconnected")), body
    # Routine in a cluster (a dead or drained worker's clients): no ERROR in the log.
    assert not [ln for ln in cluster.log().splitlines() if "ERROR" in ln], cluster.log()


def test_new_sessions_on_a_kept_alive_connection_are_placed_by_the_master(cluster):
    """Browsers reuse connections: a handshake arriving on a connection a worker
    holds still goes to the least-loaded worker, not to that worker."""
    owners = set()
    with Conn(cluster.port) as c:
        for _ in range(9):
            status, _, body = c.request("GET", EIO)
            assert status == 200
            owners.add(worker_of(json.loads(body[1:])["sid"]))
    assert len(owners) == 3
