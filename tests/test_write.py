"""Writes post back through a real mount: every writable file kind, refusals, the outbox, crashes, races."""

import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from ndfs.stores.local import LocalBackend
from ndfs.tools.demo import make_demo
from ndfs.core.downsample import downsample_image
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, is_mounted, mounted, ndfs, wait_until

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

SHAPE = (24, 200, 168)


def store_digest(root: Path) -> str:
    """One hash over every file of a store (names and bytes): equal digests = byte-identical stores."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def oracle(store: Path, channel: str = "em", level: int = 0) -> np.ndarray:
    return zarr.open_array(str(store / "demo" / channel / str(level)), mode="r")[:]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsite")
    make_demo(str(root / "store"), shape=SHAPE, levels=3, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    return root


@pytest.fixture(scope="module")
def mnt(site):
    mountpoint = site / "mnt"
    with mounted(site / "ndfs.toml", mountpoint, "--log-file", site / "mount.log"):
        yield mountpoint / "local" / "demo"


def noise(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(1, 250, size=shape).astype(dtype)


# ---- every writable file kind -------------------------------------------------------
@pytest.mark.parametrize("axis,index", [("z", 3), ("y", 50), ("x", 7)])
def test_a_plane_written_with_tifffile_lands_in_the_store_and_every_view(site, mnt, axis, index):
    level = mnt / "em" / "0"
    shape = {"z": SHAPE[1:], "y": (SHAPE[0], SHAPE[2]), "x": SHAPE[:2]}[axis]
    other = {"z": level / "y" / "60.tif", "y": level / "z" / "9.tif", "x": level / "z" / "9.tif"}[axis]
    before_other = tifffile.imread(other)  # now in the kernel's page cache (keep_cache)
    new = noise(shape, seed=index)
    tifffile.imwrite(level / axis / f"{index}.tif", new)
    np.testing.assert_array_equal(tifffile.imread(level / axis / f"{index}.tif"), new)
    a = oracle(site / "store")
    np.testing.assert_array_equal(np.take(a, index, axis="zyx".index(axis)), new)
    # a file read before the write shows the new voxels when read again (the changed volume is served past the page cache)
    expect_other = a[:, 60, :] if axis == "z" else a[9]
    after_other = tifffile.imread(other)
    np.testing.assert_array_equal(after_other, expect_other)
    assert not np.array_equal(before_other, after_other)
    with tifffile.TiffFile(level / "stack.tif") as tf:
        np.testing.assert_array_equal(tf.asarray(), a)


def test_a_level_0_write_rebuilds_the_lower_levels_the_mount_shows(site, mnt):
    new = noise(SHAPE[1:], seed=11)
    tifffile.imwrite(mnt / "em" / "0" / "z" / "12.tif", new)
    a0, a1 = oracle(site / "store", level=0), oracle(site / "store", level=1)
    np.testing.assert_array_equal(a1[12], downsample_image(a0[12:13])[0])
    np.testing.assert_array_equal(tifffile.imread(mnt / "em" / "1" / "z" / "12.tif"), a1[12])


def test_cp_of_a_folder_of_slice_tiffs_into_z(site, mnt, tmp_path):
    planes = {z: noise(SHAPE[1:], seed=100 + z) for z in range(16, 20)}
    for z, plane in planes.items():
        tifffile.imwrite(tmp_path / f"{z}.tif", plane)
    subprocess.run(f"cp {tmp_path}/*.tif {mnt / 'em' / '0' / 'z'}/", shell=True, check=True)
    a = oracle(site / "store")
    for z, plane in planes.items():
        np.testing.assert_array_equal(a[z], plane)


def test_a_tiff_written_in_random_order_and_sizes_is_assembled(site, mnt):
    new = noise(SHAPE[1:], seed=5)
    buf = io.BytesIO()
    tifffile.imwrite(buf, new)
    data = buf.getvalue()
    cuts = sorted(random.Random(1).sample(range(1, len(data)), 40))
    pieces = list(zip([0] + cuts, cuts + [len(data)]))
    random.Random(2).shuffle(pieces)
    fd = os.open(mnt / "em" / "0" / "z" / "21.tif", os.O_WRONLY | os.O_TRUNC)
    try:
        for a, b in pieces:
            os.pwrite(fd, data[a:b], a)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(oracle(site / "store")[21], new)


def test_ftruncate_of_an_open_write_handle_cuts_or_empties_what_it_holds(site, mnt):
    """ftruncate(fd, n) acts on the descriptor's own content: cut to n bytes, or emptied and written anew."""
    first, second = noise(SHAPE[1:], seed=11), noise(SHAPE[1:], seed=12)
    data = [io.BytesIO(), io.BytesIO()]
    tifffile.imwrite(data[0], first)
    tifffile.imwrite(data[1], second)
    path = mnt / "em" / "0" / "z" / "19.tif"
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        os.write(fd, data[0].getvalue() + b"\0" * 5000)  # a whole file and then trailing bytes
        os.ftruncate(fd, len(data[0].getvalue()))  # cut back to the whole file
        assert os.fstat(fd).st_size == len(data[0].getvalue())
    finally:
        os.close(fd)
    np.testing.assert_array_equal(oracle(site / "store")[19], first)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)  # emptied through the descriptor, then written anew
        os.pwrite(fd, data[1].getvalue(), 0)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(oracle(site / "store")[19], second)
    np.testing.assert_array_equal(tifffile.imread(path), second)


