#!/usr/bin/env python3
"""The cost of a long-polling request through the cluster: master and worker apart.

    .venv/bin/python benchmarks/callgrind_poll.py [--tree TREE] [--server imcluster|pysio]
        [--mode echo|handshake] [--requests 400] [--warmup 100]
    .venv/bin/python benchmarks/callgrind_poll.py --wall [--clients 4] [--seconds 10]
        [--tree TREE]...
    .venv/bin/python benchmarks/callgrind_poll.py --syscalls [--server imcluster|pysio]
        [--clients 4] [--seconds 5] [--tree TREE]...

Default (callgrind): starts `imcluster run imcluster.examples.bench:sio
--workers 1` from TREE (its .venv) under `valgrind --tool=callgrind`, children
traced, or with `--server pysio` one plain python-socketio process
(benchmarks/servers/pysio.py) on the same app. The client speaks Engine.IO v4
long-polling by hand over raw sockets, one TCP connection per request and
`Connection: close`, as Node's socket.io-client does (it never reuses a
connection for polling): for imcluster every request is a hand-off by the
master. `--mode echo` opens one session and repeats POST `42["echo",...]`
then GET for the ack; `--mode handshake` repeats whole polling handshakes
(open, POST CONNECT, GET the CONNECT reply). After `warmup` requests it zeroes
each server process's counters (callgrind_control -z), sends `requests` more
and dumps. Prints instructions (Ir) per request for the master ("front") and
the worker apart, and "net": less what the same processes execute in the same
time with no request at all (the master's 0.25 s tick, heartbeats; a run under
valgrind takes minutes, so this is not small). User space only: the kernel's
share of accept, recv and sendmsg is not in it (that is what `--wall` sees).
Python under valgrind runs ~50x slower: keep the counts small. `--annotate N` also prints the N
functions of the master with the most inclusive instructions.

`--wall`: no valgrind. Each TREE given (`--tree A --tree B ...`, e.g. a
baseline and the working tree) is started in turn, `--rounds` times,
interleaved, so both see the same neighbours on a shared machine; `clients`
threads loop polling echo for `seconds`, and it prints the master's CPU
seconds (user + system, psutil; system apart) per hand-off (the master's own
counter) and the worker's per request, with each tree's median ratio to the
first.

`--syscalls`: no valgrind either. Each TREE (and `--server pysio`, one
python-socketio process, for comparison) serves `clients` threads looping
polling echo; in one window of `seconds` it reads each server process's
context switches (voluntary and not, summed over its threads, from
/proc/PID/task/*/status) and CPU seconds; in a second window it counts every
system call each process enters with `perf stat -e 'syscalls:sys_enter_*'`
(kernel tracepoints: no ptrace stop per call, unlike strace, so the
processes' timing and batching are about as without it). Prints both per
request (for the master: per hand-off), syscall by syscall. Needs perf and
root (or perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

PAYLOAD = "x" * 64
BASE = "/socket.io/?EIO=4&transport=polling"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: str | None = None) -> str:
    """One HTTP/1.1 request on a new connection, as Node's polling transport sends it."""
    data = body.encode() if body is not None else b""
    head = (f"{method} {path}&t={time.monotonic_ns() % 10**9:x} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAccept: */*\r\nConnection: close\r\n")
    if body is not None:
        head += f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(data)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        s.sendall(head.encode() + b"\r\n" + data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    resp = b"".join(chunks)
    status_line, _, rest = resp.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    if b" 200 " not in status_line + b" ":
        raise RuntimeError(f"{method} {path}: {resp[:300]!r}")
    return content.decode()


def polling_open(port: int) -> str:
    """A whole polling handshake (3 requests); returns the Engine.IO sid."""
    sid = json.loads(request(port, "GET", BASE)[1:])["sid"]
    request(port, "POST", f"{BASE}&sid={sid}", "40")
    for pkt in request(port, "GET", f"{BASE}&sid={sid}").split("\x1e"):
        if pkt.startswith("40{"):
            return sid
    raise RuntimeError("no CONNECT reply")


def polling_echo(port: int, sid: str, i: int) -> int:
    """One echo with its ack; returns the number of requests it took."""
    path = f"{BASE}&sid={sid}"
    request(port, "POST", path, f'42{i}["echo","{PAYLOAD}"]')
    n = 1
    while True:
        n += 1
        done = False
        for pkt in request(port, "GET", path).split("\x1e"):
            if pkt == "2":  # Engine.IO PING
                n += 1
                request(port, "POST", path, "3")
            elif pkt.startswith(f"43{i}["):
                done = True
            else:
                raise RuntimeError(f"unexpected {pkt!r}")
        if done:
            return n


def work(port: int, mode: str, sid: str, requests: int) -> int:
    """At least `requests` requests of the mode; returns how many were made."""
    made = i = 0
    while made < requests:
        if mode == "echo":
            made += polling_echo(port, sid, i)
        else:
            polling_open(port)
            made += 3
        i += 1
    return made


def server_argv(tree: Path, server: str, port: int) -> list[str]:
    py = str(tree / ".venv/bin/python")
    if server == "pysio":
        return [py, str(tree / "benchmarks/servers/pysio.py"), "--port", str(port)]
    return [py, "-m", "imcluster", "run", "imcluster.examples.bench:sio", "--workers", "1",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--ready-timeout", "600", "--heartbeat-timeout", "300"]


def wait_serving(port: int, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return polling_open(port)
        except (OSError, RuntimeError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def callgrind(a: argparse.Namespace) -> None:
    tree = Path(a.tree[0]).resolve()
    out = Path(tempfile.mkdtemp(prefix="cg-poll-"))
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={out}/cg.%p", "--dump-instr=no"]
    argv += server_argv(tree, a.server, port)
    proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=open(out / "log.txt", "wb"), start_new_session=True)
    try:
        sid = wait_serving(port, 900)
        work(port, a.mode, sid, a.warmup)
        procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        pids = [p.pid for p in procs if "valgrind" in " ".join(p.cmdline())]
        def zero() -> None:
            for pid in pids:
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True,
                               capture_output=True)

        def dump() -> dict[int, int]:
            per = {}
            for pid in pids:
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                               capture_output=True)
                files[pid] = sorted(glob.glob(f"{out}/cg.{pid}.*"), key=os.path.getmtime)[-1]
                with open(files[pid]) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            per[pid] = int(line.split()[1])
            return per

        files: dict[int, str] = {}
        zero()
        t0 = time.monotonic()
        made = work(port, a.mode, sid, a.requests)
        took = time.monotonic() - t0
        per = dump()
        # The same time again with no requests: what the processes spend on their
        # own (timers, heartbeats; under valgrind a run lasts minutes), not per request.
        zero()
        time.sleep(took)
        idle = dump()

        def split(counts: dict[int, int]) -> tuple[int, int]:
            front = counts.get(proc.pid, 0)
            return front, sum(v for p, v in counts.items() if p != proc.pid)

        front, workers = split(per)
        front_idle, workers_idle = split(idle)
        apart = a.server == "imcluster"
        print(json.dumps({
            "tree": str(tree), "server": a.server, "mode": a.mode, "requests": made,
            "seconds": round(took, 1),
            "ir_per_request": round((front + workers) / made),
            "ir_per_request_front": round(front / made) if apart else None,
            "ir_per_request_workers": round(workers / made) if apart else None,
            "idle_ir_per_request_time": round((front_idle + workers_idle) / made),
            "net_ir_per_request": round((front + workers - front_idle - workers_idle) / made),
            "net_ir_per_request_front": round((front - front_idle) / made) if apart else None,
            "net_ir_per_request_workers": round((workers - workers_idle) / made)
            if apart else None,
            "out": str(out)}))
        if a.annotate and a.server == "imcluster":
            r = subprocess.run(["callgrind_annotate", "--inclusive=yes", files[proc.pid]],
                               capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if "(" in ln and ":" in ln]
            print("\n".join(lines[:a.annotate]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def status(tree: Path, port_file: str) -> dict:
    r = subprocess.run([str(tree / ".venv/bin/python"), "-m", "imcluster", "status", "--json",
                        "--control", port_file], capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout)



def _stop(proc: subprocess.Popen) -> None:
    """Stop the server started in its own session: its process group, TERM, then
    KILL after 10 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _looping_clients(port: int, sids: list[str]):
    """One thread per session looping polling echo on it until `stop` is set:
    (stop, counts of requests per thread, errors, the started threads)."""
    stop = threading.Event()
    counts = [0] * len(sids)
    errors: list[str] = []

    def client(k: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                counts[k] += polling_echo(port, sids[k], i)
                i += 1
        except Exception as e:  # report, do not hang the run
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(sids))]
    for t in threads:
        t.start()
    return stop, counts, errors, threads

def wall_once(tree: Path, a: argparse.Namespace) -> dict:
    port = free_port()
    control = tempfile.mktemp(prefix="poll-", suffix=".sock")
    argv = server_argv(tree, "imcluster", port) + ["--control", control]
    proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sids = [wait_serving(port, 60) for _ in range(a.clients)]
        master = psutil.Process(proc.pid)
        worker = master.children()[0]
        stop, counts, errors, threads = _looping_clients(port, sids)
        time.sleep(1.0)  # warm up
        h0 = status(tree, control)["master"]["counters"]["handoffs"]
        m0, w0, r0 = master.cpu_times(), worker.cpu_times(), sum(counts)
        time.sleep(a.seconds)
        m1, w1, r1 = master.cpu_times(), worker.cpu_times(), sum(counts)
        h1 = status(tree, control)["master"]["counters"]["handoffs"]
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        handoffs = h1 - h0
        return {"handoffs": handoffs, "requests": r1 - r0,
                "front_us": 1e6 * (m1.user + m1.system - m0.user - m0.system) / handoffs,
                "front_sys_us": 1e6 * (m1.system - m0.system) / handoffs,
                "worker_us": 1e6 * (w1.user + w1.system - w0.user - w0.system) / (r1 - r0)}
    finally:
        _stop(proc)


def wall(a: argparse.Namespace) -> None:
    trees = [Path(t).resolve() for t in a.tree]
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    for r in range(a.rounds):
        for t in trees:
            res = wall_once(t, a)
            runs[t].append(res)
            print(json.dumps({"round": r, "tree": str(t), **{
                k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}}),
                flush=True)
    first = trees[0]
    for t in trees:
        pairs = list(zip(runs[t], runs[first], strict=True))
        ratios = [x["front_us"] / y["front_us"] for x, y in pairs]
        wratios = [x["worker_us"] / y["worker_us"] for x, y in pairs]
        print(json.dumps({
            "tree": str(t),
            "front_us_median": round(statistics.median(x["front_us"] for x in runs[t]), 1),
            "front_sys_us_median": round(
                statistics.median(x["front_sys_us"] for x in runs[t]), 1),
            "worker_us_median": round(statistics.median(x["worker_us"] for x in runs[t]), 1),
            "front_ratio_to_first": round(statistics.median(ratios), 3),
            "worker_ratio_to_first": round(statistics.median(wratios), 3)}))


def _ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of `pid`."""
    vol = inv = 0
    for st in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(st) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        inv += int(line.split()[1])
        except OSError:
            pass
    return vol, inv


# The syscalls counted one by one (the rest only in the total, raw_syscalls):
# enabling every syscalls:sys_enter_* tracepoint takes perf minutes.
SYSCALLS = ("accept4", "recvfrom", "sendto", "recvmsg", "sendmsg", "close", "shutdown",
            "epoll_wait", "epoll_ctl", "getsockname", "getpeername", "getsockopt",
            "setsockopt", "ioctl", "fcntl", "mmap", "munmap", "read", "write", "futex",
            "wait4", "openat", "newfstatat", "brk", "madvise", "mprotect", "getpid",
            "clock_nanosleep", "select", "poll")


class PerfSyscalls:
    """`perf stat` counting the syscalls one process (all its threads) enters,
    started disabled and switched on and off through its control fifo, so the
    count covers exactly the window between `enable()` and `disable()`."""

    def __init__(self, pid: int):
        self.dir = tempfile.mkdtemp(prefix="perf-poll-")
        ctl, ack = f"{self.dir}/ctl", f"{self.dir}/ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        self.err = open(f"{self.dir}/out", "w+")
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x,", "-D", "-1", "--control", f"fifo:{ctl},{ack}",
             "-e", ",".join(["raw_syscalls:sys_enter"]
                            + [f"syscalls:sys_enter_{c}" for c in SYSCALLS]),
             "-p", str(pid)], stderr=self.err,
            stdout=subprocess.DEVNULL)
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)

    def _say(self, what: bytes) -> None:
        os.write(self.ctl, what + b"\n")
        reply = b""
        while b"ack\n" not in reply:  # perf writes "ack\n\0"
            reply += os.read(self.ack, 64)

    def enable(self) -> None:
        self._say(b"enable")

    def disable(self) -> None:
        self._say(b"disable")

    def counts(self) -> dict[str, int]:
        """Stop perf; {syscall name: times entered while enabled}."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(120)
        os.close(self.ctl)
        os.close(self.ack)
        self.err.seek(0)
        counts = {}
        for line in self.err.read().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].endswith("sys_enter") or \
                    len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
                try:
                    n = int(parts[0])
                except ValueError:
                    continue
                name = parts[2].rpartition("sys_enter")[2].lstrip("_") or "ALL"
                if n:
                    counts[name] = n
        counts["other"] = counts.get("ALL", 0) - sum(
            v for k, v in counts.items() if k != "ALL")
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return counts


def syscalls_once(tree: Path, server: str, a: argparse.Namespace) -> dict:
    port = free_port()
    argv = server_argv(tree, server, port)
    proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sids = [wait_serving(port, 60) for _ in range(a.clients)]
        top = psutil.Process(proc.pid)
        procs = {"master": top, "worker": top.children()[0]} if server == "imcluster" \
            else {"process": top}
        stop, counts, errors, threads = _looping_clients(port, sids)
        time.sleep(1.0)  # warm up
        c0 = {n: (_ctx_switches(p.pid), p.cpu_times()) for n, p in procs.items()}
        r0 = sum(counts)
        time.sleep(a.seconds)
        c1 = {n: (_ctx_switches(p.pid), p.cpu_times()) for n, p in procs.items()}
        r1 = sum(counts)
        perfs = {n: PerfSyscalls(p.pid) for n, p in procs.items()}
        time.sleep(5)  # perf opens its tracepoints
        for pf in perfs.values():
            pf.enable()
        r2 = sum(counts)
        time.sleep(a.seconds)
        r3 = sum(counts)
        for pf in perfs.values():
            pf.disable()
        got = {n: pf.counts() for n, pf in perfs.items()}
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        res: dict = {"server": server, "tree": str(tree), "requests_per_s":
                     round((r1 - r0) / a.seconds)}
        n1, n2 = r1 - r0, r3 - r2
        for n in procs:
            (v0, i0), t0 = c0[n]
            (v1, i1), t1 = c1[n]
            sc = got[n]
            res[n] = {
                "cpu_us": round(1e6 * (t1.user + t1.system - t0.user - t0.system) / n1, 1),
                "sys_us": round(1e6 * (t1.system - t0.system) / n1, 1),
                "vol_cs": round((v1 - v0) / n1, 3), "invol_cs": round((i1 - i0) / n1, 3),
                "syscalls": round(sc.get("ALL", 0) / n2, 3),
                "by_call": {k: round(v / n2, 3)
                            for k, v in sorted(sc.items(), key=lambda kv: -kv[1])
                            if k != "ALL" and v}}
        return res
    finally:
        _stop(proc)


def syscalls(a: argparse.Namespace) -> None:
    servers = [(Path(t).resolve(), "imcluster") for t in a.tree]
    if a.server == "pysio":
        servers.append((Path(a.tree[0]).resolve(), "pysio"))
    for r in range(a.rounds):
        for tree, server in servers:
            print(json.dumps({"round": r, **syscalls_once(tree, server, a)}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=None)
    ap.add_argument("--server", choices=("imcluster", "pysio"), default="imcluster")
    ap.add_argument("--mode", choices=("echo", "handshake"), default="echo")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--annotate", type=int, default=0)
    ap.add_argument("--wall", action="store_true")
    ap.add_argument("--syscalls", action="store_true")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    a.tree = a.tree or ["."]
    if a.syscalls:
        syscalls(a)
    elif a.wall:
        wall(a)
    else:
        callgrind(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
