"""The NeuroData driver and `ndfs serve --protocol neurodata`, over real sockets, checked with the real ndio.

Stores used here (each module-scoped, in a temporary directory):

* ``STORE/conf/...``: the conformance reference project (token ``conf``);
* ``STORE/ann/seg`` (uint32 annotation, offset (1, 2, 3), 2 levels) and
  ``STORE/ann/img`` (uint8): RAMON and protocol tests;
* ``STORE/kasthuri11cc/image``: the ndio paper's example, scaled down.

ndio 1.1.5 runs in its own virtual environment with the pins of
``specs/neurodata.md`` (see :func:`ndio_python`), made on first use in the
user's cache directory and reused after; a failure to make it fails the tests.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests

from ndfs import ramon
from ndfs.stores.local import LocalBackend
from ndfs.stores.neurodata import NeuroDataBackend, npz_decode, npz_encode, pieces
from ndfs.core.errors import BackendError, BadRegion, InvalidAnnotation, NotFound, PermissionDenied, ReadOnly
from ndfs.core.geometry import Box
from ndfs.serve.common import ServeOptions, WsgiServer
from ndfs.serve.neurodata import NeuroDataApp
from ndfs.testing.conformance import *  # noqa: F401,F403
from ndfs.testing.conformance import Case
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.reference import build_reference_store
from ndfs.testing.serve import served

ANN, IMG = ("ann", "seg"), ("ann", "img")
ANN_SHAPE, ANN_OFFSET = (10, 60, 70), (1, 2, 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("nd-store")
    _, oracle = build_reference_store(root)
    local = LocalBackend(root)
    local.create_volume(ANN, ANN_SHAPE, "uint32", kind="annotation", offset=ANN_OFFSET, levels=2,
                        chunk_shape=(4, 32, 32), voxel_size_nm=(30, 4, 4))
    local.create_volume(IMG, ANN_SHAPE, "uint8", offset=ANN_OFFSET, levels=2, chunk_shape=(4, 32, 32),
                        voxel_size_nm=(30, 4, 4))
    return root, oracle


@pytest.fixture(scope="module")
def server(store):
    with WsgiServer(NeuroDataApp(LocalBackend(store[0]))) as srv:
        yield srv


@pytest.fixture
def nd(server):
    backend = NeuroDataBackend(server.url, backoff_s=0.01)
    yield backend
    backend.close()


@pytest.fixture
def clean_ann(store):
    """The annotation channel emptied (labels and objects) before the test."""
    local = LocalBackend(store[0])
    local.create_volume(ANN, ANN_SHAPE, "uint32", kind="annotation", offset=ANN_OFFSET, levels=2,
                        chunk_shape=(4, 32, 32), voxel_size_nm=(30, 4, 4), overwrite=True)
    return local


def url(server, tail: str, prefix: str = "ocp/ca") -> str:
    return f"{server.url}/{prefix}/{tail}"


# ---- the conformance suite on the driver, raw and cached ---------------------------
@pytest.fixture(scope="module")
def conformance_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("nd-conformance")
    _, oracle = build_reference_store(root)
    with WsgiServer(NeuroDataApp(LocalBackend(root))) as srv:
        yield srv, root, oracle


@pytest.fixture(params=["neurodata-raw", "neurodata-cached", "neurodata-journaled"])
def conformance_case(request, conformance_server, tmp_path):
    srv, root, oracle = conformance_server
    backend = NeuroDataBackend(srv.url)
    if request.param == "neurodata-cached":
        from ndfs.cache import CachedBackend

        backend = CachedBackend(backend, namespace=f"neurodata:{srv.url}", memory_bytes=64 * 2**20)
    elif request.param == "neurodata-journaled":
        from ndfs.testing.cases import journaled

        backend = journaled(backend, "neurodata", srv.url, tmp_path)
    request.addfinalizer(backend.close)
    return Case(backend=backend, oracle=oracle, extra={"local": LocalBackend(root)})


def test_writes_round_trip_or_are_read_only(conformance_case):
    """NeuroData's version of the suite's write test: posts merge, so zeros keep what was there (spec 2)."""
    from ndfs.testing.reference import _downsample_with_offset

    c = conformance_case
    ref, full = c.ref("scratch"), c.oracle.box("scratch", 0)
    z0, y0, x0 = full.start
    box = Box((z0 + 2, y0 + 3, x0 + 5), (z0 + 11, y0 + 40, x0 + 61))
    new = np.random.default_rng(7).integers(0, 256, size=box.shape, dtype=np.uint8)
    assert (new == 0).sum() > 10  # the zeros are what this test is about
    old = c.oracle.read("scratch", full, 0)
    try:
        c.backend.write(ref, box, 0, new)
        expected = old.copy()
        part = expected[box.slices(full.start)]
        expected[box.slices(full.start)] = np.where(new != 0, new, part)
        np.testing.assert_array_equal(c.backend.read(ref, full, 0), expected)
        level1 = _downsample_with_offset(expected, full.start, "image")
        np.testing.assert_array_equal(c.backend.read(ref, c.oracle.box("scratch", 1), 1), level1)
    finally:  # zeros cannot be posted back: restore through the store itself
        c.extra["local"].write(ref, full, 0, old)
        from ndfs.stores.wrap import layers
        from ndfs.cache import CachedBackend

        for layer in layers(c.backend):  # written behind the layers' backs: the cache must forget it
            if isinstance(layer, CachedBackend):
                layer.invalidate(ref)


# ---- the protocol ----------------------------------------------------------------
def test_all_url_prefixes_and_doubled_slashes_give_identical_bytes(server):
    tail = "conf/em16/npz/0/10,40/8,30/4,9/"
    bodies = {requests.get(url(server, tail, p)).content for p in ("ocp/ca", "nd/sd", "ocp/sd", "nd/ca", "nd/ocpca")}
    assert len(bodies) == 1
    assert requests.get(f"{server.url}//ocp/ca//conf//em16/npz/0/10,40/8,30/4,9/").content in bodies
    assert requests.get(f"{server.url}/xyz/ca/public_tokens/").status_code == 400


def test_info_has_string_level_keys_and_the_levels_of_the_store(server, store):
    assert requests.get(url(server, "public_tokens/")).json() == ["ann", "conf"]
    info = requests.get(url(server, "conf/info/")).json()
    ds = info["dataset"]
    assert ds["resolutions"] == [0, 1, 2] and ds["scaling"] == "zslices" and ds["scalinglevels"] == 2
    assert set(ds["imagesize"]) == {"0", "1", "2"}
    for r in range(3):
        box = store[1].box("em8", r)
        assert ds["imagesize"][str(r)] == list(box.shape[::-1])
        assert ds["offset"][str(r)] == list(box.start[::-1])
    assert ds["voxelres"]["1"] == [8.0, 8.0, 30.0] and ds["cube_dimension"]["0"] == [32, 32, 8]
    assert info["channels"]["labels"] == {
        "channel_type": "annotation", "datatype": "uint64", "exceptions": 0, "readonly": 0, "resolution": 0,
        "propagate": 0, "windowrange": [0, 0], "description": "labels", "timerange": [0, 0]}
    assert requests.get(url(server, "nope/info/")).status_code == 404


@pytest.mark.parametrize("channel", ["em8", "em16", "labels"])
@pytest.mark.parametrize("fmt", ["npz", "hdf5", "raw", "zip", "blosc"])
def test_cutouts_in_every_format_equal_the_store(server, store, channel, fmt):
    oracle = store[1]
    box = Box((4, 9, 11), (13, 40, 77))
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    resp = requests.get(url(server, f"conf/{channel}/{fmt}/0/{x0},{x1}/{y0},{y1}/{z0},{z1}/"))
    assert resp.status_code == 200 and resp.headers["Content-Type"] == f"product/{fmt}"
    dtype = oracle.levels[channel][0].dtype
    if fmt == "npz":
        got = npz_decode(resp.content)
    elif fmt == "hdf5":
        with h5py.File(io.BytesIO(resp.content), "r") as f:
            got = f[channel]["CUTOUT"][()][None]
            assert f[channel]["DATATYPE"][0].decode() == dtype.name
    elif fmt == "blosc":
        import blosc

        got = blosc.unpack_array(resp.content)  # our own server: the pickle inside is ours
    else:
        raw = resp.content if fmt == "raw" else zlib.decompress(resp.content)
        got = np.frombuffer(raw, dtype=dtype).reshape((1,) + box.shape)
    assert got.dtype == dtype and got.shape == (1,) + box.shape
    np.testing.assert_array_equal(got[0], oracle.read(channel, box, 0))


def test_npz_and_zip_replies_are_compressed_at_zlib_level_1(server, store):
    """The server's compression must not be what a cutout waits for (bench --api, row A3)."""
    (z0, y0, x0) = store[1].box("em16", 0).start
    box = Box((z0, y0, x0), (z0 + 8, y0 + 16, x0 + 16))
    data = store[1].read("em16", box, 0)
    tail = f"0/{x0},{x0 + 16}/{y0},{y0 + 16}/{z0},{z0 + 8}/"
    npz = requests.get(url(server, f"conf/em16/npz/{tail}")).content
    buf = io.BytesIO()
    np.save(buf, data[None], allow_pickle=False)
    assert npz == zlib.compress(buf.getvalue(), 1)
    assert requests.get(url(server, f"conf/em16/zip/{tail}")).content == zlib.compress(data.tobytes(), 1)


