"""The ndio-style Python API: ndfs.remote / Remote over the local store and a real BOSS server on 127.0.0.1.

The reference project sits at STORE/ndfs/conf, so the same project string
"ndfs/conf" names it in the local store and as BOSS collection/experiment.
Every read is checked voxel for voxel against the reference oracle.
"""

import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ndfs
from ndfs.stores.local import LocalBackend
from ndfs.core.config import load_config
from ndfs.core.errors import BadRegion, ConfigError, NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.testing.reference import CHANNELS, OFFSET, SHAPE, build_reference_store

pytest.importorskip("waitress")
pytest.importorskip("blosc")

PROJECT = "ndfs/conf"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-store")
    _, oracle = build_reference_store(root / "ndfs")
    return root, oracle


@pytest.fixture(scope="module")
def server(store):
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import WsgiServer

    with WsgiServer(BossApp(LocalBackend(store[0]))) as srv:
        yield srv


@pytest.fixture(scope="module")
def config(store, server, tmp_path_factory):
    d = tmp_path_factory.mktemp("api-config")
    (d / "ndfs.toml").write_text(
        f'[remotes.here]\nkind = "local"\npath = "{store[0]}"\n\n'
        f'[remotes.boss]\nkind = "boss"\nurl = "{server.url}"\nbackoff_s = 0.01\n\n'
        f'[cache]\ndir = "{d / "cache"}"\n')
    return load_config(d / "ndfs.toml")


@pytest.fixture(params=["local", "boss"])
def remote(request, config):
    r = ndfs.remote("here" if request.param == "local" else "boss", config=config)
    yield r
    r.close()


def test_a_remote_opens_from_a_config_name_a_kind_url_a_plain_url_with_kind_and_a_directory(store, server, config):
    opened = [
        ndfs.remote("here", config=config), ndfs.remote("boss", config=config), ndfs.remote(config=config),
        ndfs.remote(str(store[0]), config=config), ndfs.remote(f"file://{store[0]}", config=config),
        ndfs.remote(f"boss+{server.url}", config=config, backoff_s=0.01),
        ndfs.remote(server.url, kind="boss", config=config, cache=False),
    ]
    try:
        assert [r.kind for r in opened] == ["local", "boss", "local", "local", "local", "boss", "boss"]
        for r in opened:
            assert r.list_projects() == ["ndfs"]
            assert r.list("ndfs") == ["conf"]
        assert isinstance(opened[0].backend, ndfs.api.Backend) and opened[5].raw.kind == "boss"
        from ndfs.stores.wrap import layers
        from ndfs.cache import CachedBackend

        # cache=False: the driver under the outbox only (writes keep the journal)
        assert not any(isinstance(layer, CachedBackend) for layer in layers(opened[6].backend))
    finally:
        for r in opened:
            r.close()


def test_bad_remote_names_and_urls_give_clear_errors(config, tmp_path):
    with pytest.raises(NotFound, match="no remote named 'nope'"):
        ndfs.remote("nope", config=config)
    with pytest.raises(ConfigError, match="which kind of service"):
        ndfs.remote("http://127.0.0.1:9", config=config)
    with pytest.raises(ConfigError, match="unknown remote kind 'gopher'"):
        ndfs.remote("gopher+http://127.0.0.1:9", config=config)
    with pytest.raises(ConfigError, match="names kind 'boss' but kind='dvid'"):
        ndfs.remote("boss+http://127.0.0.1:9", kind="dvid", config=config)
    with pytest.raises(ConfigError, match="KIND\\+http"):
        ndfs.remote("ftp://127.0.0.1/x", config=config)
    with pytest.raises(NotFound, match="does not exist"):
        ndfs.remote(str(tmp_path / "missing"), config=config)
    made = ndfs.remote(str(tmp_path / "new"), create=True, config=config)
    assert made.list_projects() == [] and (tmp_path / "new").is_dir()


@pytest.mark.parametrize("channel", ["em8", "em16", "labels"])
def test_get_cutout_in_the_ndio_paper_keyword_style_matches_the_oracle(remote, store, channel):
    _, oracle = store
    query = {"token": PROJECT, "channel": channel, "x_start": 9, "x_stop": 60, "y_start": 6, "y_stop": 41,
             "z_start": 4, "z_stop": 19, "resolution": 0}
    got = remote.get_cutout(**query)
    want = oracle.read(channel, Box((4, 6, 9), (19, 41, 60)), 0)
    assert got.dtype == np.dtype(CHANNELS[channel][0])
    np.testing.assert_array_equal(got, want)


