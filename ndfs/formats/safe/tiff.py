"""Greyscale TIFF stacks from untrusted bytes: pages read directly, every size checked first.

:class:`TiffPages` reads a TIFF's pages (IFDs) one by one with tifffile, never its *series*
(which for OME and multi-file TIFFs opens sibling files named inside the file), and with
tifffile's LSM, ScanImage, NDPI and OME handling off. Before a pixel is decoded it checks each
page: greyscale, 8 to 64-bit numbers, one shape and dtype for all, compression none, deflate or
PackBits (what tifffile decodes with the standard library), every strip or tile inside the file,
no impossible compression ratio, and the page count, shape and dtype against what the caller
expects (a box, a dtype, a byte bound). Deflated strips are inflated in pieces and counted
before tifffile decodes them, so none inflates past its declared size. ImageJ stacks past 4 GiB
(one IFD, the planes stored one after another) are read plane by plane from inside the file.

Not thread-safe: one reader per thread.
"""

from __future__ import annotations

import math
import zlib
from typing import BinaryIO

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.safe.common import (
    MAX_RATIO, check_declared, read_exactly, shape_text, stream_length,
)

#: TIFF compression codes accepted: none, deflate (Adobe and old-style), PackBits
COMPRESSIONS = {1: "none", 8: "deflate", 32946: "deflate", 32773: "packbits"}
PIECE = 2**20


