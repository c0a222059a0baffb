"""Stores: one module per datastore, behind the contracts of :mod:`ndfs.stores.base` (and the journal
entries the local store and the outbox share, :mod:`ndfs.stores.journal`)."""

from ndfs.stores.base import Backend, RequestStats, VolumeRef

__all__ = ["Backend", "RequestStats", "VolumeRef"]
