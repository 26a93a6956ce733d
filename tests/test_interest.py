"""Broadcasts that scale with rooms, not with the fleet (issue 15): `--redis-channels
interest` against `single`, on three hosts sharing Redis.

Hosts 1-3 are clusters on 127.0.0.2, .3 and .4 (host 1 with two workers, hosts
2 and 3 with one each, so a host's pub/sub figures are its worker's), running
tests/apps/values_app.py. In interest mode the channels spread over two
standalone redis-servers (`--redis URL1,URL2`); `single` uses one. Clients
are python-socketio clients (tests/test_values.py's Party, which records every
event it hears). The pub/sub figures are each worker's count of messages Redis
delivered to it (`imcluster status`, workers[].pubsub.received).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest
import redis
import socketio
from conftest import ROOT, Cluster, RedisProcess, free_port, wait_for
from pyclients import Client
from test_values import Party

from imcluster.sid import owner_of
from imcluster.workers.redis_manager import InterestRedisManager

tags = itertools.count()


class Fleet:
    def __init__(self, mode: str, hosts: dict[int, Cluster], urls: list[str]):
        self.mode, self.hosts, self.urls = mode, hosts, urls

    def received(self, i: int) -> int:
        """Messages Redis delivered to host i's workers, as their last LOAD said."""
        return sum((w["pubsub"] or {}).get("received", 0)
                   for w in self.hosts[i].status()["workers"])

    def settled(self) -> dict[int, int]:
        """Every host's figure, once two reads 1.5 s apart agree (a LOAD is at most
        1 s old): what was in flight before has been counted."""
        last: dict[int, int] = {}

        def same():
            nonlocal last
            now = {i: self.received(i) for i in self.hosts}
            ok, last = now == last, now
            if not ok:
                time.sleep(1.5)
            return ok

        wait_for(same, 20, what="pub/sub figures at rest")
        return last

    def channels(self) -> set[str]:
        found: set[str] = set()
        for url in self.urls:
            r = redis.Redis.from_url(url)
            try:
                found |= {c.decode() for c in r.pubsub_channels()}
            finally:
                r.close()
        return found


@pytest.fixture(scope="module", params=["interest", "single"])
def fleet(request, tmp_path_factory):
    mode = request.param
    servers = [RedisProcess(tmp_path_factory.mktemp("redis"))
               for _ in range(2 if mode == "interest" else 1)]
    hosts: dict[int, Cluster] = {}
    try:
        for r in servers:
            r.start()
        urls = [f"redis://127.0.0.1:{r.port}/0" for r in servers]
        for i, workers in ((1, 2), (2, 1), (3, 1)):
            ip = f"127.0.0.{i + 1}"
            hosts[i] = Cluster(tmp_path_factory.mktemp(f"host{i}"), app="values_app:sio",
                               workers=workers, redis=",".join(urls),
                               cwd=ROOT / "tests" / "apps", host_id=i,
                               bind=f"{ip}:{free_port(ip)}", redis_channels=mode)
        for c in hosts.values():
            c.wait_ready()
            wait_for(lambda c=c: all(w["broadcast"] == "ok" for w in c.status()["workers"]),
                     15, what="every worker subscribed")
        yield Fleet(mode, hosts, urls)
    finally:
        for c in hosts.values():
            c.stop()
        for r in servers:
            r.stop()


@pytest.fixture(scope="module")
def parties(fleet):
    """a1 and b1 on host 1 (on its two workers), a2 on host 2, a3 on host 3, in rooms
    `one` (a1, b1: one host), `two` (a1, a2: two hosts) and `three` (all: three)."""
    made: list[Party] = []
    try:
        on1: dict[int, Party] = {}
        while len(on1) < 2:
            assert len(made) < 12, "host 1's sessions did not spread over its two workers"
            p = Party(fleet.hosts[1].url)
            made.append(p)
            on1.setdefault(p.pid, p)
        a1, b1 = on1.values()
        a2, a3 = Party(fleet.hosts[2].url), Party(fleet.hosts[3].url)
        made += [a2, a3]
        for p in made:
            if p not in (a1, b1, a2, a3):
                p.sio.disconnect()
        for p, rooms in ((a1, ("one", "two", "three")), (b1, ("one", "three")),
                         (a2, ("two", "three")), (a3, ("three",))):
            for room in rooms:
                assert p.call("join", room) is True
        yield {"a1": a1, "b1": b1, "a2": a2, "a3": a3}
    finally:
        for p in made:
            p.sio.disconnect()


