"""Cross-worker broadcasts relayed by the master: no Redis needed on one host.

A python-socketio PubSubManager (ClusterPubSubManager: acks carry bytes)
whose pub/sub backend is the worker's channel: _publish sends the message to
the master, which passes it to every other worker; _listen yields what the
master passes to this one.

With connection state recovery on (workers/recovery.py), every emit without
an ack comes back from the master with its offset, to the publisher too:
this worker delivers its own broadcasts when they come back, not before, and
sockets that asked for recovery get the offset as the event's last argument.

`_publish` writes the message to the master's socketpair before `emit()`
returns (Link.send waits, green, until the kernel took every byte), so a
handler's ack always follows its broadcasts out of the worker: once queued on
the socketpair they are the master's, and a worker killed after the ack loses
none of them (the Redis publisher's ack wait, workers/redis_manager.py, gives
the same promise there).
"""

from __future__ import annotations

import collections

import eventlet.queue

from imcluster import channel as ch
from imcluster.workers.pubsub import ClusterPubSubManager


# internals: socketio-manager-name, socketio-publish, socketio-manager-attrs (self.json)
class MasterRelayManager(ClusterPubSubManager):
    name = "imcluster-relay"

    def __init__(self, link, channel: str = "socketio", logger=None):
        super().__init__(channel=channel, write_only=False, logger=logger)
        self.link = link
        self.inbox: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        self.handled = 0  # relayed messages taken by the listener (channel.py, REPLAY)
        # Our own publishes, numbered from 1 as the master counts them, the last
        # REPLAY_KEEP kept (a session handed over to us gets those it missed).
        self.published = 0
        self.own: collections.deque = collections.deque(maxlen=ch.REPLAY_KEEP)

    def _publish(self, data) -> None:
        payload = self.json.dumps(data).encode()
        self.published += 1
        self.own.append((self.published, payload))
        self.link.send(ch.PUBLISH, payload)

    def deliver(self, payload: bytes) -> None:
        """Called by the channel reader for every relayed message."""
        self.inbox.put(payload)

    def after_pending(self, fn) -> None:
        """Run `fn()` in the listener, once every message relayed before now has
        been handled (session hand-over orders itself with the relay this way)."""
        self.inbox.put(fn)

    def _receive(self):
        while True:
            item = self.inbox.get()
            if callable(item):
                try:
                    item()
                except Exception:  # the listener must outlive any one step
                    self._get_logger().exception("relay: a queued step failed")
                continue
            if self.recovery is not None:
                self.recovery.wait_resumed()  # a session is being restored
            self.handled += 1
            yield item
