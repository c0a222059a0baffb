"""2x downsampling in x and y (z kept), the pyramid scheme of the local store.

Images are averaged over each 2x2 block (rounded to nearest for integers).
Labels take the mode of each 2x2 block; ties go to the top-left voxel of the
block among the tied values, so a label survives where it covers at least half
the block. Odd edges are padded by repeating the last row/column. Pure
functions, thread-safe.
"""

from __future__ import annotations

import numpy as np


def _pad_even(a: np.ndarray) -> np.ndarray:
    pad_y = a.shape[1] % 2
    pad_x = a.shape[2] % 2
    if pad_y or pad_x:
        a = np.pad(a, ((0, 0), (0, pad_y), (0, pad_x)), mode="edge")
    return a


def _quads(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = _pad_even(a)
    return a[:, 0::2, 0::2], a[:, 0::2, 1::2], a[:, 1::2, 0::2], a[:, 1::2, 1::2]


def downsample_image(a: np.ndarray) -> np.ndarray:
    """Mean of each 2x2 xy block of a ZYX array, same dtype.

    Integers sum in the narrowest type that holds four of them (uint16 for uint8, uint32 for uint16),
    in place: about 6x faster than summing in int64 (scripts/bench_downsample.py).
    """
    q = _quads(a)
    if np.issubdtype(a.dtype, np.integer):
        acc = {1: np.uint16, 2: np.uint32}.get(a.dtype.itemsize, np.int64) if a.dtype.kind == "u" else np.int64
        total = q[0].astype(acc)
        for part in q[1:]:
            total += part
        total += 2
        total //= 4
        return total.astype(a.dtype)
    return (sum(p.astype(np.float64) for p in q) / 4).astype(a.dtype)


def downsample_labels(a: np.ndarray) -> np.ndarray:
    """Mode of each 2x2 xy block of a ZYX label array (ties: top-left first).

    The six pairwise comparisons of a block's voxels give each voxel's count; the first voxel (in the
    order top-left, top-right, bottom-left, bottom-right) with the highest count wins.
    """
    q0, q1, q2, q3 = _quads(a)
    e01, e02, e03 = q0 == q1, q0 == q2, q0 == q3
    e12, e13, e23 = q1 == q2, q1 == q3, q2 == q3
    best = q0.copy()
    best_count = e01.astype(np.uint8)
    best_count += e02
    best_count += e03
    for cand, eq in ((q1, (e01, e12, e13)), (q2, (e02, e12, e23)), (q3, (e03, e13, e23))):
        count = eq[0].astype(np.uint8)
        count += eq[1]
        count += eq[2]
        better = count > best_count
        np.copyto(best, cand, where=better)
        np.maximum(best_count, count, out=best_count)
    return best


def downsample(a: np.ndarray, kind: str) -> np.ndarray:
    """Downsample by the rule for a volume kind ('image' or 'annotation')."""
    return downsample_labels(a) if kind == "annotation" else downsample_image(a)


def child_extent(start: int, stop: int) -> tuple[int, int]:
    """Extent at the next level of the half-open range [start, stop) on an x or y axis."""
    return start // 2, -(-stop // 2)
