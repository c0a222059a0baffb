"""Through a real FUSE mount started by `ndfs mount`: files equal the store voxel for voxel."""

import errno
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import tifffile
import zarr

from ndfs.tools.demo import make_demo
from ndfs.testing.mount import fuse_unavailable, is_mounted, mounted, ndfs, wait_until

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

SHAPE = (24, 200, 168)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    make_demo(str(root / "store"), shape=SHAPE, levels=3, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    return root


@pytest.fixture(scope="module")
def mnt(site):
    mountpoint = site / "mnt"
    with mounted(site / "ndfs.toml", mountpoint) as pid:
        assert is_mounted(mountpoint)
        yield mountpoint, pid


def oracle(site, channel, level):
    return zarr.open_array(str(site / "store" / "demo" / channel / str(level)), mode="r")[:]


@pytest.mark.parametrize("level", [0, 2])
def test_slices_on_every_axis_equal_the_store(site, mnt, level):
    root = mnt[0] / "local" / "demo" / "em" / str(level)
    a = oracle(site, "em", level)
    for z in (0, 7, a.shape[0] - 1):
        np.testing.assert_array_equal(tifffile.imread(root / "z" / f"{z}.tif"), a[z])
    for y in (0, a.shape[1] // 2, a.shape[1] - 1):
        np.testing.assert_array_equal(tifffile.imread(root / "y" / f"{y}.tif"), a[:, y, :])
    for x in (0, a.shape[2] - 1):
        np.testing.assert_array_equal(tifffile.imread(root / "x" / f"{x}.tif"), a[:, :, x])


@pytest.mark.parametrize("level", [0, 1])
def test_stack_tif_is_the_whole_level_with_calibration(site, mnt, level):
    path = mnt[0] / "local" / "demo" / "em" / str(level) / "stack.tif"
    a = oracle(site, "em", level)
    with tifffile.TiffFile(path) as tf:
        np.testing.assert_array_equal(tf.asarray(), a)
        assert tf.is_imagej
        assert tf.imagej_metadata["spacing"] == 40.0
        assert tf.imagej_metadata["unit"] == "nm"
        xres = tf.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == 4.0 * 2**level


def test_label_slices_are_uint64(site, mnt):
    a = oracle(site, "cells", 0)
    got = tifffile.imread(mnt[0] / "local" / "demo" / "cells" / "0" / "z" / "11.tif")
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, a[11])
    assert len(np.unique(got)) > 1


def test_sizes_at_stat_equal_the_bytes_read(mnt):
    level = mnt[0] / "local" / "demo" / "em" / "0"
    for path in [level / "z" / "3.tif", level / "y" / "10.tif", level / "stack.tif",
                 mnt[0] / "local" / "demo" / "em" / "info.json"]:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            assert len(fh.read()) == size


def test_listing_a_level_shows_every_slice(mnt):
    level = mnt[0] / "local" / "demo" / "em" / "0"
    assert sorted(os.listdir(level)) == ["cutout", "stack.tif", "volume.npy", "x", "y", "z"]
    assert sorted(os.listdir(level / "z"), key=lambda n: int(n[:-4])) == [f"{z}.tif" for z in range(SHAPE[0])]
    assert len(os.listdir(level / "x")) == SHAPE[2]
    assert sorted(os.listdir(mnt[0])) == [".ndfs", "local"]
    assert sorted(os.listdir(mnt[0] / "local" / "demo")) == ["cells", "cells.ome.zarr", "em", "em.ome.zarr"]


def test_cp_gives_a_file_every_reader_accepts(site, mnt, tmp_path):
    src = mnt[0] / "local" / "demo" / "em" / "0" / "z" / "5.tif"
    dst = tmp_path / "5.tif"
    subprocess.run(["cp", str(src), str(dst)], check=True)
    a = oracle(site, "em", 0)[5]
    np.testing.assert_array_equal(tifffile.imread(dst), a)
    from PIL import Image

    with Image.open(dst) as im:
        np.testing.assert_array_equal(np.asarray(im), a)
    if shutil.which("tiffinfo"):
        done = subprocess.run(["tiffinfo", str(dst)], capture_output=True, text=True)
        assert done.returncode == 0 and "Image Width: 168" in done.stdout, done.stderr


def test_out_of_range_slices_are_enoent(mnt):
    level = mnt[0] / "local" / "demo" / "em" / "0"
    for name in [f"z/{SHAPE[0]}.tif", "z/-1.tif", "z/007.tif", "z/abc.tif", "9/z/0.tif", "nope"]:
        with pytest.raises(FileNotFoundError):
            os.stat(level / name)
    with pytest.raises(FileNotFoundError):
        os.stat(mnt[0] / "local" / "demo" / "em" / "9")


def test_what_cannot_be_written_is_refused_and_the_mount_still_answers(mnt):
    level = mnt[0] / "local" / "demo" / "em" / "0"
    for attempt, code in [(lambda: open(level / "z" / "new.tif", "wb"), errno.EINVAL),
                          (lambda: os.mkdir(level / "newdir"), errno.EROFS),
                          (lambda: os.unlink(level.parent / "info.json"), errno.EPERM),
                          (lambda: open(level.parent / "info.json", "r+b"), errno.EROFS)]:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == code
    assert tifffile.imread(level / "z" / "1.tif").shape == SHAPE[1:]


def test_removing_a_slice_only_hides_it_until_it_is_written_again(site, mnt):
    """`mv` from another disk removes the target first: the name goes away for a while, the voxels stay."""
    level = mnt[0] / "local" / "demo" / "em" / "0"
    before = oracle(site, "em", 0)[2].copy()
    os.unlink(level / "z" / "2.tif")
    with pytest.raises(FileNotFoundError):
        os.stat(level / "z" / "2.tif")
    np.testing.assert_array_equal(oracle(site, "em", 0)[2], before)
    with open(level / "z" / "2.tif", "xb") as fh:  # O_EXCL create, as mv and cp do after the removal
        tifffile.imwrite(fh, before)
    np.testing.assert_array_equal(tifffile.imread(level / "z" / "2.tif"), before)


def test_a_read_only_remote_refuses_every_write_with_erofs(site, tmp_path):
    (tmp_path / "ndfs.toml").write_text(f'[remotes.local]\nkind = "local"\npath = "{site / "store"}"\n'
                                        'read_only = true\n')
    with mounted(tmp_path / "ndfs.toml", tmp_path / "mnt"):
        level = tmp_path / "mnt" / "local" / "demo" / "em" / "0"
        for attempt in [lambda: open(level / "z" / "1.tif", "r+b"), lambda: open(level / "stack.tif", "wb"),
                        lambda: open(level / "cutout" / "0-4_0-4_0-1.npy", "wb")]:
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        assert oct(os.stat(level / "z" / "1.tif").st_mode & 0o777) == "0o444"


def test_a_broken_chunk_is_eio_and_other_files_still_work(site, tmp_path):
    # a private copy of the store with one corrupt chunk file
    store = tmp_path / "store"
    shutil.copytree(site / "store", store)
    chunk = store / "demo" / "em" / "0" / "c" / "0" / "0" / "0"  # the chunk of z 0..7, y 0..63, x 0..63
    chunk.write_bytes(b"not a zstd frame")
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(tmp_path / "ndfs.toml", tmp_path / "mnt"):
        level = tmp_path / "mnt" / "local" / "demo" / "em" / "0"
        with pytest.raises(OSError) as info:
            (level / "z" / "0.tif").read_bytes()
        assert info.value.errno == errno.EIO
        z = SHAPE[0] - 1  # a slab the corrupt chunk is not in
        np.testing.assert_array_equal(tifffile.imread(level / "z" / f"{z}.tif"), oracle(site, "em", 0)[z])


def test_umount_stops_the_daemon(site, tmp_path):
    mountpoint = tmp_path / "m"
    with mounted(site / "ndfs.toml", mountpoint) as pid:
        assert os.path.exists(mountpoint / "local" / "demo")
        done = ndfs("umount", mountpoint)
        assert "unmounted" in done.stdout
        assert not is_mounted(mountpoint)
        assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)


