"""What the relay and the Redis manager share: python-socketio's PubSubManager,
with acks that carry any value a client can send, bytes included, and
messages of our own for what python-socketio can only do on one worker.

Subclasses implement `_publish(message)` and `_receive()` (yield each message
published on the channel, as JSON text or bytes); `_listen` here reads what
`_receive` yields, handles imcluster's own kinds and passes everything else,
decoded, to python-socketio's listener.

Acks with bytes
---------------
python-socketio 5.18 publishes an ack that a client on another worker sends
for an `emit(..., callback=)` or `call()` as JSON, arguments and all
(`PubSubManager._return_callback`), so an ack holding bytes raises TypeError
in the worker that received it and never arrives. Emits already carry bytes:
their `data` becomes `[data with placeholders, base64 attachment, ...]` with
`"binary": true`. An ack with bytes here is published in that same layout,
under a key of its own:

    {"method": "callback", "host_id": ..., "sid": ..., "namespace": ..., "id": ...,
     "binary_args": [args with {"_placeholder": true, "num": n} for each bytes value,
                     base64 of bytes value 0, base64 of bytes value 1, ...]}

Acks without bytes keep python-socketio's own message ("args"), so mixed
deployments and external emitters see no change. A python-socketio host that
is not imcluster finds no "args" in a binary ack and ignores it (its
`_handle_callback` returns on KeyError), as it ignores any message it cannot
read, rather than calling the callback with placeholders.

Every socket in a room, on every worker
---------------------------------------
python-socketio acts on one socket by sid across hosts (`enter_room`,
`leave_room`, `disconnect` publish "enter_room"/"leave_room"/"disconnect"),
but "every socket in room R" (what the Admin UI's join, leave and disconnect
actions ask for, socket.io's `io.in(R).socketsJoin(...)`) is only ever the
local participants (`Manager.get_participants`). These kinds make each
worker act on its own participants; the sender acts on its own before it
publishes:

    {"method": "sockets_join", "host_id": ..., "namespace": "/", "room": "r2",
     "filter": "r1" | ["r1", "r3"] | null}          # null: every socket of the namespace
    {"method": "sockets_leave", "host_id": ..., "namespace": ..., "room": ..., "filter": ...}
    {"method": "disconnect_sockets", "host_id": ..., "namespace": ..., "filter": ...}

Admin UI: announce your sockets
-------------------------------
    {"method": "announce_sockets", "host_id": ..., "namespace": "/admin", "to": ADMIN_SID}

The worker where an Admin UI connects sends it `all_sockets` (its own
sockets; the UI replaces its whole list with it) and then publishes this;
each other worker answers with one `socket_connected` per socket of its own,
emitted to the admin's sid (workers/admin.py).

Messages that a worker published itself are ignored when Redis delivers them
back (same `host_id`), as python-socketio does. A python-socketio host that
is not imcluster ignores every kind above (its listener dispatches only the
methods it knows).
"""

from __future__ import annotations

import base64
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.packet import Packet

# What the running event handler queued for Redis ({Publisher: number of its
# last entry there}), in the handler's own contextvars context: every handler
# starts with an empty one (python-socketio's background tasks, and
# workers/dispatch.py resets it for each), so nothing needs clearing between
# handlers, and a greenlet that is not a handler only ever holds one small dict.
_PUSHED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "imcluster_pushed", default=None)


def note_pushed(publisher, n: int) -> None:
    """`publisher` queued entry number `n` for the running greenlet (called by
    workers/redis_manager.py Publisher.push; `wait_pushed` waits for it)."""
    marks = _PUSHED.get()
    if marks is None:
        _PUSHED.set({publisher: n})
    else:
        marks[publisher] = n


def pushed() -> bool:
    """True if the running handler queued something for Redis since it began
    (or since the last `wait_pushed`)."""
    return _PUSHED.get() is not None


