"""Where the interest scheme (workers/redis_manager.py InterestRedisManager)
publishes each kind of message, and its duplicate filter: as data, no Redis,
no processes (tests/test_interest.py drives the real thing)."""

from __future__ import annotations

import json

import pytest

from imcluster.sid import make_sid
from imcluster.workers.redis_manager import InterestRedisManager, server_of, split_urls

URLS = "redis://127.0.0.1:1/0,redis://127.0.0.1:2/0,redis://127.0.0.1:3/0"


@pytest.fixture
def mgr() -> InterestRedisManager:
    """Worker 7 of host 2, never connected; one local session on "/" in room "r"."""
    m = InterestRedisManager(URLS, 2, 7)
    m.json = json
    m.mine = make_sid(7, 2)
    m.rooms = {"/": {None: {m.mine: "e"}, m.mine: {m.mine: "e"}, "r": {m.mine: "e"}}}
    return m


def room(ns: str, r) -> str:
    return "socketio:r:" + json.dumps([ns, r], separators=(",", ":"), ensure_ascii=False)


def test_split_urls():
    assert split_urls("redis://a/0") == ["redis://a/0"]
    assert split_urls(" redis://a/0 ,redis://b/0,") == ["redis://a/0", "redis://b/0"]
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_channels_spread_by_name_and_socketio_stays_on_the_first(mgr):
    assert server_of("socketio", 3) == 0 and mgr.node_of("socketio") == 0
    spread = {server_of(room("/", f"room{i}"), 3) for i in range(60)}
    assert spread == {0, 1, 2}
    assert all(mgr.node_of(c) == server_of(c, 3) for c in (room("/", "x"), "socketio:fleet"))


def test_each_subscriber_starts_with_the_worker_channel(mgr):
    wants = [sub.want for _, sub in mgr.nodes]
    assert all("socketio:w:2:7" in w for w in wants)
    assert "socketio" in wants[0]
    assert sum("socketio:fleet" in w for w in wants) == 1


@pytest.mark.parametrize("message,channels", [
    ({"method": "emit", "namespace": "/", "room": "lobby"}, [room("/", "lobby")]),
    ({"method": "emit", "namespace": "/chat", "room": None}, [room("/chat", None)]),
    ({"method": "emit", "namespace": "/", "room": ["a", "b", "a"]},
     [room("/", "a"), room("/", "b")]),
    ({"method": "emit", "namespace": "/", "room": 5}, [room("/", 5)]),
    ({"method": "close_room", "namespace": "/", "room": "lobby"}, [room("/", "lobby")]),
    ({"method": "sockets_join", "namespace": "/", "room": "x", "filter": None},
     [room("/", None)]),
    ({"method": "sockets_leave", "namespace": "/", "room": "x", "filter": ["a", "b"]},
     [room("/", "a"), room("/", "b")]),
    ({"method": "announce_sockets", "namespace": "/admin", "to": "x"}, ["socketio:fleet"]),
    ({"method": "callback", "host_id": "abc.3.9", "sid": "s", "id": 1},
     ["socketio:w:3:9"]),
    ({"method": "callback", "host_id": "0123abcd", "sid": "s", "id": 1}, ["socketio"]),
    ({"method": "disconnect", "namespace": "/", "sid": "not-a-sid"}, ["socketio:fleet"]),
])
def test_targets(mgr, message, channels):
    assert mgr.targets(message) == channels


def test_a_sid_goes_to_its_worker_and_the_room_of_that_name(mgr):
    other = make_sid(4, 1)
    assert mgr.targets({"method": "emit", "namespace": "/", "room": other}) == [
        "socketio:w:1:4", room("/", other)]
    assert mgr.targets({"method": "enter_room", "namespace": "/", "sid": other,
                        "room": "x"}) == ["socketio:w:1:4"]
    # One of this worker's live sids is handled here: nothing to publish.
    assert mgr.targets({"method": "emit", "namespace": "/", "room": mgr.mine}) == []
    assert mgr.targets({"method": "disconnect", "namespace": "/", "sid": mgr.mine}) == []
    both = mgr.targets({"method": "emit", "namespace": "/", "room": [mgr.mine, "r", other]})
    assert both == [room("/", "r"), "socketio:w:1:4", room("/", other)]


def test_acks_name_the_worker_that_waits_for_them(mgr):
    _, host, worker = mgr.host_id.rsplit(".", 2)
    assert (host, worker) == ("2", "7")
    assert mgr.targets({"method": "callback", "host_id": mgr.host_id}) == ["socketio:w:2:7"]


def test_a_message_on_several_channels_is_acted_on_once(mgr):
    published = []
    for pub, _ in mgr.nodes:
        pub.publish = lambda channel, text: published.append((channel, json.loads(text)))
    mgr._publish({"method": "emit", "namespace": "/", "room": ["a", "b"], "host_id": "x"})
    mgr._publish({"method": "emit", "namespace": "/", "room": "a", "host_id": "x"})
    assert [c for c, _ in published] == [room("/", "a"), room("/", "b"), room("/", "a")]
    first, second, single = (m for _, m in published)
    assert first == second and "mid" in first and "mid" not in single
    assert [mgr._accept(m) for m in (first, second, single, single)] == [
        True, False, True, True]