def test_a_killed_daemon_leaves_no_stuck_mount_and_remounting_works(site, tmp_path):
    mountpoint = tmp_path / "k"
    with mounted(site / "ndfs.toml", mountpoint) as pid:
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not is_mounted(mountpoint), timeout=10)
        assert os.listdir(mountpoint) == []
    with mounted(site / "ndfs.toml", mountpoint):
        assert "local" in os.listdir(mountpoint)


def test_mount_errors_are_one_readable_line(site, tmp_path, mnt):
    done = ndfs("--config", site / "ndfs.toml", "mount", tmp_path / "missing", check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not a directory" in done.stderr
    done = ndfs("--config", site / "ndfs.toml", "mount", mnt[0], check=False)
    assert done.returncode == 1 and "already mounted" in done.stderr


def test_stats_json_reports_live_request_counts(mnt):
    import json

    stats = mnt[0] / ".ndfs" / "stats.json"
    before = json.loads(stats.read_text())["local"]
    assert set(before) >= {"served", "backend", "cache"}
    (mnt[0] / "local" / "demo" / "em" / "2" / "z" / "9.tif").read_bytes()
    after = json.loads(stats.read_text())["local"]
    assert after["served"]["reads"] > before["served"]["reads"]
    assert after["backend"]["read_bytes"] >= before["backend"]["read_bytes"]
    done = ndfs("cache", "info", "--mount", mnt[0], "--json")
    assert json.loads(done.stdout)["mount"]["local"]["kind"] == "local"
    table = ndfs("cache", "info", "--mount", mnt[0]).stdout.splitlines()  # REMOTE KIND READS ...
    assert any(line.split()[:2] == ["local", "local"] for line in table[table.index(f"mount {mnt[0]}"):])
