"""Block-wise batch processing: one function over the blocks of a volume, on threads, processes or Dask.

:func:`map_blocks` cuts a volume (or a box of it, or a numpy array) into
blocks aligned to the store's chunk grid, runs ``fn`` on each block (padded
by ``halo`` voxels where the volume has them) and gathers the results:

* ``out=None``: a dict ``{block box: result}`` in block order;
* ``out="array"`` or a numpy array: results pasted into one array of the box's shape;
* ``out=volume``: results written into another :class:`~ndfs.volume.Volume`
  (e.g. a new channel from ``Remote.create_channel``), from the calling
  process only, so writes to one store never race;
* ``reduce=f`` (with ``initial``): results folded as they arrive, so memory
  stays at the blocks in flight; ``f`` must be associative and commutative.

The scheduling is not ours: every scheduler is a ``concurrent.futures``
executor, and one loop submits blocks to it (at most ``2 * workers`` in
flight), takes results as they complete, retries failures and stops at
``timeout_s``. Halos (pad, then trim), retries and the result sinks are thin
layers around that loop.

* ``"threads"`` (default): a ``ThreadPoolExecutor``; the GIL is released in
  I/O, blosc, zlib and numpy. ``fn`` is called as it is.
* ``"processes"``: the standard library's ``ProcessPoolExecutor`` on a
  forkserver (workers are never forked from the calling, threaded process;
  they fork from a server that has numpy, zarr and ndfs imported, so a pool
  starts in milliseconds after the first), with the caller's current
  environment (token variables reach them). Functions travel the way Dask
  sends them: serialised once per run with cloudpickle, so lambdas, closures
  and functions defined in a notebook or in ``__main__`` work. Why not
  loky, the maintained pool that cloudpickles everything: its reusable
  executor keeps workers between calls, but resizes or restarts them when
  the worker count or the environment changes, and each new worker is a
  fresh interpreter importing numpy, zarr and ndfs again (hundreds of ms,
  where a fork from the server costs a few), and kept workers keep the
  backends they opened, with the tokens of their time. cloudpickle, the
  piece we needed, is small and kept with Dask.
* ``"dask"``: ``dask.distributed``'s executor over a LocalCluster of
  ``workers`` processes, or the scheduler at ``address=``
  (``tcp://host:8786``), or an existing ``client=``; Dask workers reopen the
  store with their own environment (set token variables where they run).
  The LocalCluster is kept for the next call with the same workers and
  ``cluster_options`` (one at a time, closed at exit; see
  :class:`_KeptCluster`, also for the allocator setting its workers start
  without). Needs the ``dask`` extra (``pip install 'ndfs[dask]'``).

On processes and Dask, workers read their own blocks (a Volume travels as the
recipe that reopens its store, see :func:`ndfs.api.source_of`); the calling
process only gathers, reduces and writes. Each block that raises is retried
``retries`` times; blocks that still fail are listed in :class:`BatchError`
(box, attempts, last error, the worker's traceback) after every other block
has finished, and the partial result rides on the error, so no block is lost
silently. A worker process that dies takes the blocks then in flight on the
pool with it: each of them costs one attempt, and the pool is started again
for the rest. A tqdm progress bar counts blocks. ``map_blocks`` is safe to
call from several threads at once (each call has its own pool; calls at
once may share the kept LocalCluster).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import pickle
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ndfs.core.errors import BadRegion, MissingExtra, NdfsError, Timeout
from ndfs.core.geometry import Box, ChunkGrid
from ndfs.core.config import READ_THREADS_ENV

__all__ = ["map_blocks", "blocks", "BatchError", "BlockFailure", "SCHEDULERS"]

log = logging.getLogger("ndfs.batch")
SCHEDULERS = ("threads", "processes", "dask")
MiB = 2**20
_MISSING = object()
_BIG_TASK_BYTES = 16 * MiB  # a serialised fn this large (a closure over big data) travels with every block


@dataclass(frozen=True)
class BlockFailure:
    """A block that failed every attempt: its box, how often it ran, the last error and where it was raised."""

    box: Box
    attempts: int
    error: str
    traceback: str = ""


class BatchError(NdfsError):
    """Some blocks failed every attempt. ``failures`` lists them; ``result`` is what the other blocks gave."""

    def __init__(self, failures: Sequence[BlockFailure], result: Any = None, total: int = 0):
        self.failures, self.result, self.total = list(failures), result, total
        shown = "; ".join(f"[{f.box}] {f.error}" for f in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} of {total} blocks failed after retries: {shown}{more}")

    def __reduce__(self):
        return (BatchError, (self.failures, self.result, self.total))


class _WrongShape(BadRegion):
    """fn returned an array of the wrong shape for out= (raised at once: a retry cannot fix it)."""


class _RemoteError(Exception):
    """What a block raised in a worker process, as text: any exception can come back, picklable or not
    (a class defined in ``__main__`` and sent by value cannot be pickled back by reference)."""

    def __init__(self, error: str, tb: str):
        super().__init__(error)
        self.error, self.tb = error, tb

    def __reduce__(self):
        return (_RemoteError, (self.error, self.tb))


def _describe(exc: BaseException) -> tuple[str, str]:
    """(``Type: message``, traceback text) of a block's failure, wherever it ran."""
    if isinstance(exc, _RemoteError):
        return exc.error, exc.tb
    tb = "".join(traceback.format_exception(exc))
    if isinstance(exc, BrokenProcessPool):  # the pool says only "terminated abruptly": say what does that
        return ("BrokenProcessPool: a worker process died with the block in flight (killed, out of memory, "
                "a crash in native code, os._exit; or a script without `if __name__ == '__main__':` that "
                "each worker runs again on start)"), tb
    return f"{type(exc).__name__}: {exc}", tb


