#!/usr/bin/env python3
"""The imcluster benchmark suite: every contender, the same app contract, the same load.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--docs] [--no-setup]

Contenders (each started here on 127.0.0.1, on free ports, N=2 processes where it has several):
  imcluster          imcluster run imcluster.examples.bench:sio --workers 2 (master relay)
  imcluster-deflate  the same with --ws-compression yes (echo, fanout and hold only)
  imcluster-redis    the same with --redis (fanout only)
  python-socketio    (a) one python-socketio process on eventlet
  reuseport-redis    (b) pm2-style: 2 python-socketio processes on one port (SO_REUSEPORT), Redis
  nginx-iphash       (c) nginx, ip_hash, in front of 2 python-socketio processes (own ports), Redis
  nginx-sidhash      (c) nginx, hash $arg_sid, in front of the same
  node-cluster       (d) socket.io 4 on node:cluster, @socket.io/sticky, @socket.io/cluster-adapter

Scenarios: handshake, echo, fanout, hold, fanout-nodeflate and hold-nodeflate (clients
offering no permessage-deflate; python-socketio only), master (imcluster only),
echo-polling (the master's load on the others), profile (imcluster only, py-spy).
`--only` takes contender and scenario names; without it everything runs. Results go to
benchmarks/results/ as JSON; a full run (no --quick, no --only) also rewrites
docs/benchmarks.md and docs/benchmarks.png (--docs forces that, --no-docs prevents it).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from histo import merge_hists, summarize_hist

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
NODE_DIR = BENCH / "node"
RESULTS = BENCH / "results"
PY = sys.executable
N_WORKERS = 2
NOFILE = 20000

FULL = {
    "handshake": {"clients": 500, "wave": 50},
    "echo": {"clients": 100, "warmup_s": 3, "duration_s": 15},
    "fanout": {"clients": 1000, "procs": 2, "rate": 50, "duration_s": 15, "drain_s": 5},
    "hold": {"clients": 5000, "wave": 250, "settle_s": 3},
    "master": {"clients": 100, "warmup_s": 3, "duration_s": 15},
    "profile": {"echo_clients": 100, "fanout_clients": 1000, "seconds": 8},
}
QUICK = {
    "handshake": {"clients": 60, "wave": 30},
    "echo": {"clients": 20, "warmup_s": 1, "duration_s": 2},
    "fanout": {"clients": 100, "procs": 1, "rate": 20, "duration_s": 2, "drain_s": 1},
    "hold": {"clients": 200, "wave": 100, "settle_s": 1},
    "master": {"clients": 20, "warmup_s": 1, "duration_s": 2},
    "profile": {"echo_clients": 20, "fanout_clients": 100, "seconds": 2},
}

# ---- processes: every one we start is registered and killed by pid at the end ---------------

_procs: list[subprocess.Popen] = []
_plock = threading.Lock()


def spawn(argv: list[str], log: Path | None = None, **kw) -> subprocess.Popen:
    if log is not None:
        f = open(log, "ab")
        kw.setdefault("stderr", f)
        kw.setdefault("stdout", f)
    p = subprocess.Popen(argv, **kw)
    with _plock:
        _procs.append(p)
    return p


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_proc(p: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process, wait, then SIGKILL it and every descendant it had, by pid."""
    kids = _descendants(p.pid)
    if p.poll() is None:
        _kill_pid(p.pid, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    kids += [k for k in _descendants(p.pid) if k not in kids]
    if p.poll() is None:
        _kill_pid(p.pid, signal.SIGKILL)
    for k in kids:
        _kill_pid(k, signal.SIGKILL)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    with _plock:
        if p in _procs:
            _procs.remove(p)


def stop_all() -> None:
    with _plock:
        procs = list(reversed(_procs))
    for p in procs:
        stop_proc(p, grace=2.0)


atexit.register(stop_all)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---- small helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until an Engine.IO polling handshake on `url` answers 200."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/socket.io/?EIO=4&transport=polling",
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


def _top(d: dict[str, int], n: int = 3) -> str:
    return "; ".join(f"{k} ×{v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- resource sampling (psutil) -----------------------------------------------------------


class Sampler:
    """CPU seconds, RSS and open descriptors, summed per group of a server's processes."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.cache: dict[int, object] = {}

    def proc(self, pid: int):
        p = self.cache.get(pid)
        if p is None:
            p = self.cache[pid] = self.psutil.Process(pid)
        return p

    def sample(self, groups: dict[str, list[int]]) -> dict:
        out = {"t": time.monotonic(), "groups": {}, "machine_busy_s": machine_busy_s()}
        for g, pids in groups.items():
            cpu = rss = fds = 0.0
            n = 0
            for pid in pids:
                try:
                    p = self.proc(pid)
                    with p.oneshot():
                        t = p.cpu_times()
                        cpu += t.user + t.system
                        rss += p.memory_info().rss
                        fds += p.num_fds()
                    n += 1
                except self.psutil.Error:
                    continue
            out["groups"][g] = {"cpu_s": cpu, "rss": int(rss), "fds": int(fds), "procs": n,
                                "pids": list(pids)}
        return out


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has been busy (not idle, not iowait), /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def delta(a: dict, b: dict) -> dict:
    """CPU seconds spent between two samples, per group and in total.

    `other_cpu_s` is what the rest of the machine (not the server, not our clients) used
    meanwhile: this machine is shared, and that number says how much it was.
    """
    per = {}
    for g, v in b["groups"].items():
        before = a["groups"].get(g, {}).get("cpu_s", 0.0)
        per[g] = round(v["cpu_s"] - before, 3)
    busy = b["machine_busy_s"] - a["machine_busy_s"]
    return {"wall_s": round(b["t"] - a["t"], 3), "cpu_s": per,
            "cpu_total_s": round(sum(per.values()), 3),
            "machine_busy_s": round(busy, 2),
            "other_cpu_s": round(busy - sum(per.values()), 2)}


# ---- the contenders -----------------------------------------------------------------------


class Server:
    """A running contender: its URL, its processes by group, and how to stop it."""

    def __init__(self, name: str, url: str):
        self.name = name
        self.url = url
        self.procs: list[subprocess.Popen] = []  # stopped in reverse order
        self.front: list[subprocess.Popen] = []  # the process clients connect to, if any
        self.front_children_are_workers = False  # imcluster, node: forked workers
        self.workers: list[subprocess.Popen] = []
        self.broker: list[subprocess.Popen] = []
        self.control: str | None = None  # imcluster's control socket
        self.tmp: str | None = None
        self.logs: dict[Path, int] = {}  # log file -> its size when this server started

    def watch(self, log: Path) -> Path:
        self.logs.setdefault(log, log.stat().st_size if log.exists() else 0)
        return log

    def log_problems(self) -> dict[str, int]:
        """Error and warning lines the server's processes logged, by kind (ids and numbers
        masked)."""
        out: dict[str, int] = {}
        for path, offset in self.logs.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if not PROBLEM.search(line) or line.startswith(" ") or IGNORED.search(line):
                    continue
                key = PROBLEM_PREFIX.sub("", line)
                key = re.sub(r"[A-Za-z0-9_-]{20}|\d+(\.\d+)?", "N", key).strip()[:160]
                key = f"{path.name.split('.')[0]}: {key}"
                out[key] = out.get(key, 0) + 1
        return out

    def groups(self) -> dict[str, list[int]]:
        front = [p.pid for p in self.front]
        kids = [k for p in self.front for k in _descendants(p.pid)]
        workers = [p.pid for p in self.workers]
        if self.front_children_are_workers:
            workers += kids
        else:
            front += kids  # nginx's own worker processes belong to the front
        return {"front": front, "workers": workers, "broker": [p.pid for p in self.broker]}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def status(self) -> dict | None:
        """imcluster's `status --json` (None for the others)."""
        if not self.control:
            return None
        r = subprocess.run([str(Path(PY).parent / "imcluster"), "status", "--json",
                            "--control", self.control], capture_output=True, text=True,
                           timeout=15)
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return None
        st["_t"] = time.monotonic()
        return st

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_proc(p, grace=6.0)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


PROBLEM = re.compile(r"\b(ERROR|WARNING|CRITICAL|Traceback|Error)\b")
# Redis's advice about vm.overcommit_memory (it keeps nothing on disk here).
IGNORED = re.compile(r"overcommit")
# timestamps and "[worker 0 pid 123]" style prefixes
PROBLEM_PREFIX = re.compile(r"^[\d\-: ,.]+(\[[^\]]*\] )?")


def start_redis(srv: Server, logdir: Path) -> str:
    port = free_port()
    p = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000",
               "--protected-mode", "no", "--loglevel", "warning"],
              log=srv.watch(logdir / f"{srv.name}-redis.log"))
    srv.procs.append(p)
    srv.broker.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def start_pysio(srv: Server, logdir: Path, port: int, redis: str | None, reuseport: bool,
                tag: str) -> subprocess.Popen:
    argv = [PY, "-W", "ignore", str(BENCH / "servers" / "pysio.py"), "--port", str(port)]
    if redis:
        argv += ["--redis", redis]
    if reuseport:
        argv.append("--reuseport")
    p = spawn(argv, log=srv.watch(logdir / f"{srv.name}-{tag}.log"), cwd=ROOT)
    srv.procs.append(p)
    srv.workers.append(p)
    return p


