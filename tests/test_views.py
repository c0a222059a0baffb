"""Issue 11 views: virtual PNG and .npy files, label views with lookup tables, calibration.

Format layouts are checked byte for byte against real readers (Pillow, zlib, numpy); the views
through the tree in-process (staleness, versions) and through a real `ndfs mount`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from ndfs.tools.demo import make_demo
from ndfs.core.errors import NdfsError
from ndfs.formats.npy import NpyLayout
from ndfs.formats.png import BLOCK, PngLayout
from ndfs.formats.tiff import TiffLayout
from ndfs.fs import views
from ndfs.fs.tree import Tree
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted

needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def rows_of(plane, calls=None):
    def get_rows(p, y0, y1):
        if calls is not None:
            calls.append((p, y0, y1))
        return plane[y0:y1]
    return get_rows


def pieces(read, size, seed=0):
    """The whole file read in random pieces (1 B .. 100 KiB), a bit past EOF."""
    rng = np.random.default_rng(seed)
    out, off = [], 0
    while off < size + 50:
        n = int(rng.integers(1, 100_000))
        chunk = read(off, n)
        assert len(chunk) == max(0, min(n, size - off))
        out.append(chunk)
        off += n
    return b"".join(out)


# ---- PNG ------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,dtype", [(1, 1, "u1"), (7, 13, "u1"), (300, 512, "u2"), (1, 40_000, "u2"),
                                       (257, 255, "u1"), (64, 1024, "u1")])
def test_png_is_exact_and_every_reader_agrees(tmp_path, h, w, dtype):
    rng = np.random.default_rng(h * w)
    plane = rng.integers(0, np.iinfo(dtype).max, (h, w), dtype=dtype, endpoint=True)
    layout = PngLayout(h, w, dtype, pixel_size_nm=(4.0, 5.0))
    data = layout.read(0, layout.size, rows_of(plane))
    row = 1 + w * np.dtype(dtype).itemsize
    blocks = -(-h * row // BLOCK)
    # size from geometry alone: signature, IHDR, pHYs, IDATs (one stored block each), adler, IEND
    assert layout.size == len(data) == 8 + 25 + 21 + 2 + h * row + blocks * 17 + 16 + 12
    assert pieces(lambda o, n: layout.read(o, n, rows_of(plane)), layout.size) == data
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        np.testing.assert_array_equal(np.asarray(im).astype(dtype), plane)
        assert im.info["dpi"][0] == pytest.approx(0.0254 / 5e-9, rel=1e-6)  # x: 5 nm, via pHYs
    # the IDAT payload is a valid zlib stream of the filtered rows
    stream, pos = b"", 8
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IDAT":
            stream += body
        pos += 12 + n
    raw = zlib.decompress(stream)
    filtered = np.zeros((h, row), np.uint8)
    filtered[:, 1:] = plane.astype(np.dtype(dtype).newbyteorder(">")).view(np.uint8)
    assert raw == filtered.tobytes()


def test_png_reads_only_the_rows_they_cover():
    plane = np.arange(400 * 300, dtype=np.uint16).reshape(400, 300)
    layout = PngLayout(400, 300, "u2")
    calls = []
    layout.read(0, layout.idat_start, rows_of(plane, calls))  # header: no rows
    assert calls == []
    layout.read(layout.idat_start + 3 * (BLOCK + 17) + 100, 10, rows_of(plane, calls))  # inside IDAT 3
    (_, y0, y1), = calls
    assert y1 - y0 <= BLOCK // 601 + 2 and y0 > 0
    with pytest.raises(ValueError):
        PngLayout(4, 4, "u4")


# ---- npy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dtype", [((4, 5, 6), "u2"), ((1, 1, 1), "u1"), ((3, 70, 33), "u8"),
                                         ((2, 9, 8), "f4")])
def test_npy_layout_loads_and_maps(tmp_path, shape, dtype):
    a = (np.random.default_rng(1).random(shape) * 1e4).astype(dtype)
    layout = NpyLayout(shape, dtype)
    get_rows = lambda z, y0, y1: a[z, y0:y1]  # noqa: E731
    data = pieces(lambda o, n: layout.read(o, n, get_rows), layout.size)
    assert len(data) == layout.size == layout.data_start + a.nbytes and layout.data_start % 64 == 0
    path = tmp_path / "v.npy"
    path.write_bytes(data)
    m = np.load(path, mmap_mode="r")
    assert m.shape == shape and m.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(m, a)
    calls = []
    z, y = shape[0] - 1, shape[1] // 2
    off = layout.data_start + (z * shape[1] + y) * shape[2] * a.itemsize
    assert layout.read(off, a.itemsize * 2, lambda *c: calls.append(c) or a[c[0], c[1]:c[2]]) \
        == a[z, y, :2].tobytes()
    assert calls == [(z, y, y + 1)]


# ---- TIFF display range --------------------------------------------------------------------
def test_a_display_range_callable_runs_once_at_the_first_header_read(tmp_path):
    a = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5) * 100
    asked = []
    layout = TiffLayout(2, 6, 5, "u2", display_range=lambda: asked.append(1) or (-5, 70_000))
    size = layout.size
    assert asked == []  # the size needs no data
    path = tmp_path / "r.tif"
    path.write_bytes(layout.read(0, size, lambda z, y0, y1: a[z, y0:y1]))
    layout.read(0, 100, None)
    assert asked == [1] and path.stat().st_size == size
    with tifffile.TiffFile(path) as tf:
        assert (tf.imagej_metadata["min"], tf.imagej_metadata["max"]) == (0, 65535)  # clipped to uint16
        np.testing.assert_array_equal(tf.asarray(), a)
    with pytest.raises(ValueError):
        TiffLayout(1, 2, 2, "f4", display_range=lambda: (0, 1))


# ---- lookup tables --------------------------------------------------------------------------
def test_lut_renumbers_and_refuses_unknown_ids():
    ids = np.array([0, 7, 2**40, 7, 0, 2**63 + 1, 2**40], np.uint64)
    lut = views.Lut(views.unique_ids(ids))
    assert lut.ids.tolist() == [7, 2**40, 2**63 + 1]
    assert lut.apply(ids, np.uint16).tolist() == [0, 1, 2, 1, 0, 3, 2]
    assert lut.csv() == b"label,id\n1,7\n2,1099511627776\n3,9223372036854775809\n"
    with pytest.raises(views.StaleLabels) as info:
        lut.apply(np.array([8], np.uint64), np.uint16)
    assert info.value.errno == errno.ESTALE
    big = views.Lut(np.arange(1, 70_000, dtype=np.uint64))
    with pytest.raises(NdfsError) as info:
        big.check_bits(16, "plane z=0")
    assert info.value.errno == errno.EOVERFLOW and "labels32" in str(info.value)
    big.check_bits(32, "plane z=0")
    assert views.Lut(np.zeros(0, np.uint64)).apply(np.zeros((2, 2), np.uint64), np.uint32).sum() == 0


# ---- the store the tree and mount tests share --------------------------------------------------
SHAPE = (12, 90, 70)
MANY = (3, 300, 300)  # 90,000 distinct ids per plane: more than labels16 can number


def build_store(path):
    """demo/{em,cells} plus extra channels: uint16 image, many-id labels, a µm-scale image, float32."""
    backend = make_demo(str(path), shape=(16, 120, 100), levels=2, chunk_shape=(8, 64, 64), progress=False)
    rng = np.random.default_rng(5)
    info = backend.create_volume("extra/em16", SHAPE, "uint16", voxel_size_nm=(30, 4, 4), offset=(3, 5, 7),
                                 levels=2, chunk_shape=(8, 32, 32))
    em16 = rng.integers(100, 3000, SHAPE, dtype=np.uint16)
    backend.write("extra/em16", info.levels[0].box, 0, em16)
    info = backend.create_volume("extra/many", MANY, "uint64", kind="annotation", levels=1,
                                 chunk_shape=(1, 128, 128))
    many = (rng.permutation(np.prod(MANY)).reshape(MANY).astype(np.uint64) + 1) * 7919 + 2**40
    many[:, :10, :10] = 0
    backend.write("extra/many", info.levels[0].box, 0, many)
    info = backend.create_volume("extra/lm", (4, 20, 30), "uint8", voxel_size_nm=(1000, 250, 250), levels=1)
    backend.write("extra/lm", info.levels[0].box, 0, rng.integers(0, 256, (4, 20, 30), dtype=np.uint8))
    info = backend.create_volume("extra/f32", (2, 8, 9), "float32", levels=1)
    backend.write("extra/f32", info.levels[0].box, 0, rng.random((2, 8, 9)).astype(np.float32))
    backend.create_volume("extra/big8", (64, 512, 512), "uint8", levels=1, chunk_shape=(16, 128, 128))
    backend.write("extra/big8", Box((40, 100, 0), (41, 101, 512)), 0, np.full((1, 1, 512), 9, np.uint8))
    return backend


def store_array(backend, ref, level=0):
    lv = backend.info(ref).level(level)
    return backend.read(ref, lv.box, level)


def cat(tree, path) -> bytes:
    node = tree.resolve(path)
    return node.open().read(0, 1 << 40)


def parse_lut(data: bytes) -> np.ndarray:
    """Label -> id array (index 0 = background) from a table file."""
    assert data.startswith(b"label,id\n")
    table = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.uint64, ndmin=2)
    assert table[:, 0].tolist() == list(range(1, len(table) + 1))
    return np.concatenate([np.zeros(1, np.uint64), table[:, 1]])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "store"
    return path, build_store(path)


def test_tree_labels_follow_writes_and_refuse_stale_tables(tmp_path):
    backend = make_demo(str(tmp_path / "s"), shape=(8, 64, 64), levels=1, chunk_shape=(8, 32, 32), progress=False)
    tree = Tree({"local": backend})
    base = "local/demo/cells/0/labels32"
    handle = tree.resolve(f"{base}/stack.tif").open()
    lut = parse_lut(cat(tree, f"{base}/stack.csv"))
    stack = tifffile.imread(io.BytesIO(handle.read(0, 1 << 30)))
    np.testing.assert_array_equal(lut[stack], store_array(backend, "demo/cells"))
    # a new id written behind the tree's back: the open file refuses it rather than mislabel it
    backend.write("demo/cells", Box((0, 0, 0), (1, 1, 1)), 0, np.full((1, 1, 1), 2**50, np.uint64))
    with pytest.raises(views.StaleLabels):
        handle.read(0, 1 << 30)
    again = tifffile.imread(io.BytesIO(cat(tree, f"{base}/stack.tif")))  # reopening scans again
    lut = parse_lut(cat(tree, f"{base}/stack.csv"))
    assert lut[again[0, 0, 0]] == 2**50
    # a write through the tree makes a new version: the next open has a new table
    tree.write("local", ("demo", "cells"), Box((1, 0, 0), (2, 1, 1)), 0, np.full((1, 1, 1), 2**51, np.uint64))
    again = tifffile.imread(io.BytesIO(cat(tree, f"{base}/stack.tif")))
    lut = parse_lut(cat(tree, f"{base}/stack.csv"))
    np.testing.assert_array_equal(lut[again], store_array(backend, "demo/cells"))


def test_tree_display_range_and_units(store):
    _, backend = store
    tree = Tree({"local": backend})
    coarse = store_array(backend, "extra/em16", 1)
    with tifffile.TiffFile(io.BytesIO(cat(tree, "local/extra/em16/0/z/5.tif"))) as tf:
        md = tf.imagej_metadata
        assert (md["min"], md["max"]) == (coarse.min(), coarse.max()) and md["unit"] == "nm"
    with tifffile.TiffFile(io.BytesIO(cat(tree, "local/extra/lm/0/stack.tif"))) as tf:
        md = tf.imagej_metadata
        assert md["unit"] == "micron" and md["spacing"] == 1.0
        assert tf.pages[0].tags["XResolution"].value == (4, 1)  # 4 pixels per micron: 250 nm
        assert "min" not in md  # 8-bit: ImageJ's 0..255 is right
    assert tree.listdir("local/extra/em16/0") == ["z", "y", "x", "stack.tif", "cutout", "volume.npy"]
    assert "labels16" in tree.listdir("local/demo/cells/1")


# ---- through a real mount ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnt(store):
    path, _ = store
    root = path.parent
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(root / "ndfs.toml", root / "mnt"):
        yield root / "mnt" / "local"


@needs_fuse
@pytest.mark.parametrize("bits", [16, 32])
def test_label_planes_and_their_tables_give_back_the_store(store, mnt, bits):
    _, backend = store
    for level in (0, 1):
        a = store_array(backend, "demo/cells", level)
        folder = mnt / "demo" / "cells" / str(level) / f"labels{bits}"
        for axis, index, want in [("z", 3, a[3]), ("z", a.shape[0] - 1, a[-1]), ("y", 17, a[:, 17]),
                                  ("x", a.shape[2] - 1, a[:, :, -1])]:
            got = tifffile.imread(folder / axis / f"{index}.tif")
            assert got.dtype == (np.uint16 if bits == 16 else np.uint32)
            lut = parse_lut((folder / axis / f"{index}.csv").read_bytes())
            np.testing.assert_array_equal(lut[got], want)
            assert len(lut) - 1 == len(np.unique(want[want != 0]))  # exactly the ids of the plane
        stack = tifffile.imread(folder / "stack.tif")
        lut = parse_lut((folder / "stack.csv").read_bytes())
        np.testing.assert_array_equal(lut[stack], a)
        with tifffile.TiffFile(folder / "stack.tif") as tf:
            assert tf.imagej_metadata["max"] == len(lut) - 1 and tf.imagej_metadata["spacing"] == 40.0


@needs_fuse
def test_labels16_refuses_too_many_ids_and_labels32_holds_them(store, mnt):
    _, backend = store
    many = store_array(backend, "extra/many")
    level = mnt / "extra" / "many" / "0"
    for path in [level / "labels16" / "z" / "0.tif", level / "labels16" / "stack.tif",
                 level / "labels16" / "z" / "1.csv", level / "z" / "0.png"]:
        os.stat(path)  # the file exists; opening it is what fails
        with pytest.raises(OSError) as info:
            path.read_bytes()
        assert info.value.errno == errno.EOVERFLOW, path
    got = tifffile.imread(level / "labels32" / "z" / "2.tif")
    lut = parse_lut((level / "labels32" / "z" / "2.csv").read_bytes())
    assert len(lut) - 1 == 300 * 300 - 100
    np.testing.assert_array_equal(lut[got], many[2])
    stack = tifffile.imread(level / "labels32" / "stack.tif")
    np.testing.assert_array_equal(parse_lut((level / "labels32" / "stack.csv").read_bytes())[stack], many)
    assert tifffile.imread(level / "z" / "1.tif").dtype == np.uint64  # the raw ids stay available


@needs_fuse
def test_png_planes_equal_the_store(store, mnt):
    _, backend = store
    em = store_array(backend, "demo/em")
    em16 = store_array(backend, "extra/em16")
    for path, want in [(mnt / "demo" / "em" / "0" / "z" / "4.png", em[4]),
                       (mnt / "demo" / "em" / "0" / "y" / "100.png", em[:, 100]),
                       (mnt / "extra" / "em16" / "0" / "z" / "14.png", em16[11]),
                       (mnt / "extra" / "em16" / "0" / "x" / "7.png", em16[:, :, 0])]:
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im).astype(want.dtype), want)
        assert os.stat(path).st_size == len(path.read_bytes())
    cells = store_array(backend, "demo/cells")
    png = mnt / "demo" / "cells" / "0" / "z" / "9.png"
    with Image.open(png) as im:
        labels = np.asarray(im).astype(np.uint16)
    lut = parse_lut((mnt / "demo" / "cells" / "0" / "labels16" / "z" / "9.csv").read_bytes())
    np.testing.assert_array_equal(lut[labels], cells[9])
    assert "9.png" not in os.listdir(png.parent)  # opened by name, not listed beside the TIFFs
    for missing in [mnt / "extra" / "f32" / "0" / "z" / "0.png", mnt / "demo" / "em" / "0" / "z" / "16.png",
                    mnt / "demo" / "em" / "0" / "labels16", mnt / "demo" / "cells" / "0" / "labels16" / "z" / "99.csv"]:
        with pytest.raises(FileNotFoundError):
            os.stat(missing)


@needs_fuse
def test_volume_npy_mmaps_and_reads_only_what_is_indexed(store, mnt):
    _, backend = store
    for ref, level in [("demo/em", 0), ("demo/cells", 1), ("extra/em16", 0), ("extra/f32", 0)]:
        path = mnt.joinpath(*ref.split("/"), str(level), "volume.npy")
        m = np.load(path, mmap_mode="r")
        a = store_array(backend, ref, level)
        assert m.shape == a.shape and m.dtype == a.dtype
        np.testing.assert_array_equal(m, a)
        assert os.stat(path).st_size == m.offset + a.nbytes
        del m  # an open map would keep the mount busy at unmount
    # random access into 16 MiB: a few rows cost about the kernel's readahead, not the volume
    stats = mnt.parent / ".ndfs" / "stats.json"
    before = json.loads(stats.read_text())["local"]["served"]["read_bytes"]
    m = np.load(mnt / "extra" / "big8" / "0" / "volume.npy", mmap_mode="r")
    assert m.shape == (64, 512, 512)
    assert m[40, 100].tolist() == [9] * 512 and m[40, 101:103].sum() == 0
    del m
    read = json.loads(stats.read_text())["local"]["served"]["read_bytes"] - before
    assert 0 < read <= 4 * 2**20  # readahead around the page, of a 16 MiB file


@needs_fuse
def test_table_files_copy_whole_although_their_size_is_generated(store, mnt, tmp_path):
    src = mnt / "demo" / "cells" / "1" / "labels16" / "z" / "2.csv"
    dst = tmp_path / "2.csv"
    subprocess.run(["cp", str(src), str(dst)], check=True)
    data = dst.read_bytes()
    assert data == src.read_bytes() and data.count(b"\n") > 1
    tif = mnt / "demo" / "cells" / "1" / "labels16" / "z" / "2.tif"
    assert os.stat(tif).st_size == len(tif.read_bytes())
