"""The embedded local store: zarr v3 arrays on disk, the default backend.

Layout of a store directory::

    STORE/<folder>/.../<channel>/zarr.json      a zarr group; attrs["ndfs"] holds kind, voxel size, offset
    STORE/<folder>/.../<channel>/<level>/       one zarr array per level, 0 = full resolution

Any directory that is not a channel is a folder (a project). Levels are 2x
downsamplings in x and y with z kept (see :mod:`ndfs.core.downsample`). A write at
level 0 recomputes the touched region of every lower level, so the pyramid
stays consistent; a write at a lower level changes that level only.

Writes are all or nothing, also across ``kill -9``: each write is first one
durable entry of the channel's write journal (``<channel>/.ndfs-journal/``,
see :mod:`ndfs.journal`), then applied (every chunk, every lower level it
implies), then removed. A write that did not finish (its process died, or
the disk filled mid-way) is completed from its entry by the next process
that writes those planes or reads them, or opens the channel.

Every process sees one consistent channel (see :mod:`ndfs.core.locks`):
writers of a channel take its writer mutex, so they go one at a time in
every process (mounts, Python, ``ndfs serve``, ``ndfs import``); while an
entry is applied its planes (widened to whole zarr chunks in z) are locked
exclusively, and a read holds its planes shared, so it sees a write whole
or not at all, and readers of other planes never wait. Thread-safe.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import shutil
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ndfs.core import stamp
from ndfs.stores.base import AdminStore, AnnotationStore, Backend, VolumeRef, as_ref
from ndfs.stores.ramon_store import LocalRamon
from ndfs.core.downsample import child_extent, downsample
from ndfs.core.errors import BackendError, BadRegion, NdfsError, NoSpace, NotFound, ReadOnly, disk_error
from ndfs.core.config import read_threads
from ndfs.core.geometry import Box
from ndfs.core.info import KINDS, LevelInfo, VolumeInfo
from ndfs.stores.journal import Entry, Journal
from ndfs.core.locks import FileVolumeLock, z_planes

GROUP_FILE = "zarr.json"
log = logging.getLogger("ndfs.local")
STAMP_FILE = ".ndfs-writes"  # a write stamp (ndfs/stamp.py) in each channel directory
LOCK_FILE = ".ndfs-lock"  # the channel's volume lock (ndfs/locks.py)
APPLYING_FILE = ".ndfs-applying"  # "<entry id> <z0> <z1>" while an entry is being applied
JOURNAL_DIR = ".ndfs-journal"  # the channel's write journal (ndfs/stores/journal.py)
#: an entry is applied in z slabs of at most this many bytes (memory stays bounded for any file)
APPLY_BYTES = 64 * 2**20
SUPPORTED_DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")


ENGINES = ("auto", "tensorstore", "zarr")
_ENGINE: list = []
_TS_CONTEXT: list = []


def _engine() -> str:
    """The engine that reads the local store's voxels: tensorstore when it is installed (the ``fast`` extra),
    else zarr-python; ``NDFS_LOCAL_ENGINE=zarr`` (or ``tensorstore``) picks one. Writes always go through
    zarr-python. Decided once per process."""
    if not _ENGINE:
        want = os.environ.get("NDFS_LOCAL_ENGINE", "auto").strip().lower() or "auto"
        if want not in ENGINES:
            raise BadRegion(f"NDFS_LOCAL_ENGINE must be one of {', '.join(ENGINES)}, not {want!r}")
        if want == "zarr":
            _ENGINE.append("zarr")
        else:
            try:
                import tensorstore  # noqa: F401
                _ENGINE.append("tensorstore")
            except ImportError:
                if want == "tensorstore":
                    raise BadRegion("NDFS_LOCAL_ENGINE=tensorstore, but tensorstore is not installed: "
                                    "pip install 'ndfs[fast]'") from None
                _ENGINE.append("zarr")
    return _ENGINE[0]


def _ts_context():
    """One tensorstore context per process, with no cache: the store changes under it (writes, other processes);
    decoding on as many threads as there are cores, or ``NDFS_READ_THREADS``."""
    if not _TS_CONTEXT:
        import tensorstore

        threads = read_threads(max(1, os.cpu_count() or 1))
        _TS_CONTEXT.append(tensorstore.Context({"cache_pool": {"total_bytes_limit": 0},
                                                "data_copy_concurrency": {"limit": threads}}))
    return _TS_CONTEXT[0]


def _tensorstore_used() -> bool:
    """Whether this process has made a tensorstore context (the local store's or a dataset remote's)."""
    tstore = sys.modules.get("ndfs.stores.tstore")
    return bool(_TS_CONTEXT) or getattr(tstore, "_CONTEXT", None) is not None


def _after_fork_in_child() -> None:
    """tensorstore aborts a forked child that touches it once the parent has used it (its threads do not
    survive a fork): such a child reads the local store with zarr-python, which resets itself after a fork."""
    if _tensorstore_used():
        _TS_CONTEXT.clear()
        _ENGINE[:] = ["zarr"]


os.register_at_fork(after_in_child=_after_fork_in_child)


def pyramid(shape, offset, voxel_size_nm, n_levels, chunk_shape) -> tuple[LevelInfo, ...]:
    """Level geometry for a volume whose lower levels halve x and y (z kept)."""
    levels = []
    shape, offset, vs = tuple(shape), tuple(offset), tuple(float(v) for v in voxel_size_nm)
    for _ in range(n_levels):
        levels.append(LevelInfo(shape=shape, offset=offset, voxel_size_nm=vs, chunk_shape=tuple(chunk_shape)))
        (y0, y1), (x0, x1) = (child_extent(offset[1], offset[1] + shape[1]),
                              child_extent(offset[2], offset[2] + shape[2]))
        offset = (offset[0], y0, x0)
        shape = (shape[0], y1 - y0, x1 - x0)
        vs = (vs[0], vs[1] * 2, vs[2] * 2)
    return tuple(levels)


class LocalBackend(LocalRamon, Backend, AnnotationStore, AdminStore):
    """A directory of zarr v3 channels. ``LocalBackend(path, create=True)`` makes the directory."""

    kind = "local"
    capabilities = frozenset({"write"})
    lock_writes = False  # _write applies under the channel's own (cross-process) lock

    def __init__(self, path: str | os.PathLike, create: bool = False, read_only: bool = False):
        super().__init__()
        self.root = Path(path).expanduser().resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if read_only:
            self.capabilities = frozenset()
        self._arrays: dict[tuple[VolumeRef, int], object] = {}
        self._arrays_lock = threading.Lock()
        self._locks: dict[VolumeRef, FileVolumeLock] = {}
        self._replayed: set[VolumeRef] = set()  # channels whose journal this process has looked at

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # ---- paths -----------------------------------------------------------
    def _dir(self, path: VolumeRef) -> Path:
        for part in path:
            if part in ("", ".", "..") or "/" in part or "\0" in part or part.startswith("."):
                raise NotFound(f"invalid name {part!r} in local path")
            if len(os.fsencode(part)) > 255:  # NAME_MAX: the OS would refuse it with an OSError
                raise NdfsError(f"name {part[:40]!r}... is longer than 255 bytes", errno=errno.ENAMETOOLONG)
        return self.root.joinpath(*path)

    def _group_attrs(self, path: VolumeRef) -> dict | None:
        meta = self._dir(path) / GROUP_FILE
        try:
            with open(meta, "rb") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read {'/'.join(path)}/{GROUP_FILE}: {exc}") from exc
        return data.get("attributes", {}).get("ndfs")

    # ---- hierarchy -------------------------------------------------------
    def _children(self, path: VolumeRef) -> list[str]:
        if path and self._is_volume(path):
            raise NotFound(f"{'/'.join(path)} is a channel, not a folder")
        d = self._dir(path)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except FileNotFoundError:
            raise NotFound(f"no folder {'/'.join(path) or '/'} in the local store") from None
        except NotADirectoryError:
            raise NotFound(f"{'/'.join(path)} is not a folder") from None
        return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]

    def _is_volume(self, path: VolumeRef) -> bool:
        d = self._dir(path)
        if not d.is_dir():
            raise NotFound(f"no folder or channel {'/'.join(path)} in the local store")
        return bool(path) and self._group_attrs(path) is not None

    # ---- metadata --------------------------------------------------------
    def _info(self, ref: VolumeRef) -> VolumeInfo:
        attrs = self._group_attrs(ref) if ref else None
        if attrs is None:
            raise NotFound(f"no channel {'/'.join(ref)} in the local store")
        try:
            return VolumeInfo.from_json(attrs)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"bad channel metadata in {'/'.join(ref)}: {exc}") from exc

    # ---- creation --------------------------------------------------------
    def create_volume(
        self,
        ref: Sequence[str] | str,
        shape: Sequence[int],
        dtype="uint8",
        kind: str = "image",
        voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
        offset: Sequence[int] = (0, 0, 0),
        levels: int = 1,
        chunk_shape: Sequence[int] = (16, 256, 256),
        overwrite: bool = False,
    ) -> VolumeInfo:
        """Create an empty channel (all zeros) with `levels` pyramid levels."""
        import zarr

        ref = as_ref(ref)
        dtype = np.dtype(dtype)
        self._check_writable()
        if not ref:
            raise BadRegion("a channel needs a path like 'project/channel'")
        if dtype.name not in SUPPORTED_DTYPES:
            raise BadRegion(f"dtype {dtype} is not supported (use one of {', '.join(SUPPORTED_DTYPES)})")
        if kind not in KINDS:
            raise BadRegion(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "annotation" and dtype.name not in ("uint32", "uint64"):
            raise BadRegion("annotation channels hold uint32 or uint64 ids")
        if levels < 1 or any(int(s) <= 0 for s in shape):
            raise BadRegion("a channel needs a positive shape and at least one level")
        d = self._dir(ref)
        if d.exists():
            if not overwrite:
                raise BadRegion(f"{'/'.join(ref)} already exists in the local store")
            shutil.rmtree(d)
        info = VolumeInfo(dtype=dtype, kind=kind,
                          levels=pyramid(shape, offset, voxel_size_nm, levels, chunk_shape))
        d.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(d), mode="w", zarr_format=3)
        for i, lv in enumerate(info.levels):
            chunks = tuple(min(c, s) for c, s in zip(lv.chunk_shape, lv.shape))
            group.create_array(str(i), shape=lv.shape, chunks=chunks, dtype=dtype, fill_value=0)
        group.attrs["ndfs"] = info.to_json()  # written last: a channel exists once it is complete
        self._forget_channel(ref)
        return info

    def delete_volume(self, ref: Sequence[str] | str) -> None:
        ref = as_ref(ref)
        self._check_writable()
        self.info(ref)
        shutil.rmtree(self._dir(ref))
        self._forget_channel(ref)

    def _check_writable(self) -> None:
        if "write" not in self.capabilities:
            raise ReadOnly(f"the local store {self.root} is open read-only")

    def _forget_channel(self, ref: VolumeRef) -> None:
        """Drop what this backend keeps of a channel that was deleted or made anew."""
        self.forget_info(ref)
        with self._arrays_lock:
            for key in [k for k in self._arrays if k[0] == ref]:
                del self._arrays[key]
            self._locks.pop(ref, None)
            self._replayed.discard(ref)

    # ---- voxels ----------------------------------------------------------
    def warm_up(self) -> None:
        """Import the read engine (zarr: about half a second, the whole wait of a mount's first slice
        as profiled; or tensorstore)."""
        try:
            if _engine() == "tensorstore":
                _ts_context()
            else:
                import zarr  # noqa: F401
        except (ImportError, NdfsError) as exc:  # a missing module or a bad NDFS_LOCAL_ENGINE: the first read says
            log.debug("the read engine did not load ahead of the first read: %s", exc)

    def _array(self, ref: VolumeRef, level: int):
        key = (ref, level)
        with self._arrays_lock:
            arr = self._arrays.get(key)
        if arr is None:
            import zarr

            try:
                arr = zarr.open_array(str(self._dir(ref) / str(level)), mode="r+")
            except Exception as exc:  # zarr raises several types for a missing/corrupt array
                raise BackendError(f"cannot open level {level} of {'/'.join(ref)}: {exc}") from exc
            with self._arrays_lock:
                self._arrays.setdefault(key, arr)
                arr = self._arrays[key]
        return arr

    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        with self.volume_lock(ref).reading(*z_planes(self.info(ref), box, level)):
            return self._read_array(ref, box, level)

    def _reader(self, ref: VolumeRef, level: int):
        """tensorstore's handle of a level for reads (None: zarr-python reads). tensorstore decodes the
        same zarr v3 chunks faster and on its own threads; it keeps no cache here, so every read sees
        the store as the journal and the volume lock leave it, exactly as a zarr-python read would."""
        if _engine() != "tensorstore":
            return None
        key = (ref, level, "ts")
        with self._arrays_lock:
            handle = self._arrays.get(key)
        if handle is None:
            import tensorstore

            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self._dir(ref) / str(level))}}
            try:
                handle = tensorstore.open(spec, read=True, context=_ts_context()).result()
            except Exception as exc:  # tensorstore raises ValueError and its own types for a missing array
                raise BackendError(f"cannot open level {level} of {'/'.join(ref)}: {exc}") from exc
            with self._arrays_lock:
                handle = self._arrays.setdefault(key, handle)
        return handle

    def _read_array(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        lv = self.info(ref).level(level)
        try:
            handle = self._reader(ref, level)
            if handle is not None:
                return handle[box.slices(lv.offset)].read().result()
            return np.asarray(self._array(ref, level)[box.slices(lv.offset)])
        except NdfsError:
            raise
        except Exception as exc:
            raise BackendError(f"reading {box} of {'/'.join(ref)} failed: {exc}") from exc

    # ---- the journal and the volume lock ----------------------------------------
    def volume_lock(self, ref: Sequence[str]) -> FileVolumeLock:
        """The channel's lock, shared with every process on this machine (a file in its directory)."""
        ref = as_ref(ref)
        with self._arrays_lock:
            lock = self._locks.get(ref)
        if lock is None:  # this process's first use of the channel: no lock of it is held yet
            self._replay_once(ref)
            d = self._dir(ref)
            lock = FileVolumeLock(d / LOCK_FILE, check=lambda z0, z1: self._unfinished(ref, z0, z1),
                                  recover=lambda: self.recover(ref))
            with self._arrays_lock:
                lock = self._locks.setdefault(ref, lock)
        return lock

    def _journal(self, ref: VolumeRef) -> Journal:
        return Journal(self._dir(ref) / JOURNAL_DIR)

    def _unfinished(self, ref: VolumeRef, z0: int, z1: int) -> bool:
        """Whether planes [z0, z1) hold an entry whose writer died while applying it (called with
        those planes read-locked: a live writer never shows its marker to a reader of its planes)."""
        try:
            text = (self._dir(ref) / APPLYING_FILE).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise BackendError(f"cannot read the journal state of {'/'.join(ref)}: {exc}") from exc
        try:
            _, a, b = text.split()
            return int(a) < z1 and z0 < int(b)
        except ValueError:  # markers are renamed into place whole: this one was not made by ndfs
            log.warning("ignoring the unreadable journal marker of %s: %r", "/".join(ref), text[:80])
            return False

    def recover(self, ref: Sequence[str]) -> int:
        """Complete every write of the channel whose writer died; returns how many were applied.
        Waits for a live writer to finish first. Call it holding no lock of the channel."""
        ref = as_ref(ref)
        with self._lock_file(ref).writer():
            return self._replay_locked(ref)

    def _lock_file(self, ref: VolumeRef) -> FileVolumeLock:
        """The channel's lock file, without the first-use replay of :meth:`volume_lock`."""
        with self._arrays_lock:
            lock = self._locks.get(ref)
        return lock if lock is not None else FileVolumeLock(self._dir(ref) / LOCK_FILE)

    def _replay_once(self, ref: VolumeRef) -> None:
        """On a process's first use of a channel: complete what a dead writer left in its journal."""
        if ref in self._replayed:
            return
        journal = self._journal(ref)
        if journal.newest_id() is not None or (self._dir(ref) / APPLYING_FILE).exists():
            self.recover(ref)
        journal.clean()
        for staged in self._dir(ref).glob(f"{APPLYING_FILE}.*"):  # a marker its writer died staging
            if time.time() - staged.stat().st_mtime > 60:
                staged.unlink(missing_ok=True)
        self._replayed.add(ref)

    def _replay_locked(self, ref: VolumeRef) -> int:
        """Apply the journal's entries oldest first (the caller holds the writer mutex)."""
        journal, done = self._journal(ref), 0
        for entry in journal.entries():
            log.warning("completing a write to %s that did not finish (journal entry %s)", "/".join(ref), entry.id)
            self._apply(ref, entry, journal.load(entry))
            journal.remove(entry)
            done += 1
        marker = self._dir(ref) / APPLYING_FILE
        if marker.exists():  # left by a writer that died between its entry's removal and the marker's
            marker.unlink(missing_ok=True)
        return done

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        journal = self._journal(ref)
        self._check_space(ref, array.nbytes)
        with self.volume_lock(ref).writer():
            self._replay_locked(ref)  # a dead writer's entry goes first: the journal keeps the order
            entry = journal.put("local", f"local:{self.root}", ref, level, box, array)
            try:
                self._apply(ref, entry, array)
            except NdfsError as exc:
                raise type(exc)(f"{exc} (the write is kept in the journal of {'/'.join(ref)} and completed by "
                                "the next write or read of those planes)", errno=exc.errno) from exc
            journal.remove(entry)

    def _check_space(self, ref: VolumeRef, nbytes: int) -> None:
        """ENOSPC before anything is written when the journal copy and the worst-case store
        (uncompressed, every level) cannot fit."""
        try:
            free = shutil.disk_usage(self._dir(ref)).free
        except FileNotFoundError:
            raise NotFound(f"no channel {'/'.join(ref)} in the local store") from None
        need = 2 * nbytes + nbytes // 2 + 2**20
        if free < need:
            raise NoSpace(f"writing {nbytes} bytes to {'/'.join(ref)} needs about {need} bytes free on its "
                          f"disk, which has {free}; nothing was stored")

    def _apply(self, ref: VolumeRef, entry: Entry, data: np.ndarray) -> None:
        """Store an entry's voxels and rebuild what they imply on lower levels, slab by slab, with its
        planes (widened to whole chunks in z) locked; idempotent, so a replay can repeat it."""
        info, level, box = self.info(ref), entry.level, entry.box
        lv = info.level(level)
        cz, oz = lv.chunk_shape[0], lv.offset[0]
        z0, z1 = z_planes(info, box, level)
        z0, z1 = oz + (z0 - oz) // cz * cz, oz + -(-(z1 - oz) // cz) * cz
        plane_bytes = max(1, int(np.prod(box.shape[1:])) * data.dtype.itemsize)
        depth = max(1, APPLY_BYTES // plane_bytes)
        d, top = self._dir(ref), 0
        with self._lock_file(ref).writing(z0, z1):
            marker = d / APPLYING_FILE
            try:
                staged = d / f"{APPLYING_FILE}.{os.getpid()}.{threading.get_ident()}"
                staged.write_text(f"{entry.id} {z0} {z1}\n")
                os.replace(staged, marker)  # whole or absent: readers of other planes look at it meanwhile
                for a in range(0, box.shape[0], depth):
                    b = min(box.shape[0], a + depth)
                    slab = Box((box.start[0] + a, *box.start[1:]), (box.start[0] + b, *box.stop[1:]))
                    part = np.ascontiguousarray(data[a:b])
                    self._store(ref, level, slab, part)
                    if level == 0:
                        self._propagate(ref, info, slab, part)
                    if part.size and info.kind == "annotation":
                        top = max(top, int(part.max()))
                self._bump_stamp(ref)
                marker.unlink(missing_ok=True)
            except OSError as exc:
                raise disk_error(exc, f"writing {box} of {'/'.join(ref)}") from exc
        if top:
            self._ramon_store(ref).note_label(top)

    def generation(self, ref):
        """The channel's write stamp: every process writing this store through ndfs moves it."""
        return stamp.read(self._dir(as_ref(ref)) / STAMP_FILE)

    def _bump_stamp(self, ref: VolumeRef) -> None:
        try:
            stamp.bump(self._dir(ref) / STAMP_FILE)
        except FileNotFoundError:  # the volume is gone (deleted meanwhile): nothing to announce
            return
        except OSError as exc:  # the data is written; only other processes' caches miss the news
            log.warning("cannot stamp the write to %s: %s", "/".join(ref), exc)

    def _store(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> None:
        lv = self.info(ref).level(level)
        try:
            self._array(ref, level)[box.slices(lv.offset)] = array
        except NdfsError:
            raise
        except Exception as exc:
            raise BackendError(f"writing {box} of {'/'.join(ref)} failed: {exc}") from exc

    def _propagate(self, ref: VolumeRef, info: VolumeInfo, box: Box, array: np.ndarray) -> None:
        """Recompute the region of every lower level that the level-0 box touches.

        When the written box is exactly the 2x2 footprint of the child region (whole
        slabs, aligned writes), the array just written is downsampled directly;
        otherwise the footprint is read back from the level above.
        """
        for level in range(1, len(info.levels)):
            parent, child = info.levels[level - 1], info.levels[level]
            (y0, y1), (x0, x1) = child_extent(box.start[1], box.stop[1]), child_extent(box.start[2], box.stop[2])
            cbox = Box((box.start[0], y0, x0), (box.stop[0], y1, x1)).intersect(child.box)
            if cbox is None:
                return
            want = Box((cbox.start[0], 2 * cbox.start[1], 2 * cbox.start[2]),
                       (cbox.stop[0], 2 * cbox.stop[1], 2 * cbox.stop[2]))
            have = want.intersect(parent.box)
            src = array if have == box else self._read_array(ref, have, level - 1)  # we hold the write lock
            # pad the part of `want` past the parent's edge by repeating the edge voxels
            pads = [(a - b, c - d) for a, b, c, d in zip(have.start, want.start, want.stop, have.stop)]
            if any(p != (0, 0) for p in pads):
                src = np.pad(src, pads, mode="edge")
            array = downsample(src, info.kind)
            self._store(ref, level, cbox, array)
            box = cbox
