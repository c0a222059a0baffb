"""Volume: one channel at one level, sliced like a numpy array.

Indices are dataset coordinates (as in CloudVolume): ``vol[z0:z1, y0:y1, x0:x1]``
with the volume's offset as the first valid index; open slices mean the whole
extent, integers drop that axis, steps are not supported. Assignment writes
through the backend. Thread-safe as far as its backend is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ndfs.backends.base import Backend, as_ref
from ndfs.errors import BadRegion
from ndfs.geometry import Box
from ndfs.info import LevelInfo, VolumeInfo


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
        """This level as a lazy ``dask.array`` (needs the ``dask`` extra); see :func:`ndfs.batch.to_dask`."""
        from ndfs.batch import to_dask

        return to_dask(self, chunks)

    def __reduce__(self):
        # pickled as a recipe that reopens the backend (no connections, no token): see ndfs.api.source_of
        from ndfs.api import _reopen_volume, source_of

        return (_reopen_volume, (source_of(self.backend), self.ref, self.level_index))
