"""``ndfs serve --protocol precomputed``: tensorstore and CloudVolume read it equal to the store, meshes and
segment properties included, over HTTP that browsers accept (CORS, preflight, ranges, HEAD, 404, gzip)."""

import gzip
import json

import numpy as np
import pytest
import requests

from ndfs.core.geometry import Box
from ndfs.serve.common import WsgiServer
from ndfs.serve.limits import MemoryBudget
from ndfs.serve.precomputed import PrecomputedApp
from ndfs.stores.local import LocalBackend
from ndfs.testing.serve import served
from ndfs.tools.demo import make_demo
from ndfs.tools.mesh import MeshCache, mesh_label
from ndfs.volume import Volume

ts = pytest.importorskip("tensorstore")
pytest.importorskip("compressed_segmentation")
pytest.importorskip("zmesh")

EM, CELLS = ("demo", "em"), ("demo", "cells")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("precomputed") / "store"
    backend = make_demo(str(path), shape=(40, 200, 232), progress=False, chunk_shape=(16, 128, 128))
    yield path, backend
    backend.close()


@pytest.fixture(scope="module")
def server(store):
    app = PrecomputedApp(store[1], mesh_cache=MeshCache())
    with WsgiServer(app) as srv:
        yield srv


def whole(backend, ref, level):
    return backend.read(ref, backend.info(ref).level(level).box, level)


def open_ts(server, ref, level):
    return ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"{server.url}/{'/'.join(ref)}/",
                    "scale_index": level}).result()


def triangles(vertices, faces) -> list:
    """A mesh as its sorted triangles, each its three corners in a canonical order (CloudVolume may merge
    and reorder vertices)."""
    v = np.asarray(vertices, np.float32)
    return sorted(tuple(sorted(tuple(v[i].tolist()) for i in face)) for face in np.asarray(faces))


@pytest.mark.parametrize("ref", [EM, CELLS], ids=["image", "labels"])
def test_tensorstore_reads_every_scale_equal_to_the_store(server, store, ref):
    backend = store[1]
    info = requests.get(f"{server.url}/{'/'.join(ref)}/info").json()
    assert info["type"] == ("segmentation" if ref == CELLS else "image")
    assert [s["encoding"] for s in info["scales"]] == ["compressed_segmentation" if ref == CELLS else "raw"] * 4
    for level in range(4):
        lv = backend.info(ref).level(level)
        scale = info["scales"][level]
        assert scale["size"] == list(lv.shape[::-1]) and scale["resolution"] == list(lv.voxel_size_nm[::-1])
        assert scale["chunk_sizes"] == [[min(c, s) for c, s in zip((128, 128, 16), lv.shape[::-1])]]
        got = open_ts(server, ref, level).read().result()[..., 0]  # x y z
        np.testing.assert_array_equal(got.T, whole(backend, ref, level))


def test_a_region_costs_one_request_per_chunk_it_touches(server, store):
    t = open_ts(server, EM, 0)
    server.counter.reset()
    region = t[100:140, 0:60, 10:20].read().result()  # x 100:140 crosses the chunk line at 128; z 10:20 at 16
    np.testing.assert_array_equal(region[..., 0].T, store[1].read(EM, Box((10, 0, 100), (20, 60, 140)), 0))
    chunks = server.counter.count("GET", "/demo/em/0/", 200)
    assert chunks == 4 and server.counter.snapshot()["requests"] == 4


def test_cloudvolume_reads_images_labels_and_meshes_equal_to_the_store(server, store):
    cloudvolume = pytest.importorskip("cloudvolume")
    backend = store[1]
    for ref in (EM, CELLS):
        for mip in (0, 1):
            cv = cloudvolume.CloudVolume(f"precomputed://{server.url}/{'/'.join(ref)}", mip=mip, progress=False)
            np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, whole(backend, ref, mip))
    cv = cloudvolume.CloudVolume(f"precomputed://{server.url}/demo/cells", progress=False)
    labels = whole(backend, CELLS, 0)
    ids = [int(i) for i in np.unique(labels) if i]
    assert len(ids) >= 3
    for label in ids[:3]:
        got = cv.mesh.get(label)
        got = got[label] if isinstance(got, dict) else got
        want = mesh_label(Volume(backend, CELLS, 0), label)  # the mesh level of this small volume is 0
        assert triangles(got.vertices, got.faces) == triangles(want.vertices, want.faces)
        zz, yy, xx = np.nonzero(labels == label)
        lo = np.array([xx.min(), yy.min(), zz.min()]) * (4.0, 4.0, 40.0)
        hi = (np.array([xx.max(), yy.max(), zz.max()]) + 1) * (4.0, 4.0, 40.0)
        assert (got.vertices.min(axis=0) >= lo - 0.01).all() and (got.vertices.max(axis=0) <= hi + 0.01).all()


