"""HDF5 volume files, and the NeuroData cutout layout (one group per channel holding ``CUTOUT``).

Written: dataset ``volume`` (Z, Y, X), chunked (``chunk_z`` x 256 x 256), gzip and shuffle, with
attributes ``axes = "zyx"``, ``offset``, ``voxel_size_nm`` and Fiji's ``element_size_um``; slabs
are written as they arrive.

Read: the file is checked whole by :func:`ndfs.formats.safe.open_hdf5` (nothing outside it is
ever read, no plugin loaded) before a voxel is; the volume is the dataset ``volume``, else
``data`` (what mounts wrote before), else ``CUTOUT`` (NeuroData and ndio), at the root or in the
one channel group that holds one, else the file's one dataset, else its one dataset of two or more
dimensions. The voxel size comes from ``voxel_size_nm`` (or ``element_size_um``), the offset from
``offset``. :func:`channel_cutouts` and :func:`channel_cutouts_bytes` read and write the
multi-channel bodies of the NeuroData cutout service.
"""

from __future__ import annotations

import io
from contextlib import ExitStack
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput
from ndfs.formats.files.base import FileInfo, Reader, checked_slabs, limit_of, triple, volume_shape

NAME = "h5"
VOLUME = "volume"
LEGACY = "data"
CUTOUT = "CUTOUT"
#: what a file may declare beyond twice its voxels (attributes, NeuroData's CHANNELTYPE and DATATYPE)
SLACK = 2**20


def _h5py():
    from ndfs.formats.safe.hdf5 import h5py

    return h5py()


def _cutout_groups(f) -> dict[str, object]:
    """Channel name -> its ``CUTOUT`` dataset, for groups at the root that hold one."""
    h5py = _h5py()
    return {key: g[CUTOUT] for key, g in f.items()
            if isinstance(g, h5py.Group) and isinstance(g.get(CUTOUT), h5py.Dataset)}


def _pick(f, name: str):
    """The volume dataset of a checked file, as the module says."""
    h5py = _h5py()
    for key in (VOLUME, LEGACY, CUTOUT):
        if isinstance(f.get(key), h5py.Dataset):
            return f[key]
    groups = _cutout_groups(f)
    if len(groups) == 1:
        return next(iter(groups.values()))
    found: list = []
    f.visititems(lambda key, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    if len(found) == 1:
        return found[0]
    planes = [ds for ds in found if ds.ndim >= 2]
    if len(planes) == 1:
        return planes[0]
    names = [ds.name for ds in found]
    raise BadInput(f"{name} holds datasets {names}; write one dataset (or one named {VOLUME!r})")


class H5Reader(Reader):
    """The volume of an HDF5 file (a path, bytes or a seekable binary file), read in z slabs."""

    def __init__(self, source, name: str, *, shape=None, dtype=None, max_bytes: int | None = None):
        from ndfs.formats import safe

        self.name = name
        limit = limit_of(shape, dtype, max_bytes)
        self._stack = ExitStack()
        # the file is checked whole before its volume is read: all it declares together may be
        # twice the volume, plus room for small extras
        f = self._stack.enter_context(safe.open_hdf5(source, name, max_bytes=None if limit is None
                                                     else 2 * limit + SLACK))
        try:
            ds = _pick(f, name)
            safe.voxel_dtype(ds.dtype, f"{name}: dataset {ds.name}")
            safe.check_declared(ds.shape, ds.dtype, name, want_shape=shape, want_dtype=dtype, max_bytes=limit)
            self._ds = ds
            self._whole: np.ndarray | None = None
            vs = ds.attrs.get("voxel_size_nm")
            if vs is None and ds.attrs.get("element_size_um") is not None:
                vs = np.asarray(ds.attrs["element_size_um"], dtype=np.float64) * 1000.0
            self.info = FileInfo(NAME, volume_shape(ds.shape, name, shape), np.dtype(ds.dtype).newbyteorder("="),
                                 triple(vs, float, "voxel_size_nm", name),
                                 triple(ds.attrs.get("offset"), int, "offset", name))
        except BaseException:
            self._stack.close()
            raise

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        try:
            if tuple(self._ds.shape) == self.info.shape:
                out = self._ds[z0:z1]
            else:  # size-1 axes left out (a plane for a box one deep): read once, reshaped
                if self._whole is None:
                    self._whole = np.asarray(self._ds[()]).reshape(self.info.shape)
                out = self._whole[z0:z1]
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise BadInput(f"{self.name}: dataset {self._ds.name} does not read: {exc}") from None
        return out.astype(self.info.dtype, copy=False)

    def close(self) -> None:
        self._stack.close()


def write(target, info: FileInfo, slabs: Iterable[np.ndarray], *, chunk_z: int = 16) -> None:
    """An HDF5 file of ``info`` at ``target`` (a path or a writable, seekable binary file), chunked
    ``chunk_z`` planes deep (the source's chunk depth makes slab writes whole chunks)."""
    h5py = _h5py()
    shape = tuple(info.shape)
    chunks = tuple(max(1, min(c, s)) for c, s in zip((chunk_z, 256, 256), shape)) if min(shape) else None
    with h5py.File(target, "w") as f:
        ds = f.create_dataset(VOLUME, shape=shape, dtype=info.dtype, chunks=chunks,
                              compression="gzip" if chunks else None, shuffle=bool(chunks))
        ds.attrs["axes"] = "zyx"
        if info.offset is not None:
            ds.attrs["offset"] = np.asarray(info.offset, dtype=np.int64)
        if info.voxel_size_nm is not None:
            ds.attrs["voxel_size_nm"] = np.asarray(info.voxel_size_nm, dtype=np.float64)
            ds.attrs["element_size_um"] = np.asarray(info.voxel_size_nm, dtype=np.float64) / 1000.0
        z = 0
        for slab in checked_slabs(info, slabs):
            ds[z:z + slab.shape[0]] = slab
            z += slab.shape[0]


# ---- NeuroData's multi-channel cutout bodies ------------------------------------------------
def channel_cutouts(source, name: str, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Channel name -> CUTOUT array of a NeuroData hdf5 body (``source``: bytes, a path or a
    seekable binary file); BadInput when it is not one, or when its CUTOUTs together would hold
    more than ``max_bytes``. Checked whole by :func:`ndfs.formats.safe.open_hdf5` first."""
    from ndfs.formats import safe

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    limit = None if max_bytes is None else max_bytes + SLACK  # room for CHANNELTYPE, DATATYPE
    with safe.open_hdf5(source, name, max_bytes=limit) as f:
        out, total = {}, 0
        for channel, ds in _cutout_groups(f).items():
            total += int(ds.size or 0) * ds.dtype.itemsize
            if max_bytes is not None and total > max_bytes:
                raise BadInput(f"{name}: its CUTOUT datasets hold over {max_bytes} bytes")
            out[channel] = safe.read_dataset(ds, f"{name}'s {channel}/CUTOUT")
        return out


def channel_cutouts_bytes(arrays: dict[str, np.ndarray], kinds: dict[str, str]) -> bytes:
    """A NeuroData hdf5 body: one group per channel with CUTOUT (Z, Y, X, gzip), CHANNELTYPE and DATATYPE."""
    h5py = _h5py()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for channel, arr in arrays.items():
            g = f.create_group(channel)
            g.create_dataset(CUTOUT, data=np.ascontiguousarray(arr), compression="gzip")
            g.create_dataset("CHANNELTYPE", data=np.array([kinds[channel]], dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("DATATYPE", data=np.array([arr.dtype.name], dtype=object), dtype=h5py.string_dtype())
    return buf.getvalue()
