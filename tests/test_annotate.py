"""Counting cells through RAMON, labels to objects, and the mount's ramon/ folder."""

import errno
import json
import os

import numpy as np
import pytest
import tifffile
import zarr

from ndfs import ramon
from ndfs.tools.annotate import count, from_labels, label_stats
from ndfs.stores.local import LocalBackend
from ndfs.tools.demo import LABELS, N_SYNAPSES, PROJECT, make_demo
from ndfs.core.errors import BadRegion
from ndfs.core.geometry import Box
from ndfs.tools.synth import DemoVolume
from ndfs.testing.mount import fuse_unavailable, mounted, ndfs

SHAPE = (16, 192, 160)
CELLS = (PROJECT, LABELS)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("annot")
    backend = make_demo(str(root / "store"), shape=SHAPE, levels=2, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    return root, backend


def labels_of(root):
    return zarr.open_array(str(root / "store" / PROJECT / LABELS / "0"), mode="r")[:]


def test_count_on_the_demo_is_the_number_of_cells_the_generator_placed(demo):
    root, backend = demo
    placed = len(DemoVolume(shape=SHAPE, n_cells=max(4, round(300 * np.prod(SHAPE) / (128 * 1024 * 1024))),
                            seed=0).cells)
    result = count(backend, CELLS, type="segment")
    assert result.count == placed == len(np.unique(labels_of(root))) - 1
    import ndfs as package
    from ndfs.volume import Volume

    assert package.count(Volume(backend, CELLS), type="segment").count == placed  # the package-level spelling
    synapses = count(backend, CELLS, type="synapse")  # metadata only: counted channel-wide, 0 voxels
    assert 1 <= synapses.count <= N_SYNAPSES and all(r["voxels"] == 0 for r in synapses.rows)
    assert count(backend, CELLS, kv={"kind": "cell"}).count == placed
    done = ndfs("--config", root / "ndfs.toml", "count", "local/demo/cells", "--type", "segment",
                "--table", root / "cells.csv")
    assert done.stdout.startswith(f"{placed} segment object(s)")
    rows = (root / "cells.csv").read_text().splitlines()
    assert rows[0].startswith("id,type,voxels") and len(rows) == placed + 1


def test_count_in_a_box_uses_the_labels_and_the_table_is_exact(demo):
    root, backend = demo
    lab = labels_of(root)
    box = Box((2, 30, 40), (9, 150, 120))
    sub = lab[box.slices()]
    result = count(backend, CELLS, type="segment", box=box)
    present = sorted(int(v) for v in np.unique(sub) if v)
    assert result.count == len(present) and [r["id"] for r in result.rows] == present
    for row in result.rows:
        zz, yy, xx = np.nonzero(sub == row["id"])
        assert row["voxels"] == len(zz)
        assert (row["z0"], row["y0"], row["x0"]) == (zz.min() + 2, yy.min() + 30, xx.min() + 40)
        assert row["centroid_x"] == pytest.approx(xx.mean() + 40, abs=1e-3)
    parsed = json.loads(result.to_json())
    assert parsed["count"] == result.count


def test_from_labels_makes_objects_with_voxel_counts_boxes_and_centroids(tmp_path):
    backend = LocalBackend(tmp_path / "s", create=True)
    backend.create_volume(("p", "lab"), (8, 32, 32), "uint64", kind="annotation", levels=1)
    data = np.zeros((8, 32, 32), np.uint64)
    data[1:3, 2:10, 4:8] = 7
    data[5:8, 20:30, 20:31] = 900
    backend.write(("p", "lab"), Box((0, 0, 0), (8, 32, 32)), 0, data)
    ids = from_labels(backend, ("p", "lab"), type="organelle")
    assert ids == [7, 900]
    (a,) = backend.ramon_get(("p", "lab"), [7])
    assert a.type == "organelle" and a.kvpairs["voxels"] == str(2 * 8 * 4)
    assert a.kvpairs["bbox_xyz"] == "4,2,1,8,10,3"
    assert backend.reserve_ids(("p", "lab"), 1) == [901]  # the counter moved past the labels' ids
    stats = label_stats(backend, ("p", "lab"))
    assert stats[900].centroid == pytest.approx((6.0, 24.5, 25.0))


def test_a_thresholded_image_becomes_connected_objects_with_reserved_ids(tmp_path):
    pytest.importorskip("scipy")
    backend = LocalBackend(tmp_path / "s", create=True)
    backend.create_volume(("p", "img"), (6, 40, 40), "uint8", kind="image", levels=1)
    backend.create_volume(("p", "found"), (6, 40, 40), "uint64", kind="annotation", levels=1)
    backend.reserve_ids(("p", "found"), 10)  # ids 1..10 are taken
    img = np.zeros((6, 40, 40), np.uint8)
    img[0:2, 0:5, 0:5] = 200
    img[3:6, 10:20, 10:12] = 255
    img[1, 30:35, 30:40] = 180
    img[1, 36, 0] = 100  # below the threshold
    backend.write(("p", "img"), Box((0, 0, 0), (6, 40, 40)), 0, img)
    ids = from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"), type="segment")
    assert ids == [11, 12, 13]
    lab = backend.read(("p", "found"), Box((0, 0, 0), (6, 40, 40)), 0)
    assert set(np.unique(lab)) == {0, 11, 12, 13}
    assert sorted(int((lab == i).sum()) for i in ids) == sorted([50, 60, 50])
    assert count(backend, ("p", "found"), type="segment").count == 3


def _blobs(tmp_path):
    backend = LocalBackend(tmp_path / "s", create=True)
    backend.create_volume(("p", "img"), (6, 40, 40), "uint8", kind="image", levels=1)
    backend.create_volume(("p", "found"), (6, 40, 40), "uint64", kind="annotation", levels=1)
    img = np.zeros((6, 40, 40), np.uint8)
    img[0:2, 0:5, 0:5] = 200  # 50 voxels
    img[3:6, 10:20, 10:12] = 255  # 60 voxels
    img[1, 30:35, 30:40] = 180  # 50 voxels
    img[4, 30, 30] = img[4, 35, 0] = 250  # two specks of noise
    backend.write(("p", "img"), Box((0, 0, 0), (6, 40, 40)), 0, img)
    return backend


def test_min_voxels_leaves_specks_out_of_a_thresholded_image(tmp_path):
    pytest.importorskip("scipy")
    backend = _blobs(tmp_path)
    ids = from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"), min_voxels=55)
    assert ids == [1]
    lab = backend.read(("p", "found"), Box((0, 0, 0), (6, 40, 40)), 0)
    assert set(np.unique(lab)) == {0, 1} and int((lab == 1).sum()) == 60 and (lab[3:6, 10:20, 10:12] == 1).all()
    assert len(from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"))) == 5  # specks too
    with pytest.raises(BadRegion, match="min_voxels"):
        from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"), min_voxels=0)


def test_too_many_objects_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    import ndfs.tools.annotate

    backend = _blobs(tmp_path)
    monkeypatch.setattr(ndfs.annotate, "MAX_NEW_OBJECTS", 4)
    with pytest.raises(BadRegion, match="5 objects .* more than 4 at once"):
        from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"))
    assert not backend.read(("p", "found"), Box((0, 0, 0), (6, 40, 40)), 0).any()
    assert backend.ramon_ids(("p", "found")) == [] and backend.reserve_ids(("p", "found"), 1) == [1]
    assert from_labels(backend, ("p", "img"), threshold=150, into=("p", "found"), min_voxels=2) == [2, 3, 4]


def test_ndfs_annotate_creates_the_into_channel_and_leaves_none_behind_on_failure(tmp_path):
    pytest.importorskip("scipy")
    backend = make_demo(str(tmp_path / "store"), shape=SHAPE, levels=2, chunk_shape=(8, 64, 64), progress=False)
    config = tmp_path / "ndfs.toml"
    config.write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    done = ndfs("--config", config, "annotate", "local/demo/em", "--level", "1", "--threshold", "180",
                "--min-voxels", "20", "--into", "local/demo/blobs", "--create")
    n = int(done.stdout.split()[0])
    assert n > 0 and done.stdout.startswith(f"{n} segment object(s) in local/demo/blobs, ids 1..{n}")
    image, blobs = backend.info((PROJECT, "em")), backend.info((PROJECT, "blobs"))
    assert blobs.kind == "annotation" and blobs.dtype == np.uint64
    assert [lv.shape for lv in blobs.levels] == [lv.shape for lv in image.levels]
    assert [lv.voxel_size_nm for lv in blobs.levels] == [lv.voxel_size_nm for lv in image.levels]
    lab = backend.read((PROJECT, "blobs"), blobs.level(1).box, 1)
    assert len(np.unique(lab)) == n + 1 and count(backend, (PROJECT, "blobs"), level=1).count == n
    again = ndfs("--config", config, "annotate", "local/demo/em", "--threshold", "180", "--into",
                 "local/demo/blobs", "--create", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    failed = ndfs("--config", config, "annotate", "local/demo/em", "--threshold", "100", "--min-voxels", "0",
                  "--into", "local/demo/other", "--create", check=False)
    assert failed.returncode == 1 and failed.stderr.startswith("ndfs: error: ") and "min_voxels" in failed.stderr
    assert "other" not in ndfs("--config", config, "ls", "local/demo").stdout.split()


# ---- the ramon/ folder through a real mount ------------------------------------------
pytestmark_mount = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


@pytest.fixture
def mnt(tmp_path):
    make_demo(str(tmp_path / "store"), shape=SHAPE, levels=2, chunk_shape=(8, 64, 64), progress=False)
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(tmp_path / "ndfs.toml", tmp_path / "mnt"):
        yield tmp_path, tmp_path / "mnt" / "local" / "demo" / "cells" / "ramon"


def objects_and_labels(root):
    """Every object of the channel (as JSON), the id counter and the label voxels: what a refusal must not change.

    (Not the SQLite file's bytes: opening it from a new process may rewrite its header.)
    """
    backend = LocalBackend(root / "store")
    ids = backend.ramon_ids(CELLS)
    docs = [o.to_json() for o in backend.ramon_get(CELLS, ids)]
    return docs, labels_of(root).tobytes()


@pytestmark_mount
def test_the_ramon_folder_lists_reads_and_edits_objects(mnt):
    root, rdir = mnt
    backend = LocalBackend(root / "store")
    ids = backend.ramon_ids(CELLS)
    assert sorted(os.listdir(rdir)) == sorted([f"{i}.json" for i in ids] + ["by-type"])
    syn = backend.ramon_ids(CELLS, type="synapse")
    assert sorted(os.listdir(rdir / "by-type" / "synapse")) == sorted(f"{i}.json" for i in syn)
    one = ids[0]
    doc = json.loads((rdir / f"{one}.json").read_text())
    assert ramon.from_json(json.dumps(doc)) == backend.ramon_get(CELLS, [one])[0]
    doc["author"], doc["kvpairs"]["note"] = "bob", "checked"
    (rdir / f"{one}.json").write_text(json.dumps(doc))
    (got,) = LocalBackend(root / "store").ramon_get(CELLS, [one])
    assert got.author == "bob" and got.kvpairs["note"] == "checked"
    new = ramon.RamonOrganelle(author="me", organelleclass=2, kvpairs={"k": "v"})
    (rdir / "5000.json").write_text(new.to_json())
    (made,) = LocalBackend(root / "store").ramon_get(CELLS, [5000])
    assert made.type == "organelle" and made.kvpairs == {"k": "v"}
    assert "5000.json" in os.listdir(rdir)


@pytestmark_mount
def test_bad_ramon_json_is_einval_and_changes_nothing(mnt):
    root, rdir = mnt
    one = LocalBackend(root / "store").ramon_ids(CELLS)[0]
    before = objects_and_labels(root)
    good = json.loads((rdir / f"{one}.json").read_text())
    for bad in [b"{not json", json.dumps({**good, "confidence": "high"}).encode(),
                json.dumps({**good, "type": "spaceship"}).encode(), json.dumps({**good, "id": one + 1}).encode(),
                b"\xff\xfe"]:
        fh = open(rdir / f"{one}.json", "wb")
        fh.write(bad)
        with pytest.raises(OSError) as info:
            fh.close()
        assert info.value.errno == errno.EINVAL, bad
    with pytest.raises(OSError) as info:
        open(rdir / "cell.json", "w").close()
    assert info.value.errno == errno.EINVAL
    assert objects_and_labels(root) == before
    assert json.loads((rdir / f"{one}.json").read_text()) == good


@pytestmark_mount
def test_an_objects_tif_and_meshes_match_its_voxels_and_rm_deletes_it(mnt):
    pytest.importorskip("zmesh")
    root, rdir = mnt
    backend = LocalBackend(root / "store")
    lab = labels_of(root)
    one = backend.ramon_ids(CELLS, type="segment")[0]
    zz, yy, xx = np.nonzero(lab == one)
    own = tifffile.imread(rdir / f"{one}.tif")
    assert own.shape == tuple(int(np.ptp(a)) + 1 for a in (zz, yy, xx))
    assert int((own == one).sum()) == len(zz) and set(np.unique(own)) <= {0, one}
    ply = (rdir / f"{one}.ply").read_bytes()
    assert ply.startswith(b"ply\nformat binary_little_endian 1.0\n")
    verts = [line for line in (rdir / f"{one}.obj").read_text().splitlines() if line.startswith("v ")]
    xyz = np.array([[float(v) for v in line.split()[1:4]] for line in verts])
    vz, vy, vx = (40.0, 4.0, 4.0)  # nm per voxel of the demo
    assert xyz[:, 0].min() >= (xx.min() - 1) * vx and xyz[:, 0].max() <= (xx.max() + 2) * vx
    assert xyz[:, 1].min() >= (yy.min() - 1) * vy and xyz[:, 1].max() <= (yy.max() + 2) * vy
    assert xyz[:, 2].min() >= (zz.min() - 1) * vz and xyz[:, 2].max() <= (zz.max() + 2) * vz
    os.unlink(rdir / f"{one}.json")
    assert one not in LocalBackend(root / "store").ramon_ids(CELLS)
    assert not (labels_of(root) == one).any()  # its voxels are gone too
    with pytest.raises(FileNotFoundError):
        os.stat(rdir / f"{one}.json")


@pytest.mark.parametrize("tables", [True, False], ids=["count-tables", "coordinates"])
@pytest.mark.parametrize("small_ids", [True, False], ids=["small-ids", "ids-near-2**64"])
@pytest.mark.parametrize("pieces", [4, 20], ids=["slabs", "tiles"])
def test_label_stats_equal_a_per_label_scan_over_several_slabs(tmp_path, monkeypatch, tables, small_ids, pieces):
    """Counts, tight boxes and centroids equal numpy's per label, over a box read in several slabs (or, when
    a chunk-deep slab of its planes is over SLAB_VOXELS, tiles of chunks), for both ways a slab is counted
    (tables per axis, a coordinate per voxel) and both ways ids are indexed."""
    from ndfs.tools import annotate

    monkeypatch.setattr(annotate, "_tables_fit", lambda k, shape, size: tables)
    # slabs of 5 planes of the box below, or tiles of a 4 x 32 x 32 chunk each
    monkeypatch.setattr(annotate, "SLAB_VOXELS", 5 * 40 * 56 if pieces == 4 else 4 * 32 * 32)
    monkeypatch.setattr(annotate, "GROUP_VOXELS", 2 * 40 * 56)  # counted 2 planes at a time
    rng = np.random.default_rng(7)
    shape = (20, 48, 64)
    base = np.uint64(5) if small_ids else np.uint64(2**64 - 1000)
    data = np.zeros(shape, np.uint64)
    for k in range(1, 40):  # boxes of labels, overlapping and spanning slabs, some in one voxel
        lo = rng.integers(0, shape)
        hi = np.minimum(lo + rng.integers(1, [12, 30, 30]), shape)
        data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = base + np.uint64(k)
    data[rng.random(shape) < 0.05] = 0
    backend = LocalBackend(tmp_path / "s", create=True)
    backend.create_volume(("p", "lab"), shape, "uint64", kind="annotation", levels=1, chunk_shape=(4, 32, 32))
    backend.write(("p", "lab"), Box((0, 0, 0), shape), 0, data)
    box = Box((1, 5, 3), (19, 45, 59))
    assert len(list(annotate._slabs(box, (4, 32, 32)))) == pieces
    sub = data[box.slices()]
    present = sorted(int(v) for v in np.unique(sub) if v)
    some = present[::3] + [int(base) + 500, 2**64 + 5]  # one id without voxels, one no uint64 holds
    for ids, expect in ((None, present), (some, present[::3])):
        stats = label_stats(backend, ("p", "lab"), box, ids=ids)
        assert sorted(stats) == expect
        for label in expect:
            zz, yy, xx = np.nonzero(sub == np.uint64(label))
            st = stats[label]
            assert st.voxels == len(zz)
            corner = np.array(box.start)
            assert st.bbox == Box(tuple(np.array([zz.min(), yy.min(), xx.min()]) + corner),
                                  tuple(np.array([zz.max(), yy.max(), xx.max()]) + corner + 1))
            assert st.centroid == pytest.approx((zz.mean() + 1, yy.mean() + 5, xx.mean() + 3), abs=1e-9)


@pytest.mark.parametrize("box, chunk", [
    (Box((0, 0, 0), (128, 1024, 1024)), (16, 256, 256)),  # the demo: slabs of whole planes
    (Box((3, 100, 7), (40, 20000, 30000)), (16, 512, 512)),  # planes too large: tiles of chunks
    (Box((0, 0, 0), (5, 300, 100000)), (16, 64, 64)),  # a long thin plane
])
def test_a_scan_reads_every_voxel_once_in_bounded_pieces(box, chunk):
    from ndfs.tools import annotate

    pieces = list(annotate._slabs(box, chunk))
    bound = max(annotate.SLAB_VOXELS, int(np.prod(chunk)))
    assert sum(p.size for p in pieces) == box.size
    assert all(p.intersect(box) == p and p.size <= bound for p in pieces)
    starts = [p.start for p in pieces]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # in z order, and no two alike
    for a, b in zip(pieces, pieces[1:]):
        assert a.intersect(b) is None
