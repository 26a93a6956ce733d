"""Interest channels on a Redis Cluster, with sharded pub/sub (Redis >= 7.0).

`--redis redis+cluster://HOST:PORT` (several seed nodes may be listed, comma-
separated, all `redis+cluster://` or `rediss+cluster://`) with
`--redis-channels interest`. The channels are those of InterestRedisManager
(workers/redis_manager.py); what differs is where each goes:

- a channel lives on the master that owns its hash slot (CRC16 of the name,
  or of its `{hash tag}`, mod 16384: the cluster specification's rule, which
  `key_slot` implements); the worker publishes there with SPUBLISH and holds
  it there with SSUBSCRIBE, one connection per master for each. Redis keeps a
  sharded message inside the shard that owns the slot, so a cluster of N
  masters spreads the pub/sub work over N, which plain PUBLISH on a cluster
  does not (every node forwards every PUBLISH to every other node);
- python-socketio's own `socketio` channel stays classic: external emitters
  (`socketio.RedisManager(url, write_only=True)`) publish with PUBLISH on
  whatever node their URL names, and a cluster forwards that to every node, so
  the worker holds `socketio` with plain SUBSCRIBE on one master (the owner of
  its slot). A worker's own publish to `socketio` (an ack for a python-socketio
  server) uses PUBLISH too;
- each master's subscriber connection also holds a *keeper* channel, one
  whose hash tag falls in that master's slots, so it always has a subscription
  for its silence PING (workers/redis_manager.py, Subscriber).

The slot map comes from CLUSTER SLOTS, read when the manager starts, every
REFRESH_INTERVAL seconds, every REFRESH_WHILE_DOWN seconds while a subscriber
is down (a master failing over), and at once when a master drops a channel
unasked (Redis 7 sends SUNSUBSCRIBE for every shard channel of a slot that
leaves a node) or answers a SPUBLISH with MOVED or ASK. On a
change the worker moves each channel it holds to the slot's new owner
(SUNSUBSCRIBE at the old one, SSUBSCRIBE at the new) and re-sends the refused
publishes once through the new owner. What is lost: messages published to a
master that is dead (until a replica takes over, about cluster-node-timeout
plus a refresh), and a message published at a slot's new owner in the round
trip before the worker's SSUBSCRIBE reaches it.

redis-py's own cluster pub/sub (RedisCluster.pubsub, redis-py >= 5.0) reads
its per-node connections round-robin with one timeout each and follows a
slot that moves only in recent releases (8.1, with a thread of its own);
this module uses redis-py's public single-node API only (Redis,
PubSub.ssubscribe, pipelines), so the same Publisher and Subscriber
(breaker, silence PING, logging) serve both.
PubSub.ssubscribe came with redis-py 5.0: on 4.x this manager refuses to
start, with a message, while the other schemes keep working.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
import urllib.parse

import eventlet
import eventlet.event
import eventlet.semaphore
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from imcluster.redact import redact_url
from imcluster.workers.redis_manager import (
    DEFAULT_SILENCE_TIMEOUT,
    REDIS_TIMEOUT,
    InterestRedisManager,
    Publisher,
    Subscriber,
    health_of,
    split_urls,
)

log = logging.getLogger("imcluster.worker")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SLOTS = 16384
# How often the slot map is read at rest, and while a master is unreachable.
REFRESH_INTERVAL = 5.0
REFRESH_WHILE_DOWN = 0.5


def is_cluster_url(urls: str | list[str] | None) -> bool:
    """Whether `--redis` names a Redis Cluster (`redis+cluster://…`)."""
    if not urls:
        return False
    return any(urllib.parse.urlsplit(u).scheme in CLUSTER_SCHEMES for u in split_urls(urls))


def seed_urls(urls: str | list[str]) -> list[str]:
    """The seed nodes of `redis+cluster://[USER:PASSWORD@]HOST:PORT[/0][?OPTIONS]`
    URLs as plain redis-py URLs (`redis://…`, `rediss://…` for `rediss+cluster`).
    Raises ValueError for a URL of another scheme, or naming a database other
    than 0 (a cluster has only database 0)."""
    found = []
    for u in split_urls(urls):
        p = urllib.parse.urlsplit(u)
        if p.scheme not in CLUSTER_SCHEMES:
            raise ValueError(f"{redact_url(u)}: every URL of a Redis Cluster is "
                             "redis+cluster:// or rediss+cluster://")
        if p.path not in ("", "/", "/0"):
            raise ValueError(f"{redact_url(u)}: a Redis Cluster has database 0 only")
        found.append(urllib.parse.urlunsplit((CLUSTER_SCHEMES[p.scheme], p.netloc, "",
                                              p.query, "")))
    return found


def node_url(seed: str, name: str) -> str:
    """`seed` (a plain URL from seed_urls) with its host and port replaced by node
    `name` ("HOST:PORT"): same scheme, credentials and options."""
    p = urllib.parse.urlsplit(seed)
    userinfo = p.netloc.rpartition("@")[0]
    host, _, port = name.rpartition(":")
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urllib.parse.urlunsplit((p.scheme, netloc, "", p.query, ""))


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(name: str | bytes) -> int:
    """The hash slot (0..16383) of a key or shard channel `name`: CRC16-XMODEM of
    the name, or of the first non-empty `{…}` in it, mod 16384 (Redis Cluster
    specification, "Key distribution model"; what CLUSTER KEYSLOT answers)."""
    key = name.encode() if isinstance(name, str) else name
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % SLOTS


class Topology:
    """Which master ("HOST:PORT") owns which slots, as one CLUSTER SLOTS reply said."""

    def __init__(self, ranges: list[tuple[int, int, str]]):
        self.ranges = sorted(ranges)
        self.starts = [r[0] for r in self.ranges]
        self.masters = sorted({r[2] for r in self.ranges})

    @classmethod
    def from_slots(cls, reply, asked_host: str) -> Topology:
        """From a CLUSTER SLOTS reply ([start, end, [host, port, id, …], replicas…]
        per range); a node that announces no address is the one asked."""
        ranges = []
        for entry in reply:
            host, port = entry[2][0], entry[2][1]
            host = host.decode() if isinstance(host, bytes) else str(host)
            if host in ("", "?"):
                host = asked_host
            ranges.append((int(entry[0]), int(entry[1]), f"{host}:{int(port)}"))
        return cls(ranges)

    def __eq__(self, other) -> bool:
        return isinstance(other, Topology) and self.ranges == other.ranges

    def owner_of_slot(self, slot: int) -> str | None:
        i = bisect.bisect_right(self.starts, slot) - 1
        if i >= 0 and self.ranges[i][0] <= slot <= self.ranges[i][1]:
            return self.ranges[i][2]
        return None  # a slot no master serves (the cluster is failing over, or broken)

    def owner(self, channel: str) -> str | None:
        return self.owner_of_slot(key_slot(channel))

    def keeper(self, name: str, base: str) -> str:
        """A channel whose slot master `name` owns (its subscriber's keeper)."""
        mine = [(a, b) for a, b, n in self.ranges if n == name]
        for tag in range(1_000_000):
            slot = key_slot(str(tag))
            if any(a <= slot <= b for a, b in mine):
                return f"{base}:k:{{{tag}}}"
        raise ValueError(f"{name} owns no slot")


# redis-py's errors for a command sent to a node that does not serve its slot now
# (CLUSTERDOWN, a cluster missing a slot, is an outage: the publisher's breaker).
_REDIRECTS = tuple(getattr(redis.exceptions, n) for n in ("MovedError", "AskError")
                   if hasattr(redis.exceptions, n))
# How often the re-sent publishes are logged (seconds).
RESENT_LOG_INTERVAL = 10.0


class ShardPublisher(Publisher):
    """A master's publisher: SPUBLISH (PUBLISH for `base`); the entries a slot
    change refused go to `on_moved(self, entries)`."""

    def __init__(self, url: str, where: str, base: str, on_moved,
                 reply_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        super().__init__(url, where, reply_timeout)
        self.base, self.on_moved = base, on_moved

    def _queue(self, pipe, channel: str, text: str) -> None:
        if channel == self.base:
            pipe.publish(channel, text)
        else:
            pipe.execute_command("SPUBLISH", channel, text)

    def _execute(self, pipe, batch: list) -> None:
        # A connection error still raises (the breaker); a refusal of one
        # command does not fail the others.
        results = pipe.execute(raise_on_error=False)
        moved, other = [], None
        for entry, res in zip(batch, results, strict=True):
            if isinstance(res, _REDIRECTS):
                moved.append(entry)
            elif isinstance(res, Exception):
                other = res
        if moved:
            self.on_moved(self, moved)
        if other is not None:
            raise other


class ShardSubscriber(Subscriber):
    """A master's subscriber: SSUBSCRIBE, one command per channel (one command may
    name channels of one slot only); a channel the server drops unasked (its
    slot moved) goes to `on_moved(channel)`."""

    def __init__(self, url: str, silence_timeout: float, deliver, want, where: str, on_moved):
        super().__init__(url, silence_timeout, deliver, want, where)
        self.on_moved = on_moved
        # SUNSUBSCRIBEs sent on one connection (its PubSub) and not yet answered:
        # a channel left and joined again at once is then not taken for one the
        # server dropped.
        self.leaving: tuple[object, collections.Counter] = (None, collections.Counter())

    def _subscribe(self, ps, channels: list[str]) -> None:
        for c in channels:
            ps.ssubscribe(c)

    def _unsubscribe(self, ps, channels: list[str]) -> None:
        if self.leaving[0] is not ps:
            self.leaving = (ps, collections.Counter())
        for c in channels:
            self.leaving[1][c] += 1
            ps.sunsubscribe(c)

    def _dropped_by_server(self, channel: str) -> None:
        conn, asked = self.leaving
        if conn is self.pubsub and asked[channel] > 0:
            asked[channel] -= 1
            return
        if channel in self.want:  # not asked for: its slot left this node
            # Gone here already (a SUNSUBSCRIBE now would be answered MOVED, which
            # costs the whole connection): the slot map places it anew.
            self.want.discard(channel)
            self.confirmed.discard(channel)
            self.on_moved(channel)


class _Nowhere:
    """Where a publish goes while no master is known for its slot: dropped, counted."""

    publishing = False
    published = 0

    def __init__(self):
        self.dropped = 0

    def publish(self, channel: str, text: str) -> None:
        self.dropped += 1
        if self.dropped in (1, 1000, 100_000):
            log.error("redis cluster: no master known for a channel: %d broadcasts "
                      "dropped so far", self.dropped)


class _Placed:
    """The interest manager's view of "the subscriber of a channel" (add, remove,
    wait_confirmed) on a cluster, where the subscriber changes with the slot map."""

    def __init__(self, mgr: ShardedRedisManager):
        self.mgr = mgr

    def add(self, channel: str) -> None:
        self.mgr.wanted.add(channel)
        sub = self.mgr._owner_sub(channel)
        if sub is not None:
            sub.add(channel)

    def remove(self, channel: str) -> None:
        self.mgr.wanted.discard(channel)
        sub = self.mgr._owner_sub(channel)
        if sub is not None:
            sub.remove(channel)

    def wait_confirmed(self, channel: str, timeout: float) -> bool:
        if self.mgr.topology is None:
            with eventlet.Timeout(timeout, False):
                self.mgr.known.wait()
        sub = self.mgr._owner_sub(channel)
        return sub is not None and sub.wait_confirmed(channel, timeout)


# internals: as InterestRedisManager (its base)
class ShardedRedisManager(InterestRedisManager):
    """`--redis-channels interest` on a Redis Cluster (see the module): the
    channels of InterestRedisManager, each on the master that owns its slot."""

    name = "imcluster-redis-cluster"

    def __init__(self, url: str | list[str], host: int = 0, worker: int = 0,
                 channel: str = "socketio", logger=None,
                 silence_timeout: float = DEFAULT_SILENCE_TIMEOUT):
        """`url`: one or more `redis+cluster://` seed URLs (see seed_urls). Reads the
        slot map from a seed (at most REDIS_TIMEOUT s per seed; if none answers, the
        listener keeps trying). Raises RuntimeError on redis-py < 5.0 (no
        PubSub.ssubscribe) and ValueError for a URL seed_urls refuses."""
        if not hasattr(redis.client.PubSub, "ssubscribe"):
            raise RuntimeError(f"redis+cluster:// needs redis-py >= 5.0 for sharded pub/sub "
                               f"(SSUBSCRIBE); redis-py {redis.__version__} is installed")
        self.seeds = seed_urls(url)
        # The base makes a publisher and a subscriber per seed as if they were
        # standalone servers (never connected): the masters' links replace them.
        super().__init__(self.seeds, host, worker, channel, logger, silence_timeout)
        self.nodes = []
        self.links: dict[str, tuple[ShardPublisher, ShardSubscriber]] = {}
        self.publishers: dict[str, ShardPublisher] = {}  # kept across failovers
        self.base_sub: Subscriber | None = None  # classic SUBSCRIBE to `channel`
        self.base_node: str | None = None
        self.wanted: set[str] = {self.worker_channel, self.fleet_channel}
        self.topology: Topology | None = None
        self.known = eventlet.event.Event()  # the first slot map was read
        self.poke = eventlet.event.Event()  # read the slot map now
        self.prefer: str | None = None  # ask this node first (it dropped a channel)
        self.running = False  # the listener started: new subscribers start at once
        self.retired_received = 0  # `received` of subscribers stopped since
        # Channels subscribed again since start: at a slot's new master, or at the
        # same one after it dropped them.
        self.resubscribed = 0
        self.resent = 0  # publishes refused by a master (slot moved) and re-sent
        self.refused = 0
        self.refused_logged = -RESENT_LOG_INTERVAL
        self.reachable = True
        self.reads = 0  # slot maps read since start
        self.reading = eventlet.semaphore.Semaphore()  # one read at a time
        self.placed = _Placed(self)
        self.nowhere = _Nowhere()
        self.refresh()

    # ---- placement ----------------------------------------------------------------------

    def _owner_sub(self, channel: str) -> Subscriber | None:
        if self.topology is None:
            return None
        if channel == self.channel:
            return self.base_sub
        link = self.links.get(self.topology.owner(channel))
        return link[1] if link else None

    def _sub(self, channel: str):
        return self.placed

    def _pub(self, channel: str):
        link = self.links.get(self.topology.owner(channel)) if self.topology else None
        return link[0] if link else self.nowhere

    def _publisher(self, name: str) -> ShardPublisher:
        pub = self.publishers.get(name)
        if pub is None:
            url = node_url(self.seeds[0], name)
            pub = self.publishers[name] = ShardPublisher(
                url, f" ({redact_url(url)})", self.channel, self._refused,
                self.silence_timeout)
        return pub

    def _subscribers(self) -> list | None:
        """The masters' subscribers and the base channel's, once the slot map is
        known (wait_subscribed)."""
        if not self.known.ready():
            return None
        return [sub for _, sub in self.nodes] + ([self.base_sub] if self.base_sub else [])

    def _start(self, sub: Subscriber) -> None:
        if self.running:
            eventlet.spawn(sub.run)

    def _retire(self, sub: Subscriber) -> None:
        sub.stop()
        self.retired_received += sub.received

    # ---- the slot map ---------------------------------------------------------------------

    def _read_topology(self, prefer: str | None = None) -> Topology | None:
        # The master that dropped a channel knows first; then the masters that
        # answer (a dead one would cost a connect timeout), then the rest.
        masters = sorted(self.links, key=lambda n: not self.links[n][1].listening)
        names = ([prefer] if prefer else []) + masters
        urls = [node_url(self.seeds[0], n) for n in dict.fromkeys(names)] + self.seeds
        for url in dict.fromkeys(urls):
            r = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                     socket_connect_timeout=REDIS_TIMEOUT,
                                     retry=Retry(NoBackoff(), 0))
            try:
                reply = r.execute_command("CLUSTER", "SLOTS")
                topo = Topology.from_slots(reply, urllib.parse.urlsplit(url).hostname or "")
                if topo.ranges:
                    return topo
            except redis.RedisError:
                continue
            finally:
                r.close()
        return None

    def refresh(self, prefer: str | None = None, place: bool = False) -> bool:
        """Read the slot map; on a change (or with `place`: a master dropped some
        channels), put every channel held on its slot's master. Returns whether
        the map changed."""
        topo = self._read_topology(prefer)
        self.reads += 1
        if topo is None:
            if self.reachable:
                self.reachable = False
                log.error("redis cluster: no node answers CLUSTER SLOTS (%s): retrying",
                          ", ".join(redact_url(u) for u in self.seeds))
            return False
        if not self.reachable:
            self.reachable = True
            log.warning("redis cluster: slot map read again")
        changed = topo != self.topology
        if changed or place:
            self._apply(topo)
        return changed

    def _apply(self, topo: Topology) -> None:
        old, self.topology = self.topology, topo
        changed = topo != old
        targets = {name: {topo.keeper(name, self.channel)} for name in topo.masters}
        for c in self.wanted:
            owner = topo.owner(c)
            if owner is not None:
                targets[owner].add(c)
        moved = 0
        for name in list(self.links):
            if name not in targets:  # no longer a master (failed, or a replica now)
                self._retire(self.links.pop(name)[1])
        for name, want in targets.items():
            link = self.links.get(name)
            if link is None:
                url = node_url(self.seeds[0], name)
                sub = ShardSubscriber(url, self.silence_timeout, self.inbox.put, want,
                                      f" ({redact_url(url)})",
                                      lambda ch, name=name: self._dropped(name, ch))
                self.links[name] = (self._publisher(name), sub)
                moved += len(want & self.wanted)
                self._start(sub)
                continue
            sub = link[1]
            for c in sub.want - want:
                sub.remove(c)
            for c in want - sub.want:
                sub.add(c)
                moved += c in self.wanted
        base_node = topo.owner(self.channel)
        if base_node != self.base_node:
            if self.base_sub is not None:
                self._retire(self.base_sub)
                self.base_sub = None
            self.base_node = base_node
            if base_node is not None:
                url = node_url(self.seeds[0], base_node)
                self.base_sub = Subscriber(
                    url, self.silence_timeout, self.inbox.put, {self.channel},
                    f" ({redact_url(url)}, the {self.channel} channel: SUBSCRIBE)")
                self._start(self.base_sub)
        self.nodes = list(self.links.values())
        if old is not None:
            self.resubscribed += moved
            if changed:
                log.warning("redis cluster: slot map changed (%d masters: %s); %d channels "
                            "this worker holds moved to their new masters",
                            len(topo.masters), ", ".join(topo.masters), moved)
            elif moved:
                log.warning("redis cluster: %d channels dropped unasked by their master "
                            "(which still owns their slots): subscribed again", moved)
        if not self.known.ready():
            self.known.send()

    def _dropped(self, name: str, channel: str) -> None:
        """Master `name` dropped `channel` unasked: read the map (from it first)."""
        self.prefer = name
        if not self.poke.ready():
            self.poke.send()

    def _refused(self, pub: ShardPublisher, entries: list) -> None:
        """A master refused these publishes (its slot moved): once the map is read
        again, each goes to its slot's new master; to the same one, it is dropped."""

        def resend() -> None:
            self._refresh_shared()
            sent = 0
            for channel, text in entries:
                new = self._pub(channel)
                if new is pub or new is self.nowhere:
                    pub.dropped += 1
                else:
                    new.publish(channel, text)
                    sent += 1
            self.resent += sent
            self.refused += len(entries)
            now = time.monotonic()
            if now - self.refused_logged >= RESENT_LOG_INTERVAL:
                self.refused_logged = now
                log.warning("redis cluster: %d publishes so far refused by a master that no "
                            "longer owns their slot; %d re-sent to the new owner",
                            self.refused, self.resent)

        eventlet.spawn(resend)

    def _refresh_shared(self, prefer: str | None = None, place: bool = False) -> None:
        """refresh(); a greenlet that finds another reading waits for that read
        instead of making its own (a burst of refused publishes reads the map once)."""
        seen = self.reads
        with self.reading:
            if self.reads == seen or place:
                self.refresh(prefer, place)

    def _watch(self) -> None:
        while True:
            calm = self.topology is not None and all(
                s.listening for s in self._subscribers())
            with eventlet.Timeout(REFRESH_INTERVAL if calm else REFRESH_WHILE_DOWN, False):
                self.poke.wait()
            prefer, self.prefer = self.prefer, None
            if self.poke.ready():
                self.poke.reset()
            try:
                # A master that dropped channels unasked may still own their slot
                # (CLUSTER SETSLOT … NODE to itself deletes and re-adds it): they
                # are placed again even if the map reads the same.
                self._refresh_shared(prefer, place=prefer is not None)
            except Exception:  # the watcher must live on
                log.exception("redis cluster: reading the slot map failed")

    # ---- what the base classes ask ---------------------------------------------------------

    def _subscribers(self) -> list[Subscriber]:
        subs = [sub for _, sub in self.links.values()]
        return subs + ([self.base_sub] if self.base_sub is not None else [])

    def health(self) -> str:
        known = self.topology is not None
        return health_of(known and all(s.listening for s in self._subscribers()),
                      known and all(pub.publishing for pub, _ in self.links.values()))

    def stats(self) -> dict:
        """As ClusterRedisManager.stats; `channels` counts the channels held (not
        the keepers); `resubscribed`, channels subscribed again after a slot
        change since start; `resent`, publishes a master refused (MOVED …) and
        this worker re-sent to the slot's new master."""
        subs = self._subscribers()
        return {"received": self.retired_received + sum(s.received for s in subs),
                "channels": len(self.wanted) + 1,
                "published": sum(p.published for p in self.publishers.values()),
                "resubscribed": self.resubscribed, "resent": self.resent}

    def _receive(self):
        self.listener = eventlet.getcurrent()
        self.running = True
        for sub in self._subscribers():
            eventlet.spawn(sub.run)
        eventlet.spawn(self._watch)
        while True:
            self.heard_on, message = self.inbox.get()
            yield message
