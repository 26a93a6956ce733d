"""Run your app on N real worker processes in a test, and drive it with real clients.

    from imcluster.testing import Cluster

    with Cluster("myapp:sio", workers=3) as cluster:        # READY when it returns
        clients = cluster.clients(6)                        # spread over every worker
        ...

`Cluster` starts a real `imcluster run` (master and workers, as in
production) on a free loopback port, waits until every worker is READY, and
stops it at the end: no process outlives it, even when the test fails or is
interrupted (the master is also told to stop should the test process die).
The pytest plugin (`imcluster.pytest_plugin`, registered when imcluster is
installed) wraps it in the `imcluster` fixture and shows the cluster's log
under a failed test.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imcluster import settings as settings_mod
from imcluster import sid as sidcodec
from imcluster.control import (
    Control,
    ControlError,
    ReloadResult,
    Status,
    WorkerStatus,
    process_alive,
)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (another process may take it before you do)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: SIGTERM the master (a graceful stop: it stops its workers) when the
    # process that started it dies, so a killed test run leaves nothing behind.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def setting_flags(values: dict[str, Any]) -> list[str]:
    """Command-line options of `imcluster run` for settings given as keyword arguments
    (names as in `imcluster run --help`, with underscores: `graceful_timeout=5`).
    TypeError names an unknown setting."""
    flags: list[str] = []
    for name, value in values.items():
        s = settings_mod.BY_NAME.get(name)
        if s is None:
            raise TypeError(f"unknown imcluster setting {name!r} (known: "
                            f"{', '.join(sorted(settings_mod.BY_NAME))})")
        if value is None:
            continue
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, (list, tuple)) and name != "bind":
            text = ",".join(map(str, value))
        elif isinstance(value, tuple):
            text = ":".join(map(str, value))
        else:
            text = str(value)
        flags += [s.option, text]
    return flags


class ClusterClient:
    """A python-socketio client connected to a cluster, knowing its worker.

    `events` records every event the server sends it, as (event, args) in the
    order its handlers ran. (python-socketio's threaded client runs each
    received message in a thread of its own, so two messages that arrive
    close together may be recorded in either order.)
    """

    def __init__(self, sio, worker: WorkerStatus, cluster: Cluster | None = None,
                 namespaces: tuple[str, ...] = ("/",)):
        self.sio = sio
        self.namespaces = namespaces  # those it connected to, waited for after a reconnect
        self.worker = worker
        self.events: list[tuple[str, tuple]] = []
        self._cond = threading.Condition()
        self._cluster = cluster
        self._eio_sid = sio.eio.sid  # the session `worker` was looked up for
        self._seen = cluster._replacements if cluster is not None else 0

    @property
    def sid(self) -> str | None:
        """The Socket.IO sid of its first namespace (the app's `request.sid` /
        handler `sid`), as python-socketio's client knows it now; None while
        disconnected. It stays the same across a hand-over (--handover yes)."""
        # (python-socketio's Client.get_sid: public since 5.0)
        return self.sio.get_sid(self.namespaces[0])

    @property
    def slot(self) -> int:
        return self.worker.slot

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def _record(self, event: str, *args) -> None:
        with self._cond:
            self.events.append((event, args))
            self._cond.notify_all()

    def received(self, event: str) -> list[tuple]:
        """The arguments of every `event` received so far, oldest first."""
        with self._cond:
            return [args for ev, args in self.events if ev == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[tuple]:
        """Wait until `count` `event`s have arrived; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [args for ev, args in self.events if ev == event]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"client on worker slot {self.slot} (pid {self.pid}) got "
                        f"{len(got)} {event!r} event(s) in {timeout}s, expected {count}")
                self._cond.wait(left)

    def _connected(self) -> bool:
        return self.sio.connected and all(ns in self.sio.namespaces for ns in self.namespaces)

    def _replaced(self) -> bool:
        """Workers were killed, reloaded or scaled through the cluster since this
        client last checked where its session is."""
        return self._cluster is not None and self._cluster._replacements != self._seen

    def wait_connected(self, timeout: float = 10.0) -> ClusterClient:
        """Wait until the client is connected (each of its namespaces too) on a live
        worker: after its worker was killed, or reloaded without hand-over,
        python-socketio's client notices and reconnects by itself, as a new
        session; until it has noticed, it still looks connected, so this also
        asks the master whether the session's worker lives. Then `worker`
        (`slot`, `pid`) name the worker holding the session now. AssertionError
        after `timeout` seconds; returns the client."""
        deadline = time.monotonic() + timeout
        while True:
            if self._connected():
                sid = self.sio.eio.sid
                worker = self._cluster.worker_of(sid) if self._cluster else self.worker
                if worker is not None and worker.pid and process_alive(worker.pid):
                    self.worker, self._eio_sid = worker, sid
                    if self._cluster is not None:
                        self._seen = self._cluster._replacements
                    return self
            if time.monotonic() >= deadline:
                raise AssertionError(f"client not connected to a live worker within "
                                     f"{timeout}s (it was on worker slot {self.slot}, "
                                     f"pid {self.pid})")
            time.sleep(0.05)

    def emit(self, event: str, *args, namespace: str | None = None,
             timeout: float = 10.0) -> None:
        """Emit `event` (on `namespace`, default "/"); while the client is reconnecting
        (its worker was replaced), first wait up to `timeout` seconds for it to be
        back (see wait_connected; a client that still looks connected is not
        checked further)."""
        if not self._connected() or self._replaced():
            self.wait_connected(timeout)
        self.sio.emit(event, args[0] if len(args) == 1 else args if args else None,
                      namespace=namespace)

    def call(self, event: str, *args, namespace: str | None = None, timeout: float = 10.0):
        """Emit `event` (on `namespace`, default "/") and return the ack's value
        (python-socketio's TimeoutError after `timeout`); waits for a reconnection
        first, as emit does."""
        deadline = time.monotonic() + timeout
        if not self._connected() or self._replaced():
            self.wait_connected(timeout)
        return self.sio.call(event, args[0] if len(args) == 1 else args if args else None,
                             namespace=namespace,
                             timeout=max(0.1, deadline - time.monotonic()))

    def disconnect(self) -> None:
        self.sio.disconnect()

    def __repr__(self) -> str:
        return f"<ClusterClient sid={self.sio.sid} slot={self.slot} pid={self.pid}>"


