"""Neuroglancer precomputed layers as a remote (kind ``precomputed``): volumes, segment properties, meshes, skeletons.

A layer is a folder with an ``info`` file (JSON) whose ``scales`` are the channel's levels, finest
first: level ``i`` is ``scales[i]`` with its ``size``, ``voxel_offset`` (dataset coordinates) and
``resolution`` (nm) read as z, y, x, and its first ``chunk_sizes`` entry as chunk shape (for a sharded
scale, the chunks inside the shards). ``image`` layers are image channels; ``segmentation`` layers of
uint32/uint64 are annotation channels. A layer with ``num_channels`` above 1 is a folder of channels
``c0``, ``c1``... Voxels go through tensorstore's ``neuroglancer_precomputed`` driver (raw, jpeg, png,
compressed_segmentation; sharded or not). Chunks absent from the store read as zeros, as in
neuroglancer and tensorstore.

Writes go to unsharded scales with a lossless encoding (raw, png, compressed_segmentation) on
storage that takes writes (a local path, gs://, s3://); tensorstore writes each chunk whole (a local
chunk is written aside and renamed), and the outbox journal in front of the remote replays a write
interrupted by a crash, so a write's chunks end all new. A write changes the level written (no
pyramid is rebuilt). Sharded scales are read-only (EROFS): a shard holds many chunks and is never
rewritten in part. jpeg scales are read-only too (lossy).

Segmentation layers: ``ramon/<id>.json`` objects are the ids of ``segment_properties`` (inline ids
with ``label``, ``description``, ``tags``, ``string`` and ``number`` properties, as kv pairs) and the
ids that have a mesh or skeleton; meshes are the layer's own, legacy (``<mesh>/<id>:0`` manifests and
their fragments) or multi-resolution (``neuroglancer_multilod_draco``: the finest level of detail),
unsharded or sharded (:mod:`ndfs.stores.precomputed_shards`); skeletons are its skeletons, unsharded
or sharded (vertex attribute ``radius`` kept); all in nm. Objects without a mesh of their own are
meshed from the voxels by the mount (zmesh), as for any annotation channel.

Meshes and segment properties are written too (what ``ndfs copy --meshes`` does): :meth:`PrecomputedBackend.
write_mesh` stores an object's mesh as one legacy fragment ``mesh/<id>:0:0`` and then its manifest
``mesh/<id>:0`` (so a manifest names a complete fragment), :meth:`~PrecomputedBackend.write_mesh_manifest`
a manifest naming other objects' fragments, :meth:`~PrecomputedBackend.write_segment_properties` the
``segment_properties/info`` document; each adds its folder to the layer's ``info`` when it is not there.

Local layers that CloudVolume wrote with ``compress="gzip"`` store chunks as ``<name>.gz`` files, which
tensorstore (and neuroglancer over plain HTTP) do not read: such a scale refuses reads with a message
saying so instead of reading zeros. Thread-safe; no I/O in ``__init__``.
"""

from __future__ import annotations

import json
import logging
import struct
import threading

import numpy as np

from ndfs.core.errors import BackendError, BadRegion, ReadOnly
from ndfs.core.info import LevelInfo, VolumeInfo
from ndfs.formats.precomputed import decode_legacy_fragment, info_document, legacy_fragment
from ndfs.formats.swc import Skeleton
from ndfs.ramon.neuroglancer import parse_segment_properties
from ndfs.stores.base import as_ref
from ndfs.stores.dataset import DatasetBackend, Found, Meta, Segments
from ndfs.stores.precomputed_shards import decode_multilod, locate, parse_manifest, read_sharded
from ndfs.stores.tstore import ArrayLevel, Location, json_object

log = logging.getLogger("ndfs.precomputed")

LABEL_DTYPES = ("uint32", "uint64")
MULTILOD = "neuroglancer_multilod_draco"
LEGACY = "neuroglancer_legacy_mesh"
#: the folders ndfs writes a layer's meshes and segment properties in (when its info names none)
MESH_DIR, PROPERTIES_DIR = "mesh", "segment_properties"


def _zyx(values) -> tuple:
    x, y, z = values
    return (z, y, x)


