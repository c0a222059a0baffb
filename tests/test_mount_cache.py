"""Issue-4 request counts through a real mount of a BOSS remote: scrolling, listing, remounting.

The server is `ndfs serve --protocol boss` in-process over a local store; its
own request log counts the cutout GETs ndfs makes. Counts, never times.
"""

import os
import time

import numpy as np
import pytest
import tifffile

from ndfs.backends.local import LocalBackend
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
