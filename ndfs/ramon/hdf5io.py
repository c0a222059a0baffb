"""RAMON objects as HDF5: the legacy NeuroData layout and ndfs's clean file layout.

**Legacy** (``specs/ramon.md`` 5C; the body of a RAMON POST and of HDF5
replies): one top-level group per object named by its decimal id, holding
``ANNOTATION_TYPE`` u32[1] (ndstore numbers), optional ``RESOLUTION``,
``XYZOFFSET`` (absolute x,y,z), ``XYZDIMENSION``, ``CUTOUT`` (Z,Y,X) and
``VOXELS`` (N x [x,y,z]), and ``METADATA/`` with ``AUTHOR``, ``CONFIDENCE``,
``STATUS``, ``KVPAIRS`` (CSV text, one ``key,value`` row per pair) and the
type's fields upper-cased. ids are uint32 here. What ndio 1.1.5 writes
(``float64`` scalars, KVPAIRS from Python's csv writer, ``SEGMENTS`` of a
neuron or synapse) reads back; vlen strings read as bytes under h5py 3 are
decoded.

**ndfs** (``layout="ndfs"``): a root attribute ``ndfs_ramon = 1`` and one
group per id whose attributes are the ndfs field names with their natural
types (``type`` as a string, id lists as uint64 arrays, points as arrays),
kvpairs as the attributes of a ``kvpairs`` subgroup, ``bbox`` as a subgroup
with ``level`` and ZYX ``start``/``stop``, and attached voxels as a ``voxels``
dataset (ZYX) with ``level`` and ``offset`` (ZYX) attributes. Lossless for
every type, uint64 ids included.

h5py is imported when first needed (the ``neurodata`` extra). Pure
functions, thread-safe.
"""

from __future__ import annotations

import contextlib
import csv
import io
from typing import Iterable

import numpy as np

from ndfs.core.errors import BadInput, InvalidAnnotation
from ndfs.core.geometry import Box
from ndfs.ramon.jsonio import LEGACY_KEYS
from ndfs.ramon.types import CLASSES, CODECS, MAX_ID, MAX_UINT32, NDSTORE_TYPES, RamonObject, Voxels

NDSTORE_NAMES = {v: k for k, v in NDSTORE_TYPES.items()}
LAYOUTS = ("legacy", "ndfs")
#: the most voxel bytes a RAMON HDF5 file read here may declare (all its datasets together)
MAX_HDF5_BYTES = 2**30


def h5py():
    try:
        import h5py as module
    except ImportError:
        raise InvalidAnnotation("RAMON HDF5 needs h5py: pip install 'ndfs[neurodata]'") from None
    return module


