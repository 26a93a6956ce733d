"""Operations: rolling reload, scaling, graceful stop, memory limit, hung workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT, wait_for
from pyclients import Client
from rawhttp import open_session

APPS = ROOT / "tests" / "apps"
RELOAD_APP = '''
import os
from imcluster.examples.bench import sio, app
VERSION = {version!r}

@sio.on("version")
def version(sid, data=None):
    return VERSION
'''


def imcluster(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imcluster", *args], capture_output=True,
                          text=True, timeout=timeout)


def call_until_acked(c: Client, event: str, data, deadline: float) -> tuple[object, int]:
    """Call until an ack arrives (across reconnects); returns (ack, attempts)."""
    attempts = 0
    while time.monotonic() < deadline:
        attempts += 1
        try:
            if c.sio.connected:
                return c.call(event, data, timeout=5), attempts
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{event} never acked: the client gave up")


def test_reload_under_load_replaces_every_worker_and_serves_new_code(cluster_factory,
                                                                     tmp_path):
    (tmp_path / "reload_app.py").write_text(RELOAD_APP.format(version="one"))
    cluster = cluster_factory(app="reload_app:sio", workers=2, cwd=tmp_path)
    old_pids = {w["pid"] for w in cluster.wait_ready()}
    clients = [Client(cluster.url, t, reconnection=True, room="r")
               for t in ("default", "polling") * 50]
    try:
        for c in clients:
            assert c.join("r") is True
        assert {c.whoami() for c in clients} == old_pids
        assert clients[0].call("version") == "one"

        stop = threading.Event()
        stats = {"acks": 0, "retried": 0, "wrong": 0}
        lock = threading.Lock()

        def talk(group: list[Client]):
            n = 0
            while not stop.is_set():
                for c in group:
                    n += 1
                    ack, attempts = call_until_acked(c, "echo", {"n": n},
                                                     time.monotonic() + 60)
                    with lock:
                        stats["acks"] += 1
                        stats["retried"] += attempts > 1
                        stats["wrong"] += ack != {"n": n}
                    if n % 25 == 0:
                        try:
                            c.sio.emit("say", {"room": "r", "text": f"m{n}", "ts": 0})
                        except Exception:
                            pass

        threads = [threading.Thread(target=talk, args=(clients[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1)
        (tmp_path / "reload_app.py").write_text(RELOAD_APP.format(version="two, reloaded"))
        r = imcluster("reload", "--control", cluster.control)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "reload complete: 2 worker(s) replaced" in r.stdout
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(90)
        assert stats["acks"] > 100 and stats["wrong"] == 0, stats

        new_pids = {w["pid"] for w in cluster.wait_ready()}
        assert len(new_pids) == 2 and not new_pids & old_pids, "every worker pid changes"
        # Every client is back (none gave up), on a new worker, running the new code.
        for c in clients:
            ack, _ = call_until_acked(c, "whoami", None, time.monotonic() + 30)
            assert ack in new_pids
        assert {call_until_acked(c, "version", None, time.monotonic() + 10)[0]
                for c in clients} == {"two, reloaded"}
        # And the room reaches all of them again, across both new workers.
        wait_for(lambda: all(c.call("join", {"room": "r"}) for c in clients), 20)
        clients[0].sio.emit("say", {"room": "r", "text": "after", "ts": 0})
        wait_for(lambda: all(any(m["text"] == "after" for m in c.said) for c in clients), 15,
                 what="room message after the reload")
        print(f"FIGURE reload under load: 100 clients, {stats['acks']} echo acks, "
              f"{stats['retried']} retried after a reconnect, {stats['wrong']} wrong, "
              f"0 clients gave up")
    finally:
        for c in clients:
            c.close()


def test_reload_with_broken_code_keeps_the_old_workers(cluster_factory, tmp_path):
    (tmp_path / "reload_app.py").write_text(RELOAD_APP.format(version="good"))
    cluster = cluster_factory(app="reload_app:sio", workers=2, cwd=tmp_path)
    old = {w["pid"] for w in cluster.wait_ready()}
    c = Client(cluster.url, "websocket")
    try:
        (tmp_path / "reload_app.py").write_text("import socketio\nsio = (\n")
        r = imcluster("reload", "--control", cluster.control)
        assert r.returncode == 1
        assert "reload failed" in r.stderr and "SyntaxError" in r.stderr
        st = cluster.status()
        assert st["last_reload"]["ok"] is False and "SyntaxError" in st["last_reload"]["error"]
        assert {w["pid"] for w in st["workers"] if w["state"] == "READY"} == old
        assert c.call("version") == "good" and c.disconnects == 0
        table = imcluster("status", "--control", cluster.control).stdout
        assert "last reload FAILED" in table and "SyntaxError" in table
        # A later reload with fixed code succeeds.
        (tmp_path / "reload_app.py").write_text(RELOAD_APP.format(version="fixed"))
        assert imcluster("reload", "--control", cluster.control).returncode == 0
        assert c.close() is None
        c = Client(cluster.url, "websocket")
        assert c.call("version") == "fixed"
    finally:
        c.close()


def test_scale_up_down_and_to_n(cluster_factory):
    cluster = cluster_factory(workers=2)
    cluster.wait_ready()

    def count_ready(n):
        return lambda: len(cluster.ready_workers()) == n and \
            len(cluster.status()["workers"]) == n

    clients = [Client(cluster.url, "websocket", reconnection=True) for _ in range(12)]
    try:
        assert imcluster("scale", "+1", "--control", cluster.control).returncode == 0
        wait_for(count_ready(3), 15, what="3 workers")
        assert imcluster("scale", "4", "--control", cluster.control).returncode == 0
        wait_for(count_ready(4), 15, what="4 workers")
        # Removing a worker drains its clients to the others first.
        st = cluster.status()
        doomed = max(st["workers"], key=lambda w: w["slot"])["pid"]
        on_doomed = [c for c in clients if c.whoami() == doomed]
        assert imcluster("scale", "-1", "--control", cluster.control).returncode == 0
        wait_for(count_ready(3), 15, what="3 workers after -1")
        remaining = {w["pid"] for w in cluster.ready_workers()}
        for c in clients:
            ack, _ = call_until_acked(c, "whoami", None, time.monotonic() + 20)
            assert ack in remaining
        assert all(c.connects >= 2 for c in on_doomed)
        # Signals do the same: TTOU one less, TTIN one more.
        os.kill(cluster.pid, signal.SIGTTOU)
        wait_for(count_ready(2), 15, what="2 workers after TTOU")
        os.kill(cluster.pid, signal.SIGTTIN)
        wait_for(count_ready(3), 15, what="3 workers after TTIN")
        r = imcluster("scale", "-5", "--control", cluster.control)
        assert r.returncode == 1 and "refused: at least one worker" in r.stderr, r.stderr
        r = imcluster("scale", "abc", "--control", cluster.control)
        assert r.returncode == 2 and "'abc' is not a number of workers" in r.stderr, r.stderr
    finally:
        for c in clients:
            c.close()


def test_sighup_is_a_rolling_reload(cluster_factory):
    cluster = cluster_factory(workers=2)
    old = {w["pid"] for w in cluster.wait_ready()}
    os.kill(cluster.pid, signal.SIGHUP)
    wait_for(lambda: (st := cluster.status())["last_reload"] and st["last_reload"]["ok"], 30,
             what="reload to finish")
    new = {w["pid"] for w in cluster.wait_ready()}
    assert len(new) == 2 and not new & old


# Far longer than a stop takes on a loaded machine (1-2 s at load 11 on 2
# cores), shorter than what a stop that waits on a session would take (a
# compressed WebSocket's reader left on a closed fd: ~40 s): a drain that ends
# when its work does never meets the deadline (0.8 x 30 s); one that waits for
# it says so in the log (workers/main.py).
LONG_GRACE = "30"
DEADLINE_MET = "at the graceful deadline"


def test_graceful_stop_waits_for_workers_and_exits_0(cluster_factory):
    """Open sessions, and one whose client went away, do not hold a stop until
    the graceful timeout: every worker ends its drain itself and exits 0."""
    cluster = cluster_factory(workers=2, args=("--graceful-timeout", LONG_GRACE))
    cluster.wait_ready()
    clients = [Client(cluster.url, t) for t in ("websocket", "polling")]
    open_session(cluster.port)  # and one whose client went away: nobody reads it
    os.kill(cluster.pid, signal.SIGTERM)
    assert cluster.proc.wait(90) == 0
    wait_for(lambda: all(c.disconnects == 1 for c in clients), 10,
             what="clients told to go")
    log = cluster.log()
    assert "stopping gracefully" in log
    assert DEADLINE_MET not in log, "a drain waited for the graceful timeout"
    assert log.count("exited (code 0)") == 2 and "signal 9" not in log, log


def _start_work(c: Client, seconds: float, path) -> list:
    """Emit `work` (a handler that waits `seconds`, or until `path`.release exists,
    then writes `path`) with an ack callback; return the list its ack lands in,
    once the handler has started."""
    acks: list = []
    c.sio.emit("work", (seconds, str(path)), callback=acks.append)
    wait_for(lambda: os.path.exists(f"{path}.started"), 10, what="the handler started")
    return acks


def test_graceful_stop_lets_running_handlers_finish(cluster_factory, tmp_path):
    """A stop waits for the handlers already running (their acks arrive), and
    ignores the events that arrive while it drains."""
    cluster = cluster_factory(app="ops_app:sio", workers=2, cwd=APPS,
                              args=("--graceful-timeout", "30"))
    cluster.wait_ready()
    c = Client(cluster.url, "websocket")
    mark = tmp_path / "stop-mark"
    acks = _start_work(c, 60, mark)
    late: list = []
    os.kill(cluster.pid, signal.SIGTERM)
    wait_for(lambda: "waiting up to" in cluster.log(), 10, what="the drain to start")
    c.sio.emit("echo", "late", callback=late.append)  # during the drain: ignored
    wait_for(lambda: "ignoring the events" in cluster.log(), 10, what="the event ignored")
    (tmp_path / "stop-mark.release").touch()  # the handler ends now, within the drain
    assert cluster.proc.wait(20) == 0
    assert acks == ["done"] and mark.read_text() == "done"
    assert late == []
    log = cluster.log()
    assert "waiting up to" in log and "running handler(s)" in log
    assert "ignored 1 event(s)" in log and "abandoned" not in log
    assert log.count("exited (code 0)") == 2 and "signal 9" not in log, log
    c.close()


def test_reload_lets_running_handlers_finish(cluster_factory, tmp_path):
    cluster = cluster_factory(app="ops_app:sio", workers=2, cwd=APPS,
                              args=("--graceful-timeout", "30"))
    cluster.wait_ready()
    c = Client(cluster.url, "websocket", reconnection=True)
    pid = c.whoami()
    mark = tmp_path / "reload-mark"
    acks = _start_work(c, 60, mark)
    cluster.cluster.reload(wait=False)
    # Its worker is draining, with the handler still running: let it end now.
    wait_for(lambda: "waiting up to" in cluster.log(), 60, what="the drain to start")
    (tmp_path / "reload-mark.release").touch()
    wait_for(lambda: (st := cluster.status())["last_reload"] and st["last_reload"]["ok"], 120,
             what="the reload to end")
    assert acks == ["done"] and mark.read_text() == "done"
    assert pid not in cluster.worker_pids()
    assert "abandoned" not in cluster.log()
    c.close()


def test_drain_abandons_handlers_past_the_graceful_timeout(cluster_factory, tmp_path):
    """A handler still running at the graceful deadline is abandoned, and logged by
    event name; the worker still exits by itself (no KILL)."""
    cluster = cluster_factory(app="ops_app:sio", workers=1, cwd=APPS,
                              args=("--graceful-timeout", "10"))
    cluster.wait_ready()
    c = Client(cluster.url, "websocket")
    mark = tmp_path / "long-mark"
    acks = _start_work(c, 60, mark)
    os.kill(cluster.pid, signal.SIGTERM)
    assert cluster.proc.wait(20) == 0
    log = cluster.log()
    assert "abandoned 1 handler(s) still running" in log and "work x1" in log, log
    assert acks == [] and not mark.exists()
    assert "exited (code 0)" in log and "signal 9" not in log, log
    c.close()


def test_second_term_forces_the_stop(cluster_factory):
    cluster = cluster_factory(app="ops_app:sio", workers=1, cwd=APPS,
                              args=("--graceful-timeout", "60"))
    cluster.wait_ready()
    c = Client(cluster.url, "websocket")
    c.sio.emit("block", 30)  # the worker cannot drain while it is blocked
    time.sleep(0.5)
    os.kill(cluster.pid, signal.SIGTERM)
    time.sleep(1)
    assert cluster.proc.poll() is None  # still waiting for the worker
    os.kill(cluster.pid, signal.SIGTERM)
    assert cluster.proc.wait(10) == 0
    assert "stopping now" in cluster.log()


def _start_ticks(pid: int) -> int:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat field 22)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_a_reload_asked_during_a_reload_ends_with_every_worker_started_after_it(
        cluster_factory):
    """Two reloads close together: the second call returns ok only once every
    worker was started after it (a follow-up reload), not when the first ends."""
    cluster = cluster_factory(workers=2)
    cluster.wait_ready()
    first = subprocess.Popen([sys.executable, "-m", "imcluster", "reload",
                              "--control", cluster.control], stdout=subprocess.PIPE,
                             text=True)
    # The first reload has replaced slot 0 and works on slot 1 when the second comes.
    wait_for(lambda: (r := cluster.status()["reload"]) and r["replaced"] >= 1, 60,
             what="the first reload past slot 0")
    second = subprocess.Popen([sys.executable, "-m", "imcluster", "reload",
                               "--control", cluster.control], stdout=subprocess.PIPE,
                              text=True)
    asked = _start_ticks(second.pid)  # the second call started here
    out2, _ = second.communicate(timeout=120)
    out1, _ = first.communicate(timeout=120)
    assert second.returncode == 0 and first.returncode == 0, (out1, out2)
    assert "reload complete: 2 worker(s) replaced" in out2
    st = cluster.status()
    pids = [w["pid"] for w in st["workers"] if not w["retired"]]
    assert len(pids) == 2
    assert all(_start_ticks(pid) >= asked for pid in pids), "a worker older than the call"
    assert st["last_reload"]["id"] == 2
    log = cluster.log()
    assert "reload (control socket) queued" in log
    assert log.count("reload (control socket) complete: 2 worker(s) replaced") == 2, log


def test_scale_minus_one_then_plus_one_during_a_reload_ends_with_the_count_asked(
        cluster_factory, tmp_path):
    """Both scales wait for the reload, +1 counts from the deferred 1, and the
    cluster ends with 2 workers (the old master started the +1 at once and
    dropped the -1: 3). Each replacement's import waits for a file to go, so
    the reload is surely in progress while the scales are asked."""
    hold = tmp_path / "hold-imports"
    (tmp_path / "held_app.py").write_text(
        "import os, time\n"
        "while os.path.exists(os.environ['HOLD_FILE']):\n"
        "    time.sleep(0.05)\n"
        "from imcluster.examples.bench import sio, app  # noqa: E402,F401\n")
    cluster = cluster_factory(app="held_app:sio", workers=2, env={"HOLD_FILE": str(hold)},
                              args=("--handover", "yes"))
    first = {w["pid"] for w in cluster.wait_ready()}
    hold.write_text("1")
    reload = subprocess.Popen([sys.executable, "-m", "imcluster", "reload",
                               "--control", cluster.control], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (r := cluster.status()["reload"]) and r["phase"] == "starting",
                 30, what="the reload's first replacement starting")
        down = imcluster("scale", "-1", "--control", cluster.control)
        up = imcluster("scale", "+1", "--control", cluster.control)
        st = cluster.status()
        shown = imcluster("status", "--control", cluster.control).stdout
    finally:
        hold.unlink()
    assert down.returncode == 0 and up.returncode == 0, (down.stderr, up.stderr)
    assert down.stdout == "scaling to 1 worker once the reload in progress ends\n"
    assert up.stdout == ("scaling to 2 workers once the reload in progress ends "
                         "(replacing the scale to 1 asked before)\n")
    assert st["reload"]["scale_to"] == 2 and len(st["workers"]) == 3, st  # 2 + replacement
    assert "1 more queued; then scaling to 2 workers" in shown, shown
    out, _ = reload.communicate(timeout=120)
    assert reload.returncode == 0, out

    def settled():
        st = cluster.status()
        return (st["reload"] is None and len(st["workers"]) == 2
                and all(w["state"] == "READY" for w in st["workers"]) and st)

    st = wait_for(settled, 30, what="2 READY workers, nothing retiring")
    assert st["last_reload"]["ok"] and st["last_reload"]["replaced"] == 2
    assert not first & {w["pid"] for w in st["workers"]}
    log = cluster.log()
    assert "scale to 1 deferred until the reload ends" in log
    assert "scale to 2 deferred until the reload ends; it replaces the scale to 1" in log
    assert "scale to 2 deferred until the reload ended: already 2 workers" in log
    assert "scaled from" not in log, log


def test_a_memory_limit_below_a_fresh_worker_is_said_once_and_replaces_nothing(
        cluster_factory):
    cluster = cluster_factory(workers=2, args=("--max-memory", "10"))
    pids = {w["pid"] for w in cluster.wait_ready()}
    c = Client(cluster.url, "websocket")
    wait_for(lambda: "above --max-memory 10 MiB" in cluster.log(), 10, what="the ERROR")
    time.sleep(6)  # three memory checks (every 2 s): none may replace a worker
    st = cluster.status()
    assert {w["pid"] for w in st["workers"]} == pids and st["last_reload"] is None
    assert [w["restarts"] for w in st["workers"]] == [0, 0]
    log = cluster.log()
    assert log.count("above --max-memory 10 MiB") == 1 and "ERROR" in log
    assert "replacing it gracefully" not in log
    assert c.call("echo", 1) == 1 and c.disconnects == 0
    c.close()


def test_memory_limit_replaces_the_worker_gracefully(cluster_factory):
    cluster = cluster_factory(app="ops_app:sio", workers=2, cwd=APPS,
                              args=("--max-memory", "200"))
    cluster.wait_ready()
    c = Client(cluster.url, "websocket", reconnection=True)
    fat = c.call("bloat", 256, timeout=30)
    st = wait_for(lambda: (st := cluster.status())["last_reload"] and st, 30,
                  what="the bloated worker replaced")
    assert st["last_reload"]["ok"] and "memory limit" in st["last_reload"]["reason"]
    assert fat not in {w["pid"] for w in cluster.ready_workers()}
    assert len(cluster.ready_workers()) == 2
    assert "uses" in cluster.log() and "replacing it gracefully" in cluster.log()
    assert sorted(w["restarts"] for w in cluster.ready_workers()) == [0, 1]
    ack, _ = call_until_acked(c, "whoami", None, time.monotonic() + 20)
    assert ack != fat
    c.close()


def test_blocked_worker_is_replaced(cluster_factory):
    cluster = cluster_factory(app="ops_app:sio", workers=2, cwd=APPS,
                              args=("--heartbeat-timeout", "2"))
    cluster.wait_ready()
    victim = Client(cluster.url, "websocket")
    hung = victim.whoami()
    others = [c for c in (Client(cluster.url, "websocket") for _ in range(6))
              if c.whoami() != hung]
    assert others
    victim.sio.emit("block", 120)
    wait_for(lambda: hung not in {w["pid"] for w in cluster.ready_workers()}
             and len(cluster.ready_workers()) == 2, 20, what="the hung worker replaced")
    assert "silent for" in cluster.log()
    for c in others:  # the other worker's clients never noticed
        assert c.call("echo", 1) == 1 and c.disconnects == 0
    # New sessions work, and none lands on the hung process.
    fresh = Client(cluster.url, "polling")
    assert fresh.whoami() != hung
    for c in [victim, fresh, *others]:
        c.close()


def test_graceful_stop_with_compressed_websockets(cluster_factory):
    """permessage-deflate WebSockets take python-engineio's own writer; a stop
    must not wait for their readers until the graceful timeout."""
    import websocket  # websocket-client: lets us offer permessage-deflate by hand

    cluster = cluster_factory(workers=1, args=("--ws-compression", "yes",
                                               "--graceful-timeout", LONG_GRACE))
    cluster.wait_ready()
    socks = [websocket.create_connection(
        f"ws://127.0.0.1:{cluster.port}/socket.io/?EIO=4&transport=websocket", timeout=10,
        header=["Sec-WebSocket-Extensions: permessage-deflate"]) for _ in range(3)]
    try:
        for s in socks:
            assert "permessage-deflate" in s.getheaders().get("sec-websocket-extensions", "")
        wait_for(lambda: cluster.status()["workers"][0]["sessions"] == 3, 5,
                 what="3 sessions in the worker's report")
        os.kill(cluster.pid, signal.SIGTERM)
        assert cluster.proc.wait(90) == 0
        assert DEADLINE_MET not in cluster.log(), "the stop waited for the graceful timeout"
        assert "signal 9" not in cluster.log()
    finally:
        for s in socks:
            s.close()
