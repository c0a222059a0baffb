"""``ndfs count`` and ``ndfs annotate``: count RAMON objects in a box; labels to RAMON objects.

Channel paths and ranges as in ``ndfs export`` (``local/demo/cells --x 0:512 --z 10:20``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ndfs.cli.convert import _box, _remote, _split, add_box_arguments
from ndfs.core.errors import BadRegion


def add_annotate_parsers(subparsers) -> None:
    """Register ``ndfs count`` and ``ndfs annotate`` on the main parser's subparsers."""
    s = subparsers.add_parser(
        "count", help="count RAMON objects (of a type, with key-value pairs) inside a box",
        description="Count the RAMON objects of an annotation channel that have voxels inside the box "
                    "--x/--y/--z (default: the whole channel, where objects without voxels count too), "
                    "optionally only one --type and --kv pairs. Prints the count; --table writes one row per "
                    "object (voxels in the box, bounding box, centroid) as CSV, or JSON for a .json name.")
    s.add_argument("channel", help="tree path of an annotation channel, e.g. local/demo/cells")
    s.add_argument("--type", help="RAMON type, e.g. segment, synapse")
    s.add_argument("--kv", action="append", default=[], metavar="KEY=VALUE", help="key-value filter (repeatable)")
    add_box_arguments(s)
    s.add_argument("--table", metavar="FILE", help="write the per-object table here (.csv or .json; - = stdout)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_count)

    s = subparsers.add_parser(
        "annotate", help="make RAMON objects from a label channel (or a thresholded image)",
        description="One RAMON object per label of an annotation channel (id = label), with its voxel count, "
                    "bounding box and centroid in key-value pairs. With --threshold T, CHANNEL is an image: "
                    "voxels >= T are split into 6-connected objects that get new ids reserved in the "
                    "annotation channel --into (made by --create), are written there and become objects; "
                    "--min-voxels leaves out specks of noise.")
    s.add_argument("channel", help="tree path of the channel, e.g. local/demo/cells")
    s.add_argument("--type", default="segment", help="RAMON type of the new objects (default segment)")
    s.add_argument("--threshold", type=float, help="treat CHANNEL as an image and split voxels >= this value")
    s.add_argument("--into", metavar="CHANNEL", help="annotation channel for --threshold (same remote)")
    s.add_argument("--create", action="store_true",
                   help="make the --into channel first: uint64 labels with the image's geometry and levels")
    s.add_argument("--min-voxels", type=int, default=1, metavar="N",
                   help="with --threshold: leave out objects of fewer than N voxels (default 1: keep all)")
    add_box_arguments(s)
    s.add_argument("--author", default="ndfs annotate", help="author of the new objects")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_annotate)


def _kv(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadRegion(f"--kv takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out or None


def cmd_count(args) -> int:
    from ndfs.tools.annotate import count

    name, ref = _split(args.channel)
    r = _remote(args, name)
    try:
        vol = r.volume(ref, level=args.level)
        whole = args.x is None and args.y is None and args.z is None
        box = None if whole else _box(vol, args)
        result = count(vol.backend, vol.ref, type=args.type, box=box, kv=_kv(args.kv), level=args.level,
                       progress=not args.quiet and sys.stderr.isatty())
    finally:
        r.close()
    where = "in the channel" if box is None else f"in {box}"
    print(f"{result.count} {args.type or 'RAMON'} object(s) {where}")
    if args.table:
        text = result.to_json() if args.table.endswith(".json") else result.to_csv()
        if args.table == "-":
            sys.stdout.write(text)
        else:
            Path(args.table).write_text(text)
            print(f"wrote {args.table}")
    return 0


def cmd_annotate(args) -> int:
    from ndfs.tools.annotate import from_labels

    name, ref = _split(args.channel)
    into = None
    if args.into:
        into_remote, into = _split(args.into)
        if into_remote != name:
            raise BadRegion(f"--into must be on the same remote as {args.channel}")
    elif args.threshold is not None:
        raise BadRegion("--threshold needs --into ANNOTATION_CHANNEL")
    if args.create and into is None:
        raise BadRegion("--create makes the --into channel; give --into")
    r = _remote(args, name)
    try:
        vol = r.volume(ref, level=args.level)
        if args.create:
            r.create_channel(into, like=vol.info, dtype="uint64", kind="annotation", levels=len(vol.info.levels))
        whole = args.x is None and args.y is None and args.z is None
        try:
            ids = from_labels(vol.backend, vol.ref, type=args.type, box=None if whole else _box(vol, args),
                              level=args.level, author=args.author, threshold=args.threshold, into=into,
                              min_voxels=args.min_voxels, progress=not args.quiet and sys.stderr.isatty())
        except BaseException:
            if args.create:  # nothing half-done: the channel made for this run goes again
                r.backend.delete_volume(into)
            raise
    finally:
        r.close()
    target = args.into or args.channel
    print(f"{len(ids)} {args.type} object(s) in {target}" + (f", ids {ids[0]}..{ids[-1]}" if ids else ""))
    return 0
