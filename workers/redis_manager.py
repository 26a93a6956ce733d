"""Cross-worker and cross-host broadcasts through Redis pub/sub.

Two channel schemes (`--redis-channels`, docs/several-hosts.md):

- `single` (ClusterRedisManager): every worker subscribes to one channel,
  `socketio`, and receives every broadcast of the fleet: one delivery per
  worker per publish. Wire-compatible with python-socketio's RedisManager.
- `interest` (InterestRedisManager): a worker subscribes to a room's channel
  only while it has a member in that room, to its own channel for what is
  addressed to one of its sids, and to each namespace's channel only while it
  has a client there; the channels spread over one or several Redis servers
  (`--redis URL1,URL2,...`) by a hash of the channel name. A publish costs one
  delivery per worker with interest in it.
- `interest` on a Redis Cluster (`--redis redis+cluster://…`): the same
  channels, on the cluster's masters by hash slot with sharded pub/sub
  (ShardedRedisManager, workers/redis_cluster.py, built on the Publisher and
  Subscriber here).

In both, the `socketio` channel stays python-socketio's, so an external
`socketio.RedisManager(url, write_only=True)` can emit to imcluster's
clients; acks holding bytes, which python-socketio's format cannot carry, are
extended as workers/pubsub.py says.

How it lives through a Redis outage, which an IM server must: the worker
keeps serving its own clients (local rooms still deliver), each direction's
outage is logged once when it starts and once when it ends instead of once
per message, publishing does not retry on every emit (a circuit breaker skips
Redis until the next probe; an idle publisher probes with a PING every
PROBE_INTERVAL while the breaker is open, so its health, which `imcluster
status` shows and monitoring reads, turns "ok" again without waiting for a
broadcast), and the listener resubscribes within a second or
two of Redis coming back rather than after a backoff that grows to a minute.
Messages published while Redis is down do not reach other workers. With
several Redis servers each has its own publisher, subscriber and breaker:
one server down costs the channels that hash to it, not the others.

A subscription can also go silent without closing: a NAT or firewall that
dropped the flow, a frozen Redis. A blocked read would wait for ever, so each
subscriber reads with a timeout, sends a PING on the subscription when it has
heard nothing for a third of `silence_timeout`, and drops the connection,
reconnects and resubscribes when that PING goes unanswered until
`silence_timeout` after it last heard anything. The publisher waits as long
for the replies to a batch it sent, and resends a batch only when its
connection failed, never when the replies are late: Redis may have carried
out a late batch already (a busy machine, a Redis paused or stalled), and
sending it again delivered every message in it twice (seen under load ~20 on
2 cores, test_ordering's Redis burst).

Publishing goes through one connection per Redis server, in order: an emit
appends its message to an outbox and one publisher greenlet sends what has
gathered as a pipeline. So one sender's messages on one channel reach the
other workers in the order they were emitted (python-socketio runs each event
in its own greenlet, and a pool of connections let a later publish overtake an
earlier one), an emit never waits for Redis, and a burst costs one round trip
per batch, not per message.

An event handler's ack waits for its broadcasts, though: the ack of a client's
event is written only once every batch holding what that handler pushed was
written to Redis and answered (Publisher.wait_flushed, workers/pubsub.py
`wait_pushed`, called by workers/fastpath.py DirectAcks before the ack). So an
acked message has left the worker, and a `kill -9` of the worker right after
the ack does not lose it, as with python-socketio's RedisManager, which
publishes inside `emit()`. Without that, the ack went out while the broadcast
sat in the outbox, and a worker killed in between lost a message its sender
had been told was sent (a trial with --recovery-window and a kill -9: one
acked message in 4 runs of 6 reached nobody). A handler that pushed nothing
does not wait at all (no switch, no system call). The wait is bounded: not
while the breaker is open (the broadcast went to this worker's clients only,
or nowhere, as during any outage), and at most the publisher's reply timeout
(--redis-silence-timeout) after the ack was due; a batch that failed counts as
done (its messages were dropped, as they are without the wait).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
import uuid
import zlib

import eventlet
import eventlet.event
import eventlet.queue
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from imcluster import sid as sidcodec
from imcluster.redact import redact_url
from imcluster.workers.pubsub import ClusterPubSubManager, note_pushed
from imcluster.workers.redis_order import CHANNELS

log = logging.getLogger("imcluster.worker")

# How long a connect, or a command a worker waits for (not a publish), may
# take before Redis counts as down.
REDIS_TIMEOUT = 1.0
# While Redis is down: how often a publish (or, with none, a PING) probes it,
# and the listener's longest wait between resubscribe attempts.
PROBE_INTERVAL = 1.0
MAX_LISTEN_BACKOFF = 2.0
# Messages waiting for the publisher; past this (Redis far slower than the
# emits) new ones are dropped and counted, as during an outage.
MAX_OUTBOX = 10_000
MAX_BATCH = 512
DEFAULT_SILENCE_TIMEOUT = 15.0


def split_urls(urls: str | list[str]) -> list[str]:
    """`--redis` as a list: one URL, or several separated by commas."""
    if isinstance(urls, str):
        urls = urls.split(",")
    found = [u.strip() for u in urls if u and u.strip()]
    if not found:
        raise ValueError("no Redis URL given")
    return found


def server_of(channel: str, servers: int, base: str = "socketio") -> int:
    """Which of `servers` Redis servers (0-based, in --redis order) carries
    `channel` with interest channels: the first for python-socketio's own
    `base` channel (where external emitters publish), else crc32 of the name."""
    if channel == base:
        return 0
    return zlib.crc32(channel.encode()) % servers


def health_of(listening: bool, publishing: bool) -> str:
    """A worker's broadcast health from its two directions: "ok", "subscription
    down" (the others' broadcasts do not reach its clients), "publishing down"
    (its broadcasts do not reach the others) or "down" (both)."""
    if listening and publishing:
        return "ok"
    if publishing:
        return "subscription down"
    return "publishing down" if listening else "down"


def retry_unsent() -> Retry:
    """redis-py's retry for the publishing side: once, on a fresh connection,
    and only after a connection error (refused, reset, closed: a connection that
    went stale while idle), never after a timeout. A command that timed out was
    sent and Redis may have run it, late: redis-py's default retries it, so a
    PUBLISH went out twice and a recovery script ran twice."""
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


class SubscriptionSilent(Exception):
    """The subscription answered nothing, not even a PING, for this many seconds."""


class Publisher:
    """One Redis server's publishing side: an outbox, one greenlet, one connection,
    and a circuit breaker (see the module).

    Entries are numbered as they are queued (`pushed`, from 1); `flushed` is the
    number of the last entry whose batch is done: written and answered by Redis,
    or given up (the breaker, an error, a timeout: dropped as the module says).
    An entry queued by an event handler while the breaker is closed is noted in
    the handler's context (workers/pubsub.py `note_pushed`), and the handler's
    ack waits for it (`wait_flushed`, at most `reply_timeout`): an acked
    broadcast was handed to Redis before the ack left.
    """

    def __init__(self, url: str, where: str = "",
                 reply_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        """`reply_timeout`: seconds (> 0) to wait for the replies to a sent batch
        before Redis counts as down (the worker's --redis-silence-timeout)."""
        # redis-py 8 retries a failed command 10 times with backoff by default
        # (~20 s on a frozen Redis); one retry of a connection error covers a
        # stale pooled connection, then the breaker (retry_unsent says why not
        # after a timeout). `redis` is for commands a worker waits for
        # (connection state recovery's restore): those may take REDIS_TIMEOUT.
        self.redis = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
            health_check_interval=10, retry=retry_unsent())
        # One connection, used only by the publisher greenlet: no emit waits on
        # it, so a late reply (a busy machine) is waited for, as the subscriber
        # waits, rather than taken for an outage that drops the next second's
        # broadcasts.
        self.sender = redis.Redis.from_url(
            url, socket_timeout=reply_timeout, socket_connect_timeout=REDIS_TIMEOUT,
            health_check_interval=10, retry=retry_unsent())
        self.where = where  # " (redis://host:port)" with several servers, else ""
        self.publishing = True  # False while the breaker is open
        self.next_probe = 0.0
        self.dropped = 0  # during the current outage
        self.overflowed = 0
        self.published = 0
        # (channel, JSON text) to publish, or a step that adds commands to the
        # batch's pipeline (connection state recovery, redis_recovery.py).
        self.outbox: collections.deque = collections.deque()
        # Called with the entries the breaker dropped (the manager delivers a
        # recovery-logged broadcast to its own clients then).
        self.on_dropped = lambda entries: None
        self.wakeup = eventlet.event.Event()
        self.greenlet = None
        self.reply_timeout = reply_timeout
        # Entries queued (numbered from 1), taken into batches, and done (see the class).
        self.pushed = self.taken = self.flushed = 0
        self.flush_event: eventlet.event.Event | None = None  # made by a waiter

    def publish(self, channel: str, text: str) -> None:
        """Queue one message for `channel`; never waits for Redis."""
        self.push((channel, text))

    def push(self, entry) -> None:
        """Queue a (channel, text) or a step `entry(pipeline)`, run in order with
        the messages in the next batch; never waits for Redis."""
        if not self.publishing and time.monotonic() < self.next_probe:
            self.dropped += 1
            self.on_dropped([entry])
            return
        if len(self.outbox) >= MAX_OUTBOX:
            self.overflowed += 1
            if self.overflowed in (1, 1000, 100_000):
                log.warning("redis is not keeping up: %d broadcasts dropped so far%s",
                            self.overflowed, self.where)
            return
        self.outbox.append(entry)
        self.pushed += 1
        if self.publishing:
            note_pushed(self, self.pushed)
        if self.greenlet is None:
            self.greenlet = eventlet.spawn(self._publish_forever)
        if not self.wakeup.ready():
            self.wakeup.send()

    def _publish_forever(self) -> None:
        while True:
            if not self.outbox:
                if self.publishing:
                    self.wakeup.wait()
                else:
                    # The breaker is open and nothing is queued: probe on our own,
                    # or an idle worker would say "publishing down" until its next
                    # broadcast (a false alert for whoever monitors the status).
                    wait = self.next_probe - time.monotonic()
                    if wait > 0:
                        self.wakeup.wait(wait)
                    if not self.outbox:
                        self._probe()
                if self.wakeup.ready():  # (eventlet refuses to reset a fresh event)
                    self.wakeup.reset()
                continue
            batch = [self.outbox.popleft() for _ in range(min(len(self.outbox), MAX_BATCH))]
            self.taken += len(batch)
            try:
                self._send_batch(batch)
            finally:
                self._flushed_to(self.taken)

    def _flushed_to(self, n: int) -> None:
        """Entries up to number `n` are done (sent and answered, or given up)."""
        self.flushed = n
        ev = self.flush_event
        if ev is not None:
            self.flush_event = None
            ev.send()

    def wait_flushed(self, n: int, deadline: float) -> bool:
        """Wait until the batch holding entry number `n` is done (see the class),
        the breaker opens, or `deadline` (time.monotonic()) passes; True if done.
        Not from the publisher's own greenlet (it would wait for itself)."""
        while self.flushed < n and self.publishing:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ev = self.flush_event
            if ev is None:
                ev = self.flush_event = eventlet.event.Event()
            with eventlet.Timeout(left, False):
                ev.wait()
        return self.flushed >= n

    def _send_batch(self, batch: list) -> None:
        now = time.monotonic()
        if not self.publishing and now < self.next_probe:
            self.dropped += len(batch)
            self.on_dropped(batch)
            return
        try:
            pipe = self.sender.pipeline(transaction=False)
            for entry in batch:
                if callable(entry):
                    entry(pipe)
                else:
                    self._queue(pipe, *entry)
            self._execute(pipe, batch)
        except Exception as e:  # redis-py's errors, and anything else: the publisher lives on
            self.dropped += len(batch)
            self.on_dropped(batch)
            self.next_probe = time.monotonic() + PROBE_INTERVAL
            if self.publishing:
                self.publishing = False
                log.error("redis unreachable for publishing (%s): this worker's broadcasts "
                          "reach only its own clients until it is back%s", e, self.where)
            return
        self.published += len(batch)
        self._resumed()

    def _probe(self) -> None:
        """With the breaker open and nothing to send, once `next_probe` has come:
        a PING on the publishing connection; an answer closes the breaker, a
        failure keeps it open until PROBE_INTERVAL from now. Waits up to the
        sender's timeouts (connect: REDIS_TIMEOUT; reply: `reply_timeout`), in
        the publisher's own greenlet: no emit waits on it."""
        if self.publishing or time.monotonic() < self.next_probe:
            return
        try:
            self.sender.ping()
        except Exception:  # redis-py's errors, and anything else: the publisher lives on
            self.next_probe = time.monotonic() + PROBE_INTERVAL
            return
        self._resumed()

    def _resumed(self) -> None:
        """Redis took a batch or answered a probe: the breaker closes (said once)."""
        if not self.publishing:
            self.publishing = True
            log.warning("redis publishing resumed: this worker's broadcasts reach the "
                        "other workers again (%d messages could not be sent meanwhile)%s",
                        self.dropped, self.where)
            self.dropped = 0

    # Where a Redis Cluster publishes otherwise (workers/redis_cluster.py).
    def _queue(self, pipe, channel: str, text: str) -> None:
        pipe.publish(channel, text)

    def _execute(self, pipe, batch: list) -> None:
        pipe.execute()


