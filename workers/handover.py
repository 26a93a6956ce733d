"""Session hand-over: a retiring worker's live sessions move to a READY worker, socket and all.

With `--handover yes`, a worker that drains (rolling reload, scale-down, a
memory-limit replacement: every retirement goes through `Core.retire`, which
sends STOP) moves each session it can instead of closing it, and the client
notices nothing: no disconnect, no new handshake, no `connect`/`disconnect`
handler in the app, every ack answered.

What moves (the JSON state of one session, at most one channel frame)
---------------------------------------------------------------------
(WebSocket sessions; long-polling ones: see "Polling sessions" below.)
- Engine.IO: the sid, that the session is upgraded, `last_ping` (a PING
  whose PONG is due) or when its next PING is due (`next_ping_at`), the
  bytes the session's `BufferedReceive` read but eventlet did not parse yet
  (base64; empty whenever the reader was stopped at a frame boundary, which
  is the only place it is stopped), and the session dict python-engineio
  keeps (`Socket.session`): python-socketio keeps every namespace's
  `save_session` data there, keyed by namespace.
- Socket.IO, per namespace the session joined: its Socket.IO sid (the same
  sid on the new worker: `manager.rooms[ns][None]` maps it to the Engine.IO
  sid), its rooms (`manager.get_rooms`), and the next ack id the server
  would give it (python-socketio's `callbacks[sid][0]` counter).
- The request environ, every entry JSON gives back unchanged (HTTP_*,
  QUERY_STRING, REMOTE_ADDR, PATH_INFO, wsgi.url_scheme, ...; see
  _SERVER_ENTRIES), flagged `imcluster.handover: True`. The new worker adds
  the WSGI server's entries (its own), an empty body, and what the app's
  middleware sets on every request, made there: Flask-SocketIO's `flask.app`
  (workers/app.py, App.request_entries). Entries that are not JSON (objects a
  middleware put there) stay behind; the old worker logs which.
- Flask-SocketIO's per-connection Flask session (`environ['saved_session']`,
  with manage_session, its default): its items, which must be JSON (else the
  session is closed instead, as for save_session data), wrapped again on
  arrival in the class Flask-SocketIO keeps it in.
- The client's TCP socket itself (SCM_RIGHTS), detached, never shut down:
  whatever the kernel already holds for it travels with it unread.

What does not move, and so waits or refuses
-------------------------------------------
- Handlers of the session still running: the old worker stops reading and
  waits for them, and for their writes, so that their acks go out from the
  old worker, in order, before the socket leaves. It waits up to the drain's
  budget (`deadline`: 0.8 x --graceful-timeout less the flush time, as for
  the handlers of a drain without hand-over: workers/main.py `_stop`); a
  handler still running then is abandoned, a WARNING names it by event, and
  the session is closed as with `--handover no` (the client reconnects).
- The server's own pending acks (an `emit(..., callback=...)` to the client
  not yet answered): callbacks are Python callables. The old worker waits
  for them (bounded by HANDLER_WAIT and the budget); a callback still pending then is
  dropped with a warning (its answer reaches the new worker, which ignores
  an ack id it does not know, as python-socketio does).
- The app's own state keyed by sid (a module-level dict): only the app can
  move it. The pattern that moves is `sio.save_session(sid, {...})`; an
  app that cannot live without its own state refuses the move (below).
- Compressed WebSockets (`--ws-compression yes`: the deflate context is not
  serialisable), a WebSocket in the middle of a fragmented message, a
  session whose upgrade does not end within HANDLER_WAIT, a session whose
  state does not fit one channel frame or is not JSON: they are closed as
  with `--handover no` and the client reconnects.

Polling sessions
----------------
A long-polling session is a series of HTTP requests, so what must move is
its state plus whatever request it has open here, and the requests that
come later must find it:
- Requests naming the session are counted while in flight (`gate`, called
  from the protocol layer for every Engine.IO request). Once the move begins,
  new ones wait (on `handover_done`); the move waits for those in flight to
  end, except a GET parked for packets.
- The parked GET is asked out of its wait with a PARK mark in the session's
  queue (sessions.PARK): if the mark is the first thing it takes, the GET
  leaves unanswered with the session (HandingOver ends it here without a
  response or a shutdown); if packets were queued before the mark, it is
  answered here as usual and the move goes on without it.
- The state is the WebSocket one (sids, rooms, next ack ids, save_session
  data, last_ping, environ) plus `transport: "polling"`, the packets still
  queued (encoded; binary ones in base64) and, with a parked GET, its request
  head (`request_head`, rebuilt from the WSGI environ). The HANDOVER frame
  carries that GET's socket, or no fd when none was parked.
- The new worker registers the session with its queue, then serves the
  parked GET from its head (http.replay_heads) and the socket: the first
  packet queued for the session answers it, from the new worker.
- A request naming the session that reaches the old worker afterwards (the
  master routes the worker's sids to it while it drains, until EMPTIED) is
  passed on with its head, its body unread in the socket (FORWARD 'G'); the
  master sends it to the heir (`Core.moved`). Once the old worker has moved
  all it could it says EMPTIED ('J'): the master routes its sids to the heir
  itself from then on, and answers EMPTIED after anything queued for the
  old worker, which exits only then (a connection left in its channel would
  die with it).
- Every session of one worker goes to one heir (the first chosen, while it
  takes new sessions): routing is by the worker a sid names, so `Core.moved`
  holds one heir per worker, not one per sid.
- A session in the middle of its upgrade (WebSocket open, probe answered,
  UPGRADE not yet received) is not moved half-way: the worker waits for the
  upgrade to end, which takes the client one round trip (its last poll
  ends with the probe's NOOP, then it sends UPGRADE), bounded by
  HANDLER_WAIT, and moves the session as what it became: a WebSocket, or a
  polling session if the probe failed. Moving the half-open state (two
  sockets, a NOOP owed to the poll, the probe's PONG) would need both
  sockets to travel in one frame and the new worker to resume eventlet's
  WebSocket handshake mid-way; waiting costs one round trip and keeps the
  Engine.IO upgrade logic in one place. A probe still open after
  HANDLER_WAIT (a client that stalls) is closed as without hand-over.

The app's say
-------------
`imcluster.on_handover(leaving=fn, arrived=fn)` (imcluster/handover.py):
`leaving(sid, namespace)` runs in the old worker before the state is taken;
returning False refuses the move (the session is closed and reconnects).
`arrived(sid, namespace)` runs in the new worker once the session is
registered, before its first packet is read.

The wire (imcluster/channel.py, kind HANDOVER 'V', both directions)
------------------------------------------------------------------
1. The old worker stops the session's reader at a WebSocket frame boundary
   (the reader is parked in recv() between two messages, with nothing
   buffered: a `HandingOver` exception thrown into it ends the read loop
   without closing anything), waits as above, takes the session out of
   `eio.sockets` and the manager without running any handler, detaches the
   socket and sends HANDOVER: the state as JSON, the fd as SCM_RIGHTS.
2. The master asks its decision core for a target (`events.Moving`): the
   least loaded READY worker holding a slot. It records "sessions of worker
   W now live at V" (`Core.moved`; when V later moves on to X, W's entry
   follows to X once V has moved all it could, EMPTIED, or exited: until then
   V may still hold some of W's sessions, and forwards requests for those it
   moved) and relays the same frame, fd included, to V.
   With no READY worker it closes the fd (the client reconnects).
3. The new worker rebuilds the session: a ClusterSocket under the same sid
   in `eio.sockets`, upgraded, its WebSocket an eventlet RFC6455WebSocket
   over the received fd; the Socket.IO sids and rooms in its manager; the
   environ; then it resumes the read loop in a greenlet of its own.

Routing stays by sid (design.md, invariant 3): a request naming W goes to W
while W serves its own; once W is gone it goes to `Core.moved[W]` while that
worker serves; the entry is dropped when it exits, or when its LOAD says it
took in every session relayed to it and holds none whose sid names W any more
(`report`: "moved_in", "held"; `Core._prune_forwarding`).

Broadcasts in flight (master relay)
-----------------------------------
The relay is ordered per channel, and the move is ordered with it:
- V takes the session in (`move_in`) only after its listener has handled
  every broadcast relayed to it before the HANDOVER frame (those were for W's
  sessions: delivered by W, or replayed, below);
- W, before it detaches the session, lets its listener handle what was
  relayed to it so far (it reaches the session from W), and puts in the state
  how many relayed messages it had handled (`relay_seen`);
- the master numbers its relays to each worker and keeps the last
  channel.REPLAY_KEEP; with the HANDOVER it sends V, as REPLAY frames, those
  W had not handled, and V delivers each to that session alone, if it was
  addressed to it (`replay`).
- A broadcast W publishes before the detach went out from W and reaches the
  master before the HANDOVER; one published after reaches V after it.
- What V itself publishes in the instant before the session arrives, if the
  master gets it after the HANDOVER, V delivered locally without the
  session, and its relay to W came too late. So the master, relaying the
  HANDOVER, writes in it how many messages V had published by then
  ("heir_seen"); V numbers its own publishes the same way (the channel is
  in order) and keeps the last channel.REPLAY_KEEP; when the session
  arrives, V delivers it those numbered after heir_seen, before anything
  newer (they were all published before it arrived).
So nothing reaches the session twice and nothing is missed, as long as a
move takes less than REPLAY_KEEP messages of either kind. Only emits are
replayed, not a relayed room change or disconnect naming the session in that
instant.

Broadcasts in flight (Redis, one channel)
-----------------------------------------
With `--redis` (`--redis-channels single`, the default) no master sees every
message, but every worker reads the one channel in the same order
(workers/redis_order.py has the design and its bounds):
- every published message carries an id (publisher, number, and whether its
  publisher delivered it to its own clients at once);
- W, with no yield between this and the detach, puts in the state where its
  listener is (`order.seen`: the last number it applied of each publisher,
  and `order.mark` for messages without an id) and which of the local
  deliveries the session already had (`order.had`: W's own publishes so far);
- V, when the session arrives (no yield since its rooms were entered), either
  has read past that position and delivers to the session alone, if
  addressed to it, what came after it from a ring of recent messages, or
  holds channel deliveries to that session until its listener passes it;
  after that position it skips what `had` covers (W's own emits, which W
  delivered at once and V would deliver again) and delivers its own emits
  from before the arrival (which V delivered without the session and ignores
  when Redis sends them back).
So nothing reaches the session twice and nothing is missed, as long as V's
listener is at most RING_KEEP messages ahead and passes W's position within
ORDER_WAIT (each fallback is logged). With `--recovery-window` the offsets
given by Redis follow the same order (only emits with an ack are delivered
at once by their publisher), so a moved session's offsets go on counting.

Broadcasts in flight (Redis, interest channels)
-----------------------------------------------
With `--redis-channels interest` (and on a Redis Cluster) each channel has its
own order, and the same positions are kept per channel (workers/redis_order.py,
"Interest channels"): the state carries one per channel the session's rooms
are on. Since the heir may hold none of those channels, the master names it in
STOP, and before any session leaves W asks it (on its worker channel) to
subscribe to every channel of the sessions that will move and to publish a
marker on each once Redis confirmed; W moves its sessions once its listener
has read each marker (at most 3 s; what could not be synced is logged). Then
on each channel nothing lies between W's position and what V hears, and the
rules above hold per channel. A room joined during the drain, and a new heir
named by the master during it, are synced the same way before the session's
position is taken (workers/heir.py). A message to several rooms is given to a
session in two of them once, over all its channels (workers/redis_order.py,
"Several rooms at once").
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import itertools
import json
import logging
import socket
import time

import eventlet
import eventlet.event
import eventlet.greenio
import eventlet.hubs
import eventlet.websocket
from engineio import packet as eio_packet

from imcluster import channel as ch
from imcluster import sid as sidcodec
from imcluster.handover import hook
from imcluster.workers import drain, internals, sessions
from imcluster.workers.http import HandingOver, handed_over, replay_heads, serve_connection

log = logging.getLogger("imcluster.worker")

# How long the old worker waits for what a client holds up: a session's reader
# to reach a frame boundary, an upgrade to end, its requests to end, its
# server-side acks to be answered (never past the drain's budget). The app's
# own handlers are waited for up to the budget itself (`move_out`'s deadline).
HANDLER_WAIT = 3.0
# The request environ (python-socketio keeps the handshake request's, per
# Engine.IO sid, and hands it to handlers) moves entry by entry: every entry
# JSON carries unchanged (text, numbers, booleans, None, lists and str-keyed
# dicts of them: the CGI variables, HTTP_*, wsgi.url_scheme, werkzeug's
# ProxyFix originals, an app's own plain entries), plus eventlet's
# `headers_raw` (a tuple of (name, value) pairs: moved as lists, made a tuple
# again). These are not carried, because the new worker makes them itself:
_SERVER_ENTRIES = frozenset({
    # the WSGI server's (PEP 3333), from the new worker's eventlet server
    "wsgi.version", "wsgi.errors", "wsgi.multithread", "wsgi.multiprocess",
    "wsgi.run_once", "wsgi.file_wrapper",
    # the handshake request's body and connection, which ended with it: an empty
    # wsgi.input and posthooks there, no eventlet.input nor set_idle
    "wsgi.input", "eventlet.input", "eventlet.posthooks", "eventlet.set_idle",
    # Flask-SocketIO's Flask app (App.request_entries) and its session (carried
    # apart as "flask_session"); the Request object werkzeug caches in the environ,
    # which Flask's next request context makes again
    "flask.app", internals.FLASK_SOCKETIO_SESSION, "werkzeug.request"})
# Entries left behind (key and type), already logged by this worker: logged
# once per hand-over (a retiring worker hands over once), not once per session.
_dropped_said: set[tuple[str, ...]] = set()

class Refused(Exception):
    """This session cannot move (the reason is the message); it is closed instead."""


# ---- the old worker -------------------------------------------------------------


def move_out(worker, s: sessions.ClusterSocket, deadline: float | None = None) -> bool:
    """Hand session `s` to the master; True if it left, False if it is still
    here (refused or failed before anything was taken: close it as usual).

    `deadline` (time.monotonic()): until when the session's running handlers
    are waited for, the drain's budget for them (workers/main.py `_stop`);
    None: HANDLER_WAIT from now."""
    if deadline is None:
        deadline = time.monotonic() + HANDLER_WAIT
    if not getattr(s, "upgraded", False):
        return _move_out_polling(worker, s, deadline)
    return _move_out_websocket(worker, s, deadline)


class Abandoned(Exception):
    """The session's handlers did not end within the budget (the message names
    them): the session is closed, and the handlers are left running."""


def _refused(s: sessions.ClusterSocket, e: Exception) -> None:
    """Log why `s` stays (and is closed): a WARNING when handlers are abandoned."""
    if isinstance(e, Abandoned):
        log.warning("%s: not handed over: %s; closing the session", s.sid, e)
    else:
        log.info("%s: not handed over: %s", s.sid, e)


def _move_out_websocket(worker, s: sessions.ClusterSocket, deadline: float) -> bool:
    sio, eio = worker.app.sio, worker.app.eio
    try:
        stopped = _stop_reader(s, min(deadline, time.monotonic() + HANDLER_WAIT))
    except Refused as e:
        log.info("%s: not handed over: %s", s.sid, e)
        return False
    relay = getattr(worker, "relay", None)
    order = getattr(sio.manager, "order", None)
    try:
        state = _take_state(worker, sio, eio, s, deadline)
        state["relay_seen"] = 10**12  # room for the number, set below
        state["heir_seen"] = 10**12  # room for the master's number (move_in)
        if order is not None:
            # No yield from here to _forget: the Redis listener stays between two
            # messages, and this is where it is (workers/redis_order.py).
            state["order"] = order.state_of(s.sid, _channels(sio.manager, s.sid))
        if len(ch.encode_json(state)) > ch.FRAGMENT:
            raise Refused("its state takes more than one channel frame")
    except (Refused, Abandoned) as e:
        _refused(s, e)
        stopped.resume()
        return False
    # Gone: forget it here without a disconnect handler, and, with no yield in
    # between, note how many relayed broadcasts reached it from here: the master
    # replays the rest to its new owner (channel.py, REPLAY).
    _gone(worker, sio, eio, s, state, order)
    if relay is not None:
        state["relay_seen"] = relay.handled
        state["heir_seen"] = 0  # the master puts the heir's number here
    else:
        del state["relay_seen"], state["heir_seen"]
    fd = internals.raw_socket(s.writer.sock).fileno()
    if not worker.link.send(ch.HANDOVER, ch.encode_json(state), fd=fd):
        log.warning("%s: the channel refused the hand-over; closing the session", s.sid)
        stopped.resume()  # its reader closes it (no handler: it is forgotten already)
        return True
    stopped.finish()  # the reader's connection ends without a close frame or shutdown
    return True


class _Stopped:
    """A session whose reader was stopped at a frame boundary."""

    def __init__(self, s: sessions.ClusterSocket):
        self.s = s

    def resume(self) -> None:
        """The move failed after the reader stopped: close the session as a drain does."""
        self.s.handover_state = "failed"
        self.s.handover_done.send(False)

    def finish(self) -> None:
        self.s.handover_state = "moved"
        self.s.writer.broken = True  # eventlet's closing frame must not go out
        self.s.handover_done.send(True)


def _stop_reader(s: sessions.ClusterSocket, deadline: float) -> _Stopped:
    if not getattr(s, "upgraded", False) or s.writer is None:
        # python-engineio's own WebSocket path: a compressed WebSocket
        # (--ws-compression), whose deflate state cannot move.
        raise Refused("a compressed WebSocket (permessage-deflate): its deflate state "
                      "cannot move")
    if s.closed or s.closing:
        raise Refused("closing")
    buf = s.receive_buffer
    s.handover_done = eventlet.event.Event()
    stopped = eventlet.event.Event()
    hub = eventlet.hubs.get_hub()

    def interrupt() -> None:
        # Run by the hub, like eventlet's own timeouts: a throw from another
        # greenlet would leave that one suspended for good. The reader is
        # parked between two messages exactly when it waits in recv() at a
        # message boundary with nothing buffered (BufferedReceive).
        if stopped.ready() or s.closed or s.reader is None:
            return  # no reader yet: a session just taken over, whose reader starts soon
        if buf.parked and buf.boundary and buf.pos >= len(buf.buf):
            s.handover_state = "stopping"
            s.reader.throw(sessions.HandingOver())

    s.handover_stopped = stopped
    while not stopped.ready():
        if time.monotonic() > deadline or s.closed:
            raise Refused("its reader did not reach a frame boundary in time")
        hub.schedule_call_global(0, interrupt)
        eventlet.sleep(0.005)
    return _Stopped(s)


def _take_state(worker, sio, eio, s: sessions.ClusterSocket, deadline: float) -> dict:
    """The session's state (module docstring), once its handlers and writes have
    ended; Abandoned if handlers still run at `deadline` (time.monotonic()),
    Refused if its writes are still queued then or the move cannot be made."""
    mgr = sio.manager
    start = time.monotonic()
    acks_deadline = min(deadline, start + HANDLER_WAIT)
    # A message the reader took just before it stopped may have its handler
    # spawned but not started (eventlet starts a spawned greenlet from a
    # zero-delay timer, in a later pass of the hub): one yield to the hub lets
    # every handler spawned before now start and count itself (timers fire in
    # time order), so none of them writes its ack after the socket has left.
    eventlet.sleep(0)
    namespaces = [ns for ns in list(mgr.get_namespaces())
                  if mgr.sid_from_eio_sid(s.sid, ns) is not None]
    sids = {ns: mgr.sid_from_eio_sid(s.sid, ns) for ns in namespaces}
    while True:
        running = len(worker.handlers.by_session.get(s.sid, ()))
        # internals: socketio-manager-callbacks (pending server-side acks by sid)
        waiting = sum(len(mgr.callbacks.get(sid, {})) - (0 in mgr.callbacks.get(sid, {}))
                      for sid in sids.values())
        backlog = s.writer.backlog if s.writer is not None else None
        if not running and not waiting and backlog is None:
            break
        now = time.monotonic()
        if now > deadline:
            if running:
                names = worker.handlers.by_session.get(s.sid, [])
                raise Abandoned(f"abandoned {len(names)} handler(s) still running after "
                                f"{now - start:.1f}s (0.8 x --graceful-timeout less the "
                                f"flush time): {drain.describe(collections.Counter(names))}")
            if backlog is not None:
                raise Refused("its writes did not finish in time")
        if not running and backlog is None and now > acks_deadline:
            log.warning("%s: %d server-side ack(s) still pending; dropped with the move",
                        s.sid, waiting)
            break
        eventlet.sleep(0.005)
    relay = getattr(worker, "relay", None)
    if relay is not None:
        # Broadcasts the master relayed here before now reach the session from
        # here, while it is still attached (the listener handles them apart).
        handled = eventlet.event.Event()
        relay.after_pending(lambda: handled.send(True))
        if not handled.wait(max(min(HANDLER_WAIT, deadline - time.monotonic()), 0.5)):
            raise Refused("the relay's backlog was not handled in time")
    if s.sid in sio._binary_packet:  # internals: socketio-handover-state
        raise Refused("a binary packet is half received")
    leaving = hook("leaving")
    if leaving is not None:
        for ns, sid in sids.items():
            try:
                keep = leaving(sid, ns)
            except Exception as e:
                log.exception("the app's on_handover(leaving=...) failed")
                raise Refused(f"the app's leaving hook failed ({e})") from None
            if keep is False:
                raise Refused(f"the app refused it ({ns})")
    sync = getattr(worker, "sync_session", None)
    if sync is not None:
        # Interest channels: a room joined during the drain (or a new heir) is
        # synced with the heir now; no yield from here to its position.
        sync(s.sid)
    spaces = []
    for ns, sid in sids.items():
        rooms = [r for r in mgr.get_rooms(sid, ns) if r is not None and r != sid]
        counter = mgr.callbacks.get(sid, {}).get(0)
        next_ack = next(counter) if counter is not None else 1
        spaces.append({"namespace": ns, "sid": sid, "rooms": rooms, "next_ack": next_ack})
    environ = sio.environ.get(s.sid, {})  # internals: socketio-handover-state
    env, flask_session = _environ_state(s.sid, environ)
    rb = s.receive_buffer
    rest = rb.buf[rb.pos:] if rb is not None else b""
    state = {"v": 1, "eio_sid": s.sid, "last_ping": s.last_ping, "namespaces": spaces,
             "environ": env, "rest": base64.b64encode(rest).decode(),
             "next_ping_at": getattr(s, "next_ping_at", None)}
    if flask_session is not None:
        state["flask_session"] = flask_session
    try:
        json.dumps(s.session)
    except (TypeError, ValueError) as e:
        raise Refused(f"its session data is not JSON ({e})") from None
    state["session"] = s.session
    if getattr(worker, "recovery", None) is not None:
        worker.recovery.leaving(state)  # pids: recoverable on the new worker too
    return state


def _json_exact(value) -> bool:
    """Whether JSON gives `value` back as it is (no tuple made a list, no int key a str)."""
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


def _environ_state(sid: str, environ: dict) -> tuple[dict, dict | None]:
    """The environ entries that move (see _SERVER_ENTRIES), and the items of
    Flask-SocketIO's session for the connection, or None if it has none yet.

    Raises Refused when the Flask-SocketIO session holds something JSON does
    not give back unchanged (as save_session data that is not JSON: the
    session is closed rather than moved with its data changed). Entries left
    behind are logged, once per distinct set.
    """
    env: dict = {}
    dropped = []
    for k, v in environ.items():
        if k in _SERVER_ENTRIES:
            continue
        if k == "headers_raw" and isinstance(v, tuple):
            v = [list(pair) for pair in v]
        if isinstance(k, str) and _json_exact(v):
            env[k] = v
        else:
            dropped.append(f"{k} ({type(v).__name__})")
    if dropped and tuple(dropped) not in _dropped_said:
        _dropped_said.add(tuple(dropped))
        log.warning("%s: environ entries that are not JSON stay behind with this worker "
                    "(handlers see them missing after the hand-over): %s",
                    sid, ", ".join(dropped))
    # flask-socketio-session: Flask-SocketIO keeps the connection's Flask session
    # in the environ (manage_session, its default), changed in place by handlers.
    session = environ.get(internals.FLASK_SOCKETIO_SESSION)
    if session is None:
        return env, None
    items = dict(session) if isinstance(session, dict) else None
    if items is None or not _json_exact(items):
        bad = ("it is a " + type(session).__name__ if items is None else
               ", ".join(k for k, v in items.items() if not _json_exact({k: v})))
        raise Refused(f"its Flask-SocketIO session is not JSON ({bad})")
    return env, items


def _environ_moved_in(worker, state: dict) -> dict:
    """The environ of a session moved in: the WSGI server's entries from this
    worker's server, the entries that moved, an empty body, the app's own
    request entries made here (Flask-SocketIO: `flask.app`, this worker's Flask
    app) and Flask-SocketIO's session, wrapped as Flask-SocketIO keeps it."""
    server = getattr(worker, "server", None)
    environ = server.get_environ() if server is not None else {}
    environ.update(state.get("environ") or {})
    raw = environ.get("headers_raw")
    if isinstance(raw, list):
        environ["headers_raw"] = tuple(tuple(pair) for pair in raw)
    environ["wsgi.input"] = io.BytesIO()
    environ["eventlet.posthooks"] = []
    environ.update(worker.app.request_entries())  # internals: flask-socketio-middleware
    items = state.get("flask_session")
    if items is not None:
        try:
            # internals: flask-socketio-session
            environ[internals.FLASK_SOCKETIO_SESSION] = internals.flask_socketio_session(items)
        except (ImportError, AttributeError) as e:
            log.error("%s: Flask-SocketIO's session could not be made here (%s); its "
                      "handlers start from the cookie's session", state.get("eio_sid"), e)
    environ["imcluster.handover"] = True
    return environ


