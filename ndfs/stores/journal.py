"""The write journal on disk: a directory of durable entries.

An entry is one committed write: ``<id>.json`` (the target: remote, volume,
level, box, dtype; and its state: attempts, last error, pending or failed)
and its payload, ``<id>.npy`` (the voxels of the whole box, however large)
or ``<id>.bin`` (the bytes of a file the mount could not store, kept for the
user). Both are written under temporary names, fsynced and renamed, the JSON
last, and the directory is fsynced: an entry exists, whole, once its JSON
does, and survives ``kill -9`` and power loss from then on.

Ids sort in the order entries were made (time, then a counter); callers that
need a strict order per volume publish under that volume's writer mutex
(:mod:`ndfs.core.locks`), and :meth:`Journal.put` never gives a new entry
an id below one already there.

A full disk never costs an entry: ``put`` fails with ``ENOSPC`` before the
entry exists and removes what it had written; existing entries are only ever
rewritten in place of their JSON (temporary name, then rename). Temporary
files are held with ``flock`` by their writer, so :meth:`Journal.clean`
removes exactly those whose writer is gone (at the next mount or open).
Thread- and process-safe.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ndfs.core.errors import BackendError, NdfsError, NotFound, disk_error
from ndfs.core.geometry import Box

log = logging.getLogger("ndfs.journal")

_counter = itertools.count()
_last_id_lock = threading.Lock()
_last_time = [0]
#: a payload is streamed to disk in pieces of this many bytes
COPY_BYTES = 64 * 2**20


@dataclass
class Entry:
    """One committed write (or a file the mount could not store, ``kind="file"``)."""

    id: str
    remote: str
    target: str  # "kind:url-or-path" of the remote when written: never applied anywhere else
    ref: list[str]
    level: int
    start: list[int]
    stop: list[int]
    dtype: str
    created: float
    attempts: int = 0
    last_error: str = ""
    state: str = "pending"  # or "failed": refused, or a file that could not be stored; kept for the user
    next_try: float = 0.0
    kind: str = "voxels"  # or "file": the payload is the bytes of a file written through a mount
    path: str = ""  # kind "file": the file's path in the mount
    extra: dict = field(default_factory=dict)

    @property
    def box(self) -> Box:
        return Box(tuple(self.start), tuple(self.stop))

    @property
    def nbytes(self) -> int:
        if self.kind == "file":
            return int(self.extra.get("size", 0))
        return int(np.prod(self.box.shape)) * np.dtype(self.dtype).itemsize

    def where(self) -> str:
        if self.kind == "file":
            return self.path
        (z0, y0, x0), (z1, y1, x1) = self.start, self.stop
        return f"{self.remote}/{'/'.join(self.ref)} level {self.level} x {x0}:{x1} y {y0}:{y1} z {z0}:{z1}"

    def describe(self) -> str:
        return (f"{self.id}  {self.state:7s} {self.where()} ({self.nbytes} bytes, {self.attempts} attempts)"
                + (f": {self.last_error}" if self.last_error else ""))

    @classmethod
    def from_json(cls, doc: dict) -> "Entry":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def _new_id(after: str | None) -> str:
    """An id later than every id this process made and than ``after`` (the newest in the directory)."""
    with _last_id_lock:
        now = time.time_ns()
        if after is not None:
            now = max(now, int(after.split("-", 1)[0]) + 1)
        now = max(now, _last_time[0] + 1)
        _last_time[0] = now
        return f"{now:020d}-{os.getpid()}-{next(_counter) % 1_000_000:06d}"


class Journal:
    """A directory of entries (made on first use). Thread- and process-safe."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _mkdir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, f"cannot create the journal directory {self.root}") from exc

    def _paths(self, entry: Entry | str, payload: str = ".npy") -> tuple[Path, Path]:
        entry_id = entry if isinstance(entry, str) else entry.id
        if not isinstance(entry, str):
            payload = ".bin" if entry.kind == "file" else ".npy"
        return self.root / f"{entry_id}{payload}", self.root / f"{entry_id}.json"

    @contextmanager
    def _temp(self, final: Path) -> Iterator[object]:
        """A temporary file held with flock until it is renamed to ``final`` (removed on any failure)."""
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fh = open(tmp, "wb")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            fh.close()

    def _sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_json(self, entry: Entry) -> None:
        _, meta = self._paths(entry)
        with self._temp(meta) as fh:
            fh.write(json.dumps(asdict(entry)).encode())

    def newest_id(self) -> str | None:
        """The largest id in the directory (from the names alone)."""
        try:
            ids = [n[:-5] for n in os.listdir(self.root) if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            return None
        return max(ids) if ids else None

    def put(self, remote: str, target: str, ref: Sequence[str], level: int, box: Box, array: np.ndarray) -> Entry:
        """Store one write durably (all of ``array``, streamed); returns its entry, pending and due now.

        ENOSPC (or another disk error) leaves nothing behind: the entry does not exist.
        """
        array = np.asarray(array)
        if array.dtype.hasobject or array.shape != box.shape:
            raise BackendError(f"journal: a {array.dtype}{array.shape} array does not fit {box}")
        self._mkdir()
        entry = Entry(id=_new_id(self.newest_id()), remote=remote, target=target, ref=list(ref), level=level,
                      start=list(box.start), stop=list(box.stop), dtype=array.dtype.str, created=time.time())
        self._keep(entry, lambda fh: _save_streamed(fh, array), "the write")
        return entry

    def _keep(self, entry: Entry, fill: Callable[[object], None], what: str) -> None:
        """Write the entry's payload (``fill`` writes it into the open file), then its JSON, durably; on a
        disk error neither is left and the error is ``disk_error``'s (ENOSPC stays ENOSPC)."""
        payload, meta = self._paths(entry)
        try:
            with self._temp(payload) as fh:
                fill(fh)
            self._write_json(entry)
            self._sync_dir()
        except OSError as exc:
            payload.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise disk_error(exc, f"cannot keep {what} in the journal {self.root}") from exc

    def put_file(self, remote: str, target: str, path: str, data_file, error: str) -> Entry:
        """Keep the bytes of a file the mount could not store (a failed commit at release), as failed."""
        self._mkdir()
        data_file.seek(0, os.SEEK_END)
        size = data_file.tell()
        entry = Entry(id=_new_id(None), remote=remote, target=target, ref=[], level=0, start=[0, 0, 0],
                      stop=[0, 0, 0], dtype="|u1", created=time.time(), state="failed", kind="file", path=path,
                      last_error=error, extra={"size": size})

        def fill(fh) -> None:
            data_file.seek(0)
            while chunk := data_file.read(COPY_BYTES):
                fh.write(chunk)

        self._keep(entry, fill, path)
        return entry

    def save(self, entry: Entry) -> None:
        """Rewrite an entry's JSON (attempts, error, state); a full disk keeps the old JSON, and the entry."""
        _, meta = self._paths(entry)
        if not meta.exists():
            return
        try:
            self._write_json(entry)
        except OSError as exc:
            log.warning("cannot update journal entry %s (%s); it keeps its previous state", entry.id, exc)

    def get(self, entry_id: str) -> Entry:
        _, meta = self._paths(entry_id)
        try:
            return Entry.from_json(json.loads(meta.read_text()))
        except FileNotFoundError:
            raise NotFound(f"no outbox entry {entry_id}") from None
        except (ValueError, TypeError) as exc:
            raise BackendError(f"outbox entry {entry_id} is unreadable: {exc}") from exc

    def entries(self, remote: str | None = None) -> list[Entry]:
        """Every entry (of one remote), oldest first. Unreadable entries are logged and skipped."""
        out = []
        try:
            metas = sorted(p for p in os.listdir(self.root) if p.endswith(".json") and not p.startswith("."))
        except FileNotFoundError:
            return []
        for name in metas:
            try:
                entry = Entry.from_json(json.loads((self.root / name).read_text()))
            except FileNotFoundError:
                continue  # removed while listing
            except (ValueError, TypeError) as exc:
                log.error("journal entry %s is unreadable (%s); leaving it for `ndfs outbox`", name, exc)
                continue
            if remote is None or entry.remote == remote:
                out.append(entry)
        return out

    def load(self, entry: Entry) -> np.ndarray:
        """The entry's voxels, memory-mapped (read in pieces by whoever applies it)."""
        npy, _ = self._paths(entry)
        try:
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BackendError(f"journal data of {entry.id} is unreadable: {exc}") from exc
        if tuple(arr.shape) != entry.box.shape or arr.dtype != np.dtype(entry.dtype):
            raise BackendError(f"journal data of {entry.id} does not match its target")
        return arr

    def exists(self, entry: Entry) -> bool:
        return self._paths(entry)[1].exists()

    def payload_path(self, entry: Entry) -> Path:
        return self._paths(entry)[0]

    def remove(self, entry: Entry | str) -> bool:
        """Delete an entry (its JSON first: it is gone at once); False if it was already gone."""
        if isinstance(entry, str):
            try:
                entry = self.get(entry)
            except NdfsError:
                for suffix in (".json", ".npy", ".bin"):
                    (self.root / f"{entry}{suffix}").unlink(missing_ok=True)
                return False
        payload, meta = self._paths(entry)
        existed = meta.exists()
        meta.unlink(missing_ok=True)
        payload.unlink(missing_ok=True)
        return existed

    @contextmanager
    def claim(self, entry: Entry, wait: bool = False) -> Iterator[bool]:
        """Exclusive right to apply an entry: yields False if it is gone, or (without ``wait``) if another
        process holds it.

        The writer of an entry's file holds the same lock for a moment after the file gets its name (its
        temporary file's lock, released when it is closed); a caller that knows no other applier can
        hold the entry (the outbox's posters all hold the volume's writer mutex) waits that moment out.
        """
        _, meta = self._paths(entry)
        try:
            fd = os.open(meta, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield meta.exists()
        finally:
            os.close(fd)

    def clean(self) -> int:
        """Remove what dead writers left: temporary files nobody holds, payloads whose JSON never came."""
        removed = 0
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        for name in names:
            path = self.root / name
            if name.startswith(".") and name.endswith(".tmp"):
                removed += _remove_if_unheld(path)
            elif name.endswith((".npy", ".bin")) and not (self.root / (name.rsplit(".", 1)[0] + ".json")).exists():
                try:  # a writer between its payload and its JSON has just renamed it: give it a minute
                    if time.time() - path.stat().st_mtime > 60:
                        path.unlink(missing_ok=True)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def _remove_if_unheld(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its writer is alive
        path.unlink(missing_ok=True)
        return 1
    finally:
        os.close(fd)


def _save_streamed(fh, array: np.ndarray) -> None:
    """Write ``array`` as .npy, a slab at a time (a memory-mapped source never sits in memory whole)."""
    from numpy.lib import format as npformat

    npformat.write_array_header_2_0(fh, {"descr": npformat.dtype_to_descr(array.dtype),
                                         "fortran_order": False, "shape": array.shape})
    if array.ndim == 0 or array.size == 0:
        fh.write(np.ascontiguousarray(array).tobytes())
        return
    per = max(1, COPY_BYTES // max(1, array[0].nbytes))
    for i in range(0, array.shape[0], per):
        fh.write(np.ascontiguousarray(array[i:i + per]).tobytes())


__all__ = ["Entry", "Journal"]
