"""The durable outbox: writes kept on local disk until the remote has them.

A mount does not post a written file straight to the remote. It first stores
the voxels and their target (remote, volume, level, box) as one *entry* in
the outbox directory, then posts it:

- ``write_back = "sync"`` (default): the writer (a ``close()`` through the
  mount) waits for the post. Success removes the entry. A transient failure
  (server down, 5xx after the driver's retries, timeout) fails the close with
  EIO and *keeps* the entry: a background thread retries it with exponential
  backoff, and so does the next mount if this one dies. A refusal (EROFS,
  EINVAL, EACCES...) removes the entry and returns that errno: the remote
  said no, and retrying cannot change it.
- ``write_back = "async"``: the writer returns as soon as the entry is on
  disk; the background thread posts it. Refusals are kept as *failed*
  entries for ``ndfs outbox`` to show and drop.

Entries of one volume are posted in the order they were written, so an old
entry can never overwrite a newer one. Reads through :class:`OutboxBackend`
see pending entries of the level they were written to (read-your-writes);
lower levels follow once the post has landed and the store has rebuilt them.

On disk an entry is ``<id>.npy`` (the array) and ``<id>.json`` (the target,
attempts, last error), each written to a temporary name, fsynced and renamed,
the JSON last: an entry exists once its JSON does. A post holds an exclusive
``flock`` on the JSON, so two processes sharing an outbox never post the same
entry at once. Posting an entry twice (a crash after the post, before the
removal) writes the same voxels twice, which is harmless.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ndfs.backends.base import Backend, VolumeRef
from ndfs.backends.wrap import WrappingBackend
from ndfs.errors import BackendError, NdfsError, NotFound, Timeout
from ndfs.geometry import Box

log = logging.getLogger("ndfs.outbox")

#: errors worth retrying later; any other NdfsError is the remote refusing the data
TRANSIENT = (BackendError, Timeout)
_counter = itertools.count()


@dataclass
class Entry:
    """One pending (or refused) post."""

    id: str
    remote: str
    target: str  # "kind:url-or-path" of the remote when written: never posted anywhere else
    ref: list[str]
    level: int
    start: list[int]
    stop: list[int]
    dtype: str
    created: float
    attempts: int = 0
    last_error: str = ""
    state: str = "pending"  # or "failed": refused by the remote, kept for the user to look at
    next_try: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def box(self) -> Box:
        return Box(tuple(self.start), tuple(self.stop))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.box.shape)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        (z0, y0, x0), (z1, y1, x1) = self.start, self.stop
        return (f"{self.id}  {self.state:7s} {self.remote}/{'/'.join(self.ref)} level {self.level} "
                f"x {x0}:{x1} y {y0}:{y1} z {z0}:{z1} ({self.nbytes} bytes, {self.attempts} attempts)"
                + (f": {self.last_error}" if self.last_error else ""))


class Outbox:
    """A directory of entries. Thread- and process-safe (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NdfsError(f"cannot create the outbox directory {self.root}: {exc.strerror}") from exc

    def _paths(self, entry_id: str) -> tuple[Path, Path]:
        return self.root / f"{entry_id}.npy", self.root / f"{entry_id}.json"

    def _write_file(self, path: Path, data_writer) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            data_writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, remote: str, target: str, ref: Sequence[str], level: int, box: Box,
            array: np.ndarray) -> Entry:
        """Store one write durably; returns its entry (pending, due now)."""
        entry = Entry(id=f"{time.time_ns():020d}-{os.getpid()}-{next(_counter):06d}", remote=remote,
                      target=target, ref=list(ref), level=level, start=list(box.start), stop=list(box.stop),
                      dtype=np.dtype(array.dtype).str, created=time.time())
        npy, meta = self._paths(entry.id)
        try:
            self._write_file(npy, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))
            self._write_file(meta, lambda fh: fh.write(json.dumps(asdict(entry)).encode()))
            self._sync_dir()
        except OSError as exc:
            for p in (npy, meta):
                p.unlink(missing_ok=True)
            raise BackendError(f"cannot keep the write in the outbox {self.root}: {exc.strerror or exc}") from exc
        return entry

    def save(self, entry: Entry) -> None:
        """Rewrite an entry's JSON (attempts, error, state)."""
        _, meta = self._paths(entry.id)
        if meta.exists():
            self._write_file(meta, lambda fh: fh.write(json.dumps(asdict(entry)).encode()))

    def get(self, entry_id: str) -> Entry:
        _, meta = self._paths(entry_id)
        try:
            return Entry(**json.loads(meta.read_text()))
        except FileNotFoundError:
            raise NotFound(f"no outbox entry {entry_id}") from None
        except (ValueError, TypeError) as exc:
            raise BackendError(f"outbox entry {entry_id} is unreadable: {exc}") from exc

    def entries(self, remote: str | None = None) -> list[Entry]:
        """Every entry (of one remote), oldest first. Unreadable entries are logged and skipped."""
        out = []
        for meta in sorted(self.root.glob("*.json")):
            try:
                entry = Entry(**json.loads(meta.read_text()))
            except FileNotFoundError:
                continue  # removed while listing
            except (ValueError, TypeError) as exc:
                log.error("outbox entry %s is unreadable (%s); leaving it for `ndfs outbox`", meta.name, exc)
                continue
            if remote is None or entry.remote == remote:
                out.append(entry)
        return out

    def load(self, entry: Entry) -> np.ndarray:
        npy, _ = self._paths(entry.id)
        try:
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BackendError(f"outbox data of {entry.id} is unreadable: {exc}") from exc
        if tuple(arr.shape) != entry.box.shape or arr.dtype != np.dtype(entry.dtype):
            raise BackendError(f"outbox data of {entry.id} does not match its target")
        return arr

    def remove(self, entry_id: str) -> bool:
        """Delete an entry; False if it was already gone."""
        npy, meta = self._paths(entry_id)
        existed = meta.exists()
        meta.unlink(missing_ok=True)
        npy.unlink(missing_ok=True)
        return existed

    @contextmanager
    def claim(self, entry: Entry) -> Iterator[bool]:
        """Exclusive right to post an entry: yields False if another process holds it or it is gone."""
        _, meta = self._paths(entry.id)
        try:
            fd = os.open(meta, os.O_RDONLY)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield meta.exists()
        finally:
            os.close(fd)

    def clean_orphans(self) -> None:
        """Remove data files whose JSON never got written (a writer died before its close() returned)."""
        for npy in self.root.glob("*.npy"):
            if not npy.with_suffix(".json").exists() and time.time() - npy.stat().st_mtime > 60:
                npy.unlink(missing_ok=True)
        for tmp in self.root.glob(".*.tmp"):
            if time.time() - tmp.stat().st_mtime > 60:
                tmp.unlink(missing_ok=True)


