"""A private Redis Cluster for tests: redis-server processes on free loopback
ports with `cluster-enabled yes`, joined by `redis-cli --cluster create`,
each started and killed by its own pid (never by name)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis
from conftest import RedisProcess, free_port, wait_for


class RedisCluster:
    """`masters` masters, each with `replicas` replicas (a replica takes over
    its master's slots about `node_timeout_ms` after the master dies)."""

    def __init__(self, d: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000):
        self.nodes: list[RedisProcess] = []
        for i in range(masters * (1 + replicas)):
            nd = d / f"node{i}"
            nd.mkdir()
            self.nodes.append(RedisProcess(nd, (
                "cluster-enabled yes", f"cluster-config-file {nd}/nodes.conf",
                f"cluster-node-timeout {node_timeout_ms}",
                # The bus's own free port (its default, port + 10000, may be taken
                # or past 65535).
                f"cluster-port {free_port()}",
                # A replica takes over however long it was cut off (tests kill masters).
                "cluster-replica-validity-factor 0")))
        self.replicas = replicas

    @property
    def url(self) -> str:
        """What imcluster is given: one seed node."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        r = subprocess.run(
            [shutil.which("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{n.port}" for n in self.nodes],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(self.ok, 30, what="cluster_state:ok on every node")

    def client(self, node: RedisProcess) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)

    def ok(self) -> bool:
        """Every live node says the cluster is ok and all agree on the masters."""
        views = []
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            r = self.client(n)
            try:
                if "cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
                    return False
                views.append(sorted(self.masters_seen_by(r)))
            except redis.RedisError:
                return False
            finally:
                r.close()
        return bool(views) and all(v == views[0] for v in views)

    @staticmethod
    def masters_seen_by(r: redis.Redis) -> list[int]:
        return [int(entry[2][1]) for entry in r.execute_command("CLUSTER", "SLOTS")]

    def masters(self) -> list[RedisProcess]:
        """The live nodes that hold slots now."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                r = self.client(n)
                try:
                    ports = set(self.masters_seen_by(r))
                finally:
                    r.close()
                return [m for m in self.nodes if m.port in ports]
        raise AssertionError("no live node")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