# ---- polling sessions -----------------------------------------------------------


class _Upgrading(Exception):
    """The session began its upgrade while the hand-over waited: start again."""


def _move_out_polling(worker, s: sessions.ClusterSocket, deadline: float) -> bool:
    """Move a long-polling session: its state, its queued packets, and the GET
    it has parked (if one waits) with that GET's socket. Requests naming the
    session wait while it moves (`gate`), then follow it (FORWARD)."""
    try:
        return _move_polling(worker, s, deadline)
    finally:
        # Whatever happened, nothing may wait on the move for ever.
        if s.handover_state == "stopping":
            _release(s)


def _move_polling(worker, s: sessions.ClusterSocket, handlers_deadline: float) -> bool:
    sio, eio = worker.app.sio, worker.app.eio
    # What the client holds up (its upgrade, its requests) waits HANDLER_WAIT at
    # most; the app's handlers, up to the drain's budget (_take_state).
    deadline = min(handlers_deadline, time.monotonic() + HANDLER_WAIT)
    while True:
        if s.closed or s.closing or not s.connected:
            log.info("%s: not handed over: closing or not connected", s.sid)
            return False
        # An upgrade in progress ends in about one round trip (probe, PONG,
        # the client's last poll, UPGRADE): wait for it, then move the
        # session as what it has become.
        if s.ws_claimed and not s.upgraded:
            if time.monotonic() > deadline:
                log.info("%s: not handed over: its upgrade did not end in time", s.sid)
                return False
            eventlet.sleep(0.005)
            continue
        if s.upgraded:
            return _move_out_websocket(worker, s, handlers_deadline)
        s.handover_done = eventlet.event.Event()
        s.handover_parked = eventlet.event.Event()
        s.handover_state = "stopping"  # from here requests naming it wait (gate)
        try:
            get = _stop_requests(s, deadline)
            break
        except _Upgrading:
            _release(s)
        except Refused as e:
            log.info("%s: not handed over: %s", s.sid, e)
            _release(s)
            return False
    try:
        state = _take_state(worker, sio, eio, s, handlers_deadline)
        if s.closed or s.closing:
            raise Refused("it closed meanwhile")
        state["relay_seen"] = 10**12  # room for the number, set below
        state["heir_seen"] = 10**12  # room for the master's number (move_in)
    except (Refused, Abandoned) as e:
        _refused(s, e)
        _release(s)
        return False
    order = getattr(sio.manager, "order", None)
    if order is not None:
        # No yield to _forget, as for a WebSocket.
        state["order"] = order.state_of(s.sid, _channels(sio.manager, s.sid))
    # From here to the send, no yield: nothing reaches the queue unseen.
    queued = list(s._take_queued())
    packets = []
    for pkt in queued:
        if pkt is None or pkt is sessions.PARK:
            continue  # (None: cannot be, closing sessions were refused above)
        enc = pkt.encode()
        packets.append({"b": base64.b64encode(enc).decode()} if isinstance(enc, bytes)
                       else {"t": enc})
    state["transport"] = "polling"
    state["queue"] = packets
    sock = None
    if get is not None:
        state["get"] = base64.b64encode(request_head(get)).decode()
        sock = get["eventlet.input"].get_socket()  # internals: eventlet-wsgi-environ
    if len(ch.encode_json(state)) > ch.FRAGMENT:
        for pkt in queued:
            s.queue.put(pkt)
        log.info("%s: not handed over: its state takes more than one channel frame", s.sid)
        _release(s)
        return False
    _gone(worker, sio, eio, s, state, order)
    moved_out.add(s.sid)
    relay = getattr(worker, "relay", None)
    if relay is not None:
        state["relay_seen"] = relay.handled
        state["heir_seen"] = 0  # the master puts the heir's number here
    else:
        del state["relay_seen"], state["heir_seen"]
    fd = internals.raw_socket(sock).fileno() if sock is not None else None
    sent = worker.link.send(ch.HANDOVER, ch.encode_json(state), fd=fd)
    if not sent:
        log.warning("%s: the channel refused the hand-over; the session is lost", s.sid)
        moved_out.discard(s.sid)  # its requests now get "unknown session"
    elif sock is not None:
        handed_over.add(sock)  # the parked GET's connection ends here, untouched
    s.handover_state = "moved"
    s.handover_done.send(True)  # the parked GET ends unanswered; held requests follow
    return True


