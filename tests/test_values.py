"""Every value that works on one worker works across workers (issue 9, part 2).

A sender S and a receiver R_A share worker A; receiver R_B is on worker B.
S asks its worker (tests/apps/values_app.py) to emit, emit with an ack, or
call, to a sid, a room, a namespace or everyone, with or without skip_sid;
what R_B gets across workers must equal what R_A gets on S's own worker, and
both must be what python-socketio's emit semantics give for the values sent.
Through the master relay and through Redis alike.
"""

from __future__ import annotations

import itertools
import os

import pytest
import socketio
from conftest import ROOT, Cluster, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyclients import InOrderClient

NS = "/values"
LARGE = 1_000_000


class Party:
    """A python-socketio client on `/` and /values that records every event and
    acks `ask-*` events with the values it is asked to reply."""

    def __init__(self, url: str):
        self.heard: dict[tuple[str, str], list[list]] = {}
        self.sio = InOrderClient(reconnection=False, request_timeout=30)
        for ns in ("/", NS):
            self.sio.on("*", lambda event, *args, ns=ns: self._event(ns, event, args),
                        namespace=ns)
        self.sio.connect(url, namespaces=["/", NS], transports=["websocket"],
                         wait_timeout=10)
        self.pid = self.call("whoami")
        self.sid = self.sio.get_sid("/")
        self.ns_sid = self.sio.get_sid(NS)

    def _event(self, ns: str, event: str, args: tuple):
        self.heard.setdefault((ns, event), []).append(list(args))
        if event.startswith("ask-"):
            return tuple(args[0]["reply"])
        return None

    def call(self, event: str, data=None):
        return self.sio.call(event, data, timeout=30)


@pytest.fixture(scope="module", params=["relay", "redis", "redis-interest"])
def parties(request, tmp_path_factory):
    """(S, R_A, R_B, Redis URL or None) on one cluster per backend (the relay,
    Redis with one channel, Redis with interest channels), started once for the
    module."""
    redis = request.getfixturevalue("redis_server") if request.param != "relay" else None
    extra = {"redis_channels": "interest"} if request.param == "redis-interest" else {}
    cluster = Cluster(tmp_path_factory.mktemp("values"), app="values_app:sio", workers=2,
                      redis=redis, cwd=ROOT / "tests" / "apps", **extra)
    made: list[Party] = []
    try:
        cluster.wait_ready()
        by_pid: dict[int, list[Party]] = {}
        while not (len(by_pid) == 2 and any(len(v) >= 2 for v in by_pid.values())):
            assert len(made) < 10, "new sessions did not spread over both workers"
            p = Party(cluster.url)
            made.append(p)
            by_pid.setdefault(p.pid, []).append(p)
        here = next(v for v in by_pid.values() if len(v) >= 2)
        there = next(v for v in by_pid.values() if v is not here)
        s, r_a, r_b = here[0], here[1], there[0]
        for p in made:
            if p not in (s, r_a, r_b):
                p.sio.disconnect()
        # both: S, R_A, R_B. near/far: S and one receiver (S skipped for acks).
        # near1/far1: one receiver only (call() has no skip_sid).
        for party, rooms in ((s, ("both", "near", "far")), (r_a, ("both", "near", "near1")),
                             (r_b, ("both", "far", "far1"))):
            for room in rooms:
                assert party.call("join", room) is True
        yield s, r_a, r_b, redis
    finally:
        for p in made:
            p.sio.disconnect()
        cluster.stop()


# Values a client can send: JSON plus bytes, at any depth.
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                   st.binary(max_size=48))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
arguments = st.lists(values, min_size=1, max_size=3)
CASES = [("emit", "sid"), ("emit", "room"), ("emit", "namespace"), ("emit", "all"),
         ("ack", "sid"), ("ack", "room"), ("call", "sid"), ("call", "room")]
tags = itertools.count()


def emitted(args: list) -> list:
    """The arguments a receiver gets for `sio.emit(event, data)`, data being the
    one value or a tuple of several (None alone is no argument)."""
    return [] if args == [None] else args