def test_meshes_are_made_once_and_again_after_a_write(store, tmp_path):
    backend = store[1]
    cache = MeshCache()
    app = PrecomputedApp(backend, mesh_cache=cache)
    label = int(whole(backend, CELLS, 0).max())
    with WsgiServer(app) as srv:
        manifest = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0").json()
        assert manifest == {"fragments": [f"{label}:0:0"]}
        first = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0:0").content
        again = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0:0").content
        assert first == again and cache.misses == 1 and app.index.scans == 1
        nv = int(np.frombuffer(first[:4], "<u4")[0])
        assert len(first) == 4 + 12 * nv + 12 * ((len(first) - 4 - 12 * nv) // 12) and nv > 0
        box = Box((0, 0, 0), (2, 8, 8))
        old = backend.read(CELLS, box, 0)
        try:
            backend.write(CELLS, box, 0, np.full(box.shape, label, np.uint64))  # the object grows
            grown = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0:0").content
            assert grown != first and cache.misses == 2 and app.index.scans == 2
        finally:
            backend.write(CELLS, box, 0, old)
        back = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0:0").content
        assert back == first and cache.misses == 2  # the same voxels again: the mesh kept for them


def test_segment_properties_name_type_and_tag_the_ramon_objects(server, store):
    backend = store[1]
    ids = backend.ramon_ids(CELLS)
    doc = requests.get(f"{server.url}/demo/cells/segment_properties/info").json()
    assert doc["@type"] == "neuroglancer_segment_properties" and doc["inline"]["ids"] == [str(i) for i in ids]
    props = {p["id"]: p for p in doc["inline"]["properties"]}
    objs = backend.ramon_get(CELLS, ids)
    assert props["label"]["values"] == [f"{o.TYPE} {o.id}" for o in objs]
    tags = props["tags"]["tags"]
    for obj, values in zip(objs, props["tags"]["values"]):
        assert obj.TYPE in [tags[i] for i in values]
    assert "kind=cell" in props["description"]["values"][0]
    info = requests.get(f"{server.url}/demo/cells/info").json()
    assert info["segment_properties"] == "segment_properties" and info["mesh"] == "mesh"
    (cell,) = backend.ramon_get(CELLS, [ids[0]])
    cell.kvpairs["name"] = "the first cell"
    backend.ramon_put(CELLS, [cell])
    try:
        doc = requests.get(f"{server.url}/demo/cells/segment_properties/info").json()
        assert doc["inline"]["properties"][0]["values"][0] == "the first cell"
    finally:
        del cell.kvpairs["name"]
        backend.ramon_put(CELLS, [cell])


def test_browsers_get_cors_preflight_ranges_head_and_gzip_only_as_content_encoding(server):
    url = f"{server.url}/demo/em/0/0-128_0-128_0-16"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and len(plain.content) == 128 * 128 * 16
    assert plain.headers["Access-Control-Allow-Origin"] == "*" and plain.headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in plain.headers
    pre = requests.options(url, headers={"Origin": "http://viewer", "Access-Control-Request-Method": "GET",
                                         "Access-Control-Request-Headers": "range"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "range" in pre.headers["Access-Control-Allow-Headers"].lower()
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]
    part = requests.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == plain.content[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(plain.content)}"
    assert "Content-Range" in part.headers["Access-Control-Expose-Headers"]
    tail = requests.get(url, headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == plain.content[-7:]
    assert tail.headers["Content-Range"] == f"bytes {len(plain.content) - 7}-{len(plain.content) - 1}/{len(plain.content)}"
    past = requests.get(url, headers={"Range": f"bytes={len(plain.content)}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(plain.content)}"
    head = requests.head(url, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(plain.content))
    raw = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True)
    assert raw.headers["Content-Encoding"] == "gzip" and raw.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(raw.raw.read()) == plain.content
    info = requests.get(f"{server.url}/demo/em/info", headers={"Accept-Encoding": "gzip"})
    assert json.loads(info.content)["data_type"] == "uint8"  # requests undoes the Content-Encoding
    assert requests.post(url).status_code == 405


@pytest.mark.parametrize("tail", [
    "demo/em/0/1-129_0-128_0-16",      # off the chunk grid
    "demo/em/0/0-128_0-128_0-15",      # a chunk cut short
    "demo/em/0/0-128_0-128_48-64",     # past the volume
    "demo/em/9/0-128_0-128_0-16",      # no such level
    "demo/nothing/info",               # no such channel
    "demo/em/mesh/info",               # images have no meshes
    "demo/cells/mesh/999999:0",        # an id without voxels
    "demo/cells/mesh/1:0:9",           # a level that does not exist
    "demo/em/whatever",
], ids=["off-grid", "short", "past-end", "level", "channel", "image-mesh", "no-voxels", "mesh-level", "other"])
def test_absent_files_are_404_not_400(server, tail):
    got = requests.get(f"{server.url}/{tail}")
    assert got.status_code == 404, got.text
    assert got.headers["Access-Control-Allow-Origin"] == "*" and got.text.strip()


def test_chunks_and_mesh_scans_are_within_the_bounds(store):
    backend = store[1]
    with WsgiServer(PrecomputedApp(backend, budget=MemoryBudget(100_000, slots=2),
                                   max_scan_bytes=1_000_000, mesh_cache=MeshCache())) as srv:
        big = requests.get(f"{srv.url}/demo/cells/0/0-128_0-128_0-16")  # 2 MiB of uint64: past the budget
        assert big.status_code == 413 and "memory" in big.text
        assert requests.get(f"{srv.url}/demo/em/3/0-29_0-25_0-16").status_code == 200  # small ones pass
        label = int(whole(backend, CELLS, 0).max())
        scan = requests.get(f"{srv.url}/demo/cells/mesh/{label}:0")
        assert scan.status_code == 413 and "scan" in scan.text


def test_the_cli_serves_with_tokens_and_preflights_pass_without_one(store):
    path = store[0]
    with served("precomputed", path, "--token", "s3cret") as srv:
        url = f"{srv.url}/demo/em/info"
        assert requests.get(url).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer s3cret"}).json()["type"] == "image"
        assert requests.options(url, headers={"Access-Control-Request-Headers": "authorization"}).status_code == 204
        got = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 1,
                       "kvstore": {"driver": "http", "base_url": f"{srv.url}/demo/cells/",
                                   "headers": ["Authorization: Token s3cret"]}}).result().read().result()
        np.testing.assert_array_equal(got[..., 0].T, whole(LocalBackend(str(path)), CELLS, 1))
