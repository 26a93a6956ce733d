"""Room operations on sessions of another worker, through the relay and Redis (one
channel, and interest channels):
enter/leave room, skip_sid, direct emit, disconnect, close_room, namespaces."""

from __future__ import annotations

import time

import pytest
import socketio
from conftest import ROOT, wait_for


class Peer:
    def __init__(self, url: str):
        self.heard: list[tuple[str, object]] = []
        self.disconnected = False
        self.sio = socketio.Client(reconnection=False, request_timeout=10)
        for ev in ("shouted", "direct"):
            self.sio.on(ev, lambda d, ev=ev: self.heard.append((ev, d)))
        self.sio.on("said", lambda d: self.heard.append(("said/other", d)), namespace="/other")
        self.sio.on("disconnect", self._gone)
        self.sio.connect(url, namespaces=["/", "/other"], transports=["websocket"],
                         wait_timeout=10)
        self.pid = self.call("whoami")
        self.sid = self.sio.get_sid("/")

    def _gone(self, *args):
        self.disconnected = True

    def call(self, event, data=None, namespace="/"):
        return self.sio.call(event, data, namespace=namespace, timeout=10)

    def texts(self, kind: str) -> list:
        return [d for k, d in self.heard if k == kind]


@pytest.fixture
def peers(cluster_factory, backend):
    c = cluster_factory(app="features_app:sio", workers=2, cwd=ROOT / "tests" / "apps",
                        **backend)
    c.wait_ready()
    made = [Peer(c.url)]
    while len({p.pid for p in made}) < 2:
        assert len(made) < 8, "new sessions never reached the second worker"
        made.append(Peer(c.url))
    a = made[0]
    b = next(p for p in made if p.pid != a.pid)
    yield a, b
    for p in made:
        p.sio.disconnect()


def heard_within(peer: Peer, kind: str, value, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value in peer.texts(kind):
            return True
        time.sleep(0.05)
    return False


def test_enter_and_leave_room_of_a_session_on_another_worker(peers):
    a, b = peers
    assert a.call("join", "x") is True
    assert a.call("enter", {"sid": b.sid, "room": "x"}) is True  # b lives on the other worker
    # No wait needed: a's worker publishes the enter before the shout, in order.
    assert a.call("shout", {"room": "x", "text": "one"}) is True
    assert heard_within(b, "shouted", "one")
    # skip_sid: the sender is in the room but does not hear its own shout.
    assert b.call("shout", {"room": "x", "text": "two"}) is True
    assert heard_within(a, "shouted", "two")
    assert "one" not in a.texts("shouted") and "two" not in b.texts("shouted")

    assert a.call("leave", {"sid": b.sid, "room": "x"}) is True
    assert a.call("join", "y") is True and b.call("join", "y") is True
    assert a.call("shout", {"room": "x", "text": "three"}) is True
    assert a.call("shout", {"room": "y", "text": "marker"}) is True
    # b's worker hears a's worker in order: leave, three, marker. Once b has the
    # marker, three has been dealt with, and b, out of x, must not have it.
    assert heard_within(b, "shouted", "marker")
    assert "three" not in b.texts("shouted")


def test_emit_to_a_sid_on_another_worker(peers):
    a, b = peers
    assert a.call("direct", {"sid": b.sid, "text": "psst"}) is True
    assert heard_within(b, "direct", "psst")
    assert a.texts("direct") == []


def test_close_room_reaches_every_worker(peers):
    a, b = peers
    assert a.call("join", "z") is True and b.call("join", "z") is True
    assert a.call("close", "z") is True
    # b's worker has closed z once a message a's worker sent after the close
    # reaches b (one sender's messages arrive in order).
    assert a.call("direct", {"sid": b.sid, "text": "closed?"}) is True
    assert heard_within(b, "direct", "closed?")
    assert a.call("join", "w") is True and b.call("join", "w") is True
    b.call("shout", {"room": "z", "text": "into the void"})
    b.call("shout", {"room": "w", "text": "marker"})
    assert heard_within(a, "shouted", "marker")  # after the void, from the same sender
    assert "into the void" not in a.texts("shouted")


def test_namespaces_broadcast_across_workers(peers):
    a, b = peers
    assert a.call("join", "n", namespace="/other") is True
    assert b.call("join", "n", namespace="/other") is True
    msg = {"room": "n", "text": "in /other"}
    assert a.call("say", msg, namespace="/other") is True
    assert heard_within(b, "said/other", msg) and heard_within(a, "said/other", msg)


def test_disconnect_a_session_on_another_worker(peers):
    a, b = peers
    assert a.call("kick", {"sid": b.sid}) is True
    wait_for(lambda: b.disconnected, 10, what="kicked client to be disconnected")
    assert not a.disconnected


@pytest.mark.parametrize("channels", ["single", "interest"])
def test_apps_sharing_a_redis_hear_only_their_own_channel(cluster_factory, redis_server,
                                                          channels):
    """Redis pub/sub ignores the database number: two apps (staging and production)
    on one Redis server are kept apart by --redis-channel, and two clusters of one
    app (one channel) hear each other."""
    import redis as redis_py
    from pyclients import Client
    clusters = {name: cluster_factory(workers=1, redis=redis_server, redis_channels=channels,
                                      redis_channel=channel)
                for name, channel in [("staging", "staging"), ("prod1", "prod"),
                                      ("prod2", "prod")]}
    users = {}
    try:
        for name, c in clusters.items():
            c.wait_ready()
            users[name] = Client(c.url, "websocket")
            assert users[name].call("join", {"room": "lobby"}) is True
        assert users["staging"].call("say", {"room": "lobby", "text": "s1", "ts": 0}) is True
        assert users["prod1"].call("say", {"room": "lobby", "text": "p1", "ts": 0}) is True
        for name in ("prod1", "prod2"):
            wait_for(lambda n=name: any(m["text"] == "p1" for m in users[n].said), 10)
        wait_for(lambda: any(m["text"] == "s1" for m in users["staging"].said), 10)
        time.sleep(0.5)  # the other channel's message had as long as these to come
        assert [m["text"] for m in users["staging"].said] == ["s1"]
        for name in ("prod1", "prod2"):
            assert [m["text"] for m in users[name].said] == ["p1"]
        r = redis_py.Redis.from_url(redis_server)
        names = {c.decode() for c in r.pubsub_channels()}
        assert any(n.startswith("staging") for n in names)
        assert any(n.startswith("prod") for n in names)
        assert not any(n.startswith("socketio") for n in names), names
        status = clusters["staging"].status()["master"]
        assert status["redis_channel"] == "staging"
    finally:
        for u in users.values():
            u.close()
