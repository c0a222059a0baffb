"""Decoders of untrusted bytes read only the bytes they are given, and their work and memory stay within
what the caller expects (``ndfs.formats.safe``).

Everything goes through the real thing: ``ndfs serve`` processes (NeuroData, BOSS, DVID) on 127.0.0.1
and a real mount, over one reference store that is hashed before and after every refusal. The HDF5
files reach out each way HDF5 allows: external storage pointing at a secret file, an external link
and a virtual dataset into another file, and a filter HDF5 does not know, with a real plugin library
in ``HDF5_PLUGIN_PATH`` that leaves a marker file if it is ever loaded. The bombs declare far more
than their box: npy headers, zip members, TIFF dimensions and strips, blosc frames, LZ4 blocks, PNG
headers, deeply nested JSON and integers of thousands of digits; each is refused quickly, with a
message, and the serving process's peak memory (VmHWM) barely moves.
"""

import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import requests

from ndfs.tools import convert

from ndfs import ramon
from ndfs.stores.local import LocalBackend
from ndfs.stores.neurodata import NeuroDataBackend
from ndfs.core.errors import BadInput, NdfsError
from ndfs.serve.common import WsgiServer
from ndfs.serve.neurodata import NeuroDataApp
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.reference import build_reference_store
from ndfs.testing.serve import memory, served

needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
SECRET = (b"NDFS-DECODER-SECRET-0123456789/" * 3)[:64]  # 4 x 4 x 4 uint8 voxels, if it were ever read
BOX_ND = "7,11/5,9/3,7"  # x, y, z of the box every HDF5 post targets (inside every reference channel)
BOX_NAME = "7-11_5-9_3-7"
KINDS = ("external storage", "external link", "virtual dataset", "plugin filter")
WORDS = {"external storage": "external storage", "external link": "external link",
         "virtual dataset": "virtual dataset", "plugin filter": "filter 32123"}
MiB = 2**20
PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void ndfs_probe_loaded(void) {
    const char *path = getenv("NDFS_TEST_PLUGIN_MARKER");
    if (path) { FILE *f = fopen(path, "w"); if (f) { fputs("loaded\n", f); fclose(f); } }
}
"""


# ---- the site: a store, a secret, another HDF5 file, a plugin library -------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    build_reference_store(root / "ndfs")
    (root / "secret.txt").write_bytes(SECRET)
    with h5py.File(root / "other.h5", "w") as f:
        f["x"] = np.frombuffer(SECRET, np.uint8).reshape(4, 4, 4)
    plugins = root / "plugins"
    plugins.mkdir()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:  # a library HDF5 would load while searching HDF5_PLUGIN_PATH for an unknown filter
        (plugins / "probe.c").write_text(PROBE_C)
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(plugins / "libndfs_probe.so"),
                        str(plugins / "probe.c")], check=True, capture_output=True)
    (root / "ndfs.toml").write_text(f'[remotes.local]\nkind = "local"\npath = "{root / "ndfs"}"\n')
    # this process makes files that use the unknown filter: HDF5 reads its plugin path once, at the first
    # search, so search now, before the path is put in the environment for the daemons and servers
    h5py.h5z.filter_avail(32123)
    env = {"HDF5_PLUGIN_PATH": str(plugins), "NDFS_TEST_PLUGIN_MARKER": str(root / "plugin-loaded")}
    return SimpleNamespace(root=root, store=root / "ndfs", secret=root / "secret.txt", other=root / "other.h5",
                           marker=root / "plugin-loaded", probe=bool(compiler), env=env)


@pytest.fixture(scope="module")
def nd(site):
    with served("neurodata", site.store, env={**os.environ, **site.env}) as srv:
        yield srv


@pytest.fixture(scope="module")
def mnt(site):
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    saved = {k: os.environ.get(k) for k in site.env}
    os.environ.update(site.env)  # the daemon inherits them: the plugin is in its search path too
    try:
        with mounted(site.root / "ndfs.toml", site.root / "mnt", "--log-file", site.root / "mount.log") as pid:
            yield SimpleNamespace(conf=site.root / "mnt" / "local" / "conf", pid=pid, log=site.root / "mount.log")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def digest(root: Path) -> str:
    """One hash over the store: every zarr file (names and bytes) and every RAMON object (as data; the
    SQLite files themselves change under a reader). Equal digests = the same voxels and objects."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".sqlite" not in p.name):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    backend = LocalBackend(root)
    for ref in (("conf", "labels"),):
        ids = backend.ramon_ids(ref)
        h.update(json.dumps(ids).encode())
        h.update("".join(o.to_json() for o in backend.ramon_get(ref, ids)).encode() if ids else b"")
    return h.hexdigest()