class Subscriber:
    """One Redis server's subscribing side: one connection holding the channels
    in `want`, remade after an error or a silence (see the module); every
    message goes to `deliver((channel, data))`.

    The set may change while the connection lives (`add`, `remove`): the
    command goes out at once from the caller's greenlet (redis-py's PubSub
    serialises its commands with a lock, and its reader only reads), and
    `wait_confirmed` waits for Redis to confirm a SUBSCRIBE, after which every
    message published on that channel reaches this worker.
    """

    def __init__(self, url: str, silence_timeout: float, deliver, want=(), where: str = ""):
        # The listener's reads carry their own timeout (get_message); the socket
        # timeout bounds its writes (PING, SUBSCRIBE). No retries inside redis-py:
        # the listener reconnects, and logs, itself. Its own PING replaces
        # redis-py's health check.
        self.redis = redis.Redis.from_url(
            url, socket_timeout=silence_timeout, socket_connect_timeout=REDIS_TIMEOUT,
            socket_keepalive=True, health_check_interval=0, retry=Retry(NoBackoff(), 0))
        self.silence_timeout = silence_timeout
        self.deliver = deliver
        self.where = where
        self.want: set[str] = set(want)
        self.pending: dict[str, int] = {}  # SUBSCRIBEs sent on this connection, unconfirmed
        self.confirmed: set[str] = set()
        self.waiters: dict[str, eventlet.event.Event] = {}
        self.pubsub = None  # the live connection's PubSub, once made
        # Its first SUBSCRIBE went out (redis-py connects in it): from then on
        # add() and remove() send their own commands; before, the reader does.
        self.ready = False
        self.stopped = False  # stop(): the reader ends
        self.listening = False
        self.ever_listened = False
        self.failures = 0  # connections that failed or were lost (Redis down, silent)
        self.received = 0  # messages Redis delivered to this worker (the cost of interest)
        # Called when the subscription is confirmed again after an outage.
        self.on_restored = lambda: None

    # ---- the set of channels ------------------------------------------------------

    def add(self, channel: str) -> None:
        if channel in self.want:
            return
        self.want.add(channel)
        ps = self.pubsub
        if ps is not None and self.ready:
            self.pending[channel] = self.pending.get(channel, 0) + 1
            try:
                self._subscribe(ps, [channel])
            except Exception:  # the reader sees the broken connection and remakes it
                pass

    def remove(self, channel: str) -> None:
        if channel not in self.want:
            return
        self.want.discard(channel)
        self.confirmed.discard(channel)
        ps = self.pubsub
        if ps is not None and self.ready:
            try:
                self._unsubscribe(ps, [channel])
            except Exception:
                pass

    def stop(self) -> None:
        """End the reader within a read timeout (a third of `silence_timeout`, at
        most), closing its connection."""
        self.stopped = True

    # The commands, and what the server sent unasked: a Redis Cluster's sharded
    # pub/sub differs here (workers/redis_cluster.py).
    def _subscribe(self, ps, channels: list[str]) -> None:
        ps.subscribe(*channels)

    def _unsubscribe(self, ps, channels: list[str]) -> None:
        ps.unsubscribe(*channels)

    def _dropped_by_server(self, channel: str) -> None:
        """An unsubscribe message for `channel` (asked for, or not)."""

    def wait_confirmed(self, channel: str, timeout: float) -> bool:
        """Wait (at most `timeout` s) until Redis confirmed the subscription to
        `channel`; at once when it is, or when this connection is down."""
        # Waits while a connection is up or being made for the first time; not
        # while Redis is known down (every join would wait in vain).
        live = self.pubsub is not None and (self.listening or not self.ever_listened)
        if channel in self.confirmed or not live or channel not in self.want:
            return channel in self.confirmed
        ev = self.waiters.get(channel)
        if ev is None:
            ev = self.waiters[channel] = eventlet.event.Event()
        with eventlet.Timeout(timeout, False):
            ev.wait()
        return channel in self.confirmed

    def _confirmed(self, channel: str) -> None:
        n = self.pending.get(channel, 0) - 1
        if n > 0:
            self.pending[channel] = n
            return
        self.pending.pop(channel, None)
        if channel in self.want:
            self.confirmed.add(channel)
        ev = self.waiters.pop(channel, None)
        if ev is not None:
            ev.send()

    # ---- the reader -----------------------------------------------------------------

    def run(self) -> None:
        """Read for ever: through Redis going away (reconnect with backoff) and
        through a silent connection (reconnect after `silence_timeout`). Each is
        logged when it starts and once more when the subscription is confirmed
        again."""
        backoff = 0.25
        down_since = None  # when messages from other workers stopped arriving
        ping_every = self.silence_timeout / 3
        while not self.stopped:
            pubsub = self.redis.pubsub()
            heard = time.monotonic()  # anything read on this connection, or its start
            try:
                self.pubsub, self.pending, self.confirmed = pubsub, {}, set()
                # What was wanted at the start, then what changed meanwhile (the
                # commands yield to other greenlets), until nothing did: only then
                # may add() and remove() use the connection themselves.
                sent: set[str] = set()
                while self.want != sent:
                    more, fewer = self.want - sent, sent - self.want
                    if more:
                        for c in more:
                            self.pending[c] = self.pending.get(c, 0) + 1
                        sent |= more
                        self._subscribe(pubsub, sorted(more))
                    if fewer:
                        sent -= fewer
                        self._unsubscribe(pubsub, sorted(fewer))
                self.ready = True
                pinged = None  # when the unanswered PING went out
                while not self.stopped:
                    message = pubsub.get_message(timeout=ping_every / 2)
                    if self.stopped:
                        break  # what it read is no longer for this worker (a retired node)
                    now = time.monotonic()
                    if message is not None:
                        heard, pinged = now, None
                        kind = message["type"]
                        if kind in ("message", "smessage"):
                            self.received += 1
                            channel = message["channel"]
                            self.deliver((channel.decode() if isinstance(channel, bytes)
                                          else channel, message["data"]))
                            # Time spent in the consumer is not silence.
                            heard = time.monotonic()
                        elif kind in ("subscribe", "ssubscribe"):
                            channel = message["channel"]
                            self._confirmed(channel.decode() if isinstance(channel, bytes)
                                            else channel)
                            if not self.listening:
                                self.listening = self.ever_listened = True
                                backoff = 0.25
                                if down_since is not None:
                                    log.warning("redis subscription restored after %.1fs: "
                                                "broadcasts from the other workers reach "
                                                "this worker's clients again%s",
                                                now - down_since, self.where)
                                    down_since = None
                                    self.on_restored()
                        elif kind == "sunsubscribe":
                            channel = message["channel"]
                            self._dropped_by_server(channel.decode()
                                                    if isinstance(channel, bytes) else channel)
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
                self.failures += 1
                if down_since is None:
                    down_since = heard
                    log.error("redis subscription silent for %.1fs (no message, no answer to "
                              "PING): reconnecting; broadcasts from the other workers do not "
                              "reach this worker's clients meanwhile%s", e.args[0], self.where)
            except redis.RedisError as e:
                self.listening = False
                self.failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("redis subscription %s (%s): reconnecting; broadcasts from "
                              "the other workers do not reach this worker's clients "
                              "meanwhile%s", "lost" if self.ever_listened else "failed", e,
                              self.where)
            finally:
                self.pubsub, self.ready = None, False
                self.confirmed = set()
                for ev in self.waiters.values():
                    ev.send()  # nobody waits for a connection that is gone
                self.waiters = {}
                try:
                    pubsub.close()
                except Exception:
                    pass
            eventlet.sleep(backoff)
            backoff = min(backoff * 2, MAX_LISTEN_BACKOFF)


