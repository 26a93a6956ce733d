"""The master: one thread, one selectors loop.

It accepts on the port, lets the Router find each request's worker, passes
the fd over that worker's channel and closes its own copy. It spawns and
reaps workers, relays pub/sub messages between them, and serves the control
socket. Signal handlers only record the signal; the loop acts on it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque

import psutil

from imcluster import channel as ch
from imcluster import httpline
from imcluster.master.control import ControlServer
from imcluster.master.lifecycle import APP_LOAD_ERROR, State, Worker
from imcluster.master.metrics import MetricsServer
from imcluster.master.rolling import Reload, replacement_failed
from imcluster.master.router import Router
from imcluster.redact import redact_url
from imcluster.settings import Config

log = logging.getLogger("imcluster.master")

TICK = 0.25
# Relay bytes queued for one worker before the master drops further relay
# messages to it (a worker that stops reading must not grow the master).
MAX_RELAY_BACKLOG = 64 << 20
# TERM first; KILL this long after if the process is still there.
KILL_GRACE = 5.0
MEMORY_CHECK_INTERVAL = 2.0
MAX_WORKERS = 256
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_WORKER = 3


class Master:
    def __init__(self, cfg: Config, app: str | None):
        self.cfg = cfg
        self.app = app
        self.selector = selectors.DefaultSelector()
        self.router = Router(self.selector, cfg.header_timeout, cfg.max_pending, self._deliver)
        self.slots: list[Worker] = []
        self.by_id: dict[int, Worker] = {}
        self.by_pid: dict[int, Worker] = {}
        self.retiring: list[Worker] = []
        self.next_worker_id = 1
        self.listener: socket.socket | None = None
        self.accepting = False
        self.queued_socks = 0
        self.signals: deque[int] = deque()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = EXIT_OK
        self.ever_ready = False
        self.started_at = time.time()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.reloading: Reload | None = None
        self.deferred_scale: int | None = None
        self.last_reload: dict | None = None
        self.next_memory_check = 0.0
        self.counters = {"accepted": 0, "handoffs": 0, "handbacks": 0, "rerouted": 0,
                         "relayed": 0, "relay_dropped": 0}

    # ---- start and the loop -------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        self._bind()
        self._install_signals()
        self.control = ControlServer(self.selector, self.cfg.control, self._control)
        if self.cfg.metrics:
            try:
                self.metrics = MetricsServer(self.selector, self.cfg.metrics, self.status)
            except OSError as e:
                raise SystemExit("imcluster: cannot serve metrics on {}:{}: {}".format(
                    *self.cfg.metrics, e.strerror or e)) from None
            log.info("metrics at http://%s:%d/metrics", *self.cfg.metrics)
        for slot in range(self.cfg.workers):
            w = Worker(slot=slot)
            self.slots.append(w)
            self.spawn(w)
        log.info("listening on http://%s:%d with %d workers (%s), control socket %s",
                 *self.cfg.bind, self.cfg.workers,
                 "redis " + redact_url(self.cfg.redis) if self.cfg.redis else "master relay",
                 self.cfg.control)
        try:
            next_tick = 0.0
            while not (self.stopping and self._all_exited()):
                for key, mask in self.selector.select(TICK):
                    key.data(key, mask)
                self._handle_signals()
                # Timers run once a tick, not after every wake-up: under load the
                # loop wakes thousands of times a second.
                now = time.monotonic()
                if now >= next_tick:
                    self.manage(now)
                    next_tick = now + TICK
        finally:
            self._cleanup()
        return self.exit_code

    def _bind(self) -> None:
        host, port = self.cfg.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            s.close()
            raise SystemExit(f"imcluster: cannot listen on {host}:{port}: {e.strerror}") from None
        s.listen(4096)
        s.setblocking(False)
        self.listener = s
        self._accepting(True)

    def _accepting(self, on: bool) -> None:
        if on == self.accepting or self.listener is None:
            return
        if on:
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)
        else:
            self.selector.unregister(self.listener)
        self.accepting = on

    def _install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        self._wake_w = wfd

        def record(signum: int, frame: object) -> None:
            self.signals.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                    signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, record)
        self.selector.register(rfd, selectors.EVENT_READ, self._on_wakeup)

    def _on_wakeup(self, key: selectors.SelectorKey, mask: int) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig == signal.SIGCHLD:
                self.reap()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second %s: stopping now", signal.Signals(sig).name)
                    self.stop_deadline = 0.0
                else:
                    log.info("%s: stopping gracefully", signal.Signals(sig).name)
                    self.stop()
            elif self.stopping:
                log.warning("%s ignored while stopping", signal.Signals(sig).name)
            elif sig == signal.SIGHUP:
                self.reload("SIGHUP")
            elif sig == signal.SIGTTIN:
                self.scale(len(self.slots) + 1)
            elif sig == signal.SIGTTOU:
                self.scale(len(self.slots) - 1)

    def manage(self, now: float) -> None:
        """Timers: held connections, respawns, reloads, health checks, escalation."""
        self.router.expire(now)
        if self.control is not None:
            self.control.expire()
        if self.metrics is not None:
            self.metrics.expire()
        self.reap()
        if not self.stopping:
            for w in self.slots:
                if w.state is State.BACKOFF and now >= w.respawn_at:
                    self.spawn(w)
            self._check_health(now)
            if self.reloading is not None:
                self._advance_reload(now)
        for w in self._processes():
            if not w.pid:
                continue
            if w.state is State.DRAINING and now >= w.drain_deadline:
                log.warning("slot %d: worker pid %d still draining after %.0fs; stopping it",
                            w.slot, w.pid, self.cfg.graceful_timeout)
                self._terminate(w, stopping=True)
            if w.kill_at and now >= w.kill_at:
                log.warning("slot %d: worker pid %d ignored SIGTERM; killing it", w.slot, w.pid)
                self._kill(w, signal.SIGKILL)
                w.kill_at = 0.0
        if self.stopping and now >= self.stop_deadline:
            for w in self._processes():
                if w.pid:
                    self._kill(w, signal.SIGKILL)
        if self.queued_socks < self.cfg.max_queued // 2 and not self.stopping:
            self._accepting(True)

    def _check_health(self, now: float) -> None:
        """Replace hung workers (silent channel) and, gracefully, bloated ones."""
        for w in self._processes():
            if not w.pid or w.unresponsive or w.state is State.STOPPING:
                continue
            if w.state is State.STARTING:
                if now - w.started_at > self.cfg.ready_timeout:
                    log.error("slot %d: worker pid %d not READY after %.0fs; stopping it",
                              w.slot, w.pid, self.cfg.ready_timeout)
                    w.unresponsive = True
                    self._terminate(w)
            elif now - w.last_heard > self.cfg.heartbeat_timeout:
                log.error("slot %d: worker pid %d silent for %.1fs (event loop blocked?); "
                          "replacing it", w.slot, w.pid, now - w.last_heard)
                w.unresponsive = True
                self._terminate(w)
        if self.cfg.max_memory and now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            limit = self.cfg.max_memory * 2**20
            for w in self.slots:
                if w.accepts_new and (rss := _rss(w.pid)) and rss > limit:
                    busy = self.reloading is not None and (
                        w.slot == self.reloading.slot or w.slot in self.reloading.queue)
                    if not busy:
                        log.warning("slot %d: worker pid %d uses %.0f MiB (limit %d); "
                                    "replacing it gracefully", w.slot, w.pid, rss / 2**20,
                                    self.cfg.max_memory)
                        self.reload(f"memory limit (slot {w.slot})", [w.slot])

    # ---- workers: spawn, reap, stop ----------------------------------------------

    def spawn(self, w: Worker) -> None:
        """Start a fresh process for slot `w` with a new worker id."""
        wid = self._new_worker_id()
        master_end, worker_end = ch.socketpair()
        master_end.setblocking(False)
        spec = {
            "app": self.app, "worker_id": wid, "slot": w.slot,
            "redis": self.cfg.redis, "redis_silence_timeout": self.cfg.redis_silence_timeout,
            "keepalive": self.cfg.keepalive,
            "log_level": self.cfg.log_level, "cwd": os.getcwd(),
            "graceful_timeout": self.cfg.graceful_timeout,
            "cors_origins": self.cfg.cors_origins,
            "ws_compression": self.cfg.ws_compression,
        }
        fd = worker_end.fileno()
        os.set_inheritable(fd, True)
        # Every user of the host can read a command line (ps): it names the
        # worker and nothing else. The spec, Redis password and all, is the
        # first message on the channel.
        argv = [sys.executable, "-m", "imcluster.workers", "--channel-fd", str(fd),
                "--slot", str(w.slot), "--worker-id", str(wid)]
        try:
            # Like pm2's NODE_APP_INSTANCE: an app can run a task in one slot only.
            # IMCLUSTER_CONTROL names the cluster (imcluster.run_once locks beside it).
            env = {**os.environ, "IMCLUSTER_SLOT": str(w.slot), "IMCLUSTER_WORKER_ID": str(wid),
                   "IMCLUSTER_CONTROL": self.cfg.control}
            pid = os.posix_spawn(sys.executable, argv, env,
                                 setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                            signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU))
        except OSError as e:
            master_end.close()
            worker_end.close()
            log.error("slot %d: cannot spawn a worker: %s", w.slot, e)
            w.to(State.STARTING)
            w.on_exit(-1, time.monotonic())  # counts as a failed start: backoff
            return
        finally:
            # Closing the child's end here is what lets us see EOF when it dies.
            if worker_end.fileno() >= 0:
                worker_end.close()
        w.to(State.STARTING)
        w.worker_id, w.pid, w.channel = wid, pid, master_end
        w.started_at = w.last_heard = time.monotonic()
        w.exit_status, w.stats, w.last_error = None, {}, ""
        w.handoffs_sent = w.handoffs_delivered = 0
        self.by_id[wid] = w
        self.by_pid[pid] = w
        self.selector.register(master_end, selectors.EVENT_READ, self._channel_handler(w))
        # First on the new channel (the queue of a dead predecessor was emptied
        # when its channel closed): the worker reads nothing else before it.
        self._send(w, ch.SPEC, ch.encode_json(spec))
        log.info("slot %d: spawned worker %d, pid %d", w.slot, wid, pid)

    def _new_worker_id(self) -> int:
        while True:
            wid = self.next_worker_id
            self.next_worker_id = self.next_worker_id % 0xFFFF + 1
            if wid not in self.by_id:
                return wid

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.by_pid.pop(pid, None)
            if w is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self._close_channel(w)
            self.by_id.pop(w.worker_id, None)
            was = w.state
            now = time.monotonic()
            w.on_exit(code, now)
            how = f"signal {-code}" if code < 0 else f"code {code}"
            if w in self.retiring:
                self.retiring.remove(w)
                log.info("slot %d: retired worker pid %d exited (%s)", w.slot, pid, how)
                continue
            if self.reloading is not None and w is self.reloading.new:
                log.error("slot %d: replacement worker pid %d exited (%s)%s", w.slot, pid, how,
                          f": {w.last_error}" if w.last_error else "")
                continue  # _advance_reload abandons the reload
            if self.stopping or was is State.STOPPING:
                log.info("slot %d: worker pid %d exited (%s)", w.slot, pid, how)
                continue
            log.error("slot %d: worker pid %d died (%s)%s", w.slot, pid, how,
                      f": {w.last_error}" if w.last_error else "")
            if code == APP_LOAD_ERROR and not self.ever_ready:
                # The app cannot load and nothing ever served: respawning will
                # not fix a typo. Say why, once, and stop.
                self._give_up(f"the app {self.app or '(chat demo)'} failed to load: "
                              f"{w.last_error or 'see the worker error above'}")
                return
            if w.state is State.FATAL:
                log.error("slot %d: FATAL after %d failed starts; not respawning",
                          w.slot, w.failures)
                if all(s.state is State.FATAL for s in self.slots):
                    self._give_up("no worker can start: every slot is FATAL"
                                  + (f" ({w.last_error})" if w.last_error else ""))
            else:
                log.info("slot %d: respawning in %.1fs", w.slot,
                         max(0.0, w.respawn_at - now))

    def _give_up(self, why: str) -> None:
        log.critical("%s; exiting", why)
        self.exit_code = EXIT_NO_WORKER
        self.stop()

    def stop(self) -> None:
        """Stop accepting, ask every worker to exit, force it after the timeout."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.cfg.graceful_timeout
        self._accepting(False)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.router.close_all()
        for w in self._processes():
            if w.state in (State.BACKOFF, State.FATAL):
                w.to(State.EXITED)
            elif w.pid and w.state is not State.STOPPING:
                self._ask_stop(w)

    def _ask_stop(self, w: Worker) -> None:
        w.to(State.STOPPING)
        self._kill(w, signal.SIGTERM)

    def _terminate(self, w: Worker, stopping: bool = False) -> None:
        """TERM now, KILL after KILL_GRACE. With `stopping`, the slot is not refilled."""
        if stopping and w.state is not State.STOPPING:
            w.to(State.STOPPING)
        self._kill(w, signal.SIGTERM)
        w.kill_at = time.monotonic() + KILL_GRACE

    def _retire(self, w: Worker, now: float) -> None:
        """Take a worker out of service for good: no new sessions, drain, exit."""
        w.retired = True
        if not w.pid:
            if w.state in (State.BACKOFF, State.FATAL):
                w.to(State.EXITED)
            return
        self.retiring.append(w)
        if w.state is State.READY:
            w.to(State.DRAINING)
            w.drain_deadline = now + self.cfg.graceful_timeout
            self._send(w, ch.STOP)
        elif w.state is not State.DRAINING:
            self._terminate(w, stopping=True)

    def _send(self, w: Worker, kind: bytes, payload: bytes = b"") -> None:
        for f in ch.frames(kind, payload):
            w.outq.append((f, None))
            w.out_bytes += len(f)
        self._flush(w)

    # ---- operations: reload and scale ----------------------------------------------

    def reload(self, reason: str, slots: list[int] | None = None) -> dict:
        """Start (or extend) a rolling reload of `slots` (default: all)."""
        if self.stopping:
            return {"error": "the master is stopping"}
        slots = list(range(len(self.slots))) if slots is None else slots
        if self.reloading is None:
            self.reloading = Reload(reason)
            log.info("reload (%s): replacing %d worker(s), one at a time", reason, len(slots))
        self.reloading.add(slots)
        self._advance_reload(time.monotonic())
        return {"ok": True, "reload": self.reloading.describe() if self.reloading else None}

    def _advance_reload(self, now: float) -> None:
        r = self.reloading
        while r is not None:
            if r.new is not None:
                why = replacement_failed(r.new, now, r.deadline)
                if why is not None:
                    self._abandon_reload(r, why)
                    return
                if r.new.state is not State.READY:
                    return
                old, new = r.old, r.new
                new.retired = False
                self.slots[r.slot] = new
                r.new = None
                r.replaced += 1
                log.info("slot %d: worker pid %d replaced by pid %d; draining the old one",
                         r.slot, old.pid, new.pid)
                self._retire(old, now)
                self.router.retry_waiting()
            if r.old is not None:
                if r.old.pid:
                    return  # still draining
                r.old = None
            if not r.queue:
                log.info("reload (%s) complete: %d worker(s) replaced", r.reason, r.replaced)
                self.last_reload = {"ok": True, "reason": r.reason, "replaced": r.replaced,
                                    "finished": time.time()}
                self._end_reload()
                return
            slot = r.queue.popleft()
            if slot >= len(self.slots):
                continue  # scaled away meanwhile
            old = self.slots[slot]
            r.slot = slot
            if not old.pid:  # BACKOFF or FATAL: nothing to drain, start it now
                old.failures = 0
                self.spawn(old)
                continue
            new = Worker(slot=slot, restarts=old.restarts, retired=True)
            self.spawn(new)
            if not new.pid:
                self._abandon_reload(r, "cannot spawn a new worker")
                return
            r.new, r.old = new, old
            r.deadline = now + self.cfg.ready_timeout

    def _abandon_reload(self, r: Reload, why: str) -> None:
        msg = f"slot {r.slot}: {why}"
        log.error("reload (%s) abandoned: %s; the old workers keep serving", r.reason, msg)
        if r.new is not None and r.new.pid:
            self._terminate(r.new, stopping=True)
            self.retiring.append(r.new)  # reaped like any retired worker
        self.last_reload = {"ok": False, "reason": r.reason, "error": msg,
                            "replaced": r.replaced, "finished": time.time()}
        self._end_reload()

    def _end_reload(self) -> None:
        self.reloading = None
        if self.deferred_scale is not None:
            self.scale(self.deferred_scale)

    def scale(self, target: int) -> dict:
        """Grow or shrink to `target` workers; removed workers drain first."""
        if self.stopping:
            return {"error": "the master is stopping"}
        target = max(1, min(int(target), MAX_WORKERS))
        if target < len(self.slots) and self.reloading is not None:
            # Slots being replaced must not vanish under the reload: shrink after it.
            self.deferred_scale = target
            log.info("scale to %d deferred until the reload ends", target)
            return {"ok": True, "workers": target, "deferred": True}
        self.deferred_scale = None
        now = time.monotonic()
        before = len(self.slots)
        while len(self.slots) < target:
            w = Worker(slot=len(self.slots))
            self.slots.append(w)
            self.spawn(w)
        while len(self.slots) > target:
            self._retire(self.slots.pop(), now)
        if target != before:
            log.info("scaled from %d to %d workers", before, target)
        return {"ok": True, "workers": target}

    def _kill(self, w: Worker, sig: int) -> None:
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass

    def _processes(self) -> list[Worker]:
        extra = [self.reloading.new] if self.reloading and self.reloading.new else []
        return self.slots + self.retiring + extra

    def _all_exited(self) -> bool:
        return all(w.pid == 0 for w in self._processes())

    # ---- the channel ---------------------------------------------------------

    def _channel_handler(self, w: Worker):
        joiner = ch.Joiner()

        def on_event(key: selectors.SelectorKey, mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                self._flush(w)
            if mask & selectors.EVENT_READ and w.channel is not None:
                self._read_channel(w, joiner)

        return on_event

    def _read_channel(self, w: Worker, joiner: ch.Joiner) -> None:
        for _ in range(64):  # bounded: one busy worker must not starve the loop
            try:
                frame = ch.recv_frame(w.channel)
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionResetError, ValueError, OSError) as e:
                log.warning("slot %d: channel error: %s", w.slot, e)
                frame = None
            if frame is None:
                self._close_channel(w)
                return
            w.last_heard = time.monotonic()
            kind, flags, payload, fds = frame
            if kind == ch.HANDBACK:
                for fd in fds:
                    self.counters["handbacks"] += 1
                    self.router.add(socket.socket(fileno=fd), time.monotonic())
                continue
            for fd in fds:  # fds on any other frame are a protocol error
                os.close(fd)
            whole = joiner.feed(kind, flags, payload)
            if whole is None:
                continue
            if kind == ch.PUBLISH:
                self._relay(w, whole)
            elif kind == ch.STATS:
                try:
                    w.stats = json.loads(whole)
                except ValueError:
                    pass
                if w.outq:
                    self._flush(w)  # the hand-off window may have opened
            elif kind == ch.READY:
                if w.state is State.STARTING:
                    w.to(State.READY)
                    self.ever_ready = True
                    log.info("slot %d: worker pid %d READY", w.slot, w.pid)
                    self.router.retry_waiting()
            elif kind == ch.ERROR:
                w.last_error = whole.decode(errors="replace")[:2000]

    def _relay(self, source: Worker, payload: bytes) -> None:
        frames = list(ch.frames(ch.RELAY, payload))
        for w in self._processes():
            if w is source or w.channel is None:
                continue
            if w.out_bytes > MAX_RELAY_BACKLOG:
                self.counters["relay_dropped"] += 1
                if self.counters["relay_dropped"] in (1, 100, 10000):
                    log.warning("slot %d: worker is not reading its channel; relay "
                                "messages dropped (%d so far)", w.slot,
                                self.counters["relay_dropped"])
                continue
            for f in frames:
                w.outq.append((f, None))
                w.out_bytes += len(f)
            self.counters["relayed"] += 1
            self._flush(w)

    def _flush(self, w: Worker) -> None:
        chan = w.channel
        if chan is None:
            return
        while w.outq:
            frame, sock = w.outq[0]
            if sock is not None and w.unconfirmed >= self.cfg.handoff_window:
                # The kernel's queue dies with the worker; ours can be re-routed.
                # Wait for the worker to confirm what it has (STATS) first.
                break
            try:
                if sock is None:
                    chan.send(frame)
                else:
                    chan.sendmsg([frame], ch.fd_ancillary(sock.fileno()))
            except (BlockingIOError, InterruptedError):
                self.selector.modify(chan, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                     self.selector.get_key(chan).data)
                return
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    log.warning("slot %d: channel send failed: %s", w.slot, e)
                self._close_channel(w)
                return
            w.outq.popleft()
            w.out_bytes -= len(frame)
            if sock is not None:
                w.handoffs_delivered += 1
                sock.close()
                self.queued_socks -= 1
        key = self.selector.get_key(chan)
        if key.events & selectors.EVENT_WRITE:
            self.selector.modify(chan, selectors.EVENT_READ, key.data)

    def _close_channel(self, w: Worker) -> None:
        """The worker is gone (or going): stop using it and rescue what it was sent."""
        if w.channel is None:
            return
        try:
            self.selector.unregister(w.channel)
        except (KeyError, ValueError):
            pass
        w.channel.close()
        w.channel = None
        rescued = 0
        while w.outq:
            _, sock = w.outq.popleft()
            if sock is not None:
                self.queued_socks -= 1
                rescued += 1
                self.router.add(sock, time.monotonic())
        w.out_bytes = 0
        if rescued:
            self.counters["rerouted"] += rescued
            log.warning("slot %d: re-routed %d connections queued for a dead worker",
                        w.slot, rescued)

    # ---- routing -------------------------------------------------------------

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: pause accepting until connections drain
                    # rather than spin on a listener that stays readable.
                    log.error("accept: %s; pausing accepts", e.strerror)
                    self._accepting(False)
                    return
                continue  # ECONNABORTED and friends: that client is gone
            self.counters["accepted"] += 1
            self.router.add(sock, now)

    def _deliver(self, sock: socket.socket, line: httpline.RequestLine) -> bool:
        """Queue `sock` for the worker that owns its sid, or the least loaded READY one."""
        wid = line.worker_id
        w = self.by_id.get(wid) if wid is not None else None
        if w is None or not w.serves_own:
            ready = [x for x in self.slots if x.accepts_new]
            if not ready:
                return False
            w = min(ready, key=lambda x: (x.load, x.handoffs_sent))
        w.outq.append((ch.HANDOFF + b"\x00", sock))
        w.out_bytes += 2
        w.handoffs_sent += 1
        self.queued_socks += 1
        self.counters["handoffs"] += 1
        self._flush(w)
        if self.queued_socks >= self.cfg.max_queued:
            self._accepting(False)
        return True

    # ---- control -------------------------------------------------------------

    def _control(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "stop":
            log.info("stop asked on the control socket: stopping gracefully")
            self.stop()
            return {"ok": True}
        if cmd == "reload":
            return self.reload("control socket")
        if cmd == "scale":
            return self._scale_request(str(request.get("to", "")))
        return {"error": f"unknown command {cmd!r}"}

    def _scale_request(self, spec: str) -> dict:
        try:
            n = int(spec)
        except ValueError:
            return {"error": f"scale takes N, +N or -N, not {spec!r}"}
        if spec[:1] in "+-":
            n += len(self.slots)
        if n < 1:
            return {"error": "at least one worker must remain"}
        return self.scale(n)

    def status(self) -> dict:
        now = time.monotonic()
        workers = []
        for w in self._processes():
            cpu = rss = cpu_time = None
            if w.pid:
                cpu, rss, cpu_time = _proc_usage(w.pid)
            workers.append({
                "slot": w.slot, "pid": w.pid or None, "worker_id": w.worker_id,
                "state": w.state.value, "retired": w in self.retiring,
                "uptime": round(now - w.started_at, 1) if w.pid else None,
                "restarts": w.restarts, "cpu": cpu, "cpu_time": cpu_time, "rss": rss,
                "connections": w.stats.get("connections"),
                "sessions": w.stats.get("sessions"),
                "handoffs": w.handoffs_sent, "last_error": w.last_error or None,
                "exit_status": w.exit_status, "unresponsive": w.unresponsive,
                "replacement": self.reloading is not None and w is self.reloading.new,
            })
        return {
            "master": {
                "pid": os.getpid(), "uptime": round(time.time() - self.started_at, 1),
                "fds": _count_fds(), "bind": "{}:{}".format(*self.cfg.bind),
                "pending": len(self.router), "queued": self.queued_socks,
                "stopping": self.stopping, "broadcast": "redis" if self.cfg.redis else "relay",
                "redis": redact_url(self.cfg.redis),
                "counters": {**self.counters, **self.router.counters},
            },
            "reload": self.reloading.describe() if self.reloading else None,
            "last_reload": self.last_reload,
            "workers": workers,
        }

    def _cleanup(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        self.router.close_all()
        if self.listener is not None:
            self.listener.close()
        for w in self._processes():
            self._close_channel(w)
        log.info("master exiting (code %d)", self.exit_code)


def _count_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


_PROCS: dict[int, psutil.Process] = {}


def _process(pid: int) -> psutil.Process:
    """One psutil handle per worker pid, kept so cpu_percent measures between calls."""
    p = _PROCS.get(pid)
    if p is None:
        for dead in [k for k in _PROCS if not psutil.pid_exists(k)]:
            del _PROCS[dead]
        p = _PROCS[pid] = psutil.Process(pid)
    return p


def _rss(pid: int) -> int | None:
    try:
        return _process(pid).memory_info().rss
    except psutil.Error:
        return None


def _proc_usage(pid: int) -> tuple[float | None, int | None, float | None]:
    """CPU percent since the previous call for this pid, RSS bytes, and CPU seconds
    (user + system) since it started."""
    try:
        p = _process(pid)
        with p.oneshot():
            t = p.cpu_times()
            return p.cpu_percent(interval=None), p.memory_info().rss, t.user + t.system
    except psutil.Error:
        return None, None, None
