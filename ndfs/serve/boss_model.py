"""BOSS resources (collections, experiments, coordinate frames, channels) over an ndfs Backend.

The mapping: a backend folder at depth 1 is a collection, a folder below it an
experiment, and a volume below that a channel, so local path ``c/e/ch`` is
BOSS ``c/e/ch``. Volumes at other depths, and volumes BOSS cannot carry
(image channels that are not uint8/uint16, annotation channels that are not
uint64), are not shown. Time sample ``t > 0`` of channel ``c/e/ch`` is the
volume ``c/e/ch@time/<t>`` (made by its first write; ``@`` keeps it out of the
BOSS names); time sample 0 is the channel itself.

What the backend cannot hold lives in memory while the server runs: the
collections, coordinate frames and experiments created by POST before they
have a channel; descriptions; experiment settings (hierarchy method, levels,
time samples, time step); channel settings (sources, related channels, base
resolution, default time sample); and which store folders were deleted through
the API (the backend has no call to remove a folder, so they are hidden). An
experiment that has channels in the backend and no settings in memory is
described from them: its coordinate frame (named ``CF_<c>_<e>``, intern's
default) is the union of the channels' level-0 boxes with the first channel's
voxel size in nanometers; its levels are the fewest any channel has; the
hierarchy is ``anisotropic`` (the local store halves x and y); its time samples
are one past the highest ``@time`` volume. A channel POST creates the volume in
the backend from its experiment's frame (``base_resolution + levels`` levels
for anisotropic experiments, level 0 only for isotropic ones, whose coarser
levels the server computes), so the backend needs ``create_volume`` (the local
store has it).

Updates (PUT) take the fields production's update serializers take and refuse
the others (400/1003); renaming a resource whose channels are in the backend
moves them (see :meth:`BossModel.moves`; the app copies the voxels). Deletes
refuse resources that still have children or are another channel's source
(400/4003), as production does, and remove at once (production marks for
deletion first).

Errors are :class:`BossError` with the status, code and message of the spec.
Thread-safe: one re-entrant lock guards the in-memory registry and creation.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

from ndfs.stores.base import AdminStore, Backend
from ndfs.core.errors import NdfsError, NotFound
from ndfs.core.info import VolumeInfo

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
BOSS_DTYPES = {"image": ("uint8", "uint16"), "annotation": ("uint64",)}
UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
TIME_UNITS = ("nanoseconds", "microseconds", "milliseconds", "seconds", "")
#: the largest coordinate (either sign) a coordinate frame may reach (2**40 voxels a side)
MAX_EXTENT = 2**40
#: BOSS resolutions are one digit
MAX_LEVELS = 10
#: the most time samples an experiment may have
MAX_TIME_SAMPLES = 2**20
#: the suffix of the folder holding a channel's time samples after the first
TIME_FOLDER = "@time"
#: fields an update (PUT) may change, per resource (production's update serializers)
UPDATABLE = {
    "collection": ("name", "description", "public"),
    "frame": ("name", "description"),
    "experiment": ("name", "description", "public", "num_hierarchy_levels", "hierarchy_method", "num_time_samples",
                   "time_step", "time_step_unit"),
    "channel": ("name", "description", "public", "default_time_sample", "base_resolution", "sources", "related",
                "bucket", "cv_path", "storage_type"),
}


def can_create(backend) -> bool:
    """Whether ``backend`` can make and remove channels: an AdminStore open for writing."""
    return isinstance(backend, AdminStore) and "write" in backend.capabilities


class BossError(Exception):
    """An error answer: HTTP status, BOSS error code and message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found(what: str, name: str) -> BossError:
    return BossError(404, 4000, f"{what} {name} not found")


def time_ref(ref: tuple[str, str, str], t: int) -> tuple[str, ...]:
    """The backend volume of time sample ``t`` of a channel (``t = 0``: the channel)."""
    c, e, ch = ref
    return ref if t == 0 else (c, e, ch + TIME_FOLDER, str(t))


