"""Write stamps shared between processes: how a cache hears that a volume changed elsewhere.

A stamp is an append-only file. Every write through ndfs appends one byte
(``O_APPEND`` makes concurrent appends atomic, so no lock and no rename), and
a reader compares the file's (inode, size, mtime) with what it saw last. A
stat costs about 2 µs, so a cache can look before every read. The local store
keeps one in each channel directory, so every process that writes the store
signals every other; caches of remote services keep theirs beside the disk
tier they share (``<cache dir>/stamps``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

Stamp = tuple[int, int, int]


def bump(path: str | os.PathLike) -> None:
    """Record one write, creating the file if needed.

    A missing directory is FileNotFoundError: a stamp must not bring back the directory of a
    volume that was just deleted, nor a cache dir deleted under a mount.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


def read(path: str | os.PathLike) -> Stamp | None:
    """The stamp now, or None when nothing was ever written (or the file went with its volume)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def only_one_more(before: Stamp | None, after: Stamp | None) -> bool:
    """Whether ``after`` is ``before`` plus exactly one write (one's own, when one just wrote once)."""
    return before is not None and after is not None and after[0] == before[0] and after[1] == before[1] + 1


def stamp_name(namespace: str, ref: Sequence[str]) -> str:
    """A file name for one volume of one remote (a digest: any namespace and names are safe)."""
    return hashlib.sha256("\0".join((namespace, *ref)).encode()).hexdigest()[:40]
