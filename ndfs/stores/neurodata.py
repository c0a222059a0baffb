"""The NeuroData (ndstore, "OCP") driver: tokens and channels, npz cutouts and the RAMON service.

Hierarchy: ``children(())`` lists the service's ``public_tokens/`` plus the
configured ``tokens``; ``children((tok,))`` the token's channels (from
``{tok}/info/``, memoised per token for ``ttl_s`` seconds or until ``forget_info``); ``(tok, ch)`` is a
volume. ndfs level ``r`` is NeuroData resolution ``r``; each level's box is
the dataset's ``offset``/``imagesize`` at r (absolute coordinates, the offset
included), its voxel size ``voxelres`` and its chunk shape ``cube_dimension``
(ZYX, on a global grid). ``image`` channels are images, ``annotation``
channels annotations; time series are not read.

Voxels travel as the compressed npz of ``specs/neurodata.md`` 4 (zlib of
``np.save`` bytes of a (C,Z,Y,X) array, read with ``allow_pickle=False``;
blosc bodies, pickles inside, are never unpacked). A transfer is cut into
pieces aligned to supercubes (4 cubes per axis), halved until each holds at
most ``max_request_bytes`` (16 MiB: a 64 MiB cutout in one request waited on
the server compressing it on one core), run in parallel. **Posts merge**: ndstore stores
only the non-zero voxels of a posted array, so writing zeros never erases
(RAMON ``ramon_delete`` is the way to clear an object's voxels).

RAMON (capability ``ramon``; ids are uint32): ``ramon_get`` reads
``{ids}/json/`` (legacy layout A or flat layout B) 100 ids per request;
``ramon_put`` posts legacy HDF5 (``update/`` for existing ids, ``overwrite/``
for new ones and id 0, with attached voxels as ``CUTOUT``); ``ramon_ids`` is
``query/`` (a box goes as a POST body); ``reserve_ids`` is ``reserve/{n}/``;
``ramon_delete`` is ``DELETE {ids}/`` (voxels too); ``ramon_bbox`` is
``{id}/boundingbox/{r}/``.

Requests retry on connection errors, timeouts and 429/5xx (not posts that
create ids). Errors: 404 is NotFound, except ``Illegal…`` (BadRegion) and the
read-only refusal (ReadOnly); 401/403 PermissionDenied; 400 BadRegion; other
statuses BackendError. The API token (``Authorization: Token``) is never
logged or shown. Thread-safe.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np

from ndfs.stores.base import AnnotationStore, Backend, VolumeRef
from ndfs.stores.http import HttpClient, HttpDriver, mask_url, run_parallel, status_error
from ndfs.core.errors import (
    BackendError, BadInput, BadRegion, InvalidAnnotation, NdfsError, NotFound, ReadOnly,
)
from ndfs.formats import safe
from ndfs.core.geometry import Box, ChunkGrid
from ndfs.core.info import LevelInfo, VolumeInfo

log = logging.getLogger("ndfs.neurodata")
MiB = 2**20
NAME_RE = re.compile(r"\w+", re.ASCII)
DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")
API_PREFIXES = ("nd/sd", "ocp/ca", "nd/ca", "ocp/sd", "ocp/ocpca", "nd/ocpca")
RAMON_BATCH = 100
QUERY_WORDS = ("type", "status", "confidence", "limit")
NPY_HEADER_BYTES = 65536  # the most an .npy header takes (format 1.0), beyond the array's own bytes


# ---- wire codecs (shared with ndfs.serve.neurodata) --------------------------------
def npz_encode(array: np.ndarray, level: int = 6) -> bytes:
    """The "npz" body: zlib-compressed ``np.save`` bytes (not a zip archive), at zlib ``level``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buf.getvalue(), level)