def test_illegal_boxes_and_levels_are_404_illegal(server):
    for tail in ("conf/em8/npz/0/0,10/5,10/3,5/",      # x below the offset (7)
                 "conf/em8/npz/0/7,98/5,10/3,5/",      # past the end
                 "conf/em8/npz/0/9,9/5,10/3,5/",       # empty
                 "conf/em8/npz/3/7,8/5,10/3,5/",       # no level 3
                 "conf/em8/npz/0/7,8/5,10/3,5/1,2/"):  # a time range
        resp = requests.get(url(server, tail))
        assert resp.status_code == 404 and resp.text.startswith("Illegal"), (tail, resp.text)
    assert "Illegal range. Image size: [90, 70, 20] at offset [7, 5, 3]" in \
        requests.get(url(server, "conf/em8/npz/0/0,10/5,10/3,5/")).text
    assert requests.get(url(server, "conf/nope/npz/0/7,8/5,10/3,5/")).status_code == 404


def test_bad_posts_are_refused_with_404_and_write_nothing(server, store):
    local = LocalBackend(store[0])
    box = Box((4, 10, 10), (6, 14, 18))
    before = local.read(IMG, box, 0)
    tail = "ann/img/npz/0/10,18/10,14/4,6/"
    cases = [np.ones((1, 2, 4, 9), np.uint8), np.ones((2, 2, 4, 8), np.uint8), np.ones((1, 2, 4, 8), np.uint16),
             np.ones((2, 4, 8), np.uint8)]
    messages = []
    for arr in cases:
        resp = requests.post(url(server, tail), data=npz_encode(arr))
        assert resp.status_code == 404
        messages.append(resp.text)
    assert messages[2].startswith("Wrong datatype in POST")
    assert requests.post(url(server, tail), data=b"not zlib").status_code == 404
    assert requests.post(url(server, "ann/img/blosc/0/10,18/10,14/4,6/"), data=b"x").status_code == 404
    with WsgiServer(NeuroDataApp(LocalBackend(store[0], read_only=True))) as ro:
        resp = requests.post(url(ro, tail), data=npz_encode(np.ones((1, 2, 4, 8), np.uint8)))
        assert resp.status_code == 404 and "read only" in resp.text
        assert requests.get(url(ro, "ann/info/")).json()["channels"]["img"]["readonly"] == 1
    np.testing.assert_array_equal(local.read(IMG, box, 0), before)


def test_posts_merge_non_zero_voxels_and_zeros_keep_old_data(server, store):
    local = LocalBackend(store[0])
    box = Box((2, 20, 20), (4, 24, 28))
    first = np.full((1,) + box.shape, 9, np.uint8)
    assert requests.post(url(server, "ann/img/npz/0/20,28/20,24/2,4/"), data=npz_encode(first)).text == "Success"
    second = np.zeros_like(first)
    second[0, 0, 0, :4] = 5
    with io.BytesIO() as buf:  # the hdf5 body works too
        with h5py.File(buf, "w") as f:
            f.create_dataset("img/CUTOUT", data=second[0])
        assert requests.post(url(server, "ann/img/hdf5/0/20,28/20,24/2,4/"), data=buf.getvalue()).status_code == 200
    got = local.read(IMG, box, 0)
    assert (got[0, 0, :4] == 5).all() and (got[0, 0, 4:] == 9).all() and (got[1] == 9).all()