def parse_info(doc: dict, loc: Location, name: str, meta: Meta | None = None) -> Found:
    """The Found (a volume, or a folder of channels) a precomputed ``info`` describes (``meta``: the
    ``info`` file's state it was read in, shared by the channels)."""
    try:
        dtype = np.dtype(doc["data_type"])
        kind = "annotation" if doc.get("type") == "segmentation" and dtype.name in LABEL_DTYPES else "image"
        channels = int(doc.get("num_channels", 1))
        per_channel: list[list[ArrayLevel]] = [[] for _ in range(channels)]
        levels = []
        for i, scale in enumerate(doc["scales"]):
            chunk = scale["chunk_sizes"][0]
            lv = LevelInfo(shape=_zyx(scale["size"]), offset=_zyx(scale.get("voxel_offset", (0, 0, 0))),
                           voxel_size_nm=tuple(float(v) for v in _zyx(scale["resolution"])),
                           chunk_shape=_zyx(chunk))
            levels.append(lv)
            sharded = bool(scale.get("sharding"))
            encoding = scale.get("encoding", "raw")
            read_only = None
            if sharded:
                read_only = (f"scale {scale['key']} of precomputed layer {name} is sharded: ndfs reads it but never "
                             "rewrites part of a shard, so it is read-only")
            elif encoding == "jpeg":
                read_only = f"scale {scale['key']} of precomputed layer {name} is jpeg-encoded (lossy): read-only"
            problem = None
            gz = loc.join(scale["key"]).any_file_with_suffix(".gz")
            if gz:
                problem = (f"scale {scale['key']} of {loc!r} stores its chunks as .gz files (such as {gz}; "
                           "CloudVolume's compress='gzip' on local disk), which tensorstore and neuroglancer do not read; rewrite "
                           "the layer without compression, or serve it over HTTP with Content-Encoding: gzip")
            for c in range(channels):
                per_channel[c].append(ArrayLevel(
                    spec={"driver": "neuroglancer_precomputed", "kvstore": loc.kvstore(), "scale_index": i},
                    axes=("x", "y", "z", "channel"), fixed={3: c}, origin=lv.offset, info=lv, sharded=sharded,
                    read_only=read_only, problem=problem))
        extra = {"format": "precomputed", "encoding": doc["scales"][0].get("encoding", "raw")}
        info = VolumeInfo(dtype=dtype, kind=kind, levels=tuple(levels), extra=extra)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BackendError(f"the info of precomputed layer {loc!r} is not usable: {exc!r}") from exc
    segments = PrecomputedSegments(loc, doc) if kind == "annotation" else None
    if channels == 1:
        return Found(info=info, levels=per_channel[0], segments=segments, location=loc, meta=meta)
    return Found(entries={f"c{c}": Found(info=info, levels=per_channel[c], location=loc, meta=meta)
                          for c in range(channels)}, location=loc, meta=meta)


