"""RAMON objects of the local store: one SQLite database per annotation channel.

Where: ``STORE/<project>/<channel>/ramon.sqlite``, inside the channel's
directory beside its zarr levels, so the objects move, copy and disappear
with their labels (``delete_volume`` and ``create_volume(overwrite=True)``
take them along). The database is created by the first write (``ramon_put``,
``reserve_ids``, or voxels written to the channel, whose largest label moves
the id counter); a channel without one has no objects.

Schema (version 1)::

    objects(id INTEGER PRIMARY KEY, type, status, confidence, author, doc)   doc = ndfs file-form JSON
    kv(id, key, value)         one row per kv pair, indexed by (key, value) for queries
    members(id, member)        a neuron's segments, for "does this neuron touch the box"
    meta(key PRIMARY KEY, value)   schema version and next_id

Ids: ``next_id`` only grows. Id 0 on a put takes ``next_id``; an explicit id
at or above it, or a label written into the channel's voxels (a plain cutout
too), moves it past that id; ``reserve_ids`` hands out a block from it. So no
id is ever handed out twice, even after deletes, nor one that labels voxels.
Ids are < 2**63 (SQLite integers are signed 64-bit).

:class:`LocalRamon` is the mixin that gives :class:`ndfs.stores.local.LocalBackend`
the annotation hooks of the backend contract on top of :class:`RamonStore`.
Voxel work (bounding boxes, erasing on delete, painting attached voxels) goes
through the backend's own read/write (:mod:`ndfs.ramon.labels`).

Thread-safe: one connection per database, guarded by a lock; several
processes may share a database (SQLite locking, WAL journal, busy timeout).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from ndfs.core.errors import BackendError, NotFound
from ndfs.core.geometry import Box
from ndfs.ramon import Filters, RamonObject, from_dict, to_dict
from ndfs.ramon.labels import erase, labels_in, paint_attached, scan_bbox

DB_NAME = "ramon.sqlite"
SCHEMA_VERSION = 1
MAX_ID = 2**63 - 1  # SQLite integers are signed 64-bit
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (id INTEGER PRIMARY KEY, type TEXT NOT NULL, status INTEGER NOT NULL,
                                    confidence REAL NOT NULL, author TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS objects_type ON objects (type, id);
CREATE TABLE IF NOT EXISTS kv (id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (id, key));
CREATE INDEX IF NOT EXISTS kv_key_value ON kv (key, value);
CREATE TABLE IF NOT EXISTS members (id INTEGER NOT NULL, member INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS members_member ON members (member);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class RamonStore:
    """The RAMON objects of one channel in ``path`` (a SQLite file, created on the first write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seen_next = 0  # next_id as last seen by note_label (it only grows)
        self._opened: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"RamonStore({str(self.path)!r})"

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """The connection (caller holds the lock); None when there is no database and create is False.

        A connection whose file was deleted or replaced (the channel was deleted or
        recreated, maybe by another process) is closed and opened afresh.
        """
        if self._conn is not None and self._file_id() != self._opened:
            self._conn.close()
            self._conn = None
        if self._conn is None:
            if not create and not self.path.exists():
                return None
            try:
                conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('next_id', 1)")
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
            except sqlite3.Error as exc:
                raise BackendError(f"cannot open the RAMON database {self.path}: {exc}") from exc
            if version != SCHEMA_VERSION:
                conn.close()
                raise BackendError(f"{self.path} has RAMON schema {version}; this ndfs reads {SCHEMA_VERSION}")
            self._conn, self._opened = conn, self._file_id()
        return self._conn

    def _run(self, create: bool, fn, empty=None):
        """Run fn(conn) in one transaction under the lock; ``empty`` when there is no database."""
        with self._lock:
            conn = self._connect(create)
            if conn is None:
                return empty
            try:
                conn.execute("BEGIN IMMEDIATE" if create else "BEGIN")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise BackendError(f"RAMON database {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- queries ---------------------------------------------------------
    def ids(self, filters: Filters, within: Iterable[int] | None = None) -> list[int]:
        """Ids matching the filters, ascending; ``within`` keeps only those ids (a box's labels)."""
        sql, args = ["SELECT o.id FROM objects o"], []
        where = []
        for i, (k, v) in enumerate(filters.kv):
            sql.append(f"JOIN kv k{i} ON k{i}.id = o.id AND k{i}.key = ? AND k{i}.value = ?")
            args += [k, v]
        if filters.type is not None:
            where.append("o.type = ?")
            args.append(filters.type)
        if filters.status is not None:
            where.append("o.status = ?")
            args.append(filters.status)
        if filters.confidence is not None:
            where.append(f"o.confidence {'>' if filters.confidence[0] == 'gt' else '<'} ?")
            args.append(filters.confidence[1])
        if within is not None:
            where.append("o.id IN (SELECT id FROM temp.within)")
        if where:
            sql.append("WHERE " + " AND ".join(where))
        sql.append("ORDER BY o.id")
        if filters.limit is not None:
            sql.append(f"LIMIT {int(filters.limit)}")

        def query(conn):
            if within is not None:
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS within (id INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM temp.within")
                conn.executemany("INSERT OR IGNORE INTO temp.within VALUES (?)", ((int(i),) for i in within))
            return [row[0] for row in conn.execute(" ".join(sql), args)]

        return self._run(False, query, [])

    def neurons_of(self, segments: Iterable[int]) -> list[int]:
        """Neurons listing any of these segments."""
        segs = [int(s) for s in segments]

        def query(conn):
            out = set()
            for i in range(0, len(segs), 500):
                part = segs[i:i + 500]
                out.update(r[0] for r in conn.execute(
                    f"SELECT id FROM members WHERE member IN ({','.join('?' * len(part))})", part))
            return sorted(out)

        return self._run(False, query, []) if segs else []

    def get(self, ids: list[int]) -> list[RamonObject]:
        """The objects, in the order asked; NotFound naming the first missing id."""
        def query(conn):
            found = {}
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                for oid, doc in conn.execute(
                        f"SELECT id, doc FROM objects WHERE id IN ({','.join('?' * len(part))})", part):
                    found[oid] = doc
            return found

        found = self._run(False, query, {})
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no RAMON object {missing[0]}" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1
                                                              else ""))
        try:
            return [from_dict(json.loads(found[i])) for i in ids]
        except ValueError as exc:
            raise BackendError(f"RAMON database {self.path} holds an unreadable object: {exc}") from exc

    # ---- changes ---------------------------------------------------------
    def put(self, objs: list[RamonObject]) -> list[int]:
        """Store validated objects atomically (replacing same ids); id 0 takes the next id. Returns ids."""
        def store(conn):
            nxt = conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0]
            out = []
            for obj in objs:
                oid = obj.id
                if oid == 0:
                    oid = nxt
                nxt = max(nxt, oid + 1)
                doc = to_dict(obj)
                doc["id"] = oid
                doc.pop("bbox", None)
                conn.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                             (oid, obj.TYPE, obj.status, obj.confidence, obj.author, json.dumps(doc)))
                conn.execute("DELETE FROM kv WHERE id = ?", (oid,))
                conn.executemany("INSERT INTO kv VALUES (?, ?, ?)", ((oid, k, v) for k, v in obj.kvpairs.items()))
                conn.execute("DELETE FROM members WHERE id = ?", (oid,))
                if obj.TYPE == "neuron":
                    conn.executemany("INSERT INTO members VALUES (?, ?)", ((oid, s) for s in obj.segments))
                out.append(oid)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (nxt,))
            return out

        return self._run(True, store)

    def delete(self, ids: list[int]) -> None:
        """Delete the objects; NotFound (nothing deleted) if one is missing."""
        def remove(conn):
            for i in ids:
                if conn.execute("SELECT 1 FROM objects WHERE id = ?", (i,)).fetchone() is None:
                    raise NotFound(f"no RAMON object {i}")
            for table in ("objects", "kv", "members"):
                conn.executemany(f"DELETE FROM {table} WHERE id = ?", ((i,) for i in ids))

        if self._run(False, lambda conn: True, None) is None:
            raise NotFound(f"no RAMON object {ids[0]}")
        self._run(True, remove)

    def note_label(self, label: int) -> None:
        """Move ``next_id`` past a label found in voxels written to the channel (plain cutouts too).

        So ``reserve`` never hands out an id that already labels voxels. Labels
        past the id range (2**63 and up) cannot be tracked and are left alone.
        """
        label = int(label)
        if label <= 0 or label >= MAX_ID or label < self._seen_next:  # a stale next_id is never too high
            return

        def bump(conn):
            nxt = conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0]
            if label >= nxt:
                nxt = label + 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (nxt,))
            return nxt

        self._seen_next = self._run(True, bump)

    def reserve(self, n: int) -> int:
        """The first of ``n`` fresh consecutive ids, never handed out again."""
        def take(conn):
            first = conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0]
            conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (first + n,))
            return first

        return self._run(True, take)