def test_multi_channel_cutouts_stack_on_c_and_mixed_dtypes_are_refused(server, store):
    oracle = store[1]
    box = Box((3, 5, 7), (5, 9, 12))
    got = npz_decode(requests.get(url(server, "conf/em8,scratch/npz/0/7,12/5,9/3,5/")).content)
    assert got.shape == (2,) + box.shape
    np.testing.assert_array_equal(got[0], oracle.read("em8", box, 0))
    np.testing.assert_array_equal(got[1], oracle.read("scratch", box, 0))
    resp = requests.get(url(server, "conf/em8,em16/npz/0/7,12/5,9/3,5/"))
    assert resp.status_code == 404 and "datatype" in resp.text


def test_filter_id_and_ids_read_a_known_label_volume(server, store):
    oracle = store[1]
    box = Box((5, 10, 20), (9, 40, 60))
    labels = oracle.read("labels", box, 0)
    keep = [int(v) for v in np.unique(labels)[1:3]]
    got = npz_decode(requests.get(url(server, f"conf/labels/npz/0/20,60/10,40/5,9/filter/{keep[0]},{keep[1]}/"))
                     .content)[0]
    np.testing.assert_array_equal(got, np.where(np.isin(labels, keep), labels, 0))
    ids = requests.get(url(server, "conf/labels/ids/0/20,60/10,40/5,9/")).text
    assert [int(v) for v in ids.split(",")] == [int(v) for v in np.unique(labels) if v]
    assert int(requests.get(url(server, "conf/labels/id/0/25/12/6/")).text) == int(labels[1, 2, 5])
    assert requests.get(url(server, "conf/em8/npz/0/20,60/10,40/5,9/filter/1/")).status_code == 404


# ---- RAMON over the wire ---------------------------------------------------------
def _post_ramon(server, objs, opt="overwrite", channel="seg"):
    return requests.post(url(server, f"ann/{channel}/{opt}/"), data=ramon.to_hdf5(objs, layout="legacy"),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_ramon_posts_assign_keep_and_update_ids(server, clean_ann):
    assert _post_ramon(server, [ramon.RamonSegment(author="a")]).text == "1"
    assert _post_ramon(server, [ramon.RamonSegment(id=40, author="b"), ramon.RamonSynapse(id=41)]).text == "40,41"
    assert _post_ramon(server, [ramon.RamonGeneric()]).text == "42"
    assert _post_ramon(server, [ramon.RamonSegment(id=40, author="c", segmentclass=3)], "update").text == "40"
    doc = requests.get(url(server, "ann/seg/40/json/")).json()
    assert doc == {"40": {"type": "segment", "metadata": {
        "author": "c", "confidence": 0.0, "status": 0, "kvpairs": {}, "segmentclass": 3, "neuron": 0,
        "parentseed": 0, "synapses": [], "organelles": []}}}
    resp = _post_ramon(server, [ramon.RamonSegment(id=77)], "update")
    assert resp.status_code == 404 and resp.text == "No annotation found at identifier = 77"
    assert requests.get(url(server, "ann/seg/77/json/")).status_code == 404
    assert requests.post(url(server, "ann/seg/overwrite/"), data=b"not hdf5").status_code == 404
    assert clean_ann.ramon_ids(ANN) == [1, 40, 41, 42]


def test_json_replies_for_1_and_101_ids_are_one_valid_legacy_object(server, clean_ann):
    clean_ann.ramon_put(ANN, [ramon.RamonSegment(id=i, author=f"n{i}") for i in range(1, 102)])
    doc = json.loads(requests.get(url(server, "ann/seg/" + ",".join(map(str, range(1, 102))) + "/json/")).text)
    assert list(doc) == [str(i) for i in range(1, 102)] and doc["101"]["metadata"]["author"] == "n101"
    assert list(requests.get(url(server, "ann/seg/5/json/")).json()) == ["5"]
    resp = requests.get(url(server, "ann/seg/5,500/json/"))
    assert resp.status_code == 404 and "500" in resp.text


def test_ramon_voxels_bounding_boxes_cutouts_and_voxel_lists(server, clean_ann):
    seg = ramon.RamonSegment(id=3)
    cut = np.zeros((2, 3, 4), np.uint32)
    cut[0, 0, 0] = cut[1, 2, 3] = 1
    seg.voxels = ramon.Voxels(cut, (4, 10, 20))  # absolute z, y, x
    other = ramon.RamonSegment(id=4)
    other.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (8, 40, 60))
    assert _post_ramon(server, [seg, other]).text == "3,4"
    assert _post_ramon(server, [ramon.RamonNeuron(id=9, segments=[3, 4]), ramon.RamonNeuron(id=10)]).text == "9,10"

    def h5(tail):
        resp = requests.get(url(server, tail))
        assert resp.status_code == 200, resp.text
        return h5py.File(io.BytesIO(resp.content), "r")

    with h5("ann/seg/3/boundingbox/0/") as f:  # tight and absolute, x y z
        assert list(f["3/XYZOFFSET"][()]) == [20, 10, 4] and list(f["3/XYZDIMENSION"][()]) == [4, 3, 2]
    with h5("ann/seg/9/boundingbox/0/") as f:  # a neuron: the union of its segments
        assert list(f["9/XYZOFFSET"][()]) == [20, 10, 4] and list(f["9/XYZDIMENSION"][()]) == [41, 31, 5]
    for missing in ("ann/seg/10/boundingbox/0/", "ann/seg/11/boundingbox/0/"):
        assert requests.get(url(server, missing)).status_code == 404
    with h5("ann/seg/3/cutout/0/") as f:
        np.testing.assert_array_equal(f["3/CUTOUT"][()], cut * 3)
        assert list(f["3/XYZOFFSET"][()]) == [20, 10, 4]
    with h5("ann/seg/3/cutout/0/18,26/10,12/4,5/") as f:
        assert f["3/CUTOUT"].shape == (1, 2, 8) and int(f["3/CUTOUT"][0, 0, 2]) == 3
    with h5("ann/seg/3/voxels/0/") as f:
        assert sorted(map(tuple, f["3/VOXELS"][()])) == [(20, 10, 4), (23, 12, 5)]
    with h5("ann/seg/3,4/nodata/") as f:
        assert sorted(f) == ["3", "4"] and int(f["4/ANNOTATION_TYPE"][0]) == 4


