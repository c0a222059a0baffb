"""``.npz`` volume files: a zip of .npy members, as ``numpy.savez_compressed`` writes them.

Written: ``volume`` (Z, Y, X), streamed into its deflated member as the slabs arrive, then
``offset`` (3 int64) and ``voxel_size_nm`` (3 float64, when known); ``numpy.load`` reads it.

Read: the archive's members are checked by :func:`ndfs.formats.safe.open_zip` (count, method,
declared sizes, ratios) before one is inflated; the volume is the member ``volume``, else
``data`` (what mounts wrote before), else the one array beside ``offset`` and ``voxel_size_nm``,
else the one array of two or more dimensions. Planes are inflated in order, never past the
member's declared size.
"""

from __future__ import annotations

import zipfile
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.files import npy
from ndfs.formats.files.base import FileInfo, Reader, limit_of, triple

NAME = "npz"
VOLUME = "volume"
#: the member mounts wrote before ndfs had one layout: still read
LEGACY = "data"
METADATA = ("offset", "voxel_size_nm")


class NpzReader(Reader):
    """The volume of an npz (a path or a seekable binary file), read plane by plane."""

    def __init__(self, source, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        from ndfs.formats import safe

        self.name = name
        limit = limit_of(shape, dtype, max_bytes)
        self._zip = safe.open_zip(source, name, max_bytes=limit)
        self._member = None
        try:
            key = self._pick()
            small = {k: safe.zip_npy(self._zip, f"{k}.npy", name, max_bytes=1024) for k in METADATA
                     if k != key and f"{k}.npy" in self._zip.namelist()}
            metadata = (triple(small.get("voxel_size_nm"), float, "voxel_size_nm", name),
                        triple(small.get("offset"), int, "offset", name))
            info = self._zip.getinfo(f"{key}.npy")
            self._member = self._zip.open(info)
            self._npy = npy.NpyReader(self._member, f"{name}:{key}.npy", length=info.file_size, shape=shape,
                                      dtype=dtype, max_bytes=limit, fmt=NAME, metadata=metadata)
            self.info = self._npy.info
        except BaseException:
            self.close()
            raise

    def _pick(self) -> str:
        from ndfs.formats import safe

        keys = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]
        for key in (VOLUME, LEGACY):
            if key in keys:
                return key
        arrays = [k for k in keys if k not in METADATA]
        if len(arrays) == 1:
            return arrays[0]
        planes = []
        for key in arrays:
            with self._zip.open(f"{key}.npy") as fh:
                if len(safe.npy_header(fh, f"{self.name}:{key}.npy")[0]) >= 2:
                    planes.append(key)
        if len(planes) == 1:
            return planes[0]
        raise BadInput(f"{self.name} holds arrays {keys}; write one array (or one named {VOLUME!r})")

    def read(self, z0: int, z1: int) -> np.ndarray:
        try:
            return self._npy.read(z0, z1)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BadInput(f"{self.name}: the volume member is unreadable: {exc}") from None

    def close(self) -> None:
        if self._member is not None:
            self._member.close()
        self._zip.close()


def write(target, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """An npz of ``info`` at ``target`` (a path or a writable, seekable binary file); ``chunk_z`` is
    unused (the volume is one deflated member)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        with zf.open(f"{VOLUME}.npy", "w", force_zip64=True) as fh:
            npy.write_stream(fh, info, slabs)
        extras = {}
        if info.offset is not None:
            extras["offset"] = np.asarray(info.offset, dtype=np.int64)
        if info.voxel_size_nm is not None:
            extras["voxel_size_nm"] = np.asarray(info.voxel_size_nm, dtype=np.float64)
        for key, value in extras.items():
            with zf.open(f"{key}.npy", "w") as fh:
                np.lib.format.write_array(fh, value, allow_pickle=False)
