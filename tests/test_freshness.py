"""Issue 25: what a reader sees of writes made outside ndfs, and what it costs (README "Consistency").

Unit tests drive the cache with a fake service whose change signal the test sets and a clock the test
steps; the DVID driver's checks run against `ndfs serve --protocol dvid`'s app. The mount tests (in
tests/test_consistency_mount.py) use real servers with a second client writing. Request counts,
never times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ndfs.cache import CachedBackend
from ndfs.core.config import (DVID_MAX_AGE_S, WRITABLE_MAX_AGE_S, CacheConfig, Config, RemoteConfig, max_age_of,
                              parse_config)
from ndfs.core.errors import BackendError, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import LevelInfo, VolumeInfo
from ndfs.stores.base import Backend, Validation

REF = ("v",)
SHAPE = (16, 64, 64)
CHUNK = (8, 32, 32)  # 2 x 2 x 2 chunks


class Service(Backend):
    """A service other clients write to: voxels in ``data``, a change signal in ``token``, both set by the
    test. Counts voxel reads, info fetches and checks."""

    kind = "fake"

    def __init__(self, data: np.ndarray, *, signal: bool = True):
        super().__init__()
        self.data, self.signal = data, signal
        self.token, self.final, self.gone, self.fail = ("mut", 1), False, False, None
        self.reads = self.infos = self.checks = 0

    def _children(self, path):
        return ["v"]

    def _is_volume(self, path):
        return tuple(path) == REF

    def _info(self, ref):
        self.infos += 1
        if self.gone:
            raise NotFound("the channel was deleted")
        return VolumeInfo(dtype=self.data.dtype, levels=(LevelInfo(shape=self.data.shape, chunk_shape=CHUNK,
                                                                  chunk_origin=(0, 0, 0)),))

    def _read(self, ref, box, level):
        self.reads += 1
        return self.data[box.slices()].copy()

    def validate(self, ref, max_age_s):
        if not self.signal:
            return None
        self.checks += 1
        if self.fail:
            raise BackendError(self.fail)
        if self.gone:
            raise NotFound("the channel was deleted")
        return Validation(self.token, time.time(), final=self.final)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def service():
    return Service(np.random.default_rng(1).integers(0, 200, SHAPE, dtype=np.uint8))


@pytest.fixture
def caches(tmp_path):
    """caches(inner, max_age_s, disk=True) -> CachedBackend on the test's disk dir, with a stepped clock."""
    made = []

    def make(inner, max_age_s=5.0, disk=True):
        cache = CachedBackend(inner, namespace="fake:test", prefetch=False, max_age_s=max_age_s,
                              disk_dir=tmp_path / "cache" if disk else None)
        cache._clock = Clock()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


WHOLE = Box((0, 0, 0), SHAPE)
PLANE = Box((3, 0, 0), (4, 64, 64))  # one z-slice: the 4 chunks of the first slab


def test_a_checked_volume_is_asked_once_per_max_age_and_kept_while_it_has_not_changed(service, caches):
    cache = caches(service, max_age_s=5.0)
    np.testing.assert_array_equal(cache.read(REF, PLANE, 0), service.data[3:4])
    assert (service.checks, service.reads) == (1, 1)
    cache._clock.now += 4.9  # within max_age_s: neither asked nor fetched again
    cache.read(REF, PLANE, 0)
    cache.version(REF)
    assert (service.checks, service.reads) == (1, 1)
    cache._clock.now += 0.2  # due: one check, which finds no change, so nothing is fetched
    cache.read(REF, PLANE, 0)
    assert (service.checks, service.reads) == (2, 1)
    stats = cache.cache_stats()["volumes"]["v"]
    assert stats["policy"] == "checked" and stats["changes"] == 0 and stats["max_age_s"] == 5.0


