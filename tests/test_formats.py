"""One formats registry: every (format, writer, reader) pair round-trips voxel for voxel, with the voxel
size and offset where the format records them, and a file ``ndfs export`` writes goes into a real
mount's ``cutout/`` and back out through ``ndfs import``.

Writers are the registry's streaming writer (what ``ndfs export`` uses), its render to bytes (what
the mount serves) and the writers of other tools whose files kept working before the registry (the
mount's old ``data`` layout, NeuroData/ndio ``CUTOUT`` groups, plain numpy, tifffile, h5py and
Pillow files). Readers are the registry's reader of a path (``convert.load``/``file_info``), of an
open file told the box and dtype (how the mount commits a written file), and ``convert.import_file``
into a fresh channel. png volumes are folders, so they have no mount cutout and no bytes to render.
"""

import errno
import io
import os
import shutil
import zlib

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from ndfs.tools import convert
from ndfs.stores.local import LocalBackend
from ndfs.core.errors import BadInput
from ndfs.formats import complete, registry
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.volume import Volume

SHAPE = (5, 7, 9)
OFFSET = (3, 4, 5)
VOXEL_SIZE_NM = (30.0, 4.0, 5.0)
DTYPES = {"png": ("uint8", "uint16")}  # the dtypes a format is tested with, when not OTHER_DTYPES
OTHER_DTYPES = ("uint8", "uint64")


def data(dtype, shape=SHAPE, seed=0) -> np.ndarray:
    top = 250 if np.dtype(dtype).itemsize == 1 else 2**40
    return np.random.default_rng(seed).integers(1, top, size=shape).astype(dtype)


def suffix(fmt: str) -> str:
    return "/" if registry.FORMATS[fmt].folder else f".{fmt}"


# ---- writers: (path, array) -> the voxel size and offset the file records (None where it records none) --
def by_registry(fmt):
    def write(path, a):
        info = registry.FileInfo(fmt, a.shape, a.dtype, VOXEL_SIZE_NM, OFFSET)
        registry.write(path, fmt, info, (a[z:z + 2] for z in range(0, a.shape[0], 2)))  # slabs of 2 planes
        f = registry.FORMATS[fmt]
        return (VOXEL_SIZE_NM if f.records_voxel_size else None), (OFFSET if f.records_offset else None)
    return write


def by_render(fmt):
    def write(path, a):
        with open(path, "wb") as fh:
            fh.write(registry.render(a, fmt, voxel_size_nm=VOXEL_SIZE_NM, offset=OFFSET))
        f = registry.FORMATS[fmt]
        return (VOXEL_SIZE_NM if f.records_voxel_size else None), (OFFSET if f.records_offset else None)
    return write


def tifffile_plain(path, a):
    tifffile.imwrite(path, a, photometric="minisblack")
    return None, None


def tifffile_imagej(path, a):  # a 3-D array: tifffile calls its planes channels
    tifffile.imwrite(path, a, imagej=True)
    return None, None


def numpy_save(path, a):
    np.save(path, a)
    return None, None


def numpy_savez_one_array(path, a):
    with open(path, "wb") as fh:
        np.savez_compressed(fh, labels=a)
    return None, None


def old_mount_npz(path, a):  # what a mount's cutout/<box>.npz held before the registry
    with open(path, "wb") as fh:
        np.savez_compressed(fh, data=a)
    return None, None


def h5py_one_dataset(path, a):
    with h5py.File(path, "w") as f:
        f["labels"] = a
    return None, None


def old_mount_h5(path, a):  # what a mount's cutout/<box>.h5 held before the registry
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=a, compression="gzip")
        ds.attrs["voxel_size_nm"] = np.asarray(VOXEL_SIZE_NM)
        ds.attrs["offset"] = np.asarray(OFFSET)
        ds.attrs["axes"] = "ZYX"
    return VOXEL_SIZE_NM, OFFSET


