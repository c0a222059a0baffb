"""``ndfs view``: show channels in neuroglancer from 127.0.0.1, offline (see :mod:`ndfs.serve.view`)."""

from __future__ import annotations

import signal
import sys

from ndfs.core.errors import NdfsError, NotFound
from ndfs.core.units import parse_size


def add_view_parser(subparsers) -> None:
    """Register ``ndfs view`` on the main parser's subparsers."""
    s = subparsers.add_parser(
        "view", help="show channels in neuroglancer (served offline on 127.0.0.1), meshes included",
        description="Serve the given channels as neuroglancer precomputed layers and neuroglancer's own client "
                    "(bundled in the neuroglancer Python package) on 127.0.0.1, and print the URL of a viewer "
                    "showing them: image channels with the annotation channels of their folder (same shape, "
                    "offset and voxel size), segments of the central plane selected so that their meshes show. "
                    "Nothing is fetched from the internet. Stop with Ctrl-C.")
    s.add_argument("paths", nargs="+", metavar="PATH", help="channels of one remote, e.g. local/demo/em")
    s.add_argument("--port", type=int, default=0, help="port of the data server (default: any free one)")
    s.add_argument("--viewer-port", type=int, default=0, help="port of neuroglancer's server (default: any free one)")
    s.add_argument("--segments", default=None, metavar="ID,ID",
                   help="label ids to select (and mesh) in every label channel (default: up to 12 of the "
                        "central plane, the largest first)")
    s.add_argument("--mesh-level", type=int, default=None, metavar="N",
                   help="make meshes at level N (default: the finest level whose labels take at most 64 MiB)")
    s.add_argument("--layout", default="xy-3d", help="neuroglancer layout: xy, xy-3d, 4panel, 3d... (default xy-3d)")
    s.add_argument("--cache-memory", type=parse_size, default=256 * 2**20, metavar="SIZE",
                   help="memory for decoded chunks kept across requests (default 256M)")
    s.add_argument("--open", action="store_true", help="open the URL in the default web browser")
    s.set_defaults(func=cmd_view)


def _segments(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NdfsError(f"--segments takes label ids separated by commas, not {text!r}") from None
    if any(i <= 0 or i >= 2**64 for i in ids):
        raise NdfsError("--segments: label ids are positive 64-bit integers")
    return ids


def cmd_view(args) -> int:
    from dataclasses import replace

    from ndfs.core.config import load_config
    from ndfs.serve.view import ViewSession
    from ndfs.stack import open_store
    from ndfs.tools.mesh import configure_mesh_cache

    if args.mesh_level is not None and args.mesh_level < 0:
        raise NdfsError("--mesh-level must be a level number (0 = full resolution)")
    split = [tuple(p for p in path.split("/") if p) for path in args.paths]
    remotes = {parts[0] for parts in split if parts}
    if any(len(parts) < 2 for parts in split):
        raise NotFound("give channels as REMOTE/PATH, e.g. local/demo/em")
    if len(remotes) != 1:
        raise NdfsError(f"ndfs view shows channels of one remote, not of {', '.join(sorted(remotes))}")
    cfg = load_config(args.config)
    configure_mesh_cache(cfg.cache)
    backend = open_store(cfg, cfg.remote(remotes.pop()), cache=replace(cfg.cache, memory_bytes=args.cache_memory))
    try:
        session = ViewSession(backend, [parts[1:] for parts in split], port=args.port, viewer_port=args.viewer_port,
                              segments=_segments(args.segments), mesh_level=args.mesh_level, layout=args.layout)
        signal.signal(signal.SIGTERM, lambda *_: session.server.stop())
        url = session.url
        shown = ", ".join("/".join(ref) for ref in session.refs)
        print(f"ndfs view: {shown} at {url} (data at {session.data_url}/; Ctrl-C stops)", flush=True)
        if args.open:
            import webbrowser

            if not webbrowser.open(url):
                print("ndfs view: no web browser could be opened here; open the URL above", file=sys.stderr)
        try:
            session.serve_forever()
        finally:
            session.stop()
    finally:
        backend.close()
    return 0
