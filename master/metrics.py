"""Prometheus metrics at http://HOST:PORT/metrics (`--metrics HOST:PORT`, off by default).

Served from the master's loop like the control socket (one request per
connection, non-blocking, bounded). Every scrape reads the same status the
control socket answers (`Master.status()`), so `/metrics` and `imcluster
status --json` agree; the text format is prometheus_client's.

Per worker (labels `slot`, `worker_id`, `pid`; a draining worker keeps its slot
label): connections, sessions, state, CPU seconds, resident memory,
hand-offs, and with Redis whether its broadcasts get through, the messages
Redis delivered to it and the channels it holds. Per slot:
restarts. For the master: connections accepted, routed and rejected by
cause, hand-offs, hand-backs, re-routes, relayed broadcasts (and those
dropped), connections pending and queued, reload in progress.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from imcluster.master.lifecycle import State
from imcluster.master.oneshot import OneShotServer

log = logging.getLogger("imcluster.master")

# The router's rejections, by cause, as `imcluster status --json` counts them.
REJECTIONS = ("bad_request", "too_long", "timeout", "unavailable", "evicted", "other_host")


class ClusterCollector:
    """A prometheus_client collector that turns one status snapshot into metrics."""

    def __init__(self, status: Callable[[], dict]):
        self.status = status

    def collect(self):
        st = self.status()
        m, counters = st["master"], st["master"]["counters"]
        labels = ["slot", "worker_id", "pid"]
        fams = {
            "connections": GaugeMetricFamily(
                "imcluster_worker_connections",
                "TCP connections the worker serves (its last report)", labels=labels),
            "sessions": GaugeMetricFamily(
                "imcluster_worker_sessions",
                "Engine.IO sessions the worker holds (its last report)", labels=labels),
            "rss": GaugeMetricFamily(
                "imcluster_worker_resident_memory_bytes", "Resident memory of the worker",
                labels=labels),
            "cpu_time": CounterMetricFamily(
                "imcluster_worker_cpu_seconds", "User and system CPU time of the worker",
                labels=labels),
            "handoffs": CounterMetricFamily(
                "imcluster_worker_handoffs", "Client sockets the master passed to the worker",
                labels=labels),
        }
        state = GaugeMetricFamily(
            "imcluster_worker_state", "1 for the worker's lifecycle state, 0 for the others",
            labels=[*labels, "state"])
        broadcast = GaugeMetricFamily(
            "imcluster_worker_broadcast_up",
            "With Redis: 1 while the worker both publishes and hears broadcasts, else 0",
            labels=labels)
        pubsub = {
            "received": CounterMetricFamily(
                "imcluster_worker_pubsub_received",
                "With Redis: messages Redis delivered to the worker (what the channel "
                "scheme costs it)", labels=labels),
            "channels": GaugeMetricFamily(
                "imcluster_worker_pubsub_channels",
                "With Redis: channels the worker is subscribed to", labels=labels),
        }
        restarts = CounterMetricFamily(
            "imcluster_slot_restarts", "Times the slot's process was replaced after exiting",
            labels=["slot"])
        for w in st["workers"]:
            values = [str(w["slot"]), str(w["worker_id"]), str(w["pid"] or "")]
            for key, fam in fams.items():
                if w.get(key) is not None:
                    fam.add_metric(values, w[key])
            if w.get("broadcast") is not None:
                broadcast.add_metric(values, 1 if w["broadcast"] == "ok" else 0)
            for key, fam in pubsub.items():
                if (w.get("pubsub") or {}).get(key) is not None:
                    fam.add_metric(values, w["pubsub"][key])
            for s in State:
                state.add_metric([*values, s.value], 1 if w["state"] == s.value else 0)
            if not w["retired"] and not w["replacement"]:
                restarts.add_metric([str(w["slot"])], w["restarts"])
        yield from fams.values()
        yield state
        yield broadcast
        yield from pubsub.values()
        yield restarts

        yield GaugeMetricFamily("imcluster_workers", "Slots (the target number of workers)",
                                value=sum(not w["retired"] and not w["replacement"]
                                          for w in st["workers"]))
        for name, key, text in (
                ("accepted_connections", "accepted", "Connections the master accepted"),
                ("routed_connections", "routed",
                 "Connections whose request line the master read and routed"),
                ("handoffs", "handoffs", "Client sockets passed to a worker"),
                ("handbacks", "handbacks",
                 "Kept-alive connections a worker handed back for another worker's session"),
                ("rerouted", "rerouted",
                 "Sockets queued for a worker that died, routed again"),
                ("relayed_broadcasts", "relayed",
                 "Broadcasts the master relayed between its workers"),
                ("relay_dropped", "relay_dropped",
                 "Relayed broadcasts dropped (a worker's channel was full)")):
            yield CounterMetricFamily(f"imcluster_{name}", text, value=counters.get(key, 0))
        rejected = CounterMetricFamily(
            "imcluster_rejected_connections",
            "Connections the master answered itself or closed, by cause", labels=["cause"])
        for cause in REJECTIONS:
            rejected.add_metric([cause], counters.get(cause, 0))
        yield rejected
        yield GaugeMetricFamily("imcluster_pending_connections",
                                "Connections waiting for their request line", value=m["pending"])
        yield GaugeMetricFamily("imcluster_queued_sockets",
                                "Client sockets waiting in the master for a busy worker",
                                value=m["queued"])
        yield GaugeMetricFamily("imcluster_reload_in_progress",
                                "1 while a rolling reload runs", value=int(bool(st["reload"])))


class MetricsServer(OneShotServer):
    """GET /metrics over HTTP/1.x on a TCP socket; anything else gets 404 or 405."""

    def __init__(self, selector: selectors.BaseSelector, bind: tuple[str, int],
                 status: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(status))
        sock = socket.create_server(bind, reuse_port=False)
        sock.setblocking(False)
        super().__init__(selector, sock)

    def complete(self, buf: bytearray) -> bool:
        return b"\r\n\r\n" in buf or b"\n\n" in buf

    def too_long(self) -> bytes:
        return _response(431, "Request Header Fields Too Large", b"request too long\n")

    def answer(self, buf: bytearray) -> bytes:
        line = bytes(buf.split(b"\n", 1)[0]).strip().split()
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            return _response(400, "Bad Request", b"not an HTTP/1.x request\n")
        method, target = line[0], line[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return _response(404, "Not Found", b"metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"GET /metrics\n")
        try:
            body = generate_latest(self.registry)
        except Exception:  # a scrape must never take the master down
            log.exception("metrics: cannot build the page")
            return _response(500, "Internal Server Error", b"see the master's log\n")
        return _response(200, "OK", body, CONTENT_TYPE_LATEST, head=method == b"HEAD")


def _response(code: int, reason: str, body: bytes,
              content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    headers = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return headers if head else headers + body