def wait_pushed(wait: bool = True) -> None:
    """Wait until what the running handler queued for Redis (`note_pushed`) was
    written to Redis and answered, or given up (the publisher's breaker opened,
    an error), for at most the longest `reply_timeout` (seconds) of those
    publishers; then forget it. `wait` False: only forget. Returns at once,
    without switching, when nothing was queued. Called before a handler's ack
    (workers/fastpath.py DirectAcks)."""
    marks = _PUSHED.get()
    if marks is None:
        return
    _PUSHED.set(None)
    if not wait:
        return
    deadline = time.monotonic() + max(p.reply_timeout for p in marks)
    for publisher, n in marks.items():
        publisher.wait_flushed(n, deadline)


log = logging.getLogger("imcluster.worker")

RoomFilter = str | list[str] | None


# internals: socketio-manager-attrs, socketio-binary
class ClusterPubSubManager(socketio.PubSubManager):
    """python-socketio's PubSubManager whose cross-worker acks carry bytes, and
    which acts on every socket in a room on every worker (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Connection state recovery (workers/recovery.py), set by the worker when on.
        self.recovery = None
        # method -> handler(message), for the kinds python-socketio does not know.
        self.cluster_handlers: dict[str, Callable[[dict], None]] = {
            "sockets_join": self._handle_sockets_join,
            "sockets_leave": self._handle_sockets_leave,
            "disconnect_sockets": self._handle_disconnect_sockets,
        }

    def on_cluster_message(self, method: str, handler: Callable[[dict], None]) -> None:
        """Call `handler(message)` for each `{"method": method, ...}` another worker
        publishes (one of ours: python-socketio's own methods cannot be taken)."""
        self.cluster_handlers[method] = handler

    def publish_cluster(self, message: dict) -> None:
        """Publish one of our own kinds to every other worker (host_id is added)."""
        self._publish({**message, "host_id": self.host_id})

    # ---- every socket in a room, on every worker -------------------------------------

    def sockets_join(self, namespace: str | None, room: str, room_filter: RoomFilter = None
                     ) -> None:
        """Every socket of `namespace` in `room_filter` (a room, a list of rooms, or
        None for all), on every worker, enters `room`."""
        self._everywhere({"method": "sockets_join", "namespace": namespace or "/",
                          "room": room, "filter": room_filter})

    def sockets_leave(self, namespace: str | None, room: str, room_filter: RoomFilter = None
                      ) -> None:
        """Every socket of `namespace` in `room_filter`, on every worker, leaves `room`."""
        self._everywhere({"method": "sockets_leave", "namespace": namespace or "/",
                          "room": room, "filter": room_filter})

    def disconnect_sockets(self, namespace: str | None, room_filter: RoomFilter = None
                           ) -> None:
        """Every socket of `namespace` in `room_filter`, on every worker, is disconnected
        from the namespace (as `Server.disconnect(sid)`)."""
        self._everywhere({"method": "disconnect_sockets", "namespace": namespace or "/",
                          "filter": room_filter})

    def _everywhere(self, message: dict) -> None:
        message["host_id"] = self.host_id
        self.cluster_handlers[message["method"]](message)  # this worker's sockets
        self._publish(message)  # every other worker's

    def _local_sids(self, message: dict) -> tuple[str, list[str]]:
        namespace, room_filter = message.get("namespace"), message.get("filter")
        if not isinstance(namespace, str) or not (
                room_filter is None or isinstance(room_filter, str)
                or (isinstance(room_filter, list)
                    and all(isinstance(r, str) for r in room_filter))):
            raise ValueError(f"malformed {message.get('method')} message")
        if isinstance(room_filter, list) and not room_filter:
            return namespace, []
        return namespace, [sid for sid, _ in self.get_participants(namespace, room_filter)]

    def _handle_sockets_join(self, message: dict) -> None:
        namespace, sids = self._local_sids(message)
        for sid in sids:
            self.server.enter_room(sid, message.get("room"), namespace=namespace)

    def _handle_sockets_leave(self, message: dict) -> None:
        namespace, sids = self._local_sids(message)
        for sid in sids:
            self.server.leave_room(sid, message.get("room"), namespace=namespace)

    def _handle_disconnect_sockets(self, message: dict) -> None:
        namespace, sids = self._local_sids(message)
        for sid in sids:
            self.server.disconnect(sid, namespace=namespace, ignore_queue=True)

    # ---- the listener ----------------------------------------------------------------

    def _receive(self) -> Iterator[Any]:
        """Yield each message published on the channel (JSON text, bytes or a dict)."""
        raise NotImplementedError

    def _accept(self, data: dict) -> bool:
        """Whether the listener acts on `data` (a subclass drops duplicates here)."""
        return True

    def _heard(self, data: dict, first: bool = True) -> dict | None:
        """Every message, in the order read, before the listener acts on it, with
        whether `_accept` took it (False: a duplicate); returns what to act on, or
        None (a subclass orders hand-overs here)."""
        return data if first else None

    # internals: socketio-listen
    def _listen(self):
        """What python-socketio's listener (`PubSubManager._thread`) reads: every
        message `_receive` yields, decoded, except our own kinds, handled here."""
        for message in self._receive():
            if isinstance(message, dict):
                data = message
            else:
                try:
                    data = self.json.loads(message)
                except ValueError:
                    continue  # python-socketio ignores what it cannot decode, too
                if not isinstance(data, dict):
                    continue
            data = self._heard(data, self._accept(data))
            if data is None:
                continue
            handler = self.cluster_handlers.get(data.get("method"))
            if handler is None:
                if (self.recovery is not None and data.get("offset") is not None
                        and data.get("method") == "emit"):
                    # With recovery every broadcast comes back in one order, this
                    # worker's own included (python-socketio drops those).
                    try:
                        self._emit_logged(data)
                    except Exception:
                        log.exception("relayed broadcast failed")
                    continue
                yield data
            elif data.get("host_id") != self.host_id:
                try:
                    handler(data)
                except Exception:
                    log.exception("%s message from another worker failed",
                                  data.get("method"))

    # Overrides python-socketio 5.18's private PubSubManager._return_callback,
    # which the receiving worker calls when a client acks a remote emit.
    # internals: socketio-return-callback, socketio-return-callback-use
    def _return_callback(self, host_id, sid, namespace, callback_id, *args):
        if host_id == self.host_id:
            self.trigger_callback(sid, callback_id, args)
            return
        message = {"method": "callback", "host_id": host_id, "sid": sid,
                   "namespace": namespace, "id": callback_id}
        values = list(args)
        if Packet.data_is_binary(values):
            values, attachments = Packet.deconstruct_binary(values)
            message["binary_args"] = [values, *(base64.b64encode(a).decode()
                                                for a in attachments)]
        else:
            message["args"] = values
        self._publish(message)

    # Overrides python-socketio 5.18's private PubSubManager._handle_callback,
    # which the sending worker calls for every "callback" message.
    # internals: socketio-handle-callback
    def _handle_callback(self, message):
        if message.get("host_id") != self.host_id:
            return
        try:
            sid, callback_id = message["sid"], message["id"]
            if "binary_args" in message:
                packed = message["binary_args"]
                attachments = [base64.b64decode(a) for a in packed[1:]]
                args = Packet.reconstruct_binary(packed[0], attachments)
            else:
                args = message["args"]
        except (KeyError, IndexError, TypeError, ValueError):
            self._get_logger().warning("malformed callback message ignored")
            return
        self.trigger_callback(sid, callback_id, args)

    # ---- connection state recovery ---------------------------------------------------

    # internals: socketio-handle-emit
    def _handle_emit(self, message):
        if (self.recovery is not None and message.get("offset") is None
                and message.get("callback") is None and message.get("host_id") == self.host_id):
            return  # PubSubManager.emit's local delivery: it comes back (master or Redis)
        if self.recovery is not None and message.get("offset") is not None:
            # A logged broadcast replayed to one handed-over session (handover.replay):
            # with its offset, and without moving this listener's position.
            return self._emit_logged(message, advance=False)
        return super()._handle_emit(message)

    def emit_to_session(self, eio_sid: str, message: dict) -> None:
        """Deliver an emit message to one session of this worker alone, if it was
        addressed to it (its room(s), namespace and skip_sid), as the listener
        would have: for a session that moved in and missed it (workers/handover.py)."""
        if message.get("method") != "emit":
            return
        ns = message.get("namespace") or "/"
        sid = self.sid_from_eio_sid(eio_sid, ns)
        if sid is None:
            return
        rooms = message.get("room")
        rooms = rooms if isinstance(rooms, list) else [rooms]
        skip = message.get("skip_sid")
        skip = skip if isinstance(skip, list) else [skip]
        if sid in skip:
            return
        here = self.rooms.get(ns, {})  # internals: socketio-manager-callbacks (rooms)
        if not any(r is None or sid in here.get(r, ()) for r in rooms):
            return
        # internals: socketio-return-callback-use (_handle_emit decodes as for any relay)
        self._handle_emit(dict(message, room=sid, skip_sid=None))

    def deliver_here(self, message: dict) -> None:
        """Deliver an emit message to this worker's participants as python-socketio
        does, offset or not (with recovery on, for one that never went out)."""
        # internals: socketio-handle-emit (upstream's, not ours: it delivers here)
        socketio.PubSubManager._handle_emit(self, {**message, "host_id": None})

    def offset_packets(self, message: dict, namespace: str) -> list:
        """The Engine.IO packets of a logged broadcast with its offset as last argument."""
        return self._encode(namespace, message["event"],
                            _args(message) + [str(message["offset"])])

    def _encode(self, namespace: str, event: str, args: list) -> list:
        # As python-socketio 5.18's Manager.emit encodes an emit without a callback.
        # internals: socketio-manager-emit-encode
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                       data=[event] + args)
        encoded = pkt.encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]

    def _emit_logged(self, message: dict, advance: bool = True) -> None:
        """Deliver a logged broadcast (it has an offset): the offset as last argument to
        the sockets that asked for recovery, the plain event to the others.
        `advance`: it is the listener's next one (not a replay)."""
        rec = self.recovery
        offset = str(message["offset"])
        namespace = message.get("namespace") or "/"
        skip = message.get("skip_sid")
        skip = skip if isinstance(skip, list) else [skip]
        plain = marked = None
        n = int(offset)
        if advance:
            # A session restored while this one is being delivered is not among its
            # participants (taken below, before any send yields): it gets it replayed.
            rec.delivering = n
        for sid, eio_sid in self.get_participants(namespace, message.get("room")):
            if sid in skip:
                continue
            if rec.skip and rec.skip.get((namespace, sid), 0) >= n:
                continue  # replayed at its restore (redis_recovery.py)
            if (namespace, sid) in rec.held:
                if marked is None:
                    marked = self.offset_packets(message, namespace)
                packets = marked
            else:
                if plain is None:
                    plain = self._encode(namespace, message["event"], _args(message))
                packets = plain
            for p in packets:
                # internals: socketio-send-eio-packet
                self.server._send_eio_packet(eio_sid, p)
        if advance:
            rec.last_offset = n
            rec.delivering = 0
            if rec.skip:
                for key in [k for k, upto in rec.skip.items() if upto <= n]:
                    del rec.skip[key]

    # internals: socketio-pre-connect
    def pre_connect(self, eio_sid, namespace):
        rec = self.recovery
        c = rec.connecting.get((eio_sid, namespace)) if rec is not None else None
        if c is None or c.restored is None:
            return super().pre_connect(eio_sid, namespace)
        # The recovered session keeps its sid: upstream makes it with
        # eio.generate_id() (base_manager.pre_connect), ours for this call.
        # internals: engineio-generate-id
        eio = self.server.eio
        make = eio.generate_id
        eio.generate_id = lambda: c.restored["sid"]
        try:
            sid = super().pre_connect(eio_sid, namespace)
        finally:
            eio.generate_id = make
        if sid is not None:
            self.server.restore_session(c, sid, eio_sid, namespace)
        return sid

    # internals: socketio-enter-room-path
    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.recovery is not None and room is not None:
            self.server.rooms_changed(sid, namespace)

    # internals: socketio-leave-room-path
    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        if self.recovery is not None and room is not None:
            self.server.rooms_changed(sid, namespace)


def _args(message: dict) -> list:
    """An emit message's arguments, as python-socketio's _handle_emit and
    Manager.emit turn its `data` into the event's arguments."""
    data = message["data"]
    if message.get("binary"):
        attachments = [base64.b64decode(a) for a in data[1:]]
        data = Packet.reconstruct_binary(data[0], attachments)
    if isinstance(data, list):
        data = data[0] if len(data) == 1 else tuple(data)
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]
