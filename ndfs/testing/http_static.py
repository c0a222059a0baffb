"""A static HTTP file server with Range requests, for tests and benchmarks: ``StaticServer(directory)``.

Serves the files below a directory on 127.0.0.1 the way a bucket or a web server does for neuroglancer,
tensorstore and CloudVolume: GET and HEAD, single byte ranges (``bytes=a-b``, ``bytes=a-`` and suffix
ranges ``bytes=-N``) answered 206 with ``Content-Range`` (416 past the end), 404 for absent keys and
folders, ``Accept-Ranges: bytes`` and ``Access-Control-Allow-Origin: *`` on every answer. Files carry an
``ETag`` (their modification time in ns, size and inode) and ``Last-Modified``; a GET or HEAD whose
``If-None-Match`` names the current ETag, or (without ``If-None-Match``) whose ``If-Modified-Since`` is not
older than the file, is answered 304 with no body, as a bucket or a web server answers a revalidation
(``etags=False``: no ETag, only ``Last-Modified``, as some static servers answer).
``latency_ms`` delays every answer (a remote store's round trip); ``requests`` counts what was asked,
``counts`` each method and answer kind (``whole``, ``ranged``, ``not_modified``), ``bytes_sent`` the body
bytes (thread-safe). Read-only: anything but GET, HEAD and OPTIONS is 405.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _not_modified(headers, etag: str | None, mtime: float) -> bool:
    """Whether a request's validators say the client holds the current file (RFC 9110 13.2.2: If-None-Match
    wins over If-Modified-Since; a weak ``W/`` tag compares as its strong self for GET)."""
    wanted = headers.get("If-None-Match")
    if wanted is not None:
        tags = [t.strip() for t in wanted.split(",")]
        return etag is not None and ("*" in tags or etag in tags or f"W/{etag}" in tags)
    since = headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        return int(mtime) <= parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):
        return False


class StaticServer:
    """``with StaticServer(root, latency_ms=20) as server: server.url``; counts in ``server.requests``."""

    def __init__(self, root, *, latency_ms: float = 0.0, port: int = 0, etags: bool = True):
        self.root = Path(root).resolve()
        self.etags = bool(etags)  # False: only Last-Modified, as some static servers do
        self.latency_s = float(latency_ms) / 1000.0
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        #: GET and HEAD requests per key (the path below the root)
        self.keys: Counter = Counter()
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read the counters instead
                return

            def _headers(self, code: int, length: int, extra: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def _answer(self, body_wanted: bool) -> None:
                if outer.latency_s:
                    time.sleep(outer.latency_s)
                key = unquote(urlparse(self.path).path).lstrip("/")
                with outer._lock:
                    outer.counts[self.command] += 1
                    if self.command in ("GET", "HEAD"):
                        outer.keys[key] += 1
                path = (outer.root / key).resolve()
                if outer.root not in path.parents and path != outer.root or not path.is_file():
                    self._headers(404, 0)
                    return
                st = path.stat()
                size = st.st_size
                tags = {"ETag": f'"{st.st_mtime_ns:x}-{size:x}-{st.st_ino:x}"',
                        "Last-Modified": formatdate(st.st_mtime, usegmt=True)}
                if not outer.etags:
                    del tags["ETag"]
                if _not_modified(self.headers, tags.get("ETag"), st.st_mtime):
                    with outer._lock:
                        outer.counts["not_modified"] += 1
                    self.send_response(304)
                    self.send_header("Access-Control-Allow-Origin", "*")
                    for k, v in tags.items():
                        self.send_header(k, v)
                    self.end_headers()
                    return
                start, stop, code, extra = 0, size, 200, dict(tags)
                wanted = self.headers.get("Range")
                if wanted:
                    m = _RANGE.match(wanted.strip())
                    if not m or (not m.group(1) and not m.group(2)):
                        self._headers(416, 0, {"Content-Range": f"bytes */{size}"})
                        return
                    if not m.group(1):  # a suffix: the last N bytes
                        start = max(0, size - int(m.group(2)))
                    else:
                        start = int(m.group(1))
                        stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
                    if start >= size or stop <= start:
                        self._headers(416, 0, {"Content-Range": f"bytes */{size}"})
                        return
                    code, extra = 206, {"Content-Range": f"bytes {start}-{stop - 1}/{size}", **tags}
                with outer._lock:
                    outer.counts["ranged" if code == 206 else "whole"] += 1
                self._headers(code, stop - start, extra)
                if body_wanted:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        data = fh.read(stop - start)
                    self.wfile.write(data)
                    with outer._lock:
                        outer.bytes_sent += len(data)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def do_OPTIONS(self):
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
                self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _refuse(self):
                self._headers(405, 0)

            do_PUT = do_POST = do_DELETE = _refuse

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # clients open many connections at once: the default 5 drops some for 1 s
            daemon_threads = True

        self._server = Server(("127.0.0.1", port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> int:
        """GET and HEAD requests answered so far."""
        with self._lock:
            return self.counts["GET"] + self.counts["HEAD"]

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.keys.clear()
            self.bytes_sent = 0

    def start(self) -> "StaticServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="ndfs-static-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "StaticServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    """``python -m ndfs.testing.http_static DIR [--port N] [--latency-ms MS]``: serve a folder until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    with StaticServer(os.path.expanduser(args.root), latency_ms=args.latency_ms, port=args.port) as server:
        print(f"serving {args.root} at {server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
