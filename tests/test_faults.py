"""Fault injection on every HTTP remote (BOSS, DVID, NeuroData), and process faults of a running mount.

Each protocol server runs on 127.0.0.1 over one copy of the reference project
(``ndfs serve``'s own apps), with :class:`ndfs.serve.common.FaultInjector` in
front: 503 bursts, dropped connections, connection resets (RST), stalls past
the client's timeout, bodies cut off mid-way, short bodies, garbled bodies and
bodies of the wrong length, faulting only the voxel requests (so metadata
loads). What must hold:

* a burst shorter than the retry budget is retried and the read returns
  exactly the oracle's bytes;
* a fault that does not go away fails the read with EIO (ETIMEDOUT for
  stalls) within ``attempts * (connect + read timeout) + backoff + slack``
  (a bound, not a speed claim), and nothing enters either cache tier; once
  the fault is gone the same read gives the right bytes and every disk-cache
  entry equals the oracle;
* through one real mount of all three remotes, a file whose fetch fails is
  EIO while other files of the same mount read correctly;
* a full cache disk and a cache directory deleted under a running mount cost
  no read;
* the outbox posts a volume's writes in the order they were made even when a
  post fails and waits for its retry, and a refusal always reaches the sync
  writer (the first was found by the soak: a newer plane overtaken by an older
  one, so a read after the newer write returned the older pixels).

Not repeated here (see the README's reliability table): 30% random fault
rates and fault rate 1 per driver (test_boss/test_dvid/test_neurodata),
corrupt disk-cache entries (test_cache), kill -9 of the daemon
(test_mount, test_write).

DVID raw bodies and BOSS blosc frames carry no checksum: a same-length
garbling of an uncompressed DVID body cannot be told from data by any client,
so DVID is tested with bodies of the wrong length (short and padded) and with
garbled LZ4 label bodies; NeuroData's zlib stream has a checksum.
"""

import errno
import json
import fcntl
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

import diskcache
import numpy as np
import pytest
import tifffile

from ndfs.stores.boss import BossBackend
from ndfs.stores.dvid import DvidBackend
from ndfs.stores.local import LocalBackend
from ndfs.stores.neurodata import NeuroDataBackend
from ndfs.cache import CachedBackend, decode_chunk
from ndfs.core.errors import BackendError, NdfsError, PermissionDenied
from ndfs.core.geometry import Box
from ndfs.journal import Journal as Outbox
from ndfs.journal.outbox import JournaledStore as OutboxBackend
from ndfs.serve.boss import BossApp
from ndfs.serve.common import ServeOptions, WsgiServer
from ndfs.serve.dvid import DvidApp
from ndfs.serve.neurodata import NeuroDataApp
from ndfs.testing.mount import fuse_unavailable, is_mounted, mounted, wait_until
from ndfs.testing.reference import OFFSET, build_reference_store

needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

CONNECT_S, RETRIES, BACKOFF_S = 1.0, 2, 0.01
STALL_TIMEOUT_S, TIMEOUT_S = 0.4, 5.0  # the read timeout against stalls, and otherwise (ample on a busy machine)
STALL_S = 1.5  # longer than STALL_TIMEOUT_S: a stalled answer always comes too late


@dataclass(frozen=True)
class Protocol:
    name: str
    app: Callable  # LocalBackend -> WSGI app
    served: str  # the store folder the server serves (relative to the store root)
    driver: Callable  # (url, **settings) -> Backend
    prefix: tuple  # path of the reference project's channels in the driver's hierarchy
    voxels: str  # regex of one channel's voxel request paths, with {ch} for the channel
    modes: tuple  # the fault modes this protocol's bodies can be checked against

    def ref(self, channel: str) -> tuple:
        return self.prefix + (channel,)

    def data(self, channel: str = "[^/]+") -> str:
        """A regex matching the voxel requests of a channel (of every channel by default)."""
        return self.voxels.format(ch=channel)


