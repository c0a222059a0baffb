"""The BOSS (bossDB) driver: collections, experiments and channels over the BOSS REST API v1.

Hierarchy: ``children(())`` lists collections, ``children((c,))`` experiments,
``children((c, e))`` channels; ``(c, e, ch)`` is a volume. ``info`` combines
the channel, experiment and coordinate-frame resources: dtype (uint8/uint16
image, uint64 annotation), one level per BOSS resolution from the channel's
``base_resolution`` (ndfs level i is BOSS resolution ``base_resolution + i``),
x and y halved per level (z too for ``isotropic`` experiments), extents
``[floor(start / 2**r), ceil(stop / 2**r))``, voxel sizes in nm, and the
512x512x16 cuboid as chunk shape. The service checks the ranges of every
resolution against the level-0 frame start, so at coarser levels the voxels
below that start cannot be asked for: they read as zeros, and a write that
puts non-zero voxels there is refused (BadRegion) before anything is sent.

Voxels travel as blosc frames of C-order ZYX arrays (``specs/boss.md`` 3.2,
compressed with typesize = bit depth, as the service and intern do). Every
transfer is split on the global cuboid grid of its level, one request per
cuboid touched (each further split if it exceeds ``max_request_bytes``), and
the pieces run in parallel on a thread pool sharing one pooled session.

Writes replace the box: BOSS posts *merge* (posted zeros never erase), so a
piece holding zeros is first erased with ``to_black`` and then posted; a piece
without zeros is one POST, an all-zero piece one ``to_black``. A reader racing
such a write can see the erased piece for a moment.

Every request has a (connect, read) timeout and is retried on connection
errors, timeouts, truncated or undecodable bodies and HTTP 429/500/502/503/504,
with exponential backoff and full jitter, honouring ``Retry-After``. Other
errors map to the NdfsError tree: 401/403 PermissionDenied, 404 NotFound,
400 BadRegion, 413 TooLarge, the rest BackendError; a timeout after the last
attempt is Timeout. The token goes only into the Authorization header: it is
never logged, and repr shows ``token=***``. Decoded cuboids are not cached
here; wrap the backend in :class:`ndfs.cache.CachedBackend` for that.

RAMON (capability ``ramon``, annotation channels, limited): ids from the
``ids`` endpoint, ``reserve``, ``boundingbox``, objects as ``ramon/<id>`` keys
of the channel's metadata; see :mod:`ndfs.stores.boss_ramon`.

Thread-safe: the session, the pool and the counters are shared by all threads.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from ndfs.stores.base import AnnotationStore, Backend, VolumeRef
from ndfs.stores.boss_grid import CUBOID_ZYX, cuboid_pieces
from ndfs.stores.boss_ramon import BossRamon
from ndfs.stores.http import HttpClient, HttpDriver, mask_url, run_parallel, status_error
from ndfs.core.errors import BackendError, BadInput, BadRegion, NdfsError, NotFound, TooLarge
from ndfs.formats import safe
from ndfs.core.geometry import Box
from ndfs.core.info import LevelInfo, VolumeInfo

log = logging.getLogger("ndfs.boss")
MiB = 2**20
DTYPES = {"uint8": "image", "uint16": "image", "uint64": "annotation"}
UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _blosc():
    try:
        import blosc
    except ImportError:
        raise BackendError("BOSS cutouts need the blosc package: pip install blosc") from None
    return blosc


def blosc_encode(array: np.ndarray) -> bytes:
    """A blosc frame of the array as BOSS and intern write it (typesize = bit depth, clevel 9, shuffle)."""
    blosc = _blosc()
    arr = np.ascontiguousarray(array)
    return blosc.compress(memoryview(arr).cast("B"), typesize=arr.dtype.itemsize * 8, clevel=9,
                          shuffle=blosc.SHUFFLE, cname="blosclz")


class BloscFrameError(ValueError):
    """The bytes are not a well-formed blosc frame, or it does not decompress."""


class BloscSizeError(ValueError):
    """A good blosc frame that does not hold exactly the expected array."""


def blosc_decode(body: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one blosc frame into a writable array of ``shape``.

    The frame's header is checked by :func:`ndfs.formats.safe.blosc_decompress` before anything
    is decompressed. Raises BloscFrameError for a malformed frame and BloscSizeError for a frame
    of the wrong size (both ValueErrors); the server maps them to BOSS codes 2001/2002.
    """
    _blosc()
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        raw = safe.blosc_decompress(body, expected, "the blosc frame")
    except safe.WrongSize as exc:
        raise BloscSizeError(f"{exc} for {np.dtype(dtype)}{tuple(shape)}") from None
    except BadInput as exc:
        raise BloscFrameError(str(exc)) from None
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class BossBackend(BossRamon, HttpDriver, Backend, AnnotationStore):
    """A BOSS service at ``url`` (e.g. ``https://api.bossdb.io``), read with ``token`` (None: anonymous).

    ``timeout_s`` is the read timeout of each request (120 s by default: the
    service can take that long to assemble a large cutout; ``connect_timeout_s``
    the connect timeout); ``retries`` extra attempts follow a retryable failure
    after ``backoff_s * 2**n`` (full jitter, capped at ``backoff_cap_s``);
    ``workers`` requests run at once per backend; ``max_request_bytes`` caps
    one request's uncompressed size; ``max_meta_bytes`` caps the URL-encoded RAMON
    metadata value of one object. No network I/O happens until first use.
    """

    kind = "boss"

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0, retries: int = 4, backoff_s: float = 0.5,
                 backoff_cap_s: float = 30.0, workers: int = 8, max_request_bytes: int = 64 * MiB,
                 max_meta_bytes: int = 8192, read_only: bool = False):
        super().__init__()
        if not re.match(r"https?://[^/]+", str(url)):
            raise BadRegion(f"a BOSS url looks like https://api.bossdb.io, got {mask_url(str(url))!r}")
        if workers < 1 or retries < 0 or max_request_bytes < 8 or timeout_s <= 0 or max_meta_bytes < 64:
            raise BadRegion("BOSS driver settings must be positive (workers, timeout_s, max_request_bytes, "
                            "max_meta_bytes >= 64)")
        self.url = str(url).rstrip("/").removesuffix("/v1")
        self._base = self.url + "/v1"
        self._token = token
        self.workers, self.max_request_bytes = int(workers), int(max_request_bytes)
        self.max_meta_bytes = int(max_meta_bytes)
        self.capabilities = frozenset() if read_only else frozenset({"write"})
        self._client = HttpClient("BOSS", self._base, token, self._http_error, timeout_s=timeout_s,
                                  connect_timeout_s=connect_timeout_s, retries=retries, backoff_s=backoff_s,
                                  backoff_cap_s=backoff_cap_s, workers=self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ndfs-boss")

    # ---- HTTP ------------------------------------------------------------
    def _request(self, method: str, path: str, *, expect: int, params=None, data=None,
                 headers=None, decode: Callable | None = None):
        """One logical request with the shared retry policy (:mod:`ndfs.stores.http`)."""
        return self._client.request(method, path, expect=expect, params=params, data=data, headers=headers,
                                    decode=decode)

    @staticmethod
    def _http_error(resp, method: str, path: str) -> NdfsError:
        status = resp.status_code
        detail = resp.text[:300].strip()
        try:
            body = safe.reply_json(resp.content)
        except (ValueError, BadInput, TooLarge):
            body = None  # not JSON: the start of the text body is the detail
        if isinstance(body, dict):
            code = body.get("code")
            detail = str(body.get("message") or body.get("detail") or detail)
            if code is not None:
                detail = f"{detail} (code {code})"
        return status_error(status, f"BOSS {method} {path} answered {status}: {detail or resp.reason}")

    def _get_json(self, path: str) -> dict:
        def decode(resp):
            data = safe.reply_json(resp.content)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            return data

        return self._request("GET", path, expect=200, decode=decode)

    # ---- hierarchy -------------------------------------------------------
    @staticmethod
    def _names(path: VolumeRef) -> VolumeRef:
        for name in path:
            if not NAME_RE.fullmatch(name):
                raise NotFound(f"{name!r} is not a BOSS name (letters, digits, '_' and '-')")
        return path

    def _children(self, path: VolumeRef) -> list[str]:
        path = self._names(path)
        if len(path) == 0:
            names = self._get_json("/collection/").get("collections")
        elif len(path) == 1:
            names = self._get_json(f"/collection/{path[0]}/experiment/").get("experiments")
        elif len(path) == 2:
            names = self._get_json(f"/collection/{path[0]}/experiment/{path[1]}/channel/").get("channels")
        elif len(path) == 3:
            self.info(path)
            raise NotFound(f"{'/'.join(path)} is a channel, not a folder")
        else:
            raise NotFound(f"BOSS paths are collection/experiment/channel, not {'/'.join(path)}")
        if not isinstance(names, list):
            raise BackendError(f"BOSS listing of {'/'.join(path) or '/'} is not a list of names")
        return sorted(str(n) for n in names)

    def _is_volume(self, path: VolumeRef) -> bool:
        path = self._names(path)
        if len(path) == 1:
            self._get_json(f"/collection/{path[0]}")
        elif len(path) == 2:
            self._get_json(f"/collection/{path[0]}/experiment/{path[1]}")
        elif len(path) == 3:
            self.info(path)
            return True
        elif len(path) > 3:
            raise NotFound(f"BOSS paths are collection/experiment/channel, not {'/'.join(path)}")
        return False

    # ---- metadata --------------------------------------------------------
    def _info(self, ref: VolumeRef) -> VolumeInfo:
        if len(ref) != 3:
            raise NotFound(f"a BOSS channel is collection/experiment/channel, not {'/'.join(ref) or '/'}")
        c, e, ch = self._names(ref)
        chan = self._get_json(f"/collection/{c}/experiment/{e}/channel/{ch}")
        exp = self._get_json(f"/collection/{c}/experiment/{e}")
        frame_name = str(exp.get("coord_frame") or "")
        if not NAME_RE.fullmatch(frame_name):
            raise BackendError(f"BOSS experiment {c}/{e} names no usable coordinate frame ({frame_name!r})")
        frame = self._get_json(f"/coord/{frame_name}")
        try:
            return volume_info(chan, exp, frame)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"BOSS metadata of {c}/{e}/{ch} is unusable: {exc}") from exc

    # ---- voxels ----------------------------------------------------------
    def _cutout_path(self, ref: VolumeRef, level: int, box: Box) -> str:
        c, e, ch = ref
        res = int(self.info(ref).extra["boss"]["base_resolution"]) + level
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        return f"{c}/{e}/{ch}/{res}/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"

    def _run(self, tasks: list[Callable[[], None]]) -> None:
        run_parallel(self._pool, tasks)

    def _reachable(self, ref: VolumeRef, box: Box) -> Box | None:
        """The part of a box the service answers: the BOSS checks every resolution's ranges against the
        level-0 frame start (``specs/boss.md`` 3.4, check 6), so at coarser levels the voxels between
        ``floor(start / 2**r)`` and the start cannot be asked for. None when nothing is left."""
        start = self.info(ref).extra["boss"].get("frame_start")
        if start is None:
            return box
        lo = tuple(max(a, s) for a, s in zip(box.start, start))
        if any(a >= b for a, b in zip(lo, box.stop)):
            return None
        return Box(lo, box.stop)

    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        dtype = self.info(ref).dtype
        reachable = self._reachable(ref, box)
        out = np.empty(box.shape, dtype=dtype) if reachable == box else np.zeros(box.shape, dtype=dtype)
        if reachable is None:
            return out

        def fetch(piece: Box) -> None:
            path = "/cutout/" + self._cutout_path(ref, level, piece)
            arr = self._request("GET", path, expect=200, params={"access-mode": "no-cache"},
                                headers={"Accept": "application/blosc"},
                                decode=lambda resp: blosc_decode(resp.content, dtype, piece.shape))
            out[piece.slices(box.start)] = arr

        self._run([lambda p=p: fetch(p) for p in cuboid_pieces(reachable, dtype.itemsize, self.max_request_bytes)])
        return out

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        reachable = self._reachable(ref, box)
        if reachable != box:
            inside = np.zeros(box.shape, bool)
            if reachable is not None:
                inside[reachable.slices(box.start)] = True
            if np.count_nonzero(array[~inside]):
                start = self.info(ref).extra["boss"]["frame_start"]
                raise BadRegion(f"the BOSS takes no voxels below the coordinate frame's start {tuple(start)} "
                                f"(z, y, x) at any resolution, and {box} at level {level} reaches below it")
            if reachable is None:
                return
            array, box = array[reachable.slices(box.start)], reachable

        def store(piece: Box) -> None:
            part = np.ascontiguousarray(array[piece.slices(box.start)])
            nonzero = int(np.count_nonzero(part))
            tail = self._cutout_path(ref, level, piece)
            if nonzero < part.size:  # posts merge: zeros must be erased first
                self._request("PUT", "/cutout/to_black/" + tail, expect=200)
            if nonzero:
                self._request("POST", "/cutout/" + tail, expect=201, data=blosc_encode(part),
                              headers={"Content-Type": "application/blosc"})

        self._run([lambda p=p: store(p) for p in cuboid_pieces(box, array.dtype.itemsize, self.max_request_bytes)])


