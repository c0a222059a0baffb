"""The one builder: how every entry point opens a remote, and how worker processes open it again.

:func:`open_store` stacks store -> chunk cache -> outbox journal from the
configuration (:mod:`ndfs.core.config`) for the mount, ``ndfs ls``/``cat``,
``ndfs.remote()``/``open_volume()``/``open_remote()``, export, import,
annotate, batch workers and ``ndfs serve``; nothing else constructs these
layers. :class:`Source` is the picklable recipe of a built stack (the remote's
settings, never its token), which :func:`open_source` opens once per process.
No I/O happens here; backends connect when first used.
"""

from __future__ import annotations

import os
import pickle
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ndfs.core.config import (CacheConfig, Config, RemoteConfig, WriteConfig, check_local_store,
                              check_remote_options, driver_options, max_age_of, remote_target)
from ndfs.core.errors import BadRegion, ConfigError
from ndfs.stores.base import Backend

def open_store(config: Config, remote: RemoteConfig | str | None = None, *, cache: CacheConfig | None = None,
               store=None):
    """The layered backend of one remote, built the same way for every entry point: the mount, ``ndfs ls``
    and ``cat``, ``ndfs.remote()``/``open_volume()``/``open_remote()``, export, import, annotate, batch
    workers and ``ndfs serve``. Nothing else stacks these layers.

    The store (``store``, or :func:`open_backend`), behind the chunk cache (``cache``, default the
    configuration's; off when not ``enabled``: remote services get both tiers, the local store, already
    on disk, the memory tier only; the namespace is :func:`remote_target`, so every process shares disk
    entries and stamps; how old what it holds may be is :func:`~ndfs.core.config.max_age_of`, which
    knows whether ndfs can write the remote: a token and not read_only), behind the outbox journal for
    remote services that can be written (the local store journals its own writes). No I/O happens here.
    """
    from ndfs.cache import CachedBackend
    from ndfs.stores.http import HttpDriver

    rc = remote if isinstance(remote, RemoteConfig) else config.remote(remote)
    cache = config.cache if cache is None else cache
    backend = open_backend(rc, config) if store is None else store
    if cache.enabled:
        writable = "write" in backend.capabilities and (not isinstance(backend, HttpDriver) or backend.has_token)
        backend = CachedBackend(backend, namespace=remote_target(rc), memory_bytes=cache.memory_bytes,
                                disk_dir=None if rc.kind == "local" else cache.dir, disk_bytes=cache.disk_bytes,
                                prefetch=cache.prefetch, max_age_s=max_age_of(rc, cache, writable))
    if rc.kind != "local" and "write" in backend.capabilities:
        from ndfs.journal import Journal
        from ndfs.journal.outbox import JournaledStore

        backend = JournaledStore(backend, Journal(config.write.outbox_dir), rc.name, remote_target(rc),
                                 mode=config.write.write_back, retry_max_s=config.write.retry_max_s)
    return backend


def open_remotes(config: Config) -> dict:
    """Every configured remote's layered backend (:func:`open_store`), by name."""
    return {name: open_store(config, rc) for name, rc in config.remotes.items()}


#: HTTP remote kinds: (module, class, an example url for the error message)
HTTP_BACKENDS = {
    "boss": ("ndfs.stores.boss", "BossBackend", "https://api.bossdb.io"),
    "dvid": ("ndfs.stores.dvid", "DvidBackend", "http://host:8000"),
    "neurodata": ("ndfs.stores.neurodata", "NeuroDataBackend", "http://host:8000"),
}


#: remote kinds that read a dataset format at a path or URL: (module, class)
DATASET_BACKENDS = {
    "precomputed": ("ndfs.stores.precomputed", "PrecomputedBackend"),
    "zarr": ("ndfs.stores.omezarr", "ZarrBackend"),
}


