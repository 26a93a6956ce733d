"""Plain python-socketio on eventlet, serving imcluster's bench app unchanged.

The contenders (a), (b) and (c) of the benchmarks are one or more of these:

  (a) one process:                 pysio.py --port P
  (b) pm2-style, N processes:      pysio.py --port P --reuseport --redis URL   (N times)
  (c) behind nginx, N processes:   pysio.py --port Pi --redis URL              (one port each)

It is what a user would write without imcluster: eventlet.wsgi.server on a
listening socket, the app `imcluster.examples.bench:sio` (no cluster code in
it), and socketio.RedisManager when several processes must share broadcasts.
"""

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import eventlet.wsgi  # noqa: E402
import socketio  # noqa: E402

from imcluster.examples import bench  # noqa: E402

# Same as an imcluster worker's pool: eventlet's default (1024 greenthreads)
# would cap a process at 1024 connections.
MAX_CONNECTIONS = 100_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reuseport", action="store_true",
                   help="set SO_REUSEPORT so that several processes share the port")
    p.add_argument("--redis", help="Redis URL for cross-process broadcasts")
    args = p.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sio = bench.sio
    if args.redis:
        mgr = socketio.RedisManager(args.redis)
        mgr.set_server(sio)
        sio.manager = mgr
        # Listen now, not at the first connection (as imcluster's workers do).
        sio.manager_initialized = True
        mgr.initialize()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    print(json.dumps({"listening": f"http://{args.host}:{args.port}", "pid": os.getpid()}),
          flush=True)
    eventlet.wsgi.server(sock, bench.app, log_output=False, max_size=MAX_CONNECTIONS,
                         debug=False, socket_timeout=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
