"""Any store as OME-Zarr: the files of an image (:class:`OmeZarrImage`) and the server (``ndfs serve --protocol zarr``).

A volume is an OME-Zarr multiscale image, one array per level, in two
dialects side by side in one tree, so each reader takes the one it speaks::

    .zgroup  .zattrs                  OME-Zarr 0.4 on zarr v2 (Fiji's N5/Zarr importer, older readers)
    zarr.json                         OME-Zarr 0.5 on zarr v3 (neuroglancer, napari, tensorstore, zarr-python 3)
    <level>/.zarray  <level>/zarr.json    the level's array in each dialect
    <level>/<z>/<y>/<x>               a chunk, zarr v2 ("/" separator)
    <level>/c/<z>/<y>/<x>             the same chunk, zarr v3 (default chunk key encoding)
    labels/  labels/<name>/...        image channels: the annotation channels of the same folder and
                                      geometry, each an image with "image-label" metadata

Axes are z, y, x (``space``, ``nanometer``); each level's ``scale`` is its voxel
size in nm and its ``translation`` (when its offset is not zero) the offset
times the voxel size, the position of voxel 0's corner as precomputed and the
mount place it. Chunks are the store's chunk shape (clipped to the level),
uncompressed (v2 ``compressor: null``, v3 only the ``bytes`` codec,
little-endian) and stored full-size at the edges (padded with the
``fill_value`` 0), so every chunk file's size is known without reading voxels:
the mount's ``<channel>.ome.zarr/`` folders (:mod:`ndfs.fs.omezarr`) list them
with exact sizes. Over HTTP, transfer compression is ``Content-Encoding:
gzip``. Every chunk of the grid exists (unwritten space reads as zeros);
anything else is 404.

:class:`ZarrApp` serves every volume of a store at its path
(``http://HOST:PORT/<path of the volume>/``) with the browser-correct HTTP of
:class:`ndfs.serve.browser.FileTreeApp`; read-only, thread-safe.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ndfs.core.errors import NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.formats.ngff import chunk_shape, multiscale, zarray_v2, zattrs_v04
from ndfs.serve.browser import Answer, FileTreeApp
from ndfs.serve.limits import MemoryBudget
from ndfs.stores.base import Backend

INDEX = re.compile(r"0|[1-9]\d*")
V2_GROUP = (".zgroup", ".zattrs")


def grid_shape(info: VolumeInfo, level: int) -> tuple[int, int, int]:
    lv = info.level(level)
    return tuple(-(-s // c) for s, c in zip(lv.shape, chunk_shape(info, level)))  # type: ignore[return-value]


@dataclass(frozen=True)
class Node:
    """What a path of an image is: a folder (``names`` its entries), a metadata file (``data``), or a
    chunk (``level``, ``index``, ``size``)."""

    kind: str  # "dir", "file" or "chunk"
    names: tuple[str, ...] = ()
    data: bytes = b""
    level: int = 0
    index: tuple[int, int, int] = (0, 0, 0)
    size: int = 0


class OmeZarrImage:
    """The files of one volume as OME-Zarr (see the module doc). Pure: voxels come from ``read``.

    ``labels``: name -> OmeZarrImage of the label images under ``labels/``;
    ``label_source``: for a label image, the path of its image (its ``image-label``
    metadata); ``is_label``: the volume is an annotation channel.
    """

    def __init__(self, name: str, info: VolumeInfo, *, labels: dict[str, "OmeZarrImage"] | None = None,
                 is_label: bool = False, label_source: str | None = None):
        self.name, self.info = name, info
        self.labels = dict(labels or {})
        self.is_label, self.label_source = is_label, label_source

    # ---- metadata ------------------------------------------------------------------
    def zattrs(self) -> dict:
        return zattrs_v04(self.name, self.info, is_label=self.is_label, label_source=self.label_source)

    def group_json(self) -> dict:
        ome = {"version": "0.5", "multiscales": [multiscale(self.name, self.info)]}
        if self.is_label:
            ome["image-label"] = {} if self.label_source is None else {"source": {"image": self.label_source}}
        return {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}}

    def zarray(self, level: int) -> dict:
        return zarray_v2(self.info, level)

    def array_json(self, level: int) -> dict:
        lv = self.info.level(level)
        codec: dict = {"name": "bytes"}
        if self.info.dtype.itemsize > 1:
            codec["configuration"] = {"endian": "little"}
        return {"zarr_format": 3, "node_type": "array", "shape": list(lv.shape),
                "data_type": self.info.dtype.name,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape(self.info, level))}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0 if self.info.dtype.kind in "iu" else 0.0, "codecs": [codec],
                "attributes": {}, "dimension_names": ["z", "y", "x"]}

    def labels_zattrs(self) -> dict:
        return {"labels": sorted(self.labels)}

    def labels_json(self) -> dict:
        return {"zarr_format": 3, "node_type": "group",
                "attributes": {"ome": {"version": "0.5", "labels": sorted(self.labels)}}}

    # ---- the tree ------------------------------------------------------------------------
    def chunk_bytes(self, level: int) -> int:
        return math.prod(chunk_shape(self.info, level)) * self.info.dtype.itemsize

    def chunk_box(self, level: int, index) -> Box:
        """The box of the store (at ``level``) a chunk covers, inside the level (edge chunks are cut)."""
        lv = self.info.level(level)
        c = chunk_shape(self.info, level)
        start = tuple(o + i * n for o, i, n in zip(lv.offset, index, c))
        stop = tuple(min(s + n, o + size) for s, n, o, size in zip(start, c, lv.offset, lv.shape))
        return Box(start, stop)

    def node(self, parts: list[str] | tuple[str, ...]) -> Node:
        """What ``parts`` (a path inside the image) is; NotFound when nothing."""
        parts = list(parts)
        where = "/".join(parts)
        if not parts:
            names = list(V2_GROUP) + ["zarr.json"] + [str(i) for i in range(len(self.info.levels))]
            return Node("dir", tuple(names + (["labels"] if self.labels else [])))
        head, rest = parts[0], parts[1:]
        if head in (".zgroup", ".zattrs", "zarr.json") and not rest:
            doc = {".zgroup": {"zarr_format": 2}, ".zattrs": self.zattrs(), "zarr.json": self.group_json()}[head]
            return Node("file", data=_dumps(doc))
        if head == "labels" and self.labels:
            if not rest:
                return Node("dir", tuple(list(V2_GROUP) + ["zarr.json"] + sorted(self.labels)))
            if rest in ([".zgroup"], [".zattrs"], ["zarr.json"]):
                doc = {".zgroup": {"zarr_format": 2}, ".zattrs": self.labels_zattrs(),
                       "zarr.json": self.labels_json()}[rest[0]]
                return Node("file", data=_dumps(doc))
            if rest[0] in self.labels:
                return self.labels[rest[0]].node(rest[1:])
            raise NotFound(f"labels/ has no {rest[0]!r}")
        if INDEX.fullmatch(head) and int(head) < len(self.info.levels):
            return self._level_node(int(head), rest)
        raise NotFound(f"{self.name}: no {where!r} in the OME-Zarr image")

    def _level_node(self, level: int, rest: list[str]) -> Node:
        grid = grid_shape(self.info, level)
        if not rest:
            return Node("dir", (".zarray", "zarr.json", "c") + tuple(str(i) for i in range(grid[0])))
        if rest == [".zarray"]:
            return Node("file", data=_dumps(self.zarray(level)))
        if rest == ["zarr.json"]:
            return Node("file", data=_dumps(self.array_json(level)))
        keys = rest[1:] if rest[0] == "c" else rest
        if len(keys) > 3 or not all(INDEX.fullmatch(k) for k in keys):
            raise NotFound(f"level {level} has no {'/'.join(rest)!r}")
        index = tuple(int(k) for k in keys)
        if any(i >= g for i, g in zip(index, grid)):
            raise NotFound(f"chunk {'/'.join(rest)} is outside the chunk grid {list(grid)} of level {level}")
        if len(index) < 3:
            return Node("dir", tuple(str(i) for i in range(grid[len(index)])))
        return Node("chunk", level=level, index=index, size=self.chunk_bytes(level))  # type: ignore[arg-type]

    def chunk(self, node: Node, read: Callable[[int, Box], np.ndarray]) -> bytes:
        """A chunk's bytes: the store's voxels of its box, padded with zeros to the full chunk shape."""
        box = self.chunk_box(node.level, node.index)
        data = read(node.level, box)
        full = chunk_shape(self.info, node.level)
        if data.shape != full:
            padded = np.zeros(full, dtype=data.dtype)
            padded[tuple(slice(0, n) for n in data.shape)] = data
            data = padded
        return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def _dumps(doc) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def same_frame(a: VolumeInfo, b: VolumeInfo) -> bool:
    """Whether two channels cover the same voxels at level 0 (shape, offset, voxel size)."""
    la, lb = a.level(0), b.level(0)
    return la.shape == lb.shape and la.offset == lb.offset and la.voxel_size_nm == lb.voxel_size_nm


def image_of(backend: Backend, ref: tuple, siblings: Callable[[tuple], list[str]] | None = None) -> OmeZarrImage:
    """The OME-Zarr image of a volume, with the annotation channels of its folder that share its frame as
    ``labels/`` when it is an image channel. ``siblings(folder)`` lists a folder (default: the backend's)."""
    info = backend.info(ref)
    name = ref[-1]
    if info.kind == "annotation":
        return OmeZarrImage(name, info, is_label=True)
    labels = {}
    listing = (siblings or backend.children)(ref[:-1])
    for other in listing:
        if other == name:
            continue
        path = ref[:-1] + (other,)
        try:
            if not backend.is_volume(path):
                continue
            oinfo = backend.info(path)
        except NotFound:
            continue
        if oinfo.kind == "annotation" and same_frame(info, oinfo):
            labels[other] = OmeZarrImage(other, oinfo, is_label=True, label_source="../../")
    return OmeZarrImage(name, info, labels=labels)


class ZarrApp(FileTreeApp):
    """The WSGI app of ``ndfs serve --protocol zarr`` (see the module doc)."""

    name = "zarr"

    def __init__(self, backend: Backend, tokens=None, *, budget: MemoryBudget | None = None):
        super().__init__(tokens, budget=budget)
        self.backend = backend

    def split(self, path: str) -> tuple[tuple, list[str]]:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            ref = tuple(parts[:i])
            if self._memoised(("is_volume", ref), lambda: self.backend.is_volume(ref)):
                return ref, parts[i:]
        raise NotFound(f"/{path} is not inside a volume of this store")

    def image(self, ref: tuple) -> OmeZarrImage:
        siblings = lambda folder: self._memoised(("children", folder), lambda: self.backend.children(folder))  # noqa: E731
        key = ("image", ref, self.backend.version(ref))
        return self._memoised(key, lambda: image_of(self.backend, ref, siblings))

    def lookup(self, path: str) -> Answer:
        ref, rest = self.split(path)
        image = self.image(ref)
        node = image.node(rest)
        if node.kind == "dir":
            raise NotFound(f"/{path} is a folder of the OME-Zarr image, not a file")
        if node.kind == "file":
            return Answer(node.data, "application/json")
        ticket = self.hold(3 * node.size, f"chunk {'/'.join(rest)}")
        try:
            source = self._source(ref, rest, image)
            body = source.chunk(node, lambda level, box: self.backend.read(source_ref(ref, rest, source), box, level))
        except BaseException:
            ticket.release()
            raise
        return Answer(body, "application/octet-stream", ticket=ticket)

    @staticmethod
    def _source(ref, rest, image: OmeZarrImage) -> OmeZarrImage:
        """The image a chunk path belongs to: the volume's own, or one of its labels."""
        if rest[:1] == ["labels"]:
            return image.labels[rest[1]]
        return image


def source_ref(ref: tuple, rest: list[str], source: OmeZarrImage) -> tuple:
    """The store path of the volume whose chunk ``rest`` names (a label image is a sibling of ``ref``)."""
    if rest[:1] == ["labels"]:
        return ref[:-1] + (rest[1],)
    return ref
