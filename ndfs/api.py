"""Remotes in the spirit of ndio: objects that hold no data but fetch, post and describe it.

``ndfs.remote(...)`` opens any backend ``ndfs.stack.open_backend`` can build
(every kind in ``ndfs.core.config.REMOTE_KINDS``, so new kinds work here unchanged)
and wraps it in a :class:`Remote`:

* ``ndfs.remote("boss")``: a remote named in ``ndfs.toml``; ``ndfs.remote()``
  is the first one;
* ``ndfs.remote("boss+https://api.bossdb.io")``, ``ndfs.remote("dvid+http://127.0.0.1:8000")``:
  ``KIND+URL``; or the plain URL with ``kind=``: ``ndfs.remote("http://host:8080", kind="boss")``.
  Tokens come only from the environment: ``token_env="NDFS_BOSS_TOKEN"``;
* ``ndfs.remote("path/to/store")``, ``ndfs.remote("file:///abs/store")``: a local
  store directory (``create=True`` makes it);
* ``ndfs.remote(kind="synthetic", shape=[20000, 100000, 100000])``: voxels computed
  from coordinates, of any size (:mod:`ndfs.stores.synthetic`; options as in ``ndfs.toml``).

Remote calls take a *project* (the folders above a channel: a local project,
a BOSS ``collection/experiment``, a NeuroData token, a DVID repo) and a
*channel*, and accept ndio's spellings: ``x_start``/``x_stop`` ... and
``resolution`` (ndfs's ``level``), ``token=`` for the project, and ndio's
positional ``get_cutout(token, channel, x_start, x_stop, y_start, y_stop,
z_start, z_stop, resolution)``. Arrays are ZYX like every ndfs array;
``order="xyz"`` gives and takes ndio's axis order.

Volumes are reopened, never pickled, in other processes: :func:`source_of`
gives a picklable recipe (the remote's configuration without its token) and
:func:`open_source` reopens it once per process. Remote is thread-safe as far
as its backend is (all ndfs backends are).
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ndfs.stack import build
from ndfs.stores.base import AdminStore, Backend, VolumeRef, annotations, as_ref
from ndfs.core.errors import BadRegion, ConfigError, NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo

__all__ = ["Remote", "remote"]


# ---- opening -------------------------------------------------------------------
def remote(name_or_url: str | os.PathLike | Backend | None = None, *, kind: str | None = None,
           config=None, cache: bool | None = None, read_only: bool = False, token_env: str | None = None,
           create: bool = False, **options) -> "Remote":
    """Open a Remote: a configured name, ``KIND+URL`` (or a URL and ``kind=``), or a local store directory.

    ``options`` go to the backend as if they were in ``ndfs.toml`` (e.g. ``timeout_s=60``).
    ``cache`` defaults to the configuration's ``[cache] enabled``.
    """
    from ndfs.stores.http import mask_url
    from ndfs.core.config import DATASET_KINDS, REMOTE_KINDS, RemoteConfig, load_config

    if isinstance(name_or_url, Backend):
        return Remote(name_or_url, name=name_or_url.kind)
    cfg = config if config is not None else load_config()
    if kind is not None and kind not in REMOTE_KINDS:
        raise ConfigError(f"unknown remote kind {kind!r}; known kinds: {', '.join(REMOTE_KINDS)}")
    text = None if name_or_url is None else os.fspath(name_or_url)
    if text is None and kind == "synthetic":  # computed voxels: the options are its geometry
        rc = RemoteConfig(name="synthetic", kind="synthetic", options=dict(options))
    elif text is None or ("://" not in text and text in cfg.remotes):
        rc = cfg.remote(text)
        if kind is not None and kind != rc.kind:
            raise ConfigError(f"remote {rc.name!r} is of kind {rc.kind!r}, not {kind!r}")
        if read_only and not rc.read_only:
            rc = replace(rc, read_only=True)
        if options or token_env:
            rc = replace(rc, options={**rc.options, **options}, token_env=token_env or rc.token_env)
    elif "://" in text and _dataset_url(text, kind) is not None:
        url_kind, target = _dataset_url(text, kind)
        rc = RemoteConfig(name=url_kind, kind=url_kind, read_only=read_only, options=dict(options),
                          **({"url": target} if "://" in target else {"path": Path(target).expanduser().resolve()}))
    elif "://" not in text and kind in DATASET_KINDS:
        rc = RemoteConfig(name=kind, kind=kind, path=Path(text).expanduser().resolve(), read_only=read_only,
                          options=dict(options))
    elif "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme == "file":
            rc = _local_config(Path(rest), read_only, create)
        else:
            url_kind, _, proto = scheme.rpartition("+")
            if proto not in ("http", "https"):
                raise ConfigError(f"{mask_url(text)!r}: use KIND+http://HOST or KIND+https://HOST "
                                  f"(kinds: {', '.join(REMOTE_KINDS)}), or a URL with kind=")
            if url_kind and kind and url_kind != kind:
                raise ConfigError(f"{mask_url(text)!r} names kind {url_kind!r} but kind={kind!r} was given")
            url_kind = url_kind or kind
            if not url_kind:
                raise ConfigError(f"which kind of service is {mask_url(text)!r}? give kind= "
                                  f"({', '.join(REMOTE_KINDS)}) or write it as KIND+{mask_url(text)}")
            if url_kind not in REMOTE_KINDS:
                raise ConfigError(f"unknown remote kind {url_kind!r}; known kinds: {', '.join(REMOTE_KINDS)}")
            if url_kind == "local":
                raise ConfigError("a local store is a directory, not a URL")
            rc = RemoteConfig(name=url_kind, kind=url_kind, url=f"{proto}://{rest}", token_env=token_env,
                              read_only=read_only, options=dict(options))
    elif kind in (None, "local") and (kind == "local" or create or os.sep in text or text.startswith((".", "~"))
                                      or Path(text).is_dir()):
        rc = _local_config(Path(text), read_only, create)
    else:
        raise NotFound(f"no remote named {text!r} (configured: {', '.join(cfg.remotes) or 'none'}); "
                       "give a configured name, a URL like 'boss+https://api.bossdb.io', or a store directory")
    if rc.kind == "local" and options:
        raise ConfigError(f"a local store takes no options (got {', '.join(options)})")
    use_cache = cfg.cache.enabled if cache is None else bool(cache)
    backend = build(rc, cfg.cache if use_cache else None, cfg.write)
    return Remote(backend, name=rc.name)


#: neuroglancer's data source prefixes and the remote kinds they name
_NEUROGLANCER_PREFIXES = {"precomputed": "precomputed", "zarr": "zarr", "zarr2": "zarr", "zarr3": "zarr"}


def _dataset_url(text: str, kind: str | None) -> tuple[str, str] | None:
    """(kind, path or URL) of a dataset remote written ``precomputed://URL`` (neuroglancer's way),
    ``precomputed+https://...`` (or ``+file``, ``+gs``, ``+s3``, ``+http``), or a URL with
    ``kind="precomputed"``/``"zarr"``; None for anything else."""
    from ndfs.core.config import DATASET_KINDS, DATASET_SCHEMES

    scheme, rest = text.split("://", 1)
    if scheme in _NEUROGLANCER_PREFIXES:
        named = _NEUROGLANCER_PREFIXES[scheme]
        if kind is not None and kind != named:
            raise ConfigError(f"{scheme}:// names kind {named!r} but kind={kind!r} was given")
        return named, rest
    url_kind, _, proto = scheme.rpartition("+")
    url_kind = url_kind or kind
    if url_kind not in DATASET_KINDS:
        return None
    if kind is not None and kind != url_kind:
        raise ConfigError(f"{scheme}:// names kind {url_kind!r} but kind={kind!r} was given")
    if f"{proto}://" not in DATASET_SCHEMES:
        raise ConfigError(f"a {url_kind} remote is a path or a {', '.join(DATASET_SCHEMES)} URL, not {proto}://")
    return url_kind, f"{proto}://{rest}"


def _local_config(path: Path, read_only: bool, create: bool):
    from ndfs.core.config import RemoteConfig

    path = path.expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise NotFound(f"store directory {path} does not exist (create=True makes it)")
    return RemoteConfig(name=path.name or "local", kind="local", path=path, read_only=read_only)


# ---- region arguments ----------------------------------------------------------
def _pair(value, axis: str):
    if value is None:
        return None, None
    if isinstance(value, slice):
        if value.step not in (None, 1):
            raise BadRegion(f"{axis}: steps are not supported")
        return value.start, value.stop
    if isinstance(value, (int, np.integer)):
        return int(value), int(value) + 1
    try:
        a, b = value
    except (TypeError, ValueError):
        raise BadRegion(f"{axis} must be a (start, stop) pair, got {value!r}") from None
    return a, b


def _int(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadRegion(f"{what} must be an integer, got {value!r}")
    return int(value)


def _level(level, resolution) -> int:
    if level is not None and resolution is not None and int(level) != int(resolution):
        raise BadRegion(f"level={level} and resolution={resolution} disagree (they are the same thing)")
    chosen = level if level is not None else resolution
    return 0 if chosen is None else _int(chosen, "level")


def region(info: VolumeInfo, level: int, x=None, y=None, z=None, **ends) -> Box:
    """The box named by ``x``/``y``/``z`` pairs and/or ndio's ``x_start``... keywords; missing = whole axis."""
    lv = info.level(level)
    start, stop = [], []
    for i, axis in enumerate("zyx"):
        a, b = _pair({"x": x, "y": y, "z": z}[axis], axis)
        sa, sb = ends.get(f"{axis}_start"), ends.get(f"{axis}_stop")
        if (sa is not None and a is not None) or (sb is not None and b is not None):
            raise BadRegion(f"give {axis}=(start, stop) or {axis}_start/{axis}_stop, not both")
        a = _int(sa if sa is not None else a, f"{axis}_start")
        b = _int(sb if sb is not None else b, f"{axis}_stop")
        lo, hi = lv.box.start[i], lv.box.stop[i]
        a, b = lo if a is None else a, hi if b is None else b
        if not lo <= a <= b <= hi:
            raise BadRegion(f"{axis} {a}:{b} is outside {lo}:{hi} at level {level}")
        start.append(a)
        stop.append(b)
    return Box(tuple(start), tuple(stop))


