#!/usr/bin/env python
"""The local store's 2x downsampling against tinybrain, the maintained library, in one run.

    python scripts/bench_downsample.py [--quick]

For a uint8 and a uint16 image slab and a uint64 label slab it times ndfs's
``downsample`` and tinybrain's (``downsample_with_averaging`` /
``downsample_segmentation``, 2x2 in x and y) and prints the ratio (tinybrain
time / ndfs time) and whether the results are equal. tinybrain is optional
(``pip install tinybrain``); without it only ndfs's times print.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ndfs.core.downsample import downsample


def best_of(fn, arr, runs: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn(arr)
        best = min(best, time.perf_counter() - started)
    return best, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller slabs, fewer runs")
    args = p.parse_args(argv)
    size, runs = (256, 3) if args.quick else (1024, 5)
    rng = np.random.default_rng(0)
    cases = {
        "image uint8": (rng.integers(0, 256, (16, size, size), dtype=np.uint8), "image"),
        "image uint16": (rng.integers(0, 65536, (16, size, size), dtype=np.uint16), "image"),
        "labels uint64": (np.repeat(np.repeat(rng.integers(0, 500, (16, size // 8, size // 8), dtype=np.uint64),
                                              8, 1), 8, 2), "annotation"),
    }
    try:
        import tinybrain
    except ImportError:
        tinybrain = None
    print(f"{'slab':<16}{'ndfs s':>10}{'tinybrain s':>13}{'ratio':>8}  equal")
    for name, (arr, kind) in cases.items():
        ours, mine = best_of(lambda a: downsample(a, kind), arr, runs)
        if tinybrain is None:
            print(f"{name:<16}{ours:>10.4f}{'-':>13}{'-':>8}  -")
            continue
        fn = tinybrain.downsample_segmentation if kind == "annotation" else tinybrain.downsample_with_averaging
        theirs, other = best_of(lambda a: fn(np.asfortranarray(a.T), (2, 2, 1))[0].T, arr, runs)
        print(f"{name:<16}{ours:>10.4f}{theirs:>13.4f}{theirs / ours:>8.2f}  {np.array_equal(mine, other)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