def c_imcluster(logdir: Path, redis: bool = False, ws_compression: bool = False) -> Server:
    port = free_port()
    name = "imcluster-redis" if redis else "imcluster-deflate" if ws_compression else "imcluster"
    srv = Server(name, f"http://127.0.0.1:{port}")
    srv.tmp = tempfile.mkdtemp(prefix="imcluster-bench-")
    srv.control = os.path.join(srv.tmp, "control.sock")
    argv = [str(Path(PY).parent / "imcluster"), "run", "imcluster.examples.bench:sio",
            "--workers", str(N_WORKERS), "--bind", f"127.0.0.1:{port}",
            "--control", srv.control, "--log-level", "warning", "--graceful-timeout", "3"]
    if redis:
        argv += ["--redis", start_redis(srv, logdir)]
    if ws_compression:
        argv += ["--ws-compression", "yes"]
    p = spawn(argv, log=srv.watch(logdir / f"{srv.name}.log"), cwd=ROOT)
    srv.procs.append(p)
    srv.front.append(p)
    srv.front_children_are_workers = True
    wait_http(srv.url, 30, p)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = srv.status()
        if st and st["workers"] and all(w["state"] == "READY" for w in st["workers"]):
            return srv
        time.sleep(0.3)
    raise RuntimeError("imcluster workers did not all become READY")


