"""ndfs.batch.map_blocks over a real demo store: the same answers on threads, processes and a Dask LocalCluster.

Most block functions live at module level here (workers import them by
reference); the functions a user writes in a notebook or a script's
``__main__`` (lambdas, closures, their own exception classes) run in a
``python -c`` child, where workers can import nothing of them. Faults are
injected with marker files in a temp folder (shared by every process), never
with mocks of ndfs itself.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

import ndfs
from ndfs.tools.batch import BatchError, blocks, map_blocks
from ndfs.core.errors import BadRegion, Timeout
from ndfs.core.geometry import Box

SHAPE = (24, 160, 192)
THRESHOLD = 128


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from ndfs.tools.demo import make_demo

    root = tmp_path_factory.mktemp("batch-store")
    make_demo(str(root), shape=SHAPE, progress=False, chunk_shape=(8, 64, 64))
    return root


@pytest.fixture(scope="module")
def demo(demo_root):
    r = ndfs.remote(str(demo_root))
    em, cells = r.volume("demo", "em"), r.volume("demo", "cells")
    return r, em, cells, em[:, :, :], cells[:, :, :]


# ---- block functions (module level: picklable by reference) ------------------------
def count_above(block):
    return int(np.count_nonzero(block > THRESHOLD))


def add(a, b):
    return a + b


def unique_ids(block):
    ids = np.unique(block)
    return set(ids[ids != 0].tolist())


def union(a, b):
    return a | b


def box_sum3(block):
    """Sum over each voxel's 3x3x3 neighbourhood (zeros past the array's edge)."""
    p = np.pad(block.astype(np.int64), 1)
    out = np.zeros(block.shape, np.int64)
    z, y, x = block.shape
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                out += p[dz:dz + z, dy:dy + y, dx:dx + x]
    return out


def fails_once_per_block(block, box):
    """Fails the first attempt of every block, succeeds after (markers in $NDFS_TEST_MARKS)."""
    mark = Path(os.environ["NDFS_TEST_MARKS"]) / f"{box.start}".replace(" ", "")
    if not mark.exists():
        mark.touch()
        raise RuntimeError(f"injected failure at {box.start}")
    return count_above(block)


def always_fails_at_origin(block, box):
    if box.start == (0, 0, 0):
        raise ValueError("this block is broken")
    return count_above(block)


def dies_once(block, box):
    """Kills its worker process the first time it sees the block at the origin."""
    mark = Path(os.environ["NDFS_TEST_MARKS"]) / "died"
    if box.start == (0, 0, 0) and not mark.exists():
        mark.touch()
        os._exit(3)
    return count_above(block)


def read_threads_seen(block):
    """What a worker's reads decode on: NDFS_READ_THREADS and the local store's tensorstore context (if any)."""
    from ndfs.stores import local

    limit = None
    if local._engine() == "tensorstore":
        limit = local._ts_context().spec.to_json()["data_copy_concurrency"]["limit"]
    return {(os.environ.get("NDFS_READ_THREADS"), limit)}


def slow(block):
    time.sleep(2)
    return 0


# ---- tests ----------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheduler", ["threads", "processes", "dask"])
def test_threshold_count_is_the_same_on_threads_processes_and_a_dask_localcluster(demo, scheduler):
    if scheduler == "dask":
        pytest.importorskip("distributed")
    _, em, _, em_all, _ = demo
    want = int(np.count_nonzero(em_all > THRESHOLD))
    got = map_blocks(count_above, em, reduce=add, scheduler=scheduler, workers=2, block=(8, 64, 64),
                     progress=False, timeout_s=90)
    assert got == want and want > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheduler", ["processes", "dask"])
def test_worker_processes_decode_on_one_thread_each(demo, scheduler):
    """Each worker process is one of the cores: its reads must not spread over the others' (they did, with
    tensorstore's default of every core, and two workers ran slower than they could)."""
    if scheduler == "dask":
        pytest.importorskip("distributed")
    _, em, _, _, _ = demo
    seen = map_blocks(read_threads_seen, em, reduce=union, scheduler=scheduler, workers=2, block=(8, 64, 64),
                      progress=False, timeout_s=90)
    engine_limit = {limit for _, limit in seen}
    assert {env for env, _ in seen} == {"1"} and engine_limit <= {1, None}, seen


