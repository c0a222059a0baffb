"""The chunk cache: :class:`CachedBackend`, a Backend that wraps a Backend.

Reads are rounded to the inner volume's chunk grid. Each chunk is looked up
in a byte-bounded in-memory LRU of decoded arrays, then in an optional
byte-bounded LRU on disk (``diskcache``, shared by processes, persistent),
and the misses are fetched from the inner backend: grouped into few aligned
boxes, in parallel, single-flight (one fetch per chunk however many threads
want it; waiters share its result or its error; errors are never cached).
Sequential z-slice readers and ``prefetch`` hints fill the cache in the
background. Writes go through and invalidate every level they can change.

Keys are ``(namespace, ref, level, chunk index)``; the namespace names the
remote, so several remotes and processes can share one disk directory.

Modules: :mod:`~ndfs.cache.backend` (CachedBackend: tiers, single-flight,
prefetch, invalidation), :mod:`~ndfs.cache.disk` (the checked on-disk payload
format; ``disk_cache_info``/``clear_disk_cache`` for the CLI),
:mod:`~ndfs.cache.plan` (pure geometry: request grouping, write footprints).
Everything here is thread-safe.
"""

from ndfs.cache.backend import CachedBackend
from ndfs.cache.disk import clear_disk_cache, decode_chunk, disk_cache_info, encode_chunk

__all__ = ["CachedBackend", "clear_disk_cache", "decode_chunk", "disk_cache_info", "encode_chunk"]
