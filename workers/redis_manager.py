"""Cross-worker and cross-host broadcasts through Redis pub/sub.

Wire-compatible with python-socketio's RedisManager (JSON messages on the
`socketio` channel), so an external `socketio.RedisManager(url,
write_only=True)` can emit to imcluster's clients; acks holding bytes, which
python-socketio's format cannot carry, are extended as workers/pubsub.py
says. It differs in how it lives through a Redis outage, which an IM server
must: the worker keeps serving its own clients (local rooms still deliver),
each direction's outage is logged once when it starts and once when it ends
instead of once per message, publishing does not retry on every emit (a
circuit breaker skips Redis until the next probe), and the listener
resubscribes within a second or two of Redis coming back rather than after a
backoff that grows to a minute. Messages published while Redis is down do
not reach other workers.

A subscription can also go silent without closing: a NAT or firewall that
dropped the flow, a frozen Redis. A blocked read would wait for ever, so the
listener reads with a timeout, sends a PING on the subscription when it has
heard nothing for a third of `silence_timeout`, and drops the connection,
reconnects and resubscribes when that PING goes unanswered until
`silence_timeout` after it last heard anything. The publisher has a read
timeout and one retry on a fresh connection instead.

Publishing goes through one connection, in order: an emit appends its
message to an outbox and one publisher greenlet sends what has gathered as a
pipeline. So one sender's messages reach the other workers in the order they
were emitted (python-socketio runs each event in its own greenlet, and a pool
of connections let a later publish overtake an earlier one), an emit never
waits for Redis, and a burst costs one round trip per batch, not per message.
"""

from __future__ import annotations

import collections
import logging
import time

import eventlet
import eventlet.event
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from imcluster.workers.pubsub import ClusterPubSubManager

log = logging.getLogger("imcluster.worker")

# How long a publish or a connect may take before Redis counts as down (the
# publisher tries twice, the second time on a fresh connection).
REDIS_TIMEOUT = 1.0
# While Redis is down: how often a publish probes it, and the listener's
# longest wait between resubscribe attempts.
PROBE_INTERVAL = 1.0
MAX_LISTEN_BACKOFF = 2.0
# Messages waiting for the publisher; past this (Redis far slower than the
# emits) new ones are dropped and counted, as during an outage.
MAX_OUTBOX = 10_000
MAX_BATCH = 512
DEFAULT_SILENCE_TIMEOUT = 15.0


class SubscriptionSilent(Exception):
    """The subscription answered nothing, not even a PING, for this many seconds."""