def test_a_landed_write_is_stated_at_the_size_it_reads_at_before_its_handle_is_released(site, mnt):
    """close() commits and returns before the kernel's release; a stat by the writer in between must
    show the file as stored (laid out anew by ndfs), not the bytes it wrote. A second descriptor on
    the same open file holds the release back, so the window is open for as long as the test needs."""
    data = io.BytesIO()
    new = noise(SHAPE[1:], seed=13)
    tifffile.imwrite(data, new)
    path = mnt / "em" / "0" / "z" / "17.tif"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    held = os.dup(fd)  # the same open file: close(fd) flushes and commits, the handle stays
    try:
        os.write(fd, data.getvalue())  # no stat before close: its answer would stay in the kernel's cache
        os.close(fd)
        stated = os.stat(path).st_size  # at once, as a program that saves and then stats does
        np.testing.assert_array_equal(oracle(site / "store")[17], new)  # landed
        stored = path.read_bytes()
        assert len(stored) != len(data.getvalue())  # ndfs's layout differs, or this test could not fail
        assert stated == len(stored) and os.stat(path).st_size == len(stored)
        np.testing.assert_array_equal(tifffile.imread(io.BytesIO(stored)), new)
    finally:
        os.close(held)
    assert os.stat(path).st_size == len(stored)


def test_stack_tif_takes_a_whole_level(site, mnt):
    lv2 = oracle(site / "store", level=2)
    new = noise(lv2.shape, seed=7)
    tifffile.imwrite(mnt / "em" / "2" / "stack.tif", new, imagej=True)
    np.testing.assert_array_equal(oracle(site / "store", level=2), new)
    np.testing.assert_array_equal(tifffile.imread(mnt / "em" / "2" / "stack.tif"), new)


@pytest.mark.parametrize("fmt", ["tif", "npy", "npz", "h5"])
def test_cutout_files_read_any_box_and_take_writes(site, mnt, fmt):
    box_name = f"10-42_20-52_2-6.{fmt}"  # x 10..41, y 20..51, z 2..5
    path = mnt / "cells" / "0" / "cutout" / box_name
    a = oracle(site / "store", "cells")
    want = a[2:6, 20:52, 10:42]
    readers = {"tif": tifffile.imread, "npy": np.load, "npz": lambda p: np.load(p)["volume"],
               "h5": lambda p: h5py.File(p, "r")["volume"][()]}  # the layout ndfs export writes
    got = readers[fmt](path)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, want)
    assert os.stat(path).st_size == len(path.read_bytes())
    new = np.random.default_rng(3).integers(0, 2**40, size=want.shape, dtype=np.uint64)
    if fmt == "tif":
        tifffile.imwrite(path, new, photometric="minisblack")
    elif fmt == "npy":
        np.save(path, new)
    elif fmt == "npz":
        with open(path, "wb") as fh:
            np.savez_compressed(fh, labels=new)
    else:
        with h5py.File(path, "w") as f:
            f["labels"] = new
    np.testing.assert_array_equal(oracle(site / "store", "cells")[2:6, 20:52, 10:42], new)
    np.testing.assert_array_equal(readers[fmt](path), new)


