"""Precomputed and OME-Zarr remotes against the field's own writers and readers.

Every dataset here is written by CloudVolume, ome-zarr-py or zarr-python (tests/field_data.py) and
served from a folder and over a Range-capable static HTTP server on 127.0.0.1. What ndfs reads, through
the API and through a real mount, must equal what CloudVolume and zarr-python read from the same data;
meshes and skeletons must be the writer's own.
"""

import errno
import json
import shutil

import numpy as np
import pytest
import tifffile

import ndfs
from ndfs.core.errors import BadRegion, ConfigError, NotFound, ReadOnly
from ndfs.core.geometry import Box
from ndfs.formats.swc import parse_swc
from ndfs.stores.base import ShapeStore
from ndfs.testing.http_static import StaticServer
from ndfs.testing.mount import fuse_unavailable, mounted

from field_data import SEG_IDS, write_multilod_and_sharded, write_omezarr, write_precomputed

LAYERS = ["em", "raw16", "seg", "shard", "mlod", "mlod_sharded"]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    made = write_precomputed(root / "pc")
    made["multilod"] = write_multilod_and_sharded(root / "pc")
    made.update({f"oz_{k}": v for k, v in write_omezarr(root / "oz").items()})
    with StaticServer(root) as server:
        yield root, made, server


def remotes(field, where):
    root, _, server = field
    if where == "dir":
        return (ndfs.remote(str(root / "pc"), kind="precomputed", cache=False),
                ndfs.remote(str(root / "oz"), kind="zarr", cache=False))
    return (ndfs.remote(f"precomputed://{server.url}/pc", cache=False, layers=LAYERS),
            ndfs.remote(f"zarr://{server.url}/oz", cache=False, layers=["v4.ome.zarr", "v5.ome.zarr"]))


def cloudvolume(field, layer, mip=0):
    from cloudvolume import CloudVolume

    return CloudVolume(f"file://{field[0]}/pc/{layer}", mip=mip, progress=False)


