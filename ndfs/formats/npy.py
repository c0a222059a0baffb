"""Virtual ``.npy`` files: exact size and any byte range of a 3-D array without building it.

An :class:`NpyLayout` is the NumPy format (version 1.0 header, then the C-order raw bytes of a
ZYX array, little-endian) of a volume that lives in a backend. Its size is known from shape and
dtype alone, and :meth:`NpyLayout.read` serves any byte range by asking a callback for the pixel
rows it covers, so ``numpy.load(path, mmap_mode="r")`` on a mount reads only what is indexed::

    magic + version + header length + header dict (padded, 64-byte aligned) | plane 0 ... plane N-1

:func:`plane_bytes` is the shared piece that turns a byte range of consecutive planes into
``get_rows`` calls; the virtual TIFF uses it for its pixel part too. Immutable and thread-safe.
"""

from __future__ import annotations

import io
from typing import Callable, Iterator

import numpy as np

__all__ = ["NpyLayout", "plane_bytes"]

GetRows = Callable[[int, int, int], np.ndarray]


def plane_bytes(a: int, b: int, height: int, width: int, dtype: np.dtype,
                get_rows: GetRows) -> Iterator[memoryview]:
    """Yield bytes [a, b) of consecutive C-order planes of ``height x width`` ``dtype`` voxels.

    ``get_rows(plane, y0, y1)`` is called once per plane touched and must return an array of
    shape (y1-y0, width) castable to ``dtype`` (which carries the byte order written).
    """
    rb = width * dtype.itemsize
    P = height * rb
    for z in range(a // P, (b - 1) // P + 1):
        pa, pb = max(a - z * P, 0), min(b - z * P, P)
        y0, y1 = pa // rb, -(-pb // rb)
        arr = np.asarray(get_rows(z, y0, y1))
        if arr.shape != (y1 - y0, width):
            raise ValueError(f"get_rows({z}, {y0}, {y1}) returned shape {arr.shape}, "
                             f"expected {(y1 - y0, width)}")
        arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
        yield memoryview(arr).cast("B")[pa - y0 * rb:pb - y0 * rb]


class NpyLayout:
    """Byte map of a virtual ``.npy`` holding a ZYX array; immutable and thread-safe."""

    def __init__(self, shape: tuple[int, int, int], dtype):
        dt = np.dtype(dtype)
        if dt.kind not in "uifb" or dt.hasobject:
            raise ValueError(f"unsupported .npy dtype {dt}")
        if len(shape) != 3 or min(shape) < 0:
            raise ValueError(f"shape must be three sizes (z, y, x), got {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dt.newbyteorder("<") if dt.itemsize > 1 else dt
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": self.shape})
        self._head = buf.getvalue()
        self.data_start = len(self._head)
        n, h, w = self.shape
        self.height, self.width = h, w
        self.plane_bytes = h * w * self.dtype.itemsize
        self.size = self.data_start + n * self.plane_bytes

    def read(self, offset: int, size: int, get_rows: GetRows) -> bytes:
        """Bytes [offset, offset+size) of the file, clipped at EOF; same ``get_rows`` contract
        as :meth:`ndfs.formats.tiff.TiffLayout.read` (never called for header-only ranges)."""
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset/size: {offset}, {size}")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts: list = []
        if offset < self.data_start:
            parts.append(self._head[offset:min(end, self.data_start)])
        a, b = max(offset, self.data_start), end
        if a < b:
            parts.extend(plane_bytes(a - self.data_start, b - self.data_start, self.height,
                                     self.width, self.dtype, get_rows))
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"NpyLayout({self.shape}, {self.dtype.str}, data_start={self.data_start}, size={self.size})"