def npz_decode(body: bytes, max_bytes: int | None = None) -> np.ndarray:
    """An array from an "npz" body; ValueError when it is not exactly one.

    Refused (by :mod:`ndfs.formats.safe`): a stream that is truncated or followed by other
    bytes, an .npy header that declares other bytes than follow it, pickled object arrays, and
    with ``max_bytes`` a body that inflates past it (inflation stops there, so a zlib bomb never
    fills memory).
    """
    try:
        raw = safe.inflate(body, safe.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        return safe.npy_from_bytes(raw, "the body's .npy array", max_bytes=max_bytes)
    except BadInput as exc:
        raise ValueError(str(exc)) from None


def hdf5_cutout_encode(arrays: dict[str, np.ndarray], kinds: dict[str, str]) -> bytes:
    """The "hdf5" body: one group per channel with CUTOUT (Z,Y,X, gzip), CHANNELTYPE and DATATYPE
    (the layout lives with the other HDF5 volume files: :mod:`ndfs.formats.files.h5`)."""
    from ndfs.formats.files import h5

    return h5.channel_cutouts_bytes(arrays, kinds)


def hdf5_cutout_decode(body: bytes, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Channel name -> CUTOUT array of an "hdf5" body; ValueError when it is not one, or when
    its CUTOUTs together would hold more than ``max_bytes``. Read by
    :func:`ndfs.formats.files.h5.channel_cutouts`, which checks the file whole first."""
    from ndfs.formats.files import h5

    try:
        return h5.channel_cutouts(body, "the body", max_bytes=max_bytes)
    except BadInput as exc:
        raise ValueError(str(exc)) from None


def pieces(box: Box, cube_zyx, itemsize: int, max_bytes: int) -> list[Box]:
    """The box cut on a global grid of supercubes (4 cubes per axis), halved until each piece fits max_bytes."""
    shape = [4 * max(1, int(c)) for c in cube_zyx]
    while int(np.prod(shape)) * itemsize > max_bytes and max(shape) > 1:
        axis = int(np.argmax(shape))
        shape[axis] = max(1, shape[axis] // 2)
    grid = ChunkGrid(tuple(shape), box, origin=(0, 0, 0))
    return [grid.chunk_box(i) for i in grid.chunks(box)]


def volume_info(info: dict, channel: str) -> VolumeInfo:
    """VolumeInfo of one channel from a token's ``info/`` JSON (ValueError/KeyError when unusable). Pure."""
    ch = info["channels"][channel]
    dtype = str(ch["datatype"])
    if dtype not in DTYPES:
        raise ValueError(f"datatype {dtype!r} is not one ndfs reads ({', '.join(DTYPES)})")
    kind = {"image": "image", "annotation": "annotation"}.get(str(ch.get("channel_type", "image")))
    if kind is None:
        raise ValueError(f"channel type {ch.get('channel_type')!r} is not image or annotation")
    ds = info["dataset"]
    resolutions = sorted(int(r) for r in ds.get("resolutions", [int(k) for k in ds["imagesize"]]))
    if resolutions != list(range(len(resolutions))) or not resolutions:
        raise ValueError(f"resolutions {resolutions} do not run from 0")
    levels = []
    for r in resolutions:
        size, off = ds["imagesize"][str(r)], ds["offset"][str(r)]
        vox = ds.get("voxelres", {}).get(str(r), [1.0, 1.0, 1.0])
        cube = ds.get("cube_dimension", {}).get(str(r), [128, 128, 16])
        if any(int(s) <= 0 for s in size) or any(int(o) < 0 for o in off):
            raise ValueError(f"level {r} has size {size} at offset {off}")
        levels.append(LevelInfo(shape=tuple(int(v) for v in size[::-1]), offset=tuple(int(v) for v in off[::-1]),
                                voxel_size_nm=tuple(float(v) for v in vox[::-1]),
                                chunk_shape=tuple(int(v) for v in cube[::-1]), chunk_origin=(0, 0, 0)))
    extra = {"neurodata": {"channel_type": ch.get("channel_type"), "readonly": int(ch.get("readonly") or 0),
                           "propagate": ch.get("propagate"), "scaling": ds.get("scaling"),
                           "dataset": ds.get("name")}}
    return VolumeInfo(dtype=np.dtype(dtype), kind=kind, levels=tuple(levels), extra=extra)


class NeuroDataBackend(HttpDriver, Backend, AnnotationStore):
    """An ndstore service at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``tokens``: project tokens to show besides the public ones; ``api_token``:
    sent as ``Authorization: Token`` (None: anonymous); ``api``: the URL style,
    ``"nd/sd"`` (ndstore 1.1, default) or ``"ocp/ca"`` (older servers, ndio 1.1.5).
    Timeouts, retries and ``workers`` as for the BOSS driver; a token's project description (its channels)
    is remembered for ``ttl_s`` seconds. No I/O until first use.
    """

    kind = "neurodata"
    ramon_max_id = 2**32 - 1

    def __init__(self, url: str, api_token: str | None = None, *, tokens=(), api: str = "nd/sd",
                 timeout_s: float = 30.0, connect_timeout_s: float = 10.0, retries: int = 4,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0, workers: int = 8,
                 max_request_bytes: int = 16 * MiB, ttl_s: float = 10.0, read_only: bool = False):
        super().__init__()
        if not re.match(r"https?://[^/]+", str(url)):
            raise BadRegion(f"a NeuroData url looks like https://host[:port], got {mask_url(str(url))!r}")
        if api.strip("/") not in API_PREFIXES:
            raise BadRegion(f"api must be one of {', '.join(API_PREFIXES)}, got {api!r}")
        if workers < 1 or retries < 0 or max_request_bytes < 16 or timeout_s <= 0:
            raise BadRegion("NeuroData driver settings must be positive (workers, timeout_s, max_request_bytes)")
        bad = [t for t in tokens if not NAME_RE.fullmatch(str(t))]
        if bad:
            raise BadRegion(f"NeuroData tokens are letters, digits and '_', not {bad[0]!r}")
        self.url = str(url).rstrip("/")
        self.api = api.strip("/")
        self.tokens = tuple(str(t) for t in tokens)
        self._token = api_token
        self.workers, self.max_request_bytes = int(workers), int(max_request_bytes)
        self.capabilities = frozenset() if read_only else frozenset({"write"})
        self._client = HttpClient("NeuroData", f"{self.url}/{self.api}", api_token, _http_error,
                               timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, retries=retries,
                               backoff_s=backoff_s, backoff_cap_s=backoff_cap_s, workers=self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ndfs-neurodata")
        self.ttl_s = float(ttl_s)
        self._tok_lock = threading.Lock()
        self._projects: dict[str, tuple[float, dict]] = {}  # token -> (time.monotonic() fetched, description)

    def __repr__(self) -> str:  # HttpDriver's, with the URL style
        return f"NeuroDataBackend({mask_url(self.url)!r}, api={self.api!r}, token={'***' if self._token else None})"

    def forget_info(self, ref=None) -> None:
        super().forget_info(ref)
        with self._tok_lock:
            self._projects.clear()

    # ---- hierarchy and info ----------------------------------------------
    def _json(self, path: str):
        return self._client.request("GET", path, decode=lambda resp: safe.reply_json(resp.content))

    def _project(self, token: str) -> dict:
        if not NAME_RE.fullmatch(token):
            raise NotFound(f"{token!r} is not a NeuroData token (letters, digits and '_')")
        with self._tok_lock:
            hit = self._projects.get(token)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        fetched = time.monotonic()
        found = self._json(f"/{token}/info/")
        if not isinstance(found, dict) or not isinstance(found.get("channels"), dict) \
                or not isinstance(found.get("dataset"), dict):
            raise BackendError(f"NeuroData info of {token} is not a project description")
        with self._tok_lock:
            self._projects[token] = (fetched, found)
        return found

    def _children(self, path: VolumeRef) -> list[str]:
        if len(path) == 0:
            public = self._json("/public_tokens/")
            if not isinstance(public, list):
                raise BackendError("NeuroData public_tokens/ is not a list")
            return sorted({str(t) for t in public if NAME_RE.fullmatch(str(t))} | set(self.tokens))
        if len(path) == 1:
            return sorted(c for c in self._project(path[0])["channels"] if NAME_RE.fullmatch(c))
        if len(path) == 2:
            self.info(path)
            raise NotFound(f"{'/'.join(path)} is a channel, not a folder")
        raise NotFound(f"NeuroData paths are token/channel, not {'/'.join(path)}")

    def _is_volume(self, path: VolumeRef) -> bool:
        if len(path) == 1:
            self._project(path[0])
            return False
        if len(path) == 2:
            self.info(path)
            return True
        if not path:
            return False
        raise NotFound(f"NeuroData paths are token/channel, not {'/'.join(path)}")

    def _info(self, ref: VolumeRef) -> VolumeInfo:
        if len(ref) != 2:
            raise NotFound(f"a NeuroData channel is token/channel, not {'/'.join(ref) or '/'}")
        project = self._project(ref[0])
        if ref[1] not in project["channels"] or not NAME_RE.fullmatch(ref[1]):
            raise NotFound(f"NeuroData token {ref[0]} has no channel {ref[1]}")
        try:
            return volume_info(project, ref[1])
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"NeuroData info of {'/'.join(ref)} is unusable: {exc}") from exc

    # ---- voxels ----------------------------------------------------------
    @staticmethod
    def _box_path(ref: VolumeRef, fmt: str, level: int, box: Box) -> str:
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        return f"/{ref[0]}/{ref[1]}/{fmt}/{level}/{x0},{x1}/{y0},{y1}/{z0},{z1}/"

    def _pieces(self, ref: VolumeRef, box: Box, level: int) -> list[Box]:
        info = self.info(ref)
        return pieces(box, info.level(level).chunk_shape, info.dtype.itemsize, self.max_request_bytes)

    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        dtype = self.info(ref).dtype
        out = np.empty(box.shape, dtype=dtype)

        def fetch(piece: Box) -> None:
            def decode(resp):
                arr = npz_decode(resp.content, max_bytes=piece.size * dtype.itemsize + NPY_HEADER_BYTES)
                if arr.shape != (1,) + piece.shape or arr.dtype != dtype:
                    raise ValueError(f"got {arr.dtype}{arr.shape}, expected {dtype}{(1,) + piece.shape}")
                return arr[0]

            out[piece.slices(box.start)] = self._client.request("GET", self._box_path(ref, "npz", level, piece),
                                                             decode=decode)

        run_parallel(self._pool, [lambda p=p: fetch(p) for p in self._pieces(ref, box, level)])
        return out

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        if self.info(ref).extra.get("neurodata", {}).get("readonly"):
            raise ReadOnly(f"NeuroData channel {'/'.join(ref)} is read-only")

        def store(piece: Box) -> None:
            part = array[piece.slices(box.start)]
            if not part.any():  # zeros never erase: nothing to send
                return
            self._client.request("POST", self._box_path(ref, "npz", level, piece), data=npz_encode(part[None]),
                              headers={"Content-Type": "application/octet-stream"})

        run_parallel(self._pool, [lambda p=p: store(p) for p in self._pieces(ref, box, level)])

    # ---- RAMON -----------------------------------------------------------
    def _ramon_path(self, ref: VolumeRef, tail: str) -> str:
        return f"/{ref[0]}/{ref[1]}/{tail}"

    def _ramon_get(self, ref: VolumeRef, ids: list[int]) -> list:
        from ndfs.ramon import from_legacy

        found = {}
        for i in range(0, len(ids), RAMON_BATCH):
            batch = ids[i:i + RAMON_BATCH]
            doc = self._json(self._ramon_path(ref, ",".join(map(str, batch)) + "/json/"))
            try:
                for obj in from_legacy(doc, max_id=self.ramon_max_id):
                    found[obj.id] = obj
            except InvalidAnnotation as exc:
                raise BackendError(f"NeuroData RAMON reply for {'/'.join(ref)} is unusable: {exc}") from exc
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"NeuroData returned no RAMON object {missing[0]}")
        return [found[i] for i in ids]

    def _post_ramon(self, ref: VolumeRef, objs: list, option: str) -> list[int]:
        from ndfs.ramon import to_hdf5

        body = to_hdf5(objs, layout="legacy")

        def decode(resp):
            text = resp.text.strip()
            return [int(v) for v in text.split(",")] if text else []

        ids = self._client.request("POST", self._ramon_path(ref, f"{option}/"), data=body, decode=decode,
                                headers={"Content-Type": "application/octet-stream"},
                                retry=all(o.id for o in objs))
        if len(ids) != len(objs):
            raise BackendError(f"NeuroData stored {len(ids)} RAMON objects of {len(objs)}")
        return ids

    def _ramon_put(self, ref: VolumeRef, objs: list) -> list[int]:
        out: dict[int, int] = {}
        new = [(i, o) for i, o in enumerate(objs) if o.id == 0]
        old = [(i, o) for i, o in enumerate(objs) if o.id != 0]
        for k in range(0, len(old), RAMON_BATCH):
            batch = old[k:k + RAMON_BATCH]
            try:
                ids = self._post_ramon(ref, [o for _, o in batch], "update")
            except NotFound:  # some are new: one by one, update or create
                ids = []
                for _, o in batch:
                    try:
                        ids += self._post_ramon(ref, [o], "update")
                    except NotFound:
                        ids += self._post_ramon(ref, [o], "overwrite")
            out.update({i: oid for (i, _), oid in zip(batch, ids)})
        for i, o in new:  # one per request: the HDF5 body names groups by id, and all of these are "0"
            out[i] = self._post_ramon(ref, [o], "overwrite")[0]
        return [out[i] for i in range(len(objs))]

    def _ramon_delete(self, ref: VolumeRef, ids: list[int]) -> None:
        for i in range(0, len(ids), RAMON_BATCH):
            tail = ",".join(map(str, ids[i:i + RAMON_BATCH])) + "/"
            self._client.request("DELETE", self._ramon_path(ref, tail))

    def _reserve_ids(self, ref: VolumeRef, n: int) -> int:
        def decode(resp):
            first, count = safe.reply_json(resp.content)
            if int(count) != n:
                raise ValueError(f"reserved {count} ids, not {n}")
            return int(first)

        return self._client.request("POST", self._ramon_path(ref, f"reserve/{n}/"), decode=decode, retry=False)

    def _ramon_ids(self, ref: VolumeRef, filters, box: Box | None, level: int) -> list[int]:
        from ndfs.ramon import NDSTORE_TYPES, read_ids_hdf5

        parts = []
        if filters.type is not None:
            if filters.type not in NDSTORE_TYPES:
                raise InvalidAnnotation(f"NeuroData has no RAMON type {filters.type}")
            parts.append(f"type/{NDSTORE_TYPES[filters.type]}")
        if filters.status is not None:
            parts.append(f"status/{filters.status}")
        if filters.confidence is not None:
            parts.append(f"confidence/{filters.confidence[0]}/{filters.confidence[1]!r}")
        for k, v in filters.kv:
            if k in QUERY_WORDS or not v:
                raise InvalidAnnotation(f"NeuroData cannot query the kv pair {k!r}={v!r} "
                                        f"(keys {', '.join(QUERY_WORDS)} and empty values are ambiguous)")
            parts.append(f"{quote(k, safe='')}/{quote(v, safe='')}")
        if filters.limit is not None:
            parts.append(f"limit/{filters.limit}")
        path = self._ramon_path(ref, "query/" + "".join(p + "/" for p in parts))
        decode = lambda resp: read_ids_hdf5(resp.content)  # noqa: E731
        if box is None:
            return sorted(self._client.request("GET", path, decode=decode))
        return sorted(self._client.request("POST", path, data=_box_body(box, level), decode=decode,
                                        headers={"Content-Type": "application/octet-stream"}))

    def _ramon_bbox(self, ref: VolumeRef, id: int, level: int) -> Box | None:
        def decode(resp):
            with safe.open_hdf5(resp.content, "NeuroData's bounding box answer", max_bytes=2**20) as f:
                try:
                    g = f[str(id)]
                    off = [int(v) for v in np.asarray(g["XYZOFFSET"][()]).reshape(-1)]
                    dim = [int(v) for v in np.asarray(g["XYZDIMENSION"][()]).reshape(-1)]
                except (KeyError, TypeError) as exc:
                    raise ValueError(f"no XYZOFFSET and XYZDIMENSION of object {id}: {exc}") from None
            return Box.from_shape(dim[::-1], off[::-1])

        try:
            return self._client.request("GET", self._ramon_path(ref, f"{id}/boundingbox/{level}/"), decode=decode)
        except NotFound as exc:
            if "No annotation found" in str(exc):
                raise
            return None


def _box_body(box: Box, level: int) -> bytes:
    """A query POST body: RESOLUTION, XYZOFFSET and CUTOUTSIZE (x, y, z)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("RESOLUTION", data=np.array([level], np.uint32))
        f.create_dataset("XYZOFFSET", data=np.array(box.start[::-1], np.uint32))
        f.create_dataset("CUTOUTSIZE", data=np.array(box.shape[::-1], np.uint32))
    return buf.getvalue()


def _http_error(resp, method: str, path: str) -> NdfsError:
    status = resp.status_code
    detail = (resp.text or "")[:300].strip()
    message = f"NeuroData {method} {path} answered {status}: {detail or resp.reason}"
    if status == 404:
        if detail.startswith("Illegal") or "Wrong datatype" in detail or "shape" in detail.lower():
            return BadRegion(message)
        if "read only" in detail.lower() or "readonly" in detail.lower():
            return ReadOnly(message)
        if detail.startswith("Invalid RAMON") or detail.startswith("RAMON"):
            return InvalidAnnotation(message)
    return status_error(status, message)


__all__ = ["NeuroDataBackend", "npz_encode", "npz_decode", "hdf5_cutout_encode", "hdf5_cutout_decode",
           "volume_info", "pieces"]
