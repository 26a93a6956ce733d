"""A TCP forwarder on 127.0.0.1 that can go silent without closing anything.

`freeze()` stops forwarding, in both directions, on every flow open at that
moment and keeps their sockets open: what a NAT or firewall that dropped a
flow, or a frozen peer, looks like from either end. Flows opened later
forward normally, unless `freeze(new_flows=True)` holds them too (a frozen
peer: connections are accepted, nothing is answered) until `thaw()`;
`hold_new_flows()` holds only the flows opened from then on.
`freeze(replies_only=True)` holds only what the upstream sends (its replies)
on the open flows and still forwards what the clients send: a server that
carries out commands but whose answers come late.

One thread, one selectors loop; commands reach it through a socketpair.
Bounded: it serves until `close()`, which closes every socket it made.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading

CHUNK = 65536
SEND_TIMEOUT = 5.0


class Flow:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.ends = (client, upstream)
        self.frozen = False
        self.held: tuple[socket.socket, ...] = ()  # the ends not read while frozen
        self.closed = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.ends[1] if sock is self.ends[0] else self.ends[0]


class FreezingProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self._commands: queue.Queue = queue.Queue()
        self.flows: list[Flow] = []
        self.hold_new = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, name="freezing-proxy", daemon=True)
        self._running = True
        self._thread.start()

    # ---- called from the test's thread -------------------------------------

    def freeze(self, new_flows: bool = False, replies_only: bool = False) -> int:
        """Stop forwarding on every open flow (and on later ones if `new_flows`),
        or only upstream to client on the open flows (`replies_only`); returns how
        many flows were frozen."""
        return self._do("freeze", (new_flows, replies_only))

    def hold_new_flows(self) -> None:
        """Hold the flows opened from now on (accepted, nothing forwarded either
        way) until `thaw()`; the open ones go on forwarding: a Redis that answers
        its established connections but is slow to take new ones."""
        self._do("hold_new", None)

    def thaw(self) -> int:
        """Forward on every flow again; returns how many were frozen."""
        return self._do("thaw", None)

    def close(self) -> None:
        if self._thread.is_alive():
            self._do("stop", None)
            self._thread.join(10)
        for f in self.flows:
            for s in f.ends:
                s.close()
        self.sel.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _do(self, what: str, arg):
        if not self._thread.is_alive():
            raise AssertionError("the proxy's thread died (its traceback is in the output)")
        done: queue.Queue = queue.Queue()
        self._commands.put((what, arg, done))
        self._wake_w.send(b"x")
        return done.get(timeout=10)

    # ---- the loop's thread ---------------------------------------------------

    def _run(self) -> None:
        while self._running:
            for key, _ in self.sel.select(timeout=1.0):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    self._wake_r.recv(64)
                    self._command()
                elif not key.data.closed:  # its other end may have closed it this round
                    self._forward(key.fileobj, key.data)

    def _command(self) -> None:
        while not self._commands.empty():
            what, arg, done = self._commands.get()
            if what == "freeze":
                self.hold_new, replies_only = arg
                live = [f for f in self.flows if not f.frozen]
                for f in live:
                    self._set_frozen(f, True, f.ends[1:] if replies_only else f.ends)
                done.put(len(live))
            elif what == "hold_new":
                self.hold_new = True
                done.put(None)
            elif what == "thaw":
                self.hold_new = False
                held = [f for f in self.flows if f.frozen]
                for f in held:
                    self._set_frozen(f, False)
                done.put(len(held))
            elif what == "stop":
                self._running = False
                done.put(None)

    def _set_frozen(self, f: Flow, frozen: bool, ends: tuple = ()) -> None:
        """Freeze `ends` of flow `f` (stop reading them), or thaw what was frozen."""
        f.frozen = frozen
        if frozen:
            f.held = ends
            for s in ends:
                self.sel.unregister(s)
        else:
            for s in f.held:
                self.sel.register(s, selectors.EVENT_READ, f)
            f.held = ()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=SEND_TIMEOUT)
        except OSError:
            client.close()
            return
        self.accepted += 1
        f = Flow(client, upstream)
        for s in f.ends:
            # select() says when to read; a send may wait for a slow reader.
            s.settimeout(SEND_TIMEOUT)
        self.flows.append(f)
        if self.hold_new:
            f.frozen, f.held = True, f.ends
        else:
            f.held = f.ends
            self._set_frozen(f, False)

    def _forward(self, sock: socket.socket, f: Flow) -> None:
        try:
            data = sock.recv(CHUNK)
            if data:
                f.peer(sock).sendall(data)
                return
        except OSError:
            pass
        # One end closed or failed: close both, as a NAT does when it sees a FIN.
        f.closed = True
        for s in f.ends:
            if s not in f.held or not f.frozen:
                self.sel.unregister(s)
            s.close()
        self.flows.remove(f)
