"""Skeletons as SWC text: a :class:`Skeleton` (vertices in nm, edges, radii) and :func:`to_swc`. Pure.

SWC is a table of ``n type x y z radius parent`` lines, one per vertex, where a vertex's parent comes
before it and a root's parent is -1. A skeleton given as an edge list (neuroglancer precomputed
skeletons are graphs) becomes one tree per connected piece: each piece is walked breadth-first from
its lowest-numbered vertex, and an edge that would close a cycle is left out (SWC cannot hold it).
Vertex numbers follow the walk, starting at 1; coordinates are in nanometres.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ndfs.core.errors import BadInput


@dataclass(frozen=True)
class Skeleton:
    """A skeleton: ``vertices`` float32 (N, 3) x, y, z in nm; ``edges`` uint32 (M, 2); ``radius`` (N,) or None."""

    vertices: np.ndarray
    edges: np.ndarray
    radius: np.ndarray | None = None
    label: int = 0
    attributes: dict = field(default_factory=dict, compare=False)


def to_swc(skel: Skeleton) -> bytes:
    """The skeleton as SWC text (type 0, "undefined", for every vertex; radius 0 where none is known)."""
    v = np.asarray(skel.vertices, dtype=np.float64)
    e = np.asarray(skel.edges, dtype=np.int64).reshape(-1, 2)
    n = len(v)
    if v.ndim != 2 or v.shape[1] != 3:
        raise BadInput(f"a skeleton needs (N, 3) vertices, got {v.shape}")
    if len(e) and (e.min() < 0 or e.max() >= n):
        raise BadInput("skeleton edges refer to vertices that do not exist")
    radius = np.zeros(n) if skel.radius is None else np.asarray(skel.radius, dtype=np.float64).reshape(n)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in e.tolist():
        if a != b:
            neighbours[a].append(b)
            neighbours[b].append(a)
    number = np.zeros(n, dtype=np.int64)  # 0: not reached yet
    lines = [f"# ndfs skeleton {skel.label}: units nm\n"]
    count = 0
    for root in range(n):
        if number[root]:
            continue
        queue = deque([(root, -1)])
        count += 1
        number[root] = count
        while queue:
            i, parent = queue.popleft()
            x, y, z = v[i]
            lines.append(f"{number[i]} 0 {x:.6g} {y:.6g} {z:.6g} {radius[i]:.6g} {parent}\n")
            for j in sorted(neighbours[i]):
                if not number[j]:
                    count += 1
                    number[j] = count
                    queue.append((j, int(number[i])))
    return "".join(lines).encode()


def parse_swc(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (N, 3) xyz, edges (M, 2) as 0-based rows, radius (N,)) of SWC text, rows in file order."""
    rows = [ln.split() for ln in data.decode().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        table = np.array([[float(c) for c in r[:7]] for r in rows], dtype=np.float64).reshape(-1, 7)
    except ValueError as exc:
        raise BadInput(f"not SWC text: {exc}") from None
    index = {int(n): i for i, n in enumerate(table[:, 0])}
    edges = [(index[int(p)], i) for i, p in enumerate(table[:, 6]) if int(p) != -1]
    return table[:, 2:5], np.array(edges, dtype=np.int64).reshape(-1, 2), table[:, 5]


__all__ = ["Skeleton", "to_swc", "parse_swc"]
