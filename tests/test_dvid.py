"""The DVID driver and `ndfs serve --protocol dvid`, over real sockets, checked with intern's DVIDRemote and dvidtools.

Layout used throughout: a local store whose folder ``conf`` holds the reference
project, so DVID repo ``conf`` (alias = folder name) has instances em8, em16,
labels (a labelmap), scratch, and ``<name>_1``, ``<name>_2`` for their levels.
Repos made by the tests through the API live in the server's memory. The
server-side tests follow section 10 of specs/dvid.md, in its order.
"""

import errno
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time

import lz4.block
import numpy as np
import pytest
import requests
import tifffile

from ndfs.stores.dvid import DvidBackend, align, http_error, request_shape
from ndfs.stores.local import LocalBackend
from ndfs.core.config import RemoteConfig
from ndfs.stack import open_backend
from ndfs.core.errors import BackendError, BadRegion, NotFound, PermissionDenied, ReadOnly, Timeout
from ndfs.core.geometry import Box
from ndfs.serve.common import ServeOptions, WsgiServer
from ndfs.serve.dvid import DvidApp
from ndfs.testing.conformance import *  # noqa: F401,F403
from ndfs.testing.conformance import Case
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.reference import build_reference_store
from ndfs.testing.serve import served

REPO = "conf"


# ---- conformance: the shipped suite on the driver, raw and cached -------------------
@pytest.fixture(scope="module")
def dvid_reference_server(reference_store):
    """`ndfs serve --protocol dvid` over the reference store: repo "conf", one instance per channel level."""
    with WsgiServer(DvidApp(LocalBackend(reference_store[0]))) as server:
        yield server


@pytest.fixture(params=["dvid-raw", "dvid-cached", "dvid-journaled"])
def conformance_case(request, reference_store, tmp_path):
    _, _, oracle = reference_store
    server = request.getfixturevalue("dvid_reference_server")
    backend = DvidBackend(server.url, branch="master", backoff_s=0.01)
    if request.param == "dvid-cached":
        from ndfs.cache import CachedBackend

        backend = CachedBackend(backend, namespace=f"dvid:{server.url}", memory_bytes=64 * 2**20)
    elif request.param == "dvid-journaled":
        from ndfs.testing.cases import journaled

        backend = journaled(backend, "dvid", server.url, tmp_path)
    request.addfinalizer(backend.close)
    return Case(backend=backend, oracle=oracle)


# ---- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvid-store")
    _, oracle = build_reference_store(root)
    return root, oracle


@pytest.fixture(scope="module")
def server(store):
    with WsgiServer(DvidApp(LocalBackend(store[0]))) as srv:
        yield srv


@pytest.fixture
def dvid(server):
    backend = DvidBackend(server.url, backoff_s=0.01)
    yield backend
    backend.close()


def call(url, method, path, **kw):
    return requests.request(method, url + path, timeout=30, **kw)


def new_repo(url, alias="", **extra):
    resp = call(url, "POST", "/api/repos", data=json.dumps({"alias": alias, "description": "test", **extra}))
    assert resp.status_code == 200, resp.text
    assert list(resp.json()) == ["root"]
    return resp.json()["root"]


def new_instance(url, uuid, typename, name, **settings):
    body = {"typename": typename, "dataname": name, **settings}
    resp = call(url, "POST", f"/api/repo/{uuid}/instance", data=json.dumps(body))
    assert resp.status_code == 200, resp.text
    return resp.json()


def raw_url(uuid, name, box: Box, dims="0_1_2"):
    (z0, y0, x0), (sz, sy, sx) = box.start, box.shape
    return f"/api/node/{uuid}/{name}/raw/{dims}/{sx}_{sy}_{sz}/{x0}_{y0}_{z0}"


