"""Several client fds in one HANDOFF frame (imcluster/channel.py, note 11).

The master sends the connections it routed to a worker in one turn of its
loop as one frame; the window still bounds what sits in the kernel's queue,
and what the master still holds for a worker that dies is re-routed. Real
sockets throughout: the channel is a real SEQPACKET socketpair, the clients
real TCP connections; the master is the real `Master` with its real
`_hand_off`, `_flush` and `_close_link`, and no worker process (its end of
the channel is read here with the worker's own codec).
"""

from __future__ import annotations

import argparse
import os
import socket

import pytest

from imcluster import channel as ch
from imcluster import settings as cfgmod
from imcluster.master import loop


def test_several_fds_travel_in_one_frame_in_order():
    a, b = ch.socketpair()
    pairs = [socket.socketpair() for _ in range(5)]
    a.sendmsg([ch.HANDOFF + b"\x00"], ch.fds_ancillary([x.fileno() for x, _ in pairs]))
    kind, _, payload, fds = ch.recv_frame(b)
    assert kind == ch.HANDOFF and payload == b"" and len(fds) == 5
    for i, ((_, y), fd) in enumerate(zip(pairs, fds, strict=True)):
        assert os.get_inheritable(fd) is False
        with socket.socket(fileno=fd) as z:
            z.sendall(b"%d" % i)
        assert y.recv(4) == b"%d" % i  # the i-th fd is the i-th connection
    for s in [a, b] + [s for p in pairs for s in p]:
        s.close()


def test_more_fds_than_a_frame_may_carry_are_all_closed():
    a, b = ch.socketpair()
    pairs = [socket.socketpair() for _ in range(ch.MAX_FDS + 1)]
    a.sendmsg([ch.HANDOFF + b"\x00"], ch.fds_ancillary([x.fileno() for x, _ in pairs]))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="unexpected fds"):
        ch.recv_frame(b)
    assert len(os.listdir("/proc/self/fd")) == before  # none received left open
    for s in [a, b] + [s for p in pairs for s in p]:
        s.close()


def _master(window: int) -> loop.Master:
    ns = argparse.Namespace(config=None, **{s.name: None for s in cfgmod.SETTINGS})
    ns.handoff_window = str(window)
    ns.bind = "127.0.0.1:9"  # never bound: only the hand-off path runs
    return loop.Master(cfgmod.resolve(ns, {}), None)


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def _route(master: loop.Master, wid: int, listener: socket.socket, n: int) -> list:
    """`n` client connections, accepted and handed to worker `wid` in one turn;
    returns the clients' sockets."""
    clients = []
    for _ in range(n):
        c = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        master._hand_off(conn, wid)
        clients.append(c)
    master._flush_routed()
    return clients


def _peer_ports(fds: list[int]) -> list[int]:
    ports = []
    for fd in fds:
        with socket.socket(fileno=fd) as s:
            ports.append(s.getpeername()[1])
    return ports


def test_one_turns_hand_offs_go_in_one_frame_within_the_window(listener):
    master = _master(window=4)
    m_end, w_end = ch.socketpair()
    m_end.setblocking(False)
    w_end.setblocking(False)
    link = master.links[1] = loop.Link(1, 0, os.getpid(), m_end)
    master.selector.register(m_end, loop.selectors.EVENT_READ, lambda *a: None)
    clients = _route(master, 1, listener, 6)
    try:
        # The window's room (4) in one frame, in routing order; two stay with
        # the master until the worker acknowledges.
        kind, _, _, fds = ch.recv_frame(w_end)
        assert kind == ch.HANDOFF
        assert _peer_ports(fds) == [c.getsockname()[1] for c in clients[:4]]
        with pytest.raises(BlockingIOError):
            ch.recv_frame(w_end)
        assert link.delivered == 4 and len(link.outq) == 2 and master.queued_socks == 2
        # The worker acknowledges 4: the other two follow, again in one frame.
        link.confirmed = 4
        master._flush(link)
        kind, _, _, fds = ch.recv_frame(w_end)
        assert _peer_ports(fds) == [c.getsockname()[1] for c in clients[4:]]
        assert link.delivered == 6 and not link.outq and master.queued_socks == 0
    finally:
        for s in clients + [m_end, w_end]:
            s.close()
        master.selector.close()


def test_a_dead_workers_undelivered_hand_offs_are_re_routed(listener):
    """A worker dies with a full window in the kernel's queue (lost with it,
    as before: the window bounds them) and more queued in the master: all of
    those are re-routed, none is lost."""
    master = _master(window=3)
    m_end, w_end = ch.socketpair()
    m_end.setblocking(False)
    master.links[1] = loop.Link(1, 0, os.getpid(), m_end)
    master.selector.register(m_end, loop.selectors.EVENT_READ, lambda *a: None)
    clients = _route(master, 1, listener, 8)
    try:
        assert master.links[1].delivered == 3 and len(master.links[1].outq) == 5
        w_end.close()  # the worker is gone, three fds unread in its queue
        master._close_link(master.links[1])
        assert master.counters["rerouted"] == 5 and master.queued_socks == 0
        # The five are the master's to route again: held until their request line.
        held = sorted(p.sock.getpeername()[1] for p in master.pending.pending.values())
        assert held == sorted(c.getsockname()[1] for c in clients[3:])
    finally:
        master.pending.close_all()
        for s in clients + [m_end]:
            s.close()
        master.selector.close()