# ---- geometry -----------------------------------------------------------------
def _triple(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise BadRegion(f"{what} must be an int or (z, y, x), got {value!r}") from None
    if len(out) != 3:
        raise BadRegion(f"{what} must be an int or (z, y, x), got {value!r}")
    return out  # type: ignore[return-value]


def blocks(box: Box, block: Sequence[int], origin: Sequence[int] | None = None) -> list[Box]:
    """The box cut into blocks on a grid of ``block`` lines starting at ``origin`` (default: the box's start)."""
    grid = ChunkGrid(tuple(block), box, None if origin is None else tuple(origin))
    return [grid.chunk_box(idx) for idx in grid.chunks(box)]


def _default_block(chunk: Sequence[int], itemsize: int, target_bytes: int = 8 * MiB) -> tuple[int, int, int]:
    """Whole store chunks, grown in x, then y, then z until a block holds about ``target_bytes``."""
    b = list(chunk)
    for axis in (2, 1, 0):
        while np.prod(b) * itemsize * 2 <= target_bytes:
            b[axis] *= 2
            if b[axis] >= 4 * chunk[axis]:
                break
    return tuple(b)  # type: ignore[return-value]


# ---- the work of one block: read it padded by the halo, run fn, trim -----------------
class _Reopen:
    """A Volume as sent to worker processes: its recipe, reopened in the worker when the block is read,
    so a failure to reopen (a refused token, a server down) is that block's error, not a dead worker."""

    def __init__(self, volume):
        from ndfs.stack import source_of

        self.recipe = (source_of(volume.backend), volume.ref, volume.level_index)

    def read(self, box: Box) -> np.ndarray:
        from ndfs.volume import _reopen_volume

        return _reopen_volume(*self.recipe).read(box)


class _ArraySource:
    """A numpy array seen as a volume whose first voxel is at ``offset`` (threads read it in place)."""

    def __init__(self, array: np.ndarray, offset=(0, 0, 0)):
        self.array, self.box = array, Box.from_shape(array.shape, offset)

    def read(self, box: Box) -> np.ndarray:
        return self.array[box.slices(self.box.start)]


class _Task:
    """fn and where blocks come from: called as ``task(core, padded, data)`` with the block's box, the box
    grown by the halo, and the padded voxels when the caller sends them (numpy arrays to other processes)."""

    def __init__(self, fn: Callable, source, pass_box: bool):
        self.fn, self.source, self.pass_box = fn, source, pass_box

    def __call__(self, core: Box, padded: Box, data: np.ndarray | None = None):
        arr = data if data is not None else self.source.read(padded)
        result = self.fn(arr, padded) if self.pass_box else self.fn(arr)
        if padded != core and isinstance(result, np.ndarray) and result.shape == padded.shape:
            result = result[core.slices(padded.start)]
        return result

    def serialised(self) -> bytes:
        """The task as cloudpickle writes it: fn by value when it lives in ``__main__``, a notebook or a
        closure, by reference when it is importable (what Dask does). Loads with plain pickle."""
        import cloudpickle

        try:
            payload = cloudpickle.dumps(self)
        except Exception as exc:  # a lock, a socket, an open file captured by fn: no worker could run it
            raise TypeError(f"fn cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                            "use scheduler='threads', or make what it captures picklable") from exc
        if len(payload) > _BIG_TASK_BYTES:
            log.warning("fn serialises to %.0f MiB, sent with every block: pass big data through the volume, "
                        "or load it inside fn", len(payload) / MiB)
        return payload


@functools.lru_cache(maxsize=4)
def _load_task(payload: bytes) -> _Task:
    """A worker's copy of the task (loaded once per worker and run, not once per block)."""
    return pickle.loads(payload)


def _run_remote(payload: bytes, core: Box, padded: Box, data: np.ndarray | None = None):
    """One block in a worker process. Loading the task happens here, in the call, so a fn that cannot be
    loaded (a module the worker cannot import) is the block's error, not a dead worker; whatever the
    block raises comes back as text with the worker's traceback."""
    # each worker is one of the cores: its reads decode on one thread, not on every core against the others
    # (process pools set it at start; a Dask worker takes it here, before its first read of the store)
    os.environ.setdefault(READ_THREADS_ENV, "1")
    try:
        return _load_task(payload)(core, padded, data)
    except Exception as exc:
        raise _RemoteError(f"{type(exc).__name__}: {exc}", traceback.format_exc()) from None


def _use_environment(env: dict) -> None:
    """Worker initializer: take the caller's environment as it is now; reads decode on one thread (each
    worker is one of the cores) unless the caller says otherwise."""
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault(READ_THREADS_ENV, "1")


# ---- where results go (the reduction layer) -----------------------------------------
class _Sink:
    """Base of the sinks: ``take(core, result)`` keeps each block's result in the calling process, as it
    completes; ``result(cores)`` is what map_blocks returns."""

    retry_failed_take = False  # whether a failure in take() is the block's (retried), not the caller's


class _DictSink(_Sink):
    def __init__(self):
        self.by_box: dict[Box, Any] = {}

    def take(self, core, result):
        self.by_box[core] = result

    def result(self, cores):
        return {core: self.by_box[core] for core in cores if core in self.by_box}


class _ReduceSink(_Sink):
    def __init__(self, reduce: Callable, initial):
        self.reduce, self.acc = reduce, initial

    def take(self, core, result):
        self.acc = result if self.acc is _MISSING else self.reduce(self.acc, result)

    def result(self, cores):
        return None if self.acc is _MISSING else self.acc


def _block_array(core: Box, result) -> np.ndarray:
    arr = np.asarray(result)
    if arr.shape != core.shape:
        raise _WrongShape(f"fn returned shape {arr.shape} for block {core} of shape {core.shape}")
    return arr


class _ArraySink(_Sink):
    def __init__(self, box: Box, array: np.ndarray | None):
        self.box, self.array = box, array

    def take(self, core, result):
        arr = _block_array(core, result)
        if self.array is None:
            self.array = np.zeros(self.box.shape, dtype=arr.dtype)
        self.array[core.slices(self.box.start)] = arr

    def result(self, cores):
        return self.array


class _VolumeSink(_Sink):
    retry_failed_take = True  # a write the store refused (NdfsError) is retried like a failed block

    def __init__(self, volume):
        self.volume = volume

    def take(self, core, result):
        self.volume.write(core, _block_array(core, result))

    def result(self, cores):
        return self.volume


# ---- executors: an existing concurrent.futures executor per scheduler --------------------
# what workers need before their first block; zarr and tensorstore (the local store's read engine, when
# installed) are imported lazily by the local store, and importing them in each new worker cost every run
# 0.2 to 0.6 s that 2 workers do not halve (measured: the first block started 0.67 s into a run, now 0.1 s)
_PRELOAD = ["numpy", "cloudpickle", "zarr", "tensorstore", "ndfs.api", "ndfs.tools.batch", "ndfs.volume",
            "ndfs.stores.local"]


class _Pool:
    """The executor of one scheduler, restartable after a worker process died."""

    def __init__(self, scheduler: str, workers: int, address: str | None, client, cluster_options: dict):
        self.scheduler, self.workers = scheduler, workers
        self.address, self.client, self.cluster_options = address, client, cluster_options
        self._own_client = None
        self._kept: _KeptCluster | None = None
        self.executor = self._start()

    def _start(self):
        if self.scheduler == "threads":
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ndfs-batch")
        if self.scheduler == "processes":
            import multiprocessing

            # forkserver: workers fork from a clean server process (never from this threaded one) that has
            # these modules imported (a missing one is skipped), so a pool starts in milliseconds after the
            # first; they get this process's current environment (the server's is from when it started)
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_use_environment,
                                       initargs=(dict(os.environ),))
        try:
            from distributed import Client
        except ImportError:
            raise MissingExtra("scheduler='dask' needs dask.distributed: pip install 'ndfs[dask]'") from None
        client = self.client
        if client is None and self.address:
            try:
                client = Client(self.address, timeout=self.cluster_options.get("timeout", "20s"))
            except (OSError, TimeoutError) as exc:
                raise Timeout(f"no Dask scheduler answered at {self.address}: {exc}") from None
            self._own_client = client
        elif client is None:
            if self._kept is None:
                self._kept = _KeptCluster.take(self.workers, self.cluster_options)
            client = self._kept.client
        return client.get_executor(pure=False)

    def submit(self, fn: Callable, *args) -> Future:
        return self.executor.submit(fn, *args)

    def restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._start()

    def close(self, wait: bool = True) -> None:
        """Stop the workers; ``wait=False`` (after a timeout or an error) leaves running blocks to finish alone
        (on a LocalCluster of ours: it is closed, not kept, so nothing of this call runs on into the next)."""
        if self.scheduler == "dask":
            self.executor.shutdown(wait=False)
            if self._own_client is not None:
                self._own_client.close()
            if self._kept is not None:
                self._kept.give_back(keep=wait)
        else:
            self.executor.shutdown(wait=wait, cancel_futures=True)


class _KeptCluster:
    """The LocalCluster that map_blocks starts when given no scheduler, kept for the next call.

    Starting one takes seconds, so it is kept for the next call with the same worker count and
    options; a call with other settings closes it when no call is using it, and takes its place (one
    kept at a time: an idle cluster's heartbeats would take CPU from the busy one); it is closed at
    exit, and forgotten in a forked child.

    Its workers start without Dask's ``MALLOC_TRIM_THRESHOLD_`` (65536 since 2022): set at all, it
    turns off glibc's adaptive mmap threshold, so every block-sized buffer (the block read, the
    decoded chunks, the function's own temporaries) is a fresh mapping faulted in page by page. On
    32 blocks of 8 MiB that was 230,000 page faults and 15% more time on one core. The memory is
    kept by the worker for its next block and returned when the cluster closes. It has no dashboard
    and logs only errors, so its workers do not sample profiles and its event loops check their
    ticks every 200 ms, not 20: together about 10% of the blocks' time with two workers on two
    cores. A caller who wants Dask's settings passes its own ``client=``.
    """

    _lock = threading.Lock()
    _current: "_KeptCluster | None" = None

    def __init__(self, key, client, cluster):
        self.key, self.client, self.cluster = key, client, cluster
        self.users, self.retired = 1, False

    @classmethod
    def take(cls, workers: int, options: dict) -> "_KeptCluster":
        key = (workers, repr(sorted(options.items())))
        with cls._lock:
            cur = cls._current
            if cur is not None and cur.key == key and not cur.retired:
                cur.users += 1
                return cur
            stale = None
            if cur is not None and cur.users == 0:
                stale, cls._current = cur, None
        if stale is not None:
            stale.close()
        made = cls(key, *cls._start(workers, options))
        with cls._lock:
            if cls._current is None:
                cls._current = made
            else:  # another call holds the kept one: this one is the call's own, closed after it
                made.retired = True
        return made

    @staticmethod
    def _start(workers: int, options: dict):
        import dask
        from distributed import Client, LocalCluster

        opts = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                "dashboard_address": None, "silence_logs": logging.ERROR, **options}
        opts.pop("timeout", None)
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        # no dashboard and no logs below errors: nobody would see the workers' profiles (sampled every 10 ms)
        # or the event loops' slow-tick warnings (checked every 20 ms), and both take CPU from the blocks
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                              "distributed.worker.profile.enabled": False,
                              "distributed.admin.tick.interval": "200ms"}):
            cluster = LocalCluster(**opts)
        try:
            return Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise

    def give_back(self, keep: bool = True) -> None:
        """A call is done with it; ``keep=False``: close it once no call uses it."""
        with self._lock:
            self.users -= 1
            if not keep:
                self.retired = True
            last = self.users == 0 and self.retired
            if last and _KeptCluster._current is self:
                _KeptCluster._current = None
        if last:
            self.close()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()

    @classmethod
    def close_kept(cls) -> None:
        with cls._lock:
            cur, cls._current = cls._current, None
        if cur is not None:
            cur.close()

    @classmethod
    def _forget_in_child(cls) -> None:
        cls._lock = threading.Lock()
        cls._current = None  # the parent's: its client's threads and sockets did not come along


