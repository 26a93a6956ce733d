"""The master's shell: one thread, one selectors loop, and all of its I/O.

It owns the listening socket, the connections held until their request line
is read (`pending`), each worker's channel (fd passing, relay, the hand-off
queue with its bound and window), the control socket, the metrics endpoint,
the signals and the processes. Every decision (who gets a connection, when a
worker is respawned, replaced, drained or killed, how a reload or a scale
proceeds) is the decision core's (`core.Core`): the shell turns what happens
into events, feeds them to the core and carries out the actions it returns.
Signal handlers only record the signal; the loop acts on it.
"""

from __future__ import annotations

import errno
import itertools
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
from imcluster import httpline, once
from imcluster.master import events as ev
from imcluster.master.control import ControlServer
from imcluster.master.core import Core
from imcluster.master.metrics import MetricsServer
from imcluster.master.pending import PendingConnections
from imcluster.master.recovery import RecoveryStore
from imcluster.redact import redact_url
from imcluster.settings import Config

log = logging.getLogger("imcluster.master")

TICK = 0.25
_HANDOFF_FRAME = ch.HANDOFF + b"\x00"
# Relay bytes queued for one worker before the master drops further relay
# messages to it (a worker that stops reading must not grow the master).
MAX_RELAY_BACKLOG = 64 << 20
MEMORY_CHECK_INTERVAL = 2.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
           signal.SIGTTIN, signal.SIGTTOU)


class Link:
    """The master's end of one worker's channel, and what is queued on it."""

    __slots__ = ("worker_id", "slot", "pid", "channel", "outq", "out_bytes", "delivered",
                 "confirmed", "joiner", "relayed", "recent", "published",
                 "relay_from", "writing")

    def __init__(self, worker_id: int, slot: int, pid: int, channel: socket.socket):
        self.worker_id, self.slot, self.pid, self.channel = worker_id, slot, pid, channel
        self.outq: deque = deque()  # (frame, client socket or None)
        self.out_bytes = 0
        self.delivered = 0  # hand-offs written to the channel
        self.confirmed = 0  # hand-offs the worker acknowledged receiving (ACK)
        self.joiner = ch.Joiner()
        self.relayed = 0  # RELAY messages queued for it (their numbers, from 1)
        self.recent: deque = deque(maxlen=ch.REPLAY_KEEP)  # (number, payload), for REPLAY
        self.published = 0  # PUBLISH messages received from it (HANDOVER's heir_seen)
        # The first broadcast offset relayed to it (recovery): it never hears earlier ones.
        self.relay_from = 0
        self.writing = False  # registered for EVENT_WRITE: the channel was full

    @property
    def unconfirmed(self) -> int:
        """Hand-offs in the kernel's queue that the worker has not confirmed."""
        return self.delivered - self.confirmed


class Listener(socket.socket):
    """The listening socket. socket.accept() builds each client's socket from the
    listener's `family` and `type`, which the standard class converts to enums
    on every read: here they are read as the plain ints they were given."""

    __slots__ = ("_family", "_kind")

    def __init__(self, family: int, kind: int):
        super().__init__(family, kind)
        self._family, self._kind = int(family), int(kind)

    @property
    def family(self) -> int:
        return self._family

    @property
    def type(self) -> int:
        return self._kind


