"""The master's decisions, as data: events in, actions out (no I/O).

`Core` holds the slots and every worker's lifecycle, the rolling reload, scale,
crash-loop backoff, graceful stop and the routing choice. The shell
(`loop.py`) owns the selector, the sockets and the processes: it feeds each
event to `Core.handle(event, now)` and carries out the actions returned, in
order (see `events.py` for both). The core never reads a clock, a socket or
the process table, so a test can drive it through a crash loop or a reload in
microseconds (tests/test_master_core.py). It logs, as the master always has:
operators and tests read those lines.

Routing follows design.md: stateless by sid (`router.choose`), new sessions
only to READY workers that hold a slot; a sid naming another host is refused.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from imcluster import channel as ch
from imcluster.master import events as ev
from imcluster.master import router
from imcluster.master.lifecycle import (
    APP_LOAD_ERROR,
    DEPENDENCY_ERROR,
    KILL_GRACE,
    Role,
    State,
    Timer,
    WorkerProcess,
)
from imcluster.master.rolling import RollingReload
from imcluster.settings import MAX_WORKERS, Config
from imcluster.sid import MAX_WORKER_ID

EXIT_OK = 0
EXIT_NO_WORKER = 3


class Core:
    log = logging.getLogger("imcluster.master")

    def __init__(self, cfg: Config, app: str | None, wall_offset: float = 0.0):
        """`wall_offset` turns a `now` into wall-clock seconds (time.time() -
        time.monotonic() at start) for the timestamps in status answers."""
        self.cfg = cfg
        self.app = app
        self.wall_offset = wall_offset
        self.host_id = cfg.host_id  # read per request (a Config attribute is a failed lookup first)
        self.slots: list[WorkerProcess] = []  # index = slot; each holds Role.SLOT
        self.retiring: list[WorkerProcess] = []  # Role.RETIRED, until reaped
        self.by_id: dict[int, WorkerProcess] = {}  # every worker spawned and not yet reaped
        self.by_pid: dict[int, WorkerProcess] = {}
        # Session hand-over (workers/handover.py): worker id -> the worker id its
        # sessions went to (the holder). When a holder drains and moves them on,
        # the entries leading to it follow to its heir only once it has moved all
        # it could (EMPTIED) or exited: until then it may still hold some, and
        # forwards (FORWARD) requests for those it moved. Dropped when the holder
        # exits without an heir or, once the worker itself has exited, when no
        # live worker reports one of its sessions any more (`_prune_forwarding`).
        self.moved: dict[int, int] = {}
        # Sessions handed over, by the worker id they left (counted as they moved;
        # some may have ended since), while `moved` has an entry for it.
        self.moved_count: dict[int, int] = {}
        # A draining worker's heir, chosen when it was told to STOP (--handover): its
        # sessions go there while it takes new sessions, so that the worker could
        # prepare it (interest channels, workers/heir.py); another one is chosen,
        # and the worker told, when it stops (`_replan_heirs`).
        self.planned: dict[int, int] = {}
        # Draining workers that handed over every session that could move: their
        # sids are routed to their heir (`moved`) instead of to them.
        self.emptied: set[int] = set()
        self.reloading: RollingReload | None = None
        self.reload_seq = 0  # reloads started so far; each reload's id
        # A full reload asked while one runs: the reason of the one follow-up
        # reload that starts when it ends (any number of asks coalesce into it).
        self.follow_up: str | None = None
        self.deferred_scale: int | None = None
        # A fresh worker measured above --max-memory: replacing cannot meet the
        # limit, and was said so (once, until a fresh worker fits again).
        self.memory_unmeetable = False
        self.last_reload: dict | None = None
        self.next_worker_id = 1
        self.stopping = False
        # Draining workers told that a session of theirs could not move (said once).
        self.unmoved: set[int] = set()
        # Drained: the router in front (HAProxy) is told, by the readiness answer,
        # to send this host no new sessions; its sessions are still served here.
        self.drained = False
        self.stop_deadline = 0.0
        self.exit_code = EXIT_OK
        self.ever_ready = False
        self._out: list = []
        self._handlers: dict[type, Callable] = {
            ev.Tick: self._on_tick, ev.Signal: self._on_signal,
            ev.Spawned: self._on_spawned, ev.SpawnFailed: self._on_spawn_failed,
            ev.Exited: self._on_exited, ev.ChannelClosed: self._on_channel_closed,
            ev.Heard: self._on_heard, ev.Ready: self._on_ready, ev.Load: self._on_load,
            ev.Acked: self._on_acked,
            ev.WorkerError: self._on_worker_error, ev.Memory: self._on_memory,
            ev.Command: self._on_command, ev.Request: self._on_request,
            ev.Moving: self._on_moving, ev.Forwarding: self._on_forwarding,
            ev.Emptied: self._on_emptied,
        }

    # ---- the interface -------------------------------------------------------------

    def start(self, now: float) -> list:
        """Fill the configured number of slots."""
        for slot in range(self.cfg.workers):
            w = WorkerProcess(slot=slot)
            self.slots.append(w)
            self.spawn(w, now)
        return self._take()

    def handle(self, event: object, now: float) -> list:
        """Apply one event; return the actions it calls for, in order."""
        self._handlers[type(event)](event, now)
        self._start_queued(now)
        if self.planned:
            self._replan_heirs()
        return self._take()

    @property
    def done(self) -> bool:
        """Stopping, and every process has exited: the master may exit."""
        return self.stopping and all(not w.live for w in self.processes())

    def processes(self) -> list[WorkerProcess]:
        """Every worker the master tracks: the slots, the retiring ones, and a
        reload's replacement while it starts."""
        extra = [self.reloading.new] if self.reloading and self.reloading.new else []
        return self.slots + self.retiring + extra

    def readiness(self) -> tuple[int, str]:
        """This host's answer to the router's health check (httpline.READY_PATH):
        200 while it takes new sessions; 404 while drained (HAProxy's
        `http-check disable-on-404`: no new sessions, sids still routed here);
        503 while stopping or with no READY worker (HAProxy marks it down, and
        its sids fall through to hosts that answer them 400)."""
        if self.stopping:
            return 503, "stopping"
        ready = sum(w.accepts_new for w in self.slots)
        if self.drained:
            return 404, f"drained: no new sessions, {ready} of {len(self.slots)} workers READY"
        if not ready:
            return 503, f"no worker is READY (of {len(self.slots)})"
        return 200, f"ready: {ready} of {len(self.slots)} workers READY"

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    def describe(self, now: float) -> dict:
        """The core's part of the status answer (imcluster.control reads the keys);
        the shell adds the master's own figures and each process's cpu and rss."""
        workers = []
        for w in self.processes():
            workers.append({
                "slot": w.slot, "pid": w.pid or None, "worker_id": w.worker_id,
                "state": w.state.value, "retired": w.role is Role.RETIRED,
                "uptime": round(now - w.started_at, 1) if w.pid else None,
                "restarts": w.restarts, "cpu": None, "cpu_time": None, "rss": None,
                "connections": w.connections, "sessions": w.sessions,
                "broadcast": w.broadcast, "pubsub": w.pubsub, "handoffs": w.handoffs_sent,
                "last_error": w.last_error or None,
                "exit_status": w.exit_status, "unresponsive": w.unresponsive,
                "replacement": w.role is Role.REPLACEMENT,
            })
        forwarding = [{"from": source, "to": to, "sessions": self.moved_count.get(source, 0)}
                      for source, to in sorted(self.moved.items())]
        reload = None
        if self.reloading is not None:
            reload = {**self.reloading.describe(), "follow_up": self.follow_up,
                      "scale_to": self.deferred_scale}
        return {"reload": reload,
                "last_reload": self.last_reload, "workers": workers,
                "forwarding": forwarding}

    def _take(self) -> list:
        out, self._out = self._out, []
        return out

    # ---- verbs (also used by rolling.RollingReload) ---------------------------------

    def spawn(self, w: WorkerProcess, now: float) -> None:
        """Start a fresh process for `w` under a new worker id, or queue it (QUEUED)
        while `max_starting` workers are importing the app. A reload's replacement
        never waits: a reload starts one at a time, and its deadline is running."""
        if w.role is not Role.REPLACEMENT and self._starting() >= self.cfg.max_starting:
            if w.state is not State.QUEUED:
                w.to(State.QUEUED)
            return
        wid = self._new_worker_id()
        w.started(wid, now)
        self.by_id[wid] = w
        self._out.append(ev.Spawn(wid, w.slot))

    def _starting(self) -> int:
        return sum(w.state is State.STARTING for w in self.processes())

    def _start_queued(self, now: float) -> None:
        """Give freed start turns to queued slots, lowest slot first."""
        if self.stopping:
            return
        for w in self.slots:
            if w.state is State.QUEUED:
                if self._starting() >= self.cfg.max_starting:
                    return
                self.spawn(w, now)

    def _new_worker_id(self) -> int:
        while True:
            wid = self.next_worker_id
            self.next_worker_id = self.next_worker_id % MAX_WORKER_ID + 1
            if wid not in self.by_id:
                return wid

    def terminate(self, w: WorkerProcess, now: float, stopping: bool = False) -> None:
        """TERM now, KILL after KILL_GRACE. With `stopping`, the slot is not refilled."""
        if stopping and w.state is not State.STOPPING:
            w.to(State.STOPPING)
        self._kill(w, signal.SIGTERM)
        w.kill_at = now + KILL_GRACE

    def retire(self, w: WorkerProcess, now: float) -> None:
        """Take a worker out of service for good: no new sessions, drain, exit."""
        w.role = Role.RETIRED
        if not w.live:
            if w.state in (State.BACKOFF, State.FATAL, State.QUEUED):
                w.to(State.EXITED)
            return
        self.retiring.append(w)
        if w.state is State.READY:
            w.to(State.DRAINING)
            w.drain_deadline = now + self.cfg.graceful_timeout
            payload = b""
            if getattr(self.cfg, "handover", False):
                # Told now, so that the worker can ready its heir before its first
                # session leaves (STOP's payload: the heir's worker id, ASCII).
                heir = router.choose(self.slots, self.by_id, None)
                if heir is not None and heir is not w:
                    self.planned[w.worker_id] = heir.worker_id
                    payload = str(heir.worker_id).encode()
            self._out.append(ev.Send(w.worker_id, ch.STOP, payload))
        elif w.state is not State.DRAINING:
            self.terminate(w, now, stopping=True)

    def retry_held(self) -> None:
        self._out.append(ev.RetryHeld())

    def stop(self, now: float) -> None:
        """Stop accepting, ask every worker to exit, force it after the timeout."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = now + self.cfg.graceful_timeout
        if self.deferred_scale is not None:
            self.log.info("scale to %d, deferred until the reload ended, dropped: the "
                          "master is stopping", self.deferred_scale)
            self.deferred_scale = None
        self._out.append(ev.StopListening())
        for w in self.processes():
            if w.state in (State.BACKOFF, State.FATAL, State.QUEUED):
                w.to(State.EXITED)
            elif w.live and w.state is not State.STOPPING:
                w.to(State.STOPPING)
                self._kill(w, signal.SIGTERM)

    def reload(self, reason: str, now: float, slots: list[int] | None = None) -> dict:
        """Start a rolling reload of `slots` (default: all), or extend the one running.

        A full reload asked while one runs is queued as one follow-up reload,
        which starts when the running one ends (ok or not): some of the running
        one's workers were started before this ask, and a caller told "ok" must
        find every worker started after its ask (a deploy that pushes twice
        quickly would end with mixed code). Any number of asks made during a
        reload coalesce into that one follow-up. The answer's `id` is the id of
        the reload whose end answers this ask (`last_reload.id` once it ended).
        """
        if self.stopping:
            return {"error": "the master is stopping"}
        if slots is None and self.reloading is not None:
            if self.follow_up is None:
                self.follow_up = reason
                self.log.info("reload (%s) queued: it starts when the reload (%s) in "
                              "progress ends", reason, self.reloading.reason)
            else:
                self.log.info("reload (%s) joins the reload (%s) queued", reason,
                              self.follow_up)
            return {"ok": True, "queued": True, "id": self.reload_seq + 1,
                    "reload": self.reloading.describe()}
        slots = list(range(len(self.slots))) if slots is None else slots
        if self.reloading is None:
            self.reload_seq += 1
            self.reloading = RollingReload(reason, id=self.reload_seq)
            self.log.info("reload (%s): replacing %d worker(s), one at a time",
                          reason, len(slots))
        r = self.reloading
        r.add(slots)
        r.advance(self, now)
        return {"ok": True, "id": r.id,
                "reload": self.reloading.describe() if self.reloading else None}

    def abandon_reload(self, why: str, now: float) -> None:
        r = self.reloading
        msg = f"slot {r.slot}: {why}"
        self.log.error("reload (%s) abandoned: %s; the old workers keep serving", r.reason, msg)
        if r.new is not None and r.new.live:
            r.new.role = Role.RETIRED
            self.retiring.append(r.new)  # reaped like any retired worker
            self.terminate(r.new, now, stopping=True)
        r.new = None
        self.end_reload({"ok": False, "reason": r.reason, "error": msg,
                         "replaced": r.replaced, "finished": self.wall(now)}, now)

    def end_reload(self, result: dict, now: float) -> None:
        """Record how the reload ended; then the scale deferred for it, then the
        follow-up reload queued during it, if any."""
        result["id"] = self.reloading.id
        self.last_reload = result
        self.reloading = None
        if self.deferred_scale is not None:
            target = self.deferred_scale
            if target == len(self.slots):
                self.deferred_scale = None
                self.log.info("scale to %d deferred until the reload ended: already %d "
                              "worker%s", target, target, "" if target == 1 else "s")
            else:
                self.scale(target, now)
        if self.follow_up is not None and not self.stopping:
            reason, self.follow_up = self.follow_up, None
            self.reload(reason, now)

    def scale(self, target: int, now: float) -> dict:
        """Grow or shrink to `target` workers; removed workers drain first.

        Answers `{"ok": True, "workers": target}`, or, during a reload, `{"ok":
        True, "workers": target, "deferred": True, "replaces": M|None}`: every
        scale asked while a reload runs (up or down, full or memory-limit) waits
        for it to end (ok or abandoned), and then happens before a follow-up
        reload starts. `replaces` is the deferred target this ask replaced
        (logged too): the last target asked wins, and none is dropped unsaid.
        `{"error": TEXT}` for a target outside 1..MAX_WORKERS (checked at once)
        or while stopping (a deferred scale is then dropped, and logged so).

        Why up as well as down: a shrink would pull slots from under the
        reload's queue; a growth would start workers beside the replacement
        (start turns, CPU and memory while the replacement imports under its
        --ready-timeout, on a host sized for N workers plus one replacement);
        and growing at once while a shrink waits reorders the asks: scale -1
        then +1 ended with 3 workers of 2 (the +1 counted from the live 2, and
        replaced the waiting shrink). With one rule the outcome is the last
        target asked, whatever the order and the direction. Relative
        asks (+N/-N, TTIN/TTOU) count from the deferred target (`pending_target`).
        """
        if self.stopping:
            return {"error": "the master is stopping"}
        target = int(target)
        if not 1 <= target <= MAX_WORKERS:
            why = (f"at most {MAX_WORKERS} workers" if target > MAX_WORKERS
                   else "at least one worker must remain")
            self.log.warning("scale to %d refused: %s", target, why)
            return {"error": why}
        if self.reloading is not None:
            replaced, self.deferred_scale = self.deferred_scale, target
            if replaced is None:
                self.log.info("scale to %d deferred until the reload ends", target)
            else:
                self.log.info("scale to %d deferred until the reload ends; it replaces "
                              "the scale to %d deferred before", target, replaced)
            return {"ok": True, "workers": target, "deferred": True, "replaces": replaced}
        self.deferred_scale = None
        before = len(self.slots)
        while len(self.slots) < target:
            w = WorkerProcess(slot=len(self.slots))
            self.slots.append(w)
            self.spawn(w, now)
        while len(self.slots) > target:
            self.retire(self.slots.pop(), now)
        if target != before:
            self.log.info("scaled from %d to %d worker%s", before, target,
                          "" if target == 1 else "s")
        return {"ok": True, "workers": target}

    @property
    def pending_target(self) -> int:
        """The number of workers the master is heading for: the scale deferred
        until the reload ends, else the slots held now. A relative scale
        (+N/-N, SIGTTIN/SIGTTOU) counts from it."""
        return len(self.slots) if self.deferred_scale is None else self.deferred_scale

    def _give_up(self, why: str, now: float) -> None:
        self.log.critical("%s; exiting", why)
        self.exit_code = EXIT_NO_WORKER
        self.stop(now)

    def _kill(self, w: WorkerProcess, signum: int) -> None:
        if w.pid:
            self._out.append(ev.Kill(w.pid, signum))

    # ---- events ---------------------------------------------------------------------

    def _on_tick(self, e: ev.Tick, now: float) -> None:
        cfg = self.cfg
        for w in self.processes():
            for timer in w.due(now, cfg.ready_timeout, cfg.heartbeat_timeout):
                self._timer(w, timer, now)
        if self.reloading is not None and not self.stopping:
            self.reloading.advance(self, now)
        if self.stopping and now >= self.stop_deadline:
            for w in self.processes():
                self._kill(w, signal.SIGKILL)

    def _timer(self, w: WorkerProcess, timer: Timer, now: float) -> None:
        if timer is Timer.RESPAWN:
            if not self.stopping and w.role is Role.SLOT:
                self.spawn(w, now)
        elif timer is Timer.READY_TIMEOUT:
            self.log.error("slot %d: worker pid %d not READY after %.0fs (--ready-timeout; "
                           "raise it if the app takes longer to import); stopping it",
                           w.slot, w.pid, self.cfg.ready_timeout)
            w.unresponsive = True
            self.terminate(w, now)
        elif timer is Timer.SILENT:
            self.log.error("slot %d: worker pid %d silent for %.1fs (event loop blocked?); "
                           "replacing it", w.slot, w.pid, now - w.last_heard)
            w.unresponsive = True
            self.terminate(w, now)
        elif timer is Timer.DRAIN_TIMEOUT:
            self.log.warning("slot %d: worker pid %d still draining after %.0fs; stopping it",
                             w.slot, w.pid, self.cfg.graceful_timeout)
            self.terminate(w, now, stopping=True)
        elif timer is Timer.KILL:
            self.log.warning("slot %d: worker pid %d ignored SIGTERM; killing it",
                             w.slot, w.pid)
            self._kill(w, signal.SIGKILL)
            w.kill_at = 0.0

    def _on_signal(self, e: ev.Signal, now: float) -> None:
        sig = e.signum
        name = signal.Signals(sig).name
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                self.log.warning("second %s: stopping now", name)
                self.stop_deadline = 0.0
            else:
                self.log.info("%s: stopping gracefully", name)
                self.stop(now)
        elif self.stopping:
            self.log.warning("%s ignored while stopping", name)
        elif sig == signal.SIGHUP:
            self.reload("SIGHUP", now)
        elif sig == signal.SIGTTIN:
            self.scale(self.pending_target + 1, now)
        elif sig == signal.SIGTTOU:
            self.scale(self.pending_target - 1, now)

    def _on_spawned(self, e: ev.Spawned, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is None or w.state is not State.STARTING or w.pid:
            return
        w.pid = e.pid
        w.channel_open = True
        self.by_pid[e.pid] = w
        self.log.info("slot %d: spawned worker %d, pid %d", w.slot, e.worker_id, e.pid)

    def _on_spawn_failed(self, e: ev.SpawnFailed, now: float) -> None:
        w = self.by_id.pop(e.worker_id, None)
        if w is None:
            return
        self.log.error("slot %d: cannot spawn a worker: %s", w.slot, e.reason)
        # The start failed before there was a process: STARTING -> EXITED, and a
        # slot's failed start counts towards its backoff like any other.
        w.on_exit(-1, now)
        if self.reloading is not None and w is self.reloading.new:
            self.abandon_reload("cannot spawn a new worker", now)

    def _on_exited(self, e: ev.Exited, now: float) -> None:
        w = self.by_pid.pop(e.pid, None)
        if w is None:
            return
        self.by_id.pop(w.worker_id, None)
        self.emptied.discard(w.worker_id)
        self.unmoved.discard(w.worker_id)
        self._out.append(ev.CloseChannel(w.worker_id))
        # Sessions handed to it: those it moved on are at its heir (it exited
        # before saying EMPTIED: a crash, a stop timeout); the rest died with it,
        # and their sids get "unknown session" there as anywhere. No heir: stale.
        self._follow_heir(w.worker_id)
        for source in [k for k, v in self.moved.items() if v == w.worker_id]:
            del self.moved[source]
            self.moved_count.pop(source, None)
        self.planned.pop(w.worker_id, None)  # (as a source; as an heir: _replan_heirs)
        # Its own sids now reach only its heir (gone already if no worker's last
        # report holds one), and the sessions it held are no longer in the way.
        self._prune_forwarding()
        was = w.state
        w.on_exit(e.code, now)
        code = e.code
        how = f"signal {-code}" if code < 0 else f"code {code}"
        error = f": {w.last_error}" if w.last_error else ""
        if w.role is Role.RETIRED:
            if w in self.retiring:
                self.retiring.remove(w)
            self.log.info("slot %d: retired worker pid %d exited (%s)", w.slot, e.pid, how)
            return
        if w.role is Role.REPLACEMENT:
            self.log.error("slot %d: replacement worker pid %d exited (%s)%s",
                           w.slot, e.pid, how, error)
            return  # the reload's next step abandons it
        if self.stopping or was is State.STOPPING:
            self.log.info("slot %d: worker pid %d exited (%s)", w.slot, e.pid, how)
            return
        self.log.error("slot %d: worker pid %d died (%s)%s", w.slot, e.pid, how, error)
        if code in (APP_LOAD_ERROR, DEPENDENCY_ERROR) and not self.ever_ready:
            # The app cannot load, or the libraries are not the tested ones,
            # and nothing ever served: respawning will not fix a typo or an
            # install. Say why, once, and stop.
            what = (f"the app {self.app or '(chat demo)'} failed to load"
                    if code == APP_LOAD_ERROR else "workers refuse to start")
            self._give_up(f"{what}: {w.last_error or 'see the worker error above'}", now)
            return
        if w.state is State.FATAL:
            self.log.error("slot %d: FATAL after %d failed starts; not respawning",
                           w.slot, w.failures)
            if all(s.state is State.FATAL for s in self.slots):
                self._give_up("no worker can start: every slot is FATAL"
                              + (f" ({w.last_error})" if w.last_error else ""), now)
        else:
            self.log.info("slot %d: respawning in %.1fs", w.slot, max(0.0, w.respawn_at - now))

    def _on_channel_closed(self, e: ev.ChannelClosed, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is not None:
            w.channel_open = False

    def _on_heard(self, e: ev.Heard, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is not None:
            w.last_heard = now

    def _on_ready(self, e: ev.Ready, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is None or w.state is not State.STARTING:
            return
        if w.unresponsive:
            # Past --ready-timeout it is being stopped: READY now would put a
            # worker that is about to exit in service (and log it as READY,
            # then as died).
            self.log.warning("slot %d: worker pid %d said READY after --ready-timeout "
                             "(%.0fs), too late: it is being stopped; raise "
                             "--ready-timeout if the app takes this long to import",
                             w.slot, w.pid, self.cfg.ready_timeout)
            return
        w.ready(now)
        w.last_heard = now
        w.fresh_rss = e.rss
        self.ever_ready = True
        self.log.info("slot %d: worker pid %d READY", w.slot, w.pid)
        if self.cfg.max_memory and e.rss:
            self._check_fresh_size(w, e.rss)
        self.retry_held()

    def _on_load(self, e: ev.Load, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is not None:
            w.sessions, w.connections, w.broadcast = e.sessions, e.connections, e.broadcast
            w.pubsub = e.pubsub
            if e.moved_in is not None:
                w.moves_taken, w.held = e.moved_in, e.held
                self._prune_forwarding()

    def _prune_forwarding(self) -> None:
        """Drop the forwarding entries (`moved`) of retired workers whose sids no
        live worker may hold any more: every session handed over from them ended
        (or died with its worker), so a request naming one can only be stale,
        and gets Engine.IO's "unknown session" answer like any sid of a gone
        worker. Without this the map grew with every reload while the heirs lived.

        Only for workers that exited (a draining one may still hand more over),
        and only from the workers' own reports (`_may_hold`): not just the one
        the entry leads to, since a draining worker the entry led to before it
        followed to the heir (EMPTIED) may still have reported some."""
        if not self.moved:
            return
        gone = [source for source in self.moved if source not in self.by_id
                and not any(_may_hold(w, source) for w in self.by_id.values())]
        for source in gone:
            to = self.moved.pop(source)
            self.moved_count.pop(source, None)
            self.log.info("worker %d: no session handed over from retired worker %d is "
                          "left; its sids are no longer forwarded", to, source)

    def _on_acked(self, e: ev.Acked, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is not None:
            w.handoffs_acked = e.handoffs

    def _on_worker_error(self, e: ev.WorkerError, now: float) -> None:
        w = self.by_id.get(e.worker_id)
        if w is not None:
            w.last_error = e.text[:2000]

    def _check_fresh_size(self, w: WorkerProcess, rss: int) -> None:
        """--max-memory's rule: a limit that a fresh worker already exceeds cannot
        be met by replacing workers (each replacement is as big, and replacing
        drops clients): say so once, loudly, and replace none for it until a
        fresh worker fits again (a reload with a smaller app, or a restart with
        another limit). pm2 and gunicorn's max_requests restart blindly; this is
        ours."""
        limit = self.cfg.max_memory
        if rss <= limit * 2**20:
            self.memory_unmeetable = False
            return
        if not self.memory_unmeetable:
            self.memory_unmeetable = True
            self.log.error("slot %d: worker pid %d uses %.0f MiB fresh (at READY), above "
                           "--max-memory %d MiB: replacing workers cannot meet this limit, so "
                           "none is replaced for it until a fresh worker fits; raise "
                           "--max-memory above a fresh worker's size", w.slot, w.pid,
                           rss / 2**20, limit)

    def _on_memory(self, e: ev.Memory, now: float) -> None:
        limit = self.cfg.max_memory * 2**20
        for w in list(self.slots):
            rss = e.rss.get(w.worker_id)
            if not (w.accepts_new and rss and rss > limit):
                continue
            if w.fresh_rss is not None and w.fresh_rss > limit:
                continue  # its replacement would be as big (_check_fresh_size said so)
            if self.reloading is not None and self.reloading.busy_with(w.slot):
                continue
            w.over_memory = True
            self.log.warning("slot %d: worker pid %d uses %.0f MiB (limit %d); "
                             "replacing it gracefully", w.slot, w.pid, rss / 2**20,
                             self.cfg.max_memory)
            self.reload(f"memory limit (slot {w.slot})", now, [w.slot])

    def _on_command(self, e: ev.Command, now: float) -> None:
        self._out.append(ev.Answer(self._command(e.request, now)))

    def _command(self, request: dict, now: float) -> dict:
        cmd = request.get("cmd")
        if cmd == "stop":
            self.log.info("stop asked on the control socket: stopping gracefully")
            self.stop(now)
            return {"ok": True}
        if cmd == "reload":
            return self.reload("control socket", now)
        if cmd in ("drain", "undrain"):
            if self.stopping:
                return {"error": "the master is stopping"}
            if self.drained != (cmd == "drain"):
                self.drained = cmd == "drain"
                self.log.info("%s: the readiness check now answers %d", cmd,
                              self.readiness()[0])
            return {"ok": True, "drained": self.drained, "readiness": self.readiness()[0]}
        if cmd == "scale":
            spec = str(request.get("to", ""))
            try:
                n = int(spec)
            except ValueError:
                return {"error": f"scale takes N, +N or -N, not {spec!r}"}
            if spec[:1] in "+-":
                if n == 0:  # as the CLI refuses it (imcluster/cli.py _scale_target)
                    return {"error": f"scale {spec} changes nothing: give N, +N or -N, "
                                     "with N 1 or more"}
                n += self.pending_target
            return self.scale(n, now)
        return {"error": f"unknown command {cmd!r}"}

    def _on_request(self, e: ev.Request, now: float) -> None:
        if e.readiness:
            self._out.append(ev.Reply(e.conn, *self.readiness()))
            return
        if e.host_id is not None and e.host_id != self.host_id:
            # Another host's session (the router in front sent it here because that
            # host is down, draining out or unknown to it): no worker here knows
            # it, so say so at once, as Engine.IO does for any unknown session
            # (400); the client then makes a fresh handshake, which lands on a
            # live host.
            self._out.append(ev.Reply(
                e.conn, 400, f"Invalid session: it belongs to host {e.host_id}, "
                f"this is host {self.host_id}", "other_host"))
            return
        w = router.choose(self.slots, self.by_id, e.worker_id, self.moved, self.emptied)
        if w is None:
            self._out.append(ev.Hold(e.conn))
            return
        w.handoffs_sent += 1
        self._out.append(ev.HandOff(e.conn, w.worker_id))

    def _on_moving(self, e: ev.Moving, now: float) -> None:
        """A draining worker hands one session over: to the worker its earlier
        sessions went to while that one takes new sessions, else to the least
        loaded READY worker holding a slot; its sids then reach it (`moved`).

        One heir per worker: routing stays by the worker a sid names, and a
        polling session's later requests must find it (`moved` has one entry
        per worker, not per sid).

        A session whose channels were synced with a worker (`synced_with`,
        interest channels: workers/heir.py) goes to that one whatever the plan
        says now: to any other, the room messages published between its position
        and that worker's subscription would be lost without a word. It was on
        its way when the plan changed (that worker stopped taking sessions: the
        draining worker is told the new heir, `_replan_heirs`, and syncs the rest
        with it). A synced worker that drains takes it in and moves it on with
        its own sessions (like a session moved twice, `_follow_heir`); one that
        can take nothing any more (gone, hung, done moving) gets nothing: the
        session is closed, its client reconnects (and recovers its missed
        messages with --recovery-window)."""
        if e.synced_with is not None and e.synced_with != e.worker_id:
            self._move_to_synced(e)
            return
        heir = self.by_id.get(self.moved.get(e.worker_id, -1))
        if heir is None or not heir.accepts_new:
            heir = self.by_id.get(self.planned.get(e.worker_id, -1))
        if heir is None or not heir.accepts_new:
            heir = router.choose(self.slots, self.by_id, None)
        if heir is None or heir.worker_id == e.worker_id:
            # Said once per worker, not per session (thousands on a stop); the
            # worker's own drain line counts them ("handed over N, closed K").
            if e.worker_id not in self.unmoved:
                self.unmoved.add(e.worker_id)
                self.log.log(logging.INFO if self.stopping else logging.WARNING,
                             "worker %d: no READY worker to take its sessions over%s; "
                             "closing them", e.worker_id,
                             " (the cluster is stopping)" if self.stopping else "")
            self._out.append(ev.Move(e.conn, None))
            return
        if self.planned.get(e.worker_id, heir.worker_id) != heir.worker_id:
            # Not the one it readied (that one stopped taking sessions between two
            # events): this session arrives unprepared; ready it for the next ones.
            self.planned[e.worker_id] = heir.worker_id
            self._out.append(ev.Send(e.worker_id, ch.STOP, str(heir.worker_id).encode()))
        self._relay_move(e, heir)

    def _relay_move(self, e: ev.Moving, heir: WorkerProcess) -> None:
        heir.handoffs_sent += 1  # in its load until acknowledged
        heir.moves_sent += 1
        self.moved[e.worker_id] = heir.worker_id
        self.moved_count[e.worker_id] = self.moved_count.get(e.worker_id, 0) + 1
        # Entries leading here (W moved to V before, V now moves to X) stay on V
        # until V has moved all it could (`_follow_heir`): V still holds some of
        # W's sessions, and forwards requests for those that left.
        self._out.append(ev.Move(e.conn, heir.worker_id))

    def _move_to_synced(self, e: ev.Moving) -> None:
        """`_on_moving` for a session synced with worker `e.synced_with`: to it
        while it takes sessions or drains and has not moved all it held (EMPTIED:
        past that it takes none in); else closed."""
        heir = self.by_id.get(e.synced_with)
        if heir is None or not heir.channel_open or heir.unresponsive \
                or heir.state not in (State.READY, State.DRAINING) \
                or heir.worker_id in self.emptied:
            self.log.warning("worker %d: a session synced with worker %d, which can take "
                             "none any more (gone, hung or done draining), was on its way; "
                             "closing it (its client reconnects) rather than delivering it "
                             "elsewhere missing room messages", e.worker_id, e.synced_with)
            self._out.append(ev.Move(e.conn, None))
            return
        if not heir.accepts_new:
            self.log.info("worker %d: a session synced with worker %d, which drains now, "
                          "goes there all the same (it moves it on)", e.worker_id,
                          heir.worker_id)
        self._relay_move(e, heir)

    def _follow_heir(self, holder: int) -> None:
        """Point the entries leading to `holder` at the worker its own sessions
        went to (`moved[holder]`), if it has one: called once the holder moved
        all it could (EMPTIED) or exited, never at its first move (the sessions
        not moved yet must reach it: pointed at the heir, their requests got
        Engine.IO's "unknown session" there and the clients reconnected, from
        the second consecutive reload on). Keeps `moved` flat from then on."""
        heir = self.moved.get(holder)
        if heir is None:
            return
        for source, to in self.moved.items():
            if to == holder and source != holder:
                self.moved[source] = heir

    def _replan_heirs(self) -> None:
        """A draining worker whose planned heir stopped taking sessions (retired,
        hung, gone) before the worker emptied: choose another, and tell the worker
        (STOP again, with the new heir's id) so that it readies that one before
        its next session leaves (workers/heir.py). Sessions already on their way,
        synced with the first, still go to it (`_move_to_synced`). Called after every event
        while a plan exists; a few dict lookups each."""
        for source, heir_id in list(self.planned.items()):
            w = self.by_id.get(source)
            if w is None or w.state is not State.DRAINING or source in self.emptied:
                continue
            heir = self.by_id.get(heir_id)
            if heir is not None and heir.accepts_new:
                continue
            new = router.choose(self.slots, self.by_id, None)
            if new is None or new is w:
                # None READY now: the worker's next sessions get whatever worker
                # `_on_moving` finds then (or are closed); asked again next event.
                continue
            self.planned[source] = new.worker_id
            self.log.info("worker %d: its heir, worker %d, no longer takes sessions; "
                          "worker %d takes them instead", source, heir_id, new.worker_id)
            self._out.append(ev.Send(source, ch.STOP, str(new.worker_id).encode()))

    def _on_emptied(self, e: ev.Emptied, now: float) -> None:
        """A draining worker's sessions have moved: route its sids to its heir from
        now on, and tell it so (after everything already queued for it)."""
        w = self.by_id.get(e.worker_id)
        if w is None:
            return
        self.emptied.add(e.worker_id)
        self._follow_heir(e.worker_id)
        self._out.append(ev.Send(e.worker_id, ch.EMPTIED))

    def _on_forwarding(self, e: ev.Forwarding, now: float) -> None:
        """A worker got a request for a session it handed over: to the worker its
        sessions went to, while that one serves; else close it (the client's
        request fails, and it reconnects)."""
        heir = self.by_id.get(self.moved.get(e.worker_id, -1))
        if heir is None or not heir.serves_own or heir.worker_id == e.worker_id:
            self.log.warning("worker %d: a request for a session it handed over, and no "
                             "worker holds its sessions; closing it", e.worker_id)
            self._out.append(ev.Move(e.conn, None))
            return
        heir.handoffs_sent += 1
        self._out.append(ev.Move(e.conn, heir.worker_id))


def _may_hold(w: WorkerProcess, source: int) -> bool:
    """Whether worker `w` may hold a session handed over from worker `source` (one
    whose sid names it), by its last report (LOAD: `held`, `moved_in`): yes if it
    names `source`, or if it had not taken in every session the master relayed
    to it by then (a HANDOVER still in its channel could carry one)."""
    if w.moves_sent == 0:
        return False  # nothing was ever handed over to it
    return w.moves_taken != w.moves_sent or source in w.held