def worker_and_malloc_setting(block):
    return {(os.getpid(), os.environ.get("MALLOC_TRIM_THRESHOLD_"))}


@pytest.mark.timeout(180)
def test_the_dask_localcluster_is_kept_for_the_next_call_and_its_workers_keep_glibcs_adaptive_malloc(demo):
    """Starting a LocalCluster takes seconds: the next call with the same settings runs on the same one, a
    call with other settings replaces it (one kept at a time), and exit closes it. Its workers start
    without Dask's MALLOC_TRIM_THRESHOLD_, which made every block buffer a fresh mapping (bench row A6)."""
    pytest.importorskip("distributed")
    import dask
    from distributed.core import Status

    from ndfs.tools.batch import _KeptCluster

    _, em, _, _, _ = demo

    def run(workers):
        return map_blocks(worker_and_malloc_setting, em, reduce=union, scheduler="dask", workers=workers,
                          block=(8, 64, 64), progress=False, timeout_s=90)

    _KeptCluster.close_kept()
    try:
        first = run(2)
        kept = _KeptCluster._current
        assert kept is not None and kept.users == 0
        pids = set(kept.client.run(os.getpid).values())
        assert len(pids) == 2 and {pid for pid, _ in first} <= pids
        assert {setting for _, setting in first} == {None}
        profiling = kept.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert set(profiling.values()) == {False}  # no dashboard to show the profiles
        again = run(2)
        assert _KeptCluster._current is kept and {pid for pid, _ in again} <= pids
        one = run(1)
        assert _KeptCluster._current is not kept and kept.cluster.status == Status.closed
        assert not {pid for pid, _ in one} & pids
    finally:
        _KeptCluster.close_kept()
    assert _KeptCluster._current is None


@pytest.mark.timeout(120)
def test_a_dask_run_that_times_out_closes_its_cluster_instead_of_keeping_it_busy(demo):
    pytest.importorskip("distributed")
    from ndfs.tools.batch import _KeptCluster

    _, em, _, _, _ = demo
    _KeptCluster.close_kept()
    with pytest.raises(Timeout, match="ran out of time"):
        map_blocks(slow, em, block=(24, 160, 192), scheduler="dask", workers=1, timeout_s=0.3, progress=False)
    assert _KeptCluster._current is None


def test_read_threads_is_a_positive_whole_number(monkeypatch):
    from ndfs.core.config import read_threads
    from ndfs.core.errors import ConfigError

    monkeypatch.delenv("NDFS_READ_THREADS", raising=False)
    assert read_threads(4) == 4
    monkeypatch.setenv("NDFS_READ_THREADS", "2")
    assert read_threads(4) == 2
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("NDFS_READ_THREADS", bad)
        with pytest.raises(ConfigError, match="NDFS_READ_THREADS"):
            read_threads(4)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as c:
        yield c


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheduler", ["threads", "processes", "dask"])
def test_cells_counted_as_unique_label_ids_match_numpy(demo, scheduler, request):
    _, _, cells, _, cells_all = demo
    box = Box((4, 30, 50), (20, 150, 170))
    where = {"address": request.getfixturevalue("cluster").scheduler_address} if scheduler == "dask" else {}
    got = map_blocks(unique_ids, cells, box=box, reduce=union, initial=set(), scheduler=scheduler, workers=2,
                     progress=False, timeout_s=90, **where)
    want = set(np.unique(cells_all[box.slices()]).tolist()) - {0}
    assert got == want and len(want) > 1


def test_a_halo_gives_blocks_their_neighbours_so_a_3x3x3_filter_is_seamless(demo):
    _, em, _, em_all, _ = demo
    want = box_sum3(em_all)
    got = map_blocks(box_sum3, em, out="array", halo=1, block=(8, 64, 64), progress=False)
    np.testing.assert_array_equal(got, want)
    seams = map_blocks(box_sum3, em, out="array", halo=0, block=(8, 64, 64), progress=False)
    assert (seams != want).any()  # without the halo the block edges differ: the halo is what makes it right


