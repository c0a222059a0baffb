"""``ndfs export`` and ``ndfs import``: volumes to and from tif, npy, npz, h5 and png files; meshes to obj/ply.

The formats are :mod:`ndfs.formats.registry`'s, the same the mount's ``cutout/`` files use.

:func:`add_export_parser` adds both subcommands to the main parser. Channel
paths are tree paths, ``REMOTE/PROJECT.../CHANNEL`` (``local/demo/em``);
ranges are ndio-style half-open ``--x 0:512 --y 0:512 --z 10:20`` in dataset
coordinates of the level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndfs.core.errors import BadRegion, NdfsError, NotFound


def _range(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a range: {text!r} (use START:STOP, e.g. 0:512)") from None
    if b < a:
        raise argparse.ArgumentTypeError(f"range {text!r} stops before it starts")
    return a, b


def _point(text: str) -> tuple[int, int, int]:
    try:
        x, y, z = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a point: {text!r} (use X,Y,Z)") from None
    return x, y, z


def add_box_arguments(parser, level_help: str = "resolution level (default 0)") -> None:
    """``--level`` and the ndio-style ``--x/--y/--z START:STOP`` ranges shared by the channel commands."""
    parser.add_argument("--level", type=int, default=0, help=level_help)
    for axis in "xyz":
        parser.add_argument(f"--{axis}", type=_range, metavar="START:STOP", help=f"{axis} range (default: all)")


def add_export_parser(subparsers) -> None:
    """Register ``ndfs export`` and ``ndfs import`` on the main parser's subparsers."""
    from ndfs.formats.registry import FORMATS

    choices = [spelling for f in FORMATS.values() for spelling in (f.name, *f.aliases)]  # tif, tiff, ..., hdf5
    s = subparsers.add_parser(
        "export", help="write a channel (or a box of it, or a label's mesh) to tif/npy/npz/h5/png or obj/ply",
        description="Write a channel, or the box --x/--y/--z of it, to OUT: .tif/.tiff (ImageJ multipage), "
                    ".npy, .npz, .h5/.hdf5, or a directory of PNG slices (OUT ending in '/', or --format png); "
                    "the mount's cutout/ takes any of these files for the same box. "
                    "With --mesh ID, write the mesh of that label of an annotation channel to OUT.obj or "
                    "OUT.ply (needs the mesh extra). Streams slab by slab with bounded memory.")
    s.add_argument("channel", help="tree path of the channel, e.g. local/demo/em")
    s.add_argument("output", help="file to write (directory for png)")
    s.add_argument("--format", choices=choices, help="default: from OUT")
    add_box_arguments(s)
    s.add_argument("--mesh", type=int, metavar="ID", help="write the mesh of label ID instead of voxels")
    s.add_argument("--simplify", type=int, default=10, help="mesh reduction factor, 0 = none (default 10)")
    s.add_argument("--force", action="store_true", help="replace OUT if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_export)

    s = subparsers.add_parser(
        "import", help="write a tif/npy/npz/h5/png volume file into a channel",
        description="Write FILE into the channel at its recorded offset (files written by ndfs export "
                    "and served by the mount's cutout/ carry one, except .npy), at --at X,Y,Z, or at the "
                    "channel's start. --create makes the channel "
                    "first (local stores), with the file's shape, dtype and voxel size.")
    s.add_argument("file", help="volume file: .tif/.tiff, .npy, .npz, .h5/.hdf5, or a directory of <z>.png")
    s.add_argument("channel", help="tree path of the channel, e.g. local/demo/imported")
    s.add_argument("--format", choices=choices, help="default: from FILE")
    s.add_argument("--level", type=int, default=0, help="resolution level to write (default 0)")
    s.add_argument("--at", type=_point, metavar="X,Y,Z", help="where the file's first voxel goes")
    s.add_argument("--create", action="store_true", help="create the channel (local stores)")
    s.add_argument("--kind", choices=["image", "annotation"], help="channel kind with --create (default: "
                                                                   "annotation for uint32/uint64, else image)")
    s.add_argument("--levels", type=int, default=1, help="pyramid levels with --create (default 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_import)


def _split(path: str) -> tuple[str, tuple[str, ...]]:
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        raise NotFound(f"{path!r} is not a channel path like local/demo/em")
    return parts[0], tuple(parts[1:])


def _remote(args, name: str):
    from ndfs.api import remote
    from ndfs.core.config import load_config

    return remote(name, config=load_config(args.config))


def _box(vol, args):
    from ndfs.api import region

    return region(vol.info, vol.level_index, x=args.x, y=args.y, z=args.z)


def cmd_export(args) -> int:
    from ndfs.tools import convert

    name, ref = _split(args.channel)
    r = _remote(args, name)
    try:
        vol = r.volume(ref, level=args.level)
        box = _box(vol, args)
        out = Path(args.output)
        if args.mesh is not None:
            from ndfs.tools.mesh import mesh_label, save_mesh

            if out.exists() and not args.force:
                raise BadRegion(f"{out} exists (--force replaces it)")
            mesh = mesh_label(vol, args.mesh, box, simplify=args.simplify)
            save_mesh(out, mesh)
            print(f"wrote {out}: label {args.mesh}, {len(mesh.vertices)} vertices, {len(mesh.faces)} faces (nm)")
            return 0
        convert.export(vol, args.output, args.format, box=box, overwrite=args.force,
                       progress=not args.quiet and sys.stderr.isatty())
        z, y, x = box.shape
        print(f"wrote {args.output}: {x}x{y}x{z} {vol.dtype} from {'/'.join(ref)} level {args.level} ({box})")
    finally:
        r.close()
    return 0


def cmd_import(args) -> int:
    from ndfs.tools import convert

    name, ref = _split(args.channel)
    info = convert.file_info(args.file, args.format)
    r = _remote(args, name)
    try:
        if args.create:
            if args.level != 0:
                raise BadRegion("--create makes a new channel; import into its level 0")
            kind = args.kind or ("annotation" if info.dtype.name in ("uint32", "uint64") else "image")
            at = args.at[::-1] if args.at else None
            offset = at or info.offset or (0, 0, 0)
            r.create_channel(ref, shape=info.shape, dtype=info.dtype, kind=kind, offset=offset,
                             voxel_size_nm=info.voxel_size_nm or (1.0, 1.0, 1.0), levels=args.levels)
        vol = r.volume(ref, level=args.level)
        box = convert.import_file(args.file, vol, format=args.format, offset=args.at[::-1] if args.at else None,
                                  progress=not args.quiet and sys.stderr.isatty())
        print(f"imported {args.file} into {args.channel} level {args.level} at {box}")
    finally:
        r.close()
    return 0


__all__ = ["add_export_parser", "cmd_export", "cmd_import", "NdfsError"]
