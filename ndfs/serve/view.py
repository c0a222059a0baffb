"""``ndfs view``: channels of any store in neuroglancer, offline, on 127.0.0.1.

:class:`ViewSession` runs two servers on 127.0.0.1: the precomputed server
(:class:`ndfs.serve.precomputed.PrecomputedApp`, limited to the channels shown,
with the bounds of every ``ndfs serve``) and neuroglancer's own server from the
``neuroglancer`` Python package, which serves the client bundled in that
package (``/v/<token>/``; that build of the client must be served by it) and
holds the viewer state: an image layer per image channel, a segmentation layer
per label channel with some segments selected so that their meshes show, and
the ``xy-3d`` layout. Nothing is fetched from the internet.

:func:`choose_channels` turns the channels asked for into those shown: an
image channel brings the annotation channels of its folder that share its
frame. :func:`central_segments` picks the segments to select: the largest
labels of the central z plane of the coarsest level (one small read).

``screenshot()`` asks the connected browser (``--headless`` Chromium in the
tests) for a PNG of what it draws; it waits until the client has loaded what
it shows. Needs the ``serve`` extra (waitress, neuroglancer, zmesh,
compressed-segmentation). Thread-safe as far as neuroglancer's Viewer is.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ndfs.core.errors import MissingExtra, NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.serve.common import WsgiServer
from ndfs.serve.limits import Limits, MemoryBudget
from ndfs.serve.precomputed import PrecomputedApp, is_segmentation
from ndfs.serve.zarr import same_frame
from ndfs.stores.base import Backend

log = logging.getLogger("ndfs.serve.view")

#: segments selected when none are given
DEFAULT_SEGMENTS = 12
HOST = "127.0.0.1"


def choose_channels(backend: Backend, refs) -> list[tuple]:
    """The channels to show for the ones asked for: each, and for an image channel the annotation channels
    of its folder with the same frame (level-0 shape, offset, voxel size). NotFound for a path that is no
    channel."""
    chosen: list[tuple] = []
    for ref in (tuple(r) for r in refs):
        if not ref or not backend.is_volume(ref):
            raise NotFound(f"{'/'.join(ref) or '/'} is not a channel")
        if ref not in chosen:
            chosen.append(ref)
        info = backend.info(ref)
        if info.kind == "annotation":
            continue
        for name in sorted(backend.children(ref[:-1])):
            other = ref[:-1] + (name,)
            if other in chosen or other == ref:
                continue
            try:
                if backend.is_volume(other) and backend.info(other).kind == "annotation" and \
                        same_frame(info, backend.info(other)):
                    chosen.append(other)
            except NotFound:
                continue
    return chosen


def central_segments(backend: Backend, ref, n: int = DEFAULT_SEGMENTS) -> list[int]:
    """Up to ``n`` label ids of the channel's central z plane at its coarsest level, the largest first."""
    info = backend.info(ref)
    level = len(info.levels) - 1
    lv = info.level(level)
    z = lv.offset[0] + lv.shape[0] // 2
    plane = backend.read(ref, Box((z, lv.offset[1], lv.offset[2]), (z + 1, *lv.box.stop[1:])), level)
    ids, counts = np.unique(plane[plane != 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in ids[order][:n]]


class ViewSession:
    """The data server and neuroglancer's viewer for some channels of a store (see the module doc).

    ``port`` is the data server's (0: any free one), ``viewer_port`` neuroglancer's;
    ``segments``: ids to select per label channel (None: :func:`central_segments`).
    """

    def __init__(self, backend: Backend, refs, *, port: int = 0, viewer_port: int = 0,
                 segments: list[int] | None = None, mesh_level: int | None = None, layout: str = "xy-3d",
                 limits: Limits = Limits(), budget: MemoryBudget | None = None, threads: int = 16):
        try:
            import neuroglancer
        except ImportError:
            raise MissingExtra("ndfs view needs neuroglancer: pip install 'ndfs[serve]'") from None
        self.backend = backend
        self.refs = choose_channels(backend, refs)
        self.app = PrecomputedApp(backend, budget=budget, mesh_level_index=mesh_level, volumes=self.refs)
        self.server = WsgiServer(self.app, HOST, port, limits=limits, threads=threads)
        self._ng = neuroglancer
        self._stopped = threading.Event()
        neuroglancer.set_server_bind_address(HOST, viewer_port)
        self.viewer = neuroglancer.Viewer()
        self.segments: dict[tuple, list[int]] = {}
        with self.viewer.txn() as state:
            for ref in self.refs:
                name = self._layer_name(ref)
                source = f"precomputed://{self.server.url}/{'/'.join(ref)}"
                if is_segmentation(backend.info(ref)):
                    ids = list(segments) if segments is not None else central_segments(backend, ref)
                    self.segments[ref] = ids
                    state.layers[name] = neuroglancer.SegmentationLayer(source=source, segments=ids)
                else:
                    state.layers[name] = neuroglancer.ImageLayer(source=source)
            state.layout = layout

    def _layer_name(self, ref) -> str:
        names = [r[-1] for r in self.refs]
        return ref[-1] if names.count(ref[-1]) == 1 else "/".join(ref)

    @property
    def url(self) -> str:
        """The page to open: neuroglancer's client with the state showing the channels."""
        return self.viewer.get_viewer_url()

    @property
    def data_url(self) -> str:
        return self.server.url

    def layer_urls(self) -> list[str]:
        return [f"precomputed://{self.server.url}/{'/'.join(ref)}" for ref in self.refs]

    def start(self) -> "ViewSession":
        """Serve the data from a background thread (neuroglancer's server runs from its own)."""
        self.server.start()
        return self

    def serve_forever(self) -> None:
        """Serve the data from this thread until stop() (or KeyboardInterrupt)."""
        self.server.serve_forever()

    def screenshot(self, size=(1000, 700)) -> bytes:
        """A PNG of what the connected browser draws, once it has loaded what it shows."""
        reply = self.viewer.screenshot(size=list(size))
        image = getattr(getattr(reply, "screenshot", None), "image", None)
        if not image:
            raise NdfsError("the browser sent no screenshot")
        return image

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop()
        self._ng.server.stop()  # also when it never started

    def __enter__(self) -> "ViewSession":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