_ENDS = tuple(f"{a}_{e}" for a in "xyz" for e in ("start", "stop"))


def _positional(args: tuple, what: str) -> dict:
    """ndio's positional forms: (x, y, z[, level]) pairs or (x0, x1, y0, y1, z0, z1[, resolution]) ints."""
    if not args:
        return {}
    if len(args) in (3, 4) and not isinstance(args[0], (int, np.integer)):
        out = dict(zip(("x", "y", "z", "level"), args))
        return out
    if len(args) in (6, 7):
        return dict(zip(_ENDS + ("resolution",), args))
    raise BadRegion(f"{what} takes (x, y, z[, level]) ranges or x_start, x_stop, y_start, y_stop, z_start, z_stop"
                    f"[, resolution]; got {len(args)} positional values")


def _order(order: str) -> str:
    if order not in ("zyx", "xyz"):
        raise BadRegion(f"order must be 'zyx' (ndfs, numpy) or 'xyz' (ndio), got {order!r}")
    return order


# ---- the Remote ------------------------------------------------------------------
class Remote:
    """A datastore handle holding no data: listing, info, cutouts in and out, volumes, RAMON.

    ``backend`` is what voxel calls go through (normally the chunk cache over
    the service's driver). Thread-safe.
    """

    def __init__(self, backend: Backend, name: str | None = None):
        self.backend = backend
        self.name = name or backend.kind

    def __repr__(self) -> str:
        return f"Remote({self.name!r}, kind={self.kind!r})"

    @property
    def kind(self) -> str:
        return getattr(self.raw, "kind", self.backend.kind)

    @property
    def raw(self) -> Backend:
        """The service's own driver, under the cache and the outbox."""
        from ndfs.stores.wrap import layers

        return list(layers(self.backend))[-1]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- names -----------------------------------------------------------
    @staticmethod
    def _ref(project, channel=None) -> VolumeRef:
        if project is None and channel is None:
            raise BadRegion("name a channel: project and channel, or a path like 'project/channel'")
        parts = []
        for part in (project, channel):
            if part is not None:
                parts.extend(as_ref(str(part)) if isinstance(part, str) else as_ref(part))
        return tuple(parts)

    # ---- listing and metadata ----------------------------------------------
    def list(self, path: str | Sequence[str] = "") -> list[str]:
        """Names below a folder of the service's hierarchy ('' is the top)."""
        return self.backend.children(as_ref(path))

    def list_projects(self) -> list[str]:
        """The top of the hierarchy (local projects, BOSS collections, NeuroData tokens, DVID repos)."""
        return self.list("")

    def get_channels(self, project) -> dict[str, VolumeInfo]:
        """The channels directly inside a project folder, with their info."""
        ref = self._ref(project)
        return {name: self.backend.info(ref + (name,)) for name in self.backend.children(ref)
                if self.backend.is_volume(ref + (name,))}

    def get_info(self, project=None, channel=None, *, token=None) -> VolumeInfo:
        """A channel's VolumeInfo (shape, dtype, levels, voxel size, offset, kind)."""
        return self.backend.info(self._ref(token if project is None else project, channel))

    def volume(self, project, channel=None, level: int = 0):
        """The channel as a numpy-sliceable :class:`ndfs.volume.Volume` at ``level``."""
        from ndfs.volume import Volume

        return Volume(self.backend, self._ref(project, channel), level)

    def __getitem__(self, path: str):
        return self.volume(path)

    # ---- voxels ----------------------------------------------------------
    def get_cutout(self, project=None, channel=None, *args, token=None, x=None, y=None, z=None,
                   level=None, resolution=None, box: Box | None = None, order: str = "zyx", **ends) -> np.ndarray:
        """A box of a channel as a numpy array (ZYX unless ``order="xyz"``); missing ranges mean the whole axis.

        ``get_cutout("demo", "em", x=(0, 512), y=(0, 512), z=(10, 20), level=0)``, ndio's
        ``get_cutout(token="demo", channel="em", x_start=0, x_stop=512, ..., resolution=0)``
        and ``get_cutout("demo", "em", 0, 512, 0, 512, 10, 20, 0)`` are the same call.
        """
        pos = _positional(args, "get_cutout")
        unknown = set(ends) - set(_ENDS)
        if unknown:
            raise TypeError(f"get_cutout() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        given = {"x": x, "y": y, "z": z, "level": level, "resolution": resolution, **ends}
        clash = [k for k in pos if given.get(k) is not None]
        if clash:
            raise BadRegion(f"{', '.join(clash)} given both positionally and by keyword")
        given.update(pos)
        level = _level(given.pop("level"), given.pop("resolution"))
        ref = self._ref(token if project is None else project, channel)
        info = self.backend.info(ref)
        if box is None:
            box = region(info, level, **{k: v for k, v in given.items() if v is not None})
        out = self.backend.read(ref, box, level)
        return out.transpose() if _order(order) == "xyz" else out

    def get_xy_slice(self, project, channel, x_start, x_stop, y_start, y_stop, z_index, resolution=0) -> np.ndarray:
        """One z plane as a 2-D (y, x) array (ndio's ``get_xy_slice``/``get_image``)."""
        return self.get_cutout(project, channel, x=(x_start, x_stop), y=(y_start, y_stop),
                               z=(z_index, z_index + 1), level=resolution)[0]

    get_image = get_xy_slice

    def post_cutout(self, project=None, channel=None, *args, data=None, token=None, x_start=None, y_start=None,
                    z_start=None, level=None, resolution=None, order: str = "zyx") -> Box:
        """Write ``data`` with its first voxel at (x_start, y_start, z_start) (default: the volume's offset).

        ``post_cutout("demo", "em", data, x_start=0, ...)`` or ndio's positional
        ``post_cutout(token, channel, x_start, y_start, z_start, data, resolution=0)``.
        The data must already have the channel's dtype (or one that converts
        without loss). Returns the box written.
        """
        if len(args) == 1 and data is None:
            (data,) = args
        elif len(args) == 4 and data is None and x_start is None and y_start is None and z_start is None:
            x_start, y_start, z_start, data = args
        elif args:
            raise BadRegion("post_cutout takes (data) or (x_start, y_start, z_start, data) positionally")
        if data is None:
            raise BadRegion("post_cutout needs the data to write")
        arr = np.asarray(data)
        if arr.ndim != 3:
            raise BadRegion(f"post_cutout takes a 3-D array, got {arr.ndim}-D")
        if _order(order) == "xyz":
            arr = arr.transpose()
        lvl = _level(level, resolution)
        vol = self.volume(token if project is None else project, channel, lvl)
        start = [s if v is None else _int(v, f"{a}_start")
                 for s, v, a in zip(vol.offset, (z_start, y_start, x_start), "zyx")]
        box = Box(tuple(start), tuple(s + n for s, n in zip(start, arr.shape)))
        if not vol.box.contains(box):
            raise BadRegion(f"a {arr.shape} array at {tuple(start)} (z, y, x) does not fit in {vol.box}")
        vol[box.start[0]:box.stop[0], box.start[1]:box.stop[1], box.start[2]:box.stop[2]] = arr
        return box

    def create_channel(self, project, channel=None, *, shape=None, dtype=None, kind: str | None = None,
                       voxel_size_nm=None, offset=None, levels: int = 1, chunk_shape=None, like=None,
                       overwrite: bool = False):
        """Create an empty channel (stores that can: ``create`` capability) and return its Volume at level 0.

        ``like`` (a Volume or VolumeInfo) supplies whatever is not given: shape,
        dtype, kind, voxel size, offset and chunk shape of its level 0.
        """
        create = self.backend.create_volume
        if not isinstance(self.backend, AdminStore) or "write" not in self.backend.capabilities:
            raise NdfsError(f"{self.kind} remote {self.name!r} cannot create channels here; create it on the "
                            "service and write into it", errno=errno.ENOTSUP)
        base = getattr(like, "info", like)
        lv = base.level(getattr(like, "level_index", 0)) if base is not None else None
        if shape is None and lv is None:
            raise BadRegion("create_channel needs shape= (z, y, x) or like=")
        create(self._ref(project, channel),
               shape=tuple(shape if shape is not None else lv.shape),
               dtype=dtype if dtype is not None else (base.dtype if base is not None else "uint8"),
               kind=kind or (base.kind if base is not None else "image"),
               voxel_size_nm=tuple(voxel_size_nm if voxel_size_nm is not None
                                   else (lv.voxel_size_nm if lv is not None else (1.0, 1.0, 1.0))),
               offset=tuple(offset if offset is not None else (lv.offset if lv is not None else (0, 0, 0))),
               levels=levels,
               chunk_shape=tuple(chunk_shape if chunk_shape is not None
                                 else (lv.chunk_shape if lv is not None else (16, 256, 256))),
               overwrite=overwrite)
        self.backend.forget_info(self._ref(project, channel))
        return self.volume(project, channel)

    # ---- RAMON -------------------------------------------------------------
    # The backend's annotation calls (ndfs.stores.base); the cache passes them through and
    # invalidates label voxels that RAMON writes change. Remotes without RAMON raise ENOTSUP.
    def get_ramon_ids(self, project=None, channel=None, ramon_type=None, *, token=None, type=None,
                      **filters) -> list[int]:
        """Ids of the channel's RAMON objects, ascending; ``ramon_type`` (or ``type``, as ndio and
        ``Backend.ramon_ids`` spell it) a type name or ndio's type number.

        More filters as in ``Backend.ramon_ids``: ``status``, ``confidence=("gt", 0.5)``,
        ``kv={"class": "cell"}``, ``box=Box(...)`` with ``level``, ``limit``.
        """
        if ramon_type is not None and type is not None and ramon_type != type:
            raise BadRegion(f"get_ramon_ids got two different types: ramon_type={ramon_type!r} and type={type!r}")
        ref = self._ref(token if project is None else project, channel)
        return annotations(self.backend).ramon_ids(ref, type=type if ramon_type is None else ramon_type, **filters)

    def get_ramon(self, project=None, channel=None, ids=None, *, token=None):
        """The RAMON object with id ``ids`` (an int), or the list of objects for a list of ids."""
        ref = self._ref(token if project is None else project, channel)
        if ids is None:
            raise BadRegion("get_ramon needs ids")
        many = not isinstance(ids, (int, np.integer))
        found = annotations(self.backend).ramon_get(ref, list(ids) if many else [int(ids)])
        return found if many else found[0]

    def post_ramon(self, project=None, channel=None, obj=None, *, token=None):
        """Store a RAMON object (id 0 gets a new id) or a list of them; returns the id or the list of ids."""
        ref = self._ref(token if project is None else project, channel)
        many = isinstance(obj, (list, tuple))
        ids = annotations(self.backend).ramon_put(ref, list(obj) if many else [obj])
        return ids if many else ids[0]

    def delete_ramon(self, project=None, channel=None, ids=None, *, token=None) -> None:
        """Delete RAMON objects: an id, a list of ids, or objects (their ``id``)."""
        ref = self._ref(token if project is None else project, channel)
        items = ids if isinstance(ids, (list, tuple)) else [ids]
        annotations(self.backend).ramon_delete(ref, [int(getattr(i, "id", i)) for i in items])

    def reserve_ids(self, project=None, channel=None, quantity: int = 1, *, token=None) -> list[int]:
        """Reserve ``quantity`` new consecutive object ids (ndio's ``reserve_ids``)."""
        return annotations(self.backend).reserve_ids(self._ref(token if project is None else project, channel), int(quantity))

    def get_ramon_bounding_box(self, project=None, channel=None, id=None, resolution=0, *, token=None,
                               level=None) -> Box | None:
        """The tight box of an object's voxels (a ZYX :class:`Box`; ndio gave x/y/z bounds); None without voxels."""
        ref = self._ref(token if project is None else project, channel)
        return annotations(self.backend).ramon_bbox(ref, int(id), _level(level, resolution))

    def get_ramon_cutout(self, project=None, channel=None, id=None, resolution=0, *, token=None,
                         level=None) -> tuple[np.ndarray, Box] | None:
        """An object's voxels: its bounding-box cutout with other labels zeroed, and the box (None if no voxels).

        What ndio's ``get_ramon(..., include_cutout=True)`` attached, without its cropping off-by-one.
        """
        lvl = _level(level, resolution)
        box = self.get_ramon_bounding_box(project, channel, id, token=token, level=lvl)
        if box is None:
            return None
        ref = self._ref(token if project is None else project, channel)
        arr = self.backend.read(ref, box, lvl)
        return np.where(arr == int(id), arr, 0).astype(arr.dtype, copy=False), box
