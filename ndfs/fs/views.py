"""More files per level, for the tools people open first: label views, PNG planes, volume.npy.

Hooked into :mod:`ndfs.fs.tree` by ``LevelDir`` and ``AxisDir``; what a level gains::

    <level>/volume.npy                 the whole level as .npy (numpy.load(..., mmap_mode="r"))
    <level>/{z,y,x}/<N>.png            8/16-bit grey planes; annotation planes renumbered to 16 bits
    <level>/labels16/ labels32/        annotation channels only: ids renumbered to 1, 2, 3 ...
        {z,y,x}/<N>.tif  <N>.csv         one plane and its lookup table (label,id per line)
        stack.tif  stack.csv             the whole level and its volume-wide lookup table

The plane folders list only the TIFFs: ``<N>.png`` and ``<N>.csv`` open by name. That keeps
``File > Import > Image Sequence`` of a ``z/`` folder to one image per plane (ImageJ would also
try the PNGs and the tables).

Renumbering: label k is the k-th smallest non-zero id present; 0 stays 0. A plane file's table
covers the ids of that plane only (computed when the plane is opened, from the plane itself);
the stack's table covers the whole level and is computed once per volume version by a scan of
the level, slab by slab, with progress in the log. A table is consistent with the file it sits
beside: every voxel served is checked against the table of its handle, and an id the table does
not know (the store changed behind the mount) fails the read with ESTALE instead of a wrong
label. ``labels16`` refuses (EOVERFLOW) a plane or level with more than 65,535 ids;
``labels32`` holds up to 2**32-1 (ImageJ reads 32-bit TIFFs as float: exact to 16,777,216).

Table files are generated when read: until one has been computed their size shows as 0 (like
files in /proc) and they are served with direct_io. Every other file here has its exact size at
getattr without reading voxels. Thread-safe.
"""

from __future__ import annotations

import errno
import io
import logging
import re
import threading
import time
import weakref
from typing import Callable

import cachetools
import numpy as np

from ndfs.stores.base import VolumeRef
from ndfs.core.errors import NdfsError, NotFound, TooLarge
from ndfs.formats.npy import NpyLayout
from ndfs.formats.png import PngLayout
from ndfs.formats.tiff import TiffLayout
from ndfs.volume import Volume
from ndfs.fs.nodes import AXES, BytesFile, DirNode, FileNode, Plane, TiffFile
from ndfs.core.geometry import Box
from ndfs.core.info import LevelInfo, VolumeInfo

log = logging.getLogger("ndfs.views")

LABEL_VIEWS = {"labels16": 16, "labels32": 32}
INDEX = r"(0|-?[1-9][0-9]*)"
PNG_NAME = re.compile(rf"^{INDEX}\.png$")
PLANE_NAME = re.compile(rf"^{INDEX}\.(tif|csv)$")
#: rows or boxes are read in pieces of at most this many bytes when a whole plane or level is scanned
BAND_BYTES = 64 * 2**20
#: lookup tables kept in memory per tree (bytes of ids)
LUT_CACHE_BYTES = 256 * 2**20
#: seconds between progress lines of a volume scan
PROGRESS_S = 5.0


# ---- calibration and display range ------------------------------------------------------
def calibration(voxel_size_nm) -> tuple[tuple[float, float, float], str]:
    """(voxel size, ImageJ unit) for a TIFF: micrometres from 100 nm up, else nanometres."""
    vs = tuple(float(v) for v in voxel_size_nm)
    if min(vs) >= 100:
        return tuple(v / 1000 for v in vs), "micron"
    return vs, "nm"


def image_display_range(tree, remote: str, ref: VolumeRef) -> Callable[[], tuple[int, int]] | None:
    """For 16-bit image TIFFs: a callable giving ImageJ's display range, evaluated when the file
    header is first read (never at getattr). None for other channels.

    The range is the min and max of the coarsest level (or of a central part of it when that
    level is large), an estimate that costs one small read per volume version.
    """
    info = tree.info(remote, ref)
    if info.kind != "image" or info.dtype != np.uint16:
        return None

    def compute() -> tuple[int, int]:
        key = ("display-range", remote, ref, tree.token(remote, ref))
        return tree._memoised(key, lambda: _estimate_range(Volume(tree.backend(remote), ref, len(info.levels) - 1)))

    return compute


