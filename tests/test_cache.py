"""Tests for ndfs.cache: request counts (never timings), exact data, both tiers, faults.

A real LocalBackend in tmp_path is the inner backend. Latency and faults are
injected by a LocalBackend subclass whose reads can be gated, recorded and
made to fail.
"""
import logging
import sqlite3
import threading
import time

import diskcache
import numpy as np
import pytest

from ndfs.stores.local import LocalBackend
from ndfs.cache import CachedBackend, clear_disk_cache, decode_chunk, disk_cache_info, encode_chunk
from ndfs.cache.plan import group_chunks
from ndfs.cache.disk import PAYLOAD_SHARE
from ndfs.core.downsample import downsample
from ndfs.core.errors import BackendError, ConfigError
from ndfs.core.geometry import Box, ChunkGrid

REF = ("p", "em")
SHAPE = (32, 96, 128)  # chunks (8, 32, 32): a 4 x 3 x 4 grid at level 0, 4 x 2 x 2 at level 1
CHUNK = (8, 32, 32)
NS = "local:test"


class GatedLocal(LocalBackend):
    """A LocalBackend that records every inner read, can hold reads at a gate, and can fail."""

    def __init__(self, path, **kw):
        super().__init__(path, **kw)
        self.boxes: list[tuple[int, Box]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.after = threading.Event()
        self.after.set()
        self.done = 0
        self.fail_reads = 0
        self.fail_writes_after_store = False
        self._rec = threading.Lock()

    def _read(self, ref, box, level):
        with self._rec:
            self.boxes.append((level, box))
            fail = self.fail_reads > 0
            self.fail_reads -= fail
        assert self.gate.wait(10), "test gate never opened"
        if fail:
            raise BackendError("injected read failure")
        out = super()._read(ref, box, level)
        with self._rec:
            self.done += 1
        assert self.after.wait(10), "test gate never opened"  # data read, not yet returned
        return out

    def _write(self, ref, box, level, array):
        super()._write(ref, box, level, array)
        if self.fail_writes_after_store:
            raise BackendError("injected failure after a partial write")


@pytest.fixture
def store(tmp_path):
    """A filled 2-level store; returns (path, level-0 data, level-1 data)."""
    path = tmp_path / "store"
    b = LocalBackend(path, create=True)
    b.create_volume("p/em", SHAPE, "uint8", levels=2, chunk_shape=CHUNK)
    data = np.random.default_rng(7).integers(0, 256, SHAPE, dtype=np.uint8)
    b.write(REF, Box.from_shape(SHAPE), 0, data)
    return path, data, downsample(data, "image")


@pytest.fixture
def make(tmp_path):
    """make(inner, **kw) -> CachedBackend (closed at teardown); disk=True uses tmp_path/cache."""
    made = []

    def _make(inner, disk=False, **kw):
        kw.setdefault("namespace", NS)
        kw.setdefault("prefetch", False)
        if disk:
            kw.setdefault("disk_dir", tmp_path / "cache")
        c = CachedBackend(inner, **kw)
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


def chunks_of(boxes, level=0):
    """Chunk indices covered by the recorded inner boxes at `level`, with multiplicity."""
    lv_shape = SHAPE if level == 0 else (SHAPE[0], SHAPE[1] // 2, SHAPE[2] // 2)
    grid = ChunkGrid(CHUNK, Box.from_shape(lv_shape))
    out = []
    for lv, box in boxes:
        if lv == level:
            assert grid.aligned(box) == box, f"request {box} is not chunk-aligned"
            out.extend(grid.chunks(box))
    return out


# ---- 1. slices, shapes, levels ------------------------------------------
def test_z_slices_through_a_slab_cost_one_request_per_chunk_not_per_slice(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner)
    for z in range(8):
        got = cached.read(REF, Box((z, 10, 20), (z + 1, 70, 90)), 0)
        np.testing.assert_array_equal(got, data[z:z + 1, 10:70, 20:90])
    touched = chunks_of(inner.boxes)
    assert sorted(touched) == [(0, y, x) for y in range(3) for x in range(3)]  # each once
    assert inner.stats.reads == 1  # one grouped request for the 9 chunks, not 8 slices x 9


def test_grouping_never_refetches_cached_chunks(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner)
    cached.read(REF, Box((0, 32, 32), (8, 64, 64)), 0)  # chunk (0, 1, 1)
    inner.boxes.clear()
    got = cached.read(REF, Box((0, 0, 0), (16, 96, 128)), 0)
    np.testing.assert_array_equal(got, data[:16])
    fetched = chunks_of(inner.boxes)
    assert len(fetched) == len(set(fetched)) == 2 * 12 - 1
    assert (0, 1, 1) not in fetched
    assert len(inner.boxes) == 5  # slab 0: row, two pieces around the hole, row; slab 1: one box


def test_group_chunks_merges_runs_and_respects_the_request_cap():
    grid = ChunkGrid(CHUNK, Box.from_shape(SHAPE))
    chunk_bytes = 8 * 32 * 32
    everything = list(grid.chunks(grid.extent))
    [(box, members)] = group_chunks(grid, everything, 10**9, 1)
    assert box == grid.extent and sorted(members) == sorted(everything)
    capped = group_chunks(grid, everything, 5 * chunk_bytes, 1)  # at most 5 chunks a request
    assert all(len(m) <= 5 and grid.aligned(b) == b for b, m in capped)
    assert sorted(i for _, m in capped for i in m) == sorted(everything)
    assert len(capped) == 12  # 4 slabs x 3 rows: a row of 4 is a request, two rows (8) exceed 5
    diagonal = [(0, 0, 0), (0, 1, 1), (1, 1, 1)]
    assert [b for b, _ in group_chunks(grid, diagonal, 10**9, 1)] == [
        Box((0, 0, 0), (8, 32, 32)), Box((0, 32, 32), (16, 64, 64))]
    one_big = group_chunks(grid, [(0, 0, 0), (0, 0, 1)], chunk_bytes // 2, 1)
    assert len(one_big) == 2  # a chunk larger than the cap still goes alone


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("kind", ["aligned", "unaligned", "voxel", "whole", "x-plane", "y-plane"])
def test_reads_equal_the_array_voxel_for_voxel(store, make, level, kind):
    path, data, data1 = store
    oracle = data if level == 0 else data1
    z, y, x = oracle.shape
    boxes = {
        "aligned": Box((8, 0, 32), (24, 32, 64)),
        "unaligned": Box((3, 5, 7), (19, y - 3, x - 11)),
        "voxel": Box((13, y - 1, 17), (14, y, 18)),
        "whole": Box.from_shape(oracle.shape),
        "x-plane": Box((0, 0, x // 2), (z, y, x // 2 + 1)),
        "y-plane": Box((0, 9, 0), (z, 10, x)),
    }
    box = boxes[kind]
    inner = GatedLocal(path)
    cached = make(inner, disk=True)
    for _ in range(2):  # cold, then from memory
        np.testing.assert_array_equal(cached.read(REF, box, level), oracle[box.slices()])
    fetched = chunks_of(inner.boxes, level)
    assert len(fetched) == len(set(fetched))  # each chunk fetched at most once
    assert cached.wait_idle(10)  # disk writes run in the background
    fresh = make(LocalBackend(path), disk=True)  # from disk only
    np.testing.assert_array_equal(fresh.read(REF, box, level), oracle[box.slices()])
    assert fresh.inner.stats.reads == 0


# ---- 2. single-flight ----------------------------------------------------
def _wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _crowd(cached, box, n=8):
    results, errors = [None] * n, [None] * n

    def reader(i):
        try:
            results[i] = cached.read(REF, box, 0)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results, errors


def test_single_flight_eight_readers_one_fetch_per_chunk(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, workers=4)
    box = Box((5, 20, 20), (12, 70, 70))  # 2 x 3 x 3 = 18 chunks
    n_chunks = 18
    inner.gate.clear()
    threads, results, errors = _crowd(cached, box)
    # every reader has claimed or joined a flight for every chunk before any fetch finishes
    _wait_for(lambda: cached.cache_stats()["misses"] == 8 * n_chunks, "all readers to join")
    inner.gate.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert errors == [None] * 8
    for r in results:
        np.testing.assert_array_equal(r, data[box.slices()])
    fetched = chunks_of(inner.boxes)
    assert sorted(fetched) == sorted(set(fetched)) and len(fetched) == n_chunks


def test_single_flight_error_reaches_all_waiters_and_is_not_cached(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, disk=True)
    box = Box((0, 0, 0), (8, 32, 32))  # one chunk: one flight
    inner.gate.clear()
    inner.fail_reads = 1
    threads, results, errors = _crowd(cached, box)
    _wait_for(lambda: cached.cache_stats()["misses"] == 8, "all readers to join")
    inner.gate.set()
    for t in threads:
        t.join(10)
    assert len(inner.boxes) == 1
    assert all(isinstance(e, BackendError) for e in errors), errors
    s = cached.cache_stats()
    assert s["memory_entries"] == 0 and s["disk_entries"] == 0
    np.testing.assert_array_equal(cached.read(REF, box, 0), data[box.slices()])
    assert len(inner.boxes) == 2 and inner.stats.reads == 1


# ---- 3. budgets ----------------------------------------------------------
def test_streaming_four_times_the_memory_budget_stays_within_both_budgets(store, make):
    path, data, _ = store
    memory_bytes = data.nbytes // 4
    disk_bytes = 256 * 1024
    cached = make(LocalBackend(path), disk=True, memory_bytes=memory_bytes, disk_bytes=disk_bytes)
    for z in range(SHAPE[0]):
        got = cached.read(REF, Box((z, 0, 0), (z + 1, *SHAPE[1:])), 0)
        np.testing.assert_array_equal(got, data[z:z + 1])
        assert cached.cache_stats()["memory_bytes"] <= memory_bytes
    s = cached.cache_stats()
    assert 0 < s["memory_entries"] < 48
    for arr in list(cached._mem.values()):  # entries own their bytes: no views into a larger fetch
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        held = root.nbytes if root.base is None else memoryview(root.base).nbytes
        assert held == arr.nbytes
    assert s["misses"] == 48  # each chunk fetched once in a sequential stream
    disk = cached._disk
    # soft cap: diskcache culls at most cull_limit (10) entries per set, so it can overshoot
    # by a few entries until the next cull; after culling it is within the limit.
    assert disk.volume() <= disk_bytes + 10 * 9 * 1024
    disk.cull()
    assert disk.volume() <= disk_bytes
    assert 0 < len(disk) < 48


# ---- 4. persistence ------------------------------------------------------
def test_disk_tier_serves_a_new_instance_with_zero_requests(store, make, tmp_path):
    path, data, data1 = store
    box = Box((4, 10, 10), (20, 90, 120))
    first = make(LocalBackend(path), disk=True)
    first.read(REF, box, 0)
    first.read(REF, Box((0, 0, 0), (8, 48, 64)), 1)
    first.close()
    inner = LocalBackend(path)
    second = make(inner, disk=True)
    np.testing.assert_array_equal(second.read(REF, box, 0), data[box.slices()])
    np.testing.assert_array_equal(second.read(REF, Box((0, 0, 0), (8, 48, 64)), 1), data1[:8])
    assert inner.stats.reads == 0
    assert second.cache_stats()["disk_hits"] > 0
    other = make(LocalBackend(path), disk=True, namespace="local:elsewhere")
    other.read(REF, box, 0)
    assert other.inner.stats.reads > 0  # namespaces do not share entries


# ---- 5. invalidation -----------------------------------------------------
@pytest.mark.parametrize("tiers", ["memory", "disk", "both"])
def test_write_invalidates_both_levels_in_every_tier(store, make, tiers):
    path, data, _ = store
    kw = {"memory": dict(), "disk": dict(disk=True, memory_bytes=0), "both": dict(disk=True)}[tiers]
    cached = make(LocalBackend(path), **kw)
    whole0, whole1 = Box.from_shape(SHAPE), Box.from_shape((32, 48, 64))
    cached.read(REF, whole0, 0)
    cached.read(REF, whole1, 1)
    box = Box((3, 5, 30), (11, 40, 70))
    new = np.random.default_rng(1).integers(0, 256, box.shape, dtype=np.uint8)
    cached.write(REF, box, 0, new)
    expect = data.copy()
    expect[box.slices()] = new
    expect1 = downsample(expect, "image")
    np.testing.assert_array_equal(cached.read(REF, whole0, 0), expect)
    np.testing.assert_array_equal(cached.read(REF, whole1, 1), expect1)
    if tiers != "memory":
        other = make(LocalBackend(path), **kw)
        np.testing.assert_array_equal(other.read(REF, whole0, 0), expect)
        np.testing.assert_array_equal(other.read(REF, whole1, 1), expect1)


def test_failed_write_still_invalidates_and_reraises(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, disk=True)
    cached.read(REF, Box.from_shape(SHAPE), 0)
    inner.fail_writes_after_store = True
    box = Box((0, 0, 0), (1, 1, 1))
    with pytest.raises(BackendError):
        cached.write(REF, box, 0, np.full((1, 1, 1), data[0, 0, 0] ^ 0xFF, np.uint8))
    assert cached.read(REF, box, 0)[0, 0, 0] == data[0, 0, 0] ^ 0xFF


class UnlockedLocal(GatedLocal):
    """Like a remote service: its reads and writes share no lock, so a fetch can span a write."""

    def volume_lock(self, ref):
        from ndfs.core.locks import MemoryVolumeLock

        return MemoryVolumeLock()


@pytest.mark.parametrize("disk", [False, True])
@pytest.mark.parametrize("kind", [GatedLocal, UnlockedLocal])
def test_fetch_in_flight_during_a_write_does_not_cache_stale_data(store, make, disk, kind):
    path, data, _ = store
    inner = kind(path)
    cached = make(inner, disk=disk)
    box = Box((0, 0, 0), (8, 32, 32))  # one chunk; its 2x2 footprint write needs no read-back
    inner.after.clear()
    threads, results, errors = _crowd(cached, box, n=1)
    _wait_for(lambda: inner.done == 1, "the old data to be read")
    new = (data[box.slices()] ^ 0xFF).astype(np.uint8)
    writer = threading.Thread(target=cached.write, args=(REF, box, 0, new))
    writer.start()
    if kind is GatedLocal:  # the store's planes are read-locked until the read is done: the write waits
        writer.join(0.5)
        assert writer.is_alive(), "the write was applied under a read of the same planes"
    else:
        writer.join(10)
    inner.after.set()
    threads[0].join(10)
    writer.join(10)
    assert errors == [None] and not writer.is_alive()
    np.testing.assert_array_equal(results[0], data[box.slices()])  # it started before the write
    np.testing.assert_array_equal(cached.read(REF, box, 0), new)
    if disk:
        np.testing.assert_array_equal(make(LocalBackend(path), disk=True).read(REF, box, 0), new)


def test_a_write_landing_while_a_chunk_is_stored_on_disk_drops_it_after_the_store(store, make, monkeypatch):
    path, data, _ = store
    cached = make(LocalBackend(path), disk=True, memory_bytes=0)
    box = Box((0, 0, 0), (8, 32, 32))
    new = (data[box.slices()] ^ 0xFF).astype(np.uint8)
    real_set, fired = cached._disk.set, []

    def set_with_a_write_racing(key, value, **kw):  # the write lands as the old chunk is being stored
        if not fired:
            writer = threading.Thread(target=cached.write, args=(REF, box, 0, new))
            fired.append(writer)
            writer.start()
            writer.join(0.5)  # it writes the store, then waits for this store before it drops the chunk
        return real_set(key, value, **kw)

    monkeypatch.setattr(cached._disk, "set", set_with_a_write_racing)
    np.testing.assert_array_equal(cached.read(REF, box, 0), data[box.slices()])
    assert cached.wait_idle(10)  # the disk store runs on the disk thread
    assert fired
    fired[0].join(10)
    assert not fired[0].is_alive()
    np.testing.assert_array_equal(cached.read(REF, box, 0), new)
    np.testing.assert_array_equal(make(LocalBackend(path), disk=True).read(REF, box, 0), new)


def test_invalidate_whole_volume_and_a_box(store, make):
    path, data, _ = store
    inner = LocalBackend(path)
    cached = make(inner, disk=True)
    cached.read(REF, Box.from_shape(SHAPE), 0)
    assert cached.wait_idle(10)  # on disk (written in the background)
    cached.invalidate(REF, Box((0, 0, 0), (1, 1, 1)), 0)  # one chunk at level 0, one at level 1
    assert cached.cache_stats()["disk_entries"] == 47
    inner.reset_stats()
    cached.read(REF, Box.from_shape(SHAPE), 0)
    assert inner.stats.reads == 1
    cached.invalidate(REF)
    s = cached.cache_stats()
    assert s["memory_entries"] == 0 and s["disk_entries"] == 0


class RemoteLike(GatedLocal):
    """A store that cannot stamp or lock its volumes across processes (as a remote service): caches
    share stamps on their disk."""

    def generation(self, ref):
        return None

    def volume_lock(self, ref):
        from ndfs.core.locks import MemoryVolumeLock

        return MemoryVolumeLock()


def test_another_cache_of_the_local_store_sees_a_write_and_its_own_writes_drop_nothing(store, make):
    path, data, _ = store
    reader, writer = make(LocalBackend(path)), make(LocalBackend(path))  # as two processes
    box = Box((0, 0, 0), (8, 32, 32))
    np.testing.assert_array_equal(reader.read(REF, box, 0), data[:8, :32, :32])
    writer.write(REF, box, 0, np.full(box.shape, 5, np.uint8))
    assert (reader.read(REF, box, 0) == 5).all()
    assert reader.cache_stats()["changed_elsewhere"] == 1
    reader.write(REF, box, 0, np.full(box.shape, 6, np.uint8))  # its own write: the rest stays cached
    other = Box((8, 0, 0), (16, 32, 32))
    reader.read(REF, other, 0)
    hits = reader.cache_stats()["memory_hits"]
    reader.read(REF, other, 0)
    assert reader.cache_stats()["memory_hits"] == hits + 1 and reader.cache_stats()["changed_elsewhere"] == 1
    assert (writer.read(REF, box, 0) == 6).all() and writer.cache_stats()["changed_elsewhere"] == 0  # new to it


def test_max_age_bounds_how_long_chunks_are_reused_when_others_write_outside_ndfs(store, make, tmp_path):
    path, data, _ = store
    box = Box((0, 0, 0), (8, 32, 32))
    outside = LocalBackend(path)  # another client of the service: no stamp reaches the caches
    patient = make(RemoteLike(path), max_age_s=3600)  # memory only: disk entries keep their fetcher's expiry
    np.testing.assert_array_equal(patient.read(REF, box, 0), data[:8, :32, :32])
    inner = RemoteLike(path)
    eager = make(inner, disk=True, max_age_s=0.5)
    eager.read(REF, box, 0)
    assert eager.wait_idle(10)
    outside.write(REF, box, 0, np.full(box.shape, 4, np.uint8))
    np.testing.assert_array_equal(patient.read(REF, box, 0), data[:8, :32, :32])  # still its cached chunk
    time.sleep(0.7)
    inner.boxes.clear()
    assert (eager.read(REF, box, 0) == 4).all() and len(inner.boxes) == 1  # fetched again, not from disk
    assert eager.wait_idle(10)
    later = make(RemoteLike(path), disk=True, max_age_s=0.5)  # the shared disk entry has expired too
    time.sleep(0.7)
    assert (later.read(REF, box, 0) == 4).all() and later.cache_stats()["disk_hits"] == 0
    with pytest.raises(ConfigError):
        make(RemoteLike(path), max_age_s=0)


def test_a_stamp_never_brings_back_a_deleted_volume(tmp_path):
    from ndfs.core import stamp

    with pytest.raises(FileNotFoundError):
        stamp.bump(tmp_path / "gone" / "stamp")
    assert not (tmp_path / "gone").exists()
    (tmp_path / "made").mkdir()
    stamp.bump(tmp_path / "made" / "stamp")
    stamp.bump(tmp_path / "made" / "stamp")
    assert stamp.read(tmp_path / "made" / "stamp")[1] == 2 and stamp.read(tmp_path / "gone" / "stamp") is None


def test_caches_of_a_remote_sharing_a_disk_tier_see_each_others_writes(store, make, tmp_path):
    path, data, _ = store
    reader, writer = make(RemoteLike(path), disk=True), make(RemoteLike(path), disk=True)
    box = Box((0, 0, 0), (8, 32, 32))
    np.testing.assert_array_equal(reader.read(REF, box, 0), data[:8, :32, :32])
    assert reader.wait_idle(10)
    writer.write(REF, box, 0, np.full(box.shape, 9, np.uint8))
    assert (reader.read(REF, box, 0) == 9).all()  # neither its memory nor the shared disk was stale
    assert reader.cache_stats()["changed_elsewhere"] == 1
    assert list((tmp_path / "cache" / "stamps").iterdir())  # the stamp lives beside the disk tier


def test_a_chunk_fetched_across_another_caches_write_is_not_kept_on_disk(store, make):
    """The fetch started before the write and ended after it: its chunk may be old, so the disk forgets it."""
    path, data, _ = store
    slow = RemoteLike(path)
    reader, writer = make(slow, disk=True), make(RemoteLike(path), disk=True)
    box = Box((0, 0, 0), (8, 32, 32))
    reader.read(REF, Box((8, 0, 0), (16, 32, 32)), 0)  # the reader has looked at the volume's stamp
    slow.after.clear()  # the next fetch reads its voxels, then waits before returning them
    fetch = threading.Thread(target=reader.read, args=(REF, box, 0))
    fetch.start()
    _wait_for(lambda: slow.done == 2, "the fetch to read the old voxels")
    writer.write(REF, box, 0, np.full(box.shape, 3, np.uint8))
    slow.after.set()
    fetch.join(10)
    assert reader.wait_idle(10)
    fresh = make(LocalBackend(path), disk=True)  # a third process over the same disk tier
    assert fresh.disk_key(REF, 0, (0, 0, 0)) not in diskcache.Cache(str(fresh.disk_dir))
    assert (fresh.read(REF, box, 0) == 3).all()


# ---- 6. corruption -------------------------------------------------------
def _corruptions():
    good = encode_chunk(np.zeros(CHUNK, np.uint8))
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    bad_crc = bytearray(good)
    bad_crc[30] ^= 0x01  # inside the crc field of the header
    return {
        "garbage": b"garbage",
        "truncated": good[:20],
        "bitflip": bytes(flipped),
        "bad-crc": bytes(bad_crc),
        "wrong-dtype": encode_chunk(np.zeros(CHUNK, np.uint16)),
        "wrong-shape": encode_chunk(np.zeros((8, 32, 16), np.uint8)),
        "not-bytes": {"a": 1},
    }


@pytest.mark.parametrize("name", list(_corruptions()))
def test_corrupt_disk_entry_is_replaced_and_only_that_chunk_refetched(store, make, tmp_path, caplog, name):
    path, data, _ = store
    first = make(LocalBackend(path), disk=True)
    first.read(REF, Box.from_shape(SHAPE), 0)
    key = first.disk_key(REF, 0, (1, 1, 2))
    first.close()
    with diskcache.Cache(str(tmp_path / "cache")) as dc:
        dc.set(key, _corruptions()[name])
    inner = GatedLocal(path)
    second = make(inner, disk=True)
    with caplog.at_level(logging.WARNING, logger="ndfs.cache"):
        np.testing.assert_array_equal(second.read(REF, Box.from_shape(SHAPE), 0), data)
    assert inner.boxes == [(0, Box((8, 32, 64), (16, 64, 96)))]
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1
    assert second.wait_idle(10)  # the refetched chunk is written back in the background
    with diskcache.Cache(str(tmp_path / "cache")) as dc:
        fixed = decode_chunk(dc.get(key), np.uint8, CHUNK)
    np.testing.assert_array_equal(fixed, data[8:16, 32:64, 64:96])


# ---- 7. prefetch ---------------------------------------------------------
@pytest.mark.parametrize("prefetch", [True, False])
def test_sequential_slice_reader_gets_the_next_slab_prefetched(store, make, prefetch):
    path, data, _ = store
    inner = LocalBackend(path)
    cached = make(inner, prefetch=prefetch)
    yx = ((10, 20), (70, 90))
    for z in range(4):
        cached.read(REF, Box((z, *yx[0]), (z + 1, *yx[1])), 0)
    assert cached.wait_idle(10)
    inner.reset_stats()
    base, foreground = cached.cache_stats()["misses"], []
    for z in range(8, 16):
        got = cached.read(REF, Box((z, *yx[0]), (z + 1, *yx[1])), 0)
        np.testing.assert_array_equal(got, data[z:z + 1, 10:70, 20:90])
        foreground.append(cached.cache_stats()["misses"] - base)
    assert foreground == ([0] * 8 if prefetch else [9] * 8)  # chunk misses seen by the reader
    assert cached.wait_idle(10)
    if prefetch:
        # only the read-ahead of slab 2 (9 chunks), one request, started when the reader entered slab 1,
        # itself read ahead: two slabs read, so a quarter of them rounds to the one-slab minimum
        assert inner.stats.reads == 1
        assert cached.cache_stats()["prefetched"] == 9 + 9
    else:
        assert inner.stats.reads == 1
        assert cached.cache_stats()["prefetched"] == 0


def test_read_ahead_starts_one_slab_deep_and_stays_one_slab_ahead_of_a_short_scroll(store, make):
    """A short scroll must not share the link with slabs it never reaches (bench rows 1b, 1c)."""
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, prefetch=True)
    cached.readahead_chunks = 1  # one chunk per slab here, so two slabs once deep (one more than in flight)
    fetched = []

    def scroll(zs):
        for z in zs:
            got = cached.read(REF, Box((z, 0, 0), (z + 1, 32, 32)), 0)
            np.testing.assert_array_equal(got, data[z:z + 1, :32, :32])
            assert cached.wait_idle(10)
        fetched.append([(b.start[0], b.stop[0]) for _, b in inner.boxes])
        inner.boxes.clear()

    scroll([0])
    scroll(range(1, 8))  # sequential now: one slab ahead
    scroll([8])          # the reader entered the slab read ahead: two slabs read, still one ahead
    scroll(range(9, 24))
    assert fetched == [[(0, 8)], [(8, 16)], [(16, 24)], [(24, 32)]]
    # a jump back starts a new stream, shallow again
    cached.invalidate(REF)
    scroll([0, 1])
    assert fetched[-1] == [(0, 8), (8, 16)]


@pytest.mark.parametrize("usual_s", [0.0, 3600.0])
def test_a_reader_waiting_on_a_slab_gets_the_next_one_asked_for_as_the_slab_is_about_to_land(store, make, usual_s):
    """The read-ahead follows the slab the reader waits on a round trip early (bench row 1d), but it never
    shares the link with most of that slab: it waits until the slab is readahead_lead of a usual fetch
    time from landing (a fetch usually taking an hour: until it lands)."""
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, prefetch=True)
    cached.readahead_chunks = 1
    for z in range(8):  # a stream, one slab ahead: slab 8-16 is in memory
        cached.read(REF, Box((z, 0, 0), (z + 1, 32, 32)), 0)
        assert cached.wait_idle(10)
    cached._fetch_s = usual_s  # what the earlier fetches took, as the cache measured it
    inner.boxes.clear()
    inner.gate.clear()  # every inner read from now on is held until the test opens the gate
    got = {}

    def reader():
        for z in range(8, 17):  # entering slab 8 asks for 16-24 (held); z=16 waits on it
            got[z] = cached.read(REF, Box((z, 0, 0), (z + 1, 32, 32)), 0)

    t = threading.Thread(target=reader)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not any(b.start[0] == 16 for _, b in inner.boxes) and time.monotonic() < deadline:
            time.sleep(0.01)
        asked = lambda: sorted({(b.start[0], b.stop[0]) for _, b in inner.boxes})  # noqa: E731
        if usual_s == 0.0:  # the slab waited on is due: the next goes out while it is still held
            while (24, 32) not in asked() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert asked() == [(16, 24), (24, 32)]
        else:  # far from due: nothing more is asked while the slab is on its way
            time.sleep(0.3)
            assert asked() == [(16, 24)]
    finally:
        inner.gate.set()
        t.join(10)
    assert cached.wait_idle(10)
    assert sorted({(b.start[0], b.stop[0]) for _, b in inner.boxes}) == [(16, 24), (24, 32)]
    for z, a in got.items():
        np.testing.assert_array_equal(a, data[z:z + 1, :32, :32])


class _Recording:
    """A synthetic store that records the z range of every inner read (one chunk per slab here)."""

    def __new__(cls, **kw):
        from ndfs.stores.synthetic import SyntheticBackend

        class Recording(SyntheticBackend):
            def _read(self, ref, box, level):
                with self.lock:
                    self.zs.append((box.start[0], box.stop[0]))
                return super()._read(ref, box, level)

        b = Recording(**kw)
        b.zs, b.lock = [], threading.Lock()
        return b


TALL = ("sim", "petascale", "em")


@pytest.mark.parametrize("slabs", [4, 5, 8, 13, 24])
def test_a_scroll_that_stops_has_fetched_at_most_a_quarter_more_than_it_read(make, slabs):
    inner = _Recording(shape=(8 * 64, 32, 32), chunk_shape=(8, 32, 32), channels=["em:uint8"])
    cached = make(inner, prefetch=True)
    for z in range(8 * slabs):
        cached.read(TALL, Box((z, 0, 0), (z + 1, 32, 32)), 0)
        assert cached.wait_idle(10)
    planes = sum(b - a for a, b in inner.zs)
    assert len(set(inner.zs)) == len(inner.zs)  # no slab fetched twice
    assert 8 * slabs <= planes <= 1.25 * 8 * slabs, inner.zs


def test_a_long_read_deepens_to_the_workers_worth_and_one_slab_more(make):
    inner = _Recording(shape=(8 * 64, 32, 32), chunk_shape=(8, 32, 32), channels=["em:uint8"])
    cached = make(inner, prefetch=True)
    ahead = []  # slabs fetched past the reader's, as it enters each slab
    for z in range(8 * 48):
        cached.read(TALL, Box((z, 0, 0), (z + 1, 32, 32)), 0)
        assert cached.wait_idle(10)
        if z % 8 == 0:
            ahead.append(max(b for _, b in inner.zs) // 8 - z // 8 - 1)
    assert ahead == sorted(ahead) and ahead[1:5] == [1, 1, 1, 1]
    assert max(ahead) == 1 + cached.readahead_chunks  # one chunk per slab: 8 workers' worth and one more


def test_scrolling_back_reads_ahead_downwards(store, make):
    """Fiji users scroll both ways: a reader moving to lower planes gets the slabs below read ahead."""
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, prefetch=True)
    cached.readahead_chunks = 1
    fetched = []

    def scroll(zs):
        for z in zs:
            np.testing.assert_array_equal(cached.read(REF, Box((z, 0, 0), (z + 1, 32, 32)), 0),
                                          data[z:z + 1, :32, :32])
            assert cached.wait_idle(10)
        fetched.append([(b.start[0], b.stop[0]) for _, b in inner.boxes])
        inner.boxes.clear()

    scroll([31])
    scroll(range(30, 23, -1))  # downwards now: one slab below
    scroll([23])               # entered the slab read ahead: the next one below
    scroll(range(22, -1, -1))
    assert fetched == [[(24, 32)], [(16, 24)], [(8, 16)], [(0, 8)]]
    assert cached.cache_stats()["misses"] == 1


def test_read_ahead_never_takes_more_than_half_the_memory_tier(store, make):
    """Chunks read ahead must still be there when the reader comes: none fetched twice."""
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, prefetch=True, memory_bytes=3 * 8 * 32 * 32)  # three chunks; a slab is one here
    cached.readahead_chunks = 4  # would be five slabs ahead once deep
    for z in range(32):
        np.testing.assert_array_equal(cached.read(REF, Box((z, 0, 0), (z + 1, 32, 32)), 0), data[z:z + 1, :32, :32])
        assert cached.wait_idle(10)
    assert [(b.start[0], b.stop[0]) for _, b in inner.boxes] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert cached.cache_stats()["misses"] == 1  # only the first slab: the rest was read ahead in time


def test_read_ahead_follows_reads_that_arrive_out_of_order_and_straddle_planes(store, make):
    """The kernel reads stack.tif in pieces that can run out of order: the stream must not restart."""
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner, prefetch=True)
    cached.readahead_chunks = 12  # 12 chunks per whole-plane slab here
    height, width = SHAPE[1], SHAPE[2]

    def plane(z, y0=0, y1=height):
        np.testing.assert_array_equal(cached.read(REF, Box((z, y0, 0), (z + 1, y1, width)), 0),
                                      data[z:z + 1, y0:y1])

    plane(0)
    for z in (2, 1, 4, 3):  # out of order, and a last row before its plane
        plane(z, height - 1)
        plane(z)
    assert cached.wait_idle(10)
    assert [(b.start[0], b.stop[0]) for _, b in inner.boxes] == [(0, 8), (8, 16)]
    inner.boxes.clear()
    for z in (9, 8, 10):  # into the slab read ahead, out of order: the stream goes on to the next slab
        plane(z)
    assert cached.wait_idle(10)
    assert [(b.start[0], b.stop[0]) for _, b in inner.boxes] == [(16, 24)]
    assert cached.cache_stats()["prefetched"] == 12 * 2


def test_a_reader_of_planes_in_row_bands_gets_the_next_slab_prefetched(store, make):
    """Slice files larger than one kernel read (and stack.tif) arrive as row bands of each plane."""
    path, data, _ = store
    inner = LocalBackend(path)
    cached = make(inner, prefetch=True)
    height, width = SHAPE[1], SHAPE[2]
    for z in range(3):
        for y in range(0, height, 16):  # each plane in bands, as 1 MiB reads deliver it
            cached.read(REF, Box((z, y, 0), (z + 1, min(y + 16, height), width)), 0)
    assert cached.wait_idle(10)
    inner.reset_stats()
    np.testing.assert_array_equal(cached.read(REF, Box((8, 0, 0), (16, height, width)), 0), data[8:16])
    assert inner.stats.reads == 0  # the whole next slab, every row, was fetched ahead


@pytest.mark.parametrize("prefetch", [True, False])
def test_prefetch_hint_then_read_costs_nothing(store, make, prefetch):
    path, data, data1 = store
    inner = LocalBackend(path)
    cached = make(inner, disk=True, prefetch=prefetch)
    box = Box((8, 0, 0), (24, 48, 64))
    cached.prefetch(REF, box, 1)
    cached.prefetch(REF, Box((0, 0, 0), (1, 1, 1)), 9)  # a bad hint is ignored
    assert cached.wait_idle(10)
    inner.reset_stats()
    np.testing.assert_array_equal(cached.read(REF, box, 1), data1[8:24])
    assert inner.stats.reads == (0 if prefetch else 1)


def test_prefetch_respects_its_byte_limit(store, make):
    path, _, _ = store
    cached = make(LocalBackend(path), prefetch=True, max_prefetch_bytes=3 * 8 * 32 * 32)
    cached.prefetch(REF, Box.from_shape(SHAPE), 0)
    assert cached.wait_idle(10)
    assert cached.cache_stats()["prefetched"] == 3


def test_base_backend_prefetch_is_a_no_op(store):
    path, _, _ = store
    b = LocalBackend(path)
    assert b.prefetch(REF, Box.from_shape(SHAPE), 0) is None
    assert b.stats.reads == 0


# ---- 8. disk faults, concurrency, helpers --------------------------------
def test_disk_failures_do_not_fail_reads(store, make, monkeypatch, caplog):
    path, data, _ = store
    cached = make(LocalBackend(path), disk=True)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cached._disk, "set", full)
    with caplog.at_level(logging.WARNING, logger="ndfs.cache"):
        np.testing.assert_array_equal(cached.read(REF, Box.from_shape(SHAPE), 0), data)
    monkeypatch.setattr(cached._disk, "get", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "no space")))
    cached.invalidate(REF)
    np.testing.assert_array_equal(cached.read(REF, Box.from_shape(SHAPE), 0), data)
    s = cached.cache_stats()
    assert s["disk_errors"] >= 2 and s["disk_entries"] == 0
    assert any("disk cache set failed" in r.getMessage() for r in caplog.records)


