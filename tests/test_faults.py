"""A dead worker, and an app that cannot load."""

from __future__ import annotations

import os
import signal
import threading
import time

from conftest import wait_for
from pyclients import Client
from rawhttp import Conn, open_session, poll_target

from imcluster.sid import worker_of


def test_kill_9_worker_under_load(cluster_factory):
    cluster = cluster_factory(workers=3)
    workers = cluster.wait_ready()
    clients = [Client(cluster.url, t, reconnection=True, room="r")
               for t in ["websocket", "polling", "default"] * 10]
    try:
        for c in clients:
            assert c.join("r") is True
        home = {c: c.whoami() for c in clients}
        stale = open_session(cluster.port)  # a raw session; its worker will die
        victim = next(w for w in workers if w["worker_id"] == worker_of(stale))
        bystanders = [c for c in clients if home[c] != victim["pid"]]
        orphans = [c for c in clients if home[c] == victim["pid"]]
        assert bystanders and orphans

        # Keep traffic flowing on the bystanders while the worker dies.
        stop, failures, acks = threading.Event(), [], [0]

        def load():
            while not stop.is_set():
                for c in bystanders:
                    try:
                        assert c.call("echo", {"n": acks[0]}) == {"n": acks[0]}
                        acks[0] += 1
                    except Exception as e:
                        failures.append(repr(e))

        t = threading.Thread(target=load, daemon=True)
        t.start()
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)

        # The master survives and refills the slot with a new process.
        def refilled():
            ws = cluster.ready_workers()
            pids = {w["pid"] for w in ws}
            return len(ws) == 3 and victim["pid"] not in pids and pids
        live = wait_for(refilled, 20, what="slot refilled")
        assert cluster.proc.poll() is None

        # The dead worker's clients reconnect on their own, to live workers.
        wait_for(lambda: all(c.connects >= 2 and c.sio.connected for c in orphans), 30,
                 what="orphans reconnected")
        for c in orphans:
            assert wait_for(lambda c=c: _whoami_or_none(c), 10) in live
        time.sleep(0.5)
        stop.set()
        t.join(15)
        # Everyone else was untouched: no disconnect, same worker, every ack answered.
        assert failures == [] and acks[0] > 0
        for c in bystanders:
            assert c.disconnects == 0 and c.whoami() == home[c]

        # And the room still reaches everybody, on every worker.
        text = f"after-{time.time()}"
        wait_for(lambda: all(c.call("join", {"room": "r"}) for c in orphans), 10)
        clients[0].sio.emit("say", {"room": "r", "text": text, "ts": 0})
        wait_for(lambda: all(any(m["text"] == text for m in c.said) for c in clients), 10,
                 what="room message after the crash")

        # A sid of the dead worker gets Engine.IO's unknown-session answer.
        with Conn(cluster.port) as conn:
            status, _, body = conn.request("GET", poll_target(stale))
        assert status == 400 and b"Invalid session" in body, body
        st = cluster.status()
        assert sum(w["restarts"] for w in st["workers"]) == 1
    finally:
        for c in clients:
            c.close()


def _whoami_or_none(c: Client):
    try:
        return c.whoami()
    except Exception:
        return None


def test_app_that_fails_to_import_stops_the_master(cluster_factory, tmp_path):
    (tmp_path / "broken_app.py").write_text("import socketio\nsio = socketio.Server(\n")
    cluster = cluster_factory(app="broken_app:sio", workers=2)
    code = cluster.proc.wait(30)
    log = cluster.log()
    assert code == 3, log
    assert "broken_app:sio failed to load" in log and "SyntaxError" in log, log
    # It gave up instead of respawning in a loop: one spawn per slot.
    assert log.count("spawned worker") == 2, log


def test_missing_module_is_named(cluster_factory):
    cluster = cluster_factory(app="no_such_module:sio", workers=1)
    assert cluster.proc.wait(30) == 3
    assert "cannot import module 'no_such_module'" in cluster.log()


def test_worker_crash_loop_backs_off_and_becomes_fatal(cluster_factory, tmp_path):
    """An app that imports but kills its worker shortly after start (say a bad
    background task): the slot backs off instead of respawning in a busy loop."""
    (tmp_path / "flaky.py").write_text(
        "import os, threading, socketio\n"
        "sio = socketio.Server(async_mode='eventlet')\n"
        "if os.environ.get('FLAKY_SLOT') and os.path.exists(os.environ['FLAKY_SLOT']):\n"
        "    threading.Timer(0.3, os._exit, (9,)).start()\n")
    flag = tmp_path / "flaky-on"
    flag.write_text("1")
    cluster = cluster_factory(app="flaky:sio", workers=1, env={"FLAKY_SLOT": str(flag)})
    t0 = time.monotonic()
    code = cluster.proc.wait(60)
    elapsed = time.monotonic() - t0
    log = cluster.log()
    assert code == 3, log
    assert log.count("spawned worker") == 5, log  # MAX_START_FAILURES, with backoff between
    assert "FATAL" in log and "every slot is FATAL" in log
    assert elapsed > 0.5 + 1 + 2 + 4  # the backoff delays were honoured


def test_master_survives_a_signal_storm(cluster_factory):
    """Signals only record a wish; the loop acts on them in order."""
    cluster = cluster_factory(workers=1)
    first = cluster.wait_ready()[0]["pid"]
    for _ in range(20):
        os.kill(cluster.pid, signal.SIGCHLD)
    # Equal signals sent together may merge into one (POSIX), so space these:
    # a reload, then one worker more and one less while it runs (both wait
    # for the reload to end, the second counting from the first: 1 worker).
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        os.kill(cluster.pid, sig)
        time.sleep(0.05)
    time.sleep(0.5)
    assert cluster.proc.poll() is None

    def settled():
        st = cluster.status()
        return (st["reload"] is None and len(st["workers"]) == 1
                and st["workers"][0]["state"] == "READY" and st)

    st = wait_for(settled, 30, what="one READY worker, reload done")
    assert st["last_reload"]["ok"] and st["workers"][0]["pid"] != first
    assert "scaled from" not in cluster.log()  # no worker was started for the TTIN
