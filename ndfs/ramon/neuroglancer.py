"""RAMON objects as neuroglancer ``segment_properties`` and back. Pure.

* :func:`segment_properties`: the inline ``neuroglancer_segment_properties`` document of RAMON objects,
  as ``ndfs serve --protocol precomputed`` shows a channel's objects: a label (the ``name`` key-value
  pair, else the type and id), a description (author, status, confidence, key-value pairs) and tags
  (the RAMON type, its class, its status).
* :func:`parse_segment_properties`: id -> RAMON kv pairs of such a document, as the ``precomputed``
  remote shows a layer's objects: every property by its id (tags joined by commas; keys RAMON reserves
  get a ``property_`` prefix).
"""

from __future__ import annotations

import json

from ndfs.core.errors import BackendError
from ndfs.ramon.types import ENUMS, RESERVED_KV_PREFIXES

STATUS = ("unprocessed", "locked", "processed", "ignored")


def segment_properties(objects) -> dict:
    """neuroglancer's inline segment properties of RAMON objects (see the module doc). Pure."""
    ids, labels, descriptions, tag_lists = [], [], [], []
    tags: list[str] = []
    where: dict[str, int] = {}

    def tag(name: str) -> int:
        if name not in where:
            where[name] = len(tags)
            tags.append(name)
        return where[name]

    for obj in sorted(objects, key=lambda o: o.id):
        kv = dict(obj.kvpairs or {})
        ids.append(str(obj.id))
        labels.append(str(kv.get("name") or f"{obj.TYPE} {obj.id}"))
        parts = [obj.TYPE]
        if obj.author:
            parts.append(f"by {obj.author}")
        parts.append(f"status {STATUS[obj.status] if 0 <= obj.status < len(STATUS) else obj.status}")
        parts.append(f"confidence {obj.confidence:g}")
        parts += [f"{k}={v}" for k, v in sorted(kv.items()) if k != "name"]
        descriptions.append(", ".join(parts))
        mine = [tag(obj.TYPE)]
        for enum in ("segmentclass", "organelleclass"):
            value = getattr(obj, enum, 0)
            if value:
                mine.append(tag(ENUMS[enum][value]))
        if 0 <= obj.status < len(STATUS):
            mine.append(tag(STATUS[obj.status]))
        tag_lists.append(sorted(set(mine)))
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": ids, "properties": [
                {"id": "label", "type": "label", "values": labels},
                {"id": "description", "type": "description", "values": descriptions},
                {"id": "tags", "type": "tags", "tags": tags, "values": tag_lists}]}}


def parse_segment_properties(doc: dict) -> dict[int, dict[str, str]]:
    """id -> kv pairs of a ``neuroglancer_segment_properties`` info (tags joined by commas)."""
    inline = doc.get("inline") or {}
    try:
        ids = [int(i) for i in inline.get("ids", [])]
        out: dict[int, dict[str, str]] = {i: {} for i in ids}
        for prop in inline.get("properties", []):
            key = str(prop.get("id", prop.get("type")))
            if key.lower().startswith(RESERVED_KV_PREFIXES):
                key = "property_" + key
            values = prop.get("values", [])
            if prop.get("type") == "tags":
                names = prop.get("tags", [])
                for i, picks in zip(ids, values):
                    out[i][key] = ",".join(str(names[k]) for k in picks)
            else:
                for i, value in zip(ids, values):
                    out[i][key] = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise BackendError(f"segment properties are not usable: {exc!r}") from exc
    return out
