#!/usr/bin/env python3
"""What the front costs per held connection: memory and descriptors.

    .venv/bin/python benchmarks/front_cost.py [--clients 2000]

Starts one imcluster host (bench app, 2 workers, on 127.0.0.2) and, in turn, each
front before it on 127.0.0.1: HAProxy with the config `imcluster haproxy-config`
prints (plain, then with `--cert`, a self-signed certificate, the clients on
wss://), and nginx (Debian's, proxying WebSocket upgrades to the host). For each,
it reads the front's resident memory (VmRSS, every process of it) and open
descriptors from /proc with no client, then with N official JS clients holding a
WebSocket through it (tests/js/clients.mjs, hold mode), and prints one JSON line
per front. Memory and descriptors only: CPU figures from a shared machine say
nothing. Everything on loopback, stopped by pid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imcluster.testing import Cluster, free_port

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;
    uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{host};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 60s;
            proxy_buffering off;
        }}
    }}
}}
"""


def tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's workers)."""
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                out += tree(int(p))
    return out


def usage(pid: int) -> dict:
    """VmRSS (KiB) and open descriptors, summed over the process tree."""
    rss = fds = 0
    for p in tree(pid):
        with open(f"/proc/{p}/status") as f:
            rss += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        fds += len(os.listdir(f"/proc/{p}/fd"))
    return {"rss_kib": rss, "fds": fds}


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"front exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def settle(pid: int, seconds: float = 3.0) -> dict:
    """Usage once it stops moving (the front may still be closing idle connections)."""
    last = usage(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        last = usage(pid)
    return last


def hold(url: str, n: int, ca: str | None) -> tuple[subprocess.Popen, int]:
    opts = {"url": url, "clients": n, "transport": "websocket", "mode": "hold", "wave": 50,
            "timeout_ms": 60000}
    if ca:
        opts["ca_file"] = ca
    proc = subprocess.Popen(["node", str(JS / "clients.mjs"), json.dumps(opts)], cwd=JS,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, json.loads(line)["held"] if line else 0


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def measure(name: str, argv: list[str], port: int, url: str, n: int, ca: str | None,
            d: Path) -> dict:
    log = open(d / f"{name}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        idle = settle(proc.pid)
        clients, held = hold(url, n, ca)
        try:
            loaded = settle(proc.pid)
        finally:
            release(clients)
        per = {k: round((loaded[k] - idle[k]) / held, 2) if held else None for k in idle}
        return {"front": name, "held": held, "idle": idle, "loaded": loaded, "per_conn": per}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="front-cost-"))
    ip = "127.0.0.2"
    host = Cluster("imcluster.examples.bench:sio", 2, host_id=1, bind=f"{ip}:{free_port(ip)}",
                   log_dir=d)
    print(json.dumps({"machine": f"{platform.node()}, {os.cpu_count()} cores, "
                      f"{platform.platform()}", "date": dt.date.today().isoformat(),
                      "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True,
                                                text=True).stdout.splitlines()[0]}),
          flush=True)
    with host:
        address = host.url.removeprefix("http://")
        key, cert, pem = d / "key.pem", d / "cert.pem", d / "site.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True)
        pem.write_text(cert.read_text() + key.read_text())
        for name, tls in (("haproxy", False), ("haproxy-tls", True)):
            port = free_port()
            extra = ["--cert", str(pem)] if tls else []
            cfg = subprocess.run([sys.executable, "-m", "imcluster", "haproxy-config",
                                  "--bind", f"127.0.0.1:{port}", "--map", str(d / "h.map"),
                                  "--socket", str(d / f"{name}.sock"), "--maxconn", "6000",
                                  *extra, f"1={address}"],
                                 capture_output=True, text=True, check=True).stdout
            (d / f"{name}.cfg").write_text(cfg)
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            r = measure(name, ["haproxy", "-db", "-f", str(d / f"{name}.cfg")], port, url,
                        args.clients, str(cert) if tls else None, d)
            print(json.dumps(r), flush=True)
        if shutil.which("nginx"):
            port = free_port()
            (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port, host=address))
            r = measure("nginx", ["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], port,
                        f"http://127.0.0.1:{port}", args.clients, None, d)
            print(json.dumps(r), flush=True)
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
