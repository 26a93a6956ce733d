"""What the relay and the Redis manager share: python-socketio's PubSubManager,
with acks that carry any value a client can send, bytes included.

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
"""

from __future__ import annotations

import base64

import socketio
from socketio.packet import Packet


# internals: socketio-manager-attrs, socketio-binary
class ClusterPubSubManager(socketio.PubSubManager):
    """python-socketio's PubSubManager whose cross-worker acks carry bytes."""

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