def test_results_go_to_a_numpy_array_a_new_channel_or_a_dict_in_block_order(demo):
    r, em, _, em_all, _ = demo
    mask = map_blocks(lambda b: (b > THRESHOLD).astype(np.uint8), em, out="array", progress=False)
    np.testing.assert_array_equal(mask, (em_all > THRESHOLD).astype(np.uint8))
    target = r.create_channel("demo", "mask", like=em, overwrite=True)
    assert map_blocks(lambda b: (b > THRESHOLD).astype(np.uint8) * 255, em, out=target, workers=2,
                      progress=False) is target
    np.testing.assert_array_equal(r.volume("demo", "mask")[:, :, :], (em_all > THRESHOLD).astype(np.uint8) * 255)
    pre = np.zeros(SHAPE, np.uint8)
    map_blocks(lambda b: b // 2, em, out=pre, progress=False)
    np.testing.assert_array_equal(pre, em_all // 2)
    per_block = map_blocks(count_above, em, block=(8, 80, 96), progress=False)
    assert list(per_block) == blocks(em.box, (8, 80, 96)) and len(per_block) == 3 * 2 * 2
    assert sum(per_block.values()) == int(np.count_nonzero(em_all > THRESHOLD))


def test_numpy_arrays_run_on_processes_too(demo):
    _, _, _, em_all, _ = demo
    got = map_blocks(count_above, em_all, reduce=add, scheduler="processes", workers=2, block=(12, 80, 96),
                     progress=False)
    assert got == int(np.count_nonzero(em_all > THRESHOLD))


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_failed_blocks_are_retried_and_none_is_lost(demo, scheduler, tmp_path, monkeypatch):
    monkeypatch.setenv("NDFS_TEST_MARKS", str(tmp_path))
    _, em, _, em_all, _ = demo
    got = map_blocks(fails_once_per_block, em, reduce=add, pass_box=True, scheduler=scheduler, workers=2,
                     block=(8, 80, 96), progress=False)
    assert got == int(np.count_nonzero(em_all > THRESHOLD))
    assert len(list(tmp_path.iterdir())) == 12  # every block failed once and was run again


def test_a_block_that_keeps_failing_is_reported_after_the_rest_finish(demo):
    _, em, _, em_all, _ = demo
    with pytest.raises(BatchError) as err:
        map_blocks(always_fails_at_origin, em, pass_box=True, retries=2, block=(8, 80, 96), progress=False)
    (failure,) = err.value.failures
    assert failure.box == Box((0, 0, 0), (8, 80, 96)) and failure.attempts == 3
    assert "this block is broken" in failure.error and "1 of 12 blocks failed" in str(err.value)
    partial = err.value.result  # the other 11 blocks' results ride on the error
    assert len(partial) == 11 and Box((0, 0, 0), (8, 80, 96)) not in partial
    assert sum(partial.values()) == int(np.count_nonzero(em_all[8:] > THRESHOLD)) + \
        int(np.count_nonzero(em_all[:8, 80:] > THRESHOLD)) + int(np.count_nonzero(em_all[:8, :80, 96:] > THRESHOLD))


def test_a_failed_write_to_the_output_channel_is_retried_like_a_failed_block(demo, monkeypatch):
    r, em, _, em_all, _ = demo
    target = r.create_channel("demo", "half", like=em, overwrite=True)
    real, calls, seen, lock = target.backend._write, {"n": 0}, {}, threading.Lock()

    def flaky(ref, box, level, array):  # fault injection: the first write of every third block fails
        with lock:  # (counted per block: a shared call counter let one block fail on every retry)
            calls["n"] += 1
            first = box not in seen
            if first:
                seen[box] = len(seen)
        if first and seen[box] % 3 == 0:
            raise ndfs.BackendError("injected write failure")
        return real(ref, box, level, array)

    monkeypatch.setattr(target.backend, "_write", flaky)
    map_blocks(lambda b: b // 2, em, out=target, block=(8, 80, 96), progress=False)
    assert calls["n"] > 12  # 12 blocks, some written twice
    np.testing.assert_array_equal(r.volume("demo", "half")[:, :, :], em_all // 2)


@pytest.mark.timeout(120)
def test_a_worker_process_that_dies_costs_a_retry_not_a_block(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("NDFS_TEST_MARKS", str(tmp_path))
    _, em, _, em_all, _ = demo
    got = map_blocks(dies_once, em, reduce=add, pass_box=True, scheduler="processes", workers=2,
                     block=(8, 80, 96), progress=False, timeout_s=90)
    assert got == int(np.count_nonzero(em_all > THRESHOLD)) and (tmp_path / "died").exists()


def test_the_whole_run_is_bounded_by_timeout_s(demo):
    _, em, _, _, _ = demo
    started = time.monotonic()
    with pytest.raises(Timeout, match="ran out of time"):
        map_blocks(slow, em, block=(24, 160, 192), timeout_s=0.3, progress=False)
    assert time.monotonic() - started < 10


def test_bad_arguments_are_refused(demo):
    _, em, _, _, _ = demo
    with pytest.raises(BadRegion, match="scheduler"):
        map_blocks(count_above, em, scheduler="gpu")
    with pytest.raises(BadRegion, match="not both"):
        map_blocks(count_above, em, out="array", reduce=add)
    with pytest.raises(BadRegion, match="outside"):
        map_blocks(count_above, em, box=Box((0, 0, 0), (25, 1, 1)))
    with pytest.raises(BadRegion, match="shape"):
        map_blocks(lambda b: b[:1], em, out="array", progress=False)
    with pytest.raises(BadRegion, match="address"):
        map_blocks(count_above, em, address="tcp://127.0.0.1:1")
    with pytest.raises(BadRegion, match="Volume or a 3-D"):
        map_blocks(count_above, [1, 2, 3])


@pytest.mark.timeout(120)
def test_dask_runs_on_a_scheduler_at_an_address_and_volume_to_dask_computes_the_same(demo, cluster):
    import distributed

    _, em, _, em_all, _ = demo
    got = map_blocks(count_above, em, reduce=add, scheduler="dask", address=cluster.scheduler_address,
                     progress=False, timeout_s=90)
    assert got == int(np.count_nonzero(em_all > THRESHOLD))
    with distributed.Client(cluster) as client:
        arr = em.to_dask()
        assert arr.shape == SHAPE and arr.chunks == ((8, 8, 8), (64, 64, 32), (64, 64, 64))
        assert int(client.compute((arr > THRESHOLD).sum()).result(timeout=60)) == \
            int(np.count_nonzero(em_all > THRESHOLD))
        np.testing.assert_array_equal(arr[3:9, 10:70, 100:190].compute(scheduler="threads"),
                                      em_all[3:9, 10:70, 100:190])


@pytest.mark.timeout(120)
def test_processes_reopen_a_boss_remote_from_its_recipe_with_the_token_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("waitress")
    pytest.importorskip("blosc")
    from ndfs.stores.local import LocalBackend
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import WsgiServer
    from ndfs.testing.reference import build_reference_store

    _, oracle = build_reference_store(tmp_path / "store" / "ndfs")
    monkeypatch.setenv("NDFS_TEST_BOSS_TOKEN", "tok-batch-77")  # set now: workers must see it, not an older env
    with WsgiServer(BossApp(LocalBackend(tmp_path / "store"), tokens=["tok-batch-77"])) as srv:
        r = ndfs.remote(f"boss+{srv.url}", cache=False, backoff_s=0.01, token_env="NDFS_TEST_BOSS_TOKEN")
        vol = r.volume("ndfs/conf", "em16")
        got = map_blocks(count_above, vol, reduce=add, scheduler="processes", workers=2, block=(8, 32, 32),
                         progress=False, timeout_s=90)
        assert got == int(np.count_nonzero(oracle.levels["em16"][0] > THRESHOLD))
        assert srv.counter.count("GET", "/cutout/") >= 1
        monkeypatch.setenv("NDFS_TEST_BOSS_TOKEN", "revoked")  # workers reopen with what the env says now
        with pytest.raises(BatchError) as err:
            map_blocks(count_above, vol, reduce=add, scheduler="processes", workers=2, block=(8, 32, 32),
                       retries=0, progress=False, timeout_s=90)
        assert len(err.value.failures) == err.value.total == 36
        assert all("PermissionDenied" in f.error and "401" in f.error for f in err.value.failures)


# ---- functions from __main__: what a notebook cell or a `python -c` script defines -------------
MAIN_PROGRAM = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ndfs
    from ndfs.tools.batch import BatchError, map_blocks

    THRESHOLD = 128

    def above(block):                      # a function of __main__: workers cannot import it
        return int(np.count_nonzero(block > THRESHOLD))

    def above_of(t):                       # a closure over t
        def count(block):
            return int(np.count_nonzero(block > t))
        return count

    class Oops(Exception):                 # an exception class of __main__
        pass

    def breaks_at_origin(block, box):
        if box.start == (0, 0, 0):
            raise Oops(f"no voxels for you at {box.start}")
        return 0

    store, scheduler = sys.argv[1], sys.argv[2]
    em = ndfs.remote(store).volume("demo", "em")
    opts = dict(scheduler=scheduler, workers=2, block=(8, 64, 64), progress=False, timeout_s=90, retries=0)
    counts = {name: map_blocks(fn, em, reduce=lambda a, b: a + b, **opts) for name, fn in
              [("function", above), ("lambda", lambda b: int(np.count_nonzero(b > THRESHOLD))),
               ("closure", above_of(THRESHOLD))]}
    mask = map_blocks(lambda b: (b > THRESHOLD).astype(np.uint8), em, out="array", halo=1, **opts)
    try:
        map_blocks(breaks_at_origin, em, pass_box=True, **opts)
        failure = None
    except BatchError as err:
        failure = {"message": str(err), "boxes": [f.box.start for f in err.failures],
                   "traceback": err.failures[0].traceback, "done": len(err.result)}
    print(json.dumps({"counts": counts, "mask_sum": int(mask.sum()), "mask_shape": mask.shape,
                      "failure": failure}))
""")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scheduler", ["threads", "processes", "dask"])
def test_functions_defined_in_main_of_a_python_c_program_work_on_every_scheduler(demo, demo_root, scheduler,
                                                                                  tmp_path):
    if scheduler == "dask":
        pytest.importorskip("distributed")
    _, _, _, em_all, _ = demo
    done = subprocess.run([sys.executable, "-c", MAIN_PROGRAM, str(demo_root), scheduler], cwd=tmp_path,
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    want = int(np.count_nonzero(em_all > THRESHOLD))
    assert got["counts"] == {"function": want, "lambda": want, "closure": want} and want > 0
    assert got["mask_shape"] == list(SHAPE) and got["mask_sum"] == want
    failure = got["failure"]  # the block that raised is named, with the error fn raised and where
    assert failure is not None and failure["boxes"] == [[0, 0, 0]] and failure["done"] == 3 * 3 * 3 - 1
    assert "1 of 27 blocks failed" in failure["message"] and "[x 0:64, y 0:64, z 0:8]" in failure["message"]
    assert "Oops: no voxels for you at (0, 0, 0)" in failure["message"]
    assert "BrokenProcessPool" not in failure["message"] and "breaks_at_origin" in failure["traceback"]


def test_a_function_that_cannot_be_sent_to_processes_is_refused_before_any_block_runs(demo):
    _, em, _, _, _ = demo
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be sent to worker processes.*lock"):
        map_blocks(lambda b: lock.locked(), em, scheduler="processes", workers=2, progress=False)
    assert map_blocks(lambda b: lock.locked(), em, block=(24, 160, 192), progress=False) == {em.box: False}


def test_a_fn_that_workers_cannot_load_fails_its_blocks_with_the_import_error_not_a_broken_pool(demo,
                                                                                              monkeypatch):
    _, em, _, _, _ = demo
    mod = types.ModuleType("ndfs_test_nowhere")  # importable here only: workers get fn by reference and fail
    exec("def count(block):\n    return 1\n", mod.__dict__)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    with pytest.raises(BatchError) as err:
        map_blocks(mod.count, em, reduce=add, scheduler="processes", workers=2, block=(24, 80, 96), retries=1,
                   progress=False, timeout_s=90)
    assert len(err.value.failures) == err.value.total == 4
    assert all(f.attempts == 2 and "ModuleNotFoundError" in f.error and "ndfs_test_nowhere" in f.error
               for f in err.value.failures)
