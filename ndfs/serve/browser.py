"""Browser-correct HTTP for the viewer servers (precomputed, zarr): a WSGI base app over named files.

Viewers (neuroglancer in a browser, tensorstore, CloudVolume, zarr-python,
ome-zarr-py) read a tree of files over HTTP; :class:`FileTreeApp` answers them
the way a careful static file server would, for files that are made on demand
by a subclass's :meth:`FileTreeApp.lookup` (path -> :class:`Answer`):

* every answer carries ``Access-Control-Allow-Origin: *`` and exposes the
  headers a script needs (``Content-Range``, ``Content-Length``,
  ``Content-Encoding``, ``Accept-Ranges``);
* ``OPTIONS`` (a CORS preflight) is answered 204 without a token, allowing
  ``GET``, ``HEAD`` and the headers asked for (``Range``, ``Content-Type``,
  ``Authorization``...);
* ``GET`` and ``HEAD`` only (else 405 with ``Allow``); ``HEAD`` has the headers
  of the ``GET`` without its body;
* ``Accept-Ranges: bytes``; a ``Range`` of one range (``bytes=a-b``, ``a-``,
  or the suffix ``-n``) is answered 206 with ``Content-Range``; a range past
  the end is 416 with ``Content-Range: bytes */<length>``; several ranges or a
  malformed header are ignored (200 and the whole file, as RFC 9110 allows);
* compression only as ``Content-Encoding: gzip`` (with ``Vary:
  Accept-Encoding``), for a client that accepts it, a file marked compressible
  and of at least ``GZIP_MIN_BYTES``, and never on a range request: names
  never change (no ``.gz`` files);
* a file that is not there (outside a volume, a key off the chunk grid, an
  object without voxels) is 404, never 400; other errors are plain text with
  their status (400, 401, 413, 503, 500).

Tokens, as in the other servers: with none configured every request is
accepted, else ``Authorization: Token <t>`` or ``Bearer <t>`` must name one
(401 otherwise). Requests that make a large answer hold the app's
:class:`~ndfs.serve.limits.MemoryBudget` while they make it and until it is
sent. Thread-safe as far as ``lookup`` is.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus

from ndfs.core.errors import BadRegion, MissingExtra, NdfsError, NotFound, PermissionDenied, TooLarge
from ndfs.serve.common import TokenAuth
from ndfs.serve.limits import MemoryBudget, RequestRefused, Ticket

log = logging.getLogger("ndfs.serve.browser")

#: smaller answers are not worth compressing
GZIP_MIN_BYTES = 1024
#: zlib level of gzip answers: level 1 is several times faster than the default for a few per cent more bytes
GZIP_LEVEL = 1
#: headers a script in a browser may read from an answer (CORS)
EXPOSED = "Content-Range, Content-Length, Content-Encoding, Accept-Ranges, Content-Type"
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class Answer:
    """A file's bytes, its content type, whether gzip helps, and the memory ticket held until it is sent."""

    body: bytes
    content_type: str = "application/octet-stream"
    compressible: bool = True
    ticket: Ticket | None = None


#: seconds a viewer server remembers what the store said (which paths are volumes, their images)
MEMO_S = 10.0


