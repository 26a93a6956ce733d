"""Interest channels on a Redis Cluster with sharded pub/sub (issue 15,
workers/redis_cluster.py): `--redis redis+cluster://HOST:PORT --redis-channels interest`.

Each test module run starts its own cluster (tests/rediscluster.py: redis-server
7 processes on free loopback ports, `redis-cli --cluster create`), and three
hosts as tests/test_interest.py does (host 1 with two workers, hosts 2 and 3
with one each, on 127.0.0.2-4, tests/apps/values_app.py). The cluster tests of
the slot map (a slot moved, a master killed) each start a cluster of their own.
"""

from __future__ import annotations

import collections
import itertools
import time

import pytest
import redis
import socketio
import test_interest
from conftest import ROOT, Cluster, free_port, wait_for
from pyclients import Client
from rediscluster import RedisCluster
from test_interest import (
    Fleet,
    heard,
    send,
    # The same tests, run here on the cluster (this module's fleet and parties):
    test_a_room_on_one_host_costs_the_other_hosts_nothing,  # noqa: F401
    test_an_emit_after_a_remote_disconnect_does_not_reach_the_session,  # noqa: F401
    test_each_member_gets_each_message_once,  # noqa: F401
)
from test_values import Party

from imcluster.workers.redis_cluster import Topology, key_slot, node_url, seed_urls

tags = itertools.count()
labels = itertools.count()
# Its parties (a1, b1 on host 1; a2 on 2; a3 on 3) in rooms one, two, three, on this
# module's fleet.
parties = test_interest.parties


class ClusterFleet(Fleet):
    def __init__(self, hosts: dict[int, Cluster], rc: RedisCluster):
        super().__init__("interest", hosts, [])
        self.rc = rc

    def shard_channels(self) -> dict[int, set[str]]:
        """Each master's (by port) shard channels with a subscriber."""
        found = {}
        for m in self.rc.masters():
            r = self.rc.client(m)
            try:
                found[m.port] = set(r.execute_command("PUBSUB", "SHARDCHANNELS"))
            finally:
                r.close()
        return found

    def channels(self) -> set[str]:
        return set().union(*self.shard_channels().values())


def start_hosts(tmp_path_factory, url: str, spec=((1, 2), (2, 1), (3, 1))) -> dict[int, Cluster]:
    hosts: dict[int, Cluster] = {}
    for i, workers in spec:
        ip = f"127.0.0.{i + 1}"
        hosts[i] = Cluster(tmp_path_factory.mktemp(f"host{i}"), app="values_app:sio",
                           workers=workers, redis=url, cwd=ROOT / "tests" / "apps",
                           host_id=i, bind=f"{ip}:{free_port(ip)}", redis_channels="interest")
    for c in hosts.values():
        c.wait_ready()
        wait_for(lambda c=c: all(w["broadcast"] == "ok" for w in c.status()["workers"]),
                 15, what="every worker subscribed")
    return hosts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    rc = RedisCluster(tmp_path_factory.mktemp("rcluster"), masters=3)
    hosts: dict[int, Cluster] = {}
    try:
        rc.start()
        hosts = start_hosts(tmp_path_factory, rc.url)
        yield ClusterFleet(hosts, rc)
    finally:
        for c in hosts.values():
            c.stop()
        rc.stop()


def test_key_slot_is_the_clusters(fleet):
    """key_slot against CLUSTER KEYSLOT, hash tags included."""
    r = fleet.rc.client(fleet.rc.nodes[0])
    try:
        for name in ("a", "socketio:fleet", 'socketio:r:["/","ü"]', "x{tag}y", "{}a",
                     "a{}b{c}", "socketio:k:{17}", "socketio:w:1:2"):
            assert key_slot(name) == r.execute_command("CLUSTER", "KEYSLOT", name), name
    finally:
        r.close()


