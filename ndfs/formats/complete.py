"""Is a file whole yet? Structural checks of files being written, without decoding them.

A program writing a file through the mount may close a duplicate of its
descriptor (numpy's ``tofile``, a child process) before it is done, and the
kernel then asks ndfs to flush the file while it is still being filled in
(tifffile writes the pixels first and the directory after them). A file is
*complete* when every part its structure names lies inside it: the TIFF
header's directories and the strips or tiles they point to, the npy header's
array, the zip central directory of an npz, the HDF5 superblock's end of
file, the last character of a JSON document. Only a complete file is
decoded and checked at such a flush; an incomplete one is simply not
committed yet. Anything that is not a question of missing bytes counts as
complete, so the decoder reports what is wrong with it: an empty file, and
a file whose first bytes already are not the format's signature, and a file
whose structure needs more bytes than the file may ever hold (``max_bytes``:
no further writing can make it whole).

Each check reads a few headers through a seekable binary file; none reads
pixel data. Thread-safe (no shared state).
"""

from __future__ import annotations

import io
import json
import struct
from typing import BinaryIO

#: a TIFF whose directory chain is longer than this is not walked further (the decoder judges it)
MAX_PAGES = 1 << 20


def _size(fh: BinaryIO) -> int:
    fh.seek(0, io.SEEK_END)
    return fh.tell()


def _read_at(fh: BinaryIO, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def _short_prefix(head: bytes, signatures: tuple[bytes, ...]) -> bool:
    """True when ``head`` (non-empty) is shorter than a signature it begins: more bytes may come."""
    return bool(head) and any(len(head) < len(sig) and sig.startswith(head) for sig in signatures)


TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
NPY_SIGNATURE = b"\x93NUMPY"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def tiff(fh: BinaryIO, limit: int | None = None) -> bool:
    """Every directory, every tag value and every strip/tile of the TIFF lies inside the file.

    A directory of zero entries is a hole not yet written (tifffile writes directories after the
    pixels), so it counts as missing too.
    """
    size = _size(fh)
    head = _read_at(fh, 0, 16)
    if len(head) < 4:
        return not _short_prefix(head, TIFF_SIGNATURES)
    if not head.startswith(TIFF_SIGNATURES):
        return True  # not a TIFF: the decoder says so
    if len(head) < 8:
        return False
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    (magic,) = struct.unpack(order + "H", head[2:4])
    if magic == 42:
        big, offset = False, struct.unpack(order + "I", head[4:8])[0]
    elif magic == 43:
        if len(head) < 16:
            return False
        big, offset = True, struct.unpack(order + "Q", head[8:16])[0]
    else:
        return True
    count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
    type_sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                  16: 8, 17: 8, 18: 8}
    seen: set[int] = set()
    while offset:
        if offset in seen or len(seen) > MAX_PAGES:
            return True  # a loop or an absurd chain: the decoder refuses it
        seen.add(offset)
        if offset + count_size > size:
            return _beyond(offset + count_size, limit)
        raw = _read_at(fh, offset, count_size)
        if len(raw) < count_size:
            return False
        (count,) = struct.unpack(order + count_fmt, raw)
        if count == 0:
            return False
        table = _read_at(fh, offset + count_size, count * entry_size + next_size)
        if len(table) < count * entry_size + next_size:
            return False
        places: dict[int, list[int]] = {}
        for i in range(count):
            e = table[i * entry_size:(i + 1) * entry_size]
            if big:
                tag, typ, n = struct.unpack(order + "HHQ", e[:12])
                inline, field = 8, e[12:20]
            else:
                tag, typ, n = struct.unpack(order + "HHI", e[:8])
                inline, field = 4, e[8:12]
            width = type_sizes.get(typ)
            if width is None:
                return True
            nbytes = width * n
            if nbytes > inline:
                (where,) = struct.unpack(order + ("Q" if big else "I"), field)
                if where + nbytes > size:
                    return _beyond(where + nbytes, limit)
                value = _read_at(fh, where, nbytes) if tag in (273, 279, 324, 325) else b""
            else:
                value = field[:nbytes]
            if tag in (273, 279, 324, 325) and width in (2, 4, 8):
                code = {2: "H", 4: "I", 8: "Q"}[width]
                places[tag] = list(struct.unpack(order + code * n, value))
        for offsets_tag, counts_tag in ((273, 279), (324, 325)):
            offsets, counts = places.get(offsets_tag, []), places.get(counts_tag, [])
            ends = [o + c for o, c in zip(offsets, counts) if o + c > size]
            if ends:
                return _beyond(max(ends), limit)
        (offset,) = struct.unpack(order + next_fmt, table[count * entry_size:])
    return True


