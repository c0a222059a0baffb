"""The outbox: the write journal of a remote service, as a layer over its (cached) backend.

A write through :class:`JournaledStore` first becomes one durable journal
entry (:mod:`ndfs.stores.journal`) holding the whole write, however many
requests it takes, then is posted:

- ``mode="sync"`` (default): the writer waits for the post. Success removes
  the entry. A transient failure (service down, 5xx after the driver's
  retries, timeout) raises EIO and *keeps* the entry: a background thread
  posts it again with exponential backoff, and so does the next process
  that opens the outbox if this one dies. A refusal (EROFS, EINVAL,
  EACCES...) removes the entry and raises its errno: the service said no.
- ``mode="async"``: the writer returns once the entry is durable; the
  background thread posts it. Refusals are kept as *failed* entries for
  ``ndfs outbox`` to show and drop.

An entry is posted whole or posted again: a crash mid-post (of this process
or of the service) leaves the entry, and the next post repeats every piece
(posting the same voxels twice is harmless). Entries of one volume are
posted in the order they were written, across processes too: a poster holds
the volume's writer mutex (a lock file in the outbox) and posts every older
entry first, and each post holds its entry's ``flock`` so no entry goes out
twice at once. Reads see pending entries of the level they were written to
(read-your-writes); lower levels follow once the service has them.

A full outbox disk refuses the new write with ENOSPC and keeps every older
entry; the background thread survives any failure (it logs and retries).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ndfs.core import stamp
from ndfs.stores.base import Backend, VolumeRef
from ndfs.stores.wrap import WrappingBackend
from ndfs.core.errors import BackendError, ConfigError, NdfsError, Timeout
from ndfs.core.geometry import Box
from ndfs.stores.journal import Entry, Journal
from ndfs.core.locks import FileVolumeLock

log = logging.getLogger("ndfs.outbox")

#: errors worth retrying later; any other NdfsError is the remote refusing the data
TRANSIENT = (BackendError, Timeout)


def _transient(exc: NdfsError) -> bool:
    import errno as errnos

    return isinstance(exc, TRANSIENT) or exc.errno in (errnos.ENOSPC, errnos.EIO, errnos.ETIMEDOUT)


class JournaledStore(WrappingBackend):
    """A Backend whose writes go through the outbox journal; everything else goes to ``inner``.

    ``remote`` is the remote's name in the configuration, ``target`` a string
    that identifies where it points (entries written for another target are
    never posted here). Starts a retry thread, which resumes entries left by
    an earlier process. Thread- and process-safe.
    """

    def __init__(self, inner: Backend, journal: Journal, remote: str, target: str, *, mode: str = "sync",
                 retry_max_s: float = 60.0, retry_min_s: float = 1.0):
        super().__init__(inner)
        if mode not in ("sync", "async"):
            raise ConfigError(f"write_back mode must be sync or async, not {mode!r}")
        self.journal, self.remote, self.target, self.mode = journal, remote, target, mode
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._cond = threading.Condition()
        self._closed = False
        self._pending: dict[str, Entry] = {}  # id -> entry, pending state only
        self._owned: set[str] = set()  # ids a sync writer is posting itself: the retry thread keeps off them
        journal.clean()
        # an entry belongs to where it points (its target), whatever the remote was called in the process
        # that wrote it (a mount's "b", ndfs.remote(url)'s "neurodata"): those are resumed here too
        for entry in journal.entries():
            if entry.state != "pending" or entry.kind != "voxels":
                continue
            if entry.target != target:
                if entry.remote == remote:  # this remote's name now points elsewhere
                    entry.state, entry.last_error = "failed", f"written for {entry.target}, now {target}"
                    journal.save(entry)
                    log.error("outbox entry %s was written for another target; not posting it", entry.id)
                continue
            entry.next_try = 0.0
            self._pending[entry.id] = entry
        if self._pending:
            log.info("outbox: resuming %d pending write(s) for %s", len(self._pending), remote)
        self._thread = threading.Thread(target=self._run, name=f"ndfs-outbox-{remote}", daemon=True)
        self._thread.start()

    # ---- reads see pending writes ------------------------------------------
    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        while True:
            out = self._read_over_pending(ref, box, level)
            if out is not None:
                return out
            # an entry holding all of the box was posted (and removed) while we read it: it is at the
            # remote now, so read again there

    def _read_over_pending(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray | None:
        """The box with the pending entries over it laid on what the remote holds; None when one that held all
        of the box (so the remote was not asked) was posted meanwhile."""
        with self._cond:
            over = [e for e in self._pending.values()
                    if tuple(e.ref) == ref and e.level == level and e.box.intersect(box) is not None]
        whole = any(e.box.contains(box) for e in over)
        if whole:  # all of it is waiting here: no need to ask the remote
            out = np.zeros(box.shape, dtype=self.info(ref).dtype)
        else:
            out = self.inner.read(ref, box, level)
        if over:
            out = np.array(out)
            for entry in sorted(over, key=lambda e: e.id):
                try:
                    data = self.journal.load(entry)
                except BackendError:
                    with self._cond:
                        gone = entry.id not in self._pending
                    if gone or not self.journal.exists(entry):  # posted (and removed) while we were reading
                        with self._cond:
                            self._pending.pop(entry.id, None)  # by another process: nothing left to post
                            self._cond.notify_all()
                        if whole:
                            return None
                        continue
                    raise
                part = entry.box.intersect(box)
                out[part.slices(box.start)] = data[part.slices(entry.box.start)]
        return out

    # ---- writes ---------------------------------------------------------------
    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        entry = self.journal.put(self.remote, self.target, ref, level, box, array)
        with self._cond:
            self._pending[entry.id] = entry
            if self.mode == "sync":  # posted by this writer, so that a refusal reaches it
                self._owned.add(entry.id)
            self._cond.notify_all()
        self._changed(ref)  # reads now see the entry: the volume's version moves
        if self.mode == "async":
            return
        try:
            self._post_through(entry)
        finally:
            with self._cond:
                self._owned.discard(entry.id)
                self._cond.notify_all()

    def _writer_mutex(self, ref: Sequence[str]):
        """The volume's writer mutex, shared by every process using this outbox directory."""
        name = stamp.stamp_name(self.target, tuple(ref))
        locks = Path(self.journal.root) / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileVolumeLock(locks / name).writer()

    def _post_through(self, entry: Entry) -> None:
        """Post every older pending entry of the volume (any process's, under any remote name that points
        there), then this one; raise if this one fails."""
        with self._writer_mutex(entry.ref):
            todo = [e for e in self.journal.entries()
                    if e.kind == "voxels" and e.state == "pending" and e.target == self.target
                    and e.ref == entry.ref and e.id <= entry.id]
            for e in todo:
                with self._cond:
                    known = self._pending.setdefault(e.id, e)
                error = self._post(known)
                if error is None:
                    continue
                if e.id == entry.id and not _transient(error):
                    raise error
                if _transient(error):
                    raise BackendError(
                        f"post failed ({error}); the data is kept in the outbox as {entry.id} and "
                        "retried in the background (see `ndfs outbox`)") from error

    def _post(self, entry: Entry) -> NdfsError | None:
        """Post one entry (caller holds its volume's writer mutex). None on success or if it is gone."""
        # every poster holds the writer mutex, so a claim held here is only the entry's writer finishing
        # its file: wait for it rather than fail the post
        with self.journal.claim(entry, wait=True) as mine:
            if not mine:
                if not self.journal.exists(entry):
                    with self._cond:
                        self._pending.pop(entry.id, None)  # another process posted it
                        self._cond.notify_all()
                    return None
                return BackendError(f"outbox entry {entry.id} is being posted by another process")
            try:
                data = self.journal.load(entry)
                self.inner.write(tuple(entry.ref), entry.box, entry.level, data)
            except NdfsError as exc:
                self._failed(entry, exc)
                return exc
            self.journal.remove(entry)
            with self._cond:
                self._pending.pop(entry.id, None)
                self._cond.notify_all()
            if entry.attempts:
                log.info("outbox entry %s posted to %s after %d failed attempt(s)",
                         entry.id, self.remote, entry.attempts)
            return None

    def _failed(self, entry: Entry, exc: NdfsError) -> None:
        entry.attempts += 1
        entry.last_error = str(exc)
        if _transient(exc):
            delay = min(self.retry_max_s, self.retry_min_s * 2 ** (entry.attempts - 1))
            entry.next_try = time.time() + delay
            self.journal.save(entry)
            log.warning("post of %s to %s failed (%s); retry %d in %.0f s",
                        entry.id, self.remote, exc, entry.attempts, delay)
            return
        if self.mode == "sync" and entry.id in self._owned:
            self.journal.remove(entry)  # refused: the writer gets the errno, nothing is kept
        else:
            entry.state = "failed"
            self.journal.save(entry)
            log.error("%s refused outbox entry %s (%s); kept as failed, see `ndfs outbox`",
                      self.remote, entry.id, exc)
        with self._cond:
            self._pending.pop(entry.id, None)
            self._cond.notify_all()
        self._changed(tuple(entry.ref))  # reads no longer show it

    def _changed(self, ref: VolumeRef) -> None:
        self.bump_version(ref)

    # ---- background retries ---------------------------------------------------
    def _due(self) -> list[Entry]:
        """Under the condition: entries to post now, oldest first; a volume waits behind its oldest."""
        now = time.time()
        due, waiting = [], set()
        for e in sorted(self._pending.values(), key=lambda e: e.id):
            if tuple(e.ref) in waiting or e.next_try > now or e.id in self._owned:
                waiting.add(tuple(e.ref))
            else:
                due.append(e)
        return due

    def _run(self) -> None:
        while True:
            try:
                with self._cond:
                    if self._closed:
                        return
                    due = self._due()
                    if not due:
                        now = time.time()
                        wait = min((e.next_try for e in self._pending.values() if e.id not in self._owned),
                                   default=now + 3600) - now
                        self._cond.wait(timeout=max(0.05, min(wait, 60.0)))
                        continue
                self._post_due(due)
            except Exception:  # the thread must outlive any failure: entries stay and are tried again
                log.exception("outbox thread of %s: unexpected failure; retrying in %.0f s", self.remote,
                              self.retry_min_s)
                with self._cond:
                    self._cond.wait(timeout=self.retry_min_s)

    def _post_due(self, due: list[Entry]) -> None:
        blocked: set[tuple] = set()  # volumes with an older entry still failing: keep their order
        for entry in due:
            if self._closed:
                return
            key = tuple(entry.ref)
            if key in blocked:
                continue
            with self._writer_mutex(entry.ref):
                with self._cond:
                    if entry.id not in self._pending or entry.id in self._owned:
                        continue
                error = self._post(entry)
            if error is not None and _transient(error):
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


__all__ = ["JournaledStore", "TRANSIENT"]
