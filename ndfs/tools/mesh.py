"""Meshes of labelled objects: zmesh marching cubes with simplification, in nanometres; OBJ and PLY bytes.

:func:`mesh_label` turns the voxels of one label id into a closed triangle
surface. Vertices are (x, y, z) in nanometres in the dataset's frame: voxel
``i`` spans ``[i, i + 1) * voxel_size``, so a solid box of voxels ``[a, b)``
gives vertices from ``a * voxel_size`` to ``b * voxel_size`` on each axis
(exactly, without simplification; within one voxel with it). Objects cut by
the box edge are closed there too. Faces are counter-clockwise seen from
outside (outward normals).

From a :class:`~ndfs.volume.Volume` the label is found slab by slab and only
its own bounding box is kept as a 1-byte mask, so memory follows the object,
not the volume. :func:`to_obj` and :func:`to_ply` (binary little-endian) are
pure functions of the arrays and do not need zmesh. Meshing needs the
``mesh`` extra (``pip install 'ndfs[mesh]'``), imported when first used.

:class:`MeshCache` keeps meshes like the chunk cache keeps chunks: a memory
LRU within a byte budget over an optional bounded disk tier (``diskcache``,
checksummed entries, shared by processes, kept across restarts) whose keys
are digests of the object's mask, so a write anywhere makes a new key rather
than a stale hit. :func:`cached_mesh` and the mount's ``ramon/<id>.obj|ply``
use the process-wide :data:`mesh_cache`; :func:`configure_mesh_cache` gives it
the disk tier ``<cache dir>/meshes``. Everything here is thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

from ndfs.core.errors import BadRegion, MissingExtra, NotFound, TooLarge
from ndfs.core.geometry import Box

__all__ = ["Mesh", "mesh_label", "fold_label_boxes", "label_boxes", "to_obj", "to_ply", "save_mesh", "MeshCache", "cached_mesh", "mesh_cache",
           "mesh_disk_dir",
           "configure_mesh_cache", "encode_mesh", "decode_mesh", "mask_key", "clear_mesh_disk"]

log = logging.getLogger("ndfs.mesh")
MiB = 2**20


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` float32 (N, 3) x, y, z in nm; ``faces`` uint32 (M, 3) vertex indices."""

    vertices: np.ndarray
    faces: np.ndarray
    label: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.vertices.nbytes + self.faces.nbytes)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min xyz, max xyz) in nm."""
        if not len(self.vertices):
            raise NotFound(f"the mesh of label {self.label} is empty")
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def to_obj(self) -> bytes:
        return to_obj(self.vertices, self.faces)

    def to_ply(self) -> bytes:
        return to_ply(self.vertices, self.faces)


# ---- writers (pure) ------------------------------------------------------------
def _checked(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.ascontiguousarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise BadRegion(f"a mesh needs (N, 3) vertices and (M, 3) faces, got {v.shape} and {f.shape}")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise BadRegion("mesh faces refer to vertices that do not exist")
    return v, f.astype("<u4", copy=False)


def to_obj(vertices, faces) -> bytes:
    """Wavefront OBJ text: ``v x y z`` lines, then ``f a b c`` lines (1-based indices)."""
    v, f = _checked(vertices, faces)
    out = [b"# ndfs mesh: units nm\n"]
    if len(v):
        out.append(("v %.9g %.9g %.9g\n" * len(v) % tuple(v.ravel().tolist())).encode())
    if len(f):
        out.append(("f %d %d %d\n" * len(f) % tuple((f.astype(np.int64) + 1).ravel().tolist())).encode())
    return b"".join(out)


def to_ply(vertices, faces) -> bytes:
    """Binary little-endian PLY: float x, y, z vertices; faces as ``list uchar uint vertex_indices``."""
    v, f = _checked(vertices, faces)
    header = ("ply\nformat binary_little_endian 1.0\ncomment ndfs mesh, units nm\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(f)}\nproperty list uchar uint vertex_indices\nend_header\n").encode("ascii")
    rows = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<u4", (3,))])
    rows["n"] = 3
    rows["idx"] = f
    return header + v.tobytes() + rows.tobytes()


def save_mesh(path, mesh: Mesh) -> Path:
    """Write a mesh to ``path`` as OBJ or PLY, chosen by the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise BadRegion(f"a mesh file ends in .obj or .ply, not {path.name!r}")
    data = mesh.to_obj() if suffix == ".obj" else mesh.to_ply()
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


