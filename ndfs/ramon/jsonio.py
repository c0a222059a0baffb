"""RAMON objects as JSON: the ndfs file form and the two NeuroData wire layouts.

* **ndfs file form** (``specs/ramon.md`` 7): one flat object with ``id``,
  ``type``, every field of the type in spec order and a derived ``bbox``;
  2-space indent, UTF-8, trailing newline, so one object always gives the same
  bytes. :func:`to_json` / :func:`from_json`, :func:`to_dict` / :func:`from_dict`.
* **Layout A**, the legacy ``{id: {"type", "metadata"}}`` that ndio parses
  (replies of ``GET …/{ids}/json/``): :func:`to_legacy` / :func:`from_legacy`.
  The type name is ndio's (``generic`` for type 1).
* **Layout B**, ndstore's flat ``ann_*``/``seg_*`` keys with kvpairs at the
  top level: :func:`to_flat` / :func:`from_flat`. Points travel as JSON
  strings; derived lists are absent.

:func:`from_legacy` takes either layout (A has ``metadata``, B has
``ann_type``). Pure functions, thread-safe.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ndfs.core.errors import BadInput, InvalidAnnotation, TooLarge
from ndfs.core.geometry import Box
from ndfs.ramon.types import (
    CLASSES, CODECS, MAX_ID, NDSTORE_TYPES, RamonObject, check_value, type_name,
)

# ---- legacy key names (layout A and HDF5 differ from ndfs names only here) ----
LEGACY_KEYS = {("seed", "cubelocation"): "cube_location", ("node", "parent"): "parentid",
               ("node", "skeleton"): "skeletonid"}

# ---- layout B: (type, ndfs field) -> flat key; fields absent here are derived/not carried ----
FLAT_PREFIX = {"synapse": "syn_", "segment": "seg_", "organelle": "org_", "seed": "seed_", "node": "node_",
               "skeleton": "skel_", "roi": "roi_"}
FLAT_RENAME = {("synapse", "synapse_type"): "syn_type", ("segment", "segmentclass"): "seg_class",
               ("organelle", "organelleclass"): "org_class", ("node", "nodetype"): "node_type",
               ("skeleton", "skeletontype"): "skel_type"}
FLAT_DERIVED = {("segment", "synapses"), ("segment", "organelles"), ("neuron", "segments"),
                ("node", "children"), ("roi", "children")}
NDSTORE_NAMES = {v: k for k, v in NDSTORE_TYPES.items()}


def _own_fields(cls: type[RamonObject]):
    return cls.field_kinds()[5:]


# ---- ndfs file form ----------------------------------------------------------
def to_dict(obj: RamonObject) -> dict[str, Any]:
    """The ndfs file form of one object (validated copy of its values; ``bbox`` when known)."""
    obj = obj.copy().validate()
    out: dict[str, Any] = {"id": obj.id, "type": obj.TYPE}
    for name, value in obj.values().items():
        if name != "id":
            out[name] = dict(value) if isinstance(value, dict) else (list(value) if isinstance(value, list)
                                                                     else value)
    if obj.bbox is not None:
        level, box = obj.bbox
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        out["bbox"] = {"level": int(level), "x": [x0, x1], "y": [y0, y1], "z": [z0, z1]}
    return out


def to_json(obj: RamonObject) -> str:
    """The ndfs file form as text: 2-space indent, UTF-8 characters kept, trailing newline."""
    return json.dumps(to_dict(obj), indent=2, ensure_ascii=False) + "\n"


def from_dict(data: dict, *, expect_id: int | None = None, max_id: int = MAX_ID,
              current: RamonObject | None = None) -> RamonObject:
    """An object from the ndfs file form; InvalidAnnotation for anything the spec refuses.

    ``expect_id``: the id the file is named after (a different ``id`` is refused;
    a missing one takes it). ``current``: the stored object, against which a
    changed ``bbox`` is refused (it is derived). ``bbox`` is otherwise ignored.
    """
    if not isinstance(data, dict):
        raise InvalidAnnotation(f"a RAMON object is a JSON object, got {type(data).__name__}")
    if "type" not in data:
        raise InvalidAnnotation("a RAMON object needs a \"type\" (one of "
                                f"{', '.join(CLASSES)})")
    cls = CLASSES[type_name(data["type"])]
    known = {n for n, _ in cls.field_kinds()} | {"type", "bbox"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidAnnotation(f"RAMON {cls.TYPE} has no field(s) {', '.join(map(repr, unknown))} "
                                "(custom data goes in kvpairs)")
    values = {k: v for k, v in data.items() if k not in ("type", "bbox")}
    if expect_id is not None:
        if "id" in values and values["id"] != expect_id:
            raise InvalidAnnotation(f"the object's id {values['id']!r} differs from its file name ({expect_id})")
        values["id"] = expect_id
    if "bbox" in data and current is not None and current.bbox is not None:
        if data["bbox"] != to_dict(current).get("bbox"):
            raise InvalidAnnotation("bbox is derived from the voxels and cannot be changed")
    return cls(**values).validate(max_id=max_id)


def _loads(text: str | bytes):
    """JSON through :func:`ndfs.formats.safe.json_loads`: a document past its byte bound is
    TooLarge (EFBIG); deep nesting, giant integers and invalid JSON are InvalidAnnotation."""
    from ndfs.formats import safe

    try:
        return safe.json_loads(text, "the RAMON JSON")
    except BadInput as exc:
        raise InvalidAnnotation(str(exc)) from None


def from_json(text: str | bytes, **kwargs) -> RamonObject:
    """An object from ndfs file-form text (see :func:`from_dict` for the keyword arguments).

    Text past :data:`ndfs.formats.safe.MAX_JSON_BYTES` is refused with TooLarge (EFBIG)."""
    return from_dict(_loads(text), **kwargs)


def bbox_from_dict(data: dict) -> tuple[int, Box] | None:
    """The ``(level, Box)`` of a file form's ``bbox`` entry, or None."""
    b = data.get("bbox")
    if b is None:
        return None
    try:
        return int(b["level"]), Box.from_xyz(b["x"], b["y"], b["z"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidAnnotation(f"bbox must be {{level, x, y, z}} with [start, stop] ranges: {exc}") from None


# ---- layout A (legacy, ndio) -------------------------------------------------
def to_legacy(objs: Iterable[RamonObject]) -> dict[str, dict]:
    """Layout A: ``{"<id>": {"type": name, "metadata": {...}}}``, one merged object."""
    out: dict[str, dict] = {}
    for obj in objs:
        obj = obj.copy().validate()
        md: dict[str, Any] = {}
        for name, value in obj.values().items():
            if name == "id":
                continue
            md[LEGACY_KEYS.get((obj.TYPE, name), name)] = value
        out[str(obj.id)] = {"type": obj.TYPE, "metadata": md}  # ndfs names are ndio's (generic = 1)
    return out


def from_legacy(doc: dict | str | bytes, *, max_id: int = MAX_ID) -> list[RamonObject]:
    """Objects from a ``json/`` reply in layout A or B (keyed by id), in the document's order."""
    if isinstance(doc, (str, bytes)):
        doc = _loads(doc)
    if not isinstance(doc, dict):
        raise InvalidAnnotation("a RAMON json/ reply is an object keyed by id")
    out = []
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            raise InvalidAnnotation(f"RAMON entry {key!r} is not an object")
        if "metadata" in entry:
            out.append(_from_layout_a(key, entry, max_id))
        elif "ann_type" in entry:
            out.append(_from_flat_entry(key, entry, max_id))
        else:
            raise InvalidAnnotation(f"RAMON entry {key!r} has neither 'metadata' (layout A) "
                                    "nor 'ann_type' (layout B)")
    return out


def _key_id(key, entry_id=None) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise InvalidAnnotation(f"RAMON entry key {key!r} is not an id") from None
    if entry_id is not None and str(entry_id) != str(value):
        raise InvalidAnnotation(f"RAMON entry {key!r} carries a different id {entry_id!r}")
    return value


def _from_layout_a(key, entry: dict, max_id: int) -> RamonObject:
    cls = CLASSES[type_name(entry.get("type", ""))]
    md = entry["metadata"]
    if not isinstance(md, dict):
        raise InvalidAnnotation(f"RAMON entry {key!r}: metadata is not an object")
    values: dict[str, Any] = {"id": _key_id(key, entry.get("id"))}
    for name, _ in cls.field_kinds()[1:]:
        legacy = LEGACY_KEYS.get((cls.TYPE, name), name)
        if legacy in md:
            values[name] = md[legacy]
    return cls(**values).validate(max_id=max_id)


# ---- layout B (flat) -----------------------------------------------------------
def flat_key(type_: str, name: str) -> str | None:
    """The layout B key of a type's own field (None: not carried, as it is derived)."""
    if (type_, name) in FLAT_DERIVED or type_ not in FLAT_PREFIX:
        return None
    return FLAT_RENAME.get((type_, name), FLAT_PREFIX[type_] + name)


def to_flat(objs: Iterable[RamonObject]) -> dict[str, dict]:
    """Layout B: ``{"<id>": {"ann_id", "ann_type" (ndstore number), ..., kv pairs}}``."""
    out: dict[str, dict] = {}
    for obj in objs:
        obj = obj.copy().validate()
        if obj.TYPE not in NDSTORE_TYPES:
            raise InvalidAnnotation(f"RAMON {obj.TYPE} has no ndstore type number")
        entry: dict[str, Any] = {"ann_id": obj.id, "ann_type": NDSTORE_TYPES[obj.TYPE], "ann_status": obj.status,
                                 "ann_confidence": obj.confidence, "ann_author": obj.author}
        for name, kind in _own_fields(type(obj)):
            key = flat_key(obj.TYPE, name)
            if key is not None:
                value = getattr(obj, name)
                entry[key] = json.dumps(value) if kind in ("point", "fpoint") else value
        entry.update(obj.kvpairs)
        out[str(obj.id)] = entry
    return out


def from_flat(doc: dict, *, max_id: int = MAX_ID) -> list[RamonObject]:
    """Objects from a layout B document."""
    return from_legacy(doc, max_id=max_id)


def _from_flat_entry(key, entry: dict, max_id: int) -> RamonObject:
    try:
        cls = CLASSES[NDSTORE_NAMES[int(entry["ann_type"])]]
    except (KeyError, TypeError, ValueError):
        raise InvalidAnnotation(f"RAMON entry {key!r}: unknown ann_type {entry.get('ann_type')!r}") from None
    values: dict[str, Any] = {"id": _key_id(key, entry.get("ann_id"))}
    for name in ("status", "confidence", "author"):
        if f"ann_{name}" in entry:
            values[name] = entry[f"ann_{name}"]
    taken = {"ann_id", "ann_type", "ann_status", "ann_confidence", "ann_author"}
    for name, kind in _own_fields(cls):
        k = flat_key(cls.TYPE, name)
        if k is None or k not in entry:
            continue
        taken.add(k)
        value = entry[k]
        if kind in ("point", "fpoint") and isinstance(value, str):
            try:
                value = _loads(value) if value.strip() else []
            except (InvalidAnnotation, TooLarge):
                raise InvalidAnnotation(f"RAMON entry {key!r}: {k} is not a JSON point: {value[:80]!r}") from None
        elif kind == "ids" and isinstance(value, str):
            value = [int(v) for v in value.replace(",", " ").split()] if value.strip() else []
        values[name] = value
    values["kvpairs"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()
                         if k not in taken and not k.startswith(("ann_", *FLAT_PREFIX.values()))}
    return cls(**values).validate(max_id=max_id)


def check_field(type_: str, name: str, value, max_id: int = MAX_ID):
    """Validate one field value of a type (for ``setField``-style edits)."""
    cls = CLASSES[type_name(type_)]
    kinds = dict(cls.field_kinds())
    if name not in kinds or name == "id":
        raise InvalidAnnotation(f"RAMON {cls.TYPE} has no settable field {name!r}")
    return check_value(cls.TYPE, name, kinds[name], value, max_id)


CODECS.update(to_dict=to_dict, to_json=to_json, from_json=from_json)  # RamonObject's methods find these here
