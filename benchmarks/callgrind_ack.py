#!/usr/bin/env python3
"""Instructions a worker executes per echo ack: a comparison no neighbour's load can skew.

    .venv/bin/python benchmarks/callgrind_ack.py [--tree TREE] [--acks 300] [--warmup 100]
        [--mode websocket|polling|handshake] [--server imcluster|pysio]

Starts `imcluster run imcluster.examples.bench:sio --workers 1` from TREE (its
.venv) under `valgrind --tool=callgrind` (children traced: the worker is the
interesting one), opens one WebSocket-only Socket.IO session with a raw
WebSocket client (websocket-client, Engine.IO v4 / Socket.IO v5 frames by
hand, so the client costs nothing in the server), sends `warmup` echoes with
an ack, zeroes the worker's counters (callgrind_control -z), sends `acks`
more, one at a time, and dumps (callgrind_control -d). Prints instructions
(Ir) per ack. Python under valgrind runs ~50x slower: keep the counts small.

`--mode polling` does the same over long-polling (every request on a new
connection, as Node's client does: for imcluster each is a hand-off by the
master), `--mode handshake` counts whole polling handshakes (open, CONNECT,
the CONNECT reply) instead of acks. Every server process is counted (the
master and the worker; `--server pysio` runs one plain python-socketio
process, benchmarks/servers/pysio.py, for comparison). Only user-space
instructions: the kernel's share of accept, sendmsg and the socket calls is
not in it.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import websocket

PAYLOAD = "x" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_loop(ws, n: int) -> None:
    for i in range(n):
        ws.send(f'42{i}["echo","{PAYLOAD}"]')
        while True:
            m = ws.recv()
            if m == "2":  # Engine.IO PING
                ws.send("3")
                continue
            if not m.startswith(f"43{i}["):
                raise RuntimeError(f"unexpected {m!r}")
            break


def http_req(port: int, method: str, path: str, body: str | None = None) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request(method, path, body=body.encode() if body is not None else None,
                  headers={"Content-Type": "text/plain;charset=UTF-8"} if body else {})
        r = c.getresponse()
        text = r.read().decode()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {text}")
        return text
    finally:
        c.close()


def polling_open(port: int) -> str:
    base = "/socket.io/?EIO=4&transport=polling"
    op = http_req(port, "GET", base)
    sid = json.loads(op[1:])["sid"]
    http_req(port, "POST", f"{base}&sid={sid}", "40")
    assert http_req(port, "GET", f"{base}&sid={sid}").startswith("40{")
    return sid


def polling_echo(port: int, sid: str, n: int) -> None:
    base = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    for i in range(n):
        http_req(port, "POST", base, f'42{i}["echo","{PAYLOAD}"]')
        done = False
        while not done:
            for pkt in http_req(port, "GET", base).split("\x1e"):  # a payload's packets
                if pkt == "2":  # Engine.IO PING
                    http_req(port, "POST", base, "3")
                elif pkt.startswith(f"43{i}["):
                    done = True
                else:
                    raise RuntimeError(f"unexpected {pkt!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=".")
    ap.add_argument("--acks", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--mode", choices=("websocket", "polling", "handshake"), default="websocket")
    ap.add_argument("--server", choices=("imcluster", "pysio"), default="imcluster")
    a = ap.parse_args()
    tree = Path(a.tree).resolve()
    out = Path(tempfile.mkdtemp(prefix="cg-"))
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={out}/cg.%p", "--dump-instr=no",
            str(tree / ".venv/bin/python")]
    if a.server == "pysio":
        argv += [str(tree / "benchmarks/servers/pysio.py"), "--port", str(port)]
    else:
        argv += ["-m", "imcluster", "run", "imcluster.examples.bench:sio", "--workers", "1",
                 "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
                 "--ready-timeout", "600", "--heartbeat-timeout", "300"]
    master = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL,
                              stderr=open(out / "log.txt", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                sid = polling_open(port)
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        ws = None
        if a.mode == "websocket":
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=120)
            op = ws.recv()
            assert op.startswith("0{"), op
            ws.send("40")
            assert ws.recv().startswith("40{")

        def work(n: int) -> None:
            if a.mode == "websocket":
                echo_loop(ws, n)
            elif a.mode == "polling":
                polling_echo(port, sid, n)
            else:
                for _ in range(n):
                    polling_open(port)

        work(a.warmup)
        procs = [psutil.Process(master.pid)] + psutil.Process(master.pid).children(
            recursive=True)
        pids = [p.pid for p in procs if "valgrind" in " ".join(p.cmdline())]
        for pid in pids:
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True,
                           capture_output=True)
        work(a.acks)
        total, per = 0, {}
        for pid in pids:
            subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                           capture_output=True)
            files = sorted(glob.glob(f"{out}/cg.{pid}.*"), key=os.path.getmtime)
            with open(files[-1]) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        per[pid] = int(line.split()[1])
            total += per.get(pid, 0)
        if ws is not None:
            ws.close()
        print(json.dumps({"tree": str(tree), "server": a.server, "mode": a.mode,
                          "count": a.acks, "ir": total, "ir_per_msg": round(total / a.acks),
                          "ir_per_msg_front": round(per.get(master.pid, 0) / a.acks),
                          "ir_per_msg_workers": round(
                              sum(v for p, v in per.items() if p != master.pid) / a.acks)}))
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
