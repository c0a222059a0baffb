"""The embedded demo dataset: project ``demo`` with an EM-like image and its cell labels.

``ndfs demo [DIR]`` calls :func:`make_demo`. The data come from
:class:`ndfs.synth.DemoVolume` (deterministic for a seed) and are written slab
by slab (made on every core, written in order), so memory stays at a few
slabs whatever the size. The label channel
also gets RAMON objects: one segment per cell the generator placed (id = its
label, key-value ``kind=cell``) and a few synapses between neighbouring cells
(metadata only, no voxels), so ``ndfs count`` has a known answer.
"""

from __future__ import annotations

import os
from typing import Sequence

from ndfs.stores.local import LocalBackend
from ndfs.core.errors import BadRegion
from ndfs.core.geometry import Box

PROJECT = "demo"
IMAGE = "em"
LABELS = "cells"
DEFAULT_SHAPE = (128, 1024, 1024)
VOXEL_SIZE_NM = (40.0, 4.0, 4.0)
#: synapses the demo adds between neighbouring cells
N_SYNAPSES = 5


def make_demo(
    store: str,
    shape: Sequence[int] = DEFAULT_SHAPE,
    n_cells: int | None = None,
    seed: int = 0,
    levels: int = 4,
    chunk_shape: Sequence[int] = (16, 256, 256),
    overwrite: bool = False,
    progress: bool = True,
) -> LocalBackend:
    """Write the demo project into the local store at `store` and return its backend."""
    from tqdm import tqdm

    from ndfs.tools.synth import DemoVolume

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise BadRegion(f"demo shape must be three positive sizes (z, y, x), got {shape}")
    if n_cells is None:  # keep the default density of ~300 cells per 128x1024x1024
        n_cells = max(4, round(300 * (shape[0] * shape[1] * shape[2]) / (128 * 1024 * 1024)))
    backend = LocalBackend(store, create=True)
    common = dict(voxel_size_nm=VOXEL_SIZE_NM, levels=levels, chunk_shape=chunk_shape, overwrite=overwrite)
    backend.create_volume((PROJECT, IMAGE), shape, "uint8", kind="image", **common)
    backend.create_volume((PROJECT, LABELS), shape, "uint64", kind="annotation", **common)
    synth = DemoVolume(shape=shape, n_cells=n_cells, seed=seed, voxel_size_nm=VOXEL_SIZE_NM)
    depth = chunk_shape[0]
    with tqdm(total=shape[0], unit="slice", desc="demo", disable=not progress) as bar:
        for z0, image, labels in synth.slabs(depth, workers=os.cpu_count() or 1):
            box = Box((z0, 0, 0), (z0 + image.shape[0], shape[1], shape[2]))
            backend.write((PROJECT, IMAGE), box, 0, image)
            backend.write((PROJECT, LABELS), box, 0, labels)
            bar.update(image.shape[0])
    add_demo_annotations(backend, synth)
    return backend


def add_demo_annotations(backend: LocalBackend, synth) -> list[int]:
    """RAMON segments for every cell of `synth` and synapses between a few close pairs; returns their ids."""
    import numpy as np

    from ndfs import ramon

    ref = (PROJECT, LABELS)
    objs = []
    for cell in synth.cells:
        z, y, x = cell.center
        objs.append(ramon.RamonSegment(id=cell.id, author="ndfs demo", confidence=1.0,
                                       kvpairs={"kind": "cell", "centre_xyz": f"{x:.1f},{y:.1f},{z:.1f}"}))
    centres = np.array([c.center for c in synth.cells], dtype=float).reshape(-1, 3)
    pairs = []
    for i in range(len(centres)):  # each cell's nearest neighbour, first few distinct pairs
        d = np.linalg.norm(centres - centres[i], axis=1)
        d[i] = np.inf
        pair = tuple(sorted((synth.cells[i].id, synth.cells[int(np.argmin(d))].id)))
        if len(centres) > 1 and pair not in pairs:
            pairs.append(pair)
        if len(pairs) == N_SYNAPSES:
            break
    first = len(synth.cells) + 1
    for k, (a, b) in enumerate(pairs):
        mid = (centres[a - 1] + centres[b - 1]) / 2
        objs.append(ramon.RamonSynapse(id=first + k, author="ndfs demo", synapse_type=1, weight=1.0,
                                       segments=[a, b], presegments=[a], postsegments=[b],
                                       centroid=[round(mid[2]), round(mid[1]), round(mid[0])],
                                       kvpairs={"kind": "synapse"}))
    return backend.ramon_put(ref, objs)
