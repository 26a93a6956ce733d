"""Reading the first line of an HTTP request without consuming it.

The master and the workers both look at the request line of a request that
is still in the socket's receive queue (MSG_PEEK) to learn which worker owns
it. This module only parses bytes; it never touches a socket.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from imcluster import sid as sidcodec

MAX_REQUEST_LINE = 8192
# The master answers this path itself, before routing: the host's readiness
# for the router in front of several hosts (HAProxy's `option httpchk`).
READY_PATH = "/_imcluster/ready"

# RFC 9110 token characters for the method; the target is any run of visible
# ASCII; the version is HTTP/1.0 or HTTP/1.1 (HTTP/0.9 and 2.0 are not
# spoken here: a client that sends them gets a 400).
_REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) ([\x21-\x7e]{1,8190}) HTTP/1\.([01])\r?\n"
)


class Incomplete(Exception):
    """Not enough bytes yet to tell."""


class BadRequest(Exception):
    """The bytes are not an HTTP/1.x request line we will serve."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestLine(NamedTuple):
    """A parsed request line (a tuple: one is made for every request routed)."""

    method: str
    target: str
    version: str
    sid: str | None

    @property
    def is_handshake(self) -> bool:
        """An Engine.IO request that starts a new session (it names no sid)."""
        return self.sid is None and ("?EIO=" in self.target or "&EIO=" in self.target)

    @property
    def is_readiness(self) -> bool:
        """A health check of this host (READY_PATH, any query), answered by the master;
        in origin-form or in absolute-form (`http://host:port/_imcluster/ready`,
        which RFC 9112 §3.2.2 says a server MUST accept)."""
        target = self.target
        if target[:1] != "/":
            target = origin_form(target)
        return target.startswith(READY_PATH) and target[len(READY_PATH):][:1] in ("", "?")

    @property
    def owner(self) -> tuple[int, int] | None:
        """(host id, worker id) this request's sid names, or None (new session, or
        not one of our sids)."""
        return sidcodec.owner_of(self.sid) if self.sid else None

    @property
    def worker_id(self) -> int | None:
        """The worker this request's sid names, or None (new session, or not ours)."""
        owner = self.owner
        return None if owner is None else owner[1]

    @property
    def host_id(self) -> int | None:
        """The host this request's sid names, or None (new session, or not ours)."""
        owner = self.owner
        return None if owner is None else owner[0]


def parse(data: bytes, limit: int = MAX_REQUEST_LINE) -> RequestLine:
    """Parse the request line at the start of `data`.

    Raises Incomplete when more bytes are needed, BadRequest (with the HTTP
    status to answer) when the bytes can never become a valid request line.
    Never raises anything else, whatever `data` holds.
    """
    # The usual case: a whole line at the very start. The line's LF is the
    # first in `data` (no part of the pattern admits one), so this is exactly
    # what the general path below finds.
    m = _REQUEST_LINE.match(data)
    if m is not None and m.end() <= limit:
        return _request_line(m)
    # Tolerate the empty lines RFC 9112 lets a client send before a request.
    start = 0
    while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        start += 2 if data.startswith(b"\r\n", start) else 1
    end = data.find(b"\n", start)
    if end < 0:
        if len(data) - start >= limit:
            raise BadRequest(414, "Request-URI Too Long")
        _check_prefix(data[start:])
        raise Incomplete()
    if end - start >= limit:
        raise BadRequest(414, "Request-URI Too Long")
    m = _REQUEST_LINE.fullmatch(data, start, end + 1)
    if m is None:
        raise BadRequest(400, "Bad Request")
    return _request_line(m)


def _request_line(m: re.Match) -> RequestLine:
    method, target, minor = m.group(1, 2, 3)
    target = target.decode("ascii")
    return RequestLine(method.decode("ascii"), target,
                       "HTTP/1.1" if minor == b"1" else "HTTP/1.0", sid_from_target(target))


def _check_prefix(partial: bytes) -> None:
    """Fail early on bytes that cannot start a request line (TLS, binary junk)."""
    sp = partial.find(b" ")
    method = partial if sp < 0 else partial[:sp]
    if len(method) > 32 or not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*", method):
        raise BadRequest(400, "Bad Request")
    if sp >= 0 and re.search(rb"[^\x21-\x7e HTP/.0-9\r]", partial[sp + 1:]):
        raise BadRequest(400, "Bad Request")


def split_absolute(target: str) -> tuple[str, str] | None:
    """(authority, origin-form) of a request target in absolute-form, else None.

    RFC 9112 §3.2.2: a server MUST accept `http://host:port/path?query` (what
    a client sends to a proxy, `curl --proxy`), route it as `/path?query` (an
    empty path is "/") and take the host from it rather than from Host.
    """
    lower = target[:8].lower()
    if lower.startswith("http://"):
        rest = target[7:]
    elif lower.startswith("https://"):
        rest = target[8:]
    else:
        return None
    cut = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    authority = authority.rpartition("@")[2]  # no userinfo (RFC 9110 §4.2.4)
    return authority, path if path.startswith("/") else "/" + path


def origin_form(target: str) -> str:
    """`target` in origin-form: the path and query of an absolute-form target
    (`split_absolute`), any other target unchanged."""
    parts = split_absolute(target)
    return target if parts is None else parts[1]


def sid_from_target(target: str) -> str | None:
    """The value of the first non-empty `sid` query parameter of a request target.

    The one python-engineio reads: it parses the query with `parse_qs`, which
    drops blank values, so `?sid=&sid=X` names session X there too.
    """
    q = target.find("sid=")  # (a handshake names none: the common case ends here)
    if q < 0:
        return None
    q = target.find("?")
    if q < 0:
        return None
    frag = target.find("#", q)
    query = target[q + 1:] if frag < 0 else target[q + 1:frag]
    for pair in query.split("&"):
        if pair.startswith("sid=") and len(pair) > 4:
            return unquote(pair[4:]) or None
    return None
