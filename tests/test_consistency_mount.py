"""Issue 25 through real mounts: another client of the service writes, creates, resizes and deletes, and
the mount shows it within the README's bound ("Consistency"), at the request counts the README states.

The servers are `ndfs serve`'s apps in this process (their request counters count what the mount
sends); the other client is the DVID server's own HTTP API for DVID and intern's BossRemote for the
BOSS. Polls have generous timeouts; what is asserted is request counts, never times.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time

import numpy as np
import pytest
import requests
import tifffile

from ndfs.core.config import DVID_MAX_AGE_S, WRITABLE_MAX_AGE_S
from ndfs.core.geometry import Box
from ndfs.serve.boss import BossApp
from ndfs.serve.common import WsgiServer
from ndfs.serve.dvid import DvidApp
from ndfs.stores.local import LocalBackend
from ndfs.testing.mount import fuse_unavailable, mounted, ndfs, wait_until

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def stats(mnt, remote):
    return json.loads((mnt / ".ndfs" / "stats.json").read_text())[remote]


# ---- DVID: the repo's mutation id, checked every few seconds; locked nodes never -------------------------
def call(url, method, path, **kw):
    resp = requests.request(method, url + path, timeout=30, **kw)
    assert resp.status_code == 200, resp.text
    return resp


def post_voxels(url, uuid, name, box: Box, data: np.ndarray):
    (z0, y0, x0), (sz, sy, sx) = box.start, box.shape
    call(url, "POST", f"/api/node/{uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{x0}_{y0}_{z0}",
         data=np.ascontiguousarray(data).tobytes())


def new_repo(url, alias: str, shape=(64, 64, 64)) -> tuple[str, np.ndarray]:
    """A repo with a versioned uint8blk instance ``em`` (32^3 blocks) holding random voxels."""
    root = call(url, "POST", "/api/repos", data=json.dumps({"alias": alias, "description": "t"})).json()["root"]
    call(url, "POST", f"/api/repo/{root}/instance", data=json.dumps({"typename": "uint8blk", "dataname": "em"}))
    data = np.random.default_rng(len(alias)).integers(0, 200, shape, dtype=np.uint8)
    post_voxels(url, root, "em", Box((0, 0, 0), shape), data)
    return root, data


@pytest.fixture
def dvid(tmp_path):
    """A DVID server over an empty store, and an ndfs.toml naming it (the default max age unless given)."""
    LocalBackend(tmp_path / "store", create=True)
    with WsgiServer(DvidApp(LocalBackend(tmp_path / "store"))) as server:
        def config(extra: str = ""):
            path = tmp_path / "ndfs.toml"
            path.write_text(f'[remotes.dvid]\nkind = "dvid"\nurl = "{server.url}"\n{extra}\n'
                            f'[cache]\ndir = "{tmp_path / "cache"}"\n')
            return path
        yield server, config


def repo_checks(server, root) -> int:
    """Requests that tell the driver a repo's state: its info, and the listing of every repo."""
    return server.counter.count("GET", f"/api/repo/{root}/info") + server.counter.count("GET", "/api/repos/info")


def raw_gets(server) -> int:
    return server.counter.count("GET", "/raw/")


def test_a_mount_of_an_open_dvid_node_shows_another_client_s_write_at_the_next_check(dvid, tmp_path):
    server, config = dvid
    root, data = new_repo(server.url, "open")
    mnt = tmp_path / "mnt"
    with mounted(config(), mnt, "--no-prefetch"):  # the default max age: an open node is checked every 5 s
        plane = mnt / "dvid" / "open" / "master" / "em" / "0" / "z" / "10.tif"
        np.testing.assert_array_equal(tifffile.imread(plane), data[10])
        server.counter.reset()
        started = time.monotonic()
        post_voxels(server.url, root, "em", Box((0, 0, 0), (32, 64, 64)), np.full((32, 64, 64), 250, np.uint8))
        assert wait_until(lambda: (tifffile.imread(plane) == 250).all(), timeout=120, interval=0.2)
        waited = time.monotonic() - started
        checks = repo_checks(server, root)
        # seen at the first check after the write: a few checks at most, one per 5 s of waiting
        assert 1 <= checks <= math.ceil(waited / DVID_MAX_AGE_S) + 1
        assert raw_gets(server) == 1  # the slab the plane is in, fetched again (4 blocks, one request)
        entry = stats(mnt, "dvid")["cache"]["volumes"]["open/master/em"]
        assert entry["policy"] == "checked" and entry["max_age_s"] == DVID_MAX_AGE_S and entry["changes"] == 1
        # the check after a change drops what was read since once more, then the volume is kept again
        server.counter.reset()

        def refetches() -> int:
            np.testing.assert_array_equal(tifffile.imread(plane), 250)
            return raw_gets(server)

        assert wait_until(lambda: refetches() >= 1, timeout=120, interval=0.2)
        checks = repo_checks(server, root)
        assert wait_until(lambda: refetches() and repo_checks(server, root) >= checks + 2, timeout=120, interval=0.2)
        assert raw_gets(server) == 1