def c_single(logdir: Path) -> Server:
    port = free_port()
    srv = Server("python-socketio", f"http://127.0.0.1:{port}")
    p = start_pysio(srv, logdir, port, None, False, "0")
    wait_http(srv.url, 30, p)
    return srv


def c_reuseport(logdir: Path) -> Server:
    port = free_port()
    srv = Server("reuseport-redis", f"http://127.0.0.1:{port}")
    redis = start_redis(srv, logdir)
    ps = [start_pysio(srv, logdir, port, redis, True, str(i)) for i in range(N_WORKERS)]
    # Each process must be listening before we measure, or the first would take everything.
    _wait_listeners(port, N_WORKERS, ps)
    wait_http(srv.url, 30, ps[0])
    return srv


def _wait_listeners(port: int, n: int, procs: list[subprocess.Popen]) -> None:
    import psutil

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listening = 0
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a server process exited ({p.returncode})")
            try:
                conns = psutil.Process(p.pid).net_connections(kind="tcp")
            except psutil.Error:
                conns = []
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
                listening += 1
        if listening == n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"not all {n} processes listen on {port}")


def c_nginx(logdir: Path, balance: str) -> Server:
    name = {"ip_hash": "nginx-iphash", "hash $arg_sid": "nginx-sidhash"}[balance]
    port = free_port()
    srv = Server(name, f"http://127.0.0.1:{port}")
    redis = start_redis(srv, logdir)
    ports = [free_port() for _ in range(N_WORKERS)]
    ps = [start_pysio(srv, logdir, bp, redis, False, str(i)) for i, bp in enumerate(ports)]
    for bp, p in zip(ports, ps, strict=True):
        wait_http(f"http://127.0.0.1:{bp}", 30, p)
    srv.tmp = tempfile.mkdtemp(prefix="nginx-bench-")
    conf = (BENCH / "servers" / "nginx.conf.in").read_text()
    servers = "\n".join(f"        server 127.0.0.1:{bp};" for bp in ports)
    for k, v in {"@WORKERS@": str(N_WORKERS), "@DIR@": srv.tmp, "@BALANCE@": balance,
                 "@SERVERS@": servers, "@PORT@": str(port)}.items():
        conf = conf.replace(k, v)
    Path(srv.tmp, "nginx.conf").write_text(conf)
    p = spawn([nginx_bin(), "-p", srv.tmp, "-c", os.path.join(srv.tmp, "nginx.conf"),
               "-e", os.path.join(srv.tmp, "error.log")],
              log=srv.watch(logdir / f"{srv.name}-nginx.log"))
    srv.watch(Path(srv.tmp, "error.log"))
    srv.procs.append(p)
    srv.front.append(p)
    wait_http(srv.url, 30, p)
    return srv


def c_node(logdir: Path) -> Server:
    port = free_port()
    srv = Server("node-cluster", f"http://127.0.0.1:{port}")
    p = spawn(["node", str(NODE_DIR / "server.cjs"), "--port", str(port),
               "--workers", str(N_WORKERS)], log=srv.watch(logdir / f"{srv.name}.log"),
              cwd=NODE_DIR)
    srv.procs.append(p)
    srv.front.append(p)
    srv.front_children_are_workers = True
    wait_http(srv.url, 30, p)
    return srv


CONTENDERS = {
    "imcluster": (lambda d: c_imcluster(d), "imcluster, 2 workers, master relay"),
    "imcluster-deflate": (lambda d: c_imcluster(d, ws_compression=True),
                          "imcluster, 2 workers, --ws-compression yes (permessage-deflate "
                          "accepted, as plain python-socketio on eventlet does)"),
    "imcluster-redis": (lambda d: c_imcluster(d, redis=True), "imcluster, 2 workers, --redis"),
    "python-socketio": (c_single, "(a) one python-socketio process (eventlet)"),
    "reuseport-redis": (c_reuseport, "(b) pm2-style: 2 processes, SO_REUSEPORT, Redis"),
    "nginx-iphash": (lambda d: c_nginx(d, "ip_hash"), "(c) nginx ip_hash, 2 processes, Redis"),
    "nginx-sidhash": (lambda d: c_nginx(d, "hash $arg_sid"),
                      "(c) nginx hash $arg_sid, 2 processes, Redis"),
    "node-cluster": (c_node, "(d) socket.io 4, node:cluster, sticky + cluster-adapter"),
}
# Which scenarios each contender runs.
PLAN = {
    "imcluster": ["handshake", "echo", "fanout", "hold", "master", "profile"],
    "imcluster-deflate": ["echo", "fanout", "hold"],
    "imcluster-redis": ["fanout"],
    "python-socketio": ["handshake", "echo", "fanout", "fanout-nodeflate", "hold",
                        "hold-nodeflate", "echo-polling"],
    "reuseport-redis": ["handshake", "echo", "fanout", "hold"],
    "nginx-iphash": ["handshake", "echo", "fanout", "hold", "echo-polling"],
    "nginx-sidhash": ["handshake", "echo", "fanout", "hold"],
    "node-cluster": ["handshake", "echo", "fanout", "hold", "echo-polling"],
}
SCENARIOS = ["handshake", "echo", "fanout", "fanout-nodeflate", "hold", "hold-nodeflate", "master",
             "echo-polling", "profile"]


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


