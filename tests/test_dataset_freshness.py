"""Issue 25 for the precomputed and zarr remotes: their metadata file is their change signal.

Layers and arrays are written by CloudVolume and zarr-python and served from a folder or by the
Range-capable static server on 127.0.0.1 (ETag, Last-Modified, 304). The cache's clock is stepped by
hand; what is asserted is request counts (per key, and the 304s that carry no body), never times.
The mount test is in tests/test_consistency_mount.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ndfs
from ndfs.cache import CachedBackend
from ndfs.core.config import CacheConfig, Config, RemoteConfig, max_age_of
from ndfs.core.errors import NotFound
from ndfs.stores.wrap import layers
from ndfs.testing.http_static import StaticServer

SHAPE_XYZ = (64, 64, 16)
CHUNK_XYZ = (32, 32, 8)  # 2 x 2 x 2 chunks


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def write_layer(path, data_xyz: np.ndarray, *, info=True) -> None:
    """A raw uint8 precomputed layer as CloudVolume writes it; ``info=False`` writes chunks only."""
    from cloudvolume import CloudVolume

    if info:
        made = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], data_xyz.shape,
                                           chunk_size=list(CHUNK_XYZ))
        cv = CloudVolume(f"file://{path}", info=made, progress=False, compress=False)
        cv.commit_info()
    else:
        cv = CloudVolume(f"file://{path}", progress=False, compress=False)
    cv[:, :, :] = data_xyz


def volume(seed: int, shape_xyz=SHAPE_XYZ) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 250, shape_xyz, dtype=np.uint8)


def zyx(data_xyz: np.ndarray) -> np.ndarray:
    return data_xyz.transpose(2, 1, 0)


def open_checked(url: str, tmp_path, max_age_s: float = 5.0):
    """(remote, its chunk cache with a stepped clock) for ``url``, the disk tier in the test's folder."""
    config = Config(remotes={}, cache=CacheConfig(dir=tmp_path / "cache"))
    remote = ndfs.remote(url, config=config, cache=True, max_age_s=max_age_s)
    cache = next(layer for layer in layers(remote.backend) if isinstance(layer, CachedBackend))
    cache._clock = store(remote)._clock = Clock()  # the store times how recent its last answer is
    return remote, cache


def store(remote):
    return list(layers(remote.backend))[-1]


def whole(remote, name: str) -> np.ndarray:
    return remote.get_cutout(name)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    with StaticServer(root) as server:
        yield root, server


def test_an_http_layer_is_checked_with_one_conditional_request_per_max_age_and_a_304_costs_no_body(served, tmp_path):
    root, server = served
    first = volume(1)
    write_layer(root / "em", first)
    remote, cache = open_checked(f"precomputed://{server.url}/em", tmp_path)
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    assert server.keys["em/info"] == 2  # the description (its ETag is the first token), and tensorstore's open
    server.reset()

    cache._clock.now += 4.9  # within max_age_s: nothing is asked
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    assert server.requests == 0

    cache._clock.now += 0.2  # one check: If-None-Match, answered 304 without a body; no chunk fetched again
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    assert dict(server.keys) == {"em/info": 1}
    assert (server.counts["not_modified"], server.counts["whole"], server.bytes_sent) == (1, 0, 0)
    entry = cache.cache_stats()["volumes"]["em"]
    assert (entry["policy"], entry["max_age_s"], entry["changes"]) == ("checked", 5.0, 0)

    # chunks rewritten under the same info: the check cannot see them (README "Consistency")
    info_before = os.stat(root / "em" / "info").st_mtime_ns
    write_layer(root / "em", volume(2), info=False)
    assert os.stat(root / "em" / "info").st_mtime_ns == info_before
    server.reset()
    cache._clock.now += 5.1
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    assert dict(server.keys) == {"em/info": 1} and server.counts["not_modified"] == 1

    # another writer makes the layer anew (a new info: 24 planes, new voxels): seen at the next check
    second = volume(3, (64, 64, 24))
    write_layer(root / "em", second)
    server.reset()
    cache._clock.now += 1.0  # before the bound: still what was cached, nothing asked
    assert remote.get_info("em").levels[0].shape == (16, 64, 64)
    assert server.requests == 0
    cache._clock.now += 5.0
    assert remote.get_info("em").levels[0].shape == (24, 64, 64)
    np.testing.assert_array_equal(whole(remote, "em"), zyx(second))
    # the check's 200 (the new ETag), the description read again and tensorstore's open; every chunk
    # fetched again; no 304
    assert server.keys["em/info"] == 3 and server.counts["not_modified"] == 0
    assert sum(n for key, n in server.keys.items() if key != "em/info") == 2 * 2 * 3
    assert cache.cache_stats()["volumes"]["em"]["changes"] == 1


def test_a_server_without_etags_is_revalidated_with_if_modified_since(tmp_path):
    root = tmp_path / "served"
    first = volume(4)
    write_layer(root / "em", first)
    past = os.stat(root / "em" / "info").st_mtime - 100  # whole seconds apart: Last-Modified has 1 s resolution
    os.utime(root / "em" / "info", (past, past))
    with StaticServer(root, etags=False) as server:
        remote, cache = open_checked(f"precomputed://{server.url}/em", tmp_path)
        np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
        server.reset()
        cache._clock.now += 6.0
        np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
        assert dict(server.keys) == {"em/info": 1}
        assert (server.counts["not_modified"], server.bytes_sent) == (1, 0)
        second = volume(5, (64, 64, 24))
        write_layer(root / "em", second)
        server.reset()
        cache._clock.now += 6.0
        np.testing.assert_array_equal(whole(remote, "em"), zyx(second))
        assert server.keys["em/info"] == 3 and server.counts["not_modified"] == 0


