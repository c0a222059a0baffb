"""RAMON on DVID: objects as keys of a key-value instance beside the labels, voxels in the labels.

:class:`DvidRamon` gives :class:`ndfs.stores.dvid.DvidBackend` the annotation
hooks of the backend contract for its label instances (``labelblk`` and
``labelmap``, the annotation channels):

* **Metadata**: each object is one key of the key-value instance
  ``<instance>_ramon`` in the same repo (e.g. ``segmentation_ramon``), the key
  its decimal id and the value its ndfs file form (``obj.to_json()``). The
  instance is made by the first put (``POST /api/repo/{uuid}/instance``); it
  is an ordinary key-value instance, so a mount lists it beside the labels as
  a folder of ``<id>`` files. Keys that are not decimal ids are ignored.
* **Ids**: ``ramon_ids`` lists the keys (``GET …/keys``, one request, no
  object read). Filters on metadata (type, status, confidence, kv pairs) read
  the objects, 500 a request through ``keyrangevalues`` (one GET per key on
  servers without it), so their cost grows with the channel's object count. A
  box keeps ids labelled inside it (its voxels are read) and neurons listing
  one of those, which again reads every object.
* **Reserve**: a labelmap hands out ids with ``POST …/nextlabel/{n}`` (DVID's
  own counter, which also knows the labels written without an object); an
  explicit id on a put raises it with ``POST …/maxlabel/{id}``. A labelblk
  (or a DVID without those endpoints) has no counter, so the next id lives
  in the key ``ndfs_next_id`` of the key-value instance, past every stored
  id, read and rewritten under a lock of this process only: two processes
  reserving at the same moment can be handed the same ids.
* **Bounding box**: a labelmap's ``sparsevol-size/{id}`` gives the blocks
  holding the label; only that box is read to make it tight (scaled for lower
  levels). Without it (labelblk, unindexed labels) the whole level is scanned
  (:func:`ndfs.ramon.labels.scan_bbox`).
* **Voxels**: attached voxels are painted into the labels (read-modify-write
  of whole blocks, as every DVID write); a delete removes the keys first, then
  zeroes the object's voxels inside its sparsevol-size box (or everywhere on
  a labelblk).

A locked (committed) node is read-only: put, delete and reserve raise
ReadOnly (EROFS) before anything is sent. Thread-safe.
"""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import numpy as np

from ndfs.core.errors import BackendError, BadInput, BadRegion, InvalidAnnotation, NotFound, ReadOnly, TooLarge
from ndfs.formats import safe
from ndfs.core.geometry import Box

#: the key-value instance holding a label instance's RAMON objects is named <instance> + this
RAMON_SUFFIX = "_ramon"
#: the id counter of a labelblk's objects (not a decimal id, so never listed as an object)
COUNTER_KEY = "ndfs_next_id"
#: keys read per keyrangevalues request
RANGE_BATCH = 500
_STATE_LOCK = threading.Lock()


def object_ids(keys, max_id: int) -> list[int]:
    """The ids among key names: canonical decimals from 1 to max_id, ascending. Pure."""
    out = []
    for k in keys:
        k = str(k)
        if k.isascii() and k.isdigit() and k == str(int(k)) and 0 < int(k) <= max_id:
            out.append(int(k))
    return sorted(out)


def _parse(value, key: str, where: str):
    """A stored object (JSON text or already-parsed JSON); BackendError when it is not a usable one."""
    from ndfs.ramon import from_dict

    try:
        doc = safe.json_loads(value, "the value") if isinstance(value, (bytes, bytearray, str)) else value
        obj = from_dict(doc)
    except (ValueError, InvalidAnnotation, BadInput, TooLarge) as exc:
        raise BackendError(f"DVID key {where}/{key} holds no usable RAMON object: {exc}") from None
    if obj.id != int(key):
        raise BackendError(f"DVID key {where}/{key} holds RAMON object {obj.id}")
    return obj