class LocalRamon:
    """Annotation hooks for a backend with ``_dir(ref)`` (the local store): RAMON in SQLite per channel."""

    def _ramon_store(self, ref) -> RamonStore:
        lock = self.__dict__.setdefault("_ramon_lock", threading.Lock())
        with lock:
            stores = self.__dict__.setdefault("_ramon_stores", {})
            store = stores.get(ref)
            if store is None:
                store = stores[ref] = RamonStore(self._dir(ref) / DB_NAME)
            return store

    def _ramon_channel_lock(self, ref) -> threading.Lock:
        lock = self.__dict__.setdefault("_ramon_lock", threading.Lock())
        with lock:
            return self.__dict__.setdefault("_ramon_paint_locks", {}).setdefault(ref, threading.Lock())

    def _ramon_ids(self, ref, filters: Filters, box: Box | None, level: int) -> list[int]:
        store = self._ramon_store(ref)
        if box is None:
            return store.ids(filters)
        labels = labels_in(self, ref, box, level)
        return store.ids(filters, within=labels | set(store.neurons_of(labels)))

    def _ramon_get(self, ref, ids: list[int]) -> list[RamonObject]:
        return self._ramon_store(ref).get(ids)

    def _ramon_put(self, ref, objs: list[RamonObject]) -> list[int]:
        for obj in objs:
            if obj.voxels is not None:  # check the voxels fit before anything is stored
                self.info(ref).check_box(obj.voxels.box, obj.voxels.level)
        try:
            ids = self._ramon_store(ref).put(objs)
            paint_attached(self, ref, ids, objs, self._ramon_channel_lock(ref))
        finally:  # other processes' caches and mounts hear of the change
            self._bump_stamp(ref)
        return ids

    def _ramon_delete(self, ref, ids: list[int]) -> None:
        store = self._ramon_store(ref)
        own = [o.id for o in store.get(ids) if o.TYPE != "neuron"]
        try:
            store.delete(ids)
            with self._ramon_channel_lock(ref):
                erase(self, ref, own)
        finally:
            self._bump_stamp(ref)

    def _reserve_ids(self, ref, n: int) -> int:
        return self._ramon_store(ref).reserve(n)

    def _note_labels(self, ref, array) -> None:
        """After voxels are written to an annotation channel: keep the id counter past their labels."""
        if array.size and self.info(ref).kind == "annotation":
            self._ramon_store(ref).note_label(int(array.max()))

    def _ramon_bbox(self, ref, id: int, level: int) -> Box | None:
        (obj,) = self._ramon_store(ref).get([id])
        ids = obj.segments if obj.TYPE == "neuron" else [id]
        return scan_bbox(self, ref, ids, level)

    def close(self) -> None:
        """Close every open RAMON database of this backend, then the backend."""
        for store in list(self.__dict__.get("_ramon_stores", {}).values()):
            store.close()
        super().close()
