"""Compressed bodies (zlib, gzip, blosc, LZ4), PNG images and JSON documents from untrusted bytes.

Each decoder is told how much the caller expects and never produces more: zlib and gzip inflate
through a bounded ``decompressobj``; blosc frames and PNG images are refused when the size their
header declares is not the expected one, before anything is decompressed; LZ4 blocks decompress
into a buffer of exactly the expected size. JSON is bounded in bytes, nesting depth and the digits
of its integers. Every refusal is a :class:`~ndfs.errors.BadInput` (EINVAL) with a message that
says what was wrong; a JSON document past its byte bound is :class:`~ndfs.errors.TooLarge` (EFBIG).
Pure functions; thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import struct
import zlib

import numpy as np

from ndfs.core.errors import BadInput, TooLarge
from ndfs.formats.safe.common import MAX_RATIO, MiB

#: JSON that people and clients write (RAMON objects, request bodies)
MAX_JSON_BYTES = 16 * MiB
#: JSON that a service answers (id lists of a whole channel can be long)
MAX_REPLY_JSON_BYTES = 256 * MiB
MAX_JSON_DEPTH = 64
#: a uint64 has 20 digits; integers of hundreds of digits are never data
MAX_INT_DIGITS = 40


class WrongSize(BadInput):
    """A well-formed body that declares another size than the one expected."""


# ---- zlib / gzip -------------------------------------------------------------------------------
def inflate(body: bytes, max_bytes: int, name: str = "the body", *, gzip: bool = False) -> bytes:
    """A zlib (or gzip) stream inflated, never past ``max_bytes``; BadInput when it would go further,
    is truncated, or is followed by other bytes."""
    what = "gzip" if gzip else "zlib"
    inflater = zlib.decompressobj(wbits=(16 + zlib.MAX_WBITS) if gzip else zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BadInput(f"{name} is not {what}-compressed: {exc}") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise BadInput(f"{name} inflates past {max_bytes} bytes, more than this request can hold")
    if not inflater.eof:
        raise BadInput(f"{name}: the {what} stream is truncated")
    if inflater.unused_data:
        raise BadInput(f"{name}: {len(inflater.unused_data)} bytes follow the {what} stream")
    return raw


# ---- blosc ---------------------------------------------------------------------------------------
def blosc_decompress(body: bytes, nbytes: int, name: str = "the body") -> bytearray:
    """One blosc frame that must hold exactly ``nbytes``; its 16-byte header is checked first.

    :class:`WrongSize` when the frame is good but declares another size, BadInput when it is
    not a sound frame.
    """
    import blosc

    if len(body) < 16 or body[0] not in (1, 2):
        raise BadInput(f"{name} ({len(body)} bytes) is not a blosc frame")
    declared, blocksize, cbytes = struct.unpack_from("<III", body, 4)
    if cbytes != len(body):
        raise BadInput(f"{name}: the blosc frame says {cbytes} compressed bytes but the body has {len(body)}")
    if declared != nbytes:
        raise WrongSize(f"{name}: the blosc frame holds {declared} bytes, {nbytes} expected")
    if nbytes and not 0 < blocksize <= nbytes:
        raise BadInput(f"{name}: the blosc frame's block size {blocksize} does not fit its {nbytes} bytes")
    try:
        raw = blosc.decompress(body, as_bytearray=True)
    except Exception as exc:  # blosc raises its own error types for corrupt frames
        raise BadInput(f"{name}: the blosc frame does not decompress: {exc}") from None
    if len(raw) != nbytes:
        raise WrongSize(f"{name}: the blosc frame decompressed to {len(raw)} bytes, {nbytes} expected")
    return raw


# ---- LZ4 -----------------------------------------------------------------------------------------
def lz4_block(body: bytes, nbytes: int, name: str = "the body") -> bytes:
    """An LZ4 block (no size prefix, as DVID sends labels) that must inflate to exactly ``nbytes``;
    the output buffer is ``nbytes`` long, so a block that would produce more fails."""
    try:
        import lz4.block
    except ImportError:
        raise BadInput("LZ4 bodies need the lz4 package: pip install 'ndfs[dvid]'") from None
    if len(body) > nbytes + nbytes // 255 + 16:  # LZ4's worst case for incompressible data
        raise BadInput(f"{name}: {len(body)} LZ4 bytes cannot hold {nbytes} bytes")
    try:
        raw = lz4.block.decompress(body, uncompressed_size=nbytes)
    except Exception as exc:  # lz4.block.LZ4BlockError: truncated, corrupt, or longer than nbytes
        raise BadInput(f"{name} is not an LZ4 block of {nbytes} bytes: {exc}") from None
    if len(raw) != nbytes:
        raise BadInput(f"{name}: the LZ4 block holds {len(raw)} bytes, {nbytes} expected")
    return raw


# ---- PNG -----------------------------------------------------------------------------------------
PNG_MODES = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.uint16}


@contextlib.contextmanager
def _png(source, name: str, file_bytes: int, max_bytes: int | None):
    """The opened (not yet decoded) PNG, its declared size and mode checked."""
    from PIL import Image

    try:
        im = Image.open(source, formats=["PNG"])
    except Image.DecompressionBombError as exc:
        raise BadInput(f"{name} is refused: {exc}") from None
    except Exception as exc:  # Pillow's UnidentifiedImageError, OSError, SyntaxError for broken chunks
        raise BadInput(f"{name} is not a PNG image: {exc}") from None
    with im:
        if im.mode not in PNG_MODES:
            raise BadInput(f"{name} is a {im.mode} image; volumes are 8/16-bit grayscale")
        width, height = im.size
        declared = width * height * np.dtype(PNG_MODES[im.mode]).itemsize
        if declared > MAX_RATIO * file_bytes + 4096 or (max_bytes is not None and declared > max_bytes):
            raise BadInput(f"{name} declares {width}x{height} pixels ({declared} bytes) in a "
                           f"{file_bytes}-byte file{'' if max_bytes is None else f' (at most {max_bytes} expected)'}")
        yield im


def png_header(source, name: str, *, file_bytes: int, max_bytes: int | None = None) -> tuple[tuple[int, int], np.dtype]:
    """((height, width), dtype) a PNG declares, checked as :func:`png_plane` checks it; nothing decoded."""
    with _png(source, name, file_bytes, max_bytes) as im:
        return (im.size[1], im.size[0]), np.dtype(PNG_MODES[im.mode])


def png_plane(source, name: str, *, file_bytes: int, max_bytes: int | None = None) -> np.ndarray:
    """The 8/16-bit greyscale plane of a PNG, its declared size checked before it is decoded.

    ``file_bytes`` is the file's length: a PNG declaring more than a deflate stream of that
    length can hold is refused, as is one over ``max_bytes``.
    """
    with _png(source, name, file_bytes, max_bytes) as im:
        try:
            arr = np.asarray(im)
        except Exception as exc:  # Pillow's OSError for truncated or corrupt image data
            raise BadInput(f"{name} does not decode: {exc}") from None
    if arr.dtype.kind == "i":  # mode "I": 16-bit data widened by Pillow
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise BadInput(f"{name} holds values outside 16 bits")
        arr = arr.astype(np.uint16)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


# ---- JSON ----------------------------------------------------------------------------------------
def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BadInput(f"an integer of {len(text)} digits is not a number this service takes "
                       f"(at most {MAX_INT_DIGITS} digits)")
    return int(text)


def json_loads(data: bytes | str, name: str = "the JSON document", *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH):
    """A JSON document, refused with a clear message when it is over ``max_bytes`` (TooLarge),
    not JSON, nested deeper than ``max_depth`` or holding integers of more than
    :data:`MAX_INT_DIGITS` digits (BadInput)."""
    if len(data) > max_bytes:
        raise TooLarge(f"{name} is {len(data)} bytes; at most {max_bytes} are taken")
    try:
        doc = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise BadInput(f"{name} is nested too deeply (at most {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{name} is not valid JSON: {exc}") from None
    stack = [(doc, 1)]
    while stack:  # iterative: the depth check itself must not recurse
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise BadInput(f"{name} is nested too deeply (at most {max_depth} levels)")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return doc


def reply_json(body: bytes, name: str = "the JSON answer"):
    """A service's JSON answer (drivers): :func:`json_loads` with the bound of replies."""
    return json_loads(body, name, max_bytes=MAX_REPLY_JSON_BYTES)