def test_a_change_is_seen_within_max_age_and_fetched_again_twice_then_kept(service, caches):
    cache = caches(service, max_age_s=5.0)
    before = cache.read(REF, PLANE, 0)
    token = cache.version(REF)
    service.data[3] = 7  # another client writes, and the service's signal moves
    service.token = ("mut", 2)
    cache._clock.now += 4.0
    np.testing.assert_array_equal(cache.read(REF, PLANE, 0), before)  # not due yet: the old pixels
    assert cache.version(REF) == token
    cache._clock.now += 1.1
    assert (cache.read(REF, PLANE, 0) == 7).all() and cache.version(REF) != token
    assert service.reads == 2 and service.infos == 2  # the chunks and the info, fetched again
    cache._clock.now += 5.1  # the check after a change drops once more (a write counted before it was applied)
    cache.read(REF, PLANE, 0)
    cache._clock.now += 5.1  # and then keeps it
    cache.read(REF, PLANE, 0)
    assert service.reads == 3 and service.checks == 4
    assert cache.cache_stats()["changed_remotely"] == 1


class _HeldDisk:
    """The disk tier, with each chunk's store held at two gates: before the entry is written
    (``go``) and after it (``on``); ``stored`` is set once an entry is in. Everything else passes."""

    def __init__(self, disk):
        self.disk = disk
        self.go, self.on, self.stored, self.waiting = (threading.Event() for _ in range(4))

    def set(self, key, value, **kw):
        if not key.startswith('["fake:test"'):  # the state record, not a chunk
            return self.disk.set(key, value, **kw)
        self.waiting.set()
        self.go.wait(10)
        done = self.disk.set(key, value, **kw)
        self.stored.set()
        self.on.wait(10)
        return done

    def __getattr__(self, name):
        return getattr(self.disk, name)


def _read_while_the_old_entry_is_in(cache, held, value):
    """Let the held store write its old entry (if it still may), read while it is held after that write,
    then let it finish: this read and the next, from memory, show only the new ``value``."""
    held.go.set()
    held.stored.wait(10)
    try:
        fresh = cache.read(REF, PLANE, 0)
    finally:
        held.on.set()
    assert (fresh == value).all()
    assert cache.wait_idle(10)
    assert (cache.read(REF, PLANE, 0) == value).all()


def test_a_fetch_from_before_a_change_never_reaches_a_reader_through_the_disk_tier(service, caches):
    """A chunk fetched before the check saw a change is still being stored on disk when the change is
    dropped. Its entry must not show to a reader, not even for a moment: that reader would keep the
    old pixels in memory until the next change."""
    cache = caches(service, max_age_s=5.0)
    held = cache._disk = _HeldDisk(cache._disk)
    assert (cache.read(REF, PLANE, 0) != 7).any()  # fetched; its store on disk waits at the first gate
    assert held.waiting.wait(10)
    service.data[3] = 7
    service.token = ("mut", 2)
    cache._clock.now += 5.1
    # if the check has to wait for the store, the gates open by themselves; either way the store goes on
    threading.Timer(0.5, lambda: (held.go.set(), held.on.set())).start()
    cache.version(REF)  # the check sees the change and drops what is cached
    _read_while_the_old_entry_is_in(cache, held, 7)
    assert service.reads == 2


def test_a_fetch_from_before_another_process_s_write_never_reaches_a_reader_through_the_disk_tier(
        service, caches, tmp_path):
    """The same race with a write made by another process sharing the disk tier: its invalidation (stamp
    moved, the written chunks deleted) comes while this process still stores the old chunks."""
    cache = caches(service, max_age_s=None)  # no checks: only the shared stamp tells of the write
    held = cache._disk = _HeldDisk(cache._disk)
    assert (cache.read(REF, PLANE, 0) != 9).any()
    assert held.waiting.wait(10)
    service.data[3] = 9  # the other process writes the plane, then drops it from the shared disk tier
    writer = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from test_freshness import PLANE, REF, SHAPE, Service
from ndfs.cache import CachedBackend
cache = CachedBackend(Service(np.zeros(SHAPE, np.uint8)), namespace="fake:test", prefetch=False,
                      disk_dir={str(tmp_path / "cache")!r})