def _release(s: sessions.ClusterSocket) -> None:
    """The session stays: requests held for it are served here again."""
    s.handover_state = None
    if s.handover_done is not None and not s.handover_done.ready():
        s.handover_done.send(False)


def _stop_requests(s: sessions.ClusterSocket, deadline: float) -> dict | None:
    """Wait until no request for the session is in flight here but a parked GET,
    and take that GET (its environ) out of waiting; None if none was parked."""
    asked = False
    while True:
        if s.closed or s.closing:
            raise Refused("closing")
        if s.ws_claimed or s.upgraded:
            raise _Upgrading()
        parked = s.handover_parked
        if parked.ready():
            if parked.wait() == "parked":
                return _gets.get(s.sid)
            # Answered here with what was queued before the mark: wait for that
            # request to end, then look again.
            s.handover_parked = eventlet.event.Event()
            asked = False
        n = _requests.get(s.sid, 0)
        if n == 0 and not s.polling:
            return None
        if n == 1 and s.polling and not asked and s.sid in _gets:
            s.queue.put(sessions.PARK)
            asked = True
        if time.monotonic() > deadline:
            raise Refused("its requests did not end in time")
        eventlet.sleep(0.002)


# Engine.IO sids of sessions that left this worker, and, per sid, the requests
# for it in flight here and the environ of its GET in flight (the one a
# hand-over may park). Only kept with --handover yes (see `enable`).
moved_out: set[str] = set()
_requests: dict[str, int] = {}
_gets: dict[str, dict] = {}
_forward = None  # the worker's FORWARD sender, set by `enable`


