"""How fresh a cached volume is: the part of the chunk cache that hears of changes made outside ndfs.

Writes made through ndfs are seen at once (write stamps, :mod:`ndfs.core.stamp`). For writes made by
other clients of a service, each volume of a cache with a ``max_age_s`` follows one of three policies,
chosen by what the store below answers to :meth:`~ndfs.stores.base.Backend.validate`:

* **checked** (DVID): the store has a cheap change signal. At most every ``max_age_s`` the cache asks
  for the volume's token (one small request, shared by the volumes of a DVID repo); when it moved,
  the volume's chunks are dropped from memory and from the shared disk tier, its info is forgotten and
  the shared stamp moves, so other processes drop what they hold in memory too. The check after a
  change drops the chunks once more: a service may count a write before it has applied it (DVID draws
  the mutation id first), so chunks read in between can be older than the token says.
* **final** (a versioned instance of a locked DVID node): nothing can change it; cached for good,
  never asked again.
* **max-age** (the BOSS, NeuroData, the local store for zarr written by hand): no change signal. Time
  is cut into clock-aligned windows of ``max_age_s`` and nothing cached in one window is served in the
  next (memory is dropped, disk entries expire with their window, info is fetched again).

Without ``max_age_s`` nothing is checked and nothing expires. The disk tier, shared by processes, keeps
per checked volume the token its entries were stored under (a record tagged like the volume's chunks),
so a process that starts later, or sees a change another process has already handled, drops disk
entries only when they belong to another state. The token is part of the volume's version token
(:meth:`CachedBackend.version`), which the mount's files and the kernel's page cache are keyed on.

Thread-safe: records are guarded by the cache's lock; one check per volume runs at a time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from ndfs.core.errors import NdfsError, NotFound
from ndfs.stores.base import VolumeRef

log = logging.getLogger("ndfs.cache")


@dataclass
class Check:
    """What one cache knows of one volume's state on the service."""

    #: the store answers validate() for this volume (else: the max-age policy)
    signal: bool
    token: tuple | None = None
    #: when the service gave the answer the token comes from (time.time())
    at: float | None = None
    #: when the service must be asked again (time.monotonic())
    due: float = 0.0
    final: bool = False
    #: changes this process saw
    changes: int = 0
    #: changed at the last check: drop what was read since, once more, at the next one
    settle: bool = False
    #: why the last check failed (what is held is served meanwhile); None after a good one
    error: str | None = None

    def is_due(self, now: float) -> bool:
        return self.signal and not self.final and now >= self.due


