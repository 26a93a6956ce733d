"""The master's decisions as data: events fed to `Core`, actions asserted; no processes.

The middle tier of our tests (after gunicorn's test_arbiter.py): every edge of
the worker state machine taken through the events that cause it, crash loops
and backoff to FATAL, rolling reloads that succeed, are abandoned or meet a
scale, hung-worker replacement, and where requests naming dead, draining and
replaced workers go. A fake process table gives each Spawn a pid at once; time
is a number the test moves.
"""

from __future__ import annotations

import logging
import signal

import pytest

from imcluster import channel as ch
from imcluster import settings as cfgmod
from imcluster.master import events as ev
from imcluster.master.core import Core
from imcluster.master.lifecycle import Role, State, WorkerProcess

T0 = 1000.0
TERM, KILL = signal.SIGTERM, signal.SIGKILL


def config(**kw) -> cfgmod.Config:
    env = {f"IMCLUSTER_{k.upper()}": str(v) for k, v in kw.items()}
    return cfgmod.resolve(None, environ=env)


class Master:
    """A Core and a fake process table: every Spawn is answered at once with a
    pid (or, while `fail_spawns` > 0, with SpawnFailed)."""

    def __init__(self, workers: int = 2, **cfg):
        cfg.setdefault("graceful_timeout", 10)
        cfg.setdefault("ready_timeout", 30)
        cfg.setdefault("heartbeat_timeout", 10)
        # Start turns are tested on their own (test_start_turns_*); elsewhere
        # every worker starts at once, whatever this machine's CPU count.
        cfg.setdefault("max_starting", 256)
        self.core = Core(config(workers=workers, **cfg), "app:sio")
        self.now = T0
        self.next_pid = 100
        self.fail_spawns = 0
        self.actions = self._run(self.core.start(self.now))

    def _run(self, actions: list) -> list:
        out = []
        for a in actions:
            out.append(a)
            if type(a) is ev.Spawn:
                if self.fail_spawns:
                    self.fail_spawns -= 1
                    reply = ev.SpawnFailed(a.worker_id, "[Errno 12] Cannot allocate memory")
                else:
                    reply = ev.Spawned(a.worker_id, self.next_pid)
                    self.next_pid += 1
                out += self._run(self.core.handle(reply, self.now))
        return out

    def feed(self, event: object, after: float = 0.0) -> list:
        self.now += after
        return self._run(self.core.handle(event, self.now))

    def tick(self, after: float = 0.0) -> list:
        return self.feed(ev.Tick(), after)

    def slot(self, i: int) -> WorkerProcess:
        return self.core.slots[i]

    def ready(self, *workers: WorkerProcess) -> list:
        out = []
        for w in workers or [w for w in self.core.processes() if w.state is State.STARTING]:
            out += self.feed(ev.Ready(w.worker_id))
        return out

    def exit(self, w: WorkerProcess, code: int = 0, after: float = 0.0) -> list:
        return self.feed(ev.Exited(w.pid, code), after)

    def route(self, worker_id: int | None, host_id: int | None = None) -> int | None:
        """The worker id a request naming `worker_id` (on this master's host, unless
        `host_id` says otherwise) is handed to (None: held)."""
        if worker_id is not None and host_id is None:
            host_id = self.core.cfg.host_id
        [a] = self.feed(ev.Request(object(), worker_id, host_id))
        return a.worker_id if type(a) is ev.HandOff else None

    def command(self, **request) -> dict:
        [a] = [a for a in self.feed(ev.Command(request)) if type(a) is ev.Answer]
        return a.answer


def of(actions: list, kind: type) -> list:
    return [a for a in actions if type(a) is kind]


def kills(actions: list) -> list[tuple[int, int]]:
    return [(a.pid, a.signum) for a in of(actions, ev.Kill)]


def serving() -> Master:
    """Two workers, READY ten seconds ago (so an exit counts as a healthy run's end)."""
    m = Master(workers=2)
    m.ready()
    for w in m.core.slots:
        w.ready_at = T0 - 10
    return m


# ---- start -------------------------------------------------------------------------


def test_start_spawns_each_slot_with_its_own_worker_id():
    m = Master(workers=3)
    assert [(a.worker_id, a.slot) for a in of(m.actions, ev.Spawn)] == [(1, 0), (2, 1), (3, 2)]
    # EXITED -> STARTING
    assert [(w.state, w.pid, w.channel_open) for w in m.core.slots] == \
        [(State.STARTING, 100, True), (State.STARTING, 101, True), (State.STARTING, 102, True)]


def test_ready_takes_new_sessions_and_releases_held_connections():
    m = Master(workers=1)
    assert m.route(None) is None  # STARTING only: the connection is held
    actions = m.ready()  # STARTING -> READY
    assert m.slot(0).state is State.READY and m.slot(0).ready_at == T0
    assert of(actions, ev.RetryHeld) == [ev.RetryHeld()]
    assert m.route(None) == 1


def test_a_second_ready_changes_nothing():
    m = serving()
    assert m.feed(ev.Ready(1)) == [] and m.slot(0).state is State.READY


# ---- exits, backoff, FATAL ------------------------------------------------------------


def test_crash_while_starting_backs_off():
    m = Master(workers=2)
    m.exit(m.slot(0), 1, after=1.0)  # STARTING -> EXITED -> BACKOFF
    w = m.slot(0)
    assert (w.state, w.pid, w.failures, w.restarts, w.exit_status) == (State.BACKOFF, 0, 1, 1, 1)
    assert w.respawn_at == T0 + 1.0 + 0.5
    assert of(m.tick(after=0.4), ev.Spawn) == []  # not yet
    spawned = of(m.tick(after=0.2), ev.Spawn)  # BACKOFF -> STARTING
    assert spawned == [ev.Spawn(3, 0)] and w.state is State.STARTING and w.pid == 102


def test_crash_of_a_healthy_worker_respawns_at_once():
    m = serving()
    actions = m.exit(m.slot(1), -9)  # READY -> EXITED -> BACKOFF
    assert of(actions, ev.CloseChannel) == [ev.CloseChannel(2)]
    w = m.slot(1)
    assert (w.state, w.failures, w.restarts, w.respawn_at) == (State.BACKOFF, 0, 1, T0 + 0.1)
    assert of(m.tick(after=0.1), ev.Spawn) == [ev.Spawn(3, 1)]


def test_a_worker_that_dies_soon_after_ready_still_counts_as_failing():
    m = Master(workers=2)
    m.ready()
    m.exit(m.slot(0), 1, after=4.0)  # READY for 4 s < 5 s: not healthy
    assert m.slot(0).failures == 1 and m.slot(0).respawn_at == T0 + 4.0 + 0.5


def test_crash_loop_backs_off_longer_each_time_then_goes_fatal():
    m = Master(workers=2)
    m.ready(m.slot(1))
    delays = []
    for _ in range(4):
        m.exit(m.slot(0), 1, after=0.1)
        w = m.slot(0)
        assert w.state is State.BACKOFF
        delays.append(round(w.respawn_at - m.now, 3))
        m.tick(after=w.respawn_at - m.now)
        assert w.state is State.STARTING
    assert delays == [0.5, 1.0, 2.0, 4.0]
    m.exit(m.slot(0), 1, after=0.1)  # the fifth failed start: EXITED -> FATAL
    assert m.slot(0).state is State.FATAL
    m.feed(ev.Heard(2), after=60)
    assert of(m.tick(), ev.Spawn) == []  # never respawned on its own
    assert not m.core.stopping  # the other slot still serves
    assert m.route(None) == m.slot(1).worker_id


def test_every_slot_fatal_gives_up_with_exit_code_3(caplog):
    m = Master(workers=1)
    for _ in range(5):
        m.tick(after=60)  # respawn whenever due
        actions = m.exit(m.slot(0), 1)
    assert m.slot(0).state is State.EXITED  # FATAL, then EXITED by the stop
    assert m.core.stopping and m.core.exit_code == 3 and m.core.done
    assert of(actions, ev.StopListening) == [ev.StopListening()]
    assert "every slot is FATAL" in caplog.text


