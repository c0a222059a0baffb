"""Any store as neuroglancer precomputed layers over HTTP (``ndfs serve --protocol precomputed``).

Every volume of the store is a layer at its own path: ``http://HOST:PORT/<path of the
volume>`` is what ``precomputed://`` names (``precomputed://http://127.0.0.1:8080/demo/em``).
A layer's files, made when asked for::

    <layer>/info                            the multiscale volume: one scale per level
    <layer>/<level>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>   one chunk of the grid
    <layer>/mesh/info                       {"@type": "neuroglancer_legacy_mesh"} (label channels)
    <layer>/mesh/<id>:0                     the manifest of a label's mesh: {"fragments": ["<id>:0:<level>"]}
    <layer>/mesh/<id>:0:<level>             the mesh made at that level (zmesh, cached: ndfs.tools.mesh)
    <layer>/segment_properties/info         names, descriptions and tags of the RAMON objects

``info``: ``type`` is ``segmentation`` for annotation channels (integer ids) and
``image`` otherwise; each level is a scale whose ``key`` is the level number,
``size``, ``voxel_offset`` and ``resolution`` (nm) are the level's, x y z, and
``chunk_sizes`` the store's chunk shape (clipped to the level), so a viewer's
chunk is one store chunk whenever the store's grid starts at the volume's
offset. Chunks are ``raw`` (little-endian, x fastest), or
``compressed_segmentation`` (8x8x8 blocks, the ``compressed-segmentation``
package) for uint32/uint64 labels. Chunk names off the grid, outside the level
or at levels that do not exist are 404, as a missing file would be; every chunk
on the grid exists (unwritten space reads as zeros).

Meshes: a label's mesh is made at the channel's *mesh level*, the finest level
whose labels take at most ``mesh_level_bytes`` (64 MiB; or the level given),
from its bounding box there, which one scan of that level finds for every
label at once (:class:`ndfs.serve.segments.LabelIndex`, again after each
write). Vertices are in nanometres, the voxel ``[i, i+1)`` spanning ``i *
resolution`` to ``(i + 1) * resolution``. Meshes are kept by
:data:`ndfs.tools.mesh.mesh_cache` (memory, and the configured disk tier),
keyed by the content of the object's mask, which each fragment request reads
(so no write can leave an old mesh served). An id without voxels at the mesh
level has no manifest (404).
``segment_properties`` lists every RAMON object of the channel (a store that
keeps RAMON objects), at most ``MAX_LIST_ITEMS``.

HTTP is that of :class:`ndfs.serve.browser.FileTreeApp` (CORS, preflight,
ranges, HEAD, gzip as Content-Encoding only, tokens); chunks hold the memory
budget while they are made and sent; the index scan is bounded by
``max_scan_bytes``. ``volumes`` limits what is served to those volumes
(``ndfs view`` serves only the channels it shows). Read-only. Thread-safe.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ndfs.core.errors import MissingExtra, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.serve.browser import Answer, FileTreeApp
from ndfs.serve.limits import DEFAULT_SCAN_BYTES, MAX_LIST_ITEMS, MemoryBudget, RequestRefused
from ndfs.formats.precomputed import BLOCK, chunk_shape_xyz, encoding, info_document, is_segmentation, legacy_fragment
from ndfs.ramon.neuroglancer import segment_properties
from ndfs.serve.segments import MESH_LEVEL_BYTES, LabelIndex, mesh_level
from ndfs.stores.base import AnnotationStore, Backend

NUMBER = r"(-?\d+)"
CHUNK_RE = re.compile(rf"{NUMBER}-{NUMBER}_{NUMBER}-{NUMBER}_{NUMBER}-{NUMBER}")
LEVEL_RE = re.compile(r"0|[1-9]\d*")
MANIFEST_RE = re.compile(r"([1-9]\d*):0")
FRAGMENT_RE = re.compile(r"([1-9]\d*):0:(0|[1-9]\d*)")


def chunk_box(info: VolumeInfo, level: int, name: str) -> Box:
    """The box of the chunk named ``name`` at ``level``; NotFound unless it is exactly one chunk of the grid."""
    m = CHUNK_RE.fullmatch(name)
    if m is None:
        raise NotFound(f"{name!r} is not a chunk name (<x0>-<x1>_<y0>-<y1>_<z0>-<z1>)")
    (x0, x1, y0, y1, z0, z1) = (int(g) for g in m.groups())
    lv = info.level(level)
    start, stop = (z0, y0, x0), (z1, y1, x1)
    chunk = chunk_shape_xyz(info, level)[::-1]
    for a in range(3):
        lo, hi = lv.offset[a], lv.offset[a] + lv.shape[a]
        if not lo <= start[a] < hi or (start[a] - lo) % chunk[a] or stop[a] != min(start[a] + chunk[a], hi):
            raise NotFound(f"{name} is not a chunk of level {level} (chunks of {chunk[::-1]} x y z from "
                           f"{list(lv.offset[::-1])}, size {list(lv.shape[::-1])})")
    return Box(start, stop)


def encode_chunk(data: np.ndarray, enc: str) -> bytes:
    """A chunk's bytes: ``data`` is z y x (C order); precomputed is x y z with x fastest, the same bytes."""
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    if enc == "raw":
        return data.tobytes()
    try:
        import compressed_segmentation as cseg
    except ImportError:
        raise MissingExtra("labels are served as compressed_segmentation, which needs the compressed-segmentation "
                           "package: pip install 'ndfs[serve]'") from None
    return bytes(cseg.compress(data.T[..., np.newaxis], block_size=BLOCK, order="F"))