def test_seed_urls():
    assert seed_urls("redis+cluster://:pw@h:7000,rediss+cluster://h2:7001/0?x=1") == [
        "redis://:pw@h:7000", "rediss://h2:7001?x=1"]
    with pytest.raises(ValueError):
        seed_urls("redis://h:7000")
    with pytest.raises(ValueError):
        seed_urls("redis+cluster://h:7000/3")
    # A master's URL: the seed's scheme, credentials and options, the master's address.
    assert node_url("rediss://u:pw@h:7000?ssl_cert_reqs=none", "10.0.0.2:7001") == \
        "rediss://u:pw@10.0.0.2:7001?ssl_cert_reqs=none"
    assert node_url("redis://h:7000", "::1:7001") == "redis://[::1]:7001"


def test_channels_spread_over_the_masters_by_slot(fleet, parties):
    """60 rooms joined by a3: each room's channel is held on the master that owns
    its slot, and every master holds some (counted with PUBSUB SHARDCHANNELS and
    SHARDNUMSUB on each master)."""
    a3 = parties["a3"]
    rooms = [f"spread-{next(tags)}" for _ in range(60)]
    for room in rooms:
        assert a3.call("join", room) is True
    held = fleet.shard_channels()
    r = fleet.rc.client(fleet.rc.nodes[0])
    try:
        topo = Topology.from_slots(r.execute_command("CLUSTER", "SLOTS"), "127.0.0.1")
    finally:
        r.close()
    per_master = collections.Counter()
    for room in rooms:
        channel = f'socketio:r:["/","{room}"]'
        port = int(topo.owner(channel).rpartition(":")[2])
        assert channel in held[port], (channel, port)
        assert all(channel not in chans for p, chans in held.items() if p != port)
        per_master[port] += 1
        m = next(n for n in fleet.rc.nodes if n.port == port)
        c = fleet.rc.client(m)
        try:
            assert c.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1  # host 3's worker
        finally:
            c.close()
    assert set(per_master) == set(held) and len(held) == 3, per_master
    assert all(n >= 5 for n in per_master.values()), per_master
    # Each worker's own channel and a keeper on every master; the rooms leave with a3.
    for room in rooms:
        assert a3.call("send", {"mode": "emit", "target": "room", "to": room,
                                "event": "x", "args": []}) is True


def test_a_room_left_and_joined_again_at_once_is_not_taken_for_a_moved_slot(fleet):
    """Leave then join at once, in one handler: the SUNSUBSCRIBE's answer
    arrives while the channel is wanted again; the worker tells it from a
    channel its master dropped (no re-placement, no log line) and the member
    hears the room."""
    p = Party(fleet.hosts[3].url)
    try:
        for _ in range(5):
            room = f"again-{next(tags)}"
            assert p.call("join", room) is True
            assert p.call("rejoin", room) is True
            event = send(p, room)
            wait_for(lambda e=event: heard(p, e) == 1, 10, what="the room after the rejoin")
        time.sleep(1.0)
        assert "dropped unasked" not in fleet.hosts[3].log()
    finally:
        p.sio.disconnect()


def test_emit_ack_call_and_room_changes_of_a_sid_on_another_host(fleet, parties):
    a1, b1, a2, a3 = (parties[k] for k in ("a1", "b1", "a2", "a3"))
    for sender, receiver in ((a1, a3), (b1, a2), (a3, b1)):
        event = send(sender, receiver.sid, target="sid")
        wait_for(lambda e=event, r=receiver: heard(r, e) == 1, 10, what="emit to a sid")
        args = [{"k": [b"\x00\xff", "ü"]}, 7]
        assert sender.call("send", {"mode": "ack", "target": "sid", "to": receiver.sid,
                                    "event": f"ask-{next(tags)}", "args": args}) == args
        assert sender.call("send", {"mode": "call", "target": "sid", "to": receiver.sid,
                                    "event": f"ask-{next(tags)}", "args": ["pong"]}) == {
            "result": "pong"}
    rooms = [f"moved-{next(tags)}" for _ in range(10)]
    at_once = {r: f"e{next(tags)}" for r in rooms}
    for r in rooms:
        assert a1.call("move", {"op": "enter", "sid": a3.sid, "room": r,
                                "then_emit": at_once[r]}) is True
    wait_for(lambda: all(heard(a3, e) == 1 for e in at_once.values()), 10,
             what="each emit made right after the enter_room")
    after_leave = {r: f"e{next(tags)}" for r in rooms}
    for r in rooms:
        assert a1.call("move", {"op": "leave", "sid": a3.sid, "room": r,
                                "then_emit": after_leave[r]}) is True
    e3 = send(a1, a3.sid, target="sid")
    wait_for(lambda: heard(a3, e3) == 1, 10, what="the emit after the leaves")
    assert not [e for e in after_leave.values() if heard(a3, e)], "heard after its leave"
    gone = Party(fleet.hosts[2].url)
    try:
        assert a1.call("move", {"op": "disconnect", "sid": gone.sid, "room": None}) is True
        wait_for(lambda: "/" not in gone.sio.namespaces, 10,
                 what="the session on host 2 disconnected from host 1")
    finally:
        gone.sio.disconnect()
    time.sleep(0.5)
    assert all(len(v) == 1 for p in parties.values() for k, v in p.heard.items()
               if k[1].startswith("e")), "a message heard twice"