MEMBERS = {"one": {"a1", "b1"}, "two": {"a1", "a2"}, "three": {"a1", "b1", "a2", "a3"}}


def send(p: Party, to, skip: str | None = None, target: str = "room", mode: str = "emit",
         args: list | None = None) -> str:
    event = f"e{next(tags)}"
    assert p.call("send", {"mode": mode, "target": target, "to": to, "skip": skip,
                           "event": event, "args": args or [event]}) is True
    return event


def heard(p: Party, event: str) -> int:
    return len(p.heard.get(("/", event), []))


def test_each_member_gets_each_message_once(fleet, parties):
    """From every party to each room (members on one, two and three hosts), and
    to all three rooms at once with the sender skipped: every member hears each
    message exactly once, nobody else hears it."""
    expected: dict[str, set[str]] = {}
    for name, p in parties.items():
        for room, members in MEMBERS.items():
            expected[send(p, room)] = members
        expected[send(p, list(MEMBERS), skip=p.sid)] = set().union(*MEMBERS.values()) - {name}
        # A room list naming a sid on another host besides rooms: each once.
        other = parties["a3" if name != "a3" else "a2"]
        expected[send(p, ["one", other.sid, "three"])] = (
            MEMBERS["one"] | MEMBERS["three"] | {("a3" if name != "a3" else "a2")})

    def all_heard():
        return all(heard(parties[m], e) >= 1 for e, ms in expected.items() for m in ms)

    wait_for(all_heard, 20, what="every message at every member")
    time.sleep(1.0)  # late duplicates would land meanwhile
    wrong = {(e, name, heard(p, e)) for e in expected for name, p in parties.items()
             if heard(p, e) != (1 if name in expected[e] else 0)}
    assert not wrong, sorted(wrong)


def test_a_room_on_one_host_costs_the_other_hosts_nothing(fleet, parties):
    """Room `one` lives on host 1 alone. 20 messages to it from host 1 and 20 from
    host 2, then one to room `three` (every host): with interest channels hosts 2
    and 3 receive only that last one (host 2 publishes its 20 without hearing
    them); with one channel every worker receives all 41."""
    a1, b1, a2 = parties["a1"], parties["b1"], parties["a2"]
    n = 20
    before = fleet.settled()
    events = [send(a1, "one") for _ in range(n)] + [send(a2, "one") for _ in range(n)]
    wait_for(lambda: all(heard(p, e) == 1 for e in events for p in (a1, b1)), 20,
             what="the 40 messages in room one")
    marker = send(a1, "three")
    wait_for(lambda: all(heard(p, marker) == 1 for p in parties.values()), 20,
             what="the marker at every member")
    # Host 1's two workers hold `one` and `three` in both modes, and Redis
    # delivers a publish to its own sender's subscription too: 41 each.
    if fleet.mode == "interest":
        want = {1: 2 * (2 * n + 1), 2: 1, 3: 1}
    else:
        want = {1: 2 * (2 * n + 1), 2: 2 * n + 1, 3: 2 * n + 1}
    after = fleet.settled()
    cost = {i: after[i] - before[i] for i in fleet.hosts}
    assert cost == want, cost


def test_emit_ack_and_call_to_a_sid_on_another_host(fleet, parties):
    a1, b1, a2, a3 = (parties[k] for k in ("a1", "b1", "a2", "a3"))
    for sender, receiver in ((a1, a3), (b1, a2), (a3, b1)):
        event = send(sender, receiver.sid, target="sid")
        wait_for(lambda e=event, r=receiver: heard(r, e) == 1, 10, what="emit to a sid")
        args = [{"k": [b"\x00\xff", "ü"]}, 7]
        got = sender.call("send", {"mode": "ack", "target": "sid", "to": receiver.sid,
                                   "event": f"ask-{next(tags)}", "args": args})
        assert got == args
        got = sender.call("send", {"mode": "call", "target": "sid", "to": receiver.sid,
                                   "event": f"ask-{next(tags)}", "args": ["pong"]})
        assert got == {"result": "pong"}
    time.sleep(0.5)
    assert all(len(v) == 1 for p in parties.values() for k, v in p.heard.items()
               if k[1].startswith("e")), "a message heard twice"


