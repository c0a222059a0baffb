"""RAMON on every backend that keeps it, against real servers on 127.0.0.1, and meshes cached like chunks.

One parametrised fixture, ``case``, gives each test a fresh annotation channel
on one backend: the local store, NeuroData (``ndfs serve --protocol
neurodata``), DVID with a labelmap served from a store and with a labelblk
made through the DVID API, and the BOSS; the remote ones also behind the chunk
cache. The generic tests run on every case; after them come what each remote
keeps where (DVID's key-value instance, the BOSS metadata service checked
with intern), one mount that round-trips every stored type through
``ramon/<id>.json`` on every remote, and the mesh cache's disk tier across
processes (mounts), corruption and writes.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import requests

from ndfs.stores.base import AnnotationStore
from ndfs import ramon
from ndfs.stores.boss import BossBackend
from ndfs.stores.dvid import DvidBackend
from ndfs.stores.dvid_ramon import COUNTER_KEY, RAMON_SUFFIX
from ndfs.stores.local import LocalBackend
from ndfs.stores.neurodata import NeuroDataBackend
from ndfs.core.errors import InvalidAnnotation, NdfsError, NotFound, ReadOnly, TooLarge
from ndfs.core.geometry import Box
from ndfs.serve.boss import BossApp
from ndfs.serve.common import WsgiServer
from ndfs.serve.dvid import DvidApp
from ndfs.serve.neurodata import NeuroDataApp
from ndfs.testing.mount import fuse_unavailable, mounted

from test_ramon import sample

SHAPE, OFFSET, CHUNK, VOXEL = (32, 96, 96), (2, 8, 16), (8, 32, 32), (40.0, 4.0, 4.0)
STORED = [t for t in ramon.TYPES if t not in ramon.NOT_STORED]
needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
_names = itertools.count(1)


def call(method, url, **kw):
    return requests.request(method, url, timeout=30, **kw)


# ---- servers (module-wide), each over its own local store ------------------------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("ramon-remotes")
    out = {k: base / k for k in ("local", "dvid", "boss", "nd")}
    images = {"local": ("proj", "img"), "dvid": ("proj", "img"), "boss": ("coll", "exp", "img"), "nd": ("tok", "img")}
    for k, ref in images.items():
        LocalBackend(out[k], create=True).create_volume(ref, SHAPE, "uint8", offset=OFFSET, chunk_shape=CHUNK,
                                                        voxel_size_nm=VOXEL, levels=2)
    return out


@pytest.fixture(scope="module")
def servers(roots):
    with WsgiServer(DvidApp(LocalBackend(roots["dvid"]))) as dvid, \
            WsgiServer(BossApp(LocalBackend(roots["boss"]))) as boss, \
            WsgiServer(NeuroDataApp(LocalBackend(roots["nd"]))) as nd:
        yield {"dvid": dvid.url, "boss": boss.url, "nd": nd.url}


def new_channel(root, ref, dtype="uint64"):
    """A fresh annotation channel in a local store (a server serving the store sees it on next use)."""
    LocalBackend(root).create_volume(ref, SHAPE, dtype, kind="annotation", offset=OFFSET, chunk_shape=CHUNK,
                                     voxel_size_nm=VOXEL, levels=2)
    return ref


def new_labelblk(url: str) -> tuple[str, str]:
    """A labelblk instance made through the DVID API in repo "blk" (in the server's memory), extents set."""
    repos = call("GET", f"{url}/api/repos/info").json()
    root = next((r for r, doc in repos.items() if doc["Alias"] == "blk"), None)
    if root is None:
        root = call("POST", f"{url}/api/repos", data=json.dumps({"alias": "blk", "description": "t"})).json()["root"]
    name = f"cells{next(_names)}"
    resp = call("POST", f"{url}/api/repo/{root}/instance", data=json.dumps({"typename": "labelblk", "dataname": name}))
    assert resp.status_code == 200, resp.text
    z, y, x = SHAPE  # posting zeros over the volume grows its extents to it (32^3 blocks from 0)
    resp = call("POST", f"{url}/api/node/{root}/{name}/raw/0_1_2/{x}_{y}_{z}/0_0_0", data=bytes(8 * x * y * z))
    assert resp.status_code == 200, resp.text
    return "blk", name


@dataclass
class Case:
    """A fresh annotation channel on one backend; ``labels(box)`` reads its voxels straight from the store."""

    name: str
    backend: object
    ref: tuple
    image: tuple
    types: list[str]
    reopen: Callable[[], object]
    labels: Callable[[Box, int], np.ndarray]
    max_id: int = 2**63 - 1
    extra: dict = field(default_factory=dict)


CASES = ["local", "neurodata", "dvid", "dvid-cached", "dvid-labelblk", "boss", "boss-cached"]


@pytest.fixture(params=CASES)
def case(request, roots, servers):
    kind = request.param
    k = next(_names)

    def via_store(root):
        return lambda box, level=0: LocalBackend(root).read(ref, box, level)

    if kind == "local":
        ref = new_channel(roots["local"], ("proj", f"cells{k}"))
        make = lambda: LocalBackend(roots["local"])  # noqa: E731
        c = Case(kind, make(), ref, ("proj", "img"), STORED, make, via_store(roots["local"]))
    elif kind == "neurodata":
        ref = new_channel(roots["nd"], ("tok", f"cells{k}"), "uint32")
        make = lambda: NeuroDataBackend(servers["nd"], backoff_s=0.01)  # noqa: E731
        c = Case(kind, make(), ref, ("tok", "img"), sorted(ramon.NDSTORE_TYPES), make, via_store(roots["nd"]),
                 max_id=2**32 - 1)
    elif kind.startswith("dvid"):
        make = lambda: DvidBackend(servers["dvid"], branch="master", backoff_s=0.01)  # noqa: E731
        if kind == "dvid-labelblk":
            ref = new_labelblk(servers["dvid"])
            backend = make()

            def labels(box, level=0):
                return backend.read(ref, box, level)
        else:
            ref = new_channel(roots["dvid"], ("proj", f"cells{k}"))
            labels = via_store(roots["dvid"])
        c = Case(kind, make(), ref, ("proj", "img"), STORED, make, labels)
    else:
        ref = new_channel(roots["boss"], ("coll", "exp", f"cells{k}"))
        make = lambda: BossBackend(servers["boss"], "x", backoff_s=0.01)  # noqa: E731
        c = Case(kind, make(), ref, ("coll", "exp", "img"), STORED, make, via_store(roots["boss"]))
    if kind.endswith("-cached"):
        from ndfs.cache import CachedBackend

        c.backend = CachedBackend(c.backend, namespace=f"test:{kind}:{k}", memory_bytes=2**24)
    request.addfinalizer(c.backend.close)
    return c


def objects_of(case, base=100):
    return [sample(t, id=base + i) for i, t in enumerate(case.types)]


def whole(case, level=0) -> Box:
    return case.backend.info(case.ref).level(level).box


# ---- every backend: the annotation contract ------------------------------------------------
def test_every_stored_type_round_trips_through_the_api_and_is_kept_by_the_service(case):
    b, ref = case.backend, case.ref
    objs = objects_of(case)
    assert b.ramon_put(ref, objs) == [o.id for o in objs]
    got = b.ramon_get(ref, [o.id for o in reversed(objs)])
    assert got == list(reversed(objs))
    assert [g.to_json() for g in reversed(got)] == [o.to_json() for o in objs]  # the file form, byte for byte
    with case.reopen() as fresh:  # a new client: the objects live in the service, not in this one
        assert fresh.ramon_get(ref, [o.id for o in objs]) == objs
        assert fresh.ramon_ids(ref) == [o.id for o in objs]
    for t in case.types:
        assert b.ramon_ids(ref, type=t) == [o.id for o in objs if o.TYPE == t]
    edited = objs[0].copy()
    edited.author, edited.kvpairs = "bob", {"class": "glia"}
    assert b.ramon_put(ref, [edited]) == [edited.id]  # the same id replaces
    assert b.ramon_get(ref, edited.id) == [edited] and b.ramon_ids(ref) == [o.id for o in objs]


def test_new_objects_get_fresh_ids_and_reservations_never_collide(case):
    b, ref = case.backend, case.ref
    b.ramon_put(ref, [ramon.RamonSegment(id=50, author="chosen")])
    (first,) = b.ramon_put(ref, [ramon.RamonGeneric(author="new")])
    reserved = b.reserve_ids(ref, 3)
    assert reserved == list(range(reserved[0], reserved[0] + 3))
    (second,) = b.ramon_put(ref, [ramon.RamonSegment(author="newer")])
    handed = [first, *reserved, second]
    assert len(set(handed)) == 5 and 50 not in handed and min(handed) >= 1
    assert b.ramon_get(ref, [first, second])[0].author == "new"
    assert b.ramon_ids(ref) == sorted([50, first, second])  # reserving makes no object


def test_voxels_label_the_channel_boxes_are_tight_and_delete_erases_them(case):
    b, ref = case.backend, case.ref
    seg, other = ramon.RamonSegment(id=7, author="vox"), ramon.RamonSegment(id=8)
    cut = np.zeros((3, 5, 7), np.uint8)
    cut[0, 1:4, 2:6] = 1
    cut[2, 4, 6] = 1
    seg.voxels = ramon.Voxels(cut, (12, 40, 60))  # absolute z, y, x; tight box z 12:15, y 41:45, x 62:67
    other.voxels = ramon.Voxels(np.ones((2, 2, 2), np.uint8), (20, 80, 90))
    neuron = ramon.RamonNeuron(id=9, segments=[7, 8])
    b.ramon_put(ref, [seg, other, neuron, ramon.RamonSynapse(id=10)])
    labels = case.labels(whole(case), 0)
    origin = whole(case).start
    expect = np.zeros(whole(case).shape, labels.dtype)
    expect[tuple(slice(a - o, a - o + n) for a, o, n in zip((12, 40, 60), origin, cut.shape))][cut != 0] = 7
    expect[tuple(slice(a - o, a - o + 2) for a, o in zip((20, 80, 90), origin))] = 8
    np.testing.assert_array_equal(labels, expect)
    assert b.ramon_bbox(ref, 7) == Box((12, 41, 62), (15, 45, 67))
    assert b.ramon_bbox(ref, 9) == Box((12, 41, 62), (22, 82, 92))  # a neuron: its segments' union
    assert b.ramon_bbox(ref, 10) is None
    if len(b.info(ref).levels) > 1:  # x and y halve at level 1
        assert b.ramon_bbox(ref, 8, level=1) == Box((20, 40, 45), (22, 41, 46))
    touching = Box((12, 40, 60), (13, 43, 64))
    assert b.ramon_ids(ref, box=touching) == [7, 9]
    assert b.ramon_ids(ref, box=touching, type="segment") == [7]
    b.ramon_delete(ref, [7])
    labels = case.labels(whole(case), 0)
    assert not (labels == 7).any() and (labels == 8).sum() == 8
    with pytest.raises(NotFound):
        b.ramon_get(ref, [7])
    with pytest.raises(NotFound):
        b.ramon_delete(ref, [7, 8])  # one missing: nothing deleted
    assert b.ramon_ids(ref) == [8, 9, 10] and (case.labels(whole(case), 0) == 8).sum() == 8


def test_queries_filter_by_type_status_confidence_kv_and_limit(case):
    b, ref = case.backend, case.ref
    segs = [ramon.RamonSegment(id=i, status=i % 2, confidence=i / 10, kvpairs={"class": "cell" if i < 4 else "glia"})
            for i in range(1, 7)]
    b.ramon_put(ref, segs + [ramon.RamonSynapse(id=8, status=1)])
    assert b.ramon_ids(ref, type="segment", status=1) == [1, 3, 5]
    assert b.ramon_ids(ref, kv={"class": "cell"}, status="locked") == [1, 3]
    assert b.ramon_ids(ref, confidence=("gt", 0.35)) == [4, 5, 6]
    assert b.ramon_ids(ref, confidence=("lt", 0.25), type="segment") == [1, 2]
    assert b.ramon_ids(ref, limit=2) == [1, 2]
    assert b.ramon_ids(ref, kv={"class": "nothing"}) == []


def test_bad_input_is_refused_without_side_effects(case):
    b, ref = case.backend, case.ref
    b.ramon_put(ref, [ramon.RamonSegment(id=1, author="kept")])
    before = case.labels(whole(case), 0)
    good = ramon.RamonSegment(id=2)
    good.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (5, 20, 30))
    outside = ramon.RamonSegment(id=3)
    outside.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), whole(case).stop)  # just past the end
    for objs in ([good, ramon.RamonSegment(id=1, kvpairs={"x": 1})], [good, ramon.RamonSegment(id=2)],
                 [good, ramon.RamonVolume()], [good, outside], [good, "not an object"]):
        with pytest.raises(NdfsError):
            b.ramon_put(ref, objs)
    with pytest.raises(InvalidAnnotation, match="image channel"):
        b.ramon_put(case.image, [ramon.RamonGeneric()])
    with pytest.raises(InvalidAnnotation):
        b.ramon_get(ref, [0])
    with pytest.raises(InvalidAnnotation):
        b.reserve_ids(ref, 0)
    with pytest.raises(NotFound):
        b.ramon_get(ref, [77])
    with pytest.raises(NotFound):
        b.ramon_bbox(ref, 77)
    assert b.ramon_ids(ref) == [1] and b.ramon_get(ref, [1])[0].author == "kept"
    np.testing.assert_array_equal(case.labels(whole(case), 0), before)


