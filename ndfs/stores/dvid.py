"""The DVID driver: repos, version nodes, data instances and key-value stores over DVID's HTTP API.

Hierarchy: ``children(())`` lists repos, named by alias (by root UUID when the
alias is empty, not a usable file name, or shared by several repos; the root
UUID always works too). ``children((repo,))`` lists the repo's nodes:
``master`` (the leaf of the master branch, which moves on as the repo gets
new versions), the name of every other branch (its leaf), then every node's
UUID. ``children((repo, node))`` lists the data instances: voxel instances
(``uint8blk``, ``uint16blk``, ``uint32blk``, ``uint64blk``, ``float32blk``,
``labelblk``, ``labelmap``) are volumes, key-value instances are folders whose
keys are files (``read_file``/``write_file``/``delete_file`` GET, POST and
DELETE one key). With ``branch="master"`` (or any branch name) the node level
is left out: ``(repo, instance)`` reads each repo at the leaf of that branch.

Instance metadata becomes a VolumeInfo: dtype from ``Values[0].DataType``
(labelblk and labelmap are uint64 annotation volumes, the rest images), the
box from ``MinPoint``/``MaxPoint`` (an instance never written is one empty
block at the origin), voxel size in nm from ``VoxelSize``/``VoxelUnits``, the
BlockSize as chunk shape on DVID's global block grid. Levels: a labelmap with
``MaxDownresLevel`` N has levels 0..N read with ``?scale=``, each halving x, y
and z as DVID does; other instances take sibling instances ``<name>_<i>`` of
the same type with ``Extended.ScaleLevel`` i as level i (``ndfs serve
--protocol dvid`` names pyramids so) and hide them from the listing.

Voxels travel as headerless little-endian ZYX bodies, labels LZ4-compressed
when the ``lz4`` package is installed (``label_compression``). Every transfer
is cut on a grid of whole blocks, each request at most ``max_request_voxels``
(256^3, DVID's large-request limit) and ``max_request_bytes``, long in x, and
the pieces run in parallel. Writes go to the node's blocks as DVID requires:
a box that is not block-aligned is widened to whole blocks, and each widened
piece is read, patched with the new voxels and posted back (read-modify-write,
serialised per volume within this backend; another client writing the same
blocks at the same moment can be overwritten). A node that is locked
(committed) is read-only: writes raise ReadOnly (EROFS) before any voxel
moves, and DVID's own ``locked node`` answer maps to ReadOnly too. Labelmap
levels above 0 are computed by DVID and cannot be written.

Requests have a (connect, read) timeout and are retried on connection errors,
timeouts, truncated bodies and HTTP 429/5xx with jittered exponential backoff;
errors map to the NdfsError tree: 400 by its text (``locked node``,
``read-only`` -> ReadOnly; ``invalid data instance name``, ``could not find
UUID`` -> NotFound; other 400s, e.g. ``non-block aligned`` -> BadRegion),
401/403 PermissionDenied, 404 NotFound, 413 TooLarge, the rest BackendError.
A token, if given, goes only into the Authorization header (``Token``) and never
into logs or reprs. Repo listings are remembered for ``ttl_s`` seconds, a
branch's leaf until the repo's version DAG gets a new node.

Writes by other clients: :meth:`DvidBackend.validate` gives a cache the state
of an instance from its repo's JSON, at most one ``GET /api/repo/{uuid}/info``
per repo per max age (DVID counts every voxel write of a repo in its
``MutationID``; a versioned instance of a locked node named by its UUID can no
longer change).

RAMON (capability ``ramon``, label instances): objects in the key-value instance
``<instance>_ramon``, ids through ``nextlabel``, boxes from ``sparsevol-size``;
see :mod:`ndfs.stores.dvid_ramon`.

Thread-safe: the session, the pool, the memos and the counters are shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence
from urllib.parse import quote

import numpy as np

from ndfs.stores.base import AnnotationStore, Backend, KeyValueStore, Validation, VolumeRef, as_ref
from ndfs.stores.dvid_ramon import DvidRamon
from ndfs.stores.http import HttpClient, HttpDriver, mask_url, run_parallel, status_error
from ndfs.core.errors import BackendError, BadInput, BadRegion, NdfsError, NotFound, ReadOnly
from ndfs.formats import safe
from ndfs.core.geometry import Box, ChunkGrid
from ndfs.core.info import LevelInfo, VolumeInfo

log = logging.getLogger("ndfs.dvid")
MiB = 2**20
DTYPES = {"uint8blk": "uint8", "uint16blk": "uint16", "uint32blk": "uint32", "uint64blk": "uint64",
          "float32blk": "float32", "labelblk": "uint64", "labelmap": "uint64"}
LABEL_TYPES = ("labelblk", "labelmap")
UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometers": 1e3, "micrometer": 1e3,
           "microns": 1e3, "um": 1e3, "millimeters": 1e6, "mm": 1e6}
UUID_RE = re.compile(r"[0-9a-f]{32}")
LEVEL_NAME = re.compile(r"(.+)_([1-9][0-9]*)")


def usable_name(name: str) -> bool:
    """Can this repo alias, instance or key be a file name in a mount?"""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def request_shape(block_zyx: Sequence[int], span_zyx: Sequence[int], itemsize: int,
                  max_voxels: int, max_bytes: int) -> tuple[int, int, int]:
    """Whole blocks per request: grown along x, then y, then z up to the span, within both limits. Pure."""
    limit = max(int(np.prod(block_zyx)), min(max_voxels, max_bytes // max(1, itemsize)))
    shape = list(block_zyx)
    for axis in (2, 1, 0):
        blocks_needed = -(-span_zyx[axis] // block_zyx[axis]) + 1
        others = int(np.prod(shape)) // shape[axis]
        shape[axis] = block_zyx[axis] * max(1, min(blocks_needed, limit // (others * block_zyx[axis])))
    return tuple(shape)  # type: ignore[return-value]


def align(box: Box, block_zyx: Sequence[int]) -> Box:
    """The smallest box of whole blocks (global grid from 0) that covers the box. Pure."""
    return Box(tuple(a - a % b for a, b in zip(box.start, block_zyx)),
               tuple(-(-s // b) * b for s, b in zip(box.stop, block_zyx)))


def volume_info(main: dict, levels: list[dict], *, repo: str, uuid: str, instance: str,
                level_names: list[str]) -> VolumeInfo:
    """VolumeInfo from an instance's info JSON and its level instances' (or its labelmap scales). Pure."""
    base, ext = main.get("Base") or {}, main.get("Extended") or {}
    typename = str(base.get("TypeName") or "")
    if typename not in DTYPES:
        raise ValueError(f"type {typename!r} is not a voxel type ndfs reads ({', '.join(DTYPES)})")
    values = ext.get("Values") or [{}]
    dtype = np.dtype(str(values[0].get("DataType") or DTYPES[typename]))
    if dtype.name not in DTYPES.values():
        raise ValueError(f"voxel type {dtype} is not one of {', '.join(sorted(set(DTYPES.values())))}")
    out, names = [], []
    if typename == "labelmap" and int(ext.get("MaxDownresLevel") or 0) > 0:
        lv0 = _level(ext)
        for scale in range(int(ext["MaxDownresLevel"]) + 1):
            f = 2**scale
            start = tuple(a // f for a in lv0.offset)
            stop = tuple((a + s - 1) // f + 1 for a, s in zip(lv0.offset, lv0.shape))
            out.append(LevelInfo(shape=tuple(b - a for a, b in zip(start, stop)), offset=start,
                                 voxel_size_nm=tuple(v * f for v in lv0.voxel_size_nm),
                                 chunk_shape=lv0.chunk_shape, chunk_origin=(0, 0, 0)))
            names.append({"instance": instance, "scale": scale})
    else:
        for name, doc in zip([instance] + level_names, [main] + levels):
            out.append(_level(doc.get("Extended") or {}))
            names.append({"instance": name, "scale": 0})
    kind = "annotation" if typename in LABEL_TYPES else "image"
    extra = {"dvid": {"repo": repo, "uuid": uuid, "instance": instance, "typename": typename,
                      "block_size_xyz": list(out[0].chunk_shape[::-1]), "levels": names}}
    return VolumeInfo(dtype=dtype, kind=kind, levels=tuple(out), extra=extra)


def _level(ext: dict) -> LevelInfo:
    block = tuple(int(v) for v in (ext.get("BlockSize") or (32, 32, 32)))[::-1]
    if len(block) != 3 or min(block) <= 0:
        raise ValueError(f"bad BlockSize {ext.get('BlockSize')!r}")
    units = ext.get("VoxelUnits") or ["nanometers"] * 3
    units = [units] * 3 if isinstance(units, str) else list(units)
    sizes = [float(v) for v in (ext.get("VoxelSize") or (8, 8, 8))]
    try:
        voxel = tuple(s * UNIT_NM[str(u).lower()] for s, u in zip(sizes, units))[::-1]
    except KeyError as exc:
        raise ValueError(f"voxel unit {exc.args[0]!r} is not one of {', '.join(UNIT_NM)}") from None
    lo, hi = ext.get("MinPoint"), ext.get("MaxPoint")
    if lo is None or hi is None:  # never written: one empty block at the origin
        start, shape = (0, 0, 0), block
    else:
        start = tuple(int(v) for v in lo)[::-1]
        shape = tuple(int(b) - int(a) + 1 for a, b in zip(lo, hi))[::-1]
        if min(shape) <= 0:
            raise ValueError(f"MaxPoint {hi} is before MinPoint {lo}")
    return LevelInfo(shape=shape, offset=start, voxel_size_nm=voxel, chunk_shape=block, chunk_origin=(0, 0, 0))


class DvidBackend(DvidRamon, HttpDriver, Backend, AnnotationStore, KeyValueStore):
    """A DVID server at ``url`` (e.g. ``http://emdata.example.org:8000``).

    ``branch``: None for the repo/node/instance hierarchy, or a branch name
    (``"master"``) for repo/instance at that branch's leaf. ``timeout_s`` is
    the read timeout (``connect_timeout_s`` the connect timeout); ``retries``
    extra attempts follow a retryable failure after ``backoff_s * 2**n``
    (full jitter, capped); ``workers`` requests run at once; each request
    moves at most ``max_request_voxels`` and ``max_request_bytes``;
    ``label_compression`` is ``"auto"`` (lz4 if installed), ``"lz4"``,
    ``"gzip"`` or ``"none"``. No network I/O happens until first use.
    """

    kind = "dvid"

    def __init__(self, url: str, token: str | None = None, *, branch: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 3.0, retries: int = 4,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0, workers: int = 8,
                 max_request_voxels: int = 256**3, max_request_bytes: int = 128 * MiB, ttl_s: float = 10.0,
                 label_compression: str = "auto", read_only: bool = False):
        super().__init__()
        if not re.match(r"https?://[^/]+", str(url)):
            raise BadRegion(f"a DVID url looks like http://host:8000, got {mask_url(str(url))!r}")
        if workers < 1 or retries < 0 or max_request_voxels < 1 or max_request_bytes < 8 or timeout_s <= 0:
            raise BadRegion("DVID driver settings must be positive (workers, timeout_s, max_request_*)")
        if label_compression not in ("auto", "lz4", "gzip", "none"):
            raise BadRegion(f"label_compression must be auto, lz4, gzip or none, not {label_compression!r}")
        if label_compression == "auto":
            try:
                import lz4.block  # noqa: F401
                label_compression = "lz4"
            except ImportError:
                label_compression = "none"
        self.url = str(url).rstrip("/").removesuffix("/api")
        self.branch = branch
        self._token = token
        self.workers = int(workers)
        self.max_request_voxels, self.max_request_bytes = int(max_request_voxels), int(max_request_bytes)
        self.ttl_s, self.label_compression = float(ttl_s), label_compression
        self.capabilities = frozenset() if read_only else frozenset({"write"})
        self._client = HttpClient("DVID", self.url, token, _error_for, timeout_s=timeout_s,
                                  connect_timeout_s=connect_timeout_s, retries=retries, backoff_s=backoff_s,
                                  backoff_cap_s=backoff_cap_s, workers=self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ndfs-dvid")
        self._lock = threading.Lock()  # guards _memo, _rmw, _docs, _dags and _doc_locks
        self._memo: dict[tuple, tuple[float, object]] = {}
        self._rmw: dict[tuple, threading.Lock] = {}
        self._docs: dict[str, tuple[float, float, dict]] = {}  # root -> (monotonic, wall time, newest repo JSON)
        self._dags: dict[str, frozenset] = {}  # root -> the node UUIDs of its version DAG when last seen
        self._doc_locks: dict[str, threading.Lock] = {}  # one repo info request per repo at a time

    # ---- HTTP ------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs):
        """One logical request with the shared retry policy (``specs/dvid.md`` 8); returns the response or decode()."""
        return self._client.request(method, path, **kwargs)

    def _exists(self, path: str) -> bool:
        """HEAD: True on 200, False on 404."""
        try:
            self._request("HEAD", path)
        except NotFound:
            return False
        return True

    def _get_json(self, path: str, kind=dict):
        def decode(resp):
            doc = safe.reply_json(resp.content)
            if not isinstance(doc, kind):
                raise ValueError(f"expected a JSON {kind.__name__}")
            return doc

        return self._request("GET", path, decode=decode)

    def _memoised(self, key: tuple, compute: Callable[[], object], fresh: bool = False, expires: bool = True):
        """``compute()``, remembered for ``ttl_s`` (without ``expires``: until dropped, see :meth:`_note_repo`)."""
        now = time.monotonic()
        with self._lock:
            hit = self._memo.get(key)
        if hit is not None and not fresh and (not expires or now - hit[0] < self.ttl_s):
            return hit[1]
        value = compute()
        with self._lock:
            self._memo[key] = (now, value)
        return value

    # ---- repos, nodes, instances ----------------------------------------
    def _repos(self, fresh: bool = False) -> dict[str, dict]:
        """Repo JSON by folder name (alias, or root UUID) and by root UUID."""

        def load():
            mono, wall = time.monotonic(), time.time()  # taken before the request: the answer is at least this new
            repos = self._get_json("/api/repos/info")
            counts: dict[str, int] = {}
            for repo in repos.values():
                alias = str((repo or {}).get("Alias") or "")
                counts[alias] = counts.get(alias, 0) + 1
            names, by_name = {}, {}
            for root, repo in repos.items():
                if not isinstance(repo, dict):
                    continue
                alias = str(repo.get("Alias") or "")
                name = alias if usable_name(alias) and counts[alias] == 1 and not UUID_RE.fullmatch(alias) else root
                names[name] = repo
                by_name[root] = repo
                self._note_repo(root, repo, mono, wall, patch=False)
            return {"names": names, "all": {**by_name, **names}}

        return self._memoised(("repos",), load, fresh)

    def _repo(self, name: str) -> dict:
        repo = self._repos()["all"].get(name) or self._repos(fresh=True)["all"].get(name)
        if repo is None:
            raise NotFound(f"no DVID repo named {name!r}")
        return repo

    @staticmethod
    def _dag(repo: dict) -> dict[str, dict]:
        nodes = ((repo.get("DAG") or {}).get("Nodes")) or {}
        return {u: n for u, n in nodes.items() if isinstance(n, dict)}

    def _node_names(self, repo: dict) -> list[str]:
        dag = self._dag(repo)
        branches = sorted({str(n.get("Branch") or "") for n in dag.values()} - {""})
        return ["master"] + [b for b in branches if usable_name(b) and b != "master"] + sorted(dag)

    def _node(self, repo: dict, name: str) -> str:
        """The UUID a node name stands for: a UUID of the repo, or the leaf of a branch."""
        dag = self._dag(repo)
        if name in dag:
            return name
        branches = {str(n.get("Branch") or "") for n in dag.values()}
        if name != "master" and name not in branches:
            raise NotFound(f"repo {repo.get('Alias') or repo.get('Root')} has no node or branch {name!r}")
        root = str(repo.get("Root"))
        # a branch's leaf moves only when a node is added, which _note_repo sees in the DAG: no ttl here
        versions = self._memoised(("branch", root, name), lambda: self._get_json(
            f"/api/repo/{root}/branch-versions/{quote(name, safe='')}", kind=list), expires=False)
        if not versions:
            raise NotFound(f"branch {name!r} of repo {root} has no nodes")
        return str(versions[0])

    def _split(self, path: VolumeRef) -> tuple[str | None, str | None, VolumeRef]:
        """(repo name, node name, the rest) of a path; missing parts are None."""
        if not path:
            return None, None, ()
        if self.branch is not None:
            return path[0], self.branch, path[1:]
        return path[0], (path[1] if len(path) > 1 else None), path[2:]

    def _instances(self, repo: dict) -> dict[str, dict]:
        found = repo.get("DataInstances") or {}
        return {n: d for n, d in found.items() if isinstance(d, dict)}

    @staticmethod
    def _typename(doc: dict) -> str:
        return str(((doc.get("Base") or {}).get("TypeName")) or "")

    def _level_names(self, instances: dict[str, dict], name: str) -> list[str]:
        """Names of the sibling instances that are levels 1, 2... of instance ``name``."""
        typename, out = self._typename(instances[name]), []
        while True:
            sibling = instances.get(f"{name}_{len(out) + 1}")
            if sibling is None or self._typename(sibling) != typename:
                return out
            if int(((sibling.get("Extended") or {}).get("ScaleLevel")) or 0) != len(out) + 1:
                return out
            out.append(f"{name}_{len(out) + 1}")

    def _is_level(self, instances: dict[str, dict], name: str) -> bool:
        m = LEVEL_NAME.fullmatch(name)
        return bool(m and m.group(1) in instances and name in self._level_names(instances, m.group(1)))

    def _visible(self, instances: dict[str, dict]) -> list[str]:
        return sorted(n for n, d in instances.items() if usable_name(n) and not self._is_level(instances, n)
                      and (self._typename(d) in DTYPES or self._typename(d) == "keyvalue"))

    def _locate(self, path: VolumeRef) -> tuple[dict, str, str, str, VolumeRef]:
        """(repo, node uuid, instance name, type name, the rest) for a path reaching an instance."""
        repo_name, node_name, rest = self._split(path)
        if repo_name is None or node_name is None or not rest:
            raise NotFound(f"{'/'.join(path) or '/'} is not a DVID data instance")
        repo = self._repo(repo_name)
        uuid = self._node(repo, node_name)
        instances = self._instances(repo)
        name = rest[0]
        if name not in instances or name not in self._visible(instances):
            repo = self._repo_fresh(repo_name)
            instances = self._instances(repo)
            if name not in instances or name not in self._visible(instances):
                raise NotFound(f"repo {repo_name} has no data instance {name!r}")
        return repo, uuid, name, self._typename(instances[name]), rest[1:]

    def _repo_fresh(self, name: str) -> dict:
        repo = self._repos(fresh=True)["all"].get(name)
        if repo is None:
            raise NotFound(f"no DVID repo named {name!r}")
        return repo

    # ---- what other clients change: repo state, the change signal ---------------
    def _note_repo(self, root: str, doc: dict, mono: float, wall: float, patch: bool = True) -> None:
        """Keep the newest JSON of a repo (answered at ``mono``/``wall`` or later). A DAG with other nodes
        than last seen drops the remembered branch leaves (a new version moves a branch on); with ``patch``,
        the repo listing's memo gets this JSON too, so lookups see the instances and nodes it names."""
        nodes = frozenset(self._dag(doc))
        with self._lock:
            old = self._docs.get(root)
            if old is None or old[0] <= mono:
                self._docs[root] = (mono, wall, doc)
            if self._dags.get(root) != nodes:
                self._dags[root] = nodes
                for key in [k for k in self._memo if k[0] == "branch" and k[1] == root]:
                    del self._memo[key]
            hit = self._memo.get(("repos",))
            if patch and hit is not None:
                listing = {part: {k: doc if str(v.get("Root")) == root else v for k, v in hit[1][part].items()}
                           for part in ("names", "all")}
                self._memo[("repos",)] = (hit[0], listing)

    def _repo_doc(self, root: str, max_age_s: float) -> tuple[dict, float]:
        """A repo's JSON answered at most ``max_age_s`` ago, and when (``time.time()``): the newest one held
        (from a listing or an earlier check), else one ``GET /api/repo/{root}/info``."""
        with self._lock:
            hit = self._docs.get(root)
            lock = self._doc_locks.setdefault(root, threading.Lock())
        if hit is not None and time.monotonic() - hit[0] < max_age_s:
            return hit[2], hit[1]
        with lock:  # one request per repo, however many volumes of it are checked at once
            with self._lock:
                hit = self._docs.get(root)
            if hit is not None and time.monotonic() - hit[0] < max_age_s:
                return hit[2], hit[1]
            mono, wall = time.monotonic(), time.time()
            doc = self._get_json(f"/api/repo/{root}/info")
            self._note_repo(root, doc, mono, wall)
            return doc, wall

    def _root_of(self, name: str) -> str:
        """The root UUID of a repo folder, from the listing already held when it names it (no request)."""
        with self._lock:
            hit = self._memo.get(("repos",))
        repo = hit[1]["all"].get(name) if hit is not None else None
        return str((repo if repo is not None else self._repo(name)).get("Root"))

    def validate(self, ref: Sequence[str], max_age_s: float) -> Validation:
        """The instance's state from its repo's JSON (``GET /api/repo/{root}/info``, at most one request per
        repo per ``max_age_s``; none while a listing or another instance's check is that recent).

        DVID has no change signal per instance: every voxel write to any instance of a repo, at any node,
        draws the repo's next ``MutationID`` (labelmap ``lastmod`` is per label, ``mutations`` the whole
        log). The token of an instance at an open node is (node UUID, ``MutationID``, a digest of the
        instance's and its level instances' JSON: extents, identity); at a locked node it is (node UUID,
        ``locked``, the instance's ``DataUUID``), and final when the node was named by its UUID and the
        instance is versioned (an unversioned instance is written at the root whatever the node). A
        branch name's token moves when the branch gets a new leaf. NotFound when the repo, node or
        instance is gone.
        """
        ref = as_ref(ref)
        repo_name, node_name, rest = self._split(ref)
        if repo_name is None or node_name is None or len(rest) != 1:
            raise NotFound(f"{'/'.join(ref) or '/'} is not a DVID data instance")
        root = self._root_of(repo_name)
        doc, at = self._repo_doc(root, max_age_s)
        name, instances = rest[0], self._instances(doc)
        if name not in instances or name not in self._visible(instances) \
                or self._typename(instances[name]) not in DTYPES:
            raise NotFound(f"repo {repo_name} has no voxel instance {name!r}")
        uuid = self._node(doc, node_name)
        base = instances[name].get("Base") or {}
        locked = bool((self._dag(doc).get(uuid) or {}).get("Locked"))
        if locked and base.get("Versioned", True) is not False:
            return Validation((uuid, "locked", str(base.get("DataUUID") or "")), at, final=uuid == node_name)
        scales = int(((instances[name].get("Extended") or {}).get("MaxDownresLevel")) or 0)
        names = [name] + ([] if self._typename(instances[name]) == "labelmap" and scales
                          else self._level_names(instances, name))
        digest = hashlib.sha1(json.dumps([instances[n] for n in names], sort_keys=True, default=str).encode())
        return Validation((uuid, int(doc.get("MutationID") or 0), digest.hexdigest()[:16]), at)

    # ---- hierarchy -------------------------------------------------------
    def _children(self, path: VolumeRef) -> list[str]:
        if not path:
            return sorted(self._repos()["names"])
        repo_name, node_name, rest = self._split(path)
        repo = self._repo(repo_name)
        if node_name is None:
            return self._node_names(repo)
        if not rest:
            self._node(repo, node_name)
            return self._visible(self._instances(repo))
        _, uuid, name, typename, tail = self._locate(path)
        if typename != "keyvalue" or tail:
            raise NotFound(f"{'/'.join(path)} is not a folder")
        keys = self._get_json(f"/api/node/{uuid}/{quote(name, safe='')}/keys", kind=list)
        return [str(k) for k in keys if usable_name(str(k))]

    def _is_volume(self, path: VolumeRef) -> bool:
        if not path:
            return False
        repo_name, node_name, rest = self._split(path)
        repo = self._repo(repo_name)
        if node_name is None:
            return False
        if not rest:
            self._node(repo, node_name)
            return False
        _, _, _, typename, tail = self._locate(path)
        if tail:
            raise NotFound(f"{'/'.join(path)} is a key of a key-value instance, not a folder or volume")
        return typename != "keyvalue"

    # ---- metadata --------------------------------------------------------
    def _info(self, ref: VolumeRef) -> VolumeInfo:
        repo, uuid, name, typename, tail = self._locate(ref)
        if tail or typename not in DTYPES:
            raise NotFound(f"{'/'.join(ref)} is not a DVID voxel instance")
        instances = self._instances(repo)
        scales = int(((instances[name].get("Extended") or {}).get("MaxDownresLevel")) or 0)
        names = [] if typename == "labelmap" and scales else self._level_names(instances, name)
        docs = [self._get_json(f"/api/node/{uuid}/{quote(n, safe='')}/info") for n in [name] + names]
        try:
            return volume_info(docs[0], docs[1:], repo=str(repo.get("Root")), uuid=uuid, instance=name,
                               level_names=names)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"DVID metadata of {'/'.join(ref)} is unusable: {exc}") from exc

    # ---- voxels ----------------------------------------------------------
    def _target(self, ref: VolumeRef, level: int) -> tuple[str, str, int, VolumeInfo]:
        """(node uuid, instance name, labelmap scale, info) of one level of a volume."""
        repo, uuid, _, _, _ = self._locate(ref)
        info = self.info(ref)
        target = info.extra["dvid"]["levels"][level]
        return uuid, target["instance"], int(target["scale"]), info

    def _pieces(self, box: Box, info: VolumeInfo, level: int) -> list[Box]:
        lv = info.level(level)
        shape = request_shape(lv.chunk_shape, lv.shape, info.dtype.itemsize, self.max_request_voxels,
                              self.max_request_bytes)
        grid = ChunkGrid(shape, box, origin=(0, 0, 0))
        return [grid.chunk_box(i) for i in grid.chunks(box)]

    def _raw_path(self, uuid: str, instance: str, box: Box) -> str:
        (z0, y0, x0), (sz, sy, sx) = box.start, box.shape
        return f"/api/node/{uuid}/{quote(instance, safe='')}/raw/0_1_2/{sx}_{sy}_{sz}/{x0}_{y0}_{z0}"

    def _compression(self, info: VolumeInfo) -> str:
        return self.label_compression if info.extra["dvid"]["typename"] in LABEL_TYPES else "none"

    def _get_raw(self, uuid: str, instance: str, scale: int, box: Box, info: VolumeInfo) -> np.ndarray:
        dtype, nbytes = info.dtype, box.size * info.dtype.itemsize
        compression = self._compression(info)
        params = {}
        if scale:
            params["scale"] = str(scale)
        if compression != "none":
            params["compression"] = compression

        def decode(resp):
            body = _decompress(resp.content, compression, nbytes)
            if len(body) != nbytes:
                raise ValueError(f"{len(body)} bytes for a {nbytes}-byte box")
            return np.frombuffer(body, dtype.newbyteorder("<")).reshape(box.shape)

        return self._request("GET", self._raw_path(uuid, instance, box), params=params or None, decode=decode)

    def _post_raw(self, uuid: str, instance: str, box: Box, data: np.ndarray, info: VolumeInfo) -> None:
        compression = self._compression(info)
        body = np.ascontiguousarray(data, dtype=info.dtype.newbyteorder("<")).tobytes()
        params = {"compression": compression} if compression != "none" else None
        self._request("POST", self._raw_path(uuid, instance, box), params=params,
                      data=_compress(body, compression))

    def _run(self, tasks: list[Callable[[], None]]) -> None:
        run_parallel(self._pool, tasks)

    def _read(self, ref: VolumeRef, box: Box, level: int) -> np.ndarray:
        uuid, instance, scale, info = self._target(ref, level)
        out = np.empty(box.shape, dtype=info.dtype)

        def fetch(piece: Box) -> None:
            out[piece.slices(box.start)] = self._get_raw(uuid, instance, scale, piece, info)

        self._run([lambda p=p: fetch(p) for p in self._pieces(box, info, level)])
        return out

    def node_locked(self, ref: Sequence[str]) -> bool:
        """Whether the node a volume or key-value path is read at is locked (asks the server)."""
        _, uuid, _, _, _ = self._locate(as_ref(ref))
        doc = self._get_json(f"/api/node/{uuid}/commit")
        return bool(doc.get("Locked"))

    def _check_writable(self, ref: VolumeRef) -> None:
        if self.node_locked(ref):
            raise ReadOnly(f"{'/'.join(ref)} is in a locked (committed) DVID node: make a new version to write")

    def _write(self, ref: VolumeRef, box: Box, level: int, array: np.ndarray) -> None:
        self._check_writable(ref)
        uuid, instance, scale, info = self._target(ref, level)
        if scale:
            raise ReadOnly(f"level {level} of the labelmap {instance} is computed by DVID; write level 0")
        aligned = align(box, info.level(level).chunk_shape)

        def store(piece: Box) -> None:
            inner = piece.intersect(box)
            if inner == piece:
                data = array[piece.slices(box.start)]
            else:  # a partial block: read it, patch it, post it whole
                data = self._get_raw(uuid, instance, 0, piece, info).copy()
                data[inner.slices(piece.start)] = array[inner.slices(box.start)]
            self._post_raw(uuid, instance, piece, data, info)

        tasks = [lambda p=p: store(p) for p in self._pieces(aligned, info, level)]
        if aligned == box:
            self._run(tasks)
            return
        with self._lock:
            lock = self._rmw.setdefault((as_ref(ref), level), threading.Lock())
        with lock:
            self._run(tasks)

    # ---- key-value files -------------------------------------------------
    def _key(self, path: VolumeRef) -> tuple[str, str, str]:
        """(node uuid, instance, key) of a key path; NotFound unless it names a key of a keyvalue instance."""
        _, uuid, name, typename, tail = self._locate(path)
        if typename != "keyvalue" or len(tail) != 1 or not usable_name(tail[0]):
            raise NotFound(f"{'/'.join(path)} is not a key of a DVID key-value instance")
        return uuid, name, tail[0]

    def _key_path(self, uuid: str, name: str, key: str) -> str:
        return f"/api/node/{uuid}/{quote(name, safe='')}/key/{quote(key, safe='')}"

    def holds_files(self, path: Sequence[str]) -> bool:
        """True for the folder of a key-value instance."""
        try:
            _, _, _, typename, tail = self._locate(as_ref(path))
        except NdfsError:
            return False
        return typename == "keyvalue" and not tail

    def is_file(self, path: Sequence[str]) -> bool:
        path = as_ref(path)
        try:
            uuid, name, key = self._key(path)
        except NotFound:
            return False
        return self._exists(self._key_path(uuid, name, key))

    def read_file(self, path: Sequence[str]) -> bytes:
        uuid, name, key = self._key(as_ref(path))
        return self._request("GET", self._key_path(uuid, name, key), decode=lambda resp: resp.content)

    def write_file(self, path: Sequence[str], data: bytes) -> None:
        path = as_ref(path)
        if "write" not in self.capabilities:
            raise ReadOnly("this DVID remote is read-only")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadRegion(f"a key's value is bytes, not {type(data).__name__}")
        uuid, name, key = self._key(path)
        self._check_writable(path)
        self._request("POST", self._key_path(uuid, name, key), data=bytes(data))

    def delete_file(self, path: Sequence[str]) -> None:
        path = as_ref(path)
        if "write" not in self.capabilities:
            raise ReadOnly("this DVID remote is read-only")
        uuid, name, key = self._key(path)
        self._check_writable(path)
        if not self._exists(self._key_path(uuid, name, key)):
            raise NotFound(f"no key {key!r} in {'/'.join(path[:-1])}")
        self._request("DELETE", self._key_path(uuid, name, key))


