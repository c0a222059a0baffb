"""Datasets as the field writes them, for tests/test_datasets.py: every file here is made by CloudVolume,
ome-zarr-py or zarr-python, never by ndfs (segment properties, which CloudVolume has no writer for, are
the JSON of neuroglancer's format documentation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SEG_IDS = (9, 2**40 + 5, 77)  # 77 is listed in the segment properties but labels no voxel


def _cv(url, info=None):
    from cloudvolume import CloudVolume

    return CloudVolume(url, info=info, progress=False, compress=False)


def em_volume(shape_xyz=(96, 80, 24), seed=1, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 200, size=(shape_xyz[0] // 8 + 1, shape_xyz[1] // 8 + 1, shape_xyz[2]))
    base = np.repeat(np.repeat(smooth, 8, 0), 8, 1)[:shape_xyz[0], :shape_xyz[1]]
    return (base + rng.integers(0, 40, size=shape_xyz)).astype(dtype)


def labels_volume(shape_xyz=(64, 64, 16)):
    lab = np.zeros(shape_xyz, np.uint64)
    lab[5:30, 5:40, 2:10] = SEG_IDS[1]
    lab[35:60, 30:60, 4:14] = SEG_IDS[0]
    return lab


def write_precomputed(root: Path) -> dict:
    """Layers em (jpeg uint8, 2 scales), raw16 (raw uint16), seg (compressed_segmentation uint64 with a legacy
    mesh, a skeleton and segment properties) and shard (sharded raw uint16), below ``root``."""
    from cloudvolume import CloudVolume, Mesh, Skeleton

    root = Path(root)
    made = {}
    # jpeg image with a second scale
    em = em_volume()
    info = CloudVolume.create_new_info(1, "image", "uint8", "jpeg", [4, 4, 40], [16, 8, 2], em.shape,
                                       chunk_size=[32, 32, 8])
    cv = _cv(f"file://{root}/em", info)
    cv.add_scale((2, 2, 1), chunk_size=[32, 32, 8], encoding="jpeg")
    cv.commit_info()
    cv[:, :, :] = em
    from ndfs.core.downsample import downsample  # only to make the coarser scale's input; CloudVolume writes it
    cv1 = _cv(f"file://{root}/em")
    cv1.mip = 1
    b = cv1.bounds
    lv1 = downsample(np.ascontiguousarray(em.transpose(2, 1, 0)), "image").transpose(2, 1, 0)
    cv1[b.minpt[0]:b.maxpt[0], b.minpt[1]:b.maxpt[1], b.minpt[2]:b.maxpt[2]] = \
        np.ascontiguousarray(lv1[:b.size3()[0], :b.size3()[1], :b.size3()[2]])
    made["em"] = em
    # raw uint16
    raw = em_volume((70, 50, 12), seed=2, dtype=np.uint16) * 200
    info = CloudVolume.create_new_info(1, "image", "uint16", "raw", [8, 8, 30], [0, 0, 0], raw.shape,
                                       chunk_size=[32, 32, 4])
    cv = _cv(f"file://{root}/raw16", info)
    cv.commit_info()
    cv[:, :, :] = raw
    made["raw16"] = raw
    # segmentation with mesh, skeleton, properties
    lab = labels_volume()
    info = CloudVolume.create_new_info(1, "segmentation", "uint64", "compressed_segmentation", [4, 4, 40],
                                       [10, 20, 2], lab.shape, mesh="mesh", skeletons="skeletons",
                                       chunk_size=[32, 32, 8])
    info["segment_properties"] = "props"
    cv = _cv(f"file://{root}/seg", info)
    cv.commit_info()
    cv[:, :, :] = lab
    verts = np.array([[40, 80, 80], [140, 80, 80], [40, 180, 80], [40, 80, 480]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    cv.mesh.put(Mesh(verts, faces, segid=SEG_IDS[0]), compress=False)
    skel = Skeleton([[50, 60, 100], [70, 60, 100], [90, 80, 140], [70, 90, 100]], edges=[[0, 1], [1, 2], [1, 3]],
                    radii=[1, 2, 3, 4], segid=SEG_IDS[0])
    cv.skeleton.upload(skel)
    cv.skeleton.meta.commit_info()
    props = {"@type": "neuroglancer_segment_properties", "inline": {
        "ids": [str(i) for i in SEG_IDS],
        "properties": [
            {"id": "label", "type": "label", "values": ["soma", "axon", "unused"]},
            {"id": "description", "type": "description", "values": ["a cell body", "", "listed only"]},
            {"id": "tags", "type": "tags", "tags": ["cell", "proofread"], "values": [[0, 1], [0], []]},
            {"id": "volume_um3", "type": "number", "data_type": "float32", "values": [12.5, 3.0, 0.0]}]}}
    (root / "seg" / "props").mkdir()
    (root / "seg" / "props" / "info").write_text(json.dumps(props))
    made["seg"] = lab
    made["seg_mesh"] = (verts, faces)
    made["seg_skeleton"] = skel
    # sharded
    data = em_volume((100, 80, 24), seed=3, dtype=np.uint16)
    info = CloudVolume.create_new_info(1, "image", "uint16", "raw", [8, 8, 40], [3, 0, 1], data.shape,
                                       chunk_size=[16, 16, 8])
    cv = _cv(f"file://{root}/shard", info)
    cv.image.to_sharded(uncompressed_shard_bytesize=40000, max_shard_index_bytes=64)
    cv.commit_info()
    sx, sy, sz = (int(v) for v in cv.image.shard_shape(0))
    ox, oy, oz = 3, 0, 1
    for x in range(0, data.shape[0], sx):  # CloudVolume writes a sharded layer one whole shard at a time
        for y in range(0, data.shape[1], sy):
            for z in range(0, data.shape[2], sz):
                cv[ox + x:ox + min(data.shape[0], x + sx), oy + y:oy + min(data.shape[1], y + sy),
                   oz + z:oz + min(data.shape[2], z + sz)] = data[x:x + sx, y:y + sy, z:z + sz]
    made["shard"] = data
    return made


def write_omezarr(root: Path) -> dict:
    """``v4.ome.zarr`` (NGFF 0.4, zarr v2, with labels/cells and their properties) and ``v5.ome.zarr`` (NGFF 0.5,
    zarr v3, sharded), both by ome-zarr-py, below ``root``."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale, write_multiscale_labels

    root = Path(root)
    img = em_volume((80, 72, 20), seed=4).transpose(2, 1, 0).copy()  # z y x
    pyramid = [img, img[:, ::2, ::2].copy()]
    axes = [{"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    shift = {"type": "translation", "translation": [0.08, 0.04, 0.0]}
    transforms = [[{"type": "scale", "scale": [0.04, 0.004, 0.004]}, shift],
                  [{"type": "scale", "scale": [0.04, 0.008, 0.008]}, shift]]
    g = zarr.open_group(str(root / "v4.ome.zarr"), mode="w", zarr_format=2)
    write_multiscale(pyramid, g, fmt=FormatV04(), axes=axes, coordinate_transformations=transforms,
                     storage_options={"chunks": (4, 32, 32)})
    cells = np.zeros(img.shape, np.uint32)
    cells[2:9, 10:40, 5:50] = 3
    cells[10:18, 40:70, 30:75] = 12
    write_multiscale_labels([cells, cells[:, ::2, ::2].copy()], g, "cells", fmt=FormatV04(), axes=axes,
                            coordinate_transformations=transforms, storage_options={"chunks": (4, 32, 32)},
                            label_metadata={"properties": [{"label-value": 3, "class": "nucleus", "area": 1350},
                                                           {"label-value": 12, "class": "vesicle"}]})
    g5 = zarr.open_group(str(root / "v5.ome.zarr"), mode="w", zarr_format=3)
    write_multiscale(pyramid, g5, fmt=FormatV05(), axes=axes, coordinate_transformations=transforms,
                     storage_options={"chunks": (4, 16, 16), "shards": (8, 32, 32)})
    return {"image": pyramid, "cells": cells}


def _draco_fragments(bits: int):
    """Two mesh fragments of quantised positions (integers in [0, 2**bits - 1]), Draco-encoded by DracoPy."""
    import DracoPy

    top = 2**bits - 1
    tetra = np.array([[0, 0, 0], [top, 0, 0], [0, top, 0], [0, 0, top]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    half = np.array([[0, 0, 0], [top // 2, 0, 0], [0, top // 2, 0], [0, 0, top // 2]], np.float32)
    encode = lambda pts: DracoPy.encode(pts, faces, quantization_bits=bits, quantization_range=top,  # noqa: E731
                                        quantization_origin=[0, 0, 0])
    return [encode(tetra), encode(half)], [(0, 0, 0), (1, 0, 1)]


def write_multilod_and_sharded(root: Path) -> dict:
    """Segmentation layers ``mlod`` (unsharded multi-resolution meshes, murmurhash-sharded skeletons) and
    ``mlod_sharded`` (sharded multi-resolution meshes), by CloudVolume's writers (its manifest class and shard
    synthesis) and DracoPy; the ids they keep are returned with the label volume."""
    from cloudvolume import CloudVolume, Skeleton
    from cloudvolume.datasource.precomputed.mesh.multilod import MultiLevelPrecomputedMeshManifest
    from cloudvolume.datasource.precomputed.sharding import ShardingSpecification, synthesize_shard_files

    root = Path(root)
    lab = labels_volume()
    ids = (9, 2**40 + 5)
    bits = 10
    fragments, positions = _draco_fragments(bits)
    made = {"labels": lab, "ids": ids}
    for name, sharded in (("mlod", False), ("mlod_sharded", True)):
        info = CloudVolume.create_new_info(1, "segmentation", "uint64", "compressed_segmentation", [4, 4, 40],
                                           [10, 20, 2], lab.shape, mesh="mesh", skeletons="skeletons",
                                           chunk_size=[32, 32, 8])
        cv = CloudVolume(f"file://{root}/{name}", info=info, progress=False, compress=False)
        cv.commit_info()
        cv[:, :, :] = lab
        mesh_dir = root / name / "mesh"
        mesh_dir.mkdir(parents=True)
        mesh_info = {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": bits,
                     "transform": [4, 0, 0, 40, 0, 4, 0, 80, 0, 0, 40, 80], "lod_scale_multiplier": 1.0}
        data, manifest_sizes = {}, {}
        for segid in ids:
            manifest = MultiLevelPrecomputedMeshManifest(
                segment_id=segid, chunk_shape=np.array([16, 16, 4], np.float32),
                grid_origin=np.array([2, 3, 1], np.float32), num_lods=2,
                lod_scales=np.array([1, 2], np.float32), vertex_offsets=np.zeros((2, 3), np.float32),
                num_fragments_per_lod=np.array([2, 2], np.uint32),  # CloudVolume writes equal counts only
                fragment_positions=[np.array(positions, np.uint32).T, np.array([[0, 1], [0, 0], [0, 0]], np.uint32)],
                fragment_offsets=[np.array([len(f) for f in fragments], np.uint32),
                                  np.array([len(fragments[1]), 0], np.uint32)])  # an empty fragment too
            blob = b"".join(fragments) + fragments[1]  # lod 0, then lod 1
            if sharded:
                data[segid] = blob + manifest.to_binary()
                manifest_sizes[segid] = len(manifest.to_binary())  # the index entry names the manifest only
            else:
                (mesh_dir / f"{segid}.index").write_bytes(manifest.to_binary())
                (mesh_dir / str(segid)).write_bytes(blob)
        if sharded:
            spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", preshift_bits=0, hash="murmurhash3_x86_128",
                                         minishard_bits=1, shard_bits=1, minishard_index_encoding="gzip",
                                         data_encoding="raw")
            mesh_info["sharding"] = spec.to_dict()
            for fname, shard in synthesize_shard_files(spec, data, data_offset=manifest_sizes).items():
                (mesh_dir / fname).write_bytes(shard)
        (mesh_dir / "info").write_text(json.dumps({k: (v if not hasattr(v, "tolist") else v.tolist())
                                                   for k, v in mesh_info.items()}, default=int))
        # murmurhash-sharded skeletons
        skel = Skeleton([[50, 60, 100], [70, 60, 100], [90, 80, 140]], edges=[[0, 1], [1, 2]], radii=[1, 2, 3],
                        segid=ids[0])
        cv.skeleton.meta.info["sharding"] = ShardingSpecification(
            "neuroglancer_uint64_sharded_v1", preshift_bits=0, hash="murmurhash3_x86_128", minishard_bits=2,
            shard_bits=1, minishard_index_encoding="gzip", data_encoding="gzip").to_dict()
        cv.skeleton.meta.commit_info()
        spec = ShardingSpecification.from_dict(cv.skeleton.meta.info["sharding"])
        for fname, shard in synthesize_shard_files(spec, {ids[0]: skel.to_precomputed()}).items():
            (root / name / "skeletons" / fname).write_bytes(shard)
        made[f"{name}_skeleton"] = skel
    return made
