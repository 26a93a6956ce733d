"""Cross-worker broadcasts relayed by the master: no Redis needed on one host.

A python-socketio PubSubManager (ClusterPubSubManager: acks carry bytes)
whose pub/sub backend is the worker's channel: _publish sends the message to
the master, which passes it to every other worker; _listen yields what the
master passes to this one.

With connection state recovery on (workers/recovery.py), every emit without
an ack comes back from the master with its offset, to the publisher too:
this worker delivers its own broadcasts when they come back, not before, and
sockets that asked for recovery get the offset as the event's last argument.
"""

from __future__ import annotations

import base64

import eventlet.queue
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.packet import Packet

from imcluster import channel as ch
from imcluster.workers.pubsub import ClusterPubSubManager, log
from imcluster.workers.recovery import Recovery


# internals: socketio-manager-name, socketio-publish, socketio-manager-attrs (self.json)
class MasterRelayManager(ClusterPubSubManager):
    name = "imcluster-relay"

    def __init__(self, link, channel: str = "socketio", logger=None):
        super().__init__(channel=channel, write_only=False, logger=logger)
        self.link = link
        self.inbox: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        self.recovery: Recovery | None = None  # set by the worker when recovery is on

    def _publish(self, data) -> None:
        self.link.send(ch.PUBLISH, self.json.dumps(data).encode())

    def deliver(self, payload: bytes) -> None:
        """Called by the channel reader for every relayed message."""
        self.inbox.put(payload)

    def _receive(self):
        while True:
            message = self.inbox.get()
            if self.recovery is not None:
                self.recovery.wait_resumed()  # a session is being restored
            yield message

    # ---- connection state recovery ---------------------------------------------------

    # internals: socketio-listen
    def _listen(self):
        # python-socketio's listener drops emits from its own host_id; with
        # recovery on those are this worker's broadcasts coming back in order.
        for data in super()._listen():
            if self.recovery is not None and data.get("offset") is not None \
                    and data.get("method") == "emit":
                try:
                    self._emit_logged(data)
                except Exception:
                    log.exception("relayed broadcast failed")
            else:
                yield data

    # internals: socketio-handle-emit
    def _handle_emit(self, message):
        if (self.recovery is not None and message.get("offset") is None
                and message.get("callback") is None and message.get("host_id") == self.host_id):
            return  # PubSubManager.emit's local delivery: it comes back from the master
        return super()._handle_emit(message)

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

    def _emit_logged(self, message: dict) -> None:
        """Deliver a broadcast the master logged: the offset as last argument to
        the sockets that asked for recovery, the plain event to the others."""
        rec = self.recovery
        offset = str(message["offset"])
        namespace = message.get("namespace") or "/"
        skip = message.get("skip_sid")
        skip = skip if isinstance(skip, list) else [skip]
        plain = marked = None
        for sid, eio_sid in self.get_participants(namespace, message.get("room")):
            if sid in skip:
                continue
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
        rec.last_offset = int(offset)

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

    # internals: socketio-basic-enter-room
    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.recovery is not None and room is not None:
            self.server.rooms_changed(sid, namespace)

    # internals: socketio-basic-leave-room
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
