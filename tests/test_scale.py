"""The master holds O(workers) descriptors, whatever the number of clients."""

from __future__ import annotations

import json
import resource
import subprocess

import psutil
from conftest import JS, wait_for

N_CLIENTS = 1000


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def test_master_fds_stay_flat_with_1000_websocket_clients(cluster_factory):
    cluster = cluster_factory(workers=3)
    cluster.wait_ready()
    master = psutil.Process(cluster.pid)
    before = master.num_fds()
    holder = subprocess.Popen(
        ["node", str(JS / "clients.mjs"), json.dumps({
            "url": cluster.url, "clients": N_CLIENTS, "transport": "websocket",
            "mode": "hold", "wave": 50})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=JS,
        preexec_fn=_raise_nofile)
    try:
        result = json.loads(holder.stdout.readline())
        assert result["held"] == N_CLIENTS and not result["errors"], result
        during = master.num_fds()
        sessions = wait_for(
            lambda: (s := sum(w["sessions"] or 0 for w in cluster.status()["workers"]))
            >= N_CLIENTS and s, 10, what="workers to report every session")
        assert sessions == N_CLIENTS
        # Every client is connected, yet the master holds what it held before:
        # its listener, control socket, channels and selector, nothing per client.
        assert during <= before + 2, (before, during)
        workers = [psutil.Process(w["pid"]) for w in cluster.status()["workers"]]
        assert sum(w.num_fds() for w in workers) >= N_CLIENTS
    finally:
        holder.stdin.close()
        holder.wait(30)
