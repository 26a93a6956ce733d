"""What connection state recovery costs: CPU per broadcast and memory per session,
with `--recovery-window` on and off, in the same session (the machine is shared
and noisy: compare the ratio, not the seconds).

    .venv/bin/python benchmarks/recovery_cost.py [--rounds 3] [--members 30] [--messages 1000]
                                                 [--redis redis://127.0.0.1:6379/0]

CPU: a cluster of 3 workers (bench app), `members` python-socketio clients in
one room (WebSocket; with recovery on they ask for it, so they get offsets), a
sender on its own connection says `messages` times; the CPU time (user+sys) of
the master and every worker from the first say until every member heard the
last, per 1,000 broadcasts. Rounds alternate off/on.
Memory: the master's store and the worker's bookkeeping per session, and the
master's log per broadcast, measured with tracemalloc on the same code.
With --redis both rounds broadcast through that Redis (the baseline is Redis
without recovery); the CPU of redis-server (INFO cpu) is counted apart, and
the memory per session and per logged broadcast is Redis's own (MEMORY USAGE)
while the members are connected. Use a Redis no one else uses meanwhile.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import tracemalloc

import psutil
import redis
import socketio

from imcluster.master.recovery import RecoveryStore
from imcluster.testing import Cluster


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


KEY = "imcluster:recovery:{socketio}"


def redis_cpu(r: redis.Redis | None) -> float:
    if r is None:
        return 0.0
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_memory(r: redis.Redis) -> dict:
    """Bytes Redis holds per recoverable session and per logged broadcast."""
    keys = list(r.scan_iter(KEY + ":s:*", count=1000))
    per_session = sum(r.memory_usage(k) or 0 for k in keys) / max(1, len(keys))
    n = r.xlen(KEY + ":log")
    per_broadcast = (r.memory_usage(KEY + ":log") or 0) / max(1, n)
    return {"redis_sessions": len(keys), "redis_bytes_per_session": round(per_session),
            "redis_logged": n, "redis_bytes_per_broadcast": round(per_broadcast)}


def one_round(recovery: bool, members: int, messages: int, url: str | None = None
              ) -> tuple[float, float, float, dict]:
    """CPU seconds per 1,000 broadcasts: (master + workers, master alone,
    redis-server), and with Redis and recovery what Redis holds."""
    settings = {"recovery_window": 30} if recovery else {}
    if url:
        settings["redis"] = url
    r = redis.Redis.from_url(url) if url else None
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
        start, start_master, start_redis = cpu_of(pids), cpu_of(pids[:1]), redis_cpu(r)
        for n in range(messages):
            sender.emit("say", {"room": "cost", "n": n})
            if n % 50 == 49:
                time.sleep(0.05)  # about 1,000 a second at most: no backlog
        done.wait(120)
        used, used_master = cpu_of(pids) - start, cpu_of(pids[:1]) - start_master
        used_redis = redis_cpu(r) - start_redis
        assert done.is_set(), f"heard only {min(heard)} of {messages}"
        held = redis_memory(r) if r is not None and recovery else {}
        for c in [*clients, sender]:
            c.disconnect()
        k = 1000 / messages
        return used * k, used_master * k, used_redis * k, held
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
    ap.add_argument("--redis", default=None, help="broadcast through this Redis in both")
    a = ap.parse_args()
    off, on = [], []
    for _ in range(a.rounds):
        off.append(one_round(False, a.members, a.messages, a.redis))
        on.append(one_round(True, a.members, a.messages, a.redis))
    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    result = {"members": a.members, "messages": a.messages,
              "broadcast": "redis" if a.redis else "relay",
              "cpu_s_per_1000_off": [round(x[0], 3) for x in off],
              "cpu_s_per_1000_on": [round(x[0], 3) for x in on],
              "ratio_of_medians": round(median([x[0] for x in on])
                                        / median([x[0] for x in off]), 2),
              "master_cpu_s_per_1000_off": [round(x[1], 3) for x in off],
              "master_cpu_s_per_1000_on": [round(x[1], 3) for x in on],
              **memory_per_session()}
    if a.redis:
        result.update({"redis_cpu_s_per_1000_off": [round(x[2], 3) for x in off],
                       "redis_cpu_s_per_1000_on": [round(x[2], 3) for x in on],
                       **on[-1][3]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
