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
    """Mean of each 2x2 xy block of a ZYX array, same dtype."""
    q = _quads(a)
    if np.issubdtype(a.dtype, np.integer):
        total = sum(p.astype(np.int64) for p in q)
        return ((total + 2) // 4).astype(a.dtype)
    return (sum(p.astype(np.float64) for p in q) / 4).astype(a.dtype)


def downsample_labels(a: np.ndarray) -> np.ndarray:
    """Mode of each 2x2 xy block of a ZYX label array (ties: top-left first)."""
    q = _quads(a)
    best = q[0].copy()
    best_count = sum((p == q[0]).astype(np.uint8) for p in q)
    for cand in q[1:]:
        count = sum((p == cand).astype(np.uint8) for p in q)
        better = count > best_count
        best[better] = cand[better]
        best_count = np.maximum(best_count, count)
    return best


def downsample(a: np.ndarray, kind: str) -> np.ndarray:
    """Downsample by the rule for a volume kind ('image' or 'annotation')."""
    return downsample_labels(a) if kind == "annotation" else downsample_image(a)


def child_extent(start: int, stop: int) -> tuple[int, int]:
    """Extent at the next level of the half-open range [start, stop) on an x or y axis."""
    return start // 2, -(-stop // 2)
