"""The command line and the built-in chat demo, as a user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import requests
from conftest import ROOT, wait_for
from pyclients import Client


def imcluster(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imcluster", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_run_help_lists_every_setting_with_default_and_env():
    out = imcluster("run", "--help").stdout
    for opt, env in [("--workers", "IMCLUSTER_WORKERS"), ("--bind", "IMCLUSTER_BIND"),
                     ("--redis", "IMCLUSTER_REDIS"), ("--header-timeout", None),
                     ("--control", "IMCLUSTER_CONTROL"), ("--log-level", None)]:
        assert opt in out
        if env:
            assert env in out
    assert "default 127.0.0.1:8000" in out


def test_bad_setting_is_one_clear_line():
    r = imcluster("run", "--workers", "zero")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("imcluster: --workers='zero'")
    assert "Traceback" not in r.stderr


def test_status_on_a_dead_control_path_is_one_clear_line(tmp_path):
    r = imcluster("status", "--control", str(tmp_path / "nothing.sock"))
    assert r.returncode == 4
    assert "no control socket at" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = imcluster("status", "--json", "--control", str(tmp_path / "nothing.sock"))
    assert r.returncode == 4
    assert json.loads(r.stdout) == {"error": r.stderr.strip()[len("imcluster: "):],
                                    "reachable": False}


def test_status_table_and_json(cluster_factory):
    c = cluster_factory(workers=2)
    c.wait_ready()
    assert "with 2 workers serving imcluster.examples.bench:sio (master relay)" in c.log(), c.log()
    r = imcluster("status", "--control", c.control)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"master  pid {c.pid}")
    assert lines[1].split() == ["slot", "pid", "state", "uptime", "restarts", "cpu", "rss",
                                "conns", "sessions"]
    assert [ln.split()[2] for ln in lines[2:4]] == ["READY", "READY"]
    st = json.loads(imcluster("status", "--json", "--control", c.control).stdout)
    assert st["master"]["pid"] == c.pid and len(st["workers"]) == 2
    assert all(w["rss"] > 0 for w in st["workers"])
    # The control socket is for its owner only.
    assert oct(os.stat(c.control).st_mode & 0o777) == "0o600"
    # Read by a pipe whose reader has gone (`| head -1` exits early): no traceback.
    r_end, w_end = os.pipe()
    os.close(r_end)
    try:
        piped = subprocess.run([sys.executable, "-m", "imcluster", "status", "--control",
                                c.control], stdout=w_end, stderr=subprocess.PIPE, text=True,
                               timeout=30)
    finally:
        os.close(w_end)
    assert piped.returncode == 1 and piped.stderr == "", piped.stderr


def test_stop_verb_and_sigterm_stop_everything(cluster_factory):
    for how in ("verb", "signal"):
        c = cluster_factory(workers=2)
        pids = [w["pid"] for w in c.wait_ready()]
        if how == "verb":
            out = imcluster("stop", "--control", c.control)
            assert out.returncode == 0 and out.stdout.strip() == "stopped"
            # It waited for the end: the port and control socket are free for a new run.
            assert c.proc.poll() == 0
        else:
            os.kill(c.pid, signal.SIGTERM)
        assert c.proc.wait(20) == 0
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert not os.path.exists(c.control)


def test_no_app_serves_the_chat_demo_across_workers(cluster_factory):
    c = cluster_factory(app=None, workers=2)
    c.wait_ready()
    # The start line says what is served, named or not.
    assert "with 2 workers serving the chat demo (no app named)" in c.log(), c.log()
    page = requests.get(c.url + "/", timeout=10)
    assert page.status_code == 200 and "imcluster chat" in page.text
    js = requests.get(c.url + "/static/vendor/socket.io.min.js", timeout=10)
    assert js.status_code == 200, "run scripts/setup: the socket.io client is not installed"
    assert (ROOT / "imcluster/examples/chat/static/vendor/socket.io.min.js").is_file()

    # Two users on two different workers chat in one room.
    users = []
    for _ in range(6):
        u = Client(c.url, "default")
        users.append(u)
        if len({x.whoami() for x in users}) == 2:
            break
    alice, bob = users[0], next(u for u in users if u.whoami() != users[0].whoami())
    try:
        presence = []
        alice.sio.on("presence", presence.append)
        assert alice.call("join", {"room": "lobby", "name": "alice"}) is True
        assert bob.call("join", {"room": "lobby", "name": "bob"}) is True
        wait_for(lambda: any(p["name"] == "bob" and p["event"] == "join" for p in presence), 5)
        assert bob.call("say", {"room": "lobby", "text": "hi alice", "ts": time.time()}) is True
        msg = wait_for(lambda: [m for m in alice.said if m["text"] == "hi alice"], 5)[0]
        assert msg["name"] == "bob" and msg["pid"] == bob.whoami() != alice.whoami()
    finally:
        for u in users:
            u.close()


def test_verbs_find_the_default_control_socket_whatever_the_callers_xdg_runtime_dir(tmp_path):
    """A master started without XDG_RUNTIME_DIR (supervisord, cron) puts its socket in
    /tmp; an operator whose shell has one still reaches it with --bind alone, and when
    there is none anywhere the error names every place looked."""
    from imcluster.testing import free_port
    port = free_port()
    master_env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    operator_env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    bind = f"127.0.0.1:{port}"

    def verb(*args):
        return subprocess.run([sys.executable, "-m", "imcluster", *args, "--bind", bind],
                              capture_output=True, text=True, timeout=30, env=operator_env)

    r = verb("status")
    assert r.returncode == 4
    assert (f"no control socket at {tmp_path}/imcluster-{port}.sock (nor at "
            f"/tmp/imcluster-{port}.sock)") in r.stderr, r.stderr
    master = subprocess.Popen([sys.executable, "-m", "imcluster", "run",
                               "imcluster.examples.bench:sio", "--workers", "1", "--bind", bind,
                               "--log-level", "warning"], env=master_env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(f"/tmp/imcluster-{port}.sock"), 30)
        wait_for(lambda: verb("status").returncode == 0, 30, what="status through /tmp")
        assert verb("stop").returncode == 0
        assert master.wait(30) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_scale_by_nothing_is_an_argument_the_cli_cannot_take(tmp_path):
    """`scale +0` (or -0, 0) changes nothing: refused before any master is asked,
    exit 2 like `scale abc`; +N and -N with N of 1 or more are still taken (here
    they reach no master: exit 4)."""
    nowhere = str(tmp_path / "no-master.sock")
    for spec in ("+0", "-0", "+00", "0"):
        r = imcluster("scale", spec, "--control", nowhere)
        assert r.returncode == 2, (spec, r.stderr)
        assert f"{spec!r} is not a number of workers: give N, +N or -N, with N 1 or more" \
            in r.stderr
    for spec in ("+1", "-01", "3"):
        assert imcluster("scale", spec, "--control", nowhere).returncode == 4, spec
