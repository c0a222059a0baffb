"""NeuroData projects (tokens) and channels over an ndfs Backend, and their ``info`` JSON.

The mapping: a folder at depth 1 of the backend is a token (a project) and
the volumes directly inside it are its channels, so local path ``tok/ch`` is
NeuroData ``tok/ch``. Only names matching ``\\w+`` and the spec's dtypes
(uint8/16/32/64, float32) are shown. A folder with no such channel is no token.

ndstore gives a project one dataset geometry for all its channels; here the
dataset's box at each level is the union of the channels' boxes (levels: the
fewest any channel has), its voxel size and cube dimension are the first
channel's. A channel smaller than the union reads as zeros outside its own
box and refuses non-zero writes there. Levels are the backend's own (the
local store halves x and y), so ``imagesize``/``offset`` may differ by a voxel
from ndstore's ``((S-1)>>r)+1`` / ``O>>r`` formula on odd offsets; clients read
the per-level maps, which are exact. ``scaling`` is ``zslices`` when z keeps
its size across levels, else ``xyz``.

Errors are :class:`NdError` (HTTP status and plain text). Thread-safe: no
mutable state besides the propagate flags, guarded by a lock.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from ndfs.stores.base import Backend
from ndfs.core.errors import NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo

NAME_RE = re.compile(r"\w+", re.ASCII)
DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")


class NdError(Exception):
    """An error answer: HTTP status and plain-text message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Project:
    """A token: its channels' infos and the dataset geometry (union boxes per level)."""

    token: str
    channels: dict[str, VolumeInfo]
    boxes: tuple[Box, ...]
    voxel_sizes: tuple[tuple[float, float, float], ...]
    cubes: tuple[tuple[int, int, int], ...]

    @property
    def levels(self) -> int:
        return len(self.boxes)

    def channel(self, name: str) -> VolumeInfo:
        if name not in self.channels:
            raise NdError(404, f"Channel {name} not found for token {self.token}")
        return self.channels[name]

    def check_box(self, level: int, box: Box) -> None:
        """The spec's legality test; 404 ``Illegal…`` when the box or level is not served."""
        if not 0 <= level < self.levels:
            raise NdError(404, f"Illegal resolution {level}. Resolutions are 0 to {self.levels - 1}")
        full = self.boxes[level]
        if box.empty or not full.contains(box):
            size = list(full.shape[::-1])
            raise NdError(404, f"Illegal cutout corner or extent: {box}. Illegal range. Image size: {size} "
                               f"at offset {list(full.start[::-1])}")


class NeuroDataModel:
    """The tokens and channels of one backend (see the module doc). Thread-safe."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._lock = threading.Lock()
        self._propagate: dict[tuple[str, str], int] = {}

    def _listing(self, path: tuple[str, ...]) -> list[str]:
        try:
            return self.backend.children(path)
        except NotFound:
            return []

    def _channel_infos(self, token: str) -> dict[str, VolumeInfo]:
        out = {}
        for name in self._listing((token,)):
            if not NAME_RE.fullmatch(name):
                continue
            try:
                if not self.backend.is_volume((token, name)):
                    continue
                info = self.backend.info((token, name))
            except NotFound:
                continue
            if info.dtype.name in DTYPES:
                out[name] = info
        return out

    def tokens(self) -> list[str]:
        names = []
        for name in self._listing(()):
            if not NAME_RE.fullmatch(name):
                continue
            try:
                if not self.backend.is_volume((name,)) and self._channel_infos(name):
                    names.append(name)
            except NotFound:
                continue
        return names

    def project(self, token: str) -> Project:
        if not NAME_RE.fullmatch(token):
            raise NdError(404, f"Token {token} does not exist")
        try:
            infos = self._channel_infos(token) if not self.backend.is_volume((token,)) else {}
        except NotFound:
            infos = {}
        except NdfsError as exc:
            raise NdError(500, f"Cannot read token {token}: {exc}") from exc
        if not infos:
            raise NdError(404, f"Token {token} does not exist")
        n = min(len(i.levels) for i in infos.values())
        boxes = []
        for r in range(n):
            bs = [i.levels[r].box for i in infos.values()]
            boxes.append(Box(tuple(min(b.start[a] for b in bs) for a in range(3)),
                             tuple(max(b.stop[a] for b in bs) for a in range(3))))
        first = next(iter(infos.values()))
        return Project(token, infos, tuple(boxes), tuple(first.levels[r].voxel_size_nm for r in range(n)),
                       tuple(first.levels[r].chunk_shape for r in range(n)))

    # ---- propagation ----------------------------------------------------
    def propagate_status(self, token: str, channel: str) -> int:
        with self._lock:
            return self._propagate.get((token, channel), 0)

    def set_propagate(self, token: str, channel: str, value: int) -> None:
        """1 starts propagation: the backend already rebuilt lower levels on each write, so it is done (2)."""
        with self._lock:
            self._propagate[(token, channel)] = 2 if value == 1 else 0

    # ---- info JSON -------------------------------------------------------
    def info(self, token: str, writable: bool) -> dict:
        p = self.project(token)
        levels = [str(r) for r in range(p.levels)]
        z_sizes = {b.shape[0] for b in p.boxes}
        xyz = lambda t: [t[2], t[1], t[0]]  # noqa: E731
        dataset = {
            "name": token, "description": token, "scalinglevels": p.levels - 1,
            "scaling": "zslices" if len(z_sizes) == 1 else "xyz", "resolutions": list(range(p.levels)),
            "imagesize": {r: xyz(p.boxes[int(r)].shape) for r in levels},
            "offset": {r: xyz(p.boxes[int(r)].start) for r in levels},
            "voxelres": {r: xyz(p.voxel_sizes[int(r)]) for r in levels},
            "cube_dimension": {r: xyz(p.cubes[int(r)]) for r in levels},
            "neariso_scaledown": {r: 1 for r in levels},
            "neariso_offset": {r: xyz(p.boxes[int(r)].start) for r in levels},
            "neariso_voxelres": {r: xyz(p.voxel_sizes[int(r)]) for r in levels},
            "neariso_imagesize": {r: xyz(p.boxes[int(r)].shape) for r in levels},
            "timerange": [0, 0],
        }
        channels = {}
        for name, info in p.channels.items():
            top = 255 if info.dtype.name == "uint8" else 65535 if info.dtype.name == "uint16" else 0
            channels[name] = {
                "channel_type": info.kind, "datatype": info.dtype.name, "exceptions": 0,
                "readonly": 0 if writable else 1, "resolution": 0,
                "propagate": self.propagate_status(token, name), "windowrange": [0, top],
                "description": name, "timerange": [0, 0],
            }
        return {"dataset": dataset,
                "project": {"name": token, "description": token, "schema_version": "0.7",
                            "ndstore_version": "1.1.0 (ndfs)", "s3backend": 0},
                "channels": channels, "metadata": {}}