# ---- the load generator -------------------------------------------------------------------


class Load:
    """One node load.mjs process; its JSON lines arrive on a shared queue."""

    def __init__(self, opts: dict, q: queue.Queue, logdir: Path, label: str):
        self.label = label
        self.result: dict | None = None
        self.p = spawn(["node", str(NODE_DIR / "load.mjs"), json.dumps(opts)], cwd=NODE_DIR,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=open(logdir / f"load-{label}.log", "ab"))
        self.q = q
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.p.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            self.q.put((self, obj))
        self.q.put((self, {"eof": True}))

    def say(self, word: str) -> None:
        try:
            self.p.stdin.write(word.encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def finish(self) -> None:
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            pass
        stop_proc(self.p, grace=1.0)


def events(q: queue.Queue, deadline: float):
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("load generator did not finish in time")
        try:
            yield q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError("load generator did not finish in time") from None


# ---- scenarios ----------------------------------------------------------------------------


class Ctx:
    def __init__(self, counts: dict, logdir: Path, sampler: Sampler):
        self.counts = counts
        self.logdir = logdir
        self.sampler = sampler


def _window(ctx: Ctx, srv: Server, loads: list[Load], a: dict, b: dict,
            st_a: dict | None = None, st_b: dict | None = None) -> dict:
    d = delta(a, b)
    d["client_cpu_s"] = d["cpu_s"].pop("clients", 0.0)
    d["cpu_total_s"] = round(sum(d["cpu_s"].values()), 3)
    if st_a and st_b:
        ca, cb = st_a["master"]["counters"], st_b["master"]["counters"]
        wall = st_b["_t"] - st_a["_t"]
        d["master_counters"] = {k: cb.get(k, 0) - ca.get(k, 0) for k in cb
                                if isinstance(cb.get(k), (int, float))}
        d["master_status_wall_s"] = round(wall, 3)
    return d


def _sample(ctx: Ctx, srv: Server, loads: list[Load]) -> dict:
    g = srv.groups()
    g["clients"] = [ld.p.pid for ld in loads]
    return ctx.sampler.sample(g)


def _run_one(ctx: Ctx, srv: Server, ld: Load, q: queue.Queue) -> tuple[dict | None, dict | None]:
    """Follow one load generator to its end: its result, and the server's window
    between its start and end marks (None, None if it gave no result)."""
    marks, st, res = {}, {}, None
    for _, ev in events(q, time.monotonic() + 320):
        if "mark" in ev:
            marks[ev["mark"]] = _sample(ctx, srv, [ld])
            st[ev["mark"]] = srv.status()
        elif "result" in ev:
            res = ev["result"]
        elif ev.get("eof"):
            break
    ld.finish()
    if res is None or "start" not in marks or "end" not in marks:
        return None, None
    return res, _window(ctx, srv, [ld], marks["start"], marks["end"], st.get("start"),
                        st.get("end"))


def _restarts(srv: Server) -> dict | None:
    st = srv.status()
    if not st:
        return None
    return {"restarts": sum(w["restarts"] for w in st["workers"]),
            "states": [w["state"] for w in st["workers"]]}


def sc_handshake(ctx: Ctx, srv: Server) -> dict:
    c = ctx.counts["handshake"]
    out = {}
    for transport in ("polling", "default", "websocket"):
        q: queue.Queue = queue.Queue()
        ld = Load({"mode": "handshake", "url": srv.url, "clients": c["clients"],
                   "wave": c["wave"], "transport": transport, "timeout_ms": 5000,
                   "deadline_s": 300}, q, ctx.logdir, f"{srv.name}-handshake-{transport}")
        res, w = _run_one(ctx, srv, ld, q)
        if res is None:
            out[transport] = {"error": "the load generator gave no result"}
            continue
        res["server"] = w
        res["workers_serving"] = len(res.get("pids", {}))
        res["cpu_s_per_1000"] = (round(w["cpu_total_s"] / res["ok"] * 1000, 3)
                                 if res["ok"] else None)
        out[transport] = res
        log(f"  handshake {transport:9s}: {res['ok']}/{res['attempted']} ok, "
            f"{res['handshakes_per_s']:.0f}/s, workers {res['workers_serving']}, "
            f"alive at end {res['alive_at_end']}, errors {res['errors']}")
        time.sleep(0.5)
    return out


def sc_echo(ctx: Ctx, srv: Server, transport: str = "websocket", key: str = "echo") -> dict:
    c = ctx.counts[key]
    q: queue.Queue = queue.Queue()
    ld = Load({"mode": "echo", "url": srv.url, "clients": c["clients"], "wave": 50,
               "transport": transport, "warmup_s": c["warmup_s"], "duration_s": c["duration_s"],
               "timeout_ms": 10000, "deadline_s": 300}, q, ctx.logdir, f"{srv.name}-{key}")
    res, w = _run_one(ctx, srv, ld, q)
    if res is None:
        return {"error": "the load generator gave no result"}
    res["server"] = w
    res["rtt"] = summarize_hist(res["rtt"])
    res["cpu_s_per_1000"] = round(w["cpu_total_s"] / res["acks"] * 1000, 3) if res["acks"] else None
    if "master_counters" in w:
        h = w["master_counters"].get("handoffs", 0)
        res["handoffs"] = h
        res["handoffs_per_s"] = round(h / w["master_status_wall_s"], 1)
        res["master_cpu_us_per_handoff"] = (round(w["cpu_s"]["front"] / h * 1e6, 1)
                                            if h else None)
        res["master_cpu_share"] = round(w["cpu_s"]["front"] / w["wall_s"], 3)
    log(f"  {key} ({transport}): {res['acks_per_s']:.0f} acks/s, p50 {res['rtt']['p50_ms']} ms, "
        f"p99 {res['rtt']['p99_ms']} ms, cpu/1000 {res['cpu_s_per_1000']} s, "
        f"errors {res['errors']}"
        + (f", hand-offs {res['handoffs_per_s']}/s, master {res['master_cpu_us_per_handoff']} "
           f"us/hand-off" if "handoffs" in res else ""))
    return res


def sc_master(ctx: Ctx, srv: Server) -> dict:
    """Polling-only echo: every request is a new TCP connection, so (imcluster) a hand-off.

    Run as `master` on imcluster and as `echo-polling` on the contenders where polling
    works, to compare."""
    return sc_echo(ctx, srv, transport="polling", key="master")


def sc_fanout(ctx: Ctx, srv: Server, deflate: bool = True,
              profile_pid: int | None = None) -> dict:
    c = ctx.counts["fanout"]
    nprocs = c["procs"]
    q: queue.Queue = queue.Queue()
    tag = f"{srv.name}-{int(time.time() * 1000)}"
    loads = []
    for i in range(nprocs):
        share = c["clients"] // nprocs + (1 if i < c["clients"] % nprocs else 0)
        loads.append(Load({"mode": "room", "url": srv.url, "clients": share, "wave": 100,
                           "transport": "websocket", "room": "fanout", "sender": i == 0,
                           "rate": c["rate"], "duration_s": c["duration_s"], "tag": tag,
                           "deflate": deflate, "timeout_ms": 15000, "deadline_s": 400},
                          q, ctx.logdir, f"{srv.name}-fanout{'' if deflate else '-nodeflate'}-{i}"))
    ready = 0
    deadline = time.monotonic() + 180
    results, marks, st = {}, {}, {}
    sender_end = None
    spy = None
    gen = events(q, deadline)
    for ld, ev in gen:
        if "ready" in ev:
            ready += 1
            if ready == nprocs:
                time.sleep(1.0)
                loads[0].say("go")
        elif "mark" in ev:
            marks[ev["mark"]] = _sample(ctx, srv, loads)
            st[ev["mark"]] = srv.status()
            if ev["mark"] == "start" and profile_pid:
                spy = start_pyspy(ctx, profile_pid, "fanout")
            if ev["mark"] == "end":
                sender_end = ev
                break
        elif "result" in ev:
            results[ld.label] = ev["result"]  # one that failed early
        elif ev.get("eof"):
            results.setdefault(ld.label, None)
            if len(results) == nprocs:
                break
    if sender_end is not None:
        time.sleep(c["drain_s"])
        marks["drained"] = _sample(ctx, srv, loads)
        st["drained"] = srv.status()
    for ld in loads:
        ld.say("stop")
    for ld, ev in events(q, time.monotonic() + 120):
        if "result" in ev:
            results[ld.label] = ev["result"]
        if len([r for r in results.values() if r is not None]) == nprocs or \
                all(x.p.poll() is not None for x in loads) and q.empty():
            break
    for ld in loads:
        ld.finish()
    prof = finish_pyspy(spy) if spy else None
    rs = [r for r in results.values() if r]
    if len(rs) < nprocs or "start" not in marks or "drained" not in marks:
        return {"error": "a load generator gave no result", "partial": rs}
    sender = next(r for r in rs if r["sender"])
    connected = sum(r["connected"] for r in rs)
    sent = sender["sent"]
    delivered = sum(r["delivered"] for r in rs)
    t0, t1 = sender["t_start"], sender["t_end"]
    # 10 ms ticks wholly inside the sending window
    in_window = sum(v for r in rs for k, v in r["per_tick"].items()
                    if t0 <= int(k) * 10 and int(k) * 10 + 10 <= t1)
    lat = summarize_hist(merge_hists([r["latency"] for r in rs]))
    w = _window(ctx, srv, loads, marks["start"], marks["drained"], st.get("start"),
                st.get("drained"))
    errors: dict = {}
    for r in rs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    res = {
        "clients": c["clients"], "connected": connected, "rate": c["rate"],
        "duration_s": round((t1 - t0) / 1000, 2), "sent": sent,
        "expected": sent * connected, "delivered": delivered,
        "undelivered": sent * connected - delivered,
        "duplicates": sum(r["duplicates"] for r in rs),
        "lost_connections": sum(r["lost"] for r in rs),
        "offered_per_s": c["rate"] * connected,
        "deliveries_per_s": round(in_window / ((t1 - t0) / 1000), 1),
        "latency": lat, "errors": errors, "server": w, "deflate": deflate,
        "deflate_negotiated": sum(r.get("deflate_negotiated", 0) for r in rs),
        "cpu_s_per_1000": round(w["cpu_total_s"] / delivered * 1000, 3) if delivered else None,
    }
    if prof:
        res["profile"] = prof
    log(f"  fanout{'' if deflate else ' (no deflate)'}: {res['deliveries_per_s']:.0f}/s of "
        f"{res['offered_per_s']} offered, p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
        f"undelivered {res['undelivered']}/{res['expected']}, cpu/1000 {res['cpu_s_per_1000']} s,"
        f" errors {errors}")
    return res


def sc_fanout_nodeflate(ctx: Ctx, srv: Server) -> dict:
    return sc_fanout(ctx, srv, deflate=False)


def sc_hold(ctx: Ctx, srv: Server, deflate: bool = True) -> dict:
    c = ctx.counts["hold"]
    time.sleep(1.0)
    base = _sample(ctx, srv, [])
    q: queue.Queue = queue.Queue()
    ld = Load({"mode": "hold", "url": srv.url, "clients": c["clients"], "wave": c["wave"],
               "transport": "websocket", "timeout_ms": 20000, "deadline_s": 400,
               "deflate": deflate}, q, ctx.logdir,
              f"{srv.name}-hold{'' if deflate else '-nodeflate'}")
    held = None
    res = None
    for _, ev in events(q, time.monotonic() + 300):
        if "ready" in ev:
            held = ev
            break
        if "result" in ev or ev.get("eof"):
            break
    if held is None:
        ld.finish()
        return {"error": "the load generator gave no result"}
    connected = _sample(ctx, srv, [ld])
    time.sleep(c["settle_s"])
    full = _sample(ctx, srv, [ld])
    st = srv.status()
    ld.say("stop")
    for _, ev in events(q, time.monotonic() + 120):
        if "result" in ev:
            res = ev["result"]
        if "result" in ev or ev.get("eof"):
            break
    ld.finish()
    n = held["ready"]
    g, b = full["groups"], base["groups"]
    rss_total = sum(v["rss"] for k, v in g.items() if k != "clients")
    rss_base = sum(v["rss"] for k, v in b.items() if k != "clients")
    out = {
        "clients": c["clients"], "held": n, "connect_s": held["elapsed_s"], "deflate": deflate,
        "deflate_negotiated": held.get("deflate_negotiated"),
        "connects_per_s": round(n / held["elapsed_s"], 1) if held["elapsed_s"] else None,
        "errors": held.get("errors", {}),
        "alive_at_end": (res or {}).get("alive_at_end"),
        "rss_total_mb": round(rss_total / 2**20, 1),
        "rss_idle_mb": round(rss_base / 2**20, 1),
        "kb_per_conn": round(rss_total / n / 1024, 1) if n else None,
        "kb_per_conn_marginal": round((rss_total - rss_base) / n / 1024, 1) if n else None,
        "fds": {k: v["fds"] for k, v in g.items() if k != "clients" and v["procs"]},
        "rss_mb": {k: round(v["rss"] / 2**20, 1) for k, v in g.items()
                   if k != "clients" and v["procs"]},
        "procs": {k: v["procs"] for k, v in g.items() if k != "clients"},
        "connect_cpu": delta(base, connected),
    }
    cpu = sum(v for k, v in out["connect_cpu"]["cpu_s"].items() if k != "clients")
    out["cpu_s_per_1000"] = round(cpu / n * 1000, 3) if n else None
    out["connect_cpu"]["cpu_s"].pop("clients", None)
    if st:
        out["master_fds"] = st["master"].get("fds")
        out["sessions"] = [w.get("sessions") for w in st["workers"]]
    log(f"  hold{'' if deflate else ' (no deflate)'}: {n}/{c['clients']} held in "
        f"{held['elapsed_s']:.1f}s, "
        f"{out['kb_per_conn']} KB/conn ({out['kb_per_conn_marginal']} marginal), "
        f"fds {out['fds']}, errors {out['errors']}")
    return out


# ---- profiling a worker with py-spy -------------------------------------------------------


def start_pyspy(ctx: Ctx, pid: int, label: str) -> dict | None:
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if not spy:
        return None
    out = ctx.logdir / f"pyspy-{label}.txt"
    secs = ctx.counts["profile"]["seconds"]
    p = spawn([spy, "record", "--pid", str(pid), "--duration", str(secs), "--rate", "200",
               "--format", "raw", "--nonblocking", "--output", str(out)],
              log=ctx.logdir / f"pyspy-{label}.log")
    return {"proc": p, "out": out, "label": label}


def finish_pyspy(spy: dict) -> dict | None:
    try:
        spy["proc"].wait(60)
    except subprocess.TimeoutExpired:
        pass
    stop_proc(spy["proc"], grace=1)
    return summarize_profile(spy["out"])


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# A sample waiting for events, not working: left out of the shares.
WAITING = re.compile(r"^(EpollSelector\.select|Hub\.do_poll) \(")
# Where a busy sample goes: walking its stack from the leaf up, the first frame that
# matches a rule names it (so the most specific activity wins).
RULES = [
    ("WebSocket frame packing incl. permessage-deflate", re.compile(r"_pack_message|deflate")),
    ("unmasking client frames (pure Python)", re.compile(r"_apply_mask")),
    ("socket send", re.compile(r"_send_loop|sendall|GreenSocket\.send \(|sendmsg")),
    ("socket recv", re.compile(r"_recv_loop|recv_into|GreenSocket\.recv")),
    ("JSON and packet encode/decode", re.compile(r"json|packet\.py")),
    ("channel to the master (fds, relay)", re.compile(r"relay\.py|link\.py|pubsub_manager")),
    ("master: pass the fd to a worker", re.compile(r"Master\._flush")),
    ("master: accept()", re.compile(r"socket\.accept")),
    ("master: selector (un)register", re.compile(r"Selector.*register|Selector.*modify")),
    ("master: peek and parse the request line", re.compile(r"Router\._examine|httpline")),
    ("master: worker channel reads", re.compile(r"Master\._read_channel")),
    ("master: timers and reaping", re.compile(r"Master\.(manage|reap)")),
    ("eventlet hub (timers, switches, queues)",
     re.compile(r"fire_timers|schedule_call|switch|Hub\.(wait|register|remove)|trampoline"
                r"|queue\.py|semaphore\.py|event\.py")),
]


def summarize_profile(path: Path) -> dict | None:
    if not path.exists():
        return None
    total = waiting = 0
    self_time: dict[str, int] = {}
    shares: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if WAITING.match(frames[-1]):
            waiting += n
            continue
        total += n
        m = FRAME.match(frames[-1])
        key = f"{m['func']} ({m['file']})" if m else (frames[-1] or "(native code)")
        self_time[key] = self_time.get(key, 0) + n
        bucket = "other Python code"
        for f in reversed(frames):
            hit = next((name for name, rx in RULES if rx.search(f)), None)
            if hit:
                bucket = hit
                break
        shares[bucket] = shares.get(bucket, 0) + n
    if not total:
        return None
    top = sorted(self_time.items(), key=lambda kv: -kv[1])[:15]
    return {"samples": total, "waiting_samples": waiting,
            "top_self": [{"frame": k, "share": round(v / total, 3)} for k, v in top],
            "breakdown": {b: round(v / total, 3)
                          for b, v in sorted(shares.items(), key=lambda kv: -kv[1])},
            "raw": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)}


