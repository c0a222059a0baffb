"""DVID repos, version DAGs, data instances and their storage, over an ndfs Backend.

How a backend maps onto DVID: every folder at depth 1 of the backend (a local
store's project) is a repo whose alias is the folder name and whose root UUID
is derived from that name (so it is the same after a restart). Every volume
directly inside the folder is a data instance of the same name: uint8,
uint16, uint32, uint64 and float32 images become ``<dtype>blk`` instances,
uint64 annotation volumes ``labelmap`` instances; level ``i > 0`` of a volume
is the sibling instance ``<name>_<i>`` with ``Extended.ScaleLevel = i`` (this
is how ndfs names pyramids; the driver reads them back as levels). Their
extents are the volume's box, their BlockSize the type's DVID default.
Volumes deeper in the backend, or of other dtypes, are not served.

What the backend cannot hold lives here, in memory, for the life of the
server: repos and instances created by POST (their voxels and keys too), the
version DAG (node UUIDs, branches, notes, logs, locked flags), key-value data,
and the voxels written to versions after the root. Storage follows DVID's
copy-on-write model: per instance, per version, a map of whole blocks (and of
keys, with tombstones for deletes); a read walks from the node up its first
parents to the root, the nearest version that holds a block or key wins, and
the backend volume is the bottom layer. Writes to a backend-served instance
at the root version go straight to the backend (a local store recomputes its
lower levels then); at later versions they stay in memory. Unversioned
instances keep everything at the root, as DVID does.

Errors are :class:`DvidError` (HTTP status and DVID-style message).
Thread-safe: one re-entrant lock guards the registry and the DAG, and one lock
per instance guards its storage.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from ndfs.stores.base import Backend
from ndfs.core.errors import NdfsError, NotFound
from ndfs.core.geometry import Box

VOXEL_TYPES = {"uint8blk": "uint8", "uint16blk": "uint16", "uint32blk": "uint32", "uint64blk": "uint64",
               "float32blk": "float32", "labelblk": "uint64", "labelmap": "uint64"}
LABEL_TYPES = ("labelblk", "labelmap")
TYPES = tuple(VOXEL_TYPES) + ("keyvalue",)
TYPE_PACKAGE = {"labelblk": "labelblk", "labelmap": "labelmap", "keyvalue": "keyvalue"}
RESERVED_NAMES = ("log", "branch", "note", "commit", "newversion")
UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometers": 1e3, "micrometer": 1e3,
           "microns": 1e3, "um": 1e3, "millimeters": 1e6, "mm": 1e6}
NAME_RE = re.compile(r"[^/\s]{1,255}")
LEVEL_NAME = re.compile(r"(.+)_([1-9][0-9]*)")
#: the highest MaxDownresLevel of a labelmap made by a client (its scales are computed from scale 0 on
#: each read, 8**level voxels per voxel)
MAX_DOWNRES = 7
#: the longest side of a client-made instance's blocks
MAX_BLOCK_SIDE = 1024
#: DVID's first mutation id of a repo, and how far ahead of it the saved id runs (datastore/repo_local.go)
INITIAL_MUTATION_ID = 1_000_000_000
MUTATION_ID_STRIDE = 100


class DvidError(Exception):
    """An error answer: HTTP status and message (the app adds the URL path, as DVID does)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def bad(message: str) -> DvidError:
    return DvidError(400, message)


def type_url(typename: str) -> str:
    package = TYPE_PACKAGE.get(typename, "imageblk")
    return f"github.com/janelia-flyem/dvid/datatype/{package}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Node:
    """One version: a node of a repo's DAG."""

    uuid: str
    vid: int
    branch: str = ""
    locked: bool = False
    parents: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    note: str = ""
    log: list[str] = field(default_factory=list)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    def to_json(self) -> dict:
        return {"UUID": self.uuid, "VersionID": self.vid, "Branch": self.branch, "Locked": self.locked,
                "Parents": list(self.parents), "Children": list(self.children), "Note": self.note,
                "Log": list(self.log), "Created": self.created, "Updated": self.updated}


