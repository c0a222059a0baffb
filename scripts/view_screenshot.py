"""Screenshot of ``ndfs view`` drawn by a real headless Chromium: what docs/neuroglancer.png shows.

    python scripts/view_screenshot.py local/demo/em docs/neuroglancer.png [--config ndfs.toml] [--size 1200x800]

Serves the channel as ``ndfs view`` does (with its label channels, segments of the central plane selected),
opens it in Debian's chromium headless with software WebGL, and writes neuroglancer's screenshot, taken once
the client has loaded what it shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from ndfs.core.config import load_config
    from ndfs.serve.view import ViewSession
    from ndfs.stack import open_store
    from ndfs.testing.browser import chromium_unavailable, headless_chromium

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("channel", help="REMOTE/PATH of a channel, e.g. local/demo/em")
    p.add_argument("output", type=Path, help="the PNG to write")
    p.add_argument("--config", default=None, help="ndfs.toml (default: as the ndfs command finds it)")
    p.add_argument("--size", default="1200x800", help="WIDTHxHEIGHT in pixels (default 1200x800)")
    p.add_argument("--layout", default="xy-3d", help="neuroglancer layout (default xy-3d)")
    args = p.parse_args(argv)
    why = chromium_unavailable()
    if why:
        print(f"view_screenshot: {why}", file=sys.stderr)
        return 1
    width, height = (int(v) for v in args.size.lower().split("x"))
    remote, *ref = [part for part in args.channel.split("/") if part]
    cfg = load_config(args.config)
    backend = open_store(cfg, cfg.remote(remote))
    try:
        with ViewSession(backend, [tuple(ref)], layout=args.layout) as session:
            with headless_chromium(session.url, (width, height)):
                png = session.screenshot((width, height))
            meshes = session.server.counter.count("GET", "/mesh/", 200)
    finally:
        backend.close()
    args.output.write_bytes(png)
    print(f"wrote {args.output}: {len(png)} bytes; {meshes} mesh files were served")
    return 0


if __name__ == "__main__":
    sys.exit(main())
