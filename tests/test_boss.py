"""The BOSS driver and `ndfs serve --protocol boss`, over real sockets, checked with the real intern client.

Hierarchy used throughout: the reference project is built in STORE/ndfs, so the
local path ndfs/conf/<channel> is BOSS collection "ndfs", experiment "conf".
A second experiment ndfs/big holds a mostly empty 112x1100x1100 channel for
counting cuboid-aligned requests.
"""

import errno
import io
import json
import os
import subprocess
import sys
import time

import blosc
import numpy as np
import pytest
import requests
import tifffile

from ndfs.stores.boss import BossBackend, blosc_encode
from ndfs.stores.boss_grid import cuboid_pieces
from ndfs.stores.local import LocalBackend
from ndfs.core.config import RemoteConfig
from ndfs.stack import open_backend
from ndfs.core.errors import BackendError, BadRegion, NotFound, PermissionDenied, Timeout
from ndfs.core.geometry import Box
from ndfs.serve.boss import BossApp
from ndfs.serve.common import ServeOptions, WsgiServer
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.reference import CHANNELS, build_reference_store
from ndfs.testing.serve import served

COLL, EXP = "ndfs", "conf"
BIG = (COLL, "big", "img")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("boss-store")
    local, oracle = build_reference_store(root / COLL)
    local.create_volume(("big", "img"), (112, 1100, 1100), "uint8", voxel_size_nm=(40, 4, 4), levels=2)
    return root, oracle


@pytest.fixture(scope="module")
def server(store):
    with WsgiServer(BossApp(LocalBackend(store[0]))) as srv:
        yield srv


@pytest.fixture
def boss(server):
    backend = BossBackend(server.url, "x", backoff_s=0.01)
    yield backend
    backend.close()


def ref(channel):
    return (COLL, EXP, channel)


def askable(oracle, channel, level):
    """The part of a level the BOSS answers: it checks every resolution against the level-0 frame start."""
    box, start = oracle.box(channel, level), oracle.box(channel, 0).start
    return Box(tuple(max(a, s) for a, s in zip(box.start, start)), box.stop)


def readable(oracle, channel, box, level):
    """What the driver reads at a box: the oracle's voxels, zeros below the level-0 frame start."""
    out = oracle.read(channel, box, level).copy()
    inside = askable(oracle, channel, level).intersect(box)
    keep = np.zeros(box.shape, bool)
    if inside is not None:
        keep[inside.slices(box.start)] = True
    out[~keep] = 0
    return out


# ---- the driver ---------------------------------------------------------------
def test_the_driver_shows_collections_experiments_and_channels_as_folders(boss):
    assert boss.children(()) == [COLL]
    assert boss.children((COLL,)) == ["big", EXP]
    assert boss.children((COLL, EXP)) == ["em16", "em8", "labels", "notes", "scratch"]
    assert boss.is_volume((COLL, EXP)) is False and boss.is_volume(ref("em8")) is True
    info = boss.info(ref("labels"))
    assert info.kind == "annotation" and info.dtype == np.uint64
    assert info.levels[0].chunk_shape == (16, 512, 512)
    assert info.extra["boss"]["coord_frame"] == "CF_ndfs_conf"


def test_an_aligned_2x2x2_cuboid_read_makes_exactly_8_cutout_requests(store, server, boss):
    local = LocalBackend(store[0])
    rng = np.random.default_rng(3)
    for z, y, x in [(0, 0, 0), (20, 600, 700), (31, 1000, 1000)]:
        patch = Box((z, y, x), (z + 1, y + 20, x + 20))
        local.write(BIG, patch, 0, rng.integers(1, 256, size=patch.shape, dtype=np.uint8))
    box = Box((0, 0, 0), (32, 1024, 1024))
    boss.info(BIG)
    server.counter.reset()
    got = boss.read(BIG, box, 0)
    assert server.counter.count("GET", "/cutout/") == 8
    np.testing.assert_array_equal(got, local.read(BIG, box, 0))
    server.counter.reset()
    boss.read(BIG, Box((5, 100, 500), (9, 120, 530)), 0)  # straddles one x boundary
    assert server.counter.count("GET", "/cutout/") == 2
    assert len(cuboid_pieces(box, 1, max_bytes=2**20)) == 32  # a smaller budget splits cuboids further


