"""Redis goes away while clients talk, then comes back."""

from __future__ import annotations

import shutil
import time

import psutil
import pytest
from conftest import RedisProcess, wait_for
from pyclients import Client


@pytest.fixture
def redis_proc(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    r = RedisProcess(tmp_path)
    r.start()
    yield r
    r.stop()


@pytest.mark.parametrize("recovery_window", [0, 10], ids=["plain", "recovery"])
def test_redis_outage_keeps_local_service_and_recovers(cluster_factory, redis_proc,
                                                       recovery_window):
    """With recovery on too (--recovery-window): a worker delivers its own broadcasts
    when they come back from Redis; those that cannot go there are delivered here
    at once, without an offset (workers/redis_manager.py _deliver_unlogged)."""
    cluster = cluster_factory(workers=2, redis=f"redis://127.0.0.1:{redis_proc.port}/0",
                              recovery_window=recovery_window)
    workers = cluster.wait_ready()
    clients = [Client(cluster.url, "websocket") for _ in range(8)]
    try:
        for c in clients:
            assert c.join("r") is True
        by_pid: dict[int, list[Client]] = {}
        for c in clients:
            by_pid.setdefault(c.whoami(), []).append(c)
        assert len(by_pid) == 2 and all(len(v) >= 2 for v in by_pid.values())
        (pa, here), (pb, there) = by_pid.items()

        def say(sender: Client, text: str) -> None:
            sender.sio.emit("say", {"room": "r", "text": text, "ts": 0})

        def heard(group: list[Client], text: str) -> bool:
            return all(any(m["text"] == text for m in c.said) for c in group)

        say(here[0], "before")
        wait_for(lambda: heard(clients, "before"), 10, what="cross-worker delivery")

        redis_proc.kill()
        time.sleep(0.5)
        procs = [psutil.Process(w["pid"]) for w in workers]
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        for i in range(20):
            say(here[0], f"down-{i}")
            assert here[1].call("echo", i) == i and there[0].call("echo", i) == i
        # Local rooms still deliver on the sender's own worker.
        wait_for(lambda: heard(here, "down-19"), 10, what="local delivery without redis")
        time.sleep(2)
        assert not any(any(m["text"].startswith("down-") for m in c.said) for c in there)
        cpu = [sum(p.cpu_times()[:2]) - c0 for p, c0 in zip(procs, cpu0, strict=True)]
        assert max(cpu) < 1.5, f"workers busy while redis is down: {cpu}"
        log = cluster.log()
        # The sender's worker, once, for its publishing; each worker, once, for
        # its subscription.
        assert log.count("redis unreachable for publishing") == 1, log
        assert log.count("redis subscription lost") == 2, log

        redis_proc.start()
        back = time.monotonic()

        def resumed():
            say(here[0], "after")
            say(there[0], "after-too")
            time.sleep(0.3)
            return heard(clients, "after") and heard(clients, "after-too")

        wait_for(resumed, 15, interval=0.2, what="cross-worker broadcasts to resume")
        print(f"FIGURE redis outage: 20 messages while down, local delivery kept, "
              f"worker CPU {max(cpu):.2f}s, cross-worker resumed "
              f"{time.monotonic() - back:.1f}s after redis came back")
        log = cluster.log()
        assert "redis publishing resumed" in log, log
        assert log.count("redis subscription restored") == 2, log
        assert {w["pid"] for w in cluster.ready_workers()} == {pa, pb}  # nothing crashed
        assert cluster.proc.poll() is None
    finally:
        for c in clients:
            c.close()


def test_a_redis_out_of_reach_shows_in_status_and_metrics(cluster_factory, tmp_path):
    """An operator sees it, not only the log: every worker's broadcast health is in
    `status` (JSON and table) and in /metrics, and it clears once Redis is there."""
    import json
    import subprocess
    import sys

    import requests
    from conftest import free_port

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = RedisProcess(tmp_path)  # its port, nothing listening yet
    metrics = free_port()
    cluster = cluster_factory(workers=2, redis=f"redis://127.0.0.1:{redis.port}/0",
                              args=("--metrics", f"127.0.0.1:{metrics}"))
    cluster.wait_ready()

    def health() -> list:
        return [w["broadcast"] for w in cluster.status()["workers"]]

    def up() -> list[float]:
        page = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        return [float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                if line.startswith("imcluster_worker_broadcast_up{")]

    try:
        wait_for(lambda: health() == ["subscription down"] * 2, 15,
                 what="both workers to report their subscription down")
        assert up() == [0.0, 0.0]
        table = subprocess.run([sys.executable, "-m", "imcluster", "status", "--control",
                                cluster.control], capture_output=True, text=True, timeout=30)
        assert table.stdout.count("redis subscription down") == 2, table.stdout
        assert json.loads(subprocess.run(
            [sys.executable, "-m", "imcluster", "status", "--json", "--control",
             cluster.control], capture_output=True, text=True, timeout=30).stdout
        )["workers"][0]["broadcast"] == "subscription down"
        # Never subscribed: "failed", not "lost".
        assert "redis subscription failed" in cluster.log()
        assert "redis subscription lost" not in cluster.log()
        redis.start()
        wait_for(lambda: health() == ["ok", "ok"], 15, what="both workers subscribed")
        assert up() == [1.0, 1.0]
    finally:
        redis.stop()


def test_an_idle_worker_reports_publishing_up_once_redis_is_back(cluster_factory, tmp_path):
    """A broadcast sent while Redis is out of reach opens the publisher's breaker
    ("down": both directions). Once Redis is back the subscription is restored,
    and the publisher finds out too without another broadcast (a PING each
    PROBE_INTERVAL while its breaker is open): status says "ok" again. It used to
    say "publishing down" until a client broadcast, a false alert for monitoring."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = RedisProcess(tmp_path)  # its port, nothing listening yet
    cluster = cluster_factory(workers=1, redis=f"redis://127.0.0.1:{redis.port}/0")
    cluster.wait_ready()
    c = Client(cluster.url, "websocket")

    def health() -> list:
        return [w["broadcast"] for w in cluster.status()["workers"]]

    try:
        assert c.join("r") is True
        c.sio.emit("say", {"room": "r", "text": "while down", "ts": 0})
        wait_for(lambda: health() == ["down"], 15, what="publishing and subscription down")
        redis.start()
        wait_for(lambda: health() == ["ok"], 15, what="the idle worker reporting ok")
        # Nothing was published meanwhile: the one broadcast was dropped by the breaker.
        assert cluster.status()["workers"][0]["pubsub"]["published"] == 0
        log = cluster.log()
        assert log.count("redis publishing resumed") == 1, log
        assert "redis subscription restored" in log, log
    finally:
        c.close()
        redis.stop()