def test_a_cutout_past_the_size_limit_is_efbig_and_bad_names_are_refused(site, tmp_path):
    (tmp_path / "ndfs.toml").write_text(f'[remotes.local]\nkind = "local"\npath = "{site / "store"}"\n'
                                        '[mount]\nmax_cutout_bytes = 100000\n')
    with mounted(tmp_path / "ndfs.toml", tmp_path / "mnt"):
        cut = tmp_path / "mnt" / "local" / "demo" / "em" / "0" / "cutout"
        assert os.listdir(cut) == []
        assert np.load(cut / "0-100_0-100_0-10.npy").shape == (10, 100, 100)
        for name, code in [("0-168_0-200_0-24.npy", errno.EFBIG), ("0-10_0-10_0-99.npy", errno.EINVAL),
                           ("5-5_0-10_0-1.tif", errno.ENOENT), ("banana.h5", errno.ENOENT)]:
            with pytest.raises(OSError) as info:
                os.stat(cut / name)
            assert info.value.errno == code, name
        with pytest.raises(OSError) as info:
            open(cut / "banana.npy", "wb").close()
        assert info.value.errno == errno.EINVAL


# ---- refusals change nothing -------------------------------------------------------
def _tiff_bytes(arr, **kw):
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


BAD_INPUTS = {
    "not a tiff": ("z/4.tif", b"hello, I am text"),
    "wrong shape": ("z/4.tif", _tiff_bytes(noise((100, 100)))),
    "wrong dtype": ("z/4.tif", _tiff_bytes(noise(SHAPE[1:], np.uint16))),
    "rgb": ("z/4.tif", _tiff_bytes(noise((*SHAPE[1:], 3)), photometric="rgb")),
    "stack with too few pages": ("stack.tif", _tiff_bytes(noise((3, *SHAPE[1:])), photometric="minisblack")),
    "npy of the wrong box": ("cutout/0-8_0-8_0-2.npy", _npy_bytes(np.zeros((2, 8, 9), np.uint8))),
    "npy of the wrong dtype": ("cutout/0-8_0-8_0-2.npy", _npy_bytes(np.zeros((2, 8, 8), np.float32))),
}
#: files that end before their structure does: a writer may still be filling them in
CUT_SHORT = {
    "truncated": ("z/4.tif", _tiff_bytes(noise(SHAPE[1:]))[:20000]),
    "stack cut mid-page": ("stack.tif", _tiff_bytes(noise(SHAPE))[:-5000]),
    "npy cut short": ("cutout/0-8_0-8_0-2.npy", _npy_bytes(np.zeros((2, 8, 8), np.uint8))[:-7]),
}


@pytest.mark.parametrize("what", list(BAD_INPUTS))
def test_bad_input_is_einval_at_close_and_the_store_is_byte_identical(site, mnt, what):
    rel, data = BAD_INPUTS[what]
    before = store_digest(site / "store")
    fh = open(mnt / "em" / "0" / rel, "wb")
    fh.write(data)
    with pytest.raises(OSError) as info:
        fh.close()
    assert info.value.errno == errno.EINVAL
    assert store_digest(site / "store") == before
    assert tifffile.imread(mnt / "em" / "0" / "z" / "4.tif").shape == SHAPE[1:]  # the mount still answers
    log = (site / "mount.log").read_text()
    assert "EINVAL" in log or "not a readable" in log or "holds" in log or "pages" in log


@pytest.mark.parametrize("what", list(CUT_SHORT))
def test_a_file_left_cut_short_stores_nothing_and_is_kept_in_the_outbox(site, mnt, what):
    """Its close() cannot tell it from a file still being written, so the commit comes at release,
    whose error nobody waits for: the bytes go to the outbox as a failed entry, the store is untouched."""
    rel, data = CUT_SHORT[what]
    before = store_digest(site / "store")
    path = f"/local/demo/em/0/{rel}"
    kept = lambda: [line for line in ndfs("--config", site / "ndfs.toml", "outbox").stdout.splitlines()
                    if path in line and "failed" in line]
    earlier = len(kept())
    with open(mnt / "em" / "0" / rel, "wb") as fh:
        fh.write(data)  # close() succeeds: the file was not complete, so nothing is committed yet
    assert wait_until(lambda: len(kept()) == earlier + 1, timeout=20)
    assert store_digest(site / "store") == before
    assert tifffile.imread(mnt / "em" / "0" / "z" / "4.tif").shape == SHAPE[1:]


