"""The cluster core, end to end: real master, real workers, real clients."""

from __future__ import annotations

import pytest
from conftest import node_clients
from pyclients import room_roundtrip

N_WORKERS = 3
N_CLIENTS = 30
MODES = ("polling", "websocket", "default")


@pytest.fixture
def cluster(cluster_factory, relay_or_redis):
    c = cluster_factory(workers=N_WORKERS, redis=relay_or_redis)
    c.wait_ready()
    return c


def check_roundtrip(r: dict, transport: str, worker_pids: set[int]) -> None:
    assert r["errors"] == [] and r["connected"] == N_CLIENTS, r
    # Each client stayed on one worker for its whole life, across the upgrade.
    assert r["stable"] == N_CLIENTS, r
    assert {int(p) for p in r["pids"]} == worker_pids, "sessions not spread over all workers"
    expected = "polling" if transport == "polling" else "websocket"
    assert r["transports"] == {expected: N_CLIENTS}, r
    # The room message reached every member on every worker, exactly once.
    assert r["received"] == N_CLIENTS and r["duplicates"] == 0, r


@pytest.mark.parametrize("transport", MODES)
def test_python_clients_stay_on_their_worker_and_hear_the_room(cluster, transport):
    r = room_roundtrip(cluster.url, transport, N_CLIENTS)
    check_roundtrip(r, transport, cluster.worker_pids())


@pytest.mark.parametrize("transport", MODES)
def test_js_clients_stay_on_their_worker_and_hear_the_room(cluster, transport):
    r = node_clients(cluster.url, clients=N_CLIENTS, transport=transport)
    check_roundtrip(r, transport, cluster.worker_pids())
