"""The synthetic remote (ndfs/stores/synthetic.py): petascale geometry with computed voxels, through every layer.

Its conformance cases are in test_conformance.py (synthetic-raw, synthetic-cached)."""

import json
import os

import numpy as np
import pytest

import ndfs
from ndfs.core.config import load_config
from ndfs.core.errors import ConfigError, ReadOnly
from ndfs.core.geometry import Box
from ndfs.stack import open_backend
from ndfs.stores.synthetic import SyntheticBackend
from ndfs.testing.mount import fuse_unavailable, mounted

EM = ("sim", "petascale", "em")
BIG = (20_000, 100_000, 100_000)


def _config(tmp_path, body: str = ""):
    path = tmp_path / "ndfs.toml"
    path.write_text(f'[remotes.sim]\nkind = "synthetic"\n{body}\n[cache]\ndir = "{tmp_path / "cache"}"\n')
    return path


def test_the_default_is_petascale_and_reads_anywhere_cost_only_the_box():
    b = SyntheticBackend()
    info = b.info(EM)
    assert info.level(0).shape == BIG and info.dtype == np.uint8 and info.kind == "image"
    assert max(info.levels[-1].shape[1:]) <= 1024
    far = Box((19_990, 99_000, 99_500), (20_000, 100_000, 100_000))
    a = b.read(EM, far, 0)
    assert a.shape == far.shape and np.array_equal(a, b.read(EM, far, 0))
    part = Box((19_995, 99_100, 99_600), (19_996, 99_101, 99_700))  # the same voxels, cut from a smaller read
    assert np.array_equal(b.read(EM, part, 0), a[part.slices(far.start)])
    assert b.stats.reads == 3 and b.stats.read_bytes == 2 * far.size + part.size


def test_coarser_levels_sample_level_zero_at_their_voxels_corners():
    b = SyntheticBackend(shape=(4, 64, 64), levels=3)
    full = b.read(EM, Box((0, 0, 0), (4, 64, 64)), 0)
    for level in (1, 2):
        lv = b.info(EM).level(level)
        np.testing.assert_array_equal(b.read(EM, lv.box, level), full[:, ::2**level, ::2**level])


def test_labels_are_ids_above_two_to_the_32_with_background():
    b = SyntheticBackend(shape=(16, 256, 256))
    ids = b.read(("sim", "petascale", "cells"), Box((0, 0, 0), (16, 256, 256)), 0)
    assert ids.dtype == np.uint64 and b.info(("sim", "petascale", "cells")).kind == "annotation"
    nz = ids[ids > 0]
    assert (ids == 0).any() and nz.min() > 2**32 and len(np.unique(nz)) > 10


def test_it_is_read_only():
    b = SyntheticBackend(shape=(4, 8, 8))
    with pytest.raises(ReadOnly):
        b.write(EM, Box((0, 0, 0), (1, 1, 1)), 0, np.zeros((1, 1, 1), np.uint8))


def test_configured_geometry_and_its_checks(tmp_path):
    cfg = load_config(_config(tmp_path, 'shape = [100, 2000, 3000]\nchunk_shape = [8, 256, 256]\n'
                                        'project = "a/b/c"\nchannels = ["raw:uint16"]\nlatency_ms = 1'))
    b = open_backend(cfg.remote("sim"))
    info = b.info(("a", "b", "c", "raw"))
    assert info.level(0).shape == (100, 2000, 3000) and info.level(0).chunk_shape == (8, 256, 256)
    assert info.dtype == np.uint16
    for bad, match in (('shape = [1, 2]', "three numbers"), ('shape = [0, 5, 5]', "positive"),
                       ('channels = ["x:float64"]', "dtype"), ('levels = 0', "at least 1"),
                       ('url = "http://x"', "unknown key")):
        with pytest.raises(ConfigError, match=match):
            open_backend(load_config(_config(tmp_path, bad)).remote("sim"))


def test_two_geometries_never_share_cache_entries(tmp_path):
    from ndfs.core.config import RemoteConfig, remote_target

    a = RemoteConfig("a", "synthetic", options={"shape": [10, 10, 10]})
    b = RemoteConfig("b", "synthetic", options={"shape": [10, 10, 20]})
    assert remote_target(a) != remote_target(b)


def test_a_scroll_through_the_api_fetches_each_touched_chunk_once():
    """16 planes of a 2048 x 2048 level on 512 x 512 chunks: the 16 chunks of one slab, each fetched once."""
    vol = ndfs.remote(kind="synthetic", shape=[64, 2048, 2048], cache=True).volume("sim/petascale", "em")
    raw = vol.backend.inner
    for z in range(16, 32):
        vol[z]
    vol.backend.wait_idle(30)
    chunk_bytes = 16 * 512 * 512
    fetched = raw.stats.read_bytes // chunk_bytes
    assert fetched >= 16  # the slab touched; the read-ahead may add the next slab, never a chunk twice
    assert raw.stats.read_bytes % chunk_bytes == 0 and fetched in (16, 32), fetched


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_the_mount_lists_20000_slices_of_a_petascale_channel_without_reading_voxels(tmp_path):
    mnt = tmp_path / "mnt"
    with mounted(_config(tmp_path), mnt):
        zdir = mnt / "sim" / "sim" / "petascale" / "em" / "1" / "z"
        names = os.listdir(zdir)
        assert len(names) == 20_000
        sizes = {os.stat(zdir / n).st_size for n in names[::97]}
        assert len(sizes) == 1 and sizes.pop() > 50_000 * 50_000
        info = json.loads((mnt / "sim" / "sim" / "petascale" / "em" / "info.json").read_text())
        assert info["levels"][0]["shape_zyx"] == list(BIG)
        stats = json.loads((mnt / ".ndfs" / "stats.json").read_text())["sim"]
        assert stats["backend"]["reads"] == 0


def test_ndfs_serve_publishes_it_over_boss_within_its_bounds(tmp_path):
    import requests

    from ndfs.stores.boss import BossBackend
    from ndfs.testing.serve import served

    with served("boss", None, "--remote", "sim", "--read-only", config=_config(tmp_path)) as srv:
        b = BossBackend(srv.url, "x")
        try:
            assert b.info(EM).level(0).shape == BIG
            far = Box((19_984, 99_488, 99_488), (20_000, 100_000, 100_000))
            np.testing.assert_array_equal(b.read(EM, far, 0), SyntheticBackend().read(EM, far, 0))
        finally:
            b.close()
        r = requests.get(f"{srv.url}/v1/cutout/sim/petascale/em/0/0:30000/0:30000/0:16/", timeout=60)
        assert r.status_code == 413  # past the BOSS's 500 MB a request, refused before any voxel is made