def test_a_locked_dvid_node_makes_no_requests_at_all_while_an_open_one_is_checked(dvid, tmp_path):
    server, config = dvid
    root, data = new_repo(server.url, "frozen")
    call(server.url, "POST", f"/api/node/{root}/commit", data=json.dumps({"note": "v1"}))
    child = call(server.url, "POST", f"/api/node/{root}/newversion", data=json.dumps({"note": "v2"})).json()["child"]
    mnt = tmp_path / "mnt"
    with mounted(config("max_age_s = 1"), mnt, "--no-prefetch"):
        locked = mnt / "dvid" / "frozen" / root / "em" / "0" / "z"
        for z in range(0, 64, 9):
            np.testing.assert_array_equal(tifffile.imread(locked / f"{z}.tif"), data[z])
        server.counter.reset()
        time.sleep(3.5)  # three checks' worth of time (and under the 10 s the mount keeps listings)
        for z in range(0, 64, 9):
            np.testing.assert_array_equal(tifffile.imread(locked / f"{z}.tif"), data[z])
        assert server.counter.snapshot()["requests"] == 0
        entry = stats(mnt, "dvid")["cache"]["volumes"][f"frozen/{root}/em"]
        assert entry["policy"] == "final" and entry["changes"] == 0
        # the same instance at the open child (master): checked, and what a client writes there shows
        opened = mnt / "dvid" / "frozen" / "master" / "em" / "0" / "z"
        np.testing.assert_array_equal(tifffile.imread(opened / "40.tif"), data[40])
        post_voxels(server.url, child, "em", Box((32, 0, 0), (64, 64, 64)), np.full((32, 64, 64), 7, np.uint8))
        assert wait_until(lambda: (tifffile.imread(opened / "40.tif") == 7).all(), timeout=120, interval=0.2)
        assert repo_checks(server, root) >= 1
        np.testing.assert_array_equal(tifffile.imread(locked / "40.tif"), data[40])  # the locked node is as it was
        assert stats(mnt, "dvid")["cache"]["volumes"]["frozen/master/em"]["policy"] == "checked"


def test_an_instance_resized_by_another_client_shows_its_new_shape(dvid, tmp_path):
    server, config = dvid
    root, _ = new_repo(server.url, "grow")
    mnt = tmp_path / "mnt"
    with mounted(config(), mnt):
        info = mnt / "dvid" / "grow" / "master" / "em" / "info.json"
        assert json.loads(info.read_text())["levels"][0]["shape_zyx"] == [64, 64, 64]
        post_voxels(server.url, root, "em", Box((64, 0, 0), (96, 64, 64)), np.ones((32, 64, 64), np.uint8))
        assert wait_until(lambda: json.loads(info.read_text())["levels"][0]["shape_zyx"] == [96, 64, 64],
                          timeout=120, interval=0.3)
        assert (tifffile.imread(info.parent / "0" / "z" / "80.tif") == 1).all()


# ---- BOSS: no change signal; a max age for what ndfs can write, none for the rest ----------------------
SHAPE = (32, 600, 600)  # 2 cuboid slabs in z; one slab is 2 x 2 cuboids


