"""Credentials out of sight: URLs as logs and `status` show them.

A Redis URL may carry a password (`redis://user:secret@host/0`, or
`?password=secret`). Anything that writes a URL where other people can read
it (the log, `imcluster status`, an error message) passes it through here
first. The master also formats every log line through `RedactingFormatter`,
so a URL inside a library's exception text is masked too.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://[user][:password]@ : the password is what follows the first ':'
# of the userinfo (RFC 3986 section 3.2.1), up to the last '@' before the
# path: a password written with a raw '@' in it is masked whole.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^/?#\s]*)@")
# Query parameters that carry a secret (redis-py reads ?password=).
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pass|pwd|secret|token)=)(?P<pw>[^&#\s]*)",
                    re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ``***``.

    `redis://user:pw@host:6379/0` becomes `redis://user:***@host:6379/0`,
    `redis://:pw@host` becomes `redis://:***@host`, and `?password=pw` becomes
    `?password=***`. A URL without a password (`redis://user@host`) and text
    without URLs come back unchanged.
    """
    text = _USERINFO.sub(lambda m: m["head"] + MASK + "@", text)
    return _QUERY.sub(lambda m: m["head"] + MASK, text)


def redact_url(url: str | None) -> str | None:
    """One URL with its password masked (None stays None)."""
    return None if url is None else redact(url)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line (traceback included) goes through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at `level`, every line formatted by a `RedactingFormatter`."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