class OutboxBackend(WrappingBackend):
    """A Backend whose writes go through the outbox; everything else goes to `inner`.

    ``remote`` is the remote's name in the configuration, ``target`` a string
    that identifies where it points (entries written for another target are
    never posted here). Starts a retry thread, which resumes entries left by
    an earlier process.
    """

    def __init__(self, inner: Backend, outbox: Outbox, remote: str, target: str, *, mode: str = "sync",
                 retry_max_s: float = 60.0, retry_min_s: float = 1.0):
        super().__init__(inner)
        if mode not in ("sync", "async"):
            raise ValueError(f"write_back mode must be sync or async, not {mode!r}")
        self.outbox, self.remote, self.target, self.mode = outbox, remote, target, mode
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._post_lock = threading.Lock()  # one post at a time: keeps per-volume order simple
        self._cond = threading.Condition()
        self._closed = False
        self._pending: dict[str, Entry] = {}  # id -> entry, pending state only
        self._owned: set[str] = set()  # ids a sync writer is posting itself: the retry thread keeps off them
        outbox.clean_orphans()
        for entry in outbox.entries(remote):
            if entry.state == "pending":
                if entry.target != target:
                    entry.state, entry.last_error = "failed", f"written for {entry.target}, now {target}"
                    outbox.save(entry)
                    log.error("outbox entry %s was written for another target; not posting it", entry.id)
                    continue
                entry.next_try = 0.0
                self._pending[entry.id] = entry
        if self._pending:
            log.info("outbox: resuming %d pending write(s) for %s", len(self._pending), remote)
        self._thread = threading.Thread(target=self._run, name=f"ndfs-outbox-{remote}", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # cache_stats, invalidate, wait_idle... of the wrapped backend
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ---- reads see pending writes ------------------------------------------
    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        with self._cond:
            over = [e for e in self._pending.values()
                    if tuple(e.ref) == ref and e.level == level and e.box.intersect(box) is not None]
        if any(e.box.contains(box) for e in over):  # all of it is waiting here: no need to ask the remote
            out = np.zeros(box.shape, dtype=self.info(ref).dtype)
        else:
            out = self.inner.read(ref, box, level)
        if over:
            out = np.array(out)
            for entry in sorted(over, key=lambda e: e.id):
                try:
                    data = self.outbox.load(entry)
                except BackendError:
                    if self.outbox.remove(entry.id) or entry.id not in self._pending:
                        continue  # posted (and removed) while we were reading
                    raise
                part = entry.box.intersect(box)
                out[part.slices(box.start)] = data[part.slices(entry.box.start)]
        return out

    # ---- writes ---------------------------------------------------------------
    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        entry = self.outbox.put(self.remote, self.target, ref, level, box, array)
        with self._cond:
            self._pending[entry.id] = entry
            if self.mode == "sync":  # posted by this writer, so that a refusal reaches it
                self._owned.add(entry.id)
            self._cond.notify_all()
        if self.mode == "async":
            return
        try:
            self._post_through(entry)
        finally:
            with self._cond:
                self._owned.discard(entry.id)
                self._cond.notify_all()

    def _post_through(self, entry: Entry) -> None:
        """Post every older pending entry of the volume, then this one; raise if this one fails."""
        with self._post_lock:
            with self._cond:
                todo = sorted((e for e in self._pending.values()
                               if e.ref == entry.ref and e.id <= entry.id), key=lambda e: e.id)
            for e in todo:
                error = self._post(e)
                if error is not None:
                    if e.id == entry.id and not isinstance(error, TRANSIENT):
                        raise error
                    if isinstance(error, TRANSIENT):
                        raise BackendError(
                            f"post failed ({error}); the data is kept in the outbox as {entry.id} and "
                            "retried in the background (see `ndfs outbox`)") from error

    def _post(self, entry: Entry) -> NdfsError | None:
        """Post one entry (caller holds _post_lock). None on success or if someone else has it."""
        with self.outbox.claim(entry) as mine:
            if not mine:
                with self._cond:
                    if not self.outbox._paths(entry.id)[1].exists():
                        self._pending.pop(entry.id, None)  # another process posted it
                return None
            try:
                data = self.outbox.load(entry)
                self.inner.write(tuple(entry.ref), entry.box, entry.level, np.asarray(data))
            except NdfsError as exc:
                entry.attempts += 1
                entry.last_error = str(exc)
                if isinstance(exc, TRANSIENT):
                    delay = min(self.retry_max_s, self.retry_min_s * 2 ** (entry.attempts - 1))
                    entry.next_try = time.time() + delay
                    self.outbox.save(entry)
                    log.warning("post of %s to %s failed (%s); retry %d in %.0f s",
                                entry.id, self.remote, exc, entry.attempts, delay)
                elif self.mode == "sync":
                    self.outbox.remove(entry.id)  # refused: the writer gets the errno, nothing is kept
                    with self._cond:
                        self._pending.pop(entry.id, None)
                else:
                    entry.state = "failed"
                    self.outbox.save(entry)
                    with self._cond:
                        self._pending.pop(entry.id, None)
                    log.error("%s refused outbox entry %s (%s); kept as failed, see `ndfs outbox`",
                              self.remote, entry.id, exc)
                return exc
            self.outbox.remove(entry.id)
            with self._cond:
                self._pending.pop(entry.id, None)
                self._cond.notify_all()
            if entry.attempts:
                log.info("outbox entry %s posted to %s after %d failed attempt(s)",
                         entry.id, self.remote, entry.attempts)
            return None

    # ---- background retries ---------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.time()
                # a volume's entries go out in the order they were written: none is due while an older
                # one of its volume waits for its retry time or is being posted by a sync writer
                due, waiting = [], set()
                for e in sorted(self._pending.values(), key=lambda e: e.id):
                    if tuple(e.ref) in waiting or e.next_try > now or e.id in self._owned:
                        waiting.add(tuple(e.ref))
                    else:
                        due.append(e)
                if not due:
                    wait = min((e.next_try for e in self._pending.values() if e.id not in self._owned),
                               default=now + 3600) - now
                    self._cond.wait(timeout=max(0.05, min(wait, 60.0)))
                    continue
            blocked: set[tuple] = set()  # volumes with an older entry still failing: keep their order
            for entry in due:
                if self._closed:
                    return
                key = tuple(entry.ref)
                if key in blocked:
                    continue
                if not self._post_lock.acquire(timeout=1.0):
                    break
                try:
                    if entry.id not in self._pending:
                        continue
                    error = self._post(entry)
                finally:
                    self._post_lock.release()
                if error is not None and isinstance(error, TRANSIENT):
                    blocked.add(key)

    def pending(self) -> list[Entry]:
        with self._cond:
            return sorted(self._pending.values(), key=lambda e: e.id)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending (True) or the timeout passes (False)."""
        with self._cond:
            for e in self._pending.values():
                e.next_try = 0.0
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.inner.close()
