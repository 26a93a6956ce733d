"""The pytest plugin and the Python control API, as an app author and a sysadmin use them.

- The README's example suite (tests/examples) run through pytester: the app's
  module-level-state bug fails it on 3 workers and hides on 1.
- A test run interrupted (SIGINT) or killed (SIGKILL) mid-test leaves no
  master or worker process behind (checked by pid).
- `imcluster.control.Control`: typed status, reload that waits and says how
  it ended, scale.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for

from imcluster.control import Control, ControlError, process_alive
from imcluster.testing import Cluster

EXAMPLES = Path(__file__).resolve().parent / "examples"


def copy_example(pytester) -> None:
    pytester.makepyfile(chatroom=(EXAMPLES / "chatroom.py").read_text(),
                        test_chatroom=(EXAMPLES / "test_chatroom.py").read_text())


def test_the_app_is_found_beside_the_test_file_from_any_folder(pytester, monkeypatch):
    """`pytest sub/test_chatroom.py` from the folder above: the test file's own
    `import` would find sub/chatroom.py, and so does the cluster (a new user's
    trial got "No module named 'chatroom'")."""
    sub = pytester.mkdir("sub")
    (sub / "chatroom.py").write_text((EXAMPLES / "chatroom.py").read_text())
    (sub / "test_chatroom.py").write_text((EXAMPLES / "test_chatroom.py").read_text())
    monkeypatch.setenv("WORKERS", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "sub/test_chatroom.py",
                                           timeout=240)
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("workers, outcome", [(3, {"passed": 1, "failed": 1}),
                                              (1, {"passed": 2})])
def test_plugin_finds_the_multi_process_bug(pytester, monkeypatch, workers, outcome):
    copy_example(pytester)
    monkeypatch.setenv("WORKERS", str(workers))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(**outcome)
    if workers > 1:
        # The room broadcast crossed workers; the per-process `online` set did not.
        out = result.stdout.str()
        assert "FAILED test_chatroom.py::test_everyone_is_counted_online" in out
        assert "assert [2, 2, 2, 2, 2, 2] == [6, 6, 6, 6, 6, 6]" in out
        # The failed test shows its cluster's log.
        result.stdout.re_match_lines([r".*imcluster log, http://127\.0\.0\.1:\d+",
                                      r".*\[master pid \d+\] INFO slot 0: worker pid \d+ READY"])


STUCK_TEST = '''
import json, os, time

def test_stuck(imcluster):
    cluster = imcluster("chatroom:sio", workers=2)
    pids = [cluster.pid] + [w.pid for w in cluster.workers]
    with open(os.environ["PIDS_FILE"], "w") as f:
        json.dump(pids, f)
    time.sleep(120)
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_test_run_leaves_no_process(pytester, tmp_path, sig):
    copy_example(pytester)
    pytester.makepyfile(test_stuck=STUCK_TEST)
    pids_file = tmp_path / "pids.json"
    pids: list[int] = []
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                            "test_stuck.py"], cwd=pytester.path,
                           env={**os.environ, "PIDS_FILE": str(pids_file)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60,
                 what="the stuck test's cluster")
        pids = json.loads(pids_file.read_text())
        assert len(pids) == 3 and all(process_alive(p) for p in pids)
        run.send_signal(sig)
        run.wait(60)
        # SIGINT: pytest tears the fixture down. SIGKILL: nothing runs in the test
        # process; the master hears its parent die (PR_SET_PDEATHSIG) and stops.
        wait_for(lambda: not any(process_alive(p) for p in pids), 30,
                 what=f"master and workers {pids} to exit")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        for pid in pids:  # only when the test failed: leave nothing behind either way
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_control_api_status_reload_scale(tmp_path):
    with Cluster("imcluster.examples.bench:sio", workers=2, log_dir=tmp_path,
                 graceful_timeout=5) as cluster:
        ctl = Control(cluster.control.path)
        st = ctl.status()
        assert st.ready and [w.slot for w in st.serving] == [0, 1]
        assert st.master["pid"] == cluster.pid
        for w in st.workers:
            assert w.state == "READY" and w.pid and not w.retired
            assert w.rss_bytes > 10 * 2**20  # bytes, not KiB or MiB
            assert 0 <= w.uptime_s < 120  # seconds
        before = {w.pid for w in st.workers}

        result = ctl.reload(wait=True, timeout=120)
        assert result.ok and result.replaced == 2 and result.error is None
        after = ctl.status()
        assert after.ready and not before & {w.pid for w in after.serving}
        assert after.last_reload == result

        assert ctl.scale("+1") == 3
        st = cluster.wait_ready(timeout=60)
        assert len(st.serving) == 3 and st.ready
        assert cluster.scale(1) == 1
        assert [w.slot for w in cluster.workers] == [0]

        with pytest.raises(ControlError, match="at least one worker"):
            ctl.scale(0)
        # As `imcluster stop`: returns once the master has exited.
        master = cluster.pid
        ctl.stop()
        assert not process_alive(master)
    assert cluster.proc.returncode == 0 and not cluster.outlived
    with pytest.raises(ControlError, match="no control socket|nothing answers"):
        Control(cluster.control.path, timeout=2).status()


def test_a_client_carries_on_after_its_worker_is_replaced(tmp_path):
    """Without hand-over a reload ends each session; the harness client's call waits
    for python-socketio's reconnection instead of raising BadNamespaceError, and
    then names its new worker."""
    with Cluster("imcluster.examples.bench:sio", workers=1, log_dir=tmp_path,
                 graceful_timeout=5) as cluster:
        client = cluster.connect("websocket", reconnection_delay=0.1)
        old, first = client.pid, client.sid
        assert isinstance(first, str) and len(first) == 20, first  # the app's sid
        assert client.call("whoami") == old
        cluster.reload()
        assert client.call("whoami", timeout=30) == client.pid != old
        assert client.sid not in (first, None)  # a new session, without hand-over
        assert client.pid == cluster.workers[0].pid
        second = client.pid
        cluster.kill(0)
        assert client.call("whoami", timeout=30) == client.pid not in (old, second, None)
        assert client.call("echo", "after a kill") == "after a kill"
        client.disconnect()
        assert client.sid is None


def test_reload_of_broken_code_says_why(tmp_path):
    app = tmp_path / "flaky_app.py"
    app.write_text("import socketio\nsio = socketio.Server(async_mode='eventlet')\n")
    with Cluster("flaky_app:sio", workers=1, cwd=tmp_path, log_dir=tmp_path) as cluster:
        app.write_text("raise RuntimeError('broken deploy')\n")
        result = cluster.reload(timeout=120)
        assert not result.ok and "broken deploy" in result.error
        assert cluster.status().ready  # the old worker keeps serving
        assert time.time() - result.finished < 120


AUTH_APP = '''
import socketio

sio = socketio.Server()


@sio.event
def connect(sid, environ, auth):
    if not auth or auth.get("token") != "s3cret":
        raise socketio.exceptions.ConnectionRefusedError("bad token")
    with sio.session(sid) as s:
        s["user"] = auth["user"]
        s["agent"] = environ.get("HTTP_X_AGENT")


@sio.event
def whoami(sid):
    s = sio.get_session(sid)
    return [s["user"], s["agent"]]


@sio.on("connect", namespace="/chat")
def chat_connect(sid, environ, auth):
    if not auth or auth.get("token") != "s3cret":
        raise socketio.exceptions.ConnectionRefusedError("bad token")


@sio.on("room", namespace="/chat")
def chat_room(sid, room):
    sio.enter_room(sid, room, namespace="/chat")
    return True


@sio.on("say", namespace="/chat")
def chat_say(sid, room, text):
    sio.emit("said", text, to=room, namespace="/chat")
'''


def test_clients_take_auth_headers_and_namespaces(tmp_path):
    """An app whose connect handler wants auth, on two namespaces: the harness's
    clients pass auth, headers and namespaces to python-socketio's connect()."""
    import socketio

    (tmp_path / "auth_app.py").write_text(AUTH_APP)
    auth = {"token": "s3cret", "user": "bob"}
    with Cluster("auth_app:sio", workers=2, cwd=tmp_path, log_dir=tmp_path) as cluster:
        with pytest.raises(socketio.exceptions.ConnectionError, match="failed to connect"):
            cluster.connect("websocket", auth={"token": "wrong"})
        one = cluster.connect("polling", auth=auth, headers={"X-Agent": "pytest"},
                              namespaces=["/", "/chat"])
        assert one.call("whoami") == ["bob", "pytest"]
        members = cluster.clients(4, "websocket", auth=auth, namespaces=["/", "/chat"])
        assert len({c.slot for c in members}) == 2
        for c in [one, *members]:
            assert c.call("room", "r1", namespace="/chat") is True
        one.emit("say", "r1", "hi", namespace="/chat")
        for c in [one, *members]:
            assert c.wait_for("said") == [("hi",)]
        for c in [one, *members]:
            c.disconnect()