def assert_untouched(site, before: str) -> None:
    assert digest(site.store) == before, "the store changed"
    for path in site.store.rglob("*"):
        if path.is_file() and ".sqlite-" not in path.name:
            assert SECRET[:24] not in path.read_bytes(), f"the secret reached {path}"
    assert not site.marker.exists(), "HDF5 loaded a plugin library"
    box = LocalBackend(site.store).read(("conf", "scratch"), _box(), 0)
    assert box.tobytes() != SECRET


def _box():
    from ndfs.core.geometry import Box

    return Box((3, 5, 7), (7, 9, 11))


def peak_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MiB."""
    return memory(pid)["VmHWM"] / (1 << 20)


# ---- HDF5 that reaches outside itself ---------------------------------------------------------------
def reaching_out(kind: str, site, path: str, extra=None) -> bytes:
    """An HDF5 file whose dataset at ``path`` (4 x 4 x 4 uint8) reaches outside the file as ``kind`` says."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        parent = path.rpartition("/")[0]
        if parent:
            f.require_group(parent)
        if kind == "external storage":
            f.create_dataset(path, shape=(4, 4, 4), dtype=np.uint8, external=[(str(site.secret), 0, 64)])
        elif kind == "external link":
            f[path] = h5py.ExternalLink(str(site.other), "/x")
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(4, 4, 4), dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(site.other), "x", shape=(4, 4, 4))
            f.create_virtual_dataset(path, layout)
        elif kind == "plugin filter":  # the chunk needs the filter (mask 0): reading it makes HDF5 look for one
            ds = f.create_dataset(path, shape=(4, 4, 4), dtype=np.uint8, chunks=(4, 4, 4), compression=32123,
                                  allow_unknown_filter=True)
            ds.id.write_direct_chunk((0, 0, 0), SECRET, filter_mask=0)
        if extra:
            extra(f)
    return buf.getvalue()