def test_an_app_that_cannot_load_stops_the_master_at_once(caplog):
    m = Master(workers=2)
    m.feed(ev.WorkerError(1, "SyntaxError: invalid syntax"))
    actions = m.exit(m.slot(0), 4)  # APP_LOAD_ERROR, and no worker was ever READY
    assert m.core.exit_code == 3 and m.core.stopping
    assert kills(actions) == [(101, TERM)]  # the other one is asked to stop
    assert of(m.tick(after=60), ev.Spawn) == []
    assert "the app app:sio failed to load: SyntaxError" in caplog.text


def test_an_app_load_error_after_something_served_is_an_ordinary_crash():
    m = serving()
    m.exit(m.slot(0), 4)
    assert not m.core.stopping and m.slot(0).state is State.BACKOFF


def test_a_spawn_that_fails_is_a_failed_start_not_a_crash_of_a_process():
    m = Master(workers=1)
    m.exit(m.slot(0), 1)
    m.fail_spawns = 1
    actions = m.tick(after=0.5)
    assert of(actions, ev.Spawn) == [ev.Spawn(2, 0)]  # tried...
    w = m.slot(0)  # ...and STARTING -> EXITED -> BACKOFF, without a pid ever
    assert (w.state, w.pid, w.exit_status, w.failures) == (State.BACKOFF, 0, -1, 2)
    assert 2 not in m.core.by_id  # its worker id is free again


# ---- stop ------------------------------------------------------------------------------


def test_sigterm_stops_every_worker_then_the_master_is_done(caplog):
    m = Master(workers=3)
    m.ready(m.slot(0), m.slot(1))  # slot 2 still STARTING
    actions = m.feed(ev.Signal(TERM))
    assert of(actions, ev.StopListening) == [ev.StopListening()]
    # READY -> STOPPING and STARTING -> STOPPING
    assert kills(actions) == [(100, TERM), (101, TERM), (102, TERM)]
    assert [w.state for w in m.core.slots] == [State.STOPPING] * 3
    for w in list(m.core.slots):
        assert not m.core.done
        m.exit(w, 0)  # STOPPING -> EXITED
        assert w.state is State.EXITED
    assert m.core.done and m.core.exit_code == 0
    assert "SIGTERM: stopping gracefully" in caplog.text
    assert caplog.text.count("exited (code 0)") == 3


def test_stop_during_backoff_and_fatal_leaves_those_slots_exited():
    m = Master(workers=3)
    m.ready(m.slot(0))
    m.exit(m.slot(1), 1)  # BACKOFF
    m.slot(2).state = State.FATAL  # as after a crash loop
    m.slot(2).pid = 0
    m.feed(ev.Signal(signal.SIGINT))  # BACKOFF -> EXITED, FATAL -> EXITED
    assert [w.state for w in m.core.slots] == [State.STOPPING, State.EXITED, State.EXITED]
    assert of(m.tick(after=60), ev.Spawn) == []
    m.exit(m.slot(0))
    assert m.core.done


def test_workers_that_ignore_term_are_killed_at_the_graceful_timeout():
    m = serving()
    m.feed(ev.Signal(TERM))
    assert kills(m.tick(after=9.9)) == []
    assert kills(m.tick(after=0.1)) == [(100, KILL), (101, KILL)]


def test_a_second_sigterm_kills_at_the_next_tick(caplog):
    m = serving()
    m.feed(ev.Signal(TERM))
    m.feed(ev.Signal(TERM))
    assert kills(m.tick()) == [(100, KILL), (101, KILL)]
    assert "second SIGTERM: stopping now" in caplog.text


def test_while_stopping_reload_and_scale_are_refused():
    m = serving()
    m.command(cmd="stop")
    assert m.command(cmd="reload") == {"error": "the master is stopping"}
    assert m.command(cmd="scale", to="3") == {"error": "the master is stopping"}
    assert of(m.feed(ev.Signal(signal.SIGHUP)), ev.Spawn) == []


# ---- hung workers -----------------------------------------------------------------------


def test_a_silent_worker_is_replaced():
    m = serving()
    m.feed(ev.Heard(2), after=9.0)  # slot 1 is heard from; slot 0 not
    actions = m.tick(after=1.5)
    assert kills(actions) == [(100, TERM)]
    w = m.slot(0)
    assert w.unresponsive and w.state is State.READY and not w.accepts_new
    # Its own sessions go elsewhere (and get "unknown session"); so do new ones.
    assert m.route(1) == 2 and m.route(None) == 2
    assert kills(m.tick(after=0.25)) == []  # TERM once, not every tick
    assert kills(m.tick(after=5.0)) == [(100, KILL)]  # it ignored TERM
    m.exit(w, -9)
    assert w.state is State.BACKOFF and not w.unresponsive
    assert of(m.tick(after=0.5), ev.Spawn) == [ev.Spawn(3, 0)]


def test_any_frame_is_a_heartbeat():
    m = serving()
    for _ in range(5):
        m.feed(ev.Heard(1), after=5.0)
        m.feed(ev.Heard(2))
        assert kills(m.tick()) == []


def test_a_worker_not_ready_in_time_is_replaced():
    m = Master(workers=1, ready_timeout=30)
    assert kills(m.tick(after=30)) == []
    assert kills(m.tick(after=0.1)) == [(100, TERM)]
    m.exit(m.slot(0), -15)
    assert m.slot(0).state is State.BACKOFF and m.slot(0).failures == 1


def test_a_worker_ready_after_the_ready_timeout_is_not_put_in_service():
    m = Master(workers=1, ready_timeout=30)
    assert kills(m.tick(after=30.1)) == [(100, TERM)]
    m.ready(m.slot(0))  # it finished importing before the TERM took effect
    assert m.slot(0).state is State.STARTING
    assert m.route(None) is None  # no session goes to a worker being stopped
    m.exit(m.slot(0), 0)
    assert m.slot(0).state is State.BACKOFF


# ---- scale --------------------------------------------------------------------------------


def test_scale_up_spawns_new_slots_and_down_drains_the_last():
    m = serving()
    actions = m.feed(ev.Command({"cmd": "scale", "to": "+1"}))
    assert of(actions, ev.Answer) == [ev.Answer({"ok": True, "workers": 3})]
    assert of(actions, ev.Spawn) == [ev.Spawn(3, 2)]
    assert [w.slot for w in m.core.slots] == [0, 1, 2]
    m.ready(m.slot(2))
    doomed = m.slot(2)
    actions = m.feed(ev.Signal(signal.SIGTTOU))  # READY -> DRAINING
    assert len(m.core.slots) == 2 and doomed.state is State.DRAINING
    assert doomed.role is Role.RETIRED and m.core.retiring == [doomed]
    assert of(actions, ev.Send) == [ev.Send(3, ch.STOP)]
    assert kills(actions) == []  # it drains first
    # New sessions avoid it; its own sessions still reach it while it drains.
    assert {m.route(None) for _ in range(4)} == {1, 2}
    assert m.route(3) == 3
    status = m.core.describe(m.now)["workers"]
    assert [(w["slot"], w["state"], w["retired"]) for w in status] == \
        [(0, "READY", False), (1, "READY", False), (2, "DRAINING", True)]
    m.exit(doomed, 0)  # DRAINING -> EXITED, and not respawned
    assert doomed.state is State.EXITED and m.core.retiring == []
    assert of(m.tick(after=60), ev.Spawn) == []


def test_a_worker_still_draining_at_the_graceful_timeout_is_stopped():
    m = serving()
    m.command(cmd="scale", to="1")
    doomed = m.core.retiring[0]
    assert kills(m.tick(after=9.9)) == []
    # DRAINING -> STOPPING: TERM, then KILL if it ignores that too.
    m.feed(ev.Heard(2))
    m.feed(ev.Heard(1))
    assert kills(m.tick(after=0.1)) == [(101, TERM)] and doomed.state is State.STOPPING
    assert kills(m.tick(after=5.0)) == [(101, KILL)]


