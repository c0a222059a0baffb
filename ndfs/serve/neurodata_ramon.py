"""The RAMON service of ``ndfs serve --protocol neurodata`` (``specs/neurodata.md`` 6), over the backend's annotations.

:class:`RamonService` is a mixin of :class:`ndfs.serve.neurodata.NeuroDataApp`:
its handlers get a checked project and channel and answer ``(status, body,
content type)`` or raise :class:`NdError`. Metadata goes through the backend's
``ramon_*`` calls; voxels attached to posted objects are painted (or, with
``reduce/``, removed) through the backend's read/write by
:func:`ndfs.ramon.labels.paint`, under the app's per-channel lock.

Bounds: a request names at most ``MAX_OBJECTS`` ids; an object's
``cutout/`` and ``voxels/`` hold at most the app's ``max_cutout_bytes`` of
voxels (and ``voxels/`` at most that many bytes of coordinates) within the
memory budget; bounding boxes and query boxes scan at most ``max_scan_bytes``
(413 past them); query predicates are integers within range (400).

Thread-safe as the app is.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np

from ndfs.stores.base import AnnotationStore
from ndfs.core.errors import InvalidAnnotation, NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.serve.limits import UINT64_MAX, parse_int
from ndfs.serve.neurodata_model import NdError, Project

#: the most RAMON ids one request names
MAX_OBJECTS = 10_000


def json_reply(doc):
    return 200, json.dumps(doc).encode(), "application/json"


def text_reply(text: str):
    return 200, text.encode(), "text/plain"


class RamonService:
    """RAMON handlers; the app provides ``backend``, ``_channel_lock``, ``_check_writable``, ``_box``, ``_region``,
    ``_hold``, ``_check_scan`` and ``max_cutout_bytes``."""

    def _annotation(self, project: Project, ch: str) -> None:
        if project.channel(ch).kind != "annotation":
            raise NdError(404, f"Channel {ch} is not an annotation channel")
        if not isinstance(self.backend, AnnotationStore):
            raise NdError(400, "This store keeps no RAMON objects")

    def _max_id(self, project: Project, ch: str) -> int:
        return min(self.backend.ramon_max_id, int(np.iinfo(project.channel(ch).dtype).max))

    def _get(self, ref, ids: list[int]) -> list:
        try:
            return self.backend.ramon_get(ref, ids)
        except NotFound:
            for i in ids:
                try:
                    self.backend.ramon_get(ref, [i])
                except NotFound:
                    raise NdError(404, f"No annotation found at identifier = {i}") from None
            raise

    def _exists(self, ref, ids: list[int]) -> set[int]:
        found = set()
        for i in ids:
            try:
                self.backend.ramon_get(ref, [i])
                found.add(i)
            except NotFound:
                pass  # absent: the caller decides whether that is an error
        return found

    def _store(self, project: Project, ch: str, objs: list, opts: set[str]) -> list[int]:
        """Store posted objects (metadata and voxels) as the options say; returns their ids."""
        ref = (project.token, ch)
        modes = [o for o in ("overwrite", "preserve", "exception", "reduce") if o in opts]
        if len(modes) > 1:
            raise NdError(400, f"Conflicting options {', '.join(modes)}")
        mode = modes[0] if modes else "overwrite"
        edit = opts & {"update", "dataonly", "reduce"}
        info = project.channel(ch)
        for o in objs:
            if o.voxels is not None:
                if o.TYPE in ("neuron", "seed"):
                    raise NdError(404, f"Illegal voxels: a RAMON {o.TYPE} takes no voxels of its own")
                lv = o.voxels.level
                if lv >= len(info.levels) or not info.levels[lv].box.contains(o.voxels.box):
                    raise NdError(404, f"Illegal voxels of object {o.id}: {o.voxels.box} at level {lv} "
                                       "lies outside the channel")
            elif opts & {"dataonly", "reduce"}:
                raise NdError(404, f"Illegal request: object {o.id} carries no voxels for {'/'.join(sorted(edit))}")
        given = [o.id for o in objs if o.id]
        have = self._exists(ref, given)
        if edit:
            missing = [o.id for o in objs if o.id not in have]
            if missing:
                raise NdError(404, f"No annotation found at identifier = {missing[0]}")
        elif self.strict_ids and have:
            raise NdError(404, f"Annotation {sorted(have)[0]} exists: post it with update/")
        from ndfs.ramon.labels import paint

        with self._channel_lock(ref):
            if mode == "exception":
                for o in objs:
                    if o.voxels is not None:
                        _check_conflicts(self.backend, ref, o)
            if opts & {"dataonly", "reduce"}:
                ids = [o.id for o in objs]
            else:
                meta = []
                for o in objs:
                    m = o.copy()
                    m.voxels = None
                    meta.append(m)
                ids = self.backend.ramon_put(ref, meta)
            for oid, o in zip(ids, objs):
                if o.voxels is not None:
                    paint(self.backend, ref, oid, o.voxels, mode)
        return ids

    def _post_ramon(self, project: Project, ch: str, opts: list[str], body: bytes):
        from ndfs.ramon import from_hdf5

        self._check_writable(ch)
        try:
            objs = from_hdf5(body, layout="legacy", max_id=self._max_id(project, ch),
                             max_bytes=self.max_cutout_bytes)
        except InvalidAnnotation as exc:
            raise NdError(404, f"Invalid RAMON object: {exc}") from None
        if not objs:
            raise NdError(404, "Invalid RAMON request: the HDF5 body holds no object")
        return text_reply(",".join(map(str, self._store(project, ch, objs, set(opts)))))

    def _postjson_reply(self, project: Project, ch: str, opts: list[str], body: bytes):
        from ndfs.ramon import from_legacy

        self._check_writable(ch)
        if any(o != "update" for o in opts):
            raise NdError(400, f"Unknown json/ option {'/'.join(opts)}")
        try:
            objs = from_legacy(body, max_id=self._max_id(project, ch))
        except InvalidAnnotation as exc:
            raise NdError(404, f"Invalid RAMON object: {exc}") from None
        if len(objs) != 1:
            raise NdError(404, f"Invalid RAMON request: json/ takes one object, got {len(objs)}")
        return text_reply(",".join(map(str, self._store(project, ch, objs, set(opts)))))

    def _object(self, method: str, project: Project, ch: str, ids: list[int], rest: list[str]):
        from ndfs.ramon import to_hdf5, to_legacy

        ref = (project.token, ch)
        if method == "DELETE" and not rest:
            self._check_writable(ch)
            self._get(ref, ids)
            with self._channel_lock(ref):
                self.backend.ramon_delete(ref, ids)
            return text_reply("Success")
        if method != "GET":
            raise NdError(400, f"Unknown method {method} for RAMON objects")
        objs = self._get(ref, ids)
        if rest == ["json"]:
            return json_reply(to_legacy(objs))
        if rest in ([], ["nodata"]):
            return 200, to_hdf5(objs, layout="legacy"), "product/hdf5"
        if len(ids) != 1 or len(rest) < 2 or rest[0] not in ("boundingbox", "cutout", "voxels") \
                or not rest[1].isdigit():
            raise NdError(400, f"Unknown RAMON service {'/'.join(rest)}")
        obj, level = objs[0], parse_int(rest[1], "resolution")
        if level >= project.levels:
            raise NdError(404, f"Illegal resolution {level}")
        members = obj.segments if obj.TYPE == "neuron" else [obj.id]
        if rest[0] == "cutout" and len(rest) > 2:
            level, box, extra = self._box(project, rest[1:])
            if extra:
                raise NdError(400, f"Unknown cutout option {extra[0]}")
        else:
            if len(rest) != 2:
                raise NdError(400, f"Unknown RAMON service {'/'.join(rest)}")
            info = project.channel(ch)
            self._check_scan(info.level(level).box.size * info.dtype.itemsize, "Finding the annotation's voxels")
            box = self.backend.ramon_bbox(ref, obj.id, level)
            if box is None:
                raise NdError(404, f"Annotation {obj.id} has no voxels at resolution {level}")
        if rest[0] == "boundingbox":
            obj.bbox = (level, box)
            return 200, to_hdf5([obj], layout="legacy"), "product/hdf5"
        nbytes = box.size * project.channel(ch).dtype.itemsize
        if nbytes > self.max_cutout_bytes:
            raise NdError(413, f"The annotation's {rest[0]} of {nbytes} bytes is over this server's limit of "
                               f"{self.max_cutout_bytes} bytes")
        from ndfs.ramon import Voxels

        with self._hold(4 * nbytes, f"this annotation {rest[0]}") as ticket:  # voxels, mask, masked, answer
            data = self._region(project, ch, level, box)
            mask = np.isin(data, np.array(members, dtype=data.dtype))
            if rest[0] == "cutout":
                obj.voxels = Voxels(np.where(mask, data, 0), box.start, level)
                return 200, ticket.keep([to_hdf5([obj], layout="legacy")]), "product/hdf5"
            del data
            count = int(np.count_nonzero(mask))
            if count * 36 > self.max_cutout_bytes:  # 24 bytes a voxel while found, 12 in the answer
                raise NdError(413, f"Annotation {obj.id} has {count} voxels in {box}: their coordinates are over "
                                   f"this server's limit of {self.max_cutout_bytes} bytes")
            with self._hold(count * 36, "this annotation's voxels") as more:
                body = _with_voxels(to_hdf5([obj], layout="legacy"), obj.id, level, mask, box)
                return 200, more.keep(ticket.keep([body])), "product/hdf5"

    def _query(self, project: Project, ch: str, args: list[str], body: bytes):
        """``query/[pred/...]``: predicates ANDed; a POSTed HDF5 box keeps the ids with voxels in it."""
        from urllib.parse import unquote

        from ndfs.ramon import NDSTORE_TYPES, ids_hdf5

        names = {v: k for k, v in NDSTORE_TYPES.items()}
        kw: dict = {"kv": {}}
        i = 0
        try:
            while i < len(args):
                key = args[i]
                if key == "confidence":
                    value = float(args[i + 2])
                    if not -math.inf < value < math.inf:
                        raise ValueError(f"confidence {args[i + 2]} is not a finite number")
                    kw["confidence"] = (args[i + 1], value)
                    i += 3
                    continue
                value = unquote(args[i + 1])
                if key == "type":
                    kind = parse_int(value, "annotation type", 0, 2**31)
                    if kind not in names:
                        raise NdError(404, f"Illegal query: unknown annotation type {value}")
                    kw["type"] = names[kind]
                elif key == "status":
                    kw["status"] = parse_int(value, "status", -2**63, 2**63 - 1)
                elif key == "limit":
                    kw["limit"] = parse_int(value, "limit", 0, UINT64_MAX)
                else:
                    kw["kv"][unquote(key)] = value
                i += 2
        except (IndexError, ValueError):
            raise NdError(404, f"Illegal query {'/'.join(args)}: use key/value pairs") from None
        box, level = (None, 0)
        if body:
            level, box = _query_box(body)
            project.check_box(level, box)
            box = box.intersect(project.channel(ch).level(level).box)
            if box is None:
                return 200, ids_hdf5([]), "product/hdf5"
            self._check_scan(box.size * project.channel(ch).dtype.itemsize, "This query box")
        ids = self.backend.ramon_ids((project.token, ch), box=box, level=level, **kw)
        return 200, ids_hdf5(ids), "product/hdf5"


def _query_box(body: bytes) -> tuple[int, Box]:
    """(level, box) of a query POST body: RESOLUTION, XYZOFFSET and CUTOUTSIZE (x, y, z)."""
    from ndfs.formats import safe

    try:
        with safe.open_hdf5(body, "the query body", max_bytes=2**16) as f:
            level = int(np.asarray(f["RESOLUTION"][()]).reshape(-1)[0])
            off = [int(v) for v in np.asarray(f["XYZOFFSET"][()]).reshape(-1)]
            size = [int(v) for v in np.asarray(f["CUTOUTSIZE"][()]).reshape(-1)]
        return level, Box.from_shape(size[::-1], off[::-1])
    except (OSError, KeyError, ValueError, IndexError, NdfsError) as exc:
        raise NdError(404, f"Illegal query body: HDF5 with RESOLUTION, XYZOFFSET and CUTOUTSIZE ({exc})") from None


def _check_conflicts(backend, ref, obj) -> None:
    v = obj.voxels
    old = backend.read(ref, v.box, v.level)
    taken = (v.array != 0) & (old != 0) & (old != obj.id)
    if taken.any():
        raise NdError(404, f"Illegal exception: {int(taken.sum())} voxels of object {obj.id} "
                           "are labelled with other ids")


def _with_voxels(h5: bytes, oid: int, level: int, mask: np.ndarray, box: Box) -> bytes:
    """Add a ``VOXELS`` (N x [x, y, z], absolute) dataset and ``RESOLUTION`` to the object's group."""
    import h5py

    buf = io.BytesIO(h5)
    with h5py.File(buf, "r+") as f:
        g = f[str(oid)]
        zyx = np.argwhere(mask) + np.array(box.start)
        g.create_dataset("VOXELS", data=zyx[:, ::-1].astype(np.uint32).reshape(-1, 3))
        if "RESOLUTION" not in g:
            g.create_dataset("RESOLUTION", data=np.array([level], np.uint32))
    return buf.getvalue()


