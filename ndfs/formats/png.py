"""Virtual PNG files: an 8- or 16-bit greyscale plane as a PNG of exact, data-independent size.

The image data are deflate *stored* blocks (no compression), so the file size follows from
width, height and bit depth alone (``ls -l`` reads nothing) and every byte range maps to pixel
rows, as in the virtual TIFF. Only the standard library's ``zlib.crc32``/``zlib.adler32`` are
needed, so PNG costs no runtime dependency. Layout::

    signature | IHDR | pHYs (when the pixel size fits) | IDAT 0 ... IDAT n-1 | IDAT(adler32) | IEND

IDAT chunk i holds stored block i (at most 65,535 bytes of the filtered image stream, filter
type 0 before each row); chunk 0 also starts the zlib stream (2-byte header). The zlib
checksum (Adler-32 of the whole stream) sits alone in the last IDAT, so reading any other chunk
needs only the rows it holds; reading the end of the file needs the whole plane. Pillow, ImageJ,
ImageMagick and libpng accept this (tests/test_views.py, tests/test_fiji.py).
Immutable and thread-safe.
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable

import numpy as np

__all__ = ["PngLayout", "pixels_per_metre"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLOCK = 65535  # bytes of image stream per stored deflate block (the format's maximum)
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, fastest (stored)
_ROW_GROUP_BYTES = 8 << 20  # rows per get_rows call when checksumming the whole plane

GetRows = Callable[[int, int, int], np.ndarray]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixels_per_metre(voxel_nm: float) -> int | None:
    """PNG pHYs value for a pixel size in nm, or None when it does not fit the field."""
    ppm = round(1e9 / voxel_nm)
    return ppm if 1 <= ppm < 2**31 else None


class PngLayout:
    """Geometry and byte map of one virtual greyscale PNG; immutable and thread-safe.

    ``dtype`` is uint8 or uint16 (written big-endian, as PNG wants). ``pixel_size_nm`` is
    (row, column) size, written as a pHYs chunk in pixels per metre when both fit.
    """

    def __init__(self, height: int, width: int, dtype, pixel_size_nm: tuple[float, float] | None = None):
        dt = np.dtype(dtype)
        if dt not in (np.dtype("u1"), np.dtype("u2")):
            raise ValueError(f"PNG planes are uint8 or uint16, not {dt}")
        if height < 1 or width < 1 or height >= 2**31 or width >= 2**31:
            raise ValueError(f"PNG size {width}x{height} is out of range")
        self.height, self.width = int(height), int(width)
        self.dtype = dt.newbyteorder(">")
        self.bit_depth = 8 * dt.itemsize
        self.row_len = 1 + self.width * dt.itemsize  # filter byte + samples
        self.stream_len = self.height * self.row_len
        head = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height,
                                                       self.bit_depth, 0, 0, 0, 0))
        if pixel_size_nm is not None:
            ppm_y, ppm_x = (pixels_per_metre(v) for v in pixel_size_nm)
            if ppm_x and ppm_y:
                head += _chunk(b"pHYs", struct.pack(">IIB", ppm_x, ppm_y, 1))
        self._head = head
        self.n_blocks = -(-self.stream_len // BLOCK)
        self.idat_start = len(head)
        self._chunk_size = 12 + 5 + BLOCK  # a full IDAT chunk after the first
        last = self.n_blocks - 1
        self.adler_start = self._chunk_offset(last) + 12 + 5 + (self.stream_len - last * BLOCK) \
            + (2 if last == 0 else 0)
        self._tail_start = self.adler_start + 16
        self.size = self._tail_start + 12  # IEND

    def _chunk_offset(self, i: int) -> int:
        return self.idat_start + (2 if i > 0 else 0) + i * self._chunk_size

    def _chunk_at(self, offset: int) -> int:
        rel = offset - self.idat_start
        return 0 if rel < self._chunk_size + 2 else (rel - 2) // self._chunk_size

    # -- the filtered image stream -----------------------------------------------------

    def _stream(self, s: int, e: int, get_rows: GetRows) -> bytes:
        """Bytes [s, e) of the filtered image stream (one get_rows call)."""
        r0, r1 = s // self.row_len, -(-e // self.row_len)
        arr = np.asarray(get_rows(0, r0, r1))
        if arr.shape != (r1 - r0, self.width):
            raise ValueError(f"get_rows(0, {r0}, {r1}) returned shape {arr.shape}, "
                             f"expected {(r1 - r0, self.width)}")
        rows = np.zeros((r1 - r0, self.row_len), np.uint8)
        rows[:, 1:] = np.ascontiguousarray(arr.astype(self.dtype, copy=False)).view(np.uint8)
        base = r0 * self.row_len
        return rows.reshape(-1)[s - base:e - base].tobytes()

    def checksum(self, get_rows: GetRows) -> int:
        """Adler-32 of the whole image stream: reads every row, in groups of a few MiB."""
        step = max(1, _ROW_GROUP_BYTES // self.row_len)
        value = 1
        for r0 in range(0, self.height, step):
            r1 = min(self.height, r0 + step)
            value = zlib.adler32(self._stream(r0 * self.row_len, r1 * self.row_len, get_rows), value)
        return value

    def _idat(self, i: int, payload: bytes) -> bytes:
        final = 1 if i == self.n_blocks - 1 else 0
        n = len(payload)
        data = (ZLIB_HEADER if i == 0 else b"") + struct.pack("<BHH", final, n, n ^ 0xFFFF) + payload
        return _chunk(b"IDAT", data)

    # -- serving -------------------------------------------------------------------------

    def read(self, offset: int, size: int, get_rows: GetRows,
             checksum: Callable[[], int] | None = None) -> bytes:
        """Bytes [offset, offset+size) of the file, clipped at EOF.

        ``get_rows(0, y0, y1)`` returns rows y0..y1 of the plane (shape (y1-y0, width));
        ``checksum()`` returns :meth:`checksum` (pass a memoised one: it reads the whole plane).
        """
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset/size: {offset}, {size}")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts = []
        if offset < self.idat_start:
            parts.append(self._head[offset:min(end, self.idat_start)])
        a, b = max(offset, self.idat_start), min(end, self.adler_start)
        if a < b:
            i0, i1 = self._chunk_at(a), self._chunk_at(b - 1)
            s, e = i0 * BLOCK, min((i1 + 1) * BLOCK, self.stream_len)
            stream = self._stream(s, e, get_rows)
            chunks = b"".join(self._idat(i, stream[i * BLOCK - s:(i + 1) * BLOCK - s])
                              for i in range(i0, i1 + 1))
            base = self._chunk_offset(i0)
            parts.append(chunks[a - base:b - base])
        a, b = max(offset, self.adler_start), end
        if a < b:
            value = checksum() if checksum is not None else self.checksum(get_rows)
            tail = _chunk(b"IDAT", struct.pack(">I", value)) + _chunk(b"IEND", b"")
            parts.append(tail[a - self.adler_start:b - self.adler_start])
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"PngLayout({self.width}x{self.height} {self.bit_depth}-bit, size={self.size})"
