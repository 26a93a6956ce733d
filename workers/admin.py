"""The Socket.IO Admin UI across the cluster: python-socketio's instrumentation
(`sio.instrument()`, socketio/admin.py), with what it does on one server done
on every worker.

python-socketio 5.18's `InstrumentedServer` was written for one process:

- its join, leave and disconnect actions loop over the *local* participants
  of the room the UI names (`Manager.get_participants`), so a socket on
  another worker was never touched. Here they go through the cluster
  manager's `sockets_join` / `sockets_leave` / `disconnect_sockets`
  (workers/pubsub.py), which every worker applies to its own sockets; the
  `room_joined`, `room_left` and `socket_disconnected` events each worker
  emits then reach the UI as before.
- on connect it sends the UI `all_sockets`, the sockets of its own process,
  and the UI replaces its whole list with that (its store's `onAllSockets`),
  so only one worker can answer with it. The others are asked, once that
  went out, to announce theirs as `socket_connected` (which the UI adds to
  the list): an `announce_sockets` message through the pub/sub manager. The
  announcements follow the `all_sockets` on the admin's connection, as the
  request is published after it was handed to that connection.
  (socket.io's Node server gathers every node's sockets first, with
  `fetchSockets()`, which needs to know how many nodes should answer; an
  announcement needs no count and no waiting.)
- upstream re-announces each socket at every Engine.IO ping
  (`Socket._send_ping`, which it patches), which in a multi-server
  python-socketio deployment is what eventually shows the other servers'
  sockets. Our workers ping from one shared scheduler
  (workers/sessions.py, `Pinger`) and never call `_send_ping`; the
  announcement on connect above shows every socket at once instead, and
  connections, disconnections, room changes and upgrades are reported as
  they happen, so nothing is lost without it.
- the stats task (`server_stats`, which the UI counts servers and clients
  from) started at a worker's first connection, so a worker that had none
  yet was missing from the UI; here it starts with the instrumentation.

- its connect handler's config task sends `all_sockets` to the last socket
  it listed rather than to the admin (a loop variable shadows the admin's
  sid): ours sends it to the admin that connected.

Not covered: the sockets of a worker that is killed (SIGKILL, a crash) stay
listed in a connected UI until it reconnects, as they would for a crashed
server in any python-socketio deployment (nothing announces their end); that
worker's server shows as unhealthy after the UI's 10 s.

`install()` makes `sio.instrument()` build a `ClusterInstrumentedServer`; a
server whose manager is not the cluster's (an app that brought its own
client_manager) keeps python-socketio's behaviour.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import socketio.admin
import socketio.exceptions

from imcluster.workers.pubsub import ClusterPubSubManager

_UPSTREAM = socketio.admin.InstrumentedServer


# internals: socketio-admin-server, socketio-admin-connect, socketio-admin-actions,
# socketio-admin-leave, socketio-admin-disconnect, socketio-admin-emit,
# socketio-admin-stats
class ClusterInstrumentedServer(_UPSTREAM):
    """python-socketio 5.18's InstrumentedServer, acting on every worker."""

    def __init__(self, sio, *args, **kwargs):
        super().__init__(sio, *args, **kwargs)
        if not isinstance(sio.manager, ClusterPubSubManager):
            return
        sio.manager.on_cluster_message("announce_sockets", self._announce_sockets)
        # Reach into python-socketio 5.18's private stats task (started in its
        # _handle_eio_connect at the first connection): start it now, so that
        # every worker reports as a server, with clients or without.
        if self.stats_task is None:
            self.stop_stats_event = sio.eio.create_event()
            self.stats_task = sio.start_background_task(self._emit_server_stats)

    def _cluster(self) -> ClusterPubSubManager | None:
        mgr = self.sio.manager
        return mgr if isinstance(mgr, ClusterPubSubManager) else None

    # The UI's actions (upstream handlers of 'join', 'leave', '_disconnect' on
    # the admin namespace; `close`, which would end the whole Engine.IO
    # connection, is ignored upstream and here).

    # internals: socketio-admin-connect (a copy, changed)
    def admin_connect(self, sid, environ, client_auth):
        """python-socketio 5.18's admin_connect, with its config task's bug fixed.

        Upstream's task loops `for sid, eio_sid in get_participants(...)`,
        rebinding the admin's `sid`, then sends `all_sockets` `to=sid`: to the
        last socket it listed, not to the admin. An admin is served right only
        when it happens to be listed last (the newest in the admin namespace),
        so of two UIs that connect within the task's 0.1 s one gets nothing and
        the other both lists (and here the other workers' announcements follow
        the wrong one too). Same auth, same messages, to the admin that asked.
        """
        if self.auth:
            if isinstance(self.auth, dict):
                authenticated = client_auth == self.auth
            elif isinstance(self.auth, list):
                authenticated = client_auth in self.auth
            else:
                authenticated = self.auth(client_auth)
            if not authenticated:
                raise socketio.exceptions.ConnectionRefusedError("authentication failed")

        def config(admin_sid):
            self.sio.sleep(0.1)
            features = ["AGGREGATED_EVENTS"]
            if not self.read_only:
                features += ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE",
                             "MDISCONNECT"]
            if self.mode == "development":
                features.append("ALL_EVENTS")
            self.sio.emit("config", {"supportedFeatures": features}, to=admin_sid,
                          namespace=self.admin_namespace)
            if self.mode == "development":
                all_sockets = []
                for nsp in self.sio.manager.get_namespaces():
                    for socket_sid, eio_sid in self.sio.manager.get_participants(nsp, None):
                        all_sockets.append(self.serialize_socket(socket_sid, nsp, eio_sid))
                self.sio.emit("all_sockets", all_sockets, to=admin_sid,
                              namespace=self.admin_namespace)

        self.sio.start_background_task(config, sid)

    def admin_enter_room(self, _, namespace, room, room_filter=None):
        if (mgr := self._cluster()) is None:
            return super().admin_enter_room(_, namespace, room, room_filter)
        mgr.sockets_join(namespace, room, room_filter)

    def admin_leave_room(self, _, namespace, room, room_filter=None):
        if (mgr := self._cluster()) is None:
            return super().admin_leave_room(_, namespace, room, room_filter)
        mgr.sockets_leave(namespace, room, room_filter)

    def admin_disconnect(self, _, namespace, close, room_filter=None):
        if (mgr := self._cluster()) is None:
            return super().admin_disconnect(_, namespace, close, room_filter)
        mgr.disconnect_sockets(namespace, room_filter)

    # Overrides python-socketio 5.18's private InstrumentedServer._emit, which
    # development mode installs as the manager's emit: the one place that sees
    # `all_sockets` go to an admin (from its private config task) and can ask
    # the other workers for theirs right after it.
    def _emit(self, event, data, namespace, room=None, skip_sid=None, callback=None,
              **kwargs):
        ret = super()._emit(event, data, namespace, room=room, skip_sid=skip_sid,
                            callback=callback, **kwargs)
        if (event == "all_sockets" and namespace == self.admin_namespace
                and isinstance(room, str) and (mgr := self._cluster()) is not None):
            mgr.publish_cluster({"method": "announce_sockets", "namespace": namespace,
                                 "to": room})
        return ret

    def _announce_sockets(self, message: dict) -> None:
        """Another worker's admin asked: one `socket_connected` per socket here."""
        to, namespace = message.get("to"), message.get("namespace")
        if not isinstance(to, str) or namespace != self.admin_namespace:
            return
        mgr = self.sio.manager
        stamps = getattr(mgr, "_timestamps", {})  # set by upstream's instrument()
        for nsp in list(mgr.get_namespaces()):
            for sid, eio_sid in list(mgr.get_participants(nsp, None)):
                try:
                    socket = self.serialize_socket(sid, nsp, eio_sid)
                except KeyError:  # gone meanwhile
                    continue
                when = datetime.fromtimestamp(stamps.get(sid, time.time()), UTC)
                self.sio.emit("socket_connected", (socket, when.isoformat()), to=to,
                              namespace=namespace)


def install() -> None:
    """Make `sio.instrument()` in this process build ClusterInstrumentedServers.

    python-socketio 5.18's `Server.instrument` imports InstrumentedServer from
    socketio.admin when it is called, so replacing the module's name is enough.
    """
    socketio.admin.InstrumentedServer = ClusterInstrumentedServer
