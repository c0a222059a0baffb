"""Virtual TIFF files: exact size and any byte range of a TIFF stack without building it.

A :class:`TiffLayout` describes a classic little-endian, uncompressed, striped TIFF holding
``n_planes`` planes of ``height x width`` voxels, with an ImageJ description so that ImageJ,
tifffile, libtiff, Pillow and GDAL all read it (spec ``fuse-tiff-cache.md`` section 2)::

    header(8) | IFD0 | IFD0 values | pad to 16 | plane 0 ... plane N-1 | pad to 2 | IFD1 ... IFD(N-1)

The FUSE layer reports :attr:`TiffLayout.size` at getattr and answers ``read()`` requests with
:meth:`TiffLayout.read`, which computes header and IFD bytes and asks a callback for pixel rows.
A layout is immutable after construction (a ``display_range`` callable is resolved once, under
a lock, at the first header read) and holds no per-request state, so one instance may serve any
number of threads at once.

Deviation from the spec's offset formula: when ``data_end`` is odd (odd plane sizes, e.g. 7x13
uint8) one zero byte precedes IFD1, because TIFF requires IFDs to start on a word boundary.
"""

from __future__ import annotations

import struct
import threading
from fractions import Fraction

import numpy as np

from ndfs.formats.npy import plane_bytes

__all__ = ["TiffLayout"]

