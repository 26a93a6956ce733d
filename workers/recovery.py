"""Socket.IO connection state recovery across workers (`--recovery-window SECONDS`).

What the official client does (socket.io-client 4.6+, socket.ts): when the
server's CONNECT carries `{"sid", "pid"}` it keeps the pid; it keeps the last
argument of every event it handles, when that is a string, as its offset;
when it reconnects it sends `{"pid", "offset", ...its auth}` as the CONNECT's
data, and sets `socket.recovered` when the CONNECT answer carries the same pid.
What the reference server does (socket.io 4.6+, socket.ts and
socket.io-adapter's SessionAwareAdapter): every broadcast EVENT without an ack
gets a fresh offset as its last argument and is logged with its rooms; a
socket that drops for a recoverable reason (transport close or error, ping
timeout, shutdown) is persisted with its sid, pid, rooms and data; a CONNECT
with a known pid and an offset still in the log gets the same sid, rooms and
data, and every logged packet after the offset that its rooms would have
received, before anything new.

Here the worker that holds a session may be killed, so nothing can be saved
when it drops: the state lives outside the worker, in the master (relay mode)
or in Redis (`--redis`: workers/redis_recovery.py, same state, same ops, the
offsets given by a Lua script), and is kept up to date as it changes.

What is stored where
--------------------
- The master (master/recovery.py, `RecoveryStore`) keeps, per pid (a random
  private id, 128 bits, never shown to other clients): the namespace sid,
  the namespace, the rooms, the session data (`save_session`, as JSON, up to
  64 KiB), the Engine.IO sid of the connection that holds it and its worker,
  and since when it is down (None while held). A session down longer than the
  window is dropped; so is one whose worker reports it gone for good.
- The master keeps the log of broadcasts: every python-socketio "emit"
  message without an ack, with its offset, namespace, room(s) and skipped
  sid(s), for at most the window, 10,000 messages and 32 MiB.
- Workers report changes on the channel as SESSION frames (imcluster/channel.py):
    {"op": "up", "pid", "eio_sid", "sid", "namespace", "rooms": [...], "data": ...}
    {"op": "change", "pid", "eio_sid", "rooms": [...]}  or  {..., "data": ...}
    {"op": "down", "pid", "eio_sid"}   transport closed or failed, ping timeout
    {"op": "gone", "pid", "eio_sid"}   the client or the app disconnected it
  A worker that drains (reload, scale down) reports its sessions "down", as
  socket.io does on "server shutting down". An op from a connection that no
  longer holds the session is ignored. A worker that dies takes its sessions
  down with it (the master sees its channel close). A RESTORE
  `{"id", "pid", "offset"}` gets a RESTORED `{"id", "relay_from", "session":
  null | {"sid", "namespace", "rooms", "data", "missed": [messages]}}`; the
  session leaves the store, and the worker that restores it reports it "up"
  again. The answer also says which offset was the
  first relayed to that worker ("relay_from"): the worker replays what its
  listener delivered already and what came before it started, and lets the
  rest reach the session live, in its rooms, so each arrives once.

Session hand-over (`--handover yes`) keeps a session recoverable: its pid
travels in the hand-over state (`Recovery.leaving`), the old worker forgets
it without a report (`left`), the new one holds it and reports it "up"
(`arrived`), so the store names its new worker and holder.

Offsets
-------
One counter in the master, which assigns the next offset to each broadcast as
it relays it and passes it to every worker, the publisher included: with
recovery on, a worker does not deliver its own broadcasts locally first, so
every worker delivers every broadcast in the master's order, and "every
logged packet after offset N" is exactly what a client missed whatever worker
it was on. (Delivering locally first, as without recovery, lets a client hear
its own worker's message before an earlier one from another worker, and the
log's order would not be the one it saw.) Consecutive integers make "was
anything the client may need dropped" one comparison (master/recovery.py).
The cost: a broadcast to clients on the sender's worker takes one trip
through the master, and the master decodes every relayed message.

Which clients get it
--------------------
A client opts in by sending `"recovery": true` in its CONNECT auth
(`io(url, {auth: {recovery: true}})`; the JS client adds its pid and offset
to this auth when it reconnects). Only those sockets get a `pid` in CONNECT
and the offset as an extra last argument of broadcast events. The reference
sends them to every socket, which JS handlers ignore, but python-socketio's
client calls handlers with every argument, so an extra one breaks handlers of
fixed arity: python-socketio's client (which has no recovery) keeps working as
before as long as it does not opt in.

The connect handler of a recovered session runs after its rooms, data and
missed broadcasts are back; `imcluster.recovered(sid, namespace)` tells it
(and anything else) that the session was recovered. A new Engine.IO session
carries it: only the Socket.IO session comes back, as in the reference.

Not recovered: emits with an ack (the reference does not store them either),
packets sent while the client was connected but not yet delivered when the
worker died if they were not broadcasts (`emit` is a broadcast here:
python-socketio's `emit(to=sid)` goes through the manager, as socket.io's
`io.to(sid).emit` through the adapter), app state kept outside the session.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import eventlet
import eventlet.event
from socketio import packet as sio_packet

from imcluster import channel as ch

log = logging.getLogger("imcluster.worker")

# How long a CONNECT waits for the master's answer before it connects afresh.
RESTORE_TIMEOUT = 5.0
# The auth key by which a client asks for recovery.
OPT_IN = "recovery"
# Reasons python-socketio 5.12+ gives for a disconnect after which the client
# may come back (socket.io's RECOVERABLE_DISCONNECT_REASONS).
RECOVERABLE = ("transport close", "transport error", "ping timeout")

# (namespace, sid) of the sessions this worker recovered and still holds.
_recovered: set[tuple[str, str]] = set()


def recovered(sid: str, namespace: str = "/") -> bool:
    """Whether the Socket.IO session `sid` of `namespace` held by this worker was
    recovered (its client came back with connection state recovery), as opposed
    to new. True from before its connect handler runs until it disconnects."""
    return (namespace or "/", sid) in _recovered


@dataclass
class Held:
    """A recoverable session this worker holds."""

    pid: str
    eio_sid: str


@dataclass
class Connecting:
    pid: str
    restored: dict | None  # the master's answer, for a recovery
    resumed: bool = False  # the relay's listener runs again


class Recovery:
    """One worker's side of recovery: its sessions, the master's answers, and the
    pause of relayed broadcasts while a session is restored."""

    def __init__(self, link, store=None):
        self.link = link
        # With --redis: a workers.redis_recovery.RedisRecoveryStore; else the master.
        self.store = store
        self.held: dict[tuple[str, str], Held] = {}  # (namespace, sid) ->
        self.connecting: dict[tuple[str, str], Connecting] = {}  # (eio_sid, namespace) ->
        self.waiting: dict[int, eventlet.event.Event] = {}
        self.last_id = 0
        self.paused = 0
        self.resumed = eventlet.event.Event()
        self.last_offset = 0  # of the last broadcast the relay's listener delivered
        self.delivering = 0  # the offset the listener is delivering now (0: none)
        # (namespace, sid) -> offset: a session restored from Redis already had every
        # broadcast up to it (replayed); the listener skips those for it.
        self.skip: dict[tuple[str, str], int] = {}
        # The worker drains (reload, scale down, stop): its clients will be back
        # elsewhere, as after socket.io's "server shutting down".
        self.draining = False

    # ---- the master ------------------------------------------------------------------

    def report(self, op: str, held: Held, **fields: Any) -> None:
        message = {"op": op, "pid": held.pid, "eio_sid": held.eio_sid, **fields}
        try:
            payload = ch.encode_json(message)
        except (TypeError, ValueError):
            log.warning("session data that is not JSON is not kept for recovery")
            message.pop("data", None)
            payload = ch.encode_json(message)
        if self.store is not None:
            self.store.session_op(message)
        else:
            self.link.send(ch.SESSION, payload)

    def ask(self, pid: str, offset: str) -> dict | None:
        """The stored copy of session `pid` and what it missed after `offset`."""
        if self.store is not None:
            return self.store.restore(pid, offset)
        self.last_id += 1
        rid = self.last_id
        answer = self.waiting[rid] = eventlet.event.Event()
        try:
            self.link.send(ch.RESTORE, ch.encode_json({"id": rid, "pid": pid,
                                                       "offset": offset}))
            with eventlet.Timeout(RESTORE_TIMEOUT, False):
                return answer.wait()
            log.warning("no answer from the master to a recovery in %.0f s", RESTORE_TIMEOUT)
            return None
        finally:
            self.waiting.pop(rid, None)

    def answered(self, payload: bytes) -> None:
        """A RESTORED frame from the master."""
        try:
            obj = json.loads(payload)
            answer = self.waiting.get(obj["id"])
        except (ValueError, KeyError, TypeError):
            return
        session = obj.get("session")
        if isinstance(session, dict):
            session["relay_from"] = obj.get("relay_from")
        if answer is not None and not answer.ready():
            answer.send(session if isinstance(session, dict) else None)

    # ---- session hand-over (workers/handover.py, --handover yes) ----------------------

    def leaving(self, state: dict) -> None:
        """Add to a hand-over's state, per namespace, the session's pid and whether
        it was recovered: the session stays recoverable on its new worker."""
        eio_sid = state["eio_sid"]
        for space in state["namespaces"]:
            key = (space["namespace"], space["sid"])
            held = self.held.get(key)
            if held is not None and held.eio_sid == eio_sid:
                space["pid"] = held.pid
                space["recovered"] = key in _recovered

    def left(self, state: dict) -> None:
        """The session has gone to another worker: forget it here, reporting nothing
        (its new worker reports it "up"; a later "down" from here would be wrong)."""
        for space in state["namespaces"]:
            key = (space["namespace"], space["sid"])
            self.held.pop(key, None)
            _recovered.discard(key)

    def arrived(self, sio, state: dict, session: dict) -> None:
        """A session handed over to this worker: hold it, and tell the master that
        this worker holds it now (its rooms and data as they are)."""
        eio_sid = state["eio_sid"]
        for space in state["namespaces"]:
            pid = space.get("pid")
            if not isinstance(pid, str):
                continue  # it did not ask for recovery
            ns, sid = space["namespace"], space["sid"]
            held = self.held[(ns, sid)] = Held(pid, eio_sid)
            if space.get("recovered"):
                _recovered.add((ns, sid))
            self.report("up", held, sid=sid, namespace=ns,
                        rooms=sio.manager.get_rooms(sid, ns), data=session.get(ns))

    # ---- the pause -------------------------------------------------------------------

    def pause(self) -> None:
        if self.paused == 0:
            self.resumed = eventlet.event.Event()
        self.paused += 1

    def resume(self) -> None:
        self.paused -= 1
        if self.paused == 0:
            self.resumed.send()

    def wait_resumed(self) -> None:
        while self.paused:
            self.resumed.wait()


def new_pid() -> str:
    return secrets.token_urlsafe(16)


class RecoveryRules:
    """Recovery for a socketio.Server (python-socketio 5.18), mixed in before
    protocol.SocketRules by protocol.adapt when `--recovery-window` is set."""

    _imcluster_recovery: Recovery

    # internals: socketio-handle-connect
    def _handle_connect(self, eio_sid, namespace, data):
        rec = self._imcluster_recovery
        namespace = namespace or "/"
        if not (isinstance(data, dict) and data.get(OPT_IN) is True):
            return super()._handle_connect(eio_sid, namespace, data)
        pid, offset, restored = data.get("pid"), data.get("offset"), None
        key = (eio_sid, namespace)
        if isinstance(pid, str) and isinstance(offset, str):
            # Relayed broadcasts wait until the session is back in its rooms:
            # the listener has delivered exactly those up to rec.last_offset.
            rec.pause()
            try:
                restored = rec.ask(pid, offset)
            except BaseException:
                # Anything thrown into this greenlet while it waits for the stored
                # copy (a kill, a timeout of the caller's) must not leave every
                # relayed broadcast of this worker paused for good.
                rec.resume()
                raise
            if restored is None or restored.get("namespace") != namespace:
                restored = None
                rec.resume()
        c = rec.connecting[key] = Connecting(pid if restored else new_pid(), restored)
        try:
            if restored is not None:
                old = restored.get("sid")
                # The same client, back on the worker that still holds its old
                # connection (a network drop shorter than the ping timeout).
                if self.manager.is_connected(old, namespace):
                    self.disconnect(old, namespace=namespace, ignore_queue=True)
            return super()._handle_connect(eio_sid, namespace, data)
        finally:
            del rec.connecting[key]
            if restored is not None and not c.resumed:
                c.resumed = True
                rec.resume()
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.manager.is_connected(sid, namespace):
                held = rec.held[(namespace, sid)] = Held(c.pid, eio_sid)
                session = self.eio.get_session(eio_sid).get(namespace)
                rec.report("up", held, sid=sid, namespace=namespace,
                           rooms=self.manager.get_rooms(sid, namespace), data=session)
            elif restored is not None:
                _recovered.discard((namespace, restored.get("sid")))

    # internals: socketio-send-packet
    def _send_packet(self, eio_sid, pkt):
        if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
            c = self._imcluster_recovery.connecting.get((eio_sid, pkt.namespace or "/"))
            if c is not None:
                pkt.data = {**pkt.data, "pid": c.pid}
        return super()._send_packet(eio_sid, pkt)

    def restore_session(self, c: Connecting, sid: str, eio_sid: str, namespace: str) -> None:
        """Called by the manager once `sid` is pre-connected: rooms, data and the
        missed broadcasts the listener already delivered; then broadcasts resume."""
        rec, r = self._imcluster_recovery, c.restored
        for room in r.get("rooms") or ():
            if isinstance(room, str) and room != sid:
                self.manager.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if r.get("data") is not None:
            self.eio.get_session(eio_sid)[namespace] = r["data"]
        # Replayed here: what this worker's listener delivered already, and what
        # was relayed before this worker started (it will never hear those).
        # The rest is on its way and reaches the session in its rooms.
        relay_from = r.get("relay_from")
        cut = max(rec.last_offset, rec.delivering,
                  relay_from - 1 if isinstance(relay_from, int) else 0)
        upto = r.get("upto")
        if isinstance(upto, int):
            # Redis (redis_recovery.py): every missed one up to the last offset given
            # at the restore is replayed now; the listener skips those for it later.
            cut = upto
            if upto > rec.last_offset:
                rec.skip[(namespace, sid)] = upto
        for message in r.get("missed") or ():
            if isinstance(message, dict) and int(message.get("offset", 0)) <= cut:
                for p in self.manager.offset_packets(message, namespace):
                    self._send_eio_packet(eio_sid, p)
        _recovered.add((namespace, sid))
        c.resumed = True
        rec.resume()

    # internals: socketio-handle-disconnect
    def _handle_disconnect(self, eio_sid, namespace, reason=None):
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        rec = self._imcluster_recovery
        self._drop(namespace, sid, "down" if reason in RECOVERABLE or rec.draining else "gone")
        return super()._handle_disconnect(eio_sid, namespace, reason)

    # internals: socketio-disconnect
    def disconnect(self, sid, namespace=None, ignore_queue=False):
        if self.manager.is_connected(sid, namespace or "/"):
            self._drop(namespace or "/", sid, "gone")
        return super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)

    def _drop(self, namespace: str, sid: str | None, op: str) -> None:
        _recovered.discard((namespace, sid))
        self._imcluster_recovery.skip.pop((namespace, sid), None)
        held = self._imcluster_recovery.held.pop((namespace, sid), None)
        if held is not None:
            self._imcluster_recovery.report(op, held)

    # internals: socketio-save-session
    def save_session(self, sid, session, namespace=None):
        super().save_session(sid, session, namespace=namespace)
        held = self._imcluster_recovery.held.get((namespace or "/", sid))
        if held is not None:
            self._imcluster_recovery.report("change", held, data=session)

    def rooms_changed(self, sid: str, namespace: str) -> None:
        """The manager's hook: `sid` entered or left a room."""
        held = self._imcluster_recovery.held.get((namespace, sid))
        if held is not None:
            self._imcluster_recovery.report("change", held,
                                            rooms=self.manager.get_rooms(sid, namespace))
