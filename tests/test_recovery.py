"""Connection state recovery (`--recovery-window`, workers/recovery.py) with the
official JS client: a worker killed under a stream of room broadcasts."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from conftest import JS, ROOT, wait_for
from pyclients import Client

from imcluster.master.recovery import RecoveryStore
from imcluster.settings import SettingError, resolve

WORKERS = 3


def _recovery_run(cluster, **opts):
    """Run tests/js/recovery.mjs, kill -9 the worker it names when it says so;
    (the first line it printed, the result)."""
    proc = subprocess.Popen(["node", str(JS / "recovery.mjs"),
                             json.dumps({"url": cluster.url, **opts})],
                            cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline() or "null")
        assert first, proc.stderr.read()
        assert first["victim"] in cluster.worker_pids()
        assert first["sender"] != first["victim"]
        assert json.loads(proc.stdout.readline()) == {"kill": True}
        os.kill(first["victim"], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return first, json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_workers_clients_recover_every_broadcast_once_in_order(cluster_factory):
    cluster = cluster_factory(app="recovery_app:sio", workers=WORKERS,
                              recovery_window=10, cwd=ROOT / "tests" / "apps")
    cluster.wait_ready()
    first, result = _recovery_run(cluster, clients=30, messages=200, rate=40, kill_after=60,
                                  state=True)
    assert all(isinstance(p, str) and p for p in first["pids"]), "a CONNECT without a pid"
    wanted = list(range(result["messages"]))
    orphans = [m for m in result["members"] if m["worker"] == first["victim"]]
    others = [m for m in result["members"] if m["worker"] != first["victim"]]
    assert len(orphans) >= 30 // WORKERS
    for m in result["members"]:
        assert m["heard"] == wanted, (m["worker"], m["id"], _gaps(m["heard"], wanted))
    for m in orphans:
        assert m["connects"] >= 2 and m["recovered"] is True, m
        assert len(set(m["pids"])) == 1, m  # the same pid came back
        # The session data came back: the connect handler ran twice on it, and
        # imcluster.recovered() told it the second time.
        assert m["state"] == {"connects": 2, "recovered": True}, m
    for m in others:
        assert m["connects"] == 1 and m["recovered"] is False
        assert m["state"] == {"connects": 1, "recovered": False}


def test_a_rolling_reload_recovers_every_session(cluster_factory):
    """A reload drains each worker in turn (as socket.io's "server shutting down"):
    every client comes back recovered, with every broadcast once, in order."""
    cluster = cluster_factory(workers=WORKERS, recovery_window=10)
    cluster.wait_ready()
    proc = subprocess.Popen(["node", str(JS / "recovery.mjs"), json.dumps(
        {"url": cluster.url, "clients": 12, "messages": 300, "rate": 40, "kill_after": 40,
         "hold_after": 200, "sender_reconnects": True})],
        cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        first = json.loads(proc.stdout.readline() or "null")
        assert first, proc.stderr.read()
        assert json.loads(proc.stdout.readline()) == {"kill": True}
        cluster.cluster.reload()  # returns once every worker was replaced
        # The sender pauses after 200 until then: it goes on once the reload is over.
        assert json.loads(proc.stdout.readline()) == {"held": True}
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["reconnected"] is True
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for m in result["members"]:
        assert m["heard"] == list(range(300)), (m["worker"], _gaps(m["heard"], list(range(300))))
        assert m["connects"] >= 2 and m["recovered"] is True, m


def test_recovery_off_sends_no_pid_and_does_not_recover(cluster_factory):
    """The same run without --recovery-window: no pid in CONNECT, no offsets, so
    the killed worker's clients come back as new sessions and miss what was sent
    while they were away (what recovery is for)."""
    cluster = cluster_factory(workers=WORKERS)
    cluster.wait_ready()
    first, result = _recovery_run(cluster, clients=12, messages=120, rate=40, kill_after=40,
                                  deliver_ms=3000)
    assert first["pids"] == [None] * 12
    orphans = [m for m in result["members"] if m["worker"] == first["victim"]]
    assert orphans
    for m in result["members"]:
        assert m["recovered"] is False and set(m["pids"]) == {None}
    for m in orphans:
        # A new session is in no room: it hears nothing after the kill.
        assert m["heard"] == sorted(set(m["heard"])) and len(m["heard"]) < 120


def test_python_clients_that_do_not_ask_get_no_offsets(cluster_factory):
    """With recovery on, python-socketio's client (no recovery of its own) hears
    broadcasts as before: one argument per `emit` value, no offset after it (its
    handlers get every argument; `self.said.append` takes exactly one)."""
    cluster = cluster_factory(workers=WORKERS, recovery_window=10)
    cluster.wait_ready()
    clients = [Client(cluster.url, t) for t in ("websocket", "polling", "default") * 2]
    try:
        for c in clients:
            assert c.join("py") is True
        assert len({c.whoami() for c in clients}) > 1  # across workers
        for n in range(5):
            assert clients[n % len(clients)].call("say", {"room": "py", "n": n}) is True
        wait_for(lambda: all(len(c.said) >= 5 for c in clients), 20, what="5 says each")
        for c in clients:
            assert c.said == [{"room": "py", "n": n} for n in range(5)]
    finally:
        for c in clients:
            c.close()


def test_recovery_with_redis_is_refused_clearly():
    with pytest.raises(SettingError, match="master relay only"):
        resolve(None, {"IMCLUSTER_RECOVERY_WINDOW": "5", "IMCLUSTER_REDIS": "redis://x/0"})
    assert resolve(None, {"IMCLUSTER_RECOVERY_WINDOW": "0",
                          "IMCLUSTER_REDIS": "redis://x/0"}).recovery_window == 0


def test_a_session_recovered_on_a_worker_started_after_it_left(cluster_factory):
    """The killed worker's clients stay away while broadcasts go on, and a worker
    is added meanwhile (they come back once it is READY): those that land on it,
    which has delivered no broadcast yet and never had the ones they missed, get
    every one replayed."""
    cluster = cluster_factory(workers=2, recovery_window=10)
    cluster.wait_ready()
    opts = {"url": cluster.url, "clients": 12, "messages": 120, "rate": 40, "kill_after": 40,
            "hold_after": 60, "reconnect_ms": 60000}
    proc = subprocess.Popen(["node", str(JS / "recovery.mjs"), json.dumps(opts)], cwd=JS,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline() or "null")
        assert first, proc.stderr.read()
        assert json.loads(proc.stdout.readline()) == {"kill": True}
        os.kill(first["victim"], signal.SIGKILL)
        assert json.loads(proc.stdout.readline()) == {"held": True}
        wait_for(lambda: len(cluster.worker_pids() - {first["victim"]}) == 2, 20,
                 what="the killed worker replaced")
        before = cluster.worker_pids()
        cluster.cluster.scale("+1")
        added = cluster.worker_pids() - before - {first["victim"]}
        proc.stdin.write("go\n")
        proc.stdin.flush()
        back = json.loads(proc.stdout.readline())
        assert back["reconnected"] is True
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    on_added = [m for m, w in zip(result["members"], back["workers"], strict=True) if w in added]
    assert on_added, (added, back["workers"])  # else this run did not test it
    for m in result["members"]:
        assert m["heard"] == list(range(120)), (m["worker"], _gaps(m["heard"], list(range(120))))
    for m in on_added:
        assert m["recovered"] is True


def _gaps(heard: list[int], wanted: list[int]) -> dict:
    seen = set(heard)
    return {"missing": [n for n in wanted if n not in seen][:20],
            "twice": sorted({n for n in heard if heard.count(n) > 1})[:20],
            "in_order": heard == sorted(heard)}


# ---- the master's store, as data -------------------------------------------------------

def _emit(room=None, skip=None, ns="/"):
    msg = {"method": "emit", "event": "e", "data": [1], "namespace": ns, "room": room,
           "skip_sid": skip, "callback": None, "host_id": "h"}
    return msg, json.dumps(msg).encode()


def _up(store, pid="p1", sid="s1", eio="e1", rooms=("s1", "r"), worker=1, now=0.0):
    assert store.apply(worker, {"op": "up", "pid": pid, "eio_sid": eio, "sid": sid,
                                "namespace": "/", "rooms": list(rooms), "data": {"k": 1}},
                       now) is None


def _missed(answer: bytes) -> list[int]:
    return [int(m["offset"]) for m in json.loads(answer)["missed"]]


def test_store_replays_what_the_sessions_rooms_heard_after_its_offset():
    store = RecoveryStore(window=10)
    _up(store)
    for msg, payload in [_emit("r"), _emit("other"), _emit(None), _emit("s1"),
                         _emit(["x", "r"]), _emit("r", skip="s1"), _emit(None, ns="/chat")]:
        tagged = store.publish(msg, payload, 1.0)
        assert json.loads(tagged)["offset"] == str(store.last)
    store.worker_gone(1, 2.0)
    answer = store.restore("p1", "1", 3.0)
    assert _missed(answer) == [3, 4, 5]  # not 2 (other room), 6 (skipped), 7 (namespace)
    assert json.loads(answer)["sid"] == "s1" and json.loads(answer)["data"] == {"k": 1}
    assert store.restore("p1", "1", 3.0) is None  # taken: the new worker reports it up


def test_store_refuses_unknown_pids_offsets_dropped_from_the_log_and_expired_sessions():
    store = RecoveryStore(window=10, max_packets=3)
    _up(store)
    for _ in range(5):
        store.publish(*_emit("r"), 1.0)
    store.worker_gone(1, 1.0)
    assert store.floor == 2
    assert store.restore("p1", "1", 2.0) is None  # offset 2 was dropped: it may be missed
    assert store.restore("nope", "4", 2.0) is None
    assert store.restore("p1", "9", 2.0) is None  # never given
    assert _missed(store.restore("p1", "2", 2.0)) == [3, 4, 5]
    _up(store, pid="p2", eio="e2")
    store.apply(1, {"op": "down", "pid": "p2", "eio_sid": "e2"}, 5.0)
    store.expire(14.0)
    assert "p2" in store.sessions
    store.expire(15.5)
    assert "p2" not in store.sessions and not store.log  # and the log aged out too


def test_store_ignores_changes_from_a_connection_that_no_longer_holds_the_session():
    store = RecoveryStore(window=10)
    _up(store, eio="old")
    _up(store, eio="new", worker=2)  # restored elsewhere, reported up again
    assert store.apply(1, {"op": "gone", "pid": "p1", "eio_sid": "old"}, 1.0) == \
        "not the holder"
    assert store.apply(2, {"op": "change", "pid": "p1", "eio_sid": "new",
                           "rooms": ["s1", "b"]}, 1.0) is None
    store.worker_gone(1, 1.0)
    assert store.sessions["p1"].down_at is None and store.sessions["p1"].rooms == ["s1", "b"]
    assert store.apply(2, {"op": "gone", "pid": "p1", "eio_sid": "new"}, 1.0) is None
    assert "p1" not in store.sessions
