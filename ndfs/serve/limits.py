"""The bounds that keep clients, one or many, from exhausting ``ndfs serve``.

Connections and time (:class:`Limits`, enforced by the GuardedServer of
:func:`guarded_server_class`, the waitress server :class:`ndfs.serve.common.WsgiServer` runs):

* at most ``max_connections`` open connections. A new connection past it
  closes the connection that has waited longest without being served (an
  unfinished request, or an idle keep-alive one); when every connection is
  being served, the new one is answered 503. The server never stops
  accepting, so a flood cannot leave legitimate clients in the listen queue;
* at most ``max_connections_per_address`` from one client address (more are
  answered 503 and closed);
* a request's headers must be complete within ``header_timeout_s`` of its
  first byte, and its body within ``body_timeout_s`` plus one second per
  ``body_min_rate`` bytes it declares, however steadily the bytes drip (408,
  then closed); a connection silent for ``idle_timeout_s`` is closed, also
  one that stops reading its answer;
* with tokens configured, a request without an accepted token that announces
  a body of more than ``SCREEN_BODY_BYTES`` is answered 401 as soon as its
  headers are in, without reading (or buffering) the body.

Work (each app holds these): :class:`MemoryBudget`, the bytes that large
requests may hold at once and how many may run at once; :func:`parse_int` and
:func:`check_int`, numbers of a request within a range or a 400;
:func:`read_body`, a body within a route's limit or a 413;
:func:`stream_plan`, a box cut into pieces whose bytes, in order, are the
box's C-order bytes (streamed answers), and the memory making one piece
takes. Refusals are :class:`RequestRefused`, which every app answers in its
protocol's error format.

Thread-safe: the server's guard runs on its one event-loop thread (and its
closing of overdue connections, ``tick()``, between two turns of that loop);
the budget is shared by the worker threads under a condition variable.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator

from ndfs.core.errors import NdfsError
from ndfs.core.geometry import Box

log = logging.getLogger("ndfs.serve")

#: a request without an accepted token may announce at most this many body bytes before its 401
SCREEN_BODY_BYTES = 64 * 1024
#: largest slice of an answer handed to waitress at once (larger ones are sliced, so waitress never
#: copies a whole answer into one more buffer)
ANSWER_SLICE_BYTES = 1 << 20
#: the most connections the server accepts in one turn of its event loop
ACCEPT_BATCH = 64
#: the most request memory a server holds by default (see MemoryBudget)
DEFAULT_REQUEST_MEMORY = 2 * 2**30
#: the most voxel bytes one request may scan (label queries, bounding boxes, scaled reads)
DEFAULT_SCAN_BYTES = 4 * 2**30
#: the most bytes one streamed piece of an answer holds
STREAM_PIECE_BYTES = 16 * 2**20
#: the largest JSON (or other small) request body a route takes
JSON_BODY_BYTES = 16 * 2**20
#: the most ids or points one request may name or ask for
MAX_LIST_ITEMS = 100_000
UINT64_MAX = 2**64 - 1


class RequestRefused(NdfsError):
    """A request past a bound or with an absurd number: answered ``status`` (400, 408, 413 or 503)
    with ``message``, in the protocol's own error format, never a 500."""

    def __init__(self, status: int, message: str):
        import errno

        code = {413: errno.EFBIG, 503: errno.EBUSY}.get(status, errno.EINVAL)
        super().__init__(message, errno=code)
        self.status = int(status)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 32 else f"{text[:24]!r}... ({len(text)} characters)"


_INT_RE = re.compile(r"-?[0-9]+")


def parse_int(text: str, what: str, lo: int = 0, hi: int = UINT64_MAX) -> int:
    """The decimal integer ``text`` (ASCII digits, optional ``-``) within ``lo..hi``; else RequestRefused(400).

    Text of more digits than ``hi`` or ``lo`` has is refused before it is converted,
    so thousands of digits cost nothing.
    """
    if not isinstance(text, str) or not _INT_RE.fullmatch(text):
        raise RequestRefused(400, f"{what} must be a decimal integer, not {_shown(str(text))}")
    digits = len(text.lstrip("-").lstrip("0"))
    if digits > max(len(str(abs(lo))), len(str(abs(hi)))):
        raise RequestRefused(400, f"{what} {_shown(text)} is out of range: it must be within {lo}..{hi}")
    return check_int(int(text), what, lo, hi)


