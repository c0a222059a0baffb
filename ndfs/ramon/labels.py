"""RAMON voxels on a label volume: find, paint and erase an object's voxels through any Backend.

The label volume is the truth (``specs/ramon.md`` 6): an object's voxels are
where the label equals its id. These helpers work through the public
``read``/``write`` of any backend, so they serve the local store, the cache
and the protocol servers alike. :func:`scan_bbox` reads the level slab by
slab (one chunk deep), so its cost grows with the volume, not the object.

Thread-safety: as the backend's; a paint is a read-modify-write, so callers
that paint concurrently into one channel serialise (the local store and the
servers hold a per-channel lock).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ndfs.core.errors import InvalidAnnotation
from ndfs.core.geometry import Box
from ndfs.ramon.types import Voxels

MODES = ("overwrite", "preserve", "exception", "reduce")
#: voxels read per slab while scanning for an object
SCAN_VOXELS = 32 * 2**20


def _slabs(extent: Box, depth: int, plane: int) -> Iterable[Box]:
    step = max(1, min(extent.shape[0], max(depth, SCAN_VOXELS // max(1, plane))))
    for z in range(extent.start[0], extent.stop[0], step):
        yield Box((z,) + extent.start[1:], (min(z + step, extent.stop[0]),) + extent.stop[1:])


def scan_bbox(backend, ref, ids: Iterable[int], level: int = 0, within: Box | None = None) -> Box | None:
    """The tight box (at ``level``) of the voxels labelled with any of ``ids``; None if there are none."""
    info = backend.info(ref)
    lv = info.level(level)
    extent = lv.box if within is None else within
    wanted = np.array(sorted(set(int(i) for i in ids)), dtype=info.dtype)
    if not len(wanted):
        return None
    lo, hi = None, None
    for slab in _slabs(extent, lv.chunk_shape[0], extent.shape[1] * extent.shape[2]):
        data = backend.read(ref, slab, level)
        mask = data == wanted[0] if len(wanted) == 1 else np.isin(data, wanted)
        if not mask.any():
            continue
        where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        s = np.array([w[0] for w in where]) + slab.start
        e = np.array([w[-1] + 1 for w in where]) + slab.start
        lo = s if lo is None else np.minimum(lo, s)
        hi = e if hi is None else np.maximum(hi, e)
    if lo is None:
        return None
    return Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi))


def labels_in(backend, ref, box: Box, level: int = 0) -> set[int]:
    """The distinct non-zero labels inside a box (read slab by slab)."""
    found: set[int] = set()
    lv = backend.info(ref).level(level)
    for slab in _slabs(box, lv.chunk_shape[0], box.shape[1] * box.shape[2]):
        found.update(int(v) for v in np.unique(backend.read(ref, slab, level)))
    found.discard(0)
    return found


def paint_attached(backend, ref, ids, objs, lock) -> None:
    """Label the voxels attached to stored objects (``obj.voxels``) with their ids, overwriting,
    one object after another under the channel's paint ``lock``."""
    with lock:
        for oid, obj in zip(ids, objs):
            if obj.voxels is not None:
                paint(backend, ref, oid, obj.voxels, "overwrite")


def paint(backend, ref, id: int, voxels: Voxels, mode: str = "overwrite") -> None:
    """Label the non-zero voxels of ``voxels`` with ``id`` (``reduce``: unlabel those that are ``id``).

    ``overwrite`` relabels voxels of other objects, ``preserve`` keeps them,
    ``exception`` refuses the whole paint (InvalidAnnotation, nothing written) when
    there is a conflict. The cutout must lie inside the level.
    """
    if mode not in MODES:
        raise InvalidAnnotation(f"voxel mode must be one of {', '.join(MODES)}, got {mode!r}")
    info = backend.info(ref)
    if int(id) > np.iinfo(info.dtype).max:
        raise InvalidAnnotation(f"id {id} does not fit the channel's {info.dtype} labels")
    box = voxels.box
    if box.empty:
        return
    if not info.level(voxels.level).box.contains(box):
        raise InvalidAnnotation(f"the voxels of object {id} ({box}) lie outside level {voxels.level} "
                                f"of {'/'.join(ref)} ({info.level(voxels.level).box})")
    mask = voxels.array != 0
    if not mask.any():
        return
    old = backend.read(ref, box, voxels.level)
    label = info.dtype.type(id)
    if mode == "reduce":
        new = np.where(mask & (old == label), info.dtype.type(0), old)
    else:
        taken = mask & (old != 0) & (old != label)
        if mode == "exception" and taken.any():
            raise InvalidAnnotation(f"{int(taken.sum())} voxels of object {id} are already labelled "
                                    "with other ids (exception mode)")
        paint_here = mask & ~taken if mode == "preserve" else mask
        new = np.where(paint_here, label, old)
    if not np.array_equal(new, old):
        backend.write(ref, box, voxels.level, new)


def erase(backend, ref, ids: Iterable[int]) -> None:
    """Zero every level-0 voxel labelled with any of ``ids`` (lower levels follow where the store rebuilds them)."""
    ids = sorted(set(int(i) for i in ids))
    box = scan_bbox(backend, ref, ids, 0)
    if box is None:
        return
    info = backend.info(ref)
    for slab in _slabs(box, info.levels[0].chunk_shape[0], box.shape[1] * box.shape[2]):
        old = backend.read(ref, slab, 0)
        new = np.where(np.isin(old, np.array(ids, dtype=info.dtype)), info.dtype.type(0), old)
        if not np.array_equal(new, old):
            backend.write(ref, slab, 0, new)
