"""Issue 11: the files of a real mount open in ImageJ, tiffinfo, GDAL and ImageMagick.

ImageJ is Debian's (``libij-java``, the jar of the ``imagej`` package) run headless by a small
Java probe (``IJ.openImage``/``IJ.openVirtual`` need no display; macros with ``open()`` would).
The probe prints what ImageJ made of each file: size, slices, bit depth, calibration, display
range and the sum of the pixels, which the test compares with the store. The tools come from
``bash scripts/setup.sh test``; without them these tests skip locally and fail under CI.

The >4 GiB stack is a sparse local channel (520 x 2048 x 2048 uint16, one patch written in the
last plane): ImageJ opens its single-IFD layout as a virtual stack and reads the last plane,
past 4 GiB, without reading the rest; tifffile and numpy map it the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted

sys.path.insert(0, os.path.dirname(__file__))
from test_views import build_store, parse_lut, store_array  # noqa: E402  (the shared test store)

IJ_JAR = "/usr/share/java/ij.jar"
BIG = (520, 2048, 2048)  # uint16: 4.36 GB as one TIFF


def _need(ok: bool, what: str):
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing: scripts/setup.sh test installs it")
    pytest.skip(f"{what} is not installed (bash scripts/setup.sh test)")


pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

PROBE = r"""
import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.measure.Calibration;
import ij.process.ImageProcessor;

