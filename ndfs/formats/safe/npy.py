""".npy and .npz (zip) from untrusted bytes: headers parsed and checked before a byte of data is read.

numpy's own ``np.load`` allocates whatever an .npy header declares before it reads the data, so a
100-byte file can ask for a terabyte; here the header is parsed with numpy's header readers, the
declared shape and dtype are checked against the caller's bound, the data must be exactly the
declared length, and only then is it read. Zip archives: at most a few members, stored or
deflated, each declaring no more than the bound and no impossible compression ratio; members
are inflated only up to their declared size (zipfile stops there and checks the CRC). Pickles
are never loaded. Pure functions; thread-safe.
"""

from __future__ import annotations

import io
import zipfile
from typing import BinaryIO, Sequence

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.safe.common import (
    MAX_RATIO, check_declared, read_exactly, stream_length, voxel_dtype,
)

#: the most members an npz from outside may hold (ndfs writes 1 to 3)
MAX_MEMBERS = 64
#: bytes an .npy header may take (numpy's own parser refuses headers past 10,000 bytes)
NPY_HEADER_BYTES = 65536


def npy_header(fh: BinaryIO, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream at ``fh`` (left at the first data byte)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # 3.0 only adds UTF-8 field names: structured arrays, never voxels
            raise BadInput(f"{name} is .npy format {version[0]}.{version[1]}; voxels are written as 1.0 or 2.0")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise BadInput(f"{name} is not an .npy array: {exc}") from None
    if len(shape) > 32:
        raise BadInput(f"{name} declares {len(shape)} dimensions")
    return tuple(int(s) for s in shape), bool(fortran), voxel_dtype(dtype, name)


def read_npy(fh: BinaryIO, name: str, *, shape: Sequence[int] | None = None, dtype=None,
             max_bytes: int | None = None, length: int | None = None) -> np.ndarray:
    """The array of the .npy stream at ``fh``; BadInput unless it is exactly what its header declares.

    ``shape``/``dtype``: what the caller expects (size-1 axes may be left out); ``max_bytes``:
    the most data bytes allowed; ``length``: bytes in the stream from here (default: to the end
    of a seekable file). All of it is checked before the data is read.
    """
    start = fh.tell() if length is not None else 0
    if length is None:
        length = stream_length(fh)
    got_shape, fortran, got_dtype = npy_header(fh, name)
    n = check_declared(got_shape, got_dtype, name, want_shape=shape, want_dtype=dtype, max_bytes=max_bytes)
    data_bytes = length - (fh.tell() - start)
    if data_bytes != n:
        raise BadInput(f"{name} holds {data_bytes} bytes of data; its header declares {n} "
                       f"({'x'.join(map(str, got_shape))} {got_dtype})")
    buf = read_exactly(fh, n, name)
    return np.frombuffer(buf, dtype=got_dtype).reshape(got_shape, order="F" if fortran else "C")


def npy_from_bytes(data: bytes, name: str, *, max_bytes: int | None = None) -> np.ndarray:
    """An .npy held in memory, as :func:`read_npy`."""
    return read_npy(io.BytesIO(data), name, max_bytes=max_bytes)


def open_zip(source, name: str, *, max_bytes: int | None = None, max_members: int = MAX_MEMBERS) -> zipfile.ZipFile:
    """A zip archive whose every member has been checked (count, method, declared size, ratio)."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise BadInput(f"{name} is not an npz (zip) archive: {exc}") from None
    try:
        members = zf.infolist()
        if len(members) > max_members:
            raise BadInput(f"{name} holds {len(members)} members; an npz holds at most {max_members}")
        for m in members:
            if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BadInput(f"{name}: member {m.filename!r} is compressed with method {m.compress_type}; "
                               "npz members are stored or deflated")
            if m.flag_bits & 0x1:
                raise BadInput(f"{name}: member {m.filename!r} is encrypted")
            if max_bytes is not None and m.file_size > max_bytes + NPY_HEADER_BYTES:
                raise BadInput(f"{name}: member {m.filename!r} declares {m.file_size} bytes; "
                               f"at most {max_bytes} bytes of voxels are expected here")
            stored = m.compress_type == zipfile.ZIP_STORED
            if (stored and m.file_size != m.compress_size) or m.file_size > MAX_RATIO * m.compress_size + 4096:
                raise BadInput(f"{name}: member {m.filename!r} claims {m.file_size} bytes from "
                               f"{m.compress_size} compressed bytes, which no real archive does")
    except BaseException:
        zf.close()
        raise
    return zf


def zip_npy(zf: zipfile.ZipFile, member: str, name: str, *, shape=None, dtype=None,
            max_bytes: int | None = None) -> np.ndarray:
    """The array in ``member`` (an .npy) of a zip opened by :func:`open_zip`."""
    info = zf.getinfo(member)
    try:
        with zf.open(info) as fh:
            return read_npy(fh, f"{name}:{member}", shape=shape, dtype=dtype, max_bytes=max_bytes,
                            length=info.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise BadInput(f"{name}: member {member!r} is unreadable: {exc}") from None