# ---- DVID: where the objects are, ids, locked nodes ------------------------------------------
@pytest.fixture
def dvid_channel(roots, servers):
    ref = new_channel(roots["dvid"], ("proj", f"cells{next(_names)}"))
    with DvidBackend(servers["dvid"], branch="master", backoff_s=0.01) as backend:
        yield backend, ref, servers["dvid"]


def test_dvid_keeps_each_object_as_a_key_of_the_instance_ramon_beside_the_labels(dvid_channel):
    d, ref, url = dvid_channel
    assert ref[1] + RAMON_SUFFIX not in d.children(("proj",))
    assert d.ramon_ids(ref) == [] and d.ramon_put(ref, []) == []  # reading makes nothing
    assert ref[1] + RAMON_SUFFIX not in d.children(("proj",))
    objs = [sample("segment", id=5), sample("neuron", id=12)]
    d.ramon_put(ref, objs)
    kv = ref[1] + RAMON_SUFFIX
    assert kv in d.children(("proj",)) and d.children(("proj", kv)) == ["12", "5"]  # a key-value folder
    uuid = d._locate(ref)[1]
    for obj in objs:
        resp = call("GET", f"{url}/api/node/{uuid}/{kv}/key/{obj.id}")
        assert resp.status_code == 200 and resp.content == obj.to_json().encode()
    d.write_file(("proj", kv, "note"), b"not an object")  # other keys are left alone
    assert d.ramon_ids(ref) == [5, 12]
    d.write_file(("proj", kv, "13"), b'{"type": "cell"}')
    with pytest.raises(NdfsError, match="no usable RAMON object"):
        d.ramon_get(ref, [13])