@pytest.mark.parametrize("max_bytes", [2**20, 10_000, 2_000, 800])
def test_request_pieces_tile_the_box_on_the_cuboid_grid_within_the_budget(max_bytes):
    box = Box((5, 500, 500), (20, 530, 1030))  # with 800 bytes, even one row of a cuboid is split
    pieces = cuboid_pieces(box, 8, max_bytes)
    covered = np.zeros(box.shape, np.uint8)
    for p in pieces:
        covered[p.slices(box.start)] += 1
        assert p.size * 8 <= max_bytes
        assert all(a // c == (b - 1) // c for a, b, c in zip(p.start, p.stop, (16, 512, 512)))  # one cuboid
    assert (covered == 1).all()


def test_writes_across_cuboid_boundaries_replace_the_box_and_the_store_sees_them(store, server, boss):
    box = Box((10, 500, 490), (20, 530, 530))  # 2 cuboids in z, 2 in y, 2 in x
    data = np.random.default_rng(5).integers(0, 4, size=box.shape, dtype=np.uint8)  # many zeros
    boss.write(BIG, box, 0, np.full(box.shape, 9, np.uint8))
    server.counter.reset()
    boss.write(BIG, box, 0, data)  # zeros must erase the 9s although BOSS posts merge
    assert server.counter.count("PUT", "/to_black/") == 8 and server.counter.count("POST", "/cutout/") == 8
    np.testing.assert_array_equal(boss.read(BIG, box, 0), data)
    np.testing.assert_array_equal(LocalBackend(store[0]).read(BIG, box, 0), data)


def test_reads_and_writes_survive_a_30_percent_fault_rate(store):
    # 8 retries: at 5 attempts (the default) one of ~60 logical requests fails all of them with p ~ 0.14
    _, oracle = store
    with WsgiServer(BossApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=0.3, seed=11)) as srv:
        with BossBackend(srv.url, "x", retries=8, backoff_s=0.001) as flaky:
            for channel in ("em8", "em16", "labels"):
                for level in (0, 1):
                    box = oracle.box(channel, level)
                    np.testing.assert_array_equal(flaky.read(ref(channel), box, level),
                                                  readable(oracle, channel, box, level))
            box = Box((3, 5, 7), (8, 30, 40))
            new = np.random.default_rng(2).integers(0, 256, size=box.shape, dtype=np.uint8)
            flaky.write(ref("scratch"), box, 0, new)
            np.testing.assert_array_equal(flaky.read(ref("scratch"), box, 0), new)
            flaky.write(ref("scratch"), box, 0, oracle.read("scratch", box, 0))
            stats = srv.counter.snapshot()
            assert stats["faults"] > 5 and flaky.http_stats["retries"] == stats["faults"]
            assert stats["requests"] == flaky.http_stats["requests"]


def test_a_fault_rate_of_1_fails_with_eio_in_bounded_time(store):
    with WsgiServer(BossApp(LocalBackend(store[0])), options=ServeOptions(fault_rate=1.0)) as srv:
        with BossBackend(srv.url, "x", retries=3, backoff_s=0.01) as broken:
            started = time.monotonic()
            with pytest.raises(BackendError) as caught:
                broken.read(ref("em8"), Box((3, 5, 7), (4, 6, 8)), 0)
            assert caught.value.errno == errno.EIO and time.monotonic() - started < 10
            assert srv.counter.snapshot()["requests"] == 4


def test_the_default_timeouts_are_the_specs_connect_10_s_and_read_120_s():
    with BossBackend("http://127.0.0.1:9", "x") as backend:  # no request is made
        assert backend._client.timeout == (10.0, 120.0)


def test_a_stalled_server_times_out(store):
    with WsgiServer(BossApp(LocalBackend(store[0])), options=ServeOptions(latency_s=1.0)) as srv:
        with BossBackend(srv.url, "x", timeout_s=0.2, retries=1, backoff_s=0.01) as slow:
            with pytest.raises(Timeout) as caught:
                slow.children(())
            assert caught.value.errno == errno.ETIMEDOUT


def test_http_errors_map_to_the_error_tree(store, server, boss):
    with pytest.raises(NotFound) as caught:
        boss.info(ref("no-such-channel"))
    assert "404" in str(caught.value) and "Channel no-such-channel not found" in str(caught.value)
    with pytest.raises(NotFound):
        boss.children(("no-such-collection",))
    with WsgiServer(BossApp(LocalBackend(store[0]), tokens=["right"])) as guarded:
        with BossBackend(guarded.url, "wrong") as denied:
            with pytest.raises(PermissionDenied) as caught:
                denied.children(())
            assert caught.value.errno == errno.EACCES
        with BossBackend(guarded.url, "right") as allowed:
            assert allowed.children(()) == [COLL]


def test_the_token_never_shows_in_reprs_or_logs(server, monkeypatch, caplog, tmp_path):
    secret = "s3cret-t0ken"
    backend = BossBackend(server.url, secret)
    assert secret not in repr(backend) and "token=***" in repr(backend)
    monkeypatch.setenv("NDFS_TEST_BOSS_TOKEN", secret)
    rc = RemoteConfig("boss", "boss", url=server.url, token_env="NDFS_TEST_BOSS_TOKEN")
    assert secret not in repr(rc)
    configured = open_backend(rc)
    assert configured._token == secret and secret not in repr(configured)
    caplog.set_level("DEBUG")
    configured.read(ref("em8"), Box((3, 5, 7), (4, 9, 9)), 0)
    assert caplog.records and secret not in caplog.text
    configured.close()
    backend.close()


