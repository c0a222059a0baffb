"""RAMON objects: every type and field, validation, JSON/HDF5 conversions, and the local store's annotations."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ndfs import ramon
from ndfs.stores.local import LocalBackend
from ndfs.stores.ramon_store import DB_NAME
from ndfs.core.errors import InvalidAnnotation, NdfsError, NotFound, ReadOnly
from ndfs.core.geometry import Box

# one object per type with every field set to something other than its default
SAMPLES = {
    "generic": dict(),
    "synapse": dict(synapse_type=3, weight=0.25, segments=[4, 5], seeds=[6], presegments=[4], postsegments=[5],
                    centroid=[10, 20, 30]),
    "seed": dict(parent=9, position=[1, 2, 3], cubelocation=7, source=11),
    "segment": dict(segmentclass=2, neuron=77, parentseed=12, synapses=[2, 3], organelles=[8]),
    "neuron": dict(segments=[4, 5, 6]),
    "organelle": dict(organelleclass=5, parentseed=3, seeds=[1, 2], centroid=[7, 8, 9], segment=4),
    "attributedregion": dict(),
    "volume": dict(),
    "node": dict(nodetype=2, location=[1.5, 2.25, 3.0], parent=8, skeleton=21, radius=4.5, children=[30, 31]),
    "skeleton": dict(skeletontype=1, rootnode=30),
    "roi": dict(parent=2, children=[5, 6]),
}


def sample(type_: str, id: int = 1234) -> ramon.RamonObject:
    common = dict(id=id, author="alice é", confidence=0.75, status=2, kvpairs={"class": "cell", "layer": "4"})
    return ramon.CLASSES[type_](**common, **SAMPLES[type_]).validate()


def test_every_type_has_a_class_with_every_field_of_the_spec():
    assert set(ramon.TYPES) == set(SAMPLES)
    for type_, cls in ramon.CLASSES.items():
        names = [f for f, _ in ramon.FIELDS[type_]]
        assert names[:5] == ["id", "author", "confidence", "status", "kvpairs"]
        obj = cls()
        assert obj.type == type_ and obj.id == 0 and obj.kvpairs == {}
        assert set(SAMPLES[type_]) == set(names[5:]), type_  # the samples set every own field
    assert ramon.RamonSegment().segmentclass == 0 and ramon.RamonSynapse().weight == 0.0


@pytest.mark.parametrize("type_", ramon.TYPES)
def test_every_type_round_trips_through_the_ndfs_file_form_byte_for_byte(type_):
    obj = sample(type_)
    text = obj.to_json()
    assert text.endswith("}\n") and '\n  "id": 1234,' in text
    back = ramon.from_json(text)
    assert back == obj and type(back) is type(obj)
    assert back.to_json() == text  # read -> write unchanged -> read gives identical bytes
    assert list(json.loads(text)) == ["id", "type"] + [n for n, _ in ramon.FIELDS[type_][1:]]
    assert type(obj).from_json(text.encode()) == obj


@pytest.mark.parametrize("type_", ramon.TYPES)
def test_every_type_round_trips_through_legacy_json_layout_a(type_):
    obj = sample(type_)
    doc = json.loads(json.dumps(ramon.to_legacy([obj])))
    assert set(doc["1234"]) == {"type", "metadata"}
    md = doc["1234"]["metadata"]
    assert {"author", "status", "confidence", "kvpairs"} <= set(md)
    assert ramon.from_legacy(doc) == [obj]


@pytest.mark.parametrize("type_", sorted(ramon.NDSTORE_TYPES))
def test_ndstore_types_round_trip_through_flat_json_layout_b_except_derived_lists(type_):
    obj = sample(type_)
    doc = json.loads(json.dumps(ramon.to_flat([obj])))
    entry = doc["1234"]
    assert entry["ann_type"] == ramon.NDSTORE_TYPES[type_] and entry["class"] == "cell"
    (back,) = ramon.from_legacy(doc)
    derived = {("segment", "synapses"), ("segment", "organelles"), ("neuron", "segments"), ("node", "children"),
               ("roi", "children")}
    for name, _ in ramon.FIELDS[type_]:
        expected = [] if (type_, name) in derived else getattr(obj, name)
        assert getattr(back, name) == expected, name
    if type_ in ("synapse", "organelle"):
        assert isinstance(entry[f"{type_[:3]}_centroid"], str)  # points travel as JSON strings


@pytest.mark.parametrize("type_", ramon.TYPES)
def test_every_type_round_trips_through_the_clean_hdf5_layout(type_):
    obj = sample(type_, id=2**40 + 3)  # uint64 ids survive here
    obj.bbox = (1, Box((1, 2, 3), (4, 5, 6)))
    obj.voxels = ramon.Voxels(np.arange(24, dtype=np.uint16).reshape(2, 3, 4), (5, 6, 7), 1)
    (back,) = ramon.from_hdf5(obj.to_hdf5())
    assert back == obj and back.bbox == obj.bbox
    np.testing.assert_array_equal(back.voxels.array, obj.voxels.array)
    assert back.voxels.offset == (5, 6, 7) and back.voxels.level == 1


@pytest.mark.parametrize("type_", sorted(ramon.NDSTORE_TYPES))
def test_ndstore_types_round_trip_through_the_legacy_hdf5_layout(type_):
    obj = sample(type_)
    obj.voxels = ramon.Voxels(np.eye(3, dtype=np.uint32)[None].repeat(2, 0), (4, 5, 6), 0)
    data = ramon.to_hdf5([obj, sample(type_, id=7)], layout="legacy")
    import h5py, io  # noqa: E401

    with h5py.File(io.BytesIO(data), "r") as f:
        g = f["1234"]
        assert int(g["ANNOTATION_TYPE"][0]) == ramon.NDSTORE_TYPES[type_]
        assert list(g["XYZOFFSET"][()]) == [6, 5, 4] and g["CUTOUT"].shape == (2, 3, 3)
        assert g["METADATA/KVPAIRS"][0].decode() == "class,cell\r\nlayer,4\r\n"
    back = ramon.from_hdf5(data, layout="legacy")
    assert [b.id for b in back] == [7, 1234] and back[1] == obj
    np.testing.assert_array_equal(back[1].voxels.array, obj.voxels.array)


def test_legacy_hdf5_voxel_lists_become_a_tight_cutout():
    import io

    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        g = f.create_group("0")
        g.create_dataset("ANNOTATION_TYPE", data=np.array([4], np.uint32))
        g.create_dataset("RESOLUTION", data=np.array([1], np.uint32))
        g.create_dataset("VOXELS", data=np.array([[10, 20, 3], [12, 21, 3]], np.uint32))
    (obj,) = ramon.from_hdf5(buf.getvalue())
    assert obj.TYPE == "segment" and obj.id == 0 and obj.voxels.level == 1
    assert obj.voxels.box == Box((3, 20, 10), (4, 22, 13)) and int(obj.voxels.array.sum()) == 2


def test_enum_names_are_accepted_and_stored_as_ints():
    seg = ramon.from_dict({"type": "segment", "segmentclass": "Soma", "status": "locked"})
    assert seg.segmentclass == 3 and seg.status == 1
    syn = ramon.make("synapse", synapse_type="gap junction")
    assert syn.synapse_type == 3
    assert ramon.from_dict({"type": "organelle", "organelleclass": "axoplasmic reticula"}).organelleclass == 3
    assert ramon.from_dict({"type": "annotation"}).TYPE == "generic"  # the legacy server's name
    assert ramon.type_name(4) == "segment" and ramon.type_name(ramon.RamonNeuron) == "neuron"
    with pytest.raises(InvalidAnnotation, match="ambiguous"):
        ramon.type_name(8)  # ndio's volume, ndstore's skeleton


@pytest.mark.parametrize("doc, words", [
    ({"author": "x"}, "needs a \"type\""),
    ({"type": "cell"}, "unknown RAMON type"),
    ({"type": "segment", "colour": "red"}, "no field(s) 'colour'"),
    ({"type": "segment", "kvpairs": {"n": 3}}, "must be a string"),
    ({"type": "segment", "kvpairs": {"seg_class": "2"}}, "reserved prefix"),
    ({"type": "segment", "segmentclass": 4}, "out of range"),
    ({"type": "segment", "segmentclass": "glia"}, "is not one of"),
    ({"type": "synapse", "confidence": 1.5}, "in [0, 1]"),
    ({"type": "synapse", "status": True}, "must be an int"),
    ({"type": "neuron", "segments": [1, -2]}, "non-negative"),
    ({"type": "neuron", "segments": "1,2"}, "list of ids"),
    ({"type": "synapse", "centroid": [1, 2]}, "[x, y, z]"),
    ({"type": "segment", "id": 7}, "differs from its file name"),
    ({"type": "segment", "neuron": 2**32}, "too large"),
    ({"type": "segment", "author": 5}, "must be a string"),
])
def test_bad_objects_are_refused_with_a_clear_message(doc, words):
    with pytest.raises(InvalidAnnotation) as err:
        ramon.from_dict(doc, expect_id=8, max_id=ramon.MAX_UINT32)
    assert words in str(err.value)
    assert err.value.errno == 22


def test_bad_json_text_and_a_changed_bbox_are_refused():
    with pytest.raises(InvalidAnnotation, match="not valid JSON"):
        ramon.from_json("{'id': 1")
    current = sample("segment")
    current.bbox = (0, Box((0, 0, 0), (2, 2, 2)))
    doc = current.to_dict()
    assert ramon.from_dict(doc, current=current) == current  # unchanged bbox: ignored
    doc["bbox"]["x"] = [0, 5]
    with pytest.raises(InvalidAnnotation, match="bbox is derived"):
        ramon.from_dict(doc, current=current)
    with pytest.raises(InvalidAnnotation, match="expected a RAMON neuron"):
        ramon.RamonNeuron.from_json(current.to_json())


def test_a_failed_validation_leaves_the_object_unchanged():
    seg = ramon.RamonSegment(segmentclass="soma", kvpairs={"a": 1})
    with pytest.raises(InvalidAnnotation):
        seg.validate()
    assert seg.segmentclass == "soma"  # nothing was half-normalised


# ---- the local store ---------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    backend = LocalBackend(tmp_path / "store", create=True)
    backend.create_volume("p/ann", (12, 40, 50), "uint64", kind="annotation", offset=(2, 3, 4), levels=2,
                          chunk_shape=(4, 16, 16))
    backend.create_volume("p/img", (4, 8, 8), "uint8")
    yield backend
    backend.close()


def _cached(backend):
    from ndfs.cache import CachedBackend

    return CachedBackend(backend, namespace=f"local:{backend.root}", memory_bytes=2**24)


@pytest.mark.parametrize("cached", [False, True], ids=["raw", "cached"])
def test_every_stored_type_round_trips_through_the_local_store(store, cached):
    backend = _cached(store) if cached else store
    objs = [sample(t, id=100 + i) for i, t in enumerate(ramon.TYPES) if t not in ramon.NOT_STORED]
    assert backend.ramon_put("p/ann", objs) == [o.id for o in objs]
    got = backend.ramon_get("p/ann", [o.id for o in reversed(objs)])
    assert got == list(reversed(objs))
    assert (store.root / "p" / "ann" / DB_NAME).is_file()  # SQLite beside the zarr levels
    for t in ramon.TYPES:
        if t not in ramon.NOT_STORED:
            assert backend.ramon_ids("p/ann", type=t) == [o.id for o in objs if o.TYPE == t]


def test_id_zero_is_assigned_and_reserved_ids_are_never_handed_out_again(store):
    assert store.ramon_put("p/ann", [ramon.RamonGeneric()]) == [1]
    assert store.reserve_ids("p/ann", 3) == [2, 3, 4]
    assert store.ramon_put("p/ann", [ramon.RamonGeneric(), ramon.RamonSegment(id=40)]) == [5, 40]
    assert store.ramon_put("p/ann", [ramon.RamonGeneric()]) == [41]
    store.ramon_delete("p/ann", [41, 40])
    reopened = LocalBackend(store.root)  # the counter lives in the database, not in memory
    assert reopened.reserve_ids("p/ann", 2) == [42, 43]
    assert reopened.ramon_put("p/ann", [ramon.RamonGeneric()]) == [44]
    reopened.close()


@pytest.mark.parametrize("cached", [False, True], ids=["raw", "cached"])
def test_labels_written_as_plain_cutouts_are_never_handed_out_as_new_ids(store, cached):
    backend = _cached(store) if cached else store
    labels = np.zeros((2, 4, 4), np.uint64)
    labels[0, 0, 0], labels[1, 3, 3] = 7, 1000
    backend.write("p/ann", Box((2, 3, 4), (4, 7, 8)), 0, labels)
    assert backend.ramon_ids("p/ann") == []  # labels are not objects
    assert backend.reserve_ids("p/ann", 2) == [1001, 1002]
    assert backend.ramon_put("p/ann", [ramon.RamonSegment()]) == [1003]
    backend.write("p/ann", Box((2, 3, 4), (3, 4, 5)), 0, np.full((1, 1, 1), 20, np.uint64))  # below: no change
    other = LocalBackend(store.root)  # as another process: the counter lives in the database
    assert other.reserve_ids("p/ann", 1) == [1004]
    other.close()
    store.write("p/img", Box((0, 0, 0), (1, 1, 1)), 0, np.full((1, 1, 1), 200, np.uint8))
    assert not (store.root / "p" / "img" / DB_NAME).exists()  # image channels keep no RAMON database
    if cached:
        backend.close()


def test_queries_filter_by_type_status_confidence_kv_box_and_limit(store):
    segs = [ramon.RamonSegment(id=i, status=i % 2, confidence=i / 10, kvpairs={"class": "cell" if i < 4 else "glia"})
            for i in range(1, 7)]
    for s in segs[:2]:
        s.voxels = ramon.Voxels(np.ones((1, 2, 2), np.uint8), (5, 10 + 5 * s.id, 20), 0)
    store.ramon_put("p/ann", segs + [ramon.RamonNeuron(id=9, segments=[2]), ramon.RamonSynapse(id=8, status=1)])
    assert store.ramon_ids("p/ann", type="segment", status=1) == [1, 3, 5]
    assert store.ramon_ids("p/ann", kv={"class": "cell"}, status="locked") == [1, 3]
    assert store.ramon_ids("p/ann", confidence=("gt", 0.35)) == [4, 5, 6]
    assert store.ramon_ids("p/ann", confidence=("lt", 0.25), type="segment") == [1, 2]
    assert store.ramon_ids("p/ann", limit=2) == [1, 2]
    assert store.ramon_ids("p/ann", kv={"class": "nothing"}) == []
    touching = Box((5, 20, 20), (6, 22, 22))  # segment 2's voxels, hence neuron 9
    assert store.ramon_ids("p/ann", box=touching) == [2, 9]
    assert store.ramon_ids("p/ann", box=touching, type="neuron") == [9]
    assert store.ramon_ids("p/ann", box=touching, level=0, kv={"class": "glia"}) == []


def test_listing_many_objects_returns_ids_without_reading_objects(store):
    n = 20_000
    store.ramon_put("p/ann", [ramon.RamonGeneric(id=i + 1) for i in range(n)])
    started = time.monotonic()
    ids = store.ramon_ids("p/ann")
    assert ids == list(range(1, n + 1)) and all(type(i) is int for i in ids[:10])
    assert time.monotonic() - started < 2.0


def test_bounding_boxes_are_tight_absolute_and_a_neuron_is_the_union_of_its_segments(store):
    a, b = ramon.RamonSegment(id=3), ramon.RamonSegment(id=4)
    a.voxels = ramon.Voxels(np.pad(np.ones((1, 1, 2), np.uint8), ((0, 0), (1, 0), (0, 1))), (2, 3, 4))
    b.voxels = ramon.Voxels(np.ones((2, 2, 2), np.uint8), (10, 30, 40))
    store.ramon_put("p/ann", [a, b, ramon.RamonNeuron(id=5, segments=[3, 4]), ramon.RamonNeuron(id=6)])
    assert store.ramon_bbox("p/ann", 3) == Box((2, 4, 4), (3, 5, 6))
    assert store.ramon_bbox("p/ann", 5) == Box((2, 4, 4), (12, 32, 42))
    assert store.ramon_bbox("p/ann", 4, level=1) == Box((10, 15, 20), (12, 16, 21))
    assert store.ramon_bbox("p/ann", 6) is None
    with pytest.raises(NotFound):
        store.ramon_bbox("p/ann", 77)


@pytest.mark.parametrize("cached", [False, True], ids=["raw", "cached"])
def test_delete_removes_the_object_and_zeroes_its_voxels_on_every_level(store, cached):
    backend = _cached(store) if cached else store
    seg = ramon.RamonSegment(id=3)
    seg.voxels = ramon.Voxels(np.ones((2, 4, 4), np.uint8), (4, 8, 8))
    backend.ramon_put("p/ann", [seg])
    box = Box((4, 8, 8), (6, 12, 12))
    assert (backend.read("p/ann", box, 0) == 3).all()
    assert (backend.read("p/ann", Box((4, 4, 4), (6, 6, 6)), 1) == 3).all()
    backend.ramon_delete("p/ann", [3])
    assert not backend.read("p/ann", box, 0).any()
    assert not backend.read("p/ann", Box((4, 4, 4), (6, 6, 6)), 1).any()
    with pytest.raises(NotFound):
        backend.ramon_get("p/ann", [3])
    with pytest.raises(NotFound):
        backend.ramon_delete("p/ann", [3])


def test_bad_input_is_refused_without_side_effects(store):
    store.ramon_put("p/ann", [ramon.RamonSegment(id=1, author="kept")])
    before = store.read("p/ann", store.info("p/ann").levels[0].box, 0)
    good = ramon.RamonSegment(id=2)
    good.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (5, 5, 5))
    outside = ramon.RamonSegment(id=3)
    outside.voxels = ramon.Voxels(np.ones((1, 1, 1), np.uint8), (0, 0, 0))  # before the offset
    cases = [
        [good, ramon.RamonSegment(id=1, kvpairs={"x": 1})],       # one bad object spoils the request
        [good, ramon.RamonSegment(id=2)],                          # the same id twice
        [good, ramon.RamonVolume()],                               # an in-memory holder
        [good, outside],                                           # voxels outside the channel
        [good, "not an object"],
    ]
    for objs in cases:
        with pytest.raises(NdfsError):
            store.ramon_put("p/ann", objs)
    with pytest.raises(InvalidAnnotation, match="image channel"):
        store.ramon_put("p/img", [ramon.RamonGeneric()])
    with pytest.raises(InvalidAnnotation):
        store.ramon_get("p/ann", [0])
    with pytest.raises(InvalidAnnotation):
        store.ramon_ids("p/ann", type="cell")
    with pytest.raises(InvalidAnnotation):
        store.reserve_ids("p/ann", 0)
    assert store.ramon_ids("p/ann") == [1] and store.ramon_get("p/ann", [1])[0].author == "kept"
    np.testing.assert_array_equal(store.read("p/ann", store.info("p/ann").levels[0].box, 0), before)
    assert store.ramon_put("p/ann", [ramon.RamonGeneric()]) == [2]  # no id was used up by the failures


def test_a_read_only_store_reads_annotations_but_refuses_changes(store):
    store.ramon_put("p/ann", [ramon.RamonGeneric(id=5)])
    ro = LocalBackend(store.root, read_only=True)
    assert ro.ramon_ids("p/ann") == [5] and ro.ramon_get("p/ann", 5)[0].id == 5
    for call in (lambda: ro.ramon_put("p/ann", [ramon.RamonGeneric()]), lambda: ro.ramon_delete("p/ann", [5]),
                 lambda: ro.reserve_ids("p/ann", 1)):
        with pytest.raises(ReadOnly):
            call()
    ro.close()


def test_channels_without_objects_list_nothing_and_create_no_database(store):
    assert store.ramon_ids("p/ann") == []
    with pytest.raises(NotFound):
        store.ramon_get("p/ann", [1])
    assert not (store.root / "p" / "ann" / DB_NAME).exists()


def test_a_recreated_channel_starts_with_no_objects(store):
    store.ramon_put("p/ann", [ramon.RamonGeneric(id=5)])
    store.create_volume("p/ann", (4, 8, 8), "uint32", kind="annotation", overwrite=True)
    assert store.ramon_ids("p/ann") == []
    assert store.ramon_put("p/ann", [ramon.RamonGeneric()]) == [1]