def test_an_external_write_only_emitter_on_any_node_reaches_every_member(fleet, parties):
    """python-socketio's RedisManager(write_only=True) publishes with plain PUBLISH,
    which a cluster forwards to every node: given any master's address, its
    emits reach a room, a sid and everyone, once each."""
    key = ("/", "external")
    for k, m in enumerate(fleet.rc.masters()):
        emitter = socketio.RedisManager(f"redis://127.0.0.1:{m.port}/0", write_only=True)
        try:
            emitter.emit("external", [k, "room"], room="three")
            emitter.emit("external", [k, "sid"], room=parties["a2"].sid)
            emitter.emit("external", [k, "all"])
        finally:
            emitter.redis.close()

    def got(p):
        return sorted(map(repr, p.heard.get(key, [])))

    want = {name: sorted(repr([[k, w]]) for k in range(3) for w in ("room", "all"))
            for name in parties}
    want["a2"] = sorted(want["a2"] + [repr([[k, "sid"]]) for k in range(3)])
    wait_for(lambda: all(len(got(p)) == len(want[n]) for n, p in parties.items()), 10,
             what="the external emits at every member")
    time.sleep(0.5)
    assert {n: got(p) for n, p in parties.items()} == want


def _say_until_heard(sender: Client, room: str, group: list[Client], timeout: float) -> str:
    """Say a fresh text in `room` once a second until every client in `group` heard
    one; returns the text heard."""
    tries = itertools.count()
    found = {}

    def delivered() -> bool:
        text = f"{room}-{next(labels)}-{next(tries)}"
        sender.sio.emit("say", {"room": room, "text": text, "ts": 0})
        time.sleep(1.0)
        if all(any(m["text"] == text for m in cl.said) for cl in group):
            found["text"] = text
            return True
        return False

    wait_for(delivered, timeout, interval=0, what=f"a message in {room} at every member")
    return found["text"]


def _rooms_on(topo: Topology, port: int, n: int) -> list[str]:
    found = []
    for k in itertools.count():
        room = f"room{k}"
        if topo.owner(f'socketio:r:["/","{room}"]').endswith(f":{port}"):
            found.append(room)
            if len(found) == n:
                return found


def _topology(rc: RedisCluster) -> Topology:
    for n in rc.nodes:
        if n.proc is not None and n.proc.poll() is None:
            r = rc.client(n)
            try:
                return Topology.from_slots(r.execute_command("CLUSTER", "SLOTS"), "127.0.0.1")
            finally:
                r.close()
    raise AssertionError("no live node")