ALL_MODES = ("503", "drop", "reset", "stall", "cut", "truncate", "corrupt", "pad")
PROTOCOLS = {
    "boss": Protocol("boss", BossApp, ".", lambda url, **kw: BossBackend(url, "x", **kw), ("ndfs", "conf"),
                     r"^/v1/cutout/ndfs/conf/{ch}/", ALL_MODES),
    "dvid": Protocol("dvid", DvidApp, "ndfs", lambda url, **kw: DvidBackend(url, branch="master", **kw), ("conf",),
                     r"^/api/node/[0-9a-f]+/{ch}/raw/", tuple(m for m in ALL_MODES if m != "corrupt")),
    "neurodata": Protocol("neurodata", NeuroDataApp, "ndfs", NeuroDataBackend, ("conf",), r"/conf/{ch}/npz/",
                          ALL_MODES),
}
CASES = [(p, m) for p in PROTOCOLS for m in PROTOCOLS[p].modes]
BOX = Box((5, 10, 12), (9, 40, 50))  # inside one BOSS cuboid, DVID request and NeuroData supercube


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The reference project at STORE/ndfs/conf: BOSS collection ndfs, experiment conf; DVID repo and ND token conf."""
    root = tmp_path_factory.mktemp("fault-store")
    _, oracle = build_reference_store(root / "ndfs")
    return root, oracle


@pytest.fixture(scope="module")
def servers(store):
    root, _ = store
    running = {}
    for name, proto in PROTOCOLS.items():
        srv = WsgiServer(proto.app(LocalBackend(root / proto.served)), options=ServeOptions(stall_s=STALL_S))
        running[name] = srv.start()
    yield running
    for srv in running.values():
        srv.stop()


@pytest.fixture
def server(servers, request):
    """(protocol, its server); the server's faults are switched off again after the test."""
    srv = servers[request.param]
    yield PROTOCOLS[request.param], srv
    srv.faults.clear()


def timeout_for(mode: str) -> float:
    return STALL_TIMEOUT_S if mode == "stall" else TIMEOUT_S


def driver(proto: Protocol, srv, mode: str = "", **kw):
    settings = dict(timeout_s=timeout_for(mode), connect_timeout_s=CONNECT_S, retries=RETRIES, backoff_s=BACKOFF_S)
    settings.update(kw)
    return proto.driver(srv.url, **settings)


def bound_s(mode: str, retries: int = RETRIES) -> float:
    """The longest a failing read may take: every attempt timing out, every backoff at its cap, plus slack."""
    attempts = retries + 1
    return attempts * (CONNECT_S + timeout_for(mode)) + sum(BACKOFF_S * 2**n for n in range(attempts)) + 2.0


def disk_entries_match_oracle(disk_dir, cached: CachedBackend, oracle, channel: str) -> int:
    """Check every chunk in the disk tier against the oracle; return how many there are."""
    n = 0
    with diskcache.Cache(str(disk_dir)) as dc:
        for key in list(dc):
            namespace, ref, level, idx = json.loads(key)
            info = cached.info(tuple(ref))
            cbox = info.level(level).grid.chunk_box(tuple(idx))
            arr = decode_chunk(dc[key], info.dtype, cbox.shape)
            np.testing.assert_array_equal(arr, oracle.read(ref[-1], cbox, level), err_msg=f"disk entry {key}")
            n += 1
    return n


# ---- a burst shorter than the retry budget: exactly the right bytes --------------------------------
@pytest.mark.parametrize("server,mode", CASES, ids=[f"{p}-{m}" for p, m in CASES], indirect=["server"])
def test_a_burst_of_faults_is_retried_and_the_read_is_exact(store, server, mode):
    (proto, srv), (_, oracle) = server, store
    with driver(proto, srv, mode, retries=4) as backend:
        backend.info(proto.ref("em16"))  # metadata first: the burst hits voxel requests only
        srv.faults.match = proto.data()
        before = srv.faults.injected[mode]
        srv.faults.plan(*[mode] * 3)
        got = backend.read(proto.ref("em16"), BOX, 0)
        np.testing.assert_array_equal(got, oracle.read("em16", BOX, 0))
        assert srv.faults.injected[mode] - before == 3
        retries = backend.http_stats["retries"]  # every fault cost a retry: none was taken as data
        assert retries == 3 or (mode == "stall" and retries > 3)  # (a busy machine may time out once more)


