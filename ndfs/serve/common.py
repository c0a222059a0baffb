"""What every protocol server shares: a real threaded WSGI server and the test knobs around an app.

:class:`WsgiServer` runs a WSGI app on waitress (threaded, keep-alive,
``Content-Length`` on every response), bound at construction so port 0 gives
the real port at once; ``start()`` serves from a background thread (tests),
``serve_forever()`` from the calling thread (the CLI); ``stop()`` ends either.

Around the app, outermost first:

* :class:`RequestCounter` counts requests and body bytes in and out, and keeps
  a bounded log of ``(method, path, status)``;
* :class:`FaultInjector` answers a fraction of requests with a fault: 503, a
  dropped connection (headers promising a body that never comes), by default;
  also a connection reset, a stall, a body cut off mid-way, a short, garbled or
  padded body (see ``FAULT_MODES``), optionally only for paths matching a
  regex, and scripted bursts (``plan``). The fate of a request is a hash of
  the seed, the method, the URL and how often that URL was asked before, so a
  run is deterministic however threads interleave, and a retried request gets
  a fresh draw;
* :class:`Latency` sleeps before each request;
* :class:`BandwidthCap` paces response bodies through one shared budget of
  bytes per second, like one shared link.

Everything here is thread-safe.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ndfs.core.errors import MissingExtra, NdfsError
from ndfs.serve.limits import Limits, guarded_server_class

log = logging.getLogger("ndfs.serve")
WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


#: what FaultInjector can do to a request (see FaultInjector)
FAULT_MODES = ("503", "drop", "reset", "stall", "cut", "truncate", "corrupt", "pad")


@dataclass(frozen=True)
class ServeOptions:
    """Knobs for tests and benchmarks: seconds of latency per request, a bytes/s cap, a fault fraction.

    ``fault_modes`` are the faults drawn from (FAULT_MODES), ``fault_match`` a regex a
    request's path must match to be faulted (empty: every request), ``stall_s`` how
    long a "stall" fault holds its answer.
    """

    latency_s: float = 0.0
    bandwidth_bps: float | None = None
    fault_rate: float = 0.0
    seed: int = 0
    fault_modes: tuple[str, ...] = ("503", "drop")
    fault_match: str = ""
    stall_s: float = 30.0

    def __post_init__(self):
        if self.latency_s < 0 or not 0.0 <= self.fault_rate <= 1.0:
            raise NdfsError("latency must be >= 0 and the fault rate within 0..1")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise NdfsError("the bandwidth cap must be positive")
        bad = [m for m in self.fault_modes if m not in FAULT_MODES]
        if bad or not self.fault_modes:
            raise NdfsError(f"fault modes are some of {', '.join(FAULT_MODES)}, not {bad or 'none'}")
        if self.stall_s < 0:
            raise NdfsError("the stall must be >= 0 seconds")


class RequestCounter:
    """Counts requests, bytes in (request bodies) and bytes out (response bodies); keeps a bounded log."""

    def __init__(self, app: WsgiApp, keep: int = 100_000):
        self.app = app
        self._lock = threading.Lock()
        self._totals = collections.Counter()
        self._log: collections.deque = collections.deque(maxlen=keep)

    def __call__(self, environ, start_response):
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            size_in = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size_in = 0
        with self._lock:
            self._totals["requests"] += 1
            self._totals["bytes_in"] += size_in

        def counting_start_response(status, headers, exc_info=None):
            with self._lock:
                self._log.append((method, path, int(status.split()[0])))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        body = self.app(environ, counting_start_response)
        try:
            for chunk in body:
                with self._lock:
                    self._totals["bytes_out"] += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()

    def note(self, key: str) -> None:
        """Count an event, e.g. an injected fault."""
        with self._lock:
            self._totals[key] += 1

    def snapshot(self) -> dict[str, int]:
        """Totals so far: requests, bytes_in, bytes_out, faults (and any other noted events)."""
        with self._lock:
            return {"requests": 0, "bytes_in": 0, "bytes_out": 0, "faults": 0, **self._totals}

    def count(self, method: str | None = None, contains: str = "", status: int | None = None) -> int:
        """How many logged requests match the method, a substring of the path and the status."""
        with self._lock:
            return sum(1 for m, p, s in self._log
                       if (method is None or m == method) and contains in p and (status is None or s == status))

    def reset(self) -> None:
        with self._lock:
            self._totals.clear()
            self._log.clear()


class FaultInjector:
    """Answers a seeded fraction (``rate``) of requests with a fault; see the module doc.

    Modes (``FAULT_MODES``): ``503`` (a JSON 503), ``drop`` (headers promising
    1 KiB, no body, the connection closes), ``reset`` (the connection is reset
    (RST) before any answer; needs waitress, else it is a ``drop``), ``stall``
    (no answer for ``stall_s`` seconds, then the real one), and on a 200 answer
    with a body: ``cut`` (the real headers, half the body, then the connection
    closes), ``truncate`` (half the body with a matching Content-Length),
    ``corrupt`` (the body replaced by as many seeded garbage bytes) and
    ``pad`` (garbage bytes appended: a body of the wrong length). Only requests
    whose path matches ``match`` (a regex; None: all) are faulted. ``plan(*modes)``
    scripts a burst: the next matching requests get those faults in order,
    whatever the rate. ``rate``, ``modes`` and ``match`` may be changed while
    serving; ``clear()`` stops faulting; ``release()`` ends every stall at once. Thread-safe.
    """

    def __init__(self, app: WsgiApp, rate: float, seed: int, counter: RequestCounter | None = None, *,
                 modes: tuple[str, ...] = ("503", "drop"), match: str | None = None, stall_s: float = 30.0):
        self.app, self.rate, self.seed, self.counter = app, float(rate), int(seed), counter
        self.modes, self.stall_s = tuple(modes), float(stall_s)
        self.match = match or None
        self._lock = threading.Lock()
        self._seen: collections.Counter = collections.Counter()
        self._planned: collections.deque = collections.deque()
        self._released = threading.Event()
        self.injected: collections.Counter = collections.Counter()  # mode -> faults applied

    def plan(self, *modes: str) -> None:
        """The next ``len(modes)`` matching requests fail with these modes, in order (a burst)."""
        bad = [m for m in modes if m not in FAULT_MODES]
        if bad:
            raise ValueError(f"unknown fault mode(s) {bad}; known: {', '.join(FAULT_MODES)}")
        with self._lock:
            self._planned.extend(modes)

    def clear(self) -> None:
        """No more faults: rate 0, no planned burst, every path eligible again."""
        with self._lock:
            self._planned.clear()
            self.rate, self.match = 0.0, None

    def release(self) -> None:
        """End every stall now and from now on (the server is stopping)."""
        self._released.set()

    def _draw(self, environ) -> tuple[float, int]:
        url = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}?{environ.get('QUERY_STRING', '')}"
        with self._lock:
            nth = self._seen[url]
            self._seen[url] += 1
        digest = hashlib.blake2b(f"{self.seed}|{url}|{nth}".encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        return (value >> 1) / 2**63, value

    def _fate(self, environ) -> str | None:
        match = self.match
        if match is not None and not re.search(match, environ.get("PATH_INFO", "")):
            return None
        with self._lock:
            if self._planned:
                return self._planned.popleft()
        if self.rate <= 0:
            return None
        draw, value = self._draw(environ)
        if draw >= self.rate:
            return None
        modes = self.modes
        return modes[(value & 0xFF) % len(modes)]  # two modes: the low bit, as before

    def _noted(self, mode: str) -> None:
        with self._lock:
            self.injected[mode] += 1
        if self.counter is not None:
            self.counter.note("faults")

    def __call__(self, environ, start_response):
        mode = self._fate(environ)
        if mode is None:
            return self.app(environ, start_response)
        if mode in ("503", "drop", "reset"):
            self._noted(mode)
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if mode == "reset" and _reset_connection(environ):
                from waitress.channel import ClientDisconnected

                raise ClientDisconnected("injected connection reset")
            if mode in ("drop", "reset"):  # promise a body, send none: the connection closes after it
                start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "1024")])
                return [b""]
            body = json.dumps({"status": 503, "code": 9002, "message": "injected fault"}).encode()
            start_response("503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if mode == "stall":
            self._noted(mode)
            self._released.wait(self.stall_s)
            return self.app(environ, start_response)
        return self._mangle(mode, environ, start_response)

    def _mangle(self, mode: str, environ, start_response):
        """A body fault: run the app, then cut, shorten, garble or pad a 200 answer's body."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None  # the legacy write() callable; the apps here return iterables

        inner = self.app(environ, capture)
        try:
            body = b"".join(inner)
        finally:
            if hasattr(inner, "close"):
                inner.close()
        status, headers = captured["status"], captured["headers"]
        if not status.startswith("200") or not body:
            start_response(status, headers)  # nothing to mangle: an ordinary answer, not a fault
            return [body]
        self._noted(mode)
        rest = [(k, v) for k, v in headers if k.lower() != "content-length"]
        garbage = hashlib.shake_256(f"{self.seed}|{len(body)}".encode()).digest(len(body))
        if mode == "cut":
            start_response(status, rest + [("Content-Length", str(len(body)))])
            return [body[:len(body) // 2]]
        new = {"truncate": body[:len(body) // 2], "corrupt": garbage, "pad": body + garbage[:64]}[mode]
        start_response(status, rest + [("Content-Length", str(len(new)))])
        return [new]


def _reset_connection(environ) -> bool:
    """Make waitress close this request's connection with a reset (RST) instead of an answer.

    waitress exposes its channel only through ``waitress.client_disconnected``; with
    SO_LINGER 0 its close of the socket sends RST. False where that is not possible.
    """
    channel = getattr(environ.get("waitress.client_disconnected"), "__self__", None)
    sock = getattr(channel, "socket", None)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return False
    return True


class Latency:
    """Sleeps ``seconds`` before handing each request on."""

    def __init__(self, app: WsgiApp, seconds: float):
        self.app, self.seconds = app, float(seconds)

    def __call__(self, environ, start_response):
        time.sleep(self.seconds)
        return self.app(environ, start_response)


class BandwidthCap:
    """Paces response bodies so that all of them together stay within ``bytes_per_s``."""

    piece = 64 * 1024

    def __init__(self, app: WsgiApp, bytes_per_s: float):
        self.app, self.rate = app, float(bytes_per_s)
        self._lock = threading.Lock()
        self._free_at = 0.0

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        try:
            for chunk in body:
                for i in range(0, len(chunk), self.piece):
                    part = chunk[i:i + self.piece]
                    with self._lock:
                        begin = max(time.monotonic(), self._free_at)
                        self._free_at = begin + len(part) / self.rate
                        due = self._free_at
                    time.sleep(max(0.0, due - time.monotonic()))
                    yield part
        finally:
            if hasattr(body, "close"):
                body.close()


def instrument(app: WsgiApp, options: ServeOptions) -> tuple[WsgiApp, RequestCounter]:
    """Wrap an app in the knobs of ``options``; return the wrapped app and its request counter."""
    inner = app
    if options.bandwidth_bps:
        inner = BandwidthCap(inner, options.bandwidth_bps)
    if options.latency_s:
        inner = Latency(inner, options.latency_s)
    counter = RequestCounter(inner)
    # always present (a pass-through at rate 0), so tests can plan faults or raise the rate while serving
    counter.app = FaultInjector(inner, options.fault_rate, options.seed, counter, modes=options.fault_modes,
                                match=options.fault_match or None, stall_s=options.stall_s)
    return counter, counter


class TokenAuth:
    """The API tokens a server accepts (none: every request is accepted). Thread-safe (immutable).

    A request names one in ``Authorization: Token <t>`` or ``Authorization:
    Bearer <t>`` (the scheme in any case); tokens are compared in constant time.
    """

    SCHEMES = ("token", "bearer")

    def __init__(self, tokens: Iterable[str] | None = None):
        self._tokens = tuple(t.encode() for t in (tokens or ()) if t)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __repr__(self) -> str:
        return f"TokenAuth({len(self._tokens)} tokens)"

    def refusal(self, header: str) -> str | None:
        """None when the Authorization header value is accepted, else why not (BOSS's wording)."""
        if not self._tokens:
            return None
        scheme, _, given = (header or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() not in self.SCHEMES or not given:
            return "Authentication credentials were not provided."
        given_bytes = given.encode("utf-8", "surrogateescape")
        return None if any(hmac.compare_digest(given_bytes, t) for t in self._tokens) else "Invalid token."


class WsgiServer:
    """A WSGI app served by waitress on ``host:port`` (port 0: any free port, see ``.port``).

    ``limits`` bound connections and request times (:class:`ndfs.serve.limits.Limits`);
    with the app's ``auth`` (a :class:`TokenAuth`) the server also refuses large
    bodies without a token before reading them.
    """

    def __init__(self, app: WsgiApp, host: str = "127.0.0.1", port: int = 0, *,
                 options: ServeOptions = ServeOptions(), threads: int = 16,
                 max_body_bytes: int = 550 * 2**20, limits: Limits = Limits()):
        try:
            from waitress.adjustments import Adjustments
        except ImportError:
            raise MissingExtra("serving needs waitress: pip install 'ndfs[serve]' (or bash scripts/setup.sh serve)") \
                from None

        self.app = app
        wrapped, self.counter = instrument(app, options)
        self.faults: FaultInjector = self.counter.app  # type: ignore[assignment]
        self._map: dict = {}
        try:
            adj = Adjustments(host=host, port=port, threads=threads, ident="ndfs", asyncore_use_poll=True,
                              max_request_body_size=max_body_bytes, expose_tracebacks=False,
                              connection_limit=limits.max_connections + 1, cleanup_interval=1,
                              channel_timeout=max(1, int(limits.idle_timeout_s)))
            self._server = guarded_server_class()(
                wrapped, map=self._map, adj=adj, sockinfo=adj.listen[0], limits=limits,
                auth=getattr(app, "auth", None), max_body=max_body_bytes)
        except (OSError, ValueError) as exc:
            raise NdfsError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from exc
        self.limits = limits
        self.host, self.port = host, int(self._server.effective_port)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> dict[str, int]:
        """Connections the guard closed, by reason: per-address, full, evicted, headers, body, idle,
        unread, unauthorized (see :mod:`ndfs.serve.limits`)."""
        return dict(self._server.dropped)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve from this thread until stop() (or KeyboardInterrupt); then close every connection."""
        from waitress import wasyncore

        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=0.1, map=self._map, use_poll=True, count=1)
                self._server.tick()
        finally:
            wasyncore.close_all(self._map)
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            self._stopped.set()

    def start(self) -> "WsgiServer":
        """Serve from a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"ndfs-serve-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.faults.release()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "WsgiServer":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
