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
import logging
from collections.abc import Callable, Iterator
from typing import Any

import socketio
from socketio.packet import Packet

log = logging.getLogger("imcluster.worker")

RoomFilter = str | list[str] | None


# internals: socketio-manager-attrs, socketio-binary
class ClusterPubSubManager(socketio.PubSubManager):
    """python-socketio's PubSubManager whose cross-worker acks carry bytes, and
    which acts on every socket in a room on every worker (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
            if not self._accept(data):
                continue
            handler = self.cluster_handlers.get(data.get("method"))
            if handler is None:
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
