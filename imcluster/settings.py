"""Every setting, declared once: type, default, validation and help.

The declarations build the `imcluster run` options, the IMCLUSTER_* environment
variables and the config file reader. Precedence: command line, then
environment, then config file, then the default.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imcluster.sid import MAX_HOST_ID


class SettingError(ValueError):
    """A setting has a value we refuse; the message names the setting and its source."""


def _whole(v: Any) -> int:
    """An int from a TOML int or a string of digits; a clear error otherwise."""
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError("must be a whole number")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None


def _positive_int(v: Any) -> int:
    n = _whole(v)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _non_negative_int(v: Any) -> int:
    n = _whole(v)
    if n < 0:
        raise ValueError("must be 0 or more")
    return n


def _finite_float(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if not math.isfinite(x):
        raise ValueError("must be a number of seconds (not inf or nan)")
    return x


def _positive_float(v: Any) -> float:
    x = _finite_float(v)
    if not x > 0:
        raise ValueError("must be greater than 0")
    return x


def _non_negative_float(v: Any) -> float:
    x = _finite_float(v)
    if not x >= 0:
        raise ValueError("must be 0 or more")
    return x


# The longest --recovery-window: one day. socket.io's own default is 2 minutes;
# past a day the state would outlive any client's reconnection backoff, the
# master would keep a disconnected session's state that long, and Redis refuses
# an expiry whose milliseconds overflow (1e12 s did).
MAX_RECOVERY_WINDOW = 86400.0


def _recovery_window(v: Any) -> float:
    x = _non_negative_float(v)
    if x > MAX_RECOVERY_WINDOW:
        raise ValueError(f"at most {MAX_RECOVERY_WINDOW:.0f} seconds (one day)")
    return x


def _host_id(v: Any) -> int:
    n = _whole(v)
    if not 0 <= n <= MAX_HOST_ID:
        raise ValueError(f"must be 0 (one host) or a host number 1..{MAX_HOST_ID}")
    return n


def _bind(v: Any) -> tuple[str, int]:
    s = str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8000")
    host = host.strip("[]") or "127.0.0.1"
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError("port out of range")
    if p == 0:
        raise ValueError("port 0 (any free port) cannot be used: clients, the control "
                         "socket's name and HAProxy all need to know the port; give one")
    return host, p


REDIS_SCHEMES = ("redis", "rediss", "unix")
# A Redis Cluster's seed nodes (workers/redis_cluster.py: sharded pub/sub).
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def _redis_url(v: Any) -> str | None:
    """A Redis URL as redis-py's from_url takes it; checked here, so that a typo is
    one line at start rather than a worker failing to import the app."""
    s = _optional_str(v)
    if s is None:
        return None
    u = urllib.parse.urlsplit(s)
    if u.scheme not in REDIS_SCHEMES + REDIS_CLUSTER_SCHEMES:
        raise ValueError("expected redis://HOST:PORT/DB, rediss://…, unix:///PATH, or "
                         "redis+cluster://HOST:PORT for a Redis Cluster "
                         f"(scheme {u.scheme or 'missing'!r})")
    if u.scheme in REDIS_CLUSTER_SCHEMES and u.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has database 0 only")
    if u.scheme in REDIS_SCHEMES[:2] and not re.fullmatch(r"/?|/[0-9]{1,5}", u.path):
        raise ValueError(f"the database {u.path[1:]!r} is not a number (redis://HOST:PORT/DB, "
                         "DB 0, 1, …)")
    try:
        u.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    return s


def _redis_urls(v: Any) -> str | None:
    """One Redis URL, or several separated by commas (the interest scheme
    spreads its channels over them); each checked as `_redis_url` does."""
    s = _optional_str(v)
    if s is None:
        return None
    urls = [u.strip() for u in s.split(",")]
    if any(not u for u in urls):
        raise ValueError("an empty URL in the list (two commas, or one at an end)")
    checked = [_redis_url(u) for u in urls]
    cluster = {urllib.parse.urlsplit(u).scheme in REDIS_CLUSTER_SCHEMES for u in checked}
    if len(cluster) > 1:
        raise ValueError("redis+cluster:// URLs name seed nodes of one Redis Cluster: "
                         "not to be mixed with standalone servers")
    return ",".join(checked)


def is_redis_cluster(urls: str | None) -> bool:
    """Whether a checked `--redis` value names a Redis Cluster."""
    return bool(urls) and urllib.parse.urlsplit(urls.split(",")[0]).scheme in \
        REDIS_CLUSTER_SCHEMES


REDIS_CHANNELS = ("single", "interest")


def _redis_channels(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in REDIS_CHANNELS:
        raise ValueError("single or interest")
    return s


REDIS_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _redis_channel(v: Any) -> str:
    """A base channel name: the interest channels are made from it with ':' (ROOM
    channels `NAME:r:...`), so ':' in it could make one app's channel another's."""
    s = str(v).strip()
    if not REDIS_CHANNEL_NAME.fullmatch(s):
        raise ValueError("1 to 64 letters, digits, '_', '.' or '-'")
    return s


def _optional_bind(v: Any) -> tuple[str, int] | None:
    if v is None or str(v).strip().lower() in ("", "no", "off"):
        return None
    return _bind(v)


def _log_level(v: Any) -> str:
    s = str(v).upper()
    if s not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("one of debug, info, warning, error")
    return s


def _optional_str(v: Any) -> str | None:
    s = str(v).strip() if v is not None else ""
    return s or None


# sun_path is 108 bytes on Linux, its last one the terminating NUL (unix(7)).
MAX_SOCKET_PATH = 107


def _socket_path(v: Any) -> str | None:
    s = _optional_str(v)
    if s is not None and len(os.fsencode(s)) > MAX_SOCKET_PATH:
        raise ValueError(f"a Unix socket path has at most {MAX_SOCKET_PATH} bytes "
                         f"(this one has {len(os.fsencode(s))}): choose a shorter one")
    return s


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "yes", "true", "on"):
        return True
    if s in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


def _origins(v: Any) -> str | list[str] | None:
    if isinstance(v, list):
        items = [str(x).strip() for x in v]
    else:
        s = str(v).strip()
        if s == "*":
            return "*"
        items = [x.strip() for x in s.split(",")]
    items = [x.rstrip("/") for x in items if x]
    for x in items:
        if not re.fullmatch(r"https?://[^/\s]+", x):
            raise ValueError(f"{x!r} is not an origin like https://chat.example.com")
    return items or None


# The most workers one master runs (worker ids are 12 bits, and every worker is
# a process of its own: past a few per core they cost memory and start-up time).
MAX_WORKERS = 256


def _workers(v: Any) -> int:
    n = _positive_int(v)
    if n > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS}")
    return n


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    flag: str = ""
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "IMCLUSTER_" + self.name.upper()

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("workers", _workers, _default_workers,
            f"worker processes, 1..{MAX_WORKERS} (default: one per CPU)", metavar="N"),
    Setting("bind", _bind, "127.0.0.1:8000",
            "HOST:PORT the master listens on (default 127.0.0.1:8000; use 0.0.0.0 to serve "
            "beyond this host)", metavar="HOST:PORT"),
    Setting("host_id", _host_id, 0,
            "this host's number among several behind one router (1..4095, unique per "
            "host); every sid names it, and a request whose sid names another host gets "
            "400. 0 (the default): one host, no router", metavar="N"),
    Setting("redis", _redis_urls, None,
            "Redis URL for cross-worker and cross-host broadcasts; without it the master "
            "relays broadcasts between its own workers. Several URLs, comma-separated, "
            "with --redis-channels interest: channels spread over those servers (every "
            "host must list the same servers in the same order). A Redis Cluster (7.0 or "
            "later), with --redis-channels interest: redis+cluster://HOST:PORT (or "
            "rediss+cluster://), one or more seed nodes: channels spread over its masters "
            "by hash slot with sharded pub/sub (SSUBSCRIBE/SPUBLISH) and follow slot "
            "moves and failovers", metavar="URL[,URL...]"),
    Setting("redis_channels", _redis_channels, "single",
            "how broadcasts use Redis: 'single', every worker hears every broadcast on one "
            "channel (python-socketio's); 'interest', a worker hears a room's broadcasts "
            "only while it has a member there (per-room, per-worker and per-namespace "
            "channels, see docs/several-hosts.md). Every host sharing a Redis must use the "
            "same scheme", metavar="single|interest"),
    Setting("redis_channel", _redis_channel, "socketio",
            "name of the Redis pub/sub channel (python-socketio's channel= of its "
            "RedisManager; with --redis-channels interest the base of every channel's "
            "name) and of the recovery keys. Redis pub/sub ignores the database number in "
            "the URL: apps or environments (staging, production) that share a Redis "
            "server each need a name of their own, or they hear each other's broadcasts. "
            "An external socketio.RedisManager emitter must use the same channel=",
            metavar="NAME"),
    Setting("redis_silence_timeout", _positive_float, 15.0,
            "seconds a worker's Redis subscription may go without a message or an answer "
            "to its PING (sent every third of this) before the worker drops the "
            "connection, reconnects and resubscribes (a NAT or firewall that dropped the "
            "flow, a frozen Redis)", metavar="SECONDS"),
    Setting("recovery_window", _recovery_window, 0.0,
            "seconds a client that lost its connection (network, killed worker) may take "
            "to come back with Socket.IO connection state recovery (pid and offset, "
            "socket.io >= 4.6 clients that ask for it): same sid, rooms, session data and "
            "the broadcasts it missed. 0 (the default): off; at most 86400 (one day). Kept "
            "in the master (relay), or in Redis with --redis", metavar="SECONDS"),
    Setting("header_timeout", _positive_float, 10.0,
            "seconds a new connection has to send its request line before the master "
            "answers 408 and closes it; the worker then gives its headers as long again "
            "from the hand-off (and each further request's head from its request line)",
            metavar="SECONDS"),
    Setting("max_pending", _positive_int, 1024,
            "connections the master holds while waiting for their request line; past it "
            "the oldest is closed", metavar="N"),
    Setting("max_queued", _positive_int, 4096,
            "client sockets the master may queue for busy workers before it stops "
            "accepting", metavar="N"),
    Setting("handoff_window", _positive_int, 256,
            "client sockets passed to a worker that it has not yet confirmed; more wait "
            "in the master, which re-routes them if that worker dies", metavar="N"),
    Setting("keepalive", _positive_float, 75.0,
            "seconds a worker keeps an idle keep-alive HTTP connection open", metavar="SECONDS"),
    Setting("graceful_timeout", _positive_float, 10.0,
            "seconds a stopping worker gets to finish before it is killed", metavar="SECONDS"),
    Setting("ready_timeout", _positive_float, 30.0,
            "seconds a new worker has to import the app and say READY; a reload whose "
            "new worker misses it is abandoned", metavar="SECONDS"),
    Setting("max_starting", _workers, _default_workers,
            "workers that may import the app at the same time; more wait their turn "
            "(QUEUED in status), so that scaling to many workers on few CPUs does not "
            "make every import, and the master, wait on all the others (default: one "
            "per CPU)", metavar="N"),
    Setting("heartbeat_timeout", _positive_float, 10.0,
            "seconds of silence on its channel after which a worker counts as hung "
            "(blocked event loop): it gets no more requests and is replaced",
            metavar="SECONDS"),
    Setting("max_memory", _non_negative_int, 0,
            "RSS in MiB above which a worker is replaced by a graceful reload of its "
            "slot (0: no limit); a worker already above it fresh (at READY) is not "
            "(said once, as an ERROR)", metavar="MIB"),
    Setting("ws_compression", _bool, False,
            "accept WebSocket permessage-deflate when clients offer it (browsers and the JS "
            "client do); off by default: it deflates every message once per client, which "
            "is what limits room broadcasts", metavar="yes|no"),
    Setting("handover", _bool, False,
            "when a worker retires (reload, scale down, memory limit), move each of its "
            "sessions (WebSocket or long-polling) to a READY worker, socket and all, "
            "instead of closing it "
            "(clients see no reconnect); off by default: what the app keeps by sid outside "
            "save_session stays behind (see the README)", metavar="yes|no"),
    Setting("cors_origins", _origins, None,
            "origins allowed to connect from a browser besides the server's own, "
            "comma-separated, or '*'; default: the app's own setting (python-socketio's "
            "default is the server's own origin only)", metavar="ORIGINS"),
    Setting("allow_untested_versions", _bool, False,
            "let workers run python-socketio, python-engineio, eventlet, redis, psutil or "
            "prometheus_client "
            "newer than the versions imcluster is tested with (setup.cfg), with a warning; "
            "without it a worker refuses them at start. Older ones are always refused",
            metavar="yes|no"),
    Setting("control", _socket_path, None,
            "path of the control socket (default: imcluster-PORT.sock in $XDG_RUNTIME_DIR or "
            "/tmp)", metavar="PATH"),
    Setting("metrics", _optional_bind, None,
            "HOST:PORT where the master serves Prometheus metrics at /metrics (default: "
            "off); keep it on a private address", metavar="HOST:PORT"),
    Setting("log_level", _log_level, "INFO", "debug, info, warning or error", metavar="LEVEL"),
)

BY_NAME = {s.name: s for s in SETTINGS}


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # What `imcluster run` serves (MODULE:ATTR, ...): its argument, else
    # IMCLUSTER_APP, else the config file's `app`; None: the chat demo.
    app: str | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per setting; unset options stay None so lower layers show through."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (env IMCLUSTER_CONFIG); keys are the setting "
                             "names, e.g. workers = 4")
    for s in SETTINGS:
        default = s.default() if callable(s.default) else s.default
        if isinstance(default, tuple):
            default = ":".join(map(str, default))
        parser.add_argument(s.option, dest=s.name, default=None, metavar=s.metavar,
                            help=f"{s.help} [env {s.env}; default {default}]")


def resolve(args: argparse.Namespace | None = None,
            environ: dict[str, str] | None = None) -> Config:
    """Merge command line, environment, config file and defaults; validate all of it."""
    environ = os.environ if environ is None else environ
    cli = vars(args) if args is not None else {}
    path = cli.get("config") or environ.get("IMCLUSTER_CONFIG")
    file_values: dict[str, Any] = {}
    file_app = None
    if path:
        try:
            with open(path, "rb") as f:
                file_values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SettingError(f"config file {path}: {e}") from None
        section = file_values.get("imcluster")
        if isinstance(section, dict):
            file_values = section
        file_values = dict(file_values)
        file_app = file_values.pop("app", None)
        if file_app is not None and not (isinstance(file_app, str) and file_app.strip()):
            raise SettingError(f"config file {path}: app = {file_app!r}: expected what "
                               "`imcluster run` takes, e.g. app = \"myapp:sio\"")
        unknown = sorted(set(file_values) - set(BY_NAME))
        if unknown:
            # Keys are the settings' names (graceful_timeout); a user who copies the
            # option (graceful-timeout) gets the name to write.
            named = [f"{k} (write {k.replace('-', '_')})" if k.replace("-", "_") in BY_NAME
                     else k for k in unknown]
            raise SettingError(f"config file {path}: unknown setting(s): {', '.join(named)}")
    cfg = Config()
    for app, source in ((cli.get("app"), "argument"),
                        (environ.get("IMCLUSTER_APP"), "IMCLUSTER_APP"),
                        (file_app, f"{path}: app")):
        if app:
            cfg.app, cfg.sources["app"] = app, source
            break
    for s in SETTINGS:
        if cli.get(s.name) is not None:
            raw, source = cli[s.name], s.option
        elif s.env in environ:
            raw, source = environ[s.env], s.env
        elif s.name in file_values:
            raw, source = file_values[s.name], f"{path}: {s.name}"
        else:
            raw, source = (s.default() if callable(s.default) else s.default), "default"
        try:
            cfg.values[s.name] = raw if source == "default" else s.parse(raw)
        except (TypeError, ValueError) as e:
            raise SettingError(f"{source}={raw!r}: {e}") from None
        cfg.sources[s.name] = source
    if (is_redis_cluster(cfg.values["redis"])
            and cfg.values["redis_channels"] != "interest"):
        raise SettingError(f"{cfg.sources['redis']}: a Redis Cluster (redis+cluster://) needs "
                           "--redis-channels interest (its channels spread over the "
                           "cluster's masters by hash slot)")
    if (cfg.values["redis"] and "," in cfg.values["redis"]
            and cfg.values["redis_channels"] != "interest"):
        raise SettingError(f"{cfg.sources['redis']}: several Redis servers need "
                           "--redis-channels interest (with 'single' every worker hears one "
                           "channel, on one server)")
    if cfg.values["redis_channels"] == "interest" and not cfg.values["redis"]:
        raise SettingError(f"{cfg.sources['redis_channels']}: interest channels are Redis "
                           "channels: give --redis URL too (without Redis the master relays "
                           "broadcasts and there are no channels to choose)")
    if (cfg.values["redis"] and cfg.values["recovery_window"]
            and cfg.values["redis_channels"] == "interest"):
        raise SettingError(f"{cfg.sources['recovery_window']}: connection state recovery "
                           "with Redis needs --redis-channels single (its offsets order the "
                           "one channel every worker hears; interest channels have no "
                           "single order)")
    if isinstance(cfg.values["bind"], str):
        cfg.values["bind"] = _bind(cfg.values["bind"])
    if cfg.values["control"] is None:
        cfg.values["control"] = default_control_paths(cfg.values["bind"][1], environ)[0]
    return cfg


def default_control_paths(port: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """Where `imcluster run` puts its control socket when --control is not given, and
    where the other verbs look for it: `imcluster-PORT.sock` in $XDG_RUNTIME_DIR
    (`run` puts it there when that is set), then in /tmp (where `run` puts it
    without one: under supervisord, cron or sudo the master often has no
    XDG_RUNTIME_DIR while the operator's shell has one). The first is `run`'s."""
    environ = os.environ if environ is None else environ
    name = f"imcluster-{port}.sock"
    paths = [os.path.join(base, name) for base in (environ.get("XDG_RUNTIME_DIR"), "/tmp")
             if base]
    return list(dict.fromkeys(paths))


def find_control(port: int, environ: Mapping[str, str] | None = None) -> str:
    """The default control path of a master bound to `port` that exists, looked for
    in default_control_paths' order; the first of them if none does (its error
    then names every place looked)."""
    paths = default_control_paths(port, environ)
    return next((p for p in paths if os.path.exists(p)), paths[0])