def test_voxel_options_preserve_exception_dataonly_and_reduce(server, clean_ann):
    a = ramon.RamonSegment(id=1)
    a.voxels = ramon.Voxels(np.ones((1, 2, 2), np.uint8), (2, 10, 10))
    assert _post_ramon(server, [a]).status_code == 200
    b = ramon.RamonSegment(id=2)
    b.voxels = ramon.Voxels(np.ones((1, 2, 4), np.uint8), (2, 10, 10))  # overlaps a on its first two columns
    resp = _post_ramon(server, [b], "exception")
    assert resp.status_code == 404 and "other ids" in resp.text
    assert clean_ann.ramon_ids(ANN) == [1]  # nothing stored
    assert _post_ramon(server, [b], "preserve").text == "2"
    region = Box((2, 10, 10), (3, 12, 14))
    np.testing.assert_array_equal(clean_ann.read(ANN, region, 0)[0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    more = ramon.RamonSegment(id=1)
    more.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (2, 12, 10))
    assert _post_ramon(server, [more], "dataonly").text == "1"
    less = ramon.RamonSegment(id=2)
    less.voxels = ramon.Voxels(np.ones((1, 2, 1), np.uint8), (2, 10, 13))
    assert _post_ramon(server, [less], "reduce").text == "2"
    np.testing.assert_array_equal(clean_ann.read(ANN, Box((2, 10, 10), (3, 13, 14)), 0)[0],
                                  [[1, 1, 2, 0], [1, 1, 2, 0], [1, 0, 0, 0]])
    neuron = ramon.RamonNeuron(id=5)
    neuron.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (2, 30, 30))
    assert _post_ramon(server, [neuron]).status_code == 404  # neurons take no voxels


def test_queries_combine_predicates_with_a_true_and(server, clean_ann):
    objs = [ramon.RamonSegment(id=i, status=i % 3, confidence=i / 10, kvpairs={"class": "cell" if i % 2 else "x"})
            for i in range(1, 8)]
    objs[0].voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (3, 20, 30))
    clean_ann.ramon_put(ANN, objs + [ramon.RamonSynapse(id=20, status=1)])

    def q(tail, body=None):
        resp = requests.post(url(server, tail), data=body) if body is not None else requests.get(url(server, tail))
        assert resp.status_code == 200, resp.text
        return ramon.read_ids_hdf5(resp.content)

    assert q("ann/seg/query/") == [1, 2, 3, 4, 5, 6, 7, 20]
    assert q("ann/seg/query/type/2/") == [20]
    assert q("ann/seg/query/status/1/") == [1, 4, 7, 20]
    assert q("ann/seg/query/confidence/gt/0.45/") == [5, 6, 7]
    assert q("ann/seg/query/confidence/lt/0.25/") == [1, 2, 20]
    assert q("ann/seg/query/class/cell/") == [1, 3, 5, 7]
    assert q("ann/seg/query/class/cell/status/1/") == [1, 7]
    assert q("ann/seg/query/type/4/limit/2/") == [1, 2]
    assert q("ann/seg/query/class/none/") == []
    with h5py.File(io.BytesIO(requests.get(url(server, "ann/seg/query/class/none/")).content), "r") as f:
        assert "ANNOIDS" not in f  # absent when empty, as ndstore
    from ndfs.stores.neurodata import _box_body

    assert q("ann/seg/query/", _box_body(Box((2, 10, 20), (5, 30, 40)), 0)) == [1]
    assert q("ann/seg/query/type/2/", _box_body(Box((2, 10, 20), (5, 30, 40)), 0)) == []


def test_reserve_by_get_and_post_is_contiguous_and_never_reused(server, clean_ann):
    first = requests.get(url(server, "ann/seg/reserve/5/")).json()
    second = requests.post(url(server, "ann/seg/reserve/3/")).json()
    assert first == [1, 5] and second == [6, 3]
    assert _post_ramon(server, [ramon.RamonGeneric()]).text == "9"
    assert requests.delete(url(server, "ann/seg/9/")).status_code == 200
    assert requests.get(url(server, "ann/seg/reserve/1/")).json() == [10, 1]
    assert requests.get(url(server, "ann/img/reserve/1/")).status_code == 404  # image channels have no ids


def test_delete_removes_metadata_and_zeroes_voxels_and_readonly_refuses(server, store, clean_ann):
    seg = ramon.RamonSegment(id=6)
    seg.voxels = ramon.Voxels(np.ones((1, 4, 4), np.uint8), (5, 20, 20))
    _post_ramon(server, [seg])
    with WsgiServer(NeuroDataApp(LocalBackend(store[0], read_only=True))) as ro:
        resp = requests.delete(url(ro, "ann/seg/6/"))
        assert resp.status_code == 404 and "read only" in resp.text
    assert (clean_ann.read(ANN, Box((5, 20, 20), (6, 24, 24)), 0) == 6).all()
    assert requests.delete(url(server, "ann/seg/6/")).text == "Success"
    assert not clean_ann.read(ANN, Box((5, 20, 20), (6, 24, 24)), 0).any()
    assert requests.get(url(server, "ann/seg/6/json/")).status_code == 404
    assert requests.delete(url(server, "ann/seg/6/")).status_code == 404


def test_propagate_goes_from_0_to_2_and_lower_levels_hold_the_downsampled_data(server, store):
    assert requests.get(url(server, "ann/img/getPropagate/")).text == "0"
    box = Box((1, 2, 4), (3, 10, 12))
    requests.post(url(server, "ann/img/npz/0/4,12/2,10/1,3/"), data=npz_encode(np.full((1,) + box.shape, 200,
                                                                                          np.uint8)))
    assert requests.get(url(server, "ann/img/setPropagate/1/")).status_code == 200
    assert requests.get(url(server, "ann/img/getPropagate/")).text == "2"
    low = npz_decode(requests.get(url(server, "ann/img/npz/1/2,6/1,5/1,3/")).content)[0]
    assert (low == 200).all()