# ---- a fault that stays: a bounded EIO, nothing cached, then the right bytes ------------------------
@pytest.mark.parametrize("server,mode", CASES, ids=[f"{p}-{m}" for p, m in CASES], indirect=["server"])
def test_a_lasting_fault_is_a_bounded_error_and_never_enters_the_cache(store, server, mode, tmp_path):
    (proto, server), (_, oracle) = server, store
    channel = "em8"
    cached = CachedBackend(driver(proto, server, mode), namespace=f"{proto.name}:{server.url}",
                           disk_dir=tmp_path / "c", memory_bytes=2**24, prefetch=False)
    try:
        cached.info(proto.ref(channel))
        before = server.faults.injected[mode]
        server.faults.match, server.faults.modes, server.faults.rate = proto.data(), (mode,), 1.0
        started = time.monotonic()
        with pytest.raises(NdfsError) as caught:
            cached.read(proto.ref(channel), BOX, 0)
        elapsed = time.monotonic() - started
        expected = errno.ETIMEDOUT if mode == "stall" else errno.EIO
        assert caught.value.errno == expected, caught.value
        assert elapsed < bound_s(mode), f"{elapsed:.1f} s past the bound {bound_s(mode):.1f} s"
        assert cached.wait_idle(10)
        stats = cached.cache_stats()
        assert stats["memory_entries"] == 0 and stats["disk_entries"] == 0
        assert server.faults.injected[mode] - before == RETRIES + 1  # every attempt faulted: none slipped through
        server.faults.rate = 0.0
        np.testing.assert_array_equal(cached.read(proto.ref(channel), BOX, 0), oracle.read(channel, BOX, 0))
        assert cached.wait_idle(10)  # the disk tier is written in the background
        assert disk_entries_match_oracle(tmp_path / "c", cached, oracle, channel) >= 1
    finally:
        cached.close()


@pytest.mark.parametrize("server", ["dvid"], indirect=True)
def test_garbled_lz4_label_bodies_from_dvid_are_refused(store, server, tmp_path):
    """LZ4 has no checksum either, but a garbled label body does not decompress to exactly the box."""
    (proto, server), (_, oracle) = server, store
    with driver(proto, server, label_compression="lz4") as backend:
        backend.info(proto.ref("labels"))
        server.faults.match, server.faults.modes, server.faults.rate = proto.data(), ("corrupt",), 1.0
        with pytest.raises(NdfsError) as caught:
            backend.read(proto.ref("labels"), BOX, 0)
        assert caught.value.errno == errno.EIO and "lz4" in str(caught.value)
        server.faults.rate = 0.0
        np.testing.assert_array_equal(backend.read(proto.ref("labels"), BOX, 0), oracle.read("labels", BOX, 0))


# ---- through one real mount of all three remotes ---------------------------------------------------
def _mount_config(path, servers, cache_dir, **extra) -> None:
    lines = []
    for name, srv in servers.items():
        lines += [f"[remotes.{name}]", f'kind = "{name}"', f'url = "{srv.url}"',
                  f"retries = 1\nbackoff_s = {BACKOFF_S}\ntimeout_s = 2.0"]
        if name == "dvid":
            lines.append('branch = "master"')
    lines += ["[cache]", f'dir = "{cache_dir}"']
    for section, body in extra.items():
        lines += [f"[{section}]", body]
    path.write_text("\n".join(lines) + "\n")


def _channel_dir(mnt, proto: Protocol, channel: str):
    return mnt / proto.name / os.path.join(*proto.prefix) / channel


