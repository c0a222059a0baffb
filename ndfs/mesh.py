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

:class:`MeshCache` memoises meshes by ``(namespace, ref, id, level, box,
options)`` within a byte budget; :func:`cached_mesh` uses a process-wide one.
Everything here is thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

from ndfs.errors import BadRegion, NdfsError, NotFound
from ndfs.geometry import Box

__all__ = ["Mesh", "mesh_label", "to_obj", "to_ply", "save_mesh", "MeshCache", "cached_mesh", "mesh_cache"]

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
        raise NdfsError("meshes need zmesh: pip install 'ndfs[mesh]'") from None
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


def _mask_of_array(labels: np.ndarray, label_id: int, origin) -> tuple[np.ndarray, Box] | None:
    hit = labels == label_id
    if not hit.any():
        return None
    idx = [np.flatnonzero(hit.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo = [int(i[0]) for i in idx]
    hi = [int(i[-1]) + 1 for i in idx]
    tight = Box(tuple(o + a for o, a in zip(origin, lo)), tuple(o + b for o, b in zip(origin, hi)))
    return np.ascontiguousarray(hit[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.uint8), tight


def mesh_label(source, label_id: int, box: Box | None = None, level: int | None = None, *,
               simplify: int = 10, max_error_nm: float | None = None, voxel_size_nm=None, offset=None,
               slab_bytes: int = 64 * MiB) -> Mesh:
    """The closed surface of the voxels equal to ``label_id``, in nm (see the module docstring).

    ``source`` is a Volume (``level`` picks another level of it; ``box``
    limits the search, default the whole level) or a 3-D numpy label array
    (``voxel_size_nm`` (z, y, x), default 1 nm; ``offset`` its first voxel's
    index, default 0). ``simplify`` is zmesh's triangle reduction factor (0 =
    none); ``max_error_nm`` caps how far a simplified vertex moves (default
    zmesh's, one voxel). NotFound if the label has no voxels there.
    """
    from ndfs.volume import Volume

    label_id = int(label_id)
    if label_id <= 0:
        raise BadRegion(f"label ids are positive, got {label_id}")
    if simplify < 0:
        raise BadRegion("simplify is a reduction factor >= 0")
    zmesh = _zmesh()
    if isinstance(source, Volume):
        vol = source if level is None or level == source.level_index else source.level(level)
        box = vol.box if box is None else box
        if not vol.box.contains(box):
            raise BadRegion(f"box {box} is outside {vol.box}")
        vs = tuple(float(v) for v in vol.voxel_size_nm)
        found = _mask_of_volume(vol, label_id, box, slab_bytes)
    else:
        arr = np.asarray(source)
        if arr.ndim != 3:
            raise BadRegion(f"mesh_label takes a Volume or a 3-D label array, got {arr.ndim}-D")
        origin = tuple(int(o) for o in (offset if offset is not None else (0, 0, 0)))
        vs = tuple(float(v) for v in (voxel_size_nm if voxel_size_nm is not None else (1.0, 1.0, 1.0)))
        if box is not None:
            whole = Box.from_shape(arr.shape, origin)
            if not whole.contains(box):
                raise BadRegion(f"box {box} is outside the array {whole}")
            arr, origin = arr[box.slices(origin)], box.start
        found = _mask_of_array(arr, label_id, origin)
    if len(vs) != 3 or min(vs) <= 0:
        raise BadRegion(f"voxel sizes must be three positive numbers, got {vs}")
    if found is None:
        raise NotFound(f"label {label_id} has no voxels in {box if box is not None else 'the volume'}")
    mask, tight = found
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
    return Mesh(vertices=vertices, faces=np.ascontiguousarray(got.faces, dtype=np.uint32), label=label_id)


# ---- cache -----------------------------------------------------------------------
class MeshCache:
    """Meshes memoised by key within ``max_bytes`` (LRU); one computation per key at a time. Thread-safe."""

    def __init__(self, max_bytes: int = 256 * MiB):
        import cachetools

        self._lru = cachetools.LRUCache(maxsize=max_bytes, getsizeof=lambda m: max(1, m.nbytes))
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], Mesh]) -> Mesh:
        with self._lock:
            found = self._lru.get(key)
            if found is not None:
                self.hits += 1
                return found
            gate = self._making.setdefault(key, threading.Lock())
        with gate:  # single flight: a second caller waits for the first one's mesh
            with self._lock:
                found = self._lru.get(key)
                if found is not None:
                    self.hits += 1
                    return found
                self.misses += 1
            mesh = make()
            with self._lock:
                if mesh.nbytes <= self._lru.maxsize:
                    self._lru[key] = mesh
                self._making.pop(key, None)
            return mesh

    def invalidate(self, namespace: str | None = None, ref: Sequence[str] | None = None) -> None:
        """Forget meshes of one volume (or of one namespace, or all), e.g. after its labels changed."""
        with self._lock:
            for key in list(self._lru.keys()):
                if (namespace is None or key[0] == namespace) and (ref is None or key[1] == tuple(ref)):
                    del self._lru[key]

    def clear(self) -> None:
        self.invalidate()


mesh_cache = MeshCache()


def _namespace(backend) -> str:
    ns = getattr(backend, "namespace", None)
    if ns is not None:
        return str(ns)
    root = getattr(backend, "root", None) or getattr(backend, "url", None)
    return f"{backend.kind}:{root}" if root is not None else f"{backend.kind}:{id(backend)}"


def cached_mesh(volume, label_id: int, box: Box | None = None, level: int | None = None, *,
                cache: MeshCache | None = None, **options) -> Mesh:
    """:func:`mesh_label` of a Volume through a MeshCache (the process-wide one by default).

    The key is ``(namespace, ref, id, level, box, options, epoch)``: the epoch of a
    chunk-cached volume changes with every write made through that cache, so
    such writes never serve an old mesh; call ``invalidate`` for other writers.
    """
    vol = volume if level is None or level == volume.level_index else volume.level(level)
    box = vol.box if box is None else box
    # the chunk cache bumps a volume's epoch on every write through it
    epoch_of = getattr(vol.backend, "epoch", None)
    epoch = epoch_of(vol.ref) if callable(epoch_of) else 0
    key = (_namespace(vol.backend), vol.ref, int(label_id), vol.level_index, (box.start, box.stop),
           tuple(sorted(options.items())), epoch)
    return (cache or mesh_cache).get(key, lambda: mesh_label(vol, label_id, box, **options))
