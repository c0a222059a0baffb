"""Sharded precomputed files and multi-resolution meshes, as neuroglancer's format documentation describes them.

:func:`read_sharded` finds one key (a segment id) in a ``neuroglancer_uint64_sharded_v1`` layout: the
id, shifted right by ``preshift_bits`` and hashed (``identity`` or ``murmurhash3_x86_128``, the low 64
bits), gives the minishard (its low ``minishard_bits``) and the shard (the next ``shard_bits``, file
``<hex>.shard``); the shard's index (16 bytes per minishard) locates the minishard index, whose three
delta-coded uint64 rows are ids, offsets and sizes. Everything is read with byte ranges, so a lookup
costs three small reads, never a whole shard. Gzip is inflated within a bound.

:func:`decode_multilod` turns a ``neuroglancer_multilod_draco`` manifest and its fragment data into the
finest level of detail as one mesh in nm: each Draco fragment's quantised positions are placed by the
manifest's grid (``grid_origin + vertex_offset + chunk_shape * (position + q / (2**bits - 1))``) and
mapped to nm by the mesh info's ``transform``. Draco needs DracoPy (the ``formats`` extra), murmurhash
the ``mmh3`` package; both are imported when first needed. Pure functions over a Location; thread-safe.
"""

from __future__ import annotations

import struct

import numpy as np

from ndfs.core.errors import BackendError, MissingExtra
from ndfs.stores.tstore import Location

#: the most bytes one sharded value or minishard index may inflate to
MAX_VALUE_BYTES = 1 << 30


def _hash(spec: dict, key: int) -> int:
    shifted = (int(key) >> int(spec.get("preshift_bits", 0))) & (2**64 - 1)
    kind = spec.get("hash", "identity")
    if kind == "identity":
        return shifted
    if kind == "murmurhash3_x86_128":
        try:
            import mmh3
        except ImportError:
            raise MissingExtra("murmurhash-sharded precomputed data needs mmh3: pip install 'ndfs[formats]'") from None
        return mmh3.hash128(struct.pack("<Q", shifted), seed=0, x64arch=False, signed=False) & (2**64 - 1)
    raise BackendError(f"unknown sharding hash {kind!r}")


def _inflate(data: bytes, encoding: str, what: str) -> bytes:
    if encoding == "raw":
        return data
    if encoding == "gzip":
        from ndfs.formats.safe.codecs import inflate

        return inflate(data, MAX_VALUE_BYTES, what, gzip=True)
    raise BackendError(f"{what}: unknown encoding {encoding!r}")


