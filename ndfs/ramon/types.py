"""The RAMON types: one class per type, every field of ``specs/ramon.md``, and validation.

A RAMON object is a typed metadata record with an id in an annotation
channel. Every class has the common fields (``id``, ``author``,
``confidence``, ``status``, ``kvpairs``) followed by its own fields, in the
spec's order; :data:`FIELDS` describes each field's kind, which drives
validation and every conversion (:mod:`ndfs.ramon.jsonio`,
:mod:`ndfs.ramon.hdf5io`).

Objects are plain mutable dataclasses. ``validate()`` checks and normalises
one in place (enum names become ints, tuples become lists) and raises
:class:`ndfs.errors.InvalidAnnotation` with a readable message; a failed
validation leaves the object unchanged. Two attributes are not metadata and
take no part in equality: ``bbox`` (the derived, read-only bounding box a
backend reports) and ``voxels`` (a :class:`Voxels` cutout to attach, as in
ndio's RAMONVolume). Not thread-safe: share validated copies, not one object.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np

from ndfs.core.errors import InvalidAnnotation
from ndfs.core.geometry import Box

MAX_UINT32 = 2**32 - 1
#: the largest id a store keeps (the local store's SQLite keys are signed 64-bit)
MAX_ID = 2**63 - 1

ENUMS: dict[str, tuple[str, ...]] = {
    "status": ("unprocessed", "locked", "processed", "ignored"),
    "synapse_type": ("unknown", "excitatory", "inhibitory", "gap_junction"),
    "segmentclass": ("unknown", "axon", "dendrite", "soma"),
    "organelleclass": ("unknown", "mitochondria", "vesicle", "axoplasmic_reticula", "microtubules", "nucleus"),
}
ENUM_ALIASES = {"status": {"default": 0, "processing": 2}}

#: kv keys that would collide with the typed keys of the flat JSON layout
RESERVED_KV_PREFIXES = ("ann_", "syn_", "seg_", "org_", "seed_", "node_", "skel_", "roi_")

#: the common fields, then each type's own fields: (name, kind)
COMMON_FIELDS = (("id", "id"), ("author", "str"), ("confidence", "unit"), ("status", "enum"), ("kvpairs", "kv"))
TYPE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "generic": (),
    "synapse": (("synapse_type", "enum"), ("weight", "float"), ("segments", "ids"), ("seeds", "ids"),
                ("presegments", "ids"), ("postsegments", "ids"), ("centroid", "point")),
    "seed": (("parent", "id"), ("position", "point"), ("cubelocation", "int"), ("source", "id")),
    "segment": (("segmentclass", "enum"), ("neuron", "id"), ("parentseed", "id"), ("synapses", "ids"),
                ("organelles", "ids")),
    "neuron": (("segments", "ids"),),
    "organelle": (("organelleclass", "enum"), ("parentseed", "id"), ("seeds", "ids"), ("centroid", "point"),
                  ("segment", "id")),
    "attributedregion": (),
    "volume": (),
    "node": (("nodetype", "int"), ("location", "fpoint"), ("parent", "id"), ("skeleton", "id"),
             ("radius", "float"), ("children", "ids")),
    "skeleton": (("skeletontype", "int"), ("rootnode", "id")),
    "roi": (("parent", "id"), ("children", "ids")),
}
TYPES = tuple(TYPE_FIELDS)
FIELDS: dict[str, tuple[tuple[str, str], ...]] = {t: COMMON_FIELDS + f for t, f in TYPE_FIELDS.items()}

#: type numbers: ndio/CAJAL and ndstore agree on 1..6 and differ above (spec 1)
CAJAL_TYPES = {"generic": 1, "synapse": 2, "seed": 3, "segment": 4, "neuron": 5, "organelle": 6,
               "attributedregion": 7, "volume": 8}
NDSTORE_TYPES = {"generic": 1, "synapse": 2, "seed": 3, "segment": 4, "neuron": 5, "organelle": 6,
                 "node": 7, "skeleton": 8, "roi": 9}
#: types whose objects own voxels in the label volume (a neuron's are its segments')
OWN_VOXELS = frozenset({"generic", "synapse", "segment", "organelle", "attributedregion", "node", "skeleton",
                        "roi"})
#: types that are never stored: ndio's in-memory volume holder
NOT_STORED = frozenset({"volume"})


def _defaults(kind: str):
    return {"id": 0, "str": "", "unit": 0.0, "enum": 0, "kv": {}, "float": 0.0, "int": 0, "ids": [],
            "point": [], "fpoint": []}[kind]


@dataclass
class Voxels:
    """Voxels to attach to an object: a ZYX ``array`` whose non-zero voxels become the id.

    ``offset`` is the absolute ZYX corner of the array at ``level``. Pure data.
    """

    array: np.ndarray
    offset: tuple[int, int, int] = (0, 0, 0)
    level: int = 0

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InvalidAnnotation(f"voxels must be a 3-D ZYX array, got {self.array.ndim}-D")
        if not (np.issubdtype(self.array.dtype, np.integer) or self.array.dtype == bool):
            raise InvalidAnnotation(f"voxels must be integers or booleans, got {self.array.dtype}")
        if len(self.offset) != 3 or any(int(v) < 0 for v in self.offset):
            raise InvalidAnnotation(f"voxel offset must be three non-negative ints (z, y, x), got {self.offset}")
        self.offset = tuple(int(v) for v in self.offset)
        if int(self.level) < 0:
            raise InvalidAnnotation(f"voxel level must be >= 0, got {self.level}")
        self.level = int(self.level)

    @property
    def box(self) -> Box:
        return Box.from_shape(self.array.shape, self.offset)


#: the conversions RamonObject's methods call, by name: ndfs.ramon.jsonio and ndfs.ramon.hdf5io register
#: theirs when they are imported (the package ndfs.ramon imports both), so this module imports neither
CODECS: dict[str, Callable] = {}


def _codec(name: str) -> Callable:
    try:
        return CODECS[name]
    except KeyError:
        raise RuntimeError(f"the RAMON conversion {name!r} is not loaded; import ndfs.ramon") from None


@dataclass
class RamonObject:
    """Fields every RAMON type has. Use a subclass (``RamonSegment(...)``) or :func:`make`."""

    TYPE: ClassVar[str] = ""
    id: int = 0
    author: str = ""
    confidence: float = 0.0
    status: int = 0
    kvpairs: dict = field(default_factory=dict)

    # ---- not metadata ----------------------------------------------------
    def __post_init__(self):
        # the derived bounding box (level, Box) and voxels to attach: not fields, not compared
        self.bbox: tuple[int, Box] | None = None
        self.voxels: Voxels | None = None

    @property
    def type(self) -> str:
        return self.TYPE

    @classmethod
    def field_kinds(cls) -> tuple[tuple[str, str], ...]:
        return FIELDS[cls.TYPE]

    def values(self) -> dict[str, Any]:
        """The fields as a dict in spec order (no copy of lists or kvpairs)."""
        return {name: getattr(self, name) for name, _ in self.field_kinds()}

    def copy(self) -> "RamonObject":
        new = copy.deepcopy(self)
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, author={self.author!r}, status={self.status})"

    # ---- conversions (the functions of ndfs.ramon.jsonio / hdf5io, found in CODECS) ----------
    def to_dict(self) -> dict[str, Any]:
        """This object as the ndfs file form's dict."""
        return _codec("to_dict")(self)

    def to_json(self) -> str:
        """This object in the ndfs file form (``ramon/<id>.json``)."""
        return _codec("to_json")(self)

    def to_hdf5(self, layout: str = "ndfs") -> bytes:
        """This object alone in an HDF5 file (bytes); ``layout`` is ``"ndfs"`` or ``"legacy"``."""
        return _codec("to_hdf5")([self], layout=layout)

    @classmethod
    def from_json(cls, text: str | bytes, **kwargs) -> "RamonObject":
        """An object from the ndfs file form; InvalidAnnotation if it is not of this class."""
        return cls._same_type(_codec("from_json")(text, **kwargs))

    @classmethod
    def from_hdf5(cls, data: bytes, layout: str | None = None) -> "RamonObject":
        """The one object in an HDF5 file (bytes); InvalidAnnotation if there are more or it is another type."""
        objs = _codec("from_hdf5")(data, layout=layout)
        if len(objs) != 1:
            raise InvalidAnnotation(f"the HDF5 file holds {len(objs)} RAMON objects, not one")
        return cls._same_type(objs[0])

    @classmethod
    def _same_type(cls, obj: "RamonObject") -> "RamonObject":
        if cls is not RamonObject and not isinstance(obj, cls):
            raise InvalidAnnotation(f"expected a RAMON {cls.TYPE}, got a {obj.TYPE}")
        return obj

    # ---- validation ------------------------------------------------------
    def validate(self, *, max_id: int = MAX_ID) -> "RamonObject":
        """Check and normalise every field in place; InvalidAnnotation (and no change) when one is bad.

        ``max_id``: the largest id the target store takes (``MAX_UINT32`` for NeuroData).
        Returns self, so ``obj = RamonSegment(...).validate()`` reads well.
        """
        clean = {}
        for name, kind in self.field_kinds():
            clean[name] = check_value(self.TYPE, name, kind, getattr(self, name), max_id)
        for name, value in clean.items():
            setattr(self, name, value)
        return self


