"""``.npy`` volume files: numpy's own format, one array, no room for a voxel size or an offset.

Written: a format 1.0 header (2.0 when the header needs it), then the planes in C order as the
slabs arrive; ``numpy.load`` (also with ``mmap_mode``) reads it. Read: the header parsed and
checked by :mod:`ndfs.formats.safe.npy` (no pickles; the data exactly as long as declared), then
planes read where they lie; Fortran-ordered files are read whole.
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.files.base import FileInfo, Reader, checked_slabs, limit_of, open_binary, volume_shape

NAME = "npy"


def header_bytes(shape, dtype) -> bytes:
    """The .npy header of a C-order array of ``shape`` and ``dtype`` (format 1.0 when it fits)."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header past 64 KiB: format 2.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


class NpyReader(Reader):
    """An .npy stream: ``fh`` positioned at its magic, ``length`` bytes long from there."""

    def __init__(self, fh, name: str, *, length: int | None = None, shape=None, dtype=None,
                 max_bytes: int | None = None, fmt: str = NAME, metadata=(None, None)):
        from ndfs.formats import safe
        from ndfs.formats.safe.common import stream_length

        self.name, self._fh = name, fh
        start = fh.tell() if length is not None else 0
        if length is None:
            length = stream_length(fh)
        if length == 0:
            raise BadInput(f"{name} is empty")
        declared, self._fortran, file_dtype = safe.npy_header(fh, name)
        n = safe.check_declared(declared, file_dtype, name, want_shape=shape, want_dtype=dtype,
                                max_bytes=limit_of(shape, dtype, max_bytes))
        self._data_start = fh.tell()
        data_bytes = length - (self._data_start - start)
        if data_bytes != n:
            raise BadInput(f"{name} holds {data_bytes} bytes of data; its header declares {n} "
                           f"({'x'.join(map(str, declared))} {file_dtype})")
        self._declared, self._pos = declared, self._data_start
        self._whole: np.ndarray | None = None
        self.info = FileInfo(fmt, volume_shape(declared, name, shape), file_dtype, *metadata)

    def read(self, z0: int, z1: int) -> np.ndarray:
        from ndfs.formats.safe.common import read_exactly

        self._check_range(z0, z1)
        shape = self.info.shape
        if self._fortran:  # not written by ndfs: read whole once (its size was checked)
            if self._whole is None:
                self._skip_to(self._data_start)
                n = int(np.prod(self._declared)) * self.info.dtype.itemsize
                raw = read_exactly(self._fh, n, self.name)
                logical = np.frombuffer(raw, self.info.dtype).reshape(self._declared, order="F")
                self._whole = np.ascontiguousarray(logical.reshape(shape))  # only size-1 axes differ
            return self._whole[z0:z1]
        plane = shape[1] * shape[2] * self.info.dtype.itemsize
        self._skip_to(self._data_start + z0 * plane)
        raw = read_exactly(self._fh, (z1 - z0) * plane, self.name)
        self._pos += (z1 - z0) * plane
        return np.frombuffer(raw, self.info.dtype).reshape((z1 - z0,) + tuple(shape[1:]))

    def _skip_to(self, where: int) -> None:
        """Move to ``where`` (a file that cannot seek back, a zip member, is read forward only)."""
        if self._fh.seekable():
            self._fh.seek(where)
        else:
            if where < self._pos:
                raise BadInput(f"{self.name}: planes are read in order from a compressed member")
            while self._pos < where:
                skipped = len(self._fh.read(min(where - self._pos, 2**24)))
                if not skipped:
                    raise BadInput(f"{self.name} ends inside its data")
                self._pos += skipped
        self._pos = where


class NpyFileReader(NpyReader):
    """An .npy file (a path or a seekable binary file)."""

    def __init__(self, source, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        fh, self._owned = open_binary(source)
        try:
            fh.seek(0)
            super().__init__(fh, name, shape=shape, dtype=dtype, max_bytes=max_bytes)
        except BaseException:
            if self._owned:
                fh.close()
            raise

    def close(self) -> None:
        if self._owned:
            self._fh.close()


def write_stream(fh, info: FileInfo, slabs: Iterable[np.ndarray], header: bytes | None = None) -> None:
    """The .npy bytes of ``info``'s array into the writable stream ``fh``, slab by slab."""
    fh.write(header_bytes(info.shape, info.dtype) if header is None else header)
    for slab in checked_slabs(info, slabs):
        fh.write(memoryview(slab).cast("B"))


def write(target, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """An .npy of ``info`` at ``target`` (a path or a writable binary file); the format records no
    voxel size or offset, and has no chunks (``chunk_z`` is unused)."""
    if hasattr(target, "write"):
        write_stream(target, info, slabs)
        return
    with open(target, "wb") as fh:
        write_stream(fh, info, slabs)
