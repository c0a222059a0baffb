"""BOSS resources (collections, experiments, coordinate frames, channels) over an ndfs Backend.

The mapping: a backend folder at depth 1 is a collection, a folder below it an
experiment, and a volume below that a channel, so local path ``c/e/ch`` is
BOSS ``c/e/ch``. Volumes at other depths, and volumes BOSS cannot carry
(image channels that are not uint8/uint16, annotation channels that are not
uint64), are not shown.

What the backend cannot hold lives in memory while the server runs: the
collections, coordinate frames and experiments created by POST before they
have a channel, and descriptions. An experiment that has channels in the
backend is described from them: its coordinate frame (named ``CF_<c>_<e>``,
intern's default) is the union of the channels' level-0 boxes with the first
channel's voxel size in nanometers; its levels are the fewest any channel
has; the hierarchy is ``anisotropic`` (the local store halves x and y). A
channel POST creates the volume in the backend from its experiment's frame,
so the backend needs ``create_volume`` (the local store has it).

Errors are :class:`BossError` with the status, code and message of the spec.
Thread-safe: one lock guards the in-memory registry and creation.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass

from ndfs.backends.base import AdminStore, Backend
from ndfs.errors import NdfsError, NotFound
from ndfs.info import VolumeInfo

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
BOSS_DTYPES = {"image": ("uint8", "uint16"), "annotation": ("uint64",)}
UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
TIME_UNITS = ("nanoseconds", "microseconds", "milliseconds", "seconds", "")
#: the largest coordinate a coordinate frame may reach (2**40 voxels a side)
MAX_EXTENT = 2**40


class BossError(Exception):
    """An error answer: HTTP status, BOSS error code and message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found(what: str, name: str) -> BossError:
    return BossError(404, 4000, f"{what} {name} not found")


@dataclass(frozen=True)
class Channel:
    """A channel ready for cutouts: its backend ref, info and the BOSS view of its levels."""

    ref: tuple[str, str, str]
    info: VolumeInfo
    frame: dict
    num_hierarchy_levels: int
    num_time_samples: int = 1

    @property
    def datatype(self) -> str:
        return self.info.dtype.name


