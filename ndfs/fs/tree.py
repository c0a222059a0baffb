"""The path tree: which files a mount shows, their sizes, and their bytes.

Pure Python, no FUSE import: the mount, ``ndfs ls``/``ndfs cat`` and the tests
use the same code. Layout under the mount root::

    <remote>/<folder>.../<channel>/info.json
    <remote>/<folder>.../<channel>/<level>/{z,y,x}/<N>.tif   one plane, N in dataset coordinates
    <remote>/<folder>.../<channel>/<level>/stack.tif         the whole level, ImageJ multipage

Sizes come from VolumeInfo alone, so listing never reads voxels. Hierarchy
answers from backends are memoised for ``ttl_s`` seconds. Thread-safe.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ndfs.backends.base import Backend, VolumeRef
from ndfs.errors import NotFound, TooLarge
from ndfs.geometry import Box
from ndfs.info import VolumeInfo
from ndfs.formats.tiff import TiffLayout

AXES = ("z", "y", "x")
SLICE_NAME = re.compile(r"^(0|-?[1-9][0-9]*)\.tif$")


def _dumps(doc) -> str:
    """Indented JSON with short lists of numbers kept on one line."""
    text = json.dumps(doc, indent=2)
    return re.sub(r"\[\s+([-0-9., \n]+?)\s+\]", lambda m: "[" + ", ".join(
        v.strip() for v in m.group(1).split(",")) + "]", text)


class Node:
    """Base of tree nodes. ``mtime`` is seconds since the epoch."""

    is_dir = False
    mtime: float = 0.0


class DirNode(Node):
    is_dir = True

    def names(self) -> list[str]:
        raise NotImplementedError

    def child(self, name: str) -> Node:
        raise NotImplementedError


class FileNode(Node):
    size: int = 0
    writable = False
    #: bypass the page cache (only for files whose content changes while open)
    direct_io = False

    def open(self) -> "FileNode":
        """Called when a file is opened; returns the node that serves the handle's reads."""
        return self

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError


class BytesFile(FileNode):
    """A small file whose whole content is known (info.json)."""

    def __init__(self, data: bytes, mtime: float):
        self.data, self.size, self.mtime = data, len(data), mtime

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


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
                 on_open: Callable[[], None] | None = None):
        self.layout, self.get_rows, self.mtime, self.on_open = layout, get_rows, mtime, on_open
        self.size = layout.size

    def open(self) -> FileNode:
        if self.on_open is not None:
            self.on_open()
        return self

    def read(self, offset: int, size: int) -> bytes:
        return self.layout.read(offset, size, self.get_rows)


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
        (z0, y0, x0), (z1, y1, x1) = lbox.start, lbox.stop
        if self.axis == "z":
            return Box((index, y0 + r0, x0), (index + 1, y0 + r1, x1))
        if self.axis == "y":
            return Box((z0 + r0, index, x0), (z0 + r1, index + 1, x1))
        return Box((z0 + r0, y0, index), (z0 + r1, y1, index + 1))

    def rows(self, arr: np.ndarray) -> np.ndarray:
        return {"z": lambda a: a[0], "y": lambda a: a[:, 0, :], "x": lambda a: a[:, :, 0]}[self.axis](arr)


