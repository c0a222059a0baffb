"""What the ``precomputed`` and ``zarr`` remotes share: a folder tree of datasets over a :class:`Location`.

A remote names one dataset (a precomputed layer, an OME-Zarr image, a zarr array) or a prefix above
several. The tree it shows:

- a remote naming one dataset shows it as the one folder (or channel) of its root, named after the
  dataset's last path component;
- below a prefix, every dataset is a channel (a folder when it holds several channels, or labels);
  folders that are no dataset are folders. Local prefixes are listed from the disk; over http(s), gs
  and s3 a prefix cannot be listed cheaply, so the remote's ``layers`` option names the datasets
  below it (``["conf/em8", "conf/labels"]``); any other path is still opened when asked for by name.

Subclasses recognise datasets (:meth:`DatasetBackend._probe`) and describe them as a :class:`Found`:
a volume (its VolumeInfo and one :class:`~ndfs.stores.tstore.ArrayLevel` per level) or a folder of
named entries. Voxels are read and written through tensorstore, one level at a time; ndfs's chunk cache
sits in front (every level reports its own chunks, for sharded data the inner chunks, as chunk shape).

Writes by other clients: :meth:`DatasetBackend.validate` gives a cache the state of a volume from its
dataset's metadata file (:class:`Meta`: a precomputed layer's ``info``; a zarr array's ``.zarray``, an
OME-Zarr image's ``.zattrs``, or ``zarr.json`` on zarr v3), at most one stat (local) or one conditional
GET (http(s), 304 when unchanged) per dataset per max age. Chunks rewritten under an unchanged metadata
file are not seen by it. gs:// and s3:// offer no signal here (None: a cache expires what it holds).

Segmentations (label layers and OME-Zarr labels) are annotation channels whose RAMON objects come from
the dataset's own metadata (:class:`Segments`): ``ramon_ids``/``ramon_get`` list and describe them
(read-only; a put or delete is EROFS), ``ramon_bbox`` finds an object's voxels by scanning the level
(within ``max_scan_bytes``), and the dataset's own meshes and skeletons are served through
:class:`~ndfs.stores.base.ShapeStore`. Thread-safe; no I/O in ``__init__``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ndfs.core.errors import BadRegion, NotFound, ReadOnly, TooLarge
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.stores.base import AdminStore, AnnotationStore, Backend, ShapeStore, Validation, VolumeRef, as_ref
from ndfs.stores.tstore import ArrayLevel, Location, Stamp

log = logging.getLogger("ndfs.dataset")


class Segments:
    """The objects of a segmentation as its dataset describes them; every method may do I/O. Subclasses
    fill in what their format keeps; the defaults say "nothing"."""

    def ids(self) -> list[int]:
        return []

    def properties(self, id: int) -> dict[str, str] | None:
        """The object's properties as RAMON kv pairs (strings), or None if the dataset does not list it."""
        return None

    def mesh(self, id: int):
        return None

    def skeleton(self, id: int):
        return None


@dataclass(eq=False)
class Meta:
    """The file a dataset's description comes from, and the state it was in when last read or revalidated:
    ``stamp`` (:data:`~ndfs.stores.tstore.Stamp`; None when the storage gives none), ``at`` when that was
    known (``time.time()``) and ``mono`` (the backend's monotonic clock; set when the Found is first
    kept). Shared by every channel of the dataset, so one check covers them all. ``stamp`` is what the
    Found holding it was parsed from."""

    location: Location
    key: str
    stamp: Stamp | None
    at: float = field(default_factory=time.time)
    mono: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Found:
    """What is at a location: a volume (``info`` and ``levels``) or a folder of ``entries`` (name -> the
    location of each; ``listed=False`` when the folder's names come from no metadata and must be listed)."""

    info: VolumeInfo | None = None
    levels: list[ArrayLevel] = field(default_factory=list)
    segments: Segments | None = None
    entries: "dict[str, Location | Found] | None" = None
    location: Location | None = None
    #: the metadata file the volume's description was read from (None: nothing to revalidate)
    meta: Meta | None = None

    @property
    def is_volume(self) -> bool:
        return self.info is not None