class TiffPages:
    """The greyscale pages of a TIFF file ``fh`` (seekable), checked as the module says.

    ``shape``: the box (z, y, x) the pages must fill (size-1 axes may be left out, so one page
    of y x fills a box one plane deep); ``dtype``: the exact pixel type; ``max_bytes``: the
    most pixel bytes. ``count``, ``plane`` (height, width) and ``dtype`` describe the file.
    """

    def __init__(self, fh: BinaryIO, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        import tifffile

        self.fh, self.name = fh, name
        self.length = stream_length(fh)
        if self.length == 0:
            raise BadInput(f"{name} is empty")
        try:
            self._tif = tifffile.TiffFile(fh, is_ome=False, is_lsm=False, is_scanimage=False, is_ndpi=False)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error... for broken files
            raise BadInput(f"{name} is not a readable TIFF: {type(exc).__name__}: {exc}") from None
        try:
            self._pages: list = []
            self._contiguous: int | None = None
            self._scan(shape, dtype, max_bytes)
        except BaseException:
            self._tif.close()
            raise

    def _scan(self, shape, dtype, max_bytes) -> None:
        name = self.name
        limit = None
        try:
            for i, page in enumerate(self._tif.pages):
                if i == 0:
                    self._check_page(page, 0, None)
                    self.plane, self.dtype = tuple(page.shape), _native(page.dtype)
                    plane_bytes = math.prod(self.plane) * self.dtype.itemsize
                    limit = _page_limit(self.plane, plane_bytes, shape, max_bytes)
                else:
                    self._check_page(page, i, (self.plane, self.dtype))
                if i >= limit:
                    raise BadInput(f"{name} holds more than {limit} pages of {shape_text(self.plane)}; "
                                   f"{'this file takes ' + shape_text(shape) if shape else 'that is more than expected'}")
                self._pages.append(page)
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"{name} is not a readable TIFF: {type(exc).__name__}: {exc}") from None
        if not self._pages:
            raise BadInput(f"{name} has no images")
        self.count = len(self._pages)
        self._imagej_planes(limit)
        file_shape = (self.count, *self.plane) if self.count > 1 else self.plane
        check_declared(file_shape, self.dtype, name, want_shape=shape, want_dtype=dtype, max_bytes=max_bytes)

    def _check_page(self, page, i: int, like) -> None:
        where = f"{self.name} page {i}"
        if page.samplesperpixel != 1 or len(page.shape) != 2 or getattr(page, "imagedepth", 1) > 1:
            raise BadInput(f"{where} has {page.samplesperpixel} samples per pixel; only greyscale images "
                           "can be stored (convert RGB to 8-bit or 16-bit first)" if page.samplesperpixel != 1
                           else f"{where} is not a greyscale 2-D image")
        if page.dtype is None or np.dtype(page.dtype).kind not in "uif" or page.bitspersample not in (8, 16, 32, 64):
            raise BadInput(f"{where} has {page.bitspersample}-bit samples of format {page.sampleformat}; "
                           "8, 16, 32 or 64-bit integers or floats are accepted")
        if like is not None and (tuple(page.shape), _native(page.dtype)) != like:
            raise BadInput(f"{where} is {page.dtype}{tuple(page.shape)}, page 0 is {like[1]}{like[0]}")
        if page.compression not in COMPRESSIONS:
            raise BadInput(f"{where} is compressed with TIFF compression {int(page.compression)}; "
                           "save it uncompressed, deflate (zip) or PackBits")
        if int(page.predictor) not in (1, 2) or int(getattr(page, "fillorder", 1)) != 1:
            raise BadInput(f"{where} uses predictor {int(page.predictor)} or bit order {int(page.fillorder)}; "
                           "save it without a floating-point predictor")
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) != len(counts) or not offsets:
            raise BadInput(f"{where} has no image data")
        if any(o + c > self.length for o, c in zip(offsets, counts)):
            raise BadInput(f"{where} says its data lies past the end of the {self.length}-byte file")
        declared = math.prod(page.shape) * np.dtype(page.dtype).itemsize
        stored = sum(counts)
        ratio = 1 if page.compression == 1 else (64 if page.compression == 32773 else MAX_RATIO)
        if declared > ratio * stored + 4096 * len(counts):
            raise BadInput(f"{where} declares {shape_text(page.shape)} pixels ({declared} bytes) in "
                           f"{stored} bytes of {COMPRESSIONS[page.compression]} data")
        if page.compression == 32773 and stored > declared + declared // 64 + 16 * len(counts):
            # PackBits decoding cannot be stopped early; real PackBits data is never this much larger
            # than its pixels, so what this decodes to stays within 64 times the page
            raise BadInput(f"{where} holds {stored} bytes of PackBits data for {declared} bytes of pixels")

    def _imagej_planes(self, limit: int) -> None:
        """An ImageJ stack in one IFD (past 4 GiB): its planes follow the first one in the file."""
        if self.count != 1 or not self._tif.is_imagej:
            return
        meta = self._tif.imagej_metadata or {}
        images = int(meta.get("images", 1) or 1)
        if images <= 1:
            return
        page = self._pages[0]
        if int(meta.get("channels", 1) or 1) > 1 or int(meta.get("frames", 1) or 1) > 1:
            raise BadInput(f"{self.name} is an ImageJ hyperstack with channels or frames; a volume is z, y, x")
        if images > limit:
            raise BadInput(f"{self.name} holds {images} ImageJ planes; at most {limit} are expected here")
        if page.compression != 1 or not page.is_contiguous:
            raise BadInput(f"{self.name}: ImageJ stores {images} planes after a compressed first one")
        plane_bytes = math.prod(self.plane) * self.dtype.itemsize
        start = page.dataoffsets[0]
        if start + images * plane_bytes > self.length:
            raise BadInput(f"{self.name} declares {images} ImageJ planes; the file ends before them")
        self._contiguous, self.count = start, images

    # ---- metadata (descriptions only, no pixels) -------------------------------------------
    @property
    def imagej_metadata(self) -> dict | None:
        return self._tif.imagej_metadata

    @property
    def shaped_metadata(self):
        return self._tif.shaped_metadata

    @property
    def first(self):
        return self._pages[0]

    # ---- pixels ---------------------------------------------------------------------------
    def read(self, start: int, stop: int) -> np.ndarray:
        """Pages [start, stop) as one (n, height, width) array in native byte order."""
        if not 0 <= start <= stop <= self.count:
            raise BadInput(f"{self.name}: pages {start}..{stop} are outside its {self.count}")
        out = np.empty((stop - start, *self.plane), dtype=self.dtype)
        plane_bytes = math.prod(self.plane) * self.dtype.itemsize
        for k, i in enumerate(range(start, stop)):
            if self._contiguous is not None:
                self.fh.seek(self._contiguous + i * plane_bytes)
                raw = read_exactly(self.fh, plane_bytes, self.name)
                out[k] = np.frombuffer(raw, self.dtype.newbyteorder(self._tif.byteorder)).reshape(self.plane)
                continue
            page = self._pages[i]
            if COMPRESSIONS[page.compression] == "deflate":
                self._check_inflation(page, i)
            try:
                out[k] = page.asarray(maxworkers=1)
            except Exception as exc:  # tifffile's errors for corrupt strips
                raise BadInput(f"{self.name}: page {i} is unreadable: {type(exc).__name__}: {exc}") from None
        return out

    def array(self) -> np.ndarray:
        """Every page: (height, width) for one page, else (pages, height, width)."""
        arr = self.read(0, self.count)
        return arr[0] if self.count == 1 else arr

    def _check_inflation(self, page, i: int) -> None:
        """Count what each deflated strip or tile inflates to, in pieces; refuse one past its size."""
        itemsize = self.dtype.itemsize
        if page.is_tiled:
            segment = page.tilewidth * page.tilelength * max(1, getattr(page, "tiledepth", 1)) * itemsize
        else:
            segment = min(page.rowsperstrip, page.imagelength) * page.imagewidth * itemsize
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            self.fh.seek(offset)
            data = read_exactly(self.fh, count, self.name)
            inflater = zlib.decompressobj()
            produced, pending = 0, memoryview(data)
            try:
                while not inflater.eof:
                    out = inflater.decompress(pending, PIECE)
                    produced += len(out)
                    if produced > segment:
                        raise BadInput(f"{self.name}: a strip of page {i} inflates past its {segment} bytes")
                    pending = inflater.unconsumed_tail
                    if not out and not pending:
                        break
            except zlib.error as exc:
                raise BadInput(f"{self.name}: page {i} holds a strip that is not deflate data: {exc}") from None

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "TiffPages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _native(dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("=")


def _page_limit(plane: tuple[int, int], plane_bytes: int, shape, max_bytes: int | None) -> int:
    """The most pages that can be what the caller expects."""
    limits = []
    if shape is not None:
        limits.append(max(1, math.prod(int(s) for s in shape) // max(1, math.prod(plane))))
    if max_bytes is not None:
        limits.append(max(1, max_bytes // max(1, plane_bytes)))
    return min(limits) if limits else 2**31
