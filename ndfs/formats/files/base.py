"""What every volume file format shares: :class:`FileInfo`, the :class:`Reader` base, and the checks
every reader and writer makes of shapes, dtypes, voxel sizes and offsets.

A volume file holds one ZYX array. Readers are told what the caller expects (``shape``: a box,
z y x, whose size-1 axes the file may leave out; ``dtype``: exact; ``max_bytes``: the most voxel
bytes) and check what the file *declares* against it before any voxel is decoded; every decode
goes through :mod:`ndfs.formats.safe`. Writers take an iterable of z-ordered slabs (whole planes),
so a file of any size is written with the memory of one slab. Pure functions and classes; a
reader is used by one thread at a time.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.safe.common import nbytes_of, shape_text

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class FileInfo:
    """What a volume file holds: format name, ZYX shape, dtype, voxel size (nm, ZYX) and offset
    (ZYX, dataset coordinates of the first voxel); the last two are None when the file does not say."""

    format: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: Vector | None = None
    offset: tuple[int, int, int] | None = None


class Reader(abc.ABC):
    """An open volume file: ``info`` and ``read(z0, z1)`` (planes counted from the file's first).

    A context manager; close it (or leave the ``with``) to release the file. Not thread-safe.
    """

    info: FileInfo

    @abc.abstractmethod
    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes [z0, z1) as one (z1 - z0, y, x) array."""

    def array(self) -> np.ndarray:
        """The whole volume, shaped ``info.shape``."""
        return self.read(0, self.info.shape[0])

    def close(self) -> None:
        """Release what the reader holds open (subclasses that hold files override it)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_range(self, z0: int, z1: int) -> None:
        if not 0 <= z0 <= z1 <= self.info.shape[0]:
            raise BadInput(f"planes {z0}..{z1} are outside the file's {self.info.shape[0]}")


def limit_of(shape: Sequence[int] | None, dtype, max_bytes: int | None) -> int | None:
    """The voxel bytes a read may produce: ``max_bytes``, else the expected array's, else no bound
    (a file the user chose on their own disk, read in slabs)."""
    if max_bytes is not None:
        return int(max_bytes)
    if shape is not None and dtype is not None:
        return nbytes_of(shape, dtype)
    return None


def volume_shape(declared: Sequence[int], name: str, want: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The ZYX shape a file's array is read as.

    With ``want`` (already checked against ``declared`` by :func:`~ndfs.formats.safe.check_declared`)
    that box; else a 2-D array is one plane, a 3-D array a volume, and leading axes of size 1
    beyond three are dropped (an array with a channel axis of one).
    """
    if want is not None:
        return tuple(int(s) for s in want)  # type: ignore[return-value]
    shape = tuple(int(s) for s in declared)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise BadInput(f"{name} holds a {len(declared)}-D array ({shape_text(declared)}), not a volume (z, y, x)")
    return shape  # type: ignore[return-value]


def triple(value, cast, what: str, name: str):
    """Three numbers recorded in a file (voxel size, offset), or None when the file records none."""
    if value is None:
        return None
    try:
        values = [cast(v) for v in np.asarray(value).ravel().tolist()]
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{name}: {what} is not three numbers: {exc}") from None
    if len(values) != 3:
        raise BadInput(f"{name}: {what} must hold 3 values, found {len(values)}")
    if cast is float and not all(math.isfinite(v) and v > 0 for v in values):
        raise BadInput(f"{name}: {what} must be three positive sizes, found {values}")
    return tuple(values)


def source_name(source, name: str | None) -> str:
    """The name messages use for a file: the one given, else its path, else "the file"."""
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    path = getattr(source, "name", None)
    return path if isinstance(path, str) else "the file"


def open_binary(source) -> tuple[BinaryIO, bool]:
    """(seekable binary file, whether the caller must close it) for a path or an open file."""
    if isinstance(source, (str, os.PathLike)):
        try:
            return open(source, "rb"), True
        except FileNotFoundError:
            raise BadInput(f"{os.fspath(source)} does not exist") from None
        except IsADirectoryError:
            raise BadInput(f"{os.fspath(source)} is a folder, not a file") from None
    if not (hasattr(source, "read") and hasattr(source, "seek")):
        raise BadInput(f"cannot read a volume from a {type(source).__name__}; give a path or a seekable binary file")
    return source, False


# ---- writing -------------------------------------------------------------------------------
def check_writable(info: FileInfo, dtypes: Sequence[str] | None = None) -> FileInfo:
    """``info`` with its fields normalised; BadInput when no file of the format can hold it."""
    dtype = np.dtype(info.dtype)
    if dtype.kind not in "uif" or dtype.byteorder == ">":
        raise BadInput(f"cannot write {dtype} voxels: integer or float voxels in native byte order only")
    if dtypes is not None and dtype.name not in dtypes:
        raise BadInput(f"{info.format} holds {' and '.join(dtypes)} voxels; {dtype} data goes to another format")
    shape = tuple(int(s) for s in info.shape)
    if len(shape) != 3 or min(shape) < 0:
        raise BadInput(f"a volume file holds a z, y, x array, not {shape_text(shape)}")
    vs = triple(info.voxel_size_nm, float, "voxel_size_nm", "the file to write")
    offset = triple(info.offset, int, "offset", "the file to write")
    return FileInfo(info.format, shape, dtype, vs, offset)  # type: ignore[arg-type]


def checked_slabs(info: FileInfo, slabs: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The slabs, C-contiguous in ``info.dtype``; BadInput when one is not whole planes of the volume's
    (y, x) or when together they hold other than ``info.shape[0]`` planes."""
    done = 0
    plane = tuple(info.shape[1:])
    for slab in slabs:
        arr = np.asarray(slab)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or tuple(arr.shape[1:]) != plane:
            raise BadInput(f"a slab of {shape_text(arr.shape)} is not whole {shape_text(plane)} planes")
        if done + arr.shape[0] > info.shape[0]:
            raise BadInput(f"the slabs hold more than the volume's {info.shape[0]} planes")
        done += arr.shape[0]
        yield np.ascontiguousarray(arr, dtype=info.dtype)
    if done != info.shape[0]:
        raise BadInput(f"the slabs hold {done} planes; the volume has {info.shape[0]}")
