"""Fixtures that start real processes: the cluster, Redis, and node clients.

Everything listens on 127.0.0.1 on free ports, is bounded in time, and is
stopped by the pid the fixture started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hypothesis
import pytest

from imcluster.control import ControlError, request

# Property tests check results, not speed: on a shared 2-core machine a first
# example can take longer than hypothesis's default 200 ms deadline.
hypothesis.settings.register_profile("imcluster", deadline=None)
hypothesis.settings.load_profile("imcluster")

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """A real `imcluster run` process on a free loopback port."""

    def __init__(self, tmp: Path, app: str | None = "imcluster.examples.bench:sio",
                 workers: int = 3, redis: str | None = None, args: tuple = (),
                 cwd: Path | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = str(tmp / f"ctl-{self.port}.sock")
        self.log_path = tmp / f"cluster-{self.port}.log"
        cmd = [sys.executable, "-m", "imcluster", "run"]
        if app:
            cmd.append(app)
        cmd += ["--workers", str(workers), "--bind", f"127.0.0.1:{self.port}",
                "--control", self.control, *args]
        if redis:
            cmd += ["--redis", redis]
        self.workers = workers
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=cwd or tmp, env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        return request(self.control, "status")

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(params=["relay", "redis"])
def relay_or_redis(request) -> str | None:
    """Run the test twice: broadcasts through the master relay (None), then
    through a private Redis (its URL), for `cluster_factory(redis=...)`."""
    return request.getfixturevalue("redis_server") if request.param == "redis" else None


@pytest.fixture
def cluster_factory(tmp_path):
    """Start clusters on demand; every one is stopped (and its workers with it) at the end."""
    started: list[Cluster] = []

    def start(**kw) -> Cluster:
        c = Cluster(tmp_path, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        pids = set()
        st = c.try_status()
        if st:
            pids = {w["pid"] for w in st["workers"] if w["pid"]}
        c.stop()
        for pid in pids:  # a worker must never outlive its master
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            time.sleep(1)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} outlived its master")


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


def node_clients(url: str, timeout: float = 120, **opts) -> dict:
    """Run tests/js/clients.mjs (the official socket.io-client) and return its JSON result."""
    if not (JS / "node_modules" / "socket.io-client").is_dir():
        raise AssertionError("socket.io-client is not installed: run scripts/setup "
                             "(npm ci in tests/js)")
    out = subprocess.run(["node", str(JS / "clients.mjs"), json.dumps({"url": url, **opts})],
                         capture_output=True, text=True, timeout=timeout, cwd=JS)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
