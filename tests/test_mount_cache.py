"""Issue-4 request counts through a real mount of a BOSS remote: scrolling, listing, remounting.

The server is `ndfs serve --protocol boss` in-process over a local store; its
own request log counts the cutout GETs ndfs makes. Counts, never times.
"""

import json
import os
import time

import numpy as np
import pytest
import tifffile

from ndfs.stores.local import LocalBackend
from ndfs.core.geometry import Box
from ndfs.serve.boss import BossApp
from ndfs.serve.common import WsgiServer
from ndfs.testing.mount import fuse_unavailable, mounted

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

SHAPE = (48, 600, 600)  # 3 cuboid slabs in z, 2 x 2 cuboids in y/x
CUBOIDS_PER_SLAB = 4


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("mount-cache")
    local = LocalBackend(root / "store", create=True)
    info = local.create_volume(("coll", "exp", "em"), SHAPE, "uint8", voxel_size_nm=(40, 4, 4), levels=1)
    data = np.random.default_rng(3).integers(0, 256, SHAPE, dtype=np.uint8)
    local.write(("coll", "exp", "em"), info.levels[0].box, 0, data)
    with WsgiServer(BossApp(LocalBackend(root / "store"))) as server:
        (root / "ndfs.toml").write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{server.url}"\n'
                                        f'[cache]\ndir = "cache"\n')
        yield root, server, data


def cutout_gets(server) -> int:
    return server.counter.count("GET", "/cutout/")


def scroll(mnt, z_range, data):
    folder = mnt / "boss" / "coll" / "exp" / "em" / "0" / "z"
    for z in z_range:
        np.testing.assert_array_equal(tifffile.imread(folder / f"{z}.tif"), data[z])


def test_scrolling_costs_one_request_per_cuboid_and_a_remount_costs_none(site):
    root, server, data = site
    server.counter.reset()
    with mounted(root / "ndfs.toml", root / "mnt", "--no-prefetch"):
        scroll(root / "mnt", range(32), data)  # two cuboid slabs, slice by slice as Fiji does
        assert cutout_gets(server) == 2 * CUBOIDS_PER_SLAB  # not one per slice (which would be 128)
        # ls -l of the z folder: sizes come from metadata alone
        before = cutout_gets(server)
        folder = root / "mnt" / "boss" / "coll" / "exp" / "em" / "0" / "z"
        sizes = {name: os.stat(folder / name).st_size for name in os.listdir(folder)}
        assert len(sizes) == SHAPE[0] and len(set(sizes.values())) == 1
        assert cutout_gets(server) == before
    # a new daemon over the warm disk cache
    server.counter.reset()
    with mounted(root / "ndfs.toml", root / "mnt2", "--no-prefetch"):
        scroll(root / "mnt2", range(32), data)
        assert cutout_gets(server) == 0


def test_sequential_scrolling_prefetches_the_next_slab(site, tmp_path):
    root, server, data = site
    config = tmp_path / "ndfs.toml"
    config.write_text((root / "ndfs.toml").read_text().replace('dir = "cache"', f'dir = "{tmp_path / "c"}"'))
    server.counter.reset()
    with mounted(config, tmp_path / "mnt"):
        scroll(tmp_path / "mnt", range(20), data)  # into the second slab: the third is prefetched
        deadline = time.monotonic() + 10
        while cutout_gets(server) < 3 * CUBOIDS_PER_SLAB and time.monotonic() < deadline:
            time.sleep(0.05)
        fetched = cutout_gets(server)
        assert fetched == 3 * CUBOIDS_PER_SLAB  # every cuboid once, the last slab ahead of the reader
        scroll(tmp_path / "mnt", range(32, 48), data)
        assert cutout_gets(server) == fetched


# ---- writes made by another process reach a running mount ----------------------------------------
def _slice(mnt, remote, ref, z):
    return tifffile.imread(mnt.joinpath(remote, *ref, "0", "z", f"{z}.tif"))


@pytest.mark.parametrize("cache", ["cache", "no-cache"])
def test_a_mount_sees_what_another_process_wrote_to_the_local_store(tmp_path, cache):
    import ndfs

    ref = ("p", "em")
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(ref, (8, 64, 64), "uint8", levels=1, chunk_shape=(8, 32, 32))
    store.write(ref, Box((0, 0, 0), (8, 64, 64)), 0, np.full((8, 64, 64), 10, np.uint8))
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n')
    with mounted(config, tmp_path / "mnt", *(["--no-cache"] if cache == "no-cache" else [])):
        assert (_slice(tmp_path / "mnt", "local", ref, 3) == 10).all()  # now in its cache and the page cache
        vol = ndfs.remote(str(tmp_path / "store")).volume(*ref)  # this process, its own cache
        vol[3:4, 0:64, 0:32] = np.full((1, 64, 32), 77, np.uint8)
        got = _slice(tmp_path / "mnt", "local", ref, 3)
        assert (got[:, :32] == 77).all() and (got[:, 32:] == 10).all()
        assert (_slice(tmp_path / "mnt", "local", ref, 4) == 10).all()
        stats = json.loads((tmp_path / "mnt" / ".ndfs" / "stats.json").read_text())
        if cache == "cache":
            assert stats["local"]["cache"]["changed_elsewhere"] == 1


def test_a_mount_sees_what_another_process_wrote_to_a_remote_through_ndfs(site, tmp_path):
    import ndfs
    from ndfs.core.config import load_config

    root, server, data = site
    ref, z = ("coll", "exp", "em"), 40
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{server.url}"\n[cache]\ndir = "{tmp_path / "cache"}"\n')
    try:
        with mounted(config, tmp_path / "mnt"):
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z), data[z])
            vol = ndfs.remote("boss", config=load_config(config)).volume("coll/exp", "em")  # shares the disk tier
            vol[z:z + 1, 0:600, 0:600] = 255 - data[z:z + 1]
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z), 255 - data[z])
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z + 1), data[z + 1])
    finally:
        LocalBackend(root / "store").write(ref, Box((z, 0, 0), (z + 1, 600, 600)), 0, data[z:z + 1])


def test_with_a_max_age_a_mount_sees_writes_made_outside_ndfs_once_it_passes(site, tmp_path):
    root, server, data = site
    ref, z = ("coll", "exp", "em"), 41
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{server.url}"\n[cache]\ndir = "{tmp_path / "cache"}"\n')
    outside = LocalBackend(root / "store")  # another client of the service: ndfs hears nothing of it
    try:
        with mounted(config, tmp_path / "mnt", "--cache-max-age", "3"):
            # max-age windows are clock-aligned: start at the beginning of one, so that the first read's
            # chunks and the second read fall in the same window (a window ending between a chunk's request
            # and its landing leaves that chunk uncached, and the second read would fetch it anew)
            time.sleep(3 - time.time() % 3 + 0.05)
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z), data[z])
            outside.write(ref, Box((z, 0, 0), (z + 1, 600, 600)), 0, 255 - data[z:z + 1])
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z), data[z])  # cached
            time.sleep(3.3)
            np.testing.assert_array_equal(_slice(tmp_path / "mnt", "boss", ref, z), 255 - data[z])
    finally:
        outside.write(ref, Box((z, 0, 0), (z + 1, 600, 600)), 0, data[z:z + 1])
