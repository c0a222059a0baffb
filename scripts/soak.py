#!/usr/bin/env python
"""Bounded soak: mixed reads and writes through a real mount with faults on, then count what was lost.

    python scripts/soak.py [--seconds 120] [--workers 8] [--fault-rate 0.1] [--mode sync|async]
                           [--protocol boss|dvid|neurodata] [--fault-modes 503,drop,reset,...]

What runs (everything on 127.0.0.1, cleaned up at the end):

* a protocol server (``--protocol``: ndfs's own BOSS, DVID or NeuroData
  server) over a small demo store, answering a seeded fraction of requests
  (``--fault-rate``) with a fault drawn from ``--fault-modes`` (503s,
  dropped connections, resets, bodies cut off, short, garbled or padded; see
  ``ndfs.serve.common.FaultInjector``), and a switch that takes it fully
  down for a second now and then (``--outages``);
* an ``ndfs mount`` of that server as remote ``b`` (outbox on, ``--mode``);
* ``--workers`` threads for ``--seconds``: each owns some z-planes and fills
  one of them with a new constant value (a whole-plane TIFF write), or reads a
  random z, y or x plane of the volume and checks it. A plane read must be one
  of the values that plane has held (never a mix: a torn read), y and x reads
  must agree with the z-planes' possible values row by row.

At the end the mount is unmounted with ``ndfs umount`` (which waits for the
outbox), the outbox is retried if anything is left, and the server's store is
compared with the last value every worker saw accepted for each of its
planes. A write whose ``close()`` failed with EIO is still expected to land
(the outbox keeps it); one refused outright, or whose open or write failed
(nothing was sent), is not. The table shows
operations, errors by errno, bytes verified and data lost; the exit status is
1 if anything was lost, torn or wrong.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import io
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (32, 96, 96)  # z, y, x of the soaked volume


class Switch:
    """WSGI middleware that answers 503 to everything while ``down``."""

    def __init__(self, app):
        self.app, self.down = app, False

    def __call__(self, environ, start_response):
        if self.down:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"status": 503, "code": 9002, "message": "soak outage"}']
        return self.app(environ, start_response)


def tiff_bytes(plane: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, plane)
    return buf.getvalue()


#: per protocol: (the app's module and class, the store folder it serves, remote settings, the volume's
#: folder in the mount below remote b). The demo is at WORK/coll/demo/em.
PROTOCOLS = {
    "boss": ("ndfs.serve.boss", "BossApp", ".", "", ("coll", "demo", "em")),
    "dvid": ("ndfs.serve.dvid", "DvidApp", "coll", 'branch = "master"\n', ("demo", "em")),
    "neurodata": ("ndfs.serve.neurodata", "NeuroDataApp", "coll", "", ("demo", "em")),
}
#: faults whose bodies the protocol lets a client detect (DVID's raw voxels carry no checksum: a same-length
#: garbled body cannot be told from data, so "corrupt" is not used there by default)
DEFAULT_MODES = {"boss": "503,drop,reset,cut,truncate,corrupt,pad", "dvid": "503,drop,reset,cut,truncate,pad",
                 "neurodata": "503,drop,reset,cut,truncate,corrupt,pad"}


def run(args) -> int:
    import importlib

    import tifffile
    import zarr

    from ndfs.stores.local import LocalBackend
    from ndfs.tools.demo import make_demo
    from ndfs.serve.common import ServeOptions, WsgiServer
    from ndfs.testing.mount import mounted, ndfs

    work = Path(tempfile.mkdtemp(prefix="ndfs-soak-"))
    os.environ["NDFS_OUTBOX_DIR"] = str(work / "outbox")
    make_demo(str(work / "coll"), shape=SHAPE, levels=1, chunk_shape=(16, 64, 64), progress=False)
    zstore = zarr.open_array(str(work / "coll" / "demo" / "em" / "0"), mode="r+")
    # every plane starts uniform, so a read can be checked against the plane's history
    history = {z: [z % 250 + 1] for z in range(SHAPE[0])}
    for z in range(SHAPE[0]):
        zstore[z] = history[z][0]
    last_ok = {z: history[z][0] for z in range(SHAPE[0])}
    floor = {z: 0 for z in range(SHAPE[0])}  # history index of the last write whose close() returned
    rewrites = collections.Counter()  # z-plane -> number of writes to it in progress or finished
    module, cls, served, settings, volume = PROTOCOLS[args.protocol]
    app = getattr(importlib.import_module(module), cls)(LocalBackend(work / served))
    switch = Switch(app)
    modes = tuple(m for m in (args.fault_modes or DEFAULT_MODES[args.protocol]).split(",") if m)
    options = ServeOptions(fault_rate=args.fault_rate, seed=args.seed, fault_modes=modes, stall_s=12.0)
    stats = collections.Counter()
    errors = collections.Counter()
    problems: list[str] = []
    lock = threading.Lock()
    with WsgiServer(switch, options=options) as server:
        config = work / "ndfs.toml"
        config.write_text(f'[remotes.b]\nkind = "{args.protocol}"\nurl = "{server.url}"\nretries = 2\n'
                          f'backoff_s = 0.05\ntimeout_s = 10.0\n{settings}[cache]\ndir = "{work / "cache"}"\n'
                          f'[write]\nwrite_back = "{args.mode}"\nretry_max_s = 2.0\n')
        mnt = work / "mnt"
        with mounted(config, mnt):
            level = mnt / "b" / Path(*volume) / "0"
            deadline = time.monotonic() + args.seconds
            owned = {w: [z for z in range(SHAPE[0]) if z % args.workers == w] for w in range(args.workers)}

            def floors() -> dict[int, int]:
                with lock:
                    return dict(floor)

            def possible(start: dict[int, int]) -> dict[int, set[int]]:
                """Per plane, what a read that began at `start` may return: the value whose write had
                returned then, or anything written since (the read may be ordered after those)."""
                with lock:
                    return {z: set(history[z][start[z]:]) for z in history}

            def worker(w: int) -> None:
                rng = random.Random(args.seed * 1000 + w)
                while time.monotonic() < deadline:
                    op = rng.random()
                    try:
                        if op < 0.35 and owned[w]:
                            z = rng.choice(owned[w])
                            value = rng.randrange(1, 256)
                            with lock:
                                history[z].append(value)
                                mine = len(history[z]) - 1
                                rewrites[z] += 1
                            data = tiff_bytes(np.full(SHAPE[1:], value, np.uint8))
                            try:  # open and write: a failure here means nothing was sent
                                fh = open(level / "z" / f"{z}.tif", "wb", buffering=0)
                                try:
                                    view = memoryview(data)
                                    while view:
                                        view = view[fh.write(view):]
                                except BaseException:
                                    with contextlib.suppress(OSError):
                                        fh.close()  # a partial file is refused (EINVAL): nothing stored
                                    raise
                            except OSError as exc:
                                with lock:
                                    rewrites[z] += 1
                                    errors[f"write {errno.errorcode.get(exc.errno, exc.errno)} "
                                           "before close (nothing sent)"] += 1
                                continue
                            try:  # close posts the plane; EIO: kept in the outbox, it still lands
                                fh.close()
                            except OSError as exc:
                                if exc.errno != errno.EIO:  # refused: not stored
                                    with lock:
                                        rewrites[z] += 1
                                        errors[f"write {errno.errorcode.get(exc.errno, exc.errno)} "
                                               "at close (refused)"] += 1
                                    continue
                                with lock:
                                    errors["write EIO at close (kept in outbox)"] += 1
                            with lock:
                                last_ok[z] = value
                                floor[z] = mine
                                rewrites[z] += 1
                                stats["writes"] += 1
                                stats["bytes written"] += SHAPE[1] * SHAPE[2]
                        else:
                            axis = rng.choice("zyx")
                            i = rng.randrange(SHAPE["zyx".index(axis)])
                            start = floors()
                            with lock:
                                before = rewrites[i]
                            try:
                                plane = tifffile.imread(level / axis / f"{i}.tif")
                            except (ValueError, tifffile.TiffFileError):
                                plane = np.zeros((0,), np.uint8)
                            allowed = possible(start)
                            with lock:  # odd count, or moved: a writer had the file open meanwhile
                                rewritten = axis == "z" and (before % 2 or rewrites[i] != before)
                            if plane.size == 0 and rewritten:
                                # opened while its writer had just truncated it: short, as on a local disk
                                with lock:
                                    stats["short reads of a file being rewritten"] += 1
                                continue
                            if axis == "z":
                                u = np.unique(plane)
                                if len(u) != 1 or int(u[0]) not in allowed[i]:
                                    problems.append(f"z/{i}.tif read {u[:5]} not in its history")
                            else:  # each row of a y or x plane is one z-plane's value
                                for z in range(SHAPE[0]):
                                    u = np.unique(plane[z])
                                    if len(u) != 1 or int(u[0]) not in allowed[z]:
                                        problems.append(f"{axis}/{i}.tif row z={z} read {u[:5]}")
                                        break
                            with lock:
                                stats["reads"] += 1
                                stats["bytes verified"] += plane.nbytes
                    except OSError as exc:
                        with lock:
                            errors[f"{'write' if op < 0.35 else 'read'} "
                                   f"{errno.errorcode.get(exc.errno, exc.errno)}"] += 1

            def outages() -> None:
                rng = random.Random(args.seed)
                while time.monotonic() < deadline - 2:
                    time.sleep(rng.uniform(2, 6))
                    switch.down = True
                    stats["outages"] += 1
                    time.sleep(1.0)
                    switch.down = False

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
            if args.outages:
                threads.append(threading.Thread(target=outages))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            switch.down = False
            injected = dict(server.faults.injected)
            server.faults.clear()  # let the outbox drain without injected faults
            ndfs("umount", "--wait", "120", mnt, check=False, timeout=300)
        left = ndfs("--config", config, "outbox", "retry", "--timeout", "60", check=False, timeout=300)
        stats["outbox entries left"] = left.stdout.count("pending") if left.returncode else 0
    final = zarr.open_array(str(work / "coll" / "demo" / "em" / "0"), mode="r")[:]
    lost = sum(1 for z in range(SHAPE[0]) if not np.all(final[z] == last_ok[z]))
    rows = [("protocol", args.protocol), ("seconds", args.seconds), ("workers", args.workers),
            ("fault rate", args.fault_rate), ("write-back mode", args.mode),
            *[(f"faults injected: {m}", n) for m, n in sorted(injected.items())], *sorted(stats.items()),
            *sorted(errors.items()),
            ("operations", stats["reads"] + stats["writes"] + sum(errors.values())),
            ("errors returned", sum(errors.values())),
            ("torn or wrong reads", len(problems)), ("planes lost", lost)]
    width = max(len(str(k)) for k, _ in rows)
    print(f"\n{'ndfs soak':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for p in problems[:10]:
        print("  problem:", p)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if lost or problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="how long to soak (default 120)")
    p.add_argument("--workers", type=int, default=8, help="reader/writer threads (default 8)")
    p.add_argument("--fault-rate", type=float, default=0.1, help="fraction of requests failed (default 0.1)")
    p.add_argument("--mode", choices=["sync", "async"], default="sync", help="write-back mode (default sync)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="boss", help="remote to soak (default boss)")
    p.add_argument("--fault-modes", metavar="M,M,...",
                   help="faults to draw from (default: every one the protocol's bodies can be checked against: "
                        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_MODES.items()) + "; 'stall' also exists)")
    p.add_argument("--outages", action=argparse.BooleanOptionalAction, default=True,
                   help="take the server fully down for a second now and then (default on)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.workers < 1 or args.seconds <= 0:
        p.error("--workers and --seconds must be positive")
    from ndfs.serve.common import FAULT_MODES

    unknown = [m for m in (args.fault_modes or "").split(",") if m and m not in FAULT_MODES]
    if unknown:
        p.error(f"unknown fault mode(s) {', '.join(unknown)}; known: {', '.join(FAULT_MODES)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
