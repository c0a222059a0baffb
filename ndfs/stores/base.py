"""The backend contract every datastore implements.

A backend walks the service's own hierarchy (``children``), tells whether a
path is a volume, describes a volume (``info``) and reads/writes boxes of it.
Boxes are in dataset coordinates at one level, ZYX, half-open.

Subclasses implement the underscore methods; the public methods here check
arguments, count requests and check results, so every backend (and the cache,
which is itself a Backend) behaves the same at the edges. Backends must be
thread-safe, do no network I/O in ``__init__``, raise only NdfsError, and read
unwritten space as zeros.
"""

from __future__ import annotations

import abc
import errno
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ndfs.core.errors import BadRegion, InvalidAnnotation, NdfsError, ReadOnly
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.core.locks import MemoryVolumeLock, VolumeLock, z_planes

VolumeRef = tuple[str, ...]
"""A volume's path inside its backend, e.g. ``("demo", "em")``."""


@dataclass
class RequestStats:
    """Counts of the requests a backend served; thread-safe via the owner's lock."""

    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Validation:
    """What a service says about a volume's state, for a cache to tell whether what it holds is current.

    ``token`` is a small hashable (JSON-able) value that moves whenever the volume's voxels or shape may
    have changed, whoever changed them; ``at`` is when the service gave the answer it comes from
    (``time.time()``); ``final`` means the volume can no longer change (a versioned instance of a locked
    DVID node): a cache keeps it for good and never asks again.
    """

    token: tuple
    at: float
    final: bool = False


def as_ref(path: Sequence[str] | str) -> VolumeRef:
    if isinstance(path, str):
        return tuple(p for p in path.split("/") if p)
    return tuple(path)