def check_value(type_name: str, name: str, kind: str, value, max_id: int = MAX_ID):
    """The normalised value of one field, or InvalidAnnotation naming the field."""
    where = f"RAMON {type_name} field {name!r}"
    if kind == "id":
        return _check_id(value, where, max_id)
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidAnnotation(f"{where} must be a string, got {value!r}")
        return value
    if kind in ("unit", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidAnnotation(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidAnnotation(f"{where} must be finite, got {value!r}")
        if kind == "unit" and not 0.0 <= value <= 1.0:
            raise InvalidAnnotation(f"{where} must lie in [0, 1], got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidAnnotation(f"{where} must be an integer, got {value!r}")
        if not -(2**31) <= int(value) < 2**31:
            raise InvalidAnnotation(f"{where} must fit in 32 bits, got {value!r}")
        return int(value)
    if kind == "enum":
        return enum_value(name, value, where)
    if kind == "kv":
        return _check_kv(value, where)
    if kind == "ids":
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise InvalidAnnotation(f"{where} must be a list of ids, got {value!r}")
        return [_check_id(v, where, max_id) for v in value]
    if kind in ("point", "fpoint"):
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise InvalidAnnotation(f"{where} must be [x, y, z] or [], got {value!r}")
        items = list(value)
        if len(items) not in (0, 3):
            raise InvalidAnnotation(f"{where} must be [x, y, z] or [], got {value!r}")
        if kind == "point":
            return [_check_coord(v, where) for v in items]
        return [check_value(type_name, name, "float", v) for v in items]
    raise AssertionError(kind)


def _check_id(value, where: str, max_id: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidAnnotation(f"{where}: ids are non-negative integers, got {value!r}")
    value = int(value)
    if value < 0:
        raise InvalidAnnotation(f"{where}: ids are non-negative, got {value}")
    if value > max_id:
        raise InvalidAnnotation(f"{where}: id {value} is too large for this store (at most {max_id})")
    return value


def _check_coord(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidAnnotation(f"{where}: coordinates are integers, got {value!r}")
    return int(value)


def _check_kv(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidAnnotation(f"{where} must be a map of strings to strings, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise InvalidAnnotation(f"{where}: keys must be non-empty strings, got {k!r}")
        if not isinstance(v, str):
            raise InvalidAnnotation(f"{where}: the value of {k!r} must be a string, got {v!r} "
                                    "(kvpairs values are always strings)")
        if k.lower().startswith(RESERVED_KV_PREFIXES):
            raise InvalidAnnotation(f"{where}: key {k!r} starts with a reserved prefix "
                                    f"({', '.join(RESERVED_KV_PREFIXES)})")
        if any(c in k for c in "\r\n/") or any(c in v for c in "\r\n"):
            raise InvalidAnnotation(f"{where}: key {k!r} or its value holds a line break or '/'")
        out[k] = v
    return out


def enum_value(name: str, value, where: str | None = None) -> int:
    """An enum field's int from an int or a §4 name (case-insensitive, spaces as '_')."""
    where = where or f"RAMON field {name!r}"
    names = ENUMS[name]
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "_").replace("-", "_")
        if key in names:
            return names.index(key)
        if key in ENUM_ALIASES.get(name, {}):
            return ENUM_ALIASES[name][key]
        raise InvalidAnnotation(f"{where}: {value!r} is not one of {', '.join(names)}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidAnnotation(f"{where} must be an int or a name ({', '.join(names)}), got {value!r}")
    if not 0 <= int(value) < len(names):
        raise InvalidAnnotation(f"{where}: {value} is out of range 0..{len(names) - 1} ({', '.join(names)})")
    return int(value)


# ---- the classes -------------------------------------------------------------
@dataclass(repr=False)
class RamonGeneric(RamonObject):
    """A generic annotation (type 1)."""

    TYPE: ClassVar[str] = "generic"


@dataclass(repr=False)
class RamonSynapse(RamonObject):
    """A synapse (type 2): its kind, weight, the segments it joins and its seeds."""

    TYPE: ClassVar[str] = "synapse"
    synapse_type: int = 0
    weight: float = 0.0
    segments: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    presegments: list = field(default_factory=list)
    postsegments: list = field(default_factory=list)
    centroid: list = field(default_factory=list)


@dataclass(repr=False)
class RamonSeed(RamonObject):
    """A seed (type 3, deprecated): a point that started a segmentation. Owns no voxels."""

    TYPE: ClassVar[str] = "seed"
    parent: int = 0
    position: list = field(default_factory=list)
    cubelocation: int = 0
    source: int = 0


@dataclass(repr=False)
class RamonSegment(RamonObject):
    """A segment (type 4): a piece of a neuron, its class, owner, synapses and organelles."""

    TYPE: ClassVar[str] = "segment"
    segmentclass: int = 0
    neuron: int = 0
    parentseed: int = 0
    synapses: list = field(default_factory=list)
    organelles: list = field(default_factory=list)


@dataclass(repr=False)
class RamonNeuron(RamonObject):
    """A neuron (type 5): the union of its segments; owns no voxels itself."""

    TYPE: ClassVar[str] = "neuron"
    segments: list = field(default_factory=list)


@dataclass(repr=False)
class RamonOrganelle(RamonObject):
    """An organelle (type 6): mitochondria, vesicle, ..."""

    TYPE: ClassVar[str] = "organelle"
    organelleclass: int = 0
    parentseed: int = 0
    seeds: list = field(default_factory=list)
    centroid: list = field(default_factory=list)
    segment: int = 0


@dataclass(repr=False)
class RamonAttributedRegion(RamonObject):
    """An attributed region (CAJAL type 7): common fields only; ndstore never had it."""

    TYPE: ClassVar[str] = "attributedregion"


@dataclass(repr=False)
class RamonVolume(RamonObject):
    """ndio's in-memory holder of a cutout (``voxels``); no store keeps it as metadata."""

    TYPE: ClassVar[str] = "volume"


@dataclass(repr=False)
class RamonNode(RamonObject):
    """A skeleton node (ndstore type 7): location, radius, parent node and skeleton."""

    TYPE: ClassVar[str] = "node"
    nodetype: int = 0
    location: list = field(default_factory=list)
    parent: int = 0
    skeleton: int = 0
    radius: float = 0.0
    children: list = field(default_factory=list)


@dataclass(repr=False)
class RamonSkeleton(RamonObject):
    """A skeleton (ndstore type 8): its kind and root node."""

    TYPE: ClassVar[str] = "skeleton"
    skeletontype: int = 0
    rootnode: int = 0


@dataclass(repr=False)
class RamonROI(RamonObject):
    """A region of interest (ndstore type 9, v1.1+): its parent and children."""

    TYPE: ClassVar[str] = "roi"
    parent: int = 0
    children: list = field(default_factory=list)


CLASSES: dict[str, type[RamonObject]] = {c.TYPE: c for c in (
    RamonGeneric, RamonSynapse, RamonSeed, RamonSegment, RamonNeuron, RamonOrganelle, RamonAttributedRegion,
    RamonVolume, RamonNode, RamonSkeleton, RamonROI)}
assert tuple(CLASSES) == TYPES
for _cls in CLASSES.values():  # every class carries exactly the fields of the spec, in order
    assert tuple(f.name for f in fields(_cls)) == tuple(n for n, _ in FIELDS[_cls.TYPE]), _cls


def type_name(value) -> str:
    """The ndfs type name from a name (any case; ``annotation`` = generic), a RamonObject class, or a
    type number 1..6 (ndio/CAJAL and ndstore agree there; above 6 they differ, so use names)."""
    if isinstance(value, type) and issubclass(value, RamonObject):
        return value.TYPE
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        shared = {n: name for name, n in CAJAL_TYPES.items() if n <= 6}
        if int(value) not in shared:
            raise InvalidAnnotation(f"RAMON type number {value} is ambiguous or unknown: numbers above 6 differ "
                                    "between ndio and ndstore; give the type's name")
        return shared[int(value)]
    if not isinstance(value, str):
        raise InvalidAnnotation(f"a RAMON type is a name ({', '.join(TYPES)}), got {value!r}")
    name = value.strip().lower()
    if name == "annotation":
        name = "generic"
    if name not in CLASSES:
        raise InvalidAnnotation(f"unknown RAMON type {value!r} (known: {', '.join(TYPES)})")
    return name


def make(type_: str, **values) -> RamonObject:
    """A new object of the named type with the given field values (validated)."""
    cls = CLASSES[type_name(type_)]
    known = {n for n, _ in cls.field_kinds()}
    unknown = set(values) - known
    if unknown:
        raise InvalidAnnotation(f"RAMON {cls.TYPE} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**values).validate()
