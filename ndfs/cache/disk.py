"""The disk tier's storage format and the helpers the CLI uses without a mount.

A chunk on disk is one ``diskcache`` value: a fixed header (magic ``NDC1``,
dtype string length, ZYX shape, crc32 of the raw C-order bytes), the dtype
string (``numpy.dtype.str``, e.g. ``|u1``, ``<u2``), then the Zstd-compressed
raw bytes (numcodecs, level 1). :func:`decode_chunk` refuses anything whose
dtype, shape, length or checksum is not what the chunk must be.

The cache directory is a ``diskcache.Cache`` (SQLite in WAL mode, documented
thread- and process-safe) opened with a byte ``size_limit`` and the
least-recently-used eviction policy; its settings persist in the directory,
so opening it without settings (as the helpers here do) keeps them.
All functions are pure or thread-safe.
"""

from __future__ import annotations

import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

_HEAD = struct.Struct("<4sB3QI")  # magic, len(dtype str), shape zyx, crc32 of raw bytes
_MAGIC = b"NDC1"


@lru_cache(maxsize=1)
def _codec():
    import numcodecs  # lazily: nothing heavy at import time

    return numcodecs.Zstd(level=1)


def encode_chunk(arr: np.ndarray) -> bytes:
    """The disk payload of one chunk: header, dtype string, Zstd body. Pure, thread-safe."""
    raw = np.ascontiguousarray(arr)
    dt = raw.dtype.str.encode()
    head = _HEAD.pack(_MAGIC, len(dt), *raw.shape, zlib.crc32(raw.data))
    return head + dt + bytes(_codec().encode(raw))


def decode_chunk(payload, dtype, shape: Sequence[int]) -> np.ndarray:
    """Decode a payload into a read-only array; ValueError unless dtype, shape and crc all match."""
    try:
        magic, n, *dims, crc = _HEAD.unpack_from(payload)
        if magic != _MAGIC:
            raise ValueError("bad magic")
        dt = np.dtype(bytes(payload[_HEAD.size:_HEAD.size + n]).decode("ascii"))
        if dt != np.dtype(dtype) or tuple(dims) != tuple(shape):
            raise ValueError(f"holds {dt}{tuple(dims)}, expected {np.dtype(dtype)}{tuple(shape)}")
        raw = _codec().decode(payload[_HEAD.size + n:])
        if len(raw) != dt.itemsize * int(np.prod(dims)) or zlib.crc32(raw) != crc:
            raise ValueError("checksum mismatch")
    except ValueError:
        raise
    except Exception as exc:  # struct.error, codec errors, wrong payload type
        raise ValueError(f"undecodable payload: {exc}") from exc
    return np.frombuffer(raw, dtype=dt).reshape(tuple(dims))


#: share of the disk budget given to chunk payloads: diskcache culls only after a store, and its
#: SQLite index and write-ahead log take room too, so the rest keeps the directory within budget
PAYLOAD_SHARE = 0.85


def open_disk_cache(disk_dir: str | os.PathLike, size_limit: int):
    """Open (creating if needed) a cache directory with ndfs's settings; `size_limit` is the whole budget."""
    import diskcache

    return diskcache.Cache(str(disk_dir), size_limit=int(size_limit * PAYLOAD_SHARE),
                           eviction_policy="least-recently-used", tag_index=True)


def disk_cache_info(disk_dir: str | os.PathLike) -> dict:
    """Entries, bytes and size limit of a disk cache directory (no mount needed)."""
    p = Path(disk_dir).expanduser()
    if not (p / "cache.db").is_file():
        return {"dir": str(p), "entries": 0, "bytes": 0, "size_limit": None}
    import diskcache

    with diskcache.Cache(str(p)) as c:  # opening without settings keeps the stored ones
        return {"dir": str(p), "entries": len(c), "bytes": c.volume(), "size_limit": c.size_limit}


def clear_disk_cache(disk_dir: str | os.PathLike) -> int:
    """Remove every entry (all namespaces) from a disk cache directory; returns how many."""
    p = Path(disk_dir).expanduser()
    if not (p / "cache.db").is_file():
        return 0
    import diskcache

    with diskcache.Cache(str(p)) as c:
        return c.clear()