@dataclass(frozen=True)
class Channel:
    """A channel ready for cutouts: its backend ref, info and the BOSS view of its levels and time."""

    ref: tuple[str, str, str]
    info: VolumeInfo
    frame: dict
    num_hierarchy_levels: int
    num_time_samples: int = 1
    base_resolution: int = 0
    default_time_sample: int = 0
    isotropic: bool = False

    @property
    def datatype(self) -> str:
        return self.info.dtype.name

    @property
    def resolutions(self) -> range:
        return range(self.base_resolution, self.base_resolution + self.num_hierarchy_levels)

    def stored(self, res: int) -> bool:
        """True if resolution ``res`` is a level of the backend volume (else: computed, or zeros)."""
        return (res == 0 or not self.isotropic) and res < len(self.info.levels)


@dataclass
class _Exp:
    description: str = ""
    coord_frame: str = ""
    num_hierarchy_levels: int = 1
    hierarchy_method: str = "anisotropic"
    num_time_samples: int = 1
    time_step: int | None = None
    time_step_unit: str = ""
    public: bool = False


@dataclass
class _Chan:
    description: str = ""
    sources: list[str] = field(default_factory=list)
    related: list[str] = field(default_factory=list)
    base_resolution: int = 0
    default_time_sample: int = 0
    public: bool = False


