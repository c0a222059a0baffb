"""Exports and imports: every format round-trips voxel for voxel and opens in its standard reader.

The source is the reference project (odd sizes, non-zero offsets, uint8,
uint16 and uint64 channels); the checks read files with numpy, h5py, tifffile
and Pillow directly, then import them back into fresh channels of a local store.
"""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

import ndfs
from ndfs.tools import convert
from ndfs.stores.local import LocalBackend
from ndfs.core.errors import BackendError, BadInput, BadRegion
from ndfs.core.geometry import Box
from ndfs.testing.reference import OFFSET, PROJECT, SHAPE, VOXEL_SIZE_NM
from ndfs.volume import Volume

h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")

BOX = Box((4, 9, 12), (21, 70, 95))  # odd, inside the reference volumes (offset 3, 5, 7)
SUFFIX = {"npz": "cut.npz", "h5": "cut.h5", "tif": "cut.tif", "png": "cut/"}  # by the registry's names


@pytest.fixture(scope="module")
def ref(reference_store):
    path, _, oracle = reference_store
    return LocalBackend(path), oracle


def vol(ref, channel, level=0):
    return Volume(ref[0], (PROJECT, channel), level)


def read_with_standard_reader(fmt, path):
    """The file as the ordinary library for the format reads it, plus its voxel size and offset as stored."""
    if fmt == "npz":
        with np.load(path) as f:
            return f["volume"], tuple(f["voxel_size_nm"]), tuple(f["offset"])
    if fmt == "h5":
        with h5py.File(path, "r") as f:
            ds = f["volume"]
            assert ds.chunks is not None and ds.compression == "gzip"
            np.testing.assert_allclose(ds.attrs["element_size_um"], np.array(VOXEL_SIZE_NM) / 1000)
            return ds[()], tuple(ds.attrs["voxel_size_nm"]), tuple(ds.attrs["offset"])
    if fmt == "tif":
        with tifffile.TiffFile(path) as t:
            data = t.asarray()
            assert len(t.pages) == data.shape[0]
            if t.is_imagej:
                ij = t.imagej_metadata
                assert ij["unit"] == "nm" and t.pages[0].resolution[:2] == (1 / VOXEL_SIZE_NM[2], 1 / VOXEL_SIZE_NM[1])
                vs = (ij["spacing"], 1 / t.pages[0].resolution[1], 1 / t.pages[0].resolution[0])
                off = tuple(int(v) for v in ij["ndfs_offset_zyx"].split(","))
            else:
                meta = t.shaped_metadata[0]
                vs, off = tuple(meta["voxel_size_nm"]), tuple(meta["offset"])
            return data, vs, off
    names = sorted(p for p in os.listdir(path) if p.endswith(".png"))
    planes = [np.asarray(Image.open(path / n)) for n in names]
    z0 = int(names[0][:-4])
    return np.stack(planes), None, (z0,)


@pytest.mark.parametrize("channel,fmt", [(c, f) for c in ("em8", "em16", "labels") for f in SUFFIX
                                         if (c, f) != ("labels", "png")])  # png refuses uint64: tested below
def test_each_format_round_trips_voxel_for_voxel_through_its_standard_reader_and_back(ref, fmt, channel, tmp_path):
    backend, oracle = ref
    want = oracle.read(channel, BOX, 0)
    path = convert.export(vol(ref, channel), f"{tmp_path}/{SUFFIX[fmt]}", box=BOX, slab_bytes=20_000)
    data, vs, off = read_with_standard_reader(fmt, path)
    assert data.dtype == want.dtype
    np.testing.assert_array_equal(data, want)
    if vs is not None:
        assert vs == VOXEL_SIZE_NM
    assert off == BOX.start[:len(off)]
    info = convert.file_info(path)
    assert (info.format, info.shape, info.dtype, info.voxel_size_nm, info.offset) == \
        (fmt, BOX.shape, want.dtype, VOXEL_SIZE_NM, BOX.start)
    np.testing.assert_array_equal(convert.load(path), want)
    # import into a fresh channel: the recorded offset puts the data back where it came from
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(("p", "c"), SHAPE, want.dtype, offset=OFFSET, chunk_shape=(8, 32, 32))
    target = Volume(store, ("p", "c"))
    assert convert.import_file(path, target, slab_bytes=20_000) == BOX
    np.testing.assert_array_equal(target.read(BOX), want)
    assert target[:, :, :].sum() == want.sum()  # nothing outside the box


