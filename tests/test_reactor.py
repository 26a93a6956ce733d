"""A WebSocket's reader waits in the worker's own epoll (workers/reactor.py) and
reads what eventlet's green recv() reads.

In process, over real sockets (loopback TCP and socket pairs), under eventlet:
for any stream of writes, pauses and ends (close, reset), a BufferedReceive
returns the same bytes and the same end as the green socket's own recv(); many
readers wait at once and each wakes for its own data; a wait does not go
through eventlet's hub; a silent socket times out as a green one does; a
reader that detaches leaves the epoll (its socket may then move elsewhere).
The real-process paths (hand-over, floods, chaos) are in their own tests.
"""

from __future__ import annotations

import socket as std_socket
import struct

import eventlet
import eventlet.greenio.base
import eventlet.hubs
import pytest
from eventlet.green import socket as green_socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imcluster.workers import reactor
from imcluster.workers.sessions import BufferedReceive


def tcp_pair():
    """A connected loopback TCP pair of green sockets (server side, client side)."""
    lst = green_socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = green_socket.socket()
    c.connect(lst.getsockname())
    s, _ = lst.accept()
    lst.close()
    return s, c


def read_all(recv) -> tuple[bytes, str]:
    """Everything `recv(n)` returns until end of file, and how it ended."""
    got = []
    while True:
        try:
            data = recv(65536)
        except OSError as e:
            return b"".join(got), f"error {type(e).__name__}"
        if not data:
            return b"".join(got), "eof"
        got.append(data)


def feed(peer, steps, end: str) -> None:
    """Write `steps` (bytes, or a pause in ms) to `peer`, then close or reset it."""
    for step in steps:
        if isinstance(step, bytes):
            peer.sendall(step)
        else:
            eventlet.sleep(step / 1000)
    if end == "reset":
        peer.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def run(steps, end: str, ours: bool) -> tuple[bytes, str]:
    s, c = tcp_pair()
    s.settimeout(10)
    writer = eventlet.spawn(feed, c, steps, end)
    if ours:
        buf = BufferedReceive(s)
        try:
            result = read_all(buf.recv)
        finally:
            buf.detach()
    else:
        result = read_all(s.recv)
    writer.wait()
    s.close()
    return result


steps = st.lists(st.one_of(st.binary(min_size=1, max_size=3000),
                           st.integers(0, 3),  # a pause (ms): the reader waits
                           st.just(b"x" * 70000)),  # more than one read takes
                 max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.sampled_from(["close", "reset"]))
def test_reads_what_a_green_socket_reads(steps_, end):
    sent = b"".join(x for x in steps_ if isinstance(x, bytes))
    ours = run(steps_, end, ours=True)
    theirs = run(steps_, end, ours=False)
    if end == "close":
        assert ours == theirs == (sent, "eof")
    else:
        # A reset may overtake data not yet read (the kernel drops it), so
        # what arrives depends on timing; both end as a green socket does, at
        # end of file (ECONNRESET reads as such), with a prefix of what was sent.
        assert ours[1] == theirs[1] == "eof"
        assert sent.startswith(ours[0]) and sent.startswith(theirs[0])


def test_the_errnos_read_as_end_of_file_are_eventlets():
    assert reactor.CLOSED_ERRNOS == eventlet.greenio.base.SOCKET_CLOSED


def test_a_wait_is_not_in_eventlets_hub_and_many_readers_wake_for_their_own_data():
    hub = eventlet.hubs.get_hub()
    pairs = [green_socket.socketpair() for _ in range(20)]
    bufs = [BufferedReceive(a) for a, _ in pairs]
    got: dict[int, bytes] = {}

    def reader(i):
        got[i] = bufs[i].recv(100)

    threads = [eventlet.spawn(reader, i) for i in range(len(bufs))]
    eventlet.sleep(0.05)  # every reader waits now
    r = reactor.reactor()
    for (a, _), buf in zip(pairs, bufs, strict=True):
        assert buf.waiter is not None
        assert a.fileno() not in hub.listeners[hub.READ]  # no trampoline
        assert r.members.get(a.fileno()) is buf
    # All at once: one pass of the reactor wakes several readers.
    for i, (_, b) in enumerate(pairs):
        b.sendall(b"m%d" % i)
    for t in threads:
        t.wait()
    assert got == {i: b"m%d" % i for i in range(len(bufs))}
    for (a, b), buf in zip(pairs, bufs, strict=True):
        buf.detach()
        assert a.fileno() not in r.members
        with pytest.raises(FileNotFoundError):  # the epoll forgot it
            r.ep.modify(a.fileno(), 0)
        a.close()
        b.close()


