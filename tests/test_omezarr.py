"""OME-Zarr: ``ndfs serve --protocol zarr`` and the mount's ``<channel>.ome.zarr/`` folders, read by tensorstore,
zarr-python and ome-zarr-py equal to the store, each fetching only the chunks it touches."""

import json
import os

import numpy as np
import pytest
import requests

from ndfs.core.geometry import Box
from ndfs.serve.common import WsgiServer
from ndfs.serve.zarr import ZarrApp
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.serve import served
from ndfs.tools.demo import make_demo

ts = pytest.importorskip("tensorstore")
zarr = pytest.importorskip("zarr")

# the served tree (and the mount's folders) hold both dialects; zarr-python says which it takes each time
pytestmark = pytest.mark.filterwarnings("ignore:Both zarr.json")

EM, CELLS = ("demo", "em"), ("demo", "cells")
CHUNK = (16, 128, 128)
SHAPE = (40, 200, 232)  # edge chunks on every axis


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("omezarr")
    backend = make_demo(str(root / "store"), shape=SHAPE, progress=False, chunk_shape=CHUNK)
    yield root, backend
    backend.close()


@pytest.fixture(scope="module")
def server(store):
    with WsgiServer(ZarrApp(store[1])) as srv:
        yield srv


def whole(backend, ref, level):
    return backend.read(ref, backend.info(ref).level(level).box, level)