def open_backend(remote: RemoteConfig, config: Config | None = None):
    """Build the uncached backend of one remote (no I/O happens until it is used)."""
    if remote.kind == "local":
        from ndfs.stores.local import LocalBackend

        if remote.options:
            check_remote_options("local", remote.options, f"remote {remote.name!r}")
        check_local_store(remote)
        return LocalBackend(remote.path, read_only=remote.read_only)
    if remote.kind in DATASET_BACKENDS:
        import importlib

        module, cls = DATASET_BACKENDS[remote.kind]
        options = driver_options(replace(remote, options=check_remote_options(remote.kind, remote.options,
                                                                            f"remote {remote.name!r}")))
        where = remote.path if remote.path is not None else remote.url
        if where is None:
            raise ConfigError(f"remote {remote.name!r}: a {remote.kind} remote needs path = \"DIR\" or url = \"...\"")
        return getattr(importlib.import_module(module), cls)(where, read_only=remote.read_only, **options)
    if remote.kind not in HTTP_BACKENDS:
        raise ConfigError(f"remote {remote.name!r}: kind {remote.kind!r} is not available")
    import importlib

    module, cls, example = HTTP_BACKENDS[remote.kind]
    if not remote.url:
        raise ConfigError(f"remote {remote.name!r}: a {remote.kind} remote needs url = \"{example}\"")
    options = driver_options(replace(remote, options=check_remote_options(remote.kind, remote.options,
                                                                        f"remote {remote.name!r}")))
    token = os.environ.get(remote.token_env) if remote.token_env else None
    if token is None and remote.kind == "boss":
        token = _intern_token(remote.url)
    backend = getattr(importlib.import_module(module), cls)
    try:
        return backend(remote.url, token, read_only=remote.read_only, **options)
    except TypeError as exc:  # DRIVER_OPTIONS out of step with the driver: test_config_knows_every_driver_setting
        raise ConfigError(f"remote {remote.name!r}: unknown or mistyped setting ({exc})") from None


def _intern_token(url: str) -> str | None:
    """The token in intern's ~/.intern/intern.cfg, only if its host is the one in `url` (never sent elsewhere)."""
    import configparser
    from urllib.parse import urlparse

    path = Path.home() / ".intern" / "intern.cfg"
    if not path.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for section in ("Volume Service", "Default"):
        if parser.has_section(section) and parser[section].get("host", "").strip() == urlparse(url).netloc:
            return parser[section].get("token", "").strip() or None
    return None


# ---- recipes: how to reopen a backend elsewhere ----------------------------------
@dataclass(frozen=True)
class Source:
    """How to open a backend again in another process: its remote's settings (no token), and the cache and
    write settings it was built with (:func:`open_store`)."""

    remote: Any  # ndfs.core.config.RemoteConfig
    cache: Any = None  # ndfs.core.config.CacheConfig; None: no cache
    write: Any = None  # ndfs.core.config.WriteConfig; None: the defaults


_SOURCES: "weakref.WeakKeyDictionary[Backend, Source]" = weakref.WeakKeyDictionary()
_OPENED: dict[bytes, Backend] = {}
_OPENED_LOCK = threading.Lock()


def source_of(backend: Backend) -> Source:
    """The recipe that reopens ``backend`` (opened by :func:`remote`, or a local store, or a cache of one)."""
    from ndfs.cache import CachedBackend
    from ndfs.journal.outbox import JournaledStore
    from ndfs.stores.local import LocalBackend

    found = _SOURCES.get(backend)
    if found is not None:
        return found
    if isinstance(backend, LocalBackend):
        return Source(RemoteConfig("local", "local", path=backend.root, read_only="write" not in backend.capabilities))
    if isinstance(backend, (CachedBackend, JournaledStore)):
        return source_of(backend.inner)
    raise BadRegion(f"a {backend.kind} backend opened by hand cannot be sent to other processes; "
                    "open it with ndfs.remote(...) so workers can reopen it")


def open_source(source: Source) -> Backend:
    """The backend of a recipe, opened once per process and shared (backends are thread-safe)."""
    key = pickle.dumps(source)
    with _OPENED_LOCK:
        backend = _OPENED.get(key)
        if backend is None:
            backend = build(source.remote, source.cache, source.write)
            _OPENED[key] = backend
    return backend


def build(rc, cache, write=None) -> Backend:
    """The layered backend of a remote (:func:`open_store`, as for mounts: the same cache
    namespace, so Python and mounts share the disk tier, and the same outbox journal), remembered as a
    recipe so worker processes can reopen it."""
    config = Config(remotes={rc.name: rc}, write=write or WriteConfig())
    backend = open_store(config, rc, cache=cache if cache is not None else CacheConfig(enabled=False))
    _SOURCES[backend] = Source(rc, cache, write)
    return backend
