"""URLs with secrets in them: mask a token in user-info, tell loopback hosts. Pure functions."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", re.S)


def mask_url(url: str) -> str:
    """The URL with its user-info (``user:secret@``, a token) shown as ``***@``; anything else unchanged. Pure."""
    m = _AUTHORITY.match(url or "")
    if not m or "@" not in m.group(2):
        return url
    return m.group(1) + "***@" + m.group(2).rpartition("@")[2] + m.group(3)


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL's user-info, as written and decoded (to mask them in messages). Pure."""
    m = _AUTHORITY.match(url or "")
    if not m or "@" not in m.group(2):
        return []
    info = m.group(2).rpartition("@")[0]
    user, colon, password = info.partition(":")
    found = [info, password] if colon else [info]
    return [t for s in found for t in {s, unquote(s)} if t]


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1); a host name is not known to be. Pure."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
