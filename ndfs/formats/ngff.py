"""OME-Zarr (NGFF) multiscales metadata of a :class:`~ndfs.core.info.VolumeInfo`, shared by the ``zarr``
remote (which makes images) and the OME-Zarr the viewers and the mount show. Pure.

Arrays (:func:`zarray_v2`) are one per level, chunked as the level (clipped to it).
Axes are z, y, x (``space``, ``nanometer``); dataset ``i`` is level ``i`` (path ``"0"``, ``"1"``...), its
``scale`` the level's voxel size in nm and its ``translation`` (when the offset is not zero) the offset
times the voxel size, the position of voxel 0's corner.
"""

from __future__ import annotations

import numpy as np

from ndfs.core.info import VolumeInfo


def chunk_shape(info: VolumeInfo, level: int) -> tuple[int, int, int]:
    """The level's chunk shape (z, y, x): the store's, clipped to the level."""
    lv = info.level(level)
    return tuple(int(max(1, min(c, s))) for c, s in zip(lv.chunk_shape, lv.shape))  # type: ignore[return-value]


def v2_dtype(dtype) -> str:
    """A zarr v2 ``dtype`` string, little-endian."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str


def zarray_v2(info: VolumeInfo, level: int, compressor: dict | None = None) -> dict:
    """The ``.zarray`` of a level: its shape, its chunks, C order, ``/`` between chunk indices, fill 0."""
    return {"zarr_format": 2, "shape": list(info.level(level).shape), "chunks": list(chunk_shape(info, level)),
            "dtype": v2_dtype(info.dtype), "compressor": compressor, "fill_value": 0, "order": "C",
            "filters": None, "dimension_separator": "/"}


def multiscale(name: str, info: VolumeInfo) -> dict:
    """One entry of ``multiscales`` (without ``version``, which 0.4 puts there and 0.5 one level up)."""
    datasets = []
    for i, lv in enumerate(info.levels):
        transforms = [{"type": "scale", "scale": [float(v) for v in lv.voxel_size_nm]}]
        if any(lv.offset):
            transforms.append({"type": "translation",
                               "translation": [float(o * v) for o, v in zip(lv.offset, lv.voxel_size_nm)]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    return {"name": name, "axes": axes, "datasets": datasets}


def zattrs_v04(name: str, info: VolumeInfo, *, is_label: bool = False, label_source: str | None = None) -> dict:
    """The NGFF 0.4 ``.zattrs`` of an image (a label image, ``image-label``, when ``is_label``)."""
    doc: dict = {"multiscales": [{"version": "0.4", **multiscale(name, info)}]}
    if is_label:
        doc["image-label"] = {"version": "0.4"}
        if label_source is not None:
            doc["image-label"]["source"] = {"image": label_source}
    return doc