def called(args: list):
    """What `sio.call()` returns when the receiver acks with `args`."""
    return args[0] if len(args) == 1 else args


def check_emit(s, r_a, r_b, target: str, args: list, skip: bool) -> None:
    event = f"v{next(tags)}"
    ns = NS if target == "namespace" else "/"
    skip_sid = (s.ns_sid if ns == NS else s.sid) if skip else None
    req = {"mode": "emit", "target": target, "event": event, "args": args, "skip": skip_sid}
    if target == "sid":
        assert s.call("send", {**req, "to": r_a.sid}) is True
        assert s.call("send", {**req, "to": r_b.sid}) is True
    else:
        assert s.call("send", {**req, "to": "both"}) is True
    key = (ns, event)
    wait_for(lambda: key in r_a.heard and key in r_b.heard, 20,
             what=f"{event} at both receivers")
    local, remote = r_a.heard[key], r_b.heard[key]
    same = remote == local
    assert same, f"across workers {short(remote)} != on one worker {short(local)}"
    right = local == [emitted(args)]
    assert right, f"received {short(local)}, sent {short(args)}"
    # S's worker wrote any event for S before the ack of its request.
    if target != "sid":
        assert (key in s.heard) is not skip, "skip_sid not honoured"


def check_reply(s, r_a, r_b, mode: str, target: str, args: list, skip: bool) -> None:
    event = f"ask-{next(tags)}"
    req = {"mode": mode, "target": target, "event": event, "args": args}
    if mode == "ack" and skip:
        req["skip"] = s.sid
    if target == "sid":
        near, far = r_a.sid, r_b.sid
    elif mode == "ack" and skip:
        near, far = "near", "far"  # S is in them, skipped
    else:
        near, far = "near1", "far1"
    local = s.call("send", {**req, "to": near})
    remote = s.call("send", {**req, "to": far})
    same = remote == local
    assert same, f"{mode} across workers {short(remote)} != on one worker {short(local)}"
    want = args if mode == "ack" else {"result": called(args)}
    right = local == want
    assert right, f"{mode} gave {short(local)}, receiver replied {short(args)}"


def short(v) -> str:
    r = repr(v)
    return r if len(r) < 300 else f"{r[:150]}...({len(r)} chars)...{r[-100:]}"


big = os.urandom(LARGE)
big_text = "é你🎉" * (LARGE // 4)


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), args=arguments, skip=st.booleans())
@example(case=("ack", "sid"), args=[b"\x00\xff"], skip=False)
@example(case=("call", "sid"), args=[{"k": [b"x", None]}, "ü", None], skip=False)
@example(case=("emit", "sid"), args=[big], skip=False)
@example(case=("ack", "sid"), args=[big], skip=False)
@example(case=("call", "room"), args=[{"blob": [big]}], skip=False)
@example(case=("ack", "room"), args=[big_text, b"tail"], skip=True)
@example(case=("emit", "all"), args=[big_text], skip=True)
@example(case=("emit", "namespace"), args=[None], skip=True)
def test_values_across_workers_equal_one_worker(parties, case, args, skip):
    s, r_a, r_b, _ = parties
    mode, target = case
    if mode == "emit":
        check_emit(s, r_a, r_b, target, args, skip)
    else:
        check_reply(s, r_a, r_b, mode, target, args, skip)


def test_external_redis_emitter_reaches_every_worker(parties):
    """python-socketio's own RedisManager, write-only in another process, emits
    bytes, several arguments and non-ASCII text to a room on both workers: the
    wire format stays python-socketio's."""
    s, r_a, r_b, redis = parties
    if redis is None:
        pytest.skip("Redis only: the relay has no external emitters")
    emitter = socketio.RedisManager(redis, write_only=True)
    args = [b"\x00\xff", {"nested": [b"x", "ü"]}, None]
    emitter.emit("external", tuple(args), room="both")
    key = ("/", "external")
    wait_for(lambda: all(key in p.heard for p in (s, r_a, r_b)), 10,
             what="the external emit at every member")
    assert r_a.heard[key] == r_b.heard[key] == s.heard[key] == [args]