class BossModel:
    """The BOSS resource tree of one backend (see the module doc). Thread-safe."""

    def _can_create(self) -> bool:
        """Whether channels can be made and removed in the served store (an AdminStore open for writing)."""
        return can_create(self.backend)

    def __init__(self, backend: Backend, creator: str = "ndfs"):
        self.backend, self.creator = backend, creator
        self._lock = threading.RLock()
        self._collections: dict[str, dict] = {}
        self._frames: dict[str, dict] = {}
        self._experiments: dict[tuple[str, str], _Exp] = {}
        self._channels: dict[tuple[str, str, str], _Chan] = {}
        self._hidden: set[tuple[str, ...]] = set()

    # ---- what exists -----------------------------------------------------
    def _folder(self, path: tuple[str, ...]) -> bool:
        with self._lock:
            if path in self._hidden:
                return False
        try:
            return not self.backend.is_volume(path)
        except NotFound:
            return False

    def _listing(self, path: tuple[str, ...]) -> list[str]:
        try:
            return self.backend.children(path)
        except NotFound:
            return []

    def collections(self) -> list[str]:
        found = {n for n in self._listing(()) if NAME_RE.fullmatch(n) and self._folder((n,))}
        with self._lock:
            return sorted(found | set(self._collections))

    def _check_collection(self, c: str) -> None:
        with self._lock:
            if c in self._collections:
                return
        if not (NAME_RE.fullmatch(c) and self._folder((c,))):
            raise not_found("Collection", c)

    def experiments(self, c: str) -> list[str]:
        self._check_collection(c)
        found = {n for n in self._listing((c,)) if NAME_RE.fullmatch(n) and self._folder((c, n))}
        with self._lock:
            return sorted(found | {e for (cc, e) in self._experiments if cc == c})

    def _check_experiment(self, c: str, e: str) -> None:
        self._check_collection(c)
        with self._lock:
            if (c, e) in self._experiments:
                return
        if not (NAME_RE.fullmatch(e) and self._folder((c, e))):
            raise not_found("Experiment", e)

    def _volume_info(self, ref: tuple[str, ...]) -> VolumeInfo | None:
        """The info of a BOSS-able volume at ref, else None."""
        try:
            if not self.backend.is_volume(ref):
                return None
            info = self.backend.info(ref)
        except NotFound:
            return None
        return info if info.dtype.name in BOSS_DTYPES[info.kind] else None

    def channels(self, c: str, e: str) -> list[str]:
        self._check_experiment(c, e)
        return [n for n in self._listing((c, e)) if NAME_RE.fullmatch(n) and self._volume_info((c, e, n))]

    def time_samples(self, ref: tuple[str, str, str]) -> list[int]:
        """The time samples after the first that have a volume in the backend, ascending."""
        c, e, ch = ref
        return sorted(int(n) for n in self._listing((c, e, ch + TIME_FOLDER))
                      if n.isdigit() and len(n) <= 7 and self._volume_info(time_ref(ref, int(n))) is not None)

    # ---- experiments and frames ------------------------------------------
    def _derived(self, c: str, e: str) -> tuple[dict, int, int] | None:
        """(frame, levels, time samples) of an experiment from its channels in the backend; None without."""
        names = [n for n in self._listing((c, e)) if NAME_RE.fullmatch(n)]
        infos = [(n, info) for n in names for info in [self._volume_info((c, e, n))] if info is not None]
        if not infos:
            return None
        boxes = [info.levels[0].box for _, info in infos]
        start = [min(b.start[i] for b in boxes) for i in range(3)]
        stop = [max(b.stop[i] for b in boxes) for i in range(3)]
        vz, vy, vx = infos[0][1].levels[0].voxel_size_nm
        frame = {"name": f"CF_{c}_{e}", "description": f"frame of {c}/{e}",
                 "x_start": start[2], "x_stop": stop[2], "y_start": start[1], "y_stop": stop[1],
                 "z_start": start[0], "z_stop": stop[0],
                 "x_voxel_size": vx, "y_voxel_size": vy, "z_voxel_size": vz, "voxel_unit": "nanometers"}
        samples = 1 + max((t for n, _ in infos for t in self.time_samples((c, e, n))), default=0)
        return frame, min(len(info.levels) for _, info in infos), samples

    def _settings(self, c: str, e: str) -> _Exp:
        """The experiment's settings: those held in memory, else those derived from its channels."""
        with self._lock:
            held = self._experiments.get((c, e))
            if held is not None:
                return _Exp(**vars(held))
        derived = self._derived(c, e)
        out = _Exp(coord_frame=f"CF_{c}_{e}")
        if derived is not None:
            out.num_hierarchy_levels, out.num_time_samples = derived[1], derived[2]
        return out

    def experiment(self, c: str, e: str) -> dict:
        self._check_experiment(c, e)
        s = self._settings(c, e)
        return {"name": e, "description": s.description, "creator": self.creator, "public": s.public,
                "collection": c, "coord_frame": s.coord_frame, "num_hierarchy_levels": s.num_hierarchy_levels,
                "hierarchy_method": s.hierarchy_method, "num_time_samples": s.num_time_samples,
                "time_step": s.time_step, "time_step_unit": s.time_step_unit, "channels": self.channels(c, e)}

    def _all_experiments(self) -> list[tuple[str, str]]:
        return [(c, e) for c in self.collections() for e in self.experiments(c)]

    def frames(self) -> list[str]:
        names = {self._settings(c, e).coord_frame for c, e in self._all_experiments()}
        with self._lock:
            return sorted(names | set(self._frames))

    def frame(self, name: str) -> dict:
        with self._lock:
            if name in self._frames:
                return dict(self._frames[name])
        for c, e in self._all_experiments():
            if self._settings(c, e).coord_frame == name:
                derived = self._derived(c, e)
                if derived is not None:
                    return {**derived[0], "name": name}
        raise not_found("Coordinate frame", name)

    # ---- resources as JSON -----------------------------------------------
    def collection(self, c: str) -> dict:
        self._check_collection(c)
        with self._lock:
            extra = dict(self._collections.get(c, {}))
        return {"name": c, "description": extra.get("description", ""), "creator": self.creator,
                "public": extra.get("public", False), "experiments": self.experiments(c)}

    def _chan_settings(self, ref: tuple[str, str, str]) -> _Chan:
        with self._lock:
            held = self._channels.get(ref)
            return _Chan() if held is None else _Chan(**{**vars(held), "sources": list(held.sources),
                                                         "related": list(held.related)})

    def channel(self, c: str, e: str, ch: str) -> dict:
        found = self.cutout_channel(c, e, ch)
        s = self._chan_settings((c, e, ch))
        names = set(self.channels(c, e))
        with self._lock:  # related channels are symmetric, as production's many-to-many field is
            related = set(s.related) | {o for (cc, ee, o), other in self._channels.items()
                                        if (cc, ee) == (c, e) and ch in other.related}
        return {"name": ch, "description": s.description, "creator": self.creator, "public": s.public,
                "experiment": e, "type": found.info.kind, "datatype": found.datatype,
                "base_resolution": s.base_resolution, "default_time_sample": s.default_time_sample,
                "sources": [n for n in s.sources if n in names], "related": sorted(related & names),
                "bucket": None, "cv_path": None, "storage_type": "spdb",
                "downsample_status": "DOWNSAMPLED" if found.num_hierarchy_levels > 1 else "NOT_DOWNSAMPLED"}

    def cutout_channel(self, c: str, e: str, ch: str) -> Channel:
        """The channel for a cutout, or the spec's 404 for the first missing name."""
        self._check_experiment(c, e)
        info = self._volume_info((c, e, ch)) if NAME_RE.fullmatch(ch) else None
        if info is None:
            raise not_found("Channel", ch)
        s, cs = self._settings(c, e), self._chan_settings((c, e, ch))
        iso = s.hierarchy_method == "isotropic"
        levels = s.num_hierarchy_levels
        if not iso and (c, e) not in self._experiments:  # derived: what the volume holds
            levels = min(levels, len(info.levels))
        return Channel(ref=(c, e, ch), info=info, frame=self.frame(s.coord_frame), num_hierarchy_levels=levels,
                       num_time_samples=s.num_time_samples, base_resolution=cs.base_resolution,
                       default_time_sample=cs.default_time_sample, isotropic=iso)

    # ---- creation --------------------------------------------------------
    def _duplicate(self, what: str, name: str) -> BossError:
        return BossError(400, 1003, f"{what} {name} already exists")

    def create_collection(self, c: str, body: dict) -> dict:
        with self._lock:
            if c in self.collections():
                raise self._duplicate("Collection", c)
            self._hidden.discard((c,))
            self._collections[c] = {"description": _text(body, "description"), "public": bool(body.get("public"))}
        return self.collection(c)

    def create_frame(self, name: str, body: dict) -> dict:
        doc = {"name": name, "description": _text(body, "description")}
        try:
            for axis in "xyz":
                start, stop = body[f"{axis}_start"], body[f"{axis}_stop"]
                if isinstance(start, bool) or isinstance(stop, bool) or not (
                        isinstance(start, int) and isinstance(stop, int)):
                    raise ValueError(f"{axis}_start and {axis}_stop must be integers")
                if not -MAX_EXTENT <= start < stop <= MAX_EXTENT:
                    raise ValueError(f"{axis}_start ({start}) must be below {axis}_stop ({stop}), both within "
                                     f"-{MAX_EXTENT}..{MAX_EXTENT}")
                size = float(body[f"{axis}_voxel_size"])
                if not 0 < size < math.inf:
                    raise ValueError(f"{axis}_voxel_size must be a positive number")
                doc.update({f"{axis}_start": start, f"{axis}_stop": stop, f"{axis}_voxel_size": size})
            if body.get("voxel_unit") not in UNIT_NM:
                raise ValueError(f"voxel_unit must be one of {', '.join(UNIT_NM)}")
        except KeyError as exc:
            raise BossError(400, 1003, f"Invalid coordinate frame: {exc.args[0]} is missing") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise BossError(400, 1003, f"Invalid coordinate frame: {exc}") from None
        doc["voxel_unit"] = body["voxel_unit"]
        with self._lock:
            if name in self.frames():
                raise self._duplicate("Coordinate frame", name)
            self._frames[name] = doc
        return dict(doc)

    def create_experiment(self, c: str, e: str, body: dict) -> dict:
        self._check_collection(c)
        if "coord_frame" not in body:
            raise BossError(400, 1003, "This request requires a valid coordinate frame")
        frame = str(body.get("coord_frame") or "")
        self.frame(frame)
        s = _Exp(coord_frame=frame)
        _apply_experiment(s, body)
        with self._lock:
            if e in self.experiments(c):
                raise self._duplicate("Experiment", e)
            self._hidden.discard((c, e))
            self._experiments[(c, e)] = s
        return self.experiment(c, e)

    def create_channel(self, c: str, e: str, ch: str, body: dict) -> dict:
        exp = self._settings(c, e)
        self._check_experiment(c, e)
        kind, datatype = body.get("type", "image"), body.get("datatype")
        if kind not in BOSS_DTYPES or datatype not in BOSS_DTYPES[kind]:
            raise BossError(400, 1003, f"a {kind} channel cannot hold {datatype}; use "
                                       "uint8 or uint16 for image and uint64 for annotation channels")
        settings = _Chan()
        self._apply_channel(settings, c, e, ch, body, exp)
        if not self._can_create():
            raise BossError(403, 3001, "This user does not have the required permissions "
                                       "(the served store cannot create channels)")
        f = self.frame(exp.coord_frame)
        iso = exp.hierarchy_method == "isotropic"
        unit = UNIT_NM[f["voxel_unit"]]
        with self._lock:
            if ch in self.channels(c, e) or self._folder((c, e, ch)):
                raise self._duplicate("Channel", ch)
            try:
                self.backend.create_volume(
                    (c, e, ch), tuple(f[f"{a}_stop"] - f[f"{a}_start"] for a in "zyx"), datatype, kind=kind,
                    voxel_size_nm=tuple(f[f"{a}_voxel_size"] * unit for a in "zyx"),
                    offset=tuple(f[f"{a}_start"] for a in "zyx"),
                    levels=1 if iso else settings.base_resolution + exp.num_hierarchy_levels)
            except NdfsError as exc:
                raise BossError(400, 1003, f"cannot create channel {ch}: {exc}") from exc
            self._channels[(c, e, ch)] = settings
        return self.channel(c, e, ch)

    def _apply_channel(self, s: _Chan, c: str, e: str, ch: str, body: dict, exp: _Exp) -> None:
        """Check and apply channel fields of a POST or PUT body (sources and related as production does)."""
        if "description" in body:
            s.description = _text(body, "description")
        if "public" in body:
            s.public = bool(body["public"])
        for key in ("base_resolution", "default_time_sample"):
            if key in body:
                value = body[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise BossError(400, 1003, f"{key} must be a non-negative integer, not {value!r}")
                setattr(s, key, value)
        if s.base_resolution >= MAX_LEVELS:
            raise BossError(400, 1003, f"base_resolution must be below {MAX_LEVELS} (resolutions are one digit)")
        if s.base_resolution and exp.hierarchy_method == "isotropic":
            raise BossError(400, 1003, "this server computes the levels of isotropic experiments from resolution 0, "
                                       "so their channels have base_resolution 0")
        if s.default_time_sample >= exp.num_time_samples:
            raise BossError(400, 1003, f"default_time_sample: Ensure this value is less than the experiment's "
                                       f"num_time_samples {exp.num_time_samples}.")
        for key in ("bucket", "cv_path"):
            if body.get(key):
                raise BossError(403, 3001, f"Only admins can set {key}")
        if body.get("storage_type") not in (None, "spdb"):
            raise BossError(403, 3001, "Only admins can change storage_type (this server stores spdb channels)")
        sources, related = body.get("sources") or [], body.get("related") or []
        if not (isinstance(sources, list) and isinstance(related, list)
                and all(isinstance(n, str) for n in sources + related)):
            raise BossError(400, 1003, "sources and related must be lists of channel names")
        if set(sources) & set(related):
            raise BossError(400, 1003, "Related channels have to be different from source channels")
        names = set(self.channels(c, e))
        for n in sources + related:
            if n not in names or n == ch:
                raise BossError(400, 1003, f"Invalid channel names {n} in the list of source/related channels")
        s.sources, s.related = list(dict.fromkeys(sources)), list(dict.fromkeys(related))

    # ---- updates ---------------------------------------------------------
    def new_name(self, kind: str, body: dict) -> str | None:
        """The new name an update body asks for (None: keep it); 400 for fields the update cannot change."""
        extra = sorted(set(body) - set(UPDATABLE[kind]))
        if extra:
            raise BossError(400, 1003, f"{{'fields': ['Cannot update the following readonly fields:{extra}.']}}")
        name = body.get("name")
        if name is None:
            return None
        if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            raise BossError(400, 1003, f"{{'name': ['Invalid Name.']}} ({str(name)[:64]!r})")
        return name

    def moves(self, path: tuple[str, ...], new: tuple[str, ...]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """The backend volumes a rename of the resource at ``path`` to ``new`` moves: (from, to) pairs
        (channels and their time samples), none for resources held in memory only."""
        out = []

        def walk(p: tuple[str, ...]) -> None:
            try:
                if self.backend.is_volume(p):
                    out.append((p, new + p[len(path):]))
                    return
            except NotFound:
                return
            for n in self._listing(p):
                walk(p + (n,))

        if len(path) == 3:
            walk(path)
            c, e, ch = path
            walk((c, e, ch + TIME_FOLDER))
        elif self._folder(path):
            walk(path)
        return out

    def rename_checks(self, path: tuple[str, ...], new_name: str) -> None:
        """400 when the new name is taken; the moved channels' new names must be free in the backend too."""
        what = {1: "Collection", 2: "Experiment", 3: "Channel"}[len(path)]
        siblings = (self.collections() if len(path) == 1 else self.experiments(path[0]) if len(path) == 2
                    else self.channels(*path[:2]))
        target = path[:-1] + (new_name,)
        if new_name in siblings or self._listing(target) or self._exists(target):
            raise self._duplicate(what, new_name)

    def _exists(self, path: tuple[str, ...]) -> bool:
        try:
            self.backend.is_volume(path)
            return True
        except NotFound:
            return False

    def update_collection(self, c: str, body: dict, new_name: str | None) -> str:
        self._check_collection(c)
        with self._lock:
            extra = self._collections.pop(c, {})
            if "description" in body:
                extra["description"] = _text(body, "description")
            if "public" in body:
                extra["public"] = bool(body["public"])
            name = new_name or c
            if name != c:
                self._hidden.add((c,))
                self._hidden.discard((name,))
                for key in [k for k in self._experiments if k[0] == c]:
                    self._experiments[(name, key[1])] = self._experiments.pop(key)
                for key in [k for k in self._channels if k[0] == c]:
                    self._channels[(name,) + key[1:]] = self._channels.pop(key)
            self._collections[name] = extra
        return name

    def update_frame(self, name: str, body: dict, new_name: str | None) -> str:
        doc = self.frame(name)
        with self._lock:
            if name not in self._frames:
                raise BossError(400, 1003, f"Coordinate frame {name} is derived from the store's channels; "
                                           "this server cannot rename or describe it")
            if "description" in body:
                doc["description"] = _text(body, "description")
            target = new_name or name
            if target != name:
                if target in self.frames():
                    raise self._duplicate("Coordinate frame", target)
                del self._frames[name]
                for s in self._experiments.values():
                    if s.coord_frame == name:
                        s.coord_frame = target
            doc["name"] = target
            self._frames[target] = doc
        return target

    def check_update(self, kind: str, path: tuple[str, ...], body: dict) -> None:
        """Every check of an update that does not change anything (called before channels are moved)."""
        if kind == "experiment":
            s = self._settings(*path)
            before = (s.hierarchy_method, s.num_hierarchy_levels)
            _apply_experiment(s, body)
            if self.channels(*path) and (s.hierarchy_method != before[0] or (
                    s.hierarchy_method == "isotropic" and s.num_hierarchy_levels != before[1])):
                raise BossError(400, 1003, f"Experiment {path[1]} has channels: this server cannot change its "
                                           "hierarchy method (its channels' levels are stored as they were made)")
        elif kind == "channel":
            c, e, ch = path
            self._apply_channel(self._chan_settings(path), c, e, ch, {"sources": [], "related": [], **body},
                                self._settings(c, e))

    def update_experiment(self, c: str, e: str, body: dict, new_name: str | None) -> str:
        self._check_experiment(c, e)
        s = self._settings(c, e)
        _apply_experiment(s, body)
        with self._lock:
            self._experiments.pop((c, e), None)
            name = new_name or e
            if name != e:
                self._hidden.add((c, e))
                self._hidden.discard((c, name))
                for key in [k for k in self._channels if k[:2] == (c, e)]:
                    self._channels[(c, name, key[2])] = self._channels.pop(key)
            self._experiments[(c, name)] = s
        return name

    def update_channel(self, c: str, e: str, ch: str, body: dict, new_name: str | None) -> str:
        """Apply a checked update (see check_update) to the channel's settings; its volume may have moved."""
        s = self._chan_settings((c, e, ch))
        body = {"sources": [], "related": [], **body}  # as production: an update without them clears them
        names = set(self.channels(c, e)) | {ch}
        s.sources = [n for n in body["sources"] if n in names]
        s.related = [n for n in body["related"] if n in names]
        for key in ("description", "public", "base_resolution", "default_time_sample"):
            if key in body:
                setattr(s, key, _text(body, key) if key == "description" else body[key])
        with self._lock:
            name = new_name or ch
            self._channels.pop((c, e, ch), None)
            self._channels[(c, e, name)] = s
            if name != ch:
                for other in self._channels.values():
                    other.sources = [name if n == ch else n for n in other.sources]
                    other.related = [name if n == ch else n for n in other.related]
        return name

    # ---- deletion --------------------------------------------------------
    def delete_collection(self, c: str) -> None:
        self._check_collection(c)
        if self.experiments(c):
            raise BossError(400, 4003, f"Collection {c} has experiments that reference it and cannot be deleted."
                                       "Please delete the experiments first.")
        with self._lock:
            self._collections.pop(c, None)
            if self._folder((c,)):
                self._hidden.add((c,))

    def delete_frame(self, name: str) -> None:
        self.frame(name)
        users = [e for c, e in self._all_experiments() if self._settings(c, e).coord_frame == name]
        if users:
            raise BossError(400, 4003, f" Coordinate frame {name} has experiments that reference it and cannot be "
                                       "deleted.Please delete the experiments first.")
        with self._lock:
            self._frames.pop(name, None)

    def delete_experiment(self, c: str, e: str) -> None:
        self._check_experiment(c, e)
        if self.channels(c, e):
            raise BossError(400, 4003, f" Experiment {e} has channels that reference it and cannot be deleted."
                                       "Please delete the channels first.")
        with self._lock:
            self._experiments.pop((c, e), None)
            if self._folder((c, e)):
                self._hidden.add((c, e))

    def delete_channel(self, c: str, e: str, ch: str) -> list[tuple[str, ...]]:
        """Forget the channel; returns the backend volumes to delete (the channel and its time samples)."""
        found = self.cutout_channel(c, e, ch)
        with self._lock:
            if any((cc, ee) == (c, e) and ch in s.sources for (cc, ee, _), s in self._channels.items()):
                raise BossError(400, 4003, f"Channel {ch} is the source channel of other channels and cannot be "
                                           "deleted")
            if not self._can_create():
                raise BossError(403, 3001, "This user does not have the required permissions "
                                           "(the served store cannot delete channels)")
            self._channels.pop((c, e, ch), None)
        return [found.ref] + [time_ref(found.ref, t) for t in self.time_samples(found.ref)]


def _apply_experiment(s: _Exp, body: dict) -> None:
    """Check and apply the experiment fields of a POST or PUT body."""
    if "description" in body:
        s.description = _text(body, "description")
    if "public" in body:
        s.public = bool(body["public"])
    for key, hi in (("num_hierarchy_levels", MAX_LEVELS), ("num_time_samples", MAX_TIME_SAMPLES)):
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise BossError(400, 1003, f"{key} must be an integer from 1 to {hi}, not {value!r}")
            setattr(s, key, value)
    if "hierarchy_method" in body:
        if body["hierarchy_method"] not in ("anisotropic", "isotropic"):
            raise BossError(400, 1003, f"hierarchy_method must be anisotropic or isotropic, "
                                       f"not {str(body['hierarchy_method'])[:64]!r}")
        s.hierarchy_method = body["hierarchy_method"]
    if "time_step" in body:
        step = body["time_step"]
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise BossError(400, 1003, f"time_step must be an integer or null, not {step!r}")
        s.time_step = step
    if "time_step_unit" in body:
        unit = body["time_step_unit"] or ""
        if unit not in TIME_UNITS:
            raise BossError(400, 1003, f"time_step_unit must be one of {', '.join(u for u in TIME_UNITS if u)}")
        s.time_step_unit = unit


def _text(body: dict, key: str) -> str:
    value = body.get(key)
    return "" if value is None else str(value)
