"""The real supervisord runs imcluster from the sample program entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
from conftest import ROOT, free_port, wait_for

from imcluster.control import ControlError, request

BIN = Path(sys.executable).parent


def ctl(conf: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_supervisord_starts_stops_gracefully_and_restarts(tmp_path):
    port = free_port()
    control = tmp_path / "imcluster.sock"
    log = tmp_path / "imcluster.log"
    entry = subprocess.run(
        [str(ROOT / "scripts" / "supervisor-entry"), "--dir", str(tmp_path), "--log", str(log),
         "--", "imcluster.examples.bench:sio", "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "--control", str(control), "--graceful-timeout", "5"],
        capture_output=True, text=True, check=True).stdout
    assert "stopsignal=TERM" in entry and "killasgroup=true" in entry
    assert "stopwaitsecs=15" in entry  # above the graceful timeout
    sock = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""
[unix_http_server]
file={sock}
chmod=0700

[supervisord]
logfile={tmp_path / "supervisord.log"}
pidfile={tmp_path / "supervisord.pid"}
childlogdir={tmp_path}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

{entry}""")
    sup = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ready_pids():
            try:
                st = request(str(control), "status")
            except ControlError:
                return None
            pids = [w["pid"] for w in st["workers"] if w["state"] == "READY"]
            return (st["master"]["pid"], pids) if len(pids) == 2 else None

        master, workers = wait_for(ready_pids, 30, what="imcluster under supervisord")
        wait_for(lambda: "RUNNING" in ctl(conf, "status", "imcluster"), 15,
                 what="supervisord to call it RUNNING (startsecs)")
        assert psutil.Process(master).ppid() == sup.pid  # supervisord tracks the master

        out = ctl(conf, "stop", "imcluster")
        assert "imcluster: stopped" in out, out
        for pid in [master, *workers]:  # no orphan left behind
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        text = log.read_text()
        assert "stopping gracefully" in text and "master exiting (code 0)" in text
        assert "EXITED" not in ctl(conf, "status", "imcluster")  # STOPPED, not a crash

        out = ctl(conf, "start", "imcluster")
        assert "imcluster: started" in out, out
        master2, workers2 = wait_for(ready_pids, 30, what="imcluster back up")
        assert master2 != master and not set(workers2) & set(workers)
    finally:
        ctl(conf, "shutdown")
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()


def test_entry_quotes_the_command_as_supervisord_splits_it():
    # supervisord splits command= with shlex and expands %(...)s: a factory spec's
    # quotes and a literal % must reach imcluster as written.
    import shlex

    args = ['myapp:create_app("prod", debug=True)', "--bind", "127.0.0.1:8000",
            "--cors-origins", "https://chat.example.com/100%"]
    entry = subprocess.run([str(ROOT / "scripts" / "supervisor-entry"), "--", *args],
                           capture_output=True, text=True, check=True).stdout
    [command] = [line[len("command="):] for line in entry.splitlines()
                 if line.startswith("command=")]
    split = shlex.split(command.replace("%%", "%"))
    assert split[1:] == ["run", *args]
    assert split[0].endswith("/imcluster")
