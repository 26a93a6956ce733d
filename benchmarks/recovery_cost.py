"""What connection state recovery costs: CPU per broadcast and memory per session,
with `--recovery-window` on and off, in the same session (the machine is shared
and noisy: compare the ratio, not the seconds).

    .venv/bin/python benchmarks/recovery_cost.py [--rounds 3] [--members 30] [--messages 1000]

CPU: a cluster of 3 workers (bench app), `members` python-socketio clients in
one room (WebSocket; with recovery on they ask for it, so they get offsets), a
sender on its own connection says `messages` times; the CPU time (user+sys) of
the master and every worker from the first say until every member heard the
last, per 1,000 broadcasts. Rounds alternate off/on.
Memory: the master's store and the worker's bookkeeping per session, and the
master's log per broadcast, measured with tracemalloc on the same code.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import tracemalloc

import psutil
import socketio

from imcluster.master.recovery import RecoveryStore
from imcluster.testing import Cluster


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def one_round(recovery: bool, members: int, messages: int) -> tuple[float, float]:
    """CPU seconds per 1,000 broadcasts: (master + workers, master alone)."""
    settings = {"recovery_window": 30} if recovery else {}
    cluster = Cluster("imcluster.examples.bench:sio", 3, **settings)
    cluster.launch()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = cluster.control.request("status")
                if sum(w["state"] == "READY" for w in st["workers"]) == 3:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        pids = [st["master"]["pid"]] + [w["pid"] for w in st["workers"]]
        heard = [0] * members
        done = threading.Event()
        clients = []
        for i in range(members):
            c = socketio.Client()

            def said(*args, i=i):
                heard[i] += 1
                if all(h >= messages for h in heard):
                    done.set()

            c.on("said", said)
            c.connect(cluster.url, transports=["websocket"],
                      auth={"recovery": True} if recovery else None)
            assert c.call("join", {"room": "cost"}) is True
            clients.append(c)
        sender = socketio.Client()
        sender.connect(cluster.url, transports=["websocket"])
        start, start_master = cpu_of(pids), cpu_of(pids[:1])
        for n in range(messages):
            sender.emit("say", {"room": "cost", "n": n})
            if n % 50 == 49:
                time.sleep(0.05)  # about 1,000 a second at most: no backlog
        done.wait(120)
        used, used_master = cpu_of(pids) - start, cpu_of(pids[:1]) - start_master
        assert done.is_set(), f"heard only {min(heard)} of {messages}"
        for c in [*clients, sender]:
            c.disconnect()
        return used / messages * 1000, used_master / messages * 1000
    finally:
        cluster.stop(20)


def memory_per_session(n: int = 10_000) -> dict:
    """Bytes in the master per session (2 rooms, small data) and per logged broadcast."""
    tracemalloc.start()
    store = RecoveryStore(window=30)
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        store.apply(1, {"op": "up", "pid": f"pid-{i:020d}", "eio_sid": f"e{i:019d}",
                        "sid": f"s{i:019d}", "namespace": "/",
                        "rooms": [f"s{i:019d}", "room-a"], "data": {"user": i}}, 0.0)
    per_session = (tracemalloc.get_traced_memory()[0] - before) / n
    before = tracemalloc.get_traced_memory()[0]
    msg = {"method": "emit", "event": "said", "data": [{"room": "cost", "text": "x" * 40}],
           "binary": False, "namespace": "/", "room": "cost", "skip_sid": None,
           "callback": None, "host_id": "0123456789abcdef"}
    payload = json.dumps(msg).encode()
    for _ in range(n):
        store.publish(msg, payload, 0.0)
    per_broadcast = (tracemalloc.get_traced_memory()[0] - before) / n
    from imcluster.workers.recovery import Held

    held: dict = {}
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        held[("/", f"s{i:019d}")] = Held(f"pid-{i:020d}", f"e{i:019d}")
    per_worker_session = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    return {"master_bytes_per_session": round(per_session),
            "master_bytes_per_broadcast": round(per_broadcast),
            "worker_bytes_per_session": round(per_worker_session),
            "broadcast_payload_bytes": len(payload)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--members", type=int, default=30)
    ap.add_argument("--messages", type=int, default=1000)
    a = ap.parse_args()
    off, on = [], []
    for _ in range(a.rounds):
        off.append(one_round(False, a.members, a.messages))
        on.append(one_round(True, a.members, a.messages))
    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    result = {"members": a.members, "messages": a.messages,
              "cpu_s_per_1000_off": [round(x, 3) for x, _ in off],
              "cpu_s_per_1000_on": [round(x, 3) for x, _ in on],
              "ratio_of_medians": round(median([x for x, _ in on])
                                        / median([x for x, _ in off]), 2),
              "master_cpu_s_per_1000_off": [round(m, 3) for _, m in off],
              "master_cpu_s_per_1000_on": [round(m, 3) for _, m in on],
              **memory_per_session()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
