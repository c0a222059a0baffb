"""Labels to RAMON objects, and counting objects: the ndio paper's "count the cells" use case.

- :func:`label_stats` scans a box of a label channel slab by slab (bounded
  memory, a progress bar) and gives, per label id, its voxel count, tight
  bounding box and centroid (in the level's dataset coordinates).
- :func:`from_labels` (``ndfs annotate``) turns a label channel, or a
  thresholded image channel, into RAMON objects carrying those numbers in
  their key-value pairs. Ids of a label channel are its labels (RAMON ties an
  object's voxels to its id); the store's id counter moves past them so
  later reservations never reuse one. A thresholded image is split into
  6-connected components (scipy), which get ids reserved on the backend and
  are written into an annotation channel.
- :func:`count` (``ndfs count``) counts the RAMON objects of a type (and
  key-value filters) with voxels inside a box, with a per-object table.

Every function works through the public Backend contract, so it runs the
same on the local store, the cache and every remote with RAMON.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ndfs.stores.base import Backend, annotations, as_ref
from ndfs.core.ahead import in_order
from ndfs.core.errors import BadRegion, InvalidAnnotation
from ndfs.core.geometry import Box

#: voxels read per slab while scanning
SLAB_VOXELS = 16 * 2**20
#: voxels a slab's planes are counted by at once (on every core; small enough to stay in cache)
GROUP_VOXELS = 2**20
#: unsigned labels below this index the count tables directly when the tables fit (see _index)
DIRECT_MAX = 2**22
#: most objects one thresholding may make: the ids reserved for them are reserved in one call
MAX_NEW_OBJECTS = 2**20


@dataclass
class ObjectStats:
    """What the labels say about one id inside the scanned box."""

    id: int
    voxels: int
    bbox: Box
    centroid: tuple[float, float, float]  # z, y, x

    def row(self) -> dict:
        (z0, y0, x0), (z1, y1, x1) = self.bbox.start, self.bbox.stop
        cz, cy, cx = self.centroid
        return {"id": self.id, "voxels": self.voxels, "x0": x0, "x1": x1, "y0": y0, "y1": y1, "z0": z0, "z1": z1,
                "centroid_x": round(cx, 3), "centroid_y": round(cy, 3), "centroid_z": round(cz, 3)}


def _slabs(box: Box, chunk: Sequence[int]):
    """The pieces of ``box`` a scan reads one at a time, in z order: slabs of whole planes, at least a chunk
    deep, of about SLAB_VOXELS; where a chunk-deep slab of whole planes holds more, that slab in tiles of
    whole chunks in y (and x), so that a scan of planes of any size holds a bounded piece."""
    depth, cy, cx = (max(1, int(c)) for c in chunk)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    plane = (y1 - y0) * (x1 - x0)
    if min(depth, z1 - z0) * plane <= SLAB_VOXELS:
        step = max(1, min(z1 - z0, max(depth, SLAB_VOXELS // max(1, plane))))
        for z in range(z0, z1, step):
            yield Box((z, y0, x0), (min(z1, z + step), y1, x1))
        return
    rows = SLAB_VOXELS // (depth * (x1 - x0))  # whole rows of the box a tile can hold
    if rows >= cy:
        ty, tx = rows - rows % cy, x1 - x0
    else:
        ty, tx = cy, max(cx, SLAB_VOXELS // (depth * cy) // cx * cx)
    for z in range(z0, z1, depth):
        for y in range(y0, y1, ty):
            for x in range(x0, x1, tx):
                yield Box((z, y, x), (min(z1, z + depth), min(y1, y + ty), min(x1, x + tx)))


def _index(flat: np.ndarray, wanted: np.ndarray | None, shape: tuple[int, ...]):
    """(labels, idx, tables): ``idx`` gives each voxel's position in ``labels``, or ``len(labels)`` for one
    not counted (0, or not in ``wanted``); ``tables``: whether per-axis count tables fit (``_tables_fit``).
    Small unsigned ids are their own positions (``labels`` is then every value up to the largest, 0 and
    absent ones too, dropped later); others are found among the slab's sorted values by binary search."""
    top = int(flat.max()) if flat.size else 0
    if flat.dtype.kind == "u" and top < DIRECT_MAX and _tables_fit(top + 1, shape, flat.size):
        return np.arange(top + 1, dtype=flat.dtype), flat, True  # made intp group by group
    if wanted is None:
        labels = np.unique(flat)  # sorted
        labels = labels[labels != 0]
    else:
        labels = wanted[wanted != 0]
    k = len(labels)
    idx = np.searchsorted(labels, flat)
    if k:
        idx[labels[np.minimum(idx, k - 1)] != flat] = k
    return labels, idx, _tables_fit(k, shape, flat.size)