def get_voxels(url, uuid, name, box, dtype, **params):
    resp = call(url, "GET", raw_url(uuid, name, box), params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/octet-stream"
    return np.frombuffer(resp.content, np.dtype(dtype).newbyteorder("<")).reshape(box.shape)


def post_voxels(url, uuid, name, box, data, **params):
    return call(url, "POST", raw_url(uuid, name, box), params=params,
                data=np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())


def ramp(box: Box, dtype="uint8", scale=1):
    z, y, x = np.meshgrid(*(np.arange(a, b) for a, b in zip(box.start, box.stop)), indexing="ij")
    return ((x + 3 * y + 7 * z).astype(np.uint64) * np.uint64(scale)).astype(dtype)  # wraps, as mod 2**bits


def is_dvid_400(resp, path_part=""):
    return (resp.status_code == 400 and resp.headers["Content-Type"].startswith("text/plain")
            and resp.text.endswith(").\n") and path_part in resp.text)


def decode_rles(body: bytes) -> set:
    n = struct.unpack_from("<I", body, 8)[0]
    assert body[:4] == bytes([0, 3, 0, 0]) and len(body) == 12 + 16 * n
    voxels = set()
    for i in range(n):
        x, y, z, length = struct.unpack_from("<iiii", body, 12 + 16 * i)
        voxels.update((x + k, y, z) for k in range(length))
    return voxels


# ---- the server, spec section 10 -------------------------------------------------------------
def test_1_server_info_is_strings_and_new_repos_appear_with_an_open_root(server):
    info = call(server.url, "GET", "/api/server/info").json()
    assert info and all(isinstance(v, str) for v in info.values()) and "DVID Version" in info
    assert "labelmap" in call(server.url, "GET", "/api/server/types").json()
    assert call(server.url, "GET", "/api/heartbeat").text == "OK"
    root = new_repo(server.url, "fresh")
    repos = call(server.url, "GET", "/api/repos/info").json()
    assert root in repos and repos[root]["Alias"] == "fresh"
    node = repos[root]["DAG"]["Nodes"][root]
    assert node["Locked"] is False and node["Parents"] == [] and node["Children"] == []
    assert isinstance(node["VersionID"], int)
    conf = [r for r in repos.values() if r["Alias"] == REPO][0]
    assert {"em8", "em8_1", "em8_2", "labels", "scratch"} <= set(conf["DataInstances"])
    assert conf["DataInstances"]["labels"]["Base"]["TypeName"] == "labelmap"
    assert call(server.url, "HEAD", f"/api/repo/{root}").status_code == 200
    assert call(server.url, "HEAD", "/api/repo/0123456789").status_code == 400


def test_2_uuid_prefixes_branches_and_their_errors(tmp_path):
    with WsgiServer(DvidApp(LocalBackend(tmp_path, create=True))) as srv:
        a = new_repo(srv.url, "a", root="abcd" + "0" * 28)
        info = call(srv.url, "GET", "/api/node/:master/log")  # ":master" alone works with one repo
        assert info.status_code == 200 and info.json() == {"log": []}
        new_repo(srv.url, "b", root="abce" + "1" * 28)
        assert call(srv.url, "GET", f"/api/repo/{a[:5]}/info").json()["Root"] == a
        ambiguous = call(srv.url, "GET", "/api/repo/abc/info")
        assert is_dvid_400(ambiguous, "(/api/repo/abc/info)") and "more than one UUID matches abc" in ambiguous.text
        unknown = call(srv.url, "GET", "/api/node/ffff/x/info")
        assert is_dvid_400(unknown) and "could not find UUID with partial match to ffff" in unknown.text
        assert is_dvid_400(call(srv.url, "GET", "/api/node/:master/log"))  # two repos now
        call(srv.url, "POST", f"/api/node/{a}/commit", json={"note": "one"})
        child = call(srv.url, "POST", f"/api/node/{a}/newversion", json={"note": "two"}).json()["child"]
        assert call(srv.url, "GET", f"/api/repo/{a}/branch-versions/master").json() == [child, a]
        assert call(srv.url, "GET", "/api/node/abcd:master/note").json() == {"note": "two"}
        assert call(srv.url, "GET", "/api/node/abcd:master~1/note").json() == {"note": "one"}
        assert call(srv.url, "GET", "/api/nowhere").text == "404 page not found\n"


def test_3_instance_settings_are_strings_and_fresh_instances_have_default_blocks_and_null_extents(server):
    root = new_repo(server.url, "settings")
    array = call(server.url, "POST", f"/api/repo/{root}/instance",
                 json={"typename": "uint8blk", "dataname": "g", "BlockSize": [64, 64, 64]})
    assert is_dvid_400(array) and "must be a JSON string" in array.text
    new_instance(server.url, root, "uint8blk", "g", sync="")
    assert is_dvid_400(call(server.url, "POST", f"/api/repo/{root}/instance",
                            json={"typename": "uint8blk", "dataname": "g"}))
    assert is_dvid_400(call(server.url, "POST", f"/api/repo/{root}/instance",
                            json={"typename": "nosuchtype", "dataname": "h"}))
    assert is_dvid_400(call(server.url, "POST", f"/api/repo/{root}/instance",
                            json={"typename": "keyvalue", "dataname": "commit"}))
    new_instance(server.url, root, "labelmap", "seg")
    new_instance(server.url, root, "uint16blk", "g16", BlockSize="16,32,64", VoxelSize="4,4,40")
    g = call(server.url, "GET", f"/api/node/{root}/g/info").json()
    assert g["Extended"]["BlockSize"] == [32, 32, 32] and g["Extended"]["MinPoint"] is None
    assert g["Extended"]["MaxPoint"] is None and g["Extended"]["Values"][0]["DataType"] == "uint8"
    seg = call(server.url, "GET", f"/api/node/{root}/seg/info").json()
    assert seg["Extended"]["BlockSize"] == [64, 64, 64] and seg["Extended"]["MaxDownresLevel"] == 0
    g16 = call(server.url, "GET", f"/api/node/{root}/g16/info").json()
    assert g16["Extended"]["BlockSize"] == [16, 32, 64] and g16["Extended"]["VoxelSize"] == [4, 4, 40]


def test_4_ramps_round_trip_in_zyx_order_and_wider_types_are_little_endian(server):
    root = new_repo(server.url, "ramps")
    box = Box((0, 0, 0), (32, 64, 96))
    for typename, dtype, scale in [("uint8blk", "uint8", 1), ("uint16blk", "uint16", 251),
                                   ("labelblk", "uint64", 2**40 + 1)]:
        new_instance(server.url, root, typename, typename)
        data = ramp(box, dtype, scale)
        assert post_voxels(server.url, root, typename, box, data).status_code == 200
        resp = call(server.url, "GET", raw_url(root, typename, box) + "/octet-stream")
        assert resp.content == data.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        got = np.frombuffer(resp.content, dtype).reshape(box.shape)
        assert got[3, 5, 7] == (7 + 15 + 21) * scale % 2 ** (8 * np.dtype(dtype).itemsize)


def test_5_unaligned_and_outside_reads_are_slices_of_aligned_reads_and_zeros(server):
    root = new_repo(server.url, "unaligned")
    new_instance(server.url, root, "uint8blk", "g")
    box = Box((0, 0, 0), (64, 64, 64))
    data = ramp(box) | 1
    post_voxels(server.url, root, "g", box, data)
    part = Box((5, 17, 33), (41, 50, 63))
    np.testing.assert_array_equal(get_voxels(server.url, root, "g", part, "uint8"), data[part.slices()])
    around = get_voxels(server.url, root, "g", Box((-10, -3, 60), (10, 5, 70)), "uint8")
    assert not around[:10].any() and not around[:, :3].any() and not around[:, :, 4:].any()
    np.testing.assert_array_equal(around[10:, 3:, :4], data[0:10, 0:5, 60:64])
    assert not get_voxels(server.url, root, "g", Box((500, 500, 500), (510, 510, 510)), "uint8").any()
    assert is_dvid_400(call(server.url, "GET", f"/api/node/{root}/g/raw/0_1_2/0_4_4/0_0_0"))


def test_6_unaligned_or_wrong_length_posts_are_refused_and_change_nothing(server):
    root = new_repo(server.url, "refusals")
    new_instance(server.url, root, "uint8blk", "g")
    box = Box((0, 0, 0), (32, 32, 32))
    post_voxels(server.url, root, "g", box, np.full(box.shape, 5, np.uint8))
    shifted = Box((0, 0, 1), (32, 32, 33))
    refused = post_voxels(server.url, root, "g", shifted, np.ones(shifted.shape, np.uint8))
    assert is_dvid_400(refused) and "non-block aligned" in refused.text
    short = call(server.url, "POST", raw_url(root, "g", box), data=b"\1" * 1000)
    assert is_dvid_400(short)
    assert (get_voxels(server.url, root, "g", box, "uint8") == 5).all()


@pytest.mark.parametrize("compression", ["lz4", "gzip"])
def test_7_label_compression_round_trips_equal_uncompressed(server, compression):
    root = new_repo(server.url, f"labels-{compression}")
    new_instance(server.url, root, "labelmap", "seg")
    box = Box((0, 0, 0), (64, 64, 64))
    data = (ramp(box, "uint64") // 16 + 2**33).astype(np.uint64)
    raw = data.tobytes()
    body = lz4.block.compress(raw, store_size=False) if compression == "lz4" else gzip.compress(raw)
    posted = call(server.url, "POST", raw_url(root, "seg", box), params={"compression": compression}, data=body)
    assert posted.status_code == 200, posted.text
    got = call(server.url, "GET", raw_url(root, "seg", box), params={"compression": compression}).content
    got = lz4.block.decompress(got, uncompressed_size=len(raw)) if compression == "lz4" else gzip.decompress(got)
    assert got == raw == get_voxels(server.url, root, "seg", box, "uint64").tobytes()


@pytest.mark.parametrize("plane", ["xy", "xz", "yz"])
def test_8_2d_png_and_tif_equal_the_3d_raw_plane(server, plane):
    from PIL import Image

    root = new_repo(server.url, f"planes-{plane}")
    new_instance(server.url, root, "uint8blk", "g")
    box = Box((0, 0, 0), (32, 64, 64))
    data = ramp(box)
    post_voxels(server.url, root, "g", box, data)
    size = {"xy": "40_30", "xz": "40_20", "yz": "30_20"}[plane]
    resp = call(server.url, "GET", f"/api/node/{root}/g/raw/{plane}/{size}/3_4_5/png")
    assert resp.headers["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(resp.content)))
    expected = {"xy": data[5, 4:34, 3:43], "xz": data[5:25, 4, 3:43], "yz": data[5:25, 4:34, 3]}[plane]
    np.testing.assert_array_equal(image, expected)
    tif = call(server.url, "GET", f"/api/node/{root}/g/raw/{plane}/{size}/3_4_5/tif")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(tif.content)), expected)
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/g/raw/{plane}/{size}/0_0_0", data=b""))


def test_9_extents_grow_after_posts_and_never_shrink(server):
    root = new_repo(server.url, "extents")
    new_instance(server.url, root, "uint8blk", "g")
    extents = lambda: call(server.url, "GET", f"/api/node/{root}/g/info").json()["Extended"]  # noqa: E731
    post_voxels(server.url, root, "g", Box((32, 0, 64), (64, 32, 96)), np.ones((32, 32, 32), np.uint8))
    assert (extents()["MinPoint"], extents()["MaxPoint"]) == ([64, 0, 32], [95, 31, 63])
    post_voxels(server.url, root, "g", Box((0, 32, 0), (32, 64, 32)), np.zeros((32, 32, 32), np.uint8))
    ext = extents()
    assert (ext["MinPoint"], ext["MaxPoint"], ext["MinIndex"], ext["MaxIndex"]) == (
        [0, 0, 0], [95, 63, 63], [0, 0, 0], [2, 1, 1])


def test_10_locked_nodes_refuse_writes_and_versions_copy_on_write(server):
    root = new_repo(server.url, "versions")
    new_instance(server.url, root, "uint8blk", "g")
    new_instance(server.url, root, "uint8blk", "loose", versioned="0")
    new_instance(server.url, root, "keyvalue", "kv")
    box = Box((0, 0, 0), (32, 32, 32))
    post_voxels(server.url, root, "g", box, np.full(box.shape, 1, np.uint8))
    call(server.url, "POST", f"/api/node/{root}/kv/key/k", data=b"parent")
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/newversion", json={}))  # open node
    committed = call(server.url, "POST", f"/api/node/{root}/commit", json={"note": "v1", "log": ["done"]})
    assert committed.json() == {"committed": root}
    assert call(server.url, "GET", f"/api/node/{root}/commit").json() == {"Locked": True}
    locked = post_voxels(server.url, root, "g", box, np.full(box.shape, 2, np.uint8))
    assert is_dvid_400(locked) and f'Cannot do POST on endpoint "raw" of locked node {root}' in locked.text
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/kv/key/k", data=b"x"), "locked node")
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/note", json={"note": "x"}), "locked node")
    assert post_voxels(server.url, root, "loose", box, np.full(box.shape, 3, np.uint8)).status_code == 200
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/commit", json={}))  # already locked
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/branch", json={"note": "no name"}))
    child = call(server.url, "POST", f"/api/node/{root}/newversion", json={"note": "v2"}).json()["child"]
    assert (get_voxels(server.url, child, "g", box, "uint8") == 1).all()  # the child reads its parent
    assert post_voxels(server.url, child, "g", box, np.full(box.shape, 4, np.uint8)).status_code == 200
    call(server.url, "POST", f"/api/node/{child}/kv/key/k", data=b"child")
    call(server.url, "DELETE", f"/api/node/{child}/kv/key/k")
    assert (get_voxels(server.url, child, "g", box, "uint8") == 4).all()
    assert (get_voxels(server.url, root, "g", box, "uint8") == 1).all()  # the parent never sees it
    assert call(server.url, "GET", f"/api/node/{child}/kv/key/k").status_code == 404  # a tombstone
    assert call(server.url, "GET", f"/api/node/{root}/kv/key/k").content == b"parent"
    assert (get_voxels(server.url, child, "loose", box, "uint8") == 3).all()  # unversioned: one value
    dag = call(server.url, "GET", f"/api/repo/{root}/info").json()["DAG"]["Nodes"]
    assert dag[root]["Children"] == [dag[child]["VersionID"]] and dag[child]["Parents"] == [dag[root]["VersionID"]]
    branch = call(server.url, "POST", f"/api/node/{root}/branch", json={"branch": "alt", "note": "x"}).json()
    assert call(server.url, "GET", f"/api/repo/{root}/branch-versions/alt").json() == [branch["child"], root]
    assert is_dvid_400(call(server.url, "POST", f"/api/node/{root}/branch", json={"branch": "alt"}))


def test_11_keyvalue_keys_round_trip_byte_exact(server):
    root = new_repo(server.url, "keys")
    new_instance(server.url, root, "keyvalue", "kv")
    base = f"/api/node/{root}/kv"
    blob = bytes(range(256)) * 3
    for key, value in [("b", b"2"), ("a", blob), ("a b%c", b"odd"), ("c", b"{\"n\": 1}")]:
        assert call(server.url, "POST", f"{base}/key/{requests.utils.quote(key, safe='')}", data=value).text == ""
    assert call(server.url, "GET", f"{base}/key/a").content == blob
    assert call(server.url, "GET", f"{base}/key/a%20b%25c").content == b"odd"
    missing = call(server.url, "GET", f"{base}/key/zz")
    assert missing.status_code == 404 and 'Key "zz" not found' in missing.text
    assert call(server.url, "HEAD", f"{base}/key/a").status_code == 200
    assert call(server.url, "HEAD", f"{base}/key/zz").status_code == 404
    assert call(server.url, "GET", f"{base}/keys").json() == ["a", "a b%c", "b", "c"]
    assert call(server.url, "GET", f"{base}/keyrange/a%20b%25c/c").json() == ["a b%c", "b", "c"]
    assert call(server.url, "GET", f"{base}/keyrangevalues/c/c", params={"json": "true"}).json() == {"c": {"n": 1}}
    assert call(server.url, "DELETE", f"{base}/key/b").status_code == 200
    assert call(server.url, "DELETE", f"{base}/key/b").status_code == 200  # absent: still 200
    assert call(server.url, "GET", f"{base}/keys").json() == ["a", "a b%c", "c"]


def test_12_labelmap_points_sizes_and_sparse_volumes_match_the_voxels(server, store):
    _, oracle = store
    repo = [u for u, r in call(server.url, "GET", "/api/repos/info").json().items() if r["Alias"] == REPO][0]
    labels = oracle.levels["labels"][0]  # from offset (3, 5, 7)
    body = int(labels[4, 10, 20])
    assert call(server.url, "GET", f"/api/node/{repo}/labels/label/27_15_7").json() == {"Label": body}
    points = [[7, 5, 3], [96, 74, 22], [30, 40, 10]]
    got = call(server.url, "GET", f"/api/node/{repo}/labels/labels", data=json.dumps(points)).json()
    assert got == [int(labels[z - 3, y - 5, x - 7]) for x, y, z in points]
    z, y, x = np.nonzero(labels == body)
    expected = {(int(a) + 7, int(b) + 5, int(c) + 3) for a, b, c in zip(x, y, z)}
    sparse = call(server.url, "GET", f"/api/node/{repo}/labels/sparsevol/{body}")
    assert decode_rles(sparse.content) == expected
    size = call(server.url, "GET", f"/api/node/{repo}/labels/sparsevol-size/{body}").json()
    assert size["voxels"] == len(expected) and size["minvoxel"] == [0, 0, 0]
    coarse = decode_rles(call(server.url, "GET", f"/api/node/{repo}/labels/sparsevol-coarse/{body}").content)
    assert coarse == {(a // 64, b // 64, c // 64) for a, b, c in expected}
    assert call(server.url, "GET", f"/api/node/{repo}/labels/sparsevol/12345").status_code == 404
    assert call(server.url, "HEAD", f"/api/node/{repo}/labels/sparsevol/12345").status_code == 204
    assert call(server.url, "HEAD", f"/api/node/{repo}/labels/sparsevol/{body}").status_code == 200
    assert is_dvid_400(call(server.url, "GET", f"/api/node/{repo}/labels/sparsevol-size/0"))
    assert call(server.url, "GET", f"/api/node/{repo}/labels/maxlabel").json() == {"maxlabel": int(labels.max())}


def test_12b_labelmap_scales_are_computed_from_scale_0(server):
    root = new_repo(server.url, "scales")
    new_instance(server.url, root, "labelmap", "seg", MaxDownresLevel="2")
    box = Box((0, 0, 0), (64, 64, 64))
    data = np.zeros(box.shape, np.uint64)
    data[:, :, 32:] = 7
    data[:4, :4, :4] = 9
    post_voxels(server.url, root, "seg", box, data)
    half = get_voxels(server.url, root, "seg", Box((0, 0, 0), (32, 32, 32)), "uint64", scale="1")
    assert half[0, 0, 0] == 9 and half[5, 5, 5] == 0 and (half[:, :, 16:] == 7).all()
    with DvidBackend(server.url) as driver:
        info = driver.info(("scales", "master", "seg"))
        assert len(info.levels) == 3 and info.levels[2].shape == (16, 16, 16)
        assert info.levels[1].voxel_size_nm == (16, 16, 16)
        np.testing.assert_array_equal(driver.read(("scales", "master", "seg"), info.levels[2].box, 2),
                                      get_voxels(server.url, root, "seg", Box((0, 0, 0), (16, 16, 16)), "uint64",
                                                 scale="2"))
        with pytest.raises(ReadOnly):
            driver.write(("scales", "master", "seg"), Box((0, 0, 0), (1, 1, 1)), 1, np.ones((1, 1, 1), np.uint64))


class _GatedStore(LocalBackend):
    """A local store whose reads wait at a gate: holds a request inside the server (for the throttle test)."""

    gate = threading.Event()

    def _read(self, ref, box, level):
        self.gate.wait(10)
        return super()._read(ref, box, level)


def test_13_a_second_throttled_request_gets_503_at_once(store):
    gated = _GatedStore(store[0])
    with WsgiServer(DvidApp(gated)) as srv:
        repo = [u for u, r in call(srv.url, "GET", "/api/repos/info").json().items() if r["Alias"] == REPO][0]
        url = raw_url(repo, "em8", Box((3, 5, 7), (4, 6, 8)))
        first = {}
        waiting = threading.Thread(target=lambda: first.update(r=call(srv.url, "GET", url + "?throttle=true")))
        gated.gate.clear()
        waiting.start()
        deadline = time.monotonic() + 10
        while srv.counter.snapshot()["requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        second = call(srv.url, "GET", url, params={"throttle": "on"})
        assert second.status_code == 503 and time.monotonic() - started < 5
        assert "throttled operations (max = 1)" in second.text
        gated.gate.set()
        waiting.join(10)
        assert first["r"].status_code == 200


# ---- the driver -------------------------------------------------------------------------------
def test_the_driver_shows_repos_nodes_and_instances_as_folders(server, dvid):
    assert REPO in dvid.children(())
    nodes = dvid.children((REPO,))
    assert nodes[0] == "master" and len(nodes) == 2 and re.fullmatch(r"[0-9a-f]{32}", nodes[1])
    assert dvid.children((REPO, "master")) == ["em16", "em8", "labels", "notes", "scratch"]  # levels are hidden
    assert dvid.children((REPO, nodes[1])) == dvid.children((REPO, "master"))
    assert dvid.is_volume((REPO, "master")) is False and dvid.is_volume((REPO, "master", "em8")) is True
    info = dvid.info((REPO, nodes[1], "labels"))
    assert info.kind == "annotation" and info.dtype == np.uint64 and len(info.levels) == 3
    assert info.levels[0].chunk_shape == (64, 64, 64) and info.extra["dvid"]["typename"] == "labelmap"
    with pytest.raises(NotFound):
        dvid.children((REPO, "no-such-branch"))
    with pytest.raises(NotFound):
        dvid.info((REPO, "master", "em8_1"))  # a level, not a volume of its own


def test_request_pieces_are_whole_blocks_within_256_cubed_and_long_in_x():
    shape = request_shape((32, 32, 32), (1000, 20000, 30000), 8, 256**3, 2**40)
    assert np.prod(shape) <= 256**3 and shape[2] >= shape[1] >= shape[0] and all(s % 32 == 0 for s in shape)
    assert request_shape((64, 64, 64), (20, 70, 90), 1, 256**3, 2**40) == (128, 192, 192)  # covers the volume
    assert request_shape((64, 64, 64), (20, 70, 90), 1, 64**3 * 4, 2**40) == (64, 64, 192)  # x first
    assert align(Box((5, -3, 40), (6, 4, 64)), (32, 32, 32)) == Box((0, -32, 32), (32, 32, 64))


def _raw_requests(counter, method):
    with counter._lock:
        log = list(counter._log)
    out = []
    for m, path, status in log:
        found = re.search(r"/raw/0_1_2/(-?\d+)_(-?\d+)_(-?\d+)/(-?\d+)_(-?\d+)_(-?\d+)", path)
        if m == method and found:
            out.append(tuple(int(v) for v in found.groups()))
    return out


def test_no_request_is_over_the_limit_and_every_post_is_block_aligned(store, server):
    local = LocalBackend(store[0])
    local.create_volume(("conf", "wide"), (40, 300, 1000), "uint8", voxel_size_nm=(30, 4, 4))
    data = np.random.default_rng(6).integers(0, 256, size=(40, 300, 1000), dtype=np.uint8)
    local.write(("conf", "wide"), Box((0, 0, 0), (40, 300, 1000)), 0, data)
    limit = 64 * 64 * 256
    with DvidBackend(server.url, max_request_voxels=limit, workers=4) as driver:
        ref = (REPO, "master", "wide")
        server.counter.reset()
        np.testing.assert_array_equal(driver.read(ref, Box((0, 0, 0), (40, 300, 1000)), 0), data)
        gets = _raw_requests(server.counter, "GET")
        assert len(gets) > 4 and all(sx * sy * sz <= limit for sx, sy, sz, *_ in gets)
        server.counter.reset()
        box = Box((3, 17, 100), (9, 250, 700))  # not aligned: whole blocks are read, patched and posted
        new = np.random.default_rng(7).integers(0, 256, size=box.shape, dtype=np.uint8)
        driver.write(ref, box, 0, new)
        posts = _raw_requests(server.counter, "POST")
        assert posts and all(v % 32 == 0 for p in posts for v in p) and all(
            sx * sy * sz <= limit for sx, sy, sz, *_ in posts)
        assert len(_raw_requests(server.counter, "GET")) == len(posts)  # one read per partial piece
        expected = data.copy()
        expected[box.slices()] = new
        np.testing.assert_array_equal(local.read(("conf", "wide"), Box((0, 0, 0), (40, 300, 1000)), 0), expected)
        server.counter.reset()
        aligned = Box((0, 32, 32), (32, 64, 96))
        driver.write(ref, aligned, 0, np.ones(aligned.shape, np.uint8))
        assert not _raw_requests(server.counter, "GET") and len(_raw_requests(server.counter, "POST")) == 1


def test_a_slice_write_is_a_read_modify_write_of_its_block_slab(server, store, dvid):
    ref = (REPO, "master", "em16")
    _, oracle = store
    plane = Box((10, 5, 7), (11, 75, 97))
    new = np.random.default_rng(1).integers(0, 2**16, size=plane.shape, dtype=np.uint16)
    server.counter.reset()
    try:
        dvid.write(ref, plane, 0, new)
        gets, posts = _raw_requests(server.counter, "GET"), _raw_requests(server.counter, "POST")
        assert gets == posts == [(128, 96, 32, 0, 0, 0)]  # the one 32-deep block slab, read then posted
        whole = dvid.read(ref, oracle.box("em16", 0), 0)
        expected = oracle.read("em16", oracle.box("em16", 0), 0).copy()
        expected[7] = new[0]
        np.testing.assert_array_equal(whole, expected)
    finally:
        dvid.write(ref, plane, 0, oracle.read("em16", plane, 0))


def test_a_locked_node_is_read_only_and_a_new_version_is_writable(tmp_path):
    _, oracle = build_reference_store(tmp_path / "s")
    with WsgiServer(DvidApp(LocalBackend(tmp_path / "s"))) as srv, DvidBackend(srv.url, ttl_s=0) as driver:
        root = driver.children((REPO,))[1]
        box = Box((3, 5, 7), (6, 9, 12))
        call(srv.url, "POST", f"/api/node/{root}/commit", json={"note": "frozen"})
        srv.counter.reset()
        with pytest.raises(ReadOnly) as caught:
            driver.write((REPO, root, "scratch"), box, 0, np.ones(box.shape, np.uint8))
        assert caught.value.errno == errno.EROFS and not _raw_requests(srv.counter, "POST")
        child = call(srv.url, "POST", f"/api/node/{root}/newversion", json={}).json()["child"]
        assert driver.children((REPO,)) == ["master", *sorted([root, child])]
        driver.write((REPO, "master", "scratch"), box, 0, np.full(box.shape, 9, np.uint8))
        assert (driver.read((REPO, child, "scratch"), box, 0) == 9).all()
        np.testing.assert_array_equal(driver.read((REPO, root, "scratch"), box, 0), oracle.read("scratch", box, 0))
        np.testing.assert_array_equal(LocalBackend(tmp_path / "s").read(("conf", "scratch"), box, 0),
                                      oracle.read("scratch", box, 0))  # versions after the root stay in memory


def test_http_errors_map_to_the_error_tree(server, dvid, store):
    with pytest.raises(NotFound):
        dvid.info((REPO, "master", "nope"))
    with pytest.raises(NotFound):
        dvid.children(("no-such-repo",))
    assert isinstance(http_error(400, 'Cannot do POST on endpoint "raw" of locked node abc', "POST", "/x"), ReadOnly)
    assert isinstance(http_error(400, "invalid data instance name 'x' (/api/...)", "GET", "/x"), NotFound)
    assert isinstance(http_error(400, "cannot store voxels in non-block aligned geometry", "POST", "/x"), BadRegion)
    assert isinstance(http_error(503, "busy", "GET", "/x"), BackendError)
    with WsgiServer(DvidApp(LocalBackend(store[0]), tokens=["right"])) as guarded:
        with DvidBackend(guarded.url, "wrong") as denied:
            with pytest.raises(PermissionDenied) as caught:
                denied.children(())
            assert caught.value.errno == errno.EACCES
        with DvidBackend(guarded.url, "right") as allowed:
            assert REPO in allowed.children(())
            assert "right" not in repr(allowed) and "token=***" in repr(allowed)
    with WsgiServer(DvidApp(LocalBackend(store[0]), read_only=True)) as frozen:
        with DvidBackend(frozen.url) as driver:
            with pytest.raises(ReadOnly):
                driver.write((REPO, "master", "scratch"), Box((3, 5, 7), (4, 6, 8)), 0, np.ones((1, 1, 1), np.uint8))


def test_reads_and_writes_survive_a_30_percent_fault_rate(store):
    _, oracle = store
    with WsgiServer(DvidApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=0.3, seed=5)) as srv:
        with DvidBackend(srv.url, retries=8, backoff_s=0.001, max_request_voxels=32**3) as flaky:
            for channel in ("em8", "em16", "labels"):
                for level in (0, 1):
                    box = oracle.box(channel, level)
                    np.testing.assert_array_equal(flaky.read((REPO, "master", channel), box, level),
                                                  oracle.read(channel, box, level))
            box = Box((4, 6, 8), (20, 60, 90))
            new = np.random.default_rng(3).integers(0, 256, size=box.shape, dtype=np.uint8)
            flaky.write((REPO, "master", "scratch"), box, 0, new)
            np.testing.assert_array_equal(flaky.read((REPO, "master", "scratch"), box, 0), new)
            flaky.write((REPO, "master", "scratch"), box, 0, oracle.read("scratch", box, 0))
            stats = srv.counter.snapshot()
            assert stats["faults"] > 5 and flaky.http_stats["retries"] == stats["faults"]


def test_a_fault_rate_of_1_is_eio_and_a_stalled_server_times_out(store):
    with WsgiServer(DvidApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=1.0)) as srv:
        with DvidBackend(srv.url, retries=2, backoff_s=0.01) as broken:
            started = time.monotonic()
            with pytest.raises(BackendError) as caught:
                broken.children(())
            assert caught.value.errno == errno.EIO and time.monotonic() - started < 10
            assert srv.counter.snapshot()["requests"] == 3
    with WsgiServer(DvidApp(LocalBackend(store[0])), options=ServeOptions(latency_s=1.0)) as srv:
        with DvidBackend(srv.url, timeout_s=0.2, retries=1, backoff_s=0.01) as slow:
            with pytest.raises(Timeout) as caught:
                slow.children(())
            assert caught.value.errno == errno.ETIMEDOUT


def test_key_value_instances_are_folders_of_files(server, dvid):
    root = new_repo(server.url, "files")
    new_instance(server.url, root, "keyvalue", "notes")
    call(server.url, "POST", f"/api/node/{root}/notes/key/hello.txt", data=b"hi\n")
    path = ("files", "master", "notes")
    assert dvid.is_volume(path) is False and dvid.children(path) == ["hello.txt"]
    assert dvid.is_file(path + ("hello.txt",)) and not dvid.is_file(path + ("nope",))
    assert not dvid.is_file(path) and not dvid.is_file((REPO, "master", "em8"))
    assert dvid.read_file(path + ("hello.txt",)) == b"hi\n"
    dvid.write_file(path + ("new file.bin",), b"\0\1\2")
    assert call(server.url, "GET", f"/api/node/{root}/notes/key/new%20file.bin").content == b"\0\1\2"
    dvid.delete_file(path + ("hello.txt",))
    assert dvid.children(path) == ["new file.bin"]
    with pytest.raises(NotFound):
        dvid.read_file(path + ("hello.txt",))
    with pytest.raises(NotFound):
        dvid.delete_file(path + ("hello.txt",))
    call(server.url, "POST", f"/api/node/{root}/commit", json={})
    with pytest.raises(ReadOnly):
        dvid.write_file(path + ("late",), b"x")


def test_a_dvid_remote_in_ndfs_toml_opens_the_driver(server, monkeypatch):
    monkeypatch.setenv("NDFS_TEST_DVID_TOKEN", "t0k")
    backend = open_backend(RemoteConfig("d", "dvid", url=server.url, token_env="NDFS_TEST_DVID_TOKEN",
                                        options={"branch": "master", "workers": 2}))
    assert backend._token == "t0k" and backend.children((REPO,))[:2] == ["em16", "em8"]
    backend.close()


# ---- reference clients through `ndfs serve --protocol dvid` -------------------------------
@pytest.fixture(scope="module")
def cli_server(store):
    with served("dvid", store[0]) as srv:
        yield srv.url


def _intern(url):
    from intern.remote.dvid import DVIDRemote

    return DVIDRemote({"protocol": "http", "host": url.removeprefix("http://")})


def test_intern_creates_writes_reads_and_commits_and_ndfs_reads_the_same_voxels(cli_server):
    from intern.resource.dvid import DataInstanceResource

    rmt = _intern(cli_server)
    gray = DataInstanceResource("grayscale", UUID=None, type="uint8blk", alias="by-intern", datatype="uint8")
    uuid = rmt.create_project(gray)
    seg = DataInstanceResource("seg", UUID=uuid, type="labelblk", datatype="uint64")
    rmt.create_project(seg)
    box = Box((0, 0, 0), (64, 64, 64))
    data = ramp(box)
    labels = ramp(box, "uint64", 2**36 + 3)
    rmt.create_cutout(gray, 0, [0, 64], [0, 64], [0, 64], data)
    rmt.create_cutout(seg, 0, [0, 64], [0, 64], [0, 64], labels)
    np.testing.assert_array_equal(rmt.get_cutout(gray, 0, [3, 50], [4, 60], [5, 40]), data[5:40, 4:60, 3:50])
    with DvidBackend(cli_server) as driver:
        assert driver.children(("by-intern", "master")) == ["grayscale", "seg"]
        np.testing.assert_array_equal(driver.read(("by-intern", "master", "grayscale"), box, 0), data)
        np.testing.assert_array_equal(driver.read(("by-intern", "master", "seg"), box, 0), labels)
        patch = Box((10, 20, 30), (12, 25, 41))
        driver.write(("by-intern", "master", "grayscale"), patch, 0, np.full(patch.shape, 255, np.uint8))
    data[patch.slices()] = 255
    np.testing.assert_array_equal(rmt.get_cutout(gray, 0, [0, 64], [0, 64], [0, 64]), data)
    np.testing.assert_array_equal(rmt.get_cutout(seg, 0, [0, 64], [0, 64], [0, 64]), labels)
    rmt.post_log(uuid, "wrote a ramp")
    assert b"wrote a ramp" in rmt.get_log(uuid)
    assert rmt.commit(uuid, note="done", log_m="first") == uuid
    rmt.create_cutout(gray, 0, [0, 32], [0, 32], [0, 32], np.zeros((32, 32, 32), np.uint8))  # unversioned
    with pytest.raises(requests.HTTPError):
        rmt.branch(uuid, note="intern sends no branch name, so real DVID refuses")
    assert rmt.get_server_info()["DVID Version"]


def test_intern_reads_the_served_store_equal_to_the_oracle(cli_server, store):
    _, oracle = store
    rmt = _intern(cli_server)
    repo = [u for u, r in requests.get(f"{cli_server}/api/repos/info", timeout=10).json().items()
            if r["Alias"] == REPO][0]
    for channel, dtype in [("em8", "uint8"), ("em16", "uint16"), ("labels", "uint64")]:
        res = rmt.get_instance(repo, channel, datatype=dtype)
        box = oracle.box(channel, 0)
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        np.testing.assert_array_equal(rmt.get_cutout(res, 0, [x0, x1], [y0, y1], [z0, z1]),
                                      oracle.read(channel, box, 0))


def test_intern_gets_metadata_and_extents_of_image_and_label_instances(cli_server, store):
    _, oracle = store
    rmt = _intern(cli_server)
    repo = [u for u, r in requests.get(f"{cli_server}/api/repos/info", timeout=10).json().items()
            if r["Alias"] == REPO][0]
    for channel, dtype in [("em8", "uint8"), ("labels", "uint64")]:
        res = rmt.get_instance(repo, channel, datatype=dtype)
        box = oracle.box(channel, 0)
        assert rmt.get_extents(res) == [[box.start[2], box.stop[2] - 1], [box.start[1], box.stop[1] - 1],
                                        [box.start[0], box.stop[0] - 1]]
        meta = rmt.get_metadata(res)
        assert [a["Label"] for a in meta["Axes"]] == ["X", "Y", "Z"]
        assert [a["Size"] for a in meta["Axes"]] == list(box.shape[::-1])
        assert meta["Properties"]["BlockSize"] == ([64] * 3 if dtype == "uint64" else [32] * 3)


def test_voxel_instances_answer_metadata_blocks_tags_extents_and_resolution(server, store):
    _, oracle = store
    url = server.url
    repo = uuid_of(url, REPO)
    meta = call(url, "GET", f"/api/node/{repo}/em8/metadata")
    assert meta.headers["Content-Type"] == "application/vnd.dvid-nd-data+json"
    assert meta.json()["Axes"][0] == {"Label": "X", "Resolution": 4.0, "Units": "nanometers", "Size": 90, "Offset": 7}
    blocks = call(url, "GET", f"/api/node/{repo}/em8/specificblocks", params={"blocks": "0,0,0,1,1,0,99,99,99"})
    stream, got = blocks.content, {}
    while stream:
        x, y, z, n = struct.unpack_from("<4i", stream)
        got[(x, y, z)] = np.frombuffer(stream[16:16 + n], np.uint8).reshape(32, 32, 32)
        stream = stream[16 + n:]
    assert sorted(got) == [(0, 0, 0), (1, 1, 0)]  # the block past the volume holds nothing: left out
    want = np.zeros((32, 32, 32), np.uint8)
    inside = Box((0, 32, 32), (32, 64, 64)).intersect(oracle.box("em8", 0))
    want[inside.slices((0, 32, 32))] = oracle.read("em8", inside, 0)
    np.testing.assert_array_equal(got[(1, 1, 0)], want)
    sub = call(url, "GET", f"/api/node/{repo}/em8/subvolblocks/64_32_32/0_32_0").content
    assert struct.unpack_from("<4i", sub)[:3] == (0, 1, 0) and len(sub) == 2 * (16 + 32**3)
    labels = call(url, "GET", f"/api/node/{repo}/labels/blocks/64_64_64/0_0_0", params={"compression": "lz4"})
    x, y, z, n = struct.unpack_from("<4i", labels.content)
    import lz4.block

    block = np.frombuffer(lz4.block.decompress(labels.content[16:16 + n], uncompressed_size=64**3 * 8), "<u8")
    assert (x, y, z) == (0, 0, 0) and set(np.unique(block)) <= set(np.unique(oracle.levels["labels"][0])) | {0}
    assert is_dvid_400(call(url, "GET", f"/api/node/{repo}/labels/blocks/64_64_64/0_0_0"), "compression")
    assert is_dvid_400(call(url, "GET", f"/api/node/{repo}/em8/subvolblocks/30_32_32/0_0_0"), "aligned")
    assert call(url, "POST", f"/api/node/{repo}/em8/tags", data=json.dumps({"a": "1"})).status_code == 200
    assert call(url, "GET", f"/api/node/{repo}/em8/tags").json() == {"a": "1"}
    assert is_dvid_400(call(url, "POST", f"/api/node/{repo}/em8/resolution", data="[1,1,1]"), "volume it serves")
    made = new_repo(url, "meta")
    new_instance(url, made, "uint16blk", "img")
    assert call(url, "POST", f"/api/node/{made}/img/resolution", data="[2,3,4]").status_code == 200
    assert call(url, "POST", f"/api/node/{made}/img/extents",
                data=json.dumps({"MinPoint": [0, 0, 0], "MaxPoint": [9, 19, 29]})).status_code == 200
    info = call(url, "GET", f"/api/node/{made}/img/info").json()["Extended"]
    assert info["VoxelSize"] == [2, 3, 4] and info["MaxPoint"] == [9, 19, 29]
    assert "metadata" in call(url, "GET", f"/api/node/{made}/img/help").text
    absent = call(url, "GET", f"/api/node/{made}/img/arb/0_0_0/1_0_0/0_1_0/1")
    assert is_dvid_400(absent) and "metadata" in absent.text  # the answer lists what the server does answer
    assert call(url, "DELETE", f"/api/repo/{made}?imsure=true").status_code == 405  # DVID deletes from its CLI


def test_labelmaps_answer_as_a_dvid_without_merges_identity_mappings_and_last_writes(server, store):
    _, oracle = store
    url = server.url
    repo = uuid_of(url, REPO)
    labels = oracle.levels["labels"][0]
    body = int(labels[4, 10, 20])
    assert call(url, "GET", f"/api/node/{repo}/labels/supervoxels/{body}").json() == [body]
    sizes = call(url, "GET", f"/api/node/{repo}/labels/supervoxel-sizes/{body}").json()
    assert sizes == {"supervoxels": [body], "sizes": [int((labels == body).sum())]}
    assert call(url, "GET", f"/api/node/{repo}/labels/supervoxels/12345").status_code == 404
    mapped = call(url, "GET", f"/api/node/{repo}/labels/mapping", data=json.dumps([body, 12345])).json()
    assert mapped == [body, 0]
    existing = call(url, "GET", f"/api/node/{repo}/labels/existing-labels").json()
    assert existing == sorted(int(v) for v in np.unique(labels) if v)
    listed = np.frombuffer(call(url, "GET", f"/api/node/{repo}/labels/listlabels",
                                params={"sizes": "true", "number": 2}).content, "<u8").reshape(-1, 2)
    assert listed[:, 0].tolist() == existing[:2] and listed[0, 1] == int((labels == existing[0]).sum())
    by_point = call(url, "GET", f"/api/node/{repo}/labels/sparsevol-by-point/27_15_7")
    assert decode_rles(by_point.content) == decode_rles(
        call(url, "GET", f"/api/node/{repo}/labels/sparsevol/{body}").content)
    assert call(url, "GET", f"/api/node/{repo}/labels/supervoxel-splits").json() == []
    made = new_repo(url, "lastmod")
    new_instance(url, made, "labelmap", "seg")
    block = Box((0, 0, 0), (64, 64, 64))
    seg = np.zeros(block.shape, np.uint64)
    seg[1, 2, 3] = 77
    first = call(url, "GET", f"/api/repo/{made}/info").json()["MutationID"]
    assert post_voxels(url, made, "seg", block, seg, u="ann", app="tests").status_code == 200
    mod = call(url, "GET", f"/api/node/{made}/seg/lastmod/77").json()
    # the write drew the repo's next mutation id, as in DVID (which starts a repo's ids at a billion)
    assert (first, mod["mutation id"], mod["last mod user"], mod["last mod app"]) == (10**9, 10**9, "ann", "tests")
    assert call(url, "GET", f"/api/repo/{made}/info").json()["MutationID"] == first + 1
    assert call(url, "GET", f"/api/node/{made}/seg/lastmod/78").status_code == 404
    assert call(url, "POST", f"/api/node/{made}/seg/set-nextlabel/500").status_code == 200
    assert call(url, "POST", f"/api/node/{made}/seg/nextlabel/2").json() == {"start": 500, "end": 501}


def test_dvidtools_reads_labels_sparse_volumes_and_annotations(cli_server, store):
    import dvid as dt

    _, oracle = store
    url = cli_server
    projects = dt.list_projects(server=url)
    root = projects[projects.Alias == REPO].Root.iloc[0]
    master = dt.get_master_node(root, server=url)
    assert master == root
    for name in ("labels", "labels_annotations", "labels_meshes"):  # dvidtools's instance names
        if name != "labels":
            new_instance(url, root, "keyvalue", name)
    dt.config.segmentation = dt.config.body_labels = "labels"
    try:
        labels = oracle.levels["labels"][0]
        points = np.array([[7, 5, 3], [50, 40, 10], [96, 74, 22]])
        ids = dt.locs_to_ids(points, server=url, node=master, progress=False)
        np.testing.assert_array_equal(ids, [labels[z - 3, y - 5, x - 7] for x, y, z in points])
        body = int(ids[1])
        size = dt.get_sparsevol_size(body, server=url, node=master)
        assert size["voxels"] == int((labels == body).sum())
        voxels = dt.get_sparsevol(body, scale=0, ret_type="INDEX", server=url, node=master)
        z, y, x = np.nonzero(labels == body)
        assert {tuple(v) for v in voxels.tolist()} == set(zip((x + 7).tolist(), (y + 5).tolist(), (z + 3).tolist()))
        coarse = dt.get_sparsevol(body, scale="COARSE", ret_type="INDEX", server=url, node=master)
        assert len(coarse) >= 1
        np.testing.assert_array_equal(dt.get_sizes([body, 2**60], server=url, node=master, progress=False),
                                      [size["voxels"], 0])
        dt.edit_annotation(body, {"status": "Traced", "name": "cell-1"}, server=url, node=master, verbose=False)
        assert dt.get_annotation(body, server=url, node=master) == {"status": "Traced", "name": "cell-1"}
        with DvidBackend(url) as driver:  # the annotation is a file to ndfs
            doc = json.loads(driver.read_file((REPO, "master", "labels_annotations", str(body))))
            assert doc["name"] == "cell-1"
        assert not dt.has_mesh(body, server=url, node=master, progress=False)[0]
        requests.post(f"{url}/api/node/{master}/labels_meshes/key/{body}.ngmesh", data=b"mesh", timeout=10)
        assert dt.has_mesh(body, server=url, node=master, progress=False)[0]
    finally:
        dt.config.segmentation = dt.config.body_labels = "segmentation"


# ---- the mount ---------------------------------------------------------------------------------
def _mount_config(tmp_path, url):
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.dvid]\nkind = "dvid"\nurl = "{url}"\n\n[cache]\ndir = "cache"\n\n'
                      f'[write]\noutbox_dir = "outbox"\n')
    return config


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_mount_shows_what_intern_wrote_and_a_locked_node_refuses_slice_writes(cli_server, store, tmp_path):
    from intern.resource.dvid import DataInstanceResource

    _, oracle = store
    rmt = _intern(cli_server)
    gray = DataInstanceResource("gray", UUID=None, type="uint8blk", alias="mounted", datatype="uint8",
                                version="1")
    uuid = rmt.create_project(gray)
    data = ramp(Box((0, 0, 0), (32, 64, 96)))
    rmt.create_cutout(gray, 0, [0, 96], [0, 64], [0, 32], data)
    with mounted(_mount_config(tmp_path, cli_server), tmp_path / "mnt"):
        root = tmp_path / "mnt" / "dvid"
        assert {"mounted", REPO} <= set(os.listdir(root))
        assert os.listdir(root / "mounted") == ["master", uuid]
        level = root / "mounted" / "master" / "gray" / "0"
        np.testing.assert_array_equal(tifffile.imread(level / "z" / "17.tif"), data[17])
        plane = oracle.read("em8", Box((8, 5, 7), (9, 75, 97)), 0)[0]
        np.testing.assert_array_equal(tifffile.imread(root / REPO / uuid_of(cli_server, REPO) / "em8" / "0" / "z" /
                                                      "8.tif"), plane)
        new = np.full((64, 96), 200, np.uint8)
        encoded = io.BytesIO()
        tifffile.imwrite(encoded, new)
        (level / "z" / "5.tif").write_bytes(encoded.getvalue())  # a slice write: DVID gets whole blocks
        data[5] = new
        np.testing.assert_array_equal(rmt.get_cutout(gray, 0, [0, 96], [0, 64], [0, 32]), data)
        assert rmt.commit(uuid, note="frozen") == uuid
        with pytest.raises(OSError) as caught:
            (level / "z" / "6.tif").write_bytes(encoded.getvalue())
        assert caught.value.errno == errno.EROFS
        np.testing.assert_array_equal(rmt.get_cutout(gray, 0, [0, 96], [0, 64], [0, 32]), data)


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_mount_shows_key_value_instances_as_folders_of_files(cli_server, tmp_path):
    uuid = new_repo(cli_server, "kv-mounted")
    new_instance(cli_server, uuid, "keyvalue", "notes")
    requests.post(f"{cli_server}/api/node/{uuid}/notes/key/readme.txt", data=b"from DVID\n", timeout=10)
    keys = lambda: requests.get(f"{cli_server}/api/node/{uuid}/notes/keys", timeout=10).json()  # noqa: E731
    value = lambda k: requests.get(f"{cli_server}/api/node/{uuid}/notes/key/{k}", timeout=10).content  # noqa: E731
    with mounted(_mount_config(tmp_path, cli_server), tmp_path / "mnt"):
        notes = tmp_path / "mnt" / "dvid" / "kv-mounted" / "master" / "notes"
        assert os.listdir(notes) == ["readme.txt"]
        assert (notes / "readme.txt").read_bytes() == b"from DVID\n"
        (notes / "new.json").write_bytes(b'{"a": 1}')
        assert value("new.json") == b'{"a": 1}'
        (notes / "readme.txt").write_bytes(b"changed\n")
        assert value("readme.txt") == b"changed\n" == (notes / "readme.txt").read_bytes()
        os.unlink(notes / "new.json")
        assert keys() == ["readme.txt"] == os.listdir(notes)
        with pytest.raises(FileNotFoundError):
            os.unlink(notes / "new.json")
        requests.post(f"{cli_server}/api/node/{uuid}/commit", json={"note": "frozen"}, timeout=10)
        for name in ("late.txt", "readme.txt"):  # a new key, and a new value for an old one
            with pytest.raises(OSError) as caught:
                (notes / name).write_bytes(b"too late")
            assert caught.value.errno == errno.EROFS
        assert keys() == ["readme.txt"] and value("readme.txt") == b"changed\n"


def uuid_of(url, alias):
    return [u for u, r in requests.get(f"{url}/api/repos/info", timeout=10).json().items() if r["Alias"] == alias][0]


def test_serve_refuses_a_missing_store_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ndfs", "serve", "--protocol", "dvid", "--store",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not a directory" in done.stderr