def volume_info(chan: dict, exp: dict, frame: dict) -> VolumeInfo:
    """VolumeInfo of a channel from its channel, experiment and coordinate-frame JSON. Pure."""
    datatype = str(chan.get("datatype") or "")
    if datatype not in DTYPES:
        raise ValueError(f"datatype {datatype!r} is not one the cutout service carries (uint8, uint16, uint64)")
    kind = str(chan.get("type") or DTYPES[datatype])
    if kind not in ("image", "annotation"):
        raise ValueError(f"channel type {kind!r} is neither image nor annotation")
    unit = str(frame.get("voxel_unit") or "nanometers")
    if unit not in UNIT_NM:
        raise ValueError(f"voxel unit {unit!r} is not one of {', '.join(UNIT_NM)}")
    method = str(exp.get("hierarchy_method") or "anisotropic")
    if method not in ("anisotropic", "isotropic"):
        raise ValueError(f"hierarchy method {method!r} is neither anisotropic nor isotropic")
    base = int(chan.get("base_resolution") or 0)
    n_levels = int(exp.get("num_hierarchy_levels") or 1)
    if n_levels < 1 or base < 0:
        raise ValueError(f"{n_levels} hierarchy levels from resolution {base}")
    start = [int(frame[f"{a}_start"]) for a in "zyx"]
    stop = [int(frame[f"{a}_stop"]) for a in "zyx"]
    voxel = [float(frame[f"{a}_voxel_size"]) * UNIT_NM[unit] for a in "zyx"]
    levels = []
    for res in range(base, base + n_levels):
        f = [2**res if (axis > 0 or method == "isotropic") else 1 for axis in range(3)]
        lo = [s // k for s, k in zip(start, f)]
        hi = [-(-s // k) for s, k in zip(stop, f)]
        if any(b <= a for a, b in zip(lo, hi)):
            raise ValueError(f"the coordinate frame is empty at resolution {res}")
        levels.append(LevelInfo(shape=tuple(b - a for a, b in zip(lo, hi)), offset=tuple(lo),
                                voxel_size_nm=tuple(v * k for v, k in zip(voxel, f)), chunk_shape=CUBOID_ZYX,
                                chunk_origin=(0, 0, 0)))
    boss = {
        "collection": exp.get("collection"), "experiment": exp.get("name"), "channel": chan.get("name"),
        "coord_frame": frame.get("name"), "voxel_unit": unit, "hierarchy_method": method,
        "base_resolution": base, "num_time_samples": int(exp.get("num_time_samples") or 1),
        "default_time_sample": int(chan.get("default_time_sample") or 0),
        "time_step": exp.get("time_step"), "time_step_unit": exp.get("time_step_unit") or "",
        "frame_start": start,
        "downsample_status": chan.get("downsample_status"),
    }
    return VolumeInfo(dtype=np.dtype(datatype), kind=kind, levels=tuple(levels),
                      extra={"boss": json.loads(json.dumps(boss, default=str))})