def test_intern_cfg_gives_the_token_only_for_its_own_host(store, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".intern").mkdir()
    cfg = tmp_path / ".intern" / "intern.cfg"
    with WsgiServer(BossApp(LocalBackend(store[0]), tokens=["from-intern"])) as srv:
        host = srv.url.removeprefix("http://")
        cfg.write_text(f"[Default]\nprotocol = http\nhost = {host}\ntoken = from-intern\n")
        with open_backend(RemoteConfig("b", "boss", url=srv.url)) as backend:
            assert backend.children(()) == [COLL]
        cfg.write_text("[Default]\nprotocol = https\nhost = api.bossdb.io\ntoken = from-intern\n")
        with open_backend(RemoteConfig("b", "boss", url=srv.url)) as backend:
            with pytest.raises(PermissionDenied):
                backend.children(())


# ---- the server, request by request -----------------------------------------
def _error(resp):
    return resp.status_code, resp.json()["code"]


def test_the_server_answers_bad_cutouts_with_the_spec_status_and_json(server):
    base = f"{server.url}/v1/cutout/{COLL}/{EXP}"
    get = lambda path, **kw: requests.get(f"{base}/{path}", timeout=10, **kw)  # noqa: E731
    assert _error(get("em8/0/0:200/5:10/3:4/")) == (400, 1001)  # beyond the frame
    assert _error(get("em8/0/10:10/5:10/3:4/")) == (400, 1001)  # start == stop
    assert _error(get("em8/3/7:10/5:10/3:4/")) == (400, 1002)
    assert get("nope/0/7:10/5:10/3:4/").json() == {"status": 404, "code": 4000, "message": "Channel nope not found"}
    assert _error(requests.get(f"{server.url}/v1/cutout/x/{EXP}/em8/0/7:10/5:10/3:4/", timeout=10)) == (404, 4000)
    assert _error(get("em8/0/7:10/5:10/3:4/?filter=1,2")) == (400, 2003)
    assert _error(get("em8/0/7:10/5:10/3:4/5:6/")) == (400, 1000)
    post = lambda path, body: requests.post(f"{base}/{path}", data=body, timeout=10)  # noqa: E731
    assert _error(post("scratch/0/7:10/5:10/3:4/", blosc_encode(np.ones(10, np.uint8)))) == (400, 2002)
    assert _error(post("scratch/0/7:10/5:10/3:4/", b"not blosc at all, not at all")) == (400, 2001)
    assert _error(post("scratch/2/7:9/5:7/3:4/", blosc_encode(np.ones((1, 2, 2), np.uint8)))) == (400, 9001)
    routeless = requests.get(f"{server.url}/v1/cutout/{COLL}/{EXP}/em8/0/-1:3/5:10/3:4/", timeout=10)
    assert routeless.status_code == 404 and routeless.headers["Content-Type"] == "text/plain"


def test_every_resolution_is_checked_against_the_level_0_frame_as_production_does(server, store):
    _, oracle = store  # frame x 7:97, y 5:75; level 1 holds x 3:49, y 2:38
    base = f"{server.url}/v1/cutout/{COLL}/{EXP}/em8/1"
    below = requests.get(f"{base}/3:20/5:20/3:4/", timeout=10)  # inside level 1, below the frame's x start
    assert _error(below) == (400, 1001) and below.json()["message"] == "Incorrect cutout arguments 1/3:20/5:20/3:4"
    inside = requests.get(f"{base}/7:20/5:20/3:4/", timeout=10)
    got = np.frombuffer(blosc.decompress(inside.content), np.uint8).reshape(1, 15, 13)
    np.testing.assert_array_equal(got, oracle.read("em8", Box((3, 5, 7), (4, 20, 20)), 1))
    past = requests.get(f"{base}/40:97/30:75/3:4/", timeout=10)  # past level 1's extent, inside the frame: zeros
    got = np.frombuffer(blosc.decompress(past.content), np.uint8).reshape(1, 45, 57)
    np.testing.assert_array_equal(got[:, :8, :9], oracle.read("em8", Box((3, 30, 40), (4, 38, 49)), 1))
    assert not got[:, 8:, :].any() and not got[:, :, 9:].any()