def chunks_touched(z, y, x, chunk=CHUNK) -> int:
    return np.prod([len(range(a.start // c, (a.stop - 1) // c + 1)) for a, c in zip((z, y, x), chunk)])


@pytest.mark.parametrize("driver", ["zarr", "zarr3"])
def test_tensorstore_reads_every_level_and_the_labels_equal_to_the_store(server, store, driver):
    backend = store[1]
    for level in range(4):
        got = ts.open({"driver": driver, "kvstore": f"{server.url}/demo/em/{level}/"}).result().read().result()
        np.testing.assert_array_equal(got, whole(backend, EM, level))
    labels = ts.open({"driver": driver, "kvstore": f"{server.url}/demo/em/labels/cells/1/"}).result()
    np.testing.assert_array_equal(labels.read().result(), whole(backend, CELLS, 1))


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_python_opens_both_dialects_with_ome_metadata(server, store, fmt):
    group = zarr.open_group(f"{server.url}/demo/em", mode="r", zarr_format=fmt)
    ms = group.attrs["multiscales"][0] if fmt == 2 else group.attrs["ome"]["multiscales"][0]
    assert (group.attrs["multiscales"][0]["version"] if fmt == 2 else group.attrs["ome"]["version"]) == \
        ("0.4" if fmt == 2 else "0.5")
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and ms["axes"][0]["unit"] == "nanometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [list(lv.voxel_size_nm) for lv in store[1].info(EM).levels]
    for level in (0, 2):
        np.testing.assert_array_equal(group[str(level)][:], whole(store[1], EM, level))
    labels = zarr.open_group(f"{server.url}/demo/em/labels", mode="r", zarr_format=fmt)
    names = labels.attrs["labels"] if fmt == 2 else labels.attrs["ome"]["labels"]
    assert names == ["cells"]
    np.testing.assert_array_equal(labels["cells"]["0"][:], whole(store[1], CELLS, 0))


def test_ome_zarr_py_reads_the_image_its_pyramid_and_its_labels(server, store):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(f"{server.url}/demo/em"))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs) and len(image.data) == 4
    for level, data in enumerate(image.data):
        np.testing.assert_array_equal(np.asarray(data), whole(store[1], EM, level))
    label = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(label) == 1
    np.testing.assert_array_equal(np.asarray(label[0].data[0]), whole(store[1], CELLS, 0))


def test_a_region_fetches_only_the_chunks_it_touches(server, store):
    z, y, x = slice(10, 20), slice(100, 150), slice(0, 60)
    want = store[1].read(EM, Box((10, 100, 0), (20, 150, 60)), 0)
    arr = ts.open({"driver": "zarr3", "kvstore": f"{server.url}/demo/em/0/"}).result()
    server.counter.reset()
    np.testing.assert_array_equal(arr[z, y, x].read().result(), want)
    assert server.counter.count("GET", "/demo/em/0/c/", 200) == chunks_touched(z, y, x) == 4
    assert server.counter.snapshot()["requests"] == 4
    server.counter.reset()
    v2 = zarr.open_array(f"{server.url}/demo/em/0", mode="r", zarr_format=2)
    np.testing.assert_array_equal(v2[z, y, x], want)
    chunk_gets = [p for m, p, s in server.counter._log if "/demo/em/0/" in p and p.split("/")[-1].isdigit()]
    assert len(chunk_gets) == 4


def test_absent_keys_are_404_and_answers_are_browser_friendly(server):
    ok = requests.get(f"{server.url}/demo/em/0/c/2/1/1", headers={"Accept-Encoding": "identity"})
    assert ok.status_code == 200 and len(ok.content) == np.prod(CHUNK)  # an edge chunk, stored full-size
    assert ok.headers["Access-Control-Allow-Origin"] == "*"
    for tail in ("demo/em/0/c/3/0/0", "demo/em/0/0/0", "demo/em/4/.zarray", "demo/em/labels/other/zarr.json",
                 "demo/cells/labels/zarr.json", "demo/nothing/zarr.json", "demo/em/0/.zattrs"):
        got = requests.get(f"{server.url}/{tail}")
        assert got.status_code == 404, tail
    cells = requests.get(f"{server.url}/demo/cells/zarr.json").json()["attributes"]["ome"]
    assert "image-label" in cells and cells["version"] == "0.5"


def test_the_cli_serves_zarr(store):
    with served("zarr", store[0] / "store") as srv:
        meta = requests.get(f"{srv.url}/demo/em/0/.zarray").json()
        assert meta["compressor"] is None and meta["chunks"] == list(CHUNK) and meta["dimension_separator"] == "/"


# ---- the mount ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnt(store):
    why = fuse_unavailable()
    if why:
        pytest.skip(why)
    root = store[0]
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(root / "ndfs.toml", root / "mnt"):
        yield root / "mnt"


def served_reads(mnt) -> int:
    return json.loads((mnt / ".ndfs" / "stats.json").read_text())["local"]["served"]["reads"]


def test_the_mount_lists_ome_zarr_folders_with_exact_sizes_and_reads_nothing_to_list_them(mnt, store):
    demo = mnt / "local" / "demo"
    before = served_reads(mnt)
    assert sorted(os.listdir(demo)) == ["cells", "cells.ome.zarr", "em", "em.ome.zarr"]
    folder = demo / "em.ome.zarr"
    assert sorted(os.listdir(folder)) == [".zattrs", ".zgroup", "0", "1", "2", "3", "labels", "zarr.json"]
    assert sorted(os.listdir(folder / "0")) == [".zarray", "0", "1", "2", "c", "zarr.json"]
    sizes = {os.stat(folder / "0" / "2" / "1" / x).st_size for x in os.listdir(folder / "0" / "2" / "1")}
    assert sizes == {int(np.prod(CHUNK))}  # edge chunks too: full-size, uncompressed
    assert os.stat(folder / "labels" / "cells" / "0" / "c" / "0" / "0" / "0").st_size == int(np.prod(CHUNK)) * 8
    assert served_reads(mnt) == before
    with pytest.raises(OSError):
        (folder / "0" / "c" / "0" / "0" / "0").write_bytes(b"x")


def test_readers_open_the_mounts_ome_zarr_equal_to_the_store_fetching_only_what_they_touch(mnt, store):
    backend = store[1]
    folder = mnt / "local" / "demo" / "em.ome.zarr"
    z, y, x = slice(10, 20), slice(100, 150), slice(0, 60)
    want = backend.read(EM, Box((10, 100, 0), (20, 150, 60)), 0)
    for fmt in (2, 3):
        group = zarr.open_group(str(folder), mode="r", zarr_format=fmt)
        before = served_reads(mnt)
        np.testing.assert_array_equal(group["0"][z, y, x], want)
        assert served_reads(mnt) - before == chunks_touched(z, y, x) == 4
        np.testing.assert_array_equal(group["labels"]["cells"]["2"][:], whole(backend, CELLS, 2))
    arr = ts.open({"driver": "zarr3", "kvstore": f"file://{folder}/1/"}).result()
    before = served_reads(mnt)
    np.testing.assert_array_equal(arr[0:16, 0:100, 0:116].read().result(),
                                  backend.read(EM, Box((0, 0, 0), (16, 100, 116)), 1))
    assert served_reads(mnt) - before == 1  # level 1 is 100 x 116: one chunk in y and x
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(folder)))())
    assert len(nodes[0].data) == 4
    np.testing.assert_array_equal(np.asarray(nodes[0].data[3]), whole(backend, EM, 3))
    label = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)][0]
    np.testing.assert_array_equal(np.asarray(label.data[1]), whole(backend, CELLS, 1))