def _beyond(end: int, limit: int | None) -> bool:
    """A structure ending at ``end``, past the file's end: incomplete (False), unless no file of at most
    ``limit`` bytes can ever hold it (True: the decoder refuses it now)."""
    return limit is not None and end > limit


def npy(fh: BinaryIO, limit: int | None = None) -> bool:
    """The header is all there and the file holds at least the bytes of the array it declares."""
    from numpy.lib import format as npformat

    size = _size(fh)
    head = _read_at(fh, 0, len(NPY_SIGNATURE))
    if not head.startswith(NPY_SIGNATURE):
        return not _short_prefix(head, (NPY_SIGNATURE,))
    fh.seek(0)
    try:
        version = npformat.read_magic(fh)
        reader = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
        if reader is None:
            return True
        shape, _, dtype = reader(fh, max_header_size=1 << 16)
    except ValueError:
        return size >= 16 and not _cut_short(fh, size)
    count = 1
    for n in shape:
        count *= int(n)
    end = fh.tell() + count * dtype.itemsize
    return size >= end or _beyond(end, limit)


def _cut_short(fh: BinaryIO, size: int) -> bool:
    """An npy header that fails to parse because the file ends inside it."""
    head = _read_at(fh, 0, 12)
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        return False
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
        return size < 10 + hlen
    if len(head) < 12:
        return True
    (hlen,) = struct.unpack("<I", head[8:12])
    return size < 12 + hlen


def zip_archive(fh: BinaryIO, limit: int | None = None) -> bool:
    """The zip's end-of-central-directory record is there and its directory lies inside the file."""
    size = _size(fh)
    head = _read_at(fh, 0, 4)
    if not head.startswith(ZIP_SIGNATURES):
        return not _short_prefix(head, ZIP_SIGNATURES)
    if size < 22:
        return False
    tail = _read_at(fh, max(0, size - 65557), 65557)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return _read_at(fh, 0, 2) != b"PK"  # a zip cut short, or not a zip at all (the decoder says)
    cd_size, cd_offset = struct.unpack("<II", tail[at + 12:at + 20])
    if cd_offset == 0xFFFFFFFF:
        return True  # zip64: let the decoder read it
    return cd_offset + cd_size <= size - (len(tail) - at)


def hdf5(fh: BinaryIO, limit: int | None = None) -> bool:
    """The superblock is there and its end-of-file address is inside the file."""
    size = _size(fh)
    signature = HDF5_SIGNATURE
    first = _read_at(fh, 0, 8)
    if len(first) < 8:
        return not _short_prefix(first, (signature,))
    for base in (0, 512, 1024, 2048):
        head = _read_at(fh, base, 128)
        if len(head) < 9:
            return False
        if head[:8] != signature:
            continue
        version = head[8]
        if version in (0, 1):
            if len(head) < 16:
                return False
            offsets = head[13]
            at = 24 + (4 if version == 1 else 0) + offsets * 2  # base and free-space addresses first
        elif version in (2, 3):
            offsets = head[9]
            at = 12 + offsets * 2  # base address, superblock extension address
        else:
            return True
        if offsets not in (2, 4, 8) or len(head) < at + offsets:
            return len(head) >= at + offsets
        eof = int.from_bytes(head[at:at + offsets], "little")
        return base + eof <= size or _beyond(base + eof, limit)
    return size >= 8  # no signature: not HDF5 (the decoder says), unless the file is still tiny


def json_text(fh: BinaryIO, limit: int | None = None) -> bool:
    """The JSON document does not end before its last value closes."""
    fh.seek(0)
    data = fh.read()
    text = data.decode("utf-8", "replace").rstrip()
    if not text or text.lstrip()[:1] not in ("{", "["):
        return True  # empty, or not a JSON object or list: the decoder says what is wrong
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:  # an error at the very end, or a string still open: more may come
        return exc.pos < len(text) and not exc.msg.startswith("Unterminated string")
    except (ValueError, RecursionError):
        return True
    return True


CHECKS = {"tif": tiff, "npy": npy, "npz": zip_archive, "h5": hdf5, "json": json_text}


def complete(fh: BinaryIO, fmt: str, max_bytes: int | None = None) -> bool:
    """Whether the file of format ``fmt`` (tif, npy, npz, h5, json) is whole; other formats always are.
    ``max_bytes``: the most the file may hold (a structure that needs more can never be whole)."""
    check = CHECKS.get(fmt)
    if check is None:
        return True
    try:
        return check(fh, max_bytes)
    finally:
        fh.seek(0)


__all__ = ["complete", "CHECKS"]
