"""The master's control socket, from Python: what the CLI uses, and what scripts use.

    from imcluster.control import Control

    ctl = Control("/run/imcluster-8000.sock")      # or Control.for_port(8000)
    st = ctl.status()                              # Status: typed, with units
    print(st.ready, [(w.slot, w.pid, w.state) for w in st.workers])
    result = ctl.reload()                          # waits; ReloadResult(ok, replaced, error)
    ctl.scale("+1"); ctl.stop()

The socket is a Unix stream socket, owner-only (mode 0600), served from the
master's event loop: one JSON request per connection (`{"cmd": "status"}`,
`{"cmd": "scale", "to": "+1"}`, `"reload"`, `"stop"`), one JSON answer line.
Every call raises `ControlError` (its text says why, for an operator) when
the master cannot be reached, does not answer in time, or refuses.

Answers: `{"error": TEXT}` for a refusal; `stop` answers `{"ok": true}`;
`reload` `{"ok": true, "id": N, "reload": RELOAD}` (with `"queued": true` when
asked while a reload runs: a follow-up reload with id N starts when it ends;
the ask is answered when `last_reload.id` reaches N); `scale` `{"ok": true, "workers": N}`
(with `"deferred": true` when asked while a reload runs: every scale, up or
down, happens when it ends, the last target asked winning, and `"replaces": M`
the target deferred before that this one replaced, or null; +N/-N count from
the deferred target, if any). `status`
answers the whole cluster, these keys and no others. Clocks: "monotonic" is
measured on the master's (or worker's) monotonic clock, immune to clock steps;
"wall" on the system clock. Counts are cumulative since the master started
unless said otherwise.

    key                      type         unit, clock: meaning
    master                   obj          the master process:
    master.pid               int          the master's pid
    master.uptime            float        s, wall: since the master started (a clock step shows)
    master.fds               int|null     descriptors the master holds (null: /proc unreadable)
    master.bind              str          "HOST:PORT" it listens on
    master.pending           int          connections held before routing (request line not yet
                                          read, or no READY worker)
    master.queued            int          connections routed but not yet passed to their worker
    master.stopping          bool         a graceful stop is under way
    master.broadcast         str          "relay" (through the master) or "redis"
    master.redis             str|null     the Redis URL(s), passwords masked as ***
    master.redis_channels    str|null     with --redis: "single" or "interest"
    master.redis_channel     str|null     with --redis: the channel's name (--redis-channel)
    master.host_id           int          --host-id: this host's number behind a router (0: alone)
    master.drained           bool         `imcluster drain` in force: no new sessions via the router
    master.readiness         int          what GET /_imcluster/ready answers now: 200, 404, 503
    master.counters          obj          what the master counted:
    master.counters.accepted     int      connections accepted
    master.counters.routed       int      connections whose request line was read and routed
    master.counters.bad_request  int      answered 400 (not HTTP, a bad request line)
    master.counters.too_long     int      answered 414 (request line too long)
    master.counters.timeout      int      answered 408 (no request line within --header-timeout)
    master.counters.unavailable  int      answered 503 (no READY worker in time)
    master.counters.evicted      int      answered 408 to make room (too many pending)
    master.counters.other_host   int      answered 400: the sid names another host
    master.counters.handoffs     int      client sockets passed to workers
    master.counters.handbacks    int      sockets workers passed back (another worker's request)
    master.counters.handovers    int      sessions a retiring worker handed over (--handover)
    master.counters.forwarded    int      requests for a handed-over session that reached its old
                                          worker and were passed to the new owner (--handover)
    master.counters.rerouted     int      queued for a worker that died, routed again
    master.counters.relayed      int      broadcasts relayed (one per receiving worker)
    master.counters.relay_dropped int     relayed broadcasts dropped for a worker not reading
    workers                  list         every process the master tracks: slots, retiring
                                          workers, a reload's replacement
    workers[].slot           int          0..N-1; a replacement keeps its predecessor's
    workers[].pid            int|null     null while the slot has no process
    workers[].worker_id      int          unique for the master's life; its sids name it
    workers[].state          str          QUEUED STARTING READY DRAINING STOPPING EXITED
                                          BACKOFF FATAL
    workers[].retired        bool         out of service for good (draining, then exits)
    workers[].replacement    bool         a reload's new worker, not yet in its slot
    workers[].uptime         float|null   s, monotonic: since this process was spawned
    workers[].restarts       int          times the slot's process was replaced after exiting,
                                          or for going over --max-memory
    workers[].cpu            float|null   % of one core since the previous status (psutil;
                                          0.0 at the first)
    workers[].cpu_time       float|null   s of CPU (user + system) since the process started
    workers[].rss            int|null     bytes of resident memory
    workers[].connections    int|null     TCP connections it serves, from its last LOAD
                                          (at most 1 s old; null before the first)
    workers[].sessions       int|null     Engine.IO sessions it holds, from its last LOAD
    workers[].broadcast      str|null     with --redis, from its last LOAD: "ok", "subscription
                                          down" (others' broadcasts miss its clients),
                                          "publishing down" (its own miss the others), "down";
                                          null with the master relay
    workers[].pubsub         obj|null     with --redis, from its last LOAD: received (messages
                                          Redis delivered to it since it started: the cost
                                          of the channel scheme), channels (held now),
                                          published (messages it sent); on a Redis
                                          Cluster also resubscribed (channels subscribed
                                          again after a slot moved or a failover) and
                                          resent (publishes refused, slot moved, re-sent)
    workers[].handoffs       int          client sockets the master routed to this process
    workers[].last_error     str|null     why it last failed (app import error, exit...)
    workers[].exit_status    int|null     its last exit code (negative: killed by that signal)
    workers[].unresponsive   bool         silent past --heartbeat-timeout or --ready-timeout;
                                          being replaced
    reload                   obj|null     the rolling reload in progress:
    reload.id                int          the reload's number (1, 2, ... since the master started)
    reload.reason            str          who asked: "SIGHUP", "control socket", "memory limit..."
    reload.slot              int|null     the slot being replaced now
    reload.phase             str          "starting" (the new worker), "draining" (the old),
                                          "next"
    reload.queued            list[int]    slots still to replace, in order
    reload.replaced          int          workers replaced so far
    reload.new_pid           int|null     the replacement's pid
    reload.old_pid           int|null     the pid being drained
    reload.follow_up         str|null     who asked for the full reload queued to start when
                                          this one ends (every ask made meanwhile joins it)
    reload.scale_to          int|null     the number of workers a scale asked meanwhile sets
                                          when this reload ends (before any follow-up starts)
    last_reload              obj|null     how the last reload ended:
    last_reload.id           int          as reload.id
    last_reload.ok           bool         every slot was replaced
    last_reload.reason       str          as reload.reason
    last_reload.replaced     int          workers replaced before it ended
    last_reload.error        str          (only when not ok) why it stopped
    last_reload.finished     float        s, wall: Unix time it ended (the master's monotonic
                                          clock plus the wall offset taken at its start)
    forwarding               list         session hand-over (--handover): where the sessions of
                                          each worker that handed them over live now, while that
                                          worker holds one whose sid names `from` ([] when none):
    forwarding[].from        int          the worker id the sids name (a retired worker)
    forwarding[].to          int          the worker id that holds them now: requests naming
                                          them go there once `from` has exited
    forwarding[].sessions    int          sessions handed over from `from` (counted as they
                                          moved; some may have ended since)
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

from imcluster.settings import default_control_paths, find_control


class ControlError(Exception):
    """The control socket cannot be reached or answered badly; the text says why."""


class ControlRefused(ControlError):
    """The master was reached and refused the command (a bad argument, or not now);
    the text is the master's reason. The CLI exits 1 for it, 4 only when the master
    cannot be reached."""


class ReloadTimeout(ControlError):
    """A reload waited for has not ended in time (it goes on in the master)."""


class StopTimeout(ControlError):
    """A stop waited for has not ended in time (the master goes on stopping)."""


def request(path: str, cmd: str, timeout: float = 5.0, looked_in: tuple[str, ...] = (),
            **args) -> dict:
    """Send one command, return the master's answer (a dict); ControlError on failure.

    `looked_in`: the other default places searched for the socket, named in the
    error when there is none at `path`.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            also = [p for p in looked_in if p != path]
            where = f"{path} (nor at {', '.join(also)})" if also else path
            raise ControlError(f"no control socket at {where}: is imcluster running "
                               "(and is this its --control path)?") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the user that "
                               "runs imcluster") from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing answers on {path}: the master is not running "
                               "(stale socket file)") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"the master did not answer on {path} within {timeout}s") from None
    finally:
        s.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"unreadable answer from {path}") from None
    if isinstance(answer, dict) and "error" in answer:
        raise ControlRefused(answer["error"])
    return answer


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process as the master sees it.

    `state` is one of QUEUED (waiting for a start turn, `--max-starting`),
    STARTING, READY, DRAINING, STOPPING, EXITED, BACKOFF, FATAL. A `retired`
    worker is draining after its replacement took its slot; a `replacement` is
    starting to take a slot over during a reload.
    """

    slot: int                 # 0..N-1; a replacement keeps its predecessor's slot
    pid: int | None           # None while the slot has no process (BACKOFF, FATAL)
    worker_id: int            # unique for the master's life; every sid it makes names it
    state: str
    retired: bool
    replacement: bool
    uptime_s: float | None    # seconds since this process was spawned
    restarts: int             # times this slot's process was replaced after exiting
    cpu_percent: float | None  # of one core, since the previous status call
    rss_bytes: int | None
    connections: int | None   # TCP connections the worker serves (last report, ~1 s old)
    sessions: int | None      # Engine.IO sessions it holds (last report)
    broadcast: str | None     # with Redis: "ok", "subscription down", "publishing down", "down"
    handoffs: int             # client sockets the master has passed to it
    last_error: str | None    # why it last failed (app import error, exit status...)
    exit_status: int | None
    unresponsive: bool        # silent on its channel past --heartbeat-timeout

    @classmethod
    def from_json(cls, w: dict) -> WorkerStatus:
        return cls(slot=w["slot"], pid=w["pid"], worker_id=w["worker_id"], state=w["state"],
                   retired=w["retired"], replacement=w["replacement"], uptime_s=w["uptime"],
                   restarts=w["restarts"], cpu_percent=w["cpu"], rss_bytes=w["rss"],
                   connections=w["connections"], sessions=w["sessions"],
                   broadcast=w.get("broadcast"),
                   handoffs=w["handoffs"], last_error=w["last_error"],
                   exit_status=w["exit_status"], unresponsive=w["unresponsive"])


@dataclass(frozen=True)
class ReloadResult:
    """How a rolling reload ended: `ok`, or the `error` that stopped it (the old
    workers of the slots not yet replaced keep serving)."""

    ok: bool
    replaced: int             # workers replaced before it ended
    reason: str               # who asked: "SIGHUP", "control socket", "memory limit"...
    error: str | None
    finished: float           # Unix time (seconds) it ended

    @classmethod
    def from_json(cls, r: dict) -> ReloadResult:
        return cls(ok=r["ok"], replaced=r["replaced"], reason=r["reason"],
                   error=r.get("error"), finished=r["finished"])


@dataclass(frozen=True)
class Forwarding:
    """Session hand-over (`--handover yes`): the sessions handed over by worker id
    `source` (a retired worker, whose id their sids name) live at worker id
    `to`; `sessions` is how many moved (some may have ended since)."""

    source: int
    to: int
    sessions: int


@dataclass(frozen=True)
class Status:
    """The whole cluster: the master (`master`, as the JSON gives it: pid, uptime
    in seconds, fds, bind, pending and queued connections, stopping, broadcast
    backend, counters, host_id, drained, and the status its readiness check
    answers), its workers, and the reload in progress or last ended."""

    master: dict
    workers: tuple[WorkerStatus, ...]
    reload: dict | None              # the reload in progress: slot, phase, queued slots
    last_reload: ReloadResult | None
    raw: dict = field(repr=False, compare=False)
    # Session hand-over: the sessions of worker `from` now live at `to`.
    forwarding: tuple[Forwarding, ...] = ()

    @classmethod
    def from_json(cls, st: dict) -> Status:
        last = st.get("last_reload")
        return cls(master=st["master"],
                   workers=tuple(WorkerStatus.from_json(w) for w in st["workers"]),
                   reload=st.get("reload"),
                   last_reload=ReloadResult.from_json(last) if last else None, raw=st,
                   forwarding=tuple(Forwarding(f["from"], f["to"], f["sessions"])
                                    for f in st.get("forwarding") or ()))

    @property
    def serving(self) -> tuple[WorkerStatus, ...]:
        """The workers that hold a slot (not the retired ones draining)."""
        return tuple(w for w in self.workers if not w.retired and not w.replacement)

    def has_ready(self, workers: int | None = None) -> bool:
        """`workers` slots hold a READY worker; None: every worker is READY (`ready`)."""
        if workers is None:
            return self.ready
        return sum(w.state == "READY" for w in self.serving) >= workers

    @property
    def ready(self) -> bool:
        """Every worker but the retired ones is READY (what `imcluster status` exits 0
        for; a replacement still starting during a reload counts as not READY)."""
        live = [w for w in self.workers if not w.retired]
        return bool(live) and all(w.state == "READY" for w in live)


class Control:
    """A running master, through its control socket at `path`."""

    def __init__(self, path: str, timeout: float = 5.0, looked_in: tuple[str, ...] = ()):
        self.path = path
        self.timeout = timeout
        self.looked_in = looked_in

    @classmethod
    def for_port(cls, port: int, timeout: float = 5.0) -> Control:
        """The default control socket of a master bound to `port`: where `imcluster
        run` places it when --control is not given, in $XDG_RUNTIME_DIR or /tmp
        (the first that exists: the master may run without the caller's
        XDG_RUNTIME_DIR, under supervisord or cron)."""
        return cls(find_control(port), timeout, tuple(default_control_paths(port)))

    def request(self, cmd: str, **args) -> dict:
        return request(self.path, cmd, timeout=self.timeout, looked_in=self.looked_in, **args)

    def status(self) -> Status:
        return Status.from_json(self.request("status"))

    def scale(self, to: int | str) -> int:
        """Change the number of workers: 4, "+1" or "-1". Returns the new target;
        removed workers drain first. A scale asked during a reload (up or down)
        happens when it ends; +1/-1 then count from the target already deferred."""
        return int(self.request("scale", to=str(to))["workers"])

    def stop(self, wait: bool = True, timeout: float = 60.0, poll: float = 0.1) -> None:
        """Ask for a graceful stop (like SIGTERM) and, as `imcluster stop` does, return
        once the master has exited (its port and control socket are free again, so
        a new `run` can start); StopTimeout if it is still running after `timeout`
        seconds. `wait=False` returns once the master has taken the request
        (`imcluster stop --no-wait`)."""
        pid = self.request("status")["master"]["pid"] if wait else None
        self.request("stop")
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            if time.monotonic() >= deadline:
                raise StopTimeout(f"the master (pid {pid}) is still stopping after "
                                  f"{timeout:.0f}s")
            time.sleep(poll)

    def drain(self, on: bool = True) -> int:
        """Drain this host (`on`) or end its drain. Drained, the host's readiness
        check (GET /_imcluster/ready on its port) answers 404, so HAProxy
        (`http-check disable-on-404`) sends it no new sessions while requests of
        its sessions still reach it; nothing else changes. Returns the status
        the readiness check now answers (200, 404 or 503)."""
        return int(self.request("drain" if on else "undrain")["readiness"])

    def reload(self, wait: bool = True, timeout: float = 600.0,
               poll: float = 0.2) -> ReloadResult | None:
        """Start a rolling reload (like SIGHUP). With `wait`, return how it ended;
        ReloadTimeout if it has not ended after `timeout` seconds. Without, None.
        Asked while a reload runs, it waits for the follow-up reload queued for
        it, so that an ok means every worker was started after this call."""
        before = self.request("status").get("last_reload")
        # The id of the reload whose end answers this ask: the one it started,
        # or the follow-up it was queued for while another ran (master/core.py).
        want = self.request("reload").get("id")
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while True:
            st = self.request("status")
            last = st.get("last_reload")
            if want is not None:
                if last and last.get("id", 0) >= want:
                    return ReloadResult.from_json(last)
            elif st.get("reload") is None and last and last != before:
                return ReloadResult.from_json(last)
            if time.monotonic() >= deadline:
                raise ReloadTimeout(f"reload still running after {timeout:.0f}s")
            time.sleep(poll)

    def wait_ready(self, workers: int | None = None, timeout: float = 30.0,
                   poll: float = 0.1) -> Status:
        """Wait until `workers` slots (default: all) have a READY worker; ControlError
        with the last status seen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Status | str = "no answer"
        while True:
            try:
                st = last = self.status()
                if st.has_ready(workers):
                    return st
            except ControlError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise ControlError(f"workers not READY after {timeout}s (last: {last})")
            time.sleep(poll)


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