def cv_zyx(cv, box: Box) -> np.ndarray:
    """What CloudVolume reads for a ZYX box, as ZYX."""
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return np.asarray(cv[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)


@pytest.mark.parametrize("where", ["dir", "http"])
@pytest.mark.parametrize("layer", LAYERS)
def test_precomputed_levels_slices_and_cutouts_equal_cloudvolume(field, where, layer):
    pc, _ = remotes(field, where)
    info = pc.get_info("", layer)
    cvs = [cloudvolume(field, layer, mip) for mip in range(len(info.levels))]
    assert len(info.levels) == len(cvs[0].available_mips)
    for level, cv in enumerate(cvs):
        lv = info.level(level)
        assert lv.box.start == tuple(int(v) for v in cv.voxel_offset[::-1])
        assert lv.shape == tuple(int(v) for v in cv.volume_size[::-1])
        assert lv.voxel_size_nm == tuple(float(v) for v in cv.resolution[::-1])
        whole = pc.backend.read(("" or layer,), lv.box, level)
        np.testing.assert_array_equal(whole, cv_zyx(cv, lv.box))
    vol = pc.volume("", layer)
    rng = np.random.default_rng(5)
    box = info.level(0).box
    for _ in range(4):
        start = [int(rng.integers(a, b)) for a, b in zip(box.start, box.stop)]
        stop = [int(rng.integers(s + 1, b + 1)) for s, b in zip(start, box.stop)]
        cut = Box(tuple(start), tuple(stop))
        np.testing.assert_array_equal(vol[cut.slices()], cv_zyx(cvs[0], cut), err_msg=str(cut))
    z = box.start[0] + box.shape[0] // 2
    np.testing.assert_array_equal(vol[z], cv_zyx(cvs[0], Box((z, *box.start[1:]), (z + 1, *box.stop[1:])))[0])


@pytest.mark.parametrize("where", ["dir", "http"])
def test_omezarr_images_and_labels_equal_zarr_python_and_ome_zarr_py(field, where):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root, made, _ = field
    _, oz = remotes(field, where)
    assert oz.list("") == ["v4.ome.zarr", "v5.ome.zarr"]
    assert oz.list("v4.ome.zarr") == ["image", "labels"]
    assert oz.list("v4.ome.zarr/labels") == ["cells"]
    nodes = list(Reader(parse_url(str(root / "oz" / "v4.ome.zarr"), fmt=FormatV04()))())
    pyramid = [np.asarray(a) for a in nodes[0].data]
    for ref in (("v4.ome.zarr", "image"), ("v5.ome.zarr",)):
        info = oz.backend.info(ref)
        assert info.kind == "image" and len(info.levels) == 2
        assert info.level(0).voxel_size_nm == pytest.approx((40.0, 4.0, 4.0))  # micrometer axes, in nm
        assert info.level(0).offset == (2, 10, 0) and info.level(1).offset == (2, 5, 0)  # translation / scale
        for level in range(2):
            np.testing.assert_array_equal(oz.backend.read(ref, info.level(level).box, level), pyramid[level])
    assert oz.backend.info(("v5.ome.zarr",)).level(0).chunk_shape == (4, 16, 16)  # the chunks inside the shards
    cells = ("v4.ome.zarr", "labels", "cells")
    info = oz.backend.info(cells)
    assert info.kind == "annotation" and info.dtype == np.uint32
    np.testing.assert_array_equal(oz.backend.read(cells, info.level(0).box, 0),
                                  zarr.open_array(str(root / "oz" / "v4.ome.zarr" / "labels" / "cells" / "s0"),
                                                  mode="r")[:])
    assert oz.get_ramon_ids("v4.ome.zarr/labels", "cells") == [3, 12]
    (nucleus,) = oz.get_ramon("v4.ome.zarr/labels", "cells", [3])
    assert nucleus.kvpairs == {"class": "nucleus", "area": "1350"}
    assert oz.get_ramon_bounding_box("v4.ome.zarr/labels", "cells", 3) == Box((4, 20, 5), (11, 50, 50))


@pytest.mark.parametrize("where", ["dir", "http"])
def test_segment_properties_are_the_objects_of_a_segmentation(field, where):
    pc, _ = remotes(field, where)
    assert pc.get_info("", "seg").kind == "annotation"
    assert pc.get_ramon_ids("", "seg") == sorted(SEG_IDS)
    soma, axon = pc.get_ramon("", "seg", [SEG_IDS[0], SEG_IDS[1]])
    assert soma.kvpairs == {"label": "soma", "description": "a cell body", "tags": "cell,proofread",
                            "volume_um3": "12.5"}
    assert axon.kvpairs["tags"] == "cell"
    assert pc.get_ramon_ids("", "seg", kv={"label": "axon"}) == [SEG_IDS[1]]
    assert pc.get_ramon_bounding_box("", "seg", SEG_IDS[0]) == Box((6, 50, 45), (16, 80, 70))
    assert pc.get_ramon_bounding_box("", "seg", 77) is None
    with pytest.raises(NotFound):
        pc.get_ramon("", "seg", [123456])
    with pytest.raises(ReadOnly):
        pc.post_ramon("", "seg", soma)
    with pytest.raises(ReadOnly):
        pc.delete_ramon("", "seg", [SEG_IDS[0]])


@pytest.mark.parametrize("where", ["dir", "http"])
def test_meshes_and_skeletons_are_the_writers_own(field, where):
    _, made, _ = field
    pc, _ = remotes(field, where)
    assert isinstance(pc.backend, ShapeStore)
    verts, faces = pc.backend.object_mesh(("seg",), SEG_IDS[0])
    want_v, want_f = made["seg_mesh"]
    np.testing.assert_array_equal(verts, want_v)
    np.testing.assert_array_equal(faces, want_f)
    cv_mesh = cloudvolume(field, "seg").mesh.get(SEG_IDS[0], fuse=False)[SEG_IDS[0]]
    np.testing.assert_array_equal(verts[faces], cv_mesh.vertices[cv_mesh.faces])
    skel = pc.backend.object_skeleton(("seg",), SEG_IDS[0])
    cv_skel = cloudvolume(field, "seg").skeleton.get(SEG_IDS[0])
    np.testing.assert_array_equal(skel.vertices, cv_skel.vertices)
    np.testing.assert_array_equal(skel.edges, cv_skel.edges)
    np.testing.assert_array_equal(skel.radius, cv_skel.radii)
    assert pc.backend.object_mesh(("seg",), SEG_IDS[1]) is None  # no mesh of its own: the mount meshes its voxels
    assert pc.backend.object_skeleton(("seg",), SEG_IDS[1]) is None


@pytest.mark.parametrize("where", ["dir", "http"])
def test_multi_resolution_and_sharded_meshes_and_sharded_skeletons_equal_cloudvolume(field, where):
    made = field[1]["multilod"]
    pc, _ = remotes(field, where)
    for layer in ("mlod", "mlod_sharded"):
        for segid in made["ids"]:
            verts, faces = pc.backend.object_mesh((layer,), segid)
            want = cloudvolume(field, layer).mesh.get(segid, lod=0)
            want = want[segid] if isinstance(want, dict) else want
            assert len(faces) == len(want.faces) > 0
            # the same triangles; float32 sums in another order differ in the last bit
            np.testing.assert_allclose(verts[faces], want.vertices[want.faces], rtol=1e-6)
        skel = pc.backend.object_skeleton((layer,), made["ids"][0])
        want = cloudvolume(field, layer).skeleton.get(made["ids"][0])
        np.testing.assert_array_equal(skel.vertices, want.vertices)
        np.testing.assert_array_equal(skel.edges, want.edges)
        np.testing.assert_array_equal(skel.radius, want.radii)
        assert pc.backend.object_skeleton((layer,), made["ids"][1]) is None  # absent from its shard
        assert pc.backend.object_mesh((layer,), 424242) is None
        assert pc.get_ramon("", layer, [made["ids"][1]])[0].kvpairs == {}  # no properties, but a mesh
        with pytest.raises(NotFound):
            pc.get_ramon("", layer, [424242])


def test_writes_reach_unsharded_layers_and_sharded_ones_refuse_with_erofs(field, tmp_path):
    import zarr
    from cloudvolume import CloudVolume

    root, made, server = field
    shutil.copytree(root / "pc", tmp_path / "pc")
    shutil.copytree(root / "oz", tmp_path / "oz")
    pc = ndfs.remote(f"precomputed+file://{tmp_path}/pc")  # as every entry point stacks it: cache and outbox
    vol = pc.volume("", "raw16")
    patch = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    vol[4:7, 10:30, 5:35] = patch
    cv = CloudVolume(f"file://{tmp_path}/pc/raw16", progress=False)
    np.testing.assert_array_equal(cv_zyx(cv, Box((4, 10, 5), (7, 30, 35))), patch)
    expected = made["raw16"].transpose(2, 1, 0).copy()
    expected[4:7, 10:30, 5:35] = patch
    np.testing.assert_array_equal(cv_zyx(cv, Box((0, 0, 0), expected.shape)), expected)
    seg = pc.volume("", "seg")
    z0, y0, x0 = seg.info.level(0).offset
    seg[z0:z0 + 2, y0:y0 + 8, x0:x0 + 8] = np.full((2, 8, 8), 4242, np.uint64)  # compressed_segmentation
    assert (cv_zyx(CloudVolume(f"file://{tmp_path}/pc/seg", progress=False),
                   Box((z0, y0, x0), (z0 + 2, y0 + 8, x0 + 8))) == 4242).all()
    with pytest.raises(ReadOnly, match="sharded") as refused:
        pc.volume("", "shard")[2:3, 0:16, 3:19] = np.zeros((1, 16, 16), np.uint16)
    assert refused.value.errno == errno.EROFS
    with pytest.raises(ReadOnly, match="jpeg"):
        pc.volume("", "em")[3:4, 8:16, 16:24] = np.zeros((1, 8, 8), np.uint8)
    oz = ndfs.remote(f"zarr+file://{tmp_path}/oz")
    image = oz.volume("v4.ome.zarr", "image")
    image[5, 20:30, 10:20] = np.full((10, 10), 7, np.uint8)
    written = zarr.open_array(str(tmp_path / "oz" / "v4.ome.zarr" / "s0"), mode="r")
    np.testing.assert_array_equal(written[3, 10:20, 10:20], 7)
    with pytest.raises(ReadOnly, match="sharded"):
        oz.volume("", "v5.ome.zarr")[5, 20:30, 10:20] = np.zeros((10, 10), np.uint8)
    over_http = ndfs.remote(f"precomputed://{server.url}/pc", layers=LAYERS)
    with pytest.raises(ReadOnly):
        over_http.volume("", "raw16")[0, 0:4, 0:4] = np.zeros((4, 4), np.uint16)
    untouched = CloudVolume(f"file://{root}/pc/raw16", progress=False)
    np.testing.assert_array_equal(cv_zyx(untouched, Box((0, 0, 0), expected.shape)), made["raw16"].transpose(2, 1, 0))


def test_a_channel_inside_a_dataset_is_not_removed_alone(field, tmp_path):
    """The image beside its labels lives at the labels' parent: removing it alone would take the labels."""
    import zarr

    root, made, _ = field
    shutil.copytree(root / "oz", tmp_path / "oz")
    oz = ndfs.remote(f"zarr+file://{tmp_path}/oz", cache=False)
    with pytest.raises(BadRegion, match="part of the dataset v4.ome.zarr"):
        oz.backend.delete_volume("v4.ome.zarr/image")
    assert zarr.open_array(str(tmp_path / "oz" / "v4.ome.zarr" / "labels" / "cells" / "s0"), mode="r").shape
    assert oz.volume("v4.ome.zarr", "image").info.kind == "image"
    oz.backend.delete_volume("v5.ome.zarr")  # a whole dataset is one channel: it goes
    assert not (tmp_path / "oz" / "v5.ome.zarr").exists()


def test_gzip_chunk_files_are_refused_with_a_reason_not_read_as_zeros(tmp_path):
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [64, 64, 8],
                                       chunk_size=[32, 32, 8])
    cv = CloudVolume(f"file://{tmp_path}/gz", info=info, progress=False, compress="gzip")
    cv.commit_info()
    cv[:, :, :] = np.ones((64, 64, 8, 1), np.uint8)
    pc = ndfs.remote(str(tmp_path / "gz"), kind="precomputed", cache=False)
    with pytest.raises(ndfs.core.errors.BackendError, match=r"\.gz files"):
        pc.volume("", "gz")[0]