class Tree:
    """Resolves mount paths to nodes over a set of named backends."""

    def __init__(self, remotes: Mapping[str, Backend], ttl_s: float = 10.0):
        self.remotes = dict(remotes)
        self.ttl_s = ttl_s
        self.started = time.time()
        self._memo: dict[tuple, tuple[float, object]] = {}
        self._lock = threading.Lock()

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
        out = {}
        for name, backend in self.remotes.items():
            entry = {"kind": backend.kind, "served": backend.stats.as_dict()}
            cache_stats = getattr(backend, "cache_stats", None)
            if cache_stats is not None:
                entry["cache"] = cache_stats()
                entry["backend"] = entry["cache"].pop("backend")
            else:
                entry["backend"] = entry["served"]
            out[name] = entry
        return out

    def forget(self) -> None:
        with self._lock:
            self._memo.clear()

    def backend(self, remote: str) -> Backend:
        try:
            return self.remotes[remote]
        except KeyError:
            raise NotFound(f"no remote named {remote!r}") from None

    def info(self, remote: str, ref: VolumeRef) -> VolumeInfo:
        return self._memoised(("info", remote, ref), lambda: self.backend(remote).info(ref), self.ttl_s)

    # ---- resolution -------------------------------------------------------
    def resolve(self, path: str) -> Node:
        node: Node = RootDir(self)
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise NotFound(f"{path}: {part!r} is below a file")
            node = node.child(part)
        return node

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
            try:
                return TiffLayout(n, h, w, info.dtype, voxel_size=vs, unit="nm")
            except ValueError as exc:
                raise TooLarge(f"{'/'.join(ref)} level {level}: {exc}") from exc

        return self._memoised(("layout", remote, ref, level, what), build, self.ttl_s)


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
        return self.tree._memoised(("children", self.remote, self.path),
                                   lambda: backend.children(self.path), self.tree.ttl_s)

    def child(self, name: str) -> Node:
        path = self.path + (name,)
        backend = self.tree.backend(self.remote)
        is_volume = self.tree._memoised(("is_volume", self.remote, path),
                                        lambda: backend.is_volume(path), self.tree.ttl_s)
        if is_volume:
            return VolumeDir(self.tree, self.remote, path)
        return FolderDir(self.tree, self.remote, path)


class VolumeDir(DirNode):
    """A channel: info.json and one folder per level."""

    def __init__(self, tree: Tree, remote: str, ref: VolumeRef):
        self.tree, self.remote, self.ref, self.mtime = tree, remote, ref, tree.started

    @property
    def info(self) -> VolumeInfo:
        return self.tree.info(self.remote, self.ref)

    def names(self) -> list[str]:
        return ["info.json"] + [str(i) for i in range(len(self.info.levels))]

    def child(self, name: str) -> Node:
        if name == "info.json":
            doc = {"remote": self.remote, "path": "/".join(self.ref), **self.info.to_json()}
            return BytesFile((_dumps(doc) + "\n").encode(), self.mtime)
        if name.isdigit() and (name == "0" or not name.startswith("0")) and int(name) < len(self.info.levels):
            return LevelDir(self, int(name))
        raise NotFound(f"{'/'.join(self.ref)} has no {name!r}")


class LevelDir(DirNode):
    def __init__(self, vol: VolumeDir, level: int):
        self.vol, self.level, self.mtime = vol, level, vol.mtime

    def names(self) -> list[str]:
        return list(AXES) + ["stack.tif"]

    def child(self, name: str) -> Node:
        t, v = self.vol.tree, self.vol
        if name in AXES:
            return AxisDir(self, Plane(name))
        if name == "stack.tif":
            lv = v.info.level(self.level)
            layout = t.layout(v.remote, v.ref, self.level, "stack")
            backend = t.backend(v.remote)
            plane = Plane("z")

            def get_rows(p: int, r0: int, r1: int) -> np.ndarray:
                return plane.rows(backend.read(v.ref, plane.box(lv.box, lv.offset[0] + p, r0, r1), self.level))

            return TiffFile(layout, get_rows, self.mtime)
        raise NotFound(f"level {self.level} has no {name!r}")


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

    def child(self, name: str) -> Node:
        m = SLICE_NAME.match(name)
        if not m or int(m.group(1)) not in self._range():
            rng = self._range()
            raise NotFound(f"no slice {name!r} on axis {self.plane.axis} (valid: {rng.start}..{rng.stop - 1})")
        index = int(m.group(1))
        v, level = self.leveldir.vol, self.leveldir.level
        t = v.tree
        lv = v.info.level(level)
        layout = t.layout(v.remote, v.ref, level, self.plane.axis)
        backend, plane = t.backend(v.remote), self.plane

        def get_rows(p: int, r0: int, r1: int) -> np.ndarray:
            return plane.rows(backend.read(v.ref, plane.box(lv.box, index, r0, r1), level))

        whole = plane.box(lv.box, index, 0, layout.height)
        return TiffFile(layout, get_rows, self.mtime, on_open=lambda: backend.prefetch(v.ref, whole, level))
