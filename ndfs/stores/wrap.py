"""WrappingBackend: a Backend in front of another one, passing everything through.

The layers that sit on a backend (the chunk cache, the write outbox) change
how voxels are read or written; the hierarchy, volume info, key-value files
and RAMON calls go straight to the wrapped backend. Subclasses override what
they change and inherit the rest, so a method added to the backend contract
needs one pass-through here, not one per layer.
"""

from __future__ import annotations

from typing import Sequence

from ndfs.stores.base import AdminStore, AnnotationStore, Backend, KeyValueStore, ShapeStore


def layers(backend: Backend):
    """The backend and every layer below it, outermost first."""
    while True:
        yield backend
        if not isinstance(backend, WrappingBackend):
            return
        backend = backend.inner


class WrappingBackend(Backend, AnnotationStore, KeyValueStore, AdminStore, ShapeStore):
    """Everything but ``_read``/``_write`` goes to ``inner``; ``kind`` and ``capabilities`` are its.

    A layer implements every contract by passing it down, and is an instance of exactly the contracts
    the store below it implements (``isinstance(layer, AnnotationStore)`` looks through ``is_layer``).
    """

    is_layer = True
    lock_writes = False  # the store below locks the planes it writes

    def __init__(self, inner: Backend):
        super().__init__()
        self.inner = inner
        self.kind = inner.kind
        self.capabilities = inner.capabilities

    # ---- hierarchy and metadata ----------------------------------------------
    def _children(self, path):
        return self.inner.children(path)

    def _is_volume(self, path):
        return self.inner.is_volume(path)

    def info(self, ref):
        """The store's answer, not memoised here: a layer that kept its own copy could not hear
        that the store below forgot it (a volume resized or deleted elsewhere)."""
        return self.inner.info(ref)

    def _info(self, ref):
        return self.inner.info(ref)

    def forget_info(self, ref: Sequence[str] | None = None) -> None:
        """Drop memoised info here and in the inner backend."""
        super().forget_info(ref)
        self.inner.forget_info(ref)

    def validate(self, ref, max_age_s):
        return self.inner.validate(ref, max_age_s)

    def prefetch(self, ref, box, level=0):
        self.inner.prefetch(ref, box, level)

    def warm_up(self) -> None:
        self.inner.warm_up()

    def generation(self, ref):
        return self.inner.generation(ref)

    def _inner_version(self, ref):
        return self.inner.version(ref)

    def volume_lock(self, ref):
        return self.inner.volume_lock(ref)

    # ---- administration: the channel is new or gone, so every layer forgets what it knew of it ----------
    def create_volume(self, ref, *args, **kwargs):
        try:
            return self.inner.create_volume(ref, *args, **kwargs)
        finally:
            self.forget_volume(ref)

    def delete_volume(self, ref) -> None:
        try:
            self.inner.delete_volume(ref)
        finally:
            self.forget_volume(ref)

    def forget_volume(self, ref) -> None:
        """Drop what this layer holds of a channel that was made anew or removed."""
        self.forget_info(ref)
        self.bump_version(ref)

    # ---- files (key-value stores) ------------------------------------------------
    def holds_files(self, path: Sequence[str]) -> bool:
        return self.inner.holds_files(path)

    def is_file(self, path: Sequence[str]) -> bool:
        return self.inner.is_file(path)

    def read_file(self, path: Sequence[str]) -> bytes:
        return self.inner.read_file(path)

    def write_file(self, path: Sequence[str], data: bytes) -> None:
        self.inner.write_file(path, data)

    def delete_file(self, path: Sequence[str]) -> None:
        self.inner.delete_file(path)

    # ---- annotations (the public methods check arguments, then call these) ----
    @property
    def ramon_max_id(self) -> int:  # type: ignore[override]
        return self.inner.ramon_max_id

    def _ramon_ids(self, ref, filters, box, level):
        f = filters
        return self.inner.ramon_ids(ref, type=f.type, status=f.status, confidence=f.confidence, kv=dict(f.kv),
                                    box=box, level=level, limit=f.limit)

    def _ramon_get(self, ref, ids):
        return self.inner.ramon_get(ref, ids)

    def _ramon_put(self, ref, objs):
        return self.inner.ramon_put(ref, objs)

    def _ramon_delete(self, ref, ids):
        self.inner.ramon_delete(ref, ids)

    def _reserve_ids(self, ref, n):
        return self.inner.reserve_ids(ref, n)[0]

    def _ramon_bbox(self, ref, id, level):
        return self.inner.ramon_bbox(ref, id, level)

    # ---- an object's own mesh and skeleton ------------------------------------------------
    def object_mesh(self, ref, id):
        return self.inner.object_mesh(ref, id)

    def object_skeleton(self, ref, id):
        return self.inner.object_skeleton(ref, id)

    def close(self) -> None:
        self.inner.close()
