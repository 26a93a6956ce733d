"""Engine.IO session ids that name the worker which made them.

A sid is 15 bytes, base64url-encoded to Engine.IO's usual 20 characters:
2 bytes of worker id (big-endian) followed by 13 random bytes (104 bits).
The worker id is unique per worker process for the master's lifetime (not per
slot), so a worker that replaced another in the same slot never receives the
old worker's sessions: it answers them "unknown session" like any stranger,
and a draining worker keeps its own sessions until it exits.
"""

from __future__ import annotations

import base64
import binascii
import secrets

SID_LENGTH = 20
RANDOM_BYTES = 13
MAX_WORKER_ID = 0xFFFF


def make_sid(worker_id: int) -> str:
    """Return a fresh URL-safe sid that routes to `worker_id`."""
    if not 0 <= worker_id <= MAX_WORKER_ID:
        raise ValueError(f"worker id out of range: {worker_id}")
    raw = worker_id.to_bytes(2, "big") + secrets.token_bytes(RANDOM_BYTES)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def worker_of(sid: str | bytes) -> int | None:
    """Return the worker id a sid names, or None if it is not one of ours.

    Never raises: any input that is not exactly 20 base64url characters
    (forged, truncated, another server's sid) gives None.
    """
    if isinstance(sid, str):
        try:
            sid = sid.encode("ascii")
        except UnicodeEncodeError:
            return None
    if len(sid) != SID_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(sid)
    except (binascii.Error, ValueError):
        return None
    # b64decode tolerates characters outside the alphabet in some modes;
    # a round trip proves the sid is canonical.
    if len(raw) != 2 + RANDOM_BYTES or base64.urlsafe_b64encode(raw) != sid:
        return None
    return int.from_bytes(raw[:2], "big")