# internals: socketio-manager-name, socketio-publish, socketio-manager-attrs (self.json)
class ClusterRedisManager(ClusterPubSubManager):
    """`--redis-channels single`: every worker hears every broadcast on `channel`
    (on the first Redis server given)."""

    name = "imcluster-redis"

    def __init__(self, url: str | list[str], channel: str = "socketio", logger=None,
                 silence_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        """`url`: one Redis URL, or several (a list, or comma-separated: the
        interest scheme spreads its channels over them); `silence_timeout`:
        seconds (> 0) a subscription may go unheard before it is remade; the
        listener pings it after a third of that."""
        super().__init__(channel=channel, write_only=False, logger=logger)
        self.urls = split_urls(url)
        self.url = self.urls[0]
        self.silence_timeout = silence_timeout
        self.inbox: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        several = len(self.urls) > 1
        self.nodes = [
            (Publisher(u, f" ({redact_url(u)})" if several else "", silence_timeout),
             Subscriber(u, silence_timeout, self.inbox.put, self._always(i),
                        f" ({redact_url(u)})" if several else ""))
            for i, u in enumerate(self.urls)]
        self.listener = None  # the greenlet that runs python-socketio's listener
        self.heard_on: str | None = None  # the channel of the message being handled
        # Connection state recovery in Redis (redis_recovery.py), set by the worker,
        # single channel only: its offsets order what is published on `channel`.
        self.store = None
        # Hand-over ordered with the channels (redis_order.py), set by the worker with
        # --handover yes.
        self.order = None
        self.redis = self.nodes[0][0].redis
        self.nodes[0][0].on_dropped = self._dropped
        self.nodes[0][1].on_restored = self._subscription_restored

    def _always(self, node: int) -> set[str]:
        """The channels node `node`'s subscriber holds from the start."""
        return {self.channel} if node == 0 else set()

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds until Redis confirmed every channel this
        worker's subscribers hold (at the start: `_always`, on each server): from
        then on every message published there reaches it. True once confirmed; False at
        the timeout, or at once when a subscriber's connection has failed
        (Redis down or silent: the worker serves without it, as before).

        A worker says READY after this (workers/main.py): a session handed over
        to a worker whose subscription was not confirmed yet missed what was
        published between its old worker's position and the subscription
        (redis_order.py; a test_recovery run under load lost one message)."""
        deadline = time.monotonic() + timeout
        while True:
            subs = self._subscribers()
            if subs is not None and all(sub.want <= sub.confirmed for sub in subs):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or any(sub.failures and not sub.listening for sub in subs or ()):
                return False
            eventlet.sleep(min(0.02, left))

    def _subscribers(self) -> list | None:
        """This worker's subscribers now (None: not known yet)."""
        return [sub for _, sub in self.nodes]

    def health(self) -> str:
        """How this worker's broadcasts stand: "ok", "subscription down" (others'
        broadcasts do not reach its clients), "publishing down" (its broadcasts do
        not reach the others) or "down" (both); with several Redis servers, "down"
        on any of them counts. Reported to the master (LOAD)."""
        return health_of(all(sub.listening for _, sub in self.nodes if sub.want),
                      all(pub.publishing for pub, _ in self.nodes))

    def stats(self) -> dict:
        """Pub/sub figures for the master's status (LOAD): `received`, messages
        Redis delivered to this worker since it started; `channels`, channels it
        is subscribed to now; `published`, messages it published."""
        return {"received": sum(sub.received for _, sub in self.nodes),
                "channels": sum(len(sub.want) for _, sub in self.nodes),
                "published": sum(pub.published for pub, _ in self.nodes)}

    def _publish(self, data) -> None:
        if self.order is not None:
            data = self.order.stamp(data)
        text = self.json.dumps(data)
        if (self.store is not None and data.get("method") == "emit"
                and data.get("callback") is None):
            # Logged with the next offset and published by one script (redis_recovery.py).
            self.nodes[0][0].push(_Logged(self.store, data, text))
        else:
            self.nodes[0][0].publish(self.channel, text)

    def enqueue(self, step) -> None:
        """Run `step(pipeline)` in the publisher's next batch, after what is queued
        (connection state recovery's session changes, redis_recovery.py)."""
        self.nodes[0][0].push(step)

    def _dropped(self, entries: list) -> None:
        """With recovery on, a worker delivers its broadcasts when they come back
        from Redis; one that cannot go there reaches this worker's clients now,
        without an offset (as without recovery: local rooms still deliver)."""
        for entry in entries:
            if isinstance(entry, _Logged):
                try:
                    self.deliver_here(entry.data)
                except Exception:
                    log.exception("local delivery of a broadcast failed")

    def _heard(self, data: dict, first: bool = True) -> dict | None:
        if self.order is None:
            return data if first else None
        # Every copy, the duplicates too: each counts in its channel's positions.
        return self.order.heard(data, self.heard_on, first)

    def _subscription_restored(self) -> None:
        if self.recovery is not None:
            # Redis may have restarted (offsets from 1 again).
            self.recovery.skip.clear()

    def _receive(self):
        """Yield each message delivered to any subscriber, in the order each
        subscriber read them."""
        self.listener = eventlet.getcurrent()
        for i, (_, sub) in enumerate(self.nodes):
            if sub.want or i == 0:
                eventlet.spawn(sub.run)
        while True:
            self.heard_on, message = self.inbox.get()
            if self.recovery is not None:
                self.recovery.wait_resumed()  # a session is being restored
            yield message


class _Logged:
    """A broadcast to log and publish (redis_recovery.py) in the publisher's batch."""

    __slots__ = ("store", "data", "text")

    def __init__(self, store, data: dict, text: str):
        self.store, self.data, self.text = store, data, text

    def __call__(self, pipe) -> None:
        self.store.publish(pipe, self.text)


# How long the id of a message published on several channels is remembered, so
# that its other copies are dropped (seconds; and at most how many ids).
SEEN_SECONDS = 60.0
MAX_SEEN = 100_000


# internals: socketio-manager-name, socketio-publish, socketio-basic-enter-room,
# socketio-basic-leave-room, socketio-manager-attrs (self.json, self.host_id),
# socketio-remote-enter-room, socketio-remote-leave-room, socketio-remote-disconnect,
# socketio-can-disconnect
class InterestRedisManager(ClusterRedisManager):
    """`--redis-channels interest`: a worker hears a broadcast only when it has a
    client the broadcast is for.

    Channels (base `socketio`, the python-socketio channel's name):
      `socketio`                   python-socketio's own: external emitters (first server)
      `socketio:w:HOST:WORKER`     what is addressed to a sid that worker made
                                   (emit to a sid, acks, remote enter/leave/disconnect)
                                   and the replies to its remote enter/leave/disconnect
                                   (room_done)
      `socketio:r:["/ns","room"]`  a room's broadcasts, held while a member is here
      `socketio:r:["/ns",null]`    emit to all of a namespace, held while a client is here
      `socketio:fleet`             every worker (the Admin UI's announce)
    A channel lives on server `crc32(name) % len(servers)` (the `socketio`
    channel on the first). Every worker must be given the same list, in the
    same order.

    A message for several channels (several rooms, or a sid that might also be
    a room's name) carries an id (`mid`); each worker acts on the first copy it
    gets and drops the others, so a member of several of the rooms gets it once.

    A worker's manager `host_id` (python-socketio's, which names the sender of
    an emit with a callback) ends in `.HOST.WORKER`, so an ack goes back on the
    sender's own channel.
    """

    name = "imcluster-redis-interest"

    def __init__(self, url: str | list[str], host: int = 0, worker: int = 0,
                 channel: str = "socketio", logger=None,
                 silence_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        self.me = (host, worker)
        self.worker_channel = self.channel_of_worker(host, worker, channel)
        self.fleet_channel = f"{channel}:fleet"
        super().__init__(url, channel=channel, logger=logger,
                         silence_timeout=silence_timeout)
        self.host_id = f"{uuid.uuid4().hex}.{host}.{worker}"
        self.seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        # Worker channels held for sids that moved in from another worker (hand-over):
        # channel -> how many such sids are here.
        self.adopted: collections.Counter[str] = collections.Counter()
        self.not_waiting: set = set()  # greenlets in without_waiting()
        # Remote enter_room/leave_room waiting for the sid's worker: id -> event.
        self.room_changes: dict[str, eventlet.event.Event] = {}
        # Hand-over (redis_order.py): channels held for sessions about to move in
        # (channel -> how many preparations hold it), and this worker's
        # preparations waiting for the heir's markers (token -> _Marks).
        self.prepared: collections.Counter[str] = collections.Counter()
        self.marks: dict[str, _Marks] = {}
        # Preparations asked of this worker (token -> until when it is remembered).
        self.prepare_tokens: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.cluster_handlers.update({"enter_room": self._handle_room_change,
                                      "leave_room": self._handle_room_change,
                                      "room_done": self._handle_room_done,
                                      "disconnect": self._handle_disconnect_here,
                                      "handover_prepare": self._handle_prepare,
                                      "handover_mark": self._handle_mark})

    # ---- channel names ----------------------------------------------------------------

    @staticmethod
    def channel_of_worker(host: int, worker: int, base: str = "socketio") -> str:
        return f"{base}:w:{host}:{worker}"

    def channel_of_room(self, namespace: str, room) -> str:
        try:
            name = json.dumps([namespace, room], separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            name = json.dumps([namespace, repr(room)], separators=(",", ":"))
        return f"{self.channel}:r:{name}"

    def node_of(self, channel: str) -> int:
        return server_of(channel, len(self.urls), self.channel)

    def _always(self, node: int) -> set[str]:
        always = super()._always(node)
        # Its own channel on every server: each subscriber then always holds one
        # channel (its silence PINGs and health need a subscription); only the
        # server the name hashes to carries messages on it.
        always.add(self.worker_channel)
        if self.node_of(self.fleet_channel) == node:
            always.add(self.fleet_channel)
        return always

    def _sub(self, channel: str) -> Subscriber:
        return self.nodes[self.node_of(channel)][1]

    def _pub(self, channel: str) -> Publisher:
        return self.nodes[self.node_of(channel)][0]

    # ---- membership follows the rooms -------------------------------------------------

    # Overrides python-socketio 5.18's BaseManager.basic_enter_room / basic_leave_room,
    # through which every change of a room passes (connect, enter_room, leave_room,
    # disconnect, close_room, and the hand-over's move in).
    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        if room == sid:
            owner = sidcodec.owner_of(sid)
            created = False
            channel = None
            if owner is not None and owner != self.me:  # moved in from another worker
                channel = self.channel_of_worker(*owner, base=self.channel)
        else:
            created = room not in self.rooms.get(namespace, {})
            channel = self.channel_of_room(namespace, room)
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if channel is None:
            return
        if room == sid:
            self.adopted[channel] += 1
            created = self.adopted[channel] == 1
        sub = self._sub(channel)
        if created:
            sub.add(channel)
        # Not on the listener: what it handles (a remote enter_room) must not wait
        # for the confirmation it would itself read; nor where asked not to.
        here = eventlet.getcurrent()
        if here is not self.listener and here not in self.not_waiting:
            # So that a message published after this member's join (its ack) reaches it.
            sub.wait_confirmed(channel, REDIS_TIMEOUT)

    def basic_leave_room(self, sid, namespace, room):
        had = sid in self.rooms.get(namespace, {}).get(room, ())
        super().basic_leave_room(sid, namespace, room)
        if not had:
            return
        if room == sid:
            owner = sidcodec.owner_of(sid)
            if owner is None or owner == self.me:
                return
            channel = self.channel_of_worker(*owner, base=self.channel)
            self.adopted[channel] -= 1
            if self.adopted[channel] > 0:
                return
            del self.adopted[channel]
        elif room in self.rooms.get(namespace, {}):
            return
        else:
            channel = self.channel_of_room(namespace, room)
        if channel in self.prepared:
            return  # held for a session about to move in (released after PREPARE_HOLD)
        self._sub(channel).remove(channel)

    # ---- a room change of a session on another worker ----------------------------------

    # Overrides python-socketio 5.18's PubSubManager.enter_room / leave_room for a sid
    # of another worker. Upstream publishes the change and returns; with one channel
    # it is then ordered with what the caller emits next. Here the change travels on
    # the sid's worker channel and the caller's next emit on the room's: so the call
    # returns once the sid's worker has made the change (and, entering, holds the
    # room's subscription), at most REDIS_TIMEOUT later: `enter_room(sid, r)` then
    # `emit(to=r)` reaches the session, as on one worker.
    def enter_room(self, sid, namespace, room, eio_sid=None):
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._remote_room_change("enter_room", sid, namespace, room)

    def leave_room(self, sid, namespace, room):
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return super().leave_room(sid, namespace, room)
        self._remote_room_change("leave_room", sid, namespace, room)

    # Overrides python-socketio 5.18's PubSubManager.can_disconnect (what
    # Server.disconnect asks) and disconnect, for a sid of another worker: as
    # enter_room, the call returns once the sid's worker has disconnected it, at
    # most REDIS_TIMEOUT later, so that `disconnect(sid)` then `emit(to=room)`
    # does not reach the session, as on one worker.
    def can_disconnect(self, sid, namespace):
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return super().can_disconnect(sid, namespace)
        self._remote_room_change("disconnect", sid, namespace)
        return False

    def disconnect(self, sid, namespace=None, **kwargs):
        if (kwargs.get("ignore_queue") or self.is_connected(sid, namespace or "/")
                or self.is_pre_connected(sid, namespace or "/")):
            return super().disconnect(sid, namespace, **kwargs)
        self._remote_room_change("disconnect", sid, namespace)

    def _remote_room_change(self, method: str, sid, namespace, room=None) -> None:
        rid = uuid.uuid4().hex
        done = self.room_changes[rid] = eventlet.event.Event()
        message = {"method": method, "sid": sid, "namespace": namespace or "/",
                   "host_id": self.host_id, "reply": rid}
        if method != "disconnect":
            message["room"] = room
        try:
            self._publish(message)
            # Not on the listener, which would read the reply; a sid nobody holds
            # (gone) costs the caller this wait.
            if eventlet.getcurrent() is not self.listener:
                with eventlet.Timeout(REDIS_TIMEOUT, False):
                    done.wait()
        finally:
            self.room_changes.pop(rid, None)

    def _handle_room_change(self, message: dict) -> None:
        """Another worker's enter_room/leave_room for a sid: made here if the session
        is here; then, once a new room's subscription is confirmed, the reply."""
        sid, namespace, room = message.get("sid"), message.get("namespace"), message.get("room")
        if not (self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace)):
            return  # not here (a worker that only shares the channel, or gone)
        if message["method"] == "enter_room":
            super().enter_room(sid, namespace, room)  # on the listener: does not wait
        else:
            super().leave_room(sid, namespace, room)
        rid = message.get("reply")
        if not isinstance(rid, str):
            return  # from a python-socketio server that waits for nothing
        reply = {"method": "room_done", "reply": rid, "to": message.get("host_id"),
                 "host_id": self.host_id}
        if message["method"] == "leave_room":
            self._publish(reply)
            return
        channel = self.channel_of_room(namespace, room)

        def confirm() -> None:
            self._sub(channel).wait_confirmed(channel, REDIS_TIMEOUT)
            self._publish(reply)

        eventlet.spawn(confirm)  # the listener reads on meanwhile

    def _handle_disconnect_here(self, message: dict) -> None:
        """Another worker's (or an external emitter's) disconnect of a sid: made here
        if the session is here; then the reply, when one is asked for."""
        sid, namespace = message.get("sid"), message.get("namespace") or "/"
        if not (self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace)):
            return
        self.server.disconnect(sid=sid, namespace=namespace, ignore_queue=True)
        rid = message.get("reply")
        if isinstance(rid, str):
            self._publish({"method": "room_done", "reply": rid, "to": message.get("host_id"),
                           "host_id": self.host_id})

    def _handle_room_done(self, message: dict) -> None:
        done = self.room_changes.get(message.get("reply"))
        if done is not None and not done.ready():
            done.send()

    @contextlib.contextmanager
    def without_waiting(self):
        """Room changes in this block subscribe without waiting for Redis to confirm
        (the hand-over's move in, on the worker's channel reader: a message
        published in that instant can miss the session, as workers/handover.py
        says of Redis)."""
        here = eventlet.getcurrent()
        self.not_waiting.add(here)
        try:
            yield
        finally:
            self.not_waiting.discard(here)

    # ---- where a message goes ---------------------------------------------------------

    def _targets_of_sid(self, namespace: str, sid) -> list[str]:
        """A sid's own worker channel; a sid of this worker's needs none."""
        owner = sidcodec.owner_of(sid) if isinstance(sid, str) else None
        if owner is None:
            return [self.fleet_channel]  # not one of ours: whoever holds it
        if owner == self.me and self.is_sid_room(namespace, sid):
            return []
        return [self.channel_of_worker(*owner, base=self.channel)]

    def _targets_of_rooms(self, namespace: str, rooms) -> list[str]:
        if isinstance(rooms, (list, tuple)):
            if not rooms:
                return []
        else:
            rooms = [rooms]
        found: list[str] = []
        for r in rooms:
            owner = sidcodec.owner_of(r) if isinstance(r, str) else None
            if owner is None:
                found.append(self.channel_of_room(namespace, r))
            elif owner == self.me and self.is_sid_room(namespace, r):
                continue  # one of this worker's sids: handled here already
            else:
                # A name that reads as a sid: its worker's channel, and the room's
                # too, for a room that happens to have such a name (both carry
                # the same id, so nobody gets it twice).
                if owner != self.me:
                    found.append(self.channel_of_worker(*owner, base=self.channel))
                found.append(self.channel_of_room(namespace, r))
        return list(dict.fromkeys(found))

    def targets(self, data: dict) -> list[str]:
        """The channels message `data` is published on (see the class)."""
        method, namespace = data.get("method"), data.get("namespace") or "/"
        if method == "emit":
            return self._targets_of_rooms(namespace, data.get("room"))
        if method in ("disconnect", "enter_room", "leave_room"):
            return self._targets_of_sid(namespace, data.get("sid"))
        if method == "close_room":
            return [self.channel_of_room(namespace, data.get("room"))]
        if method in ("callback", "room_done"):
            try:
                _, host, worker = str(data.get("to" if method == "room_done" else "host_id")
                                      ).rsplit(".", 2)
                return [self.channel_of_worker(int(host), int(worker), self.channel)]
            except ValueError:
                return [self.channel]  # an ack for a python-socketio server (not ours)
        if method in ("sockets_join", "sockets_leave", "disconnect_sockets"):
            return self._targets_of_rooms(namespace, data.get("filter"))
        if method == "handover_prepare":
            return [self.channel_of_worker(*data["worker"], base=self.channel)]
        if method == "handover_mark":
            return [data["channel"]]
        return [self.fleet_channel]

    def _publish(self, data) -> None:
        channels = self.targets(data)
        if len(channels) > 1:
            data = {**data, "mid": uuid.uuid4().hex}
            if self.order is not None:
                # Which channels carry a copy: a moved session gets it once over
                # all of them (redis_order.py, "Several rooms at once").
                data[CHANNELS] = channels
        if not channels:
            return
        if self.order is not None:
            data = self.order.stamp(data, channels)
        text = self.json.dumps(data)
        for channel in channels:
            self._pub(channel).publish(channel, text)

    def _accept(self, data: dict) -> bool:
        mid = data.get("mid")
        if mid is None:
            return True
        now = time.monotonic()
        seen = self.seen
        while seen and (len(seen) >= MAX_SEEN or next(iter(seen.values())) < now):
            seen.popitem(last=False)
        if mid in seen:
            return False
        seen[mid] = now + SEEN_SECONDS
        return True


    # ---- hand-over: ready the heir's channels (redis_order.py, "Interest channels") ----

    def channels_of_session(self, eio_sid: str) -> list[str]:
        """The channels session `eio_sid`'s rooms here are on, in every namespace it
        joined: the namespace's (emit to all), each room's, and the worker channel
        of each of its sids (what is addressed to the sid). The same list on the
        old worker and on the heir."""
        found: list[str] = []
        for ns in list(self.get_namespaces()):
            sid = self.sid_from_eio_sid(eio_sid, ns)
            if sid is None:
                continue
            found.append(self.channel_of_room(ns, None))  # (get_rooms leaves it out)
            for room in self.get_rooms(sid, ns):
                if room == sid:
                    owner = sidcodec.owner_of(sid)
                    if owner is not None:
                        found.append(self.channel_of_worker(*owner, base=self.channel))
                else:
                    found.append(self.channel_of_room(ns, room))
        return list(dict.fromkeys(found))

    def prepare_heir(self, heir: int, channels: list[str], timeout: float) -> set[str]:
        """Ready worker `heir` (this host) to take sessions on `channels`: it
        subscribes to those it lacks and, once Redis confirmed, publishes a marker
        on each; returns the channels whose marker this worker's listener has read
        within `timeout` seconds (every message on such a channel that the heir
        does not get was read here before the marker: no gap between the two)."""
        if not channels or self.order is None:
            return set()
        token = uuid.uuid4().hex
        marks = self.marks[token] = _Marks(set(channels))
        request = {"method": "handover_prepare", "worker": [self.me[0], heir],
                   "channels": sorted(marks.want), "token": token, "host_id": self.host_id}
        deadline = time.monotonic() + timeout
        try:
            # Asked again until it answers: a worker may say READY (and be named
            # heir) before Redis confirmed its own channel's subscription, and a
            # request published before that reaches nobody. The heir acts on a
            # token once.
            while not marks.done.ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._publish(request)
                with eventlet.Timeout(min(left, PREPARE_RETRY), False):
                    marks.done.wait()
            return set(marks.got)
        finally:
            self.marks.pop(token, None)

    def _handle_prepare(self, message: dict) -> None:
        """(The heir.) Hold each channel named, then mark each once subscribed."""
        channels, token = message.get("channels"), message.get("token")
        if not isinstance(channels, list) or not isinstance(token, str):
            return
        now = time.monotonic()
        tokens = self.prepare_tokens
        while tokens and next(iter(tokens.values())) < now:
            tokens.popitem(last=False)
        if token in tokens:
            return  # asked again while this worker prepares (or had): once is enough
        tokens[token] = now + PREPARE_HOLD
        channels = [c for c in channels if isinstance(c, str)][:MAX_PREPARED]
        for c in channels:
            self.prepared[c] += 1
            self._sub(c).add(c)  # on the listener: does not wait (below, apart)

        def mark() -> None:
            try:
                for c in channels:
                    if self._sub(c).wait_confirmed(c, PREPARE_CONFIRM):
                        self._publish({"method": "handover_mark", "channel": c,
                                       "token": token, "host_id": self.host_id})
            finally:
                eventlet.spawn_after(PREPARE_HOLD, self._release, channels)

        eventlet.spawn(mark)

    def _release(self, channels: list[str]) -> None:
        held = None
        for c in channels:
            self.prepared[c] -= 1
            if self.prepared[c] > 0:
                continue
            del self.prepared[c]
            if held is None:
                held = self._held()
            if c not in held:
                self._sub(c).remove(c)

    def _held(self) -> set[str]:
        """The channels this worker's rooms and moved-in sids hold now."""
        held = set(self.adopted)
        for node in range(len(self.urls)):
            held |= self._always(node)
        for ns, rooms in self.rooms.items():
            for room, members in rooms.items():
                if not (len(members) == 1 and room in members):  # not a sid's own room
                    held.add(self.channel_of_room(ns, room))
        return held

    def _handle_mark(self, message: dict) -> None:
        """(The old worker.) Its listener read the heir's marker on that channel."""
        marks = self.marks.get(message.get("token"))
        if marks is None:
            return  # someone else's hand-over (a worker that shares the room's channel)
        marks.got.add(message.get("channel"))
        if marks.want <= marks.got and not marks.done.ready():
            marks.done.send()


class _Marks:
    """A preparation waiting for the heir's marker on each of `want`."""

    __slots__ = ("want", "got", "done")

    def __init__(self, want: set[str]):
        self.want, self.got = want, set()
        self.done = eventlet.event.Event()


# How long the heir holds the channels it was asked to prepare, so that the
# sessions arrive while it holds them (seconds; a drain lasts at most 0.8 x
# --graceful-timeout), and at most how many one preparation names.
PREPARE_HOLD = 60.0
MAX_PREPARED = 100_000
# How often the old worker asks again while no marker came (seconds), and how
# long the heir waits for Redis to confirm each channel before giving it up.
PREPARE_RETRY = 0.5
PREPARE_CONFIRM = 2.0