def test_scale_commands_are_checked():
    m = serving()
    assert m.command(cmd="scale", to="-5") == {"error": "at least one worker must remain"}
    assert m.command(cmd="scale", to="many") == \
        {"error": "scale takes N, +N or -N, not 'many'"}
    # Refused, not capped: 1000 would have become 256 processes on a small host.
    assert m.command(cmd="scale", to="1000") == {"error": "at most 256 workers"}
    assert m.command(cmd="scale", to="+255") == {"error": "at most 256 workers"}
    # A change by nothing is refused, as the CLI refuses it (exit 2 there).
    for zero in ("+0", "-0", "+00"):
        assert m.command(cmd="scale", to=zero) == {
            "error": f"scale {zero} changes nothing: give N, +N or -N, with N 1 or more"}
    assert len(m.core.slots) == 2 and of(m.tick(), ev.Spawn) == []
    assert m.command(cmd="nap") == {"error": "unknown command 'nap'"}


def test_scaling_away_a_slot_in_backoff_leaves_nothing_to_drain():
    m = serving()
    m.exit(m.slot(1), 1)
    backing_off = m.slot(1)
    m.command(cmd="scale", to="1")  # BACKOFF -> EXITED
    assert backing_off.state is State.EXITED and m.core.retiring == []
    assert of(m.tick(after=60), ev.Spawn) == []


# ---- rolling reload -------------------------------------------------------------------------


def reload_step(m: Master, slot: int) -> WorkerProcess:
    """Let the reload's replacement for `slot` become READY and its old worker exit."""
    new = m.core.reloading.new
    assert new.slot == slot and new.role is Role.REPLACEMENT and new.state is State.STARTING
    old = m.slot(slot)
    m.ready(new)
    m.tick()
    assert m.slot(slot) is new and new.role is Role.SLOT
    assert old.state is State.DRAINING and old.role is Role.RETIRED
    m.exit(old, 0, after=1.0)
    return new


def test_reload_replaces_one_slot_at_a_time(caplog):
    m = serving()
    answer = m.command(cmd="reload")
    assert answer["ok"] and answer["reload"]["phase"] == "starting"
    assert answer["reload"]["slot"] == 0 and answer["reload"]["queued"] == [1]
    new0 = m.core.reloading.new
    # The replacement gets no new sessions until it is READY and holds the slot.
    assert {m.route(None) for _ in range(3)} == {1, 2}
    assert [w["replacement"] for w in m.core.describe(m.now)["workers"]] == [False, False, True]
    m.ready(new0)
    assert {m.route(None) for _ in range(3)} == {1, 2}  # still not: the swap is at the tick
    actions = m.tick()
    assert m.slot(0) is new0 and of(actions, ev.Send) == [ev.Send(1, ch.STOP)]
    assert of(actions, ev.RetryHeld) == [ev.RetryHeld()]
    assert m.route(1) == 1  # the old worker's sessions stay with it while it drains
    assert m.core.reloading.phase == "draining"
    assert of(m.tick(), ev.Spawn) == []  # the next slot waits for the drain
    m.exit(m.core.retiring[0], 0)
    assert of(m.tick(), ev.Spawn) == [ev.Spawn(4, 1)]
    reload_step(m, 1)
    m.tick()
    assert m.core.reloading is None
    assert m.core.last_reload == {"ok": True, "reason": "control socket", "replaced": 2,
                                  "finished": m.now, "id": 1}
    assert [w.worker_id for w in m.core.slots] == [3, 4]
    assert [w.state for w in m.core.slots] == [State.READY, State.READY]
    assert m.slot(0).restarts == 0  # a reload is not a restart
    assert "reload (control socket) complete: 2 worker(s) replaced" in caplog.text


def test_reload_with_an_app_that_no_longer_loads_is_abandoned():
    m = serving()
    m.feed(ev.Signal(signal.SIGHUP))
    new = m.core.reloading.new
    m.feed(ev.WorkerError(new.worker_id, "SyntaxError: '(' was never closed"))
    m.exit(new, 4)  # APP_LOAD_ERROR from a replacement stops nothing but the reload
    assert new.state is State.EXITED  # not respawned: it is no slot's worker
    actions = m.tick()
    assert m.core.reloading is None and not m.core.stopping
    assert m.core.last_reload == {
        "ok": False, "reason": "SIGHUP", "replaced": 0, "finished": m.now, "id": 1,
        "error": "slot 0: the new worker could not load the app: "
                 "SyntaxError: '(' was never closed"}
    assert kills(actions) == [] and of(actions, ev.Spawn) == []
    assert [(w.worker_id, w.state) for w in m.core.processes()] == \
        [(1, State.READY), (2, State.READY)]


def test_reload_whose_replacement_is_never_ready_is_abandoned_and_the_replacement_stopped():
    m = serving()
    m.command(cmd="reload")
    new = m.core.reloading.new
    for _ in range(29):
        m.feed(ev.Heard(1))
        m.feed(ev.Heard(2))
        m.tick(after=1.0)
    assert m.core.reloading is not None
    actions = m.tick(after=1.0)
    assert m.core.last_reload["error"] == "slot 0: the new worker did not become READY in time"
    assert kills(actions) == [(new.pid, TERM)]
    assert new.role is Role.RETIRED and new.state is State.STOPPING
    assert m.core.retiring == [new] and m.slot(0).worker_id == 1
    m.exit(new, -15)
    assert m.core.retiring == [] and of(m.tick(after=60), ev.Spawn) == []


def test_reload_that_cannot_spawn_is_abandoned_at_once():
    m = serving()
    m.fail_spawns = 1
    m.command(cmd="reload")
    assert m.core.reloading is None and m.core.last_reload["ok"] is False
    assert m.core.last_reload["error"] == "slot 0: cannot spawn a new worker"


def test_reload_restarts_a_fatal_slot_directly():
    m = Master(workers=2)
    m.ready(m.slot(1))
    for _ in range(5):
        m.tick(after=60)
        m.exit(m.slot(0), 1)
    assert m.slot(0).state is State.FATAL
    m.command(cmd="reload")
    w = m.slot(0)
    assert w.state is State.STARTING and w.failures == 0  # FATAL -> STARTING, same slot
    r = m.core.reloading
    assert r.slot == 1 and r.new is not None  # and slot 1 gets a replacement


def finish_reload(m: Master) -> list:
    """Take every slot of the running reload through its replacement; return
    the actions of the tick that ends it."""
    out = []
    while m.core.reloading is not None:
        reload_step(m, m.core.reloading.slot)
        out = m.tick()
    return out


def test_scale_down_during_a_reload_waits_for_it():
    m = serving()
    m.command(cmd="reload")
    assert m.command(cmd="scale", to="1") == {"ok": True, "workers": 1, "deferred": True,
                                              "replaces": None}
    assert len(m.core.slots) == 2
    reload_step(m, 0)
    m.tick()
    reload_step(m, 1)
    m.tick()  # the reload ends, and the scale it held back happens
    assert m.core.last_reload["ok"] and len(m.core.slots) == 1
    assert [w.state for w in m.core.retiring] == [State.DRAINING]


def test_scale_up_during_a_reload_waits_for_it_too():
    """No worker starts beside the replacement: the new slot starts once the
    reload has ended (with the new code, like every worker started then)."""
    m = serving()
    m.command(cmd="reload")
    replacement = m.core.reloading.new
    out = m.feed(ev.Command({"cmd": "scale", "to": "3"}))
    assert of(out, ev.Answer)[0].answer == {"ok": True, "workers": 3, "deferred": True,
                                            "replaces": None}
    assert of(out, ev.Spawn) == [] and len(m.core.slots) == 2
    assert m.core.describe(m.now)["reload"]["scale_to"] == 3
    assert [w for w in m.core.processes() if w.state is State.STARTING] == [replacement]
    out = finish_reload(m)
    assert [a.slot for a in of(out, ev.Spawn)] == [2]
    assert len(m.core.slots) == 3 and m.core.deferred_scale is None


def test_scale_minus_one_then_plus_one_during_a_reload_ends_where_it_started(caplog):
    """The trial's case: -1 then +1 while a reload runs. +1 counts from the
    deferred 1, not from the 2 slots alive; it replaces that target, and says so."""
    m = serving()
    m.command(cmd="reload")
    assert m.command(cmd="scale", to="-1") == {"ok": True, "workers": 1, "deferred": True,
                                               "replaces": None}
    assert m.command(cmd="scale", to="+1") == {"ok": True, "workers": 2, "deferred": True,
                                               "replaces": 1}
    assert "scale to 2 deferred until the reload ends; it replaces the scale to 1 " \
           "deferred before" in caplog.text
    out = finish_reload(m)
    assert of(out, ev.Spawn) == [] and kills(out) == []
    assert len(m.core.slots) == 2 and m.core.retiring == []
    assert "scale to 2 deferred until the reload ended: already 2 workers" in caplog.text
    assert "scaled from" not in caplog.text


