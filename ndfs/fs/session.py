"""The file session: every file operation of a mount, in plain Python, on paths and handles.

:class:`FileSystem` is what the kernel talks to through the FUSE adapter
(:mod:`ndfs.fs.fuse`, a thin translation of requests and errnos), and what
``ndfs cat``, ``ndfs ls`` and the tests use directly: ``open``, ``read``,
``write``, ``truncate``, ``flush``, ``fsync``, ``release``, ``getattr``,
``readdir``, ``create``, ``unlink``. It raises only :class:`NdfsError`.

When a written file is committed (stored in the datastore):

- Bytes written to a handle are spooled to a local file as they arrive
  (the spool directory; each spool file is held with ``flock`` by its
  process, so the next session removes exactly those of dead processes).
- ``flush`` (every ``close()`` of a descriptor) commits only when it comes
  from the process that opened the file **and** the spooled file is complete
  (:mod:`ndfs.formats.complete`: every part its structure names is there).
  A flush from another process (a child that inherited the descriptor, a
  subprocess given it), or of a file still being filled in (numpy's
  ``tofile`` closes a duplicate descriptor in the middle of tifffile's
  write), commits nothing and is not an error. Nor does the flush of a
  writer killed by a signal (the kernel closing its descriptors): its file
  is never committed, and is kept in the outbox as failed at release. A refused commit (bad format,
  shape, dtype...) is the error of that ``close()``.
- ``fsync`` commits what the handle holds, whatever its state; errors go to
  the caller.
- ``release`` (the last descriptor of the handle is gone) commits what was
  written since the last commit. Its errors cannot reach any ``close()``
  (the kernel does not wait for release): they go to the log and to the
  outbox journal as a *failed* entry holding the file's bytes, which
  ``ndfs outbox`` lists and ``ndfs outbox retry`` tries again.

A commit is one :meth:`Tree.write` (one journal entry), so a file is stored
whole or not at all. Files opened for reading see one snapshot per open
(plane files) and, for a volume changed while mounted, are served past the
kernel's page cache (``direct_io``), since pages are shared by every handle
of a file. Thread-safe.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ndfs.core.errors import NdfsError, NotFound, ReadOnly, TooLarge, disk_error
from ndfs.fs.tree import FileNode, Node, Tree

log = logging.getLogger("ndfs.session")

BLOCK = 1 << 20  # st_blksize: Python's open() then reads 1 MiB at a time
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
#: how long a removed slice/stack/cutout view reads as absent (so `mv` from another disk can replace it)
HIDE_S = 60.0
_spool_counter = itertools.count()


class Caller:
    """Who makes a request: the thread, and the process (thread group) behind it; 0 where unknown.

    The process is looked up (in /proc) only when asked for, so a ``getattr`` costs no lookup.
    """

    __slots__ = ("tid", "_pid")

    def __init__(self, pid: int | None = None, tid: int = 0):
        self.tid, self._pid = tid, pid

    @property
    def pid(self) -> int:
        if self._pid is None:
            self._pid = process_of(self.tid)
        return self._pid

    @classmethod
    def here(cls) -> "Caller":
        return cls(os.getpid(), threading.get_native_id())

    @classmethod
    def of_thread(cls, tid: int) -> "Caller":
        """The caller behind a thread id (what the kernel sends with a FUSE request)."""
        return cls(None, tid)

    @property
    def killed(self) -> bool:
        """Whether the calling thread is exiting because a signal killed its process (``kill -9``, a crash):
        its descriptors are being closed by the kernel, not by the program. Looked up in /proc."""
        return killed_by_signal(self.tid)


#: PF_EXITING in a task's flags: the task is in exit
_PF_EXITING = 0x4


def killed_by_signal(tid: int) -> bool:
    """True while thread ``tid`` exits because a signal ended its process (fields 9 and 52 of
    /proc/<tid>/stat: the flags, and the exit code in waitpid's form, whose low 7 bits are the signal)."""
    if tid <= 0:
        return False
    try:
        with open(f"/proc/{tid}/stat", "rb") as fh:
            text = fh.read()
    except OSError:
        return False
    fields = text[text.rindex(b")") + 2:].split()
    try:
        flags, exit_code = int(fields[6]), int(fields[49])
    except (IndexError, ValueError):
        return False
    return bool(flags & _PF_EXITING) and exit_code & 0x7F != 0


def process_of(tid: int) -> int:
    """The process (thread group id) a thread belongs to, from /proc; 0 if it is gone or unknown."""
    if tid <= 0:
        return 0
    try:
        with open(f"/proc/{tid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _same_process(a: int, b: int) -> bool:
    return a == b or a == 0 or b == 0  # unknown on either side: behave as before (commit)


@dataclass
class Opened:
    """A handle handed out by :meth:`FileSystem.open`, and how the kernel should cache it."""

    fh: int
    direct_io: bool = False
    keep_cache: bool = False


class Spool:
    """A written file's new content on local disk, held with flock while it lives."""

    def __init__(self, directory: str | None):
        d = Path(directory or tempfile.gettempdir())
        try:
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / f"{os.getpid()}-{next(_spool_counter)}.spool"
            self.file = open(self.path, "w+b")
        except OSError as exc:
            raise disk_error(exc, "cannot make a spool file for the write") from exc
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        self.name = str(self.path)  # readers that need a file name (h5py) get it as file.name

    def close(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self.file.close()

    @staticmethod
    def clean(directory: str | os.PathLike) -> int:
        """Remove the spool files of processes that are gone (nobody holds their flock)."""
        removed = 0
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.endswith(".spool"):
                continue
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is writing it
            finally:
                os.close(fd)
            os.unlink(path)
            removed += 1
        return removed


class WriteHandle:
    """An open writable file: its new content spooled until a commit hands it to the node."""

    def __init__(self, node: FileNode, path: str, truncate: bool, spool_dir: str | None, caller: Caller):
        self.node, self.path = node, path
        self.spool = Spool(spool_dir)
        self.file = self.spool.file
        self.loaded = truncate  # the spool holds the content (empty after O_TRUNC)
        self.dirty = False  # written since the last commit
        self.landed = False  # committed, and nothing written since: the path shows the file as stored
        self.opener = caller.pid
        self.tid = caller.tid
        self.lock = threading.Lock()
        self.closed = False
        self.broken = False  # a write could not be spooled (a full disk): nothing will be committed
        self.abandoned = False  # its writer was killed while it was open: nothing will be committed

    def _load(self) -> None:
        """Copy the current content in before the first partial change (open without O_TRUNC)."""
        if self.loaded:
            return
        base = self.node.open()
        offset = 0
        while offset < base.size:
            chunk = base.read(offset, min(1 << 20, base.size - offset))
            if not chunk:
                break
            self._put(chunk, offset)
            offset += len(chunk)
        self.loaded = True

    def _put(self, data: bytes, offset: int) -> None:
        try:
            self.file.seek(0, os.SEEK_END)
            end = self.file.tell()
            if offset > end:  # a hole: zeros, as a sparse file would read
                self.file.truncate(offset)
            self.file.seek(offset)
            self.file.write(data)
        except OSError as exc:
            raise disk_error(exc, f"{self.path}: spooling the write") from exc

    def _end(self) -> int:
        self.file.seek(0, os.SEEK_END)
        return self.file.tell()

    def size(self) -> int | None:
        """Bytes written so far; None once the handle is released (the file is then what the tree says)."""
        with self.lock:
            if self.closed:
                return None
            if not self.loaded:
                return self.node.size
            return self._end()

    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            if not self.loaded:
                return self.node.read(offset, size)
            self.file.seek(offset)
            return self.file.read(size)

    def _check_bound(self, end: int) -> None:
        bound = self.node.max_bytes
        if bound is not None and end > bound:
            raise TooLarge(f"{self.path} can hold at most {bound} bytes; refusing to grow it to {end}")

    def write(self, data: bytes, offset: int) -> int:
        with self.lock:
            try:
                self._check_bound(offset + len(data))
                self._load()
                self._put(data, offset)
            except NdfsError:
                self.broken = True  # bytes the writer sent are not in the spool: this file is never committed
                raise
            self.dirty, self.landed = True, False
            return len(data)

    def truncate(self, length: int) -> None:
        with self.lock:
            self._check_bound(length)
            self._load()
            try:
                self.file.truncate(length)
            except OSError as exc:
                raise disk_error(exc, f"{self.path}: spooling the write") from exc
            self.dirty, self.landed = True, False

    def complete(self) -> bool:
        with self.lock:
            self.file.flush()
            self.file.seek(0)
            try:
                return self.node.complete(self.file)
            except Exception:  # a structure too odd to walk: the decoder will say what is wrong
                log.exception("%s: checking whether the file is whole failed; committing it", self.path)
                return True

    def commit(self) -> bool:
        """Hand the content to the node if it changed since the last commit; errors go to the caller.
        True if something was committed."""
        with self.lock:
            if not self.dirty:
                return False
            if self.broken:
                raise NdfsError(f"{self.path}: an earlier write to this file failed; nothing is stored",
                                errno=errno.EIO)
            self.dirty = False  # one attempt per change: a failure is the caller's to report
            self.file.flush()
            self.file.seek(0)
            self.node.commit_file(self.file)
            self.landed = True
            return True

    def close(self) -> None:
        with self.lock:  # not while size() looks at the spool from a getattr racing the release
            self.closed = True
            self.spool.close()


class FileSystem:
    """File operations over a :class:`Tree`. See the module docstring for the commit rules.

    ``spool_dir`` holds written files until they are committed (default: the temp directory);
    ``journal`` (an :class:`ndfs.journal.Journal`, the outbox) keeps files whose commit at release
    failed.
    """

    def __init__(self, tree: Tree, *, spool_dir: str | os.PathLike | None = None, journal=None,
                 entry_timeout_s: float = 60.0):
        self.tree = tree
        self.spool_dir = None if spool_dir is None else str(spool_dir)
        self.journal = journal
        self.entry_timeout_s = entry_timeout_s
        self.uid, self.gid = os.getuid(), os.getgid()
        self.handles: dict[int, object] = {}
        self._next = itertools.count(1)
        self._lock = threading.Lock()
        self._seen: dict[str, object] = {}  # path -> the volume token when it was last opened (keep_cache)
        self._truncated: set[str] = set()  # truncate(path, 0) without a handle: the next open starts empty
        self._writers: dict[str, WriteHandle] = {}  # path -> latest handle writing it (for stat by path)
        self._hidden: dict[str, float] = {}  # removed views -> until when they read as absent
        self._created: dict[str, float] = {}  # made by create() -> until when the kernel may reuse the name
        if self.spool_dir is not None and (n := Spool.clean(self.spool_dir)):
            log.info("removed %d spool file(s) left by processes that are gone", n)

    # ---- handles --------------------------------------------------------------------
    def _handle(self, fh: int):
        with self._lock:
            handle = self.handles.get(fh)
        if handle is None:
            raise NdfsError("bad file handle", errno=errno.EBADF)
        return handle

    def _new_handle(self, handle, path: str | None = None) -> int:
        with self._lock:
            fh = next(self._next)
            self.handles[fh] = handle
            if isinstance(handle, WriteHandle) and path is not None:
                self._writers[path] = handle
        return fh

    # ---- attributes and listings -------------------------------------------------------
    def attrs(self, node: Node, size: int | None = None) -> dict:
        ns = int(node.mtime * 1e9)
        base = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
        if node.is_dir:
            mode = 0o755 if getattr(node, "writable", False) else 0o555
            return {**base, "st_mode": stat.S_IFDIR | mode, "st_nlink": 2}
        mode = 0o644 if node.writable else 0o444
        size = node.size if size is None else size
        return {**base, "st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": size,
                "st_blksize": BLOCK, "st_blocks": -(-size // 512)}

    def _check_hidden(self, path: str) -> None:
        with self._lock:
            until = self._hidden.get(path)
            if until is not None and until < time.monotonic():
                del self._hidden[path]
                until = None
        if until is not None:
            raise NotFound(f"{path} was removed (its voxels stay; it is back in {HIDE_S:.0f} s or when written)")

    def _recently_created(self, path: str) -> bool:
        with self._lock:
            return self._created.get(path, 0.0) > time.monotonic()

    def getattr(self, path: str, fh: int | None = None, caller: Caller | None = None) -> dict:
        _check_name(path)
        if fh is None:
            self._check_hidden(path)
        with self._lock:
            handle = self.handles.get(fh) if fh is not None else self._writers.get(path)
        # a file being written has the size written so far, for the thread writing it (the kernel
        # passes no handle on fstat); everyone else sees the file as it is until the write lands. Once
        # it has landed, its path shows the file as stored (ndfs lays it out anew, often at another
        # size) even before the kernel releases the handle; a descriptor passed in shows its own bytes
        if isinstance(handle, WriteHandle) and (
                fh is not None or (not handle.landed and (caller is None or handle.tid == caller.tid))):
            size = handle.size()
            if size is not None:  # None: released meanwhile, the tree has the file as it now is
                return self.attrs(handle.node, size)
        try:
            return self.attrs(self.tree.resolve(path))
        except NotFound:
            if not self._recently_created(path):
                raise
            # made by create() but its content was refused: the kernel keeps the name for a while (and
            # would fail an open of it with this ENOENT), so it reads as an empty file, as on a disk
            return {**self.attrs(self.tree.resolve(path.rpartition("/")[0] or "/")),
                    "st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": 0, "st_blocks": 0,
                    "st_blksize": BLOCK}

    def readdir(self, path: str) -> list[str]:
        _check_name(path)
        return self.tree.listdir(path)

    # ---- open and create ------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDONLY, caller: Caller | None = None) -> Opened:
        _check_name(path)
        caller = caller or Caller.here()
        self._check_hidden(path)
        try:
            node, volume = self.tree.locate(path, fresh=True)
        except NotFound:
            # a new file whose first content was refused (e.g. bad RAMON JSON) does not exist, but the
            # kernel keeps the name create() gave it and opens it instead of creating it: create it again
            if self._recently_created(path) and flags & WRITE_FLAGS:
                return self.create(path, 0o644, flags, caller)
            raise
        if node.is_dir:
            raise NdfsError(f"{path} is a folder", errno=errno.EISDIR)
        if flags & WRITE_FLAGS:
            if not node.writable:
                raise ReadOnly(f"{path} is read-only")
            with self._lock:
                truncate = bool(flags & os.O_TRUNC) or path in self._truncated
                self._truncated.discard(path)
            handle = WriteHandle(node, path, truncate, self.spool_dir, caller)
            return Opened(self._new_handle(handle, path), direct_io=True)
        handle = node.open()  # plane files read their snapshot here
        # the token after the snapshot: if it moved meanwhile, the snapshot may be of a newer version than
        # the pages other handles put in the page cache, so the volume goes past the page cache from now on
        token = None if volume is None else self.tree.refresh(*volume)
        with self._lock:
            if len(self._seen) > 1_000_000:
                self._seen.clear()
            unchanged = path in self._seen and self._seen[path] == token
            self._seen[path] = token
        if node.direct_io or (volume is not None and volume in self.tree.changed):
            # a volume that changed while mounted is read past the page cache from then on: pages
            # are shared by every open file of an inode, so only per-handle reads (each served from
            # one snapshot of a slice) keep a reader from mixing old and new pixels
            return Opened(self._new_handle(handle), direct_io=True)
        # content is stable while the volume's token is unchanged: let the page cache keep it across opens
        return Opened(self._new_handle(handle), keep_cache=unchanged)

    def create(self, path: str, mode: int = 0o644, flags: int = os.O_WRONLY | os.O_CREAT,
               caller: Caller | None = None) -> Opened:
        _check_name(path)
        caller = caller or Caller.here()
        parent, _, name = path.rpartition("/")
        folder = self.tree.resolve(parent or "/")
        if not folder.is_dir:
            raise NdfsError(f"{parent} is not a folder", errno=errno.ENOTDIR)
        node = folder.create(name)
        with self._lock:
            self._hidden.pop(path, None)
            if len(self._created) > 100_000:
                self._created.clear()
            self._created[path] = time.monotonic() + self.entry_timeout_s
        handle = WriteHandle(node, path, True, self.spool_dir, caller)
        return Opened(self._new_handle(handle, path), direct_io=True)

    # ---- data -------------------------------------------------------------------------------
    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self._handle(fh).read(offset, size)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not isinstance(handle, WriteHandle):
            raise NdfsError("the file was not opened for writing", errno=errno.EBADF)
        return handle.write(data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None, caller: Caller | None = None) -> None:
        """Truncate an open file (``fh``, or the caller's own write handle of ``path``: the FUSE binding
        drops the handle of an ``ftruncate``) or, with none, empty ``path`` for its next open."""
        _check_name(path)
        if fh is None:
            with self._lock:
                mine = self._writers.get(path)
            if mine is not None and _same_process((caller or Caller.here()).pid, mine.opener):
                mine.truncate(length)
                return
        else:
            handle = self._handle(fh)
            if isinstance(handle, WriteHandle):
                handle.truncate(length)
                return
        node = self.tree.resolve(path)
        if node.is_dir:
            raise NdfsError(f"{path} is a folder", errno=errno.EISDIR)
        if not node.writable:
            raise ReadOnly(f"{path} is read-only")
        if length != 0:  # only "empty it, then write it anew" makes sense
            raise NdfsError(f"{path}: only truncating to 0 bytes is supported", errno=errno.EINVAL)
        with self._lock:
            self._truncated.add(path)

    # ---- commits ------------------------------------------------------------------------------
    def _commit(self, handle: WriteHandle) -> bool:
        return handle.commit()

    def flush(self, fh: int, caller: Caller | None = None) -> None:
        """A ``close()`` of one descriptor: commit if it is the opener's and the file is complete."""
        handle = self._handle(fh)
        if not isinstance(handle, WriteHandle) or not handle.dirty or handle.broken:
            return  # nothing new; or a write already failed (its error went to that write)
        caller = caller or Caller.here()
        if not _same_process(caller.pid, handle.opener):
            log.debug("%s: flush from process %d, opened by %d: not committing", handle.path, caller.pid,
                      handle.opener)
            return
        if caller.killed:  # the kernel closes the descriptors of a writer killed mid-write: it never finished
            handle.abandoned = True
            log.warning("%s: its writer (process %d) was killed before closing it; nothing of it is stored",
                        handle.path, caller.pid)
            return
        if not handle.complete():
            log.debug("%s: flushed before it is complete: not committing yet", handle.path)
            return
        self._commit(handle)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if isinstance(handle, WriteHandle):
            self._commit(handle)

    def release(self, fh: int) -> None:
        """The handle's last descriptor is gone: commit what is left; failures are logged and kept."""
        with self._lock:
            handle = self.handles.pop(fh, None)
            if isinstance(handle, WriteHandle) and self._writers.get(handle.path) is handle:
                del self._writers[handle.path]
        if not isinstance(handle, WriteHandle):
            return
        try:
            if handle.broken:
                log.error("%s: a write to it failed, so nothing of it is stored", handle.path)
            elif handle.abandoned and handle.dirty:  # kept for the user, as a failed commit is
                self._keep_failed(handle, NdfsError("its writer was killed before closing it", errno=errno.EIO))
            elif handle.dirty:  # written after the last commit (the kernel ignores release's result)
                try:
                    self._commit(handle)
                except Exception as exc:
                    self._keep_failed(handle, exc)
        finally:
            handle.close()

    def _keep_failed(self, handle: WriteHandle, exc: Exception) -> None:
        """A commit at release failed: nobody can be told but the log and ``ndfs outbox``."""
        message = str(exc) if isinstance(exc, NdfsError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, NdfsError):
            log.exception("writing %s failed unexpectedly at release", handle.path)
        if self.journal is None:
            log.error("writing %s failed at release: %s (the file is lost)", handle.path, message)
            return
        remote = handle.path.strip("/").split("/", 1)[0]
        try:
            with handle.lock:
                entry = self.journal.put_file(remote, "mount", handle.path, handle.file, message)
        except NdfsError as keep:
            log.error("writing %s failed at release: %s; keeping its bytes failed too: %s", handle.path,
                      message, keep)
            return
        log.error("writing %s failed at release: %s; its bytes are kept as outbox entry %s "
                  "(`ndfs outbox`, `ndfs outbox retry %s`)", handle.path, message, entry.id, entry.id)

    # ---- names --------------------------------------------------------------------------------
    def unlink(self, path: str) -> None:
        _check_name(path)
        parent, _, name = path.rpartition("/")
        try:
            self.tree.resolve(parent or "/").unlink(name)
            with self._lock:
                self._created.pop(path, None)
        except NdfsError as exc:
            if exc.errno == errno.ENOENT and self._recently_created(path):
                with self._lock:  # the empty name a refused create() left: removing it is all there is
                    self._created.pop(path, None)
                return
            # a writable view of voxels (slice, stack, cutout) cannot be removed, but `mv` from
            # another disk removes the target before copying: the name reads as absent for a
            # while (the voxels stay) and comes back when written or after HIDE_S seconds
            node = self.tree.resolve(path)
            if exc.errno != errno.EPERM or node.is_dir or not node.writable:
                raise
            with self._lock:
                self._hidden[path] = time.monotonic() + HIDE_S

    def utimens(self, path: str) -> None:
        _check_name(path)
        if not self.tree.resolve(path).writable:
            raise ReadOnly(f"{path} is read-only")  # times follow the volume's writes; accept tools that set them

    def statfs(self) -> dict:
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_namemax": 255}

    def warm_up(self) -> None:
        """Have every backend load what its first read needs (:meth:`ndfs.stores.base.Backend.warm_up`); the
        mount calls it before it shows, so no first read waits for it."""
        for name, backend in self.tree.remotes.items():
            try:
                backend.warm_up()
            except Exception:  # a warm-up is only a head start: the first read does the work and reports
                log.exception("warming up remote %r failed", name)

    def close(self) -> None:
        """Close every backend of the tree (the session is not used afterwards)."""
        log.info("statistics: %s", self.tree.stats())
        for backend in self.tree.remotes.values():
            try:
                backend.close()
            except Exception:
                log.exception("closing %r failed", backend)

    # ---- whole files, for ndfs cat and scripts -------------------------------------------------------
    def read_file(self, path: str, sink=None, block: int = BLOCK) -> bytes | int:
        """The whole file at ``path`` as a reader would get it (open, read, release); with ``sink`` (a
        binary file) the bytes are written there instead and their count returned."""
        opened = self.open(path, os.O_RDONLY)
        try:
            out, offset = [], 0
            while True:
                chunk = self.read(opened.fh, offset, block)
                if not chunk:
                    break
                offset += len(chunk)
                if sink is None:
                    out.append(chunk)
                else:
                    sink.write(chunk)
            return b"".join(out) if sink is None else offset
        finally:
            self.release(opened.fh)


def _check_name(path: str) -> None:
    """Paths must be text a mount can show: a lone surrogate (bytes that are not UTF-8) is EINVAL."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise NdfsError(f"{path.encode('utf-8', 'surrogateescape')!r} is not a UTF-8 name",
                        errno=errno.EINVAL) from None


__all__ = ["Caller", "FileSystem", "Opened", "Spool", "WriteHandle", "process_of"]