@contextlib.contextmanager
def _open(data: bytes, max_bytes: int):
    """The file, checked whole by :func:`ndfs.formats.safe.open_hdf5` first: nothing outside
    ``data`` is read, and its datasets declare at most ``max_bytes``."""
    from ndfs.formats import safe

    h5py()  # the RAMON extra's message when h5py is missing
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(safe.open_hdf5(data, "the RAMON HDF5 file", max_bytes=max_bytes))
        except BadInput as exc:
            raise InvalidAnnotation(str(exc)) from None
        yield f


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _kv_csv(kvpairs: dict[str, str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(kvpairs.items())
    return out.getvalue()


def _kv_parse(text: str) -> dict[str, str]:
    pairs = {}
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if len(row) != 2:
            raise InvalidAnnotation(f"KVPAIRS row {row!r} is not key,value")
        pairs[row[0]] = row[1]
    return pairs


def legacy_key(type_: str, name: str) -> str:
    return LEGACY_KEYS.get((type_, name), name).upper()


# ---- write -------------------------------------------------------------------
def to_hdf5(objs: Iterable[RamonObject], layout: str = "ndfs") -> bytes:
    """An HDF5 file (as bytes) holding the objects, with their ``voxels`` when attached."""
    if layout not in LAYOUTS:
        raise InvalidAnnotation(f"RAMON HDF5 layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    buf = io.BytesIO()
    with h5py().File(buf, "w") as f:
        if layout == "ndfs":
            f.attrs["ndfs_ramon"] = 1
        for obj in objs:
            obj = obj.copy().validate(max_id=MAX_UINT32 if layout == "legacy" else MAX_ID)
            if str(obj.id) in f:
                raise InvalidAnnotation(f"two objects with id {obj.id} in one HDF5 file")
            (_write_legacy if layout == "legacy" else _write_ndfs)(f.create_group(str(obj.id)), obj)
    return buf.getvalue()


def _write_legacy(g, obj: RamonObject) -> None:
    h = h5py()
    if obj.TYPE not in NDSTORE_TYPES:
        raise InvalidAnnotation(f"RAMON {obj.TYPE} has no NeuroData type number and cannot be sent there")
    g.create_dataset("ANNOTATION_TYPE", data=np.array([NDSTORE_TYPES[obj.TYPE]], np.uint32))
    if obj.voxels is not None:
        v = obj.voxels
        g.create_dataset("RESOLUTION", data=np.array([v.level], np.uint32))
        g.create_dataset("XYZOFFSET", data=np.array(v.offset[::-1], np.uint32))
        g.create_dataset("CUTOUT", data=np.ascontiguousarray(v.array), compression="gzip")
    if obj.bbox is not None:
        level, box = obj.bbox
        if "RESOLUTION" not in g:
            g.create_dataset("RESOLUTION", data=np.array([level], np.uint32))
        if "XYZOFFSET" not in g:
            g.create_dataset("XYZOFFSET", data=np.array(box.start[::-1], np.uint32))
        g.create_dataset("XYZDIMENSION", data=np.array(box.shape[::-1], np.uint32))
    md = g.create_group("METADATA")
    vlen = h.string_dtype()
    md.create_dataset("AUTHOR", data=np.array([obj.author], dtype=object), dtype=vlen)
    md.create_dataset("CONFIDENCE", data=np.array([obj.confidence], np.float64))
    md.create_dataset("STATUS", data=np.array([obj.status], np.uint32))
    md.create_dataset("KVPAIRS", data=np.array([_kv_csv(obj.kvpairs)], dtype=object), dtype=vlen)
    for name, kind in obj.field_kinds()[5:]:
        value = getattr(obj, name)
        key = legacy_key(obj.TYPE, name)
        if kind in ("id", "enum"):
            md.create_dataset(key, data=np.array([value], np.uint32))
        elif kind == "int":
            md.create_dataset(key, data=np.array([value], np.int32))
        elif kind == "float":
            md.create_dataset(key, data=np.array([value], np.float64))
        elif kind == "ids":
            md.create_dataset(key, data=np.array(value, np.uint32).reshape(-1))
        elif kind == "point" and value:
            md.create_dataset(key, data=np.array(value, np.int64))
        elif kind == "fpoint" and value:
            md.create_dataset(key, data=np.array(value, np.float64))


def _write_ndfs(g, obj: RamonObject) -> None:
    g.attrs["type"] = obj.TYPE
    for name, kind in obj.field_kinds():
        value = getattr(obj, name)
        if kind == "kv":
            kv = g.create_group("kvpairs")
            for k, v in value.items():
                kv.attrs[k] = v
        elif kind == "ids":
            g.attrs[name] = np.array(value, np.uint64).reshape(-1)
        elif kind == "point":
            g.attrs[name] = np.array(value, np.int64).reshape(-1)
        elif kind == "fpoint":
            g.attrs[name] = np.array(value, np.float64).reshape(-1)
        elif kind in ("id",):
            g.attrs[name] = np.uint64(value)
        elif kind in ("enum", "int"):
            g.attrs[name] = np.int64(value)
        elif kind in ("unit", "float"):
            g.attrs[name] = np.float64(value)
        else:
            g.attrs[name] = value
    if obj.bbox is not None:
        level, box = obj.bbox
        b = g.create_group("bbox")
        b.attrs["level"] = np.int64(level)
        b.attrs["start"] = np.array(box.start, np.int64)
        b.attrs["stop"] = np.array(box.stop, np.int64)
    if obj.voxels is not None:
        d = g.create_dataset("voxels", data=np.ascontiguousarray(obj.voxels.array), compression="gzip")
        d.attrs["level"] = np.int64(obj.voxels.level)
        d.attrs["offset"] = np.array(obj.voxels.offset, np.int64)


# ---- read --------------------------------------------------------------------
def from_hdf5(data: bytes, *, layout: str | None = None, max_id: int = MAX_ID,
              max_bytes: int = MAX_HDF5_BYTES) -> list[RamonObject]:
    """The objects of an HDF5 file (bytes), in id order, with ``voxels``/``bbox`` where present.

    ``layout``: ``"legacy"``, ``"ndfs"`` or None to tell from the file. Groups that
    are not objects (``ANNOIDS`` of a query reply) are skipped. Legacy ``VOXELS``
    lists become a tight ``voxels`` cutout. ``max_bytes`` bounds what the file's datasets
    declare and the cutouts made from voxel lists; a file that reaches outside itself
    (external storage or links, virtual datasets, plugin filters) is refused.
    """
    with _open(data, max_bytes) as f:
        if layout is None:
            layout = "ndfs" if "ndfs_ramon" in f.attrs else "legacy"
        if layout not in LAYOUTS:
            raise InvalidAnnotation(f"RAMON HDF5 layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        out = []
        for key in sorted((k for k in f.keys() if k.isdigit()), key=int):
            g = f[key]
            if not isinstance(g, h5py().Group):
                continue
            try:
                if layout == "legacy":
                    obj = _read_legacy(key, g, max_id, max_bytes)
                else:
                    obj = _read_ndfs(key, g, max_id)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise InvalidAnnotation(f"RAMON object {key} in the HDF5 file is malformed: {exc}") from None
            out.append(obj)
        return out


def _scalar(ds):
    arr = np.asarray(ds[()])
    return arr.reshape(-1)[0] if arr.ndim else arr[()]


def _read_legacy(key: str, g, max_id: int, max_bytes: int) -> RamonObject:
    code = int(_scalar(g["ANNOTATION_TYPE"])) if "ANNOTATION_TYPE" in g else 1
    if code not in NDSTORE_NAMES:
        raise InvalidAnnotation(f"RAMON object {key}: unknown ANNOTATION_TYPE {code}")
    cls = CLASSES[NDSTORE_NAMES[code]]
    values: dict = {"id": int(key)}
    md = g["METADATA"] if "METADATA" in g else {}
    if "AUTHOR" in md:
        values["author"] = _text(md["AUTHOR"][()])
    if "CONFIDENCE" in md:
        values["confidence"] = float(_scalar(md["CONFIDENCE"]))
    if "STATUS" in md:
        values["status"] = int(_scalar(md["STATUS"]))
    if "KVPAIRS" in md:
        values["kvpairs"] = _kv_parse(_text(md["KVPAIRS"][()]))
    for name, kind in cls.field_kinds()[5:]:
        k = legacy_key(cls.TYPE, name)
        if k not in md:
            continue
        arr = np.asarray(md[k][()])
        if kind in ("ids", "point"):
            values[name] = [int(v) for v in arr.reshape(-1)]
        elif kind == "fpoint":
            values[name] = [float(v) for v in arr.reshape(-1)]
        elif kind in ("float",):
            values[name] = float(arr.reshape(-1)[0])
        else:
            values[name] = int(arr.reshape(-1)[0])
    obj = cls(**values).validate(max_id=max_id)
    level = int(_scalar(g["RESOLUTION"])) if "RESOLUTION" in g else 0
    xyz = [int(v) for v in np.asarray(g["XYZOFFSET"][()]).reshape(-1)] if "XYZOFFSET" in g else [0, 0, 0]
    if len(xyz) != 3:
        raise InvalidAnnotation(f"RAMON object {key}: XYZOFFSET needs 3 values")
    if "CUTOUT" in g:
        cut = np.asarray(g["CUTOUT"][()])
        if cut.ndim == 4 and cut.shape[0] == 1:
            cut = cut[0]
        obj.voxels = Voxels(cut, tuple(xyz[::-1]), level)
    elif "VOXELS" in g:
        pts = np.asarray(g["VOXELS"][()]).reshape(-1, 3).astype(np.int64)
        if len(pts):
            if (pts < 0).any():
                raise InvalidAnnotation(f"RAMON object {key}: negative VOXELS coordinates")
            lo, hi = pts.min(axis=0), pts.max(axis=0) + 1
            if int(np.prod((hi - lo).astype(object))) > max_bytes:
                raise InvalidAnnotation(f"RAMON object {key}: its VOXELS span {(hi - lo).tolist()} (x, y, z), "
                                        f"more than {max_bytes} voxels")
            cut = np.zeros(tuple((hi - lo)[::-1]), np.uint8)
            cut[pts[:, 2] - lo[2], pts[:, 1] - lo[1], pts[:, 0] - lo[0]] = 1
            obj.voxels = Voxels(cut, tuple(int(v) for v in lo[::-1]), level)
    if "XYZDIMENSION" in g and "CUTOUT" not in g:
        dim = [int(v) for v in np.asarray(g["XYZDIMENSION"][()]).reshape(-1)]
        obj.bbox = (level, Box.from_shape(dim[::-1], xyz[::-1]))
    return obj


def _read_ndfs(key: str, g, max_id: int) -> RamonObject:
    cls = CLASSES[_text(g.attrs["type"])]
    values: dict = {}
    for name, kind in cls.field_kinds():
        if kind == "kv":
            values[name] = {k: _text(v) for k, v in g["kvpairs"].attrs.items()} if "kvpairs" in g else {}
            continue
        if name not in g.attrs:
            continue
        raw = g.attrs[name]
        if kind in ("ids", "point"):
            values[name] = [int(v) for v in np.asarray(raw).reshape(-1)]
        elif kind == "fpoint":
            values[name] = [float(v) for v in np.asarray(raw).reshape(-1)]
        elif kind == "str":
            values[name] = _text(raw)
        elif kind in ("unit", "float"):
            values[name] = float(raw)
        else:
            values[name] = int(raw)
    if values.get("id", int(key)) != int(key):
        raise InvalidAnnotation(f"RAMON group {key} holds an object with id {values['id']}")
    obj = cls(**values).validate(max_id=max_id)
    if "bbox" in g:
        b = g["bbox"].attrs
        obj.bbox = (int(b["level"]), Box(tuple(int(v) for v in b["start"]), tuple(int(v) for v in b["stop"])))
    if "voxels" in g:
        d = g["voxels"]
        obj.voxels = Voxels(d[()], tuple(int(v) for v in d.attrs["offset"]), int(d.attrs["level"]))
    return obj


# ---- small replies of the RAMON service ----------------------------------------
def ids_hdf5(ids: Iterable[int]) -> bytes:
    """A query reply: top-level ``ANNOIDS`` u32[N], absent when there are none (as ndstore)."""
    ids = np.array(list(ids), dtype=np.uint64)
    buf = io.BytesIO()
    with h5py().File(buf, "w") as f:
        if len(ids):
            f.create_dataset("ANNOIDS", data=ids.astype(np.uint32) if ids.max() <= MAX_UINT32 else ids)
    return buf.getvalue()


def read_ids_hdf5(data: bytes, max_bytes: int = MAX_HDF5_BYTES) -> list[int]:
    """The ids of a query reply (``[]`` when ``ANNOIDS`` is absent)."""
    with _open(data, max_bytes) as f:
        if "ANNOIDS" not in f:
            return []
        return [int(v) for v in np.asarray(f["ANNOIDS"][()]).reshape(-1)]


CODECS.update(to_hdf5=to_hdf5, from_hdf5=from_hdf5)  # RamonObject's methods find these here