def enable(forward) -> None:
    """Turn on the request gate (`--handover yes`): `forward(sock, head)` sends a
    client socket and the head of its request, already read, to the master
    (FORWARD); it returns False if the channel is closed."""
    global _forward
    _forward = forward


def enabled() -> bool:
    return _forward is not None


def gate(environ: dict, sid: str | None, sockets: dict, serve):
    """Serve one Engine.IO request (`serve()`), minding hand-overs.

    A request naming a session that is moving waits for the move to end; one
    naming a session that moved leaves for its new owner: its connection goes
    to the master with the head of the request (FORWARD), the body unread in
    the socket, and HandingOver ends the request here without an answer.
    In flight requests are counted per session, so that a move waits for them.
    """
    if sid is None:
        return serve()
    s = sockets.get(sid)  # internals: engineio-server-attrs (sockets)
    if (s is not None and s.handover_state == "stopping" and s.handover_done is not None
            and not s.upgraded):
        s.handover_done.wait()
    if sid in moved_out:
        sock = environ["eventlet.input"].get_socket()  # internals: eventlet-wsgi-environ
        head = request_head(environ)
        if len(head) <= ch.FRAGMENT and _forward(sock, head):
            handed_over.add(sock)
            raise HandingOver()
        # The channel is closed: the request gets the usual "unknown session".
    is_get = (environ.get("REQUEST_METHOD") == "GET" and "HTTP_UPGRADE" not in environ)
    if is_get:
        _gets[sid] = environ
    try:
        with _counted(_requests, sid):
            return serve()
    finally:
        if is_get and _gets.get(sid) is environ:
            del _gets[sid]