def test_the_driver_reads_zeros_below_the_frame_start_at_coarser_levels_and_refuses_to_write_there(boss, store):
    _, oracle = store
    box = oracle.box("scratch", 1)  # z 3:23, y 2:38, x 3:49
    np.testing.assert_array_equal(boss.read(ref("scratch"), box, 1), readable(oracle, "scratch", box, 1))
    strip = Box((3, 2, 3), (4, 5, 20))  # wholly below the frame's y start: nothing is asked of the server
    assert not boss.read(ref("scratch"), strip, 1).any()
    with pytest.raises(BadRegion, match="below the coordinate frame's start"):
        boss.write(ref("scratch"), Box((3, 2, 3), (4, 10, 20)), 1, np.ones((1, 8, 17), np.uint8))
    keep = oracle.read("scratch", Box((3, 5, 7), (4, 10, 20)), 1)
    boss.write(ref("scratch"), Box((3, 2, 3), (4, 10, 20)), 1,  # zeros below the start are left alone
               np.pad(keep, ((0, 0), (3, 0), (4, 0))))
    np.testing.assert_array_equal(boss.read(ref("scratch"), Box((3, 5, 7), (4, 10, 20)), 1), keep)


def test_cutouts_decode_with_typesize_quirk_time_axis_and_path_leniency(server, store):
    _, oracle = store
    url = f"{server.url}/v1/cutout/{COLL}/{EXP}/labels/0/7:17/5:9/3:5/?access-mode=no-cache"
    resp = requests.get(url, headers={"Accept": "application/blosc"}, timeout=10)
    assert resp.headers["Content-Type"] == "application/blosc" and resp.content[3] == 0x40
    got = np.frombuffer(blosc.decompress(resp.content), np.uint64).reshape(2, 4, 10)
    np.testing.assert_array_equal(got, oracle.read("labels", Box((3, 5, 7), (5, 9, 17)), 0))
    timed = requests.get(f"{server.url}/v1/cutout/{COLL}/{EXP}/labels/0/7:17/5:9/3:5/0:1", timeout=10)
    assert len(blosc.decompress(timed.content)) == 1 * 2 * 4 * 10 * 8
    assert requests.get(f"{server.url}/v1/collection//", timeout=10).json() == {"collections": [COLL]}
    assert requests.get(f"{server.url}/latest/collection/{COLL}", timeout=10).json()["name"] == COLL
    assert requests.get(f"{server.url}/ping/", timeout=10).status_code == 200


def test_the_size_cap_gives_413_before_anything_is_read(store):
    cap = 10 * 20 * 30  # bytes
    with WsgiServer(BossApp(LocalBackend(store[0]), max_cutout_bytes=cap)) as srv:
        base = f"{srv.url}/v1/cutout/{COLL}/{EXP}"
        assert requests.get(f"{base}/em8/0/7:37/5:25/3:13/", timeout=10).status_code == 200  # exactly the cap
        over = requests.get(f"{base}/em8/0/7:38/5:25/3:13/", timeout=10)
        assert over.status_code == 413 and over.json() == {
            "status": 413, "code": 2000,
            "message": "Cutout request is over 500MB when uncompressed. Reduce cutout dimensions."}
        assert requests.get(f"{base}/em16/0/7:38/5:25/3:13/", timeout=10).status_code == 413
        assert requests.get(f"{base}/labels/0/7:22/5:25/3:13/", timeout=10).status_code == 200  # uint64: bytes / 4
        assert requests.get(f"{base}/labels/0/7:23/5:25/3:13/", timeout=10).status_code == 413


def test_posts_merge_and_to_black_erases(server, store):
    _, oracle = store
    base = f"{server.url}/v1/cutout/{COLL}/{EXP}/scratch/0/7:11/5:8/3:5/"
    before = oracle.read("scratch", Box((3, 5, 7), (5, 8, 11)), 0)
    read = lambda: np.frombuffer(blosc.decompress(requests.get(base, timeout=10).content),  # noqa: E731
                                 np.uint8).reshape(2, 3, 4)
    posted = requests.post(base, data=blosc_encode(np.zeros((2, 3, 4), np.uint8)), timeout=10)
    assert posted.status_code == 201 and posted.content == b"" and posted.headers["Content-Length"] == "0"
    np.testing.assert_array_equal(read(), before)  # posted zeros never erase
    ones = np.zeros((2, 3, 4), np.uint8)
    ones[0, 0, 0] = 1
    requests.post(base, data=blosc_encode(ones), timeout=10)
    np.testing.assert_array_equal(read(), np.where(ones != 0, ones, before))
    assert requests.put(base.replace("/cutout/", "/cutout/to_black/"), timeout=10).status_code == 200
    assert not read().any()
    requests.post(base, data=blosc_encode(before), timeout=10)  # restore
    np.testing.assert_array_equal(read(), before)


def test_bad_and_missing_tokens_get_401_when_tokens_are_configured(store):
    with WsgiServer(BossApp(LocalBackend(store[0]), tokens=["t1", "t2"])) as srv:
        url = f"{srv.url}/v1/collection/"
        assert requests.get(url, headers={"Authorization": "Token t2"}, timeout=10).status_code == 200
        bad = requests.get(url, headers={"Authorization": "Token nope"}, timeout=10)
        assert bad.status_code == 401 and bad.json() == {"detail": "Invalid token."}
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(f"{srv.url}/ping/", timeout=10).status_code == 200


