"""Export volumes and cutouts to common files, and read them back: tif, npy, npz, h5, png.

``export(source, path)`` writes a numpy array, a :class:`~ndfs.volume.Volume`
or a box of one; ``load(path)`` reads a file back as a ZYX array,
``file_info(path)`` tells its shape, dtype, voxel size and offset, and
``import_file(path, volume)`` writes a file into a channel. The format comes
from the suffix (``.tif``/``.tiff``, ``.npy``, ``.npz``, ``.h5``/``.hdf5``)
or ``format=``; png is a folder of slices (a path ending in ``/``, an existing
folder, or ``format="png"``).

The formats themselves (what each file holds, how voxel size and offset are
recorded, which layouts are read) are :mod:`ndfs.formats.registry`, the same
table the mount's ``cutout/`` files use: a file exported here is one the mount
takes for the same box, and a file the mount serves is one ``import_file``
reads. npy records no voxel size or offset; an import of one goes to the
volume's start unless given ``offset``.

Exports stream: slabs of at most ``slab_bytes`` (or one plane, if larger)
are read in z order, the next one while the current one is written, so
memory stays at about two slabs. A file appears only when complete (written
under ``NAME.part``, then renamed); a failed export leaves nothing behind.
Imports stream the same way. h5py (hdf5) and Pillow (png) are imported when
used (``pip install 'ndfs[export]'``). Functions here are thread-safe.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ndfs.core.ahead import in_order
from ndfs.core.errors import BackendError, BadInput, BadRegion, NdfsError
from ndfs.formats import registry
from ndfs.formats.files import png
from ndfs.formats.registry import FileInfo, Reader
from ndfs.core.geometry import Box

__all__ = ["FORMATS", "FileInfo", "export", "load", "file_info", "open_file", "import_file", "format_of"]

MiB = 2**20
#: the format names ``format=`` takes (``tiff``, ``hdf5`` and ``hdf`` are spellings of tif and h5)
FORMATS = tuple(registry.FORMATS)


def format_of(path, format: str | None = None) -> str:
    """The name of the format ``format`` names or the path tells (see :func:`ndfs.formats.registry.format_of`)."""
    return registry.format_of(path, format).name


# ---- sources ---------------------------------------------------------------------
class _Source:
    """What an export reads: shape, dtype, voxel size, offset, and boxes relative to its first voxel."""

    def __init__(self, source, box: Box | None, voxel_size_nm, offset):
        from ndfs.volume import Volume

        if isinstance(source, Volume):
            self.volume = source
            self.box = source.box if box is None else box
            if not source.box.contains(self.box):
                raise BadRegion(f"box {self.box} is outside the volume {source.box}")
            self.array = None
            self.dtype = source.dtype
            vs = source.voxel_size_nm if voxel_size_nm is None else voxel_size_nm
            self.offset = tuple(self.box.start) if offset is None else tuple(int(o) for o in offset)
            self.chunk_z = source.level_info.chunk_shape[0]
        else:
            arr = np.asarray(source)
            if arr.ndim == 2:
                arr = arr[np.newaxis]
            if arr.ndim != 3:
                raise BadRegion(f"export takes a 2-D or 3-D array or a Volume, got {arr.ndim}-D")
            if box is not None:
                arr = arr[box.slices((0, 0, 0))]
            self.volume, self.array, self.dtype = None, arr, arr.dtype
            self.box = Box.from_shape(arr.shape)
            vs = voxel_size_nm
            self.offset = (0, 0, 0) if offset is None else tuple(int(o) for o in offset)
            self.chunk_z = 16
        if self.dtype.kind not in "uif" or self.dtype.byteorder == ">":
            raise BadRegion(f"cannot export {self.dtype} data: integer or float voxels only")
        self.voxel_size_nm = None if vs is None else tuple(float(v) for v in vs)
        if self.voxel_size_nm is not None and (len(self.voxel_size_nm) != 3 or min(self.voxel_size_nm) <= 0):
            raise BadRegion(f"voxel_size_nm must be three positive numbers (z, y, x), got {vs}")
        if len(self.offset) != 3:
            raise BadRegion(f"offset must be (z, y, x), got {offset}")
        self.shape = self.box.shape

    def read(self, rel: Box) -> np.ndarray:
        if self.array is not None:
            return self.array[rel.slices((0, 0, 0))]
        return self.volume.read(rel.translate(self.box.start))


def _slabs(shape, itemsize: int, slab_bytes: int, chunk_z: int) -> list[Box]:
    """Whole-plane z slabs of at most slab_bytes (at least one plane), aligned to chunk_z when deeper."""
    plane = shape[1] * shape[2] * itemsize
    depth = max(1, min(shape[0], slab_bytes // max(1, plane)))
    if depth >= chunk_z:
        depth -= depth % chunk_z
    return [Box((z, 0, 0), (min(z + depth, shape[0]), shape[1], shape[2])) for z in range(0, shape[0], depth)]


def _stream(read, boxes: Sequence[Box], bar) -> Iterator[tuple[Box, np.ndarray]]:
    """(box, array) in order; the next box is read on a helper thread while the caller writes this one."""
    for b, arr in in_order(read, boxes, name="ndfs-export"):
        yield b, arr
        bar.update(b.shape[0])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def export(source, path, format: str | None = None, *, box: Box | None = None, voxel_size_nm=None, offset=None,
           overwrite: bool = False, progress: bool = False, slab_bytes: int = 64 * MiB) -> Path:
    """Write ``source`` (a numpy array, a Volume, or a ``box`` of one) to ``path``; return the path.

    ``voxel_size_nm`` and ``offset`` (ZYX) default to the volume's (the box's
    start) and are recorded in the file; an array has no voxel size unless
    given and offset (0, 0, 0). ``overwrite`` replaces an existing file.
    """
    from tqdm import tqdm

    fmt = registry.format_of(path, format)
    path = Path(path)
    src = _Source(source, box, voxel_size_nm, offset)
    if not fmt.holds(src.dtype):
        bits = "- and ".join(str(8 * np.dtype(d).itemsize) for d in fmt.dtypes or ())
        others = ", ".join(n for n, f in registry.FORMATS.items() if f.holds(src.dtype))
        raise BadRegion(f"{fmt.name} holds {bits}-bit grayscale; {src.dtype} data goes to {others}")
    if path.exists() and not overwrite:
        raise BadRegion(f"{path} exists (overwrite=True, or --force, replaces it)")
    if path.is_dir() and not path.is_symlink() and (not fmt.folder or any(
            p.name != png.META and p.suffix.lower() != ".png" for p in path.iterdir())):
        raise BadRegion(f"{path} is a folder holding other things than png slices; not replacing it")
    if not path.parent.is_dir():
        raise BadRegion(f"folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".part")
    _remove(tmp)
    boxes = _slabs(src.shape, src.dtype.itemsize, slab_bytes, src.chunk_z) if min(src.shape) else []
    info = FileInfo(fmt.name, src.shape, src.dtype, src.voxel_size_nm, src.offset)
    with tqdm(total=src.shape[0], unit="slice", desc=f"export {path.name}", disable=not progress) as bar:
        try:
            registry.write(tmp, fmt, info, (arr for _, arr in _stream(src.read, boxes, bar)), chunk_z=src.chunk_z)
        except BaseException as exc:
            _remove(tmp)
            if isinstance(exc, (NdfsError, KeyboardInterrupt)):
                raise
            if isinstance(exc, OSError):
                raise BackendError(f"writing {path} failed: {exc}") from exc
            raise
    if path.exists():
        _remove(path)
    os.replace(tmp, path)
    return path


# ---- readers -------------------------------------------------------------------------
def open_file(path, format: str | None = None) -> Reader:
    """Open a volume file for reading in z slabs (a context manager with ``info`` and ``read(z0, z1)``)."""
    return registry.open_reader(Path(path), registry.format_of(path, format), str(path))


def file_info(path, format: str | None = None) -> FileInfo:
    """Shape, dtype, voxel size and offset recorded in a volume file."""
    with open_file(path, format) as r:
        return r.info


def load(path, format: str | None = None) -> np.ndarray:
    """The whole file as a ZYX numpy array."""
    return registry.read_array(Path(path), registry.format_of(path, format), str(path))


def import_file(path, volume, *, format: str | None = None, offset=None, progress: bool = False,
                slab_bytes: int = 64 * MiB) -> Box:
    """Write a volume file into ``volume`` (a Volume of an existing channel); return the box written.

    ``offset`` (ZYX, dataset coordinates) defaults to the offset recorded in
    the file, else the volume's offset. Shape, position and dtype are checked
    before anything is written; data convert only without loss.
    """
    from tqdm import tqdm

    with open_file(path, format) as r:
        info = r.info
        start = offset if offset is not None else (info.offset if info.offset is not None else volume.offset)
        start = tuple(int(s) for s in start)
        if len(start) != 3:
            raise BadRegion(f"offset must be (z, y, x), got {offset}")
        box = Box(start, tuple(s + n for s, n in zip(start, info.shape)))
        if not volume.box.contains(box):
            raise BadRegion(f"{Path(path).name} ({info.shape[2]}x{info.shape[1]}x{info.shape[0]} at x {start[2]}, "
                            f"y {start[1]}, z {start[0]}) does not fit in {volume.box}")
        if info.dtype != volume.dtype and not np.can_cast(info.dtype, volume.dtype, casting="safe"):
            raise BadInput(f"{Path(path).name} holds {info.dtype}, which a {volume.dtype} channel cannot store")
        slabs = _slabs(info.shape, info.dtype.itemsize, slab_bytes, volume.level_info.chunk_shape[0])
        with tqdm(total=info.shape[0], unit="slice", desc=f"import {Path(path).name}", disable=not progress) as bar:
            for rel, arr in _stream(lambda b: r.read(b.start[0], b.stop[0]), slabs, bar):
                target = rel.translate(start)
                try:
                    volume.write(target, arr.astype(volume.dtype, copy=False))
                except NdfsError as exc:
                    done = f"z {start[0]}:{target.start[0]}" if target.start[0] > start[0] else "nothing"
                    raise type(exc)(f"import stopped at z {target.start[0]} ({done} written): {exc}",
                                    errno=exc.errno) from exc
    return box
