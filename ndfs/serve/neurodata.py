"""A NeuroData (ndstore "OCP") server (WSGI app) over any ndfs Backend, faithful enough for unmodified ndio.

``NeuroDataApp(backend)`` answers ``specs/neurodata.md`` under every base
``/{ocp|nd}/{ca|sd|ocpca}/`` (repeated slashes collapse): ``public_tokens/``,
``public_datasets/``, ``{tok}/info/``; cutout GET in ``npz``, ``hdf5``,
``blosc``, ``raw`` and ``zip`` for one or several channels (stacked on C,
same dtype) with ``neariso/`` and ``filter/{ids}/``; cutout POST in ``npz``
and ``hdf5`` with the spec's checks (channel count, shape, exact dtype,
read-only), merging the non-zero voxels; ``id/`` and ``ids/``;
``getPropagate``/``setPropagate``; and the RAMON service over the backend's
annotation calls: ``{ids}/json/`` (legacy layout A), ``{ids}/[nodata/]``
(HDF5), ``boundingbox/``, ``cutout/``, ``voxels/``, HDF5 POSTs with the
options ``overwrite``, ``preserve``, ``exception``, ``update``, ``dataonly``
and ``reduce``, JSON POSTs (``json/[update/]``, layout A or B), ``DELETE``,
``query/`` (type, status, confidence gt/lt, kv, limit, a true AND, and a box
by POST body) and ``reserve/{n}/`` by GET or POST. Tokens and channels are
the backend's depth-1 folders and their volumes (:mod:`ndfs.serve.neurodata_model`).

Errors are ndstore's: 404 with plain text for unknown tokens, channels and
ids, illegal boxes (``Illegal…``), wrong shapes or dtypes and read-only
channels; 400 for unknown services; 500 for anything unexpected.

Deliberate differences: blosc POST bodies are refused (they are pickles);
time ranges and PNG slice views are not served; an existing id posted
without ``update/`` replaces the object (ndio always posts ``overwrite/``)
unless ``strict_ids=True``; ``setPropagate/1/`` finishes at once, since the
backend rebuilds lower levels as it is written; a cutout GET or POST of more
than ``max_cutout_bytes`` voxel bytes (512 MiB) is 413 before anything is
allocated, and posted bodies are never inflated past the box's size. Tokens:
with none configured
any request is accepted; otherwise ``Authorization: Token <t>`` must name
one of them, else 401.

Thread-safe: writes and RAMON changes to one channel are serialised by a
per-channel lock.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from http import HTTPStatus

import numpy as np

from ndfs.backends.base import Backend
from ndfs.backends.neurodata import (
    NPY_HEADER_BYTES, hdf5_cutout_decode, hdf5_cutout_encode, npz_decode, npz_encode)
from ndfs.errors import InvalidAnnotation, NdfsError, NotFound, ReadOnly, TooLarge
from ndfs.geometry import Box
from ndfs.serve.neurodata_model import NdError, NeuroDataModel, Project
from ndfs.serve.neurodata_ramon import RamonService, json_reply, text_reply

log = logging.getLogger("ndfs.serve.neurodata")
PREFIX_RE = re.compile(r"/(ocp|nd)/(ca|sd|ocpca)(/.*)?")
RANGE_RE = re.compile(r"(\d+),(\d+)")
IDS_RE = re.compile(r"\d+(,\d+)*")
FORMATS = {"npz": "product/npz", "hdf5": "product/hdf5", "blosc": "product/blosc", "raw": "product/raw",
           "zip": "product/zip"}
RAMON_OPTIONS = ("overwrite", "preserve", "exception", "update", "dataonly", "reduce")
#: the most voxel bytes one cutout GET or POST may hold (413 past it, before anything is allocated)
MAX_CUTOUT_BYTES = 512 * 2**20
#: zlib level of npz and zip responses: level 1 compresses about 6x faster than the default 6
#: for a few per cent more bytes, so the server is not what a cutout waits for
RESPONSE_ZLIB_LEVEL = 1


class NeuroDataApp(RamonService):
    """The WSGI app. ``tokens``: accepted API tokens (None: accept any request)."""

    def __init__(self, backend: Backend, tokens=None, *, strict_ids: bool = False,
                 max_cutout_bytes: int = MAX_CUTOUT_BYTES):
        self.backend = backend
        self.max_cutout_bytes = int(max_cutout_bytes)
        self.model = NeuroDataModel(backend)
        self.tokens = [t.encode() for t in (tokens or [])]
        self.strict_ids = bool(strict_ids)
        self._lock = threading.Lock()
        self._channel_locks: dict[tuple, threading.Lock] = {}

    # ---- WSGI ------------------------------------------------------------
    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = re.sub(r"/+", "/", environ.get("PATH_INFO") or "/")
        try:
            denied = self._auth(environ)
            if denied:
                return _reply(start_response, 401, denied)
            m = PREFIX_RE.fullmatch(path)
            if m is None:
                raise NdError(400, f"Unknown service {path}")
            seg = [s for s in (m.group(3) or "").split("/") if s]
            status, body, ctype = self._route(method, seg, environ)
            return _reply(start_response, status, body, ctype)
        except NdError as exc:
            return _reply(start_response, exc.status, exc.message)
        except NdfsError as exc:
            return _reply(start_response, *_ndfs_status(exc))
        except Exception as exc:  # ndstore's catch-all: log, answer 500
            log.exception("unhandled error on %s %s", method, path)
            return _reply(start_response, 500, f"Unexpected error: {exc}")

    def _auth(self, environ) -> str | None:
        if not self.tokens:
            return None
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme != "Token" or not given:
            return "Authentication credentials were not provided."
        given = given.strip().encode()
        return None if any(hmac.compare_digest(given, t) for t in self.tokens) else "Invalid token."

    @property
    def writable(self) -> bool:
        return "write" in self.backend.capabilities

    def _channel_lock(self, ref) -> threading.Lock:
        with self._lock:
            return self._channel_locks.setdefault(ref, threading.Lock())

    def _route(self, method: str, seg: list[str], environ):
        if seg in (["public_tokens"], ["public_datasets"]):
            return json_reply(self.model.tokens())
        if not seg:
            raise NdError(400, "Unknown service: give a token")
        if len(seg) == 2 and seg[1] == "info":
            return json_reply(self.model.info(seg[0], self.writable))
        if len(seg) < 2:
            raise NdError(400, f"Unknown service {'/'.join(seg)}")
        project = self.model.project(seg[0])
        if seg[1] in FORMATS:  # the default channel
            channels, rest = [sorted(project.channels)[0]], seg[1:]
        else:
            channels, rest = seg[1].split(","), seg[2:]
        for ch in channels:
            project.channel(ch)
        if rest and rest[0] in FORMATS:
            return self._cutout(method, project, channels, rest, environ)
        if len(channels) != 1:
            raise NdError(400, "Only cutouts take several channels")
        ch = channels[0]
        ref = (project.token, ch)
        word = rest[0] if rest else ""
        if word == "id" and method == "GET":
            return self._voxel_id(project, ch, rest[1:])
        if word == "ids" and method == "GET":
            return self._voxel_ids(project, ch, rest[1:])
        if word == "getPropagate":
            return text_reply(str(self.model.propagate_status(*ref)))
        if word == "setPropagate" and len(rest) == 2 and rest[1] in ("0", "1"):
            self._check_writable(ch)
            self.model.set_propagate(*ref, int(rest[1]))
            return 200, b"", "text/plain"
        # ---- the RAMON service ----
        self._annotation(project, ch)
        if word == "query" and method in ("GET", "POST"):
            return self._query(project, ch, rest[1:], _body(environ) if method == "POST" else b"")
        if word == "reserve" and method in ("GET", "POST") and len(rest) == 2 and rest[1].isdigit():
            self._check_writable(ch)
            first = self.backend.reserve_ids(ref, int(rest[1]))[0]
            return json_reply([first, int(rest[1])])
        if method == "POST" and word == "json":
            return self._postjson_reply(project, ch, rest[1:], _body(environ))
        if method == "POST" and all(w in RAMON_OPTIONS for w in rest):
            return self._post_ramon(project, ch, rest, _body(environ))
        if IDS_RE.fullmatch(word):
            ids = [int(v) for v in word.split(",")]
            return self._object(method, project, ch, ids, rest[1:])
        raise NdError(400, f"Unknown service {'/'.join(seg)} for {method}")

    # ---- cutouts ---------------------------------------------------------
    def _box(self, project: Project, args: list[str]) -> tuple[int, Box, list[str]]:
        """(level, box, remaining segments) from ``r/x0,x1/y0,y1/z0,z1/...``; 404 Illegal when bad."""
        if len(args) < 4 or not args[0].isdigit():
            raise NdError(404, f"Illegal cutout arguments {'/'.join(args)}")
        ranges = [RANGE_RE.fullmatch(a) for a in args[1:4]]
        if not all(ranges):
            raise NdError(404, f"Illegal cutout arguments {'/'.join(args[:4])}")
        (x0, x1), (y0, y1), (z0, z1) = [(int(r.group(1)), int(r.group(2))) for r in ranges]
        if x1 <= x0 or y1 <= y0 or z1 <= z0:
            raise NdError(404, f"Illegal range {x0},{x1}/{y0},{y1}/{z0},{z1}: empty or reversed")
        level, box = int(args[0]), Box((z0, y0, x0), (z1, y1, x1))
        project.check_box(level, box)
        return level, box, args[4:]

    def _region(self, project: Project, ch: str, level: int, box: Box) -> np.ndarray:
        """The channel's voxels of box, zeros where the dataset is larger than the channel."""
        info = project.channel(ch)
        out = np.zeros(box.shape, dtype=info.dtype)
        inside = box.intersect(info.level(level).box)
        if inside is not None:
            out[inside.slices(box.start)] = self.backend.read((project.token, ch), inside, level)
        return out

    def _cutout(self, method, project: Project, channels: list[str], rest: list[str], environ):
        fmt = rest[0]
        level, box, opts = self._box(project, rest[1:])
        dtypes = {project.channel(ch).dtype for ch in channels}
        if len(dtypes) != 1:
            raise NdError(404, "Illegal mix of datatypes: the channels of one cutout share a datatype")
        dtype = dtypes.pop()
        nbytes = box.size * np.dtype(dtype).itemsize * len(channels)
        if nbytes > self.max_cutout_bytes:
            raise NdError(413, f"Cutout of {nbytes} bytes is over this server's limit of {self.max_cutout_bytes} "
                               "bytes: ask for smaller boxes")
        filter_ids = None
        i = 0
        while i < len(opts):
            word = opts[i]
            if RANGE_RE.fullmatch(word):
                raise NdError(404, f"Illegal time range {word}: this server holds no time series")
            if word == "neariso":  # every level here has neariso_scaledown 1: the same voxels
                i += 1
            elif word == "filter" and i + 1 < len(opts) and IDS_RE.fullmatch(opts[i + 1]):
                if any(project.channel(ch).kind != "annotation" for ch in channels):
                    raise NdError(404, "Illegal filter: only annotation channels can be filtered")
                filter_ids = np.array([int(v) for v in opts[i + 1].split(",")], dtype=np.uint64)
                i += 2
            else:
                raise NdError(400, f"Unknown cutout option {word}")
        if method == "GET":
            data = np.stack([self._region(project, ch, level, box) for ch in channels])
            if filter_ids is not None:
                data[~np.isin(data, filter_ids.astype(dtype))] = 0
            return 200, _encode(fmt, data, channels, project), FORMATS[fmt]
        if method == "POST":
            if filter_ids is not None:
                raise NdError(400, "filter/ is for GET")
            data = self._decode_post(fmt, _body(environ), channels, nbytes)
            if data.shape[0] != len(channels) or data.ndim != 4:
                raise NdError(404, f"Illegal data: {data.ndim}-D array with {data.shape[0] if data.ndim else 0} "
                                   f"channels for {len(channels)} channels")
            if data.shape[1:] != box.shape:
                raise NdError(404, f"Illegal data shape {list(data.shape[1:][::-1])} (x,y,z) for a "
                                   f"{list(box.shape[::-1])} box")
            if data.dtype != dtype:
                raise NdError(404, f"Wrong datatype in POST: {data.dtype}, the channel holds {dtype}")
            for ch in channels:
                self._check_writable(ch)
            for i, ch in enumerate(channels):
                self._merge(project, ch, level, box, data[i])
            return text_reply("Success")
        raise NdError(400, f"Unknown method {method} for cutouts")

    @staticmethod
    def _decode_post(fmt: str, body: bytes, channels: list[str], nbytes: int) -> np.ndarray:
        """The posted array; never inflated past the box's bytes (a compression bomb is refused)."""
        try:
            if fmt == "npz":
                return npz_decode(body, max_bytes=nbytes + NPY_HEADER_BYTES)
            if fmt == "hdf5":
                arrays = hdf5_cutout_decode(body, max_bytes=nbytes)
                missing = [ch for ch in channels if ch not in arrays]
                if missing:
                    raise ValueError(f"no CUTOUT for channel {missing[0]}")
                return np.stack([arrays[ch] for ch in channels])
        except ValueError as exc:
            raise NdError(404, f"Illegal POST body: {exc}") from None
        raise NdError(404, f"Illegal POST format {fmt}: post npz or hdf5 (blosc bodies are pickles)")

    def _check_writable(self, ch: str) -> None:
        if not self.writable:
            raise NdError(404, f"Attempt to write to read only channel {ch}")

    def _merge(self, project: Project, ch: str, level: int, box: Box, data: np.ndarray) -> None:
        """Store the non-zero voxels of data (zeros never erase); refuse non-zero voxels outside the channel."""
        ref = (project.token, ch)
        inside = box.intersect(project.channel(ch).level(level).box)
        rest = data.copy()
        if inside is not None:
            rest[inside.slices(box.start)] = 0
        if rest.any():
            raise NdError(404, f"Illegal write: non-zero voxels outside channel {ch}")
        if inside is None:
            return
        new = data[inside.slices(box.start)]
        if not new.any():
            return
        with self._channel_lock(ref):
            old = self.backend.read(ref, inside, level)
            self.backend.write(ref, inside, level, np.where(new != 0, new, old))

    def _voxel_id(self, project: Project, ch: str, args: list[str]):
        if len(args) != 4 or not all(a.isdigit() for a in args):
            raise NdError(404, "Illegal voxel: use id/{r}/{x}/{y}/{z}/")
        level, x, y, z = map(int, args)
        box = Box((z, y, x), (z + 1, y + 1, x + 1))
        project.check_box(level, box)
        return text_reply(str(int(self._region(project, ch, level, box)[0, 0, 0])))

    def _voxel_ids(self, project: Project, ch: str, args: list[str]):
        level, box, extra = self._box(project, args)
        if extra:
            raise NdError(400, f"Unknown ids option {extra[0]}")
        ids = np.unique(self._region(project, ch, level, box))
        return text_reply(",".join(str(int(i)) for i in ids if i != 0))