/** For each "mode:path": open it as ImageJ does and print what ImageJ sees, one line per file. */
public class IjProbe {
    public static void main(String[] args) {
        for (String arg : args) {
            int colon = arg.indexOf(':');
            String mode = arg.substring(0, colon), path = arg.substring(colon + 1);
            ImagePlus imp = mode.equals("open") ? IJ.openImage(path) : IJ.openVirtual(path);
            if (imp == null) { System.out.println("FAILED " + path); continue; }
            ImageStack stack = imp.getStack();
            int first = mode.equals("last") ? stack.getSize() : 1;
            double sum = 0;
            for (int i = first; i <= stack.getSize(); i++) {
                ImageProcessor ip = stack.getProcessor(i);
                for (int k = 0, n = ip.getPixelCount(); k < n; k++) sum += ip.getf(k);
            }
            Calibration c = imp.getCalibration();
            System.out.println("OPENED " + path + " width=" + imp.getWidth() + " height=" + imp.getHeight()
                + " slices=" + imp.getStackSize() + " bitDepth=" + imp.getBitDepth() + " unit=" + c.getUnit()
                + " pw=" + c.pixelWidth + " ph=" + c.pixelHeight + " pd=" + c.pixelDepth
                + " min=" + imp.getDisplayRangeMin() + " max=" + imp.getDisplayRangeMax()
                + " sum=" + String.format("%.1f", sum));
        }
    }
}
"""


def imagej(tmp_path, *targets) -> dict[str, dict]:
    """Run the probe on ("open"|"virtual"|"last", path) targets; {path: {key: value}}."""
    _need(os.path.exists(IJ_JAR) and shutil.which("java"), "ImageJ (libij-java) and java")
    src = tmp_path / "IjProbe.java"
    src.write_text(PROBE)
    done = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", IJ_JAR, str(src),
                           *[f"{mode}:{path}" for mode, path in targets]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = {}
    for line in done.stdout.splitlines():
        m = re.match(r"OPENED (\S+) (.*)$", line)
        assert m, f"ImageJ could not open a file: {line}\n{done.stderr}"
        out[m.group(1)] = dict(kv.split("=", 1) for kv in m.group(2).split())
    assert len(out) == len(targets), done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("fiji")
    backend = build_store(root / "store")
    info = backend.create_volume("extra/big", BIG, "uint16", voxel_size_nm=(40, 8, 8), levels=1,
                                 chunk_shape=(16, 512, 512))  # unwritten chunks read as zeros
    backend.write("extra/big", Box((BIG[0] - 1, 0, 0), (BIG[0], 10, BIG[2])), 0,
                  np.full((1, 10, BIG[2]), 7, np.uint16))
    assert info.levels[0].box.size * 2 > 2**32
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(root / "ndfs.toml", root / "mnt"):
        yield root / "mnt" / "local", backend


def close(got: dict, **want):
    for key, value in want.items():
        if isinstance(value, str):
            assert got[key] == value, (key, got)
        else:
            assert float(got[key]) == pytest.approx(value, rel=1e-9), (key, got)


def test_imagej_opens_slices_stacks_and_label_views_with_calibration(site, tmp_path):
    mnt, backend = site
    em, em16, cells = (store_array(backend, r) for r in ("demo/em", "extra/em16", "demo/cells"))
    coarse16 = store_array(backend, "extra/em16", 1)
    p = {
        "em_z": mnt / "demo/em/0/z/5.tif", "em_y": mnt / "demo/em/0/y/7.tif",
        "em_stack": mnt / "demo/em/0/stack.tif", "em1_stack": mnt / "demo/em/1/stack.tif",
        "em16_z": mnt / "extra/em16/0/z/9.tif", "em16_stack": mnt / "extra/em16/0/stack.tif",
        "l16_z": mnt / "demo/cells/0/labels16/z/6.tif", "l16_stack": mnt / "demo/cells/0/labels16/stack.tif",
        "l32_x": mnt / "demo/cells/0/labels32/x/40.tif", "lm": mnt / "extra/lm/0/stack.tif",
        "em_png": mnt / "demo/em/0/z/5.png", "em16_png": mnt / "extra/em16/0/y/20.png",
    }
    got = {k: v for k, v in zip(p, imagej(tmp_path, *[("open", str(v)) for v in p.values()]).values())}
    nm = dict(unit="nm", pw=4.0, ph=4.0, pd=40.0)
    close(got["em_z"], width=100, height=120, slices=1, bitDepth=8, sum=em[5].sum(), **nm)
    close(got["em_y"], width=100, height=16, slices=1, bitDepth=8, unit="nm", pw=4.0, ph=40.0, pd=4.0,
          sum=em[:, 7].sum())
    close(got["em_stack"], width=100, height=120, slices=16, bitDepth=8, sum=em.sum(), **nm)
    close(got["em1_stack"], width=50, height=60, slices=16, bitDepth=8, unit="nm", pw=8.0, ph=8.0, pd=40.0,
          sum=store_array(backend, "demo/em", 1).sum())
    rng16 = dict(min=coarse16.min(), max=coarse16.max())  # 16-bit: the display range is in the file
    close(got["em16_z"], width=70, height=90, slices=1, bitDepth=16, unit="nm", pw=4.0, ph=4.0, pd=30.0,
          sum=em16[9 - 3].sum(), **rng16)
    close(got["em16_stack"], width=70, height=90, slices=12, bitDepth=16, pd=30.0, sum=em16.sum(), **rng16)
    # label views: ImageJ's pixels, mapped back through the table beside the file, are the store
    lut = parse_lut((mnt / "demo/cells/0/labels16/z/6.csv").read_bytes())
    labels = np.searchsorted(lut, cells[6])  # lut is sorted: background 0, then ids ascending
    assert np.array_equal(lut[labels], cells[6])
    close(got["l16_z"], width=100, height=120, slices=1, bitDepth=16, sum=labels.sum(), min=0,
          max=len(lut) - 1, **nm)
    lut = parse_lut((mnt / "demo/cells/0/labels16/stack.csv").read_bytes())
    close(got["l16_stack"], slices=16, bitDepth=16, sum=np.searchsorted(lut, cells).sum(), max=len(lut) - 1)
    lut = parse_lut((mnt / "demo/cells/0/labels32/x/40.csv").read_bytes())
    close(got["l32_x"], width=120, height=16, bitDepth=32, sum=np.searchsorted(lut, cells[:, :, 40]).sum(),
          pw=4.0, ph=40.0)
    close(got["lm"], slices=4, unit="micron", pw=0.25, ph=0.25, pd=1.0,
          sum=store_array(backend, "extra/lm").sum())
    close(got["em_png"], width=100, height=120, bitDepth=8, sum=em[5].sum())
    close(got["em16_png"], width=70, height=12, bitDepth=16, sum=em16[:, 20 - 5].sum())


def test_a_stack_past_4_gib_opens_in_imagej_tifffile_and_numpy(site, tmp_path):
    mnt, _ = site
    path = mnt / "extra/big/0/stack.tif"
    size = os.stat(path).st_size
    assert size > 2**32
    got = imagej(tmp_path, ("last", str(path)))[str(path)]
    close(got, width=2048, height=2048, slices=520, bitDepth=16, unit="nm", pw=8.0, pd=40.0, sum=7 * 10 * 2048)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej and len(tf.pages) == 1  # the single-IFD ImageJ layout
        assert tf.series[0].shape == BIG and tf.series[0].dtype == np.uint16
    m = tifffile.memmap(path, mode="r")
    assert m.shape == BIG and m[-1, :10].tolist() == [[7] * 2048] * 10 and m[-1, 10:12].sum() == 0
    del m
    v = np.load(mnt / "extra/big/0/volume.npy", mmap_mode="r")
    assert v.shape == BIG and v[-1, 9, -5:].tolist() == [7] * 5 and v[0, :4, :4].sum() == 0
    del v


def test_tiffinfo_gdal_and_imagemagick_accept_the_slices(site):
    mnt, backend = site
    _need(all(shutil.which(t) for t in ("tiffinfo", "gdalinfo", "identify")),
          "tiffinfo (libtiff-tools), gdalinfo (gdal-bin) or identify (imagemagick)")
    em, em16, cells = (store_array(backend, r) for r in ("demo/em", "extra/em16", "demo/cells"))
    lut = parse_lut((mnt / "demo/cells/0/labels16/z/6.csv").read_bytes())
    cases = [  # TIFF, its PNG twin, width, height, bits, GDAL type, the plane
        ("demo/em/0/z/5.tif", "demo/em/0/z/5.png", 100, 120, 8, "Byte", em[5]),
        ("extra/em16/0/z/9.tif", "extra/em16/0/z/9.png", 70, 90, 16, "UInt16", em16[6]),
        ("extra/em16/0/x/7.tif", "extra/em16/0/x/7.png", 90, 12, 16, "UInt16", em16[:, :, 0]),
        ("demo/cells/0/labels16/z/6.tif", "demo/cells/0/z/6.png", 100, 120, 16, "UInt16",
         np.searchsorted(lut, cells[6])),
        ("demo/cells/0/z/6.tif", None, 100, 120, 64, "UInt64", cells[6]),
    ]
    for name, png, w, h, bits, gdal_type, plane in cases:
        path = mnt / name
        done = subprocess.run(["tiffinfo", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
        assert f"Image Width: {w} Image Length: {h}" in done.stdout and f"Bits/Sample: {bits}" in done.stdout
        done = subprocess.run(["gdalinfo", "-mm", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
        assert f"Size is {w}, {h}" in done.stdout and f"Type={gdal_type}" in done.stdout
        assert f"Computed Min/Max={plane.min():.3f},{plane.max():.3f}" in done.stdout
        if bits == 64:
            continue  # ImageMagick 6 refuses 64-bit samples ("unsupported bits per pixel"); GDAL and tifffile read them
        top = 2**bits - 1
        for f in (path, mnt / png):
            done = subprocess.run(["identify", "-format", "%w %h %z %[fx:minima] %[fx:maxima]", str(f)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and done.stderr == "", done.stderr
            iw, ih, depth, lo, hi = done.stdout.split()
            assert (int(iw), int(ih), int(depth)) == (w, h, bits)
            assert float(lo) == pytest.approx(plane.min() / top, abs=1e-5)
            assert float(hi) == pytest.approx(plane.max() / top, abs=1e-5)
