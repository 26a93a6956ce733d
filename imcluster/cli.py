"""The `imcluster` command: run the cluster, and talk to a running one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from imcluster import __version__, settings
from imcluster.control import Control, ControlError, ControlRefused, ReloadTimeout, StopTimeout
from imcluster.redact import redact, setup_logging

# LSB status codes, as supervisorctl uses them.
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imcluster", description=(
        "A multi-process Socket.IO server: one master owns the port and hands every "
        "connection to the worker that owns its session."))
    p.add_argument("--version", action="version", version=f"imcluster {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the master and its workers (foreground)",
                         description="Start the master and its workers in the foreground.")
    run.add_argument("app", nargs="?", metavar="MODULE:ATTR",
                     help="what serves your Socket.IO app: a socketio.Server or WSGIApp, a "
                          "Flask app (Flask-SocketIO or socketio.WSGIApp in its chain), a "
                          "flask_socketio.SocketIO, Django's application, any WSGI middleware "
                          "around one, or a factory call like 'app:create_app()'; MODULE is "
                          "imported from the current folder, ATTR defaults to app [env "
                          "IMCLUSTER_APP, or app = \"...\" in the config file; default: the "
                          "chat demo]")
    settings.add_arguments(run)

    for name, text in (("status", "show the master and every worker"),
                       ("reload", "replace every worker, one at a time, with no downtime"),
                       ("scale", "change the number of workers: N, +N or -N"),
                       ("stop", "stop gracefully"),
                       ("drain", "tell the router in front (HAProxy) to send this host no "
                                 "new sessions; its sessions stay"),
                       ("undrain", "end a drain: the host takes new sessions again")):
        c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        c.add_argument("--control", metavar="PATH", help="control socket path (as given to run)")
        c.add_argument("--bind", metavar="HOST:PORT", help="find the default control socket "
                       "from the port given to run")
        c.add_argument("--config", metavar="FILE", help="the config file given to run")
        if name == "status":
            c.add_argument("--json", action="store_true", help="print JSON")
        if name == "reload":
            c.add_argument("--no-wait", action="store_true",
                           help="return once the reload has started")
            c.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                           help="give up waiting after this long (default 600)")
        if name == "scale":
            c.add_argument("to", metavar="N|+N|-N", type=_scale_target)
        if name == "stop":
            c.add_argument("--no-wait", action="store_true",
                           help="return once the stop has started")
            c.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                           help="give up waiting after this long (default 120)")

    hc = sub.add_parser(
        "haproxy-config", help="print a haproxy.cfg that routes several hosts by sid",
        description="Print a complete, commented haproxy.cfg for several imcluster hosts "
                    "behind one address, and write the map file it reads (sid prefix -> "
                    "host). Each host runs `imcluster run --host-id ID`.")
    hc.add_argument("--bind", required=True, metavar="HOST:PORT",
                    help="where HAProxy listens for clients")
    hc.add_argument("hosts", nargs="+", metavar="ID=HOST:PORT",
                    help="each host: its --host-id and the address of its master")
    _haproxy_paths(hc)
    hc.add_argument("--cert", metavar="PEM", help="end TLS at HAProxy with this certificate "
                    "(certificate and key in one PEM file): clients use https:// and wss://")
    hc.add_argument("--maxconn", type=int, default=100_000, metavar="N",
                    help="connections one HAProxy holds at once (default 100000)")
    hh = sub.add_parser(
        "haproxy-host", help="add, drain, ready or remove a host in a running HAProxy",
        description="Change the hosts of a running HAProxy (configured by haproxy-config) "
                    "through its runtime API, without a reload, and keep the map file in "
                    "step.")
    hh.add_argument("action", choices=("add", "drain", "ready", "remove"))
    hh.add_argument("host", metavar="ID[=HOST:PORT]", help="the host (add needs its address)")
    _haproxy_paths(hh)
    hh.add_argument("--dry-run", action="store_true",
                    help="print the runtime-API commands instead of sending them")
    return p


def _scale_target(text: str) -> str:
    """argparse type of `scale`'s argument: N (a count, at least 1), +N or -N
    (N at least 1: `+0` and `-0` change nothing, most likely a typo for +10 or
    -10, so they are refused like `0` rather than answered with a silent no-op)."""
    if not re.fullmatch(r"[+-]0*[1-9][0-9]{0,5}|0*[1-9][0-9]{0,5}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of workers: give N, +N or -N, with N 1 or more")
    return text


def _haproxy_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", default="/etc/haproxy/imcluster-hosts.map", metavar="FILE",
                   help="the map file (default /etc/haproxy/imcluster-hosts.map)")
    p.add_argument("--socket", default="/run/haproxy/imcluster-admin.sock", metavar="PATH",
                   help="HAProxy's runtime-API socket (default "
                        "/run/haproxy/imcluster-admin.sock)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`imcluster status | head -1`): nothing more to say.
        # Point stdout at /dev/null so the interpreter's final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "haproxy-config":
        return _haproxy_config(args, argv if argv is not None else sys.argv[1:])
    if args.command == "haproxy-host":
        return _haproxy_host(args)
    try:
        cfg = settings.resolve(args)
    except settings.SettingError as e:
        print(f"imcluster: {redact(str(e))}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(args, cfg)
    if cfg.sources["control"] == "default":
        ctl = Control.for_port(cfg.bind[1])
    else:
        ctl = Control(cfg.control)
    try:
        if args.command == "status":
            return _status(ctl, args.json)
        if args.command == "reload":
            return _reload(ctl, args.no_wait, args.timeout)
        if args.command == "scale":
            answer = ctl.request("scale", to=args.to)
            n = int(answer["workers"])
            line = f"scaling to {n} worker{'' if n == 1 else 's'}"
            if answer.get("deferred"):
                line += " once the reload in progress ends"
                if answer.get("replaces") is not None:
                    line += f" (replacing the scale to {answer['replaces']} asked before)"
            print(line)
            return 0
        if args.command in ("drain", "undrain"):
            code = ctl.drain(args.command == "drain")
            print(f"{'drained' if args.command == 'drain' else 'drain ended'}: "
                  f"the readiness check answers {code}")
            return 0
        if args.no_wait:
            ctl.stop(wait=False)
            print("stopping")
            return 0
        try:
            ctl.stop(wait=True, timeout=args.timeout)
        except StopTimeout as e:
            print(f"imcluster: {e}", file=sys.stderr)
            return 1
        print("stopped")
        return 0
    except ControlRefused as e:
        print(f"imcluster: refused: {e}", file=sys.stderr)
        return 1
    except ControlError as e:
        print(f"imcluster: {e}", file=sys.stderr)
        if args.command == "status" and args.json:
            # A script parsing the output gets JSON here too, not an empty string.
            print(json.dumps({"error": str(e), "reachable": False}))
        return STATUS_UNKNOWN


def _run(args: argparse.Namespace, cfg: settings.Config) -> int:
    setup_logging(cfg.log_level, "%(asctime)s [master pid %(process)d] %(levelname)s %(message)s")
    if cfg.redis and redact(cfg.redis) != cfg.redis and cfg.sources["redis"] == "--redis":
        logging.getLogger("imcluster.master").warning(
            "the Redis password is on the command line, where every user of this host can "
            "read it (ps); give it in IMCLUSTER_REDIS or the config file instead")
    from imcluster.master.loop import Master  # not needed by the other verbs

    return Master(cfg, cfg.app).run()


def _haproxy_config(args: argparse.Namespace, argv: list[str]) -> int:
    from imcluster import haproxy

    try:
        hosts = [haproxy.parse_host(h) for h in args.hosts]
        haproxy.check_hosts(hosts)
        settings.BY_NAME["bind"].parse(args.bind)
        warning = haproxy.check_cert(args.cert) if args.cert else None
    except ValueError as e:
        print(f"imcluster: {e}", file=sys.stderr)
        return 2
    try:
        with open(args.map, "w") as f:
            f.write(haproxy.host_map(hosts))
    except OSError as e:
        print(f"imcluster: cannot write the map file {args.map}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    shown = " ".join(a for a in argv[1:])
    sys.stdout.write(haproxy.config(args.bind, hosts, args.map, args.socket, args.cert,
                                    args.maxconn, shown))
    if warning:
        print(f"imcluster: warning: {warning}", file=sys.stderr)
    print(f"imcluster: wrote {args.map} ({len(hosts)} host{'' if len(hosts) == 1 else 's'})",
          file=sys.stderr)
    return 0


def _haproxy_host(args: argparse.Namespace) -> int:
    from imcluster import haproxy

    try:
        if args.action == "add":
            host = haproxy.parse_host(args.host)
        else:
            host = haproxy.parse_host_id(args.host)
        commands = haproxy.runtime_commands(args.action, host, args.map)
    except ValueError as e:
        print(f"imcluster: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for c in commands:
            print(f"echo '{c}' | socat stdio {args.socket}")
        return 0
    for c in commands:
        try:
            answer = haproxy.apply(args.socket, c)
        except (OSError, RuntimeError) as e:
            print(f"imcluster: {c}: {e}", file=sys.stderr)
            return 1
        print(f"{c}: {answer or 'done'}")
    if args.action in ("add", "remove"):
        _update_map_file(args.map, host, args.action == "add")
        print(f"{args.map} updated; regenerate haproxy.cfg with the new list of hosts "
              "before HAProxy's next reload")
    return 0


def _update_map_file(path: str, host, add: bool) -> None:
    """Keep the map file in step with the runtime map (a reload reads the file)."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        lines = []
    lines = [ln for ln in lines if ln.split()[:1] != [host.prefix]]
    if add:
        lines.append(f"{host.prefix} {host.server}\n")
    try:
        with open(path, "w") as f:
            f.writelines(lines)
    except OSError as e:
        print(f"imcluster: cannot update {path}: {e.strerror or e}", file=sys.stderr)


