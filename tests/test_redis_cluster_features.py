"""tests/test_broadcast_features.py (enter/leave/emit/disconnect of a session on
another worker, close_room, namespaces) on a Redis Cluster with sharded pub/sub:
the same tests, with `backend` naming a cluster this module starts."""

from __future__ import annotations

import pytest
from rediscluster import RedisCluster
from test_broadcast_features import (  # noqa: F401 (the tests and their fixture, run here)
    peers,
    test_close_room_reaches_every_worker,
    test_disconnect_a_session_on_another_worker,
    test_emit_to_a_sid_on_another_worker,
    test_enter_and_leave_room_of_a_session_on_another_worker,
    test_namespaces_broadcast_across_workers,
)


@pytest.fixture(scope="module")
def redis_cluster_url(tmp_path_factory):
    rc = RedisCluster(tmp_path_factory.mktemp("rcluster"), masters=3)
    try:
        rc.start()
        yield rc.url
    finally:
        rc.stop()


@pytest.fixture
def backend(redis_cluster_url) -> dict:
    return {"redis": redis_cluster_url, "redis_channels": "interest"}