class Cluster:
    """A real imcluster (master + `workers` worker processes) serving `app` on 127.0.0.1.

    `app` is what `imcluster run` takes (MODULE:ATTR, imported from `cwd`,
    default the current folder); any setting of `imcluster run` may be given as
    a keyword argument (`redis="redis://…"`, `graceful_timeout=5`), or as
    command-line options in `extra_args`. Use it as a context manager, or call
    `start()` and `stop()` yourself. The log goes to `log_dir` (default: a
    temporary folder).

    Raises RuntimeError from `start()` when the cluster exits or its workers
    are not READY within `ready_timeout` seconds; the message holds its log.
    """

    def __init__(self, app: str | None = None, workers: int = 3, *,
                 cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 log_dir: str | os.PathLike | None = None, ready_timeout: float = 30.0,
                 extra_args: tuple[str, ...] | list[str] = (), **settings: Any):
        self.app = app
        self.size = workers
        self._replacements = 0  # kills, reloads, scales: clients then check their worker
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.env = env
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args)
        self.settings = dict(settings)
        self.host, self.port = "127.0.0.1", None
        if self.settings.get("bind") is not None:
            self.host, self.port = settings_mod.BY_NAME["bind"].parse(self.settings.pop("bind"))
        control = self.settings.pop("control", None)
        self._flags = setting_flags(self.settings)  # fails early on an unknown name
        self.port = self.port or free_port(self.host)
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="imcluster-test-")
            log_dir = self._tmp.name
        self.log_path = Path(log_dir) / f"cluster-{self.port}.log"
        # A Unix socket path has at most 107 bytes, and test folders run long
        # (pytester's): the control socket gets a short folder of its own.
        self._ctl_dir = None
        if control is None:
            self._ctl_dir = tempfile.TemporaryDirectory(prefix="imcluster-")
            control = os.path.join(self._ctl_dir.name, f"ctl-{self.port}.sock")
        self.control = Control(control)
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._pids: set[int] = set()  # the worker pids of the latest status, checked at stop
        self.outlived: list[int] = []  # worker pids that outlived the master (killed)

    # ---- life ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The master's pid (None before start)."""
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "imcluster", "run"]
        if self.app:
            cmd.append(self.app)
        return cmd + ["--workers", str(self.size), "--bind", f"{self.host}:{self.port}",
                      "--control", self.control.path, *self._flags, *self.extra_args]

    def launch(self) -> subprocess.Popen:
        """Start the master and return at once (`start()` also waits for READY)."""
        if self.proc is not None:
            raise RuntimeError("this Cluster was started already")
        self._log = open(self.log_path, "wb")
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(self.command(), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
                                     preexec_fn=_die_with_parent)
        return self.proc

    def start(self) -> Cluster:
        """Start the master and wait until every worker is READY."""
        self.launch()
        try:
            self.wait_ready(timeout=self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop gracefully (SIGTERM; SIGKILL after `timeout`), then make sure no worker
        outlived the master (any that did is killed and listed in `outlived`).
        Returns the master's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._remember_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in sorted(self._pids):
            if _wait_gone(pid, 2.0):
                continue
            self.outlived.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._pids.clear()
        if self._ctl_dir is not None:
            self._ctl_dir.cleanup()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log(self) -> str:
        """Everything the master and its workers have logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ---- state ---------------------------------------------------------------

    def status(self) -> Status:
        st = self.control.status()
        # Only the latest: earlier workers were reaped by the master, and their
        # pids may belong to someone else by now.
        self._pids = {w.pid for w in st.workers if w.pid}
        return st

    def _remember_pids(self) -> None:
        try:
            self.status()
        except ControlError:
            pass

    @property
    def workers(self) -> list[WorkerStatus]:
        """The workers holding a slot now, by slot (each has .slot, .pid, .state...)."""
        return sorted(self.status().serving, key=lambda w: w.slot)

    def wait_ready(self, workers: int | None = None, timeout: float = 30.0) -> Status:
        """Wait until `workers` (default: every slot) are READY. RuntimeError, with the
        log, if the cluster exits or they are not READY in time."""
        deadline = time.monotonic() + timeout
        last: object = "no answer"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"imcluster exited with code {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                st = self.status()
                last = [(w.slot, w.state) for w in st.workers]
                if st.has_ready(workers):
                    return st
            except ControlError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"imcluster workers not READY after {timeout}s "
                                   f"(last: {last}):\n{self.log()}")
            time.sleep(0.1)

    # ---- operations ----------------------------------------------------------

    def kill(self, slot: int, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to the worker in `slot` (default SIGKILL: a crash). Returns its pid;
        with SIGKILL, once that process is gone (at most 5 s). The master refills the
        slot, `wait_ready()` waits for that."""
        for w in self.workers:
            if w.slot == slot and w.pid:
                self._replacements += 1
                os.kill(w.pid, sig)
                if sig == signal.SIGKILL:
                    _wait_gone(w.pid, 5.0)
                return w.pid
        raise ValueError(f"no running worker in slot {slot}")

    def reload(self, wait: bool = True, timeout: float = 120.0) -> ReloadResult | None:
        """A rolling reload (new code, one worker at a time); see Control.reload."""
        self._remember_pids()
        self._replacements += 1
        result = self.control.reload(wait=wait, timeout=timeout)
        self._remember_pids()
        return result

    def scale(self, n: int | str, wait: bool = True, timeout: float = 60.0) -> int:
        """Change the number of workers (4, "+1", "-1"); with `wait`, return once that
        many are READY and the removed ones have exited. Asked during a reload, the
        scale happens when it ends (+1/-1 count from a scale already waiting), so
        `wait` waits for that too."""
        self._remember_pids()
        self._replacements += 1
        target = self.control.scale(n)
        self.size = target
        if wait:
            deadline = time.monotonic() + timeout
            while True:
                st = self.status()
                # A reload's replacement and draining worker are listed too.
                if st.reload is None and len(st.workers) == target and st.ready:
                    break
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"scale to {target} not done after {timeout}s: "
                                       f"{[(w.slot, w.state) for w in st.workers]}")
                time.sleep(0.1)
        return target

    # ---- clients -------------------------------------------------------------

    def worker_of(self, sid: str) -> WorkerStatus | None:
        """The worker that holds the session with Engine.IO sid `sid`, if it is alive:
        the one the sid names, or, for a session handed over (`handover="yes"`), the
        one the master's forwarding map says holds that worker's sessions now."""
        st = self.status()
        wid = sidcodec.worker_of(sid)
        forwarded = {f.source: f.to for f in st.forwarding}
        for _ in range(len(forwarded) + 1):
            w = next((w for w in st.workers if w.worker_id == wid and not w.retired), None)
            if w is not None or wid not in forwarded:
                return w
            wid = forwarded[wid]
        return None

    def connect(self, transport: str = "default", *, auth: Any = None,
                headers: dict[str, str] | None = None,
                namespaces: str | list[str] | None = None,
                **client_options) -> ClusterClient:
        """One python-socketio client (transport "polling", "websocket" or "default":
        polling then upgrade), recording every event it receives (on every namespace).

        `auth` (a dict, or a callable returning one), `headers` and `namespaces`
        (default: "/") are python-socketio's `Client.connect()` arguments; any
        other keyword goes to `socketio.Client()` (`reconnection`, `serializer`,
        `request_timeout`, ...). A refused connection raises python-socketio's
        ConnectionError ("One or more namespaces failed to connect")."""
        import socketio  # the client side; not needed to run a cluster

        transports = {"polling": ["polling"], "websocket": ["websocket"],
                      "default": ["polling", "websocket"]}[transport]
        client_options.setdefault("request_timeout", 10)
        sio = socketio.Client(**client_options)
        holder: list[ClusterClient] = []
        pending: list[tuple[str, tuple]] = []

        def record(event, *args):
            if holder:
                holder[0]._record(event, *args)
            else:
                pending.append((event, args))

        if isinstance(namespaces, str):
            namespaces = [namespaces]
        namespaces = list(namespaces or ["/"])
        for ns in namespaces:
            sio.on("*", record, namespace=ns)
        sio.connect(self.url, transports=transports, wait_timeout=10, auth=auth,
                    headers=headers or {}, namespaces=namespaces)
        worker = self.worker_of(sio.eio.sid)
        if worker is None:
            sio.disconnect()
            raise RuntimeError(f"session {sio.eio.sid} is on no live worker")
        client = ClusterClient(sio, worker, self, tuple(namespaces))
        holder.append(client)
        for event, args in pending:
            client._record(event, *args)
        return client

    def clients(self, n: int | None = None, transport: str = "default",
                **client_options) -> list[ClusterClient]:
        """`n` clients (default: two per worker) spread over every worker, as evenly
        as the master's least-loaded placement allows: at most ceil(n / workers) on
        one. Keywords as for `connect` (`auth`, `headers`, `namespaces`, ...).
        A client that lands on a worker that already has its share is
        disconnected and another is made, so the app's connect and disconnect
        handlers may run for a few more sessions than `n`. RuntimeError if some
        worker cannot be reached that way."""
        slots = sorted(w.slot for w in self.workers)
        n = 2 * len(slots) if n is None else n
        if n < len(slots):
            raise ValueError(f"{n} clients cannot cover {len(slots)} workers")
        share = -(-n // len(slots))
        per: collections.Counter = collections.Counter()
        kept: list[ClusterClient] = []
        for _ in range(20 * n):
            if len(kept) == n:
                break
            c = self.connect(transport, **client_options)
            if per[c.slot] >= share:
                c.disconnect()
                continue
            per[c.slot] += 1
            kept.append(c)
        missing = [s for s in slots if not per[s]]
        if len(kept) < n or missing:
            for c in kept:
                c.disconnect()
            raise RuntimeError(f"could not spread {n} clients over workers {slots}: "
                               f"got {dict(per)}")
        return kept


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
