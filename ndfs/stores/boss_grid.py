"""The BOSS's cuboid grid: how a box is cut into the requests a BOSS service serves well. Pure."""

from __future__ import annotations

from ndfs.core.geometry import Box, ChunkGrid

#: the BOSS stores and serves voxels in cuboids of 16 x 512 x 512 (z, y, x)
CUBOID_ZYX = (16, 512, 512)


def cuboid_pieces(box: Box, itemsize: int, max_bytes: int) -> list[Box]:
    """The box cut on the global 16x512x512 (z, y, x) cuboid grid, each piece within max_bytes. Pure."""
    grid = ChunkGrid(CUBOID_ZYX, box, origin=(0, 0, 0))
    limit = max(1, max_bytes // itemsize)
    return [piece for idx in grid.chunks(box) for piece in _within(grid.chunk_box(idx), limit)]


def _within(box: Box, limit: int) -> list[Box]:
    """Cut a box into slabs along z, then y, then x until every piece holds at most ``limit`` (>= 1) voxels."""
    if box.size <= limit:
        return [box]
    axis = next(i for i, n in enumerate(box.shape) if n > 1)
    step = max(1, limit // (box.size // box.shape[axis]))
    out = []
    for a in range(box.start[axis], box.stop[axis], step):
        start, stop = list(box.start), list(box.stop)
        start[axis], stop[axis] = a, min(a + step, box.stop[axis])
        out.extend(_within(Box(tuple(start), tuple(stop)), limit))
    return out