def _tables_fit(k: int, shape: tuple[int, ...], size: int) -> bool:
    """Whether the per-axis count tables of ``k`` labels take no more room than the slab itself."""
    return (k + 1) * sum(shape) <= max(size, 2**20)


def _combine(which: np.ndarray, k: int, voxels, sums, lo, hi):
    """Rows grouped by ``which`` (0..k-1) into k: voxels and coordinate sums added, the least low corner and
    the greatest high corner kept. Per voxel (voxels 1, each corner its coordinates) or per slab's label."""
    out = (np.zeros(k, np.int64), np.zeros((k, 3), np.int64),
           np.full((k, 3), np.iinfo(np.int64).max), np.full((k, 3), np.iinfo(np.int64).min))
    for ufunc, total, rows in zip((np.add, np.add, np.minimum, np.maximum), out, (voxels, sums, lo, hi)):
        ufunc.at(total, which, rows)
    return out


def _slab_stats(data: np.ndarray, start: tuple[int, int, int], wanted: np.ndarray | None, pool=None):
    """Per label present in one slab: (labels, voxels, coordinate sums, low corner, high corner), arrays
    of K and (K, 3), in the slab's dataset coordinates (``start`` is its corner); ``pool``: an executor
    to count groups of planes on."""
    shape = data.shape
    labels, idx, tables = _index(data.ravel(), wanted, shape)
    k, origin = len(labels), np.array(start, dtype=np.int64)
    if tables:
        # per axis, a table of voxel counts by (label, position along the axis): the count, the sums, the
        # low and the high corner all come from these three tables, without a coordinate per voxel. They
        # are summed over groups of planes of GROUP_VOXELS, so that temporaries stay in cache
        idx3, k1 = idx.reshape(shape), k + 1
        step = max(1, GROUP_VOXELS // max(1, shape[1] * shape[2]))

        def group(z: int) -> list[np.ndarray]:
            part = idx3[z:z + step].astype(np.intp, copy=False)
            out = []
            for axis, n in enumerate(part.shape):
                along = (np.arange(n, dtype=np.intp) * k1).reshape([n if a == axis else 1 for a in range(3)])
                out.append(np.bincount((part + along).ravel(), minlength=n * k1))
            return out

        per_axis = [[], np.zeros(shape[1] * k1, np.int64), np.zeros(shape[2] * k1, np.int64)]
        mapper = map if pool is None else pool.map  # groups on the pool's threads: bincount mostly frees the GIL
        for zc, yc, xc in mapper(group, range(0, shape[0], step)):
            per_axis[0].append(zc)
            per_axis[1] += yc
            per_axis[2] += xc
        per_axis[0] = np.concatenate(per_axis[0])
        per_axis = [t.reshape(n, k1).T[:k] for t, n in zip(per_axis, shape)]
        voxels = per_axis[0].sum(axis=1)
        sums = np.stack([t @ np.arange(t.shape[1], dtype=np.int64) for t in per_axis], axis=1) \
            + voxels[:, None] * origin
        present = [t > 0 for t in per_axis]
        lo = np.stack([p.argmax(axis=1) for p in present], axis=1) + origin
        hi = np.stack([p.shape[1] - p[:, ::-1].argmax(axis=1) for p in present], axis=1) + origin
    else:  # many labels in a long, thin slab: a coordinate per counted voxel
        where = np.flatnonzero(idx < k)
        coords = np.stack(np.unravel_index(where, shape), axis=1) + origin
        voxels, sums, lo, hi = _combine(idx[where], k, 1, coords, coords, coords)
        hi += 1
    keep = (voxels > 0) & (labels != 0)
    if wanted is not None:
        keep &= np.isin(labels, wanted)
    return labels[keep], voxels[keep], sums[keep], lo[keep], hi[keep]


def label_stats(backend: Backend, ref: Sequence[str] | str, box: Box | None = None, level: int = 0,
                ids: Sequence[int] | None = None, progress: bool = False) -> dict[int, ObjectStats]:
    """Per non-zero label (or only `ids`) inside `box`: voxel count, tight box, centroid.

    One pass, piece by piece (see ``_slabs``): the next piece is read while one is counted (two pieces in
    memory at most), and a piece is counted in groups of planes on every core."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    ref = as_ref(ref)
    info = backend.info(ref)
    lv = info.level(level)
    box = lv.box if box is None else box
    info.check_box(box, level)
    wanted = None
    if ids is not None:  # an id the channel's type cannot hold labels no voxel
        bounds = np.iinfo(info.dtype) if info.dtype.kind in "ui" else None
        wanted = np.array(sorted(i for i in set(map(int, ids)) if bounds is None or bounds.min <= i <= bounds.max),
                          dtype=info.dtype)
    parts = []
    with tqdm(total=box.shape[0], unit="slice", desc="scanning labels", disable=not progress) as bar, \
            ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="ndfs-count") as pool:
        for slab, data in in_order(lambda piece: backend.read(ref, piece, level), _slabs(box, lv.chunk_shape),
                                   name="ndfs-scan"):
            parts.append(_slab_stats(data, slab.start, wanted, pool))
            del data
            if slab.stop[1:] == box.stop[1:]:  # the last piece of its planes
                bar.update(slab.shape[0])
    labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, info.dtype)
    if not len(labels):
        return {}
    uniq, inv = np.unique(labels, return_inverse=True)
    voxels, sums, lo, hi = _combine(inv, len(uniq), *(np.concatenate([p[i] for p in parts]) for i in range(1, 5)))
    return {int(label): ObjectStats(int(label), int(n), Box(tuple(map(int, a)), tuple(map(int, b))),
                                    tuple(float(v) for v in s / n))
            for label, n, s, a, b in zip(uniq.tolist(), voxels, sums, lo, hi)}


def _stats_kv(st: ObjectStats, level: int) -> dict[str, str]:
    (z0, y0, x0), (z1, y1, x1) = st.bbox.start, st.bbox.stop
    cz, cy, cx = st.centroid
    return {"voxels": str(st.voxels), "level": str(level), "bbox_xyz": f"{x0},{y0},{z0},{x1},{y1},{z1}",
            "centroid_xyz": f"{cx:.3f},{cy:.3f},{cz:.3f}"}


def from_labels(backend: Backend, ref: Sequence[str] | str, *, type: str = "segment", box: Box | None = None,
                level: int = 0, author: str = "ndfs annotate", threshold: float | None = None,
                into: Sequence[str] | str | None = None, min_voxels: int = 1,
                progress: bool = False) -> list[int]:
    """Make one RAMON object per labelled object; returns their ids.

    Without `threshold`, `ref` is an annotation channel and each label becomes
    an object with that id (an existing object of that id is updated). With
    `threshold`, `ref` is an image channel: voxels >= threshold are split into
    6-connected components, which get new ids reserved in the annotation
    channel `into` and are written there at the same box before the objects
    are stored. Components of fewer than `min_voxels` voxels (specks of
    noise) are left out.
    """
    from ndfs import ramon

    ref = as_ref(ref)
    if type not in ramon.TYPES:
        raise InvalidAnnotation(f"unknown RAMON type {type!r} (known: {', '.join(ramon.TYPES)})")
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
        raise BadRegion(f"min_voxels is a number of voxels, 1 or more, not {min_voxels!r}")
    if threshold is None:
        target = ref
        stats = label_stats(backend, ref, box, level, progress=progress)
    else:
        if into is None:
            raise BadRegion("a thresholded image needs an annotation channel to write its labels into (into=)")
        target = as_ref(into)
        stats = _components_into(backend, ref, target, box, level, threshold, min_voxels)
    if not stats:
        return []
    if threshold is None:  # the labels' ids are fixed: move the id counter past them
        existing = set(annotations(backend).ramon_ids(target, limit=None))
    else:
        existing = set()
    objs = []
    for st in stats.values():
        obj = ramon.make(type, id=st.id, author=author, kvpairs=_stats_kv(st, level))
        if st.id in existing:  # keep what is there, refresh the numbers
            (old,) = annotations(backend).ramon_get(target, [st.id])
            old.kvpairs = {**old.kvpairs, **_stats_kv(st, level)}
            obj = old
        objs.append(obj)
    return annotations(backend).ramon_put(target, objs)


def _components_into(backend: Backend, image: tuple, target: tuple, box: Box | None, level: int,
                     threshold: float, min_voxels: int = 1) -> dict[int, ObjectStats]:
    try:
        from scipy import ndimage
    except ImportError:
        raise BadRegion("splitting a thresholded image into objects needs scipy: "
                        "pip install 'ndfs[annotate]'") from None
    info, tinfo = backend.info(image), backend.info(target)
    lv = info.level(level)
    box = lv.box if box is None else box
    info.check_box(box, level)
    tinfo.check_box(box, level)
    if tinfo.kind != "annotation":
        raise InvalidAnnotation(f"{'/'.join(target)} is not an annotation channel")
    nbytes = box.size * 8
    if nbytes > 2**31:
        raise BadRegion(f"thresholding works on boxes up to 2 GiB of labels; this box needs {nbytes} bytes")
    mask = backend.read(image, box, level) >= threshold
    comps, n = ndimage.label(mask)  # 6-connected in 3-D
    if n and min_voxels > 1:  # drop the small components and number the others 1..n again
        keep = np.bincount(comps.ravel(), minlength=n + 1) >= min_voxels
        keep[0] = False
        renumber = np.zeros(n + 1, comps.dtype)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=comps.dtype)
        comps, n = renumber[comps], int(keep.sum())
    if n == 0:
        return {}
    if n > MAX_NEW_OBJECTS:
        raise BadRegion(f"{n} objects of {min_voxels} voxel(s) or more at or above the threshold, more than "
                        f"{MAX_NEW_OBJECTS} at once: raise the threshold or min_voxels, or pick a smaller box")
    first = annotations(backend).reserve_ids(target, n)[0]
    labels = np.where(comps > 0, comps.astype(np.uint64) + np.uint64(first - 1), np.uint64(0))
    old = backend.read(target, box, level)
    backend.write(target, box, level, np.where(labels != 0, labels, old).astype(tinfo.dtype))
    return label_stats(backend, target, box, level, ids=range(first, first + n))


@dataclass
class CountResult:
    """How many objects matched, and one row per object (voxels etc. inside the counted box)."""

    count: int
    rows: list[dict]

    def to_csv(self) -> str:
        out = io.StringIO()
        fields = ["id", "type", "voxels", "x0", "x1", "y0", "y1", "z0", "z1",
                  "centroid_x", "centroid_y", "centroid_z"]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"count": self.count, "objects": self.rows}, indent=1)


def count(backend: Backend, ref: Sequence[str] | str, *, type: str | None = None, box: Box | None = None,
          kv: dict[str, str] | None = None, level: int = 0, progress: bool = False) -> CountResult:
    """Count the RAMON objects of `type` (and `kv` pairs) with voxels in `box` (default: the whole level)."""
    ref = as_ref(ref)
    lv = backend.info(ref).level(level)
    scan = lv.box if box is None else box
    ids = annotations(backend).ramon_ids(ref, type=type, kv=kv)
    if not ids:
        return CountResult(0, [])
    # objects' voxels are the labels equal to their ids (a neuron's are its segments': counted by its own id only)
    stats = label_stats(backend, ref, scan, level, ids=ids, progress=progress)
    kinds = {o.id: o.type for o in annotations(backend).ramon_get(ref, list(stats))} if stats else {}
    rows = [{"type": kinds.get(i, ""), **st.row()} for i, st in stats.items()]
    if box is None:  # the whole channel: objects without voxels count too (e.g. synapses kept as metadata)
        have = set(stats)
        extra = [i for i in ids if i not in have]
        for obj in annotations(backend).ramon_get(ref, extra) if extra else []:
            rows.append({"id": obj.id, "type": obj.type, "voxels": 0})
        rows.sort(key=lambda r: r["id"])
    return CountResult(len(rows), rows)