def test_json_posts_take_layout_a_and_b(server, clean_ann):
    flat = ramon.to_flat([ramon.RamonSegment(id=12, author="flat", segmentclass=1, kvpairs={"k": "v"})])
    assert requests.post(url(server, "ann/seg/json/"), data=json.dumps(flat)).text == "12"
    legacy = ramon.to_legacy([ramon.RamonSegment(id=12, author="legacy")])
    assert requests.post(url(server, "ann/seg/json/update/"), data=json.dumps(legacy)).text == "12"
    assert clean_ann.ramon_get(ANN, [12])[0].author == "legacy"
    assert requests.post(url(server, "ann/seg/json/"), data=b'{"1": {"x": 1}}').status_code == 404


# ---- the driver --------------------------------------------------------------------
def test_the_driver_shows_tokens_and_channels_as_folders(nd):
    assert nd.children(()) == ["ann", "conf"]
    assert nd.children(("conf",)) == ["em16", "em8", "labels", "notes", "scratch"]
    assert nd.is_volume(("conf",)) is False and nd.is_volume(("conf", "em8")) is True
    info = nd.info(ANN)
    assert info.kind == "annotation" and info.dtype == np.uint32 and len(info.levels) == 2
    assert info.levels[0].box == Box.from_shape(ANN_SHAPE, ANN_OFFSET) and info.levels[1].voxel_size_nm == (30, 8, 8)
    with pytest.raises(NotFound):
        nd.children(("nope",))
    with pytest.raises(NotFound):
        nd.info(("conf", "nope"))


@pytest.mark.parametrize("max_bytes", [64, 5000, 2**26])
def test_request_pieces_tile_the_box_on_the_supercube_grid(max_bytes):
    box = Box((3, 5, 7), (40, 300, 250))
    got = pieces(box, (16, 128, 128), 2, max_bytes)
    assert sum(p.size for p in got) == box.size and all(box.contains(p) for p in got)
    assert all(p.size * 2 <= max(max_bytes, 2) for p in got)


def test_a_64_mib_cutout_goes_out_as_four_parallel_16_mib_requests():
    """One 64 MiB request waited on the server compressing it on one core (bench --api, row A3)."""
    driver = NeuroDataBackend("http://127.0.0.1:9")  # no I/O until first use
    got = pieces(Box((0, 0, 0), (64, 1024, 1024)), (16, 128, 128), 1, driver.max_request_bytes)
    assert driver.max_request_bytes == 16 * 2**20 and len(got) == 4 and driver.workers >= 4


def test_the_driver_reads_levels_in_aligned_pieces_and_both_url_styles(server, store):
    oracle = store[1]
    for api in ("nd/sd", "ocp/ca"):
        with NeuroDataBackend(server.url, api=api, max_request_bytes=4096) as small:
            box = oracle.box("em16", 0)
            server.counter.reset()
            np.testing.assert_array_equal(small.read(("conf", "em16"), box, 0), oracle.read("em16", box, 0))
            assert server.counter.count("GET", f"/{api}/conf/em16/npz/0/") == len(pieces(box, (8, 32, 32), 2, 4096))


@pytest.mark.parametrize("cached", [False, True], ids=["raw", "cached"])
def test_every_neurodata_type_round_trips_through_the_driver(server, clean_ann, cached):
    from test_ramon import sample

    backend = NeuroDataBackend(server.url)
    if cached:
        from ndfs.cache import CachedBackend

        backend = CachedBackend(backend, namespace="nd-ramon", memory_bytes=2**24)
    with backend:
        objs = [sample(t, id=100 + i) for i, t in enumerate(sorted(ramon.NDSTORE_TYPES))]
        assert backend.ramon_put(ANN, objs) == [o.id for o in objs]
        assert backend.ramon_get(ANN, [o.id for o in objs]) == objs
        assert clean_ann.ramon_get(ANN, [o.id for o in objs]) == objs  # what the store holds
        new = backend.ramon_put(ANN, [ramon.RamonSegment(author="new"), ramon.RamonNeuron()])
        assert new == [109, 110] and backend.ramon_get(ANN, new)[0].author == "new"
        objs[0].author = "edited"
        assert backend.ramon_put(ANN, [objs[0]]) == [100]  # an existing id: update/
        assert backend.ramon_get(ANN, [100])[0].author == "edited"
        assert backend.ramon_ids(ANN, type="neuron") == [101, 110]
        assert backend.ramon_ids(ANN, kv={"class": "cell"}, status=2, confidence=("gt", 0.5)) == list(range(100, 109))
        with pytest.raises(InvalidAnnotation):
            backend.ramon_put(ANN, [ramon.RamonSegment(neuron=2**32)])  # NeuroData ids are uint32
        with pytest.raises(InvalidAnnotation):
            backend.ramon_put(ANN, [ramon.RamonAttributedRegion()])  # no ndstore type number
        with pytest.raises(InvalidAnnotation):
            backend.ramon_ids(ANN, kv={"type": "x"})


def test_driver_voxels_bbox_delete_and_the_cache_forgets_deleted_voxels(server, clean_ann):
    from ndfs.cache import CachedBackend

    with CachedBackend(NeuroDataBackend(server.url), namespace="nd-vox", memory_bytes=2**24) as cached:
        seg = ramon.RamonSegment()
        seg.voxels = ramon.Voxels(np.ones((2, 3, 4), np.uint8), (3, 10, 20))
        (sid,) = cached.ramon_put(ANN, [seg])
        box = Box((3, 10, 20), (5, 13, 24))
        assert (cached.read(ANN, box, 0) == sid).all()
        assert cached.ramon_bbox(ANN, sid) == box
        assert cached.ramon_ids(ANN, box=box) == [sid]
        assert cached.reserve_ids(ANN, 2) == [sid + 1, sid + 2]
        cached.ramon_delete(ANN, [sid])
        assert not cached.read(ANN, box, 0).any()  # the cache was told
        with pytest.raises(NotFound):
            cached.ramon_get(ANN, [sid])
        (nid,) = cached.ramon_put(ANN, [ramon.RamonNeuron()])
        assert cached.ramon_bbox(ANN, nid) is None
        with pytest.raises(NotFound):
            cached.ramon_bbox(ANN, 4000)