def _layer_tree(layers: Sequence[str]) -> dict:
    tree: dict = {}
    for item in layers:
        node = tree
        for part in (p for p in str(item).split("/") if p):
            node = node.setdefault(part, {})
    return tree


class DatasetBackend(Backend, AnnotationStore, ShapeStore, AdminStore):
    """Base of the precomputed and zarr remotes (see the module doc). ``url`` a path or URL; ``layers`` the
    datasets below a prefix that cannot be listed; ``max_scan_bytes`` the most voxels a bounding-box scan
    reads."""

    kind = "dataset"
    format_name = "dataset"

    def __init__(self, url, *, read_only: bool = False, layers: Sequence[str] | None = None,
                 max_scan_bytes: int = 2**31):
        super().__init__()
        self.location = Location(url)
        self.capabilities = frozenset() if read_only or not self.location.writable else frozenset({"write"})
        self.read_only_reason = ("the remote is configured read_only" if read_only else
                                 None if self.location.writable else f"{self.location.scheme}:// is read-only")
        self.layers = _layer_tree(layers or ())
        self.max_scan_bytes = int(max_scan_bytes)
        self._found: dict[VolumeRef, Found] = {}
        self._found_lock = threading.Lock()
        #: the monotonic clock checks are timed with (tests step it by hand, with the cache's)
        self._clock = time.monotonic

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # ---- what subclasses implement ------------------------------------------------------
    def _probe(self, loc: Location, name: str) -> Found | None:
        """The dataset at ``loc`` (a volume, or a folder whose names its metadata gives), or None."""
        raise NotImplementedError

    def _create(self, loc: Location, info: VolumeInfo) -> None:
        """Write the metadata of a new, empty dataset at ``loc`` (its last file makes it exist)."""
        raise NotImplementedError

    # ---- channels made and removed -------------------------------------------------------
    def create_volume(self, ref, shape, dtype="uint8", kind: str = "image", voxel_size_nm=(1.0, 1.0, 1.0),
                      offset=(0, 0, 0), levels: int = 1, chunk_shape=(16, 256, 256), overwrite: bool = False):
        """A new empty dataset whose lower levels halve x and y (the local store's pyramid)."""
        from ndfs.stores.local import pyramid

        if levels < 1 or any(int(s) <= 0 for s in shape):
            raise BadRegion("a channel needs a positive shape and at least one level")
        info = VolumeInfo(dtype=np.dtype(dtype), kind=kind,
                          levels=pyramid(shape, offset, voxel_size_nm, levels, chunk_shape))
        return self.create_volume_like(ref, info, overwrite=overwrite)

    def create_volume_like(self, ref, info: VolumeInfo, overwrite: bool = False) -> VolumeInfo:
        """A new empty dataset with exactly ``info``'s levels (sizes, offsets, voxel sizes, chunks): how
        ``ndfs copy`` makes a destination from its source's metadata."""
        ref = as_ref(ref)
        if "write" not in self.capabilities:
            raise ReadOnly(f"{self.format_name} remote {self.location!r} cannot be written "
                           f"({self.read_only_reason})")
        if not ref:
            raise BadRegion("a channel needs a name")
        if info.kind == "annotation" and info.dtype.name not in ("uint32", "uint64"):
            raise BadRegion("annotation channels hold uint32 or uint64 ids")
        root = self._root_is_dataset()
        if root.is_volume or root.entries is not None:
            raise BadRegion(f"{self.location!r} is one dataset; make new channels in a remote that names a folder")
        if any(p in ("", ".", "..") or p.startswith(".") or "/" in p for p in ref):
            raise BadRegion(f"{'/'.join(ref)!r} is not a usable channel name")
        loc = self.location.join("/".join(ref))
        if self._probe(loc, ref[-1]) is not None:
            if not overwrite:
                raise BadRegion(f"{'/'.join(ref)} already exists in the {self.format_name} remote")
            self._remove(loc)
        self._create(loc, info)
        self.forget_volume(ref)
        return self.info(ref)

    def delete_volume(self, ref) -> None:
        ref = as_ref(ref)
        if "write" not in self.capabilities:
            raise ReadOnly(f"{self.format_name} remote {self.location!r} cannot be written "
                           f"({self.read_only_reason})")
        found = self._volume(ref)
        if found.location is None or found.location is self.location:
            raise BadRegion(f"{'/'.join(ref)} is the remote's own dataset; remove it outside ndfs")
        parent = self._entry(ref[:-1])
        if parent.entries is not None and isinstance(parent.entries.get(ref[-1]), Found):
            raise BadRegion(f"{'/'.join(ref)} is part of the dataset {'/'.join(ref[:-1])} (a channel, or the image "
                            "beside its labels); remove the whole dataset outside ndfs")
        self._remove(found.location)
        self.forget_volume(ref)

    def _remove(self, loc: Location) -> None:
        loc.remove_all()

    # ---- the tree ---------------------------------------------------------------------------
    def _root_is_dataset(self) -> Found | None:
        return self._entry(("\0root",))

    def _entry(self, path: VolumeRef) -> Found:
        with self._found_lock:
            found = self._found.get(path)
        if found is not None:
            return found
        found = self._resolve(path)
        if found.meta is not None and found.meta.mono is None:
            found.meta.mono = self._clock()
        with self._found_lock:
            self._found.setdefault(path, found)
            return self._found[path]

    def _resolve(self, path: VolumeRef) -> Found:
        if path == ("\0root",):  # the dataset at the remote's own location, or an empty Found
            return self._probe(self.location, self.location.name) or Found(location=self.location)
        root = self._root_is_dataset()
        if not path:
            if root.is_volume or root.entries is not None:
                return Found(entries={self.location.name: self.location}, location=None)
            return Found(entries=None, location=self.location)
        if path[0] in ("", ".", "..") or any(p in ("", ".", "..") or "/" in p or "\0" in p for p in path):
            raise NotFound(f"invalid name in {'/'.join(path)!r}")
        parent = self._entry(path[:-1])
        name = path[-1]
        if parent.is_volume:
            raise NotFound(f"{'/'.join(path[:-1])} is a channel, not a folder")
        if parent.entries is not None:
            if name not in parent.entries:
                raise NotFound(f"no {'/'.join(path)} in the {self.format_name} remote")
            loc = parent.entries[name]
            if isinstance(loc, Found):  # a channel or folder the dataset's metadata describes in place
                return loc
            if loc is self.location:
                return root
        else:
            loc = parent.location.join(name)
        found = self._probe(loc, name)
        if found is not None:
            return found
        if self._listed_names(path) is not None or _isdir(loc):
            return Found(entries=None, location=loc)
        raise NotFound(f"no {'/'.join(path)} in the {self.format_name} remote")

    def _listed_names(self, path: VolumeRef) -> list[str] | None:
        """Names the ``layers`` option gives below ``path`` (None when it names nothing there)."""
        node = self.layers
        if not node:
            return None
        for part in path:
            if part not in node:
                return None
            node = node[part]
        return sorted(node)

    def _children(self, path: VolumeRef) -> list[str]:
        found = self._entry(path)
        if found.is_volume:
            raise NotFound(f"{'/'.join(path)} is a channel, not a folder")
        if found.entries is not None:
            return sorted(found.entries)
        listed = self._listed_names(path)
        dirs = found.location.list_dirs()
        if dirs is None and listed is None:
            raise NotFound(f"{found.location!r} cannot be listed over {found.location.scheme}://; name the "
                           "datasets below it with layers = [...] in the remote's settings")
        return sorted(set(dirs or ()) | set(listed or ()))

    def _is_volume(self, path: VolumeRef) -> bool:
        return self._entry(path).is_volume

    def _volume(self, ref: VolumeRef) -> Found:
        found = self._entry(ref)
        if not found.is_volume:
            raise NotFound(f"{'/'.join(ref) or '/'} is a folder, not a channel")
        return found

    def _info(self, ref: VolumeRef) -> VolumeInfo:
        return self._volume(ref).info

    # ---- changes made by other clients -------------------------------------------------------
    def validate(self, ref: Sequence[str], max_age_s: float) -> Validation | None:
        """The volume's state from its dataset's metadata file (:class:`Meta`), from an answer at most
        ``max_age_s`` old: a stat of a local file, or one conditional GET over http(s) (``If-None-Match``
        / ``If-Modified-Since``; a 304 has no body), shared by the channels of one dataset. When the file
        changed, what this backend knows of the dataset is forgotten, so the next look reads the metadata
        again. The token is the file's stamp (mtime, size and inode; ETag and Last-Modified): it moves when
        the metadata is rewritten, not when chunks are rewritten under the same metadata. None (no I/O)
        for gs:// and s3:// and servers that send neither ETag nor Last-Modified. NotFound when the
        metadata file is gone."""
        ref = as_ref(ref)
        meta = self._volume(ref).meta
        if meta is None or meta.stamp is None or not meta.location.stampable:
            return None
        with meta.lock:  # one request per dataset, however many of its channels are checked at once
            if meta.mono is not None and self._clock() - meta.mono < max_age_s:
                return Validation(meta.stamp, meta.at)
            mono, at = self._clock(), time.time()
            now = meta.location.revalidate(meta.key, meta.stamp)
            if now == meta.stamp:
                meta.mono, meta.at = mono, at
        if now is None:
            self._forget_dataset(meta.location)
            raise NotFound(f"{'/'.join(ref)}: {meta.key} of {meta.location!r} is gone")
        if now != meta.stamp:
            log.info("%s of %r changed: its description is read again", meta.key, meta.location)
            self._forget_dataset(meta.location)
        return Validation(now, at)

    def _forget_dataset(self, loc: Location) -> None:
        """Forget every channel and folder described by the dataset at ``loc`` (and what lies below them)."""
        with self._found_lock:
            gone = [k for k, f in self._found.items() if f.location is not None and f.location.url == loc.url]
            gone = [k for k in self._found if any(k[:len(g)] == g for g in gone)]
            for key in gone:
                del self._found[key]
        for key in gone:
            Backend.forget_info(self, key)

    def forget_info(self, ref: Sequence[str] | None = None) -> None:
        """Drop memoised info; for a channel whose dataset :meth:`validate` cannot check (gs://, s3://), also
        what was read of its metadata, so the next look reads it again (a cache forgets a volume's info when
        its max-age window ends). A checked dataset's description is as current as its stamp, and
        :meth:`validate` forgets it when the stamp moves."""
        if ref is not None:
            with self._found_lock:
                found = self._found.get(as_ref(ref))
            if found is not None and found.is_volume and found.location is not None and \
                    (found.meta is None or found.meta.stamp is None or not found.meta.location.stampable):
                self._forget_dataset(found.location)
        super().forget_info(ref)

    def forget_volume(self, ref: Sequence[str]) -> None:
        """Forget what is known of ``ref`` and everything below it (after it was made anew)."""
        ref = as_ref(ref)
        with self._found_lock:
            for key in [k for k in self._found if k[:len(ref)] == ref or k == ("\0root",) or len(k) < len(ref)]:
                del self._found[key]
        self.forget_info()
        self.bump_version(ref)

    # ---- voxels ----------------------------------------------------------------------------
    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        found = self._volume(ref)
        return found.levels[level].read(box, found.info.dtype)

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        self._volume(ref).levels[level].write(box, array)

    # ---- annotations: what the dataset says of its objects -----------------------------
    def _segments(self, ref: VolumeRef) -> Segments:
        return self._volume(ref).segments or Segments()

    def _object(self, ref: VolumeRef, id: int):
        from ndfs import ramon

        props = self._segments(ref).properties(id)
        if props is None:
            raise NotFound(f"{'/'.join(ref)} lists no object {id} (its {self.format_name} metadata names "
                           f"{len(self._segments(ref).ids())} objects)")
        return ramon.RamonSegment(id=id, kvpairs=props)

    def _ramon_ids(self, ref, filters, box, level):
        ids = self._segments(ref).ids()
        if box is not None:
            present = set(np.unique(self._scan(ref, box, level)).tolist())
            ids = [i for i in ids if i in present]
        out = []
        for i in ids:
            if filters.limit is not None and len(out) >= filters.limit:
                break
            if filters.matches(self._object(ref, i)):
                out.append(i)
        return out

    def _ramon_get(self, ref, ids):
        return [self._object(ref, i) for i in ids]

    def _refuse(self, ref) -> None:
        raise ReadOnly(f"the objects of {self.format_name} layer {'/'.join(ref)} come from its metadata "
                       "and cannot be changed through ndfs (write its voxels instead)")

    def _ramon_put(self, ref, objs):
        self._refuse(ref)

    def _ramon_delete(self, ref, ids):
        self._refuse(ref)

    def _reserve_ids(self, ref, n):
        self._refuse(ref)

    def _scan(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        info = self.info(ref)
        nbytes = box.size * info.dtype.itemsize
        if nbytes > self.max_scan_bytes:
            raise TooLarge(f"finding objects in {box} of {'/'.join(ref)} reads {nbytes} bytes, past "
                           f"max_scan_bytes ({self.max_scan_bytes})")
        return self.read(ref, box, level)

    def _ramon_bbox(self, ref, id, level):
        info = self.info(ref)
        lv = info.level(level)
        nbytes = lv.box.size * info.dtype.itemsize
        if nbytes > self.max_scan_bytes:
            raise TooLarge(f"the bounding box of object {id} needs a scan of level {level} of {'/'.join(ref)} "
                           f"({nbytes} bytes), past max_scan_bytes ({self.max_scan_bytes})")
        depth = max(1, min(lv.shape[0], (64 * 2**20) // max(1, lv.shape[1] * lv.shape[2] * info.dtype.itemsize)))
        depth = max(depth // lv.chunk_shape[0], 1) * lv.chunk_shape[0] if depth >= lv.chunk_shape[0] else depth
        lo, hi = None, None
        z0, z1 = lv.offset[0], lv.offset[0] + lv.shape[0]
        for a in range(z0, z1, depth):
            slab = Box((a, lv.offset[1], lv.offset[2]), (min(z1, a + depth), *lv.box.stop[1:]))
            hit = np.argwhere(self.read(ref, slab, level) == id)
            if len(hit):
                first, last = hit.min(axis=0) + slab.start, hit.max(axis=0) + slab.start + 1
                lo = first if lo is None else np.minimum(lo, first)
                hi = last if hi is None else np.maximum(hi, last)
        return None if lo is None else Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi))

    # ---- meshes and skeletons ------------------------------------------------------------
    def object_mesh(self, ref, id):
        ref = as_ref(ref)
        return self._segments(ref).mesh(int(id)) if self.info(ref).kind == "annotation" else None

    def object_skeleton(self, ref, id):
        ref = as_ref(ref)
        return self._segments(ref).skeleton(int(id)) if self.info(ref).kind == "annotation" else None


def _isdir(loc: Location) -> bool:
    import os

    return loc.local and os.path.isdir(loc.path)


__all__ = ["DatasetBackend", "Found", "Segments"]
