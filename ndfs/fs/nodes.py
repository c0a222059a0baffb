"""The nodes of the path tree: folders and files, and how a plane file maps onto a volume.

Pure Python, no FUSE. A :class:`FileNode` knows its size without reading
voxels; reading and committing go through the callables its folder gives it
(see :mod:`ndfs.fs.tree`, which makes the nodes of each path, and
:mod:`ndfs.fs.views` and :mod:`ndfs.fs.ramon_dir`, which add the label views
and the RAMON files). Thread-safe where they hold state.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from ndfs.core.errors import NdfsError, ReadOnly
from ndfs.core.geometry import Box
from ndfs.formats.complete import complete
from ndfs.formats.tiff import TiffLayout

AXES = ("z", "y", "x")
#: a plane file is read whole when it is opened (so a concurrent write is never seen half-done) up to this size
SNAPSHOT_BYTES = 64 * 2**20
#: bytes a written file may have beyond twice its voxels (headers, metadata of other tools)
WRITE_SLACK = 16 * 2**20


class Node:
    """Base of tree nodes. ``mtime`` is seconds since the epoch."""

    is_dir = False
    mtime: float = 0.0


class DirNode(Node):
    is_dir = True
    #: new files can be created here
    writable = False

    def names(self) -> list[str]:
        raise NotImplementedError

    def child(self, name: str) -> Node:
        raise NotImplementedError

    def create(self, name: str) -> "FileNode":
        """A new, empty, writable file named `name` (its content arrives in ``commit``)."""
        raise ReadOnly(f"new files cannot be made here ({name!r})")

    def unlink(self, name: str) -> None:
        raise NdfsError(f"{name!r} is a view of a volume and cannot be removed", errno=errno.EPERM)


class FileNode(Node):
    size: int = 0
    writable = False
    #: bypass the page cache (only for files whose content changes while open)
    direct_io = False
    #: the format of the file's content, for :meth:`complete` ("tif", "npy", "npz", "h5", "json")
    fmt: str | None = None
    #: the most bytes a new content may have (writes past it are EFBIG); None: no bound
    max_bytes: int | None = None

    def open(self) -> "FileNode":
        """Called when a file is opened; returns the node that serves the handle's reads."""
        return self

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def commit(self, data: bytes) -> None:
        """Store the file's whole new content (writable files only); raise an NdfsError to refuse it."""
        raise ReadOnly("this file cannot be written")

    def complete(self, fh: BinaryIO) -> bool:
        """Whether a spooled new content is a whole file yet (its structure all there, nothing past
        its end); False while a writer is still filling it in. The file may still be invalid."""
        return complete(fh, self.fmt, self.max_bytes) if self.fmt else True

    def commit_file(self, fh: BinaryIO) -> None:
        """Like ``commit`` with the content in a seekable file; nodes with large files read it in parts."""
        fh.seek(0)
        self.commit(fh.read())


class BytesFile(FileNode):
    """A small file whose whole content is known (info.json)."""

    def __init__(self, data: bytes, mtime: float):
        self.data, self.size, self.mtime = data, len(data), mtime

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


class RenderedFile(FileNode):
    """A file whose bytes are made whole when first needed (``_bytes``): cutouts, RAMON files."""

    def _bytes(self) -> bytes:
        raise NotImplementedError

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self._bytes())

    def open(self) -> FileNode:
        return BytesFile(self._bytes(), self.mtime)

    def read(self, offset: int, size: int) -> bytes:
        return self._bytes()[offset:offset + size]


class DynamicFile(FileNode):
    """A small file rendered anew on each open (status files); served with direct_io."""

    direct_io = True

    def __init__(self, render: Callable[[], bytes], mtime: float):
        self.render, self.mtime = render, mtime
        self.size = len(render())

    def open(self) -> FileNode:
        return BytesFile(self.render(), self.mtime)


class TiffFile(FileNode):
    """A virtual TIFF: header/IFD bytes computed, pixel rows read as boxes through the backend.

    ``on_open`` (optional) runs when the file is opened, e.g. a prefetch hint for the cache.
    """

    def __init__(self, layout: TiffLayout, get_rows: Callable[[int, int, int], np.ndarray], mtime: float,
                 on_open: Callable[[], None] | None = None, store: Callable[[BinaryIO], None] | None = None,
                 snapshot: Callable[[], np.ndarray] | None = None):
        self.layout, self.get_rows, self.mtime, self.on_open = layout, get_rows, mtime, on_open
        self.size = layout.size
        self.store, self.snapshot = store, snapshot
        self.writable = store is not None
        self.fmt = "tif"
        self.max_bytes = 2 * layout.size + WRITE_SLACK  # another tool's TIFF of the same pixels, with room

    def open(self) -> FileNode:
        if self.on_open is not None:
            self.on_open()
        if self.snapshot is not None and self.layout.height * self.layout.width * self.layout.dtype.itemsize \
                <= SNAPSHOT_BYTES:
            return _SnapshotTiff(self)
        return self

    def read(self, offset: int, size: int) -> bytes:
        return self.layout.read(offset, size, self.get_rows)

    def commit_file(self, fh: BinaryIO) -> None:
        if self.store is None:
            raise ReadOnly("this file cannot be written")
        self.store(fh)


class _SnapshotTiff(FileNode):
    """An open plane file: the plane is read whole when the file is opened (one read, never half of a
    write), so every page this handle serves is of that one version; the session compares the
    volume's token before and after, so a handle whose snapshot may be newer than its token bypasses
    the page cache."""

    def __init__(self, node: TiffFile):
        self.node, self.size, self.mtime = node, node.size, node.mtime
        self._plane = node.snapshot()

    def read(self, offset: int, size: int) -> bytes:
        layout = self.node.layout
        if offset + size <= layout.data_start or offset >= layout.data_end:
            return self.node.read(offset, size)  # header or trailer: no pixels
        plane = self._plane
        return self.node.layout.read(offset, size, lambda p, r0, r1: plane[r0:r1])


@dataclass(frozen=True)
class Plane:
    """How a 2-D file maps onto a volume: which axis is fixed and how image rows map to the volume."""

    axis: str  # "z", "y" or "x": the axis held at one index

    def shape(self, vshape) -> tuple[int, int]:
        z, y, x = vshape
        return {"z": (y, x), "y": (z, x), "x": (z, y)}[self.axis]

    def voxel_size(self, vs) -> tuple[float, float, float]:
        """(spacing, row size, column size) for the TIFF's calibration."""
        z, y, x = vs
        return {"z": (z, y, x), "y": (y, z, x), "x": (x, z, y)}[self.axis]

    def box(self, lbox: Box, index: int, r0: int, r1: int) -> Box:
        """The volume box of rows [r0, r1) (counted from the level's start) of plane `index`."""
        (z0, y0, x0), (_, y1, x1) = lbox.start, lbox.stop
        if self.axis == "z":
            return Box((index, y0 + r0, x0), (index + 1, y0 + r1, x1))
        if self.axis == "y":
            return Box((z0 + r0, index, x0), (z0 + r1, index + 1, x1))
        return Box((z0 + r0, y0, index), (z0 + r1, y1, index + 1))

    def rows(self, arr: np.ndarray) -> np.ndarray:
        return {"z": lambda a: a[0], "y": lambda a: a[:, 0, :], "x": lambda a: a[:, :, 0]}[self.axis](arr)