class PrecomputedSegments(Segments):
    """Segment properties, legacy meshes and skeletons of a segmentation layer (read on first use, kept)."""

    def __init__(self, loc: Location, doc: dict):
        self.loc = loc
        self.mesh_dir = doc.get("mesh") if isinstance(doc.get("mesh"), str) else None
        self.skeleton_dir = doc.get("skeletons") if isinstance(doc.get("skeletons"), str) else None
        self.props_dir = doc.get("segment_properties") if isinstance(doc.get("segment_properties"), str) else None
        self._lock = threading.Lock()
        self._props: dict[int, dict[str, str]] | None = None
        self._infos: dict[str, dict] = {}

    def _sub_info(self, sub: str) -> dict:
        with self._lock:
            if sub not in self._infos:
                self._infos[sub] = self.loc.join(sub).read_json("info", f"the info of {sub}") or {}
            return self._infos[sub]

    def _properties(self) -> dict[int, dict[str, str]]:
        with self._lock:
            if self._props is not None:
                return self._props
        props: dict[int, dict[str, str]] = {}
        if self.props_dir:
            doc = self.loc.join(self.props_dir).read_json("info", "the segment properties") or {}
            props = parse_segment_properties(doc)
        with self._lock:
            self._props = props
        return props

    def ids(self) -> list[int]:
        return sorted(self._properties())

    def properties(self, id: int) -> dict[str, str] | None:
        found = self._properties().get(id)
        if found is not None:
            return dict(found)
        return {} if self._has_shape(id) else None

    # ---- meshes ----------------------------------------------------------------------------
    def _mesh_info(self) -> dict | None:
        return self._sub_info(self.mesh_dir) if self.mesh_dir else None

    def _has_shape(self, id: int) -> bool:
        """Whether the layer keeps a mesh or a skeleton of ``id`` (one small read each)."""
        info = self._mesh_info()
        if info is not None:
            where = self.loc.join(self.mesh_dir)
            if info.get("sharding"):
                if locate(where, info["sharding"], id) is not None:
                    return True
            elif info.get("@type") == MULTILOD:
                if where.read_range(f"{id}.index", 0, 1) is not None:
                    return True
            elif where.read_json(f"{id}:0", f"the mesh manifest of {id}") is not None:
                return True
        return self._skeleton_bytes(id) is not None

    def mesh(self, id: int):
        info = self._mesh_info()
        if info is None:
            return None
        where = self.loc.join(self.mesh_dir)
        what = f"the mesh of object {id} in {where!r}"
        multilod = info.get("@type") == MULTILOD
        if info.get("sharding"):
            found = locate(where, info["sharding"], id)
            if found is None:
                return None
            name, offset, size = found
            if not multilod:  # a sharded legacy mesh: one fragment, stored under the id
                return decode_legacy_fragment(read_sharded(where, info["sharding"], id), what)
            manifest = parse_manifest(where.read_range(name, offset, offset + size) or b"", what)
            total = int(sum(int(s.sum()) for s in manifest["sizes"]))  # the fragments lie just before it
            data = where.read_range(name, offset - total, offset) if total else b""
            return decode_multilod(manifest, data or b"", info, what)
        if multilod:
            index = where.read(f"{id}.index")
            if index is None:
                return None
            manifest = parse_manifest(index, what)
            return decode_multilod(manifest, where.read(str(id), max_bytes=2**31) or b"", info, what)
        manifest = where.read_json(f"{id}:0", f"the mesh manifest of {id}")
        if manifest is None:
            return None
        verts, faces, base = [], [], 0
        for fragment in manifest.get("fragments", []):
            data = where.read(str(fragment), max_bytes=2**31)
            if data is None:
                raise BackendError(f"mesh fragment {fragment} of object {id} is missing from {where!r}")
            v, f = decode_legacy_fragment(data, f"fragment {fragment} of object {id}")
            verts.append(v)
            faces.append(f + base)
            base += len(v)
        if not verts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
        return np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.uint32)

    # ---- skeletons ----------------------------------------------------------------------
    def _skeleton_bytes(self, id: int) -> bytes | None:
        if not self.skeleton_dir:
            return None
        where = self.loc.join(self.skeleton_dir)
        sharding = self._sub_info(self.skeleton_dir).get("sharding")
        if sharding:
            return read_sharded(where, sharding, id)
        return where.read(str(id), max_bytes=2**31)

    def skeleton(self, id: int):
        data = self._skeleton_bytes(id)
        if data is None:
            return None
        return decode_skeleton(data, self._sub_info(self.skeleton_dir), id)


def decode_skeleton(data: bytes, info: dict, id: int) -> Skeleton:
    """A precomputed skeleton file (vertex and edge counts, vertices, edges, vertex attributes) in nm."""
    try:
        nv, ne = struct.unpack_from("<II", data)
        pos = 8
        v = np.frombuffer(data, "<f4", 3 * nv, pos).reshape(nv, 3).astype(np.float64)
        pos += 12 * nv
        e = np.frombuffer(data, "<u4", 2 * ne, pos).reshape(ne, 2)
        pos += 8 * ne
        attrs = {}
        for attr in info.get("vertex_attributes", []):
            dt = np.dtype(attr["data_type"]).newbyteorder("<")
            k = int(attr.get("num_components", 1))
            a = np.frombuffer(data, dt, nv * k, pos).reshape(nv, k) if k > 1 else np.frombuffer(data, dt, nv, pos)
            pos += nv * k * dt.itemsize
            attrs[str(attr["id"])] = a
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"the skeleton of object {id} is not usable: {exc}") from exc
    transform = info.get("transform")
    if transform:
        m = np.asarray(transform, dtype=np.float64).reshape(3, 4)
        v = v @ m[:, :3].T + m[:, 3]
    if len(e) and e.max() >= nv:
        raise BackendError(f"the skeleton of object {id} names vertices it does not have")
    radius = attrs.get("radius")
    return Skeleton(vertices=v.astype(np.float32), edges=e.astype(np.uint32),
                    radius=None if radius is None else np.asarray(radius, dtype=np.float32).reshape(nv),
                    label=id, attributes=attrs)