def test_get_cutout_takes_ndio_positional_ranges_pairs_levels_and_xyz_order(remote, store):
    _, oracle = store
    # level 1: x and y halved, offset (3, 2, 3); the box stays above the level-0 start (3, 5, 7), below which
    # the BOSS answers nothing at coarser levels
    want = oracle.read("em8", Box((5, 5, 7), (9, 20, 30)), 1)
    a = remote.get_cutout(PROJECT, "em8", 7, 30, 5, 20, 5, 9, 1)
    b = remote.get_cutout(PROJECT, "em8", (7, 30), (5, 20), (5, 9), 1)
    c = remote.get_cutout(PROJECT, "em8", x=(7, 30), y=(5, 20), z=(5, 9), level=1)
    d = remote.get_cutout(f"{PROJECT}/em8", x=(7, 30), y=(5, 20), z=(5, 9), resolution=1, order="xyz")
    for got in (a, b, c):
        np.testing.assert_array_equal(got, want)
    assert d.shape == (23, 15, 4)
    np.testing.assert_array_equal(d, want.transpose())
    whole = remote.get_cutout(PROJECT, "em16", z=(OFFSET[0], OFFSET[0] + 2))  # x and y omitted: the whole axis
    np.testing.assert_array_equal(whole, oracle.levels["em16"][0][:2])
    assert remote.get_xy_slice(PROJECT, "em8", 10, 20, 10, 20, 7).shape == (10, 10)


@pytest.mark.parametrize("kind", ["dvid", "neurodata"])
def test_the_same_calls_work_on_dvid_and_neurodata_servers(store, kind, tmp_path):
    """Remote is generic over backends: DVID and NeuroData servers over the same data give the same voxels."""
    from ndfs.serve.common import WsgiServer

    if kind == "dvid":
        from ndfs.serve.dvid import DvidApp as App
        project = "conf/master"  # DVID: repo / branch, then the instance
    else:
        from ndfs.serve.neurodata import NeuroDataApp as App
        project = "conf"  # NeuroData: token, then the channel
    root, oracle = store
    with WsgiServer(App(LocalBackend(root / "ndfs"))) as srv:  # depth 1 = DVID repo / NeuroData token "conf"
        r = ndfs.remote(f"{kind}+{srv.url}", backoff_s=0.01, config=load_config(_empty_config(tmp_path)))
        try:
            assert r.kind == kind and "conf" in r.list_projects()
            assert {"em8", "em16", "labels"} <= set(r.get_channels(project))
            for channel in ("em8", "em16", "labels"):
                got = r.get_cutout(token=project, channel=channel, x_start=9, x_stop=60, y_start=6, y_stop=41,
                                   z_start=4, z_stop=19, resolution=0)
                np.testing.assert_array_equal(got, oracle.read(channel, Box((4, 6, 9), (19, 41, 60)), 0))
            np.testing.assert_array_equal(r.get_cutout(project, "em8", (4, 30), (3, 20), (5, 9), 1),
                                          oracle.read("em8", Box((5, 3, 4), (9, 20, 30)), 1))
            data = np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7) + 1
            r.post_cutout(project, "scratch", data, x_start=40, y_start=30, z_start=8)
            np.testing.assert_array_equal(
                LocalBackend(root).read(("ndfs", "conf", "scratch"), Box((8, 30, 40), (10, 35, 47)), 0), data)
            blob = pickle.dumps(r.volume(project, "em16"))
            np.testing.assert_array_equal(pickle.loads(blob)[5:7, 10:20, 10:20],
                                          oracle.read("em16", Box((5, 10, 10), (7, 20, 20)), 0))
        finally:
            r.close()


def _empty_config(tmp_path):
    path = tmp_path / "ndfs.toml"
    path.write_text(f'[remotes.none]\nkind = "local"\npath = "{tmp_path}"\n[cache]\ndir = "{tmp_path / "c"}"\n')
    return path