class DvidRamon:
    """Annotation hooks for :class:`~ndfs.stores.dvid.DvidBackend` (see the module doc)."""

    # ---- where things are ------------------------------------------------------
    def _ramon_state(self) -> dict:
        with _STATE_LOCK:
            return self.__dict__.setdefault("_ramon", {"lock": threading.Lock(), "counter": threading.Lock(),
                                                       "known": set(), "paint": {}})

    def _channel_lock(self, ref) -> threading.Lock:
        state = self._ramon_state()
        with state["lock"]:
            return state["paint"].setdefault(tuple(ref), threading.Lock())

    def _ramon_where(self, ref) -> tuple[str, str, str, str]:
        """(node uuid, label instance, key-value instance, label type name) of an annotation channel."""
        _, uuid, _, _, _ = self._locate(tuple(ref))
        d = self.info(ref).extra["dvid"]
        return uuid, d["instance"], d["instance"] + RAMON_SUFFIX, d["typename"]

    def _node_path(self, uuid: str, instance: str, tail: str) -> str:
        return f"/api/node/{uuid}/{quote(instance, safe='')}/{tail}"

    # ---- the key-value instance ----------------------------------------------------
    def _keys(self, uuid: str, kv: str) -> list[str]:
        """Every key of the key-value instance; [] when it does not exist yet."""
        try:
            return [str(k) for k in self._get_json(self._node_path(uuid, kv, "keys"), kind=list)]
        except NotFound:  # DVID: invalid data instance name
            return []

    def _ensure_kv(self, uuid: str, kv: str) -> None:
        """Make the key-value instance unless it exists (checked once per backend)."""
        state = self._ramon_state()
        with state["lock"]:
            if (uuid, kv) in state["known"]:
                return
        try:
            self._get_json(self._node_path(uuid, kv, "info"))
        except NotFound:
            body = json.dumps({"typename": "keyvalue", "dataname": kv})
            try:
                self._request("POST", f"/api/repo/{uuid}/instance", data=body, retry=False)
            except BadRegion as exc:
                if "already exists" not in str(exc):
                    raise BadRegion(f"cannot make the key-value instance {kv} for RAMON objects: {exc}") from None
            self._repos(fresh=True)  # the listing shows the new instance
        with state["lock"]:
            state["known"].add((uuid, kv))

    def _objects(self, uuid: str, kv: str, ids: list[int], ranged: bool = False) -> dict:
        """The stored objects of these ids (ids without a key are left out).

        ``ranged``: read through ``keyrangevalues`` (one request per RANGE_BATCH keys, for
        many ids), falling back to one GET per key where the server has no such endpoint.
        """
        wanted = sorted({str(i) for i in ids}, key=str.encode)
        found: dict[int, object] = {}
        lock = threading.Lock()
        where = f"{uuid[:8]}/{kv}"
        if ranged and len(wanted) > 1:
            try:
                for i in range(0, len(wanted), RANGE_BATCH):
                    part = wanted[i:i + RANGE_BATCH]
                    tail = f"keyrangevalues/{quote(part[0], safe='')}/{quote(part[-1], safe='')}"
                    doc = self._request("GET", self._node_path(uuid, kv, tail), params={"json": "true"},
                                        decode=_json_object)
                    for key in set(part) & set(doc):
                        found[int(key)] = _parse(doc[key], key, where)
                return found
            except NotFound:
                return {}
            except BadRegion:  # no keyrangevalues here: one key at a time
                found.clear()

        def fetch(key: str) -> None:
            try:
                body = self._request("GET", self._key_path(uuid, kv, key), decode=lambda resp: resp.content)
            except NotFound:
                return
            obj = _parse(body, key, where)
            with lock:
                found[int(key)] = obj

        if wanted:
            self._run([lambda k=k: fetch(k) for k in wanted])
        return found

    def _store(self, uuid: str, kv: str, objs) -> None:
        def post(obj) -> None:
            clean = obj.copy()
            clean.bbox, clean.voxels = None, None
            self._request("POST", self._key_path(uuid, kv, str(obj.id)), data=clean.to_json().encode())

        self._run([lambda o=o: post(o) for o in objs])

    # ---- ids ----------------------------------------------------------------------
    def _next_counter(self, uuid: str, kv: str) -> int:
        try:
            body = self._request("GET", self._key_path(uuid, kv, COUNTER_KEY), decode=lambda resp: resp.content)
        except NotFound:
            return 1
        try:
            return max(1, int(body))
        except ValueError:
            raise BackendError(f"DVID key {kv}/{COUNTER_KEY} is not an id counter: {body[:40]!r}") from None

    def _reserve(self, uuid: str, instance: str, kv: str, typename: str, n: int) -> int:
        """The first of n fresh consecutive ids (the caller checked the node is writable)."""
        if typename == "labelmap":
            def decode(resp):
                doc = safe.reply_json(resp.content)
                start, end = int(doc["start"]), int(doc["end"])
                if end - start + 1 != n or start < 1:
                    raise ValueError(f"nextlabel gave {start}..{end} for {n} ids")
                return start

            try:
                return self._request("POST", self._node_path(uuid, instance, f"nextlabel/{n}"), decode=decode,
                                     retry=False)
            except BadRegion as exc:
                if not _no_endpoint(exc):
                    raise
                # a DVID without nextlabel: the counter key, as for a labelblk
        state = self._ramon_state()
        with state["counter"]:  # labelblk: the counter key, one reservation at a time in this process
            self._ensure_kv(uuid, kv)
            used = object_ids(self._keys(uuid, kv), self.ramon_max_id)
            first = max(self._next_counter(uuid, kv), (used[-1] + 1) if used else 1)
            if first + n - 1 > self.ramon_max_id:
                raise InvalidAnnotation(f"no {n} ids left below {self.ramon_max_id}")
            self._request("POST", self._key_path(uuid, kv, COUNTER_KEY), data=str(first + n).encode())
            return first

    def _note_ids(self, uuid: str, instance: str, kv: str, typename: str, top: int) -> None:
        """Make sure ids up to ``top`` (chosen by the caller) are never handed out by a reservation."""
        if typename == "labelmap":
            try:
                self._request("POST", self._node_path(uuid, instance, f"maxlabel/{top}"))
                return
            except BadRegion as exc:
                if not _no_endpoint(exc):
                    raise
        state = self._ramon_state()
        with state["counter"]:
            if self._next_counter(uuid, kv) <= top:
                self._request("POST", self._key_path(uuid, kv, COUNTER_KEY), data=str(top + 1).encode())

    # ---- the hooks of the backend contract --------------------------------------------
    def _ramon_ids(self, ref, filters, box: Box | None, level: int) -> list[int]:
        from ndfs.ramon.labels import labels_in

        uuid, _, kv, _ = self._ramon_where(ref)
        ids = object_ids(self._keys(uuid, kv), self.ramon_max_id)
        objs: dict | None = None
        if box is not None:
            labels = labels_in(self, ref, box, level)
            inside = {i for i in ids if i in labels}
            if filters.type in (None, "neuron"):  # neurons touch the box through their segments
                objs = self._objects(uuid, kv, ids, ranged=True)
                inside |= {i for i, o in objs.items() if o.TYPE == "neuron" and labels.intersection(o.segments)}
            ids = sorted(inside)
        if filters.type is not None or filters.status is not None or filters.confidence is not None or filters.kv:
            if objs is None:
                objs = self._objects(uuid, kv, ids, ranged=True)
            ids = [i for i in ids if i in objs and filters.matches(objs[i])]
        return ids if filters.limit is None else ids[:filters.limit]

    def _ramon_get(self, ref, ids: list[int]) -> list:
        uuid, _, kv, _ = self._ramon_where(ref)
        found = self._objects(uuid, kv, ids, ranged=len(ids) > 20)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise NotFound(f"no RAMON object {missing[0]} in {'/'.join(ref)}{more}")
        return [found[i] for i in ids]

    def _ramon_put(self, ref, objs: list) -> list[int]:
        from ndfs.ramon.labels import paint_attached

        info = self.info(ref)
        for obj in objs:  # every check before anything is sent
            if obj.voxels is not None:
                info.check_box(obj.voxels.box, obj.voxels.level)
                if info.extra["dvid"]["levels"][obj.voxels.level]["scale"]:
                    raise ReadOnly(f"level {obj.voxels.level} of {'/'.join(ref)} is computed by DVID; "
                                   "attach voxels at level 0")
        self._check_writable(ref)
        uuid, instance, kv, typename = self._ramon_where(ref)
        self._ensure_kv(uuid, kv)
        chosen = [o.id for o in objs if o.id]
        if chosen:
            self._note_ids(uuid, instance, kv, typename, max(chosen))
        new = [o for o in objs if not o.id]
        if new:
            first = self._reserve(uuid, instance, kv, typename, len(new))
            for k, obj in enumerate(new):
                obj.id = first + k
        self._store(uuid, kv, objs)
        ids = [o.id for o in objs]
        paint_attached(self, ref, ids, objs, self._channel_lock(ref))
        return ids

    def _ramon_delete(self, ref, ids: list[int]) -> None:
        self._check_writable(ref)
        objs = self._ramon_get(ref, ids)  # NotFound, and nothing deleted, if one is missing
        uuid, _, kv, _ = self._ramon_where(ref)
        self._run([lambda i=i: self._request("DELETE", self._key_path(uuid, kv, str(i))) for i in ids])
        with self._channel_lock(ref):
            for obj in objs:
                if obj.TYPE != "neuron":
                    self._erase(ref, obj.id)

    def _reserve_ids(self, ref, n: int) -> int:
        self._check_writable(ref)
        uuid, instance, kv, typename = self._ramon_where(ref)
        return self._reserve(uuid, instance, kv, typename, n)

    def _ramon_bbox(self, ref, id: int, level: int) -> Box | None:
        (obj,) = self._ramon_get(ref, [id])
        boxes = [b for b in (self._label_box(ref, label, level)
                             for label in (obj.segments if obj.TYPE == "neuron" else [id])) if b is not None]
        if not boxes:
            return None
        return Box(tuple(min(b.start[a] for b in boxes) for a in range(3)),
                   tuple(max(b.stop[a] for b in boxes) for a in range(3)))

    # ---- voxels of one label ------------------------------------------------------------
    def _coarse_box(self, ref, label: int) -> Box | None | bool:
        """The level-0 box of the blocks holding a label (sparsevol-size); None: no voxels; True: unknown."""
        uuid, instance, _, typename = self._ramon_where(ref)
        if typename != "labelmap":
            return True
        try:
            doc = self._get_json(self._node_path(uuid, instance, f"sparsevol-size/{label}"))
        except NotFound:
            return None
        except BadRegion:  # labels not indexed here
            return True
        try:
            lo = [int(v) for v in doc["minvoxel"]][::-1]
            hi = [int(v) + 1 for v in doc["maxvoxel"]][::-1]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"DVID sparsevol-size of label {label} is unusable: {exc}") from None
        return Box(tuple(lo), tuple(hi))

    def _within(self, ref, label: int, level: int) -> Box | None:
        """Where at ``level`` a label's voxels can be: its blocks' box scaled down, or the whole level."""
        info = self.info(ref)
        lv = info.level(level)
        coarse = self._coarse_box(ref, label)
        if coarse is None:
            return None
        if coarse is True:
            return lv.box
        factor = [max(1, round(a / b)) for a, b in zip(lv.voxel_size_nm, info.level(0).voxel_size_nm)]
        scaled = Box(tuple(a // f for a, f in zip(coarse.start, factor)),
                     tuple(-(-b // f) for b, f in zip(coarse.stop, factor)))
        return scaled.intersect(lv.box)

    def _label_box(self, ref, label: int, level: int) -> Box | None:
        from ndfs.ramon.labels import scan_bbox

        within = self._within(ref, label, level)
        return None if within is None else scan_bbox(self, ref, [label], level, within=within)

    def _erase(self, ref, label: int) -> None:
        """Zero a label's level-0 voxels, slab by slab inside the box they can be in."""
        within = self._within(ref, label, 0)
        if within is None:
            return
        lv = self.info(ref).level(0)
        depth = lv.chunk_shape[0]
        value = np.uint64(label)
        for z in range(within.start[0] - within.start[0] % depth, within.stop[0], depth):  # DVID's grid is global
            slab = Box((max(z, within.start[0]),) + within.start[1:],
                       (min(z + depth, within.stop[0]),) + within.stop[1:])
            old = self.read(ref, slab, 0)
            hit = old == value
            if hit.any():
                self.write(ref, slab, 0, np.where(hit, np.uint64(0), old))


def _no_endpoint(exc: Exception) -> bool:
    """Is this DVID's 400 for an endpoint the instance does not have (``Bad API call``)?"""
    return "bad api call" in str(exc).lower()


def _json_object(resp) -> dict:
    doc = safe.reply_json(resp.content)
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc


__all__ = ["DvidRamon", "RAMON_SUFFIX", "COUNTER_KEY", "object_ids"]