def _encode(fmt: str, data: np.ndarray, channels: list[str], project: Project) -> bytes:
    import zlib

    if fmt == "npz":
        return npz_encode(data, level=RESPONSE_ZLIB_LEVEL)
    if fmt == "hdf5":
        return hdf5_cutout_encode({ch: data[i] for i, ch in enumerate(channels)},
                                  {ch: project.channel(ch).kind for ch in channels})
    if fmt == "blosc":
        import blosc

        return blosc.pack_array(np.ascontiguousarray(data))
    if fmt == "raw":
        return np.ascontiguousarray(data).tobytes()
    return zlib.compress(np.ascontiguousarray(data).tobytes(), RESPONSE_ZLIB_LEVEL)


def _ndfs_status(exc: NdfsError) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, ReadOnly):
        return 404, f"Attempt to write to read only channel: {exc}"
    if isinstance(exc, InvalidAnnotation):
        return 404, f"Invalid RAMON request: {exc}"
    if isinstance(exc, TooLarge):
        return 413, str(exc)
    if exc.errno == 22:  # EINVAL: BadRegion and friends
        return 404, f"Illegal request: {exc}"
    return 500, f"Unexpected error: {exc}"


# ---- bodies and replies --------------------------------------------------------
def _body(environ) -> bytes:
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise NdError(400, "Bad Content-Length") from None
    return environ["wsgi.input"].read(size) if size > 0 else b""


def _reply(start_response, status: int, body, content_type: str = "text/plain"):
    if isinstance(body, str):
        body = body.encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
