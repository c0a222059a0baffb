"""The admin contract's conformance suite: channels made and removed through the store.

A test module provides the ``conformance_case`` fixture of :mod:`ndfs.testing.conformance`;
the tests make a channel of their own beside the reference project's and remove it.
Every layer must forget what it held of a channel that is removed or made anew.
"""

from __future__ import annotations

import numpy as np
import pytest

from ndfs.stores.base import AdminStore
from ndfs.core.errors import BadRegion, NotFound, ReadOnly
from ndfs.core.geometry import Box
from ndfs.testing.conformance import Case


def _admin(c: Case):
    assert isinstance(c.backend, AdminStore), f"{c.backend!r} cannot make channels"
    return c.backend


def test_a_channel_is_made_empty_removed_and_made_anew(conformance_case):
    c = conformance_case
    store, ref = _admin(c), c.ref("made-by-conformance")
    if not c.writable:
        with pytest.raises(ReadOnly):
            store.create_volume(ref, (4, 16, 16), "uint16", levels=2, chunk_shape=(4, 8, 8))
        return
    info = store.create_volume(ref, (4, 16, 16), "uint16", levels=2, voxel_size_nm=(40, 4, 4), offset=(1, 2, 3),
                               chunk_shape=(4, 8, 8))
    try:
        assert store.info(ref) == info and info.level(0).offset == (1, 2, 3) and len(info.levels) == 2
        whole = info.level(0).box
        assert not store.read(ref, whole, 0).any()  # unwritten space reads as zeros
        store.write(ref, whole, 0, np.full(whole.shape, 9, np.uint16))
        assert (store.read(ref, whole, 0) == 9).all()
        with pytest.raises(BadRegion):
            store.create_volume(ref, (4, 16, 16), "uint16")  # exists
    finally:
        store.delete_volume(ref)
    with pytest.raises(NotFound):
        store.info(ref)
    info = store.create_volume(ref, (4, 16, 16), "uint16", levels=1, chunk_shape=(4, 8, 8))
    try:  # the same name again: no layer may serve what the old channel held
        assert not store.read(ref, Box((0, 0, 0), (4, 16, 16)), 0).any()
    finally:
        store.delete_volume(ref)


__all__ = [name for name in dict(globals()) if name.startswith("test_")]