# ---- concurrency ----------------------------------------------------------------------
def test_concurrent_readers_never_see_a_torn_slice(site, mnt):
    """Readers racing 30 rewrites of one slice get the old or the new pixels, never a mix of both.

    As on a local disk, a reader that opens the file while a writer has just truncated it may see it
    short; such reads are counted and must stay a minority, and every whole read must be one value.
    """
    path = mnt / "em" / "0" / "z" / "6.tif"
    values = (17, 200)
    tifffile.imwrite(path, np.full(SHAPE[1:], values[0], np.uint8))
    size = os.stat(path).st_size
    assert size == len(path.read_bytes())
    stop = threading.Event()
    whole, short, torn = [], [], []

    def reader():
        while not stop.is_set():
            with open(path, "rb") as fh:
                data = fh.read()
            if len(data) != size:
                short.append(len(data))
                continue
            u = np.unique(tifffile.imread(io.BytesIO(data)))
            whole.append(int(u[0]))
            if len(u) != 1:
                torn.append(u)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            tifffile.imwrite(path, np.full(SHAPE[1:], values[i % 2], np.uint8))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not torn
    assert set(whole) == set(values) and len(whole) > 3 * len(short)
    assert np.all(oracle(site / "store")[6] == values[1])


# ---- remote service: the outbox -----------------------------------------------------
class Switch:
    """WSGI middleware: 503 for every request while down; POSTs can be slowed; counts POSTs that got through."""

    def __init__(self, app):
        self.app, self.down, self.refuse_posts, self.post_delay_s, self.posts = app, False, False, 0.0, []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if self.refuse_posts and environ["REQUEST_METHOD"] == "POST":
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("403 Forbidden", [("Content-Type", "application/json")])
            return [b'{"status": 403, "code": 2003, "message": "no write permission for the test"}']
        if self.down:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"status": 503, "code": 9002, "message": "down for the test"}']
        if environ["REQUEST_METHOD"] == "POST":
            if self.post_delay_s:
                time.sleep(self.post_delay_s)
            with self.lock:
                self.posts.append(environ["PATH_INFO"])
        return self.app(environ, start_response)


@pytest.fixture
def boss(tmp_path, monkeypatch):
    """A BOSS server over a fresh demo store, switchable down; and a config mounting it with an outbox."""
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import WsgiServer

    make_demo(str(tmp_path / "coll"), shape=(16, 128, 128), levels=1, chunk_shape=(16, 64, 64), progress=False)
    monkeypatch.setenv("NDFS_OUTBOX_DIR", str(tmp_path / "outbox"))  # the environment beats the config file
    switch = Switch(BossApp(LocalBackend(tmp_path)))
    with WsgiServer(switch) as server:
        def config(mode="sync"):
            path = tmp_path / f"ndfs-{mode}.toml"
            path.write_text(f'[remotes.b]\nkind = "boss"\nurl = "{server.url}"\nretries = 1\nbackoff_s = 0.05\n'
                            f'timeout_s = 10.0\n[write]\nwrite_back = "{mode}"\nretry_max_s = 1.0\n')
            return path
        yield switch, config, tmp_path


def outbox_entries(tmp_path):
    return sorted((tmp_path / "outbox").glob("*.json"))


