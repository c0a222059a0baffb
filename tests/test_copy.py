"""``ndfs copy`` and ``ndfs.copy``: local -> OME-Zarr -> precomputed -> local round-trips voxel for voxel, a box
copies only its region, a BOSS channel goes through OME-Zarr and precomputed to local, and a copy killed half way resumes where it stopped."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import ndfs
from ndfs.core.geometry import Box
from ndfs.testing.mount import ndfs as run_ndfs
from ndfs.tools.demo import make_demo


@pytest.fixture(autouse=True)
def private_copy_state(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFS_COPY_STATE_DIR", str(tmp_path / "copy-state"))
    return tmp_path / "copy-state"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    make_demo(str(root / "store"), shape=(24, 200, 168), levels=3, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n'
                                    '[remotes.back]\nkind = "local"\npath = "back"\ncreate = true\n')
    return root


def levels_of(remote, ref):
    info = remote.backend.info(ref)
    return info, [remote.backend.read(ref, lv.box, i) for i, lv in enumerate(info.levels)]


def test_local_to_omezarr_to_precomputed_to_local_round_trips_voxel_for_voxel(demo, tmp_path):
    from cloudvolume import CloudVolume

    local = ndfs.remote(str(demo / "store"))
    report = ndfs.copy((local, "demo"), f"zarr+file://{tmp_path}/oz", progress=False)
    assert report.channels == {"demo/cells": "cells", "demo/em": "em"} and report.skipped == 0
    done = run_ndfs("--config", demo / "ndfs.toml", "copy", f"zarr+file://{tmp_path}/oz",
                    f"precomputed+file://{tmp_path}/pc", "--quiet", env={**os.environ})
    assert "copied em -> em" in done.stdout
    run_ndfs("--config", demo / "ndfs.toml", "copy", f"precomputed://{tmp_path}/pc", "back/demo", "--quiet")
    back = ndfs.remote(str(demo / "back"))
    for channel in ("em", "cells"):
        info, want = levels_of(local, ("demo", channel))
        got_info, got = levels_of(back, ("demo", channel))
        assert got_info == info
        for level, (a, b) in enumerate(zip(want, got)):
            np.testing.assert_array_equal(b, a, err_msg=f"{channel} level {level}")
        # the intermediate copies are real OME-Zarr and precomputed, as their own readers see them
        oz = zarr.open_group(str(tmp_path / "oz" / channel), mode="r")
        assert oz.attrs["multiscales"][0]["version"] == "0.4"
        np.testing.assert_array_equal(oz["1"][:], want[1])
        cv = CloudVolume(f"file://{tmp_path}/pc/{channel}", mip=2, progress=False)
        np.testing.assert_array_equal(np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0), want[2])
    assert CloudVolume(f"file://{tmp_path}/pc/cells", progress=False).info["type"] == "segmentation"


def test_a_box_copies_its_region_on_every_level_and_nothing_else(demo, tmp_path):
    local = ndfs.remote(str(demo / "store"))
    box = Box((8, 64, 64), (16, 128, 192))
    report = ndfs.copy(local.volume("demo", "em"), f"precomputed+file://{tmp_path}/pc", box=box, progress=False)
    pc = ndfs.remote(f"precomputed://{tmp_path}/pc")
    _, want = levels_of(local, ("demo", "em"))
    info, got = levels_of(pc, ("em",))
    touched = 0
    for level in range(3):
        region = Box((8, 64 >> level, 64 >> level), (16, 128 >> level, 192 >> level))
        expected = np.zeros_like(want[level])
        expected[region.slices()] = want[level][region.slices()]
        np.testing.assert_array_equal(got[level], expected, err_msg=f"level {level}")
        touched += len(list(info.level(level).grid.chunks(region)))
    assert report.written == touched == 5  # 2 chunks (8, 64, 64) at level 0, 2 at level 1, 1 at level 2


def test_a_boss_channel_goes_to_omezarr_to_precomputed_to_local_voxel_for_voxel(reference_servers, reference_store,
                                                                                 tmp_path):
    from ndfs.stores.boss import BossBackend
    from ndfs.stores.local import LocalBackend

    path, _, oracle = reference_store
    boss = BossBackend(reference_servers["boss"].url, "x")
    want = oracle.read("em16", oracle.box("em16", 0), 0)
    ndfs.copy((boss, (path.name, "conf", "em16")), f"zarr+file://{tmp_path}/oz", progress=False)
    oz = ndfs.remote(f"zarr://{tmp_path}/oz")
    info = oz.backend.info(("em16",))
    assert info.level(0).box == oracle.box("em16", 0)
    np.testing.assert_array_equal(oz.backend.read(("em16",), info.level(0).box, 0), want)
    ndfs.copy(f"zarr://{tmp_path}/oz", f"precomputed+file://{tmp_path}/pc", progress=False)
    back = LocalBackend(tmp_path / "back", create=True)
    ndfs.copy(f"precomputed://{tmp_path}/pc", (back, ("p",)), progress=False)
    got = back.info(("p", "em16"))
    assert got.level(0).box == oracle.box("em16", 0) and got.dtype == np.uint16
    np.testing.assert_array_equal(back.read(("p", "em16"), got.level(0).box, 0), want)


def test_a_copy_killed_half_way_resumes_and_skips_what_is_done(tmp_path, private_copy_state):
    make_demo(str(tmp_path / "store"), shape=(64, 512, 512), levels=2, chunk_shape=(8, 64, 64), progress=False)
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    args = [sys.executable, "-m", "ndfs", "--config", str(tmp_path / "ndfs.toml"), "copy", "local/demo/em",
            f"zarr+file://{tmp_path}/oz", "--workers", "1", "--quiet"]
    env = {**os.environ, "NDFS_COPY_STATE_DIR": str(private_copy_state)}
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    lines = 0
    while time.monotonic() < deadline and child.poll() is None:
        states = list(private_copy_state.glob("*.done")) if private_copy_state.exists() else []
        lines = len(states[0].read_text().splitlines()) if states else 0
        if lines >= 10:
            break
        time.sleep(0.01)
    assert child.poll() is None, "the copy finished before it could be interrupted"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    skipped = int(done.stdout.split(", ")[-1].split()[0])
    assert skipped >= lines >= 10
    assert not list(private_copy_state.glob("*.done"))  # complete: the state is gone
    local = ndfs.remote(str(tmp_path / "store"))
    oz = ndfs.remote(f"zarr://{tmp_path}/oz")
    _, want = levels_of(local, ("demo", "em"))
    _, got = levels_of(oz, ("em",))
    for a, b in zip(want, got):
        np.testing.assert_array_equal(b, a)


def test_a_copy_runs_on_a_dask_cluster_and_on_worker_processes(demo, tmp_path):
    local = ndfs.remote(str(demo / "store"))
    report = ndfs.copy((local, "demo/cells"), f"precomputed+file://{tmp_path}/pc", scheduler="dask", workers=2,
                       progress=False)
    assert report.channels == {"demo/cells": "cells"} and report.written > 0
    report = ndfs.copy((local, "demo/em"), f"zarr+file://{tmp_path}/oz", scheduler="processes", workers=2,
                       progress=False)
    assert report.written > 0
    for remote, ref, channel in ((ndfs.remote(f"precomputed://{tmp_path}/pc"), ("cells",), "cells"),
                                 (ndfs.remote(f"zarr://{tmp_path}/oz"), ("em",), "em")):
        _, want = levels_of(local, ("demo", channel))
        _, got = levels_of(remote, ref)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(b, a)
