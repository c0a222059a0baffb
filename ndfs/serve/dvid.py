"""A DVID HTTP API server (WSGI app) over any ndfs Backend, faithful enough for unmodified DVID clients.

``DvidApp(backend)`` answers the routes of ``specs/dvid.md`` that intern's
``DVIDRemote``, dvidtools and the ndfs driver use: server info and types;
repo creation, ``repos/info``, ``repo/{u}/info``, ``branch-versions``, logs,
notes; ``commit``, ``newversion`` and ``branch`` (locked nodes refuse
writes); instance creation for the voxel types, ``labelblk``, ``labelmap``
and ``keyvalue``; instance ``info``; 3D raw GET/POST (block alignment checked,
labels with ``compression=lz4|gzip``, ``throttle=true`` limited server-wide),
2D ``xy``/``xz``/``yz`` images (png, tif, jpg, bmp); key-value ``key``,
``keys``, ``keyrange``, ``keyrangevalues``; labelmap ``label``, ``labels``,
``size``, ``sizes``, ``sparsevol-size``, ``sparsevol`` (+HEAD),
``sparsevol-coarse``, ``maxlabel`` (GET and POST), ``nextlabel``, and ``scale=N`` reads of
labelmaps created with a ``MaxDownresLevel`` (computed on the fly, the most
frequent label of each 2x2x2 cube). UUIDs may be unique prefixes,
``prefix:branch`` or ``:master~N``. How the backend maps onto repos and
instances, and what is kept in memory only, is in :mod:`ndfs.serve.dvid_model`.

Errors are DVID's: ``text/plain``, 400 for bad requests, unknown UUIDs or
instances, misalignment, locked nodes and read-only mode, with the body
``"<message> (<URL path>).\\n"``; 404 for missing keys and labels and for
unrouted paths (``404 page not found``); 503 for throttled requests.

Since then also ``metadata``, ``extents``/``resolution`` POSTs, block streams
(``specificblocks``, ``subvolblocks``, label ``blocks`` GET), ``help``,
``tags``, and the labelmap endpoints of a DVID without merges (identity
``mapping``/``supervoxels``, ``lastmod``, ``listlabels``, ...); everything
else is answered 400 naming what is answered (see ``ABSENT``).

Deliberate differences from DVID: no JPEG-compressed 3D bodies, no DVID
label-block encoding, no ROI masks; label indexes are computed by scanning the voxels
(fine for test volumes, slow for big ones); sparsevol only at scale 0; the
served volumes' extents are fixed to the volumes' boxes, so voxel POSTs that
put non-zero voxels beyond them are refused (400). Tokens: with none
configured every request is accepted; otherwise ``Authorization: Bearer <t>``
(or ``Token <t>``) must name one of them, else 401.

Bounds (:mod:`ndfs.serve.limits`): coordinates and sizes are int32, labels and
counts uint64, parsed within range or refused 400 (never 500); 3D raw GETs
are streamed piece by piece (uncompressed or gzip; lz4 answers are built whole
within the memory budget), so a 3 GiB payload never sits in memory; posts,
2D images and lz4 answers hold memory of the app's :class:`MemoryBudget`
(400 when one needs more than the whole budget, 503 when the server is busy);
label queries and ``scale`` reads read at most ``max_scan_bytes`` of voxels;
``labels`` takes at most ``MAX_LIST_ITEMS`` points, ``sizes`` as many labels;
sparse volumes hold at most ``MAX_RUNS`` runs; JSON bodies are at most
``JSON_BODY_BYTES``; ``keyrangevalues`` answers at most ``MAX_KV_ANSWER_BYTES``.

Thread-safe: the model is, and concurrent voxel POSTs to one instance are
serialised by its write lock.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import zlib
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs

import numpy as np

from ndfs.stores.base import Backend
from ndfs.core.errors import BadInput, NdfsError
from ndfs.formats import safe
from ndfs.formats.safe import json_loads as safe_json
from ndfs.core.geometry import Box
from ndfs.serve.common import TokenAuth
from ndfs.serve.dvid_model import (
    LABEL_TYPES, MAX_DOWNRES, TYPES, DvidError, DvidModel, Instance, Node, Repo, bad, type_url)
from ndfs.serve.limits import (
    DEFAULT_SCAN_BYTES, JSON_BODY_BYTES, MAX_LIST_ITEMS, STREAM_PIECE_BYTES, UINT64_MAX, HeldAnswer, MemoryBudget,
    RequestRefused, check_int, parse_int, read_body, read_cover_bytes, stream_plan)

log = logging.getLogger("ndfs.serve.dvid")
MAX_PAYLOAD_BYTES = 3 * 2**30
#: DVID's voxel coordinates are int32
COORD_MIN, COORD_MAX = -2**31, 2**31 - 1
#: the most x-runs a sparse volume answer holds (32 bytes each while it is built)
MAX_RUNS = 4_000_000
#: the most value bytes one keyrangevalues answer gathers
MAX_KV_ANSWER_BYTES = 64 * 2**20
VERSION = "v1.0.0 (ndfs)"
NOT_ROUTED = "404 page not found"
NOT_ALLOWED = "Method Not Allowed"
PLANES = {"0_1": "xy", "xy": "xy", "0_2": "xz", "xz": "xz", "1_2": "yz", "yz": "yz"}
IMAGE_FORMATS = {"png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"), "jpeg": ("JPEG", "image/jpeg"),
                 "tif": ("TIFF", "image/tiff"), "tiff": ("TIFF", "image/tiff"), "bmp": ("BMP", "image/bmp")}


class DvidApp:
    """The WSGI app. ``tokens``: accepted tokens (None or empty: accept every request)."""

    def __init__(self, backend: Backend, tokens=None, *, read_only: bool = False, throttle_limit: int = 1,
                 budget: MemoryBudget | None = None, max_scan_bytes: int = DEFAULT_SCAN_BYTES,
                 max_cutout_bytes: int = MAX_PAYLOAD_BYTES):
        self.backend = backend
        self.model = DvidModel(backend, read_only=read_only)
        self.read_only = read_only
        self.auth = TokenAuth(tokens)
        self.budget = budget or MemoryBudget()
        self.max_scan_bytes = int(max_scan_bytes)
        self.max_cutout_bytes = int(max_cutout_bytes)
        self.throttle_limit = int(throttle_limit)
        self._lock = threading.Lock()
        self._throttled = 0
        self._write_locks: dict[int, threading.Lock] = {}

    # ---- WSGI ---------------------------------------------------------------
    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        raw_path = environ.get("PATH_INFO") or "/"
        try:
            path = raw_path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            path = raw_path
        try:
            if self.auth.refusal(environ.get("HTTP_AUTHORIZATION", "")):
                return _text(start_response, 401, "missing or invalid token in the Authorization header\n")
            parts = path.split("/")[1:]
            if parts and parts[-1] == "" and len(parts) > 1:
                parts = parts[:-1]  # one trailing slash is tolerated
            if len(parts) < 2 or parts[0] != "api":
                raise DvidError(404, NOT_ROUTED)
            if self.read_only and method in ("POST", "PUT", "DELETE"):
                raise bad("server is in read-only mode")
            request = _Request(environ, method, path, parts[1:])
            return self._route(request, start_response)
        except DvidError as exc:
            if exc.status in (404, 405) and exc.message in ("", NOT_ROUTED, NOT_ALLOWED):
                return _text(start_response, exc.status, exc.message and exc.message + "\n", head=method == "HEAD")
            return _text(start_response, exc.status, f"{exc.message} ({_shortened(path)}).\n", head=method == "HEAD")
        except RequestRefused as exc:
            return _text(start_response, exc.status, f"{exc} ({_shortened(path)}).\n", head=method == "HEAD")
        except Exception:  # a handler panic: DVID answers 500 and goes on
            log.exception("unhandled error on %s %s", method, path)
            return _text(start_response, 500, f"internal server error ({path}).\n")

    def _hold(self, nbytes: int, what: str):
        """A ticket of the memory budget for ``nbytes``; 400 when no budget could ever hold them."""
        if nbytes > self.budget.total_bytes:
            raise bad(f"{what} needs {nbytes} bytes of memory, more than this server's request memory of "
                      f"{self.budget.total_bytes} bytes: ask for less at once")
        return self.budget.hold(nbytes, what)

    def _check_scan(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_scan_bytes:
            raise bad(f"{what} would read {nbytes} bytes of voxels, more than this server's limit of "
                      f"{self.max_scan_bytes}")

    def _route(self, r: "_Request", start_response):
        p, m = r.parts, r.method
        if p == ["heartbeat"]:
            return _text(start_response, 200, "OK")
        if p[0] == "server" and len(p) == 2:
            if p[1] == "info":
                return _json(start_response, self._server_info(r))
            if p[1] in ("types", "compiled-types"):
                return _json(start_response, {t: type_url(t) for t in TYPES})
        if p == ["repos"] and m == "POST":
            body = r.config()
            repo = self.model.create_repo(body.get("alias", ""), body.get("description", ""), body.get("root"))
            return _json(start_response, {"root": repo.root})
        if p == ["repos", "info"] and m == "GET":
            return _json(start_response, {repo.root: repo.to_json() for repo in self.model.all_repos()})
        if p[0] == "repo" and len(p) >= 2:
            return self._repo(r, start_response, p[1], p[2:])
        if p[0] == "node" and len(p) >= 3:
            repo, node = self.model.resolve(p[1])
            if len(p) == 3 and p[2] in ("log", "note", "commit", "status", "newversion", "branch"):
                return self._node(r, start_response, repo, node, p[2])
            inst = self.model.instance(repo, p[2])
            if len(p) == 3:
                raise bad(f"Bad API call: no endpoint given for data {inst.name}")
            return self._instance(r, start_response, repo, node, inst, p[3], p[4:])
        raise DvidError(404, NOT_ROUTED)

    def _server_info(self, r: "_Request") -> dict:
        info = {"DVID Version": VERSION, "Datastore Version": "0.10.0", "Cores": str(os.cpu_count() or 1),
                "Maximum Cores": str(os.cpu_count() or 1), "Host": r.environ.get("HTTP_HOST", ""),
                "Storage backend": "ndfs " + self.backend.kind}
        if self.read_only:
            info["Mode"] = "read only"
        return info

    # ---- repos and nodes -------------------------------------------------------
    def _repo(self, r, start_response, u: str, rest: list[str]):
        if r.method == "DELETE" and len(rest) <= 1:  # DVID deletes repos and instances from its command line only
            raise DvidError(405, NOT_ALLOWED)
        if not rest and r.method == "HEAD":
            self.model.resolve(u)
            return _text(start_response, 200, "", head=True)
        repo, node = self.model.resolve(u)
        if rest == ["info"]:
            if r.method == "POST":
                body = r.config()
                with self.model._lock:
                    repo.alias = body.get("alias", repo.alias)
                    repo.description = body.get("description", repo.description)
                return _text(start_response, 200, "")
            return _json(start_response, repo.to_json())
        if len(rest) == 2 and rest[0] == "branch-versions":
            return _json(start_response, self.model.branch_versions(repo, rest[1]))
        if rest == ["log"]:
            if r.method == "POST":
                entries = r.log_entries()
                with self.model._lock:
                    repo.log.extend(entries)
                return _text(start_response, 200, "")
            return _json(start_response, {"log": list(repo.log)})
        if rest == ["instance"] and r.method == "POST":
            inst = self.model.create_instance(repo, node, r.config())
            return _json(start_response, {"result": f"Added {inst.name} [{inst.typename}] to node {node.uuid}"})
        raise DvidError(404, NOT_ROUTED)

    def _node(self, r, start_response, repo: Repo, node: Node, what: str):
        if what in ("commit", "status") and r.method == "GET":
            return _json(start_response, {"Locked": node.locked})
        if what in ("log", "note") and r.method == "GET":
            return _json(start_response, {"log": list(node.log)} if what == "log" else {"note": node.note})
        if r.method != "POST":
            raise DvidError(404, NOT_ROUTED)
        body = r.json_body()
        if what == "commit":
            self.model.commit(repo, node, _string(body, "note"), r.log_entries(body))
            return _json(start_response, {"committed": node.uuid})
        if what in ("newversion", "branch"):
            name = _string(body, "branch") if what == "branch" else None
            child = self.model.new_child(repo, node, branch=name, note=_string(body, "note"),
                                         child_uuid=body.get("uuid") or None)
            return _json(start_response, {"child": child.uuid})
        if node.locked:
            raise bad(f"Cannot do post on locked node {node.uuid}")
        with self.model._lock:
            if what == "log":
                node.log.extend(r.log_entries(body))
            else:
                node.note = _string(body, "note")
        return _text(start_response, 200, "")

    # ---- instances ---------------------------------------------------------------
    def _instance(self, r, start_response, repo: Repo, node: Node, inst: Instance, endpoint: str, rest: list[str]):
        if endpoint == "info" and not rest and r.method == "GET":
            return _json(start_response, inst.info())
        if endpoint == "help" and not rest:
            return _text(start_response, 200, _help(inst))
        if endpoint == "tags" and not rest:
            return self._tags(r, start_response, inst)
        if inst.typename == "keyvalue":
            return self._keyvalue(r, start_response, node, inst, endpoint, rest)
        if endpoint in ("raw", "isotropic") and 2 <= len(rest) <= 4:
            return self._raw(r, start_response, node, inst, endpoint, rest)
        if endpoint in VOXEL_ENDPOINTS:
            return getattr(self, "_" + endpoint)(r, start_response, node, inst, rest)
        if inst.typename in LABEL_TYPES and endpoint in ("label", "labels"):
            return self._labels(r, start_response, node, inst, endpoint, rest)
        if inst.typename == "labelmap" and endpoint in LABELMAP_ENDPOINTS:
            return getattr(self, "_" + endpoint.replace("-", "_"))(r, start_response, node, inst, rest)
        raise bad(f'Bad API call "{endpoint}" for data {inst.name!r} of type {inst.typename}: this server answers '
                  f"{', '.join(_endpoints(inst))}")

    def _tags(self, r, start_response, inst: Instance):
        """GET the instance's tags; POST a JSON object of string tags to add (``replace=true``: to replace)."""
        if r.method == "GET":
            with inst.lock:
                return _json(start_response, dict(inst.tags))
        if r.method != "POST":
            raise bad("tags: GET, or POST a JSON object of tags")
        body = r.json_body()
        if not all(isinstance(v, str) for v in body.values()):
            raise bad("tags must be strings")
        with inst.lock:
            if r.arg("replace").lower() == "true":
                inst.tags.clear()
            inst.tags.update(body)
        return _text(start_response, 200, "")

    # ---- voxel metadata and blocks ---------------------------------------------------
    def _metadata(self, r, start_response, node, inst: Instance, rest):
        """DVID's n-d metadata: one axis per dimension (size and offset from the extents) and the properties.
        DVID answers POST with the same document (it ignores the body), and so does this server."""
        if rest or r.method not in ("GET", "POST"):
            raise bad("metadata: GET (or POST) with nothing after it")
        ext = inst.info()["Extended"]
        lo, hi = ext["MinPoint"], ext["MaxPoint"]
        size = [0, 0, 0] if lo is None else [b - a + 1 for a, b in zip(lo, hi)]
        axes = [{"Label": label, "Resolution": ext["VoxelSize"][i], "Units": ext["VoxelUnits"][i], "Size": size[i],
                 "Offset": 0 if lo is None else lo[i]} for i, label in enumerate("XYZ")]
        return _reply(start_response, 200, json.dumps({"Axes": axes, "Properties": ext}).encode(),
                      "application/vnd.dvid-nd-data+json")

    def _extents(self, r, start_response, node, inst: Instance, rest):
        if rest or r.method != "POST":
            raise bad("extents endpoint only supports POST HTTP verb")
        body = r.json_body()
        try:
            lo, hi = ([check_int(v, "an extents coordinate", COORD_MIN, COORD_MAX) for v in body[k]]
                      for k in ("MinPoint", "MaxPoint"))
        except (KeyError, TypeError):
            raise bad('extents are {"MinPoint": [x, y, z], "MaxPoint": [x, y, z]}') from None
        if len(lo) != 3 or len(hi) != 3 or any(a > b for a, b in zip(lo, hi)):
            raise bad("extents need 3-D MinPoint and MaxPoint, MinPoint at most MaxPoint")
        if inst.source is not None:
            raise bad(f"the extents of {inst.name} are those of the volume it serves")
        self._check_writable(node, inst, "extents", "POST")
        with inst.lock:
            inst.extent = (tuple(lo[::-1]), tuple(hi[::-1]))
        return _text(start_response, 200, "")

    def _resolution(self, r, start_response, node, inst: Instance, rest):
        if rest or r.method != "POST":
            raise bad("resolution endpoint only supports POST HTTP verb")
        body = r.json_body(kind=list)
        if len(body) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
                                     for v in body):
            raise bad("resolution is a JSON list of 3 positive numbers, e.g. [8,8,8]")
        if inst.source is not None:
            raise bad(f"the resolution of {inst.name} is that of the volume it serves")
        with inst.lock:
            inst.voxel_xyz = tuple(float(v) for v in body)
        return _text(start_response, 200, "")

    def _specificblocks(self, r, start_response, node, inst: Instance, rest):
        """The blocks named by ``blocks=x,y,z,...`` (block coordinates), those holding any non-zero voxel."""
        if rest or r.method != "GET":
            raise bad("DVID does not accept the %s action on the 'specificblocks' endpoint" % r.method)
        text = r.arg("blocks")
        parts = [p for p in text.split(",") if p] if text else []
        if len(parts) % 3:
            raise bad(f"blocks= needs x,y,z triples of block coordinates, got {len(parts)} numbers")
        if len(parts) // 3 > MAX_LIST_ITEMS:
            raise bad(f"specificblocks takes at most {MAX_LIST_ITEMS} blocks")
        coords = [tuple(parse_int(v, "a block coordinate", COORD_MIN, COORD_MAX) for v in parts[i:i + 3])
                  for i in range(0, len(parts), 3)]
        return self._block_stream(r, start_response, node, inst, [(x, y, z) for x, y, z in coords])

    def _subvolblocks(self, r, start_response, node, inst: Instance, rest):
        """imageblk: the blocks of a block-aligned box, those holding any non-zero voxel."""
        if inst.typename in LABEL_TYPES or len(rest) != 2 or r.method != "GET":
            raise bad("subvolblocks: GET .../subvolblocks/<size>/<offset> of an image instance")
        return self._block_stream(r, start_response, node, inst, self._aligned_blocks(inst, rest))

    def _blocks(self, r, start_response, node, inst: Instance, rest):
        """labelblk and labelmap: GET .../blocks/<size>/<offset> (block aligned), as specificblocks."""
        if inst.typename not in LABEL_TYPES:
            raise bad("this server answers image blocks with subvolblocks and specificblocks")
        if r.method != "GET" or len(rest) != 2:
            raise bad("this server answers GET .../blocks/<size>/<offset>; it takes label blocks in DVID's block "
                      "encoding from no POST: post voxels to raw with compression=lz4 or gzip")
        return self._block_stream(r, start_response, node, inst, self._aligned_blocks(inst, rest))

    def _aligned_blocks(self, inst: Instance, rest: list[str]) -> list[tuple[int, int, int]]:
        sx, sy, sz = _ints(rest[0], 3, "size", lo=1)
        ox, oy, oz = _ints(rest[1], 3, "offset")
        bx, by, bz = inst.block_xyz
        if any(v % b for v, b in zip((sx, sy, sz, ox, oy, oz), (bx, by, bz) * 2)):
            raise bad(f"cannot use blocks in non-block aligned geometry {rest[1]} + {rest[0]}")
        n = (sx // bx) * (sy // by) * (sz // bz)
        if n > MAX_LIST_ITEMS:
            raise bad(f"the box holds {n} blocks, more than {MAX_LIST_ITEMS}: ask for a smaller one")
        return [(x, y, z) for z in range(oz // bz, (oz + sz) // bz) for y in range(oy // by, (oy + sy) // by)
                for x in range(ox // bx, (ox + sx) // bx)]

    def _block_stream(self, r, start_response, node, inst: Instance, blocks: list[tuple[int, int, int]]):
        """DVID's block stream: per block holding a non-zero voxel, int32 x, y, z, nbytes (little-endian) and
        its voxels (uncompressed; labels lz4 or gzip if asked). Blocks that read all zeros are left out,
        as DVID leaves out blocks never written."""
        compression = r.arg("compression").lower()
        labels = inst.typename in LABEL_TYPES
        if compression in ("jpeg", "blocks") or (labels and compression == ""):
            raise bad(f"this server sends blocks uncompressed{', lz4 or gzip' if labels else ''}: "
                      f"DVID's {'label block' if labels else 'JPEG'} encoding is not offered "
                      f"(ask with compression=uncompressed)")
        if compression not in ("", "uncompressed") + (("lz4", "gzip") if labels else ()):
            raise bad(f"compression {compression!r} is not supported here")
        bx, by, bz = inst.block_xyz
        block_bytes = bx * by * bz * inst.dtype.itemsize
        self._check_scan(len(blocks) * block_bytes, f"reading these {len(blocks)} blocks")
        data_box = inst.data_box()
        out, held = [], 0
        with self._hold(len(blocks) * block_bytes + 2 * block_bytes, "this block stream"):
            for x, y, z in blocks:
                box = Box((z * bz, y * by, x * bx), ((z + 1) * bz, (y + 1) * by, (x + 1) * bx))
                if data_box is None or box.intersect(data_box) is None:
                    continue
                voxels = self.model.read(inst, node, box)
                if not voxels.any():
                    continue
                payload = _compress(voxels.astype(inst.dtype.newbyteorder("<")).tobytes(), compression)
                out.append(np.array([x, y, z, len(payload)], "<i4").tobytes() + payload)
                held += len(payload)
            return _reply(start_response, 200, b"".join(out), "application/octet-stream")

    def _check_writable(self, node: Node, inst: Instance, endpoint: str, method: str) -> None:
        if inst.versioned and node.locked:
            raise bad(f'Cannot do {method} on endpoint "{endpoint}" of locked node {node.uuid}')

    # ---- voxels ------------------------------------------------------------------
    def _raw(self, r, start_response, node: Node, inst: Instance, endpoint: str, rest: list[str]):
        dims, size, offset = rest[0], rest[1], rest[2] if len(rest) > 2 else ""
        fmt = rest[3] if len(rest) > 3 else ""
        if not offset:
            raise bad("raw requests need a size and an offset")
        ox, oy, oz = _ints(offset, 3, "offset")
        plane = PLANES.get(dims)
        if dims in ("0_1_2", "vol"):
            sx, sy, sz = _ints(size, 3, "size", lo=0)
        elif plane is not None:
            if r.method != "GET" or endpoint == "isotropic":
                raise bad(f"cannot {r.method} 2D {dims} voxels: only 3D raw ({endpoint}) POSTs are allowed")
            w, h = _ints(size, 2, "size", lo=0)
            sx, sy, sz = {"xy": (w, h, 1), "xz": (w, 1, h), "yz": (1, w, h)}[plane]
        else:
            raise bad(f"bad dims {dims!r}: use 0_1_2 for 3D, xy, xz or yz for 2D")
        if min(sx, sy, sz) <= 0:
            raise bad(f"size {size} must be positive on every axis")
        box = Box((oz, oy, ox), (oz + sz, oy + sy, ox + sx))
        if box.size * inst.dtype.itemsize > self.max_cutout_bytes:
            raise bad(f"requested payload of {box.size * inst.dtype.itemsize} bytes is over this server's limit "
                      f"of {self.max_cutout_bytes} bytes ({self.max_cutout_bytes / 2**30:g} GiB)")
        compression = r.arg("compression").lower() if inst.typename in LABEL_TYPES else ""
        if compression not in ("", "uncompressed", "lz4", "gzip"):
            raise bad(f"compression {compression!r} is not supported by this server (lz4, gzip)")
        scale = _int_arg(r, "scale", 0, hi=MAX_DOWNRES)
        if scale:
            self._check_scan(box.size * 8**scale * inst.dtype.itemsize, f"a scale {scale} read")
        throttled = r.arg("throttle").lower() in ("true", "on") and plane is None
        if throttled:
            with self._lock:
                if self._throttled >= self.throttle_limit:
                    raise DvidError(503, f"Server already running {self._throttled} throttled operations "
                                         f"(max = {self.throttle_limit})")
                self._throttled += 1
        handed_on = False
        try:
            if r.method == "GET":
                if plane is not None:
                    with self._hold(box.size * inst.dtype.itemsize * (4 + 8**scale), "this image") as ticket:
                        data = self._read_scaled(inst, node, box, scale)
                        return ticket.keep(_image(start_response, data, plane, fmt or "png"))
                if fmt.startswith("jp"):
                    raise bad("this server does not answer 3D voxels as JPEG")
                answer = self._stream_raw(start_response, inst, node, box, scale, compression,
                                          self._unthrottle if throttled else None)
                handed_on = True
                return answer
            if r.method == "POST":
                if endpoint == "isotropic":
                    raise bad("cannot POST isotropic voxels: only raw")
                if scale:
                    raise bad("voxel POSTs go to scale 0 only")
                self._check_writable(node, inst, endpoint, "POST")
                payload = box.size * inst.dtype.itemsize
                declared = parse_int(r.environ.get("CONTENT_LENGTH") or "0", "Content-Length")
                with self._hold(declared + 3 * payload, "this post"):  # body, voxels, decoded, stored
                    body = _decompress(r.body(), compression, payload)
                    if len(body) != payload:
                        raise bad(f"expected {payload} bytes for {sx}x{sy}x{sz} "
                                  f"{inst.dtype.name} voxels, got {len(body)}")
                    data = np.frombuffer(body, inst.dtype.newbyteorder("<")).astype(inst.dtype).reshape(box.shape)
                    r.drop_body()
                    del body
                    with self._lock:
                        lock = self._write_locks.setdefault(id(inst), threading.Lock())
                    with lock:
                        mutation = inst.repo.new_mutation_id()  # drawn before the write, as DVID does
                        self.model.write(inst, node, box, data)
                    with inst.lock:
                        inst.last_mod = (mutation, r.arg("u"), r.arg("app"),
                                         datetime.now(timezone.utc).isoformat(timespec="seconds"))
                return _text(start_response, 200, "", content_type="text/plain")
            raise bad(f"cannot {r.method} raw voxels")
        finally:
            if throttled and not handed_on:
                self._unthrottle()

    def _unthrottle(self) -> None:
        with self._lock:
            self._throttled -= 1

    def _stream_raw(self, start_response, inst: Instance, node: Node, box: Box, scale: int, compression: str,
                    on_close):
        """A 3D GET answer made piece by piece as it is sent (lz4: built whole, within the memory budget)."""
        itemsize, grow = inst.dtype.itemsize, 8**scale
        payload = box.size * itemsize
        if compression == "lz4" or (compression == "gzip" and payload <= STREAM_PIECE_BYTES):  # made whole
            ticket = self._hold(payload * (3 + grow), f"this {compression} answer")
            try:
                body = _compress(self._read_scaled(inst, node, box, scale).tobytes(), compression)
            except BaseException:
                ticket.release()
                raise
            pieces, length = [body], len(body)
        else:
            chunks, z_origin = self._store_grid(inst)
            pieces, need = stream_plan(box, itemsize, chunks, z_origin, self.budget.total_bytes, 2**scale)
            ticket = self._hold(need, "this answer")
            pieces = self._raw_pieces(inst, node, pieces, scale, compression == "gzip")
            length = payload if compression in ("", "uncompressed") else None
        headers = [("Content-Type", "application/octet-stream")]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        start_response("200 OK", headers)

        def close():
            ticket.release()
            if on_close is not None:
                on_close()

        return HeldAnswer(pieces, close)

    def _store_grid(self, inst: Instance) -> tuple[tuple[int, int, int], int]:
        """(chunk shape, z of a chunk boundary) of what a read of the instance decodes: the served
        volume's store chunks, or the instance's own blocks."""
        if inst.source is None:
            return inst.block_zyx, 0
        ref, level = inst.source
        lv = self.backend.info(ref).level(level)
        return lv.chunk_shape, (lv.chunk_origin or lv.box.start)[0]

    def _raw_pieces(self, inst, node, pieces, scale: int, gzipped: bool):
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzipped else None
        for piece in pieces:
            data = self._read_scaled(inst, node, piece, scale).tobytes()
            yield packer.compress(data) if packer is not None else data
        if packer is not None:
            yield packer.flush()

    def _read_scaled(self, inst: Instance, node: Node, box: Box, scale: int) -> np.ndarray:
        if scale == 0:
            return self.model.read(inst, node, box)
        if inst.typename != "labelmap" or not 0 < scale <= inst.max_downres:
            raise bad(f"scale {scale} is not available: {inst.name} has MaxDownresLevel {inst.max_downres}")
        f = 2**scale
        data = self.model.read(inst, node, Box(tuple(a * f for a in box.start), tuple(b * f for b in box.stop)))
        for _ in range(scale):
            data = _downres_labels(data)
        return data

    # ---- labels ------------------------------------------------------------------
    def _labels(self, r, start_response, node, inst, endpoint, rest):
        if endpoint == "label" and len(rest) == 1 and r.method == "GET":
            x, y, z = _ints(rest[0], 3, "point")
            voxel = self.model.read(inst, node, Box((z, y, x), (z + 1, y + 1, x + 1)))
            return _json(start_response, {"Label": int(voxel[0, 0, 0])})
        if endpoint == "labels" and not rest and r.method == "GET":
            return _json(start_response, self._labels_at(inst, node, r.json_body(kind=list)))
        raise bad(f'Bad API call "{endpoint}" for data {inst.name!r}')

    def _labels_at(self, inst: Instance, node: Node, points: list) -> list[int]:
        """The labels at [x, y, z] points, reading each block the points fall in once."""
        if len(points) > MAX_LIST_ITEMS:
            raise bad(f"labels takes at most {MAX_LIST_ITEMS} points, not {len(points)}")
        bz, by, bx = inst.block_zyx
        by_block: dict[tuple, list[int]] = {}
        for i, point in enumerate(points):
            if not (isinstance(point, list) and len(point) == 3):
                raise bad(f"each point must be [x, y, z] integers, got {point!r}")
            x, y, z = (check_int(v, "a point coordinate", COORD_MIN, COORD_MAX) for v in point)
            by_block.setdefault((z // bz, y // by, x // bx), []).append(i)
        self._check_scan(len(by_block) * bz * by * bx * inst.dtype.itemsize,
                         f"reading the {len(by_block)} blocks of these points")
        out = [0] * len(points)
        for (iz, iy, ix), members in by_block.items():
            block = Box((iz * bz, iy * by, ix * bx), ((iz + 1) * bz, (iy + 1) * by, (ix + 1) * bx))
            data = self.model.read(inst, node, block)
            for i in members:
                x, y, z = points[i]
                out[i] = int(data[z - block.start[0], y - block.start[1], x - block.start[2]])
        return out

    def _scan(self, inst: Instance, node: Node, region: Box | None = None):
        """(box, array) pieces covering the instance's stored voxels (within region), block rows at a time
        (cut in x to the budget's piece size); refused when the region holds more than max_scan_bytes."""
        data_box = inst.data_box()
        if data_box is not None and region is not None:
            data_box = data_box.intersect(region)
        if data_box is None:
            return
        itemsize = inst.dtype.itemsize
        self._check_scan(data_box.size * itemsize, "this label query")
        bz, by, bx = inst.block_zyx
        (z0, y0, x0), (z1, y1, x1) = data_box.start, data_box.stop
        piece_bytes = min(STREAM_PIECE_BYTES, self.budget.total_bytes // 8)
        step = max(bx, piece_bytes // (bz * by * bx * itemsize) * bx)
        piece = (min(bz, data_box.shape[0]), min(by, data_box.shape[1]), min(step, data_box.shape[2]))
        need = 4 * math.prod(piece) * itemsize + read_cover_bytes(piece, self._store_grid(inst)[0], itemsize)
        with self._hold(need, "this label query"):
            for z in range(z0 - z0 % bz, z1, bz):
                for y in range(y0 - y0 % by, y1, by):
                    for x in range(x0 - x0 % bx, x1, step):
                        piece = Box((max(z, z0), max(y, y0), max(x, x0)),
                                    (min(z + bz, z1), min(y + by, y1), min(x + step, x1)))
                        yield piece, self.model.read(inst, node, piece)

    def _label_arg(self, rest: list[str]) -> int:
        if len(rest) != 1:
            raise bad("a label endpoint needs one label id")
        label = parse_int(rest[0], "label", 0, UINT64_MAX)
        if label == 0:
            raise bad("label 0 is the background and has no index")
        return label

    def _label_runs(self, inst, node, label, region=None) -> tuple[np.ndarray, int, np.ndarray]:
        """A label's x-runs ((N, 4) int64 rows x, y, z, length, in z, y, x order), voxel count and blocks
        ((M, 3) z, y, x block indices, sorted); at most MAX_RUNS runs."""
        bz, by, bx = inst.block_zyx
        runs, blocks, voxels, n_runs = [], [], 0, 0
        for piece, arr in self._scan(inst, node, region):
            z, y, x = np.nonzero(arr == label)
            if not len(z):
                continue
            z, y, x = z + piece.start[0], y + piece.start[1], x + piece.start[2]
            runs.append(xruns(z, y, x))
            n_runs += len(runs[-1])
            if n_runs > MAX_RUNS:
                raise bad(f"label {label} has more than {MAX_RUNS} runs of voxels: ask for a smaller region")
            blocks.append(np.unique(np.stack([z // bz, y // by, x // bx], axis=1), axis=0))
            voxels += len(z)
        if not runs:
            return np.zeros((0, 4), np.int64), 0, np.zeros((0, 3), np.int64)
        runs = np.concatenate(runs)
        runs = runs[np.lexsort((runs[:, 0], runs[:, 1], runs[:, 2]))]
        return runs, voxels, np.unique(np.concatenate(blocks), axis=0)

    def _size(self, r, start_response, node, inst, rest):
        label = self._label_arg(rest)
        n = sum(int(np.count_nonzero(arr == label)) for _, arr in self._scan(inst, node))
        if not n:
            raise DvidError(404, "")
        return _json(start_response, {"voxels": n})

    def _sizes(self, r, start_response, node, inst, rest):
        labels = r.json_body(kind=list)
        if len(labels) > MAX_LIST_ITEMS:
            raise bad(f"sizes takes at most {MAX_LIST_ITEMS} labels, not {len(labels)}")
        labels = [check_int(v, "a label id") for v in labels]
        counts = dict.fromkeys(labels, 0)
        want = np.array(sorted(set(labels)), dtype=np.uint64)
        for _, arr in self._scan(inst, node):
            found, n = np.unique(arr[np.isin(arr, want)], return_counts=True)
            for label, count in zip(found.tolist(), n.tolist()):
                counts[label] += count
        return _json(start_response, [counts[v] if v else 0 for v in labels])

    def _sparsevol_size(self, r, start_response, node, inst, rest):
        label = self._label_arg(rest)
        _, voxels, blocks = self._label_runs(inst, node, label)
        if not voxels:
            raise DvidError(404, "")
        bz, by, bx = inst.block_zyx
        lo, hi = blocks.min(axis=0), blocks.max(axis=0)
        return _json(start_response, {"voxels": int(voxels), "numblocks": int(len(blocks)),
                                      "minvoxel": [int(lo[2] * bx), int(lo[1] * by), int(lo[0] * bz)],
                                      "maxvoxel": [int((hi[2] + 1) * bx - 1), int((hi[1] + 1) * by - 1),
                                                   int((hi[0] + 1) * bz - 1)]})

    def _sparsevol(self, r, start_response, node, inst, rest, coarse: bool = False):
        label = self._label_arg(rest)
        if _int_arg(r, "scale", 0) != 0:
            raise bad("this server answers sparsevol at scale 0 only")
        lo = [_int_arg(r, f"min{a}", None, lo=COORD_MIN) for a in "zyx"]
        hi = [_int_arg(r, f"max{a}", None, lo=COORD_MIN) for a in "zyx"]
        region = None
        if any(v is not None for v in lo + hi):
            region = Box(tuple(COORD_MIN if v is None else v for v in lo),
                         tuple(COORD_MAX + 1 if v is None else v + 1 for v in hi))
        runs, voxels, blocks = self._label_runs(inst, node, label, region)
        if not voxels:
            if r.method == "HEAD":
                return _text(start_response, 204, "", head=True)
            raise DvidError(404, "")
        if r.method == "HEAD":
            return _text(start_response, 200, "", head=True)
        if coarse:
            runs = xruns(*blocks.T)
        return _reply(start_response, 200, encode_runs(runs), "application/octet-stream")

    def _sparsevol_coarse(self, r, start_response, node, inst, rest):
        return self._sparsevol(r, start_response, node, inst, rest, coarse=True)

    def _maxlabel(self, r, start_response, node, inst, rest):
        if r.method == "POST":  # raise the maximum label (ignored unless greater), as DVID's labelmap does
            if len(rest) != 1:
                raise bad("DVID requires max label ID to follow POST /maxlabel")
            label = parse_int(rest[0], "max label", 0, UINT64_MAX)
            self._check_writable(node, inst, "maxlabel", "POST")
            with inst.lock:
                inst.next_label = max(inst.next_label, label)
            return _text(start_response, 200, "")
        if rest or r.method != "GET":
            raise bad("maxlabel: GET, or POST maxlabel/<max label>")
        return _json(start_response, {"maxlabel": self._max_label(inst, node)})

    def _max_label(self, inst, node) -> int:
        found = max((int(arr.max()) for _, arr in self._scan(inst, node) if arr.size), default=0)
        with inst.lock:
            return max(found, inst.next_label)

    def _nextlabel(self, r, start_response, node, inst, rest):
        if r.method == "GET" and not rest:
            return _json(start_response, {"nextlabel": self._max_label(inst, node) + 1})
        if r.method == "POST" and len(rest) == 1:
            count = parse_int(rest[0], "the number of labels", 1, UINT64_MAX)
            self._check_writable(node, inst, "nextlabel", "POST")
            start = self._max_label(inst, node) + 1
            with inst.lock:
                start = max(start, inst.next_label + 1)
                if start + count - 1 > UINT64_MAX:
                    raise bad(f"cannot hand out {count} labels from {start}: labels are uint64")
                inst.next_label = start + count - 1
            return _json(start_response, {"start": start, "end": start + count - 1})
        raise bad("nextlabel: GET, or POST nextlabel/<count>")

    # ---- labelmap: what a server without merges and splits answers -----------------------
    # Every label is its own single supervoxel here (no merges, cleaves or splits are kept), so the
    # mapping is the identity and there are no splits or mutations to list.
    def _present(self, inst, node, label: int) -> bool:
        return any(bool((arr == label).any()) for _, arr in self._scan(inst, node))

    def _label_set(self, inst, node) -> np.ndarray:
        """Every label of the instance at the node, ascending, without 0 (at most MAX_LIST_ITEMS)."""
        found = np.zeros(0, np.uint64)
        for _, arr in self._scan(inst, node):
            found = np.union1d(found, np.unique(arr))
            if len(found) > MAX_LIST_ITEMS + 1:
                raise bad(f"the instance holds more than {MAX_LIST_ITEMS} labels: list them with listlabels pages")
        return found[found != 0]

    def _lastmod(self, r, start_response, node, inst, rest):
        """The last voxel write through this server to the instance (this server keeps no per-label log);
        404 when the label is in no voxel."""
        label = self._label_arg(rest)
        if not self._present(inst, node, label):
            raise DvidError(404, "")
        with inst.lock:
            mutation, user, app, when = inst.last_mod
        return _json(start_response, {"mutation id": mutation, "last mod user": user, "last mod time": when,
                                      "last mod app": app})

    def _supervoxels(self, r, start_response, node, inst, rest):
        label = self._label_arg(rest)
        if not self._present(inst, node, label):
            raise DvidError(404, "")
        return _json(start_response, [label])

    def _supervoxel_sizes(self, r, start_response, node, inst, rest):
        label = self._label_arg(rest)
        n = sum(int(np.count_nonzero(arr == label)) for _, arr in self._scan(inst, node))
        if not n:
            raise DvidError(404, "")
        return _json(start_response, {"supervoxels": [label], "sizes": [n]})

    def _mapping(self, r, start_response, node, inst, rest):
        """GET with a JSON list of supervoxels: their labels (the same ids), 0 for ids in no voxel unless
        ``nolookup=true``."""
        if rest or r.method != "GET":
            raise bad("Batch mapping query must be a GET request")
        ids = r.json_body(kind=list)
        if len(ids) > MAX_LIST_ITEMS:
            raise bad(f"mapping takes at most {MAX_LIST_ITEMS} labels, not {len(ids)}")
        ids = [check_int(v, "a label id") for v in ids]
        if r.arg("nolookup").lower() == "true":
            return _json(start_response, ids)
        present = set(self._label_set(inst, node).tolist())
        return _json(start_response, [v if v in present else 0 for v in ids])

    def _supervoxel_splits(self, r, start_response, node, inst, rest):
        if rest or r.method != "GET":
            raise bad("The /supervoxel-splits endpoint is GET only")
        return _json(start_response, [])

    def _mappings(self, r, start_response, node, inst, rest):
        if rest or r.method != "GET":
            raise bad("this server answers GET mappings only: it keeps no merges to post")
        return _text(start_response, 200, "")  # no supervoxel maps to another label

    def _mutations(self, r, start_response, node, inst, rest):
        if rest or r.method != "GET":
            raise bad("mutations: GET with nothing after it")
        return _json(start_response, [])  # this server keeps no mutation log

    def _sparsevol_by_point(self, r, start_response, node, inst, rest):
        if len(rest) != 1:
            raise bad("sparsevol-by-point needs one x_y_z coordinate")
        x, y, z = _ints(rest[0], 3, "point")
        label = int(self.model.read(inst, node, Box((z, y, x), (z + 1, y + 1, x + 1)))[0, 0, 0])
        if label == 0:
            raise DvidError(404, "")
        return self._sparsevol(r, start_response, node, inst, [str(label)])

    def _existing_labels(self, r, start_response, node, inst, rest):
        if rest or r.method != "GET":
            raise bad("existing-labels: GET with nothing after it")
        return _json(start_response, [int(v) for v in self._label_set(inst, node)])

    def _listlabels(self, r, start_response, node, inst, rest):
        """Little-endian uint64 labels from ``start`` on (``number`` of them), with their voxel counts when
        ``sizes=true``."""
        if rest or r.method != "GET":
            raise bad("listlabels: GET with nothing after it")
        start = _int_arg(r, "start", 0, hi=UINT64_MAX)
        number = _int_arg(r, "number", MAX_LIST_ITEMS, lo=1, hi=MAX_LIST_ITEMS)
        sizes = r.arg("sizes").lower() == "true"
        counts: dict[int, int] = {}
        for _, arr in self._scan(inst, node):
            found, n = np.unique(arr[arr >= start], return_counts=True)
            for label, count in zip(found.tolist(), n.tolist()):
                if label:
                    counts[label] = counts.get(label, 0) + count
            if len(counts) > 4 * MAX_LIST_ITEMS:
                counts = dict(sorted(counts.items())[:number])
        chosen = sorted(counts)[:number]
        values = [v for label in chosen for v in ((label, counts[label]) if sizes else (label,))]
        return _reply(start_response, 200, np.array(values, "<u8").tobytes(), "application/octet-stream")

    def _set_nextlabel(self, r, start_response, node, inst, rest):
        """POST set-nextlabel/<label>: the next label nextlabel hands out, never one already in the voxels."""
        if r.method != "POST" or len(rest) != 1:
            raise bad("set-nextlabel: POST set-nextlabel/<label>")
        label = parse_int(rest[0], "next label", 1, UINT64_MAX)
        self._check_writable(node, inst, "set-nextlabel", "POST")
        with inst.lock:
            inst.next_label = label - 1
        return _text(start_response, 200, "")

    # ---- key-value -------------------------------------------------------------------
    def _keyvalue(self, r, start_response, node: Node, inst: Instance, endpoint: str, rest: list[str]):
        m = r.method
        if endpoint == "key" and len(rest) == 1 and rest[0]:
            key = rest[0]
            if m in ("GET", "HEAD"):
                value = self.model.get_key(inst, node, key)
                if value is None:
                    raise DvidError(404, "" if m == "HEAD" else f'Key "{key}" not found')
                if m == "HEAD":
                    return _text(start_response, 200, "", head=True)
                return _reply(start_response, 200, value, "application/octet-stream")
            if m in ("POST", "PUT", "DELETE"):
                self._check_writable(node, inst, "key", m)
                if m == "DELETE":
                    self.model.delete_key(inst, node, key)
                else:
                    self.model.put_key(inst, node, key, r.body())
                return _text(start_response, 200, "")
        if endpoint == "mutations" and not rest and m == "GET":
            return _json(start_response, [])  # this server keeps no mutation log
        if endpoint == "keys" and not rest and m == "GET":
            return _json(start_response, self.model.keys(inst, node))
        if endpoint in ("keyrange", "keyrangevalues") and len(rest) == 2 and m == "GET":
            first, last = (k.encode() for k in rest)
            keys = [k for k in self.model.keys(inst, node) if first <= k.encode() <= last]
            if endpoint == "keyrange":
                return _json(start_response, keys)
            if r.arg("json").lower() != "true":
                raise bad("keyrangevalues: this server answers with json=true only")
            out, total = {}, 0
            for k in keys:
                value = self.model.get_key(inst, node, k)
                total += len(value or b"")
                if total > MAX_KV_ANSWER_BYTES:
                    raise bad(f"keyrangevalues: the range holds more than {MAX_KV_ANSWER_BYTES} bytes of values; "
                              "ask for a narrower range")
                try:
                    out[k] = safe_json(value, f"the value of key {k!r}") if value is not None else None
                except NdfsError as exc:
                    raise bad(str(exc)) from None
            return _json(start_response, out)
        raise bad(f'Bad API call "{endpoint}" for keyvalue data {inst.name!r}: this server answers '
                  f"{', '.join(_endpoints(inst))}")


VOXEL_ENDPOINTS = ("metadata", "extents", "resolution", "specificblocks", "subvolblocks", "blocks")
LABELMAP_ENDPOINTS = ("size", "sizes", "sparsevol-size", "sparsevol", "sparsevol-coarse", "maxlabel", "nextlabel",
                      "lastmod", "supervoxels", "supervoxel-sizes", "mapping", "supervoxel-splits", "mappings",
                      "sparsevol-by-point", "existing-labels", "listlabels", "set-nextlabel", "mutations")
KEYVALUE_ENDPOINTS = ("key", "keys", "keyrange", "keyrangevalues", "mutations")
#: what DVID offers that this server answers as absent (400 with this list of what it does answer)
ABSENT = {"imageblk": "arb, rawkey, blocks (POST), roi masks",
          "labelblk": "pseudocolor, sync, roi masks",
          "labelmap": "pseudocolor, sync, info (POST), ingest-supervoxels, blocks (POST), merge, cleave, split, "
                      "split-supervoxel, renumber, proximity, fvdb, index, indices, index-version, "
                      "indices-compressed, mutations-range, history, map-stats, sparsevols-coarse",
          "keyvalue": "keyvalues (protobuf and jsontar), mutations-range"}


def _endpoints(inst: Instance) -> list[str]:
    """The endpoints this server answers for an instance's type."""
    common = ["help", "info", "tags"]
    if inst.typename == "keyvalue":
        return common + list(KEYVALUE_ENDPOINTS)
    voxels = common + ["raw", "isotropic"] + [e for e in VOXEL_ENDPOINTS if e != "subvolblocks"
                                              or inst.typename not in LABEL_TYPES]
    if inst.typename in LABEL_TYPES:
        voxels += ["label", "labels"]
    if inst.typename == "labelmap":
        voxels += list(LABELMAP_ENDPOINTS)
    return voxels


def _help(inst: Instance) -> str:
    kind = "imageblk" if inst.typename not in LABEL_TYPES + ("keyvalue",) else inst.typename
    return (f"{inst.typename} data {inst.name!r} on an ndfs server (the DVID HTTP API, v1.0.0)\n\n"
            f"Endpoints answered: {', '.join(_endpoints(inst))}.\n"
            f"Answered as absent (400): {ABSENT[kind]}.\n")


# ---- requests ------------------------------------------------------------------------
class _Request:
    def __init__(self, environ, method: str, path: str, parts: list[str]):
        self.environ, self.method, self.path, self.parts = environ, method, path, parts
        self.query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        self._body: bytes | None = None

    def arg(self, name: str) -> str:
        return self.query.get(name, [""])[-1]

    def body(self, limit: int = 2**62) -> bytes:
        """The request body (waitress bounds every body; ``limit`` bounds it for one route, 413 past it)."""
        if self._body is None:
            self._body = read_body(self.environ, limit)
        return self._body

    def drop_body(self) -> None:
        """Forget the body (a large one, once decoded)."""
        self._body = b""

    def json_body(self, kind=dict):
        raw = self.body(JSON_BODY_BYTES)
        if not raw.strip():
            return kind()
        try:
            doc = safe_json(raw, "the request body")
        except NdfsError as exc:
            raise bad(str(exc)) from None
        if not isinstance(doc, kind):
            raise bad(f"the request body must be a JSON {'object' if kind is dict else 'array'}")
        return doc

    def config(self) -> dict:
        """A creation body: keys case-insensitive, values JSON strings (``versioned`` may be a bool)."""
        out = {}
        for key, value in self.json_body().items():
            key = key.lower()
            if key == "versioned" and isinstance(value, bool):
                value = "true" if value else "false"
            if not isinstance(value, str):
                raise bad(f"configuration value for {key!r} must be a JSON string, got {json.dumps(value)}")
            out[key] = value
        return out

    def log_entries(self, body: dict | None = None) -> list[str]:
        entries = (self.json_body() if body is None else body).get("log", [])
        if not (isinstance(entries, list) and all(isinstance(e, str) for e in entries)):
            raise bad('"log" must be a list of strings')
        return [e for e in entries if e]


def _shortened(path: str, limit: int = 256) -> str:
    """The URL path as DVID's errors quote it, shortened when it is long (absurd numbers are not echoed whole)."""
    return path if len(path) <= limit else f"{path[:limit - 24]}...({len(path)} characters)"


def _string(body: dict, key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise bad(f'"{key}" must be a string')
    return value


def _ints(text: str, n: int, what: str, lo: int = COORD_MIN) -> tuple[int, ...]:
    """n int32 values (at least ``lo``) joined by '_'; 400 otherwise."""
    parts = text.split("_")
    if len(parts) != n:
        raise bad(f"bad {what} {text[:64]!r}: needs {n} integers joined by '_'")
    return tuple(parse_int(v, f"{what} value", lo, COORD_MAX) for v in parts)


def _int_arg(r: _Request, name: str, default, lo: int = 0, hi: int = COORD_MAX):
    text = r.arg(name)
    if not text:
        return default
    return parse_int(text, f"query parameter {name}", lo, hi)


# ---- bodies -----------------------------------------------------------------------------
def _compress(data: bytes, compression: str) -> bytes:
    if compression in ("", "uncompressed"):
        return data
    if compression == "lz4":
        return _lz4().compress(data, store_size=False)
    if compression == "gzip":
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    raise bad(f"compression {compression!r} is not supported by this server (lz4, gzip)")


def _decompress(body: bytes, compression: str, size: int) -> bytes:
    """A posted body of a ``size``-byte box, never decompressed past ``size`` (:mod:`ndfs.formats.safe`)."""
    if compression in ("", "uncompressed"):
        return body
    try:
        if compression == "lz4":
            return safe.lz4_block(body, size, "the lz4 body")
        if compression == "gzip":  # a gzip bomb is refused
            return safe.inflate(body, size, "the gzip body", gzip=True)
    except BadInput as exc:
        raise bad(f"cannot decompress the {compression} body: {exc}") from None
    raise bad(f"compression {compression!r} is not supported by this server (lz4, gzip)")


def _lz4():
    try:
        import lz4.block
    except ImportError:
        raise bad("lz4 compression needs the lz4 package on the server") from None
    return lz4.block


def xruns(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The x-runs of voxel coordinates: (N, 4) int64 rows (x, y, z, length), in z, y, x order. Pure."""
    order = np.lexsort((x, y, z))
    z, y, x = (np.asarray(a, np.int64)[order] for a in (z, y, x))
    if not len(x):
        return np.zeros((0, 4), np.int64)
    new = np.ones(len(x), bool)
    new[1:] = (x[1:] != x[:-1] + 1) | (y[1:] != y[:-1]) | (z[1:] != z[:-1])
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(x)))
    return np.stack([x[starts], y[starts], z[starts], lengths], axis=1)


def encode_runs(runs: np.ndarray) -> bytes:
    """DVID's sparse volume body: a 12-byte header and one (x, y, z, length) int32 row per x-run. Pure."""
    header = np.array([0, 3, 0, 0], np.uint8).tobytes() + np.array([0, len(runs)], "<u4").tobytes()
    return header + np.asarray(runs).astype("<i4").tobytes()


def _downres_labels(a: np.ndarray) -> np.ndarray:
    """The most frequent label of each 2x2x2 cube (ties: the first in C order). Pure."""
    z, y, x = (s // 2 for s in a.shape)
    cubes = a[:2 * z, :2 * y, :2 * x].reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).reshape(z, y, x, 8)
    counts = (cubes[..., :, None] == cubes[..., None, :]).sum(axis=-1)
    return np.take_along_axis(cubes, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]


def _image(start_response, data: np.ndarray, plane: str, fmt: str):
    kind, quality = fmt.partition(":")[0].lower(), fmt.partition(":")[2]
    if kind not in IMAGE_FORMATS:
        raise bad(f"unknown image format {fmt!r} (png, jpg, tif, bmp)")
    image = {"xy": lambda a: a[0], "xz": lambda a: a[:, 0, :], "yz": lambda a: a[:, :, 0]}[plane](data)
    if data.dtype not in (np.uint8, np.uint16):
        raise bad(f"2D images are 8- or 16-bit; this instance holds {data.dtype}")
    if kind in ("tif", "tiff"):
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, image)
        return _reply(start_response, 200, buf.getvalue(), "image/tiff")
    try:
        from PIL import Image
    except ImportError:
        raise bad(f"{kind} images need Pillow on the server; tif works without it") from None
    if kind in ("jpg", "jpeg", "bmp") and data.dtype != np.uint8:
        raise bad(f"{kind} images are 8-bit; use png or tif for 16-bit data")
    buf = io.BytesIO()
    pil = Image.fromarray(image, mode="L") if image.dtype == np.uint8 else Image.fromarray(image.astype("<u2"), "I;16")
    options = {"quality": int(quality)} if quality.isdigit() and kind.startswith("jp") else {}
    pil.save(buf, format=IMAGE_FORMATS[kind][0], **options)
    return _reply(start_response, 200, buf.getvalue(), IMAGE_FORMATS[kind][1])


def _reply(start_response, status: int, body: bytes, content_type: str, head: bool = False):
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(0 if head else len(body)))])
    return [b"" if head else body]


def _text(start_response, status: int, text: str, *, head: bool = False, content_type="text/plain; charset=utf-8"):
    return _reply(start_response, status, text.encode(), content_type, head)


def _json(start_response, doc) -> list[bytes]:
    return _reply(start_response, 200, json.dumps(doc).encode(), "application/json")
