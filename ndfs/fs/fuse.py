"""The FUSE skin: mfusepy Operations over the path tree, the errno policy, and mounting.

Nothing here knows about datastores; it maps kernel requests to tree nodes.
Every handler is wrapped so an NdfsError becomes its errno and anything else is
logged once and becomes EIO: one bad read never takes the mount down.
mfusepy is imported inside :func:`mount` only (it fails at import when libfuse
is missing). Handlers are thread-safe (libfuse runs a multithreaded loop).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import shutil
import stat
import threading

from ndfs.errors import NdfsError
from ndfs.fs.tree import FileNode, Tree

log = logging.getLogger("ndfs.fuse")

BLOCK = 1 << 20  # st_blksize: Python's open() then reads 1 MiB at a time
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


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


def make_operations(tree: Tree):
    """Build the mfusepy Operations object for a tree."""
    import mfusepy

    class NdfsOperations(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.tree = tree
            self.handles: dict[int, FileNode] = {}
            self._next = itertools.count(1)
            self._lock = threading.Lock()
            self.uid, self.gid = os.getuid(), os.getgid()

        def _attrs(self, node) -> dict:
            ns = int(node.mtime * 1e9)
            base = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
            if node.is_dir:
                return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            mode = 0o644 if node.writable else 0o444
            return {**base, "st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": node.size,
                    "st_blksize": BLOCK, "st_blocks": -(-node.size // 512)}

        @_errno_policy
        def getattr(self, path, fh=None):
            return self._attrs(self.tree.resolve(path))

        @_errno_policy
        def readdir(self, path, fh):
            return [".", ".."] + self.tree.listdir(path)

        @_errno_policy
        def open(self, path, fi):
            node = self.tree.resolve(path)
            if node.is_dir:
                raise mfusepy.FuseOSError(errno.EISDIR)
            if fi.flags & WRITE_FLAGS and not node.writable:
                raise mfusepy.FuseOSError(errno.EROFS)
            handle = node.open()
            if node.direct_io:
                fi.direct_io = 1
            else:
                fi.keep_cache = 1  # content is stable for the life of the node: let the page cache keep it
            with self._lock:
                fh = next(self._next)
                self.handles[fh] = handle
            fi.fh = fh
            return 0

        @_errno_policy
        def read(self, path, size, offset, fi):
            with self._lock:
                node = self.handles.get(fi.fh)
            if node is None:
                raise mfusepy.FuseOSError(errno.EBADF)
            return node.read(offset, size)

        @_errno_policy
        def release(self, path, fi):
            with self._lock:
                self.handles.pop(fi.fh, None)
            return 0

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

        create = write = truncate = unlink = mkdir = rmdir = rename = _read_only
        chmod = chown = symlink = link = mknod = utimens = _read_only

    return NdfsOperations()


def check_fuse_available() -> None:
    """Raise MountError with a readable reason if this machine cannot mount."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse) or run the "
                         "container with --device /dev/fuse")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is missing: install it with `apt-get install -y fuse3`")


def mount(tree: Tree, mountpoint: str, *, attr_timeout_s: float = 60.0, entry_timeout_s: float = 60.0,
          negative_timeout_s: float = 5.0, debug: bool = False) -> None:
    """Mount the tree at mountpoint and serve in the foreground until unmounted."""
    check_fuse_available()
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (OSError, ImportError) as exc:
        raise MountError(f"libfuse3 cannot be loaded ({exc}); install it with `apt-get install -y fuse3`") from exc
    mountpoint = os.path.abspath(mountpoint)
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    ops = make_operations(tree)
    mfusepy.FUSE(
        ops, mountpoint, raw_fi=True, foreground=True, debug=debug,
        fsname="ndfs", subtype="ndfs", auto_unmount=True, default_permissions=True,
        attr_timeout=attr_timeout_s, entry_timeout=entry_timeout_s, negative_timeout=negative_timeout_s,
    )