def test_crafted_metadata_is_refused_by_the_safe_json_decoder(tmp_path):
    """A dataset's metadata comes from anywhere: an info with a 10,000-digit integer or nested 100 deep is
    refused with its reason (as every JSON answer of a service is), not parsed."""
    layer = tmp_path / "pc" / "bad"
    layer.mkdir(parents=True)
    for body, reason in (('{"scales": [], "num_channels": 1' + "9" * 10_000 + "}", "digits"),
                         ('{"scales": ' + "[" * 100 + "]" * 100 + "}", "nested too deeply")):
        (layer / "info").write_text(body)
        pc = ndfs.remote(str(tmp_path / "pc"), kind="precomputed", cache=False)
        with pytest.raises(ndfs.core.errors.BackendError, match=reason):
            pc.backend.info(("bad",))


def test_dataset_urls_and_settings(tmp_path):
    from ndfs.core.config import parse_config
    from ndfs.stack import open_backend
    from ndfs.stores.tstore import Location

    # gs:// and s3:// cannot be reached from the test machine: opening builds the remote and fetches nothing
    gs = ndfs.remote("precomputed://gs://neuroglancer-public-data/flyem_fib-25/image", cache=False)
    assert gs.kind == "precomputed" and "write" in gs.backend.capabilities
    assert not ndfs.remote("zarr+s3://bucket/a.zarr", cache=False, read_only=True).backend.capabilities
    assert Location("gs://bucket/layer").kvstore() == "gs://bucket/layer/"
    assert Location("s3://bucket/a/b").join("c").kvstore() == "s3://bucket/a/b/c/"
    assert Location(tmp_path).kvstore() == {"driver": "file", "path": f"{tmp_path}/"}
    assert Location("http://127.0.0.1:1/x").writable is False and Location("s3://b/x").writable
    assert ndfs.remote("zarr+https://example.org/a.zarr", cache=False).backend.capabilities == frozenset()
    cfg = parse_config({"remotes": {"em": {"kind": "precomputed", "path": "layers", "layers": ["a", "b/c"]},
                                    "oz": {"kind": "zarr", "url": "s3://bucket/img.ome.zarr", "read_only": True}}},
                       tmp_path)
    assert cfg.remotes["em"].path == tmp_path / "layers"
    assert open_backend(cfg.remotes["em"]).layers == {"a": {}, "b": {"c": {}}}
    for bad in ({"kind": "zarr"}, {"kind": "zarr", "url": "ftp://x/y"}, {"kind": "zarr", "path": "a", "url": "gs://b"},
                {"kind": "precomputed", "path": "a", "layers": "a"}, {"kind": "precomputed", "path": "a", "lyers": []}):
        with pytest.raises(ConfigError):
            parse_config({"remotes": {"x": bad}}, tmp_path)


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_mount_shows_layers_images_labels_and_their_objects(field, tmp_path):
    root, made, server = field
    shutil.copytree(root / "pc" / "raw16", tmp_path / "writable" / "raw16")
    cfg = tmp_path / "ndfs.toml"
    cfg.write_text(f'[remotes.pc]\nkind = "precomputed"\nurl = "{server.url}/pc"\nlayers = {json.dumps(LAYERS)}\n'
                   f'[remotes.oz]\nkind = "zarr"\nurl = "{server.url}/oz"\nlayers = ["v4.ome.zarr", "v5.ome.zarr"]\n'
                   f'[remotes.mine]\nkind = "precomputed"\npath = "writable"\n'
                   f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    mnt = tmp_path / "mnt"
    with mounted(cfg, mnt):
        em = made["em"].transpose(2, 1, 0)  # what CloudVolume wrote, ZYX; the jpeg layer reads as CloudVolume reads it
        cv = cloudvolume(field, "em")
        z = 2 + 7
        np.testing.assert_array_equal(tifffile.imread(mnt / "pc" / "em" / "0" / "z" / f"{z}.tif"),
                                      cv_zyx(cv, Box((z, 8, 16), (z + 1, 8 + em.shape[1], 16 + em.shape[2])))[0])
        cut = np.load(mnt / "pc" / "shard" / "0" / "cutout" / "10-60_5-45_3-20.npy")
        np.testing.assert_array_equal(cut, made["shard"].transpose(2, 1, 0)[2:19, 5:45, 7:57])
        info = json.loads((mnt / "pc" / "seg" / "info.json").read_text())
        assert info["kind"] == "annotation"
        seg = made["seg"].transpose(2, 1, 0)  # the Fiji views of a uint64 segmentation, as for any label channel
        fiji = tifffile.imread(mnt / "pc" / "seg" / "0" / "labels16" / "z" / "8.tif")
        table = (mnt / "pc" / "seg" / "0" / "labels16" / "z" / "8.csv").read_text().splitlines()[1:]
        lut = {int(k): int(v) for k, v in (row.split(",") for row in table)}
        np.testing.assert_array_equal(np.vectorize(lambda k: lut.get(int(k), 0))(fiji), seg[8 - 2])
        ramon = mnt / "pc" / "seg" / "ramon"
        assert sorted(p.name for p in ramon.iterdir()) == sorted([f"{i}.json" for i in SEG_IDS] + ["by-type"])
        assert json.loads((ramon / f"{SEG_IDS[0]}.json").read_text())["kvpairs"]["label"] == "soma"
        text = (ramon / f"{SEG_IDS[0]}.obj").read_text().splitlines()
        verts = np.array([[float(v) for v in ln.split()[1:]] for ln in text if ln.startswith("v ")])
        np.testing.assert_array_equal(verts, made["seg_mesh"][0])
        v, e, r = parse_swc((ramon / f"{SEG_IDS[0]}.swc").read_bytes())
        skel = made["seg_skeleton"]
        assert sorted(map(tuple, v)) == sorted(map(tuple, skel.vertices.astype(float)))
        assert len(e) == len(skel.edges)
        assert sorted(r) == [1, 2, 3, 4]
        assert (ramon / f"{SEG_IDS[1]}.ply").read_bytes().startswith(b"ply")  # meshed from its voxels (zmesh)
        with pytest.raises(FileNotFoundError):
            (ramon / f"{SEG_IDS[1]}.swc").read_bytes()
        with pytest.raises(OSError) as refused:
            (ramon / f"{SEG_IDS[0]}.json").write_text('{"type": "segment"}')
        assert refused.value.errno == errno.EROFS
        image = mnt / "oz" / "v4.ome.zarr" / "image" / "1" / "z" / "5.tif"
        np.testing.assert_array_equal(tifffile.imread(image), made["oz_image"][1][3])
        assert (mnt / "oz" / "v4.ome.zarr" / "labels" / "cells" / "ramon" / "3.json").exists()
        np.testing.assert_array_equal(tifffile.imread(mnt / "oz" / "v5.ome.zarr" / "0" / "z" / "2.tif"),
                                      made["oz_image"][0][0])
        plane = np.full((50, 70), 4321, np.uint16)
        tifffile.imwrite(mnt / "mine" / "raw16" / "0" / "z" / "3.tif", plane)
        np.testing.assert_array_equal(tifffile.imread(mnt / "mine" / "raw16" / "0" / "z" / "3.tif"), plane)
    from cloudvolume import CloudVolume

    written = CloudVolume(f"file://{tmp_path}/writable/raw16", progress=False)
    np.testing.assert_array_equal(cv_zyx(written, Box((3, 0, 0), (4, 50, 70)))[0], plane)


def test_a_write_a_dead_writer_left_in_the_outbox_is_completed_whole(field, tmp_path, private_outbox):
    """A process that died after journaling a write (before or while its chunks were stored) leaves the whole
    write in the outbox; the next process that opens the remote stores all of it."""
    from pathlib import Path

    from cloudvolume import CloudVolume

    from ndfs.core.config import RemoteConfig, remote_target
    from ndfs.stores.journal import Journal
    from ndfs.testing.mount import wait_until

    root, made, _ = field
    shutil.copytree(root / "pc" / "raw16", tmp_path / "pc" / "raw16")
    url = f"file://{tmp_path}/pc"
    rc = RemoteConfig("precomputed", "precomputed", url=url)
    box = Box((2, 5, 10), (10, 45, 70))  # spans 3 x 2 x 2 chunks of (4, 32, 32)
    data = np.random.default_rng(9).integers(0, 60000, size=box.shape, dtype=np.uint16)
    Journal(Path(private_outbox)).put(rc.name, remote_target(rc), ("raw16",), 0, box, data)
    remote = ndfs.remote(f"precomputed+{url}")  # resumes the outbox's pending entries for this target
    cv = CloudVolume(f"{url}/raw16", progress=False)
    assert wait_until(lambda: (cv_zyx(cv, box) == data).all(), timeout=30)
    np.testing.assert_array_equal(remote.volume("", "raw16")[box.slices()], data)