def test_a_slot_moved_to_another_master_takes_its_channel_along(cluster_factory, tmp_path):
    """A room's slot is moved to another master (CLUSTER SETSLOT … NODE, as a
    resharding ends): the old master drops the worker's SSUBSCRIBE (Redis 7 sends
    SUNSUBSCRIBE), the worker resubscribes at the new owner, and the room's
    messages reach every member on both workers again, from a member and from a
    sender on another host whose worker holds no member (it learns of the move
    only when the old master refuses its SPUBLISH, or at its next read of the
    slot map); each member hears each message at most once throughout."""
    (tmp_path / "rc").mkdir()
    rc = RedisCluster(tmp_path / "rc", masters=3)
    rc.start()
    try:
        ip1, ip2 = "127.0.0.2", "127.0.0.3"
        c = cluster_factory(workers=2, redis=rc.url, redis_channels="interest", host_id=1,
                            bind=f"{ip1}:{free_port(ip1)}")
        c2 = cluster_factory(workers=1, redis=rc.url, redis_channels="interest", host_id=2,
                             bind=f"{ip2}:{free_port(ip2)}")
        c.wait_ready()
        c2.wait_ready()
        outsider = Client(c2.url, "websocket")
        topo = _topology(rc)
        src, dst = rc.masters()[0], rc.masters()[1]
        room = _rooms_on(topo, src.port, 1)[0]
        channel = f'socketio:r:["/","{room}"]'
        slot = key_slot(channel)
        clients = [Client(c.url, "websocket") for _ in range(6)]
        try:
            pids = {}
            for cl in clients:
                assert cl.join(room) is True
                pids.setdefault(cl.whoami(), cl)
            assert len(pids) == 2, "the clients did not spread over both workers"
            _say_until_heard(clients[0], room, clients, 10)
            ids = {}
            for n in (src, dst):
                r = rc.client(n)
                ids[n.port] = r.execute_command("CLUSTER", "MYID")
                r.close()
            for n, args in ((dst, ("IMPORTING", ids[src.port])),
                            (src, ("MIGRATING", ids[dst.port])),
                            (dst, ("NODE", ids[dst.port])),
                            (src, ("NODE", ids[dst.port]))):
                r = rc.client(n)
                try:
                    r.execute_command("CLUSTER", "SETSLOT", slot, *args)
                finally:
                    r.close()
            for n in rc.nodes:  # the third master learns it by gossip anyway
                r = rc.client(n)
                try:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
                except redis.ResponseError:
                    pass
                finally:
                    r.close()

            def moved() -> bool:
                r = rc.client(dst)
                try:
                    return r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 2
                finally:
                    r.close()

            wait_for(moved, 15, what="both workers subscribed at the slot's new master")
            r = rc.client(src)
            try:
                assert r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 0
            finally:
                r.close()
            text = _say_until_heard(outsider, room, clients, 10)
            assert text.endswith("-0"), "the outsider's first message after the move was lost"
            text = _say_until_heard(clients[1], room, clients, 10)
            assert text.endswith("-0"), "the first message after the move was lost"
            time.sleep(0.5)
            for cl in clients:
                texts = [m["text"] for m in cl.said]
                assert len(texts) == len(set(texts)), texts
            assert c.log().count("slot map changed") >= 2
            assert sum(w["pubsub"]["resubscribed"] for w in c.status()["workers"]) >= 2
        finally:
            for cl in clients + [outsider]:
                cl.sio.disconnect()
            c.stop()  # before the Redis Cluster, or its workers log it gone
            c2.stop()
    finally:
        rc.stop()


def test_a_master_killed_and_its_replica_taking_over(cluster_factory, tmp_path):
    """Three masters with a replica each. The master owning a room's slot is
    killed (kill -9): meanwhile the room's messages reach only local members;
    once the replica has taken over the slot, every worker holds the room at the
    new master and its messages reach every member again, and a room on a
    master that stayed up is heard throughout."""
    (tmp_path / "rc").mkdir()
    rc = RedisCluster(tmp_path / "rc", masters=3, replicas=1)
    rc.start()
    try:
        c = cluster_factory(workers=2, redis=rc.url, redis_channels="interest")
        c.wait_ready()
        topo = _topology(rc)
        masters = rc.masters()
        victim = next(m for m in masters if m.port != rc.nodes[0].port)
        other = next(m for m in masters if m is not victim)
        hit = _rooms_on(topo, victim.port, 1)[0]
        safe = _rooms_on(topo, other.port, 1)[0]
        clients = [Client(c.url, "websocket") for _ in range(6)]
        try:
            for cl in clients:
                assert cl.join(hit) is True and cl.join(safe) is True
                cl.whoami()
            _say_until_heard(clients[0], hit, clients, 10)
            victim.kill()
            _say_until_heard(clients[0], safe, clients, 10)
            wait_for(lambda: victim.port not in {m.port for m in rc.masters()}, 30,
                     what="a replica taking over the dead master's slots")
            _say_until_heard(clients[0], hit, clients, 20)
            wait_for(lambda: all(w["broadcast"] == "ok" for w in c.status()["workers"]), 15,
                     what="every worker's broadcasts ok")
            log = c.log()
            assert log.count("slot map changed") >= 2, log
            assert "redis subscription lost" in log
        finally:
            for cl in clients:
                cl.sio.disconnect()
            c.stop()  # before the Redis Cluster, or its workers log it gone
    finally:
        rc.stop()


