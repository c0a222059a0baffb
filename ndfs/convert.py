"""Export volumes and cutouts to common files, and read them back: npz, hdf5, png, multipage tiff.

``export(source, path)`` writes a numpy array, a :class:`~ndfs.volume.Volume`
or a box of one; ``load(path)`` reads a file back as a ZYX array,
``file_info(path)`` tells its shape, dtype, voxel size and offset, and
``import_file(path, volume)`` writes a file into a channel. The format comes
from the suffix (``.npz``, ``.h5``/``.hdf5``, ``.tif``/``.tiff``) or
``format=``; png is a directory of slices (a path ending in ``/``, an
existing directory, or ``format="png"``).

What each file holds (voxel size in nm and offset ZYX, so an import puts the
data back where it came from):

* **npz**: ``volume`` (Z, Y, X), ``voxel_size_nm`` (3,), ``offset`` (3,);
  deflate-compressed like ``numpy.savez_compressed``; ``numpy.load`` reads it.
* **hdf5**: dataset ``volume`` (Z, Y, X), chunked, gzip + shuffle, with
  attributes ``voxel_size_nm``, ``offset``, ``axes = "zyx"`` and
  ``element_size_um`` (what Fiji's HDF5 plugin reads). Any HDF5 file with a
  single 3-D dataset imports.
* **tiff**: one page per z. uint8, uint16 and float32 are ImageJ hyperstacks
  (``spacing``/``unit=nm`` and x/y resolution, so Fiji shows the voxel size);
  other dtypes (uint64 labels) are plain multipage TIFFs with the same facts
  in tifffile's JSON description. BigTIFF past 4 GiB.
* **png**: ``<z>.png`` per slice, z in dataset coordinates zero-padded to one
  width, 8- or 16-bit grayscale only, plus ``volume.json`` (shape, dtype,
  voxel size, offset).

Exports stream: slabs of at most ``slab_bytes`` (or one plane, if larger)
are read in z order, the next one while the current one is written, so
memory stays at about two slabs. A file appears only when complete (written
under ``NAME.part``, then renamed); a failed export leaves nothing behind.
Imports stream the same way. h5py (hdf5) and Pillow (png) are imported when
used (``pip install 'ndfs[export]'``). Functions here are thread-safe.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ndfs.errors import BackendError, BadInput, BadRegion, MissingExtra, NdfsError
from ndfs.geometry import Box

__all__ = ["FORMATS", "FileInfo", "export", "load", "file_info", "open_file", "import_file", "format_of"]

MiB = 2**20
FORMATS = ("npz", "hdf5", "tiff", "png")
SUFFIXES = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".tif": "tiff", ".tiff": "tiff"}
IMAGEJ_DTYPES = ("uint8", "uint16", "float32")
PNG_DTYPES = ("uint8", "uint16")
PNG_META = "volume.json"


@dataclass(frozen=True)
class FileInfo:
    """What a volume file holds: format, ZYX shape, dtype, voxel size (nm, ZYX) and offset (None if unknown)."""

    format: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: tuple[float, float, float] | None = None
    offset: tuple[int, int, int] | None = None


def format_of(path, format: str | None = None) -> str:
    """The format named by ``format`` or told by the path."""
    if format is not None:
        f = {"h5": "hdf5", "hdf": "hdf5", "tif": "tiff"}.get(format.lower(), format.lower())
        if f not in FORMATS:
            raise BadRegion(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        return f
    text = os.fspath(path)
    p = Path(text)
    if p.suffix.lower() in SUFFIXES:
        return SUFFIXES[p.suffix.lower()]
    if text.endswith(("/", os.sep)) or p.is_dir():
        return "png"
    raise BadRegion(f"cannot tell the format of {text!r} from its name: end it in .npz, .h5, .tif or '/' "
                    f"(a png directory), or give format=")


# ---- sources ---------------------------------------------------------------------
class _Source:
    """What an export reads: shape, dtype, voxel size, offset, and boxes relative to its first voxel."""

    def __init__(self, source, box: Box | None, voxel_size_nm, offset):
        from ndfs.volume import Volume

        if isinstance(source, Volume):
            self.volume = source
            self.box = source.box if box is None else box
            if not source.box.contains(self.box):
                raise BadRegion(f"box {self.box} is outside the volume {source.box}")
            self.array = None
            self.dtype = source.dtype
            vs = source.voxel_size_nm if voxel_size_nm is None else voxel_size_nm
            self.offset = tuple(self.box.start) if offset is None else tuple(int(o) for o in offset)
            self.chunk_z = source.level_info.chunk_shape[0]
        else:
            arr = np.asarray(source)
            if arr.ndim == 2:
                arr = arr[np.newaxis]
            if arr.ndim != 3:
                raise BadRegion(f"export takes a 2-D or 3-D array or a Volume, got {arr.ndim}-D")
            if box is not None:
                arr = arr[box.slices((0, 0, 0))]
            self.volume, self.array, self.dtype = None, arr, arr.dtype
            self.box = Box.from_shape(arr.shape)
            vs = voxel_size_nm
            self.offset = (0, 0, 0) if offset is None else tuple(int(o) for o in offset)
            self.chunk_z = 16
        if self.dtype.kind not in "uif" or self.dtype.byteorder == ">":
            raise BadRegion(f"cannot export {self.dtype} data: integer or float voxels only")
        self.voxel_size_nm = None if vs is None else tuple(float(v) for v in vs)
        if self.voxel_size_nm is not None and (len(self.voxel_size_nm) != 3 or min(self.voxel_size_nm) <= 0):
            raise BadRegion(f"voxel_size_nm must be three positive numbers (z, y, x), got {vs}")
        if len(self.offset) != 3:
            raise BadRegion(f"offset must be (z, y, x), got {offset}")
        self.shape = self.box.shape

    def read(self, rel: Box) -> np.ndarray:
        if self.array is not None:
            return self.array[rel.slices((0, 0, 0))]
        return self.volume.read(rel.translate(self.box.start))


def _slabs(shape, itemsize: int, slab_bytes: int, chunk_z: int) -> list[Box]:
    """Whole-plane z slabs of at most slab_bytes (at least one plane), aligned to chunk_z when deeper."""
    plane = shape[1] * shape[2] * itemsize
    depth = max(1, min(shape[0], slab_bytes // max(1, plane)))
    if depth >= chunk_z:
        depth -= depth % chunk_z
    return [Box((z, 0, 0), (min(z + depth, shape[0]), shape[1], shape[2])) for z in range(0, shape[0], depth)]


def _stream(read, boxes: Sequence[Box], bar) -> Iterator[tuple[Box, np.ndarray]]:
    """(box, array) in order; the next box is read on a helper thread while the caller writes this one."""
    if not boxes:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndfs-export") as pool:
        nxt = pool.submit(read, boxes[0])
        for i, b in enumerate(boxes):
            arr = nxt.result()
            if i + 1 < len(boxes):
                nxt = pool.submit(read, boxes[i + 1])
            yield b, arr
            bar.update(b.shape[0])


# ---- writers: each takes the finished path's temp name and an iterator of z-ordered slabs ----
def _write_npz(tmp: Path, src: _Source, slabs, compress: bool = True) -> None:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=mode, allowZip64=True) as zf:
        with zf.open("volume.npy", "w", force_zip64=True) as fh:
            header = {"descr": np.lib.format.dtype_to_descr(src.dtype), "fortran_order": False,
                      "shape": tuple(src.shape)}
            np.lib.format.write_array_header_2_0(fh, header)
            for _, arr in slabs:
                fh.write(np.ascontiguousarray(arr, dtype=src.dtype).data)
        extras = {"offset": np.asarray(src.offset, dtype=np.int64)}
        if src.voxel_size_nm is not None:
            extras["voxel_size_nm"] = np.asarray(src.voxel_size_nm, dtype=np.float64)
        for name, value in extras.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, value, allow_pickle=False)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise MissingExtra("hdf5 files need h5py: pip install 'ndfs[export]'") from None
    return h5py


def _write_hdf5(tmp: Path, src: _Source, slabs, compression: str | None = "gzip") -> None:
    h5py = _h5py()
    chunks = tuple(max(1, min(c, s)) for c, s in zip((src.chunk_z, 256, 256), src.shape)) if min(src.shape) else None
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("volume", shape=src.shape, dtype=src.dtype, chunks=chunks,
                              compression=compression if chunks else None, shuffle=bool(compression and chunks))
        ds.attrs["axes"] = "zyx"
        ds.attrs["offset"] = np.asarray(src.offset, dtype=np.int64)
        if src.voxel_size_nm is not None:
            ds.attrs["voxel_size_nm"] = np.asarray(src.voxel_size_nm, dtype=np.float64)
            ds.attrs["element_size_um"] = np.asarray(src.voxel_size_nm, dtype=np.float64) / 1000.0
        for b, arr in slabs:
            ds[b.slices()] = arr


def _write_tiff(tmp: Path, src: _Source, slabs) -> None:
    import tifffile

    meta: dict = {"axes": "ZYX"}
    kwargs: dict = {}
    nbytes = int(np.prod(src.shape)) * src.dtype.itemsize
    imagej = src.dtype.name in IMAGEJ_DTYPES and nbytes < 2**32 - 2**25
    if imagej:
        if src.voxel_size_nm is not None:
            meta.update(spacing=src.voxel_size_nm[0], unit="nm")
            kwargs["resolution"] = (1.0 / src.voxel_size_nm[2], 1.0 / src.voxel_size_nm[1])
        meta["ndfs_offset_zyx"] = ",".join(str(o) for o in src.offset)
    else:
        meta["offset"] = list(src.offset)
        if src.voxel_size_nm is not None:
            meta["voxel_size_nm"] = list(src.voxel_size_nm)
    planes = (plane for _, arr in slabs for plane in arr)
    tifffile.imwrite(tmp, planes, shape=tuple(src.shape), dtype=src.dtype, imagej=imagej,
                     bigtiff=not imagej and nbytes >= 2**32 - 2**25, metadata=meta, photometric="minisblack",
                     **kwargs)


def _png_name(z: int, width: int) -> str:
    return f"{z:0{width}d}.png"


def _write_png(tmp: Path, src: _Source, slabs) -> None:
    image = _pillow()
    tmp.mkdir()
    width = max(4, len(str(src.offset[0] + src.shape[0] - 1)))
    for b, arr in slabs:
        for i, plane in enumerate(arr):
            image.fromarray(np.ascontiguousarray(plane)).save(tmp / _png_name(src.offset[0] + b.start[0] + i, width),
                                                              format="PNG")
    (tmp / PNG_META).write_text(json.dumps({
        "shape_zyx": list(src.shape), "dtype": src.dtype.name, "offset_zyx": list(src.offset),
        "voxel_size_nm_zyx": None if src.voxel_size_nm is None else list(src.voxel_size_nm)}, indent=2) + "\n")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtra("png files need Pillow: pip install 'ndfs[export]'") from None
    return Image


_WRITERS = {"npz": _write_npz, "hdf5": _write_hdf5, "tiff": _write_tiff, "png": _write_png}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def export(source, path, format: str | None = None, *, box: Box | None = None, voxel_size_nm=None, offset=None,
           overwrite: bool = False, progress: bool = False, slab_bytes: int = 64 * MiB) -> Path:
    """Write ``source`` (a numpy array, a Volume, or a ``box`` of one) to ``path``; return the path.

    ``voxel_size_nm`` and ``offset`` (ZYX) default to the volume's (the box's
    start) and are recorded in the file; an array has no voxel size unless
    given and offset (0, 0, 0). ``overwrite`` replaces an existing file.
    """
    from tqdm import tqdm

    fmt = format_of(path, format)
    path = Path(path)
    src = _Source(source, box, voxel_size_nm, offset)
    if fmt == "png" and src.dtype.name not in PNG_DTYPES:
        raise BadRegion(f"png holds 8- and 16-bit grayscale; {src.dtype} data goes to tiff, hdf5 or npz")
    if path.exists() and not overwrite:
        raise BadRegion(f"{path} exists (overwrite=True, or --force, replaces it)")
    if path.is_dir() and not path.is_symlink() and (fmt != "png" or any(
            p.name != PNG_META and p.suffix.lower() != ".png" for p in path.iterdir())):
        raise BadRegion(f"{path} is a folder holding other things than png slices; not replacing it")
    if not path.parent.is_dir():
        raise BadRegion(f"folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".part")
    _remove(tmp)
    boxes = _slabs(src.shape, src.dtype.itemsize, slab_bytes, src.chunk_z) if min(src.shape) else []
    with tqdm(total=src.shape[0], unit="slice", desc=f"export {path.name}", disable=not progress) as bar:
        try:
            _WRITERS[fmt](tmp, src, _stream(src.read, boxes, bar))
        except BaseException as exc:
            _remove(tmp)
            if isinstance(exc, (NdfsError, KeyboardInterrupt)):
                raise
            if isinstance(exc, OSError):
                raise BackendError(f"writing {path} failed: {exc}") from exc
            raise
    if path.exists():
        _remove(path)
    os.replace(tmp, path)
    return path


# ---- readers -------------------------------------------------------------------------
class _Reader:
    """An open volume file: ``info`` and ``read(z0, z1)`` (planes relative to the file's first). Not thread-safe."""

    info: FileInfo

    def read(self, z0: int, z1: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _shape3(shape, what: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise BadInput(f"{what} holds a {len(shape)}-D array, not a volume (z, y, x)")
    return shape  # type: ignore[return-value]


def _triple(value, cast, what: str):
    if value is None:
        return None
    values = [cast(v) for v in np.asarray(value).ravel().tolist()]
    if len(values) != 3:
        raise BadInput(f"{what} must hold 3 values, found {len(values)}")
    return tuple(values)


class _NpzReader(_Reader):
    def __init__(self, path: Path):
        from ndfs.formats import safe

        self._zip = safe.open_zip(path, str(path))
        try:
            names = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]
            arrays = {n: self._header(n) for n in names}
            if "volume" in arrays:
                self._name = "volume"
            else:
                vols = [n for n, (shape, _, _) in arrays.items() if len(shape) in (2, 3) and n not in
                        ("offset", "voxel_size_nm")]
                if len(vols) != 1:
                    raise BadInput(f"{path} holds no array named 'volume' and not exactly one 2-D/3-D array "
                                   f"({', '.join(names) or 'none'})")
                self._name = vols[0]
            shape, fortran, dtype = arrays[self._name]
            self._fortran = fortran
            small = {n: safe.zip_npy(self._zip, n + ".npy", str(path), max_bytes=1024)
                     for n in ("offset", "voxel_size_nm") if n in arrays}
            self.info = FileInfo("npz", _shape3(shape, str(path)), dtype,
                                 _triple(small.get("voxel_size_nm"), float, "voxel_size_nm"),
                                 _triple(small.get("offset"), int, "offset"))
        except BaseException:
            self._zip.close()
            raise
        self._fh = None
        self._pos = 0
        self._all = None

    def _header(self, name: str):
        """(shape, fortran, dtype) of a member, whose data must be exactly what its header declares."""
        from ndfs.formats import safe

        info = self._zip.getinfo(name + ".npy")
        with self._zip.open(info) as fh:
            shape, fortran, dtype = safe.npy_header(fh, f"{name}.npy in the npz")
            declared = safe.check_declared(shape, dtype, f"{name}.npy in the npz")
            if info.file_size - fh.tell() != declared:
                raise BadInput(f"{name}.npy in the npz holds {info.file_size - fh.tell()} bytes of data; "
                               f"its header declares {declared}")
        return shape, fortran, dtype

    def read(self, z0: int, z1: int) -> np.ndarray:
        from ndfs.formats import safe

        shape = self.info.shape
        if self._fortran:  # not written by ndfs: read it whole once
            if self._all is None:
                self._all = safe.zip_npy(self._zip, self._name + ".npy", "the npz").reshape(shape)
            return self._all[z0:z1]
        plane = shape[1] * shape[2] * self.info.dtype.itemsize
        if self._fh is None or z0 < self._pos:
            if self._fh is not None:
                self._fh.close()
            self._fh = self._zip.open(self._name + ".npy")
            safe.npy_header(self._fh, "the npz array")
            self._pos = 0
        if z0 > self._pos:
            self._fh.read((z0 - self._pos) * plane)
        data = self._fh.read((z1 - z0) * plane)
        if len(data) != (z1 - z0) * plane:
            raise BadInput(f"the npz array is truncated at plane {z0 + len(data) // max(1, plane)}")
        self._pos = z1
        return np.frombuffer(data, dtype=self.info.dtype).reshape((z1 - z0,) + shape[1:]).copy()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._zip.close()


class _Hdf5Reader(_Reader):
    def __init__(self, path: Path):
        from contextlib import ExitStack

        from ndfs.formats import safe

        h5py = _h5py()
        self._stack = ExitStack()
        self._f = self._stack.enter_context(safe.open_hdf5(path, str(path)))  # checked whole: see safe.hdf5
        try:
            ds = self._f.get("volume")
            if not isinstance(ds, h5py.Dataset):
                found = []
                self._f.visititems(lambda n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.ndim in (2, 3)
                                   else None)
                if len(found) != 1:
                    raise BadInput(f"{path} has no dataset 'volume' and not exactly one 2-D/3-D dataset")
                ds = found[0]
            safe.voxel_dtype(ds.dtype, str(path))
            self._ds = ds
            vs = ds.attrs.get("voxel_size_nm")
            if vs is None and ds.attrs.get("element_size_um") is not None:
                vs = np.asarray(ds.attrs["element_size_um"], dtype=np.float64) * 1000.0
            self.info = FileInfo("hdf5", _shape3(ds.shape, str(path)), np.dtype(ds.dtype),
                                 _triple(vs, float, "voxel_size_nm"), _triple(ds.attrs.get("offset"), int, "offset"))
        except BaseException:
            self._stack.close()
            raise

    def read(self, z0: int, z1: int) -> np.ndarray:
        try:
            if self._ds.ndim == 2:
                return self._ds[()][np.newaxis][z0:z1]
            return self._ds[z0:z1]
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{self._ds.name} does not read: {exc}") from None

    def close(self) -> None:
        self._stack.close()


_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1e3, "micron": 1e3, "microns": 1e3,
            "\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6}


class _TiffReader(_Reader):
    """The pages of a TIFF, read directly (never tifffile's series, which can open other files)."""

    def __init__(self, path: Path):
        from ndfs.formats import safe

        self._fh = open(path, "rb")
        try:
            self._t = safe.TiffPages(self._fh, str(path))
        except BaseException:
            self._fh.close()
            raise
        try:
            self.info = self._info(path)
        except BaseException:
            self.close()
            raise

    def _info(self, path: Path) -> FileInfo:
        vs = offset = None
        ij = self._t.imagej_metadata
        page = self._t.first
        shape = (self._t.count, *self._t.plane)
        if ij:
            if int(ij.get("channels", 1) or 1) > 1 or int(ij.get("frames", 1) or 1) > 1:
                raise BadInput(f"{path} is an ImageJ hyperstack with channels or frames; a volume is grayscale z, y, x")
            unit = _UNIT_NM.get(str(ij.get("unit", "")).strip())
            if unit is not None and "XResolution" in page.tags:
                rx, ry = page.resolution[:2]
                if rx and ry:
                    vs = (float(ij.get("spacing", 1.0)) * unit, unit / ry, unit / rx)
                    vs = tuple(round(v, 6) for v in vs)
            if ij.get("ndfs_offset_zyx"):
                offset = _triple(str(ij["ndfs_offset_zyx"]).split(","), int, "ndfs_offset_zyx")
        elif self._t.shaped_metadata:
            meta = self._t.shaped_metadata[0]
            if len([s for s in meta.get("shape", ()) if s != 1]) > 3:
                raise BadInput(f"{path} holds a {meta.get('shape')} array; a volume is grayscale z, y, x")
            vs = _triple(meta.get("voxel_size_nm"), float, "voxel_size_nm")
            offset = _triple(meta.get("offset"), int, "offset")
        return FileInfo("tiff", _shape3(shape, str(path)), self._t.dtype, vs, offset)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self._t.read(z0, z1)

    def close(self) -> None:
        self._t.close()
        self._fh.close()


class _PngReader(_Reader):
    def __init__(self, path: Path):
        _pillow()  # the export extra's message when Pillow is missing
        if not path.is_dir():
            raise BadInput(f"{path} is not a directory of png slices")
        files = {}
        for p in path.iterdir():
            if p.suffix.lower() == ".png":
                if not p.stem.isdigit():
                    raise BadInput(f"{p.name}: png slices are named <z>.png")
                files[int(p.stem)] = p
        if not files:
            raise BadInput(f"{path} holds no <z>.png slices")
        zs = sorted(files)
        if zs[-1] - zs[0] + 1 != len(zs):
            missing = sorted(set(range(zs[0], zs[-1] + 1)) - set(zs))[:5]
            raise BadInput(f"{path} is missing slices {', '.join(map(str, missing))}")
        self._files = [files[z] for z in zs]
        from ndfs.formats import safe

        first = self._files[0]  # its header only: an import checks the fit before any plane is decoded
        plane, dtype = safe.png_header(first, first.name, file_bytes=first.stat().st_size)
        meta = {}
        if (path / PNG_META).is_file():
            meta = safe.json_loads((path / PNG_META).read_bytes(), str(path / PNG_META))
            if not isinstance(meta, dict):
                raise BadInput(f"{path / PNG_META} is not a JSON object")
        off = meta.get("offset_zyx")
        self.info = FileInfo("png", (len(zs),) + plane, dtype,
                             _triple(meta.get("voxel_size_nm_zyx"), float, "voxel_size_nm_zyx"),
                             (zs[0], int(off[1]), int(off[2])) if off else None)

    def _plane(self, i: int) -> np.ndarray:
        from ndfs.formats import safe

        path = self._files[i]
        return safe.png_plane(path, path.name, file_bytes=path.stat().st_size)

    def read(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0,) + self.info.shape[1:], dtype=self.info.dtype)
        for i in range(z0, z1):
            plane = self._plane(i)
            if plane.shape != out.shape[1:] or plane.dtype != out.dtype:
                raise BadInput(f"{self._files[i].name} is {plane.dtype}{plane.shape}, the first slice "
                               f"{out.dtype}{out.shape[1:]}")
            out[i - z0] = plane
        return out


_READERS = {"npz": _NpzReader, "hdf5": _Hdf5Reader, "tiff": _TiffReader, "png": _PngReader}


def open_file(path, format: str | None = None) -> _Reader:
    """Open a volume file for reading in z slabs (a context manager with ``info`` and ``read(z0, z1)``)."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path} does not exist")
    return _READERS[format_of(path, format)](path)


def file_info(path, format: str | None = None) -> FileInfo:
    """Shape, dtype, voxel size and offset recorded in a volume file."""
    with open_file(path, format) as r:
        return r.info


def load(path, format: str | None = None) -> np.ndarray:
    """The whole file as a ZYX numpy array."""
    with open_file(path, format) as r:
        return r.read(0, r.info.shape[0])


def import_file(path, volume, *, format: str | None = None, offset=None, progress: bool = False,
                slab_bytes: int = 64 * MiB) -> Box:
    """Write a volume file into ``volume`` (a Volume of an existing channel); return the box written.

    ``offset`` (ZYX, dataset coordinates) defaults to the offset recorded in
    the file, else the volume's offset. Shape, position and dtype are checked
    before anything is written; data convert only without loss.
    """
    from tqdm import tqdm

    with open_file(path, format) as r:
        info = r.info
        start = offset if offset is not None else (info.offset if info.offset is not None else volume.offset)
        start = tuple(int(s) for s in start)
        if len(start) != 3:
            raise BadRegion(f"offset must be (z, y, x), got {offset}")
        box = Box(start, tuple(s + n for s, n in zip(start, info.shape)))
        if not volume.box.contains(box):
            raise BadRegion(f"{Path(path).name} ({info.shape[2]}x{info.shape[1]}x{info.shape[0]} at x {start[2]}, "
                            f"y {start[1]}, z {start[0]}) does not fit in {volume.box}")
        if info.dtype != volume.dtype and not np.can_cast(info.dtype, volume.dtype, casting="safe"):
            raise BadInput(f"{Path(path).name} holds {info.dtype}, which a {volume.dtype} channel cannot store")
        slabs = _slabs(info.shape, info.dtype.itemsize, slab_bytes, volume.level_info.chunk_shape[0])
        with tqdm(total=info.shape[0], unit="slice", desc=f"import {Path(path).name}", disable=not progress) as bar:
            for rel, arr in _stream(lambda b: r.read(b.start[0], b.stop[0]), slabs, bar):
                target = rel.translate(start)
                try:
                    volume.write(target, arr.astype(volume.dtype, copy=False))
                except NdfsError as exc:
                    done = f"z {start[0]}:{target.start[0]}" if target.start[0] > start[0] else "nothing"
                    raise type(exc)(f"import stopped at z {target.start[0]} ({done} written): {exc}",
                                    errno=exc.errno) from exc
    return box
