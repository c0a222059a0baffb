"""The backend conformance suite: every backend, raw and cached, must pass it.

A test module uses it by importing the tests and providing a ``conformance_case``
fixture that returns a :class:`Case`::

    from ndfs.testing.conformance import *  # noqa: F401,F403

    @pytest.fixture(params=["local-raw", "local-cached"])
    def conformance_case(request, tmp_path_factory): ...

The case's backend must serve the reference project of
:mod:`ndfs.testing.reference` (directly, through a cache, or through a protocol
server seeded from it); the oracle is that module's :class:`ReferenceData`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from ndfs.stores.base import Backend
from ndfs.core.errors import BadRegion, NotFound, ReadOnly
from ndfs.core.geometry import Box
from ndfs.testing.reference import CHANNELS, LEVELS, PROJECT, ReferenceData


@dataclass
class Case:
    """One backend under test, the oracle it must match, and what it promises."""

    backend: Backend
    oracle: ReferenceData
    writable: bool = True
    #: a level-0 write recomputes lower levels (the local store does)
    rebuilds_levels: bool = True
    #: folders of the backend's hierarchy that lead to the reference project
    prefix: tuple[str, ...] = ()
    #: coarser levels read zeros below the level-0 start (the BOSS checks every resolution against it)
    zeros_below_start: bool = False
    extra: dict = field(default_factory=dict)

    def ref(self, channel: str) -> tuple[str, ...]:
        return self.prefix + (PROJECT, channel)

    def expected(self, channel: str, box: Box, level: int, voxels: np.ndarray | None = None) -> np.ndarray:
        """What a read of the box must give: the oracle's voxels (or ``voxels``), less what the case
        promises not to serve."""
        out = self.oracle.read(channel, box, level) if voxels is None else voxels
        if self.zeros_below_start and level > 0:
            start = self.oracle.box(channel, 0).start
            out = out.copy()
            for axis, (a, s) in enumerate(zip(box.start, start)):
                cut = [slice(None)] * 3
                cut[axis] = slice(0, max(0, s - a))
                out[tuple(cut)] = 0
        return out


READ_CHANNELS = ["em8", "em16", "labels"]


def _random_boxes(box: Box, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        start, stop = [], []
        for a, b in zip(box.start, box.stop):
            lo = int(rng.integers(a, b))
            hi = int(rng.integers(lo + 1, b + 1))
            start.append(lo)
            stop.append(hi)
        yield Box(tuple(start), tuple(stop))


def test_children_list_the_project_and_its_channels(conformance_case):
    c = conformance_case
    assert PROJECT in c.backend.children(c.prefix)
    assert set(CHANNELS) <= set(c.backend.children(c.prefix + (PROJECT,)))


def test_is_volume_tells_channels_from_folders(conformance_case):
    c = conformance_case
    assert c.backend.is_volume(c.ref("em8")) is True
    assert c.backend.is_volume(c.prefix + (PROJECT,)) is False


def test_missing_names_raise_not_found(conformance_case):
    c = conformance_case
    with pytest.raises(NotFound):
        c.backend.info(c.ref("no-such-channel"))
    with pytest.raises(NotFound):
        c.backend.children(c.prefix + ("no-such-project",))
    with pytest.raises(NotFound):
        c.backend.read(c.ref("no-such-channel"), Box((0, 0, 0), (1, 1, 1)), 0)


@pytest.mark.parametrize("channel", READ_CHANNELS)
def test_info_reports_shape_dtype_kind_and_levels(conformance_case, channel):
    c = conformance_case
    info = c.backend.info(c.ref(channel))
    dtype, kind = CHANNELS[channel]
    assert info.dtype == np.dtype(dtype)
    assert info.kind == kind
    assert len(info.levels) == LEVELS
    for level in range(LEVELS):
        assert info.level(level).box == c.oracle.box(channel, level)
    assert info.levels[1].voxel_size_nm[1] == 2 * info.levels[0].voxel_size_nm[1]


@pytest.mark.parametrize("level", range(LEVELS))
@pytest.mark.parametrize("channel", READ_CHANNELS)
def test_whole_level_read_equals_the_oracle(conformance_case, channel, level):
    c = conformance_case
    box = c.oracle.box(channel, level)
    got = c.backend.read(c.ref(channel), box, level)
    assert got.dtype == np.dtype(CHANNELS[channel][0])
    np.testing.assert_array_equal(got, c.expected(channel, box, level))


@pytest.mark.parametrize("channel", READ_CHANNELS)
def test_chunk_aligned_reads_equal_the_oracle(conformance_case, channel):
    c = conformance_case
    info = c.backend.info(c.ref(channel))
    grid = info.level(0).grid
    for index in [(0, 0, 0), tuple(g - 1 for g in grid.grid_shape)]:
        box = grid.chunk_box(index)
        np.testing.assert_array_equal(c.backend.read(c.ref(channel), box, 0), c.oracle.read(channel, box, 0))


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("channel", READ_CHANNELS)
def test_unaligned_reads_equal_the_oracle(conformance_case, channel, level):
    c = conformance_case
    for box in _random_boxes(c.oracle.box(channel, level), 6, seed=level):
        np.testing.assert_array_equal(c.backend.read(c.ref(channel), box, level),
                                      c.expected(channel, box, level), err_msg=str(box))


@pytest.mark.parametrize("channel", READ_CHANNELS)
def test_single_voxel_reads_equal_the_oracle(conformance_case, channel):
    c = conformance_case
    full = c.oracle.box(channel, 0)
    for corner in [full.start, tuple(b - 1 for b in full.stop)]:
        box = Box(corner, tuple(v + 1 for v in corner))
        got = c.backend.read(c.ref(channel), box, 0)
        assert got.shape == (1, 1, 1)
        np.testing.assert_array_equal(got, c.oracle.read(channel, box, 0))


def test_reads_outside_the_volume_are_bad_regions(conformance_case):
    c = conformance_case
    full = c.oracle.box("em8", 0)
    with pytest.raises(BadRegion):
        c.backend.read(c.ref("em8"), Box(full.start, tuple(b + 1 for b in full.stop)), 0)
    with pytest.raises(BadRegion):
        c.backend.read(c.ref("em8"), Box((0, 0, 0), (1, 1, 1)), 0)  # before the offset


def test_a_missing_level_is_not_found(conformance_case):
    c = conformance_case
    with pytest.raises(NotFound):
        c.backend.read(c.ref("em8"), Box((3, 0, 0), (4, 1, 1)), LEVELS)


def test_eight_concurrent_readers_get_the_right_bytes(conformance_case):
    c = conformance_case
    boxes = list(_random_boxes(c.oracle.box("em16", 0), 8, seed=99))
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = c.backend.read(c.ref("em16"), boxes[i], 0)
        except BaseException as exc:  # collected and re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(results[i], c.oracle.read("em16", box, 0))


def test_writes_round_trip_or_are_read_only(conformance_case):
    c = conformance_case
    ref = c.ref("scratch")
    full = c.oracle.box("scratch", 0)
    z0, y0, x0 = full.start
    box = Box((z0 + 2, y0 + 3, x0 + 5), (z0 + 11, y0 + 40, x0 + 61))
    new = np.random.default_rng(7).integers(0, 256, size=box.shape, dtype=np.uint8)
    if not c.writable:
        with pytest.raises(ReadOnly):
            c.backend.write(ref, box, 0, new)
        return
    c.backend.write(ref, box, 0, new)
    np.testing.assert_array_equal(c.backend.read(ref, box, 0), new)
    whole = c.backend.read(ref, full, 0)
    expected = c.oracle.read("scratch", full, 0).copy()
    expected[box.slices(full.start)] = new
    np.testing.assert_array_equal(whole, expected)
    if c.rebuilds_levels:
        from ndfs.testing.reference import _downsample_with_offset

        level1 = _downsample_with_offset(expected, full.start, "image")
        box1 = c.oracle.box("scratch", 1)
        np.testing.assert_array_equal(c.backend.read(ref, box1, 1), c.expected("scratch", box1, 1, level1))
    # restore, so the order of tests does not matter
    c.backend.write(ref, full, 0, c.oracle.read("scratch", full, 0))


def test_writes_with_the_wrong_shape_or_dtype_are_refused_and_change_nothing(conformance_case):
    c = conformance_case
    refused = BadRegion if c.writable else ReadOnly
    ref = c.ref("scratch")
    full = c.oracle.box("scratch", 0)
    box = Box(full.start, tuple(a + 4 for a in full.start))
    with pytest.raises(refused):
        c.backend.write(ref, box, 0, np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(refused):
        c.backend.write(ref, box, 0, np.zeros((4, 4, 4), np.float64))
    np.testing.assert_array_equal(c.backend.read(ref, full, 0), c.oracle.read("scratch", full, 0))


def test_empty_boxes_read_as_empty_arrays(conformance_case):
    c = conformance_case
    full = c.oracle.box("em8", 0)
    got = c.backend.read(c.ref("em8"), Box(full.start, full.start), 0)
    assert got.shape == (0, 0, 0) and got.dtype == np.uint8


__all__ = [name for name in dict(globals()) if name.startswith("test_")] + ["Case"]
