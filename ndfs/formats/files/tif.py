"""Multipage TIFF volume files: one greyscale page per z.

Written: uint8, uint16 and float32 volumes under 4 GiB are ImageJ hyperstacks, calibrated the
way Fiji reads it (X/YResolution, ``unit=nm``, ``spacing=`` the z size) with the offset in the
description's ``ndfs_offset_zyx``; other dtypes (uint64 labels) and larger volumes are plain
multipage TIFFs (BigTIFF past 4 GiB) with ``voxel_size_nm`` and ``offset`` in tifffile's JSON
description. Pages are written as the slabs arrive.

Read: any greyscale TIFF whose pages share one shape and dtype, through
:class:`ndfs.formats.safe.TiffPages` (pages read directly, never as OME or multi-file series);
an ImageJ stack along one axis (slices, frames, or channels as tifffile writes a 3-D array) is
one z series, a hyperstack along two is refused. The voxel size comes from ImageJ calibration
(nm, um or mm) or tifffile's JSON, the offset from either.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.files.base import FileInfo, Reader, checked_slabs, limit_of, open_binary, triple, volume_shape

NAME = "tif"
IMAGEJ_DTYPES = ("uint8", "uint16", "float32")
#: ImageJ's and classic TIFF's 32-bit offsets: larger files are BigTIFF (with room for the directories)
CLASSIC_BYTES = 2**32 - 2**25
UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1e3, "micron": 1e3, "microns": 1e3,
           "\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6}


class TifReader(Reader):
    """The pages of a TIFF (a path or a seekable binary file), checked as the module says."""

    def __init__(self, source, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        from ndfs.formats import safe

        self.name = name
        self._fh, self._owned = open_binary(source)
        self._whole: np.ndarray | None = None
        try:
            self._t = safe.TiffPages(self._fh, name, shape=shape, dtype=dtype,
                                     max_bytes=limit_of(shape, dtype, max_bytes))
        except BaseException:
            self._close_file()
            raise
        try:
            declared = (self._t.count, *self._t.plane) if self._t.count > 1 else self._t.plane
            vs, offset = self._metadata()
            self.info = FileInfo(NAME, volume_shape(declared, name, shape), self._t.dtype, vs, offset)
        except BaseException:
            self.close()
            raise

    def _metadata(self):
        vs = offset = None
        ij = self._t.imagej_metadata
        if ij:
            count = {key: int(ij.get(key, 1) or 1) for key in ("channels", "slices", "frames")}
            # planes along one axis (slices, frames, or channels as tifffile writes a 3-D array) are
            # one z series; along two or more, a hyperstack
            if sum(n > 1 for n in count.values()) > 1:
                raise BadInput(f"{self.name} is an ImageJ hyperstack of {count['channels']} channels, "
                               f"{count['slices']} slices and {count['frames']} frames; a volume is greyscale z, y, x")
            unit = UNIT_NM.get(str(ij.get("unit", "")).strip())
            page = self._t.first
            if unit is not None and "XResolution" in page.tags:
                rx, ry = page.resolution[:2]
                if rx and ry:
                    vs = tuple(round(v, 6) for v in (float(ij.get("spacing", 1.0)) * unit, unit / ry, unit / rx))
            if ij.get("ndfs_offset_zyx"):
                offset = triple(str(ij["ndfs_offset_zyx"]).split(","), int, "ndfs_offset_zyx", self.name)
        elif self._t.shaped_metadata:
            meta = self._t.shaped_metadata[0]
            if len([s for s in meta.get("shape", ()) if s != 1]) > 3:
                raise BadInput(f"{self.name} holds a {meta.get('shape')} array; a volume is greyscale z, y, x")
            vs = triple(meta.get("voxel_size_nm"), float, "voxel_size_nm", self.name)
            offset = triple(meta.get("offset"), int, "offset", self.name)
        return vs, offset

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        if (self._t.count, *self._t.plane) == self.info.shape:
            return self._t.read(z0, z1)
        if self._whole is None:  # a box whose size-1 axes the pages leave out another way: one read
            self._whole = self._t.read(0, self._t.count).reshape(self.info.shape)
        return self._whole[z0:z1]

    def _close_file(self) -> None:
        if self._owned:
            self._fh.close()

    def close(self) -> None:
        self._t.close()
        self._close_file()


def write(target, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """A TIFF of ``info`` at ``target`` (a path or a writable binary file); ``chunk_z`` is unused
    (TIFF pages are planes)."""
    import tifffile

    meta: dict = {"axes": "ZYX"}
    kwargs: dict = {}
    nbytes = math.prod(info.shape) * info.dtype.itemsize
    imagej = info.dtype.name in IMAGEJ_DTYPES and nbytes < CLASSIC_BYTES
    if imagej:
        if info.voxel_size_nm is not None:
            meta.update(spacing=info.voxel_size_nm[0], unit="nm")
            kwargs["resolution"] = (1.0 / info.voxel_size_nm[2], 1.0 / info.voxel_size_nm[1])
        if info.offset is not None:
            meta["ndfs_offset_zyx"] = ",".join(str(o) for o in info.offset)
    else:
        if info.offset is not None:
            meta["offset"] = list(info.offset)
        if info.voxel_size_nm is not None:
            meta["voxel_size_nm"] = list(info.voxel_size_nm)
    planes = (plane for slab in checked_slabs(info, slabs) for plane in slab)
    tifffile.imwrite(target, planes, shape=tuple(info.shape), dtype=info.dtype, imagej=imagej,
                     bigtiff=not imagej and nbytes >= CLASSIC_BYTES, metadata=meta, photometric="minisblack",
                     **kwargs)
