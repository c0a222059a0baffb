"""One builder (ndfs.stack.open_store) makes the layered backend for every entry point.

The mount, ``ndfs.remote()``, ``ndfs.open_volume()``/``open_remote()``, export/import (through
``ndfs.remote``), batch workers (reopening a Volume's recipe) and ``ndfs serve`` all get the same
layers from the same configuration, and the same reads show the same cache statistics everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle

import numpy as np
import pytest

import ndfs
from ndfs.stores.local import LocalBackend
from ndfs.stores.wrap import layers
from ndfs.cache import CachedBackend
from ndfs.core.config import load_config
from ndfs.stack import open_remotes
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted

SHAPE = (16, 128, 128)
BOXES = [Box((0, 0, 0), (1, 128, 128)), Box((3, 0, 0), (4, 128, 128)), Box((0, 0, 0), (1, 128, 128))]


@pytest.fixture
def site(tmp_path):
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(("p", "v"), SHAPE, "uint8", levels=2, chunk_shape=(8, 64, 64))
    store.write(("p", "v"), Box((0, 0, 0), SHAPE), 0, np.arange(np.prod(SHAPE), dtype=np.uint64).reshape(SHAPE)
                .astype(np.uint8))
    config = tmp_path / "ndfs.toml"
    config.write_text('[remotes.local]\nkind = "local"\npath = "store"\n[cache]\nmemory_bytes = 33554432\n'
                      '[remotes.b]\nkind = "boss"\nurl = "http://127.0.0.1:9"\n')
    return tmp_path, config


def _kinds(backend) -> list[str]:
    return [type(layer).__name__ for layer in layers(backend)]


def test_every_entry_point_gets_the_same_layers(site):
    root, config = site
    cfg = load_config(config)
    mount_layers = {name: _kinds(b) for name, b in open_remotes(cfg).items()}
    assert mount_layers == {"local": ["CachedBackend", "LocalBackend"],
                            "b": ["JournaledStore", "CachedBackend", "BossBackend"]}
    api = {name: _kinds(ndfs.remote(name, config=cfg).backend) for name in ("local", "b")}
    assert api == mount_layers
    assert _kinds(ndfs.open_remote("b", config=cfg)) == mount_layers["b"]
    assert _kinds(ndfs.open_volume("local/p/v", config=cfg).backend) == mount_layers["local"]
    vol = ndfs.remote("local", config=cfg).volume("p", "v")
    assert _kinds(pickle.loads(pickle.dumps(vol)).backend) == mount_layers["local"]  # what a batch worker opens
    from ndfs.cli.serve import _backend

    served, _ = _backend(argparse.Namespace(config=str(config), store=None, remote="b", read_only=False,
                                            cache_memory=None))
    assert _kinds(served) == mount_layers["b"]
    cache = next(layer for layer in layers(served) if isinstance(layer, CachedBackend))
    assert cache.namespace == next(layer for layer in layers(open_remotes(cfg)["b"])
                                   if isinstance(layer, CachedBackend)).namespace  # one shared disk tier


def _same_reads(read) -> None:
    for box in BOXES:
        read(box)


def _counts(stats: dict) -> dict:
    return {k: stats[k] for k in ("memory_hits", "disk_hits", "misses")}


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_the_same_reads_show_the_same_cache_statistics_through_every_entry_point(site):
    root, config = site
    seen = {}
    api = ndfs.remote("local", config=load_config(config))
    cache = next(layer for layer in layers(api.backend) if isinstance(layer, CachedBackend))
    cache.prefetch_enabled = False  # prefetch hints depend on timing; the counts here should not
    _same_reads(lambda box: api.backend.read(("p", "v"), box, 0))
    seen["remote"] = _counts(cache.cache_stats())
    vol = ndfs.open_volume("local/p/v", config=load_config(config))
    cache = next(layer for layer in layers(vol.backend) if isinstance(layer, CachedBackend))
    cache.prefetch_enabled = False
    _same_reads(lambda box: vol.read(box))
    seen["open_volume"] = _counts(cache.cache_stats())
    with mounted(config, root / "mnt", "--no-prefetch"):
        for box in BOXES:  # the same boxes as plane files: one z-plane each
            with open(root / "mnt" / "local" / "p" / "v" / "0" / "z" / f"{box.start[0]}.tif", "rb") as fh:
                fh.read()
        stats = json.loads((root / "mnt" / ".ndfs" / "stats.json").read_text())["local"]["cache"]
    seen["mount"] = _counts(stats)
    assert seen["remote"] == seen["open_volume"] == seen["mount"], seen
    assert seen["remote"]["misses"] > 0 and seen["remote"]["memory_hits"] > 0


def test_layers_are_instances_of_exactly_the_protocols_of_the_store_below(site):
    from ndfs.stores.base import AdminStore, AnnotationStore, KeyValueStore
    from ndfs.stores.wrap import WrappingBackend

    root, config = site
    local, boss = open_remotes(load_config(config)).values()
    assert isinstance(local, WrappingBackend) and isinstance(boss, WrappingBackend)  # layers are layers
    assert isinstance(local, AdminStore) and isinstance(local, AnnotationStore) and not isinstance(local, KeyValueStore)
    assert isinstance(boss, AnnotationStore) and not isinstance(boss, AdminStore)
    assert not isinstance(boss, KeyValueStore)


@pytest.mark.parametrize("engine", ["zarr", "tensorstore"])
def test_warm_up_loads_the_local_store_s_modules_through_every_layer(tmp_path, engine):
    """The mount warms its backends before it shows (a first slice must not wait half a second for the
    local store's read engine: zarr-python, or tensorstore when installed)."""
    import subprocess
    import sys

    if engine == "tensorstore":
        pytest.importorskip("tensorstore")
    code = ("import sys\n"
            "from ndfs.core.config import Config, RemoteConfig\n"
            "from ndfs.stack import open_store\n"
            "from pathlib import Path\n"
            f"rc = RemoteConfig('local', 'local', path=Path({str(tmp_path)!r}))\n"
            "backend = open_store(Config(remotes={'local': rc}), rc)\n"
            "assert not {'zarr', 'tensorstore'} & set(sys.modules), 'opening a store must stay light'\n"
            "backend.warm_up()\n"
            f"assert {engine!r} in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NDFS_LOCAL_ENGINE": engine})
    assert done.returncode == 0, done.stderr
