"""``<channel>/ramon/``: RAMON objects of an annotation channel as files.

    ramon/<id>.json          the object's metadata (ndfs file form); write to create or update, rm to delete
    ramon/<id>.tif           its voxels inside its bounding box (other labels zeroed), ImageJ-calibrated
    ramon/<id>.obj|.ply      its surface mesh in nm: the store's own mesh where it keeps one (precomputed
                             layers), else zmesh of its voxels
    ramon/<id>.swc           its skeleton in nm, where the store keeps one (precomputed layers)
    ramon/by-type/<type>/    the <id>.json files of one RAMON type

Listings ask the backend for ids only (never the objects), so a channel with
a million objects lists without fetching them; ``.tif``/``.obj``/``.ply``
(and ``.swc``) exist for every listed id but are not listed (a file browser would render
every mesh). A written ``<id>.json`` is checked completely before anything is
stored: bad JSON or a bad field is EINVAL and nothing changes; an ``id`` in
the file must match the name (or be 0/absent). Rendered files are kept in the
tree's rendered-file cache, keyed with the channel's write version; meshes
come from :data:`ndfs.tools.mesh.mesh_cache` (memory and disk, keyed by content).
"""

from __future__ import annotations

import re

import numpy as np

from ndfs.stores.base import AnnotationStore, ShapeStore
from ndfs.core.errors import InvalidAnnotation, NotFound, ReadOnly, TooLarge
from ndfs.fs.nodes import DirNode, FileNode, Node, RenderedFile

NAME = re.compile(r"^([1-9][0-9]*)\.(json|tif|obj|ply|swc)$")
BY_TYPE = "by-type"


def has_ramon(vol) -> bool:
    """Whether a channel folder (a tree VolumeDir) gets ramon/: an annotation channel of an AnnotationStore."""
    return vol.info.kind == "annotation" and isinstance(vol.tree.backend(vol.remote), AnnotationStore)


class RamonDir(DirNode):
    def __init__(self, vol):  # the channel folder (a tree VolumeDir)
        self.vol, self.mtime = vol, vol.mtime

    @property
    def writable(self) -> bool:
        return self.vol.writable

    def _ids(self, type_: str | None = None) -> list[int]:
        t, v = self.vol.tree, self.vol
        return t._memoised(("ramon_ids", v.remote, v.ref, type_),
                           lambda: t.backend(v.remote).ramon_ids(v.ref, type=type_), t.ttl_s)

    def names(self) -> list[str]:
        return [f"{i}.json" for i in self._ids()] + [BY_TYPE]

    def _parse(self, name: str) -> tuple[int, str]:
        m = NAME.fullmatch(name)
        if not m:
            raise NotFound(f"ramon/ holds <id>.json, <id>.tif, <id>.obj, <id>.ply, <id>.swc and {BY_TYPE}/, "
                           f"not {name!r}")
        return int(m.group(1)), m.group(2)

    def child(self, name: str) -> Node:
        if name == BY_TYPE:
            return ByTypeDir(self)
        id_, ext = self._parse(name)
        if ext == "json":
            node = RamonJson(self, id_)
            node.size  # NotFound here if there is no such object  # noqa: B018
            return node
        return RamonRendered(self, id_, ext)

    def create(self, name: str) -> FileNode:
        if not self.writable:
            raise ReadOnly(f"{self.vol.remote} is read-only")
        m = NAME.fullmatch(name)
        if not m or m.group(2) != "json":
            raise InvalidAnnotation(f"new RAMON objects are written as ramon/<id>.json (id > 0), not {name!r}")
        return RamonJson(self, int(m.group(1)), new=True)

    def unlink(self, name: str) -> None:
        id_, ext = self._parse(name)
        if ext != "json":
            return super().unlink(name)
        if not self.writable:
            raise ReadOnly(f"{self.vol.remote} is read-only")
        v = self.vol
        try:
            v.tree.backend(v.remote).ramon_delete(v.ref, [id_])
        finally:  # deleting zeroes the object's voxels
            v.tree.refresh(v.remote, v.ref)


class ByTypeDir(DirNode):
    def __init__(self, ramon_dir: RamonDir):
        self.ramon_dir, self.mtime = ramon_dir, ramon_dir.mtime

    def names(self) -> list[str]:
        from ndfs.ramon import TYPES

        return list(TYPES)

    def child(self, name: str) -> Node:
        from ndfs.ramon import TYPES

        if name not in TYPES:
            raise NotFound(f"no RAMON type {name!r} (types: {', '.join(TYPES)})")
        return TypeDir(self.ramon_dir, name)


class TypeDir(DirNode):
    def __init__(self, ramon_dir: RamonDir, type_: str):
        self.ramon_dir, self.type, self.mtime = ramon_dir, type_, ramon_dir.mtime

    def names(self) -> list[str]:
        return [f"{i}.json" for i in self.ramon_dir._ids(self.type)]

    def child(self, name: str) -> Node:
        id_, ext = self.ramon_dir._parse(name)
        if ext != "json" or id_ not in self.ramon_dir._ids(self.type):
            raise NotFound(f"no {self.type} {name!r}")
        return self.ramon_dir.child(name)


