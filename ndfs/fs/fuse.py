"""The FUSE skin: mfusepy Operations over the path tree, the errno policy, and mounting.

Nothing here knows about datastores; it maps kernel requests to tree nodes.
Every handler is wrapped so an NdfsError becomes its errno and anything else is
logged once and becomes EIO: one bad read never takes the mount down.

Writes: a handle opened for writing spools the file's new content (memory,
then a temporary file) and hands it to the node's ``commit_file`` in
``flush``, so a refused or failed post is the error of ``close()`` (ImageJ
and cp check it). After every write through the tree the kernel's cached
pages and attributes of the files of that volume are evicted with libfuse's
``fuse_invalidate_path``; files opened again after a write also drop their
pages (``keep_cache`` only while the volume is unchanged).
mfusepy is imported inside :func:`mount` only (it fails at import when libfuse
is missing). Handlers are thread-safe (libfuse runs a multithreaded loop).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time

from ndfs.errors import NdfsError, NotFound, ReadOnly
from ndfs.fs.tree import FileNode, Tree

log = logging.getLogger("ndfs.fuse")

BLOCK = 1 << 20  # st_blksize: Python's open() then reads 1 MiB at a time
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
FUSE_THREADS = 10  # libfuse's default max_threads of its multithreaded loop


class MountError(NdfsError):
    """The mount cannot start (no /dev/fuse, no libfuse, bad mount point)."""


def _errno_policy(func):
    """Turn NdfsError into its errno and anything unexpected into a logged EIO."""

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        from mfusepy import FuseOSError

        try:
            return func(self, *args, **kwargs)
        except FuseOSError:
            raise
        except NdfsError as exc:
            if exc.errno not in (errno.ENOENT,):
                log.warning("%s %s: %s", func.__name__, args[0] if args else "", exc)
            raise FuseOSError(exc.errno) from None
        except Exception:
            log.exception("%s %s failed unexpectedly; returning EIO", func.__name__, args[0] if args else "")
            raise FuseOSError(errno.EIO) from None

    return wrapper


def _read_only(self, path, *args, **kwargs):
    from mfusepy import FuseOSError

    raise FuseOSError(errno.EROFS)


class WriteHandle:
    """An open writable file: the new content is spooled until ``commit`` hands it to the node."""

    def __init__(self, node: FileNode, truncate: bool, spool_dir: str | None = None):
        self.node = node
        # a named file: tifffile and h5py read from it (they need a str name); removed on close
        self.spool = tempfile.NamedTemporaryFile(dir=spool_dir, prefix="write-", suffix=".spool")
        self.loaded = truncate  # the spool holds the content (empty after O_TRUNC)
        self.dirty = False
        self.lock = threading.Lock()
        self.tid = 0  # the thread that opened it (set by the FUSE skin)

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
            self.spool.write(chunk)
            offset += len(chunk)
        self.loaded = True

    def size(self) -> int | None:
        """Bytes written so far; None once the handle is released (then the file is what the tree says)."""
        with self.lock:
            if self.spool.closed:
                return None
            if not self.loaded:
                return self.node.size
            self.spool.seek(0, os.SEEK_END)
            return self.spool.tell()

    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            if not self.loaded:
                return self.node.read(offset, size)
            self.spool.seek(offset)
            return self.spool.read(size)

    def write(self, data: bytes, offset: int) -> int:
        with self.lock:
            self._load()
            self.spool.seek(0, os.SEEK_END)
            end = self.spool.tell()
            if offset > end:  # a hole: zeros, as a sparse file would read
                self.spool.write(b"\0" * (offset - end))
            self.spool.seek(offset)
            self.spool.write(data)
            self.dirty = True
            return len(data)

    def truncate(self, length: int) -> None:
        with self.lock:
            self._load()
            self.spool.seek(0, os.SEEK_END)
            end = self.spool.tell()
            if length > end:
                self.spool.write(b"\0" * (length - end))
            else:
                self.spool.truncate(length)
            self.dirty = True

    def commit(self) -> None:
        """Hand the content to the node once per change; errors go to the caller (flush -> close())."""
        with self.lock:
            if not self.dirty:
                return
            self.dirty = False  # one attempt per change: a failed post is kept by the outbox, not retried here
            self.node.commit_file(self.spool)

    def close(self) -> None:
        with self.lock:  # not while size() looks at the spool from a getattr racing the release
            self.spool.close()


class _Invalidator:
    """Evicts kernel pages and attributes of paths through libfuse3's ``fuse_invalidate_path``.

    Runs on its own thread: a notification from inside a request handler for
    the same inode can deadlock the kernel, so callers wait (bounded) for a
    batch of other paths and never for the path they are handling.
    """

    def __init__(self):
        self._fuse = None
        self._call = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ndfs-invalidate", daemon=True)

    def start(self, fuse_ptr, call) -> None:
        self._fuse, self._call = fuse_ptr, call
        self._thread.start()

    def submit(self, paths: list[str]) -> threading.Event:
        done = threading.Event()
        if self._call is None or not paths:
            done.set()
        else:
            self._queue.put((paths, done))
        return done

    def _run(self) -> None:
        while True:
            paths, done = self._queue.get()
            for path in paths:
                try:
                    self._call(self._fuse, path.encode("utf-8", "surrogateescape"))
                except Exception:
                    log.exception("evicting kernel pages of %s failed", path)
            done.set()


def _libfuse_invalidate():
    """(fuse pointer of the running mount, fuse_invalidate_path); call inside a request handler."""
    import ctypes

    import mfusepy

    lib = mfusepy._libfuse  # mfusepy exposes no wrapper for this libfuse3 call
    func = lib.fuse_invalidate_path
    func.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    func.restype = ctypes.c_int
    return ctypes.c_void_p(lib.fuse_get_context().contents.fuse), func


def make_operations(tree: Tree, spool_dir: str | None = None, entry_timeout_s: float = 60.0):
    """Build the mfusepy Operations object for a tree; writes spool under spool_dir (default: temp dir).

    ``entry_timeout_s`` is how long the kernel trusts a name it was given (the mount's entry_timeout).
    """
    import mfusepy

    class NdfsOperations(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.tree = tree
            self.handles: dict[int, FileNode | WriteHandle] = {}
            self._next = itertools.count(1)
            self._lock = threading.Lock()
            self.uid, self.gid = os.getuid(), os.getgid()
            self._seen: dict[str, float] = {}  # path -> mtime when last opened (keep_cache while unchanged)
            self._kept_since: dict[str, float] = {}  # path -> when its pages were last dropped (max_age_s)
            self._truncated: set[str] = set()  # truncate(path, 0) without a handle: the next open starts empty
            self._writers: dict[str, WriteHandle] = {}  # path -> latest handle writing it (for stat by path)
            self._written: set[str] = set()  # folder prefixes of volumes written through this mount
            self._hidden: dict[str, float] = {}  # removed views -> until when they read as absent
            self._created: dict[str, float] = {}  # made by create() -> until when the kernel may reuse the name
            self._local = threading.local()
            self.invalidator = _Invalidator()
            self.spool_dir = spool_dir
            tree.listeners.append(self._volume_changed)

        def init(self, path):
            try:
                self.invalidator.start(*_libfuse_invalidate())
            except (AttributeError, OSError, ValueError):
                log.warning("this libfuse has no fuse_invalidate_path: files re-read after a write may "
                            "show old pages until they are opened again")

        def _volume_changed(self, remote, ref) -> None:
            """After a write: evict the kernel's pages of every file of that volume it may hold."""
            prefix = "/" + "/".join((remote, *ref)) + "/"
            own = getattr(self._local, "path", None)
            with self._lock:
                self._written.add(prefix)
                paths = [p for p in self._seen if p.startswith(prefix) and p != own]
            if not self.invalidator.submit(paths).wait(timeout=5.0):
                log.warning("evicting cached pages after a write to %s took over 5 s", prefix)

        def _handle(self, fi):
            with self._lock:
                handle = self.handles.get(fi.fh)
            if handle is None:
                raise mfusepy.FuseOSError(errno.EBADF)
            return handle

        def _attrs(self, node, size=None) -> dict:
            ns = int(node.mtime * 1e9)
            base = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
            if node.is_dir:
                mode = 0o755 if node.writable else 0o555
                return {**base, "st_mode": stat.S_IFDIR | mode, "st_nlink": 2}
            mode = 0o644 if node.writable else 0o444
            size = node.size if size is None else size
            return {**base, "st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": size,
                    "st_blksize": BLOCK, "st_blocks": -(-size // 512)}

        HIDE_S = 60.0  # how long a removed slice/stack/cutout view reads as absent (so `mv` can replace it)

        def _check_hidden(self, path: str) -> None:
            with self._lock:
                until = self._hidden.get(path)
                if until is not None and until < time.monotonic():
                    del self._hidden[path]
                    until = None
            if until is not None:
                raise mfusepy.FuseOSError(errno.ENOENT)

        @_errno_policy
        def getattr(self, path, fh=None):
            if fh is None:
                self._check_hidden(path)
            with self._lock:
                handle = self.handles.get(fh.fh) if fh is not None else self._writers.get(path)
            # a file being written has the size written so far, for the thread writing it (libfuse
            # passes no handle on fstat); everyone else sees the file as it is until the write lands
            if isinstance(handle, WriteHandle) and (fh is not None or handle.tid == mfusepy.fuse_get_context()[2]):
                size = handle.size()
                if size is not None:  # None: released meanwhile, the tree has the file as it now is
                    return self._attrs(handle.node, size)
            try:
                return self._attrs(self.tree.resolve(path))
            except NotFound:
                if not self._recently_created(path):
                    raise
                # made by create() but its content was refused: the kernel keeps the name for a while (and
                # would fail an open of it with this ENOENT), so it reads as an empty file, as on a disk
                return {**self._attrs(self.tree.resolve(path.rpartition("/")[0] or "/")),
                        "st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": 0, "st_blocks": 0,
                        "st_blksize": BLOCK}

        def _recently_created(self, path: str) -> bool:
            with self._lock:
                return self._created.get(path, 0.0) > time.monotonic()

        @_errno_policy
        def readdir(self, path, fh):
            return [".", ".."] + self.tree.listdir(path)

        @_errno_policy
        def open(self, path, fi):
            self._check_hidden(path)
            self._local.path = path  # a change found while opening evicts pages of the other files
            try:
                node = self.tree.resolve(path, fresh=True)
            except NotFound:
                # a new file whose first content was refused (e.g. bad RAMON JSON) does not exist, but the
                # kernel keeps the name create() gave it and opens it instead of creating it: create it again
                if self._recently_created(path) and fi.flags & WRITE_FLAGS:
                    return self.create(path, 0o644, fi)
                raise
            finally:
                self._local.path = None
            if node.is_dir:
                raise mfusepy.FuseOSError(errno.EISDIR)
            if fi.flags & WRITE_FLAGS:
                if not node.writable:
                    raise mfusepy.FuseOSError(errno.EROFS)
                with self._lock:
                    truncate = bool(fi.flags & os.O_TRUNC) or path in self._truncated
                    self._truncated.discard(path)
                return self._new_handle(fi, WriteHandle(node, truncate, self.spool_dir), direct=True, path=path)
            handle = node.open()
            with self._lock:
                if len(self._seen) > 1_000_000:
                    self._seen.clear()
                    self._kept_since.clear()
                unchanged = self._seen.get(path, node.mtime) == node.mtime
                self._seen[path] = node.mtime
                max_age, now = self.tree.max_age_s, time.monotonic()
                if max_age is not None and (not unchanged or now - self._kept_since.get(path, -max_age) >= max_age):
                    unchanged = False  # [cache] max_age_s: the kernel drops the file's pages, it reads afresh
                    self._kept_since[path] = now
            with self._lock:
                written = any(path.startswith(p) for p in self._written)
            if node.direct_io or written:
                # a volume written through this mount is read past the page cache from then on: pages
                # are shared by every open file of an inode, so only per-handle reads (each served from
                # one snapshot of a slice) keep a reader from mixing old and new pixels
                return self._new_handle(fi, handle, direct=True)
            # content is stable while the volume is unchanged: let the page cache keep it across opens
            fi.keep_cache = 1 if unchanged else 0
            return self._new_handle(fi, handle, direct=False)

        def _new_handle(self, fi, handle, direct: bool, path: str | None = None) -> int:
            if direct:
                fi.direct_io = 1
            with self._lock:
                fh = next(self._next)
                self.handles[fh] = handle
                if path is not None:
                    handle.tid = mfusepy.fuse_get_context()[2]  # the kernel sends the calling thread's id
                    self._writers[path] = handle
            fi.fh = fh
            return 0

        @_errno_policy
        def create(self, path, mode, fi):
            parent, _, name = path.rpartition("/")
            folder = self.tree.resolve(parent or "/")
            if not folder.is_dir:
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            node = folder.create(name)
            with self._lock:
                self._hidden.pop(path, None)
                if len(self._created) > 100_000:
                    self._created.clear()
                self._created[path] = time.monotonic() + entry_timeout_s
            return self._new_handle(fi, WriteHandle(node, True, self.spool_dir), direct=True, path=path)

        @_errno_policy
        def read(self, path, size, offset, fi):
            return self._handle(fi).read(offset, size)

        @_errno_policy
        def write(self, path, data, offset, fi):
            handle = self._handle(fi)
            if not isinstance(handle, WriteHandle):
                raise mfusepy.FuseOSError(errno.EBADF)
            return handle.write(data, offset)

        @_errno_policy
        def truncate(self, path, length, fh=None):
            if fh is not None:
                handle = self._handle(fh)
                if isinstance(handle, WriteHandle):
                    handle.truncate(length)
                    return 0
            node = self.tree.resolve(path)
            if node.is_dir:
                raise mfusepy.FuseOSError(errno.EISDIR)
            if not node.writable:
                raise mfusepy.FuseOSError(errno.EROFS)
            if length != 0:
                raise mfusepy.FuseOSError(errno.EINVAL)  # only "empty it, then write it anew" makes sense
            with self._lock:
                self._truncated.add(path)
            return 0

        def _commit(self, path, fi) -> None:
            handle = self._handle(fi)
            if isinstance(handle, WriteHandle):
                self._local.path = path
                try:
                    handle.commit()
                finally:
                    self._local.path = None

        @_errno_policy
        def flush(self, path, fi):
            self._commit(path, fi)
            return 0

        @_errno_policy
        def fsync(self, path, datasync, fi):
            self._commit(path, fi)
            return 0

        def release(self, path, fi):
            with self._lock:
                handle = self.handles.pop(fi.fh, None)
                if path is not None and self._writers.get(path) is handle:
                    del self._writers[path]
            if isinstance(handle, WriteHandle):
                try:
                    if handle.dirty:  # written after the last flush (libfuse ignores release's result)
                        handle.commit()
                except Exception as exc:
                    log.error("writing %s failed at release: %s", path, exc)
                finally:
                    handle.close()
                    if path is not None:  # its own pages: safe to evict now that the handle is gone
                        self.invalidator.submit([path])
            return 0

        @_errno_policy
        def unlink(self, path):
            parent, _, name = path.rpartition("/")
            try:
                self.tree.resolve(parent or "/").unlink(name)
                with self._lock:
                    self._created.pop(path, None)
            except NdfsError as exc:
                if exc.errno == errno.ENOENT and self._recently_created(path):
                    with self._lock:  # the empty name a refused create() left: removing it is all there is
                        self._created.pop(path, None)
                    return 0
                # a writable view of voxels (slice, stack, cutout) cannot be removed, but `mv` from
                # another disk removes the target before copying: the name reads as absent for a
                # while (the voxels stay) and comes back when written or after HIDE_S seconds
                node = self.tree.resolve(path)
                if exc.errno != errno.EPERM or node.is_dir or not node.writable:
                    raise
                with self._lock:
                    self._hidden[path] = time.monotonic() + self.HIDE_S
            return 0

        @_errno_policy
        def utimens(self, path, times=None):
            if not self.tree.resolve(path).writable:
                raise ReadOnly(f"{path} is read-only")
            return 0  # times follow the volume's writes; accept tools that set them after a copy

        def destroy(self, path):
            """Unmounting: log the final statistics and close every backend."""
            log.info("unmounting; statistics: %s", self.tree.stats())
            for backend in self.tree.remotes.values():
                try:
                    backend.close()
                except Exception:
                    log.exception("closing %r failed", backend)

        @_errno_policy
        def statfs(self, path):
            return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                    "f_files": 0, "f_ffree": 0, "f_namemax": 255}

        mkdir = rmdir = rename = _read_only
        chmod = chown = symlink = link = mknod = _read_only

    return NdfsOperations()


def check_fuse_available() -> None:
    """Raise MountError with a readable reason if this machine cannot mount."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse) or run the "
                         "container with --device /dev/fuse")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is missing: install it with `apt-get install -y fuse3`")


def mount(tree: Tree, mountpoint: str, *, attr_timeout_s: float = 60.0, entry_timeout_s: float = 60.0,
          negative_timeout_s: float = 5.0, debug: bool = False, spool_dir: str | None = None,
          allow_other: bool = False) -> None:
    """Mount the tree at mountpoint and serve in the foreground until unmounted.

    The mount is private to the user who made it unless ``allow_other`` (libfuse's option of that
    name, which non-root users may only pass with ``user_allow_other`` in /etc/fuse.conf).
    """
    check_fuse_available()
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (OSError, ImportError) as exc:
        raise MountError(f"libfuse3 cannot be loaded ({exc}); install it with `apt-get install -y fuse3`") from exc
    mountpoint = os.path.abspath(mountpoint)
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    ops = make_operations(tree, spool_dir, entry_timeout_s)
    shared = {"allow_other": True} if allow_other else {}
    mfusepy.FUSE(
        ops, mountpoint, raw_fi=True, foreground=True, debug=debug,
        fsname="ndfs", subtype="ndfs", auto_unmount=True, default_permissions=True,
        attr_timeout=attr_timeout_s, entry_timeout=entry_timeout_s, negative_timeout=negative_timeout_s,
        # libfuse 3.14 logs "Ignoring invalid max threads value 4294967295" for its own default
        # (unlimited idle threads); naming its thread limit (10) keeps that behaviour without the noise
        max_idle_threads=FUSE_THREADS,
        **shared,
    )
