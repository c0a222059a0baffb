"""``<channel>.ome.zarr/``: each channel of a mount also as a read-only OME-Zarr folder.

Beside every channel folder ``<channel>/`` the mount shows ``<channel>.ome.zarr/``,
the files :class:`ndfs.serve.zarr.OmeZarrImage` describes: OME-Zarr 0.4 on zarr
v2 (``.zgroup``, ``.zattrs``, ``<level>/.zarray``, chunks ``<level>/<z>/<y>/<x>``)
and 0.5 on zarr v3 (``zarr.json``, chunks ``<level>/c/<z>/<y>/<x>``) side by
side, and for image channels ``labels/`` with the annotation channels of the
same folder and frame. Chunks are uncompressed and full-size, so every file
has its exact size at ``ls -l`` without any voxel read; opening a chunk file
reads that chunk (through the chunk cache) and nothing else, so zarr-python,
ome-zarr-py, tensorstore, napari and Fiji's N5/Zarr importer fetch only the
chunks they touch.

The folder is read-only (``EROFS``) and its files are served past the kernel's
page cache (each open reads the chunk as the store has it now), so a write
to the channel shows in them at once.

Hooked into :mod:`ndfs.fs.tree` by ``FolderDir``: :func:`extra_names` adds
the names to a folder's listing, :func:`child` resolves them. Thread-safe.
"""

from __future__ import annotations

from ndfs.core.errors import NotFound
from ndfs.volume import Volume
from ndfs.fs.nodes import BytesFile, DirNode, FileNode, Node

SUFFIX = ".ome.zarr"


def _is_volume(folder, name: str) -> bool:
    tree, path = folder.tree, folder.path + (name,)
    backend = tree.backend(folder.remote)
    try:
        return bool(tree._memoised(("is_volume", folder.remote, path), lambda: backend.is_volume(path), tree.ttl_s))
    except NotFound:
        return False


def extra_names(folder, names: list[str]) -> list[str]:
    """``<channel>.ome.zarr`` for every channel among a folder's ``names`` (unless the name is taken)."""
    taken = set(names)
    return [n + SUFFIX for n in names if n + SUFFIX not in taken and _is_volume(folder, n)]


def child(folder, name: str) -> Node | None:
    """The OME-Zarr folder ``name`` names in ``folder`` (a tree FolderDir), or None when it names none."""
    if not name.endswith(SUFFIX) or len(name) == len(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    if not _is_volume(folder, stem):
        return None
    tree, backend = folder.tree, folder.tree.backend(folder.remote)
    listing = tree._memoised(("children", folder.remote, folder.path), lambda: backend.children(folder.path),
                             tree.ttl_s)
    if name in listing:  # the store's own entry of that name comes first
        return None
    return OmeZarrDir(folder.tree, folder.remote, folder.path + (stem,), ())


class OmeZarrDir(DirNode):
    """A folder of a channel's OME-Zarr tree (``parts``: the path inside it)."""

    def __init__(self, tree, remote: str, ref: tuple, parts: tuple):
        self.tree, self.remote, self.ref, self.parts = tree, remote, ref, parts
        self.mtime = tree.mtime(remote, ref)

    def _image(self):
        from ndfs.serve.zarr import image_of

        t, backend = self.tree, self.tree.backend(self.remote)

        def siblings(folder):
            return t._memoised(("children", self.remote, folder), lambda: backend.children(folder), t.ttl_s)

        return t._memoised(("omezarr", self.remote, self.ref, t.token(self.remote, self.ref)),
                           lambda: image_of(backend, self.ref, siblings), t.ttl_s)

    def names(self) -> list[str]:
        return list(self._image().node(self.parts).names)

    def child(self, name: str) -> Node:
        image = self._image()
        parts = self.parts + (name,)
        node = image.node(parts)
        if node.kind == "dir":
            return OmeZarrDir(self.tree, self.remote, self.ref, parts)
        if node.kind == "file":
            return _Direct(BytesFile(node.data, self.mtime))
        source, ref = image, self.ref
        if parts[0] == "labels":
            source, ref = image.labels[parts[1]], self.ref[:-1] + (parts[1],)
        return ChunkFile(self.tree, self.remote, ref, source, node, self.mtime)


class _Direct(FileNode):
    """A metadata file, served past the page cache like the chunks beside it."""

    direct_io = True

    def __init__(self, inner: BytesFile):
        self.inner, self.size, self.mtime = inner, inner.size, inner.mtime

    def read(self, offset: int, size: int) -> bytes:
        return self.inner.read(offset, size)


class ChunkFile(FileNode):
    """One chunk: its size is known from the level's chunk shape; opening it reads the chunk whole."""

    direct_io = True

    def __init__(self, tree, remote: str, ref: tuple, image, node, mtime: float):
        self.tree, self.remote, self.ref, self.image, self.node = tree, remote, ref, image, node
        self.size, self.mtime = node.size, mtime

    def open(self) -> FileNode:
        backend = self.tree.backend(self.remote)
        data = self.image.chunk(self.node, lambda level, box: Volume(backend, self.ref, level).read(box))
        return BytesFile(data, self.mtime)

    def read(self, offset: int, size: int) -> bytes:
        return self.open().read(offset, size)