class PrecomputedApp(FileTreeApp):
    """The WSGI app (see the module doc). ``tokens``: accepted API tokens (None: accept any request)."""

    name = "precomputed"

    def __init__(self, backend: Backend, tokens=None, *, budget: MemoryBudget | None = None,
                 max_scan_bytes: int = DEFAULT_SCAN_BYTES, mesh_level_bytes: int = MESH_LEVEL_BYTES,
                 mesh_level_index: int | None = None, mesh_cache=None, volumes=None):
        super().__init__(tokens, budget=budget)
        self.backend = backend
        #: the only volumes served (None: every volume of the store)
        self.volumes = None if volumes is None else {tuple(v) for v in volumes}
        self.max_scan_bytes = int(max_scan_bytes)
        self.mesh_level_bytes = int(mesh_level_bytes)
        self.mesh_level_index = mesh_level_index
        self.mesh_cache = mesh_cache
        self.index = LabelIndex(self.max_scan_bytes)

    # ---- layers ----------------------------------------------------------------
    def _is_volume(self, path: tuple) -> bool:
        return self._memoised(("is_volume", path), lambda: self.backend.is_volume(path))

    def split(self, path: str) -> tuple[tuple, list[str]]:
        """(the volume a path is in, the rest of the path); NotFound when it is in none."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            if self.volumes is not None:
                if tuple(parts[:i]) in self.volumes:
                    return tuple(parts[:i]), parts[i:]
            elif self._is_volume(tuple(parts[:i])):
                return tuple(parts[:i]), parts[i:]
        raise NotFound(f"/{path} is not inside a volume {'served here' if self.volumes is not None else 'of this store'}")

    def mesh_level(self, info: VolumeInfo) -> int:
        if self.mesh_level_index is not None:
            return min(self.mesh_level_index, len(info.levels) - 1)
        return mesh_level(info, self.mesh_level_bytes)

    def lookup(self, path: str) -> Answer:
        ref, rest = self.split(path)
        info = self.backend.info(ref)
        labels = is_segmentation(info)
        if rest == ["info"]:
            doc = info_document(info, mesh="mesh" if labels else None,
                                properties="segment_properties" if labels and isinstance(self.backend, AnnotationStore)
                                else None)
            return _json(doc)
        if len(rest) == 2 and LEVEL_RE.fullmatch(rest[0]):
            level = int(rest[0])
            if level >= len(info.levels):
                raise NotFound(f"{'/'.join(ref)} has no level {level} (levels 0..{len(info.levels) - 1})")
            return self._chunk(ref, info, level, rest[1])
        if labels and rest[:1] == ["mesh"] and len(rest) == 2:
            return self._mesh(ref, info, rest[1])
        if labels and rest == ["segment_properties", "info"] and isinstance(self.backend, AnnotationStore):
            return self._properties(ref)
        raise NotFound(f"{'/'.join(ref)} has no file {'/'.join(rest)!r}")

    # ---- chunks -------------------------------------------------------------------
    def _chunk(self, ref, info: VolumeInfo, level: int, name: str) -> Answer:
        box = chunk_box(info, level, name)
        nbytes = box.size * info.dtype.itemsize
        ticket = self.hold(3 * nbytes, f"chunk {name}")  # the voxels, a little-endian copy, the answer
        try:
            body = encode_chunk(self.backend.read(ref, box, level), encoding(info))
        except BaseException:
            ticket.release()
            raise
        return Answer(body, "application/octet-stream", compressible=True, ticket=ticket)

    # ---- meshes ---------------------------------------------------------------------
    def _mesh(self, ref, info: VolumeInfo, name: str) -> Answer:
        if name == "info":
            return _json({"@type": "neuroglancer_legacy_mesh"})
        m = MANIFEST_RE.fullmatch(name)
        if m is not None:
            label, level = int(m.group(1)), self.mesh_level(info)
            self.index.box(self.backend, ref, label, level)  # NotFound when it has no voxels there
            return _json({"fragments": [f"{label}:0:{level}"]})
        m = FRAGMENT_RE.fullmatch(name)
        if m is None:
            raise NotFound(f"mesh/{name} is not a mesh file (mesh/<id>:0 and its fragments)")
        label, level = int(m.group(1)), int(m.group(2))
        if level >= len(info.levels):
            raise NotFound(f"{'/'.join(ref)} has no level {level}")
        return self._fragment(ref, info, label, level)

    def _fragment(self, ref, info: VolumeInfo, label: int, level: int) -> Answer:
        from ndfs.tools.mesh import mesh_cache

        box = self.index.box(self.backend, ref, label, level)
        nbytes = box.size * info.dtype.itemsize
        if nbytes > self.max_scan_bytes:
            raise RequestRefused(413, f"the mesh of label {label} would read {nbytes} bytes of labels, more than "
                                      f"this server's limit of {self.max_scan_bytes}")
        cache = self.mesh_cache if self.mesh_cache is not None else mesh_cache
        with self.hold(2 * nbytes, f"the mesh of {label}"):  # the labels read and the object's mask
            mask = self.backend.read(ref, box, level) == label
            # keyed by the mask's content (memory and disk): a write anywhere can never serve an old mesh
            mesh = cache.mesh_of_mask(mask, box.start, info.level(level).voxel_size_nm, label=label)
        return Answer(legacy_fragment(mesh.vertices, mesh.faces), "application/octet-stream")

    # ---- segment properties ----------------------------------------------------------
    def _properties(self, ref) -> Answer:
        ids = self.backend.ramon_ids(ref, limit=MAX_LIST_ITEMS + 1)
        if len(ids) > MAX_LIST_ITEMS:
            raise RequestRefused(413, f"{'/'.join(ref)} has more than {MAX_LIST_ITEMS} RAMON objects: too many "
                                      "to list as segment properties")
        objects = self.backend.ramon_get(ref, ids) if ids else []
        return _json(segment_properties(objects))


def _json(doc) -> Answer:
    return Answer(json.dumps(doc).encode(), "application/json")
