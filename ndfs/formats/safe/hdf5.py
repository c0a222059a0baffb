"""HDF5 from untrusted bytes: the whole file is checked before a byte of data is read.

HDF5 can make a reader reach far outside the bytes it was given: a dataset with *external
storage* reads any file of the machine as its voxels, an *external link* or a *virtual dataset*
opens other HDF5 files, and a dataset whose filter HDF5 does not know makes it search
``HDF5_PLUGIN_PATH`` and load a shared library from there. A compressed chunk can inflate far
past its declared size, and a header can declare a dataset of terabytes that reads as fill value.

:func:`open_hdf5` opens the file and, before anything is read, walks every link *without
following it* and every object it reaches through hard links, and refuses (BadInput):

* external links and user-defined link types anywhere in the file;
* datasets with external storage or a virtual layout, and reference-typed datasets;
* filters other than those built into HDF5 and h5py (deflate, shuffle, fletcher32, szip,
  n-bit, scale-offset, lzf), and any of those the running library has not registered;
* declared dataset and attribute sizes past ``max_bytes`` (all objects together);
* raw data (contiguous storage or a chunk) that lies outside the file, filter parameters that
  declare more than a chunk holds, and deflated chunks that inflate past their chunk size
  (inflated in pieces and counted, never kept).

Plugins: this module never lets HDF5 meet a filter it has not registered, so the plugin path is
never searched (``h5z.get_filter_info`` answers from the registry alone; ``h5z.filter_avail``
would search the path and is never called). The process-wide switches (``HDF5_PLUGIN_PRELOAD``,
read once when the library starts, or emptying the search path) were not chosen: ndfs is also a
library, and its users' own files may rely on plugins.

Thread-safe as h5py is (h5py serialises calls into HDF5).
"""

from __future__ import annotations

import contextlib
import io
import math
import zlib
from typing import Iterator

import numpy as np

from ndfs.core.errors import BadInput, MissingExtra
from ndfs.formats.safe.common import check_declared, nbytes_of, stream_length, voxel_dtype

# filter ids built into HDF5 (1 deflate, 2 shuffle, 3 fletcher32, 4 szip, 5 n-bit, 6 scale-offset) or h5py (lzf)
DEFLATE, SHUFFLE, FLETCHER32, SZIP, NBIT, SCALEOFFSET, LZF = 1, 2, 3, 4, 5, 6, 32000
ALLOWED_FILTERS = {DEFLATE: "deflate", SHUFFLE: "shuffle", FLETCHER32: "fletcher32", SZIP: "szip",
                   NBIT: "nbit", SCALEOFFSET: "scaleoffset", LZF: "lzf"}
#: links (and objects) one file may hold
MAX_LINKS = 100_000
#: stored chunks one dataset may hold
MAX_CHUNKS = 1_000_000
#: room for filter headers (scale-offset, n-bit) on top of a chunk's own bytes
CHUNK_SLACK = 4096
PIECE = 2**20


def h5py():
    try:
        import h5py as module
    except ImportError:
        raise MissingExtra("HDF5 files need h5py: pip install 'ndfs[export]'") from None
    return module


@contextlib.contextmanager
def open_hdf5(source, name: str, *, max_bytes: int | None = None) -> Iterator:
    """An h5py File (read-only) of ``source`` (bytes, a seekable binary file or a path), every object
    checked as the module says; BadInput when it is not HDF5 or reaches outside itself."""
    h = h5py()
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    if hasattr(source, "read"):
        length = stream_length(source)
    else:
        import os

        length = os.path.getsize(source)
    try:
        f = h.File(source, "r")
    except (OSError, ValueError) as exc:
        raise BadInput(f"{name} is not an HDF5 file: {exc}") from None
    try:
        try:
            _check_file(f, name, length, max_bytes)
        except BadInput:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # h5py's errors for broken metadata
            raise BadInput(f"{name} has broken HDF5 metadata: {exc}") from None
        yield f
    finally:
        f.close()