def test_driver_writes_merge_and_refuse_a_wrong_dtype(nd, store):
    box = Box((6, 30, 30), (7, 34, 38))
    nd.write(IMG, box, 0, np.full(box.shape, 3, np.uint8))
    part = np.zeros(box.shape, np.uint8)
    part[0, 0] = 8
    nd.write(IMG, box, 0, part)
    got = LocalBackend(store[0]).read(IMG, box, 0)
    assert (got[0, 0] == 8).all() and (got[0, 1:] == 3).all()  # zeros did not erase
    with pytest.raises(BadRegion):
        nd.write(IMG, box, 0, np.zeros(box.shape, np.float32))


def test_http_errors_map_to_the_error_tree(store, nd):
    with pytest.raises(BadRegion):
        nd._client.request("GET", "/conf/em8/npz/0/0,10/5,10/3,5/")
    with pytest.raises(NotFound):
        nd.ramon_get(ANN, [12345])
    with WsgiServer(NeuroDataApp(LocalBackend(store[0], read_only=True))) as ro:
        with NeuroDataBackend(ro.url) as driver:
            with pytest.raises(ReadOnly):
                driver.write(IMG, Box((1, 2, 3), (2, 3, 4)), 0, np.ones((1, 1, 1), np.uint8))
    with WsgiServer(NeuroDataApp(LocalBackend(store[0]), tokens=["right"])) as guarded:
        with NeuroDataBackend(guarded.url, "wrong") as denied:
            with pytest.raises(PermissionDenied) as caught:
                denied.children(())
            assert caught.value.errno == errno.EACCES
        with NeuroDataBackend(guarded.url, "right") as allowed:
            assert allowed.children(()) == ["ann", "conf"]
            assert "right" not in repr(allowed) and "***" in repr(allowed)


def test_reads_and_ramon_calls_survive_a_30_percent_fault_rate(store):
    oracle = store[1]
    with WsgiServer(NeuroDataApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=0.3, seed=5)) as srv:
        with NeuroDataBackend(srv.url, retries=8, backoff_s=0.001, max_request_bytes=8192) as flaky:
            for channel in ("em8", "labels"):
                box = oracle.box(channel, 0)
                np.testing.assert_array_equal(flaky.read(("conf", channel), box, 0), oracle.read(channel, box, 0))
            flaky.ramon_put(ANN, [ramon.RamonSegment(id=300, author="flaky")])
            assert flaky.ramon_get(ANN, [300])[0].author == "flaky"
            stats = srv.counter.snapshot()
            assert stats["faults"] > 3 and flaky.http_stats["retries"] == stats["faults"]


def test_a_fault_rate_of_1_fails_with_eio_in_bounded_time(store):
    with WsgiServer(NeuroDataApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=1.0)) as srv:
        with NeuroDataBackend(srv.url, retries=2, backoff_s=0.01) as broken:
            with pytest.raises(BackendError) as caught:
                broken.children(())
            assert caught.value.errno == errno.EIO and srv.counter.snapshot()["requests"] == 3


# ---- ndio 1.1.5, unmodified, in its own virtual environment --------------------------
NDIO_PINS = ["six", "numpy==1.23.5", "h5py==3.8.0", "requests", "blosc", "json-spec", "jsonschema", "pillow",
             "tifffile"]


