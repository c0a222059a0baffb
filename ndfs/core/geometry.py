"""Boxes and chunk grids: the geometry every layer shares.

Arrays in ndfs are ZYX, C order; boxes are half-open ``[start, stop)`` in
dataset coordinates at one level. Both types are immutable and thread-safe.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

from ndfs.core.errors import BadRegion

Triple = tuple[int, int, int]


def _triple(values: Sequence[int], what: str) -> Triple:
    if len(values) != 3:
        raise BadRegion(f"{what} needs 3 values (z, y, x), got {len(values)}")
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True)
class Box:
    """A half-open ZYX box: ``start <= voxel < stop`` on each axis."""

    start: Triple
    stop: Triple

    def __post_init__(self):
        start = _triple(self.start, "box start")
        stop = _triple(self.stop, "box stop")
        if any(b < a for a, b in zip(start, stop)):
            raise BadRegion(f"box stop {stop} is before its start {start}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] = (0, 0, 0)) -> "Box":
        off = _triple(offset, "offset")
        shp = _triple(shape, "shape")
        return cls(off, tuple(o + s for o, s in zip(off, shp)))

    @classmethod
    def from_xyz(cls, x: Sequence[int], y: Sequence[int], z: Sequence[int]) -> "Box":
        """Build a box from ndio-style ``[start, stop)`` ranges per axis."""
        return cls((z[0], y[0], x[0]), (z[1], y[1], x[1]))

    @property
    def shape(self) -> Triple:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    def slices(self, origin: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """Numpy slices of this box inside an array whose first voxel is ``origin``."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))  # type: ignore[return-value]

    def intersect(self, other: "Box") -> "Box | None":
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        if any(b <= a for a, b in zip(start, stop)):
            return None
        return Box(start, stop)

    def contains(self, other: "Box") -> bool:
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def translate(self, delta: Sequence[int]) -> "Box":
        return Box(tuple(a + d for a, d in zip(self.start, delta)), tuple(b + d for b, d in zip(self.stop, delta)))

    def __str__(self) -> str:
        (z0, y0, x0), (z1, y1, x1) = self.start, self.stop
        return f"x {x0}:{x1}, y {y0}:{y1}, z {z0}:{z1}"


@dataclass(frozen=True)
class ChunkGrid:
    """A regular chunk grid clipped to a volume's box.

    Chunk boundaries fall at ``origin + k * chunk_shape``; ``origin`` defaults to
    the extent's start (a store whose chunks begin at the volume's first voxel,
    like the local zarr arrays), while services with a global grid (BOSS cuboids)
    use ``(0, 0, 0)``. Chunk index (0, 0, 0) is the first chunk that overlaps the
    extent; chunk boxes are clipped to the extent, so edge chunks may be smaller.
    """

    chunk_shape: Triple
    extent: Box
    origin: Triple | None = None

    def __post_init__(self):
        shape = _triple(self.chunk_shape, "chunk shape")
        if any(c <= 0 for c in shape):
            raise BadRegion(f"chunk shape must be positive, got {shape}")
        object.__setattr__(self, "chunk_shape", shape)
        origin = self.extent.start if self.origin is None else _triple(self.origin, "chunk origin")
        object.__setattr__(self, "origin", origin)
        # where chunk 0 starts: the grid line at or before the extent's start
        base = tuple(o + ((e - o) // c) * c for o, e, c in zip(origin, self.extent.start, shape))
        object.__setattr__(self, "_base", base)

    @property
    def grid_shape(self) -> Triple:
        return tuple(-(-(e - b) // c) for b, e, c in zip(self._base, self.extent.stop, self.chunk_shape))  # type: ignore

    def chunk_box(self, index: Sequence[int]) -> Box:
        start = tuple(b + i * c for b, i, c in zip(self._base, index, self.chunk_shape))
        stop = tuple(min(s + c, e) for s, c, e in zip(start, self.chunk_shape, self.extent.stop))
        return Box(tuple(max(s, e) for s, e in zip(start, self.extent.start)), stop)

    def index_range(self, box: Box) -> tuple[Triple, Triple]:
        """First and one-past-last chunk index on each axis for the chunks a box touches."""
        clipped = box.intersect(self.extent)
        if clipped is None:
            return (0, 0, 0), (0, 0, 0)
        lo = tuple((a - b) // c for a, b, c in zip(clipped.start, self._base, self.chunk_shape))
        hi = tuple(-(-(e - b) // c) for e, b, c in zip(clipped.stop, self._base, self.chunk_shape))
        return lo, hi  # type: ignore[return-value]

    def chunks(self, box: Box) -> Iterator[Triple]:
        """Indices of every chunk the box touches, in C order."""
        lo, hi = self.index_range(box)
        return itertools.product(*(range(a, b) for a, b in zip(lo, hi)))  # type: ignore[return-value]

    def aligned(self, box: Box) -> Box:
        """The smallest union of whole chunks that covers the box (clipped to the extent)."""
        lo, hi = self.index_range(box)
        if lo == hi:
            raise BadRegion(f"box {box} lies outside the volume {self.extent}")
        first = self.chunk_box(lo)
        last = self.chunk_box(tuple(h - 1 for h in hi))
        return Box(first.start, last.stop)
