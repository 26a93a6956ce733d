"""imcluster.run_once: a ticker in exactly one worker, taken over when that worker goes.

Real clusters of 3 workers (relay and Redis); python-socketio clients on every
worker record each tick (n, the ticking worker's pid, its emit time). Ticks
are compared as sets: python-socketio's threaded client may run its handlers
out of order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, wait_for
from pyclients import Client

import imcluster
from imcluster import once

APPS = ROOT / "tests" / "apps"
WORKERS = 3


class Listener(Client):
    def __init__(self, url: str, transport: str):
        super().__init__(url, transport, reconnection=True)
        self.lock = threading.Lock()
        self.ticks: list[tuple[int, int, float]] = []  # (pid, n, t)
        self.sio.on("tick", self._tick)

    def _tick(self, data):
        with self.lock:
            self.ticks.append((data["pid"], data["n"], data["t"]))

    def seen(self) -> list[tuple[int, int, float]]:
        with self.lock:
            return list(self.ticks)


def _by_ticker(clients) -> dict[int, list[float]]:
    """Emit times of every tick anyone heard, per ticking pid."""
    ticks = {(p, n): t for c in clients for p, n, t in c.seen()}
    out: dict[int, list[float]] = {}
    for (p, _), t in ticks.items():
        out.setdefault(p, []).append(t)
    return {p: sorted(ts) for p, ts in out.items()}


def _assert_one_at_a_time(clients) -> list[float]:
    """No two workers ticked at the same time: each ticker's [first, last] tick
    is disjoint from every other's. Returns the gaps at each hand-over (s)."""
    spans = sorted((ts[0], ts[-1], p) for p, ts in _by_ticker(clients).items())
    for (a0, a1, pa), (b0, b1, pb) in zip(spans, spans[1:], strict=False):
        assert a1 < b0, f"pid {pa} ticked {a0:.3f}..{a1:.3f}, pid {pb} {b0:.3f}..{b1:.3f}"
    return [b0 - a1 for (_, a1, _), (b0, _, _) in zip(spans, spans[1:], strict=False)]


def _assert_each_tick_once(clients) -> None:
    for c in clients:
        seen = [(p, n) for p, n, _ in c.seen()]
        assert len(seen) == len(set(seen)), f"a tick heard twice: {sorted(seen)}"


def _five_more_from(clients, pid: int) -> None:
    """Every client hears 5 consecutive ticks of `pid`, all sent after every client
    was connected (a client that is reconnecting meanwhile misses ticks, as it
    would on one server)."""
    wait_for(lambda: all(c.sio.connected for c in clients), 20, what="every client connected")
    ns = lambda c: {n for p, n, _ in c.seen() if p == pid}  # noqa: E731
    # The tick after the latest one anyone heard may already be on its way.
    start = max((max(ns(c), default=0) for c in clients), default=0) + 2
    try:
        wait_for(lambda: all(set(range(start, start + 5)) <= ns(c) for c in clients), 20,
                 what=f"5 consecutive ticks of pid {pid} at every client")
    except AssertionError as e:
        missing = [(c.connects, c.disconnects, sorted(set(range(start, start + 5)) - ns(c)))
                   for c in clients]
        raise AssertionError(f"{e}; from {start}: (connects, disconnects, missing) per "
                             f"client: {missing}") from None


def test_one_worker_ticks_and_another_takes_over_when_it_dies_or_is_replaced(
        cluster_factory, relay_or_redis):
    c = cluster_factory(app="once_ticker_app:sio", workers=WORKERS, redis=relay_or_redis,
                        cwd=APPS)
    ready = c.wait_ready()
    clients: list[Listener] = []
    try:
        for transport in ("websocket", "polling", "default"):
            for _ in range(2):
                clients.append(Listener(c.url, transport))
        assert {cl.whoami() for cl in clients} == {w["pid"] for w in ready}
        first = wait_for(lambda: next(iter(_by_ticker(clients)), None), 20, what="a tick")
        _five_more_from(clients, first)
        assert set(_by_ticker(clients)) == {first}, "one worker ticks"

        # The ticker dies: another worker takes over, and ticks stay once each.
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: next((p for p in _by_ticker(clients) if p != first), None),
                          20, what="another worker ticking")
        _five_more_from(clients, second)
        assert set(_by_ticker(clients)) == {first, second}
        _assert_one_at_a_time(clients)
        c.wait_ready()

        # A rolling reload replaces every worker: the role moves to a new one,
        # never two tickers at once.
        before = set(_by_ticker(clients))
        result = c.cluster.reload()
        assert result.ok, result
        new_pids = {w["pid"] for w in c.wait_ready()}
        third = wait_for(lambda: next((p for p in _by_ticker(clients) if p in new_pids), None),
                         30, what="a new worker ticking after the reload")
        _five_more_from(clients, third)
        assert third not in before
        gaps = _assert_one_at_a_time(clients)
        _assert_each_tick_once(clients)
        print(f"tickers {list(_by_ticker(clients))}; gaps at hand-over (s): "
              f"{[round(g, 2) for g in gaps]}")
    finally:
        for cl in clients:
            cl.close()
    # The lock file goes with the cluster (it used to stay in /tmp, one per run).
    lock = c.control + ".ticker.lock"
    assert os.path.exists(lock)
    assert c.cluster.stop() == 0
    assert not os.path.exists(lock)


class Starter:
    """What run_once needs of a server: start_background_task and sleep."""

    def __init__(self):
        self.started: list[tuple] = []

    def start_background_task(self, fn, *args, **kwargs):
        self.started.append((fn, args, kwargs))

    def sleep(self, seconds):
        raise AssertionError("not expected to wait")


def test_run_once_refuses_bad_names_and_runs_at_once_outside_a_cluster(monkeypatch):
    monkeypatch.delenv("IMCLUSTER_CONTROL", raising=False)
    s = Starter()
    for bad in ("", "a/b", "../x", "x" * 65, "tick er"):
        with pytest.raises(ValueError, match="run_once name"):
            imcluster.run_once(s, bad, print)
    with pytest.raises(ValueError, match="interval"):
        imcluster.run_once(s, "ok", print, interval=0)
    assert s.started == []
    imcluster.run_once(s, "ticker", print, 1, sep="-")
    assert s.started == [(print, (1,), {"sep": "-"})]


def test_the_lock_is_held_by_one_process_until_it_exits(tmp_path):
    path = once.lock_path("job", str(tmp_path / "ctl.sock"))
    assert path == str(tmp_path / "ctl.sock.job.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from imcluster import once; "
         f"assert once._take({path!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert once._take(path) is False  # another process holds it
        holder.kill()  # the kernel releases it with the process
        holder.wait(10)
        assert once._take(path) is True
        assert once._take(path) is True  # held here now, for the life of this process
    finally:
        if holder.poll() is None:
            holder.kill()
        os.close(once._held.pop(path))