def request_head(environ: dict) -> bytes:
    """The request line and headers of a WSGI request, rebuilt from its environ
    (eventlet keeps the raw path in RAW_PATH_INFO), for another worker to read
    as if it came from the socket. The body, if any, is still in the socket."""
    path = environ.get("RAW_PATH_INFO") or environ.get("PATH_INFO") or "/"
    qs = environ.get("QUERY_STRING")
    lines = [f"{environ.get('REQUEST_METHOD', 'GET')} {path}{'?' + qs if qs else ''} HTTP/1.1"]
    for k, v in environ.items():
        if k.startswith("HTTP_") and isinstance(v, str):
            lines.append(f"{k[5:].replace('_', '-').title()}: {v}")
    if environ.get("CONTENT_LENGTH"):
        lines.append(f"Content-Length: {environ['CONTENT_LENGTH']}")
        if environ.get("CONTENT_TYPE"):
            lines.append(f"Content-Type: {environ['CONTENT_TYPE']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


def _gone(worker, sio, eio, s: sessions.ClusterSocket, state: dict, order) -> None:
    """The session left: forget it here, recovery first. Once it is no longer
    held here, this worker reports nothing more of it (its new worker reports
    it "up"); `_forget`'s room removals would otherwise each report a "change"
    down to no rooms, and with --redis that could land after the new worker's
    "up" (two publishers, no order between them; the holder is the same
    Engine.IO sid): a session killed later was recovered in no room and heard
    nothing more (a test_recovery failure in CI). A polling session was not
    forgotten by recovery at all (its room removals reported the same way)."""
    recovery = getattr(worker, "recovery", None)
    if recovery is not None:
        recovery.left(state)
    _forget(sio, eio, s, state)
    if order is not None:
        order.left(s.sid)


def _forget(sio, eio, s: sessions.ClusterSocket, state: dict) -> None:
    mgr = sio.manager
    for space in state["namespaces"]:
        mgr.basic_disconnect(space["sid"], space["namespace"])
    sio.environ.pop(s.sid, None)
    eio.sockets.pop(s.sid, None)  # internals: engineio-server-attrs (sockets)
    s.closed = True  # its pinger entries and any late send() see a closed session


# ---- the new worker --------------------------------------------------------------


def move_in(worker, payload: bytes, fd: int | None) -> None:
    """Rebuild the session described by `payload` and serve it: a WebSocket
    over the client socket `fd`, or a polling session, whose parked GET (if
    it had one) arrives as `fd`; closes `fd` if the state is unusable."""
    sock = socket.socket(fileno=fd) if fd is not None else None  # green, after monkey_patch
    global moved_in
    moved_in += 1
    try:
        state = json.loads(payload)
        eio_sid = state["eio_sid"]
        spaces = state["namespaces"]
        rest = base64.b64decode(state.get("rest", ""))
        polling = state.get("transport") == "polling"
        queued = [eio_packet.Packet(encoded_packet=p["t"] if "t" in p
                                    else base64.b64decode(p["b"]))
                  for p in state.get("queue", ())]
        get = base64.b64decode(state["get"]) if polling and "get" in state else None
        if not isinstance(state.get("environ") or {}, dict) or \
                not isinstance(state.get("flask_session") or {}, dict):
            raise TypeError("environ and flask_session must be objects")
        if not polling and sock is None:
            raise ValueError("a WebSocket session without its socket")
    except (ValueError, KeyError, TypeError) as e:
        log.error("a hand-over with unusable state (%s); closing its connection", e)
        if sock is not None:
            eventlet.greenio.shutdown_safe(sock)
            sock.close()
        return
    sio, eio = worker.app.sio, worker.app.eio
    s = sessions.ClusterSocket(eio, eio_sid)
    _held(eio_sid, s)  # no yield since move_in began: counted and held at once
    s.connected = True
    s.session = state.get("session") or {}
    s.last_ping = state.get("last_ping")
    environ = _environ_moved_in(worker, state)
    ws = None
    if polling:
        for pkt in queued:
            s.queue.put(pkt)
    else:
        s.upgraded = True
        s.ws_claimed = True
        ws = eventlet.websocket.RFC6455WebSocket(sock, environ, version=13)
        # Writable before it is registered: what is sent to it from now on goes
        # out (an Engine.IO queue would have no writer to take it).
        s.adopt_websocket(ws, rest)
    eio.sockets[eio_sid] = s  # internals: engineio-server-attrs (sockets)
    # python-engineio purges closed sessions (a client gone without a word, then
    # timed out) in a service task it starts at its first handshake; a worker
    # that got its sessions by hand-over alone never had one, so start it here.
    # internals: engineio-service-task
    if eio.start_service_task:
        eio.start_service_task = False
        eio.service_task_handle = eio.start_background_task(eio._service_task)
    mgr = sio.manager
    sio.environ[eio_sid] = environ  # internals: socketio-handover-state
    # The interest Redis manager would wait for each new channel's subscription;
    # this runs on the channel reader, which must not wait on Redis.
    with getattr(mgr, "without_waiting", contextlib.nullcontext)():
        for space in spaces:
            ns, sid = space["namespace"], space["sid"]
            # basic_enter_room: a pub/sub manager's enter_room would publish it to
            # the other workers while the sid is not yet connected here.
            # internals: socketio-manager-callbacks (basic_enter_room)
            for room in (None, sid, *space["rooms"]):
                mgr.basic_enter_room(sid, ns, room, eio_sid=eio_sid)
            # internals: socketio-manager-callbacks
            mgr.callbacks[sid] = {0: itertools.count(int(space.get("next_ack", 1)))}
    recovery = getattr(worker, "recovery", None)
    if recovery is not None:
        recovery.arrived(sio, state, s.session)
    order = getattr(mgr, "order", None)
    if order is not None:
        # Redis, one channel: what the old worker's listener had not applied, or
        # hold what this one has not reached yet (workers/redis_order.py). No
        # yield since the rooms were entered.
        order.arrived(eio_sid, state.get("order"), _channels(mgr, eio_sid))
    # What this worker published itself before the session was here and after
    # the master took the hand-over in reached neither the session here nor at
    # its old worker: deliver it now, in order, before anything newer. With
    # connection state recovery, an emit without an ack is delivered here only
    # when the master sends it back (RELAY, to every worker): the old worker
    # got it too, and REPLAY covers what it had not handled.
    relay = getattr(worker, "relay", None)
    heir_seen = state.get("heir_seen")
    if relay is not None and isinstance(heir_seen, int):
        for n, message in list(relay.own):
            if n > heir_seen and not (recovery is not None and _echoed(message)):
                try:
                    replay(worker, eio_sid, message)
                except Exception:  # one odd message must not leave the session unserved
                    log.exception("%s: replaying a broadcast to a session moved in", eio_sid)
    arrived = hook("arrived")
    if arrived is not None:
        for space in spaces:
            try:
                arrived(space["sid"], space["namespace"])
            except Exception:
                log.exception("the app's on_handover(arrived=...) failed")
    # The next PING when it was due at the old worker (one interval after the
    # last PONG: the client counts pingInterval + pingTimeout from the last PING,
    # so restarting the interval at the move made clients moved late in it time
    # out); with a PING pending (last_ping set) its PONG, which reaches this
    # worker, schedules the next one.
    next_ping_at = state.get("next_ping_at")
    if s.last_ping is not None:
        s.await_pong()
    elif isinstance(next_ping_at, (int, float)) and not isinstance(next_ping_at, bool):
        s.ping_at(min(float(next_ping_at), time.time() + eio.ping_interval))
    else:
        s.schedule_ping()
    if ws is not None:
        worker.connections += 1
        worker.pool.spawn(_serve, worker, s, ws)
    elif sock is not None:
        serve_request(worker, sock, get)


# Sessions handed over to this worker (HANDOVER frames taken in, usable or not,
# since it started), and those still here by the worker id their sid names: the
# master keeps a retired worker's forwarding entry while its holder holds one
# of its sessions (reported in LOAD: `report`).
moved_in = 0
_held_by_origin: dict[int, dict[str, sessions.ClusterSocket]] = {}


def _held(eio_sid: str, s: sessions.ClusterSocket) -> None:
    origin = sidcodec.worker_of(eio_sid)
    if origin is not None:
        _held_by_origin.setdefault(origin, {})[eio_sid] = s


def refused_in() -> None:
    """A HANDOVER this worker closed unread (it arrived while it stopped)."""
    global moved_in
    moved_in += 1


def report() -> dict:
    """This worker's hand-over figures for LOAD: {"moved_in": int, "held": the
    sorted worker ids that its moved-in sessions' sids name}. A session that
    closed, or moved on (`_forget` marks it closed), is no longer held.
    O(sessions moved in and still held), once per heartbeat."""
    for origin in list(_held_by_origin):
        held = _held_by_origin[origin]
        for sid in [sid for sid, s in held.items() if s.closed]:
            del held[sid]
        if not held:
            del _held_by_origin[origin]
    return {"moved_in": moved_in, "held": sorted(_held_by_origin)}


def serve_request(worker, sock: socket.socket, head: bytes | None) -> None:
    """Serve a client connection whose request head another worker already read
    (a parked GET that moved, or a FORWARD): from `head`, then from the socket."""
    if head:
        replay_heads[sock] = head
    worker.connections += 1
    worker.pool.spawn(serve_connection, worker.server, sock, worker._closed_one)


def _serve(worker, s: sessions.ClusterSocket, ws) -> None:
    try:
        s.resume_websocket(ws)
    except Exception:
        log.exception("%s: a handed-over session failed", s.sid)
    finally:
        if getattr(s, "handover_state", None) != "moved":
            eventlet.greenio.shutdown_safe(ws.socket)
        ws.socket.close()
        worker.connections -= 1
        # As python-engineio's handle_request does once a WebSocket's handler
        # returns: a closed session leaves at once, not at the service task's
        # next sweep (up to ping_timeout later), so LOAD counts it gone.
        sockets = worker.app.eio.sockets  # internals: engineio-server-attrs (sockets)
        if s.closed and sockets.get(s.sid) is s:
            del sockets[s.sid]


def _channels(mgr, eio_sid: str) -> list[str] | None:
    """With interest channels, those the session's rooms are on (its positions are
    per channel, workers/redis_order.py); None with one channel."""
    of = getattr(mgr, "channels_of_session", None)
    return of(eio_sid) if of is not None else None


@contextlib.contextmanager
def _counted(counts: dict, key):
    """`counts[key]` one higher while the block runs; the key leaves at zero."""
    counts[key] = counts.get(key, 0) + 1
    try:
        yield
    finally:
        drain.one_fewer(counts, key)


def _echoed(message: bytes) -> bool:
    """Whether a published message comes back to its publisher with connection
    state recovery on: an emit without an ack (master/loop.py `_relay`)."""
    try:
        msg = json.loads(message)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("method") == "emit" and msg.get("callback") is None


def replay(worker, eio_sid: str, message: bytes) -> None:
    """A broadcast the session's old worker had not handled when it left (REPLAY):
    deliver it to that session alone, if it was addressed to it.

    Only emits are replayed; a relayed room change or disconnect aimed at the
    session in that instant is not (rare: it needs a call from another worker
    naming this sid during the move).
    """
    try:
        msg = json.loads(message)
    except ValueError:
        return
    if isinstance(msg, dict):
        worker.app.sio.manager.emit_to_session(eio_sid, msg)
