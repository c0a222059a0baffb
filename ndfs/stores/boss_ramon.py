"""Limited RAMON on the BOSS: ids and boxes from the annotation services, objects in the metadata service.

:class:`BossRamon` gives :class:`ndfs.stores.boss.BossBackend` the annotation
hooks of the backend contract for annotation channels (``specs/boss.md`` 2 and 5).
The BOSS has no RAMON service, so:

* **Objects** are kept in the channel's metadata (``/v1/meta/{c}/{e}/{ch}``),
  one key ``ramon/<id>`` per object, the value its ndfs JSON in compact form
  (fields at their default left out). The metadata service takes values in
  the URL's query string, so an object whose encoded value is longer than
  ``max_meta_bytes`` (default 8 KiB; e.g. a neuron with a thousand segments)
  is refused with TooLarge (EFBIG) before anything is sent.
* **Ids with voxels but no metadata** read as a :class:`~ndfs.ramon.RamonGeneric`
  of that id with every field at its default (status 0, confidence 0, no kv
  pairs), and filters treat them so.
* **ramon_ids** is the union of the ``ids`` endpoint over the box (the whole
  level-0 extent without one: the service scans every cuboid, one request
  per 512x512x16 cuboid, run in parallel; on a big channel this is slow) and,
  without a box, the ``ramon/`` metadata keys (one request). Filters on
  metadata read each candidate's key (one request each); with a box, finding
  the neurons that touch it reads every object.
* **reserve_ids** (and a put of id 0) is ``GET /v1/reserve/…/{n}``, the
  channel's counter; a block that overlaps ids already holding metadata is
  dropped and the counter moved past the highest of them. Ids labelled in
  the voxels without metadata (or metadata added by another client at the
  same moment) are not seen, so they can be handed out again.
* **ramon_bbox** is ``GET /v1/boundingbox/…/{res}/{id}/?type=tight`` (a neuron:
  the union of its segments'); ranges are half-open, as cutout ranges.
* **Delete** removes the metadata key and zeroes the object's voxels inside
  its bounding box (``to_black`` and posts, as every BOSS write).

Thread-safe (requests run on the backend's pool and session).
"""

from __future__ import annotations

import json
import threading
from urllib.parse import urlencode

import numpy as np

from ndfs.core.errors import BackendError, BadInput, BadRegion, InvalidAnnotation, NdfsError, NotFound, TooLarge
from ndfs.formats import safe
from ndfs.core.geometry import Box

#: metadata keys of RAMON objects: this prefix, then the decimal id
META_PREFIX = "ramon/"
_STATE_LOCK = threading.Lock()


