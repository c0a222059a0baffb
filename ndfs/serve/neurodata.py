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
with none configured any request is accepted; otherwise ``Authorization:
Token <t>`` (or ``Bearer <t>``) must name one of them, else 401.

Bounds (:mod:`ndfs.serve.limits`): numbers in URLs and query predicates are
parsed within their range or refused 400 (never 500); npz, raw and zip cutouts
are streamed piece by piece as they are compressed; hdf5 and blosc cutouts,
posts and RAMON voxels hold memory of the app's :class:`MemoryBudget` (413
when one needs more than the whole budget, 503 when the server is busy);
``ids/`` answers at most ``MAX_LIST_ITEMS`` ids, a request names at most
``MAX_OBJECTS`` RAMON ids and ``MAX_CHANNELS`` channels; bounding boxes and
query boxes scan at most ``max_scan_bytes``; JSON and query bodies are at most
``JSON_BODY_BYTES``.

Thread-safe: writes and RAMON changes to one channel are serialised by a
per-channel lock.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from http import HTTPStatus

import numpy as np

from ndfs.stores.base import Backend
from ndfs.stores.neurodata import (
    NPY_HEADER_BYTES, hdf5_cutout_decode, hdf5_cutout_encode, npz_decode, npz_encode)
from ndfs.core.errors import InvalidAnnotation, NdfsError, NotFound, ReadOnly, TooLarge
from ndfs.core.geometry import Box
from ndfs.serve.common import TokenAuth
from ndfs.serve.limits import (
    DEFAULT_SCAN_BYTES, JSON_BODY_BYTES, MAX_LIST_ITEMS, UINT64_MAX, HeldAnswer, MemoryBudget,
    STREAM_PIECE_BYTES, RequestRefused, parse_int, read_body, stream_plan)
from ndfs.serve.neurodata_model import NdError, NeuroDataModel, Project
from ndfs.serve.neurodata_ramon import MAX_OBJECTS, RamonService, json_reply, text_reply

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
#: the most channels one cutout names
MAX_CHANNELS = 256
#: formats streamed piece by piece (the others are built whole within the memory budget)
STREAMED = ("npz", "raw", "zip")