class Backend:
    """Base of every backend. Thread-safe; subclasses keep their own state thread-safe too."""

    #: what the backend can do beyond reading, e.g. {"write"}
    capabilities: frozenset[str] = frozenset()
    #: a short word for logs and ``ndfs cache info``
    kind: str = "backend"
    #: :meth:`write` holds the written planes of :meth:`volume_lock` exclusively around ``_write``,
    #: so readers that hold them shared (the cache) never see half a write. False for stores whose
    #: ``_write`` locks by itself (the local store) and for layers (the store below them locks).
    lock_writes: bool = True

    def __init__(self) -> None:
        self._stats_lock = threading.Lock()
        self._stats = RequestStats()
        self._info_lock = threading.Lock()
        self._info_memo: dict[VolumeRef, VolumeInfo] = {}
        self._bumps: dict[VolumeRef, int] = {}  # changes made through this object (see version())
        self._volume_locks: dict[VolumeRef, VolumeLock] = {}

    # ---- hierarchy -------------------------------------------------------
    def children(self, path: Sequence[str]) -> list[str]:
        """Names below a folder of the service's hierarchy (NotFound if there is no such folder)."""
        return self._children(as_ref(path))

    def is_volume(self, path: Sequence[str]) -> bool:
        """True if the path is a volume, False if it is a folder; NotFound if neither."""
        return self._is_volume(as_ref(path))

    # ---- metadata --------------------------------------------------------
    def info(self, ref: Sequence[str]) -> VolumeInfo:
        """The volume's VolumeInfo, memoised per store until :meth:`forget_info` (layers ask the store
        below them; the chunk cache forgets it when it sees the volume change)."""
        ref = as_ref(ref)
        with self._info_lock:
            found = self._info_memo.get(ref)
        if found is None:
            found = self._info(ref)
            with self._info_lock:
                self._info_memo[ref] = found
        return found

    def forget_info(self, ref: Sequence[str] | None = None) -> None:
        """Drop memoised info (all of it when ref is None), e.g. after a channel is created."""
        with self._info_lock:
            if ref is None:
                self._info_memo.clear()
            else:
                self._info_memo.pop(as_ref(ref), None)

    # ---- voxels ----------------------------------------------------------
    def read(self, ref: Sequence[str], box: Box, level: int = 0) -> np.ndarray:
        """Exactly the box, as a C-order ZYX array of the volume's dtype."""
        ref = as_ref(ref)
        info = self.info(ref)
        info.check_box(box, level)
        if box.empty:
            return np.zeros(box.shape, dtype=info.dtype)
        out = self._read(ref, box, level)
        if out.shape != box.shape or out.dtype != info.dtype:
            raise BadRegion(
                f"{self.kind} returned {out.dtype}{out.shape} for a {info.dtype}{box.shape} request"
            )
        with self._stats_lock:
            self._stats.reads += 1
            self._stats.read_bytes += out.nbytes
        return np.ascontiguousarray(out)

    def write(self, ref: Sequence[str], box: Box, level: int, array: np.ndarray) -> None:
        """Store the array at the box; ReadOnly where the service cannot be written."""
        ref = as_ref(ref)
        if "write" not in self.capabilities:
            raise ReadOnly(f"{self.kind} remote is read-only")
        info = self.info(ref)
        info.check_box(box, level)
        array = np.asarray(array)
        if array.shape != box.shape:
            raise BadRegion(f"array shape {array.shape} does not match the box shape {box.shape}")
        if array.dtype != info.dtype:
            if not np.can_cast(array.dtype, info.dtype, casting="safe"):
                raise BadRegion(f"array dtype {array.dtype} cannot be stored in a {info.dtype} volume")
            array = array.astype(info.dtype)
        if box.empty:
            return
        guard = self.volume_lock(ref).writing(*z_planes(info, box, level)) if self.lock_writes else nullcontext()
        try:
            with guard:
                self._write(ref, box, level, np.ascontiguousarray(array))
        finally:  # even a failed write may have changed part of the volume
            self.bump_version(ref)
        with self._stats_lock:
            self._stats.writes += 1
            self._stats.write_bytes += array.nbytes

    def prefetch(self, ref: Sequence[str], box: Box, level: int = 0) -> None:
        """A hint that `box` will be read soon; backends without a cache ignore it.

        Never blocks on I/O and never raises for a bad hint (the cache clips or drops it).
        """

    def warm_up(self) -> None:
        """Load what a first read will need (modules, codecs), so that it need not wait for them: long-lived
        processes (the mount) call it as they start, before the first request can come. No I/O to the service; never
        raises. Nothing to load by default."""

    def generation(self, ref: Sequence[str]):
        """The volume's cross-process write stamp: changes with every write to its voxels or
        annotations made through ndfs by any process (compare for equality); None when the
        backend cannot tell. Cheap (a stat). Part of :meth:`version`.
        """
        return None

    def validate(self, ref: Sequence[str], max_age_s: float) -> Validation | None:
        """The volume's state on the service (:class:`Validation`), from an answer at most ``max_age_s``
        old: a store that offers a cheap change signal (DVID) asks for it when it holds no answer that
        recent (one small request), else answers from what it holds. None: the service offers no change
        signal (no I/O); a cache can then only expire what it holds (``max_age_s``). NotFound when the
        volume is gone. Thread-safe.
        """
        return None

    def version(self, ref: Sequence[str]):
        """The volume's version token: an opaque, hashable value that changes whenever the volume
        may have changed (a write through this object, a write by another process seen through
        :meth:`generation`, and in a cache the expiry of ``max_age_s``). What a mount's files,
        rendered cutouts, lookup tables and the kernel's page cache are keyed on. Cheap (a stat);
        the outermost layer's token covers every layer below it.
        """
        ref = as_ref(ref)
        with self._info_lock:
            bumps = self._bumps.get(ref, 0)
        return (bumps, self._inner_version(ref))

    def _inner_version(self, ref: VolumeRef):
        return self.generation(ref)

    def volume_lock(self, ref: Sequence[str]) -> VolumeLock:
        """The volume's lock (:mod:`ndfs.core.locks`): writers one at a time, readers kept off the planes
        being applied. In-process by default; the local store shares its lock with every process."""
        ref = as_ref(ref)
        with self._info_lock:
            return self._volume_locks.setdefault(ref, MemoryVolumeLock())

    def bump_version(self, ref: Sequence[str]) -> None:
        """Record a change made through this object (writes and RAMON changes call it)."""
        ref = as_ref(ref)
        with self._info_lock:
            self._bumps[ref] = self._bumps.get(ref, 0) + 1

    # ---- bookkeeping -----------------------------------------------------
    @property
    def stats(self) -> RequestStats:
        """A snapshot of this backend's request counts."""
        with self._stats_lock:
            return RequestStats(**self._stats.as_dict())

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = RequestStats()

    def close(self) -> None:
        """Release connections and files; the backend is not used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- what subclasses implement --------------------------------------
    def _children(self, path: VolumeRef) -> list[str]:
        raise NotImplementedError

    def _is_volume(self, path: VolumeRef) -> bool:
        raise NotImplementedError

    def _info(self, ref: VolumeRef) -> VolumeInfo:
        raise NotImplementedError

    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        raise NotImplementedError

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        raise ReadOnly(f"{self.kind} remote is read-only")

class _Contract(abc.ABCMeta):
    """Metaclass of the contracts beside :class:`Backend`: a layer (``is_layer``) is an instance of a
    contract exactly when the store below it is, so ``isinstance(backend, AnnotationStore)`` answers for
    the whole stack, whatever layers sit on the store."""

    def __instancecheck__(cls, obj) -> bool:
        if cls.__dict__.get("contract", False):  # the contracts themselves, not every class made with them
            while getattr(type(obj), "is_layer", False):
                obj = obj.inner
        return super().__instancecheck__(obj)


def annotations(backend) -> "AnnotationStore":
    """``backend`` as an :class:`AnnotationStore`, or ENOTSUP saying that it keeps no RAMON annotations."""
    if not isinstance(backend, AnnotationStore):
        raise NdfsError(f"{backend.kind} remote keeps no RAMON annotations", errno=errno.ENOTSUP)
    return backend


class AnnotationStore(metaclass=_Contract):
    """RAMON annotations of annotation channels: get, put, delete, query, reserve ids, bounding boxes.

    Mixed into a :class:`Backend` by stores that keep annotations; code checks
    ``isinstance(backend, AnnotationStore)``. Public methods validate and call the underscore hooks.
    """

    contract = True

    #: the largest RAMON id the service keeps (NeuroData: 2**32 - 1)
    ramon_max_id: int = 2**63 - 1

    def _annotation_channel(self, ref: Sequence[str], write: bool = False) -> VolumeRef:
        ref = as_ref(ref)
        if write and "write" not in self.capabilities:
            raise ReadOnly(f"{self.kind} remote is read-only")
        if self.info(ref).kind != "annotation":
            raise InvalidAnnotation(f"{'/'.join(ref)} is an image channel; RAMON objects live in annotation channels")
        return ref

    def ramon_ids(self, ref: Sequence[str], *, type: str | None = None, status=None,
                  confidence: tuple[str, float] | None = None, kv: dict[str, str] | None = None,
                  box: Box | None = None, level: int = 0, limit: int | None = None) -> list[int]:
        """Ids (only ids: never the objects) of the channel's RAMON objects matching every filter, ascending.

        ``type`` a RAMON type name; ``status`` an int or name; ``confidence`` ``("gt"|"lt", value)``;
        ``kv`` string equality on kvpairs; ``box`` (at ``level``) keeps objects with a voxel in it
        (a neuron: one of its segments); ``limit`` the most ids to return.
        """
        from ndfs.ramon import query_filters

        ref = self._annotation_channel(ref)
        filters = query_filters(type=type, status=status, confidence=confidence, kv=kv, limit=limit)
        if box is not None:
            self.info(ref).check_box(box, level)
        return self._ramon_ids(ref, filters, box, level)

    def ramon_get(self, ref: Sequence[str], ids) -> list:
        """The RAMON objects with these ids, in the order asked; NotFound if one is missing."""
        from ndfs.ramon import check_ids

        ref = self._annotation_channel(ref)
        ids = check_ids(ids, self.ramon_max_id)
        return self._ramon_get(ref, ids) if ids else []

    def ramon_put(self, ref: Sequence[str], objs) -> list[int]:
        """Store RAMON objects (replacing those with the same id); id 0 gets a new id. Returns the ids.

        Objects are validated first and nothing is stored if one is bad (InvalidAnnotation).
        Voxels attached to an object (``obj.voxels``) label its non-zero voxels with its id;
        zeros never erase.
        """
        from ndfs.ramon import check_objects

        ref = self._annotation_channel(ref, write=True)
        objs = check_objects(objs, self.ramon_max_id)
        if not objs:
            return []
        try:
            return self._ramon_put(ref, objs)
        finally:
            self.bump_version(ref)

    def ramon_delete(self, ref: Sequence[str], ids) -> None:
        """Delete RAMON objects and zero their own voxels; NotFound (and nothing deleted) if one is missing."""
        from ndfs.ramon import check_ids

        ref = self._annotation_channel(ref, write=True)
        ids = check_ids(ids, self.ramon_max_id)
        if ids:
            try:
                self._ramon_delete(ref, ids)
            finally:
                self.bump_version(ref)

    def reserve_ids(self, ref: Sequence[str], n: int) -> list[int]:
        """Reserve ``n`` new consecutive ids (never handed out again); creates no objects."""
        ref = self._annotation_channel(ref, write=True)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**20:
            raise InvalidAnnotation(f"reserve between 1 and {2**20} ids, not {n!r}")
        first = self._reserve_ids(ref, n)
        return list(range(first, first + n))

    def ramon_bbox(self, ref: Sequence[str], id: int, level: int = 0) -> Box | None:
        """The tight box of an object's voxels at ``level`` (a neuron: its segments'); None without voxels."""
        from ndfs.ramon import check_ids

        ref = self._annotation_channel(ref)
        self.info(ref).level(level)
        (one,) = check_ids([id], self.ramon_max_id)
        return self._ramon_bbox(ref, one, level)

    # ---- what stores implement: arguments arrive checked (see the public methods above) ----
    @abc.abstractmethod
    def _ramon_ids(self, ref: VolumeRef, filters, box: Box | None, level: int) -> list[int]:
        raise NotImplementedError

    @abc.abstractmethod
    def _ramon_get(self, ref: VolumeRef, ids: list[int]) -> list:
        raise NotImplementedError

    @abc.abstractmethod
    def _ramon_put(self, ref: VolumeRef, objs: list) -> list[int]:
        raise NotImplementedError

    @abc.abstractmethod
    def _ramon_delete(self, ref: VolumeRef, ids: list[int]) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def _reserve_ids(self, ref: VolumeRef, n: int) -> int:
        raise NotImplementedError

    @abc.abstractmethod
    def _ramon_bbox(self, ref: VolumeRef, id: int, level: int) -> Box | None:
        raise NotImplementedError


class KeyValueStore(metaclass=_Contract):
    """Folders that hold files: opaque values by name (DVID key-value instances).

    Mixed into a :class:`Backend` by stores with such folders; ``isinstance(backend, KeyValueStore)``.
    """

    contract = True

    @abc.abstractmethod
    def holds_files(self, path: Sequence[str]) -> bool:
        """True if the folder keeps files (so new ones can be made in it); never raises."""

    @abc.abstractmethod
    def is_file(self, path: Sequence[str]) -> bool:
        """True if the path names a file (e.g. a key of a key-value store); never raises for a non-file."""

    @abc.abstractmethod
    def read_file(self, path: Sequence[str]) -> bytes:
        """The file's whole content; NotFound if there is no such file."""

    @abc.abstractmethod
    def write_file(self, path: Sequence[str], data: bytes) -> None:
        """Create or replace the file with ``data``; ReadOnly where files cannot be written."""

    @abc.abstractmethod
    def delete_file(self, path: Sequence[str]) -> None:
        """Remove the file; NotFound if it does not exist, ReadOnly where files cannot be removed."""