def test_relative_scales_during_a_reload_count_from_the_deferred_target():
    m = serving()
    m.command(cmd="reload")
    assert m.command(cmd="scale", to="5")["workers"] == 5
    assert m.command(cmd="scale", to="-2")["workers"] == 3
    assert m.command(cmd="scale", to="+1")["workers"] == 4
    m.feed(ev.Signal(signal.SIGTTOU))  # also from the deferred target: 3
    assert m.core.pending_target == 3 and len(m.core.slots) == 2
    assert m.command(cmd="scale", to="-3") == {"error": "at least one worker must remain"}
    assert m.core.deferred_scale == 3  # a refused ask replaces nothing
    finish_reload(m)
    assert len(m.core.slots) == 3 and m.core.pending_target == 3


def test_the_last_absolute_scale_during_a_reload_wins(caplog):
    m = Master(workers=3)
    m.ready()
    m.command(cmd="reload")
    m.command(cmd="scale", to="1")
    m.feed(ev.Signal(signal.SIGTTIN))  # 2
    assert m.command(cmd="scale", to="4")["replaces"] == 2
    assert m.command(cmd="scale", to="2")["replaces"] == 4
    for before, after in ((1, 2), (2, 4), (4, 2)):
        assert (f"scale to {after} deferred until the reload ends; it replaces the scale "
                f"to {before} deferred before") in caplog.text
    finish_reload(m)
    assert len(m.core.slots) == 2 and [w.slot for w in m.core.retiring] == [2]


def test_a_scale_deferred_by_an_abandoned_reload_still_happens():
    m = serving()
    m.command(cmd="reload")
    m.command(cmd="scale", to="3")
    m.exit(m.core.reloading.new, 4)  # the replacement cannot load the app
    out = m.tick()
    assert not m.core.last_reload["ok"]
    assert len(m.core.slots) == 3 and [a.slot for a in of(out, ev.Spawn)] == [2]


def test_a_deferred_scale_happens_before_the_follow_up_reload():
    """The follow-up reload replaces the slots the scale left (all three)."""
    m = serving()
    m.command(cmd="reload")
    m.command(cmd="scale", to="3")
    m.command(cmd="reload")
    finish_reload_1 = m.core.reloading.id
    reload_step(m, 0)
    m.tick()
    reload_step(m, 1)
    m.tick()
    assert m.core.last_reload["id"] == finish_reload_1 and len(m.core.slots) == 3
    r = m.core.reloading
    assert r.id == finish_reload_1 + 1 and [r.slot, *r.queue] == [0, 1, 2]


def test_a_stop_during_a_reload_drops_the_deferred_scale_and_says_so(caplog):
    m = serving()
    m.command(cmd="reload")
    m.command(cmd="scale", to="3")
    m.command(cmd="stop")
    assert m.core.deferred_scale is None
    assert "scale to 3, deferred until the reload ended, dropped: the master is " \
           "stopping" in caplog.text


def test_a_slot_scaled_away_while_queued_for_reload_is_skipped():
    m = Master(workers=3)
    m.ready()
    m.command(cmd="reload")
    m.core.deferred_scale = None
    m.core.reloading.queue.clear()
    m.core.reloading.add([2])
    m.core.slots.pop()  # as if it had been scaled away meanwhile
    reload_step(m, 0)
    m.tick()
    assert m.core.last_reload == {"ok": True, "reason": "control socket", "replaced": 1,
                                  "finished": m.now, "id": 1}


def test_memory_limit_replaces_only_that_worker_gracefully():
    m = Master(workers=2, max_memory=100)
    m.ready()
    m.feed(ev.Memory({1: 50 * 2**20, 2: 150 * 2**20}))
    r = m.core.reloading
    assert r.reason == "memory limit (slot 1)" and r.slot == 1 and list(r.queue) == []
    # Measured again while being replaced: no second reload.
    m.feed(ev.Memory({1: 50 * 2**20, 2: 150 * 2**20}))
    assert m.core.reloading is r and list(r.queue) == []


def test_a_reload_asked_during_a_reload_is_queued_and_then_replaces_every_worker():
    """An ok answers "every worker was started after the ask": slot 0 was replaced
    before the second ask, so a follow-up reload replaces it (and slot 1) again."""
    m = serving()
    first = m.command(cmd="reload")
    assert first["id"] == 1 and "queued" not in first
    new0 = reload_step(m, 0)
    m.tick()
    second = m.command(cmd="reload")  # slot 1's replacement is starting now
    assert second["ok"] and second["queued"] and second["id"] == 2
    assert m.core.describe(m.now)["reload"]["follow_up"] == "control socket"
    reload_step(m, 1)
    m.tick()  # reload 1 ends; the follow-up starts at once, with slot 0
    assert m.core.last_reload["id"] == 1 and m.core.last_reload["ok"]
    assert m.core.reloading.id == 2 and m.core.reloading.slot == 0
    assert m.core.reloading.old is new0
    started_after_second_ask = {w.worker_id for w in m.core.processes()} - {1, 2, 3, 4}
    reload_step(m, 0)
    m.tick()
    reload_step(m, 1)
    m.tick()
    assert m.core.reloading is None and m.core.last_reload["id"] == 2
    assert m.core.last_reload["ok"] and m.core.last_reload["replaced"] == 2
    assert {w.worker_id for w in m.core.slots} >= started_after_second_ask
    assert [w.worker_id for w in m.core.slots] == [5, 6]


def test_many_reload_asks_during_a_reload_coalesce_into_one_follow_up(caplog):
    m = serving()
    m.command(cmd="reload")
    answers = [m.command(cmd="reload"), m.feed(ev.Signal(signal.SIGHUP)) and None,
               m.command(cmd="reload")]
    assert [a["id"] for a in answers if a] == [2, 2]
    assert "reload (SIGHUP) joins the reload (control socket) queued" in caplog.text
    for reload_id in (1, 2):
        reload_step(m, 0)
        m.tick()
        reload_step(m, 1)
        m.tick()
        assert m.core.last_reload["id"] == reload_id
    assert m.core.reloading is None  # two reloads in all, not four


def test_a_follow_up_reload_still_runs_when_the_first_is_abandoned():
    m = serving()
    m.command(cmd="reload")
    assert m.command(cmd="reload")["queued"]
    m.exit(m.core.reloading.new, 4)  # the first reload's new worker cannot load the app
    m.tick()
    assert m.core.last_reload["id"] == 1 and not m.core.last_reload["ok"]
    assert m.core.reloading.id == 2 and m.core.reloading.slot == 0  # (the app may be fixed)


def test_a_memory_limit_a_fresh_worker_exceeds_is_said_once_and_replaces_nothing(caplog):
    m = Master(workers=2, max_memory=40)
    for w in list(m.core.slots):
        m.feed(ev.Ready(w.worker_id, rss=53 * 2**20))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "said once, not once per worker"
    assert "uses 53 MiB fresh" in errors[0].getMessage()
    assert "--max-memory 40 MiB" in errors[0].getMessage()
    for _ in range(10):
        m.feed(ev.Heard(1))
        m.feed(ev.Heard(2))
        m.feed(ev.Memory({1: 53 * 2**20, 2: 60 * 2**20}), after=2.0)
        m.tick()
    assert m.core.reloading is None and m.core.last_reload is None
    assert "replacing it gracefully" not in caplog.text
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_a_fresh_worker_that_fits_lifts_the_memory_rule():
    """After a reload with a smaller app, fresh workers fit: growth is replaced again."""
    m = Master(workers=1, max_memory=40)
    m.feed(ev.Ready(1, rss=53 * 2**20))
    m.command(cmd="reload")
    m.feed(ev.Ready(m.core.reloading.new.worker_id, rss=30 * 2**20))
    m.tick()
    m.exit(m.core.retiring[0], 0, after=1.0)
    m.tick()
    assert m.core.last_reload["ok"] and not m.core.memory_unmeetable
    m.feed(ev.Memory({m.slot(0).worker_id: 45 * 2**20}))
    assert m.core.reloading.reason == "memory limit (slot 0)"