def test_dvid_labelmap_ids_come_from_nextlabel_and_explicit_ids_raise_maxlabel(dvid_channel):
    d, ref, url = dvid_channel
    labels = np.zeros((1, 1, 1), np.uint64)
    labels[:] = 300
    d.write(ref, Box((2, 8, 16), (3, 9, 17)), 0, labels)  # a label written without an object
    assert d.reserve_ids(ref, 2) == [301, 302]  # DVID's counter knows the labels
    d.ramon_put(ref, [ramon.RamonGeneric(id=5000)])
    uuid = d._locate(ref)[1]
    assert call("GET", f"{url}/api/node/{uuid}/{ref[1]}/nextlabel").json() == {"nextlabel": 5001}
    assert d.ramon_put(ref, [ramon.RamonSegment()]) == [5001]
    # the server's POST maxlabel: ignored unless greater, refused on a locked node
    assert call("POST", f"{url}/api/node/{uuid}/{ref[1]}/maxlabel/10").status_code == 200
    assert call("GET", f"{url}/api/node/{uuid}/{ref[1]}/maxlabel").json() == {"maxlabel": 5001}
    assert call("POST", f"{url}/api/node/{uuid}/{ref[1]}/maxlabel/x").status_code == 400


def test_dvid_labelblk_ids_use_a_counter_key_and_boxes_scan_the_labels(servers):
    ref = new_labelblk(servers["dvid"])
    with DvidBackend(servers["dvid"], branch="master", backoff_s=0.01) as d:
        d.ramon_put(ref, [ramon.RamonGeneric(id=40)])
        assert d.reserve_ids(ref, 2) == [41, 42]  # past the stored ids
        assert d.read_file(("blk", ref[1] + RAMON_SUFFIX, COUNTER_KEY)) == b"43"
        assert d.ramon_put(ref, [ramon.RamonGeneric()]) == [43]
        assert d.ramon_ids(ref) == [40, 43]  # the counter is not an object