class Instance:
    """A data instance: settings, and its blocks and keys per version (guarded by ``lock``)."""

    def __init__(self, repo: "Repo", name: str, typename: str, *, versioned: bool = True,
                 block_xyz=None, voxel_xyz=(8.0, 8.0, 8.0), units=("nanometers",) * 3,
                 source: tuple[tuple[str, ...], int] | None = None, source_box: Box | None = None,
                 scale_level: int = 0, max_downres: int = 0):
        self.repo, self.name, self.typename, self.versioned = repo, name, typename, versioned
        self.data_uuid = hashlib.md5(f"{repo.root}/{name}".encode()).hexdigest()
        default = 64 if typename == "labelmap" else 32
        self.block_xyz = tuple(int(v) for v in (block_xyz or (default,) * 3))
        self.voxel_xyz = tuple(float(v) for v in voxel_xyz)
        self.units = tuple(units)
        self.source, self.source_box = source, source_box
        self.scale_level, self.max_downres = int(scale_level), int(max_downres)
        self.lock = threading.Lock()
        self.blocks: dict[int, dict[tuple[int, int, int], np.ndarray]] = {}
        self.kv: dict[int, dict[str, bytes | None]] = {}
        self.extent: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # zyx, inclusive
        self.next_label = 0
        self.tags: dict[str, str] = {}
        #: the last voxel write through this server: (mutation id, user, app, RFC3339 time)
        self.last_mod: tuple[int, str, str, str] = (0, "", "", _now())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(VOXEL_TYPES[self.typename])

    @property
    def is_voxels(self) -> bool:
        return self.typename in VOXEL_TYPES

    @property
    def block_zyx(self) -> tuple[int, int, int]:
        return self.block_xyz[::-1]

    def data_box(self) -> Box | None:
        """The box holding every stored voxel (the served volume's box, or the extents)."""
        if self.source_box is not None:
            return self.source_box
        with self.lock:
            if self.extent is None:
                return None
            lo, hi = self.extent
        return Box(lo, tuple(h + 1 for h in hi))

    def info(self) -> dict:
        base = {"TypeName": self.typename, "TypeURL": type_url(self.typename), "TypeVersion": "0.1",
                "DataUUID": self.data_uuid, "Name": self.name, "RepoUUID": self.repo.root,
                "Compression": "LZ4 compression, level -1", "Checksum": "No checksum", "Syncs": [],
                "Versioned": self.versioned, "KVStore": "ndfs", "LogStore": "ndfs", "Tags": {}}
        if not self.is_voxels:
            return {"Base": base, "Extended": {}}
        box = self.data_box()
        if box is None:
            lo = hi = lo_i = hi_i = None
        else:
            lo = list(box.start[::-1])
            hi = [v - 1 for v in box.stop[::-1]]
            lo_i = [v // b for v, b in zip(lo, self.block_xyz)]
            hi_i = [v // b for v, b in zip(hi, self.block_xyz)]
        label = "labelmap" if self.typename == "labelmap" else self.dtype.name
        ext = {"Values": [{"DataType": self.dtype.name, "Label": label}], "Interpolable": self.typename
               not in LABEL_TYPES, "BlockSize": list(self.block_xyz), "VoxelSize": list(self.voxel_xyz),
               "VoxelUnits": list(self.units), "MinPoint": lo, "MaxPoint": hi, "MinIndex": lo_i,
               "MaxIndex": hi_i, "Background": 0, "GridStore": "", "ScaleLevel": self.scale_level}
        if self.typename == "labelmap":
            ext.update({"MaxLabel": {}, "MaxRepoLabel": self.next_label, "NextLabel": self.next_label,
                        "IndexedLabels": True, "MaxDownresLevel": self.max_downres})
        return {"Base": base, "Extended": ext, "Extents": {"MinPoint": lo, "MaxPoint": hi}}


class Repo:
    """A repo: alias, description, log, its DAG (by VersionID) and instances (repo-wide)."""

    def __init__(self, root: str, alias: str = "", description: str = "", folder: str | None = None):
        self.root, self.alias, self.description, self.folder = root, alias, description, folder
        self.log: list[str] = []
        self.nodes: dict[int, Node] = {}
        self.instances: dict[str, Instance] = {}
        self.created = self.updated = _now()
        #: the repo's mutation counter: every voxel write of any instance, at any node, draws the next id
        #: before it is applied, as DVID's does (the repo info's ``MutationID``; clients watch it for changes)
        self.mutation_id = INITIAL_MUTATION_ID
        self._mutation_lock = threading.Lock()

    def new_mutation_id(self) -> int:
        """Draw the id of one write (DVID: ``repoT.newMutationID``). Thread-safe."""
        with self._mutation_lock:
            drawn = self.mutation_id
            self.mutation_id += 1
        return drawn

    @property
    def root_vid(self) -> int:
        return min(self.nodes)

    def to_json(self) -> dict:
        return {"Root": self.root, "Alias": self.alias, "Description": self.description, "Log": list(self.log),
                "Properties": {}, "DataInstances": {n: i.info() for n, i in sorted(self.instances.items())},
                "DAG": {"Root": self.root, "Nodes": {n.uuid: n.to_json() for n in self.nodes.values()}},
                "MutationID": self.mutation_id,
                "SavedMutationID": (self.mutation_id // MUTATION_ID_STRIDE + 1) * MUTATION_ID_STRIDE,
                "Created": self.created, "Updated": self.updated}

    def leaf(self, branch: str) -> Node | None:
        """The newest node of a branch ("" = master): the branch's node with no child on the same branch."""
        for node in self.nodes.values():
            if node.branch == branch and not any(self.nodes[c].branch == branch for c in node.children):
                return node
        return None

    def chain(self, node: Node) -> list[Node]:
        """The node and its first-parent ancestors up to the root, node first."""
        out = [node]
        while out[-1].parents:
            out.append(self.nodes[out[-1].parents[0]])
        return out


class DvidModel:
    """The DVID view of one backend (see the module doc). Thread-safe."""

    def __init__(self, backend: Backend, *, read_only: bool = False):
        self.backend = backend
        self.read_only = read_only
        self._lock = threading.RLock()
        self._vids = itertools.count(1)
        self.repos: dict[str, Repo] = {}
        self._nodes: dict[str, tuple[Repo, Node]] = {}
        self._folders: dict[str, Repo] = {}

    # ---- the backend's folders and volumes -------------------------------
    def refresh(self) -> None:
        """Bring in folders and volumes that appeared in the backend since the last look."""
        try:
            names = self.backend.children(())
        except NotFound:
            return
        for name in names:
            if not NAME_RE.fullmatch(name) or self._kind((name,)) != "folder":
                continue
            with self._lock:
                repo = self._folders.get(name)
                if repo is None:
                    root = hashlib.md5(f"ndfs-dvid-repo/{name}".encode()).hexdigest()
                    if root in self.repos:
                        continue
                    repo = self._add_repo(root, alias=name, folder=name)
            self._sync_instances(repo)

    def _kind(self, path: tuple[str, ...]) -> str | None:
        try:
            return "volume" if self.backend.is_volume(path) else "folder"
        except NotFound:
            return None

    def _sync_instances(self, repo: Repo) -> None:
        try:
            names = self.backend.children((repo.folder,))
        except NotFound:
            return
        for name in names:
            with self._lock:
                if name in repo.instances or not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
                    continue
            ref = (repo.folder, name)
            if self._kind(ref) != "volume":
                continue
            try:
                info = self.backend.info(ref)
            except NdfsError:
                continue
            typename = _typename(info)
            if typename is None:
                continue
            with self._lock:
                for level, lv in enumerate(info.levels):
                    iname = name if level == 0 else f"{name}_{level}"
                    if iname in repo.instances:
                        continue
                    repo.instances[iname] = Instance(
                        repo, iname, typename, voxel_xyz=lv.voxel_size_nm[::-1], source=(ref, level),
                        source_box=lv.box, scale_level=level)

    # ---- repos and nodes --------------------------------------------------
    def _add_repo(self, root: str, alias: str = "", description: str = "", folder: str | None = None) -> Repo:
        repo = Repo(root, alias, description, folder)
        node = Node(root, next(self._vids))
        repo.nodes[node.vid] = node
        self.repos[root] = repo
        self._nodes[root] = (repo, node)
        if folder is not None:
            self._folders[folder] = repo
        return repo

    def create_repo(self, alias: str, description: str, root: str | None = None) -> Repo:
        with self._lock:
            if root is not None:
                if not re.fullmatch(r"[0-9a-f]{32}", root):
                    raise bad(f"root UUID {root!r} must be 32 lower-case hexadecimal characters")
                if root in self._nodes:
                    raise bad(f"UUID {root} already exists")
            return self._add_repo(root or uuidlib.uuid4().hex, alias, description)

    def all_repos(self) -> list[Repo]:
        self.refresh()
        with self._lock:
            return list(self.repos.values())

    def resolve(self, text: str) -> tuple[Repo, Node]:
        """A node from a UUID prefix, ``prefix:branch`` (the branch's leaf) or ``:master~N``."""
        try:
            return self._resolve(text)
        except DvidError:
            self.refresh()
            return self._resolve(text)

    def _resolve(self, text: str) -> tuple[Repo, Node]:
        prefix, colon, branch = text.partition(":")
        steps = 0
        if colon:
            branch, tilde, back = branch.partition("~")
            if tilde:
                if not (back.isascii() and back.isdigit() and len(back) <= 9):
                    raise bad(f"bad version step {back[:32]!r} in {text[:64]!r}: a number of versions back")
                steps = int(back)
        with self._lock:
            if colon and not prefix:
                if len(self.repos) != 1:
                    raise bad(f"{text!r} names a branch without a UUID but there are {len(self.repos)} repos")
                repo = next(iter(self.repos.values()))
            else:
                found = [hit for u, hit in self._nodes.items() if u.startswith(prefix)] if prefix else []
                if not found:
                    raise bad(f"could not find UUID with partial match to {prefix}")
                if len(found) > 1:
                    raise bad(f"more than one UUID matches {prefix}")
                repo, node = found[0]
                if not colon:
                    return repo, node
            name = "" if branch == "master" else branch
            node = repo.leaf(name)
            if node is None:
                raise bad(f"no branch {branch!r} in repo {repo.root}")
            for _ in range(steps):
                if not node.parents:
                    raise bad(f"{text!r} steps back past the root")
                node = repo.nodes[node.parents[0]]
            return repo, node

    def branch_versions(self, repo: Repo, branch: str) -> list[str]:
        with self._lock:
            leaf = repo.leaf("" if branch == "master" else branch)
            if leaf is None:
                raise bad(f"no branch {branch!r} in repo {repo.root}")
            return [n.uuid for n in repo.chain(leaf)]

    def commit(self, repo: Repo, node: Node, note: str, log: list[str]) -> None:
        with self._lock:
            if node.locked:
                raise bad(f"node {node.uuid} is already locked")
            node.locked = True
            if note:
                node.note = note
            node.log.extend(log)
            node.updated = _now()

    def new_child(self, repo: Repo, parent: Node, *, branch: str | None, note: str,
                  child_uuid: str | None = None) -> Node:
        """``newversion`` (branch None: on the parent's branch) or ``branch`` (a new branch name)."""
        with self._lock:
            if not parent.locked:
                raise bad(f"can't branch an unlocked node {parent.uuid}")
            if branch is None:
                branch = parent.branch
                if any(repo.nodes[c].branch == branch for c in parent.children):
                    raise bad(f"node {parent.uuid} already has a child on branch {branch or 'master'}; "
                              "make a new branch instead")
            else:
                if branch in ("", "master"):
                    raise bad("a new branch needs a name other than master")
                if any(n.branch == branch for n in repo.nodes.values()):
                    raise bad(f"branch {branch!r} already exists in repo {repo.root}")
            if child_uuid is not None:
                if not re.fullmatch(r"[0-9a-f]{32}", child_uuid) or child_uuid in self._nodes:
                    raise bad(f"cannot use {child_uuid!r} as the new node's UUID")
            node = Node(child_uuid or uuidlib.uuid4().hex, next(self._vids), branch=branch, note=note,
                        parents=[parent.vid])
            parent.children.append(node.vid)
            repo.nodes[node.vid] = node
            self._nodes[node.uuid] = (repo, node)
            repo.updated = _now()
            return node

    # ---- instances ----------------------------------------------------------
    def instance(self, repo: Repo, name: str) -> Instance:
        with self._lock:
            found = repo.instances.get(name)
        if found is None and repo.folder is not None:
            self._sync_instances(repo)
            with self._lock:
                found = repo.instances.get(name)
        if found is None:
            raise bad(f"invalid data instance name {name!r}")
        return found

    def create_instance(self, repo: Repo, node: Node, config: dict) -> Instance:
        """An instance from a creation body (keys lower-cased, values checked by the caller)."""
        typename, name = config.get("typename", ""), config.get("dataname", "")
        if typename not in TYPES:
            raise bad(f"unknown datatype {typename!r} (this server has {', '.join(TYPES)})")
        if not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
            raise bad(f"cannot use {name!r} as a data instance name")
        versioned = str(config.get("versioned", "true")).lower() not in ("0", "false")
        kwargs = {"versioned": versioned}
        if typename in VOXEL_TYPES:
            kwargs["block_xyz"] = _triple(config, "blocksize", int, None)
            if kwargs["block_xyz"] is not None and (
                    any(not 0 < v <= MAX_BLOCK_SIDE for v in kwargs["block_xyz"])
                    or (typename == "labelmap" and any(v % 16 for v in kwargs["block_xyz"]))):
                raise bad(f"bad BlockSize {config['blocksize'][:64]!r}: sides from 1 to {MAX_BLOCK_SIDE}")
            kwargs["voxel_xyz"] = _triple(config, "voxelsize", float, (8.0, 8.0, 8.0))
            units = config.get("voxelunits", "nanometers").split(",")
            kwargs["units"] = tuple(u.strip() for u in (units * 3 if len(units) == 1 else units))
            if len(kwargs["units"]) != 3:
                raise bad(f"bad VoxelUnits {config['voxelunits']!r}")
            if typename == "labelmap":
                level = config.get("maxdownreslevel", "0")
                if not (level.isascii() and level.isdigit() and len(level) <= 2 and int(level) <= MAX_DOWNRES):
                    raise bad(f"bad MaxDownresLevel {level[:32]!r}: this server computes scales 0 to {MAX_DOWNRES}")
                kwargs["max_downres"] = int(level)
        with self._lock:
            if node.locked:
                raise bad(f"cannot create data instance {name!r} on locked node {node.uuid}")
            if name not in repo.instances and repo.folder is not None:
                self._sync_instances(repo)
            if name in repo.instances:
                raise bad(f"data instance {name!r} already exists in repo {repo.root}")
            inst = Instance(repo, name, typename, **kwargs)
            repo.instances[name] = inst
            repo.updated = _now()
            return inst

    def storage_vid(self, inst: Instance, node: Node) -> int:
        return node.vid if inst.versioned else inst.repo.root_vid

    def chain(self, inst: Instance, node: Node) -> list[int]:
        """Versions to look in for a read at node, nearest first."""
        if not inst.versioned:
            return [inst.repo.root_vid]
        with self._lock:
            return [n.vid for n in inst.repo.chain(node)]

    # ---- voxels -------------------------------------------------------------
    def read(self, inst: Instance, node: Node, box: Box) -> np.ndarray:
        """The voxels of a ZYX box at a node: zeros where nothing was written."""
        out = np.zeros(box.shape, inst.dtype)
        if inst.source is not None:
            inside = box.intersect(inst.source_box)
            if inside is not None:
                ref, level = inst.source
                try:
                    out[inside.slices(box.start)] = self.backend.read(ref, inside, level)
                except NdfsError as exc:
                    raise DvidError(500, f"reading the served volume failed: {exc}") from exc
        chain = self.chain(inst, node)
        with inst.lock:
            layers = [dict(inst.blocks[v]) for v in reversed(chain) if inst.blocks.get(v)]
        bz, by, bx = inst.block_zyx
        for layer in layers:  # root first: nearer versions paste over farther ones
            for (iz, iy, ix), block in layer.items():
                bbox = Box((iz * bz, iy * by, ix * bx), ((iz + 1) * bz, (iy + 1) * by, (ix + 1) * bx))
                part = bbox.intersect(box)
                if part is not None:
                    out[part.slices(box.start)] = block[part.slices(bbox.start)]
        return out

    def write(self, inst: Instance, node: Node, box: Box, data: np.ndarray) -> None:
        """Replace the whole blocks of a block-aligned ZYX box at a node (the caller checked locks)."""
        if self.read_only:
            raise bad("server is in read-only mode")
        if any(a % b or s % b for a, s, b in zip(box.start, box.shape, inst.block_zyx)):
            raise bad(f"cannot store voxels in non-block aligned geometry {box}")
        vid = self.storage_vid(inst, node)
        if inst.source is not None:
            inside = box.intersect(inst.source_box)
            within = 0 if inside is None else np.count_nonzero(data[inside.slices(box.start)])
            if np.count_nonzero(data) != within:  # counted in place: no copy of the voxels
                raise bad(f"non-zero voxels beyond the served volume {inst.source_box} of {inst.name}")
            if vid == inst.repo.root_vid:
                if inside is not None:
                    ref, level = inst.source
                    try:
                        self.backend.write(ref, inside, level, data[inside.slices(box.start)])
                    except NdfsError as exc:
                        raise bad(f"storing voxels in the served volume failed: {exc}") from exc
                return
        bz, by, bx = inst.block_zyx
        with inst.lock:
            layer = inst.blocks.setdefault(vid, {})
            for z in range(box.start[0], box.stop[0], bz):
                for y in range(box.start[1], box.stop[1], by):
                    for x in range(box.start[2], box.stop[2], bx):
                        part = Box((z, y, x), (z + bz, y + by, x + bx))
                        layer[(z // bz, y // by, x // bx)] = data[part.slices(box.start)].copy()
            if inst.source is None:
                lo, hi = box.start, tuple(s - 1 for s in box.stop)
                if inst.extent is not None:
                    lo = tuple(min(a, b) for a, b in zip(lo, inst.extent[0]))
                    hi = tuple(max(a, b) for a, b in zip(hi, inst.extent[1]))
                inst.extent = (lo, hi)
            if inst.dtype == np.uint64 and data.size:
                inst.next_label = max(inst.next_label, int(data.max()))

    # ---- keys ------------------------------------------------------------------
    def get_key(self, inst: Instance, node: Node, key: str) -> bytes | None:
        chain = self.chain(inst, node)
        with inst.lock:
            for vid in chain:
                values = inst.kv.get(vid, {})
                if key in values:
                    return values[key]
        return None

    def keys(self, inst: Instance, node: Node) -> list[str]:
        chain = self.chain(inst, node)
        seen: dict[str, bool] = {}
        with inst.lock:
            for vid in chain:
                for key, value in inst.kv.get(vid, {}).items():
                    seen.setdefault(key, value is not None)
        return sorted((k for k, present in seen.items() if present), key=lambda k: k.encode())

    def put_key(self, inst: Instance, node: Node, key: str, value: bytes) -> None:
        if self.read_only:
            raise bad("server is in read-only mode")
        with inst.lock:
            inst.kv.setdefault(self.storage_vid(inst, node), {})[key] = bytes(value)

    def delete_key(self, inst: Instance, node: Node, key: str) -> None:
        if self.read_only:
            raise bad("server is in read-only mode")
        vid = self.storage_vid(inst, node)
        chain = self.chain(inst, node)
        with inst.lock:
            inherited = any(inst.kv.get(v, {}).get(key) is not None for v in chain[1:])
            values = inst.kv.setdefault(vid, {})
            if inherited:
                values[key] = None  # a tombstone hides the ancestors' value here only
            else:
                values.pop(key, None)


def _typename(info) -> str | None:
    name = info.dtype.name
    if info.kind == "annotation":
        return "labelmap" if name == "uint64" else None
    return f"{name}blk" if f"{name}blk" in VOXEL_TYPES else None


def _triple(config: dict, key: str, kind, default):
    if key not in config:
        return default
    parts = config[key].split(",")
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise bad(f"bad {key} {config[key][:64]!r}: needs 3 comma-separated numbers") from None
    if kind is float and not all(0 < v < float("inf") for v in values):
        raise bad(f"bad {key} {config[key][:64]!r}: needs positive finite numbers")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise bad(f"bad {key} {config[key]!r}: needs 3 comma-separated numbers")
    return values
