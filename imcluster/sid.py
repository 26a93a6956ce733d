"""Engine.IO session ids that name the host and the worker which made them.

A sid is 15 bytes, base64url-encoded to Engine.IO's usual 20 characters: a
24-bit prefix `host_id << 12 | worker_id` (big-endian), then 12 random bytes
(96 bits; design.md, invariant 8). Three bytes are exactly four base64
characters, so the prefix never shares a character with the random part:
the first two characters name the host alone (`host_prefix`) and the next two
the worker. A router in front of several hosts (HAProxy, with a map from the
first two characters to a server) matches a host as a plain string, and the
master of each host matches the worker. Host 0 is the single host of a
cluster run without `--host-id`; its sids start with "AA".

The worker id is unique per worker process while the master runs (not per
slot), so a worker that replaced another in the same slot never receives the
old worker's sessions: it answers them "unknown session" like any stranger,
and a draining worker keeps its own sessions until it exits.
"""

from __future__ import annotations

import base64
import re
import secrets

SID_LENGTH = 20
PREFIX_LENGTH = 2  # characters of a sid that name its host
RANDOM_BYTES = 12
HOST_BITS = WORKER_BITS = 12
MAX_HOST_ID = (1 << HOST_BITS) - 1
MAX_WORKER_ID = (1 << WORKER_BITS) - 1
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def make_sid(worker_id: int, host_id: int = 0) -> str:
    """Return a fresh URL-safe sid that routes to `worker_id` on `host_id`.

    ValueError when either is outside 0..4095.
    """
    if not 0 <= worker_id <= MAX_WORKER_ID:
        raise ValueError(f"worker id out of range 0..{MAX_WORKER_ID}: {worker_id}")
    if not 0 <= host_id <= MAX_HOST_ID:
        raise ValueError(f"host id out of range 0..{MAX_HOST_ID}: {host_id}")
    prefix = (host_id << WORKER_BITS | worker_id).to_bytes(3, "big")
    return base64.urlsafe_b64encode(prefix + secrets.token_bytes(RANDOM_BYTES)).decode("ascii")


def host_prefix(host_id: int) -> str:
    """The two characters every sid of `host_id` starts with (host 1: "AB")."""
    if not 0 <= host_id <= MAX_HOST_ID:
        raise ValueError(f"host id out of range 0..{MAX_HOST_ID}: {host_id}")
    return _ALPHABET[host_id >> 6] + _ALPHABET[host_id & 63]


def owner_of(sid: str | bytes) -> tuple[int, int] | None:
    """Return (host id, worker id) that a sid names, or None if it is not one of ours.

    Never raises: any input that is not exactly 20 base64url characters
    (forged, truncated, another server's sid) gives None.
    """
    # 20 characters of the alphabet are always canonical base64 (120 bits, 15
    # bytes, no padding bits): the check is the alphabet, and the 24-bit prefix
    # is the first four characters, six bits each.
    if len(sid) != SID_LENGTH:
        return None
    if isinstance(sid, str):
        if _SID_TEXT.fullmatch(sid) is None:
            return None
    elif _SID_BYTES.fullmatch(sid) is None:
        return None
    v = _VALUE
    return v[sid[0]] << 6 | v[sid[1]], v[sid[2]] << 6 | v[sid[3]]


_SID_TEXT = re.compile(rf"[A-Za-z0-9_-]{{{SID_LENGTH}}}")
_SID_BYTES = re.compile(rb"[A-Za-z0-9_-]{%d}" % SID_LENGTH)
# A base64url character's value, by the character (str) and by its code (bytes).
_VALUE = {**{c: i for i, c in enumerate(_ALPHABET)},
          **{ord(c): i for i, c in enumerate(_ALPHABET)}}


def worker_of(sid: str | bytes) -> int | None:
    """The worker id a sid names (whatever its host), or None; never raises."""
    owner = owner_of(sid)
    return None if owner is None else owner[1]


def host_of(sid: str | bytes) -> int | None:
    """The host id a sid names, or None; never raises."""
    owner = owner_of(sid)
    return None if owner is None else owner[0]