# ---- meshing -------------------------------------------------------------------
def _zmesh():
    try:
        import zmesh
    except ImportError:
        raise MissingExtra("meshes need zmesh: pip install 'ndfs[mesh]'") from None
    return zmesh


def _mask_of_volume(volume, label_id: int, box: Box, slab_bytes: int) -> tuple[np.ndarray, Box] | None:
    """The label's 1-byte mask over its own bounding box inside ``box``, read slab by slab; None if absent."""
    lv = volume.level_info
    plane = box.shape[1] * box.shape[2] * volume.dtype.itemsize
    depth = max(1, min(box.shape[0], slab_bytes // max(1, plane)))
    if depth >= lv.chunk_shape[0]:
        depth -= depth % lv.chunk_shape[0]
    parts = []
    for z0 in range(box.start[0], box.stop[0], depth):
        slab = Box((z0, box.start[1], box.start[2]), (min(z0 + depth, box.stop[0]), box.stop[1], box.stop[2]))
        hit = volume.read(slab) == label_id
        if not hit.any():
            continue
        idx = [np.flatnonzero(hit.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        sub = Box(tuple(slab.start[a] + int(idx[a][0]) for a in range(3)),
                  tuple(slab.start[a] + int(idx[a][-1]) + 1 for a in range(3)))
        parts.append((sub, np.ascontiguousarray(hit[sub.slices(slab.start)], dtype=np.uint8)))
    if not parts:
        return None
    tight = Box(tuple(min(p.start[a] for p, _ in parts) for a in range(3)),
                tuple(max(p.stop[a] for p, _ in parts) for a in range(3)))
    mask = np.zeros(tight.shape, np.uint8)
    for sub, m in parts:
        mask[sub.slices(tight.start)] = m
    return mask, tight


def _mask_of_array(labels: np.ndarray, label_id: int | None, origin) -> tuple[np.ndarray, Box] | None:
    """The tight 1-byte mask of ``labels == label_id`` (of ``labels != 0`` when label_id is None)."""
    hit = labels != 0 if label_id is None else labels == label_id
    if not hit.any():
        return None
    idx = [np.flatnonzero(hit.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo = [int(i[0]) for i in idx]
    hi = [int(i[-1]) + 1 for i in idx]
    tight = Box(tuple(o + a for o, a in zip(origin, lo)), tuple(o + b for o, b in zip(origin, hi)))
    return np.ascontiguousarray(hit[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.uint8), tight


def _check_options(label_id: int, simplify: int) -> int:
    label_id = int(label_id)
    if label_id <= 0:
        raise BadRegion(f"label ids are positive, got {label_id}")
    if isinstance(simplify, bool) or not isinstance(simplify, (int, np.integer)) or simplify < 0:
        raise BadRegion(f"simplify is a reduction factor >= 0, got {simplify!r}")
    return label_id


def _voxel_sizes(values) -> tuple[float, float, float]:
    vs = tuple(float(v) for v in values)
    if len(vs) != 3 or not all(np.isfinite(vs)) or min(vs) <= 0:
        raise BadRegion(f"voxel sizes must be three positive numbers, got {vs}")
    return vs  # type: ignore[return-value]


def _volume_mask(vol, label_id: int, box: Box | None, slab_bytes: int):
    """(mask, tight box, voxel sizes) of a label in a Volume level; NotFound when it has no voxels there."""
    box = vol.box if box is None else box
    if not vol.box.contains(box):
        raise BadRegion(f"box {box} is outside {vol.box}")
    vs = _voxel_sizes(vol.voxel_size_nm)
    found = _mask_of_volume(vol, label_id, box, slab_bytes)
    if found is None:
        raise NotFound(f"label {label_id} has no voxels in {box}")
    return found[0], found[1], vs


def mesh_label(source, label_id: int, box: Box | None = None, level: int | None = None, *,
               simplify: int = 10, max_error_nm: float | None = None, voxel_size_nm=None, offset=None,
               slab_bytes: int = 64 * MiB) -> Mesh:
    """The closed surface of the voxels equal to ``label_id``, in nm (see the module docstring).

    ``source`` is a Volume (``level`` picks another level of it; ``box``
    limits the search, default the whole level) or a 3-D numpy label array
    (``voxel_size_nm`` (z, y, x), default 1 nm; ``offset`` its first voxel's
    index, default 0). ``simplify`` is zmesh's triangle reduction factor (0 =
    none); ``max_error_nm`` caps how far a simplified vertex moves (default
    zmesh's, one voxel). NotFound if the label has no voxels there. Not cached:
    see :func:`cached_mesh` and :meth:`MeshCache.mesh_of_mask`.
    """
    from ndfs.volume import Volume

    label_id = _check_options(label_id, simplify)
    _zmesh()  # fail early, before any voxel is read, when the mesh extra is missing
    if isinstance(source, Volume):
        vol = source if level is None or level == source.level_index else source.level(level)
        mask, tight, vs = _volume_mask(vol, label_id, box, slab_bytes)
        return _mesh_tight(mask, tight, vs, simplify, max_error_nm, label_id)
    arr = np.asarray(source)
    if arr.ndim != 3:
        raise BadRegion(f"mesh_label takes a Volume or a 3-D label array, got {arr.ndim}-D")
    origin = tuple(int(o) for o in (offset if offset is not None else (0, 0, 0)))
    vs = _voxel_sizes(voxel_size_nm if voxel_size_nm is not None else (1.0, 1.0, 1.0))
    if box is not None:
        whole = Box.from_shape(arr.shape, origin)
        if not whole.contains(box):
            raise BadRegion(f"box {box} is outside the array {whole}")
        arr, origin = arr[box.slices(origin)], box.start
    found = _mask_of_array(arr, label_id, origin)
    if found is None:
        raise NotFound(f"label {label_id} has no voxels in {box if box is not None else 'the volume'}")
    mask, tight = found
    return _mesh_tight(mask, tight, vs, simplify, max_error_nm, label_id)


def _mesh_tight(mask: np.ndarray, tight: Box, vs, simplify: int, max_error_nm, label: int) -> Mesh:
    """zmesh of a 0/1 uint8 mask whose first voxel is ``tight.start``; voxel sizes ``vs`` (z, y, x) nm."""
    zmesh = _zmesh()
    # one voxel of zeros around the mask closes the surface where the object meets the box edge
    padded = np.pad(mask, 1)
    res_xyz = (vs[2], vs[1], vs[0])
    mesher = zmesh.Mesher(res_xyz)
    mesher.mesh(np.asfortranarray(padded.T), close=False)  # zmesh takes x, y, z
    got = mesher.get(1, normals=False, reduction_factor=int(simplify), max_error=max_error_nm)
    mesher.clear()
    # zmesh puts sample i at i * res; ndfs puts voxel i's centre at (i + 0.5) * res and the pad shifted by 1
    shift = np.array([(tight.start[2] - 0.5) * vs[2], (tight.start[1] - 0.5) * vs[1],
                      (tight.start[0] - 0.5) * vs[0]], dtype=np.float64)
    vertices = (got.vertices.astype(np.float64) + shift).astype(np.float32)
    return Mesh(vertices=vertices, faces=np.ascontiguousarray(got.faces, dtype=np.uint32), label=int(label))


# ---- where each label is -----------------------------------------------------------
def fold_label_boxes(data: np.ndarray, origin, lo: dict, hi: dict) -> None:
    """Fold the boxes of the non-zero labels of ``data`` (its first voxel at ``origin``) into ``lo``/``hi``
    (label -> first and last voxel, z y x, inclusive)."""
    ids = np.unique(data)
    ids = ids[ids != 0]
    if not len(ids):
        return
    which = np.searchsorted(ids, data).ravel()  # zeros land on index 0 too: masked out below
    present = (data != 0).ravel()
    which = which[present]
    mins = np.full((3, len(ids)), np.iinfo(np.int64).max, np.int64)
    maxs = np.full((3, len(ids)), -1, np.int64)
    flat = np.flatnonzero(present)
    coords = np.unravel_index(flat, data.shape)
    for axis in range(3):
        np.minimum.at(mins[axis], which, coords[axis])
        np.maximum.at(maxs[axis], which, coords[axis])
    for k, label in enumerate(ids.tolist()):
        s = mins[:, k] + origin
        e = maxs[:, k] + origin
        if label in lo:
            lo[label] = np.minimum(lo[label], s)
            hi[label] = np.maximum(hi[label], e)
        else:
            lo[label], hi[label] = s, e


def label_boxes(backend, ref, box: Box, level: int = 0, slab_bytes: int = 64 * MiB,
                max_labels: int | None = None) -> dict[int, Box]:
    """{label: its tight box} of every non-zero label of ``box`` at ``level`` of a channel, from one scan
    slab by slab (whole chunks deep when a slab holds one); TooLarge as soon as more than ``max_labels``
    are found."""
    info = backend.info(ref)
    lv = info.level(level)
    plane = box.shape[1] * box.shape[2] * info.dtype.itemsize
    depth = max(1, min(box.shape[0], slab_bytes // max(1, plane)))
    if depth >= lv.chunk_shape[0]:
        depth -= depth % lv.chunk_shape[0]
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    for z0 in range(box.start[0], box.stop[0], depth):
        slab = Box((z0, box.start[1], box.start[2]), (min(z0 + depth, box.stop[0]), box.stop[1], box.stop[2]))
        fold_label_boxes(backend.read(ref, slab, level), slab.start, lo, hi)
        if max_labels is not None and len(lo) > max_labels:
            raise TooLarge(f"{'/'.join(ref)} has more than {max_labels} labels at level {level}: too many to index")
    return {i: Box(tuple(int(v) for v in lo[i]), tuple(int(v) + 1 for v in hi[i])) for i in sorted(lo)}


# ---- cache -----------------------------------------------------------------------
_DISK_HEAD = struct.Struct("<4sQQI")  # magic, vertex count, face count, crc32 of the raw bytes
_DISK_MAGIC = b"NDM1"
#: disk keys name the mesh format, then a digest of everything the mesh is computed from
DISK_KEY_PREFIX = "ndfs-mesh-1:"


def encode_mesh(mesh: Mesh) -> bytes:
    """The disk payload of a mesh: header (magic, counts, crc32), then zlib of the raw LE arrays. Pure."""
    v = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    f = np.ascontiguousarray(mesh.faces, dtype="<u4")
    raw = v.tobytes() + f.tobytes()
    return _DISK_HEAD.pack(_DISK_MAGIC, len(v), len(f), zlib.crc32(raw)) + zlib.compress(raw, 1)


def decode_mesh(payload, label: int = 0) -> Mesh:
    """A mesh from :func:`encode_mesh` bytes; ValueError unless magic, lengths, checksum and indices all hold."""
    try:
        magic, nv, nf, crc = _DISK_HEAD.unpack_from(payload)
        if magic != _DISK_MAGIC:
            raise ValueError("bad magic")
        size = 12 * (nv + nf)
        if size > 2**36:
            raise ValueError(f"implausible counts {nv} vertices, {nf} faces")
        inflater = zlib.decompressobj()
        raw = inflater.decompress(bytes(payload[_DISK_HEAD.size:]), size + 1)
        if len(raw) != size or not inflater.eof or inflater.unused_data or zlib.crc32(raw) != crc:
            raise ValueError("length or checksum mismatch")
    except ValueError:
        raise
    except Exception as exc:  # struct.error, zlib.error, a payload that is not bytes
        raise ValueError(f"undecodable mesh payload: {exc}") from exc
    vertices = np.frombuffer(raw, "<f4", 3 * nv).reshape(nv, 3).astype(np.float32)
    faces = np.frombuffer(raw, "<u4", 3 * nf, offset=12 * nv).reshape(nf, 3).astype(np.uint32)
    if nf and int(faces.max()) >= nv:
        raise ValueError("faces refer to vertices that do not exist")
    return Mesh(vertices=vertices, faces=faces, label=int(label))


@lru_cache(maxsize=1)
def _zmesh_version() -> str:
    """zmesh's version from its package metadata (without importing it): part of every disk key."""
    from importlib import metadata

    try:
        return metadata.version("zmesh")
    except metadata.PackageNotFoundError:
        return "none"


def mask_key(mask: np.ndarray, start, voxel_size_nm, simplify: int, max_error_nm) -> str:
    """The disk key of the mesh of a tight 0/1 mask: a digest of its bits, shape, place and the options. Pure."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps([_zmesh_version(), list(mask.shape), [int(v) for v in start],
                         [float(v) for v in voxel_size_nm], int(simplify),
                         None if max_error_nm is None else float(max_error_nm)]).encode())
    h.update(np.packbits(np.ascontiguousarray(mask) != 0, axis=None).tobytes())
    return DISK_KEY_PREFIX + h.hexdigest()


class MeshCache:
    """Meshes memoised in memory (LRU within ``max_bytes``) and, given ``disk_dir``, on disk.

    Memory tier: any hashable key (:meth:`get`), one computation per key at a
    time. Disk tier (:meth:`mesh_of_mask`, and so :func:`cached_mesh`): a
    ``diskcache`` directory bounded by ``disk_bytes`` (least recently used out),
    shared by every process that opens it and kept across restarts. Its keys are
    content digests (:func:`mask_key`): the bits of the object's mask, its place,
    voxel size, the options and zmesh's version. A key can therefore never name
    a stale mesh: after any write, by any process, the mask read afterwards is
    different and so is its key (old entries age out). The price is that the
    mask is read (from the chunk cache, usually) before the disk tier is asked;
    what is saved is the marching cubes and simplification. Entries carry a
    crc32; one that does not decode is counted (``corrupt``), deleted and
    recomputed. A disk tier that fails (full disk, broken database) is logged
    once per kind and skipped, never fatal. Thread-safe.
    """

    def __init__(self, max_bytes: int = 256 * MiB, *, disk_dir=None, disk_bytes: int = 1 << 30):
        import cachetools

        self._lru = cachetools.LRUCache(maxsize=max(1, int(max_bytes)), getsizeof=lambda m: max(1, m.nbytes))
        self._lock = threading.Lock()  # guards _lru, _making, _counts, _disk*
        self._making: dict[Hashable, threading.Lock] = {}
        self._counts = dict.fromkeys(("memory_hits", "disk_hits", "computed", "corrupt", "disk_errors"), 0)
        self._disk = None
        self._disk_dir: Path | None = None
        self._disk_bytes = int(disk_bytes)
        self._warned: set[str] = set()
        if disk_dir is not None:
            self.use_disk(disk_dir, disk_bytes)

    def __repr__(self) -> str:
        return f"MeshCache(disk_dir={str(self._disk_dir) if self._disk_dir else None!r})"

    # ---- counters ------------------------------------------------------------
    @property
    def hits(self) -> int:
        """Meshes served without running zmesh (memory or disk)."""
        with self._lock:
            return self._counts["memory_hits"] + self._counts["disk_hits"]

    @property
    def misses(self) -> int:
        """Meshes computed (zmesh runs) by this cache."""
        with self._lock:
            return self._counts["computed"]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def stats(self) -> dict:
        """Counts (memory_hits, disk_hits, computed, corrupt, disk_errors) and tier sizes, a snapshot."""
        with self._lock:
            out = dict(self._counts, memory_bytes=self._lru.currsize, memory_entries=len(self._lru),
                       disk_dir=str(self._disk_dir) if self._disk_dir else None)
        disk = self._disk_cache()
        out["disk_bytes"] = self._disk_op("volume", disk.volume, 0) if disk is not None else 0
        out["disk_entries"] = self._disk_op("len", lambda: len(disk), 0) if disk is not None else 0
        return out

    # ---- the disk tier ---------------------------------------------------------
    def use_disk(self, disk_dir, disk_bytes: int = 1 << 30) -> None:
        """Keep meshes in ``disk_dir`` (opened on first use) within ``disk_bytes``; None: memory only."""
        with self._lock:
            old, self._disk = self._disk, None
            self._disk_dir = None if disk_dir is None else Path(disk_dir).expanduser()
            self._disk_bytes = int(disk_bytes)
        if old is not None:
            self._disk_op("close", old.close)

    @property
    def disk_dir(self) -> Path | None:
        return self._disk_dir

    def _disk_cache(self):
        with self._lock:
            if self._disk is not None or self._disk_dir is None:
                return self._disk
            where, size = self._disk_dir, self._disk_bytes
        try:
            from ndfs.cache.disk import open_disk_cache

            disk = open_disk_cache(where, size)
        except Exception as exc:  # unwritable directory, broken database
            log.warning("mesh disk cache %s is unusable, keeping meshes in memory only: %s", where, exc)
            with self._lock:
                if self._disk_dir == where:
                    self._disk_dir = None
            return None
        with self._lock:
            if self._disk is None and self._disk_dir == where:
                self._disk = disk
                return disk
            found = self._disk
        disk.close()  # another thread opened it first, or the directory changed meanwhile
        return found

    def _disk_op(self, what: str, fn, default=None):
        try:
            return fn()
        except Exception as exc:  # sqlite3.Error, OSError, diskcache.Timeout, ...
            self._count("disk_errors")
            with self._lock:
                first = what not in self._warned
                self._warned.add(what)
            log.log(logging.WARNING if first else logging.DEBUG, "mesh disk cache %s failed, going on without it: %s",
                    what, exc)
            return default

    # ---- lookups ----------------------------------------------------------------
    def get(self, key: Hashable, make: Callable[[], Mesh]) -> Mesh:
        """The mesh kept under ``key`` in memory, else ``make()`` (counted as computed), kept for next time."""
        return self._get(key, make, computes=True)

    def _get(self, key: Hashable, make: Callable[[], Mesh], computes: bool) -> Mesh:
        with self._lock:
            found = self._lru.get(key)
            if found is not None:
                self._counts["memory_hits"] += 1
                return found
            gate = self._making.setdefault(key, threading.Lock())
        try:
            with gate:  # single flight: a second caller waits for the first one's mesh
                with self._lock:
                    found = self._lru.get(key)
                    if found is not None:
                        self._counts["memory_hits"] += 1
                        return found
                mesh = make()
                with self._lock:
                    if computes:
                        self._counts["computed"] += 1
                    if mesh.nbytes <= self._lru.maxsize:
                        self._lru[key] = mesh
                return mesh
        finally:
            with self._lock:
                if self._making.get(key) is gate:
                    del self._making[key]

    def mesh_of_mask(self, mask, offset=(0, 0, 0), voxel_size_nm=(1.0, 1.0, 1.0), *, simplify: int = 10,
                     max_error_nm: float | None = None, label: int = 1) -> Mesh:
        """The mesh of a 3-D mask's non-zero voxels (``offset``: its first voxel; voxel sizes z, y, x in nm),
        as :func:`mesh_label` makes it, from memory, from disk, or computed and kept in both.

        ``label`` only names the mesh (``Mesh.label``). NotFound if the mask is empty.
        """
        _check_options(label, simplify)
        arr = np.asarray(mask)
        if arr.ndim != 3:
            raise BadRegion(f"a mask is a 3-D array, got {arr.ndim}-D")
        found = _mask_of_array(arr, None, tuple(int(o) for o in offset))
        if found is None:
            raise NotFound(f"the mask of object {label} is empty")
        return self._of_tight(found[0], found[1], _voxel_sizes(voxel_size_nm), simplify, max_error_nm, int(label))

    def _of_tight(self, mask: np.ndarray, tight: Box, vs, simplify: int, max_error_nm, label: int) -> Mesh:
        key = mask_key(mask, tight.start, vs, simplify, max_error_nm)

        def make() -> Mesh:
            disk = self._disk_cache()
            if disk is not None:
                payload = self._disk_op("get", lambda: disk.get(key))
                if payload is not None:
                    try:
                        mesh = decode_mesh(payload, label)
                    except ValueError as exc:
                        self._count("corrupt")
                        log.warning("mesh disk cache entry %s is corrupt (%s): computing it again", key, exc)
                        self._disk_op("delete", lambda: disk.delete(key))
                    else:
                        self._count("disk_hits")
                        return mesh
            mesh = _mesh_tight(mask, tight, vs, simplify, max_error_nm, label)
            self._count("computed")
            if disk is not None:
                self._disk_op("set", lambda: disk.set(key, encode_mesh(mesh)))
            return mesh

        return self._get(("mask", key, label), make, computes=False)

    # ---- forgetting ---------------------------------------------------------------
    def invalidate(self, namespace: str | None = None, ref: Sequence[str] | None = None) -> None:
        """Forget memory entries of one volume (or of one namespace, or all), e.g. after another
        writer changed its labels; the disk tier needs no invalidation (its keys are content digests)."""
        with self._lock:
            for key in list(self._lru.keys()):
                if (namespace is None or key[0] == namespace) and (ref is None or key[1] == tuple(ref)):
                    del self._lru[key]

    def clear(self) -> None:
        """Forget every mesh kept in memory (the disk tier stays; see :func:`clear_mesh_disk`)."""
        self.invalidate()

    def close(self) -> None:
        """Close the disk tier (it reopens on next use)."""
        with self._lock:
            disk, self._disk = self._disk, None
        if disk is not None:
            self._disk_op("close", disk.close)


mesh_cache = MeshCache()


def mesh_disk_dir(cache_config) -> Path:
    """Where the mesh disk tier of a :class:`ndfs.core.config.CacheConfig` lives: ``<cache dir>/meshes``."""
    return Path(cache_config.dir).expanduser() / "meshes"


def configure_mesh_cache(cache_config, cache: MeshCache | None = None) -> MeshCache:
    """Give the process-wide mesh cache (or ``cache``) the disk tier of a :class:`ndfs.core.config.CacheConfig`:
    ``<cache dir>/meshes`` within an eighth of ``disk_bytes`` (at least 64 MiB); none when caching is off.

    The mount calls this at start, so ``ramon/<id>.obj|ply`` meshes survive restarts and are shared by mounts.
    """
    cache = mesh_cache if cache is None else cache
    if getattr(cache_config, "enabled", False):
        cache.use_disk(mesh_disk_dir(cache_config), max(64 * MiB, int(cache_config.disk_bytes) // 8))
    else:
        cache.use_disk(None)
    return cache


def _namespace(backend) -> str:
    ns = getattr(backend, "namespace", None)
    if ns is not None:
        return str(ns)
    root = getattr(backend, "root", None) or getattr(backend, "url", None)
    return f"{backend.kind}:{root}" if root is not None else f"{backend.kind}:{id(backend)}"


def cached_mesh(volume, label_id: int, box: Box | None = None, level: int | None = None, *,
                cache: MeshCache | None = None, simplify: int = 10, max_error_nm: float | None = None,
                slab_bytes: int = 64 * MiB) -> Mesh:
    """:func:`mesh_label` of a Volume through a MeshCache (the process-wide one by default).

    The memory key is ``(namespace, ref, id, level, box, options, epoch)``: the
    epoch of a chunk-cached volume changes with every write made through that
    cache, so such writes never serve an old mesh from memory; call
    ``invalidate`` for other writers. Below that, the mask is read and its
    mesh looked up by content (:meth:`MeshCache.mesh_of_mask`), on disk too
    when the cache has a disk tier.
    """
    label_id = _check_options(label_id, simplify)
    cache = mesh_cache if cache is None else cache
    vol = volume if level is None or level == volume.level_index else volume.level(level)
    box = vol.box if box is None else box
    epoch_of = getattr(vol.backend, "epoch", None)  # the chunk cache bumps a volume's epoch on every write
    epoch = epoch_of(vol.ref) if callable(epoch_of) else 0
    key = (_namespace(vol.backend), vol.ref, label_id, vol.level_index, (box.start, box.stop),
           (int(simplify), max_error_nm), epoch)

    def make() -> Mesh:
        mask, tight, vs = _volume_mask(vol, label_id, box, slab_bytes)
        return cache._of_tight(mask, tight, vs, simplify, max_error_nm, label_id)

    return cache._get(key, make, computes=False)


def clear_mesh_disk(disk_dir) -> int:
    """Remove every mesh from a mesh disk cache directory (no mount needed); returns how many."""
    from ndfs.cache.disk import clear_disk_cache

    return clear_disk_cache(disk_dir)
