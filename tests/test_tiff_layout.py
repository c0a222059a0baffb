"""Tests for ndfs.formats.tiff.TiffLayout: virtual TIFF bytes checked against real readers."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from PIL import Image

from ndfs.formats.tiff import TiffLayout

CASES = [  # (n_planes, height, width, dtype)
    (1, 7, 13, "u1"),
    (1, 300, 512, "u1"),     # several strips in a single-plane file
    (1, 37, 41, "u2"),
    (1, 1000, 300, "u2"),    # several strips, 600 B rows
    (5, 7, 13, "u1"),        # odd plane size -> odd data_end
    (6, 13, 7, "u2"),
    (4, 33, 17, "u8"),
    (3, 20, 30, "f4"),
    (3, 9, 11, "i2"),
    (2, 5, 3, "f8"),
    (2, 4, 4, "i1"),
    (3, 6, 5, "u4"),
    (2, 6, 5, "i4"),
    (2, 6, 5, "i8"),
]


def make_volume(n, h, w, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal((n, h, w)) * 1000).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, (n, h, w), dtype=dt, endpoint=True)


def rows_of(vol, calls=None):
    def get_rows(z, y0, y1):
        if calls is not None:
            calls.append((z, y0, y1))
        return vol[z, y0:y1]
    return get_rows


def no_rows(z, y0, y1):
    raise AssertionError(f"get_rows({z}, {y0}, {y1}) called for a header/trailer-only range")


def materialise(layout, get_rows, seed=1):
    """Read the whole file in random pieces (1 B .. 5 KiB), going a bit past EOF."""
    rng = np.random.default_rng(seed)
    parts, off = [], 0
    while off < layout.size + 100:
        n = int(rng.integers(1, 5000))
        chunk = layout.read(off, n, get_rows)
        assert len(chunk) == max(0, min(n, layout.size - off))
        parts.append(chunk)
        off += n
    return b"".join(parts)


def write_case(tmp_path, n, h, w, dtype, **kw):
    vol = make_volume(n, h, w, dtype)
    layout = TiffLayout(n, h, w, dtype, **kw)
    data = materialise(layout, rows_of(vol))
    assert data == layout.read(0, layout.size, rows_of(vol))  # one big read agrees
    path = tmp_path / f"v_{n}x{h}x{w}_{dtype}.tif"
    path.write_bytes(data)
    return vol, layout, data, path


@pytest.mark.parametrize("n,h,w,dtype", CASES)
def test_roundtrip_tifffile(tmp_path, n, h, w, dtype):
    vox = (40.0, 4.0, 2.5)
    vol, layout, data, path = write_case(tmp_path, n, h, w, dtype, voxel_size=vox, unit="nm")
    assert len(data) == layout.size == path.stat().st_size
    assert layout.plane_bytes == h * w * np.dtype(dtype).itemsize
    assert layout.data_start % 16 == 0
    got = tifffile.imread(path)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.reshape(vol.shape), vol)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej
        md = tf.imagej_metadata
        assert md["images"] == n and md["slices"] == n
        assert md["unit"] == "nm" and md["spacing"] == pytest.approx(40.0)
        assert len(tf.pages) == n
        for z, page in enumerate(tf.pages):
            # pixel size from the resolution tags: pixels per unit -> unit per pixel
            xn, xd = page.tags["XResolution"].value
            yn, yd = page.tags["YResolution"].value
            assert (xd / xn, yd / yn) == (2.5, 4.0)
            assert page.tags["ResolutionUnit"].value == 1
            assert page.offset % 2 == 0  # IFDs on word boundaries
            assert page.dataoffsets[0] == layout.data_start + z * layout.plane_bytes
            assert sum(page.databytecounts) == layout.plane_bytes
            if z:
                assert "ImageDescription" not in page.tags
    # spec 2.2 voxel formula, byte for byte
    b = np.dtype(dtype).itemsize
    for z, y, x in [(0, 0, 0), (n - 1, h - 1, w - 1), (n // 2, h // 2, w // 3)]:
        off = layout.data_start + ((z * h + y) * w + x) * b
        assert layout.read(off, b, rows_of(vol)) == vol[z, y, x].astype(vol.dtype.newbyteorder("<")).tobytes()
    if n > 1:  # later IFDs: trailer of equal-sized IFDs, size formula of spec 2.2
        S = layout.ifd_size
        assert layout.size == layout.trailer_start + (n - 1) * S
        assert layout.trailer_start - layout.data_end in (0, 1)
        assert data[layout.data_end:layout.trailer_start] in (b"", b"\0")  # pad before IFD1
    else:
        assert layout.size == layout.data_end


@pytest.mark.parametrize("n,h,w,dtype", [c for c in CASES if c[3] in ("u1", "u2")])
def test_pillow_and_tiffinfo(tmp_path, n, h, w, dtype):
    vol, layout, data, path = write_case(tmp_path, n, h, w, dtype)
    with Image.open(path) as im:
        assert im.size == (w, h)
        assert getattr(im, "n_frames", 1) == n
        for z in range(n):
            im.seek(z)
            np.testing.assert_array_equal(np.array(im), vol[z])
    exe = shutil.which("tiffinfo")
    if exe is None:
        pytest.skip("tiffinfo not installed")
    r = subprocess.run([exe, "-D", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""
    assert r.stdout.count("TIFF Directory at offset") == n


def test_single_plane_strips():
    layout = TiffLayout(1, 1000, 300, "u2")
    assert 8 * 1024 <= layout.rows_per_strip * 600 <= 64 * 1024
    layout = TiffLayout(1, 3, 100_000, "u1")  # rows bigger than 64 KiB: one row per strip
    assert layout.rows_per_strip == 1
    assert TiffLayout(4, 300, 512, "u1").rows_per_strip == 300  # stacks: one strip per plane


def test_get_rows_grouping():
    n, h, w = 40, 256, 256  # 64 KiB planes
    vol = make_volume(n, h, w, "u1")
    layout = TiffLayout(n, h, w, "u1")
    calls = []
    start = layout.data_start + 1000
    data = layout.read(start, 1 << 20, rows_of(vol, calls))
    assert data == vol.tobytes()[1000:1000 + (1 << 20)]
    assert [c[0] for c in calls] == list(range(17))  # one call per plane touched
    assert calls[0] == (0, 1000 // w, h)
    assert all(c[1:] == (0, h) for c in calls[1:-1])
    last_bytes = (1000 + (1 << 20)) - 16 * h * w
    assert calls[-1] == (16, 0, -(-last_bytes // w))
    calls.clear()  # mid-row read within one row
    assert layout.read(layout.data_start + 5 * h * w + 3 * w + 7, 10, rows_of(vol, calls)) \
        == vol[5, 3, 7:17].tobytes()
    assert calls == [(5, 3, 4)]


def test_header_and_trailer_reads_skip_get_rows():
    n, h, w = 4, 9, 11
    vol = make_volume(n, h, w, "u2")
    layout = TiffLayout(n, h, w, "u2")
    full = layout.read(0, layout.size, rows_of(vol))
    assert full[:4] == b"II*\0" and struct.unpack("<I", full[4:8])[0] == 8
    for off, size in [(0, layout.data_start), (0, 8), (10, 50), (layout.data_end, 40),
                      (layout.trailer_start + 3, 500), (layout.size - 5, 100)]:
        assert layout.read(off, size, no_rows) == full[off:off + size]
    assert layout.read(layout.size, 10, no_rows) == b""
    assert layout.read(layout.size + 1000, 10, no_rows) == b""
    assert layout.read(5, 0, no_rows) == b""
    # straddling header/pixels and pixels/trailer
    calls = []
    assert layout.read(layout.data_start - 7, 20, rows_of(vol, calls)) == \
        full[layout.data_start - 7:layout.data_start + 13]
    assert calls == [(0, 0, 1)]
    calls.clear()
    assert layout.read(layout.data_end - 3, 50, rows_of(vol, calls)) == \
        full[layout.data_end - 3:layout.data_end + 47]
    assert calls == [(n - 1, h - 1, h)]
    with pytest.raises(ValueError):
        layout.read(-1, 10, no_rows)


def test_single_ifd_variant(tmp_path):
    n, h, w = 5, 7, 13
    vol = make_volume(n, h, w, "u2")
    layout = TiffLayout(n, h, w, "u2", voxel_size=(3.0, 0.5, 0.5), unit="um", single_ifd=True)
    assert layout.single_ifd and layout.size == layout.data_end
    data = materialise(layout, rows_of(vol))
    path = tmp_path / "single.tif"
    path.write_bytes(data)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1 and tf.is_imagej
        md = tf.imagej_metadata
        assert md["images"] == n and md["unit"] == "micron" and md["spacing"] == 3.0
        assert tf.pages[0].tags["XResolution"].value == (2, 1)
        np.testing.assert_array_equal(tf.series[0].asarray(), vol)
    np.testing.assert_array_equal(tifffile.imread(path), vol)


def test_automatic_single_ifd_and_limits():
    # 520 x 2048^2 uint16 = 4.36 GB: must switch to the single-IFD variant; nothing is read
    layout = TiffLayout(520, 2048, 2048, "u2")
    assert layout.single_ifd and layout.size == layout.data_start + 520 * 2048 * 2048 * 2
    head = layout.read(0, layout.data_start, no_rows)
    assert b"images=520\n" in head
    calls = []
    tail = layout.read(layout.size - 4, 100, lambda z, y0, y1: calls.append((z, y0, y1))
                       or np.full((y1 - y0, 2048), 0x0102, np.uint16))
    assert tail == b"\x02\x01" * 2 and calls == [(519, 2047, 2048)]
    small = TiffLayout(3, 2048, 2048, "u2")
    assert not small.single_ifd
    with pytest.raises(ValueError, match="BigTIFF"):
        TiffLayout(1, 50_000, 50_000, "u2")  # one plane > 4 GiB
    with pytest.raises(ValueError):
        TiffLayout(520, 2048, 2048, "u2", single_ifd=False)
    for bad in ("f2", "bool", "c8", "U3"):
        with pytest.raises(ValueError):
            TiffLayout(2, 3, 3, bad)


def test_metadata_options(tmp_path):
    vol, layout, data, path = write_case(
        tmp_path, 3, 8, 9, "f4", voxel_size=(0.7, 0.3, 0.3), unit="µm", display_range=(-5, 2.5))
    with tifffile.TiffFile(path) as tf:
        md = tf.imagej_metadata
        assert md["unit"] == "micron" and md["spacing"] == pytest.approx(0.7)
        assert md["min"] == -5.0 and md["max"] == 2.5
        assert tf.pages[0].tags["XResolution"].value == (10, 3)
        assert tf.pages[0].tags["SampleFormat"].value == 3
    with pytest.raises(ValueError):
        TiffLayout(1, 2, 2, "u1", voxel_size=(1, 0, 1))


def test_byte_order_and_casting():
    vol = make_volume(3, 5, 6, "u2")
    layout = TiffLayout(3, 5, 6, "u2")
    expected = layout.read(0, layout.size, rows_of(vol))
    big = vol.astype(">u2")
    assert layout.read(0, layout.size, rows_of(big)) == expected
    as_int = vol.astype(np.int64)  # e.g. a backend returning wider ints
    assert layout.read(0, layout.size, rows_of(as_int)) == expected
    with pytest.raises(ValueError, match="shape"):
        layout.read(layout.data_start, 4, lambda z, y0, y1: np.zeros((y1 - y0 + 1, 6), "u2"))


def test_concurrent_reads_agree():
    vol = make_volume(8, 64, 48, "u2")
    layout = TiffLayout(8, 64, 48, "u2")
    full = layout.read(0, layout.size, rows_of(vol))
    rng = np.random.default_rng(3)
    jobs = [(int(rng.integers(0, layout.size)), int(rng.integers(1, 20000))) for _ in range(200)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda j: layout.read(j[0], j[1], rows_of(vol)), jobs))
    for (off, size), got in zip(jobs, results):
        assert got == full[off:off + size]
    assert threading.active_count() >= 1
    assert "8x64x48" in layout.describe()