@pytest.fixture
def boss(tmp_path, monkeypatch):
    """A BOSS server over a store with coll/exp/em, intern's BossRemote on it, and an ndfs.toml with three
    remotes on it: ``boss`` (a token, max_age_s = 4), ``writer`` (a token: the default) and ``public``
    (anonymous and read-only: the default)."""
    from intern.remote.boss import BossRemote

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.intern/intern.cfg token
    monkeypatch.setenv("NDFS_TEST_BOSS_TOKEN", "x")
    local = LocalBackend(tmp_path / "store", create=True)
    local.create_volume(("coll", "exp", "em"), SHAPE, "uint8", voxel_size_nm=(40, 4, 4), levels=1)
    data = np.random.default_rng(5).integers(0, 200, SHAPE, dtype=np.uint8)
    local.write(("coll", "exp", "em"), Box((0, 0, 0), SHAPE), 0, data)
    with WsgiServer(BossApp(LocalBackend(tmp_path / "store"))) as server:
        remote = BossRemote({"protocol": "http", "host": server.url.removeprefix("http://"), "token": "x"})
        config = tmp_path / "ndfs.toml"
        config.write_text("".join(f'[remotes.{name}]\nkind = "boss"\nurl = "{server.url}"\n{extra}\n' for name, extra in (
            ("boss", 'token_env = "NDFS_TEST_BOSS_TOKEN"\nmax_age_s = 4'),
            ("writer", 'token_env = "NDFS_TEST_BOSS_TOKEN"'),
            ("public", "read_only = true"))) + f'[cache]\ndir = "{tmp_path / "cache"}"\n')
        yield server, remote, config, data


def channel_gets(server, channel="em") -> int:
    return server.counter.count("GET", f"/experiment/exp/channel/{channel}")


def test_a_writable_boss_channel_shows_what_intern_wrote_once_its_max_age_window_ends(boss, tmp_path):
    server, remote, config, data = boss
    chan = remote.get_channel("em", "coll", "exp")
    mnt = tmp_path / "mnt"
    with mounted(config, mnt, "--no-prefetch"):
        plane = mnt / "boss" / "coll" / "exp" / "em" / "0" / "z" / "5.tif"
        np.testing.assert_array_equal(tifffile.imread(plane), data[5])
        for name in ("writer", "public"):
            np.testing.assert_array_equal(tifffile.imread(mnt / name / "coll" / "exp" / "em" / "0" / "z" / "5.tif"),
                                          data[5])
        new = np.full((1, 600, 600), 251, np.uint8)
        remote.create_cutout(chan, 0, [0, 600], [0, 600], [5, 6], new)
        server.counter.reset()
        assert wait_until(lambda: (tifffile.imread(plane) == 251).all(), timeout=120, interval=0.2)
        # one window ended: the slab read again (one request per cuboid) and the channel's metadata (channel,
        # experiment, coordinate frame: one request each) fetched again, nothing more
        assert server.counter.count("GET", "/cutout/") == 4 and channel_gets(server) == 1
        assert server.counter.count("GET", "/coord/") == 1
        volumes = {name: stats(mnt, name)["cache"]["volumes"]["coll/exp/em"] for name in ("boss", "writer", "public")}
        assert (volumes["boss"]["policy"], volumes["boss"]["max_age_s"]) == ("max-age", 4.0)
        assert (volumes["writer"]["policy"], volumes["writer"]["max_age_s"]) == ("max-age", WRITABLE_MAX_AGE_S)
        assert volumes["public"]["policy"] == "kept"  # read-only and anonymous: cached until written through ndfs
        np.testing.assert_array_equal(tifffile.imread(mnt / "public" / "coll" / "exp" / "em" / "0" / "z" / "5.tif"),
                                      data[5])
        report = ndfs("--config", config, "cache", "info", "--mount", mnt).stdout
        rows = {tuple(line.split()[:4]) for line in report.splitlines()}
        assert ("REMOTE", "VOLUME", "FRESHNESS", "MAX") in rows
        assert {("boss", "coll/exp/em", "max-age", "4"), ("writer", "coll/exp/em", "max-age", "60"),
                ("public", "coll/exp/em", "kept", "-")} <= rows
        assert "s ago)" in report  # when each max-age volume was last validated


