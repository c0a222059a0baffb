#!/usr/bin/env python
"""The ndio paper's "pull data in 2 minutes" flow with ndfs, end to end on the demo data.

1. pull a cutout with the paper's query dict (token, channel, x_start ... resolution);
2. export it to HDF5 and to an ImageJ multipage TIFF;
3. mesh one neuron (the largest cell in the cutout) to OBJ and PLY, in nm;
4. count the cells in the cutout, block by block with ndfs.batch.map_blocks.

Run from a checkout::

    python scripts/ndio_example.py                  # the configured local remote's demo (ndfs demo)
    python scripts/ndio_example.py --make-demo      # first writes a small demo store into --out
    python scripts/ndio_example.py --remote boss --project ndfs/demo   # any remote holding em + cells

Needs the ``mesh`` and ``export`` extras (zmesh, h5py); everything is written to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import ndfs  # noqa: E402
from ndfs.tools import batch, convert, mesh  # noqa: E402


def unique_cells(block: np.ndarray) -> set:
    """The non-zero label ids in one block (a module-level function, so any scheduler can ship it)."""
    ids = np.unique(block)
    return set(ids[ids != 0].tolist())


def union(a: set, b: set) -> set:
    return a | b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--remote", default=None, help="configured remote, URL or store directory (default: the first)")
    p.add_argument("--project", default="demo", help="project holding channels em and cells (default demo)")
    p.add_argument("--make-demo", action="store_true", help="write a small demo store into OUT/store first")
    p.add_argument("--out", default="ndio-example", help="output folder (default ./ndio-example)")
    p.add_argument("--scheduler", default="threads", choices=batch.SCHEDULERS, help="for the cell count")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    if args.make_demo:
        from ndfs.tools.demo import make_demo

        make_demo(str(out / "store"), shape=(32, 256, 256), overwrite=True, progress=False)
        nd = ndfs.remote(str(out / "store"))
    else:
        nd = ndfs.remote(args.remote)
    em = nd.volume(args.project, "em")
    z0, y0, x0 = em.offset
    z, y, x = em.shape

    # 1. the paper's query: a box in the middle of the volume, at full resolution
    query = {
        "token": args.project,
        "channel": "em",
        "x_start": x0 + x // 4, "x_stop": x0 + 3 * x // 4,
        "y_start": y0 + y // 4, "y_stop": y0 + 3 * y // 4,
        "z_start": z0 + z // 4, "z_stop": z0 + 3 * z // 4,
        "resolution": 0,
    }
    shiny_new_numpy_array = nd.get_cutout(**query)  # ZYX, like every ndfs array
    print(f"cutout: {shiny_new_numpy_array.shape} {shiny_new_numpy_array.dtype} (z, y, x) from {nd!r}")

    # 2. export: HDF5 (chunked, gzip, voxel size attributes) and an ImageJ TIFF stack
    offset = (query["z_start"], query["y_start"], query["x_start"])
    for name in ("cutout.h5", "cutout.tif"):
        convert.export(shiny_new_numpy_array, out / name, voxel_size_nm=em.voxel_size_nm, offset=offset,
                       overwrite=True)
        print(f"wrote {out / name}")
    labels = nd.get_cutout(**{**query, "channel": "cells"})
    convert.export(labels, out / "labels.npz", voxel_size_nm=em.voxel_size_nm, offset=offset, overwrite=True)

    # 3. mesh one neuron: the cell with the most voxels in the cutout, meshed inside the cutout's box
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    if not len(ids):
        print("no cells in the cutout", file=sys.stderr)
        return 1
    neuron = int(ids[np.argmax(counts)])
    box = ndfs.Box(offset, tuple(o + s for o, s in zip(offset, labels.shape)))
    m = mesh.mesh_label(nd.volume(args.project, "cells"), neuron, box)
    mesh.save_mesh(out / "neuron.obj", m)
    mesh.save_mesh(out / "neuron.ply", m)
    lo, hi = m.bounds
    print(f"neuron {neuron}: {len(m.vertices)} vertices, {len(m.faces)} faces, "
          f"x {lo[0]:.0f}..{hi[0]:.0f} nm, y {lo[1]:.0f}..{hi[1]:.0f} nm, z {lo[2]:.0f}..{hi[2]:.0f} nm")

    # 4. count cells: the unique non-zero ids of the label channel in the cutout's box, gathered block by
    #    block (a map_blocks reduction). Counting RAMON objects (by type or kv) is `ndfs count`'s job; the
    #    demo's cells are plain labels, so here a cell is a label id.
    cells = batch.map_blocks(unique_cells, nd.volume(args.project, "cells"), box=box, reduce=union, initial=set(),
                             scheduler=args.scheduler, workers=2, progress=False)
    print(f"cells in the cutout: {len(cells)}")
    print(f"done in {time.monotonic() - started:.1f} s")
    nd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