def test_a_memory_replacement_counts_as_a_restart():
    m = Master(workers=2, max_memory=100)
    for w in list(m.core.slots):
        m.feed(ev.Ready(w.worker_id, rss=50 * 2**20))
    m.feed(ev.Memory({1: 50 * 2**20, 2: 150 * 2**20}))
    reload_step(m, 1)
    m.tick()
    assert m.core.last_reload["ok"]
    assert [w["restarts"] for w in m.core.describe(m.now)["workers"]
            if not w["retired"]] == [0, 1]


# ---- routing by sid ----------------------------------------------------------------------------


def test_new_sessions_go_to_the_least_loaded_ready_worker():
    m = Master(workers=3)
    m.ready()
    m.feed(ev.Load(1, sessions=5, connections=5))
    m.feed(ev.Load(2, sessions=2, connections=2))
    m.feed(ev.Load(3, sessions=3, connections=3))
    # Hand-offs not yet reported count as load: 2, then 3/3/5 ties by fewer hand-offs.
    assert [m.route(None) for _ in range(4)] == [2, 3, 2, 3]
    assert [w.handoffs_sent for w in m.core.slots] == [0, 2, 2]


def test_acknowledged_handoffs_stop_counting_as_load():
    m = Master(workers=2)
    m.ready()
    m.feed(ev.Load(1, sessions=3, connections=3))
    m.feed(ev.Load(2, sessions=4, connections=4))
    assert m.route(None) == 1  # now 3 sessions + 1 unacknowledged hand-off: 4 each
    m.feed(ev.Acked(1, 1))  # received, and no session of it reported yet
    assert m.route(None) == 1
    assert [w.handoffs_acked for w in m.core.slots] == [1, 0]


def test_requests_go_to_the_worker_their_sid_names():
    m = serving()
    m.feed(ev.Load(1, sessions=100, connections=100))
    assert [m.route(1) for _ in range(3)] == [1, 1, 1]  # load does not matter
    assert m.route(None) == 2


def test_a_sid_of_a_dead_worker_goes_to_a_ready_one():
    m = serving()
    m.exit(m.slot(0), -9)
    assert m.route(1) == 2  # which answers "unknown session"; the client re-handshakes
    m.tick(after=0.1)
    assert m.slot(0).worker_id == 3  # the replacement has a new id, not the dead one's
    m.ready(m.slot(0))
    m.feed(ev.Load(2, sessions=9, connections=9))
    assert m.route(1) == 3


def test_a_sid_of_a_worker_whose_channel_closed_goes_elsewhere_before_the_reap():
    m = serving()
    m.feed(ev.ChannelClosed(1))
    assert m.route(1) == 2 and m.route(None) == 2


def test_a_forged_sid_goes_to_a_ready_worker():
    m = serving()
    assert m.route(0xFFF) in (1, 2)


@pytest.mark.parametrize("host", [0, 2])
def test_a_sid_of_another_host_is_refused_at_once_and_reaches_no_worker(host):
    m = Master(workers=2, host_id=host)
    m.ready()
    assert m.route(1) == 1 and m.route(2, host) == 2 and m.route(None) in (1, 2)
    for other in (host + 1, 0xFFF):
        conn = object()
        [a] = m.feed(ev.Request(conn, 1, other))
        assert a == ev.Reply(conn, 400, f"Invalid session: it belongs to host {other}, "
                                         f"this is host {host}", "other_host")
    assert [w.handoffs_sent for w in m.core.slots] == [1, 2] or \
        [w.handoffs_sent for w in m.core.slots] == [2, 1]


def test_sids_of_a_replaced_worker_reach_it_until_it_exits():
    m = serving()
    m.command(cmd="reload")
    new = m.core.reloading.new
    assert m.route(new.worker_id) == new.worker_id  # its own (hand-backs) reach it
    m.ready(new)
    m.tick()
    assert m.route(1) == 1  # old, draining
    m.exit(m.core.retiring[0], 0)
    m.feed(ev.Load(2, sessions=9, connections=9))
    assert m.route(1) == new.worker_id  # gone: a READY worker answers (the least loaded)


def test_with_no_ready_worker_connections_are_held_until_one_is():
    m = serving()
    m.exit(m.slot(0), -9)
    m.exit(m.slot(1), -9)
    assert m.route(None) is None and m.route(2) is None
    m.tick(after=0.1)
    assert of(m.ready(m.slot(1)), ev.RetryHeld) == [ev.RetryHeld()]
    assert m.route(None) == m.slot(1).worker_id


def test_worker_ids_skip_those_still_in_use_when_they_wrap():
    m = serving()
    m.core.next_worker_id = 0xFFF  # 12 bits of the sid name the worker
    m.exit(m.slot(0), -9)
    m.tick(after=0.1)
    assert m.slot(0).worker_id == 0xFFF
    m.exit(m.slot(0), -9)
    m.tick(after=0.5)
    assert m.slot(0).worker_id == 1  # freed by slot 0's first worker; 2 is slot 1's
    m.exit(m.slot(0), -9)
    m.tick(after=1.0)
    assert m.slot(0).worker_id == 3


@pytest.fixture(autouse=True)
def _master_log(caplog):
    caplog.set_level(logging.INFO, logger="imcluster.master")


def readiness(m: Master) -> int:
    [a] = m.feed(ev.Request(object(), None, None, readiness=True))
    assert type(a) is ev.Reply and a.cause is None
    return a.status


def test_readiness_is_200_ready_404_drained_503_without_a_ready_worker():
    m = Master(workers=2)
    assert readiness(m) == 503  # none READY yet
    m.ready()
    assert readiness(m) == 200
    assert m.command(cmd="drain") == {"ok": True, "drained": True, "readiness": 404}
    assert readiness(m) == 404
    # Drained tells the router only: a request that still arrives is served.
    assert m.route(None) in (1, 2) and m.route(1) == 1
    assert m.command(cmd="undrain") == {"ok": True, "drained": False, "readiness": 200}
    assert readiness(m) == 200
    m.exit(m.slot(0), -9)
    m.exit(m.slot(1), -9)
    assert readiness(m) == 503
    m.tick(after=0.1)
    m.ready()
    m.command(cmd="stop")
    assert readiness(m) == 503
    assert "error" in m.command(cmd="drain")


# ---- the status answer ------------------------------------------------------------------


def _keys(value, prefix: str = "") -> set[str]:
    """Every key path of a JSON value: "master.counters.routed", "workers[].pid"."""
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out |= {path} | _keys(v, path)
        return out
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return set().union(*(_keys(v, f"{prefix}[]") for v in value))
    return set()


def test_the_status_answer_has_exactly_the_documented_keys():
    """imcluster/control.py's table lists every key of `status`, and nothing it lacks."""
    import re

    import imcluster.control
    from imcluster.master.loop import Master as Shell

    m = serving()
    m.feed(ev.Signal(signal.SIGHUP))
    m.exit(m.core.reloading.new, 4)  # abandoned: a last_reload with its error
    m.tick()
    m.command(cmd="reload")  # and one in progress
    m.feed(ev.Load(1, sessions=1, connections=1))
    m.feed(ev.Moving("state+fd", m.slot(0).worker_id))  # a forwarding entry
    shell = Shell(config(workers=2), None)
    try:
        shell.core = m.core
        answer = shell.status()
    finally:
        shell.selector.close()
    documented = set(re.findall(r"^    ((?:master|workers|reload|last_reload|forwarding)\S*)\s",
                                imcluster.control.__doc__, re.M))
    assert _keys(answer) == documented


# ---- session hand-over (workers/handover.py) ----------------------------------------