def test_the_reaching_out_files_do_reach_out_when_read_without_the_safe_decoders(site, tmp_path):
    """The fixtures are real: plain h5py reads the secret through each of them (links and virtual datasets
    when the file is opened by name, as an import does) and loads the plugin library."""
    for kind in ("external storage", "external link", "virtual dataset"):
        path = tmp_path / f"{kind}.h5"
        path.write_bytes(reaching_out(kind, site, "data"))
        with h5py.File(path, "r") as f:
            assert f["data"][()].tobytes() == SECRET, kind
    with h5py.File(io.BytesIO(reaching_out("external storage", site, "data")), "r") as f:
        assert f["data"][()].tobytes() == SECRET  # also from bytes in memory, as a server holds a body
    if not site.probe:
        pytest.skip("no C compiler for the plugin probe")
    marker = tmp_path / "loaded"
    code = ("import h5py, io, sys\n"
            "f = h5py.File(io.BytesIO(sys.stdin.buffer.read()), 'r')\n"
            "try:\n    f['data'][()]\nexcept OSError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], input=reaching_out("plugin filter", site, "data"),
                          env={**os.environ, **site.env, "NDFS_TEST_PLUGIN_MARKER": str(marker)},
                          capture_output=True, timeout=60)
    assert marker.exists(), done.stdout + done.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_load_and_ndfs_import_refuse_an_hdf5_file_that_reaches_outside_it(site, tmp_path, kind):
    path = tmp_path / "cutout.h5"
    path.write_bytes(reaching_out(kind, site, "volume"))
    with pytest.raises(BadInput, match=WORDS[kind]):
        convert.load(path)
    before = digest(site.store)
    done = subprocess.run([sys.executable, "-m", "ndfs", "--config", str(site.root / "ndfs.toml"), "import",
                           str(path), "local/conf/scratch", "--at", "7,5,3"], capture_output=True, text=True,
                          env={**os.environ, **site.env}, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("ndfs: error:") and WORDS[kind] in done.stderr, done.stderr
    assert_untouched(site, before)


@pytest.mark.parametrize("kind", KINDS)
def test_the_neurodata_server_refuses_an_hdf5_cutout_that_reaches_outside_it(site, nd, kind):
    before = digest(site.store)
    body = reaching_out(kind, site, "scratch/CUTOUT")
    resp = requests.post(f"{nd.url}/nd/sd/conf/scratch/hdf5/0/{BOX_ND}/", data=body, timeout=30)
    assert 400 <= resp.status_code < 500 and WORDS[kind] in resp.text, (resp.status_code, resp.text)
    assert_untouched(site, before)
    again = requests.get(f"{nd.url}/nd/sd/conf/scratch/npz/0/{BOX_ND}/", timeout=30)
    assert again.status_code == 200  # the server goes on serving


@pytest.mark.parametrize("kind", KINDS)
def test_the_neurodata_server_refuses_a_ramon_hdf5_object_whose_cutout_reaches_outside(site, nd, kind):
    def legacy_object(f):
        g = f["77"]
        g["ANNOTATION_TYPE"] = np.array([1], np.uint32)
        g["RESOLUTION"] = np.array([0], np.uint32)
        g["XYZOFFSET"] = np.array([7, 5, 3], np.uint32)

    before = digest(site.store)
    body = reaching_out(kind, site, "77/CUTOUT", extra=legacy_object)
    resp = requests.post(f"{nd.url}/nd/sd/conf/labels/overwrite/", data=body, timeout=30)
    assert 400 <= resp.status_code < 500 and WORDS[kind] in resp.text, (resp.status_code, resp.text)
    assert_untouched(site, before)
    assert requests.get(f"{nd.url}/nd/sd/conf/labels/77/json/", timeout=30).status_code == 404


@needs_fuse
@pytest.mark.parametrize("kind", KINDS)
def test_the_mount_refuses_a_cutout_h5_that_reaches_outside_it(site, mnt, kind):
    before = digest(site.store)
    fh = open(mnt.conf / "scratch" / "0" / "cutout" / f"{BOX_NAME}.h5", "wb")
    fh.write(reaching_out(kind, site, "data"))
    with pytest.raises(OSError) as caught:
        fh.close()
    assert caught.value.errno == errno.EINVAL
    assert_untouched(site, before)
    assert WORDS[kind] in mnt.log.read_text()


def test_the_driver_refuses_an_hdf5_answer_that_reaches_outside_it(site):
    """A hostile NeuroData server whose query answer keeps ANNOIDS in external storage (the secret)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("ANNOIDS", shape=(16,), dtype=np.uint32, external=[(str(site.secret), 0, 64)])
    answer = buf.getvalue()

    class Hostile:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            if "/query/" not in environ["PATH_INFO"]:
                return self.app(environ, start_response)
            start_response("200 OK", [("Content-Type", "product/hdf5"), ("Content-Length", str(len(answer)))])
            return [answer]

    with WsgiServer(Hostile(NeuroDataApp(LocalBackend(site.store)))) as srv:
        with NeuroDataBackend(srv.url, retries=0) as driver:
            with pytest.raises(NdfsError, match="external storage") as caught:
                driver.ramon_ids(("conf", "labels"))
    assert caught.value.errno in (errno.EINVAL, errno.EIO)


# ---- npy, npz and zip bombs --------------------------------------------------------------------------
def npy_header(shape, descr="|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


HUGE = (100_000, 100_000, 100_000)  # 10^15 bytes declared


def test_the_neurodata_server_refuses_an_npy_header_declaring_a_huge_shape(site, nd):
    before, peak = digest(site.store), peak_mib(nd.proc.pid)
    body = zlib.compress(npy_header((1,) + HUGE) + bytes(64))
    started = time.monotonic()
    resp = requests.post(f"{nd.url}/nd/sd/conf/scratch/npz/0/{BOX_ND}/", data=body, timeout=30)
    assert time.monotonic() - started < 5
    assert resp.status_code == 404 and "declares" in resp.text, (resp.status_code, resp.text)
    assert peak_mib(nd.proc.pid) - peak < 64
    assert_untouched(site, before)


@needs_fuse
def test_the_mount_refuses_an_npy_header_declaring_a_huge_shape(site, mnt):
    before, peak = digest(site.store), peak_mib(mnt.pid)
    fh = open(mnt.conf / "scratch" / "0" / "cutout" / f"{BOX_NAME}.npy", "wb")
    fh.write(npy_header(HUGE) + bytes(64))
    with pytest.raises(OSError) as caught:
        fh.close()
    assert caught.value.errno == errno.EINVAL
    assert peak_mib(mnt.pid) - peak < 64
    assert_untouched(site, before)
    assert "100000x100000x100000" in mnt.log.read_text()


@pytest.fixture(scope="module")
def zip_bomb():
    """An npz whose one member is an .npy of 512 MiB of zeros, deflated to about half a MiB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("data.npy", "w", force_zip64=True) as member:
            member.write(npy_header((512, 1024, 1024)))
            zeros = bytes(MiB)
            for _ in range(512):
                member.write(zeros)
    assert len(buf.getvalue()) < 2 * MiB
    return buf.getvalue()


@needs_fuse
def test_the_mount_refuses_an_npz_zip_bomb_without_inflating_it(site, mnt, zip_bomb):
    before, peak = digest(site.store), peak_mib(mnt.pid)
    started = time.monotonic()
    fh = open(mnt.conf / "scratch" / "0" / "cutout" / f"{BOX_NAME}.npz", "wb")
    fh.write(zip_bomb)
    with pytest.raises(OSError) as caught:
        fh.close()
    assert caught.value.errno == errno.EINVAL and time.monotonic() - started < 10
    assert peak_mib(mnt.pid) - peak < 64  # inflating it would take 512
    assert_untouched(site, before)
    assert "declares 536871040 bytes" in mnt.log.read_text()


# ---- TIFF --------------------------------------------------------------------------------------------
def tiff(width: int, height: int, strip: bytes, compression: int = 8, description: str | None = None) -> bytes:
    """A classic little-endian greyscale 8-bit TIFF: one IFD, one strip, built by hand so it can lie."""
    short = lambda tag, v: struct.pack("<HHIHH", tag, 3, 1, v, 0)  # noqa: E731
    long_ = lambda tag, v: struct.pack("<HHII", tag, 4, 1, v)  # noqa: E731
    strip = strip + b"\0" * (len(strip) % 2)
    text = b"" if description is None else description.encode() + b"\0"
    text += b"\0" * (len(text) % 2)
    entries = [long_(256, width), long_(257, height), short(258, 8), short(259, compression), short(262, 1)]
    if text:
        entries.append(struct.pack("<HHII", 270, 2, len(text), 8 + len(strip)))
    entries += [long_(273, 8), short(277, 1), long_(278, height), long_(279, len(strip))]
    return (b"II*\0" + struct.pack("<I", 8 + len(strip) + len(text)) + strip + text
            + struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0))


