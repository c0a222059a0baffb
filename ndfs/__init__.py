"""ndfs: neuroscience volume datastores as ordinary files, and as a Python library.

Nothing heavy happens at import time: backends, zarr and the FUSE binding are
imported when first used.
"""

from ndfs.core.version import __version__  # noqa: E402

from ndfs.core.errors import (  # noqa: E402
    BackendError,
    BadRegion,
    NdfsError,
    NotFound,
    PermissionDenied,
    ReadOnly,
    Timeout,
    TooLarge,
)
from ndfs.core.geometry import Box, ChunkGrid  # noqa: E402
from ndfs.core.info import LevelInfo, VolumeInfo  # noqa: E402


def open_remote(name=None, config=None):
    """Open the backend of remote `name` from the configuration (the first remote if None), with the
    chunk cache and the outbox as a mount has them (:func:`ndfs.stack.open_store`)."""
    return remote(name, config=config).backend


def open_volume(path, config=None, level=0):
    """Open a volume by its tree path, e.g. ``"local/demo/em"``, as a :class:`ndfs.volume.Volume` (through
    the chunk cache and the outbox, as a mount reads and writes it)."""
    from ndfs.volume import Volume

    parts = [p for p in str(path).split("/") if p]
    if not parts:
        raise NotFound("open_volume needs a path like 'local/<project>/<channel>'")
    return Volume(remote(parts[0], config=config).backend, tuple(parts[1:]), level=level)


def remote(name_or_url=None, **kwargs):
    """An ndio-style :class:`ndfs.api.Remote`: a configured name, ``KIND+URL`` or a store directory."""
    from ndfs.api import remote as _remote

    return _remote(name_or_url, **kwargs)


def count(target, ref=None, **kwargs):
    """Count RAMON objects (see :func:`ndfs.annotate.count`): of a Volume, a tree path
    (``"local/demo/cells"``) or a backend and a channel ref; keywords ``type``, ``box``, ``kv``, ``level``."""
    from ndfs.tools.annotate import count as _count
    from ndfs.volume import Volume

    if isinstance(target, Volume):
        kwargs.setdefault("level", target.level_index)
        return _count(target.backend, target.ref, **kwargs)
    if isinstance(target, str) and ref is None:
        vol = open_volume(target)
        try:
            return _count(vol.backend, vol.ref, **kwargs)
        finally:
            vol.backend.close()  # opened here: its pools and files are closed here
    return _count(target, ref, **kwargs)


def copy(source, dest, **kwargs):
    """Copy a channel, a box of it or a whole project between any two remotes (see :func:`ndfs.tools.copy.copy`):
    ``ndfs.copy("local/demo/em", "precomputed+file:///data/layers")``; resumable, chunk-aligned on the
    destination, whose metadata is made from the source's; ``meshes=True`` adds the meshes and segment properties
    of label channels copied to precomputed."""
    from ndfs.tools.copy import copy as _copy

    return _copy(source, dest, **kwargs)


_LAZY = {"Remote": ("ndfs.api", "Remote"), "Volume": ("ndfs.volume", "Volume")}
#: the library's modules by their short names: ndfs.convert, ndfs.mesh, ndfs.batch... (in their layers' folders)
_SUBMODULES = {"api": "ndfs.api", "batch": "ndfs.tools.batch", "convert": "ndfs.tools.convert",
               "mesh": "ndfs.tools.mesh", "annotate": "ndfs.tools.annotate", "ramon": "ndfs.ramon"}


def __getattr__(name):  # submodules and classes load on first use, so `import ndfs` stays light
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ndfs' has no attribute {name!r}")


__all__ = [
    "__version__", "NdfsError", "NotFound", "PermissionDenied", "ReadOnly", "BadRegion",
    "TooLarge", "Timeout", "BackendError", "Box", "ChunkGrid", "LevelInfo", "VolumeInfo",
    "open_remote", "open_volume", "remote", "count", "copy", "Remote", "Volume",
]