def _reload(ctl: Control, no_wait: bool, timeout: float) -> int:
    try:
        result = ctl.reload(wait=not no_wait, timeout=timeout)
    except ReloadTimeout as e:
        print(f"imcluster: {e}", file=sys.stderr)
        return 1
    if result is None:
        print("reload started")
        return 0
    if result.ok:
        print(f"reload complete: {result.replaced} worker(s) replaced")
        return 0
    print(f"imcluster: reload failed: {result.error} (the old workers keep serving)",
          file=sys.stderr)
    return 1


def _status(ctl: Control, as_json: bool) -> int:
    status = ctl.status()
    st = status.raw
    code = STATUS_RUNNING if status.ready else STATUS_NOT_RUNNING
    if as_json:
        print(json.dumps(st, indent=2))
        return code
    m = st["master"]
    broadcasts = m["broadcast"] + (f" {m['redis']}" if m.get("redis") else "") + (
        f" ({m['redis_channels']} channels" + (
            f" on '{m['redis_channel']}')" if m.get("redis_channel") else ")")
        if m.get("redis_channels") else "")
    print(f"master  pid {m['pid']}  up {_dur(m['uptime'])}  fds {m['fds']}  "
          f"bind {m['bind']}  broadcasts {broadcasts}  pending {m['pending']}"
          + (f"  host {m['host_id']}" if m.get("host_id") else "")
          + ("  DRAINED" if m.get("drained") else "")
          + ("  STOPPING" if m["stopping"] else ""))
    cols = ("slot", "pid", "state", "uptime", "restarts", "cpu", "rss", "conns", "sessions")
    rows = [cols]
    for w in st["workers"]:
        rows.append((
            str(w["slot"]) + ("*" if w["retired"] else "+" if w["replacement"] else ""),
            str(w["pid"] or "-"), w["state"],
            _dur(w["uptime"]), str(w["restarts"]),
            "-" if w["cpu"] is None else f"{w['cpu']:.0f}%",
            "-" if w["rss"] is None else f"{w['rss'] / 2**20:.1f}M",
            _dash(w["connections"]), _dash(w["sessions"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    for w in st["workers"]:
        if w.get("broadcast") not in (None, "ok"):
            print(f"slot {w['slot']}: redis {w['broadcast']}: broadcasts between this worker "
                  "and the others are not getting through")
        if w["last_error"]:
            print(f"slot {w['slot']}: {w['last_error']}")
    if any(w["retired"] or w["replacement"] for w in st["workers"]):
        print("* retired, draining   + replacement, starting")
    # The forwarding map names worker ids (the ones in sids); the table shows slots and
    # pids, so each line names the holder by its slot and pid, one line per holder.
    holders: dict[int, list[dict]] = {}
    for f in st.get("forwarding") or ():
        holders.setdefault(f["to"], []).append(f)
    by_id = {w.get("worker_id"): w for w in st["workers"]}
    for to, fs in holders.items():
        w = by_id.get(to)
        where = f"slot {w['slot']} (pid {w['pid']})" if w else f"worker {to}"
        n = sum(f["sessions"] for f in fs)
        ids = ", ".join(str(f["from"]) for f in fs[:8])
        if len(fs) > 8:
            ids += f" and {len(fs) - 8} more"
        print(f"forwarding: {where} holds the sessions handed over from retired "
              f"worker{'s' if len(fs) > 1 else ''} {ids} ({n} session{'' if n == 1 else 's'} "
              "handed over in all)")
    if st.get("reload"):
        r = st["reload"]
        print(f"reload in progress ({r['reason']}): slot {r['slot']} {r['phase']}, "
              f"{len(r['queued'])} more queued"
              + (f"; then scaling to {r['scale_to']} worker{'' if r['scale_to'] == 1 else 's'}"
                 if r.get("scale_to") is not None else ""))
    elif st.get("last_reload") and not st["last_reload"]["ok"]:
        print(f"last reload FAILED: {st['last_reload']['error']}")
    return code


def _dash(v: object) -> str:
    return "-" if v is None else str(v)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


if __name__ == "__main__":
    sys.exit(main())