@pytest.mark.parametrize("fmt", [2, 3])
def test_a_zarr_array_resized_by_zarr_python_shows_its_new_shape_after_one_check(served, tmp_path, fmt):
    import zarr

    root, server = served
    data = np.random.default_rng(fmt).integers(0, 200, (16, 64, 64), dtype=np.uint8)
    arr = zarr.create_array(str(root / "a.zarr"), shape=data.shape, chunks=(8, 32, 32), dtype="uint8",
                            zarr_format=fmt)
    arr[:] = data
    key = "a.zarr/" + ("zarr.json" if fmt == 3 else ".zarray")
    remote, cache = open_checked(f"zarr://{server.url}/a.zarr", tmp_path)
    np.testing.assert_array_equal(whole(remote, "a.zarr"), data)
    server.reset()
    cache._clock.now += 5.1
    np.testing.assert_array_equal(whole(remote, "a.zarr"), data)
    assert dict(server.keys) == {key: 1} and server.counts["not_modified"] == 1 and server.bytes_sent == 0

    arr.resize((24, 64, 64))
    arr[16:] = 7
    server.reset()
    cache._clock.now += 5.1
    assert remote.get_info("a.zarr").levels[0].shape == (24, 64, 64)
    got = whole(remote, "a.zarr")
    np.testing.assert_array_equal(got[:16], data)
    assert (got[16:] == 7).all()
    assert server.keys[key] >= 2 and server.counts["not_modified"] == 0


def test_the_channels_of_one_layer_share_one_check(served, tmp_path):
    from cloudvolume import CloudVolume

    root, server = served
    made = CloudVolume.create_new_info(2, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], SHAPE_XYZ,
                                       chunk_size=list(CHUNK_XYZ))
    cv = CloudVolume(f"file://{root / 'two'}", info=made, progress=False, compress=False)
    cv.commit_info()
    data = np.stack([volume(6), volume(7)], axis=-1)
    cv[:, :, :] = data
    remote, cache = open_checked(f"precomputed://{server.url}/two", tmp_path)
    for c in (0, 1):
        np.testing.assert_array_equal(remote.get_cutout("two", f"c{c}"), zyx(data[..., c]))
    server.reset()
    cache._clock.now += 5.1
    for c in (0, 1):
        np.testing.assert_array_equal(remote.get_cutout("two", f"c{c}"), zyx(data[..., c]))
    assert dict(server.keys) == {"two/info": 1} and server.counts["not_modified"] == 1


def test_a_local_layer_is_checked_with_a_stat_of_its_info(tmp_path):
    first = volume(8)
    write_layer(tmp_path / "em", first)
    remote, cache = open_checked(f"precomputed+file://{tmp_path / 'em'}", tmp_path)
    local = store(remote)
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    reads = local.stats.reads
    cache._clock.now += 5.1
    np.testing.assert_array_equal(whole(remote, "em"), zyx(first))
    assert local.stats.reads == reads  # unchanged: nothing read again
    assert cache.cache_stats()["volumes"]["em"]["policy"] == "checked"
    second = volume(9, (64, 64, 24))
    write_layer(tmp_path / "em", second)
    cache._clock.now += 5.1
    assert remote.get_info("em").levels[0].shape == (24, 64, 64)
    np.testing.assert_array_equal(whole(remote, "em"), zyx(second))
    assert cache.cache_stats()["volumes"]["em"]["changes"] == 1
    (tmp_path / "em" / "info").unlink()
    cache._clock.now += 5.1
    with pytest.raises(NotFound):
        remote.get_info("em")


def test_without_a_max_age_a_dataset_is_never_checked_and_gs_s3_offer_no_signal(served, tmp_path):
    root, server = served
    write_layer(root / "em", volume(10))
    remote = ndfs.remote(f"precomputed://{server.url}/em", config=Config(remotes={}, cache=CacheConfig(dir=tmp_path / "c")),
                         cache=True)
    whole(remote, "em")
    server.reset()
    cache = next(layer for layer in layers(remote.backend) if isinstance(layer, CachedBackend))
    cache._clock = Clock()
    cache._clock.now += 10**6
    whole(remote, "em")
    assert server.requests == 0 and cache.cache_stats()["volumes"]["em"]["policy"] == "kept"
    # gs:// cannot be revalidated here: validate says so without I/O (the cache then expires what it holds)
    from ndfs.stores.dataset import Found, Meta
    from ndfs.stores.tstore import Location

    gs = store(ndfs.remote("precomputed://gs://bucket/layer", cache=False))
    loc = Location("gs://bucket/layer")
    gs._found[("layer",)] = Found(info=remote.get_info("em"), location=loc, meta=Meta(loc, "info", None))
    assert gs.validate(("layer",), 1.0) is None


@pytest.mark.parametrize("kind", ["precomputed", "zarr"])
@pytest.mark.parametrize("writable", [False, True])
def test_datasets_are_kept_until_written_unless_a_max_age_is_set(kind, writable):
    rc = RemoteConfig(kind, kind, url="http://127.0.0.1:9/x")
    assert max_age_of(rc, CacheConfig(), writable) is None
    assert max_age_of(RemoteConfig(kind, kind, url="http://127.0.0.1:9/x", options={"max_age_s": 30}),
                      CacheConfig(), writable) == 30.0
