"""What the remote drivers share on top of ``requests``: a pooled session and one retrying request.

:class:`HttpClient` holds the session (pooled, ``User-Agent: ndfs/<version>``,
an optional ``Authorization: Token …`` header that never appears in a repr, a
log line or an error message, even when a server echoes it back), the
(connect, read) timeouts and the retry policy: connection errors, timeouts,
undecodable bodies and HTTP 429/500/502/503/504 are retried ``retries`` times
after ``backoff_s * 2**n`` seconds (full jitter, capped at ``backoff_cap_s``, at
least ``Retry-After``). Every other status is turned into
an NdfsError by the driver's ``error_for(resp, method, path)``.

Thread-safe: requests' Session with a pool sized for ``workers`` threads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from ndfs.core.urls import is_loopback, mask_url, url_secrets  # noqa: F401  (re-exported)
from ndfs.core.errors import BackendError, BadInput, BadRegion, NdfsError, NotFound, PermissionDenied, Timeout, TooLarge

log = logging.getLogger("ndfs.http")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


_warned_plain: set[str] = set()
_warned_lock = threading.Lock()


def warn_plain_http(url: str, name: str) -> None:
    """Log once per host that a token goes over plain http to a host that is not this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or is_loopback(host):
        return
    with _warned_lock:
        if host in _warned_plain:
            return
        _warned_plain.add(host)
    log.warning("%s: the token goes to %s over plain http, readable by anyone on the way; use https",
                name, host)


class Retryable(Exception):
    """A failed attempt worth repeating; carries the NdfsError raised if it is the last one."""

    def __init__(self, error: NdfsError, retry_after_s: float = 0.0):
        super().__init__(str(error))
        self.error, self.retry_after_s = error, retry_after_s


def retry_after(resp) -> float:
    """Seconds from a ``Retry-After`` header (0 when absent or a date)."""
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else 0.0


class HttpClient:
    """One service's session and retry policy. ``name`` prefixes error messages (e.g. "NeuroData")."""

    def __init__(self, name: str, base_url: str, token: str | None, error_for: Callable, *,
                 timeout_s: float = 30.0, connect_timeout_s: float = 10.0, retries: int = 4,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0, workers: int = 8):
        import requests
        from requests.adapters import HTTPAdapter

        from ndfs.core.version import __version__

        self.name, self.base_url, self.error_for = name, base_url, error_for
        self.timeout = (float(connect_timeout_s), float(timeout_s))
        self.retries, self.backoff_s, self.backoff_cap_s = int(retries), float(backoff_s), float(backoff_cap_s)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=int(workers) + 2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"ndfs/{__version__}"
        # only to keep them out of error messages (see _scrub): the token, and a token in the URL's user-info
        self._secrets = sorted({t for t in [token or ""] + url_secrets(base_url) if t}, key=len, reverse=True)
        if token:
            self.session.headers["Authorization"] = f"Token {token}"
        if self._secrets:
            warn_plain_http(base_url, name)
        self._random = random.Random()
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:
        return f"HttpClient({self.name!r}, {mask_url(self.base_url)!r})"

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        self.session.close()

    def _scrub(self, error: NdfsError) -> NdfsError:
        """The error with the token masked: a server or proxy may echo request headers in its answer,
        and requests names the URL (with its user-info) in some of its errors."""
        message = error.message
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return error if message == error.message else type(error)(message, errno=error.errno)

    def request(self, method: str, path: str, *, expect: int | tuple[int, ...] = 200, data=None, headers=None, params=None,
                decode: Callable | None = None, retry: bool = True):
        """One logical request; returns ``decode(response)`` or the response.

        ``expect`` is the status of a good answer, or a tuple of them (a conditional request takes 200 and
        304). ``decode`` raising ValueError, or the BadInput/TooLarge of a refusing
        :mod:`ndfs.formats.safe` decoder, counts as a retryable bad answer. ``retry=False``
        sends once (for calls that are not idempotent).
        """
        import requests

        url = self.base_url + path
        good = expect if isinstance(expect, tuple) else (expect,)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            with self._lock:
                self._counts["requests"] += 1
                self._counts["retries"] += attempt > 0
            started = time.monotonic()
            try:
                try:
                    resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                                timeout=self.timeout, allow_redirects=False)
                except requests.Timeout as exc:
                    raise Retryable(Timeout(f"{self.name} {method} {path}: no answer within "
                                            f"{self.timeout[1]:g} s ({type(exc).__name__})")) from exc
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    raise Retryable(self._scrub(BackendError(f"{self.name} {method} {path}: connection failed: "
                                                             f"{exc}"))) from exc
                except requests.RequestException as exc:
                    raise self._scrub(BackendError(f"{self.name} {method} {path}: {exc}")) from exc
                log.debug("%s %s -> %d in %.3f s", method, path, resp.status_code, time.monotonic() - started)
                if resp.status_code not in good:
                    error = self._scrub(self.error_for(resp, method, path))
                    if resp.status_code in RETRY_STATUS:
                        raise Retryable(error, retry_after(resp))
                    raise error
                if decode is None:
                    return resp
                try:
                    return decode(resp)
                except (ValueError, BadInput, TooLarge) as exc:
                    raise Retryable(self._scrub(BackendError(f"{self.name} {method} {path}: unusable answer: "
                                                             f"{exc}"))) from exc
            except Retryable as failed:
                if attempt == attempts - 1:
                    raise failed.error from failed.__cause__
                delay = self._random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2**attempt))
                delay = min(self.backoff_cap_s, max(delay, failed.retry_after_s))
                log.info("retrying %s %s in %.2f s: %s", method, path, delay, failed.error)
                time.sleep(delay)
        raise AssertionError("unreachable")


def status_error(status: int, message: str) -> NdfsError:
    """The error for an HTTP error status as every datastore means it: 400 BadRegion, 401/403
    PermissionDenied, 404 NotFound, 413 TooLarge, anything else BackendError. Drivers tell
    their service's special answers apart first. Pure."""
    if status in (401, 403):
        return PermissionDenied(message)
    kind = {400: BadRegion, 404: NotFound, 413: TooLarge}.get(status, BackendError)
    return kind(message)


class HttpDriver:
    """What the BOSS, DVID and NeuroData drivers share around their ``_client`` (HttpClient) and ``_pool``:
    a repr that masks the token, the request counts, and closing both."""

    url: str
    _token: str | None
    _client: HttpClient

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r}, token={'***' if self._token else None})"

    @property
    def has_token(self) -> bool:
        """Whether requests carry a token (the token itself is never shown)."""
        return bool(self._token)

    @property
    def http_stats(self) -> dict[str, int]:
        """HTTP requests sent and retried by this backend (a snapshot)."""
        return self._client.stats

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def run_parallel(pool, tasks: list[Callable[[], None]]) -> None:
    """Run tasks on a ThreadPoolExecutor (inline when there is one); raise the first error, cancelling the rest."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    if len(tasks) == 1:
        tasks[0]()
        return
    futures = [pool.submit(task) for task in tasks]
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for f in pending:
        f.cancel()
    wait(pending)
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()