def _profile_during_echo(ctx: Ctx, srv: Server, c: dict, transport: str, pid: int,
                         label: str) -> dict | None:
    """py-spy on `pid` while the echo load runs over `transport`."""
    q: queue.Queue = queue.Queue()
    ld = Load({"mode": "echo", "url": srv.url, "clients": c["echo_clients"], "wave": 50,
               "transport": transport, "warmup_s": 2, "duration_s": c["seconds"] + 2,
               "deadline_s": 200}, q, ctx.logdir, f"{srv.name}-profile-{label}")
    spy = None
    for _, ev in events(q, time.monotonic() + 200):
        if ev.get("mark") == "start":
            spy = start_pyspy(ctx, pid, label)
        if "result" in ev or ev.get("eof"):
            break
    ld.finish()
    return finish_pyspy(spy) if spy else None


def sc_profile(ctx: Ctx, srv: Server) -> dict:
    """py-spy on one worker during echo, then during fanout (not the measured runs)."""
    c = ctx.counts["profile"]
    st = srv.status()
    pid = st["workers"][0]["pid"] if st else srv.groups()["workers"][0]
    out = {"worker_pid": pid}
    out["echo"] = _profile_during_echo(ctx, srv, c, "websocket", pid, "echo")
    # fanout, with the same counts as the fanout scenario
    saved = dict(ctx.counts["fanout"])
    ctx.counts["fanout"] = {**saved, "clients": c["fanout_clients"],
                            "duration_s": c["seconds"] + 2}
    try:
        f = sc_fanout(ctx, srv, profile_pid=pid)
    finally:
        ctx.counts["fanout"] = saved
    out["fanout"] = f.get("profile")
    # the master, during polling-only echo (every request a new connection: a hand-off)
    out["master"] = _profile_during_echo(ctx, srv, c, "polling", srv.front[0].pid, "master")
    for k in ("echo", "fanout", "master"):
        p = out.get(k)
        if p:
            log(f"  profile {k}: " + ", ".join(f"{b} {v:.0%}" for b, v in p["breakdown"].items()))
    return out