def test_many_threads_random_boxes_small_budgets_no_deadlock(store, make):
    path, data, data1 = store
    cached = make(GatedLocal(path), disk=True, memory_bytes=40_000, disk_bytes=200_000,
                  workers=2, prefetch=True)
    rng = np.random.default_rng(3)
    jobs = []
    for _ in range(8):
        for _ in range(12):
            level = int(rng.integers(0, 2))
            shape = SHAPE if level == 0 else data1.shape
            a = [int(rng.integers(0, s)) for s in shape]
            b = [int(rng.integers(lo + 1, s + 1)) for lo, s in zip(a, shape)]
            jobs.append((level, Box(a, b)))
    failures = []

    def worker(part):
        for level, box in part:
            oracle = data if level == 0 else data1
            if not np.array_equal(cached.read(REF, box, level), oracle[box.slices()]):
                failures.append((level, box))
            cached.prefetch(REF, box.translate((0, 0, 0)), level)

    threads = [threading.Thread(target=worker, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a reader is stuck"
    assert failures == []
    assert cached.wait_idle(10)
    assert cached.cache_stats()["memory_bytes"] <= 40_000


def test_stats_and_disk_helpers(store, make, tmp_path):
    path, data, _ = store
    cached = make(LocalBackend(path), disk=True)
    cached.read(REF, Box((0, 0, 0), (8, 64, 64)), 0)
    cached.read(REF, Box((0, 0, 0), (8, 64, 64)), 0)
    s = cached.cache_stats()
    assert cached.wait_idle(10)  # the disk tier is written in the background
    s = cached.cache_stats()
    assert (s["misses"], s["memory_hits"], s["memory_entries"], s["disk_entries"]) == (4, 4, 4, 4)
    assert s["hit_rate"] == 0.5 and s["memory_bytes"] == 4 * 8 * 32 * 32
    assert s["backend"]["reads"] == 1
    got = cached.read(REF, Box((0, 0, 0), (8, 64, 64)), 0)
    got[:] = 0  # callers own what they get: the cache is not aliased
    np.testing.assert_array_equal(cached.read(REF, Box((0, 0, 0), (8, 64, 64)), 0), data[:8, :64, :64])
    assert cached.kind == "local" and cached.capabilities == LocalBackend(path).capabilities
    assert cached.children(("p",)) == ["em"] and cached.is_volume(REF)
    cached.close()
    info = disk_cache_info(tmp_path / "cache")
    assert info["entries"] == 4 and info["bytes"] > 0 and info["size_limit"] == int(4 * 2**30 * PAYLOAD_SHARE)
    assert clear_disk_cache(tmp_path / "cache") == 4
    assert disk_cache_info(tmp_path / "cache")["entries"] == 0
    missing = tmp_path / "nowhere"
    assert disk_cache_info(missing)["entries"] == 0 and clear_disk_cache(missing) == 0
    assert not missing.exists()


def test_a_bulk_read_of_the_local_store_goes_straight_through_and_keeps_nothing(store, make):
    path, data, _ = store
    inner = GatedLocal(path)
    cached = make(inner)
    cached.bulk_read_bytes = data.nbytes  # the whole level counts as bulk here
    np.testing.assert_array_equal(cached.read(REF, Box.from_shape(SHAPE), 0), data)
    assert inner.boxes == [(0, Box.from_shape(SHAPE))]  # one read, the box itself
    stats = cached.cache_stats()
    assert stats["bulk_reads"] == 1 and stats["memory_entries"] == 0
    small = Box((0, 0, 0), (8, 32, 32))  # below the bulk size: cached chunk by chunk, as always
    np.testing.assert_array_equal(cached.read(REF, small, 0), data[small.slices()])
    assert cached.cache_stats()["memory_entries"] == 1


def test_a_bulk_read_over_a_disk_tier_is_cached_as_ever(store, make):
    path, data, _ = store
    cached = make(LocalBackend(path), disk=True)
    cached.bulk_read_bytes = data.nbytes
    np.testing.assert_array_equal(cached.read(REF, Box.from_shape(SHAPE), 0), data)
    assert cached.cache_stats()["bulk_reads"] == 0 and cached.cache_stats()["memory_entries"] == 48