class PrecomputedBackend(DatasetBackend):
    """Neuroglancer precomputed layers at a path or URL (see the module doc). Thread-safe."""

    kind = "precomputed"
    format_name = "precomputed"

    def __init__(self, url, **kwargs):
        super().__init__(url, **kwargs)
        self._mesh_folders: dict[tuple, Location] = {}

    def _probe(self, loc: Location, name: str) -> Found | None:
        data, stamp = loc.read_stamped("info")
        doc = json_object(data, loc, "info", "the precomputed info")
        if doc is None or "scales" not in doc:
            return None
        return parse_info(doc, loc, name, Meta(loc, "info", stamp))

    def _create(self, loc: Location, info: VolumeInfo) -> None:
        loc.write("info", json.dumps(info_document(info, keys="resolution"), indent=1).encode())

    # ---- meshes and segment properties written --------------------------------------------------
    def _segmentation(self, ref) -> tuple[Location, dict]:
        """(location, info document) of the segmentation layer ``ref``, checked writable."""
        ref = as_ref(ref)
        found = self._volume(ref)
        if found.info.kind != "annotation" or not isinstance(found.segments, PrecomputedSegments):
            raise BadRegion(f"{'/'.join(ref)} is not a segmentation layer: only those keep meshes and properties")
        if "write" not in self.capabilities:
            raise ReadOnly(f"precomputed remote {self.location!r} cannot be written ({self.read_only_reason})")
        doc = found.location.read_json("info", "the precomputed info")
        if doc is None:
            raise BackendError(f"the info of {found.location!r} is gone")
        return found.location, doc

    def _folder(self, ref, key: str, default: str, type_: str, what: str, first: bytes | None = None) -> Location:
        """The layer's ``key`` folder (``default`` named in its info, when the layer has none yet, only once
        that folder's own info, ``first`` or a legacy mesh info, is written: a crash between the two never
        leaves the layer naming a folder without one); BadRegion when the layer's folder holds another kind
        of document."""
        loc, doc = self._segmentation(ref)
        name = doc.get(key)
        if not isinstance(name, str) or not name.strip("/"):
            where = loc.join(default)
            if first is None and type_ == LEGACY:
                first = json.dumps({"@type": LEGACY}).encode()
            if first is not None:
                where.write("info", first)
            doc[key] = default
            loc.write("info", json.dumps(doc, indent=1).encode())
            self.forget_volume(ref)
            return where
        where = loc.join(name)
        if type_ == LEGACY:
            sub = where.read_json("info", f"the info of {name}") or {}
            if sub.get("sharding") or sub.get("@type", LEGACY) != LEGACY:
                raise BadRegion(f"{'/'.join(as_ref(ref))} keeps {sub.get('@type', 'sharded')} {what}; ndfs writes "
                                f"unsharded legacy meshes only")
        return where

    def mesh_folder(self, ref) -> Location:
        """The layer's legacy mesh folder, named in its info (``mesh``) when it had none (kept until the
        volume is forgotten)."""
        ref = as_ref(ref)
        with self._found_lock:
            found = self._mesh_folders.get(ref)
        if found is None:
            found = self._folder(ref, "mesh", MESH_DIR, LEGACY, "meshes")
            with self._found_lock:
                self._mesh_folders[ref] = found
        return found

    def forget_volume(self, ref) -> None:
        ref = as_ref(ref)
        with self._found_lock:
            for key in [k for k in self._mesh_folders if k[:len(ref)] == ref]:
                del self._mesh_folders[key]
        super().forget_volume(ref)

    def has_mesh(self, ref, id: int) -> bool:
        """Whether the layer holds the manifest ``<id>:0`` of a legacy mesh of ``id``."""
        return self.mesh_folder(ref).read(f"{int(id)}:0") is not None

    def write_mesh(self, ref, id: int, vertices, faces) -> None:
        """Store the mesh of ``id`` (vertices x y z in nm, triangles) as the legacy fragment ``<id>:0:0``, then
        its manifest ``<id>:0``."""
        where = self.mesh_folder(ref)
        where.write(f"{int(id)}:0:0", legacy_fragment(vertices, faces))
        where.write(f"{int(id)}:0", json.dumps({"fragments": [f"{int(id)}:0:0"]}).encode())

    def write_mesh_manifest(self, ref, id: int, parts) -> None:
        """The manifest ``<id>:0`` naming the fragments ``<part>:0:0`` of ``parts`` (written before)."""
        where = self.mesh_folder(ref)
        where.write(f"{int(id)}:0", json.dumps({"fragments": [f"{int(p)}:0:0" for p in parts]}).encode())

    def write_segment_properties(self, ref, doc: dict) -> None:
        """Store a ``neuroglancer_segment_properties`` document as the layer's segment properties."""
        if doc.get("@type") != "neuroglancer_segment_properties":
            raise BadRegion("segment properties are a neuroglancer_segment_properties document")
        data = json.dumps(doc).encode()
        where = self._folder(ref, "segment_properties", PROPERTIES_DIR, "properties", "segment properties",
                             first=data)
        where.write("info", data)
        self.forget_volume(ref)


__all__ = ["PrecomputedBackend", "parse_info", "info_document", "parse_segment_properties", "decode_legacy_fragment",
           "decode_skeleton"]