def test_a_handed_over_session_goes_to_a_ready_slot_and_its_sids_follow_once_the_old_one_exits():
    m = serving()
    w1, w2 = m.slot(0), m.slot(1)
    m.core.retire(m.core.slots.pop(0), m.now)  # a scale-down: w1 drains
    [move] = of(m.feed(ev.Moving("state+fd", w1.worker_id)), ev.Move)
    assert (move.conn, move.worker_id) == ("state+fd", w2.worker_id)
    assert m.route(w1.worker_id) == w1.worker_id, "a draining worker still serves its own sids"
    m.exit(w1)
    assert m.route(w1.worker_id) == w2.worker_id, "the old worker's sids reach its heir"
    # The heir moves on too (a reload): the first worker's sids follow to the newest.
    m.feed(ev.Signal(signal.SIGTTIN))
    m.ready()
    w3 = m.slot(1)
    m.core.retire(m.core.slots.pop(0), m.now)
    [move] = of(m.feed(ev.Moving("x", w2.worker_id)), ev.Move)
    assert move.worker_id == w3.worker_id
    m.exit(w2)
    assert m.route(w1.worker_id) == w3.worker_id and m.route(w2.worker_id) == w3.worker_id
    # Once the heir is gone, the sids are stale: they go to any READY worker (a 400 there).
    assert m.core.moved == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    m.exit(w3)
    assert m.core.moved == {}


def test_a_handed_over_session_with_no_ready_worker_is_closed():
    m = Master(workers=1)
    m.ready()
    w = m.slot(0)
    m.core.retire(m.core.slots.pop(0), m.now)
    [move] = of(m.feed(ev.Moving("x", w.worker_id)), ev.Move)
    assert move.worker_id is None


def test_every_session_of_a_worker_goes_to_one_heir_and_its_requests_follow_there():
    """Polling sessions: a worker's sessions all go to the same heir while it takes
    new sessions (`moved` has one entry per worker), a request for one that reached
    the old worker (FORWARD) goes to that heir, and status shows the forwarding."""
    m = Master(workers=3)
    m.ready()
    w1, w2, w3 = m.slot(0), m.slot(1), m.slot(2)
    m.core.retire(m.core.slots.pop(0), m.now)
    heirs = set()
    for i in range(6):
        [move] = of(m.feed(ev.Moving(f"s{i}", w1.worker_id)), ev.Move)
        heirs.add(move.worker_id)
    assert len(heirs) == 1 and heirs <= {w2.worker_id, w3.worker_id}, \
        "least loaded would have spread them; one heir keeps their sids routable"
    [heir] = heirs
    [fwd] = of(m.feed(ev.Forwarding("req", w1.worker_id)), ev.Move)
    assert (fwd.conn, fwd.worker_id) == ("req", heir)
    assert m.core.describe(m.now)["forwarding"] == [
        {"from": w1.worker_id, "to": heir, "sessions": 6}]
    # A worker that handed nothing over has no heir: its request is closed.
    [fwd] = of(m.feed(ev.Forwarding("req", w2.worker_id)), ev.Move)
    assert fwd.worker_id is None
    m.exit(w1)
    m.exit(m.core.by_id[heir])
    assert m.core.describe(m.now)["forwarding"] == []


def test_an_emptied_worker_is_answered_and_its_sids_go_to_its_heir_before_it_exits():
    """EMPTIED: the draining worker moved what it could; requests naming it go to its
    heir at once (a connection routed to it in its last instant would die with it),
    and the answer goes after whatever was queued for it."""
    m = serving()
    w1, w2 = m.slot(0), m.slot(1)
    m.core.retire(m.core.slots.pop(0), m.now)
    of(m.feed(ev.Moving("s", w1.worker_id)), ev.Move)
    assert m.route(w1.worker_id) == w1.worker_id, "still its own while it moves them"
    [answer] = of(m.feed(ev.Emptied(w1.worker_id)), ev.Send)
    assert (answer.worker_id, answer.kind) == (w1.worker_id, ch.EMPTIED)
    assert m.route(w1.worker_id) == w2.worker_id
    m.exit(w1)
    assert m.core.emptied == set() and m.route(w1.worker_id) == w2.worker_id


def held(m: Master, w: WorkerProcess, *origins: int, moved_in: int | None = None) -> list:
    """`w`'s LOAD with hand-over figures: it took in `moved_in` sessions (default:
    all the master relayed to it) and holds sessions whose sids name `origins`."""
    return m.feed(ev.Load(w.worker_id, 0, 0, held=frozenset(origins),
                          moved_in=w.moves_sent if moved_in is None else moved_in))


def forwarding(m: Master) -> dict[int, int]:
    return {f["from"]: f["to"] for f in m.core.describe(m.now)["forwarding"]}


def test_a_forwarding_entry_is_dropped_once_its_holder_holds_none_of_its_sessions(caplog):
    """Issue 13: the entry for a retired worker lives while its heir holds one of
    the sessions handed over from it, not while the heir lives; once pruned, its
    sids are stale (any READY worker: Engine.IO's unknown-session answer)."""
    m = Master(workers=3)
    m.ready()
    w1, w2, w3 = m.slot(0), m.slot(1), m.slot(2)
    m.core.retire(m.core.slots.pop(0), m.now)
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id)), ev.Move)
    heir = m.core.by_id[move.worker_id]
    of(m.feed(ev.Moving("s2", w1.worker_id)), ev.Move)
    held(m, heir)
    assert forwarding(m) == {w1.worker_id: heir.worker_id}, \
        "the retired worker still lives: it may hand more over"
    m.exit(w1)
    assert forwarding(m) == {}, "its heir's last report held none of its sessions"
    assert "no session handed over from retired worker" in caplog.text
    assert m.route(w1.worker_id) in (w2.worker_id, w3.worker_id)


def test_a_forwarding_entry_stays_while_its_holder_holds_one_or_has_not_taken_all_in():
    m = Master(workers=3)
    m.ready()
    w1 = m.slot(0)
    m.core.retire(m.core.slots.pop(0), m.now)
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id)), ev.Move)
    heir = m.core.by_id[move.worker_id]
    held(m, heir, w1.worker_id)
    m.exit(w1)
    assert forwarding(m) == {w1.worker_id: heir.worker_id}, "one of its sessions is held"
    # A report sent before the heir took a HANDOVER still in its channel in does
    # not say that session is gone: the sid in it must stay routable.
    held(m, heir, moved_in=heir.moves_sent - 1)
    assert forwarding(m) == {w1.worker_id: heir.worker_id}
    # A report without hand-over figures (--handover no, an old worker) prunes nothing.
    m.feed(ev.Load(heir.worker_id, 0, 0))
    assert forwarding(m) == {w1.worker_id: heir.worker_id}
    held(m, heir)
    assert forwarding(m) == {}


def _w1_moved_to_w2_which_retires_to_w3(m):
    """W1 retires and moves its one session to W2, and exits; a worker W3 is added
    and W2 retires (nothing moved yet). (W1, W2, W3)."""
    w1, w2 = m.slot(0), m.slot(1)
    m.core.retire(m.core.slots.pop(0), m.now)
    of(m.feed(ev.Moving("w1's session", w1.worker_id)), ev.Move)
    m.exit(w1)
    held(m, w2, w1.worker_id)
    m.feed(ev.Signal(signal.SIGTTIN))
    m.ready()
    w3 = m.slot(1)
    m.core.retire(m.core.slots.pop(0), m.now)
    return w1, w2, w3


def test_forwarding_entries_of_a_chain_point_to_the_last_holder_and_go_one_by_one():
    """Sessions moved twice (W1 -> W2, then W2 retires -> W3): both retired workers'
    sids go to W3 while it holds sessions naming them, each entry dropped on its own."""
    m = serving()
    w1, w2, w3 = _w1_moved_to_w2_which_retires_to_w3(m)
    of(m.feed(ev.Moving("s1 again", w2.worker_id)), ev.Move)
    of(m.feed(ev.Moving("s2", w2.worker_id)), ev.Move)
    held(m, w2)  # W2 moved them all on: its report no longer holds W1's
    assert forwarding(m) == {w1.worker_id: w2.worker_id, w2.worker_id: w3.worker_id}, \
        "W1's entry follows W2's sessions only once W2 says it moved all it could"
    of(m.feed(ev.Emptied(w2.worker_id)), ev.Send)
    assert forwarding(m) == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    held(m, w3, w1.worker_id, w2.worker_id)
    m.exit(w2)
    assert forwarding(m) == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    held(m, w3, w1.worker_id)  # W2's session closed
    assert forwarding(m) == {w1.worker_id: w3.worker_id}
    assert m.route(w1.worker_id) == w3.worker_id
    held(m, w3)
    assert forwarding(m) == {}


