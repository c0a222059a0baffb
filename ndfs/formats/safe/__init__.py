"""Safe decoders: every decoder of untrusted bytes in ndfs goes through this package.

The guarantee: a decoder reads only the bytes it was given (never another file, never a plugin
library), and its work and memory are bounded by what the caller expects (a shape and dtype, or
a byte count), checked against what the input *declares* before any data is decoded. Anything
else is refused with :class:`ndfs.errors.BadInput` (EINVAL), whose message says what was wrong;
the servers answer it with a 400-class status, the mount with EINVAL at ``close()``.

* :mod:`.hdf5`: no external storage, external or user-defined links, virtual datasets or
  filters outside HDF5's own; declared sizes and chunk inflation bounded.
* :mod:`.tiff`: pages read directly (never tifffile's series), page count, shape, dtype and
  strip inflation bounded.
* :mod:`.npy`: .npy headers parsed and checked, exact data length; npz/zip members counted,
  their declared sizes and compression ratios checked; no pickles.
* :mod:`.codecs`: zlib/gzip bounded inflation, blosc and LZ4 sizes checked, PNG declared size
  checked before decoding, JSON bounded in bytes, depth and integer digits.

Who uses it: the volume file formats of :mod:`ndfs.formats.registry` (the mount's writable
files, export/import and load in :mod:`ndfs.tools.convert`, the NeuroData server's hdf5 bodies), the
protocol servers' other request bodies, the RAMON HDF5 and JSON readers,
and the BOSS, DVID and NeuroData drivers' reply decoding.
"""

from ndfs.formats.safe.codecs import (
    MAX_INT_DIGITS, MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_REPLY_JSON_BYTES, WrongSize, blosc_decompress, inflate,
    json_loads, lz4_block, png_header, png_plane, reply_json,
)
from ndfs.formats.safe.common import DEFAULT_MAX_BYTES, MAX_RATIO, check_declared, voxel_dtype
from ndfs.formats.safe.hdf5 import ALLOWED_FILTERS, open_hdf5, read_dataset
from ndfs.formats.safe.npy import NPY_HEADER_BYTES, npy_from_bytes, npy_header, open_zip, read_npy, zip_npy
from ndfs.formats.safe.tiff import TiffPages

__all__ = [
    "ALLOWED_FILTERS", "DEFAULT_MAX_BYTES", "MAX_INT_DIGITS", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_RATIO",
    "MAX_REPLY_JSON_BYTES", "NPY_HEADER_BYTES", "TiffPages", "WrongSize", "blosc_decompress",
    "check_declared", "inflate", "json_loads", "lz4_block", "npy_from_bytes", "npy_header",
    "open_hdf5", "open_zip", "png_header", "png_plane", "read_dataset", "read_npy", "reply_json", "voxel_dtype",
    "zip_npy",
]
