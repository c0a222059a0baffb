"""What every safe decoder checks before it reads data: declared shapes, dtypes and byte counts.

Pure functions; thread-safe.
"""

from __future__ import annotations

import io
import math
from typing import BinaryIO, Sequence

import numpy as np

from ndfs.core.errors import BadInput

MiB = 2**20
#: deflate cannot compress better than about 1032:1 (LZW about 1400:1 past its dictionary resets);
#: data that claims to inflate further than this is lying about its size
MAX_RATIO = 1500
#: the bound a decoder uses when the caller names no shape and no byte count
DEFAULT_MAX_BYTES = 2**30


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"


def nbytes_of(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes of a C array of ``shape`` and ``dtype``, in Python integers (never overflows)."""
    return math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize


def squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if int(s) != 1)


def voxel_dtype(dtype, name: str) -> np.dtype:
    """``dtype`` when it is a plain number type (bool, int, uint, float, complex); BadInput otherwise.

    Object arrays (pickles), structured records, strings and void blobs are what a voxel never is.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise BadInput(f"{name} declares an unknown data type: {exc}") from None
    if dt.kind not in "biufc" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise BadInput(f"{name} holds {dt} values; only numbers (integers, floats) can be voxels")
    return dt


def check_declared(shape: Sequence[int], dtype: np.dtype, name: str, *, want_shape: Sequence[int] | None = None,
                   want_dtype=None, max_bytes: int | None = None) -> int:
    """The declared array's bytes, after checking it against what the caller expects; BadInput if not.

    ``want_shape`` is a box (z, y, x): axes of size 1 may be left out of the file (a plane for a
    box one deep). ``want_dtype`` must match exactly.
    """
    if any(int(s) < 0 for s in shape):
        raise BadInput(f"{name} declares a negative size {tuple(shape)}")
    if want_shape is not None and squeezed(shape) != squeezed(want_shape):
        raise BadInput(f"{name} holds a {shape_text(shape)} array; this file needs {shape_text(want_shape)} (z, y, x)")
    if want_dtype is not None and np.dtype(dtype) != np.dtype(want_dtype):
        raise BadInput(f"{name} holds {np.dtype(dtype)} voxels; this volume stores {np.dtype(want_dtype)} "
                       "(convert the image type before saving)")
    n = nbytes_of(shape, dtype)
    if max_bytes is not None and n > max_bytes:
        raise BadInput(f"{name} declares {shape_text(shape)} {np.dtype(dtype)} voxels ({n} bytes); "
                       f"at most {max_bytes} bytes are expected here")
    return n


def stream_length(fh: BinaryIO) -> int:
    """Bytes in a seekable file (its position is left at 0)."""
    fh.seek(0, io.SEEK_END)
    n = fh.tell()
    fh.seek(0)
    return n


def read_exactly(fh: BinaryIO, n: int, name: str) -> bytearray:
    """Exactly ``n`` bytes from ``fh`` into a new (writable) buffer; BadInput when it ends first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = fh.readinto(view[got:])
        if not k:
            raise BadInput(f"{name} ends after {got} of its {n} bytes of data")
        got += k
    return buf