@needs_fuse
def test_through_a_mount_a_failing_file_is_eio_and_the_others_still_read(store, servers, tmp_path):
    _, oracle = store
    z = OFFSET[0] + 4
    config = tmp_path / "ndfs.toml"
    _mount_config(config, servers, tmp_path / "cache")
    with mounted(config, tmp_path / "mnt", "--log-file", tmp_path / "mount.log"):
        try:
            for proto in PROTOCOLS.values():  # em16's voxels fail, em8's do not
                srv = servers[proto.name]
                srv.faults.match = proto.data("em16")
                srv.faults.modes = ("truncate",) if proto.name == "dvid" else ("corrupt",)
                srv.faults.rate = 1.0
            for proto in PROTOCOLS.values():
                bad = _channel_dir(tmp_path / "mnt", proto, "em16") / "0" / "z" / f"{z}.tif"
                assert os.path.getsize(bad) > 0  # sizes need no voxels
                with pytest.raises(OSError) as caught:
                    with open(bad, "rb") as fh:
                        fh.read()
                assert caught.value.errno == errno.EIO, proto.name
                good = _channel_dir(tmp_path / "mnt", proto, "em8") / "0" / "z" / f"{z}.tif"
                plane = oracle.read("em8", Box((z, OFFSET[1], OFFSET[2]), (z + 1, OFFSET[1] + 70, OFFSET[2] + 90)), 0)
                np.testing.assert_array_equal(tifffile.imread(good), plane[0])
                assert servers[proto.name].faults.injected["truncate" if proto.name == "dvid" else "corrupt"] >= 2
            for proto in PROTOCOLS.values():  # the fault goes away: the same file reads right, nothing was kept
                servers[proto.name].faults.rate = 0.0
                bad = _channel_dir(tmp_path / "mnt", proto, "em16") / "0" / "z" / f"{z}.tif"
                plane = oracle.read("em16", Box((z, OFFSET[1], OFFSET[2]), (z + 1, OFFSET[1] + 70, OFFSET[2] + 90)), 0)
                np.testing.assert_array_equal(tifffile.imread(bad), plane[0])
        finally:
            for srv in servers.values():
                srv.faults.clear()
    log = (tmp_path / "mount.log").read_text()
    assert "Traceback" not in log  # failures are logged as one line each, not as crashes