def check_int(value, what: str, lo: int = 0, hi: int = UINT64_MAX) -> int:
    """``value`` if it is an int (not a bool) within ``lo..hi``; else RequestRefused(400)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestRefused(400, f"{what} must be an integer, not {_shown(repr(value))}")
    if not lo <= value <= hi:
        raise RequestRefused(400, f"{what} {_shown(str(value))} is out of range: it must be within {lo}..{hi}")
    return value


def read_body(environ, limit: int, what: str = "the request body") -> bytes:
    """The request body, refused with 413 when it declares more than ``limit`` bytes (before reading it)."""
    text = environ.get("CONTENT_LENGTH") or "0"
    size = parse_int(text, "Content-Length")
    if size > limit:
        raise RequestRefused(413, f"{what} of {size} bytes is over this server's limit of {limit} bytes")
    return environ["wsgi.input"].read(size) if size > 0 else b""


def _plan(box: Box, itemsize: int, max_bytes: int, z_grid: tuple[int, int] | None) -> tuple[int, int]:
    """(axis the pieces step along: 0 z-slabs, 1 rows, 2 parts of rows; the step)."""
    (_, y0, x0), (_, y1, x1) = box.start, box.stop
    row = (x1 - x0) * itemsize
    plane = row * (y1 - y0)
    if plane <= max_bytes:
        step = max(1, max_bytes // max(1, plane))
        if z_grid is not None and step >= z_grid[0]:
            step -= step % z_grid[0]
        return 0, step
    if row <= max_bytes:
        return 1, max(1, max_bytes // row)
    return 2, max(1, max_bytes // itemsize)


def c_order_pieces(box: Box, itemsize: int, max_bytes: int, z_grid: tuple[int, int] | None = None) -> Iterator[Box]:
    """Sub-boxes of ``box`` whose C-order bytes, one after another, are the box's C-order bytes.

    Each piece holds at most ``max_bytes`` (at least one voxel): whole z-planes
    when a plane fits, else rows of one plane, else parts of one row. With
    ``z_grid`` (the store's chunk depth and the z of a chunk boundary), slabs of
    at least one chunk depth end on chunk boundaries, so that reading a piece
    decodes only its own chunks. Pure.
    """
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    axis, step = _plan(box, itemsize, max_bytes, z_grid)
    if axis == 0:
        z = z0
        while z < z1:
            if z_grid is not None and step >= z_grid[0]:
                depth, origin = z_grid
                stop = origin + ((z - origin) // depth + 1) * depth + step - depth  # ends on a chunk boundary
            else:
                stop = z + step
            yield Box((z, y0, x0), (min(stop, z1), y1, x1))
            z = min(stop, z1)
    elif axis == 1:
        for z in range(z0, z1):
            for y in range(y0, y1, step):
                yield Box((z, y, x0), (z + 1, min(y + step, y1), x1))
    else:
        for z in range(z0, z1):
            for y in range(y0, y1):
                for x in range(x0, x1, step):
                    yield Box((z, y, x), (z + 1, y + 1, min(x + step, x1)))


def piece_shape(box: Box, itemsize: int, max_bytes: int, z_grid: tuple[int, int] | None = None) -> tuple:
    """The largest shape of the pieces :func:`c_order_pieces` cuts. Pure."""
    axis, step = _plan(box, itemsize, max_bytes, z_grid)
    shape = list(box.shape)
    for a in range(axis):
        shape[a] = 1
    shape[axis] = min(step, shape[axis])
    return tuple(shape)


def read_cover_bytes(shape, chunk_shape, itemsize: int, aligned_z: bool = False) -> int:
    """At most the bytes of the store chunks that reading a box of ``shape`` decodes, wherever the box
    lies (``aligned_z``: its z range starts and ends on chunk boundaries). Pure."""
    total = itemsize
    for axis, (n, c) in enumerate(zip(shape, chunk_shape)):
        chunks = -(-n // c) if axis == 0 and aligned_z else -(-max(0, n - 1) // c) + 1
        total *= chunks * c
    return total


def stream_plan(box: Box, itemsize: int, chunk_shape, z_origin: int, budget_bytes: int,
                grow: int = 1) -> tuple[Iterator[Box], int]:
    """(pieces, bytes to hold) of an answer made piece by piece: pieces of ``box`` in C order of at most
    STREAM_PIECE_BYTES (less under a small budget: an eighth of it), and what making one takes: three
    copies of a piece (read, assembled, encoded), the store chunks its read decodes, and for a read
    ``grow`` times larger along each axis than its answer (a coarser scale), five copies of that read."""
    volume = grow ** 3
    piece_bytes = max(itemsize, min(STREAM_PIECE_BYTES, budget_bytes // 8) // volume)
    z_grid = (int(chunk_shape[0]), int(z_origin)) if grow == 1 else None
    shape = piece_shape(box, itemsize, piece_bytes, z_grid)
    read = tuple(n * grow for n in shape)
    aligned = z_grid is not None and shape[0] >= z_grid[0] and shape[1:] == box.shape[1:]
    need = 3 * math.prod(shape) * itemsize + read_cover_bytes(read, chunk_shape, itemsize, aligned)
    if grow > 1:
        need += 5 * math.prod(read) * itemsize
    return c_order_pieces(box, itemsize, piece_bytes, z_grid), need


# ---- request memory --------------------------------------------------------------------------------------
class MemoryBudget:
    """The bytes that large requests may hold at once, and how many large requests run at once. Thread-safe.

    A request that will hold ``nbytes`` (its arrays and its encoded answer)
    takes a ticket with :meth:`hold` before it allocates. It waits while the
    bytes the others hold would pass ``total_bytes`` (a request larger than the
    whole budget waits until it runs alone), and is refused with 503 when
    ``slots`` large requests already run or wait, or after waiting ``wait_s``.
    Requests under ``small_bytes`` pass at once. A ticket is given back when its
    block ends, or, handed an answer with :meth:`Ticket.keep`, when the server
    has sent that answer (or dropped it).
    """

    def __init__(self, total_bytes: int = DEFAULT_REQUEST_MEMORY, slots: int = 12, *, wait_s: float = 60.0,
                 small_bytes: int = 4 * 2**20):
        if total_bytes < 1 or slots < 1 or not 0 < wait_s < math.inf:
            raise NdfsError("a memory budget needs positive bytes, slots and wait")
        self.total_bytes, self.slots, self.wait_s, self.small_bytes = int(total_bytes), int(slots), wait_s, small_bytes
        self._cond = threading.Condition()
        self._held = 0
        self._peak = 0
        self._requests = 0  # large requests holding or waiting

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    @property
    def peak(self) -> int:
        """The most bytes held at once so far."""
        with self._cond:
            return self._peak

    def hold(self, nbytes: int, what: str = "this request") -> "Ticket":
        """A ticket for ``nbytes`` (waits for them); RequestRefused(503) when the server is too busy."""
        nbytes = max(0, int(nbytes))
        if nbytes < self.small_bytes:
            return Ticket(self, 0, large=False)
        want = min(nbytes, self.total_bytes)
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            if self._requests >= self.slots:
                raise RequestRefused(503, f"the server is busy with {self._requests} large requests: "
                                          f"try {what} again in a moment")
            self._requests += 1
            try:
                while self._held + want > self.total_bytes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RequestRefused(503, f"the server is busy: {what} waited {self.wait_s:g} s for "
                                                  f"{nbytes} bytes of its memory budget; try again later")
                    self._cond.wait(left)
            except BaseException:
                self._requests -= 1
                self._cond.notify_all()
                raise
            self._held += want
            self._peak = max(self._peak, self._held)
        return Ticket(self, want, large=True)

    def _give_back(self, nbytes: int, large: bool) -> None:
        if not large:
            return
        with self._cond:
            self._held -= nbytes
            self._requests -= 1
            self._cond.notify_all()


class Ticket:
    """Bytes of a MemoryBudget held by one request (see MemoryBudget.hold); a context manager."""

    def __init__(self, budget: MemoryBudget, nbytes: int, large: bool):
        self._budget, self._nbytes, self._large = budget, nbytes, large
        self._lock = threading.Lock()
        self._done = False
        self._kept = False

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        if not self._kept or exc[0] is not None:
            self.release()

    def release(self) -> None:
        """Give the bytes back (once; later calls do nothing)."""
        with self._lock:
            if self._done:
                return
            self._done = True
        self._budget._give_back(self._nbytes, self._large)

    def keep(self, body: Iterable[bytes], length: int | None = None) -> "HeldAnswer":
        """Hold the bytes until the server has finished with ``body`` (the answer's iterable)."""
        self._kept = True
        return HeldAnswer(body, self.release, length)


class HeldAnswer:
    """A WSGI answer that gives its ticket back when closed, handed out in slices of at most
    ANSWER_SLICE_BYTES so that waitress buffers it piece by piece instead of copying it whole.
    ``length``: its byte count when known before it is made (its Content-Length)."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None], length: int | None = None):
        self._body, self._on_close, self.length = body, on_close, length
        if length is None and isinstance(body, (list, tuple)):
            self.length = sum(len(chunk) for chunk in body)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            if len(chunk) <= ANSWER_SLICE_BYTES:
                yield chunk
                continue
            view = memoryview(chunk)
            for i in range(0, len(view), ANSWER_SLICE_BYTES):
                yield bytes(view[i:i + ANSWER_SLICE_BYTES])

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


# ---- connections and time --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """Connection and time bounds of a server (see the module doc); every value positive and finite."""

    max_connections: int = 100
    max_connections_per_address: int = 64
    idle_timeout_s: float = 60.0
    header_timeout_s: float = 20.0
    body_timeout_s: float = 30.0
    body_min_rate: float = 64 * 1024.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise NdfsError(f"{f.name.replace('_', ' ')} must be a positive number, not {value!r}")
        if self.max_connections_per_address > self.max_connections:
            raise NdfsError(f"max connections per address ({self.max_connections_per_address}) cannot pass "
                            f"max connections ({self.max_connections})")


def _answer_and_close(sock, status: str, message: str) -> None:
    """Send a short plain-text answer on a socket without waiting, then close it."""
    body = message.encode() + b"\n"
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    try:
        sock.setblocking(False)
        sock.send(head + body)
    except OSError as exc:  # the peer is gone or not reading: closing is all that is left
        log.debug("could not answer %s before closing: %s", status, exc)
    finally:
        sock.close()


@functools.lru_cache(maxsize=None)
def guarded_server_class():
    """The waitress server class that enforces Limits (imported lazily: waitress is an extra)."""
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer

    class GuardedChannel(HTTPChannel):
        """A waitress channel that knows when its current request began and when its headers were in."""

        _tracked = None
        _started = 0.0
        _headers_at: float | None = None

        def received(self, data):
            done = super().received(data)
            req = self.request
            if req is not None and self.connected:
                now = time.time()
                if req is not self._tracked:
                    self._tracked, self._started, self._headers_at = req, now, None
                if self._headers_at is None and req.headers_finished:
                    self._headers_at = now
                    self.server.screen(self, req)
            return done

        def waiting_since(self) -> float | None:
            """Since when this connection waits without being served (None: it is being served)."""
            if self.requests:
                return None
            if self.request is not None and self.request is self._tracked:
                return self._started
            return self.last_activity

        def overdue(self, now: float, limits: Limits, max_body: int) -> tuple[str, str, str] | None:
            """(reason, HTTP status to answer or "", why) when this connection is past a bound, else None."""
            if self.requests:  # a worker answers it: only a client that stops reading is cut off
                if self.total_outbufs_len and now - self.last_activity > limits.idle_timeout_s:
                    return "unread", "", f"stopped reading its answer for {limits.idle_timeout_s:g} s"
                return None
            req = self.request
            if req is not None and req is self._tracked:
                if self._headers_at is None and now - self._started > limits.header_timeout_s:
                    return ("headers", "408 Request Timeout",
                            f"the request headers were not complete within {limits.header_timeout_s:g} s")
                if self._headers_at is not None:
                    size = max_body if req.chunked else req.content_length
                    allowed = limits.body_timeout_s + size / limits.body_min_rate
                    if now - self._headers_at > allowed:
                        return ("body", "408 Request Timeout",
                                f"a {size}-byte request body was not complete within {allowed:.0f} s")
            if now - self.last_activity > limits.idle_timeout_s:
                return "idle", "", f"idle for {limits.idle_timeout_s:g} s"
            return None

        def drop(self, reason: str, status: str, why: str) -> None:
            """Answer ``status`` (if any) and close, from the event loop's thread; counted under ``reason``."""
            log.debug("closing the connection of %s: %s", self.addr, why)
            self.server.dropped[reason] += 1
            if status and self.socket is not None:
                try:
                    body = (why + "\n").encode()
                    self.socket.send(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: "
                                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                except OSError as exc:
                    log.debug("could not answer %s before closing: %s", status, exc)
            self.handle_close()

    class GuardedServer(TcpWSGIServer):
        """waitress's TCP server with Limits: it never stops accepting; see the module doc."""

        channel_class = GuardedChannel

        def __init__(self, application, *, limits: Limits, auth=None, max_body: int, **kw):
            self.limits, self.auth, self.max_body = limits, auth, int(max_body)
            #: connections closed by the guard, by reason (first word): for tests and logs
            self.dropped: collections.Counter = collections.Counter()
            super().__init__(application, **kw)

        def readable(self):  # waitress's runs maintenance here, amid building the poll set: see tick()
            return self.accepting

        def tick(self) -> None:
            """Close the connections past a bound (at most once a second). Call it between two turns of the
            event loop: a connection closed while the loop collects its poll set would leave its number in
            that set, and a connection accepted in the same turn may get the number and be closed for it."""
            now = time.time()
            if now < self.next_channel_cleanup:
                return
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            for channel in list(self.active_channels.values()):
                verdict = channel.overdue(now, self.limits, self.max_body)
                if verdict is not None:
                    channel.drop(*verdict)

        def screen(self, channel, request) -> None:
            """Answer 401 and close, unread, a request that announces a large body without an accepted token."""
            if not self.auth or not (request.chunked or request.content_length > SCREEN_BODY_BYTES):
                return
            refusal = self.auth.refusal(request.headers.get("AUTHORIZATION", ""))
            if refusal:
                channel.drop("unauthorized", "401 Unauthorized", refusal)

        def handle_accept(self):
            """Accept every waiting connection (up to ACCEPT_BATCH), not one per turn of the loop as waitress
            does: under a flood, a legitimate connection queued behind many would otherwise wait a turn each."""
            for _ in range(ACCEPT_BATCH):
                if not self._accept_one():
                    return

        def _accept_one(self) -> bool:
            """Accept one connection, refuse it or make room for it; False when none is waiting."""
            try:
                pair = self.accept()
                if pair is None:
                    return False
                conn, addr = pair
                self.set_socket_options(conn)
            except OSError as exc:  # the peer left before we got to it
                log.debug("accept failed: %s", exc)
                return True
            addr = self.fix_addr(addr)
            host = addr[0] if isinstance(addr, tuple) and addr else str(addr)
            channels = list(self.active_channels.values())
            same = sum(1 for c in channels if isinstance(c.addr, tuple) and c.addr and c.addr[0] == host)
            if same >= self.limits.max_connections_per_address:
                self.dropped["per-address"] += 1
                _answer_and_close(conn, "503 Service Unavailable",
                                  f"too many connections from {host} (at most "
                                  f"{self.limits.max_connections_per_address})")
                return True
            if len(channels) >= self.limits.max_connections:
                waiting = [(c.waiting_since(), i, c) for i, c in enumerate(channels)]
                waiting = [w for w in waiting if w[0] is not None]
                if not waiting:
                    self.dropped["full"] += 1
                    _answer_and_close(conn, "503 Service Unavailable",
                                      f"the server is serving its {self.limits.max_connections} connections")
                    return True
                min(waiting)[2].drop("evicted", "", "the longest-waiting connection of a full server")
            self.channel_class(self, conn, addr, self.adj, map=self._map)
            return True

    return GuardedServer