def test_bad_cutout_requests_are_refused_with_badregion(remote):
    with pytest.raises(BadRegion, match="outside"):
        remote.get_cutout(PROJECT, "em8", x=(0, 10))  # the volume starts at x 7
    with pytest.raises(BadRegion, match="disagree"):
        remote.get_cutout(PROJECT, "em8", level=0, resolution=1)
    with pytest.raises(BadRegion, match="both"):
        remote.get_cutout(PROJECT, "em8", x=(10, 20), x_start=10)
    with pytest.raises(BadRegion, match="positional"):
        remote.get_cutout(PROJECT, "em8", 1, 2)
    with pytest.raises(BadRegion, match="order"):
        remote.get_cutout(PROJECT, "em8", order="yxz")
    with pytest.raises(NotFound):
        remote.get_cutout(PROJECT, "nosuch")


def test_info_channels_and_volumes(remote, store):
    _, oracle = store
    chans = remote.get_channels(PROJECT)
    assert sorted(chans) == sorted(CHANNELS)
    info = remote.get_info(PROJECT, "labels")
    assert info.kind == "annotation" and info.dtype == np.uint64 and info.shape == SHAPE
    assert info.levels[0].offset == OFFSET and info.levels[0].voxel_size_nm == (30.0, 4.0, 4.0)
    vol = remote[f"{PROJECT}/em16"]
    assert vol.shape == SHAPE and vol.offset == OFFSET
    np.testing.assert_array_equal(vol[5:9, 10:40, 20:50], oracle.read("em16", Box((5, 10, 20), (9, 40, 50)), 0))
    # level 2 starts at (3, 1, 1); compared from the level-0 start (3, 5, 7) on, as the BOSS answers coarser levels
    np.testing.assert_array_equal(remote.volume(PROJECT, "em8", level=2)[:, 5:, 7:], oracle.levels["em8"][2][:, 4:, 6:])


def test_post_cutout_in_ndio_and_ndfs_styles_writes_what_reads_back(remote, store):
    local = LocalBackend(store[0])
    rng = np.random.default_rng(7)
    data = rng.integers(1, 255, size=(6, 11, 13), dtype=np.uint8)  # z y x
    box = remote.post_cutout(PROJECT, "scratch", data, x_start=20, y_start=15, z_start=5)
    assert box == Box((5, 15, 20), (11, 26, 33))
    np.testing.assert_array_equal(local.read(("ndfs", "conf", "scratch"), box, 0), data)
    np.testing.assert_array_equal(remote.get_cutout(PROJECT, "scratch", x=(20, 33), y=(15, 26), z=(5, 11)), data)
    # ndio: post_cutout(token, channel, x_start, y_start, z_start, data) with an (x, y, z) array
    xyz = rng.integers(1, 255, size=(9, 4, 3), dtype=np.uint8)
    remote.post_cutout(PROJECT, "scratch", 30, 40, 10, xyz, resolution=0, order="xyz")
    np.testing.assert_array_equal(local.read(("ndfs", "conf", "scratch"), Box((10, 40, 30), (13, 44, 39)), 0),
                                  xyz.transpose())
    with pytest.raises(BadRegion, match="does not fit"):
        remote.post_cutout(PROJECT, "scratch", data, x_start=90, y_start=15, z_start=5)
    with pytest.raises(BadRegion, match="cannot be stored"):
        remote.post_cutout(PROJECT, "scratch", data.astype(np.float64), x_start=20, y_start=15, z_start=5)
    with pytest.raises(BadRegion, match="3-D"):
        remote.post_cutout(PROJECT, "scratch", data[0])


def test_create_channel_where_the_store_can_and_a_clear_error_where_it_cannot(config, store):
    local = ndfs.remote("here", config=config)
    like = local.volume(PROJECT, "em16")
    vol = local.create_channel("made", "copy16", like=like, overwrite=True)
    assert (vol.shape, vol.dtype, vol.offset, vol.voxel_size_nm) == (like.shape, like.dtype, like.offset,
                                                                     like.voxel_size_nm)
    vol[:, :, :] = like[:, :, :]
    np.testing.assert_array_equal(local.get_cutout("made", "copy16"), store[1].levels["em16"][0])
    boss = ndfs.remote("boss", config=config)
    with pytest.raises(NdfsError) as err:
        boss.create_channel(PROJECT, "new", shape=(1, 1, 1))
    assert err.value.errno == errno.ENOTSUP