atexit.register(_KeptCluster.close_kept)
os.register_at_fork(after_in_child=_KeptCluster._forget_in_child)


# ---- the one loop: submit, take what completes, retry ---------------------------------
def _run_blocks(pool: _Pool, run: Callable, cores: list[Box], args_of: Callable[[Box], tuple], sink: _Sink, *,
                retries: int, window: int, timeout_s: float | None, bar) -> list[BlockFailure]:
    """Run every block through ``pool`` with at most ``window`` in flight; the blocks that failed every try."""
    failures: list[BlockFailure] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    todo = [(core, 1) for core in reversed(cores)]  # (block, attempt), popped from the end: block order
    running: dict[Future, tuple[Box, int]] = {}

    def failed(core: Box, attempt: int, exc: BaseException) -> None:
        error, tb = _describe(exc)
        if attempt <= retries:
            log.info("block %s failed (attempt %d), retrying: %s", core, attempt, error)
            todo.append((core, attempt + 1))
        else:
            failures.append(BlockFailure(core, attempt, error, tb))
            bar.update(1)

    try:
        while todo or running:
            while todo and len(running) < window:
                core, attempt = todo.pop()
                running[pool.submit(run, *args_of(core))] = (core, attempt)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"map_blocks ran out of time: {len(todo) + len(running)} of {len(cores)} blocks "
                              f"not done after {timeout_s:g} s")
            done, _ = wait(list(running), timeout=left, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                core, attempt = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # a block's failure is recorded, retried and reported, never lost
                    broken = broken or isinstance(exc, BrokenProcessPool)  # a worker died (maybe in this block)
                    failed(core, attempt, exc)
                    continue
                try:
                    sink.take(core, result)
                except NdfsError as exc:
                    if not sink.retry_failed_take or isinstance(exc, _WrongShape):
                        raise  # the caller's own mistake (a wrong shape): retrying cannot help
                    failed(core, attempt, exc)
                    continue
                bar.update(1)
            if broken:  # the blocks still held by the dead pool go to a fresh one, without losing an attempt
                for fut, item in running.items():
                    fut.cancel()
                    todo.append(item)
                running.clear()
                pool.restart()
    finally:
        for fut in running:
            fut.cancel()
    return failures


# ---- the driver -----------------------------------------------------------------
def map_blocks(fn: Callable, volume, out=None, *, block=None, halo=0, box: Box | None = None,
               scheduler: str = "threads", workers: int | None = None, reduce: Callable | None = None,
               initial=_MISSING, retries: int = 2, progress: bool = True, pass_box: bool = False,
               address: str | None = None, client=None, cluster_options: dict | None = None,
               timeout_s: float | None = None, desc: str | None = None):
    """Run ``fn(block_array)`` (or ``fn(block_array, box)`` with ``pass_box``) over every block.

    ``volume`` is a :class:`~ndfs.volume.Volume` or a 3-D numpy array; ``box``
    (dataset coordinates) limits the work to part of it. ``block`` is the
    block shape (z, y, x), default whole store chunks of a few MiB. ``halo``
    (int or (z, y, x)) pads each block with that many neighbouring voxels
    where they exist; an array result of the padded shape is trimmed back to
    the block. ``fn`` may be any callable, a lambda or a closure included, on
    every scheduler. ``timeout_s`` bounds the whole run (Timeout). See the
    module docstring for ``out``, ``reduce``, schedulers and failures.
    """
    from ndfs.volume import Volume

    if scheduler not in SCHEDULERS:
        raise BadRegion(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if (address or client is not None) and scheduler != "dask":
        raise BadRegion("address= and client= go with scheduler='dask'")
    if out is not None and reduce is not None:
        raise BadRegion("give out= or reduce=, not both")
    if retries < 0:
        raise BadRegion("retries cannot be negative")
    workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    if isinstance(volume, Volume):
        source, extent, chunk, origin = volume, volume.box, volume.level_info.chunk_shape, volume.level_info.grid.origin
        itemsize = volume.dtype.itemsize
    elif isinstance(volume, np.ndarray) and volume.ndim == 3:
        source = _ArraySource(volume)
        extent, chunk, origin, itemsize = source.box, (16, 256, 256), (0, 0, 0), volume.dtype.itemsize
    else:
        raise BadRegion("map_blocks runs over an ndfs Volume or a 3-D numpy array")
    box = extent if box is None else box
    if not extent.contains(box):
        raise BadRegion(f"box {box} is outside the volume {extent}")
    block = _default_block(chunk, itemsize) if block is None else _triple(block, "block")
    if min(block) < 1:
        raise BadRegion(f"block sizes must be positive, got {block}")
    halo = _triple(halo, "halo")
    if min(halo) < 0:
        raise BadRegion(f"halo cannot be negative, got {halo}")
    cores = [] if box.empty else blocks(box, block, origin)

    sink: _Sink
    if isinstance(out, str) and out == "array":
        sink = _ArraySink(box, None)
    elif isinstance(out, np.ndarray):
        if out.shape != box.shape:
            raise BadRegion(f"out has shape {out.shape}, the box has {box.shape}")
        sink = _ArraySink(box, out)
    elif isinstance(out, Volume):
        if not out.box.contains(box):
            raise BadRegion(f"out volume {out.box} does not contain the box {box}")
        sink = _VolumeSink(out)
    elif out is None:
        sink = _ReduceSink(reduce, initial) if reduce is not None else _DictSink()
    else:
        raise BadRegion(f"out must be None, 'array', a numpy array or a Volume, got {type(out).__name__}")

    def padded_of(core: Box) -> Box:  # the halo layer: grown where the volume has voxels
        grown = Box(tuple(a - h for a, h in zip(core.start, halo)), tuple(b + h for b, h in zip(core.stop, halo)))
        return grown.intersect(extent) or core

    local = scheduler == "threads"
    ship_data = isinstance(source, _ArraySource) and not local  # other processes get the array's voxels
    task = _Task(fn, _Reopen(source) if isinstance(source, Volume) and not local else None if ship_data else source,
                 pass_box)
    run = task if local or not cores else functools.partial(_run_remote, task.serialised())

    def args_of(core: Box) -> tuple:
        padded = padded_of(core)
        return (core, padded, source.read(padded)) if ship_data else (core, padded)

    from tqdm import tqdm

    pool = _Pool(scheduler, workers, address, client, dict(cluster_options or {})) if cores else None
    bar = tqdm(total=len(cores), unit="block", desc=desc or "blocks", disable=not progress or not cores)
    finished = False
    try:
        failures = _run_blocks(pool, run, cores, args_of, sink, retries=retries, window=2 * workers,
                               timeout_s=timeout_s, bar=bar) if cores else []
        finished = True
    finally:
        bar.close()
        if pool is not None:
            pool.close(wait=finished)
    result = sink.result(cores)
    if failures:
        raise BatchError(sorted(failures, key=lambda f: f.box.start), result, len(cores))
    if isinstance(sink, _ArraySink) and result is None:
        result = np.zeros(box.shape, dtype=np.uint8)
    return result


# ---- dask arrays ------------------------------------------------------------------
