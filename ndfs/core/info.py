"""VolumeInfo: what ndfs knows about a volume before reading any voxel.

A volume has one or more levels (0 = full resolution). Each level has its own
shape, offset, voxel size and chunk shape, so backends with any downsampling
scheme (x/y only, isotropic, anisotropic) fit. Immutable and thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ndfs.core.errors import BadRegion, NotFound
from ndfs.core.geometry import Box, ChunkGrid, Triple

KINDS = ("image", "annotation")


@dataclass(frozen=True)
class LevelInfo:
    """One resolution level: ZYX shape, offset (first voxel), voxel size in nm, chunk shape."""

    shape: Triple
    offset: Triple = (0, 0, 0)
    voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunk_shape: Triple = (16, 256, 256)
    #: where the store's chunk grid lines start; None = at the offset, (0, 0, 0) for a global grid
    chunk_origin: Triple | None = None

    @property
    def box(self) -> Box:
        return Box.from_shape(self.shape, self.offset)

    @property
    def grid(self) -> ChunkGrid:
        return ChunkGrid(self.chunk_shape, self.box, self.chunk_origin)

    def to_json(self) -> dict[str, Any]:
        return {
            "shape_zyx": list(self.shape),
            "offset_zyx": list(self.offset),
            "voxel_size_nm_zyx": list(self.voxel_size_nm),
            "chunk_shape_zyx": list(self.chunk_shape),
            **({"chunk_origin_zyx": list(self.chunk_origin)} if self.chunk_origin is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LevelInfo":
        return cls(
            shape=tuple(int(v) for v in data["shape_zyx"]),
            offset=tuple(int(v) for v in data.get("offset_zyx", (0, 0, 0))),
            voxel_size_nm=tuple(float(v) for v in data.get("voxel_size_nm_zyx", (1, 1, 1))),
            chunk_shape=tuple(int(v) for v in data.get("chunk_shape_zyx", (16, 256, 256))),
            chunk_origin=tuple(int(v) for v in data["chunk_origin_zyx"]) if "chunk_origin_zyx" in data else None,
        )


@dataclass(frozen=True)
class VolumeInfo:
    """Shape, dtype, kind and levels of one volume (a channel)."""

    dtype: np.dtype
    levels: tuple[LevelInfo, ...]
    kind: str = "image"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "levels", tuple(self.levels))
        if self.kind not in KINDS:
            raise BadRegion(f"volume kind must be one of {KINDS}, got {self.kind!r}")
        if not self.levels:
            raise BadRegion("a volume needs at least one level")

    def level(self, level: int) -> LevelInfo:
        if not isinstance(level, (int, np.integer)) or not 0 <= level < len(self.levels):
            raise NotFound(f"level {level} does not exist (levels 0..{len(self.levels) - 1})")
        return self.levels[int(level)]

    @property
    def shape(self) -> Triple:
        return self.levels[0].shape

    def check_box(self, box: Box, level: int) -> LevelInfo:
        """Raise BadRegion unless the box lies inside the level; return the level."""
        lv = self.level(level)
        if not lv.box.contains(box):
            raise BadRegion(f"box {box} is outside level {level} ({lv.box})")
        return lv

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype.name,
            "kind": self.kind,
            "levels": [lv.to_json() for lv in self.levels],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VolumeInfo":
        return cls(
            dtype=np.dtype(data["dtype"]),
            kind=data.get("kind", "image"),
            levels=tuple(LevelInfo.from_json(lv) for lv in data["levels"]),
            extra=dict(data.get("extra", {})),
        )