def sc_hold_nodeflate(ctx: Ctx, srv: Server) -> dict:
    return sc_hold(ctx, srv, deflate=False)


SCENARIO_FUNCS = {
    "handshake": sc_handshake, "echo": sc_echo, "fanout": sc_fanout,
    "fanout-nodeflate": sc_fanout_nodeflate, "hold": sc_hold,
    "hold-nodeflate": sc_hold_nodeflate, "master": sc_master, "echo-polling": sc_master,
    "profile": sc_profile,
}


# ---- set-up, machine, versions --------------------------------------------------------------


def setup() -> None:
    """Install what the suite needs: its Python requirements, the npm packages, nginx."""
    try:
        import matplotlib  # noqa: F401
        import psutil  # noqa: F401

        have_py = shutil.which("py-spy", path=str(Path(PY).parent)) is not None
    except ImportError:
        have_py = False
    if not have_py:
        log("setup: pip install -r benchmarks/requirements.txt")
        subprocess.run([PY, "-m", "pip", "install", "-q", "-r",
                        str(BENCH / "requirements.txt")], check=True)
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    if not stamp.exists() or (NODE_DIR / "package-lock.json").stat().st_mtime > \
            stamp.stat().st_mtime:
        log("setup: npm ci (benchmarks/node)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True)
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        log("setup: apt-get install nginx")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env)
    if not shutil.which("redis-server"):
        log("setup: apt-get install redis-server")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)


