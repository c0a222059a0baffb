"""Pure geometry for the cache: which requests to make, which regions a write changes.

Functions of their arguments only; thread-safe.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Iterable

import numpy as np

from ndfs.core.geometry import Box, ChunkGrid
from ndfs.core.info import VolumeInfo

Index = tuple[int, int, int]
"""A chunk's ZYX index on its level's ChunkGrid."""


def group_chunks(grid: ChunkGrid, idxs: Iterable[Index], max_bytes: int, itemsize: int) -> list[tuple[Box, list[Index]]]:
    """Merge chunk indices into few aligned boxes: runs along x, then y, then z.

    Only the given chunks are ever covered, and no box holds more than ``max_bytes``
    of full chunks (a single chunk larger than that is still one box).
    """
    cz, cy, cx = grid.chunk_shape
    cap = max(1, max_bytes // (cz * cy * cx * itemsize))  # chunks per request
    by_z: dict[int, list] = defaultdict(list)
    for z, y, x in sorted(idxs):
        by_z[z].append((y, x))
    rects: list[list[int]] = []  # [z0, z1, y0, y1, x0, x1] in chunk units
    prev: dict[tuple, list[int]] = {}
    for z in sorted(by_z):
        runs: list[list[int]] = []
        for y, x in by_z[z]:
            r = runs[-1] if runs else None
            if r and r[0] == y and r[2] == x and r[2] - r[1] < cap:
                r[2] += 1
            else:
                runs.append([y, x, x + 1])
        flat, active = [], {}
        for y, x0, x1 in runs:
            r = active.get((x0, x1))
            if r is not None and r[1] == y and (y + 1 - r[0]) * (x1 - x0) <= cap:
                r[1] = y + 1
            else:
                active[(x0, x1)] = r = [y, y + 1, x0, x1]
                flat.append(r)
        cur = {}
        for y0, y1, x0, x1 in flat:
            r3 = prev.get((y0, y1, x0, x1))
            if r3 is not None and r3[1] == z and (z + 1 - r3[0]) * (y1 - y0) * (x1 - x0) <= cap:
                r3[1] = z + 1
            else:
                r3 = [z, z + 1, y0, y1, x0, x1]
                rects.append(r3)
            cur[(y0, y1, x0, x1)] = r3
        prev = cur
    groups = []
    for z0, z1, y0, y1, x0, x1 in rects:
        box = Box(grid.chunk_box((z0, y0, x0)).start, grid.chunk_box((z1 - 1, y1 - 1, x1 - 1)).stop)
        groups.append((box, list(itertools.product(range(z0, z1), range(y0, y1), range(x0, x1)))))
    return groups


def affected_regions(info: VolumeInfo, box: Box, level: int) -> dict[int, Box]:
    """The region of every level that a change to ``box`` at ``level`` can touch.

    Scale factors come from the levels' voxel sizes; when those do not differ,
    the local store's pyramid is assumed (x and y halve per level, z kept), so
    ``[a, b)`` maps to ``[a // 2**k, ceil(b / 2**k))`` k levels down.
    """
    base = info.level(level).voxel_size_nm
    scaled = any(lv.voxel_size_nm != base for lv in info.levels)
    regions = {}
    for lv_i, lv in enumerate(info.levels):
        if scaled:
            f = [v / b if b > 0 else 1.0 for v, b in zip(lv.voxel_size_nm, base)]
        else:  # voxel sizes say nothing: the x/y halving pyramid of the local store
            f = [1.0, 2.0 ** (lv_i - level), 2.0 ** (lv_i - level)]
        start = [int(np.floor(a / k)) for a, k in zip(box.start, f)]
        stop = [int(np.ceil(b / k)) for b, k in zip(box.stop, f)]
        region = Box(start, [max(a, b) for a, b in zip(start, stop)]).intersect(lv.box)
        if region is not None:
            regions[lv_i] = region
    return regions