def test_a_server_that_fails_then_recovers_gets_the_post_exactly_once(boss):
    switch, config, root = boss
    with mounted(config("sync"), root / "mnt"):
        path = root / "mnt" / "b" / "coll" / "demo" / "em" / "0" / "z" / "5.tif"
        before = tifffile.imread(path)
        new = noise((128, 128), seed=9)
        switch.down = True
        fh = open(path, "wb")
        fh.write(_tiff_bytes(new))
        with pytest.raises(OSError) as info:
            fh.close()
        assert info.value.errno == errno.EIO  # close() says the post failed...
        assert len(outbox_entries(root)) == 1  # ...and the data is kept
        listed = ndfs("--config", config("sync"), "outbox", "list").stdout
        assert "pending" in listed and "b/coll/demo/em" in listed  # a table row: state, remote/volume, ...
        np.testing.assert_array_equal(tifffile.imread(path), new)  # read-your-writes while the server is down
        assert not np.array_equal(before, new)
        switch.down = False
        assert wait_until(lambda: not outbox_entries(root), timeout=30)
        np.testing.assert_array_equal(oracle(root / "coll")[5], new)
        assert len([p for p in switch.posts if "/cutout/" in p]) == 1


def test_async_write_back_returns_at_once_and_posts_in_the_background(boss):
    switch, config, root = boss
    with mounted(config("async"), root / "mnt"):
        path = root / "mnt" / "b" / "coll" / "demo" / "em" / "0" / "z" / "2.tif"
        new = noise((128, 128), seed=4)
        assert tifffile.imread(path).shape == (128, 128)  # the mount has the volume's info before the outage
        switch.down = True
        tifffile.imwrite(path, new)  # close() succeeds: the data is durable in the outbox
        assert len(outbox_entries(root)) == 1
        np.testing.assert_array_equal(tifffile.imread(path), new)
        stats = json.loads((root / "mnt" / ".ndfs" / "stats.json").read_text())
        assert stats["b"]["outbox_pending"] == 1
        switch.down = False
        ndfs("umount", root / "mnt")  # waits for the outbox to drain before unmounting
        assert not outbox_entries(root) and not is_mounted(root / "mnt")
        np.testing.assert_array_equal(oracle(root / "coll")[2], new)


def test_a_refused_write_in_async_mode_is_kept_as_failed_and_can_be_dropped(boss):
    switch, config, root = boss
    with mounted(config("async"), root / "mnt"):
        path = root / "mnt" / "b" / "coll" / "demo" / "em" / "0" / "z" / "1.tif"
        before = tifffile.imread(path)
        switch.refuse_posts = True  # 403: retrying cannot help
        tifffile.imwrite(path, noise((128, 128), seed=1))
        assert wait_until(lambda: "failed" in ndfs("--config", config("async"), "outbox").stdout, timeout=30)
        np.testing.assert_array_equal(oracle(root / "coll")[1], before)
    entries = outbox_entries(root)
    assert len(entries) == 1
    entry_id = entries[0].stem
    done = ndfs("--config", config("async"), "outbox", "drop", entry_id)
    assert f"dropped {entry_id}" in done.stdout
    assert not outbox_entries(root)


def test_kill_9_of_the_daemon_mid_upload_loses_nothing_after_remount(boss):
    switch, config, root = boss
    mountpoint = root / "mnt"
    new = noise((128, 128), seed=8)
    with mounted(config("async"), mountpoint) as pid:
        switch.post_delay_s = 3.0  # the upload is under way when the daemon dies
        tifffile.imwrite(mountpoint / "b" / "coll" / "demo" / "em" / "0" / "z" / "9.tif", new)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not is_mounted(mountpoint), timeout=30)  # auto_unmount released it
    assert len(outbox_entries(root)) == 1
    switch.post_delay_s = 0.0
    with mounted(config("async"), mountpoint):
        assert wait_until(lambda: not outbox_entries(root), timeout=30)  # the new daemon resumed the outbox
        np.testing.assert_array_equal(oracle(root / "coll")[9], new)
        np.testing.assert_array_equal(
            tifffile.imread(mountpoint / "b" / "coll" / "demo" / "em" / "0" / "z" / "9.tif"), new)


def test_outbox_retry_posts_what_a_dead_mount_left(boss):
    switch, config, root = boss
    from ndfs.journal import Journal as Outbox
    from ndfs.core.config import load_config, remote_target

    cfg = load_config(config("sync"))
    new = noise((1, 64, 64), seed=12)
    Outbox(root / "outbox").put("b", remote_target(cfg.remote("b")), ("coll", "demo", "em"), 0,
                                Box((3, 0, 0), (4, 64, 64)), new)
    assert "pending" in ndfs("--config", config("sync"), "outbox", "list").stdout
    done = ndfs("--config", config("sync"), "outbox", "retry")
    assert "posted 1 of 1" in done.stdout
    np.testing.assert_array_equal(oracle(root / "coll")[3:4, :64, :64], new)
    assert "empty" in ndfs("--config", config("sync"), "outbox").stdout
    bad = ndfs("--config", config("sync"), "outbox", "drop", "nope", check=False)
    assert bad.returncode != 0 and "no outbox entry nope" in bad.stderr


