"""Scroll 64 slices of a precomputed layer with thick chunks: through an ndfs mount vs CloudVolume slice by slice.

Both read the same layer (written by CloudVolume, raw uint8, chunks 64 deep) from the same static HTTP
server on 127.0.0.1 with the same latency per request. The mount reads ``z/<N>.tif`` files one after the
other (as Fiji scrolls a folder of slices); CloudVolume reads ``vol[:, :, z]`` for each z, as a script
that scrolls would. Prints the times, the ratio (goal: under 0.2) and each reader's request count.

    python scripts/bench_datasets.py              # 1024 x 1024 x 64, chunks 256 x 256 x 64, 20 ms a request
    python scripts/bench_datasets.py --quick      # 512 x 512 x 64, chunks 128 x 128 x 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_layer(root: Path, size: int, chunk: int, depth: int) -> np.ndarray:
    from cloudvolume import CloudVolume

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(size, size, depth, 1), dtype=np.uint8)
    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [size, size, depth],
                                       chunk_size=[chunk, chunk, depth])
    cv = CloudVolume(f"file://{root}/layer", info=info, progress=False, compress=False)
    cv.commit_info()
    cv[:, :, :] = data
    return data[..., 0].transpose(2, 1, 0)


def scroll_mount(server, root: Path, depth: int, expected: np.ndarray) -> tuple[float, int]:
    import tifffile

    from ndfs.testing.mount import mounted

    cfg = root / "ndfs.toml"
    cfg.write_text(f'[remotes.pc]\nkind = "precomputed"\nurl = "{server.url}/layer"\n'
                   f'[cache]\ndir = "{root / "cache"}"\n')
    mnt = root / "mnt"
    with mounted(cfg, mnt):
        (mnt / "pc" / "layer" / "info.json").read_bytes()  # the layer's metadata: not part of the scroll
        server.reset()
        started = time.perf_counter()
        for z in range(depth):
            plane = tifffile.imread(mnt / "pc" / "layer" / "0" / "z" / f"{z}.tif")
            if not np.array_equal(plane, expected[z]):
                raise SystemExit(f"the mount read a wrong slice {z}")
        took = time.perf_counter() - started
        return took, server.requests


def scroll_cloudvolume(server, depth: int, expected: np.ndarray) -> tuple[float, int]:
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"precomputed://{server.url}/layer", progress=False, cache=False)
    cv.info  # noqa: B018  (fetched once, like the mount's metadata)
    server.reset()
    started = time.perf_counter()
    for z in range(depth):
        plane = np.asarray(cv[:, :, z])[..., 0, 0].T
        if not np.array_equal(plane, expected[z]):
            raise SystemExit(f"CloudVolume read a wrong slice {z}")
    return time.perf_counter() - started, server.requests


def main(argv=None) -> int:
    from ndfs.testing.http_static import StaticServer
    from ndfs.testing.mount import fuse_unavailable

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 512 x 512 layer with 128 x 128 chunks")
    p.add_argument("--latency-ms", type=float, default=20.0, help="delay of every HTTP answer (default 20)")
    args = p.parse_args(argv)
    if fuse_unavailable():
        print(f"cannot mount: {fuse_unavailable()}", file=sys.stderr)
        return 1
    size, chunk, depth = (512, 128, 64) if args.quick else (1024, 256, 64)
    with tempfile.TemporaryDirectory(prefix="ndfs-bench-datasets-") as tmp:
        root = Path(tmp)
        expected = make_layer(root, size, chunk, depth)
        with StaticServer(root, latency_ms=args.latency_ms) as server:
            mount_s, mount_n = scroll_mount(server, root, depth, expected)
            cv_s, cv_n = scroll_cloudvolume(server, depth, expected)
    chunks = (size // chunk) ** 2
    print(f"layer {size} x {size} x {depth} uint8, chunks {chunk} x {chunk} x {depth} ({chunks} chunks), "
          f"{args.latency_ms:g} ms per request, {depth} slices scrolled")
    print(f"{'reader':<28}{'seconds':>10}{'requests':>10}")
    print(f"{'ndfs mount (z/<N>.tif)':<28}{mount_s:>10.2f}{mount_n:>10}")
    print(f"{'CloudVolume vol[:, :, z]':<28}{cv_s:>10.2f}{cv_n:>10}")
    ratio = mount_s / cv_s
    print(f"time ratio mount / CloudVolume: {ratio:.3f} (goal: under 0.2)")
    return 0 if ratio < 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