def test_dvid_bounding_boxes_read_only_the_blocks_sparsevol_size_names(dvid_channel):
    d, ref, _ = dvid_channel
    seg = ramon.RamonSegment(id=3)
    seg.voxels = ramon.Voxels(np.ones((2, 3, 4), np.uint8), (20, 70, 90))
    d.ramon_put(ref, [seg])
    d.reset_stats()
    assert d.ramon_bbox(ref, 3) == Box((20, 70, 90), (22, 73, 94))
    # a 64^3 labelmap block holds the object: one block of uint64 read, not the whole channel
    assert d.stats.read_bytes <= 64**3 * 8 < int(np.prod(SHAPE)) * 8 * 3


def test_a_dvid_without_keyrangevalues_nextlabel_and_maxlabel_still_keeps_ramon(roots):
    app = DvidApp(LocalBackend(roots["dvid"]))
    missing = ("/keyrangevalues/", "/nextlabel/", "/maxlabel/")

    def older_dvid(environ, start_response):  # a DVID without these optional endpoints
        path = environ.get("PATH_INFO", "")
        if any(m in path for m in missing):
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b'Bad API call "' + path.split("/")[5].encode() + b'" (' + path.encode() + b").\n"]
        return app(environ, start_response)

    ref = new_channel(roots["dvid"], ("proj", f"cells{next(_names)}"))
    with WsgiServer(older_dvid) as srv, DvidBackend(srv.url, branch="master", backoff_s=0.01) as d:
        d.ramon_put(ref, [ramon.RamonSegment(id=i, status=i % 2) for i in range(1, 6)] + [sample("roi", id=9)])
        before = d.http_stats["requests"]
        assert d.ramon_ids(ref, type="segment", status=1) == [1, 3, 5]
        assert d.ramon_ids(ref, kv={"class": "cell"}) == [9]
        assert d.http_stats["requests"] - before >= 2 * 6  # one GET per object, twice
        assert len(d.ramon_get(ref, list(range(1, 6)))) == 5
        assert d.reserve_ids(ref, 2) == [10, 11] and d.ramon_put(ref, [ramon.RamonGeneric()]) == [12]
        assert d.read_file(("proj", ref[1] + RAMON_SUFFIX, COUNTER_KEY)) == b"13"  # the counter key instead


