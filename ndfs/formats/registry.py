"""The one table of volume file formats: for each, a reader and a streaming writer.

Everything that reads or writes a whole volume file goes through here: the mount's
``cutout/<box>.<fmt>`` files (rendered with :func:`render`, committed with :func:`read_array`),
its ``z/<N>.tif`` and ``stack.tif`` writes, ``ndfs.convert`` (export, import, load, file_info),
``ndfs export``/``ndfs import`` and the NeuroData server's hdf5 bodies. So a file ``ndfs export``
writes is one the mount accepts for the same box, and a file the mount serves is one ``ndfs
import`` reads.

=====  ===================  ============================================================
name   suffixes             voxel size and offset recorded as
=====  ===================  ============================================================
tif    .tif .tiff           ImageJ calibration and ``ndfs_offset_zyx`` (uint8, uint16,
                            float32), else tifffile's JSON description
npy    .npy                 (nothing: the format has no room; an import needs ``--at``)
npz    .npz                 arrays ``voxel_size_nm`` and ``offset`` beside ``volume``
h5     .h5 .hdf5 .hdf       attributes ``voxel_size_nm``, ``offset``, ``element_size_um``
png    a folder (``DIR/``)  ``volume.json``; slices named by their z
=====  ===================  ============================================================

Readers take a path or a seekable binary file (png: a folder path), the name messages use, and
what the caller expects (``shape``, a box whose size-1 axes the file may leave out; ``dtype``,
exact; ``max_bytes``), checked against what the file declares before a voxel is decoded; all
decoding goes through :mod:`ndfs.formats.safe`. Writers take a path or a writable binary file
(png: a new folder path), a :class:`FileInfo` and z-ordered slabs. Errors are
:class:`~ndfs.errors.BadInput` with a message that says what was wrong. Thread-safe (readers:
one per thread).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ndfs.core.errors import BadInput, NdfsError
from ndfs.formats import complete as completeness
from ndfs.formats.files import h5, npy, npz, png, tif
from ndfs.formats.files.base import FileInfo, Reader, check_writable, source_name

__all__ = ["FORMATS", "FILE_FORMATS", "FileInfo", "Format", "Reader", "format_of", "named", "open_reader",
           "read_array", "render", "write"]


@dataclass(frozen=True)
class Format:
    """One volume file format: its name, how paths name it, and its reader and writer."""

    name: str
    #: file name endings that mean this format (lower case, with the dot); empty for folders
    suffixes: tuple[str, ...]
    #: other spellings of the name that ``format=`` accepts
    aliases: tuple[str, ...]
    #: ``(source, name, *, shape, dtype, max_bytes) -> Reader``
    reader: Callable[..., Reader]
    #: ``(target, info, slabs, *, chunk_z) -> None``
    writer: Callable[..., None]
    #: the dtypes a file can hold (None: any integer or float)
    dtypes: tuple[str, ...] | None = None
    #: a folder of files rather than one file (not a mount cutout, not renderable to bytes)
    folder: bool = False
    #: whether the file records voxel size / offset
    records_voxel_size: bool = True
    records_offset: bool = True

    @property
    def complete(self) -> Callable | None:
        """Whether a file of this format being written is whole yet: :data:`ndfs.formats.complete.CHECKS`."""
        return completeness.CHECKS.get(self.name)

    def holds(self, dtype) -> bool:
        """Whether a file of this format can hold ``dtype`` voxels."""
        return self.dtypes is None or np.dtype(dtype).name in self.dtypes


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("tif", (".tif", ".tiff"), ("tiff",), tif.TifReader, tif.write),
    Format("npy", (".npy",), (), npy.NpyFileReader, npy.write, records_voxel_size=False, records_offset=False),
    Format("npz", (".npz",), (), npz.NpzReader, npz.write),
    Format("h5", (".h5", ".hdf5", ".hdf"), ("hdf5", "hdf"), h5.H5Reader, h5.write),
    Format("png", (), (), png.PngReader, png.write, dtypes=png.DTYPES, folder=True),
)}
#: the formats that are one file: what the mount's ``cutout/`` serves and takes
FILE_FORMATS: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if not f.folder)
_NAMES = {alias: f for f in FORMATS.values() for alias in (f.name, *f.aliases)}
_SUFFIXES = {suffix: f for f in FORMATS.values() for suffix in f.suffixes}


def named(fmt: str | Format) -> Format:
    """The format called ``fmt`` (a name or an alias, any case); BadInput when there is none."""
    if isinstance(fmt, Format):
        return fmt
    found = _NAMES.get(str(fmt).lower())
    if found is None:
        raise BadInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return found


def format_of(path, fmt: str | None = None) -> Format:
    """The format ``fmt`` names, else the one the path's suffix names; a path ending in ``/`` or an
    existing folder is png slices."""
    if fmt is not None:
        return named(fmt)
    text = os.fspath(path)
    p = Path(text)
    if p.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[p.suffix.lower()]
    if text.endswith(("/", os.sep)) or p.is_dir():
        return FORMATS["png"]
    endings = " ".join(s for f in FORMATS.values() for s in f.suffixes[:1])
    raise BadInput(f"cannot tell the format of {text!r} from its name: end it in {endings} or '/' "
                   "(a png folder), or name the format")


def open_reader(source, fmt: str | Format, name: str | None = None, *, shape: Sequence[int] | None = None,
                dtype=None, max_bytes: int | None = None) -> Reader:
    """An open reader of the ``fmt`` file ``source`` (a path, a seekable binary file, or bytes;
    png: a folder path); see the module doc for ``shape``, ``dtype`` and ``max_bytes``."""
    f = named(fmt)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    name = source_name(source, name)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise BadInput(f"{name} does not exist")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
    try:
        return f.reader(source, name, shape=shape, dtype=dtype, max_bytes=max_bytes)
    except (NdfsError, MemoryError):
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as exc:
        # a library's own error on a file the safe checks let through: still bad input
        raise BadInput(f"{name} is not a readable {f.name} file: {type(exc).__name__}: {exc}") from None


def read_array(source, fmt: str | Format, name: str | None = None, *, shape: Sequence[int] | None = None,
               dtype=None, max_bytes: int | None = None) -> np.ndarray:
    """The whole volume of a file, shaped ``shape`` when given (else z, y, x), as :func:`open_reader` reads it."""
    with open_reader(source, fmt, name, shape=shape, dtype=dtype, max_bytes=max_bytes) as r:
        try:
            return r.array()
        except (NdfsError, MemoryError):
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as exc:
            raise BadInput(f"{r.info.format} file {source_name(source, name)} does not read: "
                           f"{type(exc).__name__}: {exc}") from None


def write(target, fmt: str | Format, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """Write a ``fmt`` file of ``info`` (shape, dtype, and the voxel size and offset to record) to
    ``target`` from z-ordered ``slabs`` of whole planes, holding one slab at a time."""
    f = named(fmt)
    info = check_writable(FileInfo(f.name, info.shape, info.dtype, info.voxel_size_nm, info.offset), f.dtypes)
    f.writer(target, info, slabs, chunk_z=chunk_z)


def render(array: np.ndarray, fmt: str | Format, *, voxel_size_nm=None, offset=None) -> bytes:
    """The bytes of one ``fmt`` file holding ``array`` (ZYX; a 2-D array is one plane), recording
    ``voxel_size_nm`` and ``offset`` where the format can: what the mount serves."""
    f = named(fmt)
    if f.folder:
        raise BadInput(f"{f.name} volumes are folders; they have no bytes of one file")
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    buf = io.BytesIO()
    write(buf, f, FileInfo(f.name, arr.shape, arr.dtype, voxel_size_nm, offset), [arr])
    return buf.getvalue()