def test_a_channel_created_resized_and_deleted_by_intern_appears_changes_and_disappears(boss, tmp_path):
    from intern.resource.boss.resource import ChannelResource

    server, remote, config, _ = boss
    mnt = tmp_path / "mnt"
    with mounted(config, mnt):
        exp = mnt / "boss" / "coll" / "exp"
        assert sorted(os.listdir(exp)) == ["em", "em.ome.zarr"]  # each channel also as OME-Zarr
        chan = remote.create_project(ChannelResource("fresh", "coll", "exp", type="image", datatype="uint8"))
        data = np.full((1, 600, 600), 77, np.uint8)
        remote.create_cutout(chan, 0, [0, 600], [0, 600], [3, 4], data)
        assert wait_until(lambda: "fresh" in os.listdir(exp), timeout=120, interval=0.3)
        assert "fresh.ome.zarr" in os.listdir(exp)
        assert (tifffile.imread(exp / "fresh" / "0" / "z" / "3.tif") == 77).all()
        assert sorted(os.listdir(exp / "fresh")) == ["0", "info.json"]
        experiment = remote.get_experiment("coll", "exp")
        experiment.num_hierarchy_levels = 2
        remote.update_project("exp", experiment)
        assert wait_until(lambda: "1" in os.listdir(exp / "fresh"), timeout=120, interval=0.3)
        remote.delete_project(chan)
        assert wait_until(lambda: "fresh" not in os.listdir(exp), timeout=120, interval=0.3)
        assert "fresh.ome.zarr" not in os.listdir(exp)

        def gone() -> bool:
            try:
                tifffile.imread(exp / "fresh" / "0" / "z" / "3.tif")
            except OSError as exc:
                return exc.errno == errno.ENOENT
            return False

        assert wait_until(gone, timeout=120, interval=0.3)


# ---- precomputed over HTTP: the info's ETag, revalidated with one conditional request per max age ---------
def test_a_mount_of_an_http_precomputed_layer_sees_a_rewritten_layer_and_checks_with_304s(tmp_path):
    from cloudvolume import CloudVolume

    from ndfs.testing.http_static import StaticServer

    def write(data_xyz):  # another writer makes the layer anew: a new info and every chunk
        info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], data_xyz.shape,
                                           chunk_size=[32, 32, 8])
        cv = CloudVolume(f"file://{tmp_path / 'served' / 'em'}", info=info, progress=False, compress=False)
        cv.commit_info()
        cv[:, :, :] = data_xyz

    first = np.random.default_rng(11).integers(1, 200, (64, 64, 16), dtype=np.uint8)
    write(first)
    with StaticServer(tmp_path / "served") as server:
        config = tmp_path / "ndfs.toml"
        config.write_text(f'[remotes.pc]\nkind = "precomputed"\nurl = "{server.url}/em"\nmax_age_s = 1\n'
                          f'[cache]\ndir = "{tmp_path / "cache"}"\n')
        mnt = tmp_path / "mnt"
        with mounted(config, mnt, "--no-prefetch"):
            plane = mnt / "pc" / "em" / "0" / "z" / "5.tif"
            np.testing.assert_array_equal(tifffile.imread(plane), first[:, :, 5].T)
            server.reset()
            time.sleep(3.5)  # three checks' worth of time
            for _ in range(3):
                np.testing.assert_array_equal(tifffile.imread(plane), first[:, :, 5].T)
            # unchanged: only the info was asked for, each time answered 304 without a body
            assert set(server.keys) == {"em/info"} and server.counts["not_modified"] == server.keys["em/info"] >= 1
            assert server.bytes_sent == 0
            second = np.full((64, 64, 16), 123, np.uint8)
            write(second)
            assert wait_until(lambda: (tifffile.imread(plane) == 123).all(), timeout=120, interval=0.2)
            entry = stats(mnt, "pc")["cache"]["volumes"]["em"]
            assert entry["policy"] == "checked" and entry["max_age_s"] == 1.0 and entry["changes"] >= 1
            report = ndfs("--config", config, "cache", "info", "--mount", mnt).stdout
            assert ("pc", "em", "checked", "1") in {tuple(line.split()[:4]) for line in report.splitlines()}