def ndio_root_cutout(path, a):  # old ndio: CUTOUT at the root
    with h5py.File(path, "w") as f:
        f.create_dataset("CUTOUT", data=a, compression="gzip")
    return None, None


def ndio_channel_group(path, a):  # ndio and the NeuroData service: a channel group with CUTOUT and two strings
    from ndfs.stores.neurodata import hdf5_cutout_encode

    with open(path, "wb") as fh:
        fh.write(hdf5_cutout_encode({"em": a}, {"em": "image"}))
    return None, None


def pillow_slices(path, a):
    os.mkdir(path)
    for z, plane in enumerate(a):
        Image.fromarray(plane).save(os.path.join(path, f"{z}.png"))
    return None, None


FOREIGN = {
    "tif": {"tifffile": tifffile_plain, "tifffile imagej": tifffile_imagej},
    "npy": {"numpy.save": numpy_save},
    "npz": {"numpy.savez (one array)": numpy_savez_one_array, "the mount before (data)": old_mount_npz},
    "h5": {"h5py (one dataset)": h5py_one_dataset, "the mount before (data)": old_mount_h5,
           "ndio (root CUTOUT)": ndio_root_cutout, "ndio (channel group)": ndio_channel_group},
    "png": {"Pillow slices": pillow_slices},
}
#: what a foreign writer cannot write
CANNOT = {("tifffile imagej", "uint64")}


def writers(fmt):
    out = {"the registry's streaming writer": by_registry(fmt)}
    if not registry.FORMATS[fmt].folder:
        out["the registry's render (what the mount serves)"] = by_render(fmt)
    out.update(FOREIGN[fmt])
    return out


# ---- readers: (path, fmt, array, recorded voxel size, recorded offset, tmp_path) -> checks --------------
def read_path(path, fmt, a, vs, offset, tmp_path):
    info = convert.file_info(path)
    assert (info.format, info.shape, info.dtype) == (fmt, a.shape, a.dtype)
    assert (info.voxel_size_nm, info.offset) == (vs, offset)
    with registry.open_reader(path, fmt) as r:  # in slabs, as import streams it
        got = np.concatenate([r.read(0, 1), r.read(1, 3), r.read(3, a.shape[0])])
    np.testing.assert_array_equal(got, a)
    np.testing.assert_array_equal(convert.load(path), a)


def read_as_the_mount_commits(path, fmt, a, vs, offset, tmp_path):
    if registry.FORMATS[fmt].folder:
        got = registry.read_array(path, fmt, "slices", shape=a.shape, dtype=a.dtype)
    else:
        with open(path, "rb") as fh:
            got = registry.read_array(fh, fmt, "cutout/0-9_0-7_0-5", shape=a.shape, dtype=a.dtype)
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def import_into_a_channel(path, fmt, a, vs, offset, tmp_path):
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(("p", "c"), (12, 20, 30), a.dtype, offset=(1, 2, 3), chunk_shape=(2, 8, 8))
    target = Volume(store, ("p", "c"))
    at = None if offset is not None else (6, 10, 12)  # a file that records no offset needs one
    box = convert.import_file(path, target, offset=at, slab_bytes=2 * a[0].nbytes)
    assert box == Box.from_shape(a.shape).translate(offset or at)
    np.testing.assert_array_equal(target.read(box), a)
    assert target[:, :, :].sum(dtype=np.float64) == a.sum(dtype=np.float64)  # nothing outside the box


READERS = {"read from its path (convert.load, file_info)": read_path,
           "read as the mount commits it (an open file, told the box)": read_as_the_mount_commits,
           "imported into a channel (convert.import_file)": import_into_a_channel}


def cases():
    for fmt in registry.FORMATS:
        for wname in writers(fmt):
            for rname in READERS:
                for dtype in DTYPES.get(fmt, OTHER_DTYPES):
                    if (wname, dtype) not in CANNOT:
                        yield pytest.param(fmt, wname, rname, dtype, id=f"{fmt} written by {wname}, {rname}, {dtype}")


