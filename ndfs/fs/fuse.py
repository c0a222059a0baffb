"""The FUSE adapter: mfusepy requests onto the file session, errnos back, and mounting.

Every file behaviour lives in :class:`ndfs.fs.session.FileSystem`; this module
only translates. Each handler turns an NdfsError into its errno, and anything
else into a logged EIO, so one bad request never takes the mount down. The
kernel sends the calling thread's id with each request; the session gets the
process behind it (a ``flush`` from a child that inherited a descriptor
commits nothing). ndfs never asks the kernel to evict pages: a volume that
changed is served past the page cache (direct_io) from then on, and a
notification waiting on a page that a dead daemon's read holds would keep a
``kill -9``-ed daemon from ever exiting. mfusepy is imported inside
:func:`mount` and :func:`make_operations` only (it fails at import when
libfuse is missing).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil

from ndfs.core.errors import NdfsError
from ndfs.fs.session import Caller, FileSystem

log = logging.getLogger("ndfs.fuse")

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


def make_operations(fs: FileSystem):
    """The mfusepy Operations object serving a file session."""
    import mfusepy

    def caller() -> Caller:
        return Caller.of_thread(mfusepy.fuse_get_context()[2])  # the kernel sends the calling thread's id

    class NdfsOperations(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.fs = fs

        @_errno_policy
        def getattr(self, path, fh=None):
            return fs.getattr(path, None if fh is None else fh.fh, caller())

        @_errno_policy
        def readdir(self, path, fh):
            return [".", ".."] + fs.readdir(path)

        def _opened(self, fi, opened) -> int:
            fi.fh = opened.fh
            if opened.direct_io:
                fi.direct_io = 1
            fi.keep_cache = 1 if opened.keep_cache else 0
            return 0

        @_errno_policy
        def open(self, path, fi):
            return self._opened(fi, fs.open(path, fi.flags, caller()))

        @_errno_policy
        def create(self, path, mode, fi):
            return self._opened(fi, fs.create(path, mode, fi.flags, caller()))

        @_errno_policy
        def read(self, path, size, offset, fi):
            return fs.read(fi.fh, offset, size)

        @_errno_policy
        def write(self, path, data, offset, fi):
            return fs.write(fi.fh, data, offset)

        @_errno_policy
        def truncate(self, path, length, fh=None):
            fs.truncate(path, length, None if fh is None else fh.fh, caller())
            return 0

        @_errno_policy
        def flush(self, path, fi):
            fs.flush(fi.fh, caller())
            return 0

        @_errno_policy
        def fsync(self, path, datasync, fi):
            fs.fsync(fi.fh)
            return 0

        def release(self, path, fi):
            try:
                fs.release(fi.fh)
            except Exception:  # the kernel ignores release's result; the session logged what matters
                log.exception("release of %s failed", path)
            return 0

        @_errno_policy
        def unlink(self, path):
            fs.unlink(path)
            return 0

        @_errno_policy
        def utimens(self, path, times=None):
            fs.utimens(path)
            return 0

        def destroy(self, path):
            """Unmounting: log the final statistics and close every backend."""
            fs.close()

        @_errno_policy
        def statfs(self, path):
            return fs.statfs()

        def _read_only(self, path, *args, **kwargs):
            raise mfusepy.FuseOSError(errno.EROFS)

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


def mount(fs: FileSystem, mountpoint: str, *, attr_timeout_s: float = 60.0, entry_timeout_s: float = 60.0,
          negative_timeout_s: float = 5.0, debug: bool = False, allow_other: bool = False) -> None:
    """Mount the session at mountpoint and serve in the foreground until unmounted.

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
    ops = make_operations(fs)
    # load what the first reads need (the local store's zarr: half a second, more with a cold page cache)
    # before the mount shows, so the first slice a user opens does not wait for the store's modules
    fs.warm_up()
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