def test_a_twice_moved_sid_reaches_its_holder_until_the_holder_has_moved_all():
    """W1's sessions went to W2; W2 drains and moves its own session first: a
    request naming W1 must still reach W2, which holds W1's session (it moves
    next), not W3, which would answer "unknown session" (400) and the client
    reconnect (a new-user trial: polling clients dropped from the second
    consecutive reload on). Once W2 has moved it, W2 forwards the request to W3
    (FORWARD); once W2 says EMPTIED, W1's sids go to W3 directly. W3 holding
    none of W1's yet must not drop the entry while W2's report still holds some."""
    m = serving()
    w1, w2, w3 = _w1_moved_to_w2_which_retires_to_w3(m)
    of(m.feed(ev.Moving("w2's own session", w2.worker_id)), ev.Move)
    held(m, w3, w2.worker_id)  # W1's session is still on W2
    assert forwarding(m) == {w1.worker_id: w2.worker_id, w2.worker_id: w3.worker_id}
    assert m.route(w1.worker_id) == w2.worker_id, "W2 still holds W1's session"
    of(m.feed(ev.Moving("w1's session again", w2.worker_id)), ev.Move)
    assert m.route(w1.worker_id) == w2.worker_id, "W2 forwards what it moved"
    [fwd] = of(m.feed(ev.Forwarding("req naming w1", w2.worker_id)), ev.Move)
    assert fwd.worker_id == w3.worker_id
    held(m, w2)
    held(m, w3, w1.worker_id, w2.worker_id)
    of(m.feed(ev.Emptied(w2.worker_id)), ev.Send)
    assert m.route(w1.worker_id) == w3.worker_id
    assert forwarding(m) == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    m.exit(w2)
    assert forwarding(m) == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    held(m, w3)
    assert forwarding(m) == {}


def test_a_holder_that_exits_before_emptied_leaves_the_entries_to_its_heir():
    """W2 holds W1's sessions, moves one on to W3 and dies before EMPTIED: W1's sids
    go to W3 (the one moved is there; those that died with W2 get "unknown
    session" there as anywhere). A holder that moved nothing leaves no heir: the
    entries leading to it go."""
    m = serving()
    w1, w2, w3 = _w1_moved_to_w2_which_retires_to_w3(m)
    of(m.feed(ev.Moving("w1's session again", w2.worker_id)), ev.Move)
    m.exit(w2, -9)
    assert forwarding(m) == {w1.worker_id: w3.worker_id, w2.worker_id: w3.worker_id}
    assert m.route(w1.worker_id) == w3.worker_id
    m2 = serving()
    v1, v2, _ = _w1_moved_to_w2_which_retires_to_w3(m2)
    m2.exit(v2, -9)
    assert v1.worker_id not in forwarding(m2)


def test_with_handover_stop_names_the_heir_and_the_sessions_go_there():
    """`--handover yes`: STOP carries the heir's worker id, so that the worker can
    ready it before its first session leaves (interest channels,
    workers/redis_order.py); its sessions then go to that heir, even when another
    worker has become less loaded meanwhile, while it takes new sessions."""
    m = Master(workers=3, handover=True)
    m.ready()
    w1, w2, w3 = m.slot(0), m.slot(1), m.slot(2)
    [stop] = of(m.feed(ev.Signal(signal.SIGTTOU)), ev.Send)  # w3 drains
    assert (stop.worker_id, stop.kind) == (w3.worker_id, ch.STOP)
    heir = int(stop.payload)
    assert heir in (w1.worker_id, w2.worker_id)
    other = w2 if heir == w1.worker_id else w1
    m.core.by_id[heir].sessions = 50  # the other is now the least loaded
    [move] = of(m.feed(ev.Moving("s", w3.worker_id)), ev.Move)
    assert move.worker_id == heir
    # A named heir that stopped taking sessions (draining itself) is not used.
    m.core.retire(m.core.slots.pop(m.core.slots.index(m.core.by_id[heir])), m.now)
    [move] = of(m.feed(ev.Moving("s2", w3.worker_id)), ev.Move)
    assert move.worker_id == other.worker_id
    m.exit(w3)
    assert w3.worker_id not in m.core.planned


def test_without_handover_stop_is_empty():
    m = serving()
    [stop] = of(m.feed(ev.Signal(signal.SIGTTOU)), ev.Send)
    assert stop.payload == b"" and m.core.planned == {}


# ---- start turns (--max-starting) ------------------------------------------------------

def spawned(actions: list) -> list[int]:
    return [a.slot for a in actions if type(a) is ev.Spawn]


def test_start_turns_at_most_max_starting_workers_import_at_once():
    m = Master(workers=5, max_starting=2)
    assert spawned(m.actions) == [0, 1]
    assert [w.state for w in m.core.slots] == [State.STARTING] * 2 + [State.QUEUED] * 3
    assert [w["state"] for w in m.core.describe(m.now)["workers"]][2:] == ["QUEUED"] * 3
    # A READY worker frees its turn; the lowest queued slot takes it.
    assert spawned(m.ready(m.slot(0))) == [2]
    assert spawned(m.ready(m.slot(1))) == [3]
    # A start that fails frees its turn too.
    assert spawned(m.exit(m.slot(2), 1)) == [4]
    m.ready(m.slot(3), m.slot(4))
    assert m.slot(2).state is State.BACKOFF
    m.tick(after=1.0)
    assert m.slot(2).state is State.STARTING


def test_start_turns_apply_to_scaling_up_and_a_scale_down_drops_queued_slots():
    m = Master(workers=1, max_starting=1)
    m.ready()
    assert spawned(m.feed(ev.Command({"cmd": "scale", "to": "4"}))) == [1]
    assert [w.state for w in m.core.slots[2:]] == [State.QUEUED] * 2
    out = m.feed(ev.Command({"cmd": "scale", "to": "2"}))
    assert spawned(out) == [] and len(m.core.slots) == 2
    assert not any(w.state is State.QUEUED for w in m.core.processes())
    m.ready()
    assert [w.state for w in m.core.slots] == [State.READY] * 2


def test_start_turns_stopping_leaves_queued_slots_unstarted():
    m = Master(workers=3, max_starting=1)
    m.feed(ev.Signal(TERM))
    assert m.slot(2).state is State.EXITED
    assert spawned(m.exit(m.slot(0), 0)) == []


def test_start_turns_a_reload_replacement_does_not_wait_for_one():
    m = Master(workers=2, max_starting=1)
    m.ready(m.slot(0))
    assert m.slot(1).state is State.STARTING
    out = m.feed(ev.Command({"cmd": "reload"}))
    # slot 0's replacement starts beside slot 1's start: a reload's deadline runs.
    assert spawned(out) == [0]


# ---- the heir named at STOP changes (issue 13, interest channels: workers/heir.py) -----


def _draining_with_heir(workers: int = 3):
    """A worker retired with --handover: STOP names its heir. Returns the master,
    the draining worker and its heir."""
    m = Master(workers=workers, handover="yes")
    m.ready()
    w1 = m.slot(0)
    m.core.retire(m.core.slots.pop(0), m.now)
    [stop] = of(m.tick(), ev.Send)
    assert (stop.worker_id, stop.kind) == (w1.worker_id, ch.STOP)
    heir = m.core.by_id[int(stop.payload)]
    assert heir is not w1 and heir.accepts_new
    return m, w1, heir


def stops_to(actions: list, worker_id: int) -> list[int]:
    """The heirs named by the STOPs sent to `worker_id` in `actions`."""
    return [int(a.payload) for a in of(actions, ev.Send)
            if a.worker_id == worker_id and a.kind == ch.STOP and a.payload]