def test_tiff_is_an_imagej_hyperstack_for_8_16_bit_and_a_plain_multipage_tiff_for_labels(ref, tmp_path):
    convert.export(vol(ref, "em16"), tmp_path / "a.tif")
    convert.export(vol(ref, "labels"), tmp_path / "b.tif")
    with tifffile.TiffFile(tmp_path / "a.tif") as t:
        assert t.is_imagej and t.imagej_metadata["slices"] == SHAPE[0] and t.imagej_metadata["spacing"] == 30.0
    with tifffile.TiffFile(tmp_path / "b.tif") as t:
        assert not t.is_imagej and len(t.pages) == SHAPE[0] and t.pages[0].dtype == np.uint64


def test_arrays_export_with_given_geometry_and_2d_arrays_are_one_slice(tmp_path):
    a = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40) / 7
    convert.export(a, tmp_path / "f.h5", voxel_size_nm=(50, 5, 5), offset=(1, 2, 3))
    info = convert.file_info(tmp_path / "f.h5")
    assert info.voxel_size_nm == (50.0, 5.0, 5.0) and info.offset == (1, 2, 3) and info.dtype == np.float32
    np.testing.assert_array_equal(convert.load(tmp_path / "f.h5"), a)
    convert.export(a[0], tmp_path / "plane.tif")
    assert convert.load(tmp_path / "plane.tif").shape == (1, 30, 40)
    assert convert.file_info(tmp_path / "plane.tif").voxel_size_nm is None


def test_exports_stream_in_bounded_slabs(ref, tmp_path):
    backend, oracle = ref
    counted = LocalBackend(backend.root)
    v = Volume(counted, (PROJECT, "em16"))
    counted.reset_stats()
    convert.export(v, tmp_path / "s.npz", slab_bytes=3 * 70 * 90 * 2)
    stats = counted.stats
    assert stats.reads == 7 and stats.read_bytes == 20 * 70 * 90 * 2  # 20 planes in slabs of 3, read once
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["volume"], oracle.levels["em16"][0])


def test_a_failed_export_leaves_no_file_and_no_part_file(ref, tmp_path, monkeypatch):
    backend, _ = ref
    flaky = LocalBackend(backend.root)
    calls = {"n": 0}
    real = flaky._read

    def fail_third(ref_, box, level):  # fault injection: the third slab read fails
        calls["n"] += 1
        if calls["n"] == 3:
            raise BackendError("injected read failure")
        return real(ref_, box, level)

    monkeypatch.setattr(flaky, "_read", fail_third)
    for name in ("x.tif", "x.h5", "x.npz", "x/"):
        calls["n"] = 0
        with pytest.raises(BackendError, match="injected"):
            convert.export(Volume(flaky, (PROJECT, "em8")), f"{tmp_path}/{name}", slab_bytes=70 * 90)
        assert os.listdir(tmp_path) == []