def _estimate_range(coarsest: Volume) -> tuple[int, int]:
    """The min and max of the coarsest level (of its middle plane's centre when the level is large)."""
    lv, dtype = coarsest.level_info, coarsest.dtype
    (z0, y0, x0), (nz, ny, nx) = lv.offset, lv.shape
    if lv.box.size * dtype.itemsize > BAND_BYTES:  # only the middle plane, centre crop
        z0, nz = z0 + nz // 2, 1
        cy, cx = min(ny, 4096), min(nx, 4096)
        y0, x0, ny, nx = y0 + (ny - cy) // 2, x0 + (nx - cx) // 2, cy, cx
    a = coarsest.read(Box((z0, y0, x0), (z0 + nz, y0 + ny, x0 + nx)))
    lo, hi = int(a.min()), int(a.max())
    if hi <= lo:
        lo, hi = (lo, lo + 1) if lo < 65535 else (lo - 1, lo)
    log.info("display range of %s: %d..%d (from level %d)", "/".join(coarsest.ref), lo, hi, coarsest.level_index)
    return lo, hi


# ---- lookup tables ------------------------------------------------------------------------
class StaleLabels(NdfsError):
    """The store holds an id the file's lookup table does not know: reopen the file (ESTALE)."""

    errno_default = errno.ESTALE


def unique_ids(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct non-zero values; runs of equal neighbours are dropped first (labels are
    piecewise constant, so this shrinks the sort by orders of magnitude)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.uint64)
    keep = np.empty(flat.size, bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    ids = np.unique(flat[keep])
    return ids[ids != 0].astype(np.uint64, copy=False)


class Lut:
    """A renumbering: label k (1-based) stands for ``ids[k-1]``; 0 stays 0. Immutable."""

    __slots__ = ("ids", "nbytes", "_csv")

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.uint64)
        self.nbytes = 4 * self.ids.nbytes + 64  # the ids and, once made, their CSV text
        self._csv: bytes | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    def check_bits(self, bits: int, what: str) -> None:
        if self.count > 2**bits - 1:
            raise TooLarge(f"{what} holds {self.count} ids; labels{bits} numbers at most {2**bits - 1}"
                           f"{' (use labels32)' if bits < 32 else ''}", errno=errno.EOVERFLOW)

    def apply(self, arr: np.ndarray, dtype) -> np.ndarray:
        """The labels of an array of ids; StaleLabels if an id is not in the table."""
        arr = np.asarray(arr)
        nz = arr != 0
        if self.count == 0:
            if nz.any():
                raise StaleLabels("the store holds labels this file's lookup table does not know; reopen it")
            return np.zeros(arr.shape, dtype)
        values = arr.astype(np.uint64, copy=False)
        idx = np.searchsorted(self.ids, values)
        found = self.ids[np.minimum(idx, self.count - 1)] == values
        if not np.all(found | ~nz):
            raise StaleLabels("the store holds an id this file's lookup table does not know; reopen it")
        return np.where(nz, idx + 1, 0).astype(dtype)

    def csv(self) -> bytes:
        """The table as CSV text: a ``label,id`` header line, then one line per label."""
        if self._csv is None:
            out = io.BytesIO()
            out.write(b"label,id\n")
            if self.count:
                table = np.stack([np.arange(1, self.count + 1, dtype=np.uint64), self.ids], axis=1)
                np.savetxt(out, table, fmt="%d", delimiter=",")
            self._csv = out.getvalue()  # a benign race: two threads make the same bytes
        return self._csv


