"""Where a dataset lives and how its bytes and arrays are reached: URLs, key-value reads, tensorstore arrays.

The ``precomputed`` and ``zarr`` remotes (:mod:`ndfs.stores.precomputed`, :mod:`ndfs.stores.omezarr`)
name a location by URL: a local path, ``file://``, ``http(s)://``, ``gs://`` or ``s3://``.
:class:`Location` joins keys onto it, reads small files (metadata, meshes, skeletons), lists local
folders and writes small files where the location can be written; :meth:`Location.read_stamped` and
:meth:`Location.revalidate` tell whether a metadata file changed (a stat of a local file, one conditional
request over http(s)). Voxels go through tensorstore's
drivers (``neuroglancer_precomputed``, ``zarr``, ``zarr3``) opened on the same location:
:class:`ArrayLevel` reads and writes a ZYX box of one level.

tensorstore is an optional dependency (the ``formats`` extra), imported when a dataset is first read,
so ``import ndfs`` stays light. Credentials for ``gs://`` and ``s3://`` are found by tensorstore the
usual way (Application Default Credentials; the AWS environment variables and config files), anonymous
when there are none; ndfs never sees or logs them. ``s3://`` goes to the service named by
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` when one is set (an S3-compatible store such as MinIO;
region from ``AWS_REGION``/``AWS_DEFAULT_REGION``), as the AWS tools do. Every error is an NdfsError. Thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import numpy as np

from ndfs.core.errors import (BackendError, BadRegion, MissingExtra, NdfsError, NotFound, PermissionDenied,
                              ReadOnly, Timeout, disk_error)
from ndfs.core.geometry import Box
from ndfs.core.info import LevelInfo
from ndfs.core.urls import mask_url
from ndfs.core.config import read_threads
from ndfs.formats import safe

log = logging.getLogger("ndfs.tstore")

SCHEMES = ("file", "http", "https", "gs", "s3")
#: the largest metadata file read whole (info, .zattrs, zarr.json, mesh manifests)
MAX_META_BYTES = 64 * 2**20

Stamp = tuple
"""What identifies one state of a file: ``("stat", mtime_ns, size, inode)`` of a local file,
``("http", etag, last_modified)`` of one served over http(s) (either may be "", not both). JSON-able."""

_HTTP_CLIENTS: dict = {}
_HTTP_LOCK = threading.Lock()


def _http_client(base: str):
    """One pooled HTTP session per server (scheme://[user-info@]host:port), shared by every location on it."""
    from ndfs.stores.http import HttpClient, status_error

    def error_for(resp, method, path):
        return status_error(resp.status_code, f"{method} {mask_url(base + path)}: HTTP {resp.status_code}")

    with _HTTP_LOCK:
        client = _HTTP_CLIENTS.get(base)
        if client is None:
            client = _HTTP_CLIENTS[base] = HttpClient("dataset", base, None, error_for, retries=2,
                                                      backoff_s=0.5, backoff_cap_s=5.0, workers=4)
        return client


#: asks caches on the way (proxies, CDNs) to check with the origin, as tensorstore's http store does
_NO_CACHE = {"Cache-Control": "no-cache"}


def _http_stamp(headers) -> Stamp | None:
    etag, modified = headers.get("ETag") or "", headers.get("Last-Modified") or ""
    return ("http", etag, modified) if etag or modified else None


def _stat_stamp(st: os.stat_result) -> Stamp:
    return ("stat", st.st_mtime_ns, st.st_size, st.st_ino)


def json_object(data: bytes | None, loc: "Location", key: str, what: str | None = None) -> dict | None:
    """The JSON object in ``data``, the bytes of ``key`` at ``loc`` (None: the file is absent), decoded by the
    safe decoder of services' answers (bounded size, depth and integers); BackendError, naming ``what`` when
    given, when it is not a JSON object."""
    if data is None:
        return None
    name = f"{what} ({key} of {loc!r})" if what else f"{key} of {loc!r}"
    try:
        doc = safe.reply_json(data, name)
    except NdfsError as exc:  # BadInput, TooLarge: the dataset's metadata is broken, not the caller's request
        raise BackendError(str(exc)) from None
    if not isinstance(doc, dict):
        raise BackendError(f"{name} is not a JSON object")
    return doc


def tensorstore():
    """The tensorstore module, or MissingExtra naming the extra that brings it."""
    try:
        import tensorstore as ts
    except ImportError:
        raise MissingExtra("precomputed and zarr remotes need tensorstore: pip install 'ndfs[formats]'") from None
    return ts


def ts_error(exc: Exception, what: str) -> NdfsError:
    """The NdfsError for a tensorstore failure (its messages carry an absl status code first)."""
    text = re.sub(r"://[^/@\s]*@", "://***@", str(exc))  # never a password a URL's user-info held
    code = text.split(":", 1)[0].strip()
    msg = f"{what}: {text}"
    if code == "NOT_FOUND":
        return NotFound(msg)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return PermissionDenied(msg)
    if code == "DEADLINE_EXCEEDED":
        return Timeout(msg)
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        return BadRegion(msg)
    if code == "RESOURCE_EXHAUSTED" and "space" in text.lower():
        return NdfsError(msg, errno=errno.ENOSPC)
    return BackendError(msg)


class Location:
    """A dataset root: a local directory or a URL prefix. Keys are '/'-joined relative paths.

    ``Location("path/or/url")``; :meth:`join` gives a child location. No I/O in the constructor.
    """

    def __init__(self, url: str | os.PathLike):
        text = os.fspath(url)
        scheme = urlparse(text).scheme if "://" in text else ""
        if scheme == "":
            self.scheme, self.path = "file", str(Path(text).expanduser().resolve())
            self.base = ""
        elif scheme == "file":
            self.scheme, self.path = "file", str(Path(unquote(urlparse(text).path)).resolve())
            self.base = ""
        elif scheme in SCHEMES:
            self.scheme, self.path = scheme, ""
            self.base = text.rstrip("/")
        else:
            raise BadRegion(f"{mask_url(text)!r}: a dataset URL is a local path or file://, http(s)://, gs:// "
                            "or s3://")
        self._kv = None
        self._kv_lock = threading.Lock()

    @property
    def local(self) -> bool:
        return self.scheme == "file"

    @property
    def writable(self) -> bool:
        """Whether the location's storage takes writes at all (http(s) is read-only)."""
        return self.scheme in ("file", "gs", "s3")

    @property
    def url(self) -> str:
        """The location as a URL tensorstore takes (a trailing '/', so keys join below it)."""
        if self.local:
            return "file://" + quote(self.path.rstrip("/")) + "/"
        return self.base + "/"

    @property
    def name(self) -> str:
        """The last component of the location, e.g. the layer's name."""
        return (self.path if self.local else urlparse(self.base).path).rstrip("/").rsplit("/", 1)[-1] or "dataset"

    def __repr__(self) -> str:
        return f"Location({self.path if self.local else mask_url(self.base)!r})"

    def join(self, key: str) -> "Location":
        key = key.strip("/")
        if not key:
            return self
        if self.local:
            return Location(os.path.join(self.path, *key.split("/")))
        return Location(self.base + "/" + key)

    def kvstore(self) -> dict:
        """A tensorstore kvstore spec for this location."""
        if self.local:
            return {"driver": "file", "path": self.path.rstrip("/") + "/"}
        if self.scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:  # an S3-compatible service: tensorstore's s3:// URLs do not read these variables
                parsed = urlparse(self.base)
                path = parsed.path.strip("/")
                spec = {"driver": "s3", "bucket": parsed.netloc, "path": path + "/" if path else "",
                        "endpoint": endpoint}
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    spec["aws_region"] = region
                return spec
        return self.url  # tensorstore parses http(s)://, gs:// and s3:// URLs itself

    # ---- small files ---------------------------------------------------------------
    def _store(self):
        with self._kv_lock:
            if self._kv is None:
                ts = tensorstore()
                try:
                    self._kv = ts.KvStore.open(self.kvstore(), context=context()).result()
                except Exception as exc:
                    raise ts_error(exc, f"cannot open {self!r}") from exc
            return self._kv

    def read(self, key: str, *, max_bytes: int = MAX_META_BYTES) -> bytes | None:
        """The bytes of ``key`` below the location, or None when it does not exist."""
        if self.local:
            path = os.path.join(self.path, *key.split("/"))
            try:
                size = os.path.getsize(path)
                if size > max_bytes:
                    raise BackendError(f"{path} holds {size} bytes, more than the {max_bytes} expected")
                with open(path, "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            got = self._store().read(key).result()
        except Exception as exc:
            raise ts_error(exc, f"reading {key} of {self!r}") from exc
        if got.state != "value":
            return None
        if len(got.value) > max_bytes:
            raise BackendError(f"{key} of {self!r} holds {len(got.value)} bytes, more than the {max_bytes} expected")
        return bytes(got.value)

    def read_json(self, key: str, what: str | None = None, stamps: dict | None = None) -> dict | None:
        """The JSON object ``key`` holds, or None when absent (see :func:`json_object`); with ``stamps``,
        read stamped (:meth:`read_stamped`) and its stamp kept there under ``key``."""
        if stamps is None:
            return json_object(self.read(key), self, key, what)
        data, stamps[key] = self.read_stamped(key)
        return json_object(data, self, key, what)

    @property
    def stampable(self) -> bool:
        """Whether :meth:`revalidate` can tell a file changed here (local paths and http(s); not gs:// or s3://)."""
        return self.scheme in ("file", "http", "https")

    def _http_parts(self, key: str) -> tuple:
        parts = urlparse(self.base + "/" + key)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return _http_client(f"{parts.scheme}://{parts.netloc}"), quote(unquote(path), safe="/?=&%:@+,;~-._")

    def read_stamped(self, key: str, *, max_bytes: int = MAX_META_BYTES) -> tuple[bytes | None, Stamp | None]:
        """The bytes of ``key`` (None when it does not exist) and the stamp of the state they were read in:
        a local file's stat taken on the file read; over http(s) the ``ETag`` and ``Last-Modified`` of the
        one GET that brought them (None when the server sends neither; always None on gs:// and s3://)."""
        if self.local:
            path = os.path.join(self.path, *key.split("/"))
            try:
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if st.st_size > max_bytes:
                        raise BackendError(f"{path} holds {st.st_size} bytes, more than the {max_bytes} expected")
                    return fh.read(), _stat_stamp(st)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None, None
            except OSError as exc:
                raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if self.scheme not in ("http", "https"):
            return self.read(key, max_bytes=max_bytes), None
        client, path = self._http_parts(key)
        try:
            resp = client.request("GET", path, headers=_NO_CACHE)
        except NotFound:
            return None, None
        if len(resp.content) > max_bytes:
            raise BackendError(f"{key} of {self!r} holds {len(resp.content)} bytes, more than the {max_bytes} expected")
        return resp.content, _http_stamp(resp.headers)

    def revalidate(self, key: str, stamp: Stamp) -> Stamp | None:
        """The stamp of ``key`` now (``stamp`` itself when it has not changed), None when it is gone: a stat of a
        local file; over http(s) one conditional GET (``If-None-Match`` with the ETag, ``If-Modified-Since``
        with the Last-Modified ``stamp`` holds), which costs no body when the answer is 304 Not Modified.
        BadRegion where nothing can tell (gs://, s3://: see :attr:`stampable`)."""
        if self.local:
            try:
                st = os.stat(os.path.join(self.path, *key.split("/")))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise BackendError(f"cannot stat {key} of {self!r}: {exc.strerror or exc}") from exc
            found = _stat_stamp(st)
            return stamp if found == stamp else found
        if self.scheme not in ("http", "https"):
            raise BadRegion(f"{self!r}: {self.scheme}:// files are not revalidated")
        client, path = self._http_parts(key)
        headers = dict(_NO_CACHE)
        if stamp[1]:
            headers["If-None-Match"] = stamp[1]
        if stamp[2]:
            headers["If-Modified-Since"] = stamp[2]
        try:
            resp = client.request("GET", path, headers=headers, expect=(200, 304))
        except NotFound:
            return None
        if resp.status_code == 304:
            return stamp
        found = _http_stamp(resp.headers)
        return stamp if found == stamp else found or ("http", "", "")

    def read_range(self, key: str, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of ``key`` (fewer at its end), or None when it does not exist."""
        if stop - start > MAX_META_BYTES * 16:
            raise BackendError(f"{key} of {self!r}: a range of {stop - start} bytes is more than expected")
        if self.local:
            path = os.path.join(self.path, *key.split("/"))
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    return fh.read(stop - start)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            got = self._store().read(key, byte_range=slice(start, stop)).result()
        except Exception as exc:
            if str(exc).startswith("OUT_OF_RANGE"):
                return b""
            raise ts_error(exc, f"reading bytes {start}-{stop} of {key} of {self!r}") from exc
        return bytes(got.value) if got.state == "value" else None

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key`` whole (a local file is written aside and renamed into place)."""
        if not self.writable:
            raise ReadOnly(f"{self!r} cannot be written ({self.scheme}:// is read-only)")
        if self.local:
            path = os.path.join(self.path, *key.split("/"))
            tmp = f"{path}.ndfs-{os.getpid()}-{threading.get_ident()}.part"
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                raise disk_error(exc, f"writing {path}") from exc
            return
        try:
            self._store().write(key, data).result()
        except Exception as exc:
            raise ts_error(exc, f"writing {key} of {self!r}") from exc

    def remove_all(self) -> None:
        """Delete every key below the location (a local folder and everything in it)."""
        if not self.writable:
            raise ReadOnly(f"{self!r} cannot be written ({self.scheme}:// is read-only)")
        if self.local:
            import shutil

            try:
                shutil.rmtree(self.path)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise disk_error(exc, f"removing {self.path}") from exc
            return
        ts = tensorstore()
        try:
            self._store().delete_range(ts.KvStore.KeyRange()).result()
        except Exception as exc:
            raise ts_error(exc, f"removing {self!r}") from exc

    def list_dirs(self) -> list[str] | None:
        """Sub-folders of a local location, sorted (None: this kind of location cannot be listed)."""
        if not self.local:
            return None
        try:
            return sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.path}: {exc.strerror or exc}") from exc

    def any_file_with_suffix(self, suffix: str) -> str | None:
        """The name of one file ending in ``suffix`` directly in a local location (None elsewhere or if none);
        stops at the first entry that is a file, so a folder of a million chunks costs one directory read."""
        if not self.local:
            return None
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    if e.name.endswith(suffix):
                        return e.name
                    if e.is_file():
                        return None
        except OSError:
            return None
        return None


# ---- tensorstore arrays -------------------------------------------------------------------
_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def context():
    """The one tensorstore Context of this process: no tensorstore cache (ndfs's chunk cache is in front)."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            ts = tensorstore()
            _CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": 0},
                                   "data_copy_concurrency": {"limit": read_threads(max(2, os.cpu_count() or 2))}})
        return _CONTEXT


_INDEX_CONTEXT = None


def index_context():
    """A Context with a small cache, for sharded data: shard and minishard indexes are read once, not per chunk."""
    global _INDEX_CONTEXT
    with _CONTEXT_LOCK:
        if _INDEX_CONTEXT is None:
            ts = tensorstore()
            _INDEX_CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": 64 * 2**20},
                                         "data_copy_concurrency": {"limit": read_threads(max(2, os.cpu_count() or 2))}})
        return _INDEX_CONTEXT


@dataclass
class ArrayLevel:
    """One level of a volume as a tensorstore array: how its dimensions map to z, y, x.

    ``spec`` is the tensorstore spec (kvstore and driver); ``axes`` names each array dimension
    (``"x"``, ``"y"``, ``"z"`` or another); ``fixed`` gives the index kept for every other dimension
    (a channel, a time point); ``origin`` is the array index (z, y, x) of the level's first voxel
    (for a missing z axis, 0). ``read_only`` says why this level cannot be written (None: it can).
    """

    spec: dict
    axes: tuple[str, ...]
    fixed: dict[int, int]
    origin: tuple[int, int, int]
    info: LevelInfo
    sharded: bool = False
    read_only: str | None = None
    #: why this level cannot be read (None: it can), e.g. chunks stored under names tensorstore does not read
    problem: str | None = None
    _handles: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _open(self, write: bool):
        key = "w" if write else "r"
        with self._lock:
            found = self._handles.get(key)
        if found is not None:
            return found
        ts = tensorstore()
        spec = dict(self.spec)
        spec["recheck_cached_data"] = False if not write else "open"
        try:
            arr = ts.open(spec, read=True, write=write,
                          context=index_context() if self.sharded else context()).result()
        except Exception as exc:
            raise ts_error(exc, f"cannot open {mask_url(str(spec.get('kvstore')))}") from exc
        with self._lock:
            self._handles.setdefault(key, arr)
            return self._handles[key]

    def _index(self, box: Box) -> tuple:
        parts = []
        zyx = "zyx"
        for i, name in enumerate(self.axes):
            if name in zyx:
                k = zyx.index(name)
                a = box.start[k] - self.info.offset[k] + self.origin[k]
                parts.append(slice(a, a + box.shape[k]))
            else:
                parts.append(self.fixed.get(i, 0))
        return tuple(parts)

    def _view(self, arr, box: Box):
        """The box of ``arr`` with its dimensions ordered z, y, x (tensorstore reads and writes in that order,
        so a chunk stored x-fastest, as precomputed stores them, is copied without a transpose in numpy)."""
        view = arr[self._index(box)]
        kept = [n for n in self.axes if n in "zyx"]
        order = [kept.index(n) for n in "zyx" if n in kept]
        if order != list(range(len(order))):
            ts = tensorstore()
            view = view[ts.d[tuple(order)].transpose[:]]
        return view, "z" in kept

    def read(self, box: Box, dtype: np.dtype) -> np.ndarray:
        if self.problem:
            raise BackendError(self.problem)
        arr = self._open(False)
        try:
            view, has_z = self._view(arr, box)
            data = view.read(order="C").result()
        except Exception as exc:
            raise ts_error(exc, f"reading {box}") from exc
        if not has_z:
            data = data[np.newaxis]
        return np.ascontiguousarray(data, dtype=dtype)

    def write(self, box: Box, array: np.ndarray) -> None:
        if self.read_only:
            raise ReadOnly(self.read_only)
        arr = self._open(True)
        try:
            view, has_z = self._view(arr, box)
            data = array if has_z else array[0]
            view.write(np.ascontiguousarray(data, dtype=arr.dtype.numpy_dtype)).result()
        except Exception as exc:
            raise ts_error(exc, f"writing {box}") from exc


__all__ = ["Location", "ArrayLevel", "Stamp", "tensorstore", "ts_error", "context", "SCHEMES"]
