"""A small reference dataset with a known oracle, for conformance tests of any backend.

Project ``conf`` holds three channels with non-zero offsets, odd sizes and
several levels: ``em8`` (uint8 image), ``em16`` (uint16 image) and ``labels``
(uint64 annotation with ids above 2**32), plus ``scratch`` (uint8, for write
tests) and ``notes`` (uint64 annotation, for RAMON tests; all zeros at first). The oracle is the numpy data written at level 0 and the documented
downsampling rule for lower levels, computed independently of any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ndfs.stores.local import LocalBackend
from ndfs.core.downsample import downsample
from ndfs.core.geometry import Box

PROJECT = "conf"
SHAPE = (20, 70, 90)
OFFSET = (3, 5, 7)
CHUNK = (8, 32, 32)
LEVELS = 3
VOXEL_SIZE_NM = (30.0, 4.0, 4.0)
CHANNELS = {"em8": ("uint8", "image"), "em16": ("uint16", "image"),
            "labels": ("uint64", "annotation"), "scratch": ("uint8", "image"), "notes": ("uint64", "annotation")}
#: channels whose level 0 is written with data (the others stay zeros)
FILLED = ("em8", "em16", "labels", "scratch")


def _level0(name: str, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint64":
        ids = rng.integers(1, 2**40, size=12, dtype=np.uint64)
        coarse = rng.integers(0, len(ids) + 1, size=(SHAPE[0], SHAPE[1] // 10 + 1, SHAPE[2] // 10 + 1))
        blocks = np.repeat(np.repeat(coarse, 10, axis=1), 10, axis=2)[:, :SHAPE[1], :SHAPE[2]]
        return np.where(blocks == 0, 0, ids[np.maximum(blocks - 1, 0)]).astype(np.uint64)
    info = np.iinfo(dtype)
    return rng.integers(0, int(info.max) + 1, size=SHAPE, dtype=dtype)


@dataclass
class ReferenceData:
    """Level arrays per channel (index 0 = full resolution), all in dataset coordinates from OFFSET."""

    levels: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def offset(self, level: int) -> tuple[int, int, int]:
        z, y, x = OFFSET
        return (z, y >> level, x >> level)

    def box(self, channel: str, level: int) -> Box:
        return Box.from_shape(self.levels[channel][level].shape, self.offset(level))

    def read(self, channel: str, box: Box, level: int) -> np.ndarray:
        return self.levels[channel][level][box.slices(self.offset(level))]


def build_reference_store(path, seed: int = 1234) -> tuple[LocalBackend, ReferenceData]:
    """Create the reference project in a new local store at `path`; return (backend, oracle)."""
    backend = LocalBackend(path, create=True)
    data = ReferenceData()
    for i, (name, (dtype, kind)) in enumerate(CHANNELS.items()):
        info = backend.create_volume((PROJECT, name), SHAPE, dtype, kind=kind, voxel_size_nm=VOXEL_SIZE_NM,
                                     offset=OFFSET, levels=LEVELS, chunk_shape=CHUNK)
        arr = _level0(name, dtype, seed + i) if name in FILLED else np.zeros(SHAPE, dtype)
        if name in FILLED:
            backend.write((PROJECT, name), info.levels[0].box, 0, arr)
        pyramid = [arr]
        for level in range(1, LEVELS):
            pyramid.append(_downsample_with_offset(pyramid[-1], data.offset(level - 1), kind))
        data.levels[name] = pyramid
    backend.reset_stats()
    return backend, data


def _downsample_with_offset(a: np.ndarray, offset, kind: str) -> np.ndarray:
    """Downsample a level whose first voxel sits at `offset`: blocks are aligned to even coordinates."""
    pad_y, pad_x = offset[1] % 2, offset[2] % 2
    if pad_y or pad_x:  # the first block also covers the (missing) voxel before the offset: repeat the edge
        a = np.pad(a, ((0, 0), (pad_y, 0), (pad_x, 0)), mode="edge")
    return downsample(a, kind)