def test_the_hand_made_tiff_is_a_tiff_tifffile_reads():
    import tifffile

    plane = np.arange(70 * 90, dtype=np.uint8).reshape(70, 90)
    assert (tifffile.imread(io.BytesIO(tiff(90, 70, zlib.compress(plane.tobytes())))) == plane).all()


def test_an_imagej_stack_in_one_ifd_is_read_plane_by_plane_from_inside_the_file(tmp_path):
    """ImageJ's layout past 4 GiB: one IFD, every plane after the first; reading stays inside the file."""
    planes = np.arange(3 * 70 * 90, dtype=np.uint8).reshape(3, 70, 90)
    path = tmp_path / "stack.tif"
    data = bytearray(tiff(90, 70, planes.tobytes(), compression=1, description="ImageJ=1.53t\nimages=3\nslices=3\n"))
    struct.pack_into("<I", data, len(data) - 8, 90 * 70)  # StripByteCounts, the last tag: the first plane only
    path.write_bytes(bytes(data))
    assert (convert.load(path) == planes).all()
    path.write_bytes(bytes(data).replace(b"images=3", b"images=9"))  # more planes than the file holds
    with pytest.raises(BadInput, match="ends before"):
        convert.load(path)


@needs_fuse
@pytest.mark.parametrize("what", ["huge dimensions", "a strip that inflates to 256 MiB"])
def test_the_mount_refuses_a_tiff_declaring_more_than_its_plane(site, mnt, what):
    if what == "huge dimensions":  # 10^10 pixels declared, 1000 bytes of data
        data = tiff(100_000, 100_000, zlib.compress(bytes(1000)))
    else:  # the right 90 x 70 plane, whose one strip is a deflate bomb
        packer = zlib.compressobj(9)
        bomb = b"".join([packer.compress(bytes(MiB)) for _ in range(256)] + [packer.flush()])
        data = tiff(90, 70, bomb)
    before, peak = digest(site.store), peak_mib(mnt.pid)
    started = time.monotonic()
    fh = open(mnt.conf / "scratch" / "0" / "z" / "4.tif", "wb")
    fh.write(data)
    with pytest.raises(OSError) as caught:
        fh.close()
    assert caught.value.errno == errno.EINVAL and time.monotonic() - started < 10
    assert peak_mib(mnt.pid) - peak < 64
    assert_untouched(site, before)
    assert ("100000x100000" if what == "huge dimensions" else "inflates past") in mnt.log.read_text()


