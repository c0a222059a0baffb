"""The conformance reference project written by the formats' own writers, not by ndfs.

:func:`write_precomputed_reference` writes every channel of :mod:`ndfs.testing.reference` as a
neuroglancer precomputed layer with CloudVolume (images raw, annotation channels compressed_segmentation,
one scale per level with the level's own size and offset); :func:`write_omezarr_reference` writes them
as OME-Zarr multiscale images with ome-zarr-py (NGFF 0.4 on zarr v2, or 0.5 on zarr v3), annotation
channels marked with ``image-label`` metadata. :func:`dataset_references` builds both below one folder,
which a :class:`~ndfs.testing.http_static.StaticServer` can serve. The writers are test dependencies
(the ``test`` extra), imported here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ndfs.testing.reference import CHANNELS, CHUNK, LEVELS, PROJECT, VOXEL_SIZE_NM, ReferenceData

#: the layers below a dataset root, for remotes that cannot list (http): ``layers = REFERENCE_LAYERS``
REFERENCE_LAYERS = [f"{PROJECT}/{name}" for name in CHANNELS]


def _xyz(zyx) -> list[int]:
    return [int(zyx[2]), int(zyx[1]), int(zyx[0])]


def write_precomputed_reference(root: Path, oracle: ReferenceData) -> Path:
    """The reference project as precomputed layers ``root/conf/<channel>``, written by CloudVolume."""
    from cloudvolume import CloudVolume

    for name, (dtype, kind) in CHANNELS.items():
        url = f"file://{Path(root).resolve()}/{PROJECT}/{name}"
        scales = []
        for level in range(LEVELS):
            box = oracle.box(name, level)
            vs = (VOXEL_SIZE_NM[0], VOXEL_SIZE_NM[1] * 2**level, VOXEL_SIZE_NM[2] * 2**level)
            scale = {"key": f"{int(vs[2])}_{int(vs[1])}_{int(vs[0])}", "size": _xyz(box.shape),
                     "voxel_offset": _xyz(box.start), "resolution": _xyz(vs), "chunk_sizes": [_xyz(CHUNK)],
                     "encoding": "compressed_segmentation" if kind == "annotation" else "raw"}
            if kind == "annotation":
                scale["compressed_segmentation_block_size"] = [8, 8, 8]
            scales.append(scale)
        info = {"type": "segmentation" if kind == "annotation" else "image", "data_type": dtype,
                "num_channels": 1, "scales": scales}
        CloudVolume(url, info=info, progress=False, compress=False).commit_info()
        for level in range(LEVELS):
            cv = CloudVolume(url, mip=level, progress=False, compress=False)
            box = oracle.box(name, level)
            data = oracle.levels[name][level]
            cv[box.start[2]:box.stop[2], box.start[1]:box.stop[1], box.start[0]:box.stop[0]] = \
                np.ascontiguousarray(data.transpose(2, 1, 0))[..., np.newaxis]
    return Path(root)


def write_omezarr_reference(root: Path, oracle: ReferenceData, version: str = "0.4") -> Path:
    """The reference project as OME-Zarr images ``root/conf/<channel>``, written by ome-zarr-py."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

    fmt = FormatV04() if version == "0.4" else FormatV05()
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    for name, (dtype, kind) in CHANNELS.items():
        group = zarr.open_group(str(Path(root) / PROJECT / name), mode="w", zarr_format=fmt.zarr_format)
        transforms = []
        for level in range(LEVELS):
            vs = [VOXEL_SIZE_NM[0], VOXEL_SIZE_NM[1] * 2**level, VOXEL_SIZE_NM[2] * 2**level]
            start = oracle.box(name, level).start
            transforms.append([{"type": "scale", "scale": vs},
                               {"type": "translation", "translation": [float(s * v) for s, v in zip(start, vs)]}])
        write_multiscale(list(oracle.levels[name]), group, fmt=fmt, axes=axes, coordinate_transformations=transforms,
                         storage_options={"chunks": CHUNK})
        if kind == "annotation":
            attrs = dict(group.attrs)
            label = {"version": version, "properties": []}
            if "ome" in attrs:
                group.attrs["ome"] = {**attrs["ome"], "image-label": label}
            else:
                group.attrs["image-label"] = label
    return Path(root)


@dataclass
class DatasetReferences:
    """The reference project as precomputed (``root/precomputed``), OME-Zarr 0.4 (``root/zarr4``) and 0.5
    (``root/zarr5``)."""

    root: Path

    @property
    def precomputed(self) -> Path:
        return self.root / "precomputed"

    @property
    def zarr4(self) -> Path:
        return self.root / "zarr4"

    @property
    def zarr5(self) -> Path:
        return self.root / "zarr5"


def dataset_references(root: Path, oracle: ReferenceData) -> DatasetReferences:
    refs = DatasetReferences(Path(root))
    write_precomputed_reference(refs.precomputed, oracle)
    write_omezarr_reference(refs.zarr4, oracle, "0.4")
    write_omezarr_reference(refs.zarr5, oracle, "0.5")
    return refs


__all__ = ["write_precomputed_reference", "write_omezarr_reference", "dataset_references", "DatasetReferences",
           "REFERENCE_LAYERS"]