def compact_json(obj) -> str:
    """The object's ndfs JSON without the fields at their defaults (``id`` and ``type`` always), compact. Pure."""
    from ndfs.ramon import to_dict

    clean = obj.copy()
    clean.bbox, clean.voxels = None, None
    full, blank = to_dict(clean), to_dict(type(clean)())
    doc = {k: v for k, v in full.items() if k in ("id", "type") or v != blank.get(k)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def meta_ids(keys, max_id: int) -> list[int]:
    """The ids among metadata keys ``ramon/<decimal id>``, ascending. Pure."""
    out = []
    for k in keys:
        tail = str(k)[len(META_PREFIX):] if str(k).startswith(META_PREFIX) else ""
        if tail.isascii() and tail.isdigit() and tail == str(int(tail)) and 0 < int(tail) <= max_id:
            out.append(int(tail))
    return sorted(out)


def _missing_key(exc: NdfsError) -> bool:
    """Is this the metadata service's 400/1003 for a key it does not hold?"""
    return isinstance(exc, BadRegion) and "(code 1003)" in str(exc)


class BossRamon:
    """Annotation hooks for :class:`~ndfs.stores.boss.BossBackend` (see the module doc)."""

    #: longest URL-encoded metadata value this driver sends (the value travels in the query string)
    max_meta_bytes: int = 8192

    def _meta_path(self, ref) -> str:
        c, e, ch = ref
        return f"/meta/{c}/{e}/{ch}/"

    def _channel_lock(self, ref) -> threading.Lock:
        with _STATE_LOCK:
            locks = self.__dict__.setdefault("_ramon_paint", {})
            return locks.setdefault(tuple(ref), threading.Lock())

    # ---- the metadata service --------------------------------------------------------
    def _meta_keys(self, ref) -> list[str]:
        def decode(resp):
            keys = safe.reply_json(resp.content).get("keys")
            if not isinstance(keys, list):
                raise ValueError("metadata listing without a list of keys")
            return [str(k) for k in keys]

        return self._client.request("GET", self._meta_path(ref), decode=decode)

    def _meta_get(self, ref, oid: int):
        """The stored object of an id, or None when the channel's metadata has no such key."""
        from ndfs.ramon import from_dict

        def decode(resp):
            doc = safe.reply_json(resp.content)
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
                raise ValueError("metadata answer without a string value")
            return doc["value"]

        try:
            value = self._client.request("GET", self._meta_path(ref), params={"key": f"{META_PREFIX}{oid}"},
                                         decode=decode)
        except BadRegion as exc:
            if _missing_key(exc):
                return None
            raise
        try:
            obj = from_dict(safe.json_loads(value, "the metadata value"))
        except (ValueError, InvalidAnnotation, BadInput, TooLarge) as exc:
            raise BackendError(f"BOSS metadata {META_PREFIX}{oid} of {'/'.join(ref)} is no usable RAMON "
                               f"object: {exc}") from None
        if obj.id != oid:
            raise BackendError(f"BOSS metadata {META_PREFIX}{oid} of {'/'.join(ref)} holds object {obj.id}")
        return obj

    def _meta_set(self, ref, oid: int, value: str) -> None:
        """Update the key, or create it when the service does not hold it yet."""
        params = {"key": f"{META_PREFIX}{oid}", "value": value}
        try:
            self._client.request("PUT", self._meta_path(ref), params=params, expect=200)
        except BadRegion as exc:
            if not _missing_key(exc):
                raise
            self._client.request("POST", self._meta_path(ref), params=params, expect=201)

    def _lookup(self, ref, ids: list[int]) -> dict[int, tuple[object, bool]]:
        """id -> (object, has metadata) for the ids that exist (metadata, or voxels at level 0)."""
        from ndfs.ramon import RamonGeneric

        found: dict[int, tuple[object, bool]] = {}
        lock = threading.Lock()

        def one(oid: int) -> None:
            obj = self._meta_get(ref, oid)
            if obj is None:
                if self._bbox(ref, oid, 0, "loose") is None:
                    return
                entry = (RamonGeneric(id=oid), False)
            else:
                entry = (obj, True)
            with lock:
                found[oid] = entry

        if ids:
            self._run([lambda i=i: one(i) for i in ids])
        return found

    # ---- the annotation services -------------------------------------------------------
    def _bbox(self, ref, oid: int, level: int, kind: str = "tight") -> Box | None:
        c, e, ch = ref
        res = int(self.info(ref).extra["boss"]["base_resolution"]) + level

        def decode(resp):
            doc = safe.reply_json(resp.content)
            (x0, x1), (y0, y1), (z0, z1) = (doc[f"{a}_range"] for a in "xyz")
            box = Box((int(z0), int(y0), int(x0)), (int(z1), int(y1), int(x1)))
            if box.empty:
                raise ValueError(f"empty bounding box {doc}")
            return box

        try:
            return self._client.request("GET", f"/boundingbox/{c}/{e}/{ch}/{res}/{oid}/", params={"type": kind},
                                        decode=decode)
        except NotFound as exc:
            if "(code 4004)" in str(exc):  # the id has no voxels
                return None
            raise

    def _voxel_ids(self, ref, box: Box, level: int) -> set[int]:
        from ndfs.stores.boss_grid import cuboid_pieces

        found: set[int] = set()
        lock = threading.Lock()

        def decode(resp):
            ids = safe.reply_json(resp.content).get("ids")
            if not isinstance(ids, list):
                raise ValueError("ids answer without a list of ids")
            return {int(i) for i in ids}

        def fetch(piece: Box) -> None:
            got = self._client.request("GET", "/ids/" + self._cutout_path(ref, level, piece), decode=decode)
            with lock:
                found.update(got)

        self._run([lambda p=p: fetch(p) for p in cuboid_pieces(box, 8, self.max_request_bytes)])
        found.discard(0)
        return found

    # ---- the hooks of the backend contract ------------------------------------------------
    def _ramon_ids(self, ref, filters, box: Box | None, level: int) -> list[int]:
        from ndfs.ramon import RamonGeneric

        with_meta = meta_ids(self._meta_keys(ref), self.ramon_max_id)
        objs: dict = {}
        if box is None:
            ids = sorted(self._voxel_ids(ref, self.info(ref).level(0).box, 0) | set(with_meta))
        else:
            labels = self._voxel_ids(ref, box, level)
            inside = set(labels)
            if filters.type in (None, "neuron"):  # neurons touch the box through their segments
                objs = {i: o for i, (o, _) in self._lookup(ref, with_meta).items()}
                inside |= {i for i, o in objs.items() if o.TYPE == "neuron" and labels.intersection(o.segments)}
            ids = sorted(i for i in inside if i <= self.ramon_max_id)
        if filters.type is not None or filters.status is not None or filters.confidence is not None or filters.kv:
            meta = set(with_meta)
            todo = [i for i in ids if i in meta and i not in objs]
            objs.update({i: o for i, (o, _) in self._lookup(ref, todo).items()})
            ids = [i for i in ids if filters.matches(objs.get(i) or RamonGeneric(id=i))]
        return ids if filters.limit is None else ids[:filters.limit]

    def _ramon_get(self, ref, ids: list[int]) -> list:
        found = self._lookup(ref, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise NotFound(f"no RAMON object {missing[0]} in {'/'.join(ref)}: no metadata, no voxels{more}")
        return [found[i][0] for i in ids]

    def _ramon_put(self, ref, objs: list) -> list[int]:
        from ndfs.ramon.labels import paint_attached

        info = self.info(ref)
        values = {}
        for k, obj in enumerate(objs):  # every check before anything is sent
            if obj.voxels is not None:
                info.check_box(obj.voxels.box, obj.voxels.level)
            value = compact_json(obj if obj.id else _with_id(obj, self.ramon_max_id))
            size = len(urlencode({"value": value})) - len("value=")
            if size > self.max_meta_bytes:
                raise TooLarge(f"RAMON object {obj.id or '(new)'} needs {size} bytes of BOSS metadata, more than "
                               f"max_meta_bytes={self.max_meta_bytes} (it travels in the URL)")
            values[k] = value
        new = [k for k, o in enumerate(objs) if not o.id]
        if new:
            first = self._reserve_ids(ref, len(new))
            for n, k in enumerate(new):
                objs[k].id = first + n
                values[k] = compact_json(objs[k])
        self._run([lambda k=k: self._meta_set(ref, objs[k].id, values[k]) for k in range(len(objs))])
        ids = [o.id for o in objs]
        paint_attached(self, ref, ids, objs, self._channel_lock(ref))
        return ids

    def _ramon_delete(self, ref, ids: list[int]) -> None:
        found = self._lookup(ref, ids)
        missing = [i for i in ids if i not in found]
        if missing:  # nothing deleted
            raise NotFound(f"no RAMON object {missing[0]} in {'/'.join(ref)}")
        keyed = [i for i in ids if found[i][1]]
        self._run([lambda i=i: self._client.request("DELETE", self._meta_path(ref), expect=204,
                                                    params={"key": f"{META_PREFIX}{i}"}) for i in keyed])
        with self._channel_lock(ref):
            for i in ids:
                if found[i][0].TYPE != "neuron":
                    self._erase(ref, i)

    def _reserve_block(self, ref, n: int) -> int:
        c, e, ch = ref

        def decode(resp):
            doc = safe.reply_json(resp.content)
            start = int(doc["start_id"])
            if int(doc.get("count", n)) != n or start < 1:
                raise ValueError(f"reserve gave {doc} for {n} ids")
            return start

        return self._client.request("GET", f"/reserve/{c}/{e}/{ch}/{n}", decode=decode, retry=False)

    def _reserve_ids(self, ref, n: int) -> int:
        """n consecutive ids from the channel's counter, moved past the ids that already have metadata."""
        taken = meta_ids(self._meta_keys(ref), self.ramon_max_id)
        first = self._reserve_block(ref, n)
        if not taken or first > taken[-1] or not any(first <= i < first + n for i in taken):
            return first
        skip = taken[-1] - (first + n) + 1  # ids up to the highest one in use are spent, then a clean block
        while skip > 0:
            self._reserve_block(ref, min(skip, 2**20))
            skip -= min(skip, 2**20)
        first = self._reserve_block(ref, n)
        if first <= taken[-1]:
            raise BackendError(f"the BOSS reserve counter of {'/'.join(ref)} went back to {first}")
        return first

    def _ramon_bbox(self, ref, id: int, level: int) -> Box | None:
        obj = self._meta_get(ref, id)
        labels = obj.segments if obj is not None and obj.TYPE == "neuron" else [id]
        boxes = [b for b in (self._bbox(ref, label, level) for label in labels) if b is not None]
        if obj is None and not boxes:
            raise NotFound(f"no RAMON object {id} in {'/'.join(ref)}: no metadata, no voxels")
        if not boxes:
            return None
        return Box(tuple(min(b.start[a] for b in boxes) for a in range(3)),
                   tuple(max(b.stop[a] for b in boxes) for a in range(3)))

    def _erase(self, ref, label: int) -> None:
        """Zero a label's level-0 voxels inside its bounding box, one cuboid slab at a time."""
        box = self._bbox(ref, label, 0)
        if box is None:
            return
        depth = self.info(ref).level(0).chunk_shape[0]
        value = np.uint64(label)
        for z in range(box.start[0] - box.start[0] % depth, box.stop[0], depth):
            slab = Box((max(z, box.start[0]),) + box.start[1:], (min(z + depth, box.stop[0]),) + box.stop[1:])
            old = self.read(ref, slab, 0)
            hit = old == value
            if hit.any():
                self.write(ref, slab, 0, np.where(hit, np.uint64(0), old))


def _with_id(obj, max_id: int):
    """A copy holding the largest id, to size the metadata value of an object before its id is reserved."""
    sized = obj.copy()
    sized.id = max_id
    return sized


__all__ = ["BossRamon", "META_PREFIX", "compact_json", "meta_ids"]
