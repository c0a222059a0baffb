"""The error tree of ndfs.

Every error a backend or the tree raises is an :class:`NdfsError`, an
``OSError`` that carries the errno the FUSE skin returns for it. Errors are
translated at exactly two places: service errors become NdfsError inside each
backend, and NdfsError becomes an errno in the FUSE skin.
"""

from __future__ import annotations

import errno as _errno


class NdfsError(OSError):
    """Base of all ndfs errors; ``.errno`` is what the mount returns."""

    errno_default = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None):
        code = self.errno_default if errno is None else errno
        super().__init__(code, message or _errno.errorcode.get(code, "error"))
        self.message = message

    def __str__(self) -> str:
        return self.message or super().__str__()

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.errno))


def _rebuild(cls, message, code):
    return cls(message, errno=code)


class NotFound(NdfsError):
    """No such remote, project, channel, level, slice or object (ENOENT)."""

    errno_default = _errno.ENOENT


class PermissionDenied(NdfsError):
    """The service refused the credentials (EACCES)."""

    errno_default = _errno.EACCES


class ReadOnly(NdfsError):
    """The target cannot be written (EROFS)."""

    errno_default = _errno.EROFS


class BadRegion(NdfsError):
    """A box, level, dtype or shape that does not fit the volume (EINVAL)."""

    errno_default = _errno.EINVAL


class TooLarge(NdfsError):
    """A request past a configured size limit (EFBIG)."""

    errno_default = _errno.EFBIG


class Timeout(NdfsError):
    """The service did not answer in time (ETIMEDOUT)."""

    errno_default = _errno.ETIMEDOUT


class BackendError(NdfsError):
    """The service failed or answered something unusable (EIO)."""

    errno_default = _errno.EIO


class InvalidAnnotation(NdfsError):
    """A RAMON object or annotation request that breaks the RAMON rules (EINVAL); nothing was stored."""

    errno_default = _errno.EINVAL


class ConfigError(NdfsError):
    """The configuration is malformed or names something that does not exist (EINVAL)."""

    errno_default = _errno.EINVAL


class BadInput(NdfsError):
    """Data handed to ndfs that cannot be used: not the named format, truncated, wrong shape or dtype (EINVAL)."""

    errno_default = _errno.EINVAL


class MissingExtra(NdfsError):
    """A feature whose optional package is not installed; the message names the pip extra (ENOTSUP)."""

    errno_default = _errno.ENOTSUP


class NoSpace(NdfsError):
    """A local disk (journal, spool, store) is full; nothing was stored (ENOSPC)."""

    errno_default = _errno.ENOSPC


def disk_error(exc: OSError, what: str) -> NdfsError:
    """The NdfsError for a failed local disk write: a full disk stays ENOSPC (never EIO)."""
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the device; nothing was stored")
    return BackendError(f"{what}: {exc.strerror or exc}")
