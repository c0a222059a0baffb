"""Tests for ndfs.synth: determinism, slab independence, label/image consistency."""
import numpy as np
import pytest

from ndfs.tools.synth import Cell, DemoVolume

SHAPE = (24, 160, 192)


@pytest.fixture(scope="module")
def vol():
    return DemoVolume(shape=SHAPE, n_cells=20, seed=3)


@pytest.fixture(scope="module")
def full(vol):
    lab = vol.labels(0, SHAPE[0])
    return lab, vol.image(0, SHAPE[0], lab)


def _boundary(lab):
    """In-plane pixels whose label differs from a 4-neighbour (both sides marked)."""
    b = np.zeros(lab.shape, bool)
    dy, dx = lab[:, 1:] != lab[:, :-1], lab[:, :, 1:] != lab[:, :, :-1]
    b[:, 1:] |= dy
    b[:, :-1] |= dy
    b[:, :, 1:] |= dx
    b[:, :, :-1] |= dx
    return b


def test_dtype_and_shape(vol, full):
    lab, img = full
    assert lab.dtype == np.uint64 and lab.shape == SHAPE
    assert img.dtype == np.uint8 and img.shape == SHAPE
    assert vol.shape == SHAPE
    assert all(isinstance(c, Cell) for c in vol.cells)


def test_deterministic_across_instances(full):
    other = DemoVolume(shape=SHAPE, n_cells=20, seed=3)
    lab, img = full
    assert other.cells == DemoVolume(shape=SHAPE, n_cells=20, seed=3).cells
    np.testing.assert_array_equal(other.labels(0, SHAPE[0]), lab)
    np.testing.assert_array_equal(other.image(0, SHAPE[0]), img)
    different = DemoVolume(shape=SHAPE, n_cells=20, seed=4)
    assert not np.array_equal(different.labels(0, SHAPE[0]), lab)
    assert not np.array_equal(different.image(0, 4), img[:4])


def test_slab_split_invariance(vol, full):
    lab, img = full
    cuts = [0, 5, 6, 17, 24]
    labs = [vol.labels(a, b) for a, b in zip(cuts, cuts[1:])]
    imgs = [vol.image(a, b) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(labs), lab)
    np.testing.assert_array_equal(np.concatenate(imgs), img)
    # a fresh instance sliced differently agrees too (no hidden stream state)
    fresh = DemoVolume(shape=SHAPE, n_cells=20, seed=3)
    np.testing.assert_array_equal(fresh.image(9, 13), img[9:13])
    np.testing.assert_array_equal(fresh.labels(9, 13), lab[9:13])


def test_slabs_cover_volume_in_order(vol, full):
    lab, img = full
    parts = list(vol.slabs(depth=7))
    assert [z0 for z0, _, _ in parts] == [0, 7, 14, 21]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), img)
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), lab)


def test_every_listed_id_present_and_no_others(vol, full):
    lab, _ = full
    n = len(vol.cells)
    assert 10 <= n <= 20
    assert [c.id for c in vol.cells] == list(range(1, n + 1))
    assert set(np.unique(lab).tolist()) == set(range(n + 1))


def test_every_id_present_when_crowded():
    v = DemoVolume(shape=(16, 96, 96), n_cells=60, seed=1)
    lab = v.labels(0, 16)
    assert set(np.unique(lab).tolist()) == set(range(len(v.cells) + 1))


def test_swallowed_cells_are_dropped_and_renumbered():
    a = Cell(1, (8.0, 40.0, 40.0), (4.0, 20.0, 25.0))
    b = Cell(3, (8.0, 40.0, 90.0), (3.0, 15.0, 15.0))

    class Crowded(DemoVolume):
        def _place(self, n):
            return [a, Cell(2, a.center, a.radii), b]   # cell 2 duplicates cell 1: never wins

    v = Crowded(shape=(16, 96, 128), n_cells=3)
    assert [(c.id, c.center) for c in v.cells] == [(1, a.center), (2, b.center)]
    lab = v.labels(0, 16)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    assert lab[8, 40, 90] == 2 and lab[8, 40, 40] == 1


def test_cells_cover_reasonable_fraction(full):
    lab, _ = full
    assert 0.25 < (lab > 0).mean() < 0.8


def test_cells_span_several_planes_and_cross_slabs(vol, full):
    lab, _ = full
    spans = [np.any(lab == c.id, axis=(1, 2)).sum() for c in vol.cells]
    assert np.median(spans) >= 4
    for z in (8, 16):   # boundaries of depth-8 slabs
        assert set(np.unique(lab[z - 1])) & set(np.unique(lab[z])) - {0}


def test_membranes_darker_than_cytoplasm(full):
    lab, img = full
    b = _boundary(lab)
    far = b.copy()
    for _ in range(5):     # grow the boundary band by 5 px
        far[:, 1:] |= far[:, :-1]
        far[:, :-1] |= far[:, 1:]
        far[:, :, 1:] |= far[:, :, :-1]
        far[:, :, :-1] |= far[:, :, 1:]
    interior = (lab > 0) & ~far
    assert interior.sum() > 1000 and b.sum() > 1000
    cyto, membrane = img[interior].mean(), img[b].mean()
    assert cyto - membrane > 40, (cyto, membrane)
    # cells (cytoplasm) are lighter than the neuropil background on average
    background = (lab == 0) & ~far
    assert img[interior].mean() > img[background].mean() + 10


def test_image_is_textured_not_flat_noise(full):
    _, img = full
    f = img.astype(np.float64)
    a, b = f[:, :, :-1].ravel(), f[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5
    assert 15 < f.std() < 70
    lo, hi = np.percentile(f, [1, 99])
    assert hi - lo > 100
    # consecutive planes differ (own per-plane noise) but share structure
    assert not np.array_equal(img[10], img[11])
    assert np.corrcoef(f[10].ravel(), f[11].ravel())[0, 1] > 0.3


def test_image_computes_its_own_labels(vol, full):
    _, img = full
    np.testing.assert_array_equal(vol.image(3, 6), img[3:6])


@pytest.mark.parametrize("workers", [1, 3])
def test_slabs_made_on_threads_come_in_order_and_equal_the_whole_volume(vol, full, workers):
    lab, img = full
    got = list(vol.slabs(depth=5, workers=workers))
    assert [z0 for z0, _, _ in got] == list(range(0, SHAPE[0], 5))
    np.testing.assert_array_equal(np.concatenate([i for _, i, _ in got]), img)
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in got]), lab)
