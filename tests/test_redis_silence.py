"""A path to Redis that stops carrying data without closing (issue 9, part 3).

The workers reach Redis through tests/tcpproxy.py. Freezing its flows keeps
them open but forwards nothing: a NAT or firewall that dropped them, a frozen
Redis. Each worker must notice that its subscription went silent within
--redis-silence-timeout, reconnect and resubscribe, and say so in the log;
broadcasts between the workers resume.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlparse

import pytest
from conftest import wait_for
from pyclients import Client
from tcpproxy import FreezingProxy

# Short, so the test is quick; the ping goes out after a third of it.
SILENCE = 3.0
# What the workers may take beyond the deadline on a shared, busy machine:
# their backoff before resubscribing, a publish retry, the clients' round trips.
SLACK = 10.0


@pytest.fixture
def proxy(redis_server):
    u = urlparse(redis_server)
    p = FreezingProxy((u.hostname, u.port))
    yield p
    p.close()


def split_by_worker(url: str, room: str, n: int = 6) -> tuple[list[Client], list[Client]]:
    clients = [Client(url, "websocket") for _ in range(n)]
    by_pid: dict[int, list[Client]] = {}
    for c in clients:
        assert c.join(room) is True
        by_pid.setdefault(c.whoami(), []).append(c)
    assert len(by_pid) == 2, f"sessions reached {len(by_pid)} workers, not 2"
    here, there = by_pid.values()
    return here, there


def say(sender: Client, room: str, text: str) -> None:
    sender.sio.emit("say", {"room": room, "text": text, "ts": 0})


def heard(group: list[Client], text: str) -> bool:
    return all(any(m["text"] == text for m in list(c.said)) for c in group)


def subscription_lines(log: str, pid: int) -> list[str]:
    return [line for line in log.splitlines()
            if f"pid {pid}]" in line and "redis subscription" in line]


def both_ways(here: list[Client], there: list[Client], room: str, tag: str):
    """A predicate for wait_for: say once from each side, true when each was
    heard on the other worker."""
    n = [0]

    def check() -> bool:
        n[0] += 1
        a, b = f"{tag}-a{n[0]}", f"{tag}-b{n[0]}"
        say(here[0], room, a)
        say(there[0], room, b)
        time.sleep(0.3)
        return heard(there, a) and heard(here, b)

    return check


@pytest.fixture(params=["single", "interest"])
def channels(request) -> str:
    """--redis-channels: one channel, or a channel per room (then each worker's
    subscription holds several, all remade after the silence)."""
    return request.param


def talking_through(proxy, cluster_factory, channels: str = "single"):
    """2 workers whose Redis is behind `proxy`, a room member or more on each, and
    a message heard both ways: (cluster, members here, members there)."""
    cluster = cluster_factory(workers=2, redis=f"redis://127.0.0.1:{proxy.port}/0",
                              redis_channels=channels,
                              args=("--redis-silence-timeout", str(SILENCE)))
    cluster.wait_ready()
    here, there = split_by_worker(cluster.url, "r")
    try:
        wait_for(both_ways(here, there, "r", "before"), 10, interval=0,
                 what="cross-worker delivery through the proxy")
    except BaseException:
        for c in here + there:
            c.close()
        raise
    return cluster, here, there


def test_silent_subscription_is_noticed_and_remade(proxy, cluster_factory, channels):
    cluster, here, there = talking_through(proxy, cluster_factory, channels)
    try:
        frozen = proxy.freeze()
        assert frozen >= 2, f"only {frozen} flows to freeze: the subscriptions are not there"
        t0 = time.monotonic()
        wait_for(both_ways(here, there, "r", "after"), SILENCE + SLACK, interval=0,
                 what="cross-worker broadcasts to resume over new connections")
        print(f"FIGURE redis silence: {frozen} flows frozen, broadcasts both ways resumed "
              f"{time.monotonic() - t0:.1f}s later (silence timeout {SILENCE}s)")
        log = cluster.log()
        for c in (here[0], there[0]):
            lines = subscription_lines(log, c.whoami())
            assert any(re.search(r"subscription silent for \d", x) for x in lines), log
            assert "subscription restored" in lines[-1], log
    finally:
        for c in here + there:
            c.close()


def test_frozen_redis_then_thawed(proxy, cluster_factory, channels):
    """Redis frozen (its connections accepted, nothing answered): both
    directions say so within bounded time, each worker still serves its own
    room members, and all resumes when Redis answers again."""
    cluster, here, there = talking_through(proxy, cluster_factory, channels)
    try:
        proxy.freeze(new_flows=True)
        say(here[0], "r", "frozen")
        wait_for(lambda: heard(here, "frozen"), 10, what="local delivery while Redis is frozen")

        def both_noticed() -> bool:
            say(here[0], "r", "poke")  # keeps the publisher trying
            say(there[0], "r", "poke")
            log = cluster.log()
            return (log.count("subscription silent for") >= 2
                    and log.count("unreachable for publishing") >= 2)

        wait_for(both_noticed, SILENCE + SLACK, interval=0.5,
                 what="both directions of both workers to report the frozen Redis")
        proxy.thaw()
        wait_for(both_ways(here, there, "r", "after"), SILENCE + SLACK, interval=0,
                 what="cross-worker broadcasts to resume after the thaw")
        log = cluster.log()
        assert log.count("redis publishing resumed") >= 2, log
        for c in (here[0], there[0]):
            assert "subscription restored" in subscription_lines(log, c.whoami())[-1], log
    finally:
        for c in here + there:
            c.close()

