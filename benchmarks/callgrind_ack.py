#!/usr/bin/env python3
"""Instructions a worker executes per echo ack: a comparison no neighbour's load can skew.

    .venv/bin/python benchmarks/callgrind_ack.py [--tree TREE] [--acks 300] [--warmup 100]

Starts `imcluster run imcluster.examples.bench:sio --workers 1` from TREE (its
.venv) under `valgrind --tool=callgrind` (children traced: the worker is the
interesting one), opens one WebSocket-only Socket.IO session with a raw
WebSocket client (websocket-client, Engine.IO v4 / Socket.IO v5 frames by
hand, so the client costs nothing in the server), sends `warmup` echoes with
an ack, zeroes the worker's counters (callgrind_control -z), sends `acks`
more, one at a time, and dumps (callgrind_control -d). Prints instructions
(Ir) per ack. Python under valgrind runs ~50x slower: keep the counts small.
"""

from __future__ import annotations

import argparse
import glob
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=".")
    ap.add_argument("--acks", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100)
    a = ap.parse_args()
    tree = Path(a.tree).resolve()
    out = Path(tempfile.mkdtemp(prefix="cg-"))
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={out}/cg.%p", "--dump-instr=no",
            str(tree / ".venv/bin/python"), "-m", "imcluster", "run",
            "imcluster.examples.bench:sio", "--workers", "1", "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning", "--ready-timeout", "600", "--heartbeat-timeout", "300"]
    master = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL,
                              stderr=open(out / "log.txt", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        ws = None
        while time.monotonic() < deadline:
            try:
                ws = websocket.create_connection(
                    f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=120)
                break
            except (OSError, websocket.WebSocketException):
                time.sleep(2)
        if ws is None:
            raise RuntimeError("the server did not come up")
        op = ws.recv()
        assert op.startswith("0{"), op
        ws.send("40")
        assert ws.recv().startswith("40{")
        echo_loop(ws, a.warmup)
        kids = psutil.Process(master.pid).children(recursive=True)
        worker = [k for k in kids if "imcluster.workers" in " ".join(k.cmdline())][0].pid
        subprocess.run(["callgrind_control", "-z", str(worker)], check=True,
                       capture_output=True)
        echo_loop(ws, a.acks)
        subprocess.run(["callgrind_control", "-d", str(worker)], check=True,
                       capture_output=True)
        ws.close()
        files = sorted(glob.glob(f"{out}/cg.{worker}.*"), key=os.path.getmtime)
        total = 0
        with open(files[-1]) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
        print(json.dumps({"tree": str(tree), "acks": a.acks, "ir": total,
                          "ir_per_ack": round(total / a.acks), "dump": files[-1]}))
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