def _cmd_version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() \
        else None


def machine_info() -> dict:
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": model,
            "ram_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
            "kernel": platform.release(), "os": _os_name(), "loadavg_at_start": os.getloadavg()}


def _os_name() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {"python": platform.python_version()}
    for pkg in ("imcluster", "python-socketio", "python-engineio", "eventlet", "redis", "psutil"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    v["node"] = _cmd_version(["node", "--version"])
    for pkg in ("socket.io", "socket.io-client", "@socket.io/sticky", "@socket.io/cluster-adapter",
                "engine.io", "ws"):
        try:
            v["npm:" + pkg] = json.loads((NODE_DIR / "node_modules" / pkg / "package.json")
                                         .read_text())["version"]
        except (OSError, ValueError, KeyError):
            v["npm:" + pkg] = None
    v["nginx"] = _cmd_version([nginx_bin(), "-v"])
    v["redis-server"] = _cmd_version(["redis-server", "--version"])
    for k, rx in (("nginx", r"nginx/(\S+)"), ("redis-server", r"v=(\S+)")):
        m = re.search(rx, v[k] or "")
        if m:
            v[k] = m.group(1)
    try:
        v["imcluster_git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        v["imcluster_git"] = None
    return v


# ---- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke check")
    ap.add_argument("--only", nargs="+", metavar="NAME", default=[],
                    help="contender and/or scenario names: " + ", ".join(
                        list(CONTENDERS) + SCENARIOS))
    ap.add_argument("--docs", dest="docs", action="store_true", default=None,
                    help="rewrite docs/benchmarks.md and docs/benchmarks.png from this run")
    ap.add_argument("--no-docs", dest="docs", action="store_false")
    ap.add_argument("--no-setup", action="store_true", help="skip the install checks")
    args = ap.parse_args(argv)

    unknown = [n for n in args.only if n not in CONTENDERS and n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown name(s): {', '.join(unknown)}")
    contenders = [c for c in CONTENDERS if c in args.only] or list(CONTENDERS)
    # --quick leaves out the profile and the no-deflate variants unless they are named.
    scenarios = [s for s in SCENARIOS if s in args.only] or [
        s for s in SCENARIOS
        if not (args.quick and s in ("profile", "fanout-nodeflate", "hold-nodeflate"))]

    signal.signal(signal.SIGTERM, _on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, NOFILE), hard))
    if not args.no_setup:
        setup()

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"logs-{stamp}"
    logdir.mkdir()
    counts = QUICK if args.quick else FULL
    ctx = Ctx(json.loads(json.dumps(counts)), logdir, Sampler())
    started = time.monotonic()
    doc = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "quick": args.quick, "workers": N_WORKERS, "counts": counts,
        "machine": machine_info(), "versions": versions(),
        "contenders": {c: CONTENDERS[c][1] for c in contenders}, "results": {},
    }
    out_path = RESULTS / f"run-{stamp}{'-quick' if args.quick else ''}.json"
    log(f"results: {out_path.relative_to(ROOT)}; logs: {logdir.relative_to(ROOT)}")

    def save() -> None:
        doc["elapsed_s"] = round(time.monotonic() - started, 1)
        out_path.write_text(json.dumps(doc, indent=1))
        shutil.copyfile(out_path, RESULTS / ("latest-quick.json" if args.quick else "latest.json"))

    try:
        for cname in contenders:
            todo = [s for s in scenarios if s in PLAN[cname]]
            if not todo:
                continue
            doc["results"][cname] = {}
            for sname in todo:
                log(f"{cname}: {sname}")
                srv = None
                t0 = time.monotonic()
                load_before = os.getloadavg()
                try:
                    srv = CONTENDERS[cname][0](logdir)
                    r = SCENARIO_FUNCS[sname](ctx, srv)
                    rs = _restarts(srv)
                    if rs is not None:
                        r["imcluster_workers"] = rs
                        if rs["restarts"]:
                            log(f"  NOTE: imcluster workers restarted {rs['restarts']} times")
                    if not srv.alive():
                        r["server_died"] = True
                        log("  NOTE: a server process died during the scenario")
                    problems = srv.log_problems()
                    if problems:
                        r["server_log_problems"] = problems
                        log(f"  NOTE: the server logged {sum(problems.values())} error/warning "
                            f"lines: {_top(problems)}")
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - record and go on
                    log(f"  FAILED: {type(e).__name__}: {e}")
                    r = {"error": f"{type(e).__name__}: {e}"}
                finally:
                    if srv is not None:
                        srv.stop()
                r["scenario_wall_s"] = round(time.monotonic() - t0, 1)
                r["loadavg_before"] = load_before
                doc["results"][cname][sname] = r
                save()
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        doc["interrupted"] = True
    finally:
        stop_all()
        save()
    log(f"done in {doc['elapsed_s']:.0f}s: {out_path.relative_to(ROOT)}")

    make_docs = args.docs if args.docs is not None else (not args.quick and not args.only)
    if make_docs and not doc.get("interrupted"):
        sys.path.insert(0, str(BENCH))
        import report

        report.render(doc, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "benchmarks.png")
        log("wrote docs/benchmarks.md and docs/benchmarks.png")
    return 1 if doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