# ---- blosc, LZ4, PNG ---------------------------------------------------------------------------------
def test_the_boss_server_refuses_blosc_frames_declaring_another_size(site):
    from ndfs.stores.boss import blosc_encode

    frame = bytearray(blosc_encode(np.ones((4, 4, 4), np.uint8)))
    huge = bytearray(frame)
    struct.pack_into("<I", huge, 4, 2**31)  # the header says 2 GiB
    odd = bytearray(frame)
    struct.pack_into("<I", odd, 8, 2**30)  # a block size past the frame's own size
    before = digest(site.store)
    with served("boss", site.root) as srv:
        url = f"{srv.url}/v1/cutout/ndfs/conf/scratch/0/7:11/5:9/3:7/"
        headers = {"Content-Type": "application/blosc"}
        resp = requests.post(url, data=bytes(huge), headers=headers, timeout=30)
        assert (resp.status_code, resp.json()["code"]) == (400, 2002) and "2147483648" in resp.text
        resp = requests.post(url, data=bytes(odd), headers=headers, timeout=30)
        assert (resp.status_code, resp.json()["code"]) == (400, 2001) and "block size" in resp.text
    assert_untouched(site, before)


def test_the_dvid_server_refuses_an_lz4_block_that_inflates_past_its_box(site):
    import lz4.block

    bomb = lz4.block.compress(bytes(256 * MiB), store_size=False)  # a 32^3 uint64 box is 256 KiB
    assert len(bomb) < 2 * MiB
    before = digest(site.store)
    with served("dvid", site.store) as srv:
        uuid = next(iter(requests.get(f"{srv.url}/api/repos/info", timeout=10).json()))
        peak = peak_mib(srv.proc.pid)
        started = time.monotonic()
        resp = requests.post(f"{srv.url}/api/node/{uuid}/labels/raw/0_1_2/32_32_32/0_0_0",
                             params={"compression": "lz4"}, data=bomb, timeout=30)
        assert time.monotonic() - started < 5
        assert resp.status_code == 400 and "LZ4" in resp.text, resp.text
        assert peak_mib(srv.proc.pid) - peak < 64
    assert_untouched(site, before)