def test_room_changes_and_disconnect_of_a_session_on_another_host(fleet, parties):
    a1, a3 = parties["a1"], parties["a3"]
    room = f"moved-{next(tags)}"
    # enter_room returns once a3's worker holds the room (with interest channels:
    # and its channel's subscription), so an emit right after, in the same
    # handler, reaches a3; and so does the leave: an emit right after it does not.
    # Ten rooms: without the wait about half of these emits were lost (measured).
    rooms = [f"{room}-{k}" for k in range(10)]
    at_once = {r: f"e{next(tags)}" for r in rooms}
    for r in rooms:
        assert a1.call("move", {"op": "enter", "sid": a3.sid, "room": r,
                                "then_emit": at_once[r]}) is True
    if fleet.mode == "interest":
        assert {f'socketio:r:["/","{r}"]' for r in rooms} <= fleet.channels()
    wait_for(lambda: all(heard(a3, e) == 1 for e in at_once.values()), 10,
             what="each emit made right after the enter_room")
    after_leave = {r: f"e{next(tags)}" for r in rooms}
    for r in rooms:
        assert a1.call("move", {"op": "leave", "sid": a3.sid, "room": r,
                                "then_emit": after_leave[r]}) is True
    assert a1.call("move", {"op": "enter", "sid": a3.sid, "room": room}) is True
    e1 = send(a1, room)
    wait_for(lambda: heard(a3, e1) == 1, 10, what="a message to the room a3 was put in")
    assert a1.call("move", {"op": "leave", "sid": a3.sid, "room": room}) is True
    e2 = send(a1, room)  # after the leave returned: never heard
    if fleet.mode == "interest":
        wait_for(lambda: f'socketio:r:["/","{room}"]' not in fleet.channels(), 10,
                 what="the room's channel dropped with its last member")
    e3 = send(a1, a3.sid, target="sid")  # after e2 on the same path: e2 had its chance
    wait_for(lambda: heard(a3, e3) == 1, 10, what="the emit after the leave")
    assert heard(a3, e2) == 0
    assert not [e for e in after_leave.values() if heard(a3, e)], "heard after its leave"
    gone = Party(fleet.hosts[2].url)
    try:
        assert a1.call("move", {"op": "disconnect", "sid": gone.sid, "room": None}) is True
        wait_for(lambda: "/" not in gone.sio.namespaces, 10,
                 what="the session on host 2 disconnected from host 1")
    finally:
        gone.sio.disconnect()


def test_an_emit_after_a_remote_disconnect_does_not_reach_the_session(fleet, parties):
    """`disconnect(sid)` of a session on another host returns once its worker has
    disconnected it (interest channels wait for the reply; one channel keeps the
    order), so an emit to its room right after, in the same handler, does not
    reach it; a member that stays hears every one of those emits."""
    a1, a3 = parties["a1"], parties["a3"]
    room = f"bye-{next(tags)}"
    assert a3.call("join", room) is True
    victims = [Party(fleet.hosts[k].url) for k in (2, 3, 2, 3, 2, 3, 2, 3)]
    try:
        for v in victims:
            assert v.call("join", room) is True
        after = {}
        for v in victims:
            after[v.sid] = f"e{next(tags)}"
            assert a1.call("move", {"op": "disconnect", "sid": v.sid, "room": room,
                                    "then_emit": after[v.sid]}) is True
        wait_for(lambda: all("/" not in v.sio.namespaces for v in victims), 10,
                 what="every session disconnected")
        wait_for(lambda: all(heard(a3, e) == 1 for e in after.values()), 10,
                 what="each emit at the member that stayed")
        assert [heard(v, after[v.sid]) for v in victims] == [0] * len(victims)
    finally:
        for v in victims:
            v.sio.disconnect()


def test_an_external_write_only_emitter_reaches_every_member(fleet, parties):
    """python-socketio's own `socketio` channel (a Celery task's
    RedisManager(write_only=True)), on the first Redis server."""
    emitter = socketio.RedisManager(fleet.urls[0], write_only=True)
    try:
        emitter.emit("external", [b"\x01", "room"], room="three")
        emitter.emit("external", "sid", room=parties["a2"].sid)
        emitter.emit("external", "all")
        key = ("/", "external")

        def got(p):
            return p.heard.get(key, [])

        want = {name: [[[b"\x01", "room"]], ["all"]] for name in parties}
        want["a2"] = [[[b"\x01", "room"]], ["sid"], ["all"]]
        wait_for(lambda: all(len(got(p)) == len(want[n]) for n, p in parties.items()), 10,
                 what="the external emits at every member")
        time.sleep(0.5)
        assert {n: sorted(map(repr, got(p))) for n, p in parties.items()} == \
            {n: sorted(map(repr, w)) for n, w in want.items()}
    finally:
        emitter.redis.close()