class ShapeStore(metaclass=_Contract):
    """Stores that keep their objects' own meshes and skeletons (neuroglancer precomputed layers), which the
    mount's ``ramon/<id>.obj|.ply|.swc`` serve instead of meshing the voxels; ``isinstance(backend, ShapeStore)``."""

    contract = True

    @abc.abstractmethod
    def object_mesh(self, ref: Sequence[str], id: int):
        """The object's own mesh as (vertices float32 (N, 3) x, y, z in nm, faces uint32 (M, 3)), or None when
        the store keeps no mesh of it (the caller may mesh its voxels instead)."""

    @abc.abstractmethod
    def object_skeleton(self, ref: Sequence[str], id: int):
        """The object's skeleton (:class:`ndfs.formats.swc.Skeleton`, nm), or None when the store has none."""


class AdminStore(metaclass=_Contract):
    """Channels made and removed through the store (the local store); ``isinstance(backend, AdminStore)``.
    A store opened read-only refuses them (ReadOnly)."""

    contract = True

    @abc.abstractmethod
    def create_volume(self, ref: Sequence[str] | str, shape: Sequence[int], dtype="uint8", kind: str = "image",
                      voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0), offset: Sequence[int] = (0, 0, 0),
                      levels: int = 1, chunk_shape: Sequence[int] = (16, 256, 256),
                      overwrite: bool = False) -> VolumeInfo:
        """Create an empty channel (all zeros) with ``levels`` pyramid levels."""

    @abc.abstractmethod
    def delete_volume(self, ref: Sequence[str] | str) -> None:
        """Remove a channel and everything in it."""


__all__ = ["Backend", "AnnotationStore", "KeyValueStore", "AdminStore", "ShapeStore", "annotations", "RequestStats",
           "Validation", "VolumeRef", "as_ref", "NdfsError"]
