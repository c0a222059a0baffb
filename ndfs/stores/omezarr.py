"""OME-Zarr images, their labels, and plain zarr arrays as a remote (kind ``zarr``).

What a location can hold, and what it shows as:

- an OME-Zarr multiscale image (NGFF 0.4 on zarr v2: ``.zattrs`` ``multiscales``; 0.5 on zarr v3:
  ``zarr.json`` ``attributes.ome.multiscales``): a channel whose levels are the ``datasets`` in order.
  Axes are found by name (``z``, ``y``, ``x``; an image without ``z`` has one plane); each level's
  ``scale`` gives the voxel size, converted to nm from the space axes' ``unit`` (a missing unit is
  taken as nm), and its ``translation`` divided by the scale gives the level's offset in voxels.
  Transformations of the whole multiscale apply on top. An image with a channel or time axis of more
  than one element is a folder of channels: one per channel (named by ``omero`` channel labels when
  they are distinct names, else ``c0``, ``c1``...) and time point (``t0``...), joined with ``-``.
- an image with a ``labels`` group: a folder holding the image as ``image`` (or its channels) and
  ``labels/`` with one annotation channel per label image the group lists.
- a label image (``image-label`` metadata) of unsigned integers: an annotation channel whose RAMON
  objects are the ``label-value`` entries of its ``properties`` (the other keys as kv pairs).
- a plain zarr array (v2 or v3) of two or three dimensions: a channel of one level, axes z, y, x,
  voxel size 1 nm, offset 0.

Chunks (for a sharded v3 array, the chunks inside the shards) are the levels' chunk shapes. Voxels go
through tensorstore's ``zarr`` and ``zarr3`` drivers; chunks absent from the store read as the array's
fill value. Writes go to unsharded arrays on storage that takes writes; each chunk is written whole and
the outbox journal in front of the remote replays a write a crash interrupted, so a write's chunks end
all new. Sharded arrays are read-only (EROFS): ndfs never rewrites part of a shard. N5 is not read.
Thread-safe; no I/O in ``__init__``.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np

from ndfs.core.errors import BackendError
from ndfs.core.info import LevelInfo, VolumeInfo
from ndfs.formats.ngff import zarray_v2, zattrs_v04
from ndfs.stores.dataset import DatasetBackend, Found, Meta, Segments
from ndfs.stores.tstore import ArrayLevel, Location

#: nanometres per unit of the NGFF space axis units (and their common abbreviations)
UNITS_NM = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "micron": 1e3, "um": 1e3, "µm": 1e3,
            "millimeter": 1e6, "mm": 1e6, "centimeter": 1e7, "meter": 1e9, "m": 1e9, "angstrom": 0.1,
            "picometer": 1e-3, "femtometer": 1e-6, "kilometer": 1e12}
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def read_node(loc: Location, stamps: dict | None = None) -> tuple[int, str, dict, dict] | None:
    """(zarr format, "group" or "array", attributes, array metadata) of the zarr node at ``loc``, or None.
    ``stamps``: filled with the state of each metadata file read (:meth:`Location.read_stamped`)."""
    v3 = loc.read_json("zarr.json", stamps=stamps)
    if v3 is not None:
        kind = v3.get("node_type")
        attrs = v3.get("attributes") or {}
        if isinstance(attrs.get("ome"), dict):
            attrs = {**attrs, **attrs["ome"]}
        return 3, kind, attrs, v3 if kind == "array" else {}
    attrs = loc.read_json(".zattrs", stamps=stamps) or {}
    array = loc.read_json(".zarray", stamps=stamps)
    if array is not None:
        return 2, "array", attrs, array
    if loc.read_json(".zgroup") is not None or attrs:
        return 2, "group", attrs, {}
    return None


def _meta(loc: Location, fmt: int, kind: str, stamps: dict) -> Meta:
    """The file a node's description is checked by: ``zarr.json`` (v3), an array's ``.zarray``, a group's
    ``.zattrs`` (v2: where an OME-Zarr image keeps its multiscales and labels)."""
    key = "zarr.json" if fmt == 3 else ".zarray" if kind == "array" else ".zattrs"
    return Meta(loc, key, stamps.get(key))


def array_geometry(fmt: int, meta: dict) -> tuple[tuple[int, ...], np.dtype, tuple[int, ...], bool]:
    """(shape, dtype, chunk shape read at once, sharded) of zarr array metadata."""
    try:
        shape = tuple(int(s) for s in meta["shape"])
        if fmt == 2:
            return shape, np.dtype(meta["dtype"]).newbyteorder("="), tuple(int(c) for c in meta["chunks"]), False
        dtype = np.dtype(meta["data_type"])
        chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        for codec in meta.get("codecs", []):
            if codec.get("name") == "sharding_indexed":
                return shape, dtype, tuple(int(c) for c in codec["configuration"]["chunk_shape"]), True
        return shape, dtype, chunks, False
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"zarr array metadata is not usable: {exc!r}") from exc


def _axes(ms: dict, ndim: int) -> tuple[list[str], list[str], list[str | None]]:
    """Axis names, types and units of a multiscale (older versions: t, c, z, y, x)."""
    raw = ms.get("axes") or ["t", "c", "z", "y", "x"][-ndim:]
    names, types, units = [], [], []
    for a in raw:
        if isinstance(a, dict):
            names.append(str(a.get("name")))
            types.append(str(a.get("type") or ("space" if a.get("name") in ("x", "y", "z") else "")))
            units.append(a.get("unit"))
        else:
            names.append(str(a))
            types.append("space" if a in ("x", "y", "z") else "channel" if a == "c" else "time" if a == "t" else "")
            units.append(None)
    return names, types, units


def _transforms(items) -> tuple[list[float] | None, list[float] | None]:
    scale = translation = None
    for t in items or []:
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            translation = [float(v) for v in t["translation"]]
    return scale, translation


def _channel_names(attrs: dict, n: int) -> list[str]:
    labels = [c.get("label") for c in ((attrs.get("omero") or {}).get("channels") or []) if isinstance(c, dict)]
    if len(labels) == n and all(isinstance(s, str) and _SAFE.match(s) for s in labels) and len(set(labels)) == n:
        return labels
    return [f"c{i}" for i in range(n)]


def parse_image(attrs: dict, loc: Location, name: str, fmt: int, source: Meta | None = None) -> Found:
    """The channel (or folder of channels) an OME-Zarr multiscale image describes (``source``: the state of
    the image's metadata file it was read in, shared by its channels)."""
    try:
        ms = attrs["multiscales"][0]
        datasets = ms["datasets"]
        arrays = []
        for ds in datasets:
            node = read_node(loc.join(ds["path"]))
            if node is None or node[1] != "array":
                raise BackendError(f"dataset {ds['path']} of OME-Zarr image {loc!r} is not a zarr array")
            arrays.append(node)
        names, types, units = _axes(ms, len(arrays[0][3]["shape"]))
        space = {n: i for i, n in enumerate(names) if n in ("z", "y", "x")}
        if "y" not in space or "x" not in space:
            raise BackendError(f"OME-Zarr image {loc!r} has no y and x axes (axes: {names})")
        g_scale, g_trans = _transforms(ms.get("coordinateTransformations"))
        levels, geometry = [], []
        for ds, (afmt, _, _, meta) in zip(datasets, arrays):
            shape, dtype, chunks, sharded = array_geometry(afmt, meta)
            if len(shape) != len(names):
                raise BackendError(f"dataset {ds['path']} has {len(shape)} dimensions for {len(names)} axes")
            scale, trans = _transforms(ds.get("coordinateTransformations"))
            scale = scale or [1.0] * len(names)
            trans = trans or [0.0] * len(names)
            if g_scale:
                trans = [t * g for t, g in zip(trans, g_scale)]
                scale = [s * g for s, g in zip(scale, g_scale)]
            if g_trans:
                trans = [t + g for t, g in zip(trans, g_trans)]
            zyx_shape, zyx_off, zyx_vs, zyx_chunk = [], [], [], []
            for axis in "zyx":
                i = space.get(axis)
                if i is None:
                    zyx_shape.append(1), zyx_off.append(0), zyx_vs.append(1.0), zyx_chunk.append(1)
                    continue
                nm = UNITS_NM.get(str(units[i]).lower(), 1.0) if units[i] else 1.0
                zyx_shape.append(shape[i])
                zyx_off.append(int(round(trans[i] / scale[i])) if scale[i] else 0)
                zyx_vs.append(scale[i] * nm)
                zyx_chunk.append(chunks[i])
            lv = LevelInfo(shape=tuple(zyx_shape), offset=tuple(zyx_off), voxel_size_nm=tuple(zyx_vs),
                           chunk_shape=tuple(zyx_chunk))
            levels.append(lv)
            geometry.append((ds["path"], afmt, shape, sharded, lv))
        dtype = array_geometry(arrays[0][0], arrays[0][3])[1]
        label = attrs.get("image-label")
        kind = "annotation" if isinstance(label, dict) and dtype.kind == "u" else "image"
        info = VolumeInfo(dtype=dtype, kind=kind, levels=tuple(levels),
                          extra={"format": f"ome-zarr {attrs.get('version') or ms.get('version') or ''}".strip()})
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BackendError(f"the multiscales of OME-Zarr image {loc!r} are not usable: {exc!r}") from exc
    other = [i for i, n in enumerate(names) if n not in ("z", "y", "x")]
    sizes = [geometry[0][2][i] for i in other]
    choices = list(itertools.product(*(range(s) for s in sizes)))
    segments = LabelSegments(label) if kind == "annotation" else None

    def found(fixed: dict[int, int]) -> Found:
        levels_ = []
        for path, afmt, shape, sharded, lv in geometry:
            levels_.append(ArrayLevel(
                spec={"driver": "zarr3" if afmt == 3 else "zarr", "kvstore": loc.join(path).kvstore()},
                axes=tuple(names), fixed=fixed, origin=(0, 0, 0), info=lv, sharded=sharded,
                read_only=(f"level {path} of OME-Zarr image {name} is sharded: ndfs never rewrites part of a "
                           "shard, so it is read-only") if sharded else None))
        return Found(info=info, levels=levels_, segments=segments, location=loc, meta=source)

    if len(choices) == 1:
        return found({i: 0 for i in other})
    parts = []
    for i, size in zip(other, sizes):
        if types[i] == "channel" or names[i] == "c":
            parts.append(_channel_names(attrs, size))
        else:
            parts.append([f"{names[i]}{k}" for k in range(size)])
    entries = {"-".join(p[k] for p, k in zip(parts, pick)): found(dict(zip(other, pick))) for pick in choices}
    return Found(entries=entries, location=loc, meta=source)


class LabelSegments(Segments):
    """The objects an OME-Zarr label image lists in its ``image-label`` ``properties``."""

    def __init__(self, label: dict):
        from ndfs.ramon.types import RESERVED_KV_PREFIXES

        self._props: dict[int, dict[str, str]] = {}
        for entry in label.get("properties") or []:
            if not isinstance(entry, dict) or "label-value" not in entry:
                continue
            kv = {}
            for k, v in entry.items():
                if k == "label-value":
                    continue
                key = "property_" + k if k.lower().startswith(RESERVED_KV_PREFIXES) else k
                kv[key] = v if isinstance(v, str) else json.dumps(v)
            try:
                self._props[int(entry["label-value"])] = kv
            except (TypeError, ValueError):
                continue

    def ids(self) -> list[int]:
        return sorted(i for i in self._props if i > 0)

    def properties(self, id: int) -> dict[str, str] | None:
        found = self._props.get(id)
        return None if found is None else dict(found)


class ZarrBackend(DatasetBackend):
    """OME-Zarr images, labels and zarr arrays at a path or URL (see the module doc). Thread-safe."""

    kind = "zarr"
    format_name = "zarr"

    def _probe(self, loc: Location, name: str) -> Found | None:
        stamps: dict = {}
        node = read_node(loc, stamps)
        if node is None:
            return None
        fmt, kind, attrs, meta = node
        if kind == "array":
            return self._plain_array(loc, fmt, meta, name, _meta(loc, fmt, kind, stamps))
        if "multiscales" in attrs:
            image = parse_image(attrs, loc, name, fmt, _meta(loc, fmt, kind, stamps))
            labels = read_node(loc.join("labels"))
            listed = labels[2].get("labels") if labels is not None and labels[1] == "group" else None
            if not listed:
                return image
            entries = dict(image.entries) if image.entries is not None else {"image": image}
            entries["labels"] = Found(entries={str(n): loc.join("labels").join(str(n)) for n in listed
                                               if _SAFE.match(str(n))}, location=loc.join("labels"))
            return Found(entries=entries, location=loc)
        if isinstance(attrs.get("labels"), list):
            return Found(entries={str(n): loc.join(str(n)) for n in attrs["labels"] if _SAFE.match(str(n))},
                         location=loc)
        return None  # a plain group: a folder, listed from the disk or named by layers = [...]

    def _create(self, loc: Location, info: VolumeInfo) -> None:
        """An OME-Zarr 0.4 image on zarr v2 (read by Fiji, napari, neuroglancer): arrays ``0``, ``1``... with
        blosc-compressed chunks and ``/`` as dimension separator; ``.zattrs`` is written last."""
        loc.write(".zgroup", b'{"zarr_format": 2}')
        blosc = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}
        for i in range(len(info.levels)):
            loc.join(str(i)).write(".zarray", json.dumps(zarray_v2(info, i, blosc), indent=1).encode())
        attrs = zattrs_v04(loc.name, info, is_label=info.kind == "annotation")
        loc.write(".zattrs", json.dumps(attrs, indent=1).encode())

    @staticmethod
    def _plain_array(loc: Location, fmt: int, meta: dict, name: str, stamp: Meta | None = None) -> Found:
        shape, dtype, chunks, sharded = array_geometry(fmt, meta)
        if len(shape) not in (2, 3):
            raise BackendError(f"zarr array {loc!r} has {len(shape)} dimensions; ndfs shows arrays of 2 or 3 "
                               "(z, y, x) and OME-Zarr images")
        axes = ("z", "y", "x")[-len(shape):]
        full = (1,) * (3 - len(shape))
        lv = LevelInfo(shape=full + shape, offset=(0, 0, 0), voxel_size_nm=(1.0, 1.0, 1.0), chunk_shape=full + chunks)
        level = ArrayLevel(spec={"driver": "zarr3" if fmt == 3 else "zarr", "kvstore": loc.kvstore()}, axes=axes,
                           fixed={}, origin=(0, 0, 0), info=lv, sharded=sharded,
                           read_only=f"zarr array {name} is sharded: read-only" if sharded else None)
        return Found(info=VolumeInfo(dtype=dtype, kind="image", levels=(lv,), extra={"format": f"zarr v{fmt}"}),
                     levels=[level], location=loc, meta=stamp)


__all__ = ["ZarrBackend", "parse_image", "read_node", "array_geometry"]
