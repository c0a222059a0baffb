"""What the viewer servers know about the objects of a label channel: where each one is, its mesh, its properties.

* :class:`LabelIndex`: the bounding box of every label id at one level of a
  channel, found by one scan of that level (slab by slab, within a byte
  bound) and kept per version token of the channel, so a write anywhere makes
  a fresh scan and an unchanged channel is scanned once. It is how a mesh
  request finds its object without scanning the channel again.
* :func:`mesh_level`: the level meshes are made at: the finest whose labels
  take at most ``max_bytes`` (so its index is one bounded scan).

Mesh fragments and ``segment_properties`` documents are made by
:mod:`ndfs.formats.precomputed` and :mod:`ndfs.ramon.neuroglancer`, which the
``precomputed`` remote reads them back with.

Thread-safe: an index is made once per (channel, level, version) however many
requests ask for it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np

from ndfs.core.errors import NotFound, TooLarge
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.serve.limits import MAX_LIST_ITEMS, RequestRefused
from ndfs.tools.mesh import label_boxes

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
        try:
            boxes = label_boxes(backend, ref, lv.box, level, SCAN_SLAB_BYTES, max_labels=MAX_INDEXED_IDS)
        except TooLarge as exc:
            raise RequestRefused(413, str(exc)) from None
        with self._lock:
            self.scans += 1
        log.info("indexed %d labels of %s level %d in %.1f s", len(boxes), "/".join(ref), level,
                 time.monotonic() - started)
        return boxes