def _error_for(resp, method: str, path: str) -> NdfsError:
    return http_error(resp.status_code, resp.text, method, path, resp.reason)


def http_error(status: int, text: str, method: str, path: str, reason: str = "") -> NdfsError:
    """The NdfsError for a DVID error answer (400s are told apart by their text). Pure."""
    detail = (text or "").strip()[:300]
    message = f"DVID {method} {path} answered {status}: {detail or reason}"
    low = detail.lower()
    if status == 400:
        if "locked node" in low or "read-only" in low or "read only" in low:
            return ReadOnly(message)
        if "invalid data instance name" in low or "could not find uuid" in low or "more than one uuid" in low:
            return NotFound(message)
    return status_error(status, message)


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "lz4":
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    if compression == "gzip":
        import gzip

        return gzip.compress(data, compresslevel=1)
    return data


def _decompress(body: bytes, compression: str, size: int) -> bytes:
    """A voxel answer of ``size`` bytes, decompressed by :mod:`ndfs.formats.safe` (never past ``size``)."""
    try:
        if compression == "lz4":
            return safe.lz4_block(body, size, "the lz4 body")
        if compression == "gzip":
            return safe.inflate(body, size, "the gzip body", gzip=True)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    return body


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """A gzip body inflated, refusing one that is truncated, followed by other bytes, or larger than
    ``max_bytes`` once inflated (inflation stops there: a gzip bomb never fills memory). ValueError."""
    try:
        return safe.inflate(body, max_bytes, "the gzip body", gzip=True)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
