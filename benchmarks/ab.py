#!/usr/bin/env python3
"""Server CPU per message, before and after a change, interleaved in one session.

    .venv/bin/python benchmarks/ab.py --variant base=/tmp/base-tree --variant new=. \
        [--node] [--single] [--rounds 3] [--mode echo|polling|handshake] \
        [--clients 100] [--seconds 10]

A variant is a source tree with its own .venv (a copy of this one with its
editable install pointing at that tree will do). Each round starts every
contender in turn, in the same order (imcluster variants, then Node's cluster
and one plain python-socketio process if asked), runs the same load
(benchmarks/node/load.mjs) against it and reads the server's CPU seconds
(psutil, master + workers, or Node's primary + workers) between the load's
start and end marks. What counts is CPU per message, not throughput: the
machine is shared, and a busy neighbour lowers throughput far more than it
changes the CPU one ack costs. The medians over the rounds are printed, with
the machine's load average and the CPU the rest of the machine used.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the suite's process, sampling and load helpers)


def c_variant(name: str, tree: Path, logdir: Path) -> run.Server:
    port = run.free_port()
    srv = run.Server(name, f"http://127.0.0.1:{port}")
    srv.tmp = run.tempfile.mkdtemp(prefix="imcluster-ab-")
    srv.control = os.path.join(srv.tmp, "control.sock")
    py = str(tree / ".venv" / "bin" / "python")
    argv = [py, "-m", "imcluster", "run", "imcluster.examples.bench:sio",
            "--workers", str(run.N_WORKERS), "--bind", f"127.0.0.1:{port}",
            "--control", srv.control, "--log-level", "warning", "--graceful-timeout", "3"]
    p = run.spawn(argv, log=srv.watch(logdir / f"{name}.log"), cwd=tree)
    srv.procs.append(p)
    srv.front.append(p)
    srv.front_children_are_workers = True
    run.wait_http(srv.url, 30, p)
    time.sleep(1.5)  # both workers READY (the status verb is the variant's own)
    return srv


def measure(ctx: run.Ctx, srv: run.Server, mode: str, clients: int, seconds: float) -> dict:
    q: queue.Queue = queue.Queue()
    if mode == "handshake":
        opts = {"mode": "handshake", "url": srv.url, "clients": clients, "wave": 50,
                "transport": "polling", "timeout_ms": 5000, "deadline_s": 200}
    else:
        opts = {"mode": "echo", "url": srv.url, "clients": clients, "wave": 50,
                "transport": "websocket" if mode == "echo" else "polling",
                "warmup_s": 2, "duration_s": seconds, "timeout_ms": 10000, "deadline_s": 200}
    ld = run.Load(opts, q, ctx.logdir, f"{srv.name}-{mode}")
    res, w = run._run_one(ctx, srv, ld, q)
    if res is None:
        return {"error": "no result"}
    n = res["ok"] if mode == "handshake" else res["acks"]
    return {"n": n, "per_s": round(n / w["wall_s"]), "server_cpu_s": w["cpu_total_s"],
            "us_per_msg": round(w["cpu_total_s"] / n * 1e6, 1) if n else None,
            "other_cpu_s": w["other_cpu_s"], "wall_s": w["wall_s"],
            "errors": res.get("errors")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", default=[], help="NAME=TREE")
    ap.add_argument("--node", action="store_true", help="Node's cluster too")
    ap.add_argument("--single", action="store_true", help="one plain python-socketio process too")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=("echo", "polling", "handshake"), default="echo")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    soft, hard = run.resource.getrlimit(run.resource.RLIMIT_NOFILE)
    run.resource.setrlimit(run.resource.RLIMIT_NOFILE, (min(hard, run.NOFILE), hard))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = run.RESULTS / f"ab-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    ctx = run.Ctx({}, logdir, run.Sampler())
    trees = [(n, Path(t).resolve()) for n, t in (v.split("=", 1) for v in a.variant)]
    starters = [(n, (lambda d, n=n, t=t: c_variant(n, t, d))) for n, t in trees]
    if a.node:
        starters.append(("node-cluster", run.c_node))
    if a.single:
        starters.append(("python-socketio", run.c_single))
    results: dict[str, list[dict]] = {n: [] for n, _ in starters}
    load_start = os.getloadavg()
    try:
        for r in range(a.rounds):
            for name, start in starters:
                srv = start(logdir)
                try:
                    m = measure(ctx, srv, a.mode, a.clients, a.seconds)
                finally:
                    srv.stop()
                m["loadavg"] = os.getloadavg()[0]
                results[name].append(m)
                print(f"round {r + 1} {name:16s} {json.dumps(m)}", flush=True)
    finally:
        run.stop_all()
    print(f"\n{a.mode}, {a.clients} clients, {a.seconds:.0f} s x {a.rounds} rounds, "
          f"load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    summary = {}
    for name, ms in results.items():
        ok = [m for m in ms if m.get("us_per_msg")]
        if not ok:
            continue
        s = {k: statistics.median(m[k] for m in ok)
             for k in ("us_per_msg", "per_s", "other_cpu_s")}
        s["all_us_per_msg"] = [m["us_per_msg"] for m in ok]
        summary[name] = s
        print(f"  {name:16s} median {s['us_per_msg']:7.1f} us/msg  {s['per_s']:7.0f} msg/s  "
              f"other load {s['other_cpu_s']:.1f} cpu-s   all: {s['all_us_per_msg']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"mode": a.mode, "clients": a.clients,
                                           "seconds": a.seconds, "rounds": a.rounds,
                                           "loadavg_start": load_start,
                                           "results": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