def test_a_locked_dvid_node_refuses_every_change_before_sending_it(servers):
    url = servers["dvid"]
    alias = f"locked{next(_names)}"
    root = call("POST", f"{url}/api/repos", data=json.dumps({"alias": alias, "description": ""})).json()["root"]
    assert call("POST", f"{url}/api/repo/{root}/instance",
                data=json.dumps({"typename": "labelmap", "dataname": "seg"})).status_code == 200
    z, y, x = 64, 64, 64
    assert call("POST", f"{url}/api/node/{root}/seg/raw/0_1_2/{x}_{y}_{z}/0_0_0", data=bytes(8 * x * y * z)).ok
    with DvidBackend(url, backoff_s=0.01) as d:
        ref = (alias, root, "seg")  # repo, node, instance
        d.ramon_put(ref, [ramon.RamonSegment(id=4)])
        assert call("POST", f"{url}/api/node/{root}/commit", data=json.dumps({"note": "done"})).ok
        keys = call("GET", f"{url}/api/node/{root}/seg{RAMON_SUFFIX}/keys").json()
        for change in (lambda: d.ramon_put(ref, [ramon.RamonSegment(id=5)]), lambda: d.ramon_delete(ref, [4]),
                       lambda: d.reserve_ids(ref, 1)):
            with pytest.raises(ReadOnly):
                change()
        assert call("GET", f"{url}/api/node/{root}/seg{RAMON_SUFFIX}/keys").json() == keys == ["4"]
        assert d.ramon_get(ref, [4])[0].id == 4  # reads still work


# ---- BOSS: the metadata service, the annotation services, the limits -----------------------
@pytest.fixture
def boss_channel(roots, servers):
    ref = new_channel(roots["boss"], ("coll", "exp", f"cells{next(_names)}"))
    with BossBackend(servers["boss"], "x", backoff_s=0.01) as backend:
        yield backend, ref, servers["boss"]


def intern_remote(url):
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": url.split("://")[1], "token": "x"})


def test_boss_metadata_service_works_with_intern_as_the_spec_says(boss_channel):
    from intern.resource.boss.resource import ChannelResource, CollectionResource

    _, ref, url = boss_channel
    rmt = intern_remote(url)
    chan = ChannelResource(ref[2], ref[0], ref[1], type="annotation", datatype="uint64")
    rmt.create_metadata(chan, {"color": "red", "shape": "round"})                          # 201 each
    assert rmt.get_metadata(chan, ["color"]) == {"color": "red"}                          # 200
    assert sorted(rmt.list_metadata(chan)) == ["color", "shape"]                          # 200
    rmt.update_metadata(chan, {"color": "blue"})                                          # 200
    assert rmt.get_metadata(chan, ["color", "shape"]) == {"color": "blue", "shape": "round"}
    rmt.delete_metadata(chan, ["shape"])                                                  # 204
    assert rmt.list_metadata(chan) == ["color"]
    rmt.create_metadata(CollectionResource(ref[0]), {"owner": "lab"})  # collections keep their own
    assert rmt.list_metadata(CollectionResource(ref[0])) == ["owner"] and rmt.list_metadata(chan) == ["color"]
    meta = f"{url}/v1/meta/{ref[0]}/{ref[1]}/{ref[2]}/"
    for method, params in [("POST", {"key": "color", "value": "x"}), ("GET", {"key": "nope"}),
                           ("PUT", {"key": "nope", "value": "x"}), ("DELETE", {"key": "nope"}),
                           ("POST", {"key": "only"})]:
        resp = call(method, meta, params=params)
        assert resp.status_code == 400 and resp.json()["code"] == 1003, (method, params, resp.text)
    assert call("GET", f"{url}/v1/meta/{ref[0]}/{ref[1]}/nochannel/").json()["code"] == 4000


def test_boss_boundingbox_endpoint_is_tight_or_cuboid_aligned(boss_channel):
    b, ref, url = boss_channel
    seg = ramon.RamonSegment(id=6)
    seg.voxels = ramon.Voxels(np.ones((2, 3, 4), np.uint8), (20, 70, 90))
    b.ramon_put(ref, [seg])
    path = f"{url}/v1/boundingbox/{ref[0]}/{ref[1]}/{ref[2]}/0/6/"
    assert call("GET", path, params={"type": "tight"}).json() == {
        "x_range": [90, 94], "y_range": [70, 73], "z_range": [20, 22], "t_range": [0, 1]}
    from intern.resource.boss.resource import ChannelResource

    chan = ChannelResource(ref[2], ref[0], ref[1], type="annotation", datatype="uint64")
    loose = intern_remote(url).get_bounding_box(chan, 0, 6, "loose")  # intern's default, cuboid aligned
    assert (loose["x_range"], loose["y_range"], loose["z_range"]) == ([0, 512], [0, 512], [16, 32])
    for params, status, code in [({"type": "tight"}, 404, 4004), ({"type": "snug"}, 400, 1005)]:
        resp = call("GET", path.replace("/0/6/", "/0/99/") if status == 404 else path, params=params)
        assert (resp.status_code, resp.json()["code"]) == (status, code)
    img = call("GET", f"{url}/v1/boundingbox/coll/exp/img/0/6/")
    assert (img.status_code, img.json()["code"]) == (400, 2003)