def test_a_master_without_replica_restarted(cluster_factory, tmp_path):
    """Three masters, no replica. One is killed (kill -9): the cluster's state
    turns to fail, yet a room on another master still reaches every member
    (Redis 7.0 serves SPUBLISH/SSUBSCRIBE on a live master meanwhile); the same
    node is started again on its port, with its slots: every worker resubscribes
    there, and both rooms reach every member."""
    (tmp_path / "rc").mkdir()
    rc = RedisCluster(tmp_path / "rc", masters=3)
    rc.start()
    try:
        c = cluster_factory(workers=2, redis=rc.url, redis_channels="interest")
        c.wait_ready()
        topo = _topology(rc)
        victim = next(m for m in rc.masters() if m.port != rc.nodes[0].port)
        other = next(m for m in rc.masters() if m is not victim)
        hit = _rooms_on(topo, victim.port, 1)[0]
        safe = _rooms_on(topo, other.port, 1)[0]
        clients = [Client(c.url, "websocket") for _ in range(6)]
        try:
            for cl in clients:
                assert cl.join(hit) is True and cl.join(safe) is True
            _say_until_heard(clients[0], hit, clients, 10)
            victim.kill()
            wait_for(lambda: all(w["broadcast"] != "ok" for w in c.status()["workers"]), 15,
                     what="every worker reporting its broadcasts down")
            wait_for(lambda: not rc.ok(), 15, what="the cluster state fail")
            _say_until_heard(clients[0], safe, clients, 10)
            victim.start()
            wait_for(rc.ok, 30, what="the cluster ok again")
            _say_until_heard(clients[0], hit, clients, 20)
            _say_until_heard(clients[0], safe, clients, 20)
            wait_for(lambda: all(w["broadcast"] == "ok" for w in c.status()["workers"]), 15,
                     what="every worker's broadcasts ok")
            assert "redis subscription restored" in c.log()
        finally:
            for cl in clients:
                cl.sio.disconnect()
            c.stop()
    finally:
        rc.stop()


@pytest.mark.parametrize("rooms", ["one room", "to three rooms, each client in two"])
def test_a_reload_with_handover_orders_the_moves_with_room_messages(tmp_path, cluster_factory,
                                                                    rooms):
    """`--handover yes` on the cluster: the heir subscribes to the sessions' shard
    channels and marks each before a session leaves (workers/redis_order.py,
    "Interest channels"), so 100 JS clients talking in a room through a reload
    get every room message once (tests/test_handover.py's check, sharded pub/sub).
    Also when each says to three rooms at once and is in two of them (each room's
    copy through its own master: "Several rooms at once")."""
    from test_handover import APPS, CLIENTS, assert_nothing_noticed, reload, under_traffic

    (tmp_path / "rc").mkdir()
    rc = RedisCluster(tmp_path / "rc", masters=3)
    several = rooms != "one room"
    more = ({"rooms": [["ra", "rb"], ["rb", "rc"]], "say_to": ["ra", "rb", "rc"]}
            if several else {})
    try:
        rc.start()
        app = "rooms_app:sio" if several else "imcluster.examples.bench:sio"
        cluster = cluster_factory(app=app, cwd=APPS, workers=2, handover=True, redis=rc.url,
                                  redis_channels="interest")
        old = {w["pid"] for w in cluster.wait_ready()}
        stats = under_traffic(cluster, lambda: reload(cluster), say_every=2, **more)
        print(f"FIGURE handover reload, websocket, redis cluster, {rooms}: {CLIENTS} JS "
              f"clients, {stats}")
        assert set(stats["pids_before"]) == old
        assert_nothing_noticed(stats)
        assert not set(stats["pids_after"]) & old, "every worker pid is new"
    finally:
        rc.stop()