def test_subscriptions_follow_the_members(fleet, parties):
    """A worker holds a room's channel while it has a member there, the
    namespace's while it has a client in it, and its own always."""
    if fleet.mode != "interest":
        pytest.skip("interest channels only")
    have = fleet.channels()
    for room in MEMBERS:
        assert f'socketio:r:["/","{room}"]' in have
    assert 'socketio:r:["/",null]' in have and "socketio" in have
    workers = [(i, w["worker_id"]) for i, c in fleet.hosts.items()
               for w in c.status()["workers"]]
    assert {f"socketio:w:{i}:{w}" for i, w in workers} <= have
    p = Party(fleet.hosts[3].url)
    room = f"brief-{next(tags)}"
    try:
        assert p.call("join", room) is True
        assert f'socketio:r:["/","{room}"]' in fleet.channels()
        assert 'socketio:r:["/values",null]' in fleet.channels()
    finally:
        p.sio.disconnect()
    # a3 stays on host 3 in "/values" (Party connects to both namespaces).
    wait_for(lambda: f'socketio:r:["/","{room}"]' not in fleet.channels(), 10,
             what="the channel dropped once its only member left")


def test_one_redis_server_down_costs_only_its_channels(cluster_factory, tmp_path):
    """Interest channels on two Redis servers; the second is killed, then started
    again. Meanwhile every worker reports its subscription down, a room whose
    channel lives on the first server still reaches the other worker, and the
    one on the second only local members; when it is back every worker
    resubscribes to what it held, and both rooms reach everyone again."""
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
    servers = [RedisProcess(tmp_path / f"r{i}") for i in range(2)]
    for r in servers:
        r.start()
    try:
        urls = [f"redis://127.0.0.1:{r.port}/0" for r in servers]
        c = cluster_factory(workers=2, redis=",".join(urls), redis_channels="interest")
        c.wait_ready()
        mgr = InterestRedisManager(urls)  # its channel names and spread, not connected
        room_on = {}
        for k in itertools.count():
            room = f"room{k}"
            room_on.setdefault(mgr.node_of(mgr.channel_of_room("/", room)), room)
            if len(room_on) == 2:
                break
        on1, on2 = room_on[0], room_on[1]
        clients = [Client(c.url, "websocket") for _ in range(6)]
        try:
            by_pid: dict[int, list[Client]] = {}
            for cl in clients:
                assert cl.join(on1) is True and cl.join(on2) is True
                by_pid.setdefault(cl.whoami(), []).append(cl)
            assert len(by_pid) == 2, "the clients did not spread over both workers"
            here, there = by_pid.values()

            def say(room: str, text: str) -> None:
                here[0].sio.emit("say", {"room": room, "text": text, "ts": 0})

            def got(group, text) -> bool:
                return all(any(m["text"] == text for m in cl.said) for cl in group)

            say(on2, "before")
            wait_for(lambda: got(clients, "before"), 10, what="delivery before the outage")
            servers[1].kill()
            wait_for(lambda: all(w["broadcast"] != "ok" for w in c.status()["workers"]), 15,
                     what="every worker reporting its subscription down")
            say(on1, "during-1")
            wait_for(lambda: got(clients, "during-1"), 10,
                     what="the room on the live server at every member")
            say(on2, "during-2")
            wait_for(lambda: got(here, "during-2"), 10, what="local delivery on the other")
            servers[1].start()
            # "publishing down" lasts until the sender's breaker probes the server
            # (a publish, or its PING each second), so: subscribed, then "ok".
            wait_for(lambda: all(w["broadcast"] in ("ok", "publishing down")
                                 for w in c.status()["workers"]), 20,
                     what="every worker subscribed again")
            assert not any(any(m["text"] == "during-2" for m in cl.said) for cl in there)
            # The breaker drops what is sent within a second of the last failure.
            tries = itertools.count()

            def delivered_after() -> bool:
                text = f"after-{next(tries)}"
                say(on2, text)
                time.sleep(1.0)
                return got(clients, text)

            wait_for(delivered_after, 15, what="the room on the second server")
            wait_for(lambda: all(w["broadcast"] == "ok" for w in c.status()["workers"]), 10,
                     what="every worker's broadcasts ok")
            log = c.log()
            assert log.count("redis subscription lost") == 2, log
            assert log.count("redis subscription restored") == 2, log
            assert f"(redis://127.0.0.1:{servers[1].port}/0)" in log
        finally:
            for cl in clients:
                cl.sio.disconnect()
    finally:
        for r in servers:
            r.stop()