# ---- process faults: a full cache disk, a deleted cache directory ----------------------------------
def _tmpfs(path, size: str) -> bool:
    """Mount a small tmpfs at path (root only); False where that is not possible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _read_every_plane(level_dir, oracle, channel: str, level: int = 0, zeros_below_start: bool = False) -> int:
    """Compare every plane of a level with the oracle (``zeros_below_start``: the BOSS, which answers no voxel
    below the level-0 frame start at coarser levels)."""
    box, start = oracle.box(channel, level), oracle.box(channel, 0).start
    for z in range(box.start[0], box.stop[0]):
        plane = oracle.read(channel, Box((z, *box.start[1:]), (z + 1, *box.stop[1:])), level)[0].copy()
        if zeros_below_start and level:
            plane[:max(0, start[1] - box.start[1])] = 0
            plane[:, :max(0, start[2] - box.start[2])] = 0
        np.testing.assert_array_equal(tifffile.imread(level_dir / "z" / f"{z}.tif"), plane, err_msg=f"z={z}")
    return box.shape[0]


@needs_fuse
def test_a_full_cache_disk_still_serves_every_read_uncached(store, servers, tmp_path):
    _, oracle = store
    disk = tmp_path / "small"
    if not _tmpfs(disk, "1m"):
        pytest.skip("needs root to mount a 1 MiB tmpfs (ENOSPC injection is in test_cache)")
    try:
        config = tmp_path / "ndfs.toml"
        _mount_config(config, {"boss": servers["boss"]}, disk / "cache")
        with mounted(config, tmp_path / "mnt", "--log-file", tmp_path / "mount.log", "--cache-memory", "64K"):
            em = _channel_dir(tmp_path / "mnt", PROTOCOLS["boss"], "em16")
            _read_every_plane(em / "1", oracle, "em16", 1, zeros_below_start=True)  # the cache is there and working
            with open(disk / "filler", "wb", buffering=0) as fh:  # now fill the disk to the last byte
                with pytest.raises(OSError) as full:
                    while True:
                        fh.write(b"\0" * 65536)
            assert full.value.errno == errno.ENOSPC
            served = _read_every_plane(em / "0", oracle, "em16", 0)  # level 0: 20 planes, 252 KB, nowhere to cache
            served += _read_every_plane(_channel_dir(tmp_path / "mnt", PROTOCOLS["boss"], "labels") / "0", oracle,
                                        "labels", 0)
            assert served == 40
            stats = json.loads((tmp_path / "mnt" / ".ndfs" / "stats.json").read_text())["boss"]["cache"]
            assert stats["disk_errors"] >= 1  # the cache noticed, and reads went on without it
            os.unlink(disk / "filler")
            _read_every_plane(em / "0", oracle, "em16", 0)
        log = (tmp_path / "mount.log").read_text()
        assert "disk cache set failed" in log and "Traceback" not in log
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@needs_fuse
def test_a_cache_directory_deleted_under_a_running_mount_changes_no_read(store, servers, tmp_path):
    _, oracle = store
    config = tmp_path / "ndfs.toml"
    _mount_config(config, {"neurodata": servers["neurodata"]}, tmp_path / "cache")
    with mounted(config, tmp_path / "mnt", "--log-file", tmp_path / "mount.log", "--cache-memory", "64K") as pid:
        chan = _channel_dir(tmp_path / "mnt", PROTOCOLS["neurodata"], "em16")
        _read_every_plane(chan / "0", oracle, "em16", 0)
        assert (tmp_path / "cache" / "cache.db").exists()
        shutil.rmtree(tmp_path / "cache")
        for level in (0, 1, 0):  # both levels, the first twice: from wherever the cache now serves it
            _read_every_plane(chan / str(level), oracle, "em16", level)
        _read_every_plane(_channel_dir(tmp_path / "mnt", PROTOCOLS["neurodata"], "em8") / "0", oracle, "em8", 0)
        os.kill(pid, 0)  # the daemon is alive
        assert is_mounted(tmp_path / "mnt")
        # never brought back: a new database there would make each new thread's connection wait on it
        assert not (tmp_path / "cache").exists()
    assert wait_until(lambda: not is_mounted(tmp_path / "mnt"))
    assert "Traceback" not in (tmp_path / "mount.log").read_text()


# ---- the outbox under faults: order kept, refusals never swallowed --------------------------------
class _Recording(LocalBackend):
    """A local store whose writes are logged (first voxel's value) and can fail: transiently or for good."""

    def __init__(self, path):
        super().__init__(path)
        self.log: list[int] = []
        self.transient = 0  # the next n writes fail with BackendError
        self.refuse = False  # every write fails with PermissionDenied
        self._rec = threading.Lock()

    def _write(self, ref, box, level, array):
        with self._rec:
            self.log.append(int(array.flat[0]))
            fail, self.transient = self.transient > 0, max(0, self.transient - 1)
        if self.refuse:
            raise PermissionDenied("refused for the test")
        if fail:
            raise BackendError("down for the test")
        super()._write(ref, box, level, array)


@pytest.fixture
def outbox_site(tmp_path):
    store = tmp_path / "store"
    LocalBackend(store, create=True).create_volume(("p", "v"), (4, 16, 16), "uint8", chunk_shape=(4, 16, 16))
    return _Recording(store), Outbox(tmp_path / "outbox")


PLANE = Box((1, 0, 0), (2, 16, 16))


def test_a_newer_write_never_overtakes_an_older_one_waiting_for_its_retry(outbox_site):
    """Async write-back: a write whose post failed is retried later; one made meanwhile must wait for it."""
    inner, box = outbox_site
    ob = OutboxBackend(inner, box, "r", "local:test", mode="async", retry_min_s=1.5)
    try:
        inner.transient = 1
        ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 1, np.uint8))
        assert wait_until(lambda: inner.log == [1], timeout=5)  # posted once, failed: retried in 1.5 s
        ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 2, np.uint8))
        time.sleep(0.5)
        assert inner.log == [1], "the newer write was posted before the older one it replaces"
        assert ob.drain(timeout=10)
        assert inner.log == [1, 1, 2]
        assert (LocalBackend(inner.root).read(("p", "v"), PLANE, 0) == 2).all()
    finally:
        ob.close()


def test_sync_writes_after_a_failed_one_post_in_order(outbox_site):
    inner, box = outbox_site
    ob = OutboxBackend(inner, box, "r", "local:test", mode="sync", retry_min_s=30.0)
    try:
        for round_ in range(20):
            first, second = 2 * round_ + 1, 2 * round_ + 2
            inner.log.clear()
            inner.transient = 1
            with pytest.raises(BackendError):  # close() would say EIO; the data is kept
                ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, first, np.uint8))
            ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, second, np.uint8))
            assert inner.log == [first, first, second], f"round {round_}: posted {inner.log}"
            assert (LocalBackend(inner.root).read(("p", "v"), PLANE, 0) == second).all()
            assert not ob.pending()
    finally:
        ob.close()


