"""What the viewer servers know about the objects of a label channel: where each one is, its mesh, its properties.

* :class:`LabelIndex`: the bounding box of every label id at one level of a
  channel, found by one scan of that level (slab by slab, within a byte
  bound) and kept per version token of the channel, so a write anywhere makes
  a fresh scan and an unchanged channel is scanned once. It is how a mesh
  request finds its object without scanning the channel again.
* :func:`mesh_level`: the level meshes are made at: the finest whose labels
  take at most ``max_bytes`` (so its index is one bounded scan).
* :func:`legacy_fragment`: a mesh as neuroglancer's legacy mesh fragment
  (uint32 vertex count, float32 x y z vertices in nm, uint32 triangle indices,
  little-endian).
* :func:`segment_properties`: neuroglancer's ``segment_properties`` document of
  a channel's RAMON objects: a label (the ``name`` key-value pair, else the
  type and id), a description (author, status, confidence, key-value pairs)
  and tags (the RAMON type, its class, its status).

Thread-safe: an index is made once per (channel, level, version) however many
requests ask for it at once.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict

import numpy as np

from ndfs.core.errors import NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.serve.limits import MAX_LIST_ITEMS, RequestRefused

log = logging.getLogger("ndfs.serve.segments")

#: default bound of the level meshes are made at (its labels' bytes), see mesh_level
MESH_LEVEL_BYTES = 64 * 2**20
#: the most voxel bytes one slab of an index scan reads at once
SCAN_SLAB_BYTES = 64 * 2**20
#: the most distinct ids an index keeps (a channel with more is refused, 413)
MAX_INDEXED_IDS = 10 * MAX_LIST_ITEMS
#: indexes kept per server (least recently used out)
KEPT_INDEXES = 16


def mesh_level(info: VolumeInfo, max_bytes: int = MESH_LEVEL_BYTES) -> int:
    """The finest level whose labels take at most ``max_bytes`` (the coarsest level when none does). Pure."""
    for i, lv in enumerate(info.levels):
        if int(np.prod(lv.shape)) * info.dtype.itemsize <= max_bytes:
            return i
    return len(info.levels) - 1


class LabelIndex:
    """Bounding boxes of label ids per (channel, level, version); one scan each. Thread-safe.

    ``max_scan_bytes`` bounds the voxels one scan may read (413 past it).
    """

    def __init__(self, max_scan_bytes: int, kept: int = KEPT_INDEXES):
        self.max_scan_bytes = int(max_scan_bytes)
        self._kept = kept
        self._lock = threading.Lock()
        self._boxes: OrderedDict = OrderedDict()  # key -> {id: Box}
        self._making: dict = {}
        #: scans made so far (for tests and logs)
        self.scans = 0

    def boxes(self, backend, ref, level: int) -> dict[int, Box]:
        """{id: its tight box at ``level``} of every non-zero label of the channel now."""
        key = (tuple(ref), int(level), backend.version(ref))
        with self._lock:
            found = self._boxes.get(key)
            if found is not None:
                self._boxes.move_to_end(key)
                return found
            gate = self._making.setdefault(key, threading.Lock())
        try:
            with gate:
                with self._lock:
                    found = self._boxes.get(key)
                if found is None:
                    found = self._scan(backend, ref, level)
                    with self._lock:
                        self._boxes[key] = found
                        while len(self._boxes) > self._kept:
                            self._boxes.popitem(last=False)
                return found
        finally:
            with self._lock:
                if self._making.get(key) is gate:
                    del self._making[key]

    def box(self, backend, ref, label: int, level: int) -> Box:
        """The label's box at ``level``; NotFound when it has no voxels there."""
        found = self.boxes(backend, ref, level).get(int(label))
        if found is None:
            raise NotFound(f"label {label} has no voxels at level {level} of {'/'.join(ref)}")
        return found

    def _scan(self, backend, ref, level: int) -> dict[int, Box]:
        info = backend.info(ref)
        lv = info.level(level)
        nbytes = int(np.prod(lv.shape)) * info.dtype.itemsize
        if nbytes > self.max_scan_bytes:
            raise RequestRefused(413, f"finding objects in level {level} of {'/'.join(ref)} would scan {nbytes} "
                                      f"bytes of labels, more than this server's limit of {self.max_scan_bytes}")
        started = time.monotonic()
        plane = lv.shape[1] * lv.shape[2] * info.dtype.itemsize
        depth = max(1, min(lv.shape[0], SCAN_SLAB_BYTES // max(1, plane)))
        if depth >= lv.chunk_shape[0]:
            depth -= depth % lv.chunk_shape[0]
        lo: dict[int, np.ndarray] = {}
        hi: dict[int, np.ndarray] = {}
        z0, z_end = lv.box.start[0], lv.box.stop[0]
        while z0 < z_end:
            slab = Box((z0, lv.box.start[1], lv.box.start[2]), (min(z0 + depth, z_end), *lv.box.stop[1:]))
            _merge(backend.read(ref, slab, level), slab.start, lo, hi)
            if len(lo) > MAX_INDEXED_IDS:
                raise RequestRefused(413, f"{'/'.join(ref)} has more than {MAX_INDEXED_IDS} labels at level {level}: "
                                          "too many to index")
            z0 = slab.stop[0]
        with self._lock:
            self.scans += 1
        log.info("indexed %d labels of %s level %d in %.1f s", len(lo), "/".join(ref), level,
                 time.monotonic() - started)
        return {i: Box(tuple(int(v) for v in lo[i]), tuple(int(v) + 1 for v in hi[i])) for i in lo}


def _merge(data: np.ndarray, origin, lo: dict, hi: dict) -> None:
    """Fold the boxes of the non-zero labels of ``data`` (its first voxel at ``origin``) into lo/hi."""
    ids = np.unique(data)
    ids = ids[ids != 0]
    if not len(ids):
        return
    which = np.searchsorted(ids, data).ravel()  # zeros land on index 0 too: masked out below
    present = (data != 0).ravel()
    which = which[present]
    mins = np.full((3, len(ids)), np.iinfo(np.int64).max, np.int64)
    maxs = np.full((3, len(ids)), -1, np.int64)
    flat = np.flatnonzero(present)
    coords = np.unravel_index(flat, data.shape)
    for axis in range(3):
        np.minimum.at(mins[axis], which, coords[axis])
        np.maximum.at(maxs[axis], which, coords[axis])
    for k, label in enumerate(ids.tolist()):
        s = mins[:, k] + origin
        e = maxs[:, k] + origin
        if label in lo:
            lo[label] = np.minimum(lo[label], s)
            hi[label] = np.maximum(hi[label], e)
        else:
            lo[label], hi[label] = s, e


def legacy_fragment(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """A neuroglancer legacy mesh fragment: uint32 count, float32 xyz vertices (nm), uint32 triangles. Pure."""
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.ascontiguousarray(faces, dtype="<u4")
    return struct.pack("<I", len(v)) + v.tobytes() + f.tobytes()


STATUS = ("unprocessed", "locked", "processed", "ignored")


def segment_properties(objects) -> dict:
    """neuroglancer's inline segment properties of RAMON objects (see the module doc). Pure."""
    from ndfs.ramon.types import ENUMS

    ids, labels, descriptions, tag_lists = [], [], [], []
    tags: list[str] = []
    where: dict[str, int] = {}

    def tag(name: str) -> int:
        if name not in where:
            where[name] = len(tags)
            tags.append(name)
        return where[name]

    for obj in sorted(objects, key=lambda o: o.id):
        kv = dict(obj.kvpairs or {})
        ids.append(str(obj.id))
        labels.append(str(kv.get("name") or f"{obj.TYPE} {obj.id}"))
        parts = [obj.TYPE]
        if obj.author:
            parts.append(f"by {obj.author}")
        parts.append(f"status {STATUS[obj.status] if 0 <= obj.status < len(STATUS) else obj.status}")
        parts.append(f"confidence {obj.confidence:g}")
        parts += [f"{k}={v}" for k, v in sorted(kv.items()) if k != "name"]
        descriptions.append(", ".join(parts))
        mine = [tag(obj.TYPE)]
        for enum in ("segmentclass", "organelleclass"):
            value = getattr(obj, enum, 0)
            if value:
                mine.append(tag(ENUMS[enum][value]))
        if 0 <= obj.status < len(STATUS):
            mine.append(tag(STATUS[obj.status]))
        tag_lists.append(sorted(set(mine)))
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": ids, "properties": [
                {"id": "label", "type": "label", "values": labels},
                {"id": "description", "type": "description", "values": descriptions},
                {"id": "tags", "type": "tags", "tags": tags, "values": tag_lists}]}}
