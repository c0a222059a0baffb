"""Whole arrays in and out of the file formats a mount accepts: tif, npy, npz, h5.

``encode`` renders a cutout as the bytes of one file; ``decode`` reads what a
user wrote into a file and checks it before anything is posted. Every problem
with the input is a :class:`ndfs.errors.BadInput` whose message says what was
wrong (the mount returns EINVAL and logs it). Decoding goes through
:mod:`ndfs.formats.safe`: nothing outside the file is read, and what a file
declares is checked against the expected box before its data is. Pages of
TIFF stacks can be read one at a time (:func:`tiff_pages`) so a whole-level
upload never sits in memory at once.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Sequence

import numpy as np

from ndfs.errors import BadInput

FORMATS = ("tif", "npy", "npz", "h5")
#: name of the one array inside an npz or h5 file ndfs writes
DATASET = "data"


def encode(array: np.ndarray, fmt: str, *, voxel_size_nm: Sequence[float] | None = None,
           offset: Sequence[int] | None = None) -> bytes:
    """The bytes of one file holding `array` (ZYX). TIFFs are ImageJ-calibrated multipage stacks."""
    buf = io.BytesIO()
    if fmt == "tif":
        import tifffile

        imagej = array.dtype in (np.uint8, np.uint16, np.float32)  # what ImageJ can open
        kwargs: dict = {"metadata": {"axes": "ZYX"}}
        if voxel_size_nm is not None:
            z, y, x = voxel_size_nm
            kwargs = {"resolution": (1.0 / x, 1.0 / y), "metadata": {"axes": "ZYX", "spacing": z, "unit": "nm"}}
        tifffile.imwrite(buf, array, imagej=imagej, photometric="minisblack", **kwargs)
    elif fmt == "npy":
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    elif fmt == "npz":
        np.savez_compressed(buf, **{DATASET: array})
    elif fmt == "h5":
        import h5py

        with h5py.File(buf, "w") as f:
            chunks = tuple(min(s, c) for s, c in zip(array.shape, (16, 256, 256))) if array.size else None
            ds = f.create_dataset(DATASET, data=array, chunks=chunks, compression="gzip" if array.size else None)
            if voxel_size_nm is not None:
                ds.attrs["voxel_size_nm"] = np.asarray(voxel_size_nm, dtype=float)
            if offset is not None:
                ds.attrs["offset"] = np.asarray(offset, dtype=np.int64)
            ds.attrs["axes"] = "ZYX"
    else:
        raise BadInput(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return buf.getvalue()


def decode(fh: BinaryIO, fmt: str, name: str = "file", *, shape: Sequence[int] | None = None, dtype=None,
           max_bytes: int | None = None) -> np.ndarray:
    """The array in a file written by a user; BadInput when it is not a readable `fmt` file.

    ``shape`` (a box, z y x; size-1 axes may be left out of the file) and ``dtype`` are what the
    file must hold, ``max_bytes`` the most voxel bytes it may hold (default: the shape's bytes,
    else :data:`ndfs.formats.safe.DEFAULT_MAX_BYTES`). The file is decoded by
    :mod:`ndfs.formats.safe`: what it declares is checked against these before any data is read,
    and nothing outside the file is ever read.
    """
    from ndfs.formats import safe

    limit = safe.bound(shape, dtype, max_bytes)
    fh.seek(0, io.SEEK_END)
    if fh.tell() == 0:
        raise BadInput(f"{name} is empty")
    fh.seek(0)
    try:
        if fmt == "tif":
            with safe.TiffPages(fh, name, shape=shape, dtype=dtype, max_bytes=limit) as pages:
                return pages.array()
        if fmt == "npy":
            return safe.read_npy(fh, name, shape=shape, dtype=dtype, max_bytes=limit)
        if fmt == "npz":
            return safe.npz_array(fh, name, key=DATASET, shape=shape, dtype=dtype, max_bytes=limit)
        if fmt == "h5":
            import h5py

            # the file is checked whole before its one array is read: all its datasets together
            # may declare twice the box, plus room for small extras such as attributes
            with safe.open_hdf5(fh, name, max_bytes=2 * limit + 2**20) as f:
                found = []
                f.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
                for key in (DATASET, "CUTOUT"):
                    if key in found:
                        return safe.read_dataset(f[key], name, shape=shape, dtype=dtype, max_bytes=limit)
                if len(found) != 1:
                    raise BadInput(f"{name} holds datasets {found}; write one dataset (or one named {DATASET!r})")
                return safe.read_dataset(f[found[0]], name, shape=shape, dtype=dtype, max_bytes=limit)
    except BadInput:
        raise
    except Exception as exc:  # a reader's own error on a file the safe checks let through: still bad input
        raise BadInput(f"{name} is not a readable {fmt} file: {type(exc).__name__}: {exc}") from None
    raise BadInput(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def tiff_info(fh: BinaryIO, name: str = "file", *, shape: Sequence[int] | None = None,
              dtype=None) -> tuple[int, tuple[int, int], np.dtype]:
    """(pages, (height, width), dtype) of a greyscale TIFF, every page checked, no pixels read.

    With ``shape`` (pages, height, width) and ``dtype`` the file must be exactly that, and a file
    declaring more pages is refused as soon as its pages outnumber the expected ones.
    """
    from ndfs.formats import safe

    with safe.TiffPages(fh, name, shape=shape, dtype=dtype) as pages:
        return pages.count, pages.plane, pages.dtype


def tiff_pages(fh: BinaryIO, start: int, stop: int, name: str = "file") -> np.ndarray:
    """Pages [start, stop) of a TIFF checked by :func:`tiff_info`, as one (n, h, w) array."""
    from ndfs.formats import safe

    with safe.TiffPages(fh, name, max_bytes=None) as pages:
        if stop > pages.count:
            raise BadInput(f"{name}: pages {start}..{stop - 1} are past its {pages.count} pages")
        return pages.read(start, stop)


def check_shape(array: np.ndarray, shape: Sequence[int], dtype: np.dtype, name: str) -> np.ndarray:
    """`array` reshaped to the box `shape` (size-1 axes may be left out) and of exactly `dtype`."""
    shape = tuple(int(s) for s in shape)
    squeezed = tuple(s for s in array.shape if s != 1)
    if squeezed != tuple(s for s in shape if s != 1):
        want = "x".join(map(str, shape))
        raise BadInput(f"{name} holds a {'x'.join(map(str, array.shape))} array; this file needs {want} (z, y, x)")
    if array.dtype != np.dtype(dtype):
        raise BadInput(f"{name} holds {array.dtype} voxels; this volume stores {np.dtype(dtype)} "
                       "(convert the image type before saving)")
    return np.ascontiguousarray(array.reshape(shape))
