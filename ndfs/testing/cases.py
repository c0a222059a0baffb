"""Conformance cases by name: every store over the reference project, raw and behind every layer.

``make_case(name, ...)`` builds the :class:`~ndfs.testing.conformance.Case` a
conformance module's ``conformance_case`` fixture returns. Names are
``<store>-<layers>``: store ``local``, ``boss``, ``dvid`` or ``neurodata``
(the last three through ``ndfs serve``'s WSGI apps on 127.0.0.1 over the
reference store); layers ``raw`` (the driver), ``read-only``, ``cached`` (the
chunk cache) or ``journaled`` (the outbox journal over the cache, as a mount
and ``ndfs.remote()`` stack a remote service: :func:`ndfs.stack.open_store`).

Stores ``precomputed`` and ``zarr`` read the reference project as the formats' own writers wrote it
(:mod:`ndfs.testing.third_party`: CloudVolume, ome-zarr-py), from a local folder (``zarr``: NGFF 0.4 on
zarr v2; ``zarr-v3``: 0.5 on zarr v3) or, with layers ``http``, over a Range-capable static HTTP server
(``zarr``: 0.5); their lower levels are what the writer stored, so a write changes only its level.

:func:`synthetic_case` is the synthetic remote (read-only, voxels computed)
in the reference project's geometry, with its own oracle.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ndfs.stores.local import LocalBackend
from ndfs.testing.conformance import Case
from ndfs.testing.reference import ReferenceData


@contextlib.contextmanager
def reference_servers(path: Path):
    """BOSS, DVID and NeuroData servers over the reference store at ``path`` (yields name -> server)."""
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import WsgiServer
    from ndfs.serve.dvid import DvidApp
    from ndfs.serve.neurodata import NeuroDataApp

    with contextlib.ExitStack() as stack:
        yield {"boss": stack.enter_context(WsgiServer(BossApp(LocalBackend(path.parent)))),
               "dvid": stack.enter_context(WsgiServer(DvidApp(LocalBackend(path)))),
               "neurodata": stack.enter_context(WsgiServer(NeuroDataApp(LocalBackend(path))))}


def make_case(name: str, path: Path, oracle: ReferenceData, servers: dict, tmp_path: Path, closers: list) -> Case:
    """The case ``name`` over the reference store at ``path``; backends to close go to ``closers``."""
    from ndfs.core.config import RemoteConfig

    kind, layers = name.split("-", 1)
    if kind in DATASET_KINDS:
        return dataset_case(kind, layers, oracle, servers["datasets"], tmp_path, closers)
    read_only = layers == "read-only"
    if kind == "local":
        store, rc, prefix = LocalBackend(path, read_only=read_only), RemoteConfig("c", "local", path=path), ()
    else:
        server = servers[kind]
        if kind == "boss":
            from ndfs.stores.boss import BossBackend

            store, prefix = BossBackend(server.url, "x", read_only=read_only), (path.name,)
        elif kind == "dvid":
            from ndfs.stores.dvid import DvidBackend

            store, prefix = DvidBackend(server.url, branch="master", backoff_s=0.01, read_only=read_only), ()
        else:
            from ndfs.stores.neurodata import NeuroDataBackend

            store, prefix = NeuroDataBackend(server.url, read_only=read_only), ()
        rc = RemoteConfig("c", kind, url=server.url)
    backend = store
    if layers == "cached":
        from ndfs.cache import CachedBackend

        backend = CachedBackend(store, namespace=f"{kind}:{path}", memory_bytes=64 * 2**20,
                                disk_dir=None if kind == "local" else tmp_path / "cache", disk_bytes=2**28)
    elif layers == "journaled":  # as every entry point stacks it: the cache, and the outbox for services
        backend = journaled(store, kind, rc.url, tmp_path) if kind != "local" else store
    closers.append(backend)
    # the BOSS answers no voxel below the level-0 frame start at coarser levels (see the BOSS driver)
    return Case(backend=backend, oracle=oracle, writable=not read_only, prefix=prefix,
                zeros_below_start=kind == "boss")


DATASET_KINDS = ("precomputed", "zarr")


def dataset_case(kind: str, layers: str, oracle: ReferenceData, datasets, tmp_path: Path, closers: list) -> Case:
    """A precomputed or zarr case: ``datasets`` is (DatasetReferences, a StaticServer over their root)."""
    from ndfs.core.config import RemoteConfig
    from ndfs.stores.omezarr import ZarrBackend
    from ndfs.stores.precomputed import PrecomputedBackend
    from ndfs.testing.third_party import REFERENCE_LAYERS

    refs, server = datasets
    cls = PrecomputedBackend if kind == "precomputed" else ZarrBackend
    root = refs.precomputed if kind == "precomputed" else refs.zarr5 if layers in ("v3", "http") else refs.zarr4
    if layers == "http":
        url = f"{server.url}/{root.relative_to(refs.root)}"
        store = cls(url, layers=REFERENCE_LAYERS)
    else:
        url = root.as_uri()
        store = cls(root, read_only=layers == "read-only")
    backend = store
    if layers == "cached":
        from ndfs.cache import CachedBackend

        backend = CachedBackend(store, namespace=f"{kind}:{url}", memory_bytes=64 * 2**20,
                                disk_dir=tmp_path / "cache", disk_bytes=2**28)
    elif layers == "journaled":
        backend = journaled(store, kind, url, tmp_path)
    closers.append(backend)
    return Case(backend=backend, oracle=oracle, writable="write" in store.capabilities, rebuilds_levels=False,
                extra={"config": RemoteConfig("c", kind, url=url)})


def journaled(store, kind: str, url: str, tmp_path):
    """``store`` layered as every entry point layers a service (ndfs.stack.open_store): cache, then outbox."""
    from ndfs.core.config import CacheConfig, Config, RemoteConfig, WriteConfig
    from ndfs.stack import open_store

    rc = RemoteConfig("c", kind, url=url)
    return open_store(Config(remotes={"c": rc}, write=WriteConfig(outbox_dir=tmp_path / "outbox")), rc,
                      cache=CacheConfig(dir=tmp_path / "cache", memory_bytes=64 * 2**20), store=store)


def synthetic_reference(oracle: ReferenceData) -> ReferenceData:
    """The oracle of the synthetic remote in the reference geometry: its voxel rule evaluated over each
    level's whole box as the reference data has it (not as the backend cuts boxes and levels)."""
    import numpy as np

    from ndfs.stores.synthetic import voxels
    from ndfs.testing.reference import CHANNELS

    out = ReferenceData()
    for i, (name, (dtype, kind)) in enumerate(CHANNELS.items()):
        out.levels[name] = []
        for level in range(len(oracle.levels[name])):
            box = oracle.box(name, level)
            z, y, x = (np.arange(a, b, dtype=np.int64) for a, b in zip(box.start, box.stop))
            out.levels[name].append(voxels(dtype, kind, 1000 * (i + 1), z, y * 2**level, x * 2**level))
    return out


def synthetic_case(oracle: ReferenceData, cached: bool, closers: list) -> Case:
    """The synthetic remote laid out as the reference project (read-only), raw or behind the chunk cache."""
    from ndfs.stores.synthetic import SyntheticBackend
    from ndfs.testing.reference import CHANNELS, CHUNK, LEVELS, OFFSET, PROJECT, SHAPE, VOXEL_SIZE_NM

    backend = SyntheticBackend(shape=SHAPE, chunk_shape=CHUNK, offset=OFFSET, voxel_size_nm=VOXEL_SIZE_NM,
                               levels=LEVELS, project=PROJECT, channels=[f"{n}:{d}" for n, (d, _) in CHANNELS.items()])
    if cached:
        from ndfs.cache import CachedBackend

        backend = CachedBackend(backend, namespace="synthetic:conformance", memory_bytes=64 * 2**20)
    closers.append(backend)
    return Case(backend=backend, oracle=synthetic_reference(oracle), writable=False)
