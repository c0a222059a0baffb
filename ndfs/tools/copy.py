"""``ndfs copy`` and :func:`copy`: a volume, a box of it or a whole project from one remote to another.

The destination is made from the source's metadata when it does not exist: a precomputed or zarr
remote gets exactly the source's levels (sizes, offsets, voxel sizes, chunk shapes); the local store
gets the same geometry and rebuilds its own lower levels from level 0 (the levels it would make must
be the source's, else only the levels that match are kept). Voxels are copied one destination chunk at
a time (every write covers whole chunks of the destination, so nothing is read back), by ``workers``
threads (or worker processes, or a Dask cluster: ``scheduler=``), with a tqdm bar counting chunks.

Resumable: the chunks written are recorded in a state file (``<user data dir>/copies/<digest>.done``,
one line per chunk, the digest naming source, destination, box and levels); a copy started again after
an interruption skips them, and the file is removed once the copy is complete. A chunk is recorded
only after its write returned, so an interrupted copy at worst writes a chunk twice.

Meshes (``meshes=True``, ``ndfs copy --meshes``): when the source is an annotation channel and the
destination a precomputed layer, every label of the copied region at level 0 gets its mesh in the
layer, as the mount makes a label object's ``<id>.obj`` (the source's own mesh where it keeps one, else
zmesh of the object's voxels, through :data:`~ndfs.tools.mesh.mesh_cache`), written as a legacy
fragment with its ``<id>:0`` manifest; a RAMON neuron's manifest names its segments' fragments. The
source's RAMON objects, if it has any, become the layer's segment properties
(:func:`~ndfs.ramon.neuroglancer.segment_properties`). Meshes are made by ``workers`` threads after the
voxels; a mesh whose manifest is there already is skipped (unless ``resume=False``), so an interrupted
copy goes on where it stopped.

Sources and destinations are :class:`~ndfs.volume.Volume` objects, ``(backend, path)`` pairs, tree
paths ``REMOTE/PROJECT.../CHANNEL`` of the configured remotes, or dataset URLs (``precomputed://...``,
``zarr+file:///...``: what :func:`ndfs.remote` opens). A folder copies every channel below it, keeping
their paths below the destination; a URL destination is a folder, and a channel lands in it under its
own name.
Thread-safe as far as the backends are.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ndfs.core.errors import BadRegion, NdfsError, NotFound
from ndfs.core.geometry import Box
from ndfs.core.info import VolumeInfo
from ndfs.stores.base import AdminStore, AnnotationStore, Backend, ShapeStore, VolumeRef, as_ref

log = logging.getLogger("ndfs.copy")


@dataclass
class CopyReport:
    """What a copy did: channels copied (source path -> destination path), chunks written and skipped."""

    channels: dict[str, str] = field(default_factory=dict)
    written: int = 0
    skipped: int = 0
    nbytes: int = 0
    meshes: int = 0
    meshes_skipped: int = 0
    #: labels whose box was larger than ``max_object_bytes``: no mesh made (the mount refuses them too)
    meshes_refused: list[int] = field(default_factory=list)


def _innermost(backend: Backend) -> Backend:
    from ndfs.stores.wrap import layers

    return list(layers(backend))[-1]


def _describe(backend: Backend) -> str:
    """Where a backend's store is (for the state file's digest): the innermost store's repr."""
    return repr(_innermost(backend))


