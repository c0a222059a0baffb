"""PNG volume folders: one 8- or 16-bit greyscale ``<z>.png`` per plane, plus ``volume.json``.

Written: a new folder of ``<z>.png`` files, z in dataset coordinates (the offset's z plus the
plane's index) zero-padded to one width, each written as its slab arrives, then ``volume.json``
(shape, dtype, offset and voxel size). Read: the slices must be consecutive; every PNG's declared
size is checked (:func:`ndfs.formats.safe.png_plane`) before it is decoded, and every plane must
match the first. A folder is no file, so the mount has no PNG cutouts; its ``z/<N>.png`` planes
are virtual files of :mod:`ndfs.formats.png`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput, MissingExtra
from ndfs.formats.files.base import FileInfo, Reader, checked_slabs, limit_of, triple, volume_shape

NAME = "png"
DTYPES = ("uint8", "uint16")
META = "volume.json"
SLICE = re.compile(r"-?[0-9]+")


def pillow():
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtra("png files need Pillow: pip install 'ndfs[export]'") from None
    return Image


def slice_name(z: int, width: int) -> str:
    return f"{z:0{width}d}.png"


class PngReader(Reader):
    """A folder of ``<z>.png`` slices (a path), read plane by plane."""

    def __init__(self, source, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        from ndfs.formats import safe

        pillow()  # the export extra's message when Pillow is missing
        path = Path(source) if isinstance(source, (str, os.PathLike)) else None
        if path is None or not path.is_dir():
            raise BadInput(f"{name} is not a folder of png slices")
        self.name = name
        files = {}
        for p in path.iterdir():
            if p.suffix.lower() == ".png":
                if not SLICE.fullmatch(p.stem):
                    raise BadInput(f"{p.name}: png slices are named <z>.png")
                files[int(p.stem)] = p
        if not files:
            raise BadInput(f"{name} holds no <z>.png slices")
        zs = sorted(files)
        if zs[-1] - zs[0] + 1 != len(zs):
            missing = sorted(set(range(zs[0], zs[-1] + 1)) - set(zs))[:5]
            raise BadInput(f"{name} is missing slices {', '.join(map(str, missing))}")
        self._files = [files[z] for z in zs]
        first = self._files[0]  # its header only: the fit is checked before any plane is decoded
        plane, file_dtype = safe.png_header(first, first.name, file_bytes=first.stat().st_size)
        declared = (len(zs), *plane)
        safe.check_declared(declared, file_dtype, name, want_shape=shape, want_dtype=dtype,
                            max_bytes=limit_of(shape, dtype, max_bytes))
        meta = {}
        if (path / META).is_file():
            meta = safe.json_loads((path / META).read_bytes(), f"{name}/{META}")
            if not isinstance(meta, dict):
                raise BadInput(f"{name}/{META} is not a JSON object")
        offset = triple(meta.get("offset_zyx"), int, "offset_zyx", f"{name}/{META}")
        self._plane_shape, self._plane_bytes = plane, int(np.prod(plane)) * file_dtype.itemsize
        self.info = FileInfo(NAME, volume_shape(declared, name, shape), file_dtype,
                             triple(meta.get("voxel_size_nm_zyx"), float, "voxel_size_nm_zyx", f"{name}/{META}"),
                             None if offset is None else (zs[0], offset[1], offset[2]))

    def read(self, z0: int, z1: int) -> np.ndarray:
        from ndfs.formats import safe

        self._check_range(z0, z1)
        out = np.empty((z1 - z0, *self._plane_shape), dtype=self.info.dtype)
        for i in range(z0, z1):
            path = self._files[i]
            plane = safe.png_plane(path, path.name, file_bytes=path.stat().st_size, max_bytes=self._plane_bytes)
            if plane.shape != out.shape[1:] or plane.dtype != out.dtype:
                raise BadInput(f"{path.name} is {plane.dtype}{plane.shape}, the first slice "
                               f"{out.dtype}{out.shape[1:]}")
            out[i - z0] = plane
        return out.reshape((z1 - z0,) + tuple(self.info.shape[1:]))


def write(target, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """A new folder ``target`` of ``<z>.png`` slices and ``volume.json``; ``chunk_z`` is unused."""
    image = pillow()
    if hasattr(target, "write"):
        raise BadInput("png volumes are folders of slices; give a folder path, not an open file")
    folder = Path(target)
    folder.mkdir()
    z0 = 0 if info.offset is None else info.offset[0]
    width = max(4, len(str(z0 + info.shape[0] - 1)))
    z = z0
    for slab in checked_slabs(info, slabs):
        for plane in slab:
            image.fromarray(plane).save(folder / slice_name(z, width), format="PNG")
            z += 1
    (folder / META).write_text(json.dumps({
        "shape_zyx": list(info.shape), "dtype": info.dtype.name,
        "offset_zyx": None if info.offset is None else list(info.offset),
        "voxel_size_nm_zyx": None if info.voxel_size_nm is None else list(info.voxel_size_nm)}, indent=2) + "\n")
