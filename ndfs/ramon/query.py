"""Argument checks shared by every backend's annotation calls: ids, objects and query filters.

:class:`Filters` is what ``Backend.ramon_ids`` hands its hook: a RAMON type
name, a status, a confidence bound, kv equalities and a limit, all checked.
``matches(obj)`` applies them to one object, for stores that filter in
Python. Pure, thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ndfs.core.errors import InvalidAnnotation
from ndfs.ramon.types import NOT_STORED, RamonObject, _check_kv, enum_value, type_name


@dataclass(frozen=True)
class Filters:
    """Checked query predicates, ANDed. ``kv`` is a tuple of (key, value) pairs."""

    type: str | None = None
    status: int | None = None
    confidence: tuple[str, float] | None = None
    kv: tuple[tuple[str, str], ...] = ()
    limit: int | None = None

    def matches(self, obj: RamonObject) -> bool:
        if self.type is not None and obj.TYPE != self.type:
            return False
        if self.status is not None and obj.status != self.status:
            return False
        if self.confidence is not None:
            op, value = self.confidence
            if not (obj.confidence > value if op == "gt" else obj.confidence < value):
                return False
        return all(obj.kvpairs.get(k) == v for k, v in self.kv)


def query_filters(*, type=None, status=None, confidence=None, kv=None, limit=None) -> Filters:
    """Checked :class:`Filters` from ``ramon_ids`` keyword arguments (InvalidAnnotation if bad)."""
    t = type_name(type) if type is not None else None
    s = enum_value("status", status) if status is not None else None
    c = None
    if confidence is not None:
        try:
            op, value = confidence
            value = float(value)
        except (TypeError, ValueError):
            raise InvalidAnnotation(f"confidence filter is ('gt' or 'lt', number), got {confidence!r}") from None
        if op not in ("gt", "lt"):
            raise InvalidAnnotation(f"confidence filter compares with 'gt' or 'lt', not {op!r}")
        c = (op, value)
    pairs = tuple(sorted(_check_kv(dict(kv or {}), "kv filter").items()))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise InvalidAnnotation(f"limit must be a non-negative int, got {limit!r}")
    return Filters(t, s, c, pairs, None if limit is None else int(limit))


def check_ids(ids, max_id: int) -> list[int]:
    """A list of distinct positive ids (an int is a list of one), order kept."""
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise InvalidAnnotation(f"ids must be an int or a list of ints, got {ids!r}")
    out, seen = [], set()
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 < int(i) <= max_id:
            raise InvalidAnnotation(f"RAMON ids are integers from 1 to {max_id}, got {i!r}")
        if int(i) not in seen:
            seen.add(int(i))
            out.append(int(i))
    return out


def check_objects(objs, max_id: int) -> list[RamonObject]:
    """Validated copies of the objects to store; all are checked before any is stored."""
    if isinstance(objs, RamonObject):
        objs = [objs]
    out, seen = [], set()
    for obj in objs:
        if not isinstance(obj, RamonObject):
            raise InvalidAnnotation(f"expected RAMON objects (ndfs.ramon classes), got {type(obj).__name__}")
        if obj.TYPE in NOT_STORED:
            raise InvalidAnnotation("a RAMON volume only holds a cutout in memory; store a typed object "
                                    "(generic, segment, ...) with voxels instead")
        clean = obj.copy().validate(max_id=max_id)
        if clean.id and clean.id in seen:
            raise InvalidAnnotation(f"id {clean.id} appears twice in one request")
        seen.add(clean.id)
        out.append(clean)
    return out
