"""The synthetic remote: volumes of any size whose voxels are computed from their coordinates.

Nothing is stored: a read computes exactly the box asked for, so a channel of
100,000 x 100,000 x 20,000 voxels costs nothing until it is read, and every
read of the same box gives the same voxels, in every process. It stands in for
a petascale service in tests and benchmarks (``scripts/bench.py`` rows S1-S5):
the mount, the cache, ``ndfs serve`` and the API meet the sizes of real
datasets without the data. Read-only.

Configured like any remote (every setting optional)::

    [remotes.sim]
    kind = "synthetic"
    shape = [20000, 100000, 100000]     # z, y, x voxels of level 0
    chunk_shape = [16, 512, 512]        # the chunk grid the cache sees (BOSS cuboids)
    offset = [0, 0, 0]                  # the first voxel, z y x
    voxel_size_nm = [40.0, 4.0, 4.0]
    levels = 8                          # default: until a plane fits in 1024 x 1024
    project = "sim/petascale"           # the folders above the channels
    channels = ["em:uint8", "em16:uint16", "cells:uint64"]   # name:dtype; uint32/uint64 are annotations
    latency_ms = 0                      # added to every voxel request, like a service's round trip

The voxels: an image channel holds ``(H(z) + H(y) + H(x)) mod 2**bits`` of a
per-axis integer hash ``H`` of the level-0 coordinate, so every voxel depends
on all three coordinates (an off-by-one anywhere shows) and a box costs three
1-D hashes and one add. Levels below 0 sample level 0 at their voxels' corners
(``y << level``, ``x << level``; z is kept, as in every ndfs pyramid). An
annotation channel holds cell ids from 8 x 32 x 32 cells of level 0: ids of 41
to 62 bits (above 2**32, as real segmentations have), and 0 in about one cell
of five (background). Requests are counted like any backend's (``stats``).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ndfs.core.errors import BadRegion, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.stores.base import Backend, VolumeRef
from ndfs.stores.local import pyramid

DEFAULT_SHAPE = (20_000, 100_000, 100_000)
DEFAULT_CHANNELS = ("em:uint8", "em16:uint16", "cells:uint64")
DTYPES = ("uint8", "uint16", "uint32", "uint64")
#: an annotation's cells, z y x voxels of level 0
CELL = (8, 32, 32)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash(t: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of each coordinate (uint64, wrapping), salted per axis and channel."""
    x = t.astype(np.uint64) + np.uint64(salt)
    x = x * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def voxels(dtype, kind: str, salt: int, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The voxels at the level-0 coordinates ``z``, ``y``, ``x`` (1-D, each axis of the box in order)."""
    dtype = np.dtype(dtype)
    if kind == "image":
        hz, hy, hx = (_hash(c, salt + i).astype(dtype) for i, c in enumerate((z, y, x)))
        return (hy[:, None] + hx[None, :])[None] + hz[:, None, None]  # wraps: mod 2**bits
    cz, cy, cx = z // CELL[0], y // CELL[1], x // CELL[2]
    hz, hy, hx = (_hash(c, salt + i) for i, c in enumerate((cz, cy, cx)))
    ids = (hz[:, None, None] ^ hy[None, :, None] ^ hx[None, None, :]) >> np.uint64(2)
    ids |= np.uint64(1 << 40)  # 41 to 62 bits, never 0
    background = (_hash(cy, salt + 7)[:, None] + _hash(cx, salt + 8)[None, :]) % np.uint64(5) == 0
    ids[:, background] = 0
    return ids.astype(dtype, copy=False)


def default_levels(shape: Sequence[int]) -> int:
    """Levels until a plane fits in 1024 x 1024 (at most 16)."""
    n, side = 1, max(shape[1], shape[2])
    while side > 1024 and n < 16:
        side, n = -(-side // 2), n + 1
    return n


def _triple(value, what: str, cast, minimum) -> tuple:
    try:
        out = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise BadRegion(f"synthetic remote: {what} must be three numbers (z, y, x), got {value!r}") from None
    if len(out) != 3 or (minimum is not None and min(out) < minimum):
        raise BadRegion(f"synthetic remote: {what} must be three numbers (z, y, x) of at least {minimum}, "
                        f"got {value!r}")
    return out


class SyntheticBackend(Backend):
    """Read-only channels of any size under ``project``, computed from coordinates (see the module doc)."""

    kind = "synthetic"

    def __init__(self, *, shape: Sequence[int] = DEFAULT_SHAPE, chunk_shape: Sequence[int] = (16, 512, 512),
                 offset: Sequence[int] = (0, 0, 0), voxel_size_nm: Sequence[float] = (40.0, 4.0, 4.0),
                 levels: int | None = None, project: str = "sim/petascale",
                 channels: Sequence[str] = DEFAULT_CHANNELS, latency_ms: float = 0.0):
        super().__init__()
        self.shape = _triple(shape, "shape", int, 1)
        self.chunk_shape = _triple(chunk_shape, "chunk_shape", int, 1)
        self.offset = _triple(offset, "offset", int, None)
        self.voxel_size_nm = _triple(voxel_size_nm, "voxel_size_nm", float, 0)
        self.levels = default_levels(self.shape) if levels is None else int(levels)
        if not 1 <= self.levels <= 24:
            raise BadRegion(f"synthetic remote: levels must be 1..24, got {levels!r}")
        self.project = tuple(p for p in str(project).split("/") if p)
        if not self.project:
            raise BadRegion("synthetic remote: project must name at least one folder")
        self.latency_s = max(0.0, float(latency_ms)) / 1000
        self._infos: dict[str, tuple[VolumeInfo, int]] = {}
        for i, spec in enumerate(channels):
            name, _, dtype = str(spec).partition(":")
            if not name or dtype not in DTYPES:
                raise BadRegion(f"synthetic remote: a channel is 'name:dtype' with dtype one of {', '.join(DTYPES)}, "
                                f"got {spec!r}")
            kind = "annotation" if dtype in ("uint32", "uint64") else "image"
            info = VolumeInfo(dtype=np.dtype(dtype), kind=kind,
                              levels=pyramid(self.shape, self.offset, self.voxel_size_nm, self.levels,
                                             self.chunk_shape))
            self._infos[name] = (info, 1000 * (i + 1))

    def __repr__(self) -> str:
        return f"SyntheticBackend({'/'.join(self.project)}, shape={self.shape})"

    # ---- hierarchy and metadata ----------------------------------------------
    def _children(self, path: VolumeRef) -> list[str]:
        n = len(path)
        if n < len(self.project) and path == self.project[:n]:
            return [self.project[n]]
        if path == self.project:
            return sorted(self._infos)
        if n == len(self.project) + 1 and path[:-1] == self.project and path[-1] in self._infos:
            raise NotFound(f"{'/'.join(path)} is a channel, not a folder")
        raise NotFound(f"no folder {'/'.join(path) or '/'} in the synthetic remote")

    def _is_volume(self, path: VolumeRef) -> bool:
        if len(path) <= len(self.project) and path == self.project[:len(path)]:
            return False
        if path[:-1] == self.project and path[-1] in self._infos:
            return True
        raise NotFound(f"no folder or channel {'/'.join(path)} in the synthetic remote")

    def _channel(self, ref: VolumeRef) -> tuple[VolumeInfo, int]:
        if ref[:-1] != self.project or not ref or ref[-1] not in self._infos:
            raise NotFound(f"no channel {'/'.join(ref)} in the synthetic remote")
        return self._infos[ref[-1]]

    def _info(self, ref: VolumeRef) -> VolumeInfo:
        return self._channel(ref)[0]

    # ---- voxels -----------------------------------------------------------
    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        info, salt = self._channel(ref)
        if self.latency_s:
            time.sleep(self.latency_s)
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        return voxels(info.dtype, info.kind, salt, np.arange(z0, z1, dtype=np.int64),
                      np.arange(y0, y1, dtype=np.int64) << level, np.arange(x0, x1, dtype=np.int64) << level)
