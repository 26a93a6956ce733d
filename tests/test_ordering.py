"""The order in which room members hear messages, across workers.

What imcluster promises (README, "Message order"), through the relay and Redis:
- one sender's messages reach every member in the order they were sent, even
  when fired without waiting and the members sit on other workers;
- a reply sent after its sender heard a message reaches every member after
  that message (a conversation reads the same in every tab).
Two senders on different workers talking at once have no order between them,
as in any Socket.IO cluster: each worker hears the other through a relay.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from conftest import wait_for
from pyclients import Client

WORKERS = 3


@pytest.fixture
def cluster(cluster_factory, relay_or_redis):
    c = cluster_factory(workers=WORKERS, redis=relay_or_redis)
    c.wait_ready()
    return c


def one_per_worker(url: str, transport: str, room: str) -> list[Client]:
    """Clients until every worker holds one; the spares are closed."""
    by_pid: dict[int, Client] = {}
    spare = []
    for _ in range(6 * WORKERS):
        c = Client(url, transport)
        pid = c.whoami()
        if pid in by_pid:
            spare.append(c)
            continue
        by_pid[pid] = c
        if len(by_pid) == WORKERS:
            break
    for c in spare:
        c.close()
    assert len(by_pid) == WORKERS, f"sessions reached only {len(by_pid)} workers"
    for c in by_pid.values():
        assert c.join(room) is True
    return list(by_pid.values())


def texts(c: Client) -> list[str]:
    return [m["text"] for m in list(c.said)]


def test_each_senders_messages_arrive_in_order(cluster):
    room = f"o-{uuid.uuid4().hex[:8]}"
    n = 150
    senders = one_per_worker(cluster.url, "websocket", room)
    # WebSocket members. Not the default transport: python-engineio's client
    # does not pause polling while it upgrades (the JS client does), so it may
    # read its last poll after its first frames. Long-polling members are in
    # the conversation test below.
    members = [Client(cluster.url, "websocket") for _ in range(4 * WORKERS)]
    try:
        for m in members:
            assert m.join(room) is True

        def fire(k: int, c: Client) -> None:
            for i in range(n):
                c.sio.emit("say", {"room": room, "text": f"{k}:{i}"})

        threads = [threading.Thread(target=fire, args=(k, c)) for k, c in enumerate(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        everyone = senders + members
        total = n * len(senders)
        wait_for(lambda: all(len(c.said) >= total for c in everyone), 30,
                 what=f"{total} messages at every member "
                      f"({[len(c.said) for c in everyone]})")
        for c in everyone:
            heard = texts(c)
            assert len(heard) == total, f"{len(heard)} messages heard, {total} sent"
            for k in range(len(senders)):
                mine = [t for t in heard if t.startswith(f"{k}:")]
                assert mine == [f"{k}:{i}" for i in range(n)], \
                    f"sender {k}'s messages out of order or lost at a member"
    finally:
        for c in senders + members:
            c.close()


def test_replies_arrive_after_what_they_answer(cluster):
    room = f"c-{uuid.uuid4().hex[:8]}"
    talkers = one_per_worker(cluster.url, "websocket", room)
    members = [Client(cluster.url, t) for t in ("polling", "websocket") * WORKERS]
    try:
        for m in members:
            assert m.join(room) is True
        sent: list[str] = []
        for i in range(90):
            c = talkers[i % len(talkers)]
            if sent:
                # A reply: its sender has heard the message before it.
                last = sent[-1]
                wait_for(lambda c=c, last=last: last in texts(c), 10,
                         what=f"the next speaker to hear {last!r}")
            text = f"line {i}"
            assert c.call("say", {"room": room, "text": text}) is True
            sent.append(text)
        everyone = talkers + members
        wait_for(lambda: all(len(c.said) >= len(sent) for c in everyone), 15,
                 what="every line at every member")
        for c in everyone:
            assert texts(c) == sent, "a member heard the conversation in another order"
    finally:
        for c in talkers + members:
            c.close()