def _ndio_venv(version: str) -> str:
    """The python of a venv holding ndio ``version`` and the spec's pins; made once and kept in the user cache.

    ndio is installed without its declared dependencies: it pins ``blosc==1.3.2``, which does not
    build on current Pythons and is only imported (Python 3 ndio never calls it for a GET).
    """
    from ndfs.core.config import user_cache_dir

    key = hashlib.sha256(json.dumps([sys.version, f"ndio=={version}", NDIO_PINS]).encode()).hexdigest()[:12]
    venv = Path(os.environ.get("NDFS_TEST_VENVS") or user_cache_dir() / "test-venvs") / f"ndio-{version}-{key}"
    python = venv / "bin" / "python"
    ready = venv / "ndfs-ready"
    if not ready.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                  f"ndio=={version}"],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *NDIO_PINS],
                 [str(python), "-c", "import ndio.remote.neurodata, ndio.ramon"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"making the ndio venv failed at {step[2:]}: {done.stderr[-2000:]}"
        ready.write_text("ok\n")
    return str(python)


@pytest.fixture(scope="session")
def ndio_python() -> str:
    """ndio 1.1.5, the reference client of specs/neurodata.md."""
    return _ndio_venv("1.1.5")


def run_ndio(python: str, server, code: str, tmp_path) -> dict:
    """Run code with ``nd`` = ndio's neurodata remote on the server; it sets ``out`` (JSON) and may save arrays."""
    script = "import json, numpy, ndio.remote.neurodata as neurodata, ndio.ramon as ramon\n" \
             f"nd = neurodata(hostname={server.url.removeprefix('http://')!r}, protocol='http')\n" \
             f"tmp = {str(tmp_path)!r}\nout = {{}}\n" + textwrap.dedent(code) + \
             "\nprint('NDIO-OUT ' + json.dumps(out, default=str))\n"
    done = subprocess.run([python, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("NDIO-OUT ")][-1]
    return json.loads(line[len("NDIO-OUT "):])


def test_ndio_reads_tokens_info_and_cutouts_equal_to_the_local_store(ndio_python, server, store, tmp_path):
    oracle = store[1]
    out = run_ndio(ndio_python, server, """
        out["tokens"] = nd.get_public_tokens()
        out["size"] = nd.get_image_size("conf", 1)
        out["offset"] = nd.get_image_offset("conf", 0)
        out["channels"] = sorted(nd.get_channels("conf"))
        for ch in ["em8", "em16", "labels"]:
            numpy.save(f"{tmp}/{ch}.npy", nd.get_cutout("conf", ch, 7, 97, 5, 75, 3, 23, resolution=0))
        numpy.save(f"{tmp}/r1.npy", nd.get_cutout("conf", "em8", 3, 49, 2, 38, 3, 23))   # resolution=1 default
        chunky = neurodata(hostname=nd.hostname, protocol="http", chunk_threshold=20000)
        numpy.save(f"{tmp}/chunked.npy", chunky.get_cutout("conf", "em16", 7, 97, 5, 75, 3, 23, resolution=0,
                                                        block_size=(32, 32, 8)))
        """, tmp_path)
    assert out["tokens"] == ["ann", "conf"] and out["channels"] == ["em16", "em8", "labels", "notes", "scratch"]
    assert out["size"] == [46, 36, 20] and out["offset"] == [7, 5, 3]
    for ch in ("em8", "em16", "labels"):
        got = np.load(tmp_path / f"{ch}.npy")  # ndio hands out x, y, z
        np.testing.assert_array_equal(got.transpose(2, 1, 0), oracle.read(ch, oracle.box(ch, 0), 0))
    np.testing.assert_array_equal(np.load(tmp_path / "r1.npy").transpose(2, 1, 0),
                                  oracle.read("em8", oracle.box("em8", 1), 1))
    np.testing.assert_array_equal(np.load(tmp_path / "chunked.npy").transpose(2, 1, 0),
                                  oracle.read("em16", oracle.box("em16", 0), 0))
    assert server.counter.count("GET", "/ocp/ca/conf/em16/hdf5/0/") > 1  # the chunked read was many GETs


def test_ndio_posts_cutouts_that_ndfs_reads_back(ndio_python, server, store, tmp_path, nd):
    data = np.random.default_rng(3).integers(1, 255, size=(20, 12, 4), dtype=np.uint8)  # x, y, z
    np.save(tmp_path / "post.npy", data)
    big = np.random.default_rng(4).integers(1, 2**50, size=(40, 40, 6), dtype=np.uint64)
    np.save(tmp_path / "big.npy", big)
    labels, box = ("conf", "labels"), Box((14, 10, 10), (20, 50, 50))  # crosses ndio's z block line at 17
    server.counter.reset()
    try:
        run_ndio(ndio_python, server, """
            data = numpy.load(f"{tmp}/post.npy")
            out["ok"] = nd.post_cutout("ann", "img", 10, 20, 3, data, resolution=0)
            chunky = neurodata(hostname=nd.hostname, protocol="http", chunk_threshold=1000)
            chunky.post_cutout("conf", "labels", 10, 10, 14, numpy.load(f"{tmp}/big.npy"), resolution=0)
            """, tmp_path)
        np.testing.assert_array_equal(nd.read(IMG, Box((3, 20, 10), (7, 32, 30)), 0), data.transpose(2, 1, 0))
        np.testing.assert_array_equal(LocalBackend(store[0]).read(labels, box, 0), big.transpose(2, 1, 0))
        assert server.counter.count("POST", "/ocp/ca/conf/labels/npz/0/") == 2
    finally:
        LocalBackend(store[0]).write(labels, box, 0, store[1].read("labels", box, 0))


def test_ndio_and_ndfs_exchange_every_ramon_type_ndio_knows(ndio_python, server, clean_ann, tmp_path):
    """ndio posts generic/synapse/segment/neuron, ndfs reads them; ndfs posts, ndio reads (not organelles: ndio
    1.1.5 slices the integer organelleclass and crashes, spec ramon.md 5A)."""
    seg = ramon.RamonSegment(id=50, author="ndfs", confidence=0.5, status=2, kvpairs={"class": "cell"},
                             segmentclass=3, neuron=52, synapses=[51])
    seg.voxels = ramon.Voxels(np.ones((2, 3, 4), np.uint8), (4, 10, 20))
    clean_ann.ramon_put(ANN, [seg, ramon.RamonSynapse(id=51, synapse_type=1, weight=0.5, segments=[50]),
                              ramon.RamonNeuron(id=52, segments=[50]), ramon.RamonGeneric(id=53, author="g")])
    out = run_ndio(ndio_python, server, """
        got = nd.get_ramon("ann", "seg", [50, 51, 52, 53])
        out["read"] = [[type(r).__name__, r.id, r.author, r.status, r.confidence, r.kvpairs] for r in got]
        s, syn, n = got[0], got[1], got[2]
        out["seg"] = [s.segmentclass, s.neuron, s.synapses]
        out["syn"] = [syn.synapse_type, syn.weight, syn.segments]
        out["neuron"] = n.segments
        out["bbox"] = [int(v) for v in nd.get_ramon_bounding_box("ann", "seg", 50, resolution=0)]
        out["ids"] = [int(i) for i in nd.get_ramon_ids("ann", "seg")]
        out["segments"] = [int(i) for i in nd.get_ramon_ids("ann", "seg", ramon_type=4)]
        out["reserved"] = nd.reserve_ids("ann", "seg", 3)
        new = [ramon.RAMONGeneric(id=0, author="ndio", kvpairs={"a": "b"}),
               ramon.RAMONSegment(id=60, author="ndio", segmentclass=2, neuron=62, synapses=[61], organelles=[],
                                  kvpairs={}),
               ramon.RAMONSynapse(id=61, synapse_type=2, weight=0.25, segments=[60], kvpairs={}),
               ramon.RAMONNeuron(id=62, segments=[60], kvpairs={})]
        out["posted"] = [nd.post_ramon("ann", "seg", r) for r in new]
        out["deleted"] = nd.delete_ramon("ann", "seg", got[3])
        """, tmp_path)
    assert out["read"] == [["RAMONSegment", "50", "ndfs", 2, 0.5, {"class": "cell"}],
                           ["RAMONSynapse", "51", "", 0, 0.0, {}], ["RAMONNeuron", "52", "", 0, 0.0, {}],
                           ["RAMONGeneric", "53", "g", 0, 0.0, {}]]
    assert out["seg"] == [3, 52, [51]] and out["syn"] == [1, 0.5, [50]] and out["neuron"] == [50]
    assert out["bbox"] == [20, 24, 10, 13, 4, 6]
    assert out["ids"] == [50, 51, 52, 53] and out["segments"] == [50]
    assert out["reserved"] == [54, 55, 56]
    assert out["posted"] == [[57], [60], [61], [62]] and out["deleted"] is True
    generic, segment, synapse, neuron = clean_ann.ramon_get(ANN, [57, 60, 61, 62])
    assert generic == ramon.RamonGeneric(id=57, author="ndio", kvpairs={"a": "b"})
    assert segment == ramon.RamonSegment(id=60, author="ndio", segmentclass=2, neuron=62, synapses=[61])
    assert synapse == ramon.RamonSynapse(id=61, synapse_type=2, weight=0.25, segments=[60])
    assert neuron == ramon.RamonNeuron(id=62, segments=[60])
    assert clean_ann.ramon_ids(ANN) == [50, 51, 52, 57, 60, 61, 62]


# ---- the ndio paper's example, through ndfs, the mount and ndio ----------------------------
PAPER_QUERY = {"token": "kasthuri11cc", "channel": "image", "x_start": 69, "x_stop": 179, "y_start": 175,
               "y_stop": 246, "z_start": 100, "z_stop": 137, "resolution": 1}


@pytest.fixture(scope="module")
def paper_server(tmp_path_factory):
    """kasthuri11cc/image, scaled down so the paper's query (x, y / 10, resolution 1) fits: 45 z-slices from 96."""
    root = tmp_path_factory.mktemp("kasthuri")
    local = LocalBackend(root, create=True)
    info = local.create_volume(("kasthuri11cc", "image"), (45, 512, 384), "uint8", offset=(96, 0, 0),
                               voxel_size_nm=(30, 3, 3), levels=2, chunk_shape=(16, 128, 128))
    rng = np.random.default_rng(2015)
    local.write(("kasthuri11cc", "image"), info.levels[0].box, 0,
                rng.integers(0, 256, size=info.levels[0].shape, dtype=np.uint8))
    with WsgiServer(NeuroDataApp(LocalBackend(root))) as srv:
        yield srv, local


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_the_ndio_paper_example_gives_the_same_array_in_ndfs_the_mount_and_ndio(paper_server, ndio_python, tmp_path):
    import tifffile

    import ndfs

    srv, local = paper_server
    nd = ndfs.remote(f"neurodata+{srv.url}")       # import ndio.remote.neurodata as neurodata; nd = neurodata()
    shiny_new_numpy_array = nd.get_cutout(**PAPER_QUERY)  # ZYX in ndfs
    q = PAPER_QUERY
    assert shiny_new_numpy_array.shape == (q["z_stop"] - q["z_start"], q["y_stop"] - q["y_start"],
                                           q["x_stop"] - q["x_start"])
    box = Box((q["z_start"], q["y_start"], q["x_start"]), (q["z_stop"], q["y_stop"], q["x_stop"]))
    np.testing.assert_array_equal(shiny_new_numpy_array, local.read(("kasthuri11cc", "image"), box, 1))

    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.neurodata]\nkind = "neurodata"\nurl = "{srv.url}"\n\n[cache]\ndir = "cache"\n')
    with mounted(config, tmp_path / "mnt"):
        level = tmp_path / "mnt" / "neurodata" / "kasthuri11cc" / "image" / "1"
        planes = [tifffile.imread(level / "z" / f"{z}.tif") for z in range(q["z_start"], q["z_stop"])]
    through_mount = np.stack(planes)[:, q["y_start"]:q["y_stop"], q["x_start"]:q["x_stop"]]
    np.testing.assert_array_equal(shiny_new_numpy_array, through_mount)

    run_ndio(ndio_python, srv, f"""
        numpy.save(f"{{tmp}}/paper.npy", nd.get_cutout(**{json.dumps(PAPER_QUERY)}))
        """, tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "paper.npy").transpose(2, 1, 0), shiny_new_numpy_array)


