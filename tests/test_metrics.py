"""Prometheus metrics (`--metrics HOST:PORT`): scraped with real clients connected, the
sums agree with `imcluster status --json`; bad requests get HTTP errors, never a crash."""

from __future__ import annotations

import socket

import pytest
import requests
from conftest import free_port, held_clients, wait_for
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, list]:
    r = requests.get(url, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def total(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def metrics_cluster(cluster_factory):
    port = free_port()
    c = cluster_factory(workers=3, args=("--metrics", f"127.0.0.1:{port}"))
    c.wait_ready()
    c.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return c


def test_metrics_agree_with_status(metrics_cluster):
    cluster = metrics_cluster
    # 30 WebSocket clients held open by the official JS client, then a quiet cluster.
    with held_clients(cluster.url, 30) as held:
        assert held == 30

        def settled():
            st = cluster.status()
            return st if sum(w["sessions"] or 0 for w in st["workers"]) == 30 else None

        st = wait_for(settled, 15, what="30 sessions in the workers' reports")
        m = scrape(cluster.metrics_url)
        workers = st["workers"]
        assert total(m["imcluster_worker_sessions"], "imcluster_worker_sessions") == 30
        assert total(m["imcluster_worker_connections"], "imcluster_worker_connections") == \
            sum(w["connections"] for w in workers)
        for w in workers:
            labels = {"slot": str(w["slot"]), "pid": str(w["pid"])}
            assert total(m["imcluster_worker_sessions"], "imcluster_worker_sessions",
                         **labels) == w["sessions"]
            assert total(m["imcluster_worker_state"], "imcluster_worker_state",
                         state="READY", **labels) == 1
            assert total(m["imcluster_worker_resident_memory_bytes"],
                         "imcluster_worker_resident_memory_bytes", **labels) > 10 * 2**20
            assert total(m["imcluster_worker_cpu_seconds"],
                         "imcluster_worker_cpu_seconds_total", **labels) > 0
        assert total(m["imcluster_workers"], "imcluster_workers") == 3
        st2 = cluster.status()
        counters = st2["master"]["counters"]
        # Counters only grow: between the scrape and the status, at most what came meanwhile.
        assert 30 <= total(m["imcluster_handoffs"], "imcluster_handoffs_total") \
            <= counters["handoffs"]
        assert total(m["imcluster_slot_restarts"], "imcluster_slot_restarts_total") == 0
        assert total(m["imcluster_reload_in_progress"], "imcluster_reload_in_progress") == 0


def test_metrics_count_rejections_and_survive_bad_requests(metrics_cluster):
    cluster = metrics_cluster
    with socket.create_connection(("127.0.0.1", cluster.port), 5) as s:
        s.sendall(b"\x16\x03\x01 not http\r\n\r\n")  # a TLS hello, say
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    host, port = cluster.metrics_url.split("/")[2].split(":")
    for raw, status in ((b"GET /other HTTP/1.1\r\n\r\n", b"404"),
                        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
                        (b"garbage\r\n\r\n", b"400"),
                        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000, b"431")):
        with socket.create_connection((host, int(port)), 5) as s:
            s.sendall(raw)
            assert s.recv(100).split()[1] == status, raw[:30]
    with socket.create_connection((host, int(port)), 5):
        pass  # opened and closed without a word
    m = scrape(cluster.metrics_url)
    assert total(m["imcluster_rejected_connections"], "imcluster_rejected_connections_total",
                 cause="bad_request") == 1
    assert cluster.try_status() is not None  # the master is fine
