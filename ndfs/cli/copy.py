"""``ndfs copy SRC DST``: a channel, a box of it or a whole project between two remotes (see :mod:`ndfs.tools.copy`)."""

from __future__ import annotations

import sys

from ndfs.cli.convert import _range


def add_copy_parser(subparsers) -> None:
    s = subparsers.add_parser(
        "copy", help="copy a channel, a box of it or a project between remotes (resumable)",
        description="Copy SRC to DST: a channel, the box --x/--y/--z of it (level-0 coordinates; lower levels "
                    "get the same region) or every channel below a folder. SRC and DST are tree paths "
                    "(REMOTE/PROJECT.../CHANNEL) or dataset URLs such as precomputed://https://host/layer, "
                    "precomputed+file:///data/layers or zarr+file:///data/images; a URL destination is a folder "
                    "the channel lands in under its own name. A destination that does not exist is made from "
                    "the source's metadata (levels, voxel size, offset, chunks). Chunks are copied whole, in "
                    "parallel, and recorded as they are written: after an interruption the same command skips "
                    "what is done. With --meshes, an annotation (label) channel copied to a precomputed layer "
                    "gets a mesh of every label too (legacy fragments with <id>:0 manifests, made as the mount "
                    "makes ramon/<id>.obj; a neuron's manifest names its segments'), and its RAMON objects as "
                    "the layer's segment properties; meshes already written are skipped on a rerun.")
    s.add_argument("source", help="channel or folder to copy, e.g. local/demo/em")
    s.add_argument("dest", help="where it goes, e.g. out/em or precomputed+file:///data/layers")
    for axis in "xyz":
        s.add_argument(f"--{axis}", type=_range, metavar="START:STOP", help=f"{axis} range at level 0 (default: all)")
    s.add_argument("--level", type=int, action="append", dest="levels", metavar="N",
                   help="copy this level (repeatable; default: every level the destination keeps)")
    s.add_argument("--workers", type=int, default=4, help="chunks copied at once (default 4)")
    s.add_argument("--scheduler", choices=["threads", "processes", "dask"], default="threads",
                   help="where chunks are copied: threads of this process (default), worker processes, or Dask")
    s.add_argument("--address", metavar="tcp://HOST:8786",
                   help="a Dask scheduler to run on (with --scheduler dask; default: a local cluster)")
    s.add_argument("--meshes", action="store_true",
                   help="also write a mesh of every label and the RAMON objects as segment properties "
                        "(annotation channels to precomputed; off by default: meshing every object takes a while)")
    s.add_argument("--restart", action="store_true", help="copy every chunk again, forgetting an earlier run")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_copy)


def cmd_copy(args) -> int:
    from ndfs.core.config import load_config
    from ndfs.core.errors import BadRegion
    from ndfs.core.geometry import Box
    from ndfs.tools.copy import copy

    if args.workers < 1:
        raise BadRegion("--workers must be at least 1")
    box = None
    if args.x or args.y or args.z:
        if not (args.x and args.y and args.z):
            raise BadRegion("give --x, --y and --z together for a box")
        box = Box.from_xyz(args.x, args.y, args.z)
    report = copy(args.source, args.dest, box=box, levels=args.levels, workers=args.workers,
                  progress=not args.quiet and sys.stderr.isatty(), resume=not args.restart,
                  config=load_config(args.config), scheduler=args.scheduler, address=args.address,
                  meshes=args.meshes)
    for src, dst in report.channels.items():
        print(f"copied {src} -> {dst}")
    print(f"{report.written} chunks written ({report.nbytes / 2**20:.1f} MiB), {report.skipped} already done")
    if args.meshes:
        refused = f", {len(report.meshes_refused)} objects too large to mesh" if report.meshes_refused else ""
        print(f"{report.meshes} meshes written, {report.meshes_skipped} already there{refused}")
    return 0


__all__ = ["add_copy_parser", "cmd_copy"]