def test_ramon_calls_reach_the_store_through_the_cache_and_say_enotsup_where_there_is_none(config, store):
    from ndfs import ramon

    r = ndfs.remote("here", config=config)
    labels = r.volume(PROJECT, "labels")
    before = labels[:, :, :]  # warms the chunk cache, which the RAMON write below must invalidate
    (new_id,) = r.reserve_ids(PROJECT, "labels", 1)
    assert new_id > 0 and not (before == new_id).any()
    seg = ramon.RamonSegment(id=new_id, author="api-test", segmentclass="soma", kvpairs={"class": "cell"})
    seg.voxels = ramon.Voxels(np.ones((2, 3, 4), np.uint8), offset=(6, 20, 30))
    assert r.post_ramon(token=PROJECT, channel="labels", obj=seg) == new_id
    assert new_id in r.get_ramon_ids(PROJECT, "labels", "segment")
    assert new_id in r.get_ramon_ids(PROJECT, "labels", type="segment")  # the keyword ndio and backends use
    assert new_id not in r.get_ramon_ids(PROJECT, "labels", type="synapse")
    with pytest.raises(NdfsError, match="two different types"):
        r.get_ramon_ids(PROJECT, "labels", "segment", type="synapse")
    assert new_id in r.get_ramon_ids(PROJECT, "labels", kv={"class": "cell"})
    got = r.get_ramon(PROJECT, "labels", new_id)
    assert (got.id, got.author, got.kvpairs) == (new_id, "api-test", {"class": "cell"})
    assert [o.id for o in r.get_ramon(PROJECT, "labels", [new_id])] == [new_id]
    box = Box((6, 20, 30), (8, 23, 34))
    assert r.get_ramon_bounding_box(PROJECT, "labels", new_id) == box
    cut, where = r.get_ramon_cutout(PROJECT, "labels", new_id)
    assert where == box and (cut == new_id).all()
    assert (labels.read(box) == new_id).all()  # not the cached old voxels
    r.delete_ramon(PROJECT, "labels", [got])
    assert new_id not in r.get_ramon_ids(PROJECT, "labels")
    with pytest.raises(NotFound):
        r.get_ramon(PROJECT, "labels", new_id)
    boss = ndfs.remote("boss", config=config)  # the BOSS's limited RAMON: the labelled ids, no metadata yet
    assert boss.get_ramon_ids(PROJECT, "labels") == sorted(int(v) for v in np.unique(labels[:, :, :]) if v)
    from ndfs.stores.base import AnnotationStore, Backend, annotations

    assert not isinstance(Backend(), AnnotationStore)  # a store without RAMON is not an AnnotationStore
    with pytest.raises(NdfsError) as err:  # and says so when asked for one
        annotations(Backend()).ramon_ids(("any",))
    assert err.value.errno == errno.ENOTSUP and "RAMON" in str(err.value)


def test_a_volume_pickles_as_a_recipe_without_the_token(server, config, monkeypatch):
    monkeypatch.setenv("NDFS_TEST_TOKEN", "secret-token-4242")
    r = ndfs.remote(f"boss+{server.url}", token_env="NDFS_TEST_TOKEN", config=config, backoff_s=0.01)
    vol = r.volume(PROJECT, "em8")
    blob = pickle.dumps(vol)
    assert b"secret-token-4242" not in blob and b"NDFS_TEST_TOKEN" in blob
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[4:6, 10:20, 10:20], vol[4:6, 10:20, 10:20])
    local = pickle.loads(pickle.dumps(ndfs.open_volume("here/ndfs/conf/labels", config=config)))
    assert local.shape == SHAPE


def test_the_ndio_example_script_runs_the_paper_flow(tmp_path):
    pytest.importorskip("zmesh")
    pytest.importorskip("h5py")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "ndio_example.py"), "--make-demo",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "NDFS_CONFIG": ""}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "cells in the cutout:" in out
    for name in ("cutout.h5", "cutout.tif", "neuron.obj", "neuron.ply"):
        assert (tmp_path / name).is_file(), out
    import h5py
    import tifffile

    with h5py.File(tmp_path / "cutout.h5") as f:
        data = f["volume"][()]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cutout.tif"), data)
    counted = int(out.split("cells in the cutout:")[1].split()[0])
    labels = ndfs.convert.load(tmp_path / "labels.npz")
    assert counted == len(np.unique(labels[labels > 0]))


def test_the_benchmark_api_section_runs_end_to_end_at_smoke_size():
    pytest.importorskip("intern")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--api", "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    names = [f"A{i}" for i in range(1, 10)]
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line[:2] in names}
    assert sorted(rows) == names, done.stdout
    assert "intern BossRemote" in rows["A1"] and "intern DVIDRemote" in rows["A2"]
    assert "ERROR" not in done.stdout