def png(width: int, height: int, idat: bytes, depth: int = 8) -> bytes:
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_png_bomb_is_refused_by_load_and_by_ndfs_import_before_it_is_decoded(site, tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    # 9000 x 9000 16-bit: 162 MB declared in a file of about a hundred bytes (under Pillow's own bomb limits)
    (slices / "0003.png").write_bytes(png(9_000, 9_000, zlib.compress(bytes(18_001 * 4)), depth=16))
    with pytest.raises(BadInput, match="declares 9000x9000 pixels"):
        convert.load(slices)
    before = digest(site.store)
    started = time.monotonic()
    # the CLI in a child that reports its own peak memory (VmHWM: this process image only; a child's
    # ru_maxrss would also count the test process it was forked from)
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))\n"
            "from ndfs.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "--config", str(site.root / "ndfs.toml"), "import",
                           str(slices) + "/", "local/conf/scratch"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 30
    err = done.stderr
    assert err.startswith("ndfs: error:") and "declares 9000x9000 pixels" in err and len(err.splitlines()) == 1
    assert int(done.stdout.split()[-1]) / 1024 < 100  # MiB: about 35 to refuse it; decoding it takes 162 more
    assert_untouched(site, before)


# ---- JSON --------------------------------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = '{"77": {"type": "generic", "metadata": {"status": ' + "9" * 10_000 + "}}}"


def test_the_neurodata_server_refuses_deep_json_and_giant_integers_with_a_message(site, nd):
    before = digest(site.store)
    url = f"{nd.url}/nd/sd/conf/labels/json/"
    deep = requests.post(url, data=DEEP, timeout=30)
    assert deep.status_code == 404 and "nested too deeply" in deep.text, (deep.status_code, deep.text)
    digits = requests.post(url, data=DIGITS, timeout=30)
    assert digits.status_code == 404 and "at most 40 digits" in digits.text, (digits.status_code, digits.text)
    assert_untouched(site, before)


def test_the_boss_and_dvid_servers_refuse_deep_json_with_a_400(site):
    with served("boss", site.root) as boss:
        resp = requests.post(f"{boss.url}/v1/collection/fresh/", data=DEEP, timeout=30)
        assert resp.status_code == 400 and "nested too deeply" in resp.json()["message"], resp.text
        resp = requests.post(f"{boss.url}/v1/collection/fresh/", data='{"description": ' + "7" * 5000 + "}",
                             timeout=30)
        assert resp.status_code == 400 and "digits" in resp.json()["message"], resp.text
    with served("dvid", site.store) as dvid:
        resp = requests.post(f"{dvid.url}/api/repos", data=DEEP, timeout=30)
        assert resp.status_code == 400 and "nested too deeply" in resp.text, resp.text


@needs_fuse
def test_the_mount_refuses_ramon_json_too_large_deep_or_with_giant_integers(site, mnt):
    before = digest(site.store)
    new = mnt.conf / "labels" / "ramon" / "4242.json"
    big = json.dumps({"type": "generic", "kvpairs": {"pad": "x" * (17 * MiB)}})
    for text, code in [(big, errno.EFBIG), (DEEP, errno.EINVAL),
                       ('{"type": "generic", "status": ' + "9" * 10_000 + "}", errno.EINVAL)]:
        with pytest.raises(OSError) as caught:  # EFBIG comes from write() as soon as the file is too big
            with open(new, "w") as fh:
                fh.write(text)
        assert caught.value.errno == code, (text[:40], caught.value)
    assert_untouched(site, before)
    assert 4242 not in LocalBackend(site.store).ramon_ids(("conf", "labels"))
    log = mnt.log.read_text()
    assert "at most 16777216" in log and "nested too deeply" in log and "at most 40 digits" in log, log[-2000:]


def test_ramon_json_readers_name_the_bound_they_hit():
    with pytest.raises(ramon.InvalidAnnotation, match="at most 40 digits"):
        ramon.from_json('{"type": "segment", "id": ' + "9" * 2000 + "}")  # under Python's own 4300-digit limit
    with pytest.raises(ramon.InvalidAnnotation, match="nested too deeply"):
        ramon.from_legacy("[" * 65 + "]" * 65)
