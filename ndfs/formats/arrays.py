"""Whole arrays in and out of the file formats a mount accepts: tif, npy, npz, h5.

``encode`` renders a cutout as the bytes of one file; ``decode`` reads what a
user wrote into a file and checks it before anything is posted. Every problem
with the input is a :class:`ndfs.errors.BadInput` whose message says what was
wrong (the mount returns EINVAL and logs it). Pages of TIFF stacks can be
read one at a time (:func:`tiff_pages`) so a whole-level upload never sits in
memory at once.
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


def decode(fh: BinaryIO, fmt: str, name: str = "file") -> np.ndarray:
    """The array in a file written by a user; BadInput when it is not a readable `fmt` file."""
    fh.seek(0, io.SEEK_END)
    if fh.tell() == 0:
        raise BadInput(f"{name} is empty")
    fh.seek(0)
    try:
        if fmt == "tif":
            import tifffile

            with tifffile.TiffFile(fh) as tif:
                return _tiff_array(tif, name)
        if fmt == "npy":
            return np.load(fh, allow_pickle=False)
        if fmt == "npz":
            with np.load(fh, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) != 1 and DATASET not in keys:
                    raise BadInput(f"{name} holds arrays {keys}; write one array (or one named {DATASET!r})")
                return z[DATASET if DATASET in keys else keys[0]]
        if fmt == "h5":
            import h5py

            with h5py.File(fh, "r") as f:
                found = []
                f.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
                for key in (DATASET, "CUTOUT"):
                    if key in found:
                        return f[key][()]
                if len(found) != 1:
                    raise BadInput(f"{name} holds datasets {found}; write one dataset (or one named {DATASET!r})")
                return f[found[0]][()]
    except BadInput:
        raise
    except Exception as exc:  # each reader has its own error types; all of them mean "not a valid file"
        raise BadInput(f"{name} is not a readable {fmt} file: {type(exc).__name__}: {exc}") from None
    raise BadInput(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _tiff_array(tif, name: str) -> np.ndarray:
    if not tif.pages:
        raise BadInput(f"{name} has no images")
    page = tif.pages.first
    if page.samplesperpixel != 1:
        raise BadInput(f"{name} has {page.samplesperpixel} samples per pixel; only greyscale images "
                       "can be stored (convert RGB to 8-bit or 16-bit first)")
    arr = tif.asarray(key=range(len(tif.pages))) if len(tif.pages) > 1 else page.asarray()
    return arr


def tiff_info(fh: BinaryIO, name: str = "file") -> tuple[int, tuple[int, int], np.dtype]:
    """(pages, (height, width), dtype) of a greyscale TIFF, every page checked, no pixels read."""
    import tifffile

    fh.seek(0, io.SEEK_END)
    if fh.tell() == 0:
        raise BadInput(f"{name} is empty")
    fh.seek(0)
    try:
        with tifffile.TiffFile(fh) as tif:
            pages = list(tif.pages)
            if not pages:
                raise BadInput(f"{name} has no images")
            first = pages[0]
            shape, dtype = tuple(first.shape), first.dtype
            for i, page in enumerate(pages):
                if page.samplesperpixel != 1 or len(page.shape) != 2:
                    raise BadInput(f"{name} page {i} is not a greyscale 2-D image")
                if tuple(page.shape) != shape or page.dtype != dtype:
                    raise BadInput(f"{name} page {i} is {page.dtype}{page.shape}, page 0 is {dtype}{shape}")
            return len(pages), shape, dtype
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{name} is not a readable TIFF: {type(exc).__name__}: {exc}") from None


def tiff_pages(fh: BinaryIO, start: int, stop: int, name: str = "file") -> np.ndarray:
    """Pages [start, stop) of a TIFF checked by :func:`tiff_info`, as one (n, h, w) array."""
    import tifffile

    fh.seek(0)  # tifffile reads from the current position
    try:
        with tifffile.TiffFile(fh) as tif:
            return np.stack([tif.pages[i].asarray() for i in range(start, stop)])
    except Exception as exc:
        raise BadInput(f"{name}: pages {start}..{stop - 1} are unreadable: {type(exc).__name__}: {exc}") from None


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