def test_a_drain_whose_heir_is_retired_too_is_told_the_new_heir_and_moves_there():
    """The heir named at STOP is itself retired before the drain ends (a reload
    reaching its slot, a scale-down): the master picks the worker that still
    takes sessions and tells the draining worker, by a second STOP naming it, so
    that it readies that one before its next session leaves; the sessions go
    there."""
    m, w1, heir = _draining_with_heir()
    [other] = [w for w in m.core.slots if w is not heir]
    m.core.retire(m.core.slots.pop(m.core.slots.index(heir)), m.now)
    actions = m.tick()
    assert stops_to(actions, w1.worker_id) == [other.worker_id]
    assert stops_to(actions, heir.worker_id) == [other.worker_id], "and the heir's own heir"
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id)), ev.Move)
    assert move.worker_id == other.worker_id
    assert stops_to(m.tick(), w1.worker_id) == [], "told once"


def test_a_drain_whose_heir_dies_is_told_the_new_heir_once_one_is_ready():
    """The heir dies during the drain (its slot is refilled by a worker that is not
    READY yet): with another READY worker, that one is named at once; with none,
    the first that becomes READY is. Sessions moved before that go to the first
    heir (those that were on their way when it died are lost with it)."""
    m, w1, heir = _draining_with_heir()
    [other] = [w for w in m.core.slots if w is not heir]
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id)), ev.Move)
    assert move.worker_id == heir.worker_id
    assert stops_to(m.exit(heir, code=-9), w1.worker_id) == [other.worker_id]
    [move] = of(m.feed(ev.Moving("s2", w1.worker_id)), ev.Move)
    assert move.worker_id == other.worker_id
    # Two workers: the heir dies, and its replacement is the only one left.
    m, w1, heir = _draining_with_heir(workers=2)
    assert stops_to(m.exit(heir, code=-9), w1.worker_id) == []
    assert stops_to(m.tick(after=1.0), w1.worker_id) == [], "respawned, not READY yet"
    [refill] = [w for w in m.core.slots if w.state is State.STARTING]
    assert stops_to(m.ready(refill), w1.worker_id) == [refill.worker_id]
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id)), ev.Move)
    assert move.worker_id == refill.worker_id


def test_a_move_to_another_worker_than_the_planned_heir_readies_it_for_the_rest():
    """Between two events the planned heir may stop taking sessions without a plan
    change (its channel closed as the session's MOVING was read): the session goes
    to a worker that takes sessions, and the draining worker is told to ready that
    one for the next sessions."""
    m, w1, heir = _draining_with_heir()
    [other] = [w for w in m.core.slots if w is not heir]
    heir.channel_open = False  # as _on_channel_closed leaves it, without the event
    actions = m.feed(ev.Moving("s1", w1.worker_id))
    [move] = of(actions, ev.Move)
    assert move.worker_id == other.worker_id
    assert stops_to(actions, w1.worker_id) == [other.worker_id]
    assert m.core.planned[w1.worker_id] == other.worker_id


def test_sessions_that_cannot_move_on_a_stop_are_said_once_per_worker(caplog, _master_log):
    """A full stop with --handover: every session of a draining worker finds no
    READY worker and is closed. The master said so with one WARNING per session
    (thousands on a stop: a new-user trial); now one INFO line per worker on a
    stop, one WARNING per worker otherwise (the worker's drain line counts)."""
    m = serving()
    w1, w2 = m.slot(0), m.slot(1)
    m.feed(ev.Signal(TERM))
    for w in (w1, w2):
        for _ in range(5):
            [move] = of(m.feed(ev.Moving("state+fd", w.worker_id)), ev.Move)
            assert move.worker_id is None  # closed
    lines = [r for r in caplog.records if "no READY worker to take" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, f"worker {w.worker_id}: no READY worker to take its sessions over "
                       "(the cluster is stopping); closing them") for w in (w1, w2)]


def test_a_scale_down_without_a_ready_worker_warns_once_per_worker(caplog, _master_log):
    m = Master(workers=1)
    m.ready()
    w = m.slot(0)
    m.core.retire(m.core.slots.pop(0), m.now)  # its last READY worker drains
    for _ in range(3):
        [move] = of(m.feed(ev.Moving("state+fd", w.worker_id)), ev.Move)
        assert move.worker_id is None
    lines = [r for r in caplog.records if "no READY worker to take" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING]


# ---- a session on its way, synced with the heir, when the heir changes (issue 13) -----


def test_a_session_synced_with_the_heir_goes_to_it_though_it_drains_now():
    """The planned heir is retired while a session synced with it is on its way
    (its HANDOVER names that heir: interest channels, workers/heir.py): it goes to
    that heir, which drains and moves it on, not to the new one, which never
    subscribed before the session's position was taken (the room messages in
    between would be lost without a word). The sessions synced with the new heir
    go there; one naming no heir (one channel, the relay) goes where the plan says."""
    m, w1, heir = _draining_with_heir()
    [other] = [w for w in m.core.slots if w is not heir]
    m.core.retire(m.core.slots.pop(m.core.slots.index(heir)), m.now)
    assert stops_to(m.tick(), w1.worker_id) == [other.worker_id]
    assert heir.state is State.DRAINING and not heir.accepts_new
    actions = m.feed(ev.Moving("on its way", w1.worker_id, synced_with=heir.worker_id))
    [move] = of(actions, ev.Move)
    assert move.worker_id == heir.worker_id
    assert stops_to(actions, w1.worker_id) == [], "the plan stands: the rest go to the new heir"
    assert m.core.moved[w1.worker_id] == heir.worker_id
    [move] = of(m.feed(ev.Moving("synced anew", w1.worker_id, synced_with=other.worker_id)),
                ev.Move)
    assert move.worker_id == other.worker_id
    assert m.core.moved[w1.worker_id] == other.worker_id
    [move] = of(m.feed(ev.Moving("no channels", w1.worker_id)), ev.Move)
    assert move.worker_id == other.worker_id
    # The drained heir moves it on, to its own heir, like any session it holds.
    [move] = of(m.feed(ev.Moving("moved on", heir.worker_id, synced_with=other.worker_id)),
                ev.Move)
    assert move.worker_id == other.worker_id


@pytest.mark.parametrize("how", ["died", "channel closed", "hung", "emptied", "stopping"])
def test_a_session_synced_with_an_heir_that_can_take_none_is_closed(how, caplog):
    """The worker a session on its way was synced with can take nothing any more
    (dead, its channel closed, hung, done moving what it held, stopping): the
    session is closed, so its client reconnects (and recovers what it missed with
    --recovery-window), rather than delivered to another worker that missed the
    room messages since its position. This holds even at the moment the plan has
    not changed yet (`_on_moving` used to send it to any READY worker)."""
    m, w1, heir = _draining_with_heir()
    [other] = [w for w in m.core.slots if w is not heir]
    if how == "died":
        m.exit(heir, code=-9)
    elif how == "channel closed":
        heir.channel_open = False  # as _on_channel_closed leaves it, before any replan
    elif how == "hung":
        heir.unresponsive = True
    elif how == "emptied":
        m.core.retire(m.core.slots.pop(m.core.slots.index(heir)), m.now)
        m.feed(ev.Emptied(heir.worker_id))
    else:
        m.core.terminate(heir, m.now, stopping=True)
    with caplog.at_level(logging.WARNING, logger="imcluster.master"):
        actions = m.feed(ev.Moving("on its way", w1.worker_id, synced_with=heir.worker_id))
    [move] = of(actions, ev.Move)
    assert move.worker_id is None
    assert f"a session synced with worker {heir.worker_id}, which can take none" in caplog.text
    assert heir.moves_sent == 0
    # The next ones, synced with the worker the plan names now, go there.
    assert m.core.planned[w1.worker_id] == other.worker_id
    [move] = of(m.feed(ev.Moving("next", w1.worker_id, synced_with=other.worker_id)), ev.Move)
    assert move.worker_id == other.worker_id


def test_a_session_synced_with_its_heir_goes_there_while_it_takes_sessions():
    m, w1, heir = _draining_with_heir()
    [move] = of(m.feed(ev.Moving("s1", w1.worker_id, synced_with=heir.worker_id)), ev.Move)
    assert move.worker_id == heir.worker_id
    assert (heir.moves_sent, m.core.moved_count[w1.worker_id]) == (1, 1)
