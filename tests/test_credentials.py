"""No secret on a command line or in the log.

The Redis password, given the way the README asks (IMCLUSTER_REDIS or the
config file), must not show in any process's command line (world-readable
through /proc and ps), in the cluster's log, or in `imcluster status`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import RedisProcess, wait_for
from pyclients import one_per_worker

from imcluster.redact import RedactingFormatter, redact, redact_url

WORKERS = 3


@pytest.mark.parametrize("url, shown", [
    ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
    ("redis://:s3cret@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
    ("rediss://default:s3cret@cache.example:6380", "rediss://default:***@cache.example:6380"),
    ("redis://:p@ss:w@rd@127.0.0.1/0", "redis://:***@127.0.0.1/0"),  # raw '@' in it
    ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    ("redis://127.0.0.1/0?password=s3cret&db=1", "redis://127.0.0.1/0?password=***&db=1"),
    ("redis://h/0?db=1&Password=s3cret", "redis://h/0?db=1&Password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing to hide
    ("redis://user@127.0.0.1:6379/0", "redis://user@127.0.0.1:6379/0"),
])
def test_redact_masks_the_password_of_a_url(url, shown):
    assert redact_url(url) == shown
    assert redact(f"cannot reach {url} now") == f"cannot reach {shown} now"


def test_redact_leaves_other_text_and_none_alone():
    text = "slot 1: worker pid 42 READY at 12:30:01 (http://127.0.0.1:8000/socket.io/)"
    assert redact(text) == text
    assert redact_url(None) is None


def test_log_lines_and_tracebacks_are_redacted():
    fmt = RedactingFormatter("%(message)s")
    try:
        raise ValueError("redis://:s3cret@h/0 refused")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "using %s", (
            "redis://u:s3cret@h/0",), sys.exc_info())
    out = fmt.format(record)
    assert "s3cret" not in out and "using redis://u:***@h/0" in out
    assert "ValueError: redis://:***@h/0 refused" in out


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    password = "pw-" + uuid.uuid4().hex
    r = RedisProcess(tmp_path, config=(f"requirepass {password}",))
    r.start()
    yield r, password
    r.stop()


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def test_redis_password_from_the_environment_is_never_shown(cluster_factory, private_redis,
                                                            tmp_path):
    redis, password = private_redis
    url = f"redis://:{password}@127.0.0.1:{redis.port}/0"
    cluster = cluster_factory(workers=WORKERS, env={"IMCLUSTER_REDIS": url})
    workers = cluster.wait_ready()
    # Broadcasts really go through this Redis (so the password reached the
    # workers): a room with a member on every worker hears one message.
    room = f"c-{uuid.uuid4().hex[:8]}"
    members = one_per_worker(cluster.url, "websocket", room)
    try:
        members[0].sio.emit("say", {"room": room, "text": "hello", "ts": 0})
        wait_for(lambda: all(any(m["text"] == "hello" for m in c.said) for c in members), 10,
                 what="the room message on every worker")
    finally:
        for c in members:
            c.close()
    pids = [cluster.pid] + [w["pid"] for w in workers]
    assert len(set(pids)) == WORKERS + 1
    for pid in pids:
        assert password not in cmdline(pid), f"pid {pid}: {cmdline(pid)}"
    for w in workers:  # the worker's command line still says what it is
        assert f"--slot {w['slot']} --worker-id {w['worker_id']}" in cmdline(w["pid"])

    st = cluster.status()
    assert st["master"]["broadcast"] == "redis"
    assert st["master"]["redis"] == f"redis://:***@127.0.0.1:{redis.port}/0"

    shown = [subprocess.run([sys.executable, "-m", "imcluster", "status", "--control",
                             cluster.control, *extra], capture_output=True, text=True,
                            timeout=30) for extra in ((), ("--json",))]
    for out in shown:
        assert out.returncode == 0, out.stderr
        assert password not in out.stdout + out.stderr
    assert f"broadcasts redis redis://:***@127.0.0.1:{redis.port}/0" in shown[0].stdout
    assert json.loads(shown[1].stdout)["master"]["redis"].startswith("redis://:***@")

    assert cluster.stop() == 0
    log = cluster.log()
    assert f"(redis redis://:***@127.0.0.1:{redis.port}/0)" in log  # the start line
    assert password not in log, [line for line in log.splitlines() if password in line]


def test_password_on_the_command_line_is_warned_about(cluster_factory, private_redis):
    redis, password = private_redis
    cluster = cluster_factory(workers=1, redis=f"redis://:{password}@127.0.0.1:{redis.port}/0")
    cluster.wait_ready()
    assert cluster.stop() == 0
    log = cluster.log()
    assert "the Redis password is on the command line" in log and password not in log
