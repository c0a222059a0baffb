"""Backends: one module per datastore, all behind the contract in :mod:`ndfs.backends.base`."""

from ndfs.backends.base import Backend, RequestStats, VolumeRef

__all__ = ["Backend", "RequestStats", "VolumeRef"]