class Freshness:
    """Mixed into :class:`~ndfs.cache.backend.CachedBackend`: per-volume checks and windows (see the module
    doc). Uses the cache's ``inner``, ``max_age_s``, ``_lock``, ``_disk``, ``_forget_memory``, ``_signal``,
    ``_entries_lock``, ``_tag``, ``_seen`` and ``generation``."""

    def _init_freshness(self) -> None:
        self._checks: dict[VolumeRef, Check] = {}
        self._check_locks: dict[VolumeRef, threading.Lock] = {}
        #: the monotonic clock checks are timed with (tests step it by hand)
        self._clock = time.monotonic

    # ---- the parts of the version token -------------------------------------------
    def _window(self, ref: VolumeRef | None = None) -> int | None:
        """The max-age window now (clock-aligned, the same in every process); None without ``max_age_s``
        and for volumes that are checked or final."""
        if self.max_age_s is None:
            return None
        if ref is not None:
            check = self._checks.get(ref)
            if check is not None and check.signal:
                return None
        return int(time.time() // self.max_age_s)

    def _remote(self, ref: VolumeRef) -> tuple | None:
        """The volume's token on the service, asked at most every ``max_age_s`` (never for final
        volumes); None without ``max_age_s`` or when the store offers no change signal. NotFound when
        the volume is gone (what was cached of it is dropped)."""
        if self.max_age_s is None:
            return None
        with self._lock:
            check = self._checks.get(ref)
            if check is not None and not check.is_due(self._clock()):
                return check.token
            lock = self._check_locks.setdefault(ref, threading.Lock())
        with lock:
            with self._lock:
                check = self._checks.get(ref)
            if check is not None and not check.is_due(self._clock()):
                return check.token
            return self._revalidate(ref, check)

    def _revalidate(self, ref: VolumeRef, check: Check | None) -> tuple | None:
        try:
            answer = self.inner.validate(ref, self.max_age_s)
        except NotFound:
            with self._lock:
                self._checks.pop(ref, None)
            self.forget_volume(ref)
            raise
        except NdfsError as exc:
            if check is None:
                raise
            with self._lock:  # serve what is held; ask again after another max_age_s
                first = check.error is None
                check.error, check.due = str(exc), self._clock() + self.max_age_s
            log.log(logging.WARNING if first else logging.DEBUG,
                    "cannot check %s for changes, serving what is cached: %s", "/".join(ref), exc)
            return check.token
        if answer is None:
            with self._lock:
                self._checks[ref] = Check(signal=False)
            return None
        changed = check is not None and check.token != answer.token
        settle = check is not None and check.settle and not changed
        if changed or settle or check is None:
            self._drop_state(ref, answer.token, changed=changed, always=settle)
        age = max(0.0, time.time() - answer.at)
        new = Check(True, answer.token, answer.at, self._clock() - age + self.max_age_s, answer.final,
                    changes=(check.changes if check is not None else 0) + changed, settle=changed)
        with self._lock:
            self._checks[ref] = new
            if changed:
                self._counts["changed_remotely"] += 1
        if changed:
            log.info("%s changed on the service: its cached chunks are dropped", "/".join(ref))
        return answer.token

    def _drop_state(self, ref: VolumeRef, token: tuple, *, changed: bool, always: bool) -> None:
        """Drop what is cached of a volume that changed (``changed``), or whose disk entries may belong to
        another state than ``token`` (a first look, ``always`` after a change). The disk tier keeps the
        token its entries were stored under: when it is already ``token``, another process has dropped
        them (and stamped the change) and they stay."""
        record = json.dumps(["state", self.namespace, list(ref)], separators=(",", ":"))
        value = json.dumps(list(token), separators=(",", ":"), default=str)
        with self._entries_lock(ref, exclusive=True):  # a fetch from before is stored before this, or never
            disk = self._disk
            held = None if disk is None else self._disk_op("get", lambda: disk.get(record))
            if disk is not None and (always or held != value):
                self._signal(ref)
                try:
                    disk.evict(self._tag(ref))
                    disk.set(record, value, tag=self._tag(ref))
                except Exception as exc:  # never serve what we could not forget
                    log.error("disk cache eviction failed, disabling the disk tier here: %s", exc)
                    self._disk = None
            elif disk is None and changed:
                self._signal(ref)
            if changed or always or disk is not None and held != value:
                with self._lock:
                    self._forget_memory(ref, None)
                self.forget_info(ref)
        gen = self.generation(ref)
        with self._lock:  # what is held is current now: the next look is no change (see _sync)
            self._seen[ref] = (gen, None, token)

    # ---- what ndfs cache info --mount shows ---------------------------------------------
    def freshness_stats(self) -> dict:
        """Per volume looked at: its policy, max age, when it was last validated (time.time()), changes."""
        with self._lock:
            refs = set(self._seen) | set(self._checks)
            checks = dict(self._checks)
        out = {}
        for ref in sorted(refs):
            check = checks.get(ref)
            entry = {"policy": "kept", "max_age_s": None, "validated": None, "changes": 0}
            if self.max_age_s is not None:
                entry["max_age_s"] = self.max_age_s
                if check is not None and check.signal:
                    entry.update(policy="final" if check.final else "checked", validated=check.at,
                                 changes=check.changes)
                    if check.error is not None:
                        entry["error"] = check.error
                else:
                    entry.update(policy="max-age", validated=self._window(ref) * self.max_age_s)
            out["/".join(ref)] = entry
        return out