def test_bad_exports_and_imports_are_refused_before_anything_is_written(ref, tmp_path):
    with pytest.raises(BadRegion, match="png holds 8- and 16-bit"):
        convert.export(vol(ref, "labels"), f"{tmp_path}/labels/")
    with pytest.raises(BadInput, match="cannot tell the format"):
        convert.export(np.zeros((2, 2, 2), np.uint8), tmp_path / "x.bmp")
    convert.export(np.zeros((2, 2, 2), np.uint8), tmp_path / "x.npz")
    with pytest.raises(BadRegion, match="exists"):
        convert.export(np.ones((2, 2, 2), np.uint8), tmp_path / "x.npz")
    convert.export(np.ones((2, 2, 2), np.uint8), tmp_path / "x.npz", overwrite=True)
    assert convert.load(tmp_path / "x.npz").sum() == 8
    convert.export(np.ones((2, 2, 2), np.uint8), tmp_path / "slices", "png")
    convert.export(np.full((3, 2, 2), 5, np.uint8), tmp_path / "slices", "png", overwrite=True)
    assert convert.load(tmp_path / "slices").shape == (3, 2, 2)
    (tmp_path / "slices" / "notes.txt").write_text("mine")
    with pytest.raises(BadRegion, match="other things than png"):  # overwrite never deletes other files
        convert.export(np.ones((2, 2, 2), np.uint8), tmp_path / "slices", "png", overwrite=True)
    assert (tmp_path / "slices" / "notes.txt").exists()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(BadInput, match="not an HDF5 file"):
        convert.load(tmp_path / "junk.h5")
    (tmp_path / "junk.npz").write_bytes(b"PK nope")
    with pytest.raises(BadInput, match="not an npz"):
        convert.load(tmp_path / "junk.npz")
    (tmp_path / "gap").mkdir()
    for z in (0, 1, 3):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gap" / f"{z}.png")
    with pytest.raises(BadInput, match="missing slices 2"):
        convert.load(tmp_path / "gap")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "gap" / "2.png")
    with pytest.raises(BadInput, match="RGB"):
        convert.load(tmp_path / "gap")
    # import checks: dtype, fit
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(("p", "small"), (2, 2, 2), "uint8")
    small = Volume(store, ("p", "small"))
    convert.export(np.full((2, 2, 2), 300, np.uint16), tmp_path / "wide.npz")
    with pytest.raises(BadInput, match="uint16"):
        convert.import_file(tmp_path / "wide.npz", small)
    convert.export(np.ones((3, 2, 2), np.uint8), tmp_path / "deep.npz")
    with pytest.raises(BadRegion, match="does not fit"):
        convert.import_file(tmp_path / "deep.npz", small)
    assert small[:, :, :].sum() == 0


def test_ndfs_export_and_import_on_the_command_line(reference_store, tmp_path, monkeypatch, capsys):
    from ndfs.cli.commands import main

    path, _, oracle = reference_store
    cfg = tmp_path / "ndfs.toml"
    cfg.write_text(f'[remotes.ref]\nkind = "local"\npath = "{path}"\n'
                   f'[remotes.mine]\nkind = "local"\npath = "{tmp_path / "mine"}"\n')
    (tmp_path / "mine").mkdir()
    env = {**os.environ, "NDFS_CONFIG": str(cfg)}
    done = subprocess.run([sys.executable, "-m", "ndfs", "export", f"ref/{PROJECT}/em16", "cut.h5", "--x", "12:95",
                           "--y", "9:70", "--z", "4:21"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote cut.h5: 83x61x17 uint16")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NDFS_CONFIG", str(cfg))

    def ndfs_cli(*args):  # the same entry point, in this process
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    with h5py.File(tmp_path / "cut.h5") as f:
        np.testing.assert_array_equal(f["volume"][()], oracle.read("em16", BOX, 0))
    done = ndfs_cli("import", "cut.h5", "mine/proj/em16", "--create")
    assert done.returncode == 0, done.stderr
    again = ndfs.remote(str(tmp_path / "mine")).volume("proj/em16")
    assert again.box == BOX and again.voxel_size_nm == VOXEL_SIZE_NM
    np.testing.assert_array_equal(again[:, :, :], oracle.read("em16", BOX, 0))
    done = ndfs_cli("export", f"ref/{PROJECT}/em8", "l1/", "--level", "1")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(convert.load(tmp_path / "l1"), oracle.levels["em8"][1])
    for args, message in [(("export", f"ref/{PROJECT}/labels", "x/"), "png holds"),
                          (("export", f"ref/{PROJECT}/em8", "y.h5", "--x", "0:5"), "outside"),
                          (("export", f"ref/{PROJECT}/em8", "cut.h5"), "exists"),
                          (("import", "nope.tif", "mine/proj/em16"), "does not exist"),
                          (("import", "cut.h5", "mine/proj/none"), "no channel")]:
        done = ndfs_cli(*args)
        assert done.returncode == 1 and done.stderr.startswith("ndfs: error: ") and message in done.stderr, \
            (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


def test_the_npz_member_is_streamed_as_a_standard_npy_inside_a_zip(tmp_path):
    a = np.random.default_rng(1).integers(0, 2**16, size=(5, 7, 9), dtype=np.uint16)
    convert.export(a, tmp_path / "z.npz", slab_bytes=7 * 9 * 2)
    with zipfile.ZipFile(tmp_path / "z.npz") as z:
        assert sorted(z.namelist()) == ["offset.npy", "volume.npy"]
        assert z.getinfo("volume.npy").compress_type == zipfile.ZIP_DEFLATED
    np.testing.assert_array_equal(np.load(tmp_path / "z.npz")["volume"], a)