class FileTreeApp:
    """Base of the viewer servers: subclasses implement :meth:`lookup`. ``tokens``: accepted API tokens."""

    #: the server's name in error messages
    name = "ndfs"

    def __init__(self, tokens=None, *, budget: MemoryBudget | None = None):
        self.auth = TokenAuth(tokens)
        self.budget = budget or MemoryBudget()
        self._memo_lock = threading.Lock()
        self._memo: dict = {}

    def _memoised(self, key, compute):
        """``compute()``, remembered under ``key`` for :data:`MEMO_S` seconds (what a viewer asks for
        again and again while it draws: which paths are volumes, their images), at most 10,000 keys."""
        now = time.monotonic()
        with self._memo_lock:
            hit = self._memo.get(key)
        if hit is not None and now - hit[0] < MEMO_S:
            return hit[1]
        value = compute()
        with self._memo_lock:
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[key] = (now, value)
        return value

    def lookup(self, path: str) -> Answer:
        """The file at ``path`` (no leading slash); NotFound (404) when there is none."""
        raise NotImplementedError

    def hold(self, nbytes: int, what: str) -> Ticket:
        """A ticket of the memory budget for ``nbytes``; 413 when no budget could ever hold them."""
        if nbytes > self.budget.total_bytes:
            raise RequestRefused(413, f"{what} needs {nbytes} bytes of memory, more than this server's request "
                                      f"memory of {self.budget.total_bytes} bytes")
        return self.budget.hold(nbytes, what)

    # ---- WSGI ------------------------------------------------------------------
    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        if method == "OPTIONS":
            return self._preflight(environ, start_response)
        try:
            if method not in ("GET", "HEAD"):
                return _plain(start_response, 405, f"{method} is not answered here: the files are read-only",
                              [("Allow", "GET, HEAD, OPTIONS")])
            denied = self.auth.refusal(environ.get("HTTP_AUTHORIZATION", ""))
            if denied:
                return _plain(start_response, 401, denied, [("WWW-Authenticate", "Token")])
            answer = self.lookup(path.lstrip("/"))
        except NotFound as exc:
            return _plain(start_response, 404, str(exc) or f"{path} is not here")
        except RequestRefused as exc:
            return _plain(start_response, exc.status, str(exc))
        except (BadRegion, TooLarge) as exc:
            return _plain(start_response, 413 if isinstance(exc, TooLarge) else 400, str(exc))
        except PermissionDenied as exc:
            return _plain(start_response, 403, str(exc))
        except MissingExtra as exc:
            return _plain(start_response, 501, str(exc))
        except NdfsError as exc:
            log.warning("%s %s failed: %s", method, path, exc)
            return _plain(start_response, 502, f"the store failed: {exc}")
        except Exception as exc:
            log.exception("unhandled error on %s %s", method, path)
            return _plain(start_response, 500, f"unexpected error: {exc}")
        return self._send(environ, start_response, method, answer)

    def _preflight(self, environ, start_response):
        asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
        allowed = asked if asked else "Range, Content-Type, Authorization"
        headers = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
                   ("Access-Control-Allow-Headers", allowed), ("Access-Control-Max-Age", "86400"),
                   ("Content-Length", "0")]
        start_response("204 No Content", headers)
        return [b""]

    def _send(self, environ, start_response, method: str, answer: Answer):
        body = answer.body
        headers = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", EXPOSED),
                   ("Content-Type", answer.content_type), ("Accept-Ranges", "bytes")]
        status = 200
        wanted = _range(environ.get("HTTP_RANGE", ""), len(body))
        if wanted == "unsatisfiable":
            if answer.ticket is not None:
                answer.ticket.release()
            return _plain(start_response, 416, f"the range {environ.get('HTTP_RANGE')} is outside the "
                                               f"{len(body)} bytes of the file",
                          [("Content-Range", f"bytes */{len(body)}")])
        if wanted is not None:
            first, last = wanted
            headers.append(("Content-Range", f"bytes {first}-{last}/{len(body)}"))
            body, status = body[first:last + 1], 206
        elif answer.compressible and len(body) >= GZIP_MIN_BYTES and _accepts_gzip(environ):
            body = _gzip(body)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        elif answer.compressible:
            headers.append(("Vary", "Accept-Encoding"))
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        parts = [] if method == "HEAD" else [body]
        if answer.ticket is not None:
            return answer.ticket.keep(parts, sum(len(p) for p in parts))
        return parts


def _range(header: str, length: int):
    """(first, last) byte of a single-range Range header, "unsatisfiable", or None (no range or ignored)."""
    m = RANGE_RE.fullmatch(header.strip().replace(" ", "")) if header else None
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if not a and not b:
        return None
    if not a:  # a suffix: the last n bytes
        n = int(b)
        if n == 0 or length == 0:
            return "unsatisfiable"
        return max(0, length - n), length - 1
    first = int(a)
    last = length - 1 if not b else min(int(b), length - 1)
    if b and int(b) < first:
        return None  # syntactically invalid: ignored
    if first >= length:
        return "unsatisfiable"
    return first, last


def _accepts_gzip(environ) -> bool:
    for part in environ.get("HTTP_ACCEPT_ENCODING", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and _float(q[2:]) == 0.0)
    return False


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
    return packer.compress(data) + packer.flush()


def _plain(start_response, status: int, message: str, extra=()):
    body = (message + "\n").encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Access-Control-Allow-Origin", "*"), ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))), *extra])
    return [body]


__all__ = ["Answer", "FileTreeApp"]
