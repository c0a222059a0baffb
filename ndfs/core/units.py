"""Sizes and durations as people write and read them: '512M' in, '512 MiB' out (powers of 1024); seconds.
No I/O."""

from __future__ import annotations

import argparse


def parse_size(text: str, minimum: int = 0) -> int:
    """Bytes from '512M', '4G', '1048576' (powers of 1024), at least ``minimum``; NaN and infinity refused."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        value = float("nan")
    if not minimum <= value < float("inf"):  # NaN fails every comparison
        what = "a positive size" if minimum > 0 else "a size"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r} (use e.g. 64K, 512M or 4G)")
    return int(value)


def positive_size(text: str) -> int:
    """:func:`parse_size` of at least one byte."""
    return parse_size(text, minimum=1)


def positive_seconds(text: str, *, allow_inf: bool = False) -> float:
    """A positive number of seconds (``inf`` too with ``allow_inf``); NaN, zero and negatives refused."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or (value == float("inf") and not allow_inf):  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"not a positive number of seconds{' (or inf)' if allow_inf else ''}: "
                                         f"{text!r}")
    return value


def human_size(n: float | None) -> str:
    """Bytes in powers of 1024, as parse_size reads them back: 0 B, 1.5 KiB, 512 MiB, 4 GiB."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f}".removesuffix(".0") + f" {unit}"
        n /= 1024
    raise AssertionError("unreachable")
