"""A BOSS API v1 server (WSGI app) over any ndfs Backend, faithful enough for the unmodified intern.

``BossApp(backend, tokens=None)`` answers what intern and the ndfs driver use
(``specs/boss.md``), as a BOSS with one user who owns every resource:
``/ping/``; collection, experiment, channel and coord GETs, lists, creation
POSTs, updates (PUT: renames and the fields production lets change) and
DELETEs (see :mod:`ndfs.serve.boss_model` for how local folders map to
collection/experiment/channel, and what lives in memory); cutout GET and POST
with blosc bodies (``application/npygz`` too on GET), with time samples and
isotropic levels, ``to_black``, ``reserve`` (past every label), ``ids`` and
the downsample GET, ``boundingbox`` (found by scanning the labels), the
metadata service (``/v1/meta/{c}[/{e}[/{ch}]]``), the image and tile services
(PNG, JPEG for uint8); group, permission, user and role endpoints answer as
production does to a user without the rights. Paths take optional trailing
slashes and ``//``. Cutouts run the spec's checks in its order (3.4) with its
status codes and ``{"status", "code", "message"}`` bodies, including the
520 MiB size cap (``max_cutout_bytes``) and production's check of every
resolution against the level-0 frame; posts merge (zeros never erase) at the
base resolution or the next.

Deliberate differences from production: deletes take effect at once;
reserve counters and metadata live in memory (gone when the server stops);
isotropic levels are computed on each read from resolution 0 (within
``max_scan_bytes``) and cannot be written. Tokens: with none configured any
request is accepted; otherwise ``Authorization: Token <t>`` (or ``Bearer``)
must name one of them, else 401.

Bounds (:mod:`ndfs.serve.limits`): numbers in URLs and bodies are parsed within
their range or refused 400/1000 (never 500); cutouts, ``ids``, images, renames
and posts hold memory of the app's :class:`MemoryBudget` while they run
(413/2000 when one needs more than the whole budget, 503 when the server is
busy); ``ids`` answers at most ``MAX_LIST_ITEMS`` ids; a ``boundingbox`` scan,
a reservation's scan, a rename's copy and a computed isotropic read read at
most ``max_scan_bytes`` (413/2000 past it); ``reserve`` hands out at most
``MAX_RESERVE`` ids a request; JSON bodies are at most ``JSON_BODY_BYTES``.

Thread-safe: posts to one volume are serialised by a per-volume lock, updates
and deletes of resources by one lock.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import zlib
from http import HTTPStatus
from urllib.parse import parse_qs

import numpy as np

from ndfs.stores.base import AnnotationStore, Backend
from ndfs.stores.boss_grid import CUBOID_ZYX
from ndfs.core.errors import NdfsError, NotFound
from ndfs.formats import safe
from ndfs.core.geometry import Box
from ndfs.serve.boss_model import BossError, BossModel, Channel, can_create, time_ref
from ndfs.serve.common import TokenAuth
from ndfs.serve.limits import (
    DEFAULT_SCAN_BYTES, JSON_BODY_BYTES, MAX_LIST_ITEMS, STREAM_PIECE_BYTES, UINT64_MAX, MemoryBudget,
    RequestRefused, c_order_pieces, parse_int, read_body, stream_plan)

log = logging.getLogger("ndfs.serve.boss")
MAX_CUTOUT_BYTES = 545_259_520
#: the most ids one reserve request hands out
MAX_RESERVE = 2**20
#: BOSS error codes of ndfs.serve.limits refusals, by HTTP status
REFUSAL_CODES = {400: 1000, 408: 1000, 413: 2000, 503: 9002}
N = r"([A-Za-z0-9_-]{1,255})"
R = r"(\d+):(\d+)"
BOX = rf"(\d)/{R}/{R}/{R}(?:/{R})?"
ROUTES = [(name, re.compile(pattern)) for name, pattern in [
    ("collections", r"/collection"), ("collection", rf"/collection/{N}"),
    ("experiments", rf"/collection/{N}/experiment"), ("experiment", rf"/collection/{N}/experiment/{N}"),
    ("channels", rf"/collection/{N}/experiment/{N}/channel"),
    ("channel", rf"/collection/{N}/experiment/{N}/channel/{N}"),
    ("frames", r"/coord"), ("frame", rf"/coord/{N}"),
    ("to_black", rf"/cutout/to_black/{N}/{N}/{N}/{BOX}"), ("cutout", rf"/cutout/{N}/{N}/{N}/{BOX}"),
    ("reserve", rf"/reserve/{N}/{N}/{N}/(\d+)"), ("ids", rf"/ids/{N}/{N}/{N}/{BOX}"),
    ("downsample", rf"/downsample/{N}/{N}/{N}"),
    ("boundingbox", rf"/boundingbox/{N}/{N}/{N}/(\d)/(\d+)"), ("meta", rf"/meta/{N}(?:/{N})?(?:/{N})?"),
    ("image", rf"/image/{N}/{N}/{N}/(xy|xz|yz)/(\d)/(\d+(?::\d+)?)/(\d+(?::\d+)?)/(\d+(?::\d+)?)(?:/(\d+))?(?:/.*)?"),
    ("tile", rf"/tile/{N}/{N}/{N}/(xy|xz|yz)/(\d+)/(\d)/(\d+)/(\d+)/(\d+)(?:/(\d+))?(?:/.*)?"),
    ("groups", r"/groups(?:/([A-Za-z0-9_-]+))?(?:/(members|maintainers))?(?:/([A-Za-z0-9_-]+))?"),
    ("permissions", r"/permissions"), ("sso", r"/sso/(user|user-role)/([A-Za-z0-9_-]+)(?:/([A-Za-z0-9_-]+))?"),
]]


class BossApp:
    """The WSGI app. ``tokens``: accepted tokens (None or empty: accept any request)."""

    def __init__(self, backend: Backend, tokens=None, *, max_cutout_bytes: int = MAX_CUTOUT_BYTES,
                 creator: str = "ndfs", budget: MemoryBudget | None = None, max_scan_bytes: int = DEFAULT_SCAN_BYTES):
        self.backend = backend
        self.model = BossModel(backend, creator=creator)
        self.auth = TokenAuth(tokens)
        self.max_cutout_bytes = int(max_cutout_bytes)
        self.budget = budget or MemoryBudget()
        self.max_scan_bytes = int(max_scan_bytes)
        self._lock = threading.Lock()
        self._resource_lock = threading.Lock()  # updates and deletes go one at a time
        self._write_locks: dict[tuple, threading.Lock] = {}
        self._reserved: dict[tuple, int] = {}
        self._metadata: dict[tuple, dict[str, str]] = {}  # resource -> metadata key -> value (memory only)

    # ---- WSGI ------------------------------------------------------------
    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = re.sub(r"/+", "/", environ.get("PATH_INFO") or "/")
        path = path.rstrip("/") or "/"
        try:
            if path == "/ping":
                return _json(start_response, 200, {"ip": environ.get("REMOTE_ADDR", "")})
            denied = self._auth(environ)
            if denied:
                return _json(start_response, 401, {"detail": denied})
            if path.startswith("/latest/"):
                path = "/v1/" + path[len("/latest/"):]
            if re.match(r"/v0\.\d+(/|$)", path):
                raise BossError(400, 9003, "Unsupported API version")
            if path.startswith("/v1/"):
                for name, pattern in ROUTES:
                    m = pattern.fullmatch(path[3:])
                    if m:
                        return getattr(self, f"_{name}")(method, m.groups(), environ, start_response)
            return _reply(start_response, 404, b"Not Found", "text/plain")
        except BossError as exc:
            return _json(start_response, exc.status, {"status": exc.status, "code": exc.code, "message": exc.message})
        except RequestRefused as exc:
            return _json(start_response, exc.status, {"status": exc.status, "code": REFUSAL_CODES.get(exc.status, 1000),
                                                      "message": str(exc)})
        except Exception as exc:  # the service's own catch-all: log it, answer 500/9002
            log.exception("unhandled error on %s %s", method, path)
            return _json(start_response, 500, {"status": 500, "code": 9002, "message": f"Unhandled error: {exc}"})

    def _auth(self, environ) -> str | None:
        return self.auth.refusal(environ.get("HTTP_AUTHORIZATION", ""))

    # ---- resources -------------------------------------------------------
    def _json_body(self, environ) -> dict:
        try:
            body = safe.json_loads(_body(environ, JSON_BODY_BYTES) or b"{}", "The request body")
        except NdfsError as exc:  # BadInput, or TooLarge past the JSON bound
            raise BossError(400, 1003, str(exc)) from None
        if not isinstance(body, dict):
            raise BossError(400, 1003, "The request body must be a JSON object")
        return body

    def _resource(self, method, start_response, environ, kind: str, path: tuple[str, ...]):
        """GET, POST (create), PUT (update) and DELETE of a collection, experiment, channel or frame."""
        model = self.model
        get = {"collection": model.collection, "experiment": model.experiment, "channel": model.channel,
               "frame": model.frame}[kind]
        if method == "GET":
            return _json(start_response, 200, get(*path))
        if method not in ("POST", "PUT", "DELETE"):
            return _not_allowed(start_response, method)
        if "write" not in self.backend.capabilities:
            raise BossError(403, 3001, "This user does not have the required permissions (the server is read-only)")
        if method == "POST":
            create = {"collection": model.create_collection, "experiment": model.create_experiment,
                      "channel": model.create_channel, "frame": model.create_frame}[kind]
            return _json(start_response, 201, create(*path, self._json_body(environ)))
        if method == "DELETE":
            if kind == "channel":
                with self._resource_lock:
                    for ref in reversed(model.delete_channel(*path)):
                        self._delete_volume(ref)
            else:
                {"collection": model.delete_collection, "experiment": model.delete_experiment,
                 "frame": model.delete_frame}[kind](*path)
            if kind != "frame":
                self._forget(path)
            return _reply(start_response, 204, b"", "application/json")
        body = self._json_body(environ)
        new_name = model.new_name(kind, body)
        with self._resource_lock:
            if kind == "frame":
                return _json(start_response, 200, model.frame(model.update_frame(*path, body, new_name)))
            get(*path)  # 404 first, as production
            model.check_update(kind, path, body)
            renamed = path[:-1] + (new_name,)
            if new_name is not None and new_name != path[-1]:
                model.rename_checks(path, new_name)
                self._move(model.moves(path, renamed))
            else:
                renamed = path
            update = {"collection": model.update_collection, "experiment": model.update_experiment,
                      "channel": model.update_channel}[kind]
            update(*path, body, new_name)
            self._forget(path, renamed)
        return _json(start_response, 200, get(*renamed))

    def _forget(self, path: tuple[str, ...], renamed: tuple[str, ...] | None = None) -> None:
        """Move (or drop) the metadata and reserve counters of a resource and everything below it."""
        with self._lock:
            for store in (self._metadata, self._reserved):
                for key in [k for k in store if k[:len(path)] == path]:
                    value = store.pop(key)
                    if renamed is not None:
                        store[renamed + key[len(path):]] = value

    def _delete_volume(self, ref: tuple[str, ...]) -> None:
        try:
            self.backend.delete_volume(ref)
        except NdfsError as exc:
            raise BossError(400, 9001, f"cannot delete {'/'.join(ref)} from the store: {exc}") from exc

    def _move(self, pairs) -> None:
        """Copy each backend volume to its new name (every level, RAMON objects too), then delete the old one.

        The copies go slab by slab within the memory budget; all of them together may read at most
        max_scan_bytes of voxels (413/2000 past it, before anything is copied)."""
        infos = [(src, dst, self.backend.info(src)) for src, dst in pairs]
        total = sum(lv.box.size * info.dtype.itemsize for _, _, info in infos for lv in info.levels)
        if total > self.max_scan_bytes:
            raise BossError(413, 2000, f"Renaming copies {total} bytes of voxels, more than this server's limit of "
                                       f"{self.max_scan_bytes}")
        if infos and not can_create(self.backend):
            raise BossError(403, 3001, "This user does not have the required permissions "
                                       "(the served store cannot create channels)")
        for src, dst, info in infos:
            lv0 = info.levels[0]
            try:
                self.backend.create_volume(dst, lv0.shape, info.dtype, kind=info.kind,
                                           voxel_size_nm=lv0.voxel_size_nm, offset=lv0.offset,
                                           levels=len(info.levels), chunk_shape=lv0.chunk_shape)
                for level, lv in enumerate(info.levels):
                    itemsize = info.dtype.itemsize
                    for piece in c_order_pieces(lv.box, itemsize, STREAM_PIECE_BYTES):
                        with self._hold(3 * piece.size * itemsize, "this rename"):
                            data = self.backend.read(src, piece, level)
                            if level and np.array_equal(data, self.backend.read(dst, piece, level)):
                                continue  # already so (rebuilt from level 0)
                            if level == 0 and not data.any():
                                continue  # a new volume reads zeros
                            self.backend.write(dst, piece, level, data)
                if info.kind == "annotation" and isinstance(self.backend, AnnotationStore):
                    ids = self.backend.ramon_ids(src)
                    for i in range(0, len(ids), 500):
                        objs = self.backend.ramon_get(src, ids[i:i + 500])
                        if objs:
                            self.backend.ramon_put(dst, objs)
                self.backend.delete_volume(src)
            except NdfsError as exc:
                raise BossError(400, 9001, f"cannot move {'/'.join(src)} to {'/'.join(dst)}: {exc}") from exc

    def _collections(self, method, args, environ, start_response):
        return self._list(method, start_response, "collections", self.model.collections)

    def _experiments(self, method, args, environ, start_response):
        return self._list(method, start_response, "experiments", lambda: self.model.experiments(*args))

    def _channels(self, method, args, environ, start_response):
        return self._list(method, start_response, "channels", lambda: self.model.channels(*args))

    def _frames(self, method, args, environ, start_response):
        return self._list(method, start_response, "coords", self.model.frames)

    def _list(self, method, start_response, key, names):
        if method != "GET":
            return _not_allowed(start_response, method)
        return _json(start_response, 200, {key: names()})

    def _collection(self, method, args, environ, start_response):
        return self._resource(method, start_response, environ, "collection", args)

    def _experiment(self, method, args, environ, start_response):
        return self._resource(method, start_response, environ, "experiment", args)

    def _channel(self, method, args, environ, start_response):
        return self._resource(method, start_response, environ, "channel", args)

    def _frame(self, method, args, environ, start_response):
        return self._resource(method, start_response, environ, "frame", args)

    # ---- cutouts ---------------------------------------------------------
    def _check(self, args, query, *, write: bool, annotation_only: bool = False):
        """Spec 3.4 checks 1-7; returns (channel, level, box, time range)."""
        c, e, ch, res, x0, x1, y0, y1, z0, z1, t0, t1 = args
        chan = self.model.cutout_channel(c, e, ch)  # 1: names
        if write and "write" not in self.backend.capabilities:  # 2: permission
            raise BossError(403, 3001, "This user does not have the required permissions")
        if (annotation_only or "filter" in query) and chan.info.kind != "annotation":  # 3
            raise BossError(400, 2003, "This operation is only valid for annotation channels")
        n_t = chan.num_time_samples
        if t0 is None:  # no time segment: the channel's default time sample
            time = (chan.default_time_sample, chan.default_time_sample + 1)
        else:
            time = (parse_int(t0, "time start"), parse_int(t1, "time stop"))
            if not (time[0] <= n_t and time[0] <= time[1] <= n_t + 1):  # 4 (lenient, as production)
                raise BossError(400, 1000, f"Invalid time range {t0}:{t1}")
        res, levels = parse_int(res, "resolution"), chan.resolutions
        if res not in levels:  # 5
            raise BossError(400, 1002, f"Invalid resolution {res}. The resolution has to be within {levels.start} "
                                       f"and {levels.stop - 1}")
        if query.get("iso", [""])[-1].lower() == "true" and res > 0 and not chan.isotropic:
            raise BossError(400, 1005, "This server keeps no isotropic copy of anisotropic channels (iso=true)")
        # every resolution is checked against the level-0 frame, as production does (its quirk: at coarser
        # levels the voxels below the frame start cannot be asked for, and those past the level's extent
        # but inside the frame read as zeros)
        lo = [chan.frame["z_start"], chan.frame["y_start"], chan.frame["x_start"]]
        hi = [chan.frame["z_stop"], chan.frame["y_stop"], chan.frame["x_stop"]]
        start = tuple(parse_int(v, f"{a} start") for v, a in ((z0, "z"), (y0, "y"), (x0, "x")))
        stop = tuple(parse_int(v, f"{a} stop") for v, a in ((z1, "z"), (y1, "y"), (x1, "x")))
        if not all(l <= a < b <= h for l, a, b, h in zip(lo, start, stop, hi)):  # 6
            raise BossError(400, 1001, f"Incorrect cutout arguments {res}/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}")
        box = Box(start, stop)
        size = box.size * (time[1] - time[0]) * chan.info.dtype.itemsize
        if chan.datatype == "uint64":
            size //= 4
        if size > self.max_cutout_bytes:  # 7
            raise BossError(413, 2000, "Cutout request is over 500MB when uncompressed. Reduce cutout dimensions.")
        return chan, res, box, time

    def _computed_bytes(self, chan: Channel, level: int, box: Box) -> int:
        """The level-0 bytes a read of a computed (isotropic) level takes per time sample (0 for stored
        levels); 413/2000 past max_scan_bytes."""
        if chan.stored(level) or not chan.isotropic:
            return 0
        nbytes = box.size * 8**level * chan.info.dtype.itemsize
        if nbytes > self.max_scan_bytes:
            raise BossError(413, 2000, f"Resolution {level} of an isotropic channel is computed from resolution 0: "
                                       f"this box reads {nbytes} bytes of it, more than this server's limit of "
                                       f"{self.max_scan_bytes}. Reduce cutout dimensions.")
        return 2 * nbytes

    def _sample_ref(self, chan: Channel, t: int) -> tuple[str, ...] | None:
        """The backend volume of time sample t, None when it was never written (it reads as zeros)."""
        if t >= chan.num_time_samples:
            return None
        ref = time_ref(chan.ref, t)
        if t == 0:
            return ref
        try:
            return ref if self.backend.is_volume(ref) else None
        except NotFound:
            return None

    def _region(self, chan: Channel, level: int, box: Box, time: tuple[int, int]) -> np.ndarray:
        """The stored voxels of box at each time sample, zeros elsewhere; (T,Z,Y,X)."""
        out = np.zeros((time[1] - time[0],) + box.shape, dtype=chan.info.dtype)
        for i, t in enumerate(range(*time)):
            ref = self._sample_ref(chan, t)
            if ref is None:
                continue
            try:
                if chan.stored(level):
                    inside = box.intersect(chan.info.level(level).box)
                    if inside is not None:
                        out[(i,) + inside.slices(box.start)] = self.backend.read(ref, inside, level)
                elif chan.isotropic:
                    self._isotropic(chan, ref, level, box, out[i])
            except NotFound as exc:
                raise BossError(404, 4000, str(exc)) from exc
        return out

    def _isotropic(self, chan: Channel, ref, level: int, box: Box, out: np.ndarray) -> None:
        """Fill out (the box at resolution ``level``) from resolution 0, halving x, y and z per level."""
        f = 2**level
        lv0 = chan.info.levels[0].box
        extent = Box(tuple(a // f for a in lv0.start), tuple(-(-b // f) for b in lv0.stop))
        part = box.intersect(extent)
        if part is None:
            return
        big = Box(tuple(a * f for a in part.start), tuple(b * f for b in part.stop))
        inside = big.intersect(lv0)
        data = self.backend.read(ref, inside, 0)
        pads = [(a - b, d - c) for a, b, c, d in zip(inside.start, big.start, inside.stop, big.stop)]
        data = np.pad(data, pads, mode="edge")  # at most f - 1 voxels a side: the volume's own edges
        for _ in range(level):
            data = _halve3(data, chan.info.kind)
        out[part.slices(box.start)] = data

    def _hold(self, nbytes: int, what: str):
        """A ticket of the memory budget for ``nbytes``; 413/2000 when no budget could ever hold them."""
        if nbytes > self.budget.total_bytes:
            raise BossError(413, 2000, f"{what} needs {nbytes} bytes of memory, more than this server's request "
                                       f"memory of {self.budget.total_bytes} bytes. Reduce cutout dimensions.")
        return self.budget.hold(nbytes, what)

    def _cutout(self, method, args, environ, start_response):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        timed = args[-1] is not None
        if method == "GET":
            chan, level, box, time = self._check(args, query, write=False)
            mode = query.get("access-mode", ["cache"])[-1]
            if mode not in ("cache", "no-cache", "raw"):
                raise BossError(400, 1001, f"Invalid access-mode {mode}")
            ids = _filter_ids(query) if "filter" in query else None
            nbytes = box.size * (time[1] - time[0]) * chan.info.dtype.itemsize
            need = 2 * nbytes + nbytes // 8 + self._computed_bytes(chan, level, box)  # voxels, answer, filter mask
            with self._hold(need, "this cutout") as ticket:
                data = self._region(chan, level, box, time)
                if ids is not None:
                    data[~np.isin(data, ids)] = 0
                return ticket.keep(_encode(start_response, environ, data if timed else data[0]))
        if method == "POST":
            chan, level, box, time = self._check(args, query, write=True)
            nbytes = box.size * (time[1] - time[0]) * chan.info.dtype.itemsize
            size = parse_int(environ.get("CONTENT_LENGTH") or "0", "Content-Length")
            with self._hold(size + 3 * nbytes, "this cutout"):  # body, voxels, stored voxels, merged voxels
                body = _body(environ)
                shape = (time[1] - time[0],) + box.shape if timed else box.shape
                data = _decode(body, chan.info.dtype, shape).reshape((time[1] - time[0],) + box.shape)
                del body
                self._store(chan, level, box, time, data, merge=True)
            return _reply(start_response, 201, b"", "application/json")
        return _not_allowed(start_response, method)

    def _to_black(self, method, args, environ, start_response):
        if method != "PUT":
            return _not_allowed(start_response, method)
        chan, level, box, time = self._check(args, {}, write=True)
        with self._hold(box.size * (time[1] - time[0]) * chan.info.dtype.itemsize, "this cutout"):
            zeros = np.zeros((time[1] - time[0],) + box.shape, dtype=chan.info.dtype)
            self._store(chan, level, box, time, zeros, merge=False)
        return _reply(start_response, 200, b"", "application/json")

    def _store(self, chan: Channel, level: int, box: Box, time, data: np.ndarray, merge: bool) -> None:
        """Write (T,Z,Y,X) data: posts merge non-zero voxels, to_black overwrites with zeros."""
        base = chan.base_resolution
        if level not in (base, base + 1):
            raise BossError(400, 9001, f"Error during write_cuboid: writes go to resolution {base} or {base + 1}, "
                                       f"not {level}")
        if not chan.stored(level):
            why = ("the coarser levels of isotropic channels are computed from resolution 0" if chan.isotropic
                   else f"the store holds {len(chan.info.levels)} levels of this channel")
            raise BossError(400, 9001, f"Error during write_cuboid: resolution {level} cannot be written here: {why}")
        if time[1] > chan.num_time_samples:
            raise BossError(400, 9001, f"Error during write_cuboid: the experiment has time samples 0 to "
                                       f"{chan.num_time_samples - 1}")
        lvbox = chan.info.level(level).box
        inside = box.intersect(lvbox)
        for i, t in enumerate(range(*time)):
            sample = data[i]
            within = 0 if inside is None else np.count_nonzero(sample[inside.slices(box.start)])
            nonzero = np.count_nonzero(sample)  # counted in place: no copy of the voxels
            if merge and nonzero != within:
                raise BossError(400, 9001, "Error during write_cuboid: non-zero voxels beyond the channel's extent")
            if inside is None:
                continue
            ref = self._sample_ref(chan, t)
            if ref is None:  # a time sample never written reads as zeros
                if not nonzero:
                    continue
                ref = self._new_sample(chan, t)
            new = sample[inside.slices(box.start)]
            with self._lock:
                lock = self._write_locks.setdefault(ref, threading.Lock())
            try:
                with lock:
                    if merge:
                        new = np.where(new != 0, new, self.backend.read(ref, inside, level))
                    self.backend.write(ref, inside, level, new)
            except NdfsError as exc:
                raise BossError(400, 9001, f"Error during write_cuboid: {exc}") from exc

    def _new_sample(self, chan: Channel, t: int) -> tuple[str, ...]:
        """Make the backend volume of time sample t, shaped like the channel."""
        ref, info = time_ref(chan.ref, t), chan.info
        if not can_create(self.backend):
            raise BossError(400, 9001, f"Error during write_cuboid: time sample {t} needs a volume of its own, and "
                                       "the served store cannot create volumes")
        lv0 = info.levels[0]
        with self._lock:
            lock = self._write_locks.setdefault(chan.ref + ("@time",), threading.Lock())
        with lock:
            if self._sample_ref(chan, t) is None:
                try:
                    self.backend.create_volume(ref, lv0.shape, info.dtype, kind=info.kind,
                                               voxel_size_nm=lv0.voxel_size_nm, offset=lv0.offset,
                                               levels=len(info.levels), chunk_shape=lv0.chunk_shape)
                except NdfsError as exc:
                    raise BossError(400, 9001, f"Error during write_cuboid: cannot make time sample {t}: {exc}") \
                        from exc
        return ref

    # ---- annotation and levels -------------------------------------------
    def _reserve(self, method, args, environ, start_response):
        """Ids never handed out before and in use by no voxel: the backend's own reservation where it keeps
        annotations (the local store moves past every label written), else a counter that starts past the
        largest label of the channel's time samples (found by a scan within max_scan_bytes)."""
        if method != "GET":
            return _not_allowed(start_response, method)
        c, e, ch, n = args
        chan = self.model.cutout_channel(c, e, ch)
        if chan.info.kind != "annotation":
            raise BossError(400, 2003, "This operation is only valid for annotation channels")
        if "write" not in self.backend.capabilities:
            raise BossError(403, 3001, "This user does not have the required permissions (the server is read-only)")
        n = parse_int(n, "the number of ids to reserve", 1, MAX_RESERVE)
        if isinstance(self.backend, AnnotationStore):
            try:
                start = self.backend.reserve_ids(chan.ref, n)[0]
            except NdfsError as exc:
                raise BossError(400, 9001, f"Cannot reserve {n} ids: {exc}") from exc
            return _json(start_response, 200, {"start_id": start, "count": str(n)})
        with self._lock:
            start = self._reserved.get(chan.ref)
        if start is None:
            start = self._largest_label(chan) + 1
        with self._lock:
            start = max(start, self._reserved.get(chan.ref, 1))
            if start + n - 1 > UINT64_MAX:
                raise BossError(400, 1000, f"Cannot reserve {n} ids from {start}: ids are uint64 "
                                           f"(at most {UINT64_MAX - start + 1} are left)")
            self._reserved[chan.ref] = start + n
        return _json(start_response, 200, {"start_id": start, "count": str(n)})

    def _largest_label(self, chan: Channel) -> int:
        lv = chan.info.levels[0]
        refs = [r for r in (self._sample_ref(chan, t) for t in range(chan.num_time_samples)) if r is not None]
        scan = len(refs) * lv.box.size * chan.info.dtype.itemsize
        if scan > self.max_scan_bytes:
            raise BossError(413, 2000, f"Reserving ids finds the largest label by scanning the channel's {scan} "
                                       f"bytes, more than this server's limit of {self.max_scan_bytes}")
        largest = 0
        pieces, need = stream_plan(lv.box, chan.info.dtype.itemsize, lv.chunk_shape,
                                   (lv.chunk_origin or lv.box.start)[0], self.budget.total_bytes)
        pieces = list(pieces)
        for ref in refs:
            for piece in pieces:
                with self._hold(need, "this reservation"):
                    data = self.backend.read(ref, piece, 0)
                    if data.size:
                        largest = max(largest, int(data.max()))
        return largest

    def _ids(self, method, args, environ, start_response):
        if method != "GET":
            return _not_allowed(start_response, method)
        chan, level, box, time = self._check(args, {}, write=False, annotation_only=True)
        ids = np.zeros(0, chan.info.dtype)
        lv = chan.info.level(level if chan.stored(level) else 0)
        pieces, need = stream_plan(box, chan.info.dtype.itemsize, lv.chunk_shape, (lv.chunk_origin or lv.box.start)[0],
                                   self.budget.total_bytes)
        for piece in pieces:
            with self._hold(need + self._computed_bytes(chan, level, piece), "this ids request"):
                ids = np.union1d(ids, np.unique(self._region(chan, level, piece, time)))
            if len(ids) > MAX_LIST_ITEMS + 1:
                raise BossError(413, 2000, f"The box holds more than {MAX_LIST_ITEMS} ids. Reduce cutout dimensions.")
        return _json(start_response, 200, {"ids": [str(int(i)) for i in ids if i != 0]})

    def _boundingbox(self, method, args, environ, start_response):
        """Spec 5: ``tight`` is the exact box of the id's voxels, ``loose`` (default) that box widened to cuboids."""
        from ndfs.ramon.labels import scan_bbox

        if method != "GET":
            return _not_allowed(start_response, method)
        c, e, ch, res, oid = args
        kind = parse_qs(environ.get("QUERY_STRING", "")).get("type", ["loose"])[-1]
        if kind not in ("loose", "tight"):
            raise BossError(400, 1005, f"Invalid option for bounding box type {kind}. "
                                       "The valid options are : loose or tight")
        chan = self.model.cutout_channel(c, e, ch)
        if chan.info.kind != "annotation":
            raise BossError(400, 2003, "This operation is only valid for annotation channels")
        level, levels = parse_int(res, "resolution"), chan.resolutions
        if level not in levels:
            raise BossError(400, 1002, f"Invalid resolution {level}. "
                                       f"The resolution has to be within {levels.start} and {levels.stop - 1}")
        if not chan.stored(level):
            raise BossError(400, 1002, f"Invalid resolution {level}. This server finds bounding boxes at the "
                                       "resolutions it stores (0 for isotropic channels)")
        oid = parse_int(oid, "id")
        scan = chan.info.level(level).box.size * chan.info.dtype.itemsize
        if scan > self.max_scan_bytes:
            raise BossError(413, 2000, f"Finding a bounding box scans the channel's {scan} bytes at resolution "
                                       f"{level}, more than this server's limit of {self.max_scan_bytes}")
        ref = self._sample_ref(chan, chan.default_time_sample)
        box = scan_bbox(self.backend, ref, [oid], level) if oid > 0 and ref is not None else None
        if box is None:
            raise BossError(404, 4004, f"The id does not exist. {oid}")
        if kind == "loose":
            cz, cy, cx = CUBOID_ZYX
            box = Box(tuple(a - a % k for a, k in zip(box.start, (cz, cy, cx))),
                      tuple(-(-b // k) * k for b, k in zip(box.stop, (cz, cy, cx))))
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        return _json(start_response, 200, {"x_range": [x0, x1], "y_range": [y0, y1], "z_range": [z0, z1],
                                           "t_range": [0, 1]})

    def _meta(self, method, args, environ, start_response):
        """The metadata service (spec 2): string values under string keys, per collection, experiment or channel."""
        resource = tuple(a for a in args if a is not None)
        if len(resource) == 3:
            self.model.cutout_channel(*resource)
        elif len(resource) == 2:
            self.model.experiment(*resource)
        else:
            self.model.collection(*resource)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        key, value = query.get("key", [None])[-1], query.get("value", [None])[-1]
        if method == "GET":
            with self._lock:
                values = dict(self._metadata.get(resource, {}))
            if key is None:
                return _json(start_response, 200, {"keys": sorted(values)})
            if key not in values:
                raise BossError(400, 1003, f"Invalid request. Key {key} Not found in the database")
            return _json(start_response, 200, {"key": key, "value": values[key]})
        if method not in ("POST", "PUT", "DELETE"):
            return _not_allowed(start_response, method)
        if "write" not in self.backend.capabilities:
            raise BossError(403, 3001, "This user does not have the required permissions")
        if key is None or (value is None and method != "DELETE"):
            raise BossError(400, 1003, "Missing optional argument key/value in the request")
        with self._lock:
            values = self._metadata.setdefault(resource, {})
            if method == "POST":
                if key in values:
                    raise BossError(400, 1003, f"Invalid request. The key {key} already exists")
                values[key] = value
                return _reply(start_response, 201, b"", "application/json")
            if key not in values:
                raise BossError(400, 1003, f"Invalid request. The key {key} does not exist")
            if method == "PUT":
                values[key] = value
                return _reply(start_response, 200, b"", "application/json")
            del values[key]
        return _reply(start_response, 204, b"", "application/json")

    def _downsample(self, method, args, environ, start_response):
        if method != "GET":
            return _not_allowed(start_response, method)
        chan = self.model.cutout_channel(*args)
        f, n = chan.frame, chan.num_hierarchy_levels
        levels = range(chan.base_resolution + n)
        zf = (lambda r: 2**r) if chan.isotropic else (lambda r: 1)  # noqa: E731
        return _json(start_response, 200, {
            "status": "DOWNSAMPLED" if n > 1 else "NOT_DOWNSAMPLED", "num_hierarchy_levels": n,
            "voxel_size": {str(r): [f["x_voxel_size"] * 2**r, f["y_voxel_size"] * 2**r, f["z_voxel_size"] * zf(r)]
                           for r in levels},
            "extent": {str(r): [-(-f["x_stop"] // 2**r), -(-f["y_stop"] // 2**r), -(-f["z_stop"] // zf(r))]
                       for r in levels},
            "cuboid_size": {str(r): [512, 512, 16] for r in levels}})


    # ---- images and tiles --------------------------------------------------------
    def _image(self, method, args, environ, start_response):
        """``/image/{c}/{e}/{ch}/{xy|xz|yz}/{res}/{x}/{y}/{z}/[t/]``: one plane as PNG (or JPEG); the two
        axes of the plane are ranges ``a:b``, the third one index."""
        if method != "GET":
            return _not_allowed(start_response, method)
        c, e, ch, orientation, res, xa, ya, za, t = args
        plane = {"xy": "xy", "xz": "xz", "yz": "yz"}[orientation]
        ranges = []
        for axis, text in (("x", xa), ("y", ya), ("z", za)):
            ranged = ":" in text
            if ranged != (axis in plane):
                code = 1001 if axis in plane else 1002
                raise BossError(400, code, f"Incorrect cutout arguments {xa}/{ya}/{za}" if code == 1001 else
                                f"Type error in cutout argument{res}/{xa}/{ya}/{za}")
            a, _, b = text.partition(":")
            ranges.append((a, b) if ranged else (a, str(parse_int(a, f"{axis} index") + 1)))
        return self._plane(start_response, environ, (c, e, ch, res, *ranges[0], *ranges[1], *ranges[2]), t, plane)

    def _tile(self, method, args, environ, start_response):
        """``/tile/{c}/{e}/{ch}/{xy|xz|yz}/{tile_size}/{res}/{x}/{y}/{z}/[t/]``: tile indices in the plane's
        axes (times the tile size), a voxel index on the third."""
        if method != "GET":
            return _not_allowed(start_response, method)
        c, e, ch, orientation, size, res, xi, yi, zi, t = args
        size = parse_int(size, "tile size", 1, 2**16)
        ranges = []
        for axis, text in (("x", xi), ("y", yi), ("z", zi)):
            i = parse_int(text, f"{axis} index", 0, 2**40)
            ranges.append((str(i * size), str((i + 1) * size)) if axis in orientation else (str(i), str(i + 1)))
        return self._plane(start_response, environ, (c, e, ch, res, *ranges[0], *ranges[1], *ranges[2]), t,
                           orientation)

    def _plane(self, start_response, environ, args, t, plane: str):
        chan, level, box, time = self._check(args + ((t, str(int(t) + 1)) if t else (None, None)), {}, write=False)
        if chan.datatype not in ("uint8", "uint16"):
            raise BossError(400, 2003, f"The image service renders uint8 and uint16 channels, not {chan.datatype}")
        accept = environ.get("HTTP_ACCEPT", "") or "*/*"
        jpeg = "image/jpeg" in accept and "image/png" not in accept
        if jpeg and chan.datatype != "uint8":
            raise BossError(400, 2003, "JPEG images are 8-bit: ask for image/png for uint16 channels")
        nbytes = box.size * chan.info.dtype.itemsize
        with self._hold(3 * nbytes + self._computed_bytes(chan, level, box), "this image"):
            data = self._region(chan, level, box, time)[0]
            image = {"xy": lambda a: a[0], "xz": lambda a: a[:, 0, :], "yz": lambda a: a[:, :, 0]}[plane](data)
            return _reply(start_response, 200, *_picture(image, jpeg))

    # ---- accounts: a single-user server has none ------------------------------------
    def _groups(self, method, args, environ, start_response):
        """The server's one user belongs to no group and may not make any (production's answers to a user
        without the rights): lists are empty, a named group is not found, changes are refused."""
        group, part, user = args
        if method == "GET" and group is None:
            return _json(start_response, 200, {"groups": []})
        if method == "GET":
            raise BossError(404, 4001, f"Group {group} not found")
        raise BossError(403, 3000, f"{self.model.creator} does not have the required role admin: ndfs serve has one "
                                   "user and keeps no groups")

    def _permissions(self, method, args, environ, start_response):
        if method == "GET":
            return _json(start_response, 200, {"permission-sets": []})
        raise BossError(403, 3000, f"{self.model.creator} does not have the required role admin: ndfs serve has one "
                                   "user and grants no permissions to groups")

    def _sso(self, method, args, environ, start_response):
        kind, user, role = args
        if kind == "user" and method == "GET":
            raise BossError(404, 4002, f"User {user} not found")
        needed = "admin" if kind == "user" and method == "DELETE" else "user-manager"
        raise BossError(403, 3000, f"{self.model.creator} does not have the required role {needed}: ndfs serve has "
                                   "one user and manages no accounts")


# ---- isotropic levels --------------------------------------------------------------
def _halve3(a: np.ndarray, kind: str) -> np.ndarray:
    """Halve x, y and z of a ZYX array whose start is even: x and y as the local store's pyramid, then z
    pairs (odd ends repeated): their rounded mean for images, the first non-zero label for annotations. Pure."""
    from ndfs.core.downsample import downsample

    a = downsample(a, kind)
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]])
    first, second = a[0::2], a[1::2]
    if kind == "annotation":
        return np.where(first != 0, first, second)
    return ((first.astype(np.uint64) + second + 1) // 2).astype(a.dtype)


# ---- bodies -------------------------------------------------------------------
def _filter_ids(query) -> np.ndarray:
    """The ids of ``filter=`` (comma separated, repeatable): uint64 values, at most MAX_LIST_ITEMS."""
    texts = [v for v in ",".join(query["filter"]).split(",") if v]
    if len(texts) > MAX_LIST_ITEMS:
        raise RequestRefused(400, f"filter names {len(texts)} ids, more than {MAX_LIST_ITEMS}")
    return np.array([parse_int(v, "filter id") for v in texts], dtype=np.uint64)


def _body(environ, limit: int = 2**62) -> bytes:
    """The request body (waitress bounds every body; ``limit`` bounds it for one route, 413 past it)."""
    return read_body(environ, limit)


def _decode(body: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The posted blosc frame as an array of shape: 400/2001 if it is no blosc, 400/2002 if it does not fit."""
    from ndfs.stores.boss import BloscFrameError, BloscSizeError, blosc_decode

    try:
        return blosc_decode(body, dtype, shape)
    except BloscFrameError as exc:
        raise BossError(400, 2001, f"Failed to decompress the request body: {exc}") from None
    except BloscSizeError as exc:
        raise BossError(400, 2002, f"The request body does not fit the cutout: {exc}") from None


def _encode(start_response, environ, data: np.ndarray):
    accept = environ.get("HTTP_ACCEPT", "") or "*/*"
    if "application/blosc" in accept or "*/*" in accept:
        from ndfs.stores.boss import blosc_encode

        return _reply(start_response, 200, blosc_encode(data), "application/blosc")
    if "application/npygz" in accept:  # the .npy bytes compressed as they are, without copies of the voxels
        data = np.ascontiguousarray(data)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(data))
        packer = zlib.compressobj()
        body = packer.compress(header.getvalue()) + packer.compress(memoryview(data).cast("B")) + packer.flush()
        return _reply(start_response, 200, body, "application/npygz")
    raise BossError(406, 1000, f"Cannot answer in {accept}; use application/blosc or application/npygz")


def _picture(image: np.ndarray, jpeg: bool) -> tuple[bytes, str]:
    """A 2-D uint8 or uint16 plane as (PNG or JPEG bytes, content type)."""
    try:
        from PIL import Image
    except ImportError:
        raise BossError(400, 5001, "the image service needs Pillow on the server (pip install pillow)") from None
    buf = io.BytesIO()
    pil = Image.fromarray(image, mode="L") if image.dtype == np.uint8 else Image.fromarray(
        image.astype("<u2"), "I;16")
    pil.save(buf, format="JPEG" if jpeg else "PNG")
    return buf.getvalue(), "image/jpeg" if jpeg else "image/png"


def _reply(start_response, status: int, body: bytes, content_type: str):
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response, status: int, doc) -> list[bytes]:
    return _reply(start_response, status, json.dumps(doc).encode(), "application/json")


def _not_allowed(start_response, method: str):
    return _json(start_response, 405, {"detail": f'Method "{method}" not allowed.'})