@pytest.mark.parametrize("fmt,writer,reader,dtype", list(cases()))
def test_every_format_writer_and_reader_round_trip(tmp_path, fmt, writer, reader, dtype):
    a = data(dtype)
    path = tmp_path / f"vol{suffix(fmt)}"
    vs, offset = writers(fmt)[writer](path, a)
    READERS[reader](path, fmt, a, vs, offset, tmp_path)


# ---- the registry itself ---------------------------------------------------------------------------------
def test_the_registry_names_each_format_once_and_matches_the_completeness_checks():
    spellings = [s for f in registry.FORMATS.values() for s in (f.name, *f.aliases)]
    assert len(spellings) == len(set(spellings))
    suffixes = [s for f in registry.FORMATS.values() for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert set(registry.FILE_FORMATS) == {"tif", "npy", "npz", "h5"}
    for name in registry.FILE_FORMATS:  # every format the mount takes can be told whole from half-written
        assert registry.FORMATS[name].complete is complete.CHECKS[name]
    assert set(complete.CHECKS) - set(registry.FORMATS) == {"json"}  # RAMON files, not volumes
    for spelling, name in [("TIFF", "tif"), ("hdf5", "h5"), ("hdf", "h5"), ("npy", "npy")]:
        assert registry.named(spelling).name == name
    for path, name in [("a.TIF", "tif"), ("a.tiff", "tif"), ("x/a.hdf5", "h5"), ("a.npz", "npz"), ("dir/", "png")]:
        assert registry.format_of(path).name == name
    with pytest.raises(BadInput, match="cannot tell the format"):
        registry.format_of("a.bmp")
    with pytest.raises(BadInput, match="unknown format"):
        registry.named("jpeg")


@pytest.mark.parametrize("fmt", registry.FILE_FORMATS)
def test_written_files_are_whole_to_the_mount_and_not_when_cut_short(fmt, tmp_path):
    """The mount commits a file at close() only once its format's check calls it whole."""
    body = registry.render(data("uint16", (4, 30, 40)), fmt, voxel_size_nm=VOXEL_SIZE_NM, offset=OFFSET)
    assert complete.complete(io.BytesIO(body), fmt)
    assert not complete.complete(io.BytesIO(body[:len(body) * 2 // 3]), fmt)


def test_readers_refuse_what_is_not_one_volume_with_a_message(tmp_path):
    a = data("uint8")
    with open(tmp_path / "two.npz", "wb") as fh:
        np.savez(fh, a=a, b=a)
    with pytest.raises(BadInput, match=r"holds arrays \['a', 'b'\]"):
        convert.load(tmp_path / "two.npz")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = a, a
    with pytest.raises(BadInput, match="holds datasets"):
        convert.load(tmp_path / "two.h5")
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 3, 4), np.uint8))
    with pytest.raises(BadInput, match="4-D array"):
        convert.load(tmp_path / "4d.npy")
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((2, 3, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.raises(BadInput, match="hyperstack of 3 channels, 2 slices"):
        convert.load(tmp_path / "hyper.tif")
    for fmt in registry.FILE_FORMATS:  # told a box and a dtype, a reader refuses others before decoding
        body = registry.render(a, fmt)
        with pytest.raises(BadInput, match="this file needs 5x7x10"):
            registry.read_array(body, fmt, "x", shape=(5, 7, 10), dtype="uint8")
        with pytest.raises(BadInput, match="this volume stores uint16"):
            registry.read_array(body, fmt, "x", shape=SHAPE, dtype="uint16")
    with pytest.raises(BadInput, match="png holds uint8 and uint16"):
        registry.write(tmp_path / "labels", "png", registry.FileInfo("png", SHAPE, np.uint64), [a])
    with pytest.raises(BadInput, match="the slabs hold 4 planes; the volume has 5"):
        registry.write(io.BytesIO(), "npy", registry.FileInfo("npy", SHAPE, np.uint8), [a[:4]])


def test_a_plane_file_is_taken_for_a_box_one_deep():
    plane = data("uint16", (7, 9))
    for fmt in registry.FILE_FORMATS:
        body = registry.render(plane[np.newaxis], fmt)
        got = registry.read_array(body, fmt, "z/3.tif", shape=(1, 7, 9), dtype="uint16")
        np.testing.assert_array_equal(got[0], plane)
    buf = io.BytesIO()
    np.save(buf, plane)  # a 2-D array for a box of 1 x 7 x 9
    np.testing.assert_array_equal(registry.read_array(buf.getvalue(), "npy", shape=(1, 7, 9), dtype="uint16")[0],
                                  plane)


def test_neurodata_bodies_with_several_channels_decode_per_channel():
    from ndfs.formats.files import h5

    a, b = data("uint8"), data("uint8", seed=1)
    body = h5.channel_cutouts_bytes({"em": a, "em2": b}, {"em": "image", "em2": "image"})
    got = h5.channel_cutouts(body, "the body", max_bytes=a.nbytes + b.nbytes)
    assert sorted(got) == ["em", "em2"]
    np.testing.assert_array_equal(got["em"], a)
    np.testing.assert_array_equal(got["em2"], b)
    with pytest.raises(BadInput, match="hold over"):
        h5.channel_cutouts(body, "the body", max_bytes=a.nbytes)
    with pytest.raises(BadInput, match="holds datasets"):  # two channels are not one volume
        registry.read_array(body, "h5")


# ---- through a real mount -------------------------------------------------------------------------------
needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
STORE_SHAPE = (12, 40, 50)
STORE_OFFSET = (2, 3, 4)
BOX = Box((4, 9, 12), (9, 30, 41))  # z y x, inside the channel, odd sizes
MOUNT_CASES = [(fmt, dtype) for fmt in registry.FILE_FORMATS for dtype in OTHER_DTYPES]


def box_name(box: Box, fmt: str) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}.{fmt}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    root = tmp_path_factory.mktemp("formats")
    store = LocalBackend(root / "store", create=True)
    for dtype in OTHER_DTYPES:
        store.create_volume(("p", f"src{dtype}"), STORE_SHAPE, dtype, voxel_size_nm=VOXEL_SIZE_NM,
                            offset=STORE_OFFSET, chunk_shape=(4, 16, 16))
        Volume(store, ("p", f"src{dtype}"))[:, :, :] = data(dtype, STORE_SHAPE, seed=5)
        for fmt in [*registry.FILE_FORMATS, "stack", "others"]:
            for use in ("dst", "back"):
                store.create_volume(("p", f"{use}{fmt}{dtype}"), STORE_SHAPE, dtype, voxel_size_nm=VOXEL_SIZE_NM,
                                    offset=STORE_OFFSET, chunk_shape=(4, 16, 16))
    (root / "ndfs.toml").write_text(f'[remotes.local]\nkind = "local"\npath = "{root / "store"}"\n')
    with mounted(root / "ndfs.toml", root / "mnt", "--log-file", root / "mount.log"):
        yield root


def channel(site, name) -> np.ndarray:
    v = Volume(LocalBackend(site / "store"), ("p", name))
    return v[:, :, :]


def ndfs_cli(site, *args) -> None:
    from ndfs.cli.commands import main

    assert main(["--config", str(site / "ndfs.toml"), *map(str, args)]) == 0


@needs_fuse
@pytest.mark.parametrize("fmt,dtype", MOUNT_CASES, ids=[f"{f}-{d}" for f, d in MOUNT_CASES])
def test_export_into_the_mount_cutout_and_import_what_it_serves(site, tmp_path, fmt, dtype):
    src = channel(site, f"src{dtype}")
    rel = BOX.translate(tuple(-o for o in STORE_OFFSET))  # the box in the arrays of this test
    want = src[rel.slices()]
    (z0, y0, x0), (z1, y1, x1) = BOX.start, BOX.stop
    exported = tmp_path / f"exported.{fmt}"
    ndfs_cli(site, "export", f"local/p/src{dtype}", exported, "--x", f"{x0}:{x1}", "--y", f"{y0}:{y1}",
             "--z", f"{z0}:{z1}", "--quiet")
    # the exported file, copied into the mount's cutout/ of the same box, lands in the store
    cutout = site / "mnt" / "local" / "p" / f"dst{fmt}{dtype}" / "0" / "cutout" / box_name(BOX, fmt)
    shutil.copyfile(exported, cutout)
    stored = channel(site, f"dst{fmt}{dtype}")
    np.testing.assert_array_equal(stored[rel.slices()], want)
    assert stored.sum(dtype=np.float64) == want.sum(dtype=np.float64)  # nothing outside the box
    # the mount serves the box; ndfs import of the served file puts it back where it came from
    served = tmp_path / f"served.{fmt}"
    shutil.copyfile(cutout, served)
    info = convert.file_info(served)
    assert (info.shape, info.dtype) == (BOX.shape, np.dtype(dtype))
    if registry.FORMATS[fmt].records_offset:
        assert (info.offset, info.voxel_size_nm) == (BOX.start, VOXEL_SIZE_NM)
        ndfs_cli(site, "import", served, f"local/p/back{fmt}{dtype}", "--quiet")
    else:
        ndfs_cli(site, "import", served, f"local/p/back{fmt}{dtype}", "--at", f"{x0},{y0},{z0}", "--quiet")
    back = channel(site, f"back{fmt}{dtype}")
    np.testing.assert_array_equal(back[rel.slices()], want)
    assert back.sum(dtype=np.float64) == want.sum(dtype=np.float64)


@needs_fuse
@pytest.mark.parametrize("writer", ["ndio (channel group)", "the mount before (data)", "tifffile imagej"])
def test_the_mount_takes_files_other_tools_write(site, tmp_path, writer):
    fmt = next(f for f, ws in FOREIGN.items() if writer in ws)
    name = "dstothersuint8"
    before = channel(site, name)
    a = data("uint8", BOX.shape, seed=9)
    FOREIGN[fmt][writer](tmp_path / f"f.{fmt}", a)
    shutil.copyfile(tmp_path / f"f.{fmt}", site / "mnt" / "local" / "p" / name / "0" / "cutout" / box_name(BOX, fmt))
    after = channel(site, name)
    rel = BOX.translate(tuple(-o for o in STORE_OFFSET))
    np.testing.assert_array_equal(after[rel.slices()], a)
    before[rel.slices()] = a
    np.testing.assert_array_equal(after, before)


@needs_fuse
def test_a_stack_tif_whose_page_does_not_decode_is_einval_and_stores_nothing(site, tmp_path):
    name = "dststackuint8"
    before = channel(site, name)
    buf = io.BytesIO()
    tifffile.imwrite(buf, data("uint8", STORE_SHAPE, seed=3), photometric="minisblack", compression="zlib")
    body = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(body))) as t:
        page = t.pages[7]
        at, n = page.dataoffsets[0], page.databytecounts[0]
    assert zlib.decompress(bytes(body[at:at + n]))  # the strip is deflate data before it is spoiled
    body[at + 2:at + n] = bytes(n - 2)  # page 7's strip: a zlib header, then zeros
    fh = open(site / "mnt" / "local" / "p" / name / "0" / "stack.tif", "wb")
    fh.write(body)
    with pytest.raises(OSError) as caught:
        fh.close()
    assert caught.value.errno == errno.EINVAL
    np.testing.assert_array_equal(channel(site, name), before)
    assert "page 7" in (site / "mount.log").read_text()
