"""Neuroglancer precomputed metadata and mesh fragments, shared by the ``precomputed`` remote (which reads
and makes layers) and ``ndfs serve --protocol precomputed`` (which shows any store as layers). Pure.

* :func:`info_document`: the ``info`` of a multiscale volume with a :class:`~ndfs.core.info.VolumeInfo`'s
  levels: one scale per level (``size``, ``voxel_offset``, ``resolution`` in nm, x y z), chunks the
  level's chunk shape clipped to the level; ``raw`` images, ``compressed_segmentation`` (8x8x8 blocks)
  for uint32/uint64 annotation channels. Scale keys are the level numbers, or (``keys="resolution"``,
  as CloudVolume names them) the voxel size, ``4_4_40``.
* :func:`legacy_fragment` and :func:`decode_legacy_fragment`: a legacy mesh fragment (uint32 vertex
  count, float32 x y z vertices in nm, uint32 triangle indices; little-endian) to and from arrays.
"""

from __future__ import annotations

import struct

import numpy as np

from ndfs.core.errors import BackendError, BadRegion
from ndfs.core.info import VolumeInfo

#: data types precomputed (neuroglancer, tensorstore, CloudVolume) holds
DATA_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
#: compressed_segmentation block size, x y z
BLOCK = (8, 8, 8)


def is_segmentation(info: VolumeInfo) -> bool:
    return info.kind == "annotation" and info.dtype.kind in "iu"


def encoding(info: VolumeInfo) -> str:
    if is_segmentation(info) and info.dtype.name in ("uint32", "uint64"):
        return "compressed_segmentation"
    return "raw"


def chunk_shape_xyz(info: VolumeInfo, level: int) -> list[int]:
    lv = info.level(level)
    return [int(min(c, s)) for c, s in zip(lv.chunk_shape[::-1], lv.shape[::-1])]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def info_document(info: VolumeInfo, *, keys: str = "level", mesh: str | None = None,
                  properties: str | None = None) -> dict:
    """The precomputed ``info`` of ``info``'s levels (see the module doc); ``mesh`` and ``properties`` name
    the layer's mesh and segment-properties folders. BadRegion for a data type precomputed lacks."""
    if info.dtype.name not in DATA_TYPES:
        raise BadRegion(f"precomputed has no {info.dtype.name} data type (it has {', '.join(DATA_TYPES)})")
    enc = encoding(info)
    scales, used = [], set()
    for i, lv in enumerate(info.levels):
        res = [float(v) for v in lv.voxel_size_nm[::-1]]
        key = str(i)
        if keys == "resolution":
            key = "_".join(_number(v) for v in res)
            key = f"{key}_{i}" if key in used else key
        used.add(key)
        scale = {"key": key, "size": list(lv.shape[::-1]), "voxel_offset": list(lv.offset[::-1]),
                 "resolution": res, "chunk_sizes": [chunk_shape_xyz(info, i)], "encoding": enc}
        if enc == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = list(BLOCK)
        scales.append(scale)
    doc = {"@type": "neuroglancer_multiscale_volume", "type": "segmentation" if is_segmentation(info) else "image",
           "data_type": info.dtype.name, "num_channels": 1, "scales": scales}
    if mesh:
        doc["mesh"] = mesh
    if properties:
        doc["segment_properties"] = properties
    return doc


def legacy_fragment(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """A legacy mesh fragment: uint32 count, float32 xyz vertices (nm), uint32 triangles."""
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.ascontiguousarray(faces, dtype="<u4")
    return struct.pack("<I", len(v)) + v.tobytes() + f.tobytes()


def decode_legacy_fragment(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32 (N, 3) in nm, faces uint32 (M, 3)) of one legacy mesh fragment; BackendError
    naming ``what`` when the bytes are not one."""
    if len(data) < 4:
        raise BackendError(f"{what} is truncated")
    (n,) = struct.unpack_from("<I", data)
    end = 4 + 12 * n
    rest = len(data) - end
    if rest < 0 or rest % 12:
        raise BackendError(f"{what} holds {len(data)} bytes, not a legacy mesh of {n} vertices")
    v = np.frombuffer(data, "<f4", 3 * n, 4).reshape(n, 3)
    f = np.frombuffer(data, "<u4", rest // 4, end).reshape(-1, 3)
    if len(f) and f.max() >= n:
        raise BackendError(f"{what} names vertices it does not have")
    return v, f
