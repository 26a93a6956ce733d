#!/usr/bin/env python3
"""What a room broadcast costs the fleet: `--redis-channels single` against `interest`.

    .venv/bin/python benchmarks/interest_cost.py [--workers 2] [--messages 2000]
        [--schemes single,interest,cluster]

Three hosts (clusters with --host-id 1-3 on 127.0.0.2, .3 and .4, the bench app,
N workers each) share one redis-server started here. Every room lives on host 1:
`--rooms` rooms of two members, python-socketio clients on host 1; hosts 2 and 3
each hold idle clients in other rooms (so they are serving, just not these rooms).
Host 1's members `say` `--messages` times in all (rate-limited, so nothing queues),
every message is awaited at both members, then the figures settle and are read:

- deliveries per publish: messages Redis delivered to workers (each worker's
  `pubsub.received` in `imcluster status`), per host, divided by the publishes;
- CPU per broadcast: each host's workers' CPU time (user + system, from status)
  over the run, divided by the messages, in ms; and redis-server's (INFO cpu).

Then the same with the other scheme, on fresh processes. `cluster` is the
interest scheme on a Redis Cluster of three masters started here
(`redis+cluster://`, sharded pub/sub): redis CPU is then the masters' sum, and
each master's share is printed too. Prints one JSON line per
scheme and a ratio line. CPU on a shared machine is noisy: compare the two
schemes of one run, never figures of different runs. Everything on loopback,
stopped by pid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time

import redis
import socketio

from imcluster.testing import Cluster, free_port


def start_redis(d: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_cluster(d: str, masters: int = 3) -> tuple[list[subprocess.Popen], list[str]]:
    """A Redis Cluster of `masters` masters on loopback; (processes, node URLs)."""
    procs, urls = [], []
    for k in range(masters):
        nd = os.path.join(d, f"node{k}")
        os.makedirs(nd)
        port = free_port()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", nd, "--cluster-enabled", "yes",
             "--cluster-port", str(free_port()), "--cluster-config-file",
             os.path.join(nd, "nodes.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 10
    for url in urls:
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    subprocess.run([shutil.which("redis-cli"), "--cluster", "create",
                    *[u[len("redis://"):-len("/0")] for u in urls], "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    while not all("cluster_state:ok" in redis.Redis.from_url(u).execute_command(
            "CLUSTER", "INFO").decode() for u in urls):
        if time.monotonic() > deadline + 30:
            raise RuntimeError("the cluster did not come up")
        time.sleep(0.2)
    return procs, urls


def redis_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Member:
    def __init__(self, url: str, room: str):
        self.count = 0
        self.lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False, request_timeout=30)
        self.sio.on("said", self._said)
        self.sio.connect(url, transports=["websocket"], wait_timeout=10)
        assert self.sio.call("join", {"room": room}, timeout=30) is True

    def _said(self, data):
        with self.lock:
            self.count += 1


def figures(hosts: dict[int, Cluster]) -> dict[int, dict]:
    out = {}
    for i, c in hosts.items():
        ws = c.control.request("status")["workers"]
        out[i] = {"received": sum((w["pubsub"] or {}).get("received", 0) for w in ws),
                  "cpu": sum(w["cpu_time"] or 0.0 for w in ws)}
    return out


def settled(hosts: dict[int, Cluster]) -> dict[int, dict]:
    last = None
    for _ in range(20):
        now = figures(hosts)
        if last is not None and {i: f["received"] for i, f in now.items()} == \
                {i: f["received"] for i, f in last.items()}:
            return now
        last = now
        time.sleep(1.5)
    return last


def run(scheme: str, args) -> dict:
    tmp = tempfile.mkdtemp(prefix="interest-cost-")
    if scheme == "cluster":
        rprocs, nodes = start_cluster(tmp)
        url, channels = "redis+cluster://" + nodes[0][len("redis://"):-len("/0")], "interest"
    else:
        rproc, url = start_redis(tmp)
        rprocs, nodes, channels = [rproc], [url], scheme
    hosts: dict[int, Cluster] = {}
    members: list[Member] = []
    try:
        for i in (1, 2, 3):
            ip = f"127.0.0.{i + 1}"
            hosts[i] = Cluster("imcluster.examples.bench:sio", args.workers, host_id=i,
                               bind=f"{ip}:{free_port(ip)}", redis=url,
                               redis_channels=channels, log_dir=tmp).start()
        rooms = [f"room{k}" for k in range(args.rooms)]
        for room in rooms:
            members += [Member(hosts[1].url, room) for _ in range(2)]
        for i in (2, 3):
            members += [Member(hosts[i].url, f"elsewhere{i}-{k}") for k in range(args.rooms)]
        senders = members[:2 * args.rooms]
        time.sleep(2)
        before, rcpu0 = settled(hosts), [redis_cpu(n) for n in nodes]
        t0 = time.monotonic()
        for n in range(args.messages):
            k = n % args.rooms
            senders[2 * k].sio.emit("say", {"room": rooms[k], "text": str(n), "ts": 0})
            if n % 50 == 49:
                time.sleep(50 / args.rate)
        want = args.messages // args.rooms  # each member hears its room's share
        deadline = time.monotonic() + 60
        while any(m.count < want for m in senders) and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        after, rcpu1 = settled(hosts), [redis_cpu(n) for n in nodes]
        delivered = sum(m.count for m in senders)
        return {
            "scheme": scheme, "workers_per_host": args.workers, "rooms": args.rooms,
            "messages": args.messages, "member_deliveries": delivered,
            "member_deliveries_expected": want * len(senders), "seconds": round(elapsed, 2),
            "deliveries_per_publish": {
                i: round((after[i]["received"] - before[i]["received"]) / args.messages, 3)
                for i in hosts},
            "cpu_ms_per_broadcast": {
                i: round(1000 * (after[i]["cpu"] - before[i]["cpu"]) / args.messages, 3)
                for i in hosts},
            "redis_cpu_ms_per_broadcast": round(1000 * (sum(rcpu1) - sum(rcpu0))
                                                / args.messages, 3),
            "redis_cpu_ms_per_broadcast_per_node": [
                round(1000 * (b - a) / args.messages, 3) for a, b in zip(rcpu0, rcpu1,
                                                                            strict=True)],
        }
    finally:
        for m in members:
            try:
                m.sio.disconnect()
            except Exception:
                pass
        for c in hosts.values():
            c.stop()
        for rproc in rprocs:
            rproc.terminate()
        for rproc in rprocs:
            rproc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="workers per host")
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0, help="messages per second")
    p.add_argument("--schemes", default="single,interest",
                   help="comma-separated: single, interest, cluster (interest on a Redis "
                        "Cluster of three masters)")
    args = p.parse_args()
    schemes = args.schemes.split(",")
    print(json.dumps({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                 f"{platform.platform()}"}))
    results = {}
    for scheme in schemes:
        results[scheme] = run(scheme, args)
        print(json.dumps(results[scheme]))
    if "single" not in results or "interest" not in results:
        return
    s, i = results["single"], results["interest"]
    others = (2, 3)
    print(json.dumps({
        "other_hosts_deliveries_per_publish": {
            "single": sum(s["deliveries_per_publish"][h] for h in others),
            "interest": sum(i["deliveries_per_publish"][h] for h in others)},
        "fleet_cpu_ratio_interest_over_single": round(
            sum(i["cpu_ms_per_broadcast"].values())
            / max(1e-9, sum(s["cpu_ms_per_broadcast"].values())), 3),
        "other_hosts_cpu_ratio_interest_over_single": round(
            sum(i["cpu_ms_per_broadcast"][h] for h in others)
            / max(1e-9, sum(s["cpu_ms_per_broadcast"][h] for h in others)), 3)}))


if __name__ == "__main__":
    main()