class RamonJson(RenderedFile):
    """One object's metadata as the ndfs JSON file form."""

    fmt = "json"

    def __init__(self, ramon_dir: RamonDir, id_: int, new: bool = False):
        self.dir, self.id, self.mtime = ramon_dir, id_, ramon_dir.mtime
        self.writable = ramon_dir.writable
        self.max_bytes = ramon_dir.vol.tree.max_ramon_bytes
        self._data = b"" if new else None

    def _bytes(self) -> bytes:
        if self._data is None:
            t, v = self.dir.vol.tree, self.dir.vol

            def render() -> bytes:
                (obj,) = t.backend(v.remote).ramon_get(v.ref, [self.id])
                return obj.to_json().encode()  # the file form, which ends in one newline

            self._data = t._memoised(("ramon_json", v.remote, v.ref, self.id), render, t.ttl_s)
        return self._data

    def commit(self, data: bytes) -> None:
        from ndfs import ramon

        v = self.dir.vol
        name = f"{v.remote}/{'/'.join(v.ref)}/ramon/{self.id}.json"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidAnnotation(f"{name} is not UTF-8 text") from None
        obj = ramon.from_json(text)
        if obj.id not in (0, self.id):
            raise InvalidAnnotation(f"{name} says id {obj.id}; write it to ramon/{obj.id}.json or drop the id")
        obj.id = self.id
        try:
            v.tree.backend(v.remote).ramon_put(v.ref, [obj])
        finally:  # a neuron's segments may have changed: its .tif and meshes too
            v.tree.refresh(v.remote, v.ref)


class RamonRendered(RenderedFile):
    """``<id>.tif`` (the object's voxels in its bounding box), ``<id>.obj``/``<id>.ply`` (its mesh: the
    store's own when it keeps one, else zmesh of its voxels) or ``<id>.swc`` (the store's skeleton)."""

    def __init__(self, ramon_dir: RamonDir, id_: int, ext: str):
        self.dir, self.id, self.ext, self.mtime = ramon_dir, id_, ext, ramon_dir.mtime

    def _labels(self) -> tuple[np.ndarray, object, list[int]]:
        """The object's own label ids, its bounding box and the labels inside it (level 0)."""
        v = self.dir.vol
        backend = v.tree.backend(v.remote)
        (obj,) = backend.ramon_get(v.ref, [self.id])
        ids = list(obj.segments) if obj.type == "neuron" else [self.id]
        box = backend.ramon_bbox(v.ref, self.id, 0)
        if box is None:
            raise NotFound(f"RAMON object {self.id} has no voxels")
        nbytes = box.size * v.info.dtype.itemsize
        if nbytes > v.tree.max_cutout_bytes:
            raise TooLarge(f"object {self.id} spans {box}: {nbytes} bytes of labels, past max_cutout_bytes")
        return v.volume(0).read(box), box, ids

    def _render(self) -> bytes:
        from ndfs.formats import registry
        from ndfs.tools.mesh import to_obj, to_ply

        v = self.dir.vol
        backend = v.tree.backend(v.remote)
        shapes = isinstance(backend, ShapeStore)
        if self.ext == "swc":
            from ndfs.formats.swc import to_swc

            skeleton = backend.object_skeleton(v.ref, self.id) if shapes else None
            if skeleton is None:
                raise NotFound(f"{v.remote} keeps no skeleton of object {self.id}")
            return to_swc(skeleton)
        if self.ext in ("obj", "ply") and shapes:
            own = backend.object_mesh(v.ref, self.id)
            if own is not None:
                return to_obj(*own) if self.ext == "obj" else to_ply(*own)
        labels, box, ids = self._labels()
        if self.ext == "tif":
            own = np.where(np.isin(labels, np.array(ids, dtype=labels.dtype)), labels, 0).astype(labels.dtype)
            return registry.render(own, "tif", voxel_size_nm=v.info.level(0).voxel_size_nm, offset=box.start)
        from ndfs.tools.mesh import Mesh, mesh_cache

        mask = np.isin(labels, np.array(ids, dtype=labels.dtype)).astype(np.uint8)
        # the process-wide mesh cache: memory, and on disk (<cache dir>/meshes) keyed by the mask's content
        mesh: Mesh = mesh_cache.mesh_of_mask(mask, box.start, v.info.level(0).voxel_size_nm, label=self.id)
        return to_obj(mesh.vertices, mesh.faces) if self.ext == "obj" else to_ply(mesh.vertices, mesh.faces)

    def _bytes(self) -> bytes:
        v = self.dir.vol
        t = v.tree
        return t.render(("ramon", v.remote, v.ref, self.id, self.ext, v.token), self._render)


__all__ = ["RamonDir", "has_ramon"]
