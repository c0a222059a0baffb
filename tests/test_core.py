"""Geometry, downsampling, VolumeInfo, Volume slicing and the error tree."""

import errno
import pickle

import numpy as np
import pytest

from ndfs import BadRegion, Box, ChunkGrid, NdfsError, NotFound, ReadOnly, TooLarge
from ndfs.stores.local import LocalBackend
from ndfs.core.downsample import downsample_image, downsample_labels
from ndfs.core.info import LevelInfo, VolumeInfo
from ndfs.volume import Volume


def test_box_shape_intersection_and_slices():
    a = Box((0, 10, 20), (4, 30, 50))
    assert a.shape == (4, 20, 30) and a.size == 2400
    assert a.intersect(Box((2, 0, 0), (10, 15, 25))) == Box((2, 10, 20), (4, 15, 25))
    assert a.intersect(Box((4, 0, 0), (5, 1, 1))) is None
    assert a.slices((0, 10, 20)) == (slice(0, 4), slice(0, 20), slice(0, 30))
    assert Box.from_xyz((20, 50), (10, 30), (0, 4)) == a
    with pytest.raises(BadRegion):
        Box((0, 0, 5), (1, 1, 4))


def test_chunk_grid_covers_boxes_with_clipped_edge_chunks():
    grid = ChunkGrid((8, 32, 32), Box((3, 5, 7), (23, 75, 97)))
    assert grid.grid_shape == (3, 3, 3)
    assert grid.chunk_box((2, 2, 2)) == Box((19, 69, 71), (23, 75, 97))
    touched = list(grid.chunks(Box((4, 5, 7), (6, 40, 8))))
    assert touched == [(0, 0, 0), (0, 1, 0)]
    assert grid.aligned(Box((10, 40, 8), (12, 41, 9))) == Box((3, 37, 7), (19, 69, 39))


def _naive_mode(block):
    vals, counts = np.unique(block, return_counts=True)
    best = counts.max()
    for v in block.ravel():  # tie: the first in top-left reading order
        if counts[vals == v][0] == best:
            return v


def test_downsampling_images_averages_and_labels_take_the_mode():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 7, 9), dtype=np.uint8)
    got = downsample_image(img)
    padded = np.pad(img, ((0, 0), (0, 1), (0, 1)), mode="edge").astype(float)
    want = np.floor(padded.reshape(2, 4, 2, 5, 2).mean(axis=(2, 4)) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    labels = rng.integers(0, 4, (3, 6, 8), dtype=np.uint64) * np.uint64(2**40)
    got = downsample_labels(labels)
    for z in range(3):
        for y in range(3):
            for x in range(4):
                assert got[z, y, x] == _naive_mode(labels[z, 2 * y:2 * y + 2, 2 * x:2 * x + 2])


def test_volume_info_round_trips_json_and_checks_levels():
    info = VolumeInfo("uint16", (LevelInfo((4, 8, 8), (1, 2, 3), (40.0, 4.0, 4.0), (2, 4, 4)),), kind="image")
    assert VolumeInfo.from_json(info.to_json()) == info
    with pytest.raises(NotFound):
        info.level(1)
    with pytest.raises(BadRegion):
        info.check_box(Box((0, 0, 0), (1, 1, 1)), 0)
    with pytest.raises(BadRegion):
        VolumeInfo("uint8", (LevelInfo((1, 1, 1)),), kind="movie")


def test_errors_carry_errnos_and_survive_pickling():
    assert issubclass(NdfsError, OSError)
    assert NotFound("x").errno == errno.ENOENT and ReadOnly("x").errno == errno.EROFS
    assert TooLarge("big").errno == errno.EFBIG and str(TooLarge("big")) == "big"
    again = pickle.loads(pickle.dumps(BadRegion("bad box")))
    assert type(again) is BadRegion and again.errno == errno.EINVAL and str(again) == "bad box"


@pytest.fixture
def vol(tmp_path):
    b = LocalBackend(tmp_path, create=True)
    b.create_volume("p/c", (6, 10, 12), "uint16", offset=(2, 0, 100), levels=2, chunk_shape=(4, 8, 8))
    return Volume(b, "p/c")


def test_volume_slicing_uses_dataset_coordinates(vol):
    data = np.arange(6 * 10 * 12, dtype=np.uint16).reshape(6, 10, 12)
    vol[:, :, :] = data
    np.testing.assert_array_equal(vol[:], data)
    np.testing.assert_array_equal(vol[3, 2:5, 100:104], data[1, 2:5, 0:4])
    assert vol[7, 9, 111] == data[5, 9, 11]
    vol[2, 0, 100:102] = 7
    assert list(vol[2, 0, 100:103]) == [7, 7, data[0, 0, 2]]
    assert vol.level(1).shape == (6, 5, 6) and vol.level(1).offset == (2, 0, 50)
    with pytest.raises(BadRegion):
        vol[0]  # before the z offset
    with pytest.raises(BadRegion):
        vol[::2]
    assert "uint16" in repr(vol)


def test_local_store_rejects_bad_names_and_duplicate_channels(tmp_path):
    b = LocalBackend(tmp_path, create=True)
    b.create_volume("p/c", (1, 2, 2))
    for bad in [("..", "x"), ("p", ".hidden"), ("p", "")]:
        with pytest.raises(NotFound):
            b.is_volume(bad)
    with pytest.raises(BadRegion):
        b.create_volume("p/c", (1, 2, 2))
    with pytest.raises(BadRegion):
        b.create_volume("p/d", (1, 2, 2), dtype="uint8", kind="annotation")
    with pytest.raises(NotFound):
        b.children(("p", "c"))


def test_unwritten_space_reads_as_zeros(tmp_path):
    b = LocalBackend(tmp_path, create=True)
    info = b.create_volume("p/c", (3, 5, 7), "uint64", kind="annotation", levels=2)
    assert not b.read("p/c", info.levels[1].box, 1).any()


def test_a_global_chunk_grid_aligns_to_its_origin_not_the_volume_offset():
    grid = ChunkGrid((16, 512, 512), Box((5, 700, 100), (40, 1600, 600)), origin=(0, 0, 0))
    assert grid.chunk_box((0, 0, 0)) == Box((5, 700, 100), (16, 1024, 512))
    assert grid.chunk_box((1, 1, 1)) == Box((16, 1024, 512), (32, 1536, 600))
    assert grid.grid_shape == (3, 3, 2)
    assert list(grid.chunks(Box((15, 1023, 511), (17, 1025, 513)))) == [
        (z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)]
    # every chunk lies inside one global 16x512x512 cuboid
    for idx in grid.chunks(grid.extent):
        b = grid.chunk_box(idx)
        assert all(a // c == (e - 1) // c for a, e, c in zip(b.start, b.stop, (16, 512, 512)))