def test_a_sync_writer_waits_out_another_writer_finishing_an_older_entrys_file(outbox_site):
    """Another process's writer holds its entry's file locked for a moment after naming it (its temporary
    file's lock); a sync writer posting that older entry first waits that moment out instead of failing."""
    inner, box = outbox_site
    ob = OutboxBackend(inner, box, "r", "local:test", mode="sync", retry_min_s=30.0)
    try:
        older = Outbox(box.root).put("r", "local:test", ("p", "v"), 0, PLANE, np.full(PLANE.shape, 1, np.uint8))
        meta = os.open(box.root / f"{older.id}.json", os.O_RDONLY)
        fcntl.flock(meta, fcntl.LOCK_EX)  # the other writer, between its rename and its close
        threading.Timer(0.5, os.close, (meta,)).start()
        ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 2, np.uint8))
        assert inner.log == [1, 2], f"posted {inner.log}"
        assert (LocalBackend(inner.root).read(("p", "v"), PLANE, 0) == 2).all()
        assert not ob.pending() and not box.entries()
    finally:
        ob.close()


def test_a_write_kept_by_a_process_that_named_the_remote_otherwise_still_posts_first(outbox_site):
    """A mount calls a service "b", ndfs.remote(url) in another process calls it "neurodata": one target, one
    volume. An older write kept for retry by one must post before the other's newer write, never after it."""
    inner, box = outbox_site
    api = OutboxBackend(inner, box, "neurodata", "local:test", mode="sync", retry_min_s=30.0)
    mount = OutboxBackend(inner, box, "b", "local:test", mode="sync", retry_min_s=30.0)
    try:
        inner.transient = 1
        with pytest.raises(BackendError):  # kept in the outbox, retried in 30 s
            api.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 1, np.uint8))
        mount.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 2, np.uint8))
        assert inner.log == [1, 1, 2], f"posted {inner.log}"  # the kept write went first, then the newer one
        assert not box.entries()
        assert api.drain(timeout=10) and inner.log == [1, 1, 2]  # nothing left to post late
        assert (LocalBackend(inner.root).read(("p", "v"), PLANE, 0) == 2).all()
    finally:
        api.close()
        mount.close()


def test_a_read_of_a_box_whose_pending_write_is_posted_meanwhile_reads_it_at_the_remote(outbox_site, monkeypatch):
    """A pending entry holding all of a box answers reads without asking the remote; when another process
    posts (and removes) it in the middle of such a read, the read asks the remote: never zeros."""
    inner, box = outbox_site
    ob = OutboxBackend(inner, box, "r", "local:test", mode="async", retry_min_s=30.0)
    try:
        inner.transient = 1
        ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 7, np.uint8))
        assert wait_until(lambda: inner.log == [7], timeout=5)  # failed once: pending, retried in 30 s
        (entry,) = box.entries()
        load = type(box).load

        def posted_meanwhile(self, e):  # another process posts it and removes it, under this read
            LocalBackend(inner.root).write(("p", "v"), PLANE, 0, np.full(PLANE.shape, 7, np.uint8))
            box.remove(e)
            monkeypatch.setattr(type(box), "load", load)
            return load(self, e)

        monkeypatch.setattr(type(box), "load", posted_meanwhile)
        assert (ob.read(("p", "v"), PLANE, 0) == 7).all()
    finally:
        ob.close()


def test_a_refusal_always_reaches_the_sync_writer(outbox_site):
    """The background retry thread must never post (and so swallow the refusal of) a sync writer's entry."""
    inner, box = outbox_site
    ob = OutboxBackend(inner, box, "r", "local:test", mode="sync")
    try:
        inner.refuse = True
        for i in range(200):
            with pytest.raises(PermissionDenied):
                ob.write(("p", "v"), PLANE, 0, np.full(PLANE.shape, i % 250 + 1, np.uint8))
        assert not ob.pending() and not box.entries()  # refused: nothing kept, as documented
    finally:
        ob.close()