cache.invalidate(REF, PLANE, 0)
cache.close()
"""
    threading.Timer(2.0, lambda: (held.go.set(), held.on.set())).start()
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)
    _read_while_the_old_entry_is_in(cache, held, 9)


def test_a_final_volume_is_asked_once_and_never_again(service, caches):
    service.final = True
    cache = caches(service, max_age_s=1.0)
    cache.read(REF, PLANE, 0)
    token = cache.version(REF)
    for _ in range(5):
        cache._clock.now += 100.0
        cache.read(REF, PLANE, 0)
        assert cache.version(REF) == token
    assert (service.checks, service.reads) == (1, 1)
    assert cache.cache_stats()["volumes"]["v"]["policy"] == "final"


def test_a_later_process_drops_disk_entries_of_another_state_and_keeps_those_of_this_one(service, caches):
    first = caches(service)
    first.read(REF, WHOLE, 0)
    first.wait_idle(10)
    assert service.reads == 1
    again = caches(service)  # another process over the same disk tier, the service unchanged: all disk hits
    np.testing.assert_array_equal(again.read(REF, WHOLE, 0), service.data)
    assert service.reads == 1
    service.data[:] = 9  # changed while no process was looking
    service.token = ("mut", 7)
    later = caches(service)
    assert (later.read(REF, WHOLE, 0) == 9).all() and service.reads == 2
    later.wait_idle(10)
    last = caches(service)  # the change was handled: what the disk holds now is of this state
    assert (last.read(REF, WHOLE, 0) == 9).all() and service.reads == 2


def test_a_process_that_sees_a_change_another_handled_keeps_the_fresh_disk_entries(service, caches):
    one, two = caches(service), caches(service)
    one.read(REF, WHOLE, 0)
    one.wait_idle(10)
    two.read(REF, WHOLE, 0)  # disk hits
    assert service.reads == 1
    service.data[:] = 5
    service.token = ("mut", 2)
    one._clock.now += 6
    assert (one.read(REF, WHOLE, 0) == 5).all()  # drops, refetches, stores the new state
    one.wait_idle(10)
    two._clock.now += 6
    assert (two.read(REF, WHOLE, 0) == 5).all()  # drops its memory, but the disk entries are of the new state
    assert service.reads == 2


def test_the_info_follows_the_same_checks(service, caches):
    cache = caches(service, max_age_s=5.0)
    assert cache.info(REF).level(0).shape == SHAPE
    service.data = np.zeros((32, 64, 64), np.uint8)  # resized by another client
    service.token = ("mut", 2)
    assert cache.info(REF).level(0).shape == SHAPE
    cache._clock.now += 5.1
    assert cache.info(REF).level(0).shape == (32, 64, 64)


def test_a_volume_deleted_on_the_service_is_not_found_and_forgotten(service, caches):
    cache = caches(service)
    cache.read(REF, WHOLE, 0)
    cache.wait_idle(10)
    service.gone = True
    cache._clock.now += 6
    with pytest.raises(NotFound):
        cache.read(REF, PLANE, 0)
    with pytest.raises(NotFound):
        cache.version(REF)
    assert cache.cache_stats()["disk_entries"] == 0


def test_a_failed_check_serves_what_is_held_and_asks_again_after_another_max_age(service, caches, caplog):
    cache = caches(service, max_age_s=5.0)
    cache.read(REF, PLANE, 0)
    service.fail = "service unavailable"
    cache._clock.now += 6
    caplog.set_level("WARNING", logger="ndfs.cache")
    np.testing.assert_array_equal(cache.read(REF, PLANE, 0), service.data[3:4])
    cache.read(REF, PLANE, 0)  # not asked again at once
    assert service.checks == 2 and "cannot check v for changes" in caplog.text
    assert cache.cache_stats()["volumes"]["v"]["error"] == "service unavailable"
    service.fail = None
    cache._clock.now += 5.1
    cache.read(REF, PLANE, 0)
    assert service.checks == 3 and "error" not in cache.cache_stats()["volumes"]["v"]


def test_without_a_change_signal_the_info_is_fetched_again_with_each_max_age_window(caches):
    quiet = Service(np.zeros(SHAPE, np.uint8), signal=False)
    cache = caches(quiet, max_age_s=0.5, disk=False)
    cache.info(REF)
    window = cache._window(REF)
    assert window is not None and cache.cache_stats()["volumes"]["v"]["policy"] == "max-age"
    deadline = time.monotonic() + 30
    while cache._window(REF) == window and time.monotonic() < deadline:
        time.sleep(0.05)
    cache.info(REF)
    assert quiet.infos == 2 and quiet.checks == 0


def test_without_a_max_age_nothing_is_asked_and_nothing_expires(service, caches):
    cache = caches(service, max_age_s=None)
    cache.read(REF, PLANE, 0)
    service.token = ("mut", 2)
    cache._clock.now += 10**6
    cache.read(REF, PLANE, 0)
    assert (service.checks, service.reads) == (0, 1)
    assert cache.cache_stats()["volumes"]["v"]["policy"] == "kept"


# ---- the defaults, and how they are overridden ---------------------------------------------
def _rc(kind, **options):
    return RemoteConfig(kind, kind, url=None if kind == "local" else "http://127.0.0.1:9", options=options)


@pytest.mark.parametrize("kind, writable, expected", [
    ("dvid", False, DVID_MAX_AGE_S), ("dvid", True, DVID_MAX_AGE_S),
    ("boss", True, WRITABLE_MAX_AGE_S), ("boss", False, None),
    ("neurodata", True, WRITABLE_MAX_AGE_S), ("neurodata", False, None),
    ("local", True, None),
])
def test_each_kind_has_its_default_max_age(kind, writable, expected):
    assert max_age_of(_rc(kind), CacheConfig(), writable) == expected


def test_a_remote_s_own_max_age_wins_over_the_cache_section_which_wins_over_the_default():
    cache = CacheConfig(max_age_s=30.0)
    assert max_age_of(_rc("boss"), cache, False) == 30.0
    assert max_age_of(_rc("boss", max_age_s=2.0), cache, False) == 2.0
    assert max_age_of(_rc("dvid", max_age_s=float("inf")), cache, True) is None
    assert max_age_of(_rc("boss"), CacheConfig(max_age_s=float("inf")), True) is None
    cfg = parse_config({"remotes": {"d": {"kind": "dvid", "url": "http://h:8000", "max_age_s": float("inf")},
                                    "l": {"kind": "local", "path": ".", "max_age_s": 30}},
                        "cache": {"max_age_s": 7}}, __import__("pathlib").Path("."))
    assert cfg.remotes["d"].options == {"max_age_s": float("inf")} and cfg.remotes["l"].options["max_age_s"] == 30
    assert cfg.cache.max_age_s == 7


def test_whether_ndfs_can_write_a_remote_is_a_token_and_not_read_only(tmp_path, monkeypatch):
    from ndfs.stack import open_store

    monkeypatch.setenv("HOME", str(tmp_path))  # no intern.cfg token
    monkeypatch.setenv("NDFS_TEST_TOKEN", "secret")
    cache = CacheConfig(dir=tmp_path / "cache")

    def max_age(**kw):
        rc = RemoteConfig("boss", "boss", url="http://127.0.0.1:9", **kw)
        with open_store(Config(remotes={"boss": rc}), rc, cache=cache) as backend:
            return next(layer for layer in _layers(backend) if isinstance(layer, CachedBackend)).max_age_s

    assert max_age(token_env="NDFS_TEST_TOKEN") == WRITABLE_MAX_AGE_S
    assert max_age(token_env="NDFS_TEST_TOKEN", read_only=True) is None
    assert max_age() is None  # anonymous
    assert max_age(token_env="NDFS_TEST_TOKEN", options={"max_age_s": 3}) == 3.0


def _layers(backend):
    from ndfs.stores.wrap import layers

    return layers(backend)


def test_the_command_line_flag_wins_over_every_remote_s_own_max_age(tmp_path):
    from ndfs.cli.commands import _config

    config = tmp_path / "ndfs.toml"
    config.write_text('[remotes.d]\nkind = "dvid"\nurl = "http://127.0.0.1:9"\nmax_age_s = 2\n')
    cfg = _config(argparse.Namespace(config=str(config), cache_max_age=float("inf")))
    assert max_age_of(cfg.remotes["d"], cfg.cache, False) is None
    cfg = _config(argparse.Namespace(config=str(config)))
    assert max_age_of(cfg.remotes["d"], cfg.cache, False) == 2.0


# ---- the DVID driver's change signal, against the DVID server, written to over its own HTTP API --------
def test_the_dvid_driver_asks_once_per_repo_follows_a_branch_to_its_new_leaf_and_keeps_locked_nodes(tmp_path):
    import json

    import requests

    from ndfs.serve.common import WsgiServer
    from ndfs.serve.dvid import DvidApp
    from ndfs.stores.dvid import DvidBackend
    from ndfs.stores.local import LocalBackend

    def call(method, path, **kw):
        resp = requests.request(method, srv.url + path, timeout=30, **kw)
        assert resp.status_code == 200, resp.text
        return resp

    LocalBackend(tmp_path / "store", create=True)
    with WsgiServer(DvidApp(LocalBackend(tmp_path / "store"))) as srv:
        root = call("POST", "/api/repos", data=json.dumps({"alias": "r", "description": "t"})).json()["root"]
        for name in ("a", "b"):
            call("POST", f"/api/repo/{root}/instance", data=json.dumps({"typename": "uint8blk", "dataname": name}))
        call("POST", f"/api/repo/{root}/instance", data=json.dumps({"typename": "uint8blk", "dataname": "u",
                                                                    "versioned": False}))
        dvid = DvidBackend(srv.url)
        try:
            def state_requests() -> int:
                return srv.counter.count("GET", f"/api/repo/{root}/info") + srv.counter.count("GET", "/api/repos/info")

            srv.counter.reset()
            a, b = (dvid.validate(("r", "master", n), 60.0) for n in ("a", "b"))
            assert state_requests() == 1  # the repo listing names both: one request for the two instances
            assert not a.final and not b.final and a.token[0] == root
            # another client writes b: the repo's mutation id moves, so a's token moves too (per repo)
            call("POST", f"/api/node/{root}/b/raw/0_1_2/32_32_32/0_0_0", data=bytes(32**3))
            moved = dvid.validate(("r", "master", "a"), 1e-9)
            assert state_requests() == 2 and moved.token != a.token
            assert dvid.validate(("r", "master", "b"), 60.0).token != b.token and state_requests() == 2
            # the node is locked: final when named by its UUID; by the branch name, checked until it moves on
            call("POST", f"/api/node/{root}/commit", data=json.dumps({"note": "v1"}))
            locked = dvid.validate(("r", root, "a"), 1e-9)
            assert locked.final and locked.token[1] == "locked"
            # an unversioned instance is written at the root whatever the node: checked like an open one
            assert not dvid.validate(("r", root, "u"), 1e-9).final
            by_branch = dvid.validate(("r", "master", "a"), 1e-9)
            assert not by_branch.final and by_branch.token == locked.token
            child = call("POST", f"/api/node/{root}/newversion", data=json.dumps({"note": "v2"})).json()["child"]
            moved_on = dvid.validate(("r", "master", "a"), 1e-9)
            assert moved_on.token[0] == child and not moved_on.final
            assert dvid.validate(("r", root, "a"), 1e-9).token == locked.token  # the locked node is as it was
            with pytest.raises(NotFound):
                dvid.validate(("r", "master", "nope"), 60.0)
        finally:
            dvid.close()