class BossModel:
    """The BOSS resource tree of one backend (see the module doc). Thread-safe."""

    def __init__(self, backend: Backend, creator: str = "ndfs"):
        self.backend, self.creator = backend, creator
        self._lock = threading.RLock()
        self._collections: dict[str, dict] = {}
        self._frames: dict[str, dict] = {}
        self._experiments: dict[tuple[str, str], dict] = {}
        self._channels: dict[tuple[str, str, str], dict] = {}

    # ---- what exists -----------------------------------------------------
    def _folder(self, path: tuple[str, ...]) -> bool:
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

    def _volume_info(self, ref: tuple[str, str, str]) -> VolumeInfo | None:
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

    # ---- experiments and frames ------------------------------------------
    def _derived(self, c: str, e: str) -> tuple[dict, int] | None:
        """(frame, levels) of an experiment from its channels in the backend; None without channels."""
        infos = [info for n in self._listing((c, e)) if NAME_RE.fullmatch(n)
                 for info in [self._volume_info((c, e, n))] if info is not None]
        if not infos:
            return None
        boxes = [info.levels[0].box for info in infos]
        start = [min(b.start[i] for b in boxes) for i in range(3)]
        stop = [max(b.stop[i] for b in boxes) for i in range(3)]
        vz, vy, vx = infos[0].levels[0].voxel_size_nm
        frame = {"name": f"CF_{c}_{e}", "description": f"frame of {c}/{e}",
                 "x_start": start[2], "x_stop": stop[2], "y_start": start[1], "y_stop": stop[1],
                 "z_start": start[0], "z_stop": stop[0],
                 "x_voxel_size": vx, "y_voxel_size": vy, "z_voxel_size": vz, "voxel_unit": "nanometers"}
        return frame, min(len(info.levels) for info in infos)

    def experiment(self, c: str, e: str) -> dict:
        self._check_experiment(c, e)
        with self._lock:
            created = self._experiments.get((c, e))
        derived = self._derived(c, e)
        doc = {"name": e, "description": "", "creator": self.creator, "public": False,
               "collection": c, "coord_frame": f"CF_{c}_{e}", "num_hierarchy_levels": 1,
               "hierarchy_method": "anisotropic", "num_time_samples": 1, "time_step": None,
               "time_step_unit": ""}
        if derived is not None:
            doc["num_hierarchy_levels"] = derived[1]
        if created is not None:
            doc.update(created)
        doc["channels"] = self.channels(c, e)
        return doc

    def frames(self) -> list[str]:
        names = set()
        for c in self.collections():
            for e in self.experiments(c):
                names.add(self.experiment(c, e)["coord_frame"])
        with self._lock:
            return sorted(names | set(self._frames))

    def frame(self, name: str) -> dict:
        with self._lock:
            if name in self._frames:
                return dict(self._frames[name])
        for c in self.collections():
            for e in self.experiments(c):
                if self.experiment(c, e)["coord_frame"] == name:
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
                "public": False, "experiments": self.experiments(c)}

    def channel(self, c: str, e: str, ch: str) -> dict:
        found = self.cutout_channel(c, e, ch)
        with self._lock:
            extra = dict(self._channels.get((c, e, ch), {}))
        levels = len(found.info.levels)
        return {"name": ch, "description": extra.get("description", ""), "creator": self.creator,
                "public": False, "experiment": e, "type": found.info.kind, "datatype": found.datatype,
                "base_resolution": 0, "default_time_sample": 0, "sources": extra.get("sources", []),
                "related": extra.get("related", []), "bucket": None, "cv_path": None, "storage_type": "spdb",
                "downsample_status": "DOWNSAMPLED" if levels > 1 else "NOT_DOWNSAMPLED"}

    def cutout_channel(self, c: str, e: str, ch: str) -> Channel:
        """The channel for a cutout, or the spec's 404 for the first missing name."""
        self._check_experiment(c, e)
        info = self._volume_info((c, e, ch)) if NAME_RE.fullmatch(ch) else None
        if info is None:
            raise not_found("Channel", ch)
        exp = self.experiment(c, e)
        return Channel(ref=(c, e, ch), info=info, frame=self.frame(exp["coord_frame"]),
                       num_hierarchy_levels=min(int(exp["num_hierarchy_levels"]), len(info.levels)),
                       num_time_samples=int(exp["num_time_samples"]))

    # ---- creation --------------------------------------------------------
    def _duplicate(self, what: str, name: str) -> BossError:
        return BossError(400, 1003, f"{what} {name} already exists")

    def create_collection(self, c: str, body: dict) -> dict:
        with self._lock:
            if c in self.collections():
                raise self._duplicate("Collection", c)
            self._collections[c] = {"description": _text(body, "description")}
        return self.collection(c)

    def create_frame(self, name: str, body: dict) -> dict:
        doc = {"name": name, "description": _text(body, "description")}
        try:
            for axis in "xyz":
                start, stop = body[f"{axis}_start"], body[f"{axis}_stop"]
                if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= MAX_EXTENT):
                    raise ValueError(f"{axis}_start must be an int below {axis}_stop, at most {MAX_EXTENT}")
                size = float(body[f"{axis}_voxel_size"])
                if not 0 < size < math.inf:
                    raise ValueError(f"{axis}_voxel_size must be a positive number")
                doc.update({f"{axis}_start": start, f"{axis}_stop": stop, f"{axis}_voxel_size": size})
            if body.get("voxel_unit") not in UNIT_NM:
                raise ValueError(f"voxel_unit must be one of {', '.join(UNIT_NM)}")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise BossError(400, 1003, f"Invalid coordinate frame: {exc}") from None
        doc["voxel_unit"] = body["voxel_unit"]
        with self._lock:
            if name in self.frames():
                raise self._duplicate("Coordinate frame", name)
            self._frames[name] = doc
        return dict(doc)

    def create_experiment(self, c: str, e: str, body: dict) -> dict:
        self._check_collection(c)
        frame = str(body.get("coord_frame") or "")
        self.frame(frame)
        levels, samples = body.get("num_hierarchy_levels", 1), body.get("num_time_samples", 1)
        method, unit = body.get("hierarchy_method", "anisotropic"), body.get("time_step_unit") or ""
        if not (isinstance(levels, int) and 1 <= levels <= 13):
            raise BossError(400, 1003, "num_hierarchy_levels must be an int from 1 to 13")
        if method not in ("anisotropic", "isotropic") or unit not in TIME_UNITS:
            raise BossError(400, 1003, "hierarchy_method or time_step_unit is not valid")
        if method != "anisotropic" or samples != 1:
            raise BossError(400, 1003, "this server stores anisotropic pyramids of one time sample")
        with self._lock:
            if e in self.experiments(c):
                raise self._duplicate("Experiment", e)
            self._experiments[(c, e)] = {
                "description": _text(body, "description"), "coord_frame": frame, "num_hierarchy_levels": levels,
                "hierarchy_method": method, "num_time_samples": 1, "time_step": body.get("time_step"),
                "time_step_unit": unit}
        return self.experiment(c, e)

    def create_channel(self, c: str, e: str, ch: str, body: dict) -> dict:
        exp = self.experiment(c, e)
        kind, datatype = body.get("type", "image"), body.get("datatype")
        if kind not in BOSS_DTYPES or datatype not in BOSS_DTYPES[kind]:
            raise BossError(400, 1003, f"a {kind} channel cannot hold {datatype}; use "
                                       "uint8 or uint16 for image and uint64 for annotation channels")
        if body.get("base_resolution", 0) != 0:
            raise BossError(400, 1003, "this server stores channels from base resolution 0")
        create = self.backend.create_volume
        if not isinstance(self.backend, AdminStore) or "write" not in self.backend.capabilities:
            raise BossError(403, 3001, "This user does not have the required permissions "
                                       "(the served store cannot create channels)")
        f = self.frame(exp["coord_frame"])
        unit = UNIT_NM[f["voxel_unit"]]
        with self._lock:
            if ch in self.channels(c, e) or self._folder((c, e, ch)):
                raise self._duplicate("Channel", ch)
            try:
                create((c, e, ch), tuple(f[f"{a}_stop"] - f[f"{a}_start"] for a in "zyx"), datatype, kind=kind,
                       voxel_size_nm=tuple(f[f"{a}_voxel_size"] * unit for a in "zyx"),
                       offset=tuple(f[f"{a}_start"] for a in "zyx"), levels=int(exp["num_hierarchy_levels"]))
            except NdfsError as exc:
                raise BossError(400, 1003, f"cannot create channel {ch}: {exc}") from exc
            self._channels[(c, e, ch)] = {"description": _text(body, "description"),
                                          "sources": list(body.get("sources") or []),
                                          "related": list(body.get("related") or [])}
        return self.channel(c, e, ch)


def _text(body: dict, key: str) -> str:
    value = body.get(key)
    return "" if value is None else str(value)
