"""Fixtures that start real processes: the cluster, Redis, and node clients.

Everything listens on 127.0.0.1 on free ports, is bounded in time, and is
stopped by the pid the fixture started.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import chromium
import hypothesis
import pytest

from imcluster import testing
from imcluster.control import ControlError

# Property tests check results, not speed: on a shared 2-core machine a first
# example can take longer than hypothesis's default 200 ms deadline.
hypothesis.settings.register_profile("imcluster", deadline=None)
hypothesis.settings.load_profile("imcluster")

# tests/examples holds an app and a test suite that the plugin's tests run through
# pytester (one of its tests fails on purpose): not ours to collect.
collect_ignore_glob = ["examples/*"]
pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"
ARTIFACTS = ROOT / "artifacts"


free_port = testing.free_port


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test at `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Cluster:
    """Our tests' view of a cluster: the public `imcluster.testing.Cluster` (which
    starts, waits for and stops the real processes), with status as raw JSON and
    the control socket as a path, as these tests were written against."""

    def __init__(self, tmp: Path, app: str | None = "imcluster.examples.bench:sio",
                 workers: int = 3, redis: str | None = None, args: tuple = (),
                 cwd: Path | None = None, env: dict | None = None, **settings):
        args = list(args)
        control = None
        if "--control" in args:  # the cluster's own control path: it must know it
            i = args.index("--control")
            control = args[i + 1]
            del args[i:i + 2]
        self.cluster = testing.Cluster(app, workers, cwd=cwd or tmp, env=env, log_dir=tmp,
                                       redis=redis, control=control, extra_args=args,
                                       **settings)
        self.workers = workers
        self.port = self.cluster.port
        self.url = self.cluster.url
        self.control = self.cluster.control.path
        self.log_path = self.cluster.log_path
        self.proc = self.cluster.launch()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.cluster.log()

    def status(self) -> dict:
        return self.cluster.control.request("status")

    def try_status(self) -> dict | None:
        try:
            return self.status()
        except ControlError:
            return None

    def ready_workers(self) -> list[dict]:
        st = self.try_status()
        if not st:
            return []
        return [w for w in st["workers"] if w["state"] == "READY"]

    def wait_ready(self, n: int | None = None, timeout: float = 30.0) -> list[dict]:
        n = self.workers if n is None else n

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"cluster exited {self.proc.returncode}:\n{self.log()}")
            ws = self.ready_workers()
            return ws if len(ws) >= n else None

        return wait_for(ready, timeout, what=f"{n} READY workers")

    def worker_pids(self) -> set[int]:
        return {w["pid"] for w in self.ready_workers()}

    def stop(self, timeout: float = 20.0) -> int | None:
        return self.cluster.stop(timeout)


@pytest.fixture(params=["relay", "redis"])
def relay_or_redis(request) -> str | None:
    """Run the test twice: broadcasts through the master relay (None), then
    through a private Redis (its URL), for `cluster_factory(redis=...)`."""
    return request.getfixturevalue("redis_server") if request.param == "redis" else None


@pytest.fixture(params=["relay", "redis", "redis-interest"])
def backend(request) -> dict:
    """Run the test three times: broadcasts through the master relay, through a
    private Redis with one channel, then with interest channels; the settings
    to pass on, `cluster_factory(**backend)`."""
    if request.param == "relay":
        return {"redis": None}
    url = request.getfixturevalue("redis_server")
    if request.param == "redis":
        return {"redis": url}
    return {"redis": url, "redis_channels": "interest"}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, driven by playwright), one per test module."""
    with chromium.launched() as b:
        yield b


@pytest.fixture
def cluster_factory(request, tmp_path):
    """Start clusters on demand; every one is stopped (and its workers with it) at the end,
    and a failed test shows their logs (the imcluster pytest plugin's report hook)."""
    started: list[Cluster] = []
    shown = request.node.__dict__.setdefault("_imcluster_clusters", [])

    def start(**kw) -> Cluster:
        c = Cluster(tmp_path, **kw)
        started.append(c)
        shown.append(c.cluster)
        return c

    yield start
    outlived = []
    for c in started:
        c.stop()
        outlived += c.cluster.outlived
    assert not outlived, f"worker(s) {outlived} outlived their master (killed)"


class RedisProcess:
    """A private redis-server on a loopback port, started and killed by pid.

    `config` lines go into a config file it reads (so a `requirepass` never
    shows on its command line); it can be killed and started again on the
    same port and folder.
    """

    def __init__(self, d: Path, config: tuple[str, ...] = ()):
        self.port, self.dir = free_port(), d
        self.conf = d / "redis.conf"
        self.conf.write_text("".join(line + "\n" for line in (
            f"port {self.port}", "bind 127.0.0.1", 'save ""', "appendonly no",
            f"dir {d}", *config)))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([shutil.which("redis-server"), str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 10, what="redis-server")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                # -NOAUTH: up, and asking for the password it was given
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port (the machine's 6379 if none is installed)."""
    if shutil.which("redis-server") is None:
        yield "redis://127.0.0.1:6379/0"
        return
    r = RedisProcess(tmp_path_factory.mktemp("redis"))
    r.start()
    try:
        yield f"redis://127.0.0.1:{r.port}/0"
    finally:
        r.stop()


def node_script(script: Path, url: str, timeout: float = 120, **opts) -> dict:
    """Run a node driver in tests/js (the official socket.io-client) and return the JSON
    result it prints last."""
    if not (JS / "node_modules" / "socket.io-client").is_dir():
        raise AssertionError("socket.io-client is not installed: run scripts/setup "
                             "(npm ci in tests/js)")
    out = subprocess.run(["node", str(script), json.dumps({"url": url, **opts})],
                         capture_output=True, text=True, timeout=timeout, cwd=JS)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def node_clients(url: str, timeout: float = 120, **opts) -> dict:
    """tests/js/clients.mjs: N clients connect, check their worker, join a room, one say."""
    return node_script(JS / "clients.mjs", url, timeout, **opts)


@contextlib.contextmanager
def held_clients(url: str, clients: int, transport: str = "websocket"):
    """`clients` official JS clients connected and held open until the block ends;
    yields how many connected."""
    proc = subprocess.Popen(["node", str(JS / "clients.mjs"),
                             json.dumps({"url": url, "clients": clients,
                                         "transport": transport, "mode": "hold"})],
                            cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "clients.mjs printed nothing"
        yield json.loads(line)["held"]
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