def test_python_assignment_takes_the_same_checks_and_invalidates_the_cache(tmp_path):
    from ndfs.cache import CachedBackend
    from ndfs.core.errors import BadRegion, ReadOnly
    from ndfs.volume import Volume

    make_demo(str(tmp_path / "store"), shape=(8, 64, 64), levels=2, chunk_shape=(8, 32, 32), progress=False)
    backend = CachedBackend(LocalBackend(tmp_path / "store"), namespace="t", memory_bytes=2**24)
    vol = Volume(backend, "demo/em")
    old = vol[2]  # cached now
    vol[2, 0:32, 0:32] = np.full((32, 32), 9, np.uint8)
    assert np.all(vol[2][:32, :32] == 9) and np.array_equal(vol[2][32:], old[32:])
    assert np.all(vol.level(1)[2][:16, :16] == 9)  # the lower level was rebuilt and is not served stale
    with pytest.raises(BadRegion):
        vol[2, 0:32, 0:32] = np.zeros((32, 31), np.uint8)
    with pytest.raises(BadRegion):
        vol[2, 0:32, 0:32] = np.zeros((32, 32), np.float64)
    with pytest.raises(ReadOnly):
        Volume(LocalBackend(tmp_path / "store", read_only=True), "demo/em")[0, 0, 0] = 1
    backend.close()


SAVER = r"""
import ij.IJ;
import ij.ImagePlus;

/** "src dst": open src as ImageJ does and save it over dst with File > Save As > Tiff; print the result. */
public class IjSave {
    public static void main(String[] args) {
        ImagePlus imp = IJ.openImage(args[0]);
        System.out.println(imp != null && IJ.saveAsTiff(imp, args[1]) ? "SAVED" : "FAILED");
    }
}
"""


def test_imagej_save_as_lands_in_the_store_and_a_refused_save_fails_in_imagej(site, mnt, tmp_path):
    import shutil

    jar = "/usr/share/java/ij.jar"
    if not (os.path.exists(jar) and shutil.which("java")):
        if os.environ.get("CI"):
            pytest.fail("ImageJ (libij-java) and java are missing: scripts/setup.sh test installs them")
        pytest.skip("ImageJ is not installed (bash scripts/setup.sh test)")
    (tmp_path / "IjSave.java").write_text(SAVER)

    def save(src, dst) -> str:
        done = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", jar, str(tmp_path / "IjSave.java"),
                               str(src), str(dst)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()  # ImageJ's own message about a failed save, then the verdict

    new = noise(SHAPE[1:], seed=33)
    tifffile.imwrite(tmp_path / "edited.tif", new)
    assert save(tmp_path / "edited.tif", mnt / "em" / "0" / "z" / "13.tif").splitlines() == ["SAVED"]
    np.testing.assert_array_equal(oracle(site / "store")[13], new)
    before = store_digest(site / "store")
    tifffile.imwrite(tmp_path / "wide.tif", noise(SHAPE[1:], np.uint16, seed=2))  # 16-bit into an 8-bit channel
    said = save(tmp_path / "wide.tif", mnt / "em" / "0" / "z" / "13.tif")
    assert said.endswith("FAILED") and "Invalid argument" in said  # ImageJ saw close() fail with EINVAL
    assert store_digest(site / "store") == before


def test_mv_of_a_slice_from_another_disk_replaces_it(site, mnt, tmp_path):
    new = noise(SHAPE[1:], seed=44)
    tifffile.imwrite(tmp_path / "22.tif", new)
    subprocess.run(["mv", str(tmp_path / "22.tif"), str(mnt / "em" / "0" / "z" / "22.tif")], check=True)
    assert not (tmp_path / "22.tif").exists()
    np.testing.assert_array_equal(oracle(site / "store")[22], new)