# ---- ndio 1.1.6: /nd/sd/ and the token header (spec 10.15) ------------------------------------
def test_ndio_1_1_6_with_the_getURL_shim_sends_its_token_on_nd_sd(store, tmp_path):
    """ndio 1.1.6 calls a module-level getURL that it never defines; bound to its own method, it works."""
    python = _ndio_venv("1.1.6")
    oracle = store[1]
    with WsgiServer(NeuroDataApp(LocalBackend(store[0]), tokens=["t-right"])) as srv:
        def run(token: str) -> subprocess.CompletedProcess:
            script = textwrap.dedent(f"""
                import sys, numpy, ndio.remote.neurodata
                module = sys.modules["ndio.remote.neurodata"]  # the package re-exports the class under this name
                nd = module.neurodata({token!r}, hostname={srv.url.removeprefix("http://")!r}, protocol="http")
                module.getURL = lambda url, token="": nd.getURL(url, token)  # the shim of specs/neurodata.md
                numpy.save({str(tmp_path / "cut.npy")!r}, nd.get_cutout("conf", "em16", 7, 97, 5, 75, 3, 23,
                                                                        resolution=0))
                """)
            return subprocess.run([python, "-W", "ignore", "-c", script], capture_output=True, text=True,
                                  timeout=300)

        srv.counter.reset()
        done = run("t-right")
        assert done.returncode == 0, done.stderr[-3000:]
        assert srv.counter.count("GET", "/nd/sd/conf/em16/hdf5/0/", 200) == 1  # ndio 1.1.6's base URL
        assert srv.counter.count(status=401) == 0  # every GET carried the token (the server is strict)
        np.testing.assert_array_equal(np.load(tmp_path / "cut.npy").transpose(2, 1, 0),
                                      oracle.read("em16", oracle.box("em16", 0), 0))
        srv.counter.reset()
        refused = run("t-wrong")  # the header is what the server judged: a wrong token gets nothing
        assert refused.returncode != 0 and srv.counter.count(status=401) >= 1
        assert srv.counter.count(status=200) == 0


# ---- the command line --------------------------------------------------------------------
def test_ndfs_serve_protocol_neurodata_serves_a_store(store):
    with served("neurodata", store[0], "--read-only") as srv, NeuroDataBackend(srv.url) as driver:
        assert driver.children(()) == ["ann", "conf"]
        box = store[1].box("em8", 2)
        np.testing.assert_array_equal(driver.read(("conf", "em8"), box, 2), store[1].read("em8", box, 2))
        assert driver.info(IMG).extra["neurodata"]["readonly"] == 1
        assert isinstance(driver.ramon_ids(ANN), list)  # RAMON reads work on a read-only server