class Master:
    def __init__(self, cfg: Config, app: str | None):
        self.cfg = cfg
        self.app = app
        self.selector = selectors.DefaultSelector()
        self.core = Core(cfg, app, wall_offset=time.time() - time.monotonic())
        self.pending = PendingConnections(self.selector, cfg.header_timeout, cfg.max_pending,
                                          self._deliver)
        self.links: dict[int, Link] = {}  # by worker id, while the channel is open
        self.listener: socket.socket | None = None
        self.accepting = False
        self.failed = False  # run() ended on an exception (not a stop)
        self.queued_socks = 0
        self.signals: deque[int] = deque()
        self.started_at = time.time()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.next_memory_check = 0.0
        # Connection state recovery (workers/recovery.py): None when off.
        self.recovery = RecoveryStore(cfg.recovery_window) if cfg.recovery_window else None
        self.counters = {"accepted": 0, "handoffs": 0, "handbacks": 0, "handovers": 0,
                         "rerouted": 0, "relayed": 0, "relay_dropped": 0, "forwarded": 0}
        # Read once per connection: a Config attribute is a failed lookup first.
        self.max_queued = cfg.max_queued
        self.handoff_window = cfg.handoff_window
        self.routed: list[Link] = []  # links with hand-offs queued this turn (_hand_off)
        self.client_nodelay = False  # the listener has TCP_NODELAY (_bind)

    @property
    def exit_code(self) -> int:
        return self.core.exit_code

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
            log.info("metrics at http://%s/metrics", _hostport(*self.cfg.metrics))
        self._apply(self.core.start(time.monotonic()))
        log.info("listening on http://%s with %d worker%s serving %s (%s), control socket %s",
                 _hostport(*self.cfg.bind), self.cfg.workers, "" if self.cfg.workers == 1 else "s",
                 self.app or "the chat demo (no app named)",
                 "redis " + redact_url(self.cfg.redis) if self.cfg.redis else "master relay",
                 self.cfg.control)
        try:
            next_tick = 0.0
            while not self.core.done:
                for key, mask in self.selector.select(TICK):
                    key.data(key, mask)
                self._flush_routed()
                self._handle_signals()
                # Timers run once a tick, not after every wake-up: under load the
                # loop wakes thousands of times a second.
                now = time.monotonic()
                if now >= next_tick:
                    self.manage(now)
                    next_tick = now + TICK
                self._flush_routed()
        except Exception:
            self.failed = True
            raise
        finally:
            self._cleanup()
        return self.exit_code

    def _bind(self) -> None:
        host, port = self.cfg.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = Listener(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Copied to every accepted socket (Linux): the workers need not set it
        # on each client connection (spec "client_nodelay").
        self.client_nodelay = _set_nodelay(s)
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

        for sig in SIGNALS:
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
            else:
                self._feed(ev.Signal(sig))

    def manage(self, now: float) -> None:
        """Once a tick: expire held connections, reap, measure, run the core's timers."""
        self.pending.expire(now)
        if self.control is not None:
            self.control.expire()
        if self.metrics is not None:
            self.metrics.expire()
        self.reap()
        if self.recovery is not None:
            self.recovery.expire(now)
        if self.cfg.max_memory and now >= self.next_memory_check and not self.core.stopping:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            rss = {w.worker_id: r for w in self.core.slots
                   if w.accepts_new and (r := _rss(w.pid))}
            self._feed(ev.Memory(rss))
        self._feed(ev.Tick())
        if self.queued_socks < self.max_queued // 2 and not self.core.stopping:
            self._accepting(True)

    # ---- events in, actions out ------------------------------------------------------

    def _feed(self, event: object) -> list:
        """Give the core one event and carry out its actions; returns them."""
        actions = self.core.handle(event, time.monotonic())
        self._apply(actions)
        return actions

    def _apply(self, actions: list) -> None:
        for a in actions:
            kind = type(a)
            if kind is ev.HandOff:
                self._hand_off(a.conn, a.worker_id)
            elif kind is ev.Send:
                link = self.links.get(a.worker_id)
                if link is not None:
                    self._send(link, a.kind, a.payload)
            elif kind is ev.Kill:
                try:
                    os.kill(a.pid, a.signum)
                except ProcessLookupError:
                    pass
            elif kind is ev.Spawn:
                self._spawn(a.worker_id, a.slot)
            elif kind is ev.CloseChannel:
                link = self.links.get(a.worker_id)
                if link is not None:
                    self._close_link(link)
            elif kind is ev.Move:
                self._move(a.conn, a.worker_id)
            elif kind is ev.RetryHeld:
                self.pending.retry_waiting()
            elif kind is ev.StopListening:
                self._accepting(False)
                if self.listener is not None:
                    self.listener.close()
                    self.listener = None
                self.pending.close_all()
            # Hold, Reply and Answer are results for the caller, nothing to do here.

    # ---- processes -----------------------------------------------------------------

    def _spawn(self, wid: int, slot: int) -> None:
        """Start the process for worker `wid`; the core hears Spawned or SpawnFailed."""
        master_end, worker_end = ch.socketpair()
        master_end.setblocking(False)
        spec = {
            "app": self.app, "worker_id": wid, "slot": slot, "host_id": self.cfg.host_id,
            "redis": self.cfg.redis, "redis_silence_timeout": self.cfg.redis_silence_timeout,
            "redis_channels": self.cfg.redis_channels,
            "redis_channel": self.cfg.redis_channel,
            "keepalive": self.cfg.keepalive, "header_timeout": self.cfg.header_timeout,
            "log_level": self.cfg.log_level, "cwd": os.getcwd(),
            "graceful_timeout": self.cfg.graceful_timeout,
            "cors_origins": self.cfg.cors_origins,
            "ws_compression": self.cfg.ws_compression,
            "handover": self.cfg.handover,
            "allow_untested_versions": self.cfg.allow_untested_versions,
            "recovery_window": self.cfg.recovery_window,
            "client_nodelay": self.client_nodelay,
        }
        fd = worker_end.fileno()
        os.set_inheritable(fd, True)
        # Every user of the host can read a command line (ps): it names the
        # worker and nothing else. The spec, Redis password and all, is the
        # first message on the channel.
        argv = [sys.executable, "-m", "imcluster.workers", "--channel-fd", str(fd),
                "--slot", str(slot), "--worker-id", str(wid)]
        try:
            # Like pm2's NODE_APP_INSTANCE: an app can run a task in one slot only.
            # IMCLUSTER_CONTROL names the cluster (imcluster.run_once locks beside it).
            env = {**os.environ, "IMCLUSTER_SLOT": str(slot), "IMCLUSTER_WORKER_ID": str(wid),
                   "IMCLUSTER_CONTROL": self.cfg.control}
            pid = os.posix_spawn(sys.executable, argv, env, setsigdef=SIGNALS)
        except OSError as e:
            master_end.close()
            self._feed(ev.SpawnFailed(wid, str(e)))
            return
        finally:
            # Closing the child's end here is what lets us see EOF when it dies.
            worker_end.close()
        link = self.links[wid] = Link(wid, slot, pid, master_end)
        if self.recovery is not None:
            link.relay_from = self.recovery.last + 1
        self.selector.register(master_end, selectors.EVENT_READ, self._channel_handler(link))
        # First on the new channel: the worker reads nothing else before it.
        self._send(link, ch.SPEC, ch.encode_json(spec))
        self._feed(ev.Spawned(wid, pid))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._feed(ev.Exited(pid, os.waitstatus_to_exitcode(status)))

    # ---- the channel ---------------------------------------------------------

    def _channel_handler(self, link: Link):
        def on_event(key: selectors.SelectorKey, mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                self._flush(link)
            if mask & selectors.EVENT_READ and link.channel is not None:
                self._read_channel(link)

        return on_event

    def _read_channel(self, link: Link) -> None:
        wid = link.worker_id
        heard = False
        try:
            for _ in range(64):  # bounded: one busy worker must not starve the loop
                if link.channel is None:
                    return
                try:
                    frame = ch.recv_frame(link.channel)
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionResetError:
                    # The worker exited with relays unread in its queue. Linux reports
                    # that before the frames it sent last (its final broadcasts,
                    # sessions handed over) and clears it: read on, up to EOF.
                    continue
                except (ValueError, OSError) as e:
                    log.warning("slot %d: channel error: %s", link.slot, e)
                    frame = None
                if frame is None:
                    self._close_link(link, tell_core=True)
                    return
                heard = True
                kind, flags, payload, fds = frame
                if kind == ch.HANDBACK:
                    for fd in fds:
                        self.counters["handbacks"] += 1
                        self.pending.add(socket.socket(fileno=fd), time.monotonic())
                    continue
                if kind == ch.HANDOVER and len(fds) <= 1 and not flags & ch.MORE:
                    # (no fd: a polling session without a parked GET)
                    self.counters["handovers"] += 1
                    doc = _json_object(payload)
                    self._feed(ev.Moving((ch.HANDOVER + b"\x00" + payload,
                                          socket.socket(fileno=fds[0]) if fds else None,
                                          _unseen(link, doc)), wid, _synced_with(doc)))
                    continue
                if kind == ch.FORWARD and len(fds) == 1 and not flags & ch.MORE:
                    self.counters["forwarded"] += 1
                    self._feed(ev.Forwarding((ch.FORWARD + b"\x00" + payload,
                                              socket.socket(fileno=fds[0]), []), wid))
                    continue
                for fd in fds:  # fds on any other frame are a protocol error
                    os.close(fd)
                whole = link.joiner.feed(kind, flags, payload)
                if whole is None:
                    continue
                if kind == ch.PUBLISH:
                    self._relay(link, whole)
                elif kind == ch.SESSION and self.recovery is not None:
                    self._session_changed(link, whole)
                elif kind == ch.RESTORE and self.recovery is not None:
                    self._restore(link, whole)
                elif kind == ch.HEARTBEAT:
                    pass  # heard, like every frame
                elif kind == ch.LOAD:
                    load = _load(whole)
                    if load is not None:
                        self._feed(ev.Load(wid, *load))
                elif kind == ch.ACK:
                    acked = _count(whole)
                    if acked is not None:
                        link.confirmed = acked
                        self._feed(ev.Acked(wid, acked))
                        if link.outq:
                            self._flush(link)  # the hand-off window may have opened
                elif kind == ch.READY:
                    # Its size fresh (the app imported, nothing served yet): the
                    # least any replacement would use, for --max-memory's rule.
                    w = self.core.by_id.get(wid)
                    rss = _rss(w.pid) if self.cfg.max_memory and w is not None and w.pid \
                        else None
                    self._feed(ev.Ready(wid, rss))
                elif kind == ch.EMPTIED:
                    self._feed(ev.Emptied(wid))
                elif kind == ch.ERROR:
                    self._feed(ev.WorkerError(wid, whole.decode(errors="replace")))
        finally:
            if heard:
                self._feed(ev.Heard(wid))

    def _relay(self, source: Link, payload: bytes) -> None:
        source.published += 1
        echo = False
        if self.recovery is not None:
            # Every emit without an ack gets an offset here and goes to every
            # worker, its publisher included: one order for all (workers/recovery.py).
            message = _json_object(payload)
            if message is None:
                return
            if message.get("method") == "emit" and message.get("callback") is None:
                payload = self.recovery.publish(message, payload, time.monotonic())
                echo = True
        frames = list(ch.frames(ch.RELAY, payload))
        for link in list(self.links.values()):
            if (link is source and not echo) or link.channel is None:
                continue
            if link.out_bytes > MAX_RELAY_BACKLOG:
                self.counters["relay_dropped"] += 1
                if self.counters["relay_dropped"] in (1, 100, 10000):
                    log.warning("slot %d: worker is not reading its channel; relay "
                                "messages dropped (%d so far)", link.slot,
                                self.counters["relay_dropped"])
                continue
            for f in frames:
                link.outq.append((f, None))
                link.out_bytes += len(f)
            link.relayed += 1
            link.recent.append((link.relayed, payload))
            self.counters["relayed"] += 1
            self._flush(link)

    def _session_changed(self, link: Link, payload: bytes) -> None:
        op = _json_object(payload)
        why = "not a JSON object" if op is None else self.recovery.apply(
            link.worker_id, op, time.monotonic())
        if why is not None:
            log.debug("slot %d: session change ignored: %s", link.slot, why)

    def _restore(self, link: Link, payload: bytes) -> None:
        ask = _json_object(payload) or {}
        found = self.recovery.restore(ask.get("pid"), ask.get("offset"), time.monotonic())
        head = ch.encode_json({"id": ask.get("id"), "relay_from": link.relay_from})
        self._send(link, ch.RESTORED,
                   head[:-1] + b',"session":' + (found or b"null") + b"}")

    def _send(self, link: Link, kind: bytes, payload: bytes = b"") -> None:
        for f in ch.frames(kind, payload):
            link.outq.append((f, None))
            link.out_bytes += len(f)
        self._flush(link)

    def _hand_off(self, sock: socket.socket, wid: int) -> None:
        link = self.links.get(wid)
        if link is None:  # the core only names workers whose channel is open
            log.error("hand-off to worker %d, which has no channel; closing the connection",
                      wid)
            sock.close()
            return
        link.outq.append((_HANDOFF_FRAME, sock))
        link.out_bytes += 2
        self.queued_socks += 1
        self.counters["handoffs"] += 1
        # Sent at the end of this turn of the loop (_flush_routed), with the
        # other connections this turn routes to the same worker: one frame.
        if link not in self.routed:
            self.routed.append(link)
        if self.queued_socks >= self.max_queued:
            self._accepting(False)

    def _flush_routed(self) -> None:
        """Send the hand-offs routed during this turn of the loop."""
        routed = self.routed
        while routed:
            self._flush(routed.pop())

    def _move(self, conn: tuple[bytes, socket.socket, list[bytes]], wid: int | None) -> None:
        """Relay a handed-over session (frame, client socket, and the REPLAY frames
        of what its old worker had not handled) to worker `wid`."""
        frame, sock, replays = conn
        link = self.links.get(wid) if wid is not None else None
        if link is None:
            if sock is not None:
                sock.close()  # the client sees its connection end and reconnects
            return
        if frame[:1] == ch.HANDOVER:
            frame = _heir_seen(frame, link.published)
        link.outq.append((frame, sock))
        link.out_bytes += len(frame)
        if sock is not None:
            self.queued_socks += 1
        for payload in replays:
            for f in ch.frames(ch.REPLAY, payload):
                link.outq.append((f, None))
                link.out_bytes += len(f)
        self._flush(link)

    def _flush(self, link: Link) -> None:
        chan = link.channel
        if chan is None:
            return
        outq = link.outq
        while outq:
            frame, sock = outq[0]
            sent = 1
            try:
                if sock is None:
                    chan.send(frame)
                elif (room := self.handoff_window - link.unconfirmed) <= 0:
                    # The kernel's queue dies with the worker; ours can be re-routed.
                    # Wait for the worker to acknowledge what it has (ACK) first.
                    break
                elif frame == _HANDOFF_FRAME and len(outq) > 1:
                    # The hand-offs queued behind it go in the same frame, up to
                    # the window's room: one sendmsg, one recvmsg in the worker.
                    fds = [sock.fileno()]
                    limit = min(room, ch.MAX_FDS)
                    for f, s in itertools.islice(outq, 1, limit):
                        if s is None or f != _HANDOFF_FRAME:
                            break
                        fds.append(s.fileno())
                    chan.sendmsg([frame], ch.fds_ancillary(fds))
                    sent = len(fds)
                else:
                    chan.sendmsg([frame], ch.fd_ancillary(sock.fileno()))
            except (BlockingIOError, InterruptedError):
                if not link.writing:
                    link.writing = True
                    self.selector.modify(chan, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                         self.selector.get_key(chan).data)
                return
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    log.warning("slot %d: channel send failed: %s", link.slot, e)
                self._close_link(link, tell_core=True)
                return
            for _ in range(sent):
                frame, sock = outq.popleft()
                link.out_bytes -= len(frame)
                if sock is not None:
                    link.delivered += 1
                    sock.close()
                    self.queued_socks -= 1
        if link.writing:
            link.writing = False
            self.selector.modify(chan, selectors.EVENT_READ, self.selector.get_key(chan).data)

    def _close_link(self, link: Link, tell_core: bool = False, reroute: bool = True) -> None:
        """The worker is gone (or going): stop using its channel and re-route the
        connections queued for it (never delivered, so nothing was read from them)."""
        if link.channel is None:
            return
        try:
            self.selector.unregister(link.channel)
        except (KeyError, ValueError):
            pass
        link.channel.close()
        link.channel = None
        self.links.pop(link.worker_id, None)
        if self.recovery is not None:
            self.recovery.worker_gone(link.worker_id, time.monotonic())
        if tell_core:
            # Before the re-route, so that none of them is routed back to it.
            self._feed(ev.ChannelClosed(link.worker_id))
        rescued = 0
        while link.outq:
            frame, sock = link.outq.popleft()
            if sock is not None:
                self.queued_socks -= 1
                if frame[:1] in (ch.HANDOVER, ch.FORWARD):
                    sock.close()  # mid-stream: no other worker can read it from here
                elif reroute:
                    rescued += 1
                    self.pending.add(sock, time.monotonic())
                else:
                    sock.close()
        link.out_bytes = 0
        if rescued:
            self.counters["rerouted"] += rescued
            log.warning("slot %d: re-routed %d connections queued for a dead worker",
                        link.slot, rescued)

    # ---- connections -----------------------------------------------------------

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        now = time.monotonic()
        for _ in range(64):
            if self.listener is None:
                return
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
            self.pending.add(sock, now)

    def _deliver(self, sock: socket.socket,
                 line: httpline.RequestLine) -> bool | tuple[str | None, int, str]:
        """Hand `sock` to the worker the core chooses; False if it is to be held,
        (cause, status, reason) if the master answers it itself."""
        owner = line.owner
        worker, host = owner[::-1] if owner else (None, None)
        actions = self._feed(ev.Request(sock, worker, host, line.is_readiness))
        for a in actions:
            if type(a) is ev.HandOff:
                return True
            if type(a) is ev.Reply:
                return a.cause, a.status, a.reason
        return False

    # ---- control and status -------------------------------------------------------

    def _control(self, request: dict) -> dict:
        if request.get("cmd") == "status":
            return self.status()
        for a in self._feed(ev.Command(request)):
            if type(a) is ev.Answer:
                return a.answer
        return {"error": "no answer"}  # the core answers every command

    def status(self) -> dict:
        st = self.core.describe(time.monotonic())
        for w in st["workers"]:
            if w["pid"]:
                w["cpu"], w["rss"], w["cpu_time"] = _proc_usage(w["pid"])
        return {
            "master": {
                "pid": os.getpid(), "uptime": round(time.time() - self.started_at, 1),
                "fds": _count_fds(), "bind": _hostport(*self.cfg.bind),
                "pending": len(self.pending), "queued": self.queued_socks,
                "stopping": self.core.stopping, "host_id": self.cfg.host_id,
                "drained": self.core.drained, "readiness": self.core.readiness()[0],
                "broadcast": "redis" if self.cfg.redis else "relay",
                "redis_channels": self.cfg.redis_channels if self.cfg.redis else None,
                "redis_channel": self.cfg.redis_channel if self.cfg.redis else None,
                "redis": redact_url(self.cfg.redis),
                "counters": {**self.counters, **self.pending.counters},
            },
            **st,
        }

    def _cleanup(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        self.pending.close_all()
        if self.listener is not None:
            self.listener.close()
        for link in list(self.links.values()):
            self._close_link(link, reroute=False)
        once.remove_unheld_locks(self.cfg.control)
        if self.failed:
            log.critical("master exiting on an unexpected error (its traceback follows)")
        else:
            log.info("master exiting (code %d)", self.exit_code)


def _set_nodelay(sock: socket.socket) -> bool:
    """Set TCP_NODELAY on the listener; True if accepted sockets inherit it.

    Linux builds each accepted socket as a copy of its listener, TCP_NODELAY
    included (tests/test_units.py checks it on the running kernel); only that
    kernel is vouched for here, so elsewhere the workers keep setting it on
    each connection themselves."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def _hostport(host: str, port: int) -> str:
    """HOST:PORT as a URL writes it: an IPv6 address in brackets ([::1]:8000)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unseen(link: Link, doc: dict | None) -> list[bytes]:
    """REPLAY payloads for a session handed over from `link`'s worker (`doc`: its
    state, parsed): each relay to it after the number it handled ("relay_seen")."""
    if doc is None:
        return []
    try:
        seen, eio_sid = int(doc.get("relay_seen", link.relayed)), str(doc["eio_sid"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    head = eio_sid.encode() + b"\n"
    return [head + p for n, p in link.recent if n > seen]


def _synced_with(doc: dict | None) -> int | None:
    """The worker a handed-over session's channels were synced with (its state's
    "order"."heir", workers/redis_order.py `state_of`); None when it names none."""
    order = doc.get("order") if doc is not None else None
    heir = order.get("heir") if isinstance(order, dict) else None
    return heir if isinstance(heir, int) and not isinstance(heir, bool) else None


def _json_object(payload: bytes) -> dict | None:
    """A JSON object from a worker; None for anything else."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _heir_seen(frame: bytes, published: int) -> bytes:
    """A HANDOVER frame with the number of messages its new owner had published
    when the master took it in ("heir_seen", for which the old worker left room)."""
    try:
        doc = json.loads(frame[2:])
        if "heir_seen" not in doc:
            return frame
        doc["heir_seen"] = published
    except (ValueError, TypeError):
        return frame
    return frame[:2] + ch.encode_json(doc)


def _count(payload: bytes) -> int | None:
    """An ACK's count (ASCII decimal); None for anything else."""
    try:
        n = int(payload)
    except ValueError:
        return None
    return n if n >= 0 else None


def _load(payload: bytes) -> tuple | None:
    """A LOAD report's (sessions, connections, broadcast health, pub/sub figures,
    held, moved_in), as `ev.Load` takes them; None when it is not one."""
    try:
        load = json.loads(payload)
        sessions, connections = int(load["sessions"]), int(load["connections"])
        broadcast = load.get("broadcast")
        pubsub = load.get("pubsub")
        held, moved_in = load.get("held"), load.get("moved_in")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not (isinstance(pubsub, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pubsub.values())):
        pubsub = None
    if (isinstance(moved_in, int) and not isinstance(moved_in, bool) and isinstance(held, list)
            and all(isinstance(h, int) for h in held)):
        hand_over = (frozenset(held), moved_in)
    else:  # hand-over off, or a report the master cannot read: prune nothing
        hand_over = (frozenset(), None)
    return (sessions, connections, broadcast if isinstance(broadcast, str) else None,
            pubsub, *hand_over)


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
