"""The order in which room members hear messages, across workers.

What imcluster promises (README, "Message order"), through the relay, Redis
with one channel and Redis with interest channels, within one room:
- one sender's messages reach every member in the order they were sent, even
  when fired without waiting and the members sit on other workers;
- a reply sent after its sender heard a message reaches every member after
  that message (a conversation reads the same in every tab).
Two senders on different workers talking at once have no order between them,
as in any Socket.IO cluster: each worker hears the other through a relay.
With interest channels (`--redis-channels interest`) each room is a channel of
its own, possibly on another Redis server: there is no order between messages
to different rooms (or a room and a sid), even from one sender, so these
tests keep to one room; a message to several rooms at once is ordered with
each of those rooms' own messages (it is acted on at its first copy).

Order is observed with the official JS client, which hands a connection's
events to the app one at a time in the order they arrived. python-socketio's
threaded client does not: its Engine.IO client starts a new thread for every
message it receives (`engineio.Client._receive_packet`, `run_async=True`),
so under load its handlers can run out of the order the server sent (this is
what made the old python-client version of these tests fail in busy runs:
traced at the wire, the server's order was intact).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import JS, node_script

WORKERS = 3


@pytest.fixture(params=["relay", "redis", "redis-interest"])
def cluster(request, cluster_factory):
    redis = request.getfixturevalue("redis_server") if request.param != "relay" else None
    extra = {"redis_channels": "interest"} if request.param == "redis-interest" else {}
    c = cluster_factory(workers=WORKERS, redis=redis, **extra)
    c.wait_ready()
    return c


@pytest.fixture
def busy_machine():
    """Two processes spinning on the CPU while the test runs (bounded, stopped by pid):
    reordering races show under load, so the order is checked under load."""
    spin = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    yield
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)


def order(url: str, **opts) -> dict:
    result = node_script(JS / "order.mjs", url, timeout=180, workers=WORKERS,
                         room=f"o-{uuid.uuid4().hex[:8]}", **opts)
    assert len(result["workers"]) == WORKERS, f"senders reached only {result['workers']}"
    return result


def test_each_senders_messages_arrive_in_order(cluster, busy_machine):
    # One sender per worker fires 400 messages without waiting; 21 members on
    # every transport (WebSocket, long-polling, polling then upgrade). That is
    # about 25,000 deliveries: a swap in one delivery of a thousand would show
    # some 25 times, so a pass is not luck.
    r = order(cluster.url, scenario="burst", messages=400,
              members={"websocket": 6, "polling": 6, "default": 6})
    assert r["sent"] == 400 * WORKERS
    assert r["deliveries"] == r["sent"] * r["members"], r
    assert (r["swaps"], r["lost"], r["duplicates"]) == (0, 0, 0), r


def test_replies_arrive_after_what_they_answer(cluster):
    r = order(cluster.url, scenario="conversation", lines=90,
              members={"websocket": 3, "polling": 3, "default": 3})
    assert r["sent"] == 90
    assert (r["misordered"], r["lost"], r["duplicates"]) == (0, 0, 0), r