def _level_box(src: VolumeInfo, box: Box | None, level: int) -> Box:
    """The part of ``level`` that ``box`` (at level 0) covers: scaled by the voxel sizes, clipped."""
    lv = src.level(level)
    if box is None:
        return lv.box
    base = src.level(0)
    start = [int((a * v0) // v) for a, v0, v in zip(box.start, base.voxel_size_nm, lv.voxel_size_nm)]
    stop = [-int((-b * v0) // v) for b, v0, v in zip(box.stop, base.voxel_size_nm, lv.voxel_size_nm)]
    found = Box(tuple(start), tuple(max(a, b) for a, b in zip(start, stop))).intersect(lv.box)
    if found is None:
        raise BadRegion(f"the box {box} is outside level {level} of the source ({lv.box})")
    return found


def _rebuilds_levels(backend: Backend) -> bool:
    from ndfs.stores.local import LocalBackend

    return isinstance(_innermost(backend), LocalBackend)


def _make_destination(src_info: VolumeInfo, dst: Backend, ref: VolumeRef) -> VolumeInfo:
    """The destination channel made from the source's metadata (see the module doc)."""
    from ndfs.stores.dataset import DatasetBackend
    from ndfs.stores.local import pyramid

    store = _innermost(dst)
    if isinstance(store, DatasetBackend):
        store.create_volume_like(ref, src_info)
        for layer in _layers_above(dst):
            layer.forget_volume(ref)
        return dst.info(ref)
    if not isinstance(dst, AdminStore):
        raise NdfsError(f"{dst.kind} remote cannot make channels: create {'/'.join(ref)} there first",
                        errno=errno.ENOTSUP)
    base = src_info.level(0)
    made = pyramid(base.shape, base.offset, base.voxel_size_nm, len(src_info.levels), base.chunk_shape)
    same = 1
    while same < len(made) and made[same].box == src_info.levels[same].box:
        same += 1
    return dst.create_volume(ref, base.shape, src_info.dtype, kind=src_info.kind, voxel_size_nm=base.voxel_size_nm,
                             offset=base.offset, levels=same, chunk_shape=base.chunk_shape)


def _layers_above(backend: Backend):
    from ndfs.stores.wrap import WrappingBackend, layers

    return [b for b in layers(backend) if isinstance(b, WrappingBackend)]


def _check_fits(src: VolumeInfo, dst: VolumeInfo, levels: Sequence[int], where: str) -> None:
    if dst.dtype != src.dtype:
        raise BadRegion(f"{where} holds {dst.dtype}, the source {src.dtype}")
    for level in levels:
        if level >= len(dst.levels) or not dst.level(level).box.contains(src.level(level).box):
            raise BadRegion(f"level {level} of {where} does not hold the source's level {level} "
                            f"({src.level(level).box})")


class _State:
    """The chunks a copy has written, on disk, one ``level z y x`` line each (appended, flushed per line)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.done: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()
        self._fh = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts):  # a torn last line is redone
                    self.done.add(tuple(int(p) for p in parts))
        self._fh = open(path, "a")

    def mark(self, key: tuple[int, ...]) -> None:
        with self._lock:
            self.done.add(key)
            if self._fh is not None:
                self._fh.write(" ".join(map(str, key)) + "\n")
                self._fh.flush()

    def finish(self, complete: bool) -> None:
        if self._fh is not None:
            self._fh.close()
            if complete:
                self.path.unlink(missing_ok=True)


def state_dir() -> Path:
    from ndfs.core.config import user_data_dir

    return Path(os.environ.get("NDFS_COPY_STATE_DIR") or user_data_dir() / "copies")


def _copy_chunk(src_source, src_ref, dst_source, dst_ref, level: int, part: Box) -> int:
    """One chunk copied in a worker process: both stacks reopened from their recipes (once per process)."""
    from ndfs.stack import open_source

    data = open_source(src_source).read(src_ref, part, level)
    open_source(dst_source).write(dst_ref, part, level, data)
    return int(data.nbytes)


def _copy_here(src: Backend, src_ref, dst: Backend, dst_ref, level: int, part: Box) -> int:
    data = src.read(src_ref, part, level)
    dst.write(dst_ref, part, level, data)
    return int(data.nbytes)


def _mesh_store(dst: Backend, src_info: VolumeInfo, src_ref: VolumeRef):
    """The precomputed store meshes are written to; BadRegion when the copy cannot carry meshes."""
    from ndfs.stores.precomputed import PrecomputedBackend

    store = _innermost(dst)
    if not isinstance(store, PrecomputedBackend):
        raise BadRegion(f"meshes are copied to a precomputed layer, not to a {dst.kind} remote")
    if src_info.kind != "annotation":
        raise BadRegion(f"{'/'.join(src_ref)} is an image channel: only annotation (label) channels have meshes")
    return store


def copy_meshes(src: Backend, src_ref, dst: Backend, dst_ref, *, box: Box | None = None, workers: int = 4,
                progress: bool = True, resume: bool = True, report: CopyReport | None = None,
                max_object_bytes: int = 1 << 30) -> CopyReport:
    """The meshes and segment properties of an annotation channel into the precomputed layer ``dst_ref``
    (which holds its voxels already): see the module doc. An object whose box holds more than
    ``max_object_bytes`` of labels is not meshed from voxels (named in ``report.meshes_refused``), as the
    mount refuses its ``<id>.obj``: each worker would hold that box and its mask at once."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    from ndfs.ramon.neuroglancer import segment_properties
    from ndfs.tools.mesh import label_boxes, mesh_cache

    src_ref, dst_ref = as_ref(src_ref), as_ref(dst_ref)
    report = report if report is not None else CopyReport()
    src_info = src.info(src_ref)
    store = _mesh_store(dst, src_info, src_ref)
    objects = []
    if isinstance(src, AnnotationStore):
        ids = src.ramon_ids(src_ref)
        for i in range(0, len(ids), 1000):
            objects.extend(src.ramon_get(src_ref, ids[i:i + 1000]))
    if objects:
        store.write_segment_properties(dst_ref, segment_properties(objects))
    boxes = label_boxes(src, src_ref, _level_box(src_info, box, 0), 0)
    neurons = {o.id: [s for s in o.segments if s in boxes] for o in objects
               if o.type == "neuron" and o.id not in boxes}
    neurons = {k: v for k, v in neurons.items() if v}
    voxel_size = src_info.level(0).voxel_size_nm
    shapes = isinstance(src, ShapeStore)

    def one(label: int) -> str:
        if resume and store.has_mesh(dst_ref, label):
            return "skipped"
        own = src.object_mesh(src_ref, label) if shapes else None
        if own is None:
            where = boxes[label]
            if where.size * src_info.dtype.itemsize > max_object_bytes:
                log.warning("label %d of %s spans %s, more than %d bytes of labels: no mesh made", label,
                            "/".join(src_ref), where, max_object_bytes)
                return "refused"
            mask = (src.read(src_ref, where, 0) == label).astype(np.uint8)
            made = mesh_cache.mesh_of_mask(mask, where.start, voxel_size, label=label)
            own = made.vertices, made.faces
        store.write_mesh(dst_ref, label, *own)
        return "written"

    bar = tqdm(total=len(boxes) + len(neurons), unit="mesh", disable=not progress,
               desc=f"{'/'.join(src_ref)} meshes")
    try:
        with ThreadPoolExecutor(max(1, int(workers))) as pool:
            for label, done in zip(boxes, pool.map(one, boxes)):
                report.meshes += done == "written"
                report.meshes_skipped += done == "skipped"
                if done == "refused":
                    report.meshes_refused.append(label)
                bar.update(1)
        for id, parts in neurons.items():  # after their segments: a manifest names fragments that exist
            if resume and store.has_mesh(dst_ref, id):
                report.meshes_skipped += 1
            else:
                store.write_mesh_manifest(dst_ref, id, parts)
                report.meshes += 1
            bar.update(1)
    finally:
        bar.close()
    for layer in _layers_above(dst):
        layer.forget_volume(dst_ref)
    return report


def copy_volume(src: Backend, src_ref, dst: Backend, dst_ref, *, box: Box | None = None,
                levels: Sequence[int] | None = None, workers: int = 4, progress: bool = True, resume: bool = True,
                report: CopyReport | None = None, scheduler: str = "threads", address: str | None = None,
                client=None, meshes: bool = False) -> CopyReport:
    """Copy one channel (or ``box`` of it, at level 0) from ``src`` to ``dst``, making the destination when
    it does not exist. ``levels`` default: every level the destination keeps and does not rebuild itself.
    ``scheduler`` ``"threads"`` (default), ``"processes"`` or ``"dask"`` (a LocalCluster of ``workers``
    processes, the scheduler at ``address``, or ``client``), as :func:`ndfs.tools.batch.map_blocks` runs
    blocks; worker processes reopen both remotes from their recipes (open them with ``ndfs.remote``).
    ``meshes``: then :func:`copy_meshes` (an annotation channel to a precomputed layer only)."""
    from tqdm import tqdm

    from ndfs.tools.batch import SCHEDULERS, _Pool

    if scheduler not in SCHEDULERS:
        raise BadRegion(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
    if (address or client is not None) and scheduler != "dask":
        raise BadRegion("address= and client= go with scheduler='dask'")

    src_ref, dst_ref = as_ref(src_ref), as_ref(dst_ref)
    report = report if report is not None else CopyReport()
    src_info = src.info(src_ref)
    if meshes:
        _mesh_store(dst, src_info, src_ref)  # refused before any voxel is copied
    try:
        dst_info = dst.info(dst_ref)
    except NotFound:
        dst_info = _make_destination(src_info, dst, dst_ref)
    if levels is None:
        top = min(len(src_info.levels), len(dst_info.levels))
        levels = [0] if _rebuilds_levels(dst) else list(range(top))
    levels = sorted(set(int(v) for v in levels))
    where = f"{dst.kind} channel {'/'.join(dst_ref)}"
    _check_fits(src_info, dst_info, levels, where)
    jobs = []
    for level in levels:
        want = _level_box(src_info, box, level)
        grid = dst_info.level(level).grid
        for index in grid.chunks(want):
            part = grid.chunk_box(index).intersect(want)
            if part is not None:
                jobs.append(((level, *index), part))
    digest = hashlib.sha256(json.dumps([_describe(src), list(src_ref), _describe(dst), list(dst_ref),
                                        None if box is None else [box.start, box.stop], levels]).encode()).hexdigest()
    state = _State(state_dir() / f"{digest[:32]}.done" if resume else None)
    todo = [(key, part) for key, part in jobs if key not in state.done]
    report.skipped += len(jobs) - len(todo)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="chunk", disable=not progress,
               desc=f"{'/'.join(src_ref)} -> {'/'.join(dst_ref)}")
    complete = False

    if scheduler == "threads":
        def submit(pool, key, part):
            return pool.submit(_copy_here, src, src_ref, dst, dst_ref, key[0], part)
    else:
        from ndfs.stack import source_of

        src_source, dst_source = source_of(src), source_of(dst)

        def submit(pool, key, part):
            return pool.submit(_copy_chunk, src_source, src_ref, dst_source, dst_ref, key[0], part)

    inflight = 2 * max(1, int(workers))
    pool = _Pool(scheduler, max(1, int(workers)), address, client, {}) if todo else None
    try:
        pending: dict = {}

        def take(done) -> None:
            for f in done:
                key = pending.pop(f)
                report.nbytes += f.result()
                report.written += 1
                state.mark(key)
                bar.update(1)

        for key, part in todo:
            pending[submit(pool, key, part)] = key
            if len(pending) >= inflight:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                take(finished)
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            take(finished)
        complete = True
    finally:
        if pool is not None:
            pool.close(wait=complete)
        bar.close()
        state.finish(complete)
    if meshes:
        copy_meshes(src, src_ref, dst, dst_ref, box=box, workers=workers, progress=progress, resume=resume,
                    report=report)
    report.channels["/".join(src_ref)] = "/".join(dst_ref)
    return report


def _volumes_below(backend: Backend, ref: VolumeRef) -> list[VolumeRef]:
    if backend.is_volume(ref):
        return [ref]
    out = []
    for name in backend.children(ref):
        out.extend(_volumes_below(backend, ref + (name,)))
    return out


def _resolve(target, config=None) -> tuple[Backend, VolumeRef, bool]:
    """(backend, path, whether the target is a URL naming a folder to copy into)."""
    from ndfs.volume import Volume

    if isinstance(target, Volume):
        return target.backend, target.ref, False
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], Backend):
        return target[0], as_ref(target[1]), False
    if isinstance(target, tuple) and len(target) == 2 and hasattr(target[0], "backend"):  # a Remote and a path
        return target[0].backend, as_ref(target[1]), False
    if isinstance(target, str):
        from ndfs.api import remote

        if "://" in target:
            return remote(target, config=config).backend, (), True
        parts = [p for p in target.split("/") if p]
        if not parts:
            raise NotFound("a copy needs a path like REMOTE/PROJECT/CHANNEL")
        return remote(parts[0], config=config).backend, tuple(parts[1:]), False
    raise BadRegion(f"copy from or to a Volume, a (remote, path) pair, a tree path or a URL, "
                    f"not {type(target).__name__}")


def copy(source, dest, *, box: Box | None = None, levels: Sequence[int] | None = None, workers: int = 4,
         progress: bool = True, resume: bool = True, config=None, scheduler: str = "threads",
         address: str | None = None, client=None, meshes: bool = False) -> CopyReport:
    """Copy a channel, a box of it (``box`` at level 0, ZYX, dataset coordinates) or every channel below a
    folder from ``source`` to ``dest`` (see the module doc). A folder's channels keep their paths below
    ``dest``. ``scheduler``/``address``/``client``: see :func:`copy_volume`. ``meshes``: the meshes and
    segment properties of annotation channels too (to a precomputed destination; a folder's image channels
    are copied without). Returns a :class:`CopyReport`."""
    run = {"scheduler": scheduler, "address": address, "client": client}
    src, src_ref, _ = _resolve(source, config)
    dst, dst_ref, into = _resolve(dest, config)
    if meshes and not _innermost(dst).kind == "precomputed":
        raise BadRegion(f"meshes are copied to a precomputed layer, not to a {dst.kind} remote")
    report = CopyReport()
    if src.is_volume(src_ref):
        if into:
            dst_ref = (src_ref[-1],)
        copy_volume(src, src_ref, dst, dst_ref, box=box, levels=levels, workers=workers, progress=progress,
                    resume=resume, report=report, meshes=meshes, **run)
        return report
    for ref in _volumes_below(src, src_ref):
        labels = meshes and src.info(ref).kind == "annotation"
        copy_volume(src, ref, dst, dst_ref + ref[len(src_ref):], box=box, levels=levels, workers=workers,
                    progress=progress, resume=resume, report=report, meshes=labels, **run)
    return report


__all__ = ["copy", "copy_volume", "copy_meshes", "CopyReport"]