def locate(loc: Location, spec: dict, key: int) -> tuple[str, int, int] | None:
    """(shard file, byte offset, byte size) of ``key``'s stored value, or None when the shard lacks it."""
    if spec.get("@type") != "neuroglancer_uint64_sharded_v1":
        raise BackendError(f"unknown sharding {spec.get('@type')!r}")
    minishard_bits, shard_bits = int(spec.get("minishard_bits", 0)), int(spec.get("shard_bits", 0))
    hashed = _hash(spec, key)
    minishard = hashed & ((1 << minishard_bits) - 1)
    shard = (hashed >> minishard_bits) & ((1 << shard_bits) - 1)
    digits = -(-shard_bits // 4)
    name = f"{shard:0{digits}x}.shard" if digits else f"{shard:x}.shard"
    index_bytes = 16 << minishard_bits
    entry = loc.read_range(name, 16 * minishard, 16 * minishard + 16)
    if entry is None:
        return None
    if len(entry) != 16:
        raise BackendError(f"the shard index of {name} in {loc!r} is truncated")
    start, stop = struct.unpack("<QQ", entry)
    if stop <= start:
        return None
    raw = loc.read_range(name, index_bytes + start, index_bytes + stop)
    if raw is None or len(raw) != stop - start:
        raise BackendError(f"minishard {minishard} of {name} in {loc!r} is truncated")
    table = _inflate(raw, spec.get("minishard_index_encoding", "raw"), f"minishard {minishard} of {name}")
    if len(table) % 24:
        raise BackendError(f"minishard {minishard} of {name} in {loc!r} is not a minishard index")
    rows = np.frombuffer(table, "<u8").reshape(3, -1)
    ids = np.cumsum(rows[0], dtype=np.uint64)
    where = np.nonzero(ids == np.uint64(key))[0]
    if not len(where):
        return None
    i = int(where[0])
    sizes = rows[2].astype(np.int64)
    offsets = np.cumsum(rows[1].astype(np.int64)) + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return name, index_bytes + int(offsets[i]), int(sizes[i])


def read_sharded(loc: Location, spec: dict, key: int) -> bytes | None:
    """The value stored for ``key`` in a sharded layout (inflated), or None when it is absent."""
    found = locate(loc, spec, key)
    if found is None:
        return None
    name, offset, size = found
    data = loc.read_range(name, offset, offset + size)
    if data is None or len(data) != size:
        raise BackendError(f"the value of {key} in {name} of {loc!r} is truncated")
    return _inflate(data, spec.get("data_encoding", "raw"), f"the value of {key} in {name}")


def parse_manifest(data: bytes, what: str) -> dict:
    """The fields of a multi-resolution mesh manifest (``<id>.index``)."""
    try:
        chunk_shape = np.frombuffer(data, "<f4", 3, 0).astype(np.float64)
        grid_origin = np.frombuffer(data, "<f4", 3, 12).astype(np.float64)
        (num_lods,) = struct.unpack_from("<I", data, 24)
        pos = 28
        lod_scales = np.frombuffer(data, "<f4", num_lods, pos)
        pos += 4 * num_lods
        vertex_offsets = np.frombuffer(data, "<f4", 3 * num_lods, pos).reshape(num_lods, 3).astype(np.float64)
        pos += 12 * num_lods
        counts = np.frombuffer(data, "<u4", num_lods, pos)
        pos += 4 * num_lods
        positions, sizes = [], []
        for n in counts.tolist():
            positions.append(np.frombuffer(data, "<u4", 3 * n, pos).reshape(3, n).T.astype(np.float64))
            pos += 12 * n
            sizes.append(np.frombuffer(data, "<u4", n, pos).astype(np.int64))
            pos += 4 * n
    except (ValueError, struct.error) as exc:
        raise BackendError(f"{what} is not a multi-resolution mesh manifest: {exc}") from None
    if pos != len(data):
        raise BackendError(f"{what} holds {len(data) - pos} bytes past its manifest")
    return {"chunk_shape": chunk_shape, "grid_origin": grid_origin, "lod_scales": lod_scales,
            "vertex_offsets": vertex_offsets, "positions": positions, "sizes": sizes}


def decode_multilod(manifest: dict, data: bytes, info: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The finest level of detail of a multi-resolution mesh, as (vertices float32 (N, 3) nm, faces uint32)."""
    try:
        import DracoPy
    except ImportError:
        raise MissingExtra("multi-resolution meshes need DracoPy: pip install 'ndfs[formats]'") from None
    bits = int(info.get("vertex_quantization_bits", 10))
    transform = np.asarray(info.get("transform", [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]), np.float64).reshape(3, 4)
    sizes, positions = manifest["sizes"][0], manifest["positions"][0]
    if int(sum(int(s.sum()) for s in manifest["sizes"])) > len(data):
        raise BackendError(f"{what}: the fragment data is shorter than its manifest says")
    verts, faces, base, offset = [], [], 0, 0
    for size, where in zip(sizes.tolist(), positions):
        chunk = data[offset:offset + size]
        offset += size
        if not size:  # an empty fragment: allowed, it holds nothing
            continue
        try:
            mesh = DracoPy.decode(chunk)
        except Exception as exc:  # DracoPy raises its own error types
            raise BackendError(f"{what}: a fragment is not Draco: {exc}") from None
        q = np.asarray(mesh.points, np.float64).reshape(-1, 3)
        f = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
        stored = (manifest["grid_origin"] + manifest["vertex_offsets"][0]
                  + manifest["chunk_shape"] * (where + q / (2**bits - 1)))
        verts.append(stored @ transform[:, :3].T + transform[:, 3])
        faces.append(f + base)
        base += len(q)
    if not verts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    return np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.uint32)


__all__ = ["read_sharded", "locate", "parse_manifest", "decode_multilod"]