# internals: socketio-manager-name, socketio-publish, socketio-manager-attrs (self.json)
class ClusterRedisManager(ClusterPubSubManager):
    name = "imcluster-redis"

    def __init__(self, url: str, channel: str = "socketio", logger=None,
                 silence_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        """`silence_timeout`: seconds (> 0) the subscription may go unheard before
        it is remade; the listener pings it after a third of that."""
        super().__init__(channel=channel, write_only=False, logger=logger)
        self.url = url
        self.silence_timeout = silence_timeout
        # One connection, used only by the publisher greenlet. redis-py 8 retries
        # a failed command 10 times with backoff by default (~20 s on a frozen
        # Redis); one retry covers a stale pooled connection, then the breaker.
        self.redis = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
            health_check_interval=10, retry=Retry(NoBackoff(), 1))
        # The listener's reads carry their own timeout (get_message); the socket
        # timeout bounds its writes (PING, SUBSCRIBE). No retries inside redis-py:
        # the listener reconnects, and logs, itself. Its own PING replaces
        # redis-py's health check.
        self.sub_redis = redis.Redis.from_url(
            url, socket_timeout=silence_timeout, socket_connect_timeout=REDIS_TIMEOUT,
            socket_keepalive=True, health_check_interval=0, retry=Retry(NoBackoff(), 0))
        self.publishing = True  # False while the breaker is open
        self.next_probe = 0.0
        self.listening = False
        self.ever_listened = False
        self.dropped = 0  # during the current outage
        self.overflowed = 0
        # JSON text to publish, or a step that adds commands to the batch's pipeline.
        self.outbox: collections.deque = collections.deque()
        # Connection state recovery in Redis (redis_recovery.py), set by the worker.
        self.store = None
        self.wakeup = eventlet.event.Event()
        self.publisher = None

    def health(self) -> str:
        """How this worker's broadcasts stand: "ok", "subscription down" (others'
        broadcasts do not reach its clients), "publishing down" (its broadcasts do
        not reach the others) or "down" (both). Reported to the master (LOAD)."""
        if self.listening and self.publishing:
            return "ok"
        if self.publishing:
            return "subscription down"
        return "publishing down" if self.listening else "down"

    def _publish(self, data) -> None:
        if not self.publishing and time.monotonic() < self.next_probe:
            self.dropped += 1
            self._deliver_unlogged(data)
            return
        if len(self.outbox) >= MAX_OUTBOX:
            self.overflowed += 1
            if self.overflowed in (1, 1000, 100_000):
                log.warning("redis is not keeping up: %d broadcasts dropped so far",
                            self.overflowed)
            return
        text = self.json.dumps(data)
        if (self.store is not None and data.get("method") == "emit"
                and data.get("callback") is None):
            # Logged with the next offset and published by one script (redis_recovery.py).
            self.outbox.append(_Logged(self.store, data, text))
        else:
            self.outbox.append(text)
        self._wake()

    def _deliver_unlogged(self, data: dict) -> None:
        """With recovery on, a worker delivers its broadcasts when they come back
        from Redis; one that cannot go there reaches this worker's clients now,
        without an offset (as without recovery: local rooms still deliver)."""
        if self.store is None or data.get("method") != "emit" or data.get("callback"):
            return
        try:
            self.deliver_here(data)
        except Exception:
            log.exception("local delivery of a broadcast failed")

    def enqueue(self, step) -> None:
        """Run `step(pipeline)` in the publisher's next batch, after what is queued
        (connection state recovery's session changes, redis_recovery.py)."""
        if len(self.outbox) >= MAX_OUTBOX:
            self.overflowed += 1
            return
        self.outbox.append(step)
        self._wake()

    def _wake(self) -> None:
        if self.publisher is None:
            self.publisher = eventlet.spawn(self._publish_forever)
        if not self.wakeup.ready():
            self.wakeup.send()

    def _publish_forever(self) -> None:
        while True:
            if not self.outbox:
                self.wakeup.wait()
                self.wakeup.reset()
                continue
            batch = [self.outbox.popleft() for _ in range(min(len(self.outbox), MAX_BATCH))]
            self._send_batch(batch)

    def _send_batch(self, batch: list) -> None:
        now = time.monotonic()
        if not self.publishing and now < self.next_probe:
            self.dropped += len(batch)
            for message in batch:
                if isinstance(message, _Logged):
                    self._deliver_unlogged(message.data)
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for message in batch:
                if callable(message):
                    message(pipe)
                else:
                    pipe.publish(self.channel, message)
            pipe.execute()
        except Exception as e:  # redis-py's errors, and anything else: the publisher lives on
            self.dropped += len(batch)
            for message in batch:
                if isinstance(message, _Logged):
                    self._deliver_unlogged(message.data)
            self.next_probe = time.monotonic() + PROBE_INTERVAL
            if self.publishing:
                self.publishing = False
                log.error("redis unreachable for publishing (%s): this worker's broadcasts "
                          "reach only its own clients until it is back", e)
            return
        if not self.publishing:
            self.publishing = True
            log.warning("redis publishing resumed: this worker's broadcasts reach the "
                        "other workers again (%d messages could not be sent meanwhile)",
                        self.dropped)
            self.dropped = 0

    def _receive(self):
        """Yield each message published on the channel, for ever: through Redis
        going away (reconnect with backoff) and through a silent connection
        (reconnect after `silence_timeout`). Each is logged when it starts and
        once more when the subscription is confirmed again."""
        backoff = 0.25
        down_since = None  # when messages from other workers stopped arriving
        ping_every = self.silence_timeout / 3
        while True:
            pubsub = self.sub_redis.pubsub()
            heard = time.monotonic()  # anything read on this connection, or its start
            try:
                pubsub.subscribe(self.channel)
                pinged = None  # when the unanswered PING went out
                while True:
                    message = pubsub.get_message(timeout=ping_every / 2)
                    now = time.monotonic()
                    if message is not None:
                        heard, pinged = now, None
                        kind = message["type"]
                        if kind == "message":
                            if self.recovery is not None:
                                self.recovery.wait_resumed()  # a session is being restored
                            yield message["data"]
                            # Time spent in the consumer is not silence.
                            heard = time.monotonic()
                        elif kind == "subscribe":
                            if self.recovery is not None and down_since is not None:
                                # Redis may have restarted (offsets from 1 again).
                                self.recovery.skip.clear()
                            self.listening = self.ever_listened = True
                            backoff = 0.25
                            if down_since is not None:
                                log.warning("redis subscription restored after %.1fs: "
                                            "broadcasts from the other workers reach this "
                                            "worker's clients again", now - down_since)
                                down_since = None
                        continue
                    if now - heard >= self.silence_timeout:
                        raise SubscriptionSilent(now - heard)
                    # One PING per quiet spell: a live Redis answers it long
                    # before the deadline, which counts from the last thing heard.
                    if pinged is None and now - heard >= ping_every:
                        pubsub.ping()
                        pinged = now
            except SubscriptionSilent as e:
                self.listening = False
                if down_since is None:
                    down_since = heard
                    log.error("redis subscription silent for %.1fs (no message, no answer to "
                              "PING): reconnecting; broadcasts from the other workers do not "
                              "reach this worker's clients meanwhile", e.args[0])
            except redis.RedisError as e:
                self.listening = False
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("redis subscription %s (%s): reconnecting; broadcasts from "
                              "the other workers do not reach this worker's clients "
                              "meanwhile", "lost" if self.ever_listened else "failed", e)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass
            eventlet.sleep(backoff)
            backoff = min(backoff * 2, MAX_LISTEN_BACKOFF)


class _Logged:
    """A broadcast to log and publish (redis_recovery.py) in the publisher's batch."""

    __slots__ = ("store", "data", "text")

    def __init__(self, store, data: dict, text: str):
        self.store, self.data, self.text = store, data, text

    def __call__(self, pipe) -> None:
        self.store.publish(pipe, self.text)
