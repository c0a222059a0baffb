"""Volume locks: one writer at a time per volume, and readers kept off only the planes being written.

Every store gives each volume a lock with three parts:

- ``writer()``: the volume's writer mutex. Whoever holds it publishes journal
  entries of that volume and applies them, oldest first, so writes to a
  volume are serialised (also across processes, for the local store) and
  the journal's order is the order of the writes.
- ``writing(z0, z1)``: exclusive over planes ``[z0, z1)``, held while an
  entry is applied (all chunks, all levels it implies).
- ``reading(z0, z1)``: shared over planes ``[z0, z1)``, held while a read
  assembles its box, so a read never sees half of a write.

Planes are counted in level-0 coordinates (:func:`z_planes` converts a box of
another level), so a write locks only the planes it changes: readers of other
planes never wait for it, however long it takes.

:class:`MemoryVolumeLock` serves one process (remote services: the service is
the shared state). :class:`FileVolumeLock` serves every process on the
machine with open-file-description locks (Linux ``F_OFD_SETLKW``) on one
file: byte 0 is the writer mutex, byte ``BASE + z`` plane ``z``. Each hold
opens the file anew, so threads of one process exclude each other exactly
like processes do, and a lock dies with its holder (``kill -9`` included).
Thread-safe.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import struct
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ndfs.core.errors import BackendError, NdfsError, NotFound

#: byte offset of plane 0 in a lock file: planes may be negative (dataset offsets)
BASE = 2**62
#: ``(z0, z1)`` covering every plane a volume can have: for locks over the whole volume
EVERY_PLANE = (-(2**61), 2**61)


def z_planes(info, box, level: int) -> tuple[int, int]:
    """The level-0 planes ``[z0, z1)`` that a box at ``level`` covers (levels may be thicker in z)."""
    scale = info.level(level).voxel_size_nm[0] / info.level(0).voxel_size_nm[0]
    if scale == 1:
        return int(box.start[0]), int(box.stop[0])
    return math.floor(box.start[0] * scale), math.ceil(box.stop[0] * scale)


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


class RangeLock:
    """In-process shared/exclusive locks over ranges of integers.

    A range is granted when no overlapping holder conflicts (two shared holders never do). A shared
    request also waits for an overlapping exclusive request that is already waiting, so a stream of
    readers of the same planes cannot starve a writer; requests on other ranges are never held back.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._held: dict[int, tuple[int, int, bool]] = {}
        self._waiting: dict[int, tuple[int, int]] = {}  # exclusive requests not yet granted
        self._next = 0

    def _free(self, a: int, b: int, exclusive: bool, me: int) -> bool:
        for a2, b2, ex2 in self._held.values():
            if (exclusive or ex2) and _overlap(a, b, a2, b2):
                return False
        if not exclusive:
            return not any(_overlap(a, b, a2, b2) for t, (a2, b2) in self._waiting.items() if t < me)
        return True

    @contextmanager
    def hold(self, a: int, b: int, exclusive: bool) -> Iterator[None]:
        with self._cond:
            me = self._next
            self._next += 1
            if exclusive:
                self._waiting[me] = (a, b)
            try:
                self._cond.wait_for(lambda: self._free(a, b, exclusive, me))
            finally:
                self._waiting.pop(me, None)
            self._held[me] = (a, b, exclusive)
        try:
            yield
        finally:
            with self._cond:
                del self._held[me]
                self._cond.notify_all()


class VolumeLock:
    """The contract: ``writer()``, ``writing(z0, z1)`` and ``reading(z0, z1)`` context managers."""

    def writer(self):
        raise NotImplementedError

    def writing(self, z0: int, z1: int):
        raise NotImplementedError

    def reading(self, z0: int, z1: int):
        raise NotImplementedError


class MemoryVolumeLock(VolumeLock):
    """A volume lock for the threads of one process."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._ranges = RangeLock()

    @contextmanager
    def writer(self) -> Iterator[None]:
        with self._mutex:
            yield

    def writing(self, z0: int, z1: int):
        return self._ranges.hold(z0, z1, True)

    def reading(self, z0: int, z1: int):
        return self._ranges.hold(z0, z1, False)


_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid


def _ofd_lock(fd: int, kind: int, start: int, length: int) -> None:
    while True:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
            return
        except InterruptedError:
            continue


class FileVolumeLock(VolumeLock):
    """A volume lock shared by every process through one lock file (see the module docstring).

    ``check(z0, z1)``, when given, runs after a read lock is granted and returns True when the
    planes hold a write that its writer did not finish (it died): the lock is then let go,
    ``recover()`` completes that write, and the read lock is taken again.
    """

    def __init__(self, path: str | os.PathLike, check: Callable[[int, int], bool] | None = None,
                 recover: Callable[[], None] | None = None):
        self.path = os.fspath(path)
        self.check, self.recover = check, recover
        self._local = threading.local()  # read locks this thread holds (a nested read never recovers)

    def _open(self, write: bool) -> int | None:
        """A new open file description of the lock file; None where it cannot exist (a read-only store)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise NotFound(f"{os.path.dirname(self.path)} is gone") from None
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise NdfsError(f"cannot open the lock file {self.path}: {exc.strerror}", errno=exc.errno) from exc
            if write:
                raise NdfsError(f"cannot lock {self.path} for writing: {exc.strerror}", errno=exc.errno) from exc
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # nobody can write this store either: reads need no lock

    @contextmanager
    def _hold(self, kind: int, start: int, length: int) -> Iterator[None]:
        fd = self._open(kind == fcntl.F_WRLCK)
        if fd is None:
            yield
            return
        try:
            _ofd_lock(fd, kind, start, length)
            yield
        finally:
            os.close(fd)  # closing the description releases its locks

    def writer(self):
        return self._hold(fcntl.F_WRLCK, 0, 1)

    def writing(self, z0: int, z1: int):
        return self._hold(fcntl.F_WRLCK, BASE + z0, max(1, z1 - z0))

    @contextmanager
    def reading(self, z0: int, z1: int) -> Iterator[None]:
        local = self._local
        nested = getattr(local, "depth", 0) > 0
        while True:
            with self._hold(fcntl.F_RDLCK, BASE + z0, max(1, z1 - z0)):
                if self.check is None or not self.check(z0, z1):
                    local.depth = getattr(local, "depth", 0) + 1
                    try:
                        yield
                    finally:
                        local.depth -= 1
                    return
                if nested:  # completing it needs these planes exclusively, and this thread holds some of them
                    raise BackendError(f"planes {z0}..{z1 - 1} hold a write that did not finish; read again")
            self.recover()  # outside the read lock: completing the write needs the planes exclusively


__all__ = ["VolumeLock", "MemoryVolumeLock", "FileVolumeLock", "RangeLock", "z_planes"]