def test_the_bandwidth_cap_paces_responses(store):
    with WsgiServer(BossApp(LocalBackend(store[0])), options=ServeOptions(bandwidth_bps=200_000)) as srv:
        started = time.monotonic()
        body = requests.get(f"{srv.url}/v1/cutout/{COLL}/{EXP}/em16/0/7:97/5:75/3:23/", timeout=30).content
        assert len(body) > 150_000 and time.monotonic() - started >= 0.6 * len(body) / 200_000


# ---- the real intern client through `ndfs serve --protocol boss` ----------------
@pytest.fixture(scope="module")
def cli_server(store):
    with served("boss", store[0]) as srv:
        yield srv.url


@pytest.fixture
def intern_env(cli_server, monkeypatch, tmp_path):
    """intern.array reads INTERN_* when ~/.intern/intern.cfg does not exist (HOME is an empty folder here)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("INTERN_PROTOCOL", "http")
    monkeypatch.setenv("INTERN_HOST", cli_server.removeprefix("http://"))
    monkeypatch.setenv("INTERN_TOKEN", "x")
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": cli_server.removeprefix("http://"), "token": "x"})


@pytest.mark.parametrize("channel", ["em8", "em16", "labels"])
def test_intern_reads_cutouts_equal_to_the_local_store(store, intern_env, channel):
    _, oracle = store
    chan = intern_env.get_channel(channel, COLL, EXP)
    for level in (0, 1):
        box = askable(oracle, channel, level)
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        got = intern_env.get_cutout(chan, level, [x0, x1], [y0, y1], [z0, z1])
        assert got.dtype == np.dtype(chan.datatype)
        np.testing.assert_array_equal(got, oracle.read(channel, box, level))
    assert intern_env.get_experiment(COLL, EXP).num_hierarchy_levels == 3
    assert intern_env.get_coordinate_frame("CF_ndfs_conf").x_stop == 97


def test_intern_writes_a_cutout_that_ndfs_and_the_store_read_back(store, cli_server, intern_env):
    chan = intern_env.get_channel("labels", COLL, EXP)
    box = Box((6, 20, 30), (9, 44, 70))
    data = np.random.default_rng(8).integers(1, 2**50, size=box.shape, dtype=np.uint64)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    intern_env.create_cutout(chan, 0, [x0, x1], [y0, y1], [z0, z1], data)
    with BossBackend(cli_server, "x") as driver:
        np.testing.assert_array_equal(driver.read(ref("labels"), box, 0), data)
        np.testing.assert_array_equal(LocalBackend(store[0]).read(ref("labels"), box, 0), data)
        driver.write(ref("labels"), box, 0, store[1].read("labels", box, 0))  # restore


def test_intern_splits_a_large_read_into_6_aligned_gets(store, server):
    from intern.remote.boss import BossRemote

    remote = BossRemote({"protocol": "http", "host": server.url.removeprefix("http://"), "token": "x"})
    chan = remote.get_channel("img", COLL, "big")
    LocalBackend(store[0]).write(BIG, Box((90, 590, 1090), (100, 600, 1100)), 0, np.full((10, 10, 10), 7, np.uint8))
    server.counter.reset()
    got = remote.get_cutout(chan, 0, [0, 1100], [0, 600], [0, 100], parallel=False)
    assert server.counter.count("GET", "/cutout/", status=200) == 6
    np.testing.assert_array_equal(got, LocalBackend(store[0]).read(BIG, Box((0, 0, 0), (100, 600, 1100)), 0))
    assert got[90:, 590:, 1090:].min() == 7


def test_intern_array_creates_a_channel_and_round_trips_through_ndfs(store, cli_server, intern_env):
    import intern

    arr = intern.array("bossdb://made/by_intern/seg", create_new=True, dtype="uint64",
                       extents=(20, 600, 700), voxel_size=(40, 4, 4), downsample_levels=2)
    assert arr.shape == (20, 600, 700) and arr.dtype == "uint64"
    data = np.arange(1, 5 * 40 * 600 + 1, dtype=np.uint64).reshape(5, 40, 600)
    arr[2:7, 500:540, 10:610] = data
    np.testing.assert_array_equal(arr[2:7, 500:540, 10:610], data)
    with BossBackend(cli_server, "x") as driver:
        info = driver.info(("made", "by_intern", "seg"))
        assert info.kind == "annotation" and len(info.levels) == 2 and info.levels[0].voxel_size_nm == (40, 4, 4)
        np.testing.assert_array_equal(driver.read(("made", "by_intern", "seg"), Box((2, 500, 10), (7, 540, 610)), 0),
                                      data)
    local = LocalBackend(store[0])
    np.testing.assert_array_equal(local.read(("made", "by_intern", "seg"), Box((2, 500, 10), (7, 540, 610)), 0), data)


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_mount_of_the_boss_remote_shows_the_tree_and_what_intern_wrote(store, cli_server, intern_env, tmp_path):
    _, oracle = store
    box = Box((10, 5, 7), (11, 75, 97))  # the whole z = 10 plane
    data = np.random.default_rng(4).integers(1, 2**16, size=box.shape, dtype=np.uint16)
    intern_env.create_cutout(intern_env.get_channel("em16", COLL, EXP), 0, [7, 97], [5, 75], [10, 11], data)
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{cli_server}"\n\n[cache]\ndir = "cache"\n')
    try:
        with mounted(config, tmp_path / "mnt"):
            root = tmp_path / "mnt" / "boss"
            assert COLL in os.listdir(root) and set(CHANNELS) <= set(os.listdir(root / COLL / EXP))
            np.testing.assert_array_equal(tifffile.imread(root / COLL / EXP / "em16" / "0" / "z" / "10.tif"), data[0])
            plane = readable(oracle, "em8", Box((4, 2, 3), (5, 38, 49)), 1)[0]  # zeros below the frame start
            np.testing.assert_array_equal(tifffile.imread(root / COLL / EXP / "em8" / "1" / "z" / "4.tif"), plane)
            info = json.loads((root / COLL / EXP / "labels" / "info.json").read_text())
            assert info["dtype"] == "uint64" and "token" not in json.dumps(info).lower()
    finally:
        with BossBackend(cli_server, "x") as driver:
            driver.write(ref("em16"), box, 0, oracle.read("em16", box, 0))


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_wrong_token_is_eacces_and_a_bad_range_enoent_through_the_mount(store, tmp_path, monkeypatch):
    import errno

    with WsgiServer(BossApp(LocalBackend(store[0]), tokens=["right"])) as guarded:
        config = tmp_path / "ndfs.toml"
        config.write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{guarded.url}"\ntoken_env = "NDFS_TEST_TOKEN"\n'
                          f'[cache]\ndir = "cache"\n')
        monkeypatch.setenv("NDFS_TEST_TOKEN", "wrong")
        with mounted(config, tmp_path / "bad"):
            with pytest.raises(PermissionError) as info:
                os.listdir(tmp_path / "bad" / "boss")
            assert info.value.errno == errno.EACCES
            assert "boss" in os.listdir(tmp_path / "bad")  # the mount still answers
        monkeypatch.setenv("NDFS_TEST_TOKEN", "right")
        with mounted(config, tmp_path / "good"):
            level = tmp_path / "good" / "boss" / COLL / EXP / "em8" / "0"
            assert os.path.getsize(level / "z" / "3.tif") > 0
            with pytest.raises(FileNotFoundError):
                os.stat(level / "z" / "2.tif")  # before the volume's z offset of 3


def test_serve_refuses_a_missing_store_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ndfs", "serve", "--protocol", "boss", "--store",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not a directory" in done.stderr


# ---- resources, time and levels as a single-user BOSS -----------------------------
@pytest.fixture
def fresh(tmp_path):
    """A server over an empty store, and a request helper answering (status, JSON or bytes)."""
    (tmp_path / "s").mkdir()
    with WsgiServer(BossApp(LocalBackend(tmp_path / "s"))) as srv:
        def call(method, path, body=None, **kw):
            resp = requests.request(method, f"{srv.url}/v1/{path}", json=body, timeout=30, **kw)
            kind = resp.headers.get("Content-Type", "")
            return resp.status_code, (resp.json() if kind == "application/json" and resp.content else resp.content)
        yield srv, call, tmp_path / "s"


FRAME = {"x_start": 0, "x_stop": 64, "y_start": -5, "y_stop": 27, "z_start": 0, "z_stop": 8,
         "x_voxel_size": 4, "y_voxel_size": 4, "z_voxel_size": 4, "voxel_unit": "nanometers"}


def _project(call, method="anisotropic", levels=2, samples=1):
    assert call("POST", "collection/col", {"description": "d"})[0] == 201
    status, frame = call("POST", "coord/fr", FRAME)
    assert status == 201 and frame["y_start"] == -5  # a negative start is a frame like any other
    status, exp = call("POST", "collection/col/experiment/ex", {
        "coord_frame": "fr", "num_hierarchy_levels": levels, "hierarchy_method": method,
        "num_time_samples": samples, "time_step": 2, "time_step_unit": "nanoseconds"})
    assert status == 201 and (exp["hierarchy_method"], exp["num_time_samples"]) == (method, samples)


def _post(call, path, array):
    return call("POST", f"cutout/{path}", data=blosc_encode(array))


def _get(call, path, dtype, shape):
    status, body = call("GET", f"cutout/{path}")
    assert status == 200, body
    return np.frombuffer(blosc.decompress(body), dtype).reshape(shape)


def test_reserve_hands_out_ids_past_every_label_already_written(fresh):
    _, call, _ = fresh
    _project(call)
    assert call("POST", "collection/col/experiment/ex/channel/seg", {"type": "annotation", "datatype": "uint64"})[0] \
        == 201
    labels = np.zeros((1, 2, 3), np.uint64)
    labels[0, 1, 2] = 5000
    assert _post(call, "col/ex/seg/0/0:3/0:2/0:1/", labels)[0] == 201
    status, first = call("GET", "reserve/col/ex/seg/10")
    assert status == 200 and first["start_id"] == 5001 and first["count"] == "10"
    assert call("GET", "reserve/col/ex/seg/1")[1]["start_id"] == 5011
    assert call("GET", f"reserve/col/ex/seg/{2**20 + 1}")[0] == 400  # at most 2**20 a request


def test_resources_are_updated_renamed_and_deleted_as_production_allows(fresh):
    _, call, root = fresh
    _project(call)
    made = lambda name, **kw: call("POST", f"collection/col/experiment/ex/channel/{name}",  # noqa: E731
                                   {"type": "image", "datatype": "uint8", **kw})
    assert made("src")[0] == 201 and made("rel")[0] == 201
    assert made("bad", sources=["nope"])[0] == 400  # sources must be channels of the experiment
    assert made("bad", sources=["src"], related=["src"])[0] == 400
    status, chan = made("img", sources=["src"], related=["rel"], default_time_sample=0)
    assert status == 201 and chan["sources"] == ["src"] and chan["related"] == ["rel"]
    assert call("GET", "collection/col/experiment/ex/channel/rel")[1]["related"] == ["img"]  # symmetric
    _post(call, "col/ex/img/0/0:4/0:2/0:1/", np.arange(1, 9, dtype=np.uint8).reshape(1, 2, 4))
    assert call("DELETE", "collection/col/experiment/ex/channel/src")[1]["code"] == 4003  # img's source
    assert call("PUT", "collection/col/experiment/ex/channel/img", {"datatype": "uint16"})[1]["code"] == 1003
    status, chan = call("PUT", "collection/col/experiment/ex/channel/img",
                        {"name": "img2", "description": "moved", "base_resolution": 1})
    assert status == 200 and (chan["name"], chan["description"], chan["base_resolution"]) == ("img2", "moved", 1)
    assert chan["sources"] == [] and chan["related"] == []  # an update without them clears them, as production
    assert call("GET", "collection/col/experiment/ex/channel/img")[0] == 404
    assert _error_of(call("GET", "cutout/col/ex/img2/0/0:4/0:2/0:1/")) == (400, 1002)  # resolutions 1 and 2 now
    np.testing.assert_array_equal(LocalBackend(root).read(("col", "ex", "img2"), Box((0, 0, 0), (1, 2, 4)), 0),
                                  np.arange(1, 9, dtype=np.uint8).reshape(1, 2, 4))  # the voxels moved with it
    status, exp = call("PUT", "collection/col/experiment/ex", {"description": "e", "num_time_samples": 3})
    assert status == 200 and exp["num_time_samples"] == 3 and exp["time_step"] == 2
    assert call("PUT", "collection/col/experiment/ex", {"hierarchy_method": "isotropic"})[1]["code"] == 1003
    assert call("PUT", "coord/fr", {"x_stop": 9})[1]["code"] == 1003  # only name and description
    assert call("PUT", "coord/fr", {"name": "fr2", "description": "f"})[1]["name"] == "fr2"
    assert call("GET", "collection/col/experiment/ex")[1]["coord_frame"] == "fr2"
    assert call("DELETE", "collection/col/experiment/ex")[1]["code"] == 4003  # it has channels
    for name in ("img2", "src", "rel"):
        assert call("DELETE", f"collection/col/experiment/ex/channel/{name}")[0] == 204
    assert call("DELETE", "coord/fr2")[1]["code"] == 4003  # ex uses it
    assert call("DELETE", "collection/col/experiment/ex")[0] == 204
    assert call("DELETE", "coord/fr2")[0] == 204 and call("DELETE", "collection/col")[0] == 204
    assert call("GET", "collection/")[1] == {"collections": []} and call("GET", "coord/")[1] == {"coords": []}
    assert not (root / "col" / "ex" / "img2").exists()  # deleting a channel deletes its voxels


def _error_of(answer):
    status, body = answer
    return status, body["code"]


def test_time_samples_are_volumes_of_their_own_and_read_zeros_until_written(fresh):
    _, call, root = fresh
    _project(call, samples=4)
    call("POST", "collection/col/experiment/ex/channel/img", {"type": "image", "datatype": "uint16"})
    data = np.arange(1, 2 * 3 * 2 * 4 + 1, dtype=np.uint16).reshape(2, 3, 2, 4)
    assert _post(call, "col/ex/img/0/0:4/0:2/0:3/1:3/", data)[0] == 201
    np.testing.assert_array_equal(_get(call, "col/ex/img/0/0:4/0:2/0:3/0:4/", np.uint16, (4, 3, 2, 4)),
                                  np.concatenate([np.zeros((1, 3, 2, 4), np.uint16), data, np.zeros_like(data[:1])]))
    assert LocalBackend(root).is_volume(("col", "ex", "img@time", "2"))
    assert not _get(call, "col/ex/img/0/0:4/0:2/0:3/", np.uint16, (3, 2, 4)).any()  # the default sample, 0
    call("PUT", "collection/col/experiment/ex/channel/img", {"default_time_sample": 2})
    np.testing.assert_array_equal(_get(call, "col/ex/img/0/0:4/0:2/0:3/", np.uint16, (3, 2, 4)), data[1])
    assert call("PUT", "cutout/to_black/col/ex/img/0/0:4/0:2/0:3/2:3/")[0] == 200
    assert not _get(call, "col/ex/img/0/0:4/0:2/0:3/2:3/", np.uint16, (1, 3, 2, 4)).any()
    assert _error_of(_post(call, "col/ex/img/0/0:4/0:2/0:3/4:5/", data[:1])) == (400, 9001)  # past the samples
    assert call("GET", "collection/col/experiment/ex/channel/img")[1]["default_time_sample"] == 2
    assert call("GET", "collection/col/experiment/ex/channel/")[1] == {"channels": ["img"]}  # @time is not a channel


def test_isotropic_levels_are_computed_from_level_0_halving_z_too(fresh):
    _, call, _ = fresh
    _project(call, method="isotropic", levels=3)
    call("POST", "collection/col/experiment/ex/channel/img", {"type": "image", "datatype": "uint8"})
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(8, 32, 64), dtype=np.uint8)
    assert _post(call, "col/ex/img/0/0:64/0:27/0:8/", data[:, :27])[0] == 201
    got = _get(call, "col/ex/img/1/0:32/0:16/0:4/", np.uint8, (4, 16, 32))
    xy = data.reshape(8, 16, 2, 32, 2).astype(np.uint32)
    xy = (xy.sum(axis=(2, 4)) + 2) // 4  # the store's 2x2 mean, rounded
    want = (xy[0::2] + xy[1::2] + 1) // 2
    np.testing.assert_array_equal(got[:, :13], want[:, :13].astype(np.uint8))  # y 26: the volume ends at 27
    assert _get(call, "col/ex/img/2/0:16/0:8/0:2/", np.uint8, (2, 8, 16)).shape == (2, 8, 16)
    assert _error_of(_post(call, "col/ex/img/1/0:32/0:16/0:4/", want.astype(np.uint8))) == (400, 9001)
    assert call("GET", "downsample/col/ex/img")[1]["extent"]["1"] == [32, 14, 4]  # z halved too


def test_images_and_tiles_are_planes_and_accounts_answer_as_to_a_user_without_rights(fresh):
    from PIL import Image

    _, call, _ = fresh
    _project(call, levels=1)
    call("POST", "collection/col/experiment/ex/channel/img", {"type": "image", "datatype": "uint8"})
    data = np.random.default_rng(1).integers(1, 256, size=(8, 32, 64), dtype=np.uint8)
    _post(call, "col/ex/img/0/0:64/0:27/0:8/", data[:, :27])
    status, png = call("GET", "image/col/ex/img/xy/0/0:64/0:20/3/")
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), data[3, :20])
    status, png = call("GET", "image/col/ex/img/xz/0/0:64/5/0:8/")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), data[:, 5])
    status, tile = call("GET", "tile/col/ex/img/xy/16/0/1/0/2/")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(tile))), data[2, 0:16, 16:32])
    assert _error_of(call("GET", "image/col/ex/img/xy/0/0:64/0:20/3:4/")) == (400, 1002)
    assert _error_of(call("GET", "tile/col/ex/img/xy/64/0/1/0/2/")) == (400, 1001)  # past the frame
    assert call("GET", "groups/") == (200, {"groups": []})
    assert _error_of(call("GET", "groups/lab")) == (404, 4001)
    assert _error_of(call("POST", "groups/lab")) == (403, 3000)
    assert call("GET", "permissions/") == (200, {"permission-sets": []})
    assert _error_of(call("POST", "permissions/", {"group": "g"})) == (403, 3000)
    assert _error_of(call("GET", "sso/user/alice")) == (404, 4002)
    assert _error_of(call("GET", "sso/user-role/alice")) == (403, 3000)