_U32 = 2**32 - 1
_SHORT, _ASCII, _LONG, _RATIONAL = 3, 2, 4, 5
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
_SUPPORTED = {"u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (4, 8)}
_TOO_BIG = ("a plane of %d bytes cannot be addressed by a classic TIFF (offsets past 4 GiB);"
            " BigTIFF is not supported yet")
_STRIP_TARGET = 64 * 1024  # single-plane files: at most this many bytes per strip (>= 1 row)


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _pixels_per_unit(voxel: float) -> tuple[int, int]:
    """TIFF RATIONAL (numerator, denominator) for 1/voxel: 4 -> (1, 4), 0.3 -> (10, 3)."""
    f = 1 / Fraction(str(voxel))  # decimal repr: 0.3 -> 3/10, not the binary expansion
    if f.numerator > _U32 or f.denominator > _U32:
        f = f.limit_denominator(max(1, min(_U32, int(_U32 / f))))
    if f.numerator == 0 or f.numerator > _U32:
        raise ValueError(f"voxel size {voxel!r} cannot be written as a TIFF RATIONAL")
    return f.numerator, f.denominator


def _fmt(x: float) -> str:
    return repr(float(x))  # "4.0", "0.3", "1e-05": all parsed by Java's Double.parseDouble


def _pack_ifd(offset: int, tags: list, next_ifd: int) -> bytes:
    """Pack one IFD at file ``offset`` with its out-of-line values right after it.

    ``tags`` holds (tag, type, values) sorted by tag; values are a tuple of ints, a pair list
    for RATIONAL, or bytes for ASCII.  Returns the IFD followed by its out-of-line values.
    """
    entries, extra = [], bytearray()
    values_at = offset + 2 + 12 * len(tags) + 4
    for tag, typ, vals in tags:
        if typ == _ASCII:
            raw, count = bytes(vals), len(vals)
        elif typ == _RATIONAL:
            raw, count = b"".join(struct.pack("<II", *r) for r in vals), len(vals)
        else:
            raw = struct.pack("<%d%s" % (len(vals), "H" if typ == _SHORT else "I"), *vals)
            count = len(vals)
        if len(raw) <= 4:
            field = raw.ljust(4, b"\0")
        else:
            if len(extra) % 2:
                extra += b"\0"  # values start on a word boundary
            field = struct.pack("<I", values_at + len(extra))
            extra += raw
        entries.append(struct.pack("<HHI", tag, typ, count) + field)
    head = struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", next_ifd)
    return head + bytes(extra)


class TiffLayout:
    """Geometry and byte map of one virtual TIFF stack; immutable and thread-safe.

    ``voxel_size`` is (z, y, x) in ``unit``.  ``single_ifd=None`` picks the single-IFD ImageJ
    variant only when a multi-IFD file would not fit 32-bit offsets; True/False force it.
    ``display_range`` adds ImageJ's ``min=``/``max=`` to the description: a (min, max) pair, or
    (integer types only) a zero-argument callable returning one, called once at the first read
    of the header (e.g. to look at the data only when the file is opened). Integer ranges are
    written zero-padded to the type's width, so the header size never depends on the values.
    """

    def __init__(self, n_planes: int, height: int, width: int, dtype,
                 voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 unit: str = "nm", single_ifd: bool | None = None,
                 display_range: tuple[float, float] | None = None):
        dt = np.dtype(dtype)
        if dt.kind not in _SUPPORTED or dt.itemsize not in _SUPPORTED[dt.kind]:
            raise ValueError(f"unsupported TIFF sample type {dt} (use (u)int8-64, float32/64)")
        if min(n_planes, height, width) < 1:
            raise ValueError(f"empty volume: {n_planes} x {height} x {width}")
        self.n_planes, self.height, self.width = int(n_planes), int(height), int(width)
        self.dtype = dt.newbyteorder("<")  # what read() emits
        self.voxel_size = tuple(float(v) for v in voxel_size)
        if len(self.voxel_size) != 3 or not all(0 < v < float("inf") for v in self.voxel_size):
            raise ValueError(f"voxel_size must be 3 positive finite (z, y, x), got {voxel_size}")
        self.unit = unit
        self.row_bytes = self.width * dt.itemsize
        self.plane_bytes = self.height * self.row_bytes
        if self.plane_bytes > _U32:
            raise ValueError(_TOO_BIG % self.plane_bytes)
        n = self.n_planes

        if n == 1:
            rows = max(1, min(self.height, _STRIP_TARGET // self.row_bytes))
        else:
            rows = self.height
        self.rows_per_strip = rows
        self._pending_range = display_range if callable(display_range) else None
        if self._pending_range is not None:
            if dt.kind not in "ui":
                raise ValueError("a display_range callable needs an integer sample type")
            display_range = (0, 0)  # placeholder of the same width as any real range
        self.display_range = None if display_range is None else self._range(display_range)
        self._head_lock = threading.Lock()

        # Multi-IFD needs every offset (hence the whole file) below 2**32.
        multi_head = self._build_ifd0(single=False)
        multi_end = len(multi_head) + n * self.plane_bytes
        trailer = _align(multi_end, 2) if n > 1 else multi_end
        multi_size = trailer + (n - 1) * self._trailer_ifd_size()
        if single_ifd is None:
            single_ifd = n > 1 and multi_size > _U32 + 1
        self.single_ifd = bool(single_ifd) and n > 1

        head = self._build_ifd0(single=True) if self.single_ifd else multi_head
        self._head = head
        self.data_start = len(head)
        self.data_end = self.data_start + n * self.plane_bytes
        if self.single_ifd:
            self.trailer_start, self.ifd_size, self.size = self.data_end, 0, self.data_end
        else:
            if multi_size > _U32 + 1:
                raise ValueError(f"multi-IFD TIFF of {multi_size} bytes exceeds 32-bit offsets;"
                                 " use single_ifd=None or True")
            self.trailer_start = trailer
            self.ifd_size = self._trailer_ifd_size()
            self.size = multi_size
            self._trailer_template = np.frombuffer(self._trailer_ifd(1), np.uint8)
            tags = [t[0] for t in self._common_tags([0], [0])]
            self._trailer_cols = tuple(2 + 12 * tags.index(t) + 8 for t in (273, 282, 283))

    # -- header and IFDs ---------------------------------------------------------------

    def _description(self) -> bytes:
        n = self.n_planes
        unit = {"um": "micron", "µm": "micron", "\u03bcm": "micron"}.get(self.unit, self.unit)
        text = (f"ImageJ=1.11a\nimages={n}\nslices={n}\nchannels=1\nframes=1\n"
                f"unit={unit}\nspacing={_fmt(self.voxel_size[0])}\nloop=false\n")
        rng = self.display_range
        if rng is not None:
            text += f"min={self._fmt_value(rng[0])}\nmax={self._fmt_value(rng[1])}\n"
        try:
            return text.encode("ascii") + b"\0"
        except UnicodeEncodeError:
            raise ValueError(f"unit {self.unit!r} is not ASCII") from None

    def _range(self, rng) -> tuple:
        lo, hi = (float(v) for v in rng)
        if self.dtype.kind in "ui" and (self._pending_range is not None
                                        or (lo.is_integer() and hi.is_integer())):
            info = np.iinfo(self.dtype)
            lo, hi = (int(min(max(round(v), info.min), info.max)) for v in (lo, hi))
        return lo, hi

    def _fmt_value(self, v) -> str:
        if isinstance(v, int):  # integer sample types: fixed width, e.g. 00012 for uint16
            info = np.iinfo(self.dtype)
            return f"{v:0{len(str(info.max)) + (info.min < 0)}d}"
        return _fmt(v)

    @property
    def header(self) -> bytes:
        """The first ``data_start`` bytes; resolves a display_range callable on first use."""
        if self._pending_range is not None:
            with self._head_lock:
                if self._pending_range is not None:
                    self.display_range = self._range(self._pending_range())
                    head = self._build_ifd0(single=self.single_ifd)
                    if len(head) != self.data_start:  # cannot happen: fixed-width values
                        raise AssertionError("TIFF header size changed with the display range")
                    self._head, self._pending_range = head, None
        return self._head

    def _common_tags(self, strip_offsets, strip_counts) -> list:
        """Tags of any IFD, ascending, without ImageDescription."""
        kind = self.dtype.kind
        return [
            (256, _LONG, (self.width,)),
            (257, _LONG, (self.height,)),
            (258, _SHORT, (self.dtype.itemsize * 8,)),
            (259, _SHORT, (1,)),
            (262, _SHORT, (1,)),
            (273, _LONG, tuple(strip_offsets)),
            (277, _SHORT, (1,)),
            (278, _LONG, (self.rows_per_strip,)),
            (279, _LONG, tuple(strip_counts)),
            (282, _RATIONAL, [_pixels_per_unit(self.voxel_size[2])]),
            (283, _RATIONAL, [_pixels_per_unit(self.voxel_size[1])]),
            (296, _SHORT, (1,)),
            (339, _SHORT, (_SAMPLE_FORMAT[kind],)),
        ]

    def _build_ifd0(self, single: bool) -> bytes:
        """Header + IFD0 + its values, zero-padded to 16: the file's first data_start bytes."""
        rows, H, rb = self.rows_per_strip, self.height, self.row_bytes
        counts = [min(rows, H - y) * rb for y in range(0, H, rows)]

        def pack(data_start: int, next_ifd: int) -> bytes:
            tags = self._common_tags([data_start + y * rb for y in range(0, H, rows)], counts)
            tags.insert(5, (270, _ASCII, self._description()))
            return _pack_ifd(8, tags, next_ifd)

        # The IFD's length does not depend on the offsets in it: size it, then fill it in.
        data_start = _align(8 + len(pack(0, 0)), 16)
        if data_start + self.plane_bytes > _U32 + 1:
            raise ValueError(_TOO_BIG % self.plane_bytes)
        nxt = 0
        if not single and self.n_planes > 1:
            nxt = _align(data_start + self.n_planes * self.plane_bytes, 2)  # IFD1
        ifd = pack(data_start, nxt if nxt <= _U32 else 0)
        return (b"II*\0" + struct.pack("<I", 8) + ifd).ljust(data_start, b"\0")

    def _trailer_ifd_size(self) -> int:
        return len(_pack_ifd(0, self._common_tags([0], [self.plane_bytes]), 0))

    def _trailer_ifd(self, k: int) -> bytes:
        """IFD k >= 1 (plane k) as it appears at trailer_start + (k-1)*ifd_size."""
        at = self.trailer_start + (k - 1) * self.ifd_size
        nxt = at + self.ifd_size if k < self.n_planes - 1 else 0
        tags = self._common_tags([self.data_start + k * self.plane_bytes], [self.plane_bytes])
        return _pack_ifd(at, tags, nxt)

    def _trailer_bytes(self, k0: int, k1: int) -> np.ndarray:
        """IFDs k0..k1-1 (k >= 1), vectorised from a template: shape (k1-k0, ifd_size)."""
        S, (c_strip, c_xres, c_yres) = self.ifd_size, self._trailer_cols
        values_at = S - 16  # X then Y resolution are the only out-of-line values
        out = np.tile(self._trailer_template, (k1 - k0, 1))
        k = np.arange(k0, k1, dtype=np.int64)
        at = self.trailer_start + (k - 1) * S

        def put(col: int, values: np.ndarray) -> None:
            out[:, col:col + 4] = values.astype("<u4").view(np.uint8).reshape(-1, 4)

        put(c_strip, self.data_start + k * self.plane_bytes)
        put(c_xres, at + values_at)
        put(c_yres, at + values_at + 8)
        put(values_at - 4, np.where(k < self.n_planes - 1, at + S, 0))  # next IFD
        return out

    # -- serving -----------------------------------------------------------------------

    def read(self, offset: int, size: int, get_rows) -> bytes:
        """Return bytes [offset, offset+size) of the file, clipped at EOF.

        ``get_rows(plane, y0, y1)`` must return an array of shape (y1-y0, width) castable to
        the layout dtype; it is called once per plane touched, never for header/trailer-only
        ranges, and may be called from several threads at once (read() keeps no state).
        """
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset/size: {offset}, {size}")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts = []
        if offset < self.data_start:
            parts.append(self.header[offset:min(end, self.data_start)])
        a, b = max(offset, self.data_start), min(end, self.data_end)
        if a < b:
            parts.extend(self._pixels(a - self.data_start, b - self.data_start, get_rows))
        a, b = max(offset, self.data_end), min(end, self.trailer_start)
        if a < b:
            parts.append(bytes(b - a))  # word-alignment pad before IFD1
        a, b = max(offset, self.trailer_start), end
        if a < b:
            rel0, rel1 = a - self.trailer_start, b - self.trailer_start
            k0, k1 = rel0 // self.ifd_size, -(-rel1 // self.ifd_size)
            block = self._trailer_bytes(k0 + 1, k1 + 1).reshape(-1)
            base = k0 * self.ifd_size
            parts.append(block[rel0 - base:rel1 - base].tobytes())
        return b"".join(parts)

    def _pixels(self, a: int, b: int, get_rows):
        """Yield the bytes of pixel range [a, b) (relative to data_start), one call per plane."""
        return plane_bytes(a, b, self.height, self.width, self.dtype, get_rows)

    def describe(self) -> str:
        """Short one-line summary for logs."""
        kind = "single-IFD" if self.single_ifd else f"{self.n_planes} IFDs"
        return (f"TiffLayout({self.n_planes}x{self.height}x{self.width} {self.dtype.name}, "
                f"{kind}, data_start={self.data_start}, size={self.size})")

    __repr__ = describe