def test_a_spurious_wake_up_waits_again():
    a, b = green_socket.socketpair()
    buf = BufferedReceive(a)
    got = []
    t = eventlet.spawn(lambda: got.append(buf.recv(10)))
    eventlet.sleep(0.01)
    w = buf.waiter
    assert w is not None

    def stale_event():  # what the reactor does for an event, from the hub
        buf.waiter = None
        w.switch()

    eventlet.hubs.get_hub().schedule_call_global(0, stale_event)
    eventlet.sleep(0.01)
    assert not got and buf.waiter is w  # nothing to read yet: it waits again
    b.sendall(b"late")
    t.wait()
    assert got == [b"late"]
    buf.detach()
    a.close()
    b.close()


def test_a_silent_socket_times_out_as_a_green_one_does():
    a, b = green_socket.socketpair()
    a.settimeout(0.2)
    buf = BufferedReceive(a)
    with pytest.raises(TimeoutError) as ours:
        buf.recv(10)
    with pytest.raises(TimeoutError) as theirs:
        a.recv(10)
    assert str(ours.value) == str(theirs.value) == "timed out"
    assert buf.waiter is None
    b.sendall(b"after")  # the socket still works after its timeout
    assert buf.recv(10) == b"after"
    buf.detach()
    a.close()
    b.close()


def test_a_throw_into_a_waiting_reader_ends_its_wait():
    """What a hand-over does (workers/handover.py): a reader parked between two
    messages gets an exception from the hub; it leaves the wait clean."""

    class Stop(BaseException):
        pass

    a, b = green_socket.socketpair()
    buf = BufferedReceive(a)
    ended = []

    def reader():
        try:
            buf.fill()
        except Stop:
            ended.append(buf.parked)

    t = eventlet.spawn(reader)
    eventlet.sleep(0.01)
    assert buf.parked and buf.waiter is not None
    eventlet.hubs.get_hub().schedule_call_global(0, t.throw, Stop())
    t.wait()
    assert ended == [False] and buf.waiter is None
    buf.detach()
    b.sendall(b"next")  # another reader (a new owner) reads it
    assert a.recv(10) == b"next"
    a.close()
    b.close()


def collect(recv) -> bytes:
    """What `recv` returns until its socket's (short) timeout passes."""
    got = []
    while True:
        try:
            data = recv(65536)
        except TimeoutError:
            return b"".join(got)
        if not data:
            return b"".join(got)
        got.append(data)


@pytest.mark.parametrize("end", ["urgent", "close", "shutdown"])
def test_a_read_cut_short_by_an_end_or_an_urgent_mark_is_not_mistaken_for_an_empty_queue(end):
    """A read stops short before an urgent mark or an end of file with more
    (or the end) still to come, and no new edge will report it: a reader that
    took a short read for an empty queue would wait here for good."""
    results = []
    for ours in (True, False):
        s, c = tcp_pair()
        s.settimeout(0.5)
        buf = BufferedReceive(s) if ours else None
        recv = buf.recv if ours else s.recv
        first = []
        reader = eventlet.spawn(lambda: first.append(recv(65536)))  # noqa: B023
        eventlet.sleep(0.02)  # the reader waits: ours in the reactor
        # All of it queued before the reader runs again (no yield here).
        c.sendall(b"abc")
        if end == "urgent":
            c.send(b"!", std_socket.MSG_OOB)
            c.sendall(b"def")
        elif end == "close":
            c.close()
        else:
            c.shutdown(std_socket.SHUT_WR)
        reader.wait()
        results.append(first[0] + collect(recv) + collect(recv))
        if buf is not None:
            buf.detach()
        s.close()
        c.close()
    assert results[0] == results[1]
    assert results[0] == (b"abcdef" if end == "urgent" else b"abc")