class _LutStore:
    """Per tree: computed lookup tables (LRU, bounded in bytes) and one lock per table being made."""

    def __init__(self):
        self.cache = cachetools.LRUCache(maxsize=LUT_CACHE_BYTES, getsizeof=lambda e: e[1].nbytes)
        self.lock = threading.Lock()
        self.making: dict[tuple, threading.Lock] = {}

    def get(self, key, max_age_s: float | None = None) -> Lut | None:
        with self.lock:
            entry = self.cache.get(key)
        if entry is None or (max_age_s is not None and time.monotonic() - entry[0] > max_age_s):
            return None
        return entry[1]

    def put(self, key, lut: Lut) -> None:
        if lut.nbytes <= self.cache.maxsize:
            with self.lock:
                self.cache[key] = (time.monotonic(), lut)

    def drop(self, key) -> None:
        with self.lock:
            self.cache.pop(key, None)

    def maker(self, key) -> threading.Lock:
        with self.lock:
            return self.making.setdefault(key, threading.Lock())


_stores: "weakref.WeakKeyDictionary[object, _LutStore]" = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def _luts(tree) -> _LutStore:
    with _stores_lock:
        store = _stores.get(tree)
        if store is None:
            store = _stores[tree] = _LutStore()
        return store


class LevelView:
    """One level of a channel as the views see it: the level's :class:`ndfs.volume.Volume` (every voxel is
    read through it), and where it sits in the tree (remote, version token, mtime) for naming and for
    keying lookup tables."""

    def __init__(self, leveldir):
        v = leveldir.vol
        self.volume: Volume = leveldir.volume
        self.tree, self.remote, self.ref, self.level = v.tree, v.remote, v.ref, leveldir.level
        self.info: VolumeInfo = self.volume.info
        self.lv: LevelInfo = self.volume.level_info
        self.mtime, self.token = leveldir.mtime, v.token

    @property
    def name(self) -> str:
        return f"{self.remote}/{'/'.join(self.ref)}/{self.level}"

    def version(self):
        """The volume's version token when this level was resolved (tables are keyed on it)."""
        return self.token

    def read(self, box: Box) -> np.ndarray:
        return self.volume.read(box)

    def stack_rows(self, p: int, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of z plane p (counted from the level's first plane)."""
        (z0, y0, x0), (_, _, nx) = self.lv.offset, self.lv.shape
        return self.read(Box((z0 + p, y0 + r0, x0), (z0 + p + 1, y0 + r1, x0 + nx)))[0]

    def calibration(self, plane=None):
        vs = self.lv.voxel_size_nm if plane is None else plane.voxel_size(self.lv.voxel_size_nm)
        return calibration(vs)


def has_label_views(info: VolumeInfo) -> bool:
    return info.kind == "annotation" and info.dtype.kind in "ui" and info.dtype.itemsize >= 4


def _plane_geometry(vol: LevelView, plane) -> tuple[int, int]:
    return plane.shape(vol.lv.shape)


class _PlaneRows:
    """Rows of one plane for one open file: a plane of up to BAND_BYTES is read once, whole
    (through the tree's read lock, so never half before and half after a write)."""

    def __init__(self, vol: LevelView, plane, index: int):
        self.vol, self.plane, self.index = vol, plane, index
        self.height, self.width = _plane_geometry(vol, plane)
        self.box = plane.box(vol.lv.box, index, 0, self.height)
        self.row_bytes = self.width * vol.info.dtype.itemsize
        self._whole: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def small(self) -> bool:
        return self.height * self.row_bytes <= BAND_BYTES

    def rows(self, r0: int, r1: int) -> np.ndarray:
        vol, plane = self.vol, self.plane
        if self.small:
            with self._lock:
                if self._whole is None:
                    self._whole = plane.rows(vol.read(self.box))
            return self._whole[r0:r1]
        return plane.rows(vol.read(plane.box(vol.lv.box, self.index, r0, r1)))

    def ids(self) -> np.ndarray:
        step = max(1, BAND_BYTES // self.row_bytes)
        parts = [unique_ids(self.rows(r0, min(self.height, r0 + step))) for r0 in range(0, self.height, step)]
        return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))


def _plane_lut(vol: LevelView, plane, index: int, rows: _PlaneRows | None, fresh: bool) -> Lut:
    """The table of one plane: computed from `rows` when fresh (the file being opened), else a
    recent one (younger than the tree's ttl) if there is one."""
    store = _luts(vol.tree)
    key = ("plane", vol.remote, vol.ref, vol.level, plane.axis, index, vol.version())
    if not fresh:
        found = store.get(key, vol.tree.ttl_s)
        if found is not None:
            return found
    lut = Lut((rows or _PlaneRows(vol, plane, index)).ids())
    store.put(key, lut)
    return lut


def volume_lut(vol: LevelView) -> Lut:
    """The table of a whole level: every id in it, by a scan of the level (once per version)."""
    store = _luts(vol.tree)
    key = ("volume", vol.remote, vol.ref, vol.level, vol.version())
    found = store.get(key)
    if found is not None:
        return found
    with store.maker(key[:4]):
        found = store.get(key)
        if found is not None:
            return found
        lut = Lut(_scan_ids(vol))
        store.put(key, lut)
        return lut


def _scan_boxes(vol: LevelView) -> list[Box]:
    """Chunk-aligned boxes covering the level, each at most about BAND_BYTES (at least one chunk)."""
    grid = vol.lv.grid
    (lz, ly, lx), (hz, hy, hx) = grid.index_range(vol.lv.box)
    chunk = int(np.prod(grid.chunk_shape)) * vol.info.dtype.itemsize
    gx = min(hx - lx, max(1, BAND_BYTES // chunk))
    gy = min(hy - ly, max(1, BAND_BYTES // (chunk * gx)))
    boxes = []
    for iz in range(lz, hz):
        for iy in range(ly, hy, gy):
            for ix in range(lx, hx, gx):
                first = grid.chunk_box((iz, iy, ix))
                last = grid.chunk_box((iz, min(iy + gy, hy) - 1, min(ix + gx, hx) - 1))
                boxes.append(Box(first.start, last.stop))
    return boxes


def _scan_ids(vol: LevelView) -> np.ndarray:
    boxes = _scan_boxes(vol)
    log.info("labels of %s: scanning %d boxes for the volume lookup table", vol.name, len(boxes))
    t0 = last = time.monotonic()
    parts: list[np.ndarray] = []
    pending = 0
    for i, box in enumerate(boxes, 1):
        ids = unique_ids(vol.read(box))
        parts.append(ids)
        pending += len(ids)
        if pending > 4 * 2**20 and len(parts) > 1:
            parts = [np.unique(np.concatenate(parts))]
            pending = len(parts[0])
        now = time.monotonic()
        if now - last >= PROGRESS_S:
            log.info("labels of %s: %d/%d boxes (%.0f%%) in %.0f s", vol.name, i, len(boxes),
                     100 * i / len(boxes), now - t0)
            last = now
    ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    log.info("labels of %s: %d ids in %.1f s", vol.name, len(ids), time.monotonic() - t0)
    return ids.astype(np.uint64, copy=False)


# ---- nodes ------------------------------------------------------------------------------------
def _label_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint16 if bits == 16 else np.uint32)


def _label_layouts(n: int, h: int, w: int, bits: int, vs_unit):
    """(layout for the size at getattr, layout of an open file given its number of labels): the
    open file carries ImageJ's display range 0..number of labels, in a header of the same size."""
    vs, unit = vs_unit
    dt = _label_dtype(bits)
    try:
        placeholder = TiffLayout(n, h, w, dt, voxel_size=vs, unit=unit, display_range=(0, 0))
    except ValueError as exc:
        raise TooLarge(str(exc)) from exc
    return placeholder, lambda count: TiffLayout(n, h, w, dt, voxel_size=vs, unit=unit,
                                                 display_range=(0, max(1, count)))


class LabelPlaneTiff(FileNode):
    """``labels16/z/<N>.tif``: one plane, renumbered with the plane's own table."""

    def __init__(self, vol: LevelView, plane, index: int, bits: int):
        self.vol, self.plane, self.index, self.bits = vol, plane, index, bits
        self.mtime = vol.mtime
        h, w = _plane_geometry(vol, plane)
        self._placeholder, self._layout = _label_layouts(1, h, w, bits, vol.calibration(plane))
        self.size = self._placeholder.size

    def open(self):
        rows = _PlaneRows(self.vol, self.plane, self.index)
        lut = _plane_lut(self.vol, self.plane, self.index, rows, fresh=True)
        lut.check_bits(self.bits, f"plane {self.plane.axis}={self.index} of {self.vol.name}")
        layout = self._layout(lut.count)
        dt = layout.dtype
        return TiffFile(layout, lambda p, r0, r1: lut.apply(rows.rows(r0, r1), dt), self.mtime)


class LabelStackTiff(FileNode):
    """``labels16/stack.tif``: the whole level, renumbered with the volume table."""

    def __init__(self, vol: LevelView, bits: int):
        self.vol, self.bits, self.mtime = vol, bits, vol.mtime
        n, h, w = vol.lv.shape
        self._placeholder, self._layout = _label_layouts(n, h, w, bits, vol.calibration())
        self.size = self._placeholder.size

    def open(self):
        vol = self.vol
        key = ("volume", vol.remote, vol.ref, vol.level, vol.version())
        lut = volume_lut(vol)
        lut.check_bits(self.bits, f"level {vol.name}")
        layout = self._layout(lut.count)
        dt = layout.dtype

        def get_rows(p: int, r0: int, r1: int) -> np.ndarray:
            try:
                return lut.apply(vol.stack_rows(p, r0, r1), dt)
            except StaleLabels:
                _luts(vol.tree).drop(key)  # the next open scans again
                raise

        return TiffFile(layout, get_rows, self.mtime)


class LutFile(FileNode):
    """A lookup table as CSV (``label,id``), generated when opened (size 0 until known)."""

    direct_io = True

    def __init__(self, vol: LevelView, bits: int, make: Callable[[], Lut], peek: Callable[[], Lut | None],
                 what: str):
        self.vol, self.bits, self.make, self.what, self.mtime = vol, bits, make, what, vol.mtime
        known = peek()
        self.size = len(known.csv()) if known is not None else 0

    def open(self):
        lut = self.make()
        lut.check_bits(self.bits, self.what)
        return BytesFile(lut.csv(), self.mtime)


class PngFile(FileNode):
    """``{z,y,x}/<N>.png``: a grey plane; annotation planes renumbered to 16 bits."""

    def __init__(self, vol: LevelView, plane, index: int, labels: bool):
        self.vol, self.plane, self.index, self.labels = vol, plane, index, labels
        self.mtime = vol.mtime
        h, w = _plane_geometry(vol, plane)
        dt = np.uint16 if labels else vol.info.dtype
        self.layout = PngLayout(h, w, dt, pixel_size_nm=plane.voxel_size(vol.lv.voxel_size_nm)[1:])
        self.size = self.layout.size

    def open(self):
        rows = _PlaneRows(self.vol, self.plane, self.index)
        vol = self.vol
        vol.volume.backend.prefetch(vol.ref, rows.box, vol.level)
        if self.labels:
            lut = _plane_lut(vol, self.plane, self.index, rows, fresh=True)
            lut.check_bits(16, f"plane {self.plane.axis}={self.index} of {vol.name}")
            get_rows = lambda p, r0, r1: lut.apply(rows.rows(r0, r1), np.uint16)  # noqa: E731
        else:
            get_rows = lambda p, r0, r1: rows.rows(r0, r1)  # noqa: E731
        return _PngHandle(self, get_rows)


class _PngHandle(FileNode):
    """One open PNG: remembers the zlib checksum once it has been computed."""

    def __init__(self, node, get_rows):
        self.layout, self.get_rows, self.size, self.mtime = node.layout, get_rows, node.size, node.mtime
        self._adler: int | None = None
        self._lock = threading.Lock()

    def _checksum(self) -> int:
        with self._lock:
            if self._adler is None:
                self._adler = self.layout.checksum(self.get_rows)
            return self._adler

    def read(self, offset: int, size: int) -> bytes:
        return self.layout.read(offset, size, self.get_rows, self._checksum)


class NpyFile(FileNode):
    """``volume.npy``: the whole level as a C-order .npy; reads fetch only the rows they cover."""

    def __init__(self, vol: LevelView):
        self.vol, self.mtime = vol, vol.mtime
        self.layout = NpyLayout(vol.lv.shape, vol.info.dtype)
        self.size = self.layout.size

    def read(self, offset: int, size: int) -> bytes:
        return self.layout.read(offset, size, self.vol.stack_rows)


class LabelsDir(DirNode):
    """``labels16/`` or ``labels32/`` of an annotation level."""

    def __init__(self, vol: LevelView, bits: int):
        self.vol, self.bits, self.mtime = vol, bits, vol.mtime

    def names(self) -> list[str]:
        return list(AXES) + ["stack.tif", "stack.csv"]

    def child(self, name: str):
        vol = self.vol
        if name in AXES:
            return LabelAxisDir(vol, Plane(name), self.bits)
        if name == "stack.tif":
            return LabelStackTiff(vol, self.bits)
        if name == "stack.csv":
            key = ("volume", vol.remote, vol.ref, vol.level, vol.version())
            return LutFile(vol, self.bits, lambda: volume_lut(vol), lambda: _luts(vol.tree).get(key),
                           f"level {vol.name}")
        raise NotFound(f"labels{self.bits} of {vol.name} has no {name!r}")


class LabelAxisDir(DirNode):
    """``labels16/z/``: ``<N>.tif`` for every index on the axis, and its table ``<N>.csv``."""

    def __init__(self, vol: LevelView, plane, bits: int):
        self.vol, self.plane, self.bits, self.mtime = vol, plane, bits, vol.mtime

    def _range(self) -> range:
        i = AXES.index(self.plane.axis)
        return range(self.vol.lv.offset[i], self.vol.lv.offset[i] + self.vol.lv.shape[i])

    def names(self) -> list[str]:
        return [f"{n}.tif" for n in self._range()]  # <N>.csv opens by name (see the module doc)

    def child(self, name: str):
        m = PLANE_NAME.fullmatch(name)
        rng = self._range()
        if not m or int(m.group(1)) not in rng:
            raise NotFound(f"no plane {name!r} on axis {self.plane.axis} (valid: {rng.start}..{rng.stop - 1})")
        index, vol, plane = int(m.group(1)), self.vol, self.plane
        if m.group(2) == "tif":
            return LabelPlaneTiff(vol, plane, index, self.bits)
        key = ("plane", vol.remote, vol.ref, vol.level, plane.axis, index, vol.version())
        return LutFile(vol, self.bits, lambda: _plane_lut(vol, plane, index, None, fresh=False),
                       lambda: _luts(vol.tree).get(key, vol.tree.ttl_s),
                       f"plane {plane.axis}={index} of {vol.name}")


# ---- hooks called by the tree ---------------------------------------------------------------
def _png_labels(info: VolumeInfo) -> bool | None:
    """True: PNG planes are renumbered labels; False: the voxels as they are; None: no PNG."""
    if has_label_views(info):
        return True
    if info.dtype in (np.uint8, np.uint16):
        return False
    return None


def level_names(leveldir) -> list[str]:
    """Names this module adds to a level folder."""
    info = leveldir.vol.info
    return ["volume.npy"] + (list(LABEL_VIEWS) if has_label_views(info) else [])


def level_child(leveldir, name: str):
    """The node of a name from :func:`level_names`; NotFound for anything else."""
    vol = LevelView(leveldir)
    if name == "volume.npy":
        return NpyFile(vol)
    if name in LABEL_VIEWS and has_label_views(vol.info):
        return LabelsDir(vol, LABEL_VIEWS[name])
    raise NotFound(f"level {leveldir.level} has no {name!r}")


def axis_child(axisdir, name: str):
    """The PNG node for ``<N>.png`` in an axis folder; NotFound otherwise.

    PNG planes are not listed: ``File > Import > Image Sequence`` on ``z/`` then sees only the
    TIFFs (one file per plane, not two), and any ``<N>.png`` name still opens.
    """
    vol = LevelView(axisdir.leveldir)
    labels = _png_labels(vol.info)
    m = PNG_NAME.fullmatch(name)
    rng = axisdir._range()
    if labels is None:
        raise NotFound(f"{vol.name}: {vol.info.dtype} planes have no PNG form (use the .tif)")
    if not m or int(m.group(1)) not in rng:
        raise NotFound(f"no plane {name!r} on axis {axisdir.plane.axis} (valid: {rng.start}..{rng.stop - 1})")
    return PngFile(vol, axisdir.plane, int(m.group(1)), labels)
