"""Volume: one channel at one level, sliced like a numpy array.

Indices are dataset coordinates (as in CloudVolume): ``vol[z0:z1, y0:y1, x0:x1]``
with the volume's offset as the first valid index; open slices mean the whole
extent, integers drop that axis, steps are not supported. Assignment writes
through the backend. Thread-safe as far as its backend is.
"""

from __future__ import annotations

import uuid
from typing import Sequence

import numpy as np

from ndfs.stack import Source, open_source, source_of
from ndfs.stores.base import Backend, as_ref
from ndfs.core.errors import BadRegion, MissingExtra
from ndfs.core.geometry import Box
from ndfs.core.info import LevelInfo, VolumeInfo


class Volume:
    """A numpy-sliceable view of ``backend``'s volume ``ref`` at ``level``."""

    def __init__(self, backend: Backend, ref: Sequence[str] | str, level: int = 0):
        self.backend = backend
        self.ref = as_ref(ref)
        self.level_index = int(level)
        self.info: VolumeInfo = backend.info(self.ref)
        self.level_info: LevelInfo = self.info.level(self.level_index)

    def __repr__(self) -> str:
        return (f"Volume({'/'.join(self.ref)!r}, level={self.level_index}, shape={self.shape}, "
                f"dtype={self.dtype}, offset={self.offset})")

    @property
    def shape(self):
        return self.level_info.shape

    @property
    def dtype(self) -> np.dtype:
        return self.info.dtype

    @property
    def offset(self):
        return self.level_info.offset

    @property
    def voxel_size_nm(self):
        return self.level_info.voxel_size_nm

    @property
    def box(self) -> Box:
        return self.level_info.box

    @property
    def levels(self):
        """The channel's levels (LevelInfo, 0 = full resolution), as in ``VolumeInfo.levels``;
        ``len(vol.levels)`` counts them and :meth:`level` opens one."""
        return self.info.levels

    def level(self, level: int) -> "Volume":
        """The same channel at another level."""
        return Volume(self.backend, self.ref, level)

    def _box(self, key) -> tuple[Box, tuple]:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        if len(key) > 3:
            raise BadRegion(f"a volume has 3 axes (z, y, x), got {len(key)} indices")
        key = key + (slice(None),) * (3 - len(key))
        start, stop, squeeze = [], [], []
        for axis, (k, lo, hi) in enumerate(zip(key, self.box.start, self.box.stop)):
            if isinstance(k, slice):
                if k.step not in (None, 1):
                    raise BadRegion("steps are not supported in volume slices; read and slice the array")
                a = lo if k.start is None else int(k.start)
                b = hi if k.stop is None else int(k.stop)
            elif isinstance(k, (int, np.integer)):
                a, b = int(k), int(k) + 1
                squeeze.append(axis)
            else:
                raise BadRegion(f"cannot index a volume with {k!r}")
            if not (lo <= a <= b <= hi):
                raise BadRegion(f"index {a}:{b} on axis {'zyx'[axis]} is outside {lo}:{hi}")
            start.append(a)
            stop.append(b)
        return Box(tuple(start), tuple(stop)), tuple(squeeze)

    def __getitem__(self, key) -> np.ndarray:
        box, squeeze = self._box(key)
        out = self.backend.read(self.ref, box, self.level_index)
        return out.squeeze(axis=squeeze) if squeeze else out

    def __setitem__(self, key, value) -> None:
        box, squeeze = self._box(key)
        arr = np.asarray(value)
        if arr.ndim == 0:
            arr = np.full(box.shape, arr, dtype=self.dtype)
        elif squeeze:
            arr = np.expand_dims(arr, squeeze) if arr.ndim == 3 - len(squeeze) else arr
        try:
            arr = np.broadcast_to(arr, box.shape)
        except ValueError:
            raise BadRegion(f"an array of shape {arr.shape} does not fit the box {box.shape} (z, y, x)") from None
        self.backend.write(self.ref, box, self.level_index, arr)

    def read(self, box: Box) -> np.ndarray:
        return self.backend.read(self.ref, box, self.level_index)

    def write(self, box: Box, array: np.ndarray) -> None:
        self.backend.write(self.ref, box, self.level_index, array)

    def to_dask(self, chunks=None):
        """This level as a lazy ``dask.array.Array`` (needs the ``dask`` extra): one task per chunk, read
        through the volume's backend. ``chunks`` defaults to the store's chunk grid. Index 0 of the dask
        array is the volume's offset. Works with any Dask scheduler; on process-based ones each worker
        reopens the store (the volume pickles as its recipe)."""
        try:
            import dask.array as da
        except ImportError:
            raise MissingExtra("Volume.to_dask needs dask: pip install 'ndfs[dask]'") from None
        if chunks is None:
            chunks = _grid_chunks(self)
        return da.from_array(_DaskSlicer(self), chunks=chunks, lock=False, asarray=False, fancy=False,
                             meta=np.empty((0, 0, 0), dtype=self.dtype), name=f"ndfs-{uuid.uuid4().hex}")

    def __reduce__(self):
        # pickled as a recipe that reopens the backend (no connections, no token): see ndfs.stack.source_of
        return (_reopen_volume, (source_of(self.backend), self.ref, self.level_index))


def _reopen_volume(source: Source, ref, level: int) -> Volume:
    """A Volume in another process, its backend opened from the recipe once per process."""
    return Volume(open_source(source), ref, level)


class _DaskSlicer:
    """What ``dask.array.from_array`` slices: 0-based indices over a Volume's dataset coordinates."""

    def __init__(self, volume):
        self.volume = volume
        self.shape, self.dtype, self.ndim = tuple(volume.shape), volume.dtype, 3

    def __getitem__(self, key) -> np.ndarray:
        start = [a + (s.start or 0) for a, s in zip(self.volume.offset, key)]
        stop = [a + (n if s.stop is None else s.stop) for a, s, n in zip(self.volume.offset, key, self.shape)]
        return self.volume.read(Box(tuple(start), tuple(stop)))


def _grid_chunks(volume) -> tuple[tuple[int, ...], ...]:
    """Chunk sizes per axis that follow the store's chunk grid (edge chunks may be smaller)."""
    grid = volume.level_info.grid
    lo, hi = grid.index_range(volume.box)
    out = []
    for axis in range(3):
        sizes = []
        for i in range(lo[axis], hi[axis]):
            idx = [lo[0], lo[1], lo[2]]
            idx[axis] = i
            b = grid.chunk_box(tuple(idx))
            sizes.append(b.stop[axis] - b.start[axis])
        out.append(tuple(sizes))
    return tuple(out)
