"""One worker process: import the app, then serve the fds the master sends.

Runs after eventlet.monkey_patch() (see __main__) and the start-up checks
(see start). The app is imported here, after the fork, never in the master:
pub/sub managers draw their host id when constructed, and workers sharing one
would drop each other's broadcasts.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback

import eventlet
import eventlet.event
import eventlet.greenio
import eventlet.wsgi
import socketio

from imcluster import channel as ch
from imcluster import sid as sidcodec
from imcluster.master.lifecycle import APP_LOAD_ERROR
from imcluster.workers import admin, drain, fastpath, handover, protocol, sessions, speedups
from imcluster.workers import app as appmod
from imcluster.workers.heir import HeirSync
from imcluster.workers.http import (
    FdListener,
    close_refused_upgrades,
    make_protocol,
    release_idle,
    serve_connection,
)
from imcluster.workers.link import Link
from imcluster.workers.recovery import Recovery
from imcluster.workers.redis_cluster import ShardedRedisManager, is_cluster_url
from imcluster.workers.redis_manager import ClusterRedisManager, InterestRedisManager
from imcluster.workers.redis_order import ChannelOrder
from imcluster.workers.redis_recovery import RedisRecoveryStore
from imcluster.workers.relay import MasterRelayManager

log = logging.getLogger("imcluster.worker")

# HEARTBEAT this often; LOAD and ACK go with it when they changed (imcluster/channel.py).
HEARTBEAT_INTERVAL = 1.0
# Acknowledge hand-offs this often (besides with the heartbeat), so the master's
# hand-off window never throttles a busy but healthy worker.
ACK_EVERY = 16
# How long a new worker waits for Redis to confirm its subscription before it
# says READY anyway (seconds; at once when Redis is down): redis_manager.py,
# wait_subscribed.
SUBSCRIBE_WAIT = 5.0
# How long a draining worker lets each session's queued packets go out.
FLUSH_SECONDS = 2.0
MAX_CONNECTIONS = 100_000


class WorkerServer:
    """This worker process: loads the app, serves the connections the master hands
    it, reports on its channel and drains when asked (the master's record of it is
    master/lifecycle.py's WorkerProcess)."""

    def __init__(self, spec: dict, link: Link):
        self.spec = spec
        self.worker_id = int(spec["worker_id"])
        self.host_id = int(spec.get("host_id", 0))
        self.slot = int(spec["slot"])
        self.link = link
        self.connections = 0
        self.handoffs = 0
        # (sessions, connections, broadcast health, pub/sub figures) of the last LOAD
        self.load_sent: tuple | None = None
        self.handoffs_acked = 0  # the count in the last ACK
        self.stopping = False
        self.handed_over = 0  # sessions moved to another worker while stopping
        self.closed_on_stop = 0  # sessions closed while stopping
        self.app: appmod.App | None = None
        self.relay: MasterRelayManager | None = None
        self.recovery: Recovery | None = None
        self.default_manager: socketio.PubSubManager | None = None
        self.pool = eventlet.GreenPool(MAX_CONNECTIONS)
        self.joiner = ch.Joiner()
        self.idle: dict = {}  # kept-alive sockets waiting for their next request: greenlet
        self.done = eventlet.event.Event()
        self.emptied = eventlet.event.Event()  # the master's EMPTIED (--handover)
        self.heir: int | None = None  # the worker STOP named to take the sessions
        # Interest channels: the channels synced with the heir (workers/heir.py).
        self.heir_sync: HeirSync | None = None
        self.handlers = drain.RunningHandlers()  # waited for by a drain
        # (family, type, proto) of the master's listener, from the first client fd
        self._client_kind: tuple[int, int, int] | None = None
        # --handover: sessions moved here while this worker drains (synced with it
        # before the master named another heir: master/core.py `_move_to_synced`)
        # are taken in and moved on, until the drain's last move (`late_closed`).
        self.late = eventlet.GreenPool()
        self.moving = eventlet.event.Event()  # the drain's moves began (heir readied)
        self.drained_sids: set[str] = set()  # the sessions those moves took
        self.late_closed = False
        self.handlers_deadline = 0.0  # the drain's budget for running handlers

    # ---- start ---------------------------------------------------------------

    def load(self) -> None:
        restore = self._default_manager()
        allow_handlers = _no_bare_library_handlers()
        try:
            app = appmod.load(self.spec.get("app"), self.spec.get("cwd") or os.getcwd())
        finally:
            allow_handlers()
            restore()
        wid, host = self.worker_id, self.host_id
        # Every sid this worker makes names its host and it, so a router in front of
        # several hosts and the master can route by sid alone. python-socketio 5.x
        # makes each namespace's sid with the same eio.generate_id (base_manager.connect).
        # internals: engineio-generate-id
        app.eio.generate_id = lambda: sidcodec.make_sid(wid, host)
        if self.spec.get("cors_origins") is not None:
            # internals: engineio-cors-origins
            app.eio.cors_allowed_origins = listed_or_own_origin(self.spec["cors_origins"])
        # Engine.IO v4 / Socket.IO v5 as written, where the libraries differ.
        rec = None
        if self.spec.get("recovery_window") and app.sio is not None:
            rec = self.recovery = Recovery(self.link)
        protocol.adapt(app.eio, app.sio, rec)  # internals: socketio-server-attrs
        if app.sio is not None:
            fastpath.install(app.sio)  # same behaviour, less CPU per event (workers/fastpath.py)
            self._install_manager(app.sio)
            if self.spec.get("handover"):
                handover.enable(self._forward)
                mgr = app.sio.manager
                if isinstance(mgr, ClusterRedisManager):
                    # A move is ordered with the broadcasts: with one channel, its
                    # one order; with interest channels, each channel's order, the
                    # heir readied first (prepare_heir).
                    mgr.order = ChannelOrder(mgr, lanes=isinstance(mgr, InterestRedisManager))
            # A drain without hand-over waits for the running handlers; with it,
            # each session waits for its own before it moves (by_session).
            self.handlers.install(app.sio)
            if rec is not None:
                mgr = app.sio.manager
                if isinstance(mgr, ClusterRedisManager):
                    rec.store = mgr.store = RedisRecoveryStore(
                        mgr, float(self.spec["recovery_window"]))
                elif mgr is not self.relay:
                    raise appmod.AppError("--recovery-window needs imcluster's client_manager "
                                          "(the master relay or --redis); the app brings its "
                                          "own")
                mgr.recovery = rec
        if not self.spec.get("ws_compression"):
            app.wsgi = _without_ws_compression(app.wsgi)
        app.wsgi = close_refused_upgrades(app.wsgi)
        _one_handler_per_line()
        self.app = app

    def _cluster_manager(self) -> socketio.PubSubManager:
        if self.spec.get("redis"):
            channel = self.spec.get("redis_channel") or "socketio"
            if self.spec.get("redis_channels") == "interest":
                if is_cluster_url(self.spec["redis"]):
                    return ShardedRedisManager(
                        self.spec["redis"], self.host_id, self.worker_id, channel=channel,
                        silence_timeout=self.spec["redis_silence_timeout"])
                return InterestRedisManager(self.spec["redis"], self.host_id, self.worker_id,
                                            channel=channel,
                                            silence_timeout=self.spec["redis_silence_timeout"])
            return ClusterRedisManager(self.spec["redis"], channel=channel,
                                       silence_timeout=self.spec["redis_silence_timeout"])
        mgr = self.relay = MasterRelayManager(self.link)
        return mgr

    def _default_manager(self):
        """While the app imports, a socketio.Server built without a
        client_manager gets the cluster's; returns the undo.

        Whatever the app does to its manager while it imports then happens to
        ours: `sio.instrument()` (the Admin UI) patches the manager instance it
        finds, and swapping managers after the import left its patches on the
        discarded one ('MasterRelayManager' object has no attribute
        '_timestamps'). The hook wraps the one public argument
        (`client_manager`) of python-socketio 5.x's Server constructor; only
        the first server built gets the cluster manager (one relay per
        worker); should the app serve a later one, _install_manager swaps its
        manager as before.

        internals: socketio-server-init, socketio-server-init-params
        """
        cls = socketio.Server
        had_own = "__init__" in cls.__dict__
        original = cls.__init__
        worker = self

        def __init__(self, client_manager=None, *args, **kwargs):
            if client_manager is None and worker.default_manager is None:
                client_manager = worker.default_manager = worker._cluster_manager()
            original(self, client_manager, *args, **kwargs)

        cls.__init__ = __init__

        def restore():
            if had_own:
                cls.__init__ = original
            else:
                del cls.__init__

        return restore

    # internals: socketio-manager-swap, socketio-server-init (the default manager's class)
    def _install_manager(self, sio: socketio.Server) -> None:
        current = sio.manager
        if current is not None and current is self.default_manager:
            mgr = current  # built with the server (see _default_manager)
        elif type(current) is not socketio.Manager:
            # The app brought its own manager (its own Redis, say): keep it.
            # Say so whatever the setting: `status` and the start line name
            # imcluster's relay or --redis, which this app's broadcasts bypass.
            log.warning("the app sets its own client_manager (%s): its broadcasts go "
                        "through it, not through %s", type(current).__name__,
                        "--redis (ignored)" if self.spec.get("redis") else "the master relay")
            mgr = current
        else:
            mgr = self._cluster_manager()
        if mgr is not current:
            mgr.set_server(sio)
            sio.manager = mgr
        # Start the pub/sub listener now rather than at the first connection,
        # so relayed messages never pile up unread.
        if not sio.manager_initialized:
            sio.manager_initialized = True
            mgr.initialize()

    # ---- serve ---------------------------------------------------------------

    def serve(self) -> None:
        protocol = make_protocol(self.worker_id, self.host_id, self._hand_back,
                                 self.spec["keepalive"], self.idle,
                                 self.spec["header_timeout"],
                                 nodelay_set=bool(self.spec.get("client_nodelay")))
        self.server = eventlet.wsgi.Server(  # internals: eventlet-wsgi-server
            FdListener(("127.0.0.1", 0)), ("127.0.0.1", 0), self.app.wsgi,
            protocol=protocol, keepalive=self.spec["keepalive"], log_output=False,
            # Never send a Python traceback to a client.
            debug=False, socket_timeout=None)
        eventlet.spawn(self._heartbeat)
        reader = eventlet.spawn(self.link.receive_forever, self._on_frame)
        reader.link(lambda _: self.stop("the master closed the channel"))
        mgr = self.app.sio.manager if self.app.sio is not None else None
        if isinstance(mgr, ClusterRedisManager) and not mgr.wait_subscribed(SUBSCRIBE_WAIT):
            log.warning("READY before Redis confirmed this worker's subscription (Redis "
                        "down or slow): sessions handed over to it meanwhile may miss "
                        "broadcasts published before the subscription")
        self.link.send(ch.READY)
        self.done.wait()

    def _client_socket(self, fd: int) -> socket.socket:
        """A (green, after monkey_patch) socket for a client fd the master passed.

        Every client fd comes from the master's one listener, so all have its
        family, type and protocol: given them, the socket constructor checks the
        fd with one getsockname, where without them it also asks the kernel for
        the type and the protocol (two getsockopt per connection)."""
        kind = self._client_kind
        if kind is None:
            sock = socket.socket(fileno=fd)
            self._client_kind = (int(sock.family), int(sock.type), sock.proto)
            return sock
        return socket.socket(*kind, fileno=fd)

    def _on_frame(self, kind: bytes, flags: int, payload: bytes, fds: list[int]) -> None:
        if kind == ch.HANDOFF and fds:
            # One to MAX_FDS connections, in the order the master routed them,
            # each served as its own (imcluster/channel.py, note 11).
            for fd in fds:
                sock = self._client_socket(fd)
                self.connections += 1
                self.pool.spawn(serve_connection, self.server, sock, self._closed_one)
            self.handoffs += len(fds)
            if self.handoffs - self.handoffs_acked >= ACK_EVERY:
                self._report()  # the ACK reopens the master's hand-off window
            return
        if kind in (ch.HANDOVER, ch.FORWARD) and len(fds) <= 1 and not flags & ch.MORE:
            # A polling session moves without a socket when it had no GET parked.
            fd = fds[0] if fds else None
            if fd is not None:
                self.handoffs += 1  # the master counts it in its hand-off window
            # Sessions go only to READY workers; a request for one may reach a
            # draining worker that holds it still (it serves or forwards it). A
            # session may too, synced with this worker before another heir was
            # named: taken in and moved on, until the drain's last move.
            late = kind == ch.HANDOVER and self.stopping and (
                self.late_closed or not self.spec.get("handover"))
            if self.app is None or late or (kind == ch.FORWARD and fd is None):
                if fd is not None:
                    os.close(fd)  # the client reconnects
                if kind == ch.HANDOVER:
                    handover.refused_in()
                return
            if kind == ch.HANDOVER and self.stopping:
                step = lambda: self._move_in_late(payload, fd)  # noqa: E731
            elif kind == ch.HANDOVER:
                step = lambda: handover.move_in(self, payload, fd)  # noqa: E731
            else:
                sock = self._client_socket(fd)
                step = lambda: handover.serve_request(self, sock, payload)  # noqa: E731
            if self.relay is not None:
                # After the broadcasts relayed before it: those went out from the
                # old worker (or were published before the move), so the session
                # must not be here yet when they are handled. A FORWARD comes after
                # the HANDOVER of its session, and so runs after it.
                self.relay.after_pending(step)
            else:
                step()
            if self.handoffs - self.handoffs_acked >= ACK_EVERY:
                self._report()
            return
        for fd in fds:
            os.close(fd)
        whole = self.joiner.feed(kind, flags, payload)
        if whole is None:
            return
        if kind == ch.RELAY and self.relay is not None:
            self.relay.deliver(whole)
        elif kind == ch.REPLAY and self.relay is not None:
            sid, _, message = whole.partition(b"\n")
            self.relay.after_pending(
                lambda: handover.replay(self, sid.decode(errors="replace"), message))
        elif kind == ch.RESTORED and self.recovery is not None:
            self.recovery.answered(whole)
        elif kind == ch.STOP:
            try:
                heir = int(whole) if whole else None  # (--handover) who takes over
            except ValueError:
                heir = None
            if self.stopping:
                # Again while draining: the heir named first stopped taking sessions
                # (master/core.py, _replan_heirs); ready the new one.
                if heir is not None and heir != self.heir:
                    self.heir = heir
                    if self.heir_sync is not None:
                        eio = self.app.eio
                        self.heir_sync.changed(heir, lambda: list(eio.sockets))
                return
            self.heir = heir
            self.stop("asked by the master")
        elif kind == ch.EMPTIED and not self.emptied.ready():
            self.emptied.send()

    def _closed_one(self) -> None:
        self.connections -= 1

    def _forward(self, sock: socket.socket, head: bytes) -> bool:
        """A request for a session that moved away: its connection to the master (FORWARD)."""
        return self.link.send(ch.FORWARD, head, fd=sock.fileno())

    def _hand_back(self, sock: socket.socket) -> bool:
        return self.link.send(ch.HANDBACK, fd=sock.fileno())

    def _report(self) -> None:
        """LOAD and ACK, each when it changed since last sent."""
        # internals: engineio-server-attrs (sockets)
        mgr = self.app.sio.manager if self.app.sio is not None else None
        redis_mgr = isinstance(mgr, ClusterRedisManager)
        health = mgr.health() if redis_mgr else None
        pubsub = mgr.stats() if redis_mgr else None
        moves = handover.report() if handover.enabled() else None
        load = (len(self.app.eio.sockets), self.connections, health, pubsub, moves)
        if load != self.load_sent:
            self.load_sent = load
            self.link.send(ch.LOAD, ch.encode_json({"sessions": load[0],
                                                    "connections": load[1],
                                                    "broadcast": load[2],
                                                    "pubsub": load[3], **(moves or {})}))
        if self.handoffs != self.handoffs_acked:
            self.handoffs_acked = self.handoffs
            self.link.send(ch.ACK, str(self.handoffs).encode())

    def _heartbeat(self) -> None:
        while not self.link.closed:
            self.link.send(ch.HEARTBEAT)
            self._report()
            eventlet.sleep(HEARTBEAT_INTERVAL)

    # ---- stop ----------------------------------------------------------------

    def stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("worker pid %d stopping: %s", os.getpid(), why)
        eventlet.spawn(self._stop)

    def _stop(self) -> None:
        """Drain: every client reconnects through the master to a live worker.

        First the handlers already running finish (their acks and emits go
        out; new events are ignored: workers/drain.py), up to the graceful
        deadline less the flush time. Then each Engine.IO session is closed
        without a CLOSE packet (`abort`), which clients treat as a lost
        transport and so reconnect (a CLOSE packet tells python-socketio's
        client not to), but only after what is already queued for it, acks
        included, has been written (`wait`).

        With `--handover yes` each session that can move goes to another
        worker instead, socket and all (workers/handover.py); only the others
        are closed.
        """
        eio = self.app.eio if self.app else None
        if self.recovery is not None:
            self.recovery.draining = True
        # Finish before the master's deadline, which ends in a KILL.
        grace = 0.8 * float(self.spec.get("graceful_timeout", 10))
        ended = False
        with eventlet.Timeout(grace, False):
            if eio is not None:
                closers = eventlet.GreenPool()
                flush = min(FLUSH_SECONDS, grace / 2)
                move = bool(self.spec.get("handover")) and self.app.sio is not None
                # The handlers' budget, with or without hand-over: what is left
                # after it is kept to flush (or move) the sessions.
                handlers_deadline = time.monotonic() + grace - flush
                self.handlers_deadline = handlers_deadline
                if move:
                    self._ready_heir(list(eio.sockets))
                else:
                    self._finish_handlers(grace - flush)
                here = list(eio.sockets.values())
                for s in here:
                    closers.spawn(self._move_or_close, s, flush, move, handlers_deadline)
                self.drained_sids = {s.sid for s in here}  # (a late one may be among them)
                self.moving.send()
                closers.waitall()
                if move:
                    log.info("handed over %d session(s), closed %d", self.handed_over,
                             self.closed_on_stop)
                    order = getattr(self.app.sio.manager, "order", None)
                    if order is not None and order.unsynced_moves:
                        log.warning("hand-over: %d session(s) left with a channel not "
                                    "synced with the heir (the sync timed out, or a room "
                                    "joined in the instant between its sync and the move): "
                                    "room messages in flight on it may have reached them "
                                    "twice or not at all", order.unsynced_moves)
                    if self.heir_sync is not None and self.heir_sync.late:
                        log.info("hand-over: %d channel(s) joined during the drain were "
                                 "synced with the heir before their sessions left",
                                 self.heir_sync.late)
                    # Serve (forward) what the master routed here before it learnt
                    # that: a connection left in the channel would die with us.
                    if self.link.send(ch.EMPTIED):
                        self.emptied.wait()
                    # Sessions synced with this worker that the master sent on before
                    # it read EMPTIED came before its answer: moved on too. It sends
                    # none after (master/core.py `_move_to_synced`).
                    self.late.waitall()
                self.late_closed = True  # (no yield since: none is taken in unmoved)
            handed = self.emptied.ready()  # (--handover: the sessions went elsewhere)
            while self.pool.running():
                if handed:
                    release_idle(self.idle)  # their next requests go where the sessions went
                else:
                    for sock in list(self.idle):
                        eventlet.greenio.shutdown_safe(sock)  # nothing in flight on these
                eventlet.sleep(0.05)
            ended = True
        if not ended:
            # Said, so that a drain that waits for the deadline is told from one
            # that ends when its work does (the tests look for this line).
            log.warning("draining: still serving %d connection(s) at the graceful "
                        "deadline (%.1fs, 0.8 x --graceful-timeout): stopping anyway",
                        self.pool.running(), grace)
        self.done.send()

    def _finish_handlers(self, seconds: float) -> None:
        """Ignore new events, and let the running handlers end (and write their
        acks) for up to `seconds`; log, by event name, those abandoned then."""
        self.handlers.refusing = True
        left = self.handlers.wait(seconds)
        if left:
            log.warning("draining: abandoned %d handler(s) still running after %.1fs "
                        "(--graceful-timeout): %s", sum(left.values()), seconds,
                        drain.describe(left))
        if self.handlers.ignored:
            log.info("draining: ignored %d event(s) that arrived while draining",
                     self.handlers.ignored)

    def _ready_heir(self, eio_sids: list[str]) -> None:
        """Interest channels: before any session leaves, have the heir subscribe to
        the channels of all of them and sync each with this worker's listener
        (workers/heir.py); what could not be synced is logged (those channels'
        messages in flight during a move may reach a session twice or not at
        all). With no heir named (a full stop, or no READY worker left) the
        master closes the sessions instead of moving them, and says so."""
        mgr = self.app.sio.manager
        if not isinstance(mgr, InterestRedisManager) or mgr.order is None:
            return
        self.heir_sync = HeirSync(mgr)
        self.heir_sync.ready(self.heir, eio_sids)

    def sync_session(self, eio_sid: str) -> None:
        """Just before a session's position is taken (workers/handover.py): its
        channels not synced with the heir yet (a room joined during the drain,
        a new heir) are synced now. Yields; a no-op without interest channels."""
        if self.heir_sync is not None:
            self.heir_sync.session(eio_sid)

    def _move_in_late(self, payload: bytes, fd: int | None) -> None:
        """A session handed over to this draining worker (it was synced with it
        and on its way when the master named another heir): take it in, and move
        it on once the drain's moves began (its channels are then synced with
        this worker's heir first, `sync_session`), like the sessions here; closed
        (the client reconnects) once the drain's last move is done."""
        if self.late_closed:
            if fd is not None:
                os.close(fd)
            handover.refused_in()
            return
        handover.move_in(self, payload, fd)
        try:
            eio_sid = json.loads(payload)["eio_sid"]
        except (ValueError, KeyError, TypeError):
            return  # (move_in closed it)
        log.info("%s: moved in while draining (synced with this worker, on its way when "
                 "the master named another heir); moving it on", eio_sid)

        def move_on() -> None:
            self.moving.wait()
            s = self.app.eio.sockets.get(eio_sid)
            if s is not None and eio_sid not in self.drained_sids:
                self._move_or_close(s, FLUSH_SECONDS, True,
                                    max(self.handlers_deadline, time.monotonic()))

        self.late.spawn(move_on)

    def _move_or_close(self, s, flush_seconds: float, move: bool,
                       handlers_deadline: float) -> None:
        """Move `s` to another worker (`move`: --handover), its handlers waited
        for until `handlers_deadline` (time.monotonic()); else, or if it cannot
        move, close it after `flush_seconds` at most of writes."""
        if move:
            try:
                if handover.move_out(self, s, handlers_deadline):
                    self.handed_over += 1
                    return
            except Exception:
                log.exception("%s: hand-over failed; closing the session", s.sid)
        self.closed_on_stop += 1
        _close_session(s, flush_seconds)


def listed_or_own_origin(listed: str | list[str]):
    """What `--cors-origins` sets as python-engineio's `cors_allowed_origins`: '*'
    as it is, else a check that admits the listed origins AND the server's own.

    python-engineio admits only its own origin by default, and only the listed
    ones once a list is given, so `--cors-origins https://admin.socket.io`
    (the README's advice for the Admin UI) refused the app's own pages. Their
    requests are same-origin, which browsers never restrict and Socket.IO's
    JS server never refuses: listing an origin adds it. The own origin is
    python-engineio's (`scheme://Host`, and the X-Forwarded-Proto/-Host one
    behind a proxy). `listed`: the setting's value, '*' or a list of origins.
    """
    if listed == "*" or "*" in listed:
        return listed
    allowed = frozenset([listed] if isinstance(listed, str) else listed)

    def check(origin: str | None, environ: dict) -> bool:
        if origin in allowed:
            return True
        scheme, host = environ.get("wsgi.url_scheme"), environ.get("HTTP_HOST")
        if not (scheme and host):
            return False
        if origin == f"{scheme}://{host}":
            return True
        if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
            fscheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
            fhost = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
            return origin == f"{fscheme}://{fhost}"
        return False

    return check


def _without_ws_compression(wsgi):
    """Hide the client's permessage-deflate offer, so WebSockets go uncompressed.

    eventlet accepts the offer whenever the request carries it, and then
    deflates every frame once per client: for a room broadcast that is one
    deflate per member, the main cost of fan-out (see docs/benchmarks.md).
    """
    def app(environ, start_response):
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return wsgi(environ, start_response)

    return app


def _close_session(s, flush_seconds: float) -> None:
    """Close one Engine.IO session once what is queued for it has gone out.

    Its pending long-poll or WebSocket writer takes the queue; a client that
    already left takes nothing, so the wait is bounded (engineio's own
    close(wait=True) would wait for ever).
    """
    deadline = time.monotonic() + flush_seconds
    try:  # internals: engineio-socket-attrs (queue)
        while s.queue.qsize() and time.monotonic() < deadline:
            eventlet.sleep(0.02)
        s.close(wait=False, abort=True)
    except Exception:
        pass


def _summary(e: BaseException) -> str:
    """One line that says what is wrong with the app, and where."""
    if isinstance(e, SyntaxError):
        return f"{type(e).__name__}: {e.msg} ({e.filename}, line {e.lineno})"
    where = ""
    frames = _user_frames(e)
    if frames:
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"{type(e).__name__}: {e}{where}"


def _user_frames(e: BaseException) -> list:
    """The traceback without the import machinery and imcluster's own frames."""
    import imcluster.master

    skip = ("<frozen", os.path.dirname(importlib.__file__)) + tuple(
        os.path.dirname(m.__file__) + os.sep
        for m in (sys.modules["imcluster"], imcluster.master, sys.modules["imcluster.workers"]))
    return [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]


def _print_user_traceback(e: BaseException) -> None:
    frames = _user_frames(e)
    if frames:
        print("Traceback (the app's frames):", file=sys.stderr)
        print("".join(traceback.format_list(frames)), end="", file=sys.stderr)


_LIBRARY_LOGGERS = ("socketio.server", "engineio.server", "socketio.client", "engineio.client")


def _no_bare_library_handlers():
    """While the app imports, python-socketio/engineio cannot add their bare
    StreamHandler (see `_one_handler_per_line`): what a server logs as it is
    built ("Server initialized for eventlet.") would otherwise print twice.
    Returns the undo."""
    original = logging.Logger.addHandler

    def add_handler(logger: logging.Logger, handler: logging.Handler) -> None:
        if (logger.name in _LIBRARY_LOGGERS and type(handler) is logging.StreamHandler
                and handler.formatter is None):
            return
        original(logger, handler)

    logging.Logger.addHandler = add_handler

    def undo() -> None:
        logging.Logger.addHandler = original

    return undo


def _one_handler_per_line() -> None:
    """Drop the bare StreamHandler python-socketio/engineio add to their loggers.

    A Server built with logger=True (or False, for errors) adds
    `logging.StreamHandler()` to 'socketio.server' / 'engineio.server' when
    that logger has no level yet (python-socketio 5.x base_server.py,
    python-engineio 4.x base_server.py). Its records also reach our root
    handler, so every line was printed twice, once without the worker's
    prefix. Without it each line is printed once, by ours.

    internals: socketio-log-handler, engineio-log-handler
    """
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if type(h) is logging.StreamHandler and h.formatter is None:
                logger.removeHandler(h)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def run(spec: dict, link: Link) -> int:
    """Load the app described by `spec` and serve until stopped; the exit code."""
    speedups.install()
    sessions.install()
    admin.install()
    _raise_fd_limit()
    w = WorkerServer(spec, link)
    signal.signal(signal.SIGTERM, lambda *_: w.stop("SIGTERM"))
    try:
        w.load()
    except Exception as e:
        why = str(e) if isinstance(e, appmod.AppError) else _summary(e)
        if not isinstance(e, (appmod.AppError, SyntaxError)):
            _print_user_traceback(e)
        log.error("cannot load the app: %s", why)
        w.link.send(ch.ERROR, why.encode())
        return APP_LOAD_ERROR
    w.serve()
    return 0
