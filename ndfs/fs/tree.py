"""The path tree: which files a mount shows, their sizes, and their bytes.

Pure Python, no FUSE import: the mount, ``ndfs ls``/``ndfs cat`` and the tests
use the same code. Layout under the mount root::

    <remote>/<folder>.../<channel>/info.json
    <remote>/<folder>.../<channel>/<level>/{z,y,x}/<N>.tif   one plane, N in dataset coordinates
    <remote>/<folder>.../<channel>/<level>/stack.tif         the whole level, ImageJ multipage
    <remote>/<folder>.../<channel>/<level>/cutout/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>.{tif,npy,npz,h5}
                                                             any box, made when it is opened

Sizes come from VolumeInfo alone, so listing never reads voxels. Hierarchy
answers from backends are memoised for ``ttl_s`` seconds. Thread-safe.

Writes: a writable file node has ``writable = True``, tells whether a spooled
file is whole yet (``complete``: see :mod:`ndfs.fs.session` for when files are
committed) and gets the whole new content of the file in ``commit_file``; the
node checks it and stores it with :meth:`Tree.write`, which is the one place
the mount writes voxels (one call per file: one journal entry). A folder that
can hold new files implements ``create``; ``unlink`` removes a file.

Versions: every file of a volume is keyed on the volume's version token
(``Backend.version``, owned by the outermost layer); :meth:`Tree.refresh`
notices when it moved (a write here, another process, ``max_age_s``), forgets
what it rendered from the old version and marks the volume ``changed``; the
session then serves that volume's files past the kernel's page cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from typing import BinaryIO, Callable, Mapping

import cachetools
import numpy as np

from ndfs.stores.base import Backend, KeyValueStore, VolumeRef
from ndfs.core.errors import BadInput, NdfsError, NotFound, ReadOnly, TooLarge, disk_error
from ndfs.formats import registry
from ndfs.fs import omezarr, views
from ndfs.fs.ramon_dir import RamonDir, has_ramon
from ndfs.volume import Volume
from ndfs.fs.nodes import (AXES, SNAPSHOT_BYTES, WRITE_SLACK, BytesFile, DirNode, DynamicFile, FileNode, Node,
                            Plane, RenderedFile, TiffFile)
from ndfs.core.geometry import Box
from ndfs.formats.tiff import TiffLayout
from ndfs.core.info import VolumeInfo

log = logging.getLogger("ndfs.tree")

#: a number in a file name: ASCII digits, no sign but "-", no leading zeros (one spelling per number)
NUMBER = "(0|-?[1-9][0-9]*)"
SLICE_NAME = re.compile(rf"{NUMBER}\.tif")
LEVEL_NAME = re.compile("0|[1-9][0-9]*")
#: cutout/ files: one box in any of the registry's one-file formats (tif, npy, npz, h5)
CUTOUT_NAME = re.compile(rf"{NUMBER}-{NUMBER}_{NUMBER}-{NUMBER}_{NUMBER}-{NUMBER}\.({'|'.join(registry.FILE_FORMATS)})")


def _dumps(doc) -> str:
    """Indented JSON with short lists of numbers kept on one line."""
    text = json.dumps(doc, indent=2)
    return re.sub(r"\[\s+([-0-9., \n]+?)\s+\]", lambda m: "[" + ", ".join(
        v.strip() for v in m.group(1).split(",")) + "]", text)


class Tree:
    """Resolves mount paths to nodes over a set of named backends.

    A volume's version token is looked at by :meth:`refresh` (after every write
    through :meth:`write`, and when a file of the volume is opened); when it
    moved, the volume joins ``changed``.
    """

    def __init__(self, remotes: Mapping[str, Backend], ttl_s: float = 10.0, max_cutout_bytes: int = 1 << 30,
                 max_ramon_bytes: int = 16 * 2**20):
        self.remotes = dict(remotes)
        self.ttl_s = ttl_s
        self.max_cutout_bytes = max_cutout_bytes
        #: largest ramon/<id>.json a mount accepts (EFBIG past it)
        self.max_ramon_bytes = max_ramon_bytes
        self.started = time.time()
        self._memo: dict[tuple, tuple[float, object]] = {}
        self._lock = threading.Lock()
        self._tokens: dict[tuple, tuple[object, float]] = {}  # (remote, ref) -> (token last seen, when it moved)
        self.changed: set[tuple] = set()  # volumes whose token moved while this tree served them
        #: rendered cutout and RAMON files, keyed with the volume's token so a change makes them stale
        rendered_bytes = max(64 * 2**20, min(2 * max_cutout_bytes, 512 * 2**20))
        self.rendered = cachetools.LRUCache(maxsize=rendered_bytes, getsizeof=len)

    # ---- memo of backend answers (hierarchy, info, layouts) ---------------
    def _memoised(self, key: tuple, compute: Callable[[], object], ttl: float | None = None):
        now = time.monotonic()
        with self._lock:
            hit = self._memo.get(key)
        if hit is not None and (ttl is None or now - hit[0] < ttl):
            return hit[1]
        value = compute()
        with self._lock:
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[key] = (now, value)
        return value

    def stats(self) -> dict:
        """Per remote: reads served, and the cache's hits, sizes and backend request counts."""
        from ndfs.stores.wrap import layers
        from ndfs.cache import CachedBackend
        from ndfs.journal.outbox import JournaledStore

        out = {}
        for name, backend in self.remotes.items():
            entry = {"kind": backend.kind, "served": backend.stats.as_dict()}
            for layer in layers(backend):
                if isinstance(layer, CachedBackend):
                    entry["cache"] = layer.cache_stats()
                    entry["backend"] = entry["cache"].pop("backend")
                elif isinstance(layer, JournaledStore):  # writes still in the outbox
                    entry["outbox_pending"] = len(layer.pending())
            entry.setdefault("backend", entry["served"])
            out[name] = entry
        return out

    def forget(self) -> None:
        with self._lock:
            self._memo.clear()

    #: memoised answers that a change of a volume's voxels or annotations leaves as they were
    _SHAPE_KEYS = frozenset({"info", "layout", "is_volume", "is_file", "children", "file_size"})

    def _forget_contents(self, remote: str, ref: VolumeRef) -> None:
        """Drop memoised answers about a volume's contents (RAMON ids and objects), keep its shape."""
        with self._lock:
            for key in [k for k in self._memo if k[0] not in self._SHAPE_KEYS and k[1:3] == (remote, ref)]:
                del self._memo[key]

    def forget_file(self, remote: str, path: VolumeRef) -> None:
        """Drop what is memoised about one file and its folder's listing (after it was written or removed)."""
        with self._lock:
            for key in (("is_file", remote, path), ("file_size", remote, path), ("is_volume", remote, path),
                        ("children", remote, path[:-1])):
                self._memo.pop(key, None)

    # ---- versions -----------------------------------------------------------
    def token(self, remote: str, ref: VolumeRef):
        """The volume's version token now (the outermost layer's; a stat or two)."""
        return self.backend(remote).version(ref)

    def mtime(self, remote: str, ref: VolumeRef) -> float:
        """When the volume's token was last seen to move (the tree's start before that)."""
        with self._lock:
            return self._tokens.get((remote, ref), (None, self.started))[1]

    def refresh(self, remote: str, ref: VolumeRef):
        """Look at the volume's token; if it moved since the last look, forget memoised answers and
        mark the volume ``changed``. Returns the token. The first look only records it."""
        token = self.token(remote, ref)
        with self._lock:
            prev = self._tokens.get((remote, ref))
            if prev is not None and prev[0] == token:
                return token
            self._tokens[(remote, ref)] = (token, self.started if prev is None else time.time())
            if prev is None:
                return token
            self.changed.add((remote, ref))
        self._forget_contents(remote, ref)
        return token

    # ---- writes -------------------------------------------------------------------
    def write(self, remote: str, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        """Store voxels through the remote's backend (the one write path of the mount), then refresh."""
        try:
            self.backend(remote).write(ref, box, level, array)
        finally:  # a failed write may still have changed part of the volume
            self.refresh(remote, ref)

    def render(self, key: tuple, render: Callable[[], bytes]) -> bytes:
        """A rendered file's bytes, memoised in ``rendered`` (bounded in bytes) under `key`."""
        with self._lock:
            data = self.rendered.get(key)
        if data is None:
            data = render()
            if len(data) <= self.rendered.maxsize // 2:
                with self._lock:
                    self.rendered[key] = data
        return data

    def backend(self, remote: str) -> Backend:
        try:
            return self.remotes[remote]
        except KeyError:
            raise NotFound(f"no remote named {remote!r}") from None

    def info(self, remote: str, ref: VolumeRef) -> VolumeInfo:
        return self._memoised(("info", remote, ref), lambda: self.backend(remote).info(ref), self.ttl_s)

    # ---- resolution -------------------------------------------------------
    def resolve(self, path: str, fresh: bool = False) -> Node:
        """The node at ``path``. With ``fresh`` (opening a file), the volume on the way is refreshed
        first (:meth:`refresh`), so the node reflects its current version."""
        return self.locate(path, fresh)[0]

    def locate(self, path: str, fresh: bool = False) -> tuple[Node, tuple[str, VolumeRef] | None]:
        """The node at ``path`` and the volume it belongs to ((remote, ref), or None above volumes)."""
        node: Node = RootDir(self)
        volume = None
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise NotFound(f"{path}: {part!r} is below a file")
            parent, node = node, node.child(part)
            if isinstance(node, VolumeDir):
                volume = (node.remote, node.ref)
                if fresh:
                    fresh = False
                    token = self.refresh(node.remote, node.ref)
                    if token != node.token:
                        node = parent.child(part)  # the new version
        return node, volume

    def listdir(self, path: str) -> list[str]:
        node = self.resolve(path)
        if not node.is_dir:
            raise NotFound(f"{path} is a file, not a folder")
        return node.names()

    def layout(self, remote: str, ref: VolumeRef, level: int, what: str) -> TiffLayout:
        """The memoised TIFF layout of a slice axis ('z', 'y', 'x') or of 'stack'."""

        def build() -> TiffLayout:
            info = self.info(remote, ref)
            lv = info.level(level)
            if what == "stack":
                n, (h, w), vs = lv.shape[0], lv.shape[1:], lv.voxel_size_nm
            else:
                plane = Plane(what)
                n, (h, w), vs = 1, plane.shape(lv.shape), plane.voxel_size(lv.voxel_size_nm)

            vs, unit = views.calibration(vs)
            try:
                return TiffLayout(n, h, w, info.dtype, voxel_size=vs, unit=unit,
                                  display_range=views.image_display_range(self, remote, ref))
            except ValueError as exc:
                raise TooLarge(f"{'/'.join(ref)} level {level}: {exc}") from exc

        return self._memoised(("layout", remote, ref, level, what), build, self.ttl_s)


class BlobFile(FileNode):
    """A file a backend keeps whole (a DVID key): read with ``read_file`` at each open, committed with ``write_file``.

    Served with direct_io, since the service may change it; the size is the
    content's length, memoised like other backend answers.
    """

    direct_io = True

    def __init__(self, tree: "Tree", remote: str, path: VolumeRef, data: bytes | None = None):
        self.tree, self.remote, self.path, self.mtime = tree, remote, path, tree.started
        self.writable = "write" in tree.backend(remote).capabilities
        self._data = data

    @property
    def size(self) -> int:
        if self._data is not None:
            return len(self._data)
        return self.tree._memoised(("file_size", self.remote, self.path),
                                   lambda: len(self.tree.backend(self.remote).read_file(self.path)), self.tree.ttl_s)

    def open(self) -> FileNode:
        return BytesFile(self.tree.backend(self.remote).read_file(self.path), self.mtime)

    def read(self, offset: int, size: int) -> bytes:
        return self.open().read(offset, size)

    def commit(self, data: bytes) -> None:
        try:
            self.tree.backend(self.remote).write_file(self.path, bytes(data))
        finally:
            self.tree.forget_file(self.remote, self.path)


STATUS_DIR = ".ndfs"


class RootDir(DirNode):
    """The mount root: one folder per remote, and ``.ndfs/`` with the daemon's status."""

    def __init__(self, tree: Tree):
        self.tree, self.mtime = tree, tree.started

    def names(self) -> list[str]:
        return list(self.tree.remotes) + [STATUS_DIR]

    def child(self, name: str) -> Node:
        if name == STATUS_DIR and name not in self.tree.remotes:
            return StatusDir(self.tree)
        self.tree.backend(name)
        return FolderDir(self.tree, name, ())


class StatusDir(DirNode):
    """``.ndfs/stats.json``: request counts and cache statistics of every remote, read live."""

    def __init__(self, tree: Tree):
        self.tree, self.mtime = tree, tree.started

    def names(self) -> list[str]:
        return ["stats.json"]

    def child(self, name: str) -> Node:
        if name != "stats.json":
            raise NotFound(f"{STATUS_DIR} has no {name!r}")
        return DynamicFile(lambda: (_dumps(self.tree.stats()) + "\n").encode(), time.time())


class FolderDir(DirNode):
    """A folder of a backend's own hierarchy (project, collection, repo...)."""

    def __init__(self, tree: Tree, remote: str, path: VolumeRef):
        self.tree, self.remote, self.path, self.mtime = tree, remote, path, tree.started

    def names(self) -> list[str]:
        backend = self.tree.backend(self.remote)
        names = self.tree._memoised(("children", self.remote, self.path),
                                    lambda: backend.children(self.path), self.tree.ttl_s)
        return names + omezarr.extra_names(self, names)  # <channel>.ome.zarr beside each channel

    @property
    def writable(self) -> bool:
        """New files can be made here: the backend keeps files in this folder (a DVID key-value instance)."""
        backend = self.tree.backend(self.remote)
        return isinstance(backend, KeyValueStore) and "write" in backend.capabilities and backend.holds_files(self.path)

    def child(self, name: str) -> Node:
        path = self.path + (name,)
        backend = self.tree.backend(self.remote)
        found = omezarr.child(self, name)
        if found is not None:
            return found
        if isinstance(backend, KeyValueStore) and self.tree._memoised(
                ("is_file", self.remote, path), lambda: backend.is_file(path), self.tree.ttl_s):
            return BlobFile(self.tree, self.remote, path)
        is_volume = self.tree._memoised(("is_volume", self.remote, path),
                                        lambda: backend.is_volume(path), self.tree.ttl_s)
        if is_volume:
            return VolumeDir(self.tree, self.remote, path)
        return FolderDir(self.tree, self.remote, path)

    def create(self, name: str) -> FileNode:
        """A new empty file, stored at once (as a disk would show it) and filled by ``commit``."""
        path = self.path + (name,)
        if not self.writable:
            raise ReadOnly(f"new files cannot be made in {'/'.join(self.path) or '/'}")
        try:
            self.tree.backend(self.remote).write_file(path, b"")
        finally:
            self.tree.forget_file(self.remote, path)
        return BlobFile(self.tree, self.remote, path, data=b"")

    def unlink(self, name: str) -> None:
        path = self.path + (name,)
        if not isinstance(self.child(name), BlobFile):
            return super().unlink(name)
        try:
            self.tree.backend(self.remote).delete_file(path)
        finally:
            self.tree.forget_file(self.remote, path)


class VolumeDir(DirNode):
    """A channel: info.json and one folder per level."""

    def __init__(self, tree: Tree, remote: str, ref: VolumeRef):
        self.tree, self.remote, self.ref = tree, remote, ref
        self.token, self.mtime = tree.token(remote, ref), tree.mtime(remote, ref)  # both move with every change

    def volume(self, level: int) -> Volume:
        """The channel at ``level`` as an :class:`ndfs.volume.Volume`: what every file of it reads through
        (a read never returns half of a write, see ndfs.core.locks)."""
        return Volume(self.tree.backend(self.remote), self.ref, level)

    @property
    def info(self) -> VolumeInfo:
        return self.tree.info(self.remote, self.ref)

    @property
    def writable(self) -> bool:
        return "write" in self.tree.backend(self.remote).capabilities

    def name_of(self, level: int, rest: str) -> str:
        return f"{self.remote}/{'/'.join(self.ref)}/{level}/{rest}"

    def names(self) -> list[str]:

        levels = [str(i) for i in range(len(self.info.levels))]
        return ["info.json"] + levels + (["ramon"] if has_ramon(self) else [])

    def child(self, name: str) -> Node:
        if name == "ramon":

            if has_ramon(self):
                return RamonDir(self)
        if name == "info.json":
            doc = {"remote": self.remote, "path": "/".join(self.ref), **self.info.to_json()}
            return BytesFile((_dumps(doc) + "\n").encode(), self.mtime)
        if LEVEL_NAME.fullmatch(name) and int(name) < len(self.info.levels):
            return LevelDir(self, int(name))
        raise NotFound(f"{'/'.join(self.ref)} has no {name!r}")


class LevelDir(DirNode):
    """One level of a channel: its files read voxels through ``volume``, an :class:`ndfs.volume.Volume`."""

    def __init__(self, vol: VolumeDir, level: int):
        self.vol, self.level, self.mtime = vol, level, vol.mtime
        self.volume = vol.volume(level)

    def names(self) -> list[str]:
        return list(AXES) + ["stack.tif", "cutout"] + views.level_names(self)

    def child(self, name: str) -> Node:
        t, v = self.vol.tree, self.vol
        if name in AXES:
            return AxisDir(self, Plane(name))
        if name == "cutout":
            return CutoutDir(self)
        if name == "stack.tif":
            lv = v.info.level(self.level)
            layout = t.layout(v.remote, v.ref, self.level, "stack")
            plane = Plane("z")

            def get_rows(p: int, r0: int, r1: int) -> np.ndarray:
                return plane.rows(self.volume.read(plane.box(lv.box, lv.offset[0] + p, r0, r1)))

            return TiffFile(layout, get_rows, self.mtime, store=self._store_stack if v.writable else None)

        return views.level_child(self, name)

    def _store_stack(self, fh: BinaryIO) -> None:
        """A whole level written as one multipage TIFF: every page decoded (slab by slab, into an
        unnamed temporary file beside the spool, so memory stays bounded), then stored as one write."""
        v, level = self.vol, self.level
        name = v.name_of(level, "stack.tif")
        info = v.info
        lv = info.level(level)
        n = lv.shape[0]
        plane_bytes = lv.shape[1] * lv.shape[2] * info.dtype.itemsize
        cz = lv.chunk_shape[0]
        depth = max(cz, (SNAPSHOT_BYTES // max(1, plane_bytes * cz)) * cz)
        slabs = [(z0, min(n, z0 + depth)) for z0 in range(0, n, depth)]
        spool_dir = os.path.dirname(getattr(fh, "name", "") or "") or None
        # every page is checked (count, shape, dtype) before any is decoded
        with registry.open_reader(fh, "tif", name, shape=lv.shape, dtype=info.dtype) as pages_in:
            try:
                with tempfile.TemporaryFile(dir=spool_dir) as tmp:
                    pages = np.memmap(tmp, dtype=info.dtype, mode="w+", shape=tuple(lv.shape))
                    for z0, z1 in slabs:  # every page must decode before anything is stored
                        pages[z0:z1] = pages_in.read(z0, z1)
                    v.tree.write(v.remote, v.ref, lv.box, level, pages)
                    del pages
            except NdfsError:
                raise
            except OSError as exc:
                raise disk_error(exc, f"{name}: decoding the pages") from exc


class AxisDir(DirNode):
    """``z/``, ``y/`` or ``x/``: one TIFF per index along the axis."""

    def __init__(self, level: LevelDir, plane: Plane):
        self.leveldir, self.plane, self.mtime = level, plane, level.mtime

    def _range(self) -> range:
        lv = self.leveldir.vol.info.level(self.leveldir.level)
        i = AXES.index(self.plane.axis)
        return range(lv.offset[i], lv.offset[i] + lv.shape[i])

    def names(self) -> list[str]:
        return [f"{n}.tif" for n in self._range()]

    def create(self, name: str) -> FileNode:
        """Only the existing slice names can be written (e.g. ``cp *.tif z/`` of files named <N>.tif)."""
        try:
            node = self.child(name)
        except NotFound as exc:
            raise BadInput(f"cannot make {name!r} here: {exc}") from None
        if not node.writable:
            raise ReadOnly(f"{self.leveldir.vol.remote} is read-only")
        return node  # type: ignore[return-value]

    def child(self, name: str) -> Node:
        if name.endswith(".png"):
            return views.axis_child(self, name)
        m = SLICE_NAME.fullmatch(name)
        if not m or int(m.group(1)) not in self._range():
            rng = self._range()
            raise NotFound(f"no slice {name!r} on axis {self.plane.axis} (valid: {rng.start}..{rng.stop - 1})")
        index = int(m.group(1))
        v, level = self.leveldir.vol, self.leveldir.level
        t = v.tree
        lv = v.info.level(level)
        layout = t.layout(v.remote, v.ref, level, self.plane.axis)
        plane, volume = self.plane, self.leveldir.volume

        def get_rows(p: int, r0: int, r1: int) -> np.ndarray:
            return plane.rows(volume.read(plane.box(lv.box, index, r0, r1)))

        whole = plane.box(lv.box, index, 0, layout.height)

        def store(fh: BinaryIO) -> None:
            fname = v.name_of(level, f"{plane.axis}/{name}")
            t.write(v.remote, v.ref, whole, level,
                    registry.read_array(fh, "tif", fname, shape=whole.shape, dtype=v.info.dtype))

        return TiffFile(layout, get_rows, self.mtime, on_open=lambda: volume.backend.prefetch(v.ref, whole, level),
                        store=store if v.writable else None,
                        snapshot=lambda: plane.rows(volume.read(whole)))


class CutoutDir(DirNode):
    """``cutout/``: a file for any box, named ``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>.<fmt>``.

    Coordinates are the level's dataset coordinates, stops exclusive. The
    folder lists nothing (every box exists); opening a name renders that box
    (up to the tree's ``max_cutout_bytes``, else EFBIG); writing an array of
    the box's shape into it posts it.
    """

    def __init__(self, level: LevelDir):
        self.leveldir, self.mtime = level, level.mtime

    @property
    def writable(self) -> bool:
        return self.leveldir.vol.writable

    def names(self) -> list[str]:
        return []

    def _node(self, name: str, new: bool) -> "CutoutFile":
        m = CUTOUT_NAME.fullmatch(name)
        if not m:
            raise (BadInput if new else NotFound)(
                f"cutout names look like <x0>-<x1>_<y0>-<y1>_<z0>-<z1>.<fmt> "
                f"(fmt: {', '.join(registry.FILE_FORMATS)}), not {name!r}")
        x0, x1, y0, y1, z0, z1 = (int(g) for g in m.groups()[:6])
        if x1 <= x0 or y1 <= y0 or z1 <= z0:
            raise (BadInput if new else NotFound)(f"{name}: every stop must be larger than its start")
        v, level = self.leveldir.vol, self.leveldir.level
        box = Box((z0, y0, x0), (z1, y1, x1))
        v.info.check_box(box, level)
        nbytes = box.size * v.info.dtype.itemsize
        if nbytes > v.tree.max_cutout_bytes:
            raise TooLarge(f"{name} would hold {nbytes} bytes of voxels; the limit is {v.tree.max_cutout_bytes} "
                           "(max_cutout_bytes in [mount]); read it in smaller boxes")
        return CutoutFile(self.leveldir, box, m.group(7), name)

    def child(self, name: str) -> Node:
        return self._node(name, new=False)

    def create(self, name: str) -> FileNode:
        if not self.writable:
            raise ReadOnly(f"{self.leveldir.vol.remote} is read-only")
        return self._node(name, new=True)


class CutoutFile(RenderedFile):
    """One box of a level in one file format, rendered when first looked at."""

    def __init__(self, level: LevelDir, box: Box, fmt: str, name: str):
        self.leveldir, self.box, self.fmt, self.name = level, box, fmt, name
        self.mtime = level.mtime
        self.writable = level.vol.writable
        self.max_bytes = 2 * box.size * level.vol.info.dtype.itemsize + WRITE_SLACK

    def _bytes(self) -> bytes:
        v, level = self.leveldir.vol, self.leveldir.level
        t = v.tree
        key = (v.remote, v.ref, level, self.box, self.fmt, v.token)
        return t.render(key, lambda: registry.render(self.leveldir.volume.read(self.box), self.fmt,
                                                     voxel_size_nm=v.info.level(level).voxel_size_nm,
                                                     offset=self.box.start))

    def commit_file(self, fh: BinaryIO) -> None:
        v, level = self.leveldir.vol, self.leveldir.level
        fname = v.name_of(level, f"cutout/{self.name}")
        # the box comes from the name; a voxel size or offset the file records is not used
        arr = registry.read_array(fh, self.fmt, fname, shape=self.box.shape, dtype=v.info.dtype)
        v.tree.write(v.remote, v.ref, self.box, level, arr)
