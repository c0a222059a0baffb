"""The annotation contract's conformance suite: every AnnotationStore, raw and behind every layer.

A test module imports the tests and provides the same ``conformance_case``
fixture as :mod:`ndfs.testing.conformance` (a :class:`Case` over the reference
project). Objects are made in the reference project's ``notes`` channel (all
zeros at first) with ids the tests reserve, and removed again, so the order of
tests does not matter. A read-only case must refuse every change.
"""

from __future__ import annotations

import numpy as np
import pytest

from ndfs import ramon
from ndfs.stores.base import AnnotationStore
from ndfs.core.errors import InvalidAnnotation, NotFound, ReadOnly
from ndfs.core.geometry import Box
from ndfs.testing.conformance import Case

NOTES = "notes"


def _store(c: Case):
    assert isinstance(c.backend, AnnotationStore), f"{c.backend!r} keeps no annotations"
    return c.backend


def _reserve(c: Case, n: int = 1) -> list[int]:
    return _store(c).reserve_ids(c.ref(NOTES), n)


def test_reserved_ids_are_new_consecutive_and_never_given_twice(conformance_case):
    c = conformance_case
    if not c.writable:
        with pytest.raises(ReadOnly):
            _reserve(c, 3)
        return
    first, second = _reserve(c, 3), _reserve(c, 2)
    assert first == list(range(first[0], first[0] + 3)) and second == list(range(second[0], second[0] + 2))
    assert not set(first) & set(second)
    existing = set(_store(c).ramon_ids(c.ref("labels")))
    assert not set(first) & existing


def test_an_object_put_is_got_back_field_for_field_and_deleted(conformance_case):
    c = conformance_case
    store, ref = _store(c), c.ref(NOTES)
    obj = ramon.RamonSegment(id=0, confidence=0.75, status=2, author="conformance", neuron=0,
                             kvpairs={"conformance": "yes", "tag": "put"})
    if not c.writable:
        with pytest.raises(ReadOnly):
            store.ramon_put(ref, [obj])
        return
    (oid,) = _reserve(c)
    obj.id = oid
    assert store.ramon_put(ref, [obj]) == [oid]
    try:
        (got,) = store.ramon_get(ref, [oid])
        assert got.to_json() == obj.to_json()
        assert oid in store.ramon_ids(ref, type="segment")
        assert oid in store.ramon_ids(ref, kv={"tag": "put"})
        assert oid not in store.ramon_ids(ref, type="synapse")
    finally:
        store.ramon_delete(ref, [oid])
    with pytest.raises(NotFound):
        store.ramon_get(ref, [oid])
    assert oid not in store.ramon_ids(ref)


def test_attached_voxels_label_the_channel_and_give_the_bounding_box(conformance_case):
    c = conformance_case
    store, ref = _store(c), c.ref(NOTES)
    if not c.writable:
        return
    (oid,) = _reserve(c)
    full = c.oracle.box(NOTES, 0)
    z0, y0, x0 = full.start
    box = Box((z0 + 2, y0 + 4, x0 + 6), (z0 + 5, y0 + 12, x0 + 20))
    mask = np.zeros(box.shape, np.uint8)
    mask[1:, 2:, 3:] = 1
    obj = ramon.RamonSegment(id=oid)
    obj.voxels = ramon.Voxels(mask, box.start, 0)
    store.ramon_put(ref, [obj])
    try:
        labels = store.read(ref, box, 0)
        np.testing.assert_array_equal(labels, np.where(mask, oid, 0).astype(labels.dtype))
        tight = Box((box.start[0] + 1, box.start[1] + 2, box.start[2] + 3), box.stop)
        assert store.ramon_bbox(ref, oid, 0) == tight
        assert oid in store.ramon_ids(ref, box=tight, level=0)
        elsewhere = Box((z0 + 10, y0, x0), (z0 + 12, y0 + 4, x0 + 4))
        assert oid not in store.ramon_ids(ref, box=elsewhere, level=0)
    finally:
        store.ramon_delete(ref, [oid])
    assert not store.read(ref, box, 0).any()  # deleting an object clears its voxels


def test_a_bad_object_or_a_missing_id_changes_nothing(conformance_case):
    c = conformance_case
    store, ref = _store(c), c.ref(NOTES)
    before = store.ramon_ids(ref)
    with pytest.raises((InvalidAnnotation, ReadOnly)):
        store.ramon_put(ref, [ramon.RamonSegment(id=0, kvpairs={"fine": "x"}),
                              ramon.RamonSegment(id=0, confidence=7.0)])  # one bad object: none is stored
    missing = _reserve(c)[0] if c.writable else min(store.ramon_max_id, 2**40) - 12345  # an id nobody put
    with pytest.raises((NotFound, ReadOnly)):
        store.ramon_delete(ref, [missing])
    with pytest.raises(NotFound):
        store.ramon_get(ref, [missing])
    assert store.ramon_ids(ref) == before


def test_image_channels_keep_no_objects(conformance_case):
    c = conformance_case
    with pytest.raises(InvalidAnnotation):
        _store(c).ramon_ids(c.ref("em8"))


__all__ = [name for name in dict(globals()) if name.startswith("test_")]