class NeuroDataApp(RamonService):
    """The WSGI app. ``tokens``: accepted API tokens (None: accept any request)."""

    def __init__(self, backend: Backend, tokens=None, *, strict_ids: bool = False,
                 max_cutout_bytes: int = MAX_CUTOUT_BYTES, budget: MemoryBudget | None = None,
                 max_scan_bytes: int = DEFAULT_SCAN_BYTES):
        self.backend = backend
        self.max_cutout_bytes = int(max_cutout_bytes)
        self.model = NeuroDataModel(backend)
        self.auth = TokenAuth(tokens)
        self.budget = budget or MemoryBudget()
        self.max_scan_bytes = int(max_scan_bytes)
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
            if isinstance(body, HeldAnswer):  # streamed, or held in the memory budget until sent
                return _stream_reply(start_response, status, body, ctype)
            return _reply(start_response, status, body, ctype)
        except NdError as exc:
            return _reply(start_response, exc.status, exc.message)
        except RequestRefused as exc:
            return _reply(start_response, exc.status, str(exc))
        except NdfsError as exc:
            return _reply(start_response, *_ndfs_status(exc))
        except Exception as exc:  # ndstore's catch-all: log, answer 500
            log.exception("unhandled error on %s %s", method, path)
            return _reply(start_response, 500, f"Unexpected error: {exc}")

    def _auth(self, environ) -> str | None:
        return self.auth.refusal(environ.get("HTTP_AUTHORIZATION", ""))

    def _hold(self, nbytes: int, what: str):
        """A ticket of the memory budget for ``nbytes``; 413 when no budget could ever hold them."""
        if nbytes > self.budget.total_bytes:
            raise NdError(413, f"{what} needs {nbytes} bytes of memory, more than this server's request memory "
                               f"of {self.budget.total_bytes} bytes: ask for smaller boxes")
        return self.budget.hold(nbytes, what)

    def _check_scan(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_scan_bytes:
            raise NdError(413, f"{what} would scan {nbytes} bytes of voxels, more than this server's limit of "
                               f"{self.max_scan_bytes}")

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
            if len(channels) > MAX_CHANNELS:
                raise NdError(400, f"A request names at most {MAX_CHANNELS} channels, not {len(channels)}")
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
            return self._query(project, ch, rest[1:], _body(environ, JSON_BODY_BYTES) if method == "POST" else b"")
        if word == "reserve" and method in ("GET", "POST") and len(rest) == 2:
            count = parse_int(rest[1], "the number of ids to reserve", 1, UINT64_MAX)
            self._check_writable(ch)
            first = self.backend.reserve_ids(ref, count)[0]
            return json_reply([first, count])
        if method == "POST" and word == "json":
            return self._postjson_reply(project, ch, rest[1:], _body(environ, JSON_BODY_BYTES))
        if method == "POST" and all(w in RAMON_OPTIONS for w in rest):
            return self._post_ramon(project, ch, rest, _body(environ, self.max_cutout_bytes))
        if IDS_RE.fullmatch(word):
            texts = word.split(",")
            if len(texts) > MAX_OBJECTS:
                raise NdError(400, f"A request names at most {MAX_OBJECTS} annotation ids, not {len(texts)}")
            ids = [parse_int(v, "annotation id") for v in texts]
            return self._object(method, project, ch, ids, rest[1:])
        raise NdError(400, f"Unknown service {'/'.join(seg)} for {method}")

    # ---- cutouts ---------------------------------------------------------
    def _box(self, project: Project, args: list[str]) -> tuple[int, Box, list[str]]:
        """(level, box, remaining segments) from ``r/x0,x1/y0,y1/z0,z1/...``; 404 Illegal when bad."""
        if len(args) < 4 or not args[0].isdigit():
            raise NdError(404, f"Illegal cutout arguments {'/'.join(args)[:200]}")
        ranges = [RANGE_RE.fullmatch(a) for a in args[1:4]]
        if not all(ranges):
            raise NdError(404, f"Illegal cutout arguments {'/'.join(args[:4])[:200]}")
        (x0, x1), (y0, y1), (z0, z1) = [(parse_int(r.group(1), f"{a} start"), parse_int(r.group(2), f"{a} stop"))
                                        for r, a in zip(ranges, "xyz")]
        if x1 <= x0 or y1 <= y0 or z1 <= z0:
            raise NdError(404, f"Illegal range {x0},{x1}/{y0},{y1}/{z0},{z1}: empty or reversed")
        level, box = parse_int(args[0], "resolution"), Box((z0, y0, x0), (z1, y1, x1))
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
                texts = opts[i + 1].split(",")
                if len(texts) > MAX_LIST_ITEMS:
                    raise NdError(400, f"A filter names at most {MAX_LIST_ITEMS} ids, not {len(texts)}")
                filter_ids = np.array([parse_int(v, "filter id") for v in texts], dtype=np.uint64)
                i += 2
            else:
                raise NdError(400, f"Unknown cutout option {word[:64]}")
        if method == "GET":
            return 200, self._answer(fmt, project, channels, level, box, dtype, filter_ids), FORMATS[fmt]
        if method == "POST":
            if filter_ids is not None:
                raise NdError(400, "filter/ is for GET")
            declared = parse_int(environ.get("CONTENT_LENGTH") or "0", "Content-Length")
            with self._hold(declared + 4 * nbytes, "this cutout"):  # body, decoded, stored and merged voxels
                return self._post_cutout(fmt, project, channels, level, box, dtype, nbytes, _body(environ))
        raise NdError(400, f"Unknown method {method} for cutouts")

    def _answer(self, fmt: str, project: Project, channels: list[str], level: int, box: Box, dtype,
                filter_ids) -> HeldAnswer:
        """A cutout's answer: npz, raw and zip streamed piece by piece, hdf5 and blosc built whole."""
        nbytes = box.size * np.dtype(dtype).itemsize * len(channels)
        if fmt not in STREAMED:
            with self._hold(3 * nbytes, "this cutout") as ticket:  # voxels, the encoder's copy, the answer
                data = np.zeros((len(channels),) + box.shape, dtype)
                for i, ch in enumerate(channels):
                    data[i] = self._region(project, ch, level, box)
                if filter_ids is not None:
                    data[~np.isin(data, filter_ids.astype(dtype))] = 0
                return ticket.keep([_encode(fmt, data, channels, project)])
        pieces = self._pieces(fmt, project, channels, level, box, dtype, filter_ids)
        need = max(self._plan(project, ch, level, box)[1] for ch in channels)
        if nbytes <= STREAM_PIECE_BYTES and 3 * nbytes <= need:  # small: made whole, so it has a Content-Length
            with self._hold(3 * nbytes, "this cutout") as ticket:  # (and the connection is kept)
                return ticket.keep([b"".join(pieces)])
        ticket = self._hold(need, "this cutout")
        return HeldAnswer(pieces, ticket.release, nbytes if fmt == "raw" else None)

    def _plan(self, project: Project, ch: str, level: int, box: Box):
        """stream_plan of a box of a channel: (pieces, bytes to hold while one is made)."""
        info = project.channel(ch)
        lv = info.level(level)
        return stream_plan(box, info.dtype.itemsize, lv.chunk_shape, (lv.chunk_origin or lv.box.start)[0],
                           self.budget.total_bytes)

    def _pieces(self, fmt: str, project: Project, channels: list[str], level: int, box: Box, dtype, filter_ids):
        """The bytes of a streamed cutout answer (see _answer), one piece of voxels at a time."""
        packer = zlib.compressobj(RESPONSE_ZLIB_LEVEL) if fmt != "raw" else None
        if fmt == "npz":
            yield packer.compress(npy_header((len(channels),) + box.shape, dtype))
        for ch in channels:
            for piece in self._plan(project, ch, level, box)[0]:
                data = self._region(project, ch, level, piece)
                if filter_ids is not None:
                    data[~np.isin(data, filter_ids.astype(dtype))] = 0
                raw = memoryview(np.ascontiguousarray(data)).cast("B")
                yield packer.compress(raw) if packer is not None else bytes(raw)
        if packer is not None:
            yield packer.flush()

    def _post_cutout(self, fmt, project: Project, channels: list[str], level: int, box: Box, dtype, nbytes: int,
                 body: bytes):
        """Store a posted cutout's non-zero voxels (the caller holds its memory ticket)."""
        data = self._decode_post(fmt, body, channels, nbytes)
        del body
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
        within = 0 if inside is None else np.count_nonzero(data[inside.slices(box.start)])
        if np.count_nonzero(data) != within:  # counted in place: no copy of the voxels
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
        level, x, y, z = (parse_int(a, what) for a, what in zip(args, ("resolution", "x", "y", "z")))
        box = Box((z, y, x), (z + 1, y + 1, x + 1))
        project.check_box(level, box)
        return text_reply(str(int(self._region(project, ch, level, box)[0, 0, 0])))

    def _voxel_ids(self, project: Project, ch: str, args: list[str]):
        level, box, extra = self._box(project, args)
        if extra:
            raise NdError(400, f"Unknown ids option {extra[0][:64]}")
        dtype = project.channel(ch).dtype
        if box.size * dtype.itemsize > self.max_cutout_bytes:
            raise NdError(413, f"ids/ of {box.size * dtype.itemsize} bytes is over this server's limit of "
                               f"{self.max_cutout_bytes} bytes: ask for smaller boxes")
        ids = np.zeros(0, dtype)
        pieces, need = self._plan(project, ch, level, box)
        for piece in pieces:
            with self._hold(need, "this ids request"):
                ids = np.union1d(ids, np.unique(self._region(project, ch, level, piece)))
            if len(ids) > MAX_LIST_ITEMS + 1:
                raise NdError(413, f"The box holds more than {MAX_LIST_ITEMS} ids: ask for smaller boxes")
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


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """The .npy (format 1.0) header of a C-order array of ``shape`` and ``dtype``. Pure."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ---- bodies and replies --------------------------------------------------------
def _body(environ, limit: int = 2**62) -> bytes:
    """The request body (waitress bounds every body; ``limit`` bounds it for one route, 413 past it)."""
    return read_body(environ, limit)


def _stream_reply(start_response, status: int, body: HeldAnswer, content_type: str):
    """An answer that gives its memory ticket back when done; of unknown length, it is sent chunked
    (and waitress closes the connection after it)."""
    headers = [("Content-Type", content_type)]
    if body.length is not None:
        headers.append(("Content-Length", str(body.length)))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return body


def _reply(start_response, status: int, body, content_type: str = "text/plain"):
    if isinstance(body, str):
        body = body.encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