def read_dataset(ds, name: str, *, shape=None, dtype=None, max_bytes: int | None = None) -> np.ndarray:
    """The whole dataset of a file opened by :func:`open_hdf5`, its declared shape and dtype checked
    against what the caller expects (see :func:`~ndfs.formats.safe.common.check_declared`) first."""
    voxel_dtype(ds.dtype, f"{name}: dataset {ds.name}")
    check_declared(ds.shape, ds.dtype, name, want_shape=shape, want_dtype=dtype, max_bytes=max_bytes)
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise BadInput(f"{name}: dataset {ds.name} does not read: {exc}") from None


def _check_file(f, name: str, length: int, max_bytes: int | None) -> None:
    from h5py import h5l, h5o

    links: list[tuple[bytes, int]] = []

    def visit(path: bytes, info):
        links.append((path, info.type))
        return True if len(links) > MAX_LINKS else None  # a value stops the walk (raising here cannot)

    f.id.links.visit(visit, info=True)  # H5Lvisit: recurses through hard links only, follows nothing
    if len(links) > MAX_LINKS:
        raise BadInput(f"{name} holds more than {MAX_LINKS} links")
    for path, kind in links:
        if kind == h5l.TYPE_EXTERNAL:
            raise BadInput(f"{name}: {path.decode(errors='replace')} is an external link to another file; "
                           "files that reach outside themselves are refused")
        if kind not in (h5l.TYPE_HARD, h5l.TYPE_SOFT):
            raise BadInput(f"{name}: {path.decode(errors='replace')} is a user-defined link (type {kind}); refused")
    seen: set[int] = set()
    total = 0
    for path in [b"."] + [p for p, kind in links if kind == h5l.TYPE_HARD]:
        obj = h5o.open(f.id, path)
        addr = h5o.get_info(obj).addr
        if addr in seen:
            continue
        seen.add(addr)
        where = f"{name}: {'/' if path == b'.' else path.decode(errors='replace')}"
        total += _attribute_bytes(obj)
        if h5o.get_info(obj).type == h5o.TYPE_DATASET:
            total += _check_dataset(obj, where, length)
        if max_bytes is not None and total > max_bytes:
            raise BadInput(f"{where} brings what the file declares past {max_bytes} bytes, more than expected here")


def _attribute_bytes(obj) -> int:
    from h5py import h5a, h5o

    total = 0
    for i in range(int(h5o.get_info(obj).num_attrs)):
        attr = h5a.open(obj, index=i)
        total += nbytes_of(attr.shape, attr.dtype)
    return total


def _check_dataset(ds, where: str, length: int) -> int:
    from h5py import h5d

    h = h5py()
    dcpl = ds.get_create_plist()
    if dcpl.get_external_count():
        raise BadInput(f"{where} keeps its data in external files (HDF5 external storage); refused")
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise BadInput(f"{where} is a virtual dataset that maps other files; refused")
    if h.check_dtype(ref=ds.dtype) is not None:
        raise BadInput(f"{where} holds object references; refused")
    declared = nbytes_of(ds.shape, ds.dtype)
    filters = [dcpl.get_filter(i)[:3] for i in range(dcpl.get_nfilters())]
    for code, _, _ in filters:
        if code not in ALLOWED_FILTERS:
            raise BadInput(f"{where} uses HDF5 filter {code}, which is not built into HDF5; "
                           f"only {', '.join(sorted(ALLOWED_FILTERS.values()))} are accepted")
        if not _registered(code):
            raise BadInput(f"{where} uses the {ALLOWED_FILTERS[code]} filter, which this HDF5 library lacks")
    if layout == h5d.CONTIGUOUS:
        offset = ds.get_offset()
        if offset is not None and offset + declared > length:
            raise BadInput(f"{where} says its data lies at bytes {offset}..{offset + declared}, "
                           f"past the end of the {length}-byte file")
    elif layout == h5d.CHUNKED:
        _check_chunks(ds, dcpl, filters, where, length)
    return declared