def test_boss_objects_are_metadata_keys_and_voxel_only_ids_read_as_generic(boss_channel):
    b, ref, url = boss_channel
    b.ramon_put(ref, [sample("synapse", id=11)])
    meta = f"{url}/v1/meta/{ref[0]}/{ref[1]}/{ref[2]}/"
    assert call("GET", meta).json() == {"keys": ["ramon/11"]}
    stored = json.loads(call("GET", meta, params={"key": "ramon/11"}).json()["value"])
    assert stored["type"] == "synapse" and stored["weight"] == 0.25 and "bbox" not in stored
    labels = np.zeros((1, 2, 2), np.uint64)
    labels[:] = 900
    b.write(ref, Box((4, 10, 20), (5, 12, 22)), 0, labels)  # voxels without an object
    (generic,) = b.ramon_get(ref, [900])
    assert generic == ramon.RamonGeneric(id=900)
    assert b.ramon_ids(ref) == [11, 900] and b.ramon_ids(ref, type="generic") == [900]
    assert b.ramon_ids(ref, type="synapse", status=2) == [11]
    b.ramon_delete(ref, [900])  # no key: only the voxels go
    assert not b.read(ref, b.info(ref).level(0).box, 0).any()
    assert b.ramon_ids(ref) == [11]


def test_boss_refuses_an_object_too_big_for_the_metadata_url_and_reads_only_without_write(boss_channel, servers):
    b, ref, url = boss_channel
    big = ramon.RamonNeuron(id=5, segments=list(range(1, 3000)))
    with pytest.raises(TooLarge, match="max_meta_bytes"):
        b.ramon_put(ref, [ramon.RamonGeneric(id=4), big])
    assert b.ramon_ids(ref) == []  # nothing sent
    ro = BossBackend(url, "x", read_only=True)
    assert isinstance(ro, AnnotationStore) and "write" not in ro.capabilities
    with pytest.raises(ReadOnly):
        ro.ramon_put(ref, [ramon.RamonGeneric(id=4)])
    ro.close()


def test_a_read_only_boss_server_refuses_metadata_writes(roots):
    with WsgiServer(BossApp(LocalBackend(roots["boss"], read_only=True))) as srv:
        resp = call("POST", f"{srv.url}/v1/meta/coll/exp/img/", params={"key": "k", "value": "v"})
        assert (resp.status_code, resp.json()["code"]) == (403, 3001)


