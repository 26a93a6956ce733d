"""A path to Redis that stops carrying data without closing (issue 9, part 3).

The workers reach Redis through tests/tcpproxy.py. Freezing its flows keeps
them open but forwards nothing: a NAT or firewall that dropped them, a frozen
Redis. Each worker must notice that its subscription went silent within
--redis-silence-timeout, reconnect and resubscribe, and say so in the log;
broadcasts between the workers resume.
"""

from __future__ import annotations

import collections
import re
import threading
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


def talking_through(proxy, cluster_factory, channels: str = "single", **settings):
    """2 workers whose Redis is behind `proxy`, a room member or more on each, and
    a message heard both ways: (cluster, members here, members there);
    `settings` go to the cluster too."""
    cluster = cluster_factory(workers=2, redis=f"redis://127.0.0.1:{proxy.port}/0",
                              redis_channels=channels,
                              args=("--redis-silence-timeout", str(SILENCE)), **settings)
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




# Longer than the publisher's old reply timeout (1 s), shorter than SILENCE.
LATE = 1.5


# With recovery each batch begins with redis-py's SCRIPT EXISTS, so the old
# retry resent only that (harmless): "recovery" checks the wait, not the resend.
@pytest.mark.parametrize("extra", [{}, {"channels": "interest"}, {"recovery_window": 10}],
                         ids=["single", "interest", "recovery"])
def test_late_replies_are_waited_for_not_resent(proxy, cluster_factory, extra):
    """Redis carries out the commands but its answers come late (held by the
    proxy: as when a worker is not scheduled for a second on a machine loaded
    ~20 on 2 cores), with broadcasts in flight both ways: every member hears
    each once. Sending a late batch again (redis-py's retry after a timeout)
    delivered every message in it twice: test_ordering's Redis burst once
    counted 25,214 deliveries of 25,200. A late answer is no outage either:
    nothing is dropped, no worker logs Redis unreachable."""
    cluster, here, there = talking_through(proxy, cluster_factory, **extra)
    everyone = here + there
    try:
        assert proxy.freeze(replies_only=True) >= 2
        late = [f"late-{side}{i}" for i in range(10) for side in "ab"]
        for i in range(10):
            say(here[0], "r", f"late-a{i}")
            say(there[0], "r", f"late-b{i}")
        time.sleep(LATE)  # Redis's answers held this long
        proxy.thaw()
        wait_for(lambda: all(heard(everyone, t) for t in late), SLACK,
                 what="every member to hear every message said while Redis was late")
        # Said after the publishers finished their batches (each publishes in
        # order): once these are heard, any second copy has arrived too.
        say(here[0], "r", "after-a")
        say(there[0], "r", "after-b")
        wait_for(lambda: heard(everyone, "after-a") and heard(everyone, "after-b"), SLACK,
                 what="the messages said after Redis answered again")
        twice = {(i, t): n for i, c in enumerate(everyone)
                 for t, n in collections.Counter(m["text"] for m in list(c.said)).items()
                 if n > 1}
        assert not twice, f"heard more than once (member, text): count: {twice}"
        assert "unreachable for publishing" not in cluster.log(), cluster.log()
    finally:
        for c in everyone:
            c.close()


# How long Redis holds the new worker's connections in the test below: well
# under SILENCE (its subscriber would give up and reconnect) and under the
# worker's SUBSCRIBE_WAIT (it would say READY anyway).
HOLD = 2.0


@pytest.mark.parametrize("channels", ["single", "interest"])
def test_a_new_worker_is_ready_once_redis_confirmed_its_subscription(proxy, cluster_factory,
                                                                     channels):
    """A reload with --handover yes while Redis is slow to take new connections
    (the new worker's are held HOLD s; the old workers' go on), a sender on
    each worker saying a number to the room every 25 ms: every member hears
    every number once.
    A worker said READY before Redis confirmed its subscription, so sessions
    were handed over to it while it heard nothing, and what was published
    until its subscription went to no one (a test_recovery run under load lost
    one number). Now it says READY once the subscription is confirmed."""
    cluster, here, there = talking_through(proxy, cluster_factory, channels, handover=True)
    members = here + there
    # One sender on each worker: whichever is replaced first, the other one's
    # numbers are published while the new worker's connections are held.
    senders = [here[0], there[0]]
    done = threading.Event()
    failed: list[BaseException] = []

    def reload() -> None:
        try:
            cluster.cluster.reload()
        except BaseException as e:  # reported by the test's thread
            failed.append(e)
        finally:
            done.set()

    try:
        before = cluster.worker_pids()
        proxy.hold_new_flows()
        threading.Thread(target=reload, daemon=True).start()
        said, t0, thawed = [], time.monotonic(), False
        while True:
            if not thawed and time.monotonic() - t0 > HOLD:
                proxy.thaw()
                thawed = True
            for i, sender in enumerate(senders):
                text = f"{i}-{len(said)}"
                say(sender, "r", text)
                said.append(text)
            time.sleep(0.025)
            if done.is_set() and thawed:
                break
        assert thawed, "the reload ended before Redis took the new worker's connections"
        for _ in range(20):  # after the reload, so the last moves are behind them
            for i, sender in enumerate(senders):
                text = f"{i}-{len(said)}"
                say(sender, "r", text)
                said.append(text)
            time.sleep(0.025)
        assert not failed, failed
        assert not cluster.worker_pids() & before, "not every worker was replaced"
        wait_for(lambda: all(heard(members, t) for t in said[-2:]), SLACK,
                 what="every member to hear each sender's last number")
        time.sleep(0.5)  # a second copy of anything would have come by now
        problems = {}
        for i, c in enumerate(members):
            got = collections.Counter(m["text"] for m in list(c.said))
            missing = [t for t in said if got[t] == 0]
            twice = [t for t in said if got[t] > 1]
            if missing or twice:
                problems[i] = {"missing": missing, "twice": twice}
        assert not problems, (problems, cluster.log())
    finally:
        proxy.thaw()
        for c in members:
            c.close()