def _registered(code: int) -> bool:
    from h5py import h5z

    try:
        h5z.get_filter_info(code)  # the registry only: unlike filter_avail, never searches for plugins
    except (RuntimeError, ValueError, KeyError, OSError):
        return False
    return True


def _check_chunks(ds, dcpl, filters: list, where: str, length: int) -> None:
    chunk = dcpl.get_chunk()
    itemsize = ds.dtype.itemsize
    chunk_items = math.prod(chunk)
    chunk_bytes = chunk_items * itemsize
    codes = [code for code, _, _ in filters]
    for code, _, values in filters:
        if code in (SCALEOFFSET, NBIT) and (len(values) < 5 or values[2] > chunk_items or values[4] > 16):
            raise BadInput(f"{where}: its {ALLOWED_FILTERS[code]} filter declares {values[2:3]} values a chunk, "
                           f"a chunk holds {chunk_items}")
        if code == LZF and len(values) >= 3 and values[2] > chunk_bytes + CHUNK_SLACK:
            raise BadInput(f"{where}: its lzf filter declares {values[2]}-byte chunks, a chunk holds {chunk_bytes}")
    packers = [i for i, c in enumerate(codes) if c in (DEFLATE, SZIP, LZF)]
    if len(packers) > 1 or (packers and any(c != FLETCHER32 for c in codes[packers[0] + 1:])):
        raise BadInput(f"{where} applies filters {codes} in an order no HDF5 writer uses; refused")
    grid = math.prod(-(-int(s) // int(c)) for s, c in zip(ds.shape, chunk)) if ds.shape else 1
    if ds.get_num_chunks() > min(grid, MAX_CHUNKS):
        raise BadInput(f"{where} stores {ds.get_num_chunks()} chunks, more than its shape has room for")

    def check(info) -> None:
        if info.byte_offset is None or info.byte_offset + info.size > length:
            raise BadInput(f"{where}: a chunk at {info.chunk_offset} lies outside the {length}-byte file")
        active = [c for i, c in enumerate(codes) if not info.filter_mask & (1 << i)]
        if LZF in active and info.size > chunk_bytes + chunk_bytes // 16 + 64:
            # lzf cannot be stopped early, but never expands data by more than 1/16: a chunk this large
            # is no lzf output, and a real one inflates to at most about 90 times its chunk
            raise BadInput(f"{where}: an lzf chunk at {info.chunk_offset} is {info.size} bytes, "
                           f"more than lzf makes of {chunk_bytes}")
        if DEFLATE in active:
            _check_deflated_chunk(ds, info, active, chunk_bytes, where)
        elif SZIP in active:
            _, raw = ds.read_direct_chunk(info.chunk_offset)
            if len(raw) < 4 or int.from_bytes(raw[:4], "little") > chunk_bytes + CHUNK_SLACK:
                raise BadInput(f"{where}: an szip chunk at {info.chunk_offset} declares more than its "
                               f"{chunk_bytes} bytes")

    ds.chunk_iter(check)  # H5Dchunk_iter: one pass over the chunk index


def _check_deflated_chunk(ds, info, active: list[int], chunk_bytes: int, where: str) -> None:
    """Inflate the chunk in pieces, counting: refused when it holds more than a chunk (+ slack)."""
    _, raw = ds.read_direct_chunk(info.chunk_offset)
    trailing = active[active.index(DEFLATE) + 1:].count(FLETCHER32) * 4  # checksums after the deflate stream
    data = memoryview(raw)[:max(0, len(raw) - trailing)]
    inflater = zlib.decompressobj()
    limit = chunk_bytes + CHUNK_SLACK
    produced = 0
    try:
        while not inflater.eof:
            out = inflater.decompress(data, PIECE)
            produced += len(out)
            if produced > limit:
                raise BadInput(f"{where}: a chunk at {info.chunk_offset} inflates past its {chunk_bytes} bytes")
            data = inflater.unconsumed_tail
            if not out and not data:
                break  # truncated: HDF5 itself refuses it when it is read
    except zlib.error as exc:
        raise BadInput(f"{where}: a chunk at {info.chunk_offset} is not deflate data: {exc}") from None