def test_pubsub_figures_in_status_and_metrics(cluster_factory, redis_server):
    from test_metrics import scrape, total

    port = free_port()
    c = cluster_factory(app="values_app:sio", cwd=ROOT / "tests" / "apps", workers=1,
                        redis=redis_server, redis_channels="interest",
                        args=("--metrics", f"127.0.0.1:{port}"))
    c.wait_ready()
    p = Party(c.url)
    try:
        # worker channel, fleet, socketio (one server holds all), then "/" and
        # "/values" (Party joins both), then the room.
        assert p.call("join", "m") is True
        st = wait_for(lambda: (s := c.status())["workers"][0]["pubsub"]["channels"] == 6 and s,
                      10, what="six channels in the LOAD")
        assert st["master"]["redis_channels"] == "interest"
        m = scrape(f"http://127.0.0.1:{port}/metrics")
        assert total(m["imcluster_worker_pubsub_channels"],
                     "imcluster_worker_pubsub_channels") == 6
        assert total(m["imcluster_worker_pubsub_received"],
                     "imcluster_worker_pubsub_received_total") >= \
            st["workers"][0]["pubsub"]["received"]
    finally:
        p.sio.disconnect()


def test_a_session_moved_by_a_reload_is_still_reached_by_its_sid(cluster_factory,
                                                                redis_server):
    """`--handover yes`: a reload moves host 1's sessions to new workers. A sid
    keeps naming the worker that made it, so its new holder takes up that
    worker's channel: emit, ack and call to it from host 2 still arrive, and so
    do its room's messages."""
    apps = ROOT / "tests" / "apps"
    ip1, ip2 = "127.0.0.2", "127.0.0.3"
    h1 = cluster_factory(app="values_app:sio", cwd=apps, workers=2, host_id=1,
                         bind=f"{ip1}:{free_port(ip1)}", redis=redis_server,
                         redis_channels="interest", handover=True)
    h2 = cluster_factory(app="values_app:sio", cwd=apps, workers=1, host_id=2,
                         bind=f"{ip2}:{free_port(ip2)}", redis=redis_server,
                         redis_channels="interest")
    h1.wait_ready()
    h2.wait_ready()
    a, c = Party(h1.url), Party(h2.url)
    try:
        made_by = a.pid
        room = f"h-{next(tags)}"
        assert a.call("join", room) is True
        r = subprocess.run([sys.executable, "-m", "imcluster", "reload", "--control",
                            h1.control], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert a.call("whoami") != made_by and a.sio.get_sid("/") == a.sid
        wid = owner_of(a.sid)[1]
        assert wid not in {w["worker_id"] for w in h1.status()["workers"]}
        wait_for(lambda: f"socketio:w:1:{wid}" in Fleet("interest", {}, [redis_server])
                 .channels(), 10, what="the old worker's channel held by the new holder")
        event = send(c, a.sid, target="sid")
        wait_for(lambda: heard(a, event) == 1, 10, what="an emit to the moved sid")
        args = ["back", b"\x01"]
        assert c.call("send", {"mode": "ack", "target": "sid", "to": a.sid,
                               "event": f"ask-{next(tags)}", "args": args}) == args
        assert c.call("send", {"mode": "call", "target": "sid", "to": a.sid,
                               "event": f"ask-{next(tags)}", "args": [1]}) == {"result": 1}
        assert a.call("send", {"mode": "call", "target": "sid", "to": c.sid,
                               "event": f"ask-{next(tags)}", "args": [2]}) == {"result": 2}
        event = send(c, room)
        wait_for(lambda: heard(a, event) == 1, 10, what="a room message after the move")
        time.sleep(0.5)
        assert all(len(v) == 1 for k, v in a.heard.items() if k[1].startswith("e"))
    finally:
        a.sio.disconnect()
        c.sio.disconnect()
