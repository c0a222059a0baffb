"""CachedBackend: the chunk cache as a Backend wrapping a Backend.

How a read works: the box is mapped to chunk indices on the level's grid;
each chunk is served from the memory tier (cachetools.LRUCache bounded in
bytes, holding read-only decoded arrays, guarded by ``_lock``), else from the
disk tier (checked payloads, see :mod:`ndfs.cache.disk`), else it is claimed
in the single-flight map ``_inflight`` (chunk key -> _Flight holding a
Future). Claimed chunks are merged into few aligned boxes
(:func:`ndfs.cache.plan.group_chunks`) and fetched with ``inner.read``: the
first box in the calling thread, the rest on the fetch pool. A reader that
finds a chunk already in flight waits on its Future and shares its array or
its exception; errors are never stored. Pool tasks never wait on anything,
and prefetch tasks run on their own small pool and only claim chunks nobody
else has, so no thread ever waits on work queued behind itself.

A read holds the volume lock's planes (:mod:`ndfs.core.locks`, whole chunks in z)
shared while it assembles its box, so no write is applied in between: a
read returns one write's result or the other's, never a mix.

Writes go through. While one is under way its region (on every level it
affects) is neither served from nor stored in either tier; afterwards
``invalidate`` bumps the volume's epoch and drops the affected chunks of
every level from both tiers and from the flight map. A fetch stores its
chunks only if the epoch it started under is still current, so a fetch racing
a write cannot leave stale data behind in this process.

Other processes (mounts, scripts) hear of a write through a write stamp
(:mod:`ndfs.core.stamp`): the local store moves the channel's own on every write;
for remote services ``invalidate`` moves one beside the shared disk tier
before it deletes disk entries. Every read first compares the volume's stamp
with the last one seen and, when it moved, drops the volume from memory
(the volume's version token, :meth:`version`, moves with it, so a mount drops
its files too). A fetch that spans another process's write is not stored,
as for an epoch change.

Storing fetched chunks on disk and dropping them are kept apart by a lock
file beside each stamp (:class:`ndfs.core.locks.FileVolumeLock`): a group of
chunks is checked (epoch, stamp) and written under the shared lock, and a drop
moves the stamp and deletes entries under the exclusive one, in every process
that shares the disk tier. So an entry fetched before a drop is either
written before it (and deleted by it) or never written: no reader, here or
elsewhere, ever sees it, not even for the moment between its write and a
look that takes it back out. Writes made outside ndfs are seen
within ``max_age_s`` (when set): volumes whose store has a change signal
(DVID) are checked that often and dropped when they changed, volumes of a
locked DVID node are kept for good, and the rest expire in clock-aligned
windows of that length (see :mod:`ndfs.cache.fresh`). The volume's info
follows the same rule, so a channel resized or deleted elsewhere is seen too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import cachetools
import numpy as np

from ndfs.core import stamp
from ndfs.stores.base import Backend, VolumeRef, as_ref
from ndfs.stores.wrap import WrappingBackend
from ndfs.cache.disk import decode_chunk, encode_chunk, open_disk_cache
from ndfs.cache.fresh import Freshness
from ndfs.cache.plan import Index, affected_regions, group_chunks
from ndfs.core.errors import BackendError, ConfigError, NdfsError
from ndfs.core.geometry import Box, ChunkGrid
from ndfs.core.locks import EVERY_PLANE, FileVolumeLock, z_planes

log = logging.getLogger("ndfs.cache")
MiB = 2**20


_UNSEEN = object()  # no generation looked at yet


class _Flight:
    """One in-progress fetch of one chunk: waiters block on ``future``; ``gen`` is the volume's
    shared generation when it started (a chunk fetched across another process's write is not kept)."""

    __slots__ = ("future", "epoch", "prefetch", "gen", "started")

    def __init__(self, epoch: int, prefetch: bool, gen=None):
        self.future: Future = Future()
        self.epoch, self.prefetch, self.gen = epoch, prefetch, gen
        self.started = time.monotonic()


class CachedBackend(Freshness, WrappingBackend):
    """A chunk cache in front of ``inner``; same contract, so layers above see one type.

    ``namespace`` names the remote (e.g. ``"local:/abs/store"`` or a URL).
    ``disk_dir=None`` keeps the cache in memory only. The cache owns ``inner``:
    ``close()`` stops the worker pools, closes the disk cache and closes
    ``inner`` (the mount closes only the backends it sees). Thread-safe.
    """

    #: no single inner request is built larger than this from merged chunks
    max_request_bytes = 64 * MiB
    #: read-ahead requests hold at most this much (but at least one chunk), so that each
    #: chunk lands as soon as it is in and the fetch workers stay busy in chunk order,
    #: like a parallel client's, instead of waiting on the slowest chunk of a big request
    prefetch_request_bytes = 4 * MiB
    #: reads at least this large go straight to a store without a disk tier, uncached (see _assemble)
    bulk_read_bytes = 64 * MiB
    #: a sequential reader is read ahead by at most this share of the slabs it has read (at least one slab)
    readahead_share = 0.25
    #: a reader waiting on chunks gets its read-ahead sent when they are this share of a fetch's usual
    #: time from landing, so that its first bytes follow theirs on the link instead of a round trip later
    readahead_lead = 0.2
    #: prefetch hints beyond this many queued or running tasks are dropped
    prefetch_queue = 4
    #: an invalidation touching more disk chunks than this evicts the whole volume from disk
    disk_evict_limit = 4096

    def __init__(self, inner: Backend, *, namespace: str, memory_bytes: int = 512 * MiB,
                 disk_dir: str | os.PathLike | None = None, disk_bytes: int = 4 * 2**30,
                 prefetch: bool = True, workers: int = 8, max_prefetch_bytes: int = 256 * MiB,
                 max_age_s: float | None = None):
        super().__init__(inner)
        self.namespace = str(namespace)
        self.prefetch_enabled = bool(prefetch)
        self.max_prefetch_bytes = int(max_prefetch_bytes)
        self._lock = threading.Lock()  # guards _mem, _inflight, _writing, _seen, _recent, _counts
        if max_age_s is not None and not 0 < float(max_age_s) < float("inf"):
            raise ConfigError(f"max_age_s must be a positive number of seconds, got {max_age_s!r}")
        #: what is cached of a volume is at most this old: checked that often where the store can tell
        #: whether the volume changed, else fetched again (both tiers, info too); None: kept until a write
        #: through ndfs drops it
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self._mem = cachetools.LRUCache(maxsize=max(0, int(memory_bytes)), getsizeof=lambda a: a.nbytes)
        self._writing: dict[VolumeRef, list[dict]] = {}  # regions of writes under way: level -> index range
        self._inflight: dict[tuple, _Flight] = {}
        self._recent: dict[tuple, dict] = {}
        self._counts = dict.fromkeys(("memory_hits", "disk_hits", "misses", "prefetched", "prefetch_dropped",
                                      "corrupt", "disk_errors", "changed_elsewhere", "changed_remotely",
                                      "bulk_reads"), 0)
        #: (generation, max-age window, token on the service) of each volume when last looked at
        self._seen: dict[VolumeRef, tuple] = {}
        self._init_freshness()
        self._info_seen: dict[VolumeRef, tuple] = {}  # (token, window) when each volume's info was asked
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ndfs-fetch")
        #: sequential readers get enough slabs read ahead to keep this many chunks in flight
        self.readahead_chunks = max(1, workers)
        # disk-tier writes (compress, checksum, write) run here, off the fetch threads; past
        # `_disk_backlog` queued groups the fetch thread writes itself, so memory stays bounded
        self._disk_pool = ThreadPoolExecutor(1, thread_name_prefix="ndfs-disk-put")
        self._disk_queued = 0
        self._disk_backlog = 2 * max(1, workers)
        self._pf_pool = ThreadPoolExecutor(max(1, min(4, workers // 2)), thread_name_prefix="ndfs-prefetch")
        self._pf_cond = threading.Condition()
        self._pf_pending = 0
        self._fetch_s: float | None = None  # how long a chunk request usually takes (moving average)
        self._warned: set[str] = set()
        self.disk_dir = None if disk_dir is None else Path(disk_dir)
        self._disk = None
        if disk_dir is not None:
            try:
                self._disk = open_disk_cache(disk_dir, disk_bytes)
            except Exception as exc:
                log.warning("disk cache %s is unusable, caching in memory only: %s", disk_dir, exc)
        # write stamps of remote volumes, shared like the disk tier (the local store keeps its own)
        self._stamps = None if self._disk is None else self.disk_dir / "stamps"
        if self._stamps is not None:
            try:  # here, once: never later, which would bring back a cache dir deleted under a mount
                self._stamps.mkdir(exist_ok=True)
            except OSError as exc:
                log.warning("cannot make %s: changes are not shared with other processes: %s", self._stamps, exc)

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, namespace={self.namespace!r})"

    # ---- what the cache changes besides reads and writes ---------------------
    # (the hierarchy, info, files and other RAMON calls pass through WrappingBackend)
    def _ramon_put(self, ref, objs):
        try:
            return self.inner.ramon_put(ref, objs)
        finally:
            if any(o.voxels is not None for o in objs):
                self.invalidate(ref)
            else:  # metadata only: nothing cached here, but mounts elsewhere render it
                self._signal(ref)

    def _ramon_delete(self, ref, ids):
        try:
            self.inner.ramon_delete(ref, ids)
        finally:  # deleting an object zeroes its voxels
            self.invalidate(ref)

    def forget_volume(self, ref) -> None:
        super().forget_volume(ref)
        self.invalidate(ref)  # both tiers: a channel made anew under the same name starts empty
        with self._lock:
            self._checks.pop(as_ref(ref), None)

    def info(self, ref):
        """The store's info, forgotten when the volume is seen to change on the service (checked
        volumes) or when a max-age window ends, so a resize or a deletion elsewhere shows too."""
        ref = as_ref(ref)
        key = (self._remote(ref), self._window(ref))
        with self._lock:
            prev = self._info_seen.get(ref, key)
            self._info_seen[ref] = key
        if prev != key:
            self.forget_info(ref)
        return self.inner.info(ref)

    # ---- keys and small helpers -----------------------------------------
    def disk_key(self, ref: Sequence[str], level: int, index: Sequence[int]) -> str:
        """The diskcache key of one chunk (a JSON string; stable across processes)."""
        return json.dumps([self.namespace, list(as_ref(ref)), int(level), [int(i) for i in index]],
                          separators=(",", ":"))

    def _tag(self, ref: VolumeRef) -> str:
        return json.dumps([self.namespace, list(ref)], separators=(",", ":"))

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _disk_op(self, what: str, fn, default=None):
        """Run one disk tier call; a failure is logged (once per kind) and ``default`` returned."""
        try:
            return fn()
        except Exception as exc:  # sqlite3.Error, OSError, diskcache.Timeout, ...
            self._count("disk_errors")
            level = logging.DEBUG if what in self._warned else logging.WARNING
            self._warned.add(what)
            log.log(level, "disk cache %s failed, continuing uncached: %s", what, exc)
            return default

    @staticmethod
    def _paste(out: np.ndarray, box: Box, cbox: Box, chunk: np.ndarray) -> None:
        part = cbox.intersect(box)
        out[part.slices(box.start)] = chunk[part.slices(cbox.start)]

    # ---- reads -----------------------------------------------------------
    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        info = self.info(ref)
        grid = info.level(level).grid
        with self.inner.volume_lock(ref).reading(*z_planes(info, grid.aligned(box), level)):
            self._sync(ref)
            return self._assemble(ref, box, level, info, grid)

    def _assemble(self, ref: VolumeRef, box: Box, level: int, info, grid: ChunkGrid) -> np.ndarray:
        if self._disk is None and box.size * info.dtype.itemsize >= self.bulk_read_bytes:
            # a bulk read from a store kept in memory only (the local store, already on disk): one read
            # straight into the result, not cut into chunk copies that would push out what the tier holds
            self._count("bulk_reads")
            return self.inner.read(ref, box, level)
        out = np.empty(box.shape, dtype=info.dtype)
        missing = []
        with self._lock:
            epoch = self.epoch(ref)
            found = [(idx, None if self._being_written(ref, level, idx)
                      else self._mem.get((self.namespace, ref, level, idx))) for idx in grid.chunks(box)]
            self._counts["memory_hits"] += sum(a is not None for _, a in found)
        for idx, arr in found:
            if arr is None:
                missing.append(idx)
            else:
                self._paste(out, box, grid.chunk_box(idx), arr)
        disk = self._disk
        if missing and disk is not None:
            missing = self._disk_lookup(disk, ref, level, grid, info.dtype, missing, epoch, out, box)
        ahead = self._note_read(ref, box, level, grid, info.dtype.itemsize)
        while missing:
            missing = self._fetch_missing(ref, level, grid, missing, out, box, ahead)
            ahead = None
        if ahead is not None:
            self._read_ahead(ref, ahead, level)
        return out

    def _disk_lookup(self, disk, ref, level, grid, dtype, idxs, epoch, out, box) -> list[Index]:
        """Serve what the disk tier holds (checked) into ``out``; return the rest.

        In a max-age window, only entries stored in this window are served: those that expire at its end.
        An entry that expires later, or never, was stored by a cache with another max age (another remote
        on the same service, another process) and may be older than the window.
        """
        rest, hits = [], []
        window = self._window(ref)
        window_end = None if window is None else (window + 1) * self.max_age_s
        for idx in idxs:
            key, cbox = self.disk_key(ref, level, idx), grid.chunk_box(idx)
            with self._lock:
                writing = self._being_written(ref, level, idx)
            payload, expires = (None, None) if writing else self._disk_op(
                "get", lambda: disk.get(key, expire_time=True), (None, None))
            if payload is not None and window_end is not None and (expires is None or abs(expires - window_end) > 1):
                payload = None
            if payload is None:
                rest.append(idx)
                continue
            try:
                arr = decode_chunk(payload, dtype, cbox.shape)
            except ValueError as exc:
                log.warning("corrupt cache entry %s (%s): deleted, refetching", key, exc)
                self._count("corrupt")
                self._disk_op("delete", lambda: disk.delete(key))
                rest.append(idx)
                continue
            self._paste(out, box, cbox, arr)
            hits.append((idx, arr))
        with self._lock:
            self._counts["disk_hits"] += len(hits)
            if self.epoch(ref) == epoch:  # not invalidated meanwhile: promote to memory
                for idx, arr in hits:
                    self._mem_put(ref, level, idx, arr)
        return rest

    def _mem_put(self, ref: VolumeRef, level: int, idx: Index, arr: np.ndarray) -> None:
        """Keep a chunk in memory (caller holds self._lock), unless a write to it is under way."""
        if self._being_written(ref, level, idx):
            return
        try:
            self._mem[(self.namespace, ref, level, idx)] = arr
        except ValueError:  # larger than the whole memory budget
            pass

    def _being_written(self, ref: VolumeRef, level: int, idx: Index) -> bool:
        """Whether a write under way covers this chunk (caller holds self._lock)."""
        for ranges in self._writing.get(ref, ()):
            r = ranges.get(level)
            if r is not None and all(a <= i < b for i, a, b in zip(idx, *r)):
                return True
        return False

    def _claim(self, ref, level, idxs, prefetch: bool) -> tuple[dict, dict, dict]:
        """Under the lock: split chunks into memory hits, ours to fetch, and others' flights."""
        hits, mine, theirs = {}, {}, {}
        gen = self.generation(ref)  # a fetch keeps its chunks only if no process wrote the volume meanwhile
        with self._lock:
            epoch = self.epoch(ref)
            for idx in idxs:
                key = (self.namespace, ref, level, idx)
                arr = None if self._being_written(ref, level, idx) else self._mem.get(key)
                if arr is not None:
                    hits[idx] = arr
                elif key in self._inflight:
                    theirs[idx] = self._inflight[key]
                else:
                    mine[idx] = self._inflight[key] = _Flight(epoch, prefetch, gen)
        return hits, mine, theirs

    def _fetch_missing(self, ref, level, grid, idxs, out, box, ahead: Box | None = None) -> list[Index]:
        """Fetch or wait for each chunk; returns chunks to retry (their prefetch flight failed). ``ahead``:
        the reader's read-ahead, sent as these chunks are about to land."""
        hits, mine, theirs = self._claim(ref, level, idxs, prefetch=False)
        with self._lock:
            self._counts["memory_hits"] += len(hits)
            self._counts["misses"] += len(mine) + len(theirs)
        if ahead is not None:
            self._read_ahead(ref, ahead, level, after=[*mine.values(), *theirs.values()])
        if mine:
            self._fetch_claimed(ref, level, grid, mine, parallel=True)
        retry = []
        for idx, flight in itertools.chain(hits.items(), mine.items(), theirs.items()):
            if isinstance(flight, np.ndarray):
                chunk = flight
            else:
                try:
                    chunk = flight.future.result()  # owners always resolve: no timeout needed
                except Exception:
                    if flight.prefetch and idx in theirs:
                        retry.append(idx)
                        continue
                    raise
            self._paste(out, box, grid.chunk_box(idx), chunk)
        return retry

    def _fetch_claimed(self, ref, level, grid: ChunkGrid, mine: dict, parallel: bool,
                       max_bytes: int | None = None, inline_first: bool = True) -> None:
        """Fetch the chunks we own in grouped requests of at most ``max_bytes``; every flight is resolved on return.

        With ``parallel``, the groups after the first go to the fetch pool (in chunk
        order, before the first starts in the calling thread), and without
        ``inline_first`` the first too (a prefetch thread then only waits); the
        pool's tasks never wait on anything, so this cannot deadlock.
        """
        try:
            cap = self.max_request_bytes if max_bytes is None else max_bytes
            groups = [(ref, level, grid, gbox, [(idx, mine[idx]) for idx in members])
                      for gbox, members in group_chunks(grid, mine, cap, self.info(ref).dtype.itemsize)]
            jobs, here = [], groups[:1] if inline_first else []
            for args in groups[len(here):]:
                if parallel:
                    try:
                        jobs.append(self._pool.submit(self._fetch_group, *args))
                        continue
                    except RuntimeError:  # pool shut down: fetch here
                        pass
                here.append(args)
            for args in here:
                self._fetch_group(*args)
            for job in jobs:
                job.result()
        finally:
            abandoned = [(idx, f) for idx, f in mine.items() if not f.future.done()]
            if abandoned:
                self._fail(ref, level, abandoned, BackendError("chunk fetch was abandoned"))

    def _release(self, ref, level, members) -> None:
        """Take finished flights out of the single-flight map (unless invalidation already did)."""
        with self._lock:
            for idx, f in members:
                key = (self.namespace, ref, level, idx)
                if self._inflight.get(key) is f:
                    del self._inflight[key]

    def _fail(self, ref, level, members, exc: BaseException) -> None:
        """Give every unresolved flight of ``members`` the error; nothing is cached."""
        self._release(ref, level, members)
        for _, f in members:
            if not f.future.done():
                f.future.set_exception(exc)

    def _fetch_group(self, ref, level, grid: ChunkGrid, gbox: Box, members: list) -> None:
        """One inner request; splits it into chunks, stores them, resolves their flights."""
        try:
            arr = self.inner.read(ref, gbox, level)
            took = time.monotonic() - min(f.started for _, f in members) if members else None
            chunks = []
            for idx, f in members:
                chunk = arr[grid.chunk_box(idx).slices(gbox.start)].copy()  # a copy: own its bytes
                chunk.flags.writeable = False
                chunks.append((idx, f, chunk))
        except BaseException as exc:
            self._fail(ref, level, members, exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:  # the checks and the puts at once: a _sync that drops the volume comes before or after
            if took is not None:
                self._fetch_s = took if self._fetch_s is None else 0.7 * self._fetch_s + 0.3 * took
            if members and members[0][1].prefetch:
                self._counts["prefetched"] += len(members)
            gen = self.generation(ref)
            for idx, f, chunk in chunks:
                if self.epoch(ref) == f.epoch and gen == f.gen:
                    self._mem_put(ref, level, idx, chunk)
        for _, f, chunk in chunks:
            f.future.set_result(chunk)  # waiters go on; the flight stays findable until on disk
        if self._disk is None:
            self._release(ref, level, members)
            return
        with self._lock:
            queue_it = self._disk_queued < self._disk_backlog
            if queue_it:
                self._disk_queued += 1
        if queue_it:
            try:
                self._disk_pool.submit(self._store_on_disk, ref, level, members, chunks, True)
                return
            except RuntimeError:  # closing: write here
                with self._lock:
                    self._disk_queued -= 1
        self._store_on_disk(ref, level, members, chunks, False)

    def _store_on_disk(self, ref, level, members, chunks, queued: bool) -> None:
        """Put fetched chunks in the disk tier (unless invalidated meanwhile), then end their flights.
        Checked and written under the volume's entries lock, shared: a drop comes before or after."""
        try:
            disk = self._disk
            if disk is not None:
                with self._entries_lock(ref, exclusive=False):
                    gen = self.generation(ref)
                    for idx, f, chunk in chunks:
                        with self._lock:
                            current = (f.epoch == self.epoch(ref) and f.gen == gen
                                       and not self._being_written(ref, level, idx))
                        if current:
                            self._disk_put(disk, ref, level, idx, chunk, f)
        finally:
            self._release(ref, level, members)
            if queued:
                with self._lock:
                    self._disk_queued -= 1

    def _disk_put(self, disk, ref, level, idx, chunk, flight: _Flight) -> None:
        """Store one chunk's payload (the caller checked it is current, under the entries lock); take it
        back out if an invalidation got past that lock (its file could not be locked)."""
        key = self.disk_key(ref, level, idx)
        window = self._window(ref)
        expire = None if window is None else (window + 1) * self.max_age_s - time.time()
        if expire is not None and expire <= 0:
            return  # its window is over: it would never be served
        self._disk_op("set", lambda: disk.set(key, encode_chunk(chunk), tag=self._tag(ref), expire=expire))
        with self._lock:
            stale = self.epoch(ref) != flight.epoch
        if not stale and self._stamps is not None:
            stale = self.generation(ref) != flight.gen
        if stale:  # invalidated while we were fetching or writing: take it back out
            self._disk_op("delete", lambda: disk.delete(key))

    # ---- prefetch --------------------------------------------------------
    def prefetch(self, ref: Sequence[str], box: Box, level: int = 0) -> None:
        """Hint that ``box`` will be read soon: fetch its uncached chunks in the background.

        At most ``max_prefetch_bytes`` per hint; dropped when the prefetch queue is
        full or prefetch is off; never raises for a bad hint. Thread-safe.
        """
        if not self.prefetch_enabled:
            return
        try:
            ref = as_ref(ref)
            box = box.intersect(self.info(ref).level(level).box)
        except NdfsError:
            return
        if box is not None:
            self._read_ahead(ref, box, level)

    def _read_ahead(self, ref: VolumeRef, box: Box, level: int, after: Sequence[_Flight] = ()) -> None:
        """Queue a prefetch of ``box`` (inside the volume); with ``after``, it waits until those flights
        are about to land (``readahead_lead``)."""
        with self._pf_cond:
            if self._pf_pending >= self.prefetch_queue:
                self._count("prefetch_dropped")
                return
            self._pf_pending += 1
        try:
            self._pf_pool.submit(self._prefetch_task, ref, box, level, tuple(after))
        except RuntimeError:  # closed
            self._prefetch_done()

    def _prefetch_done(self) -> None:
        with self._pf_cond:
            self._pf_pending -= 1
            self._pf_cond.notify_all()

    def _prefetch_task(self, ref: VolumeRef, box: Box, level: int, after: tuple = ()) -> None:
        """Runs on the prefetch pool: claims only chunks nobody has or fetches, never waits on them. It
        first waits, at most until they land, for ``after`` (the flights a reader waits on) to come
        within ``readahead_lead`` of a usual fetch time of landing."""
        try:
            usual = self._fetch_s
            if after:
                due = max(f.started for f in after) + (1.0 - self.readahead_lead) * (usual or 0.0)
                # no usual time yet: when they land, as a reader would ask next
                wait([f.future for f in after], timeout=None if usual is None else max(0.0, due - time.monotonic()))
            self._sync(ref)  # what it fetches is of the volume's state now
            info = self.info(ref)
            grid, budget, want = info.level(level).grid, self.max_prefetch_bytes, []
            for idx in grid.chunks(box):
                key = (self.namespace, ref, level, idx)
                with self._lock:
                    if key in self._mem or key in self._inflight:
                        continue
                disk = self._disk
                if disk is not None and self._disk_op("contains", lambda: self.disk_key(ref, level, idx) in disk):
                    continue
                budget -= grid.chunk_box(idx).size * info.dtype.itemsize
                if budget < 0:
                    break
                want.append(idx)
            _, mine, _ = self._claim(ref, level, want, prefetch=True)
            if mine:
                self._fetch_claimed(ref, level, grid, mine, parallel=True, max_bytes=self.prefetch_request_bytes,
                                    inline_first=False)
        except Exception as exc:
            log.debug("prefetch of %s at level %d of %s failed: %s", box, level, "/".join(ref), exc)
        finally:
            self._prefetch_done()

    def _note_read(self, ref: VolumeRef, box: Box, level: int, grid: ChunkGrid, itemsize: int) -> Box | None:
        """Spot z-slice readers moving through a volume: the chunk-deep slabs to read ahead of them, or None.

        A read follows the stream of its ref/level when it keeps the stream's x
        extent and lands within a slab of the last one read, or in a slab read
        ahead and not visited yet; elsewhere it starts a new stream. The kernel delivers a file in reads that may run out of order and
        straddle planes (stack.tif: the last row of one plane, then the next
        plane), so a stream remembers the planes it has seen, and the y extents
        of its reads accumulate into the extent to prefetch. A read past the
        highest plane seen reads ahead upwards, one below the lowest downwards
        (scrolling back in Fiji), each slab once.

        A stream starts one slab ahead and deepens once the reader enters a slab
        that was read ahead, as far as ``readahead_share`` of the slabs it has
        read (one slab until the eighth, two until the twelfth at 0.25), up to
        the slabs that hold ``readahead_chunks`` chunks, plus one (a 1024x1024
        plane on 512x512 cuboids: 4 chunks per slab, so 3 slabs for 8), but never
        more than half the memory tier. So a scroll that stops has fetched at most
        1.25x what it read (from its fourth slab on; a slab or two ahead of a short
        one), while a long read reaches full depth after a dozen slabs. One slab
        ahead already keeps the link busy while it is the bottleneck: a reader
        that waits on a slab gets the next one asked for when the slab is
        ``readahead_lead`` of a usual fetch time from landing (see
        ``_prefetch_task``), so its first bytes follow on the link without a
        round trip between, and it never shares the link with most of the slab.
        The read-ahead goes out in chunk-sized requests, nearest first, on the
        fetch pool, so the workers stay busy while the reader drains what has
        landed, and the extra slab waits in the queue instead of sharing the link.

        Returns the box to read ahead; the caller sends it (``_read_ahead``).
        """
        depth, oz = grid.chunk_shape[0], grid.extent.start[0]
        if not self.prefetch_enabled or box.shape[0] >= depth:
            return None
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        slab, last, n = (z0 - oz) // depth, (z1 - 1 - oz) // depth, grid.grid_shape[0]
        with self._lock:
            if len(self._recent) > 1024:
                self._recent.clear()
            st = self._recent.get((ref, level))
            if st is None or st["x"] != (x0, x1) or not (  # near the last read, or in a slab read ahead
                    abs(slab - st["cur"]) <= 1 or st["hi"] < last <= st["up"] or st["down"] <= slab < st["lo"]):
                self._recent[(ref, level)] = {"x": (x0, x1), "y": (y0, y1), "zmin": z0, "zmax": z1, "cur": slab,
                                              "lo": slab, "hi": last, "down": slab, "up": last, "deep": False}
                return None
            st["y"] = ys = (min(st["y"][0], y0), max(st["y"][1], y1))
            # deep once the reader has moved into a slab the read-ahead fetched
            st["deep"] = st["deep"] or st["hi"] < last <= st["up"] or st["down"] <= slab < st["lo"]
            st["lo"], st["hi"], st["cur"] = min(st["lo"], slab), max(st["hi"], last), slab
            upward, downward = z1 > st["zmax"], z0 < st["zmin"]
            st["zmin"], st["zmax"] = min(st["zmin"], z0), max(st["zmax"], z1)
            if not (upward or downward):
                return None  # not a new plane: nothing new to read ahead
            ahead = 1
            if st["deep"]:
                (_, ya, xa), (_, yb, xb) = grid.index_range(Box((z0, ys[0], x0), (z1, ys[1], x1)))
                per_slab = max(1, (yb - ya) * (xb - xa))
                room = max(1, self._mem.maxsize // 2 // max(1, per_slab * int(np.prod(grid.chunk_shape)) * itemsize))
                most = min(room, 1 + (-(-self.readahead_chunks // per_slab)))  # read ahead, not evicted unread
                # never further ahead than a share of what the stream has read: a scroll that stops has
                # fetched at most (1 + readahead_share) of it (from its fourth slab on, at the default)
                ahead = max(1, min(most, int((st["hi"] - st["lo"] + 1) * self.readahead_share)))
            if upward:
                start, end = max(last + 1, st["up"] + 1), min(last + 1 + ahead, n)
                st["up"] = max(st["up"], end - 1)
            else:
                start, end = max(slab - ahead, 0), min(slab, st["down"])
                st["down"] = min(st["down"], start)
            if start >= end:
                return None
        za, zb = oz + start * depth, min(oz + end * depth, grid.extent.stop[0])
        return Box((za, ys[0], x0), (zb, ys[1], x1))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no prefetch is queued or running and fetched chunks are on disk; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._pf_cond:
            if not self._pf_cond.wait_for(lambda: self._pf_pending <= 0, timeout):
                return False
        try:  # the disk writer is one thread: a no-op queued now runs after every earlier write
            self._disk_pool.submit(lambda: None).result(
                None if deadline is None else max(0.0, deadline - time.monotonic()))
        except RuntimeError:  # closed: nothing is queued any more
            pass
        except TimeoutError:
            return False
        return True

    # ---- writes and invalidation ----------------------------------------
    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        before = self.generation(ref)
        ranges = self._ranges(ref, box, level)
        with self._lock:  # from now until the write is done, its chunks are neither served nor kept
            self._writing.setdefault(ref, []).append(ranges)
            self._forget_memory(ref, self._hit(ref, ranges))
        try:
            self.inner.write(ref, box, level, array)
        finally:  # even a failed write may have changed the store
            try:
                self.invalidate(ref, box, level)
            finally:
                after = self.generation(ref)
                with self._lock:
                    self._writing[ref].remove(ranges)
                    if not self._writing[ref]:
                        del self._writing[ref]
                    seen = self._seen.get(ref, _UNSEEN)
                    # the stamp moved by our write alone: what we hold of the volume is current
                    if seen is not _UNSEEN and seen[0] == before and stamp.only_one_more(before, after):
                        self._seen[ref] = (after, *seen[1:])

    # ---- other processes ---------------------------------------------------
    def _stamp_path(self, ref: VolumeRef) -> Path:
        return self._stamps / stamp.stamp_name(self.namespace, ref)

    @contextmanager
    def _entries_lock(self, ref: VolumeRef, exclusive: bool):
        """The volume's disk entries, locked for every process sharing the disk tier: shared to check
        and store fetched chunks, exclusive to move the stamp and drop entries (see the module doc).
        Where the lock file cannot be used, goes on unlocked (a store then takes a raced entry back out)."""
        with ExitStack() as held:
            if self._stamps is not None:
                path = self._stamp_path(ref)
                lock = FileVolumeLock(path.with_name(path.name + ".lock"))
                try:
                    held.enter_context(lock.writing(*EVERY_PLANE) if exclusive else lock.reading(*EVERY_PLANE))
                except (OSError, NdfsError) as exc:
                    level = logging.DEBUG if "entries lock" in self._warned else logging.WARNING
                    self._warned.add("entries lock")
                    log.log(level, "cannot lock the disk entries of %s, going on without: %s", "/".join(ref), exc)
            yield

    def generation(self, ref):
        """The inner backend's write stamp (the local store), else the stamp this cache shares
        with other processes beside its disk tier (remote services); None without either."""
        ref = as_ref(ref)
        gen = self.inner.generation(ref)
        if gen is None and self._stamps is not None:
            gen = stamp.read(self._stamp_path(ref))
        return gen

    def _inner_version(self, ref: VolumeRef):
        remote = self._remote(ref)  # first: it may drop the volume and move the stamp
        shared = None
        if self._stamps is not None and self.inner.generation(ref) is None:
            shared = stamp.read(self._stamp_path(ref))
        return (shared, self._window(ref), remote, self.inner.version(ref))

    def _sync(self, ref: VolumeRef) -> bool:
        """Look at the volume's generation, max-age window and state on the service (checked when due,
        :mod:`ndfs.cache.fresh`); if another process (or another cache) wrote it since the last look, or
        the window moved, forget its chunks in memory (the writer cleared the shared disk tier; disk
        entries expire with their window; a change on the service was dropped by the check). True if it
        did. NotFound when the service says the volume is gone."""
        remote = self._remote(ref)
        try:
            now = (self.generation(ref), self._window(ref), remote)
        except NdfsError:
            return False
        with self._lock:
            prev = self._seen.get(ref, _UNSEEN)
            self._seen[ref] = now
            if prev is _UNSEEN or prev == now:
                return False
            self._forget_memory(ref, None)
            if prev[0] != now[0]:
                self._counts["changed_elsewhere"] += 1
        if prev[0] != now[0]:
            log.info("%s changed elsewhere: its cached chunks are dropped", "/".join(ref))
        return True

    def _signal(self, ref: VolumeRef) -> None:
        """Move the shared stamp (remote services), so other processes drop what they hold."""
        if self._stamps is None:
            return
        try:
            stamp.bump(self._stamp_path(ref))
        except OSError as exc:
            log.warning("cannot stamp the change of %s for other processes: %s", "/".join(ref), exc)

    def epoch(self, ref: Sequence[str]) -> int:
        """How many changes of the volume went through this cache (writes, invalidations): the cache's
        own part of its version token. A fetch keeps its chunks only if the number did not move."""
        ref = as_ref(ref)
        with self._info_lock:
            return self._bumps.get(ref, 0)

    def invalidate(self, ref: Sequence[str], box: Box | None = None, level: int | None = None) -> None:
        """Forget cached chunks: ``box`` at ``level`` (default 0) and what it maps to on every
        other level; ``box=None`` forgets the whole volume. Both tiers; thread-safe.
        """
        ref = as_ref(ref)
        ranges = None if box is None else self._ranges(ref, box, level or 0)
        with self._entries_lock(ref, exclusive=True):
            self._signal(ref)  # before the disk entries go: see _disk_put
            with self._lock:
                self._forget_memory(ref, self._hit(ref, ranges))
            disk = self._disk
            if disk is None:
                return
            n = sum(int(np.prod([b - a for a, b in zip(*r)])) for r in ranges.values()) if ranges else 0
            try:
                if ranges is None or n > self.disk_evict_limit:
                    disk.evict(self._tag(ref))
                else:
                    for lv, (lo, hi) in ranges.items():
                        for idx in itertools.product(*(range(a, b) for a, b in zip(lo, hi))):
                            disk.delete(self.disk_key(ref, lv, idx))
            except Exception as exc:  # never serve what we could not forget
                log.error("disk cache invalidation failed, disabling the disk tier here: %s", exc)
                self._disk = None

    def _ranges(self, ref: VolumeRef, box: Box, level: int) -> dict:
        """The chunk index range a box at ``level`` maps to on every level it affects."""
        info = self.info(ref)
        return {lv: info.level(lv).grid.index_range(b) for lv, b in affected_regions(info, box, level).items()}

    @staticmethod
    def _hit(ref: VolumeRef, ranges: dict | None):
        """A test of memory keys: chunks of ``ref`` inside ``ranges`` (None: every chunk of ``ref``)."""
        def hit(key) -> bool:
            if key[1] != ref:
                return False
            if ranges is None:
                return True
            r = ranges.get(key[2])
            return r is not None and all(a <= i < b for i, a, b in zip(key[3], *r))

        return hit

    def _forget_memory(self, ref: VolumeRef, hit) -> None:
        """Under the lock: drop memory chunks and in-flight fetches of ``ref`` that ``hit`` (None: all).
        The epoch bump keeps in-flight fetches from storing stale chunks."""
        hit = hit or (lambda key: key[1] == ref)
        self.bump_version(ref)
        for key in [k for k in self._mem.keys() if hit(k)]:
            del self._mem[key]
        for key in [k for k in self._inflight if hit(k)]:
            del self._inflight[key]  # its owner still resolves its waiters

    # ---- bookkeeping -----------------------------------------------------
    def cache_stats(self) -> dict:
        """Hit/miss counts, tier sizes and the inner backend's request counts."""
        with self._lock:
            s = dict(self._counts, memory_bytes=self._mem.currsize, memory_entries=len(self._mem),
                     memory_limit=self._mem.maxsize)
        s["max_age_s"] = self.max_age_s
        s["volumes"] = self.freshness_stats()
        disk = self._disk
        s["disk_bytes"] = self._disk_op("volume", disk.volume, 0) if disk is not None else 0
        s["disk_entries"] = self._disk_op("len", lambda: len(disk), 0) if disk is not None else 0
        seen = s["memory_hits"] + s["disk_hits"] + s["misses"]
        s["hit_rate"] = (s["memory_hits"] + s["disk_hits"]) / seen if seen else 0.0
        s["backend"] = self.inner.stats.as_dict()
        return s

    def close(self) -> None:
        """Stop the pools (queued prefetches are dropped), close the disk cache and ``inner``."""
        self._pf_pool.shutdown(wait=True, cancel_futures=True)
        with self._pf_cond:
            self._pf_pending = 0
            self._pf_cond.notify_all()
        self._pool.shutdown(wait=True)
        self._disk_pool.shutdown(wait=True)  # queued disk writes finish first
        disk, self._disk = self._disk, None
        if disk is not None:
            self._disk_op("close", disk.close)
        self.inner.close()