# ---- the mount: every stored type through ramon/<id>.json on every remote -------------------
@needs_fuse
def test_every_stored_type_round_trips_through_the_mounts_ramon_json_on_every_remote(roots, servers, tmp_path):
    k = next(_names)
    channels = {"local": ("proj", f"mnt{k}"), "dvid": ("proj", f"mnt{k}"), "boss": ("coll", "exp", f"mnt{k}"),
                "nd": ("tok", f"mnt{k}")}
    for remote, ref in channels.items():
        new_channel(roots[remote], ref, "uint32" if remote == "nd" else "uint64")
    config = tmp_path / "ndfs.toml"
    config.write_text(
        f'[remotes.local]\nkind = "local"\npath = "{roots["local"]}"\n\n'
        f'[remotes.dvid]\nkind = "dvid"\nurl = "{servers["dvid"]}"\nbranch = "master"\n\n'
        f'[remotes.boss]\nkind = "boss"\nurl = "{servers["boss"]}"\n\n'
        f'[remotes.nd]\nkind = "neurodata"\nurl = "{servers["nd"]}"\n\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    types = {r: (sorted(ramon.NDSTORE_TYPES) if r == "nd" else STORED) for r in channels}
    with mounted(config, tmp_path / "mnt"):
        for remote, ref in channels.items():
            rdir = tmp_path / "mnt" / remote / "/".join(ref) / "ramon"
            objs = [sample(t, id=200 + i) for i, t in enumerate(types[remote])]
            for obj in objs:
                (rdir / f"{obj.id}.json").write_text(obj.to_json())
            for obj in objs:
                assert (rdir / f"{obj.id}.json").read_bytes() == obj.to_json().encode(), (remote, obj.type)
                assert os.listdir(rdir / "by-type" / obj.type) == [f"{obj.id}.json"]
            assert sorted(os.listdir(rdir)) == sorted([f"{o.id}.json" for o in objs] + ["by-type"])
            with pytest.raises(OSError) as bad:  # refused whole: nothing stored
                (rdir / "300.json").write_text('{"type": "segment", "color": "red"}')
            assert bad.value.errno == errno.EINVAL
    for remote, ref in channels.items():  # what the services hold, seen without the mount
        backend = {"local": lambda: LocalBackend(roots["local"]),
                   "dvid": lambda: DvidBackend(servers["dvid"], branch="master"),
                   "boss": lambda: BossBackend(servers["boss"], "x"),
                   "nd": lambda: NeuroDataBackend(servers["nd"])}[remote]()
        with backend:
            objs = [sample(t, id=200 + i) for i, t in enumerate(types[remote])]
            assert backend.ramon_get(ref, [o.id for o in objs]) == objs, remote
            assert backend.ramon_ids(ref) == [o.id for o in objs], remote  # the refused 300.json is not there


# ---- meshes cached like chunks ----------------------------------------------------------------
def cube_labels():
    labels = np.zeros(SHAPE, np.uint64)
    labels[4:10, 10:30, 20:40] = 5
    return labels


def test_the_mesh_disk_tier_is_shared_checked_and_keyed_by_content(tmp_path, monkeypatch):
    pytest.importorskip("zmesh")
    import ndfs.tools.mesh as mesh_mod
    from ndfs.tools.mesh import MeshCache, decode_mesh, mesh_label

    expect = mesh_label(cube_labels(), 5, voxel_size_nm=VOXEL, offset=OFFSET)  # uncached
    runs = []  # zmesh runs from here on
    real = mesh_mod._mesh_tight
    monkeypatch.setattr(mesh_mod, "_mesh_tight", lambda *a: runs.append(1) or real(*a))
    mask = (cube_labels() == 5).astype(np.uint8)
    first = MeshCache(disk_dir=tmp_path / "meshes")
    a = first.mesh_of_mask(mask, OFFSET, VOXEL, label=5)
    assert len(runs) == 1 and first.stats()["computed"] == 1 and first.stats()["disk_entries"] == 1
    np.testing.assert_array_equal(a.vertices, expect.vertices)
    np.testing.assert_array_equal(a.faces, expect.faces)
    assert first.mesh_of_mask(mask, OFFSET, VOXEL, label=5) is a and len(runs) == 1  # memory tier
    second = MeshCache(disk_dir=tmp_path / "meshes")  # as another process would: same directory
    b = second.mesh_of_mask(mask, OFFSET, VOXEL, label=5)
    assert len(runs) == 1 and second.stats()["disk_hits"] == 1 and second.stats()["computed"] == 0
    np.testing.assert_array_equal(b.vertices, a.vertices)
    np.testing.assert_array_equal(b.faces, a.faces)
    import trimesh

    assert trimesh.Trimesh(b.vertices, b.faces, process=False).is_watertight  # still a closed surface
    corrupt_every_entry(tmp_path / "meshes")
    third = MeshCache(disk_dir=tmp_path / "meshes")
    c = third.mesh_of_mask(mask, OFFSET, VOXEL, label=5)
    assert third.stats()["corrupt"] == 1 and third.stats()["computed"] == 1 and len(runs) == 2
    np.testing.assert_array_equal(c.vertices, a.vertices)
    assert all(decode_mesh(v) is not None for v in entries(tmp_path / "meshes").values())  # rewritten whole
    mask[4:6] = 0  # another mask (a write somewhere): another key, never the old mesh
    d = MeshCache(disk_dir=tmp_path / "meshes").mesh_of_mask(mask, OFFSET, VOXEL, label=5)
    assert len(runs) == 3 and d.bounds[0][2] == a.bounds[0][2] + 2 * VOXEL[0]
    for cache in (first, second, third):
        cache.close()


def test_cache_info_and_clear_cover_the_mesh_tier(tmp_path, capsys):
    pytest.importorskip("zmesh")
    from ndfs.cache.disk import open_disk_cache
    from ndfs.cli.commands import main
    from ndfs.core.config import CacheConfig
    from ndfs.tools.mesh import MeshCache, mesh_disk_dir

    config = tmp_path / "ndfs.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    with open_disk_cache(tmp_path / "cache", 2**20) as chunks:
        chunks.set("a-chunk", b"payload")
    meshes = MeshCache(disk_dir=mesh_disk_dir(CacheConfig(dir=tmp_path / "cache")))
    meshes.mesh_of_mask((cube_labels() == 5).astype(np.uint8), OFFSET, VOXEL, label=5)
    meshes.close()
    assert main(["--config", str(config), "cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["disk"]["entries"] == 1 and info["meshes"]["entries"] == 1
    assert main(["--config", str(config), "cache", "clear"]) == 0
    assert "removed 1 cached chunks and 1 meshes" in capsys.readouterr().out
    assert main(["--config", str(config), "cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["disk"]["entries"] == 0 and info["meshes"]["entries"] == 0


def test_the_mesh_disk_tier_stays_within_its_budget(tmp_path):
    pytest.importorskip("zmesh")
    from ndfs.tools.mesh import MeshCache

    cache = MeshCache(max_bytes=2**20, disk_dir=tmp_path / "meshes", disk_bytes=200_000)
    for i in range(40):  # 40 different objects, a few tens of KiB of mesh each
        mask = np.zeros((16, 24, 24), np.uint8)
        mask[2:14, 3:8 + i % 15, 4:20] = 1
        mask[i % 16] = 1
        cache.mesh_of_mask(mask, (i, 0, 0), (1.0, 1.0, 1.0), simplify=0)
    stats = cache.stats()
    assert stats["computed"] == 40 and stats["disk_bytes"] <= 200_000 and 0 < stats["disk_entries"] < 40
    cache.close()


def test_an_unusable_mesh_disk_tier_leaves_meshes_in_memory(tmp_path, caplog):
    pytest.importorskip("zmesh")
    from ndfs.tools.mesh import MeshCache

    (tmp_path / "a-file").write_text("not a directory")
    cache = MeshCache(disk_dir=tmp_path / "a-file" / "meshes")
    mesh = cache.mesh_of_mask((cube_labels() == 5).astype(np.uint8), OFFSET, VOXEL, label=5)
    assert len(mesh.faces) > 0 and cache.mesh_of_mask((cube_labels() == 5).astype(np.uint8), OFFSET, VOXEL,
                                                      label=5) is mesh
    assert cache.stats()["disk_dir"] is None and "keeping meshes in memory only" in caplog.text


def entries(disk_dir) -> dict:
    import diskcache

    with diskcache.Cache(str(disk_dir)) as c:
        return {k: c[k] for k in c.iterkeys()}


def corrupt_every_entry(disk_dir) -> None:
    """Flip one byte in the middle of every stored mesh (the entry stays, its checksum no longer holds)."""
    import diskcache

    with diskcache.Cache(str(disk_dir)) as c:
        for key in list(c.iterkeys()):
            value = bytearray(c[key])
            value[len(value) // 2] ^= 0xFF
            c[key] = bytes(value)


def obj_bounds(text: str) -> tuple[np.ndarray, np.ndarray]:
    xyz = np.array([[float(v) for v in line.split()[1:4]] for line in text.splitlines() if line.startswith("v ")])
    return xyz.min(axis=0), xyz.max(axis=0)


@needs_fuse
def test_a_new_mount_serves_meshes_from_disk_detects_corruption_and_never_serves_a_stale_one(tmp_path, monkeypatch):
    """Four mounts (processes) over one store and one cache directory.

    The second runs where zmesh cannot be imported, so a mesh it serves came from the disk tier.
    """
    pytest.importorskip("zmesh")
    import tifffile

    from ndfs.tools.mesh import decode_mesh

    store = LocalBackend(tmp_path / "store", create=True)
    ref = ("p", "cells")
    store.create_volume(ref, SHAPE, "uint64", kind="annotation", offset=OFFSET, chunk_shape=CHUNK,
                        voxel_size_nm=VOXEL)
    store.write(ref, Box(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE))), 0, cube_labels())
    small = ramon.RamonSegment(id=6)
    small.voxels = ramon.Voxels(np.ones((2, 3, 3), np.uint8), (20, 60, 60))
    store.ramon_put(ref, [ramon.RamonSegment(id=5), small])
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n\n'
                      f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    blocked = tmp_path / "no-zmesh"
    (blocked / "zmesh").mkdir(parents=True)
    (blocked / "zmesh" / "__init__.py").write_text('raise ImportError("zmesh is blocked by the test")\n')
    rdir = tmp_path / "mnt" / "local" / "p" / "cells" / "ramon"
    vz, vy, vx = VOXEL

    with mounted(config, tmp_path / "mnt"):
        first = (rdir / "5.obj").read_text()
    lo, hi = obj_bounds(first)  # the cube z 4:10, y 10:30, x 20:40 (plus the offset), within a voxel
    np.testing.assert_allclose(lo, [(20 + 16) * vx, (10 + 8) * vy, (4 + 2) * vz], atol=0, rtol=0.02)
    np.testing.assert_allclose(hi, [(40 + 16) * vx, (30 + 8) * vy, (10 + 2) * vz], atol=0, rtol=0.02)
    assert len(entries(tmp_path / "cache" / "meshes")) == 1

    monkeypatch.setenv("PYTHONPATH", str(blocked))
    with mounted(config, tmp_path / "mnt"):
        assert (rdir / "5.obj").read_text() == first  # no zmesh here: from the disk tier
        assert (rdir / "5.ply").read_bytes().startswith(b"ply\n")
        with pytest.raises(OSError) as no_zmesh:  # a mesh never made before cannot be made here
            (rdir / "6.obj").read_text()
        assert no_zmesh.value.errno == errno.ENOTSUP  # the mesh extra is missing, not an I/O error
    monkeypatch.delenv("PYTHONPATH")

    corrupt_every_entry(tmp_path / "cache" / "meshes")
    with pytest.raises(ValueError):
        decode_mesh(next(iter(entries(tmp_path / "cache" / "meshes").values())))
    with mounted(config, tmp_path / "mnt"):
        assert (rdir / "5.obj").read_text() == first  # detected, computed again
    (payload,) = entries(tmp_path / "cache" / "meshes").values()
    assert len(decode_mesh(payload).vertices) > 0  # and stored whole again

    grown = cube_labels()
    grown[4:10, 10:30, 40:50] = 5  # another process writes: the cube grows in x
    store.write(ref, Box(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE))), 0, grown)
    with mounted(config, tmp_path / "mnt"):
        after = (rdir / "5.obj").read_text()
        assert obj_bounds(after)[1][0] == pytest.approx((50 + 16) * vx, abs=vx)  # not the stale mesh
        plane = tifffile.imread(tmp_path / "mnt" / "local" / "p" / "cells" / "0" / "z" / "6.tif")
        plane[plane == 5] = 0
        tifffile.imwrite(tmp_path / "mnt" / "local" / "p" / "cells" / "0" / "z" / "6.tif", plane)  # z 4 of the cube
        lo2, _ = obj_bounds((rdir / "5.obj").read_text())
        assert lo2[2] == pytest.approx((5 + 2) * vz, rel=0.02)  # a write through the mount: a new mesh
    assert len(entries(tmp_path / "cache" / "meshes")) == 3
