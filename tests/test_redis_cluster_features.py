"""tests/test_broadcast_features.py (enter/leave/emit/disconnect of a session on
another worker, close_room, namespaces) and tests/test_ordering.py (each
sender's order, replies after what they answer, under load) on a Redis Cluster
with sharded pub/sub: the same tests, with `backend` and `cluster` naming a
Redis Cluster this module starts."""

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
from test_ordering import (  # noqa: F401 (the tests and their fixture, run here)
    WORKERS,
    busy_machine,
    test_each_senders_messages_arrive_in_order,
    test_replies_arrive_after_what_they_answer,
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


@pytest.fixture
def cluster(redis_cluster_url, cluster_factory):
    c = cluster_factory(workers=WORKERS, redis=redis_cluster_url, redis_channels="interest")
    c.wait_ready()
    return c
