#!/usr/bin/env python
"""Benchmark of the bounds of ``ndfs serve`` (issue 18): memory under maximal load, latency under a flood.

One command builds a store, starts ``ndfs serve`` children on 127.0.0.1, measures and prints one table of
ratios::

    python scripts/bench_serve.py [--quick | --smoke] [--clients 20] [--flood 200] [--keep]

1. Memory, per protocol (BOSS, DVID, NeuroData): ``--clients`` (20) clients ask at once for a maximal cutout,
   one at the server's cutout cap (``--max-cutout-bytes``, set to the whole test volume: 512 MiB; quick
   64 MiB; smoke 8 MiB) of incompressible uint8 voxels, in the protocol's own format (BOSS blosc, built
   whole; DVID raw and NeuroData npz, streamed). A client told 503 (the server is busy) tries again after
   half a second, as the ndfs drivers do. The server's peak RSS (VmHWM, the kernel's own high-water mark)
   is divided by its stated bound: its RSS at rest plus ``--max-request-memory`` (the default 2 GiB; quick
   256 MiB; smoke 64 MiB) plus 64 MiB. Goal: at most 1.
2. Latency: an authenticated client asks for ``/v1/collection/`` on a fresh connection each time, first
   alone, then while ``--flood`` (200) connections from 20 loopback addresses drip header bytes (one a
   second, never finishing a request) and reconnect once a second when the server closes them; the server
   runs with its default bounds. Shown: the median and 95th percentile during the flood over those without
   (goal: at most 2 and 3), and the authenticated requests that failed (goal 0).

Clients read answers in 1 MiB pieces and keep only their byte counts, so the benchmark's own memory stays
small. Absolute numbers move between machines; only the ratios of one run mean something. A missed goal
exits 0; an error exits 1 after printing what was measured.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
import requests  # noqa: E402

from ndfs.testing.serve import memory, served  # noqa: E402

MiB = 2**20
TOKEN = "bench-serve-token"
AUTH = {"Authorization": f"Token {TOKEN}"}
SLACK = 64 * MiB
MODES = {  # (volume z, y, x of uint8; --max-request-memory or None for the default; latency requests)
    "default": ((32, 4096, 4096), None, 200),
    "quick": ((16, 2048, 2048), 256 * MiB, 50),
    "smoke": ((8, 1024, 1024), 64 * MiB, 10),
}


def build_store(root: Path, shape) -> None:
    """root/bench/big/em: incompressible uint8 voxels (BOSS: collection bench, experiment big)."""
    from ndfs.stores.local import LocalBackend

    backend = LocalBackend(root, create=True)
    depth = 8
    backend.create_volume(("bench", "big", "em"), shape, "uint8", chunk_shape=(depth, 512, 512))
    rng = np.random.default_rng(18)
    from ndfs.core.geometry import Box

    for z in range(0, shape[0], depth):
        slab = rng.integers(0, 256, (min(depth, shape[0] - z),) + tuple(shape[1:]), dtype=np.uint8)
        backend.write(("bench", "big", "em"), Box((z, 0, 0), (z + len(slab),) + tuple(shape[1:])), 0, slab)
    backend.close()


def maximal_url(protocol: str, url: str, shape) -> str:
    z, y, x = shape
    if protocol == "boss":
        return f"{url}/v1/cutout/bench/big/em/0/0:{x}/0:{y}/0:{z}/"
    if protocol == "dvid":
        repos = requests.get(f"{url}/api/repos/info", headers=AUTH, timeout=30).json()
        uuid = next(u for u, r in repos.items() if r["Alias"] == "big")
        return f"{url}/api/node/{uuid}/em/raw/0_1_2/{x}_{y}_{z}/0_0_0"
    return f"{url}/nd/sd/big/em/npz/0/0,{x}/0,{y}/0,{z}/"


def fetch(url: str, headers: dict, tally: dict, lock: threading.Lock) -> None:
    """GET url, reading the answer in 1 MiB pieces; retry after 503; count what came back."""
    for _ in range(600):
        with requests.get(url, headers=headers, stream=True, timeout=600) as resp:
            if resp.status_code == 503:
                with lock:
                    tally["busy"] += 1
                time.sleep(0.5)
                continue
            size = sum(len(piece) for piece in resp.iter_content(MiB))
            with lock:
                tally[resp.status_code] = tally.get(resp.status_code, 0) + 1
                tally["bytes"] += size
            return
    raise RuntimeError(f"{url}: still busy after 600 tries")


def memory_row(protocol: str, store: Path, shape, budget: int | None, clients: int) -> tuple[float, str]:
    cap = int(np.prod(shape))
    extra = ["--max-cutout-bytes", str(cap), "--cache-memory", "0"]  # the requests' budget alone (the cache has its own)
    extra += ["--max-request-memory", str(budget)] if budget else []
    path = store if protocol == "boss" else store / "bench"
    with served(protocol, path, "--token", TOKEN, *extra) as srv:
        url = maximal_url(protocol, srv.url, shape)
        headers = {"Accept": "application/blosc", **AUTH} if protocol == "boss" else AUTH
        small = {"boss": ("0:{}/".format(shape[0]), "0:1/"), "dvid": (f"_{shape[0]}/", "_1/"),
                 "neurodata": (f"0,{shape[0]}/", "0,1/")}[protocol]
        requests.get(url.replace(*small), headers=headers, timeout=60).raise_for_status()  # codecs loaded
        rest = memory(srv.proc.pid)["VmRSS"]
        tally, lock = {"busy": 0, "bytes": 0}, threading.Lock()
        errors: list[BaseException] = []

        def run():
            try:
                fetch(url, headers, tally, lock)
            except BaseException as exc:  # reported below, after the others finish
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = memory(srv.proc.pid)["VmHWM"]
    if errors:
        raise errors[0]
    bound = rest + (budget or 2 * 2**30) + SLACK
    note = (f"{tally.get(200, 0)}/{clients} answered, {tally['busy']} retries after 503; peak {peak / MiB:.0f} "
            f"MiB, bound {bound / MiB:.0f} MiB (rest {rest / MiB:.0f} + budget + 64)")
    if tally.get(200, 0) != clients:
        raise RuntimeError(f"{protocol}: {tally}")
    return peak / bound, note


# ---- the flood ---------------------------------------------------------------------------------------------
class Flood:
    """``n`` connections from 20 loopback addresses dripping header bytes; closed ones reconnect a second later."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.stop = threading.Event()
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket | None:
        s = socket.socket()
        try:
            s.bind((f"127.0.0.{2 + i % 20}", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /v1/collection/ HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            s.setblocking(False)
            return s
        except OSError:
            s.close()
            return None

    def _run(self):
        socks = [self._open(i) for i in range(self.n)]
        while not self.stop.wait(1.0):
            for i, s in enumerate(socks):
                if s is None:
                    socks[i] = self._open(i)
                    continue
                readable, _, _ = select.select([s], [], [], 0)
                try:
                    if readable and not s.recv(4096):
                        raise ConnectionResetError
                    s.send(b"a")
                except OSError:  # the server closed it: count it, reconnect next second
                    self.closed_by_server += 1
                    s.close()
                    socks[i] = None
        for s in socks:
            if s is not None:
                s.close()

    def __enter__(self):
        self.thread.start()
        time.sleep(2.0)  # let it fill the server
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def latencies(url: str, n: int) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(n):
        started = time.perf_counter()
        try:
            ok = requests.get(f"{url}/v1/collection/", headers=AUTH, timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            times.append(time.perf_counter() - started)
        else:
            failed += 1
    return times, failed


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def latency_rows(store: Path, n: int, flood_n: int) -> list[tuple[str, float, str, bool]]:
    with served("boss", store, "--token", TOKEN) as srv:
        latencies(srv.url, 5)  # warm-up
        alone, failed_alone = latencies(srv.url, n)
        port = int(srv.url.rsplit(":", 1)[1])
        with Flood(port, flood_n) as flood:
            during, failed = latencies(srv.url, n)
        closed = flood.closed_by_server
    if not during:
        return [("authenticated requests answered during the flood", 0.0, "0", False)]
    mid = statistics.median(during) / statistics.median(alone)
    tail = p95(during) / p95(alone)
    return [
        (f"authenticated p50 latency during a {flood_n}-connection slow flood / alone", mid, "at most 2", mid <= 2),
        ("the same, p95", tail, "at most 3", tail <= 3),
        (f"authenticated requests failed during the flood (of {n}; alone: {failed_alone}); "
         f"flood connections the server closed: {closed}", float(failed), "0", failed == 0),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 64 MiB volume, 256 MiB request memory, 50 requests")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--clients", type=int, default=20, help="concurrent maximal requests (default 20)")
    parser.add_argument("--flood", type=int, default=200, help="slow connections of the flood (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the store's temp dir")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    shape, budget, n = MODES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="ndfs-bench-serve-"))
    rows: list[tuple[str, float, str, bool]] = []
    notes: list[str] = []
    status = 0
    started = time.monotonic()
    try:
        build_store(tmp, shape)
        for protocol in ("boss", "dvid", "neurodata"):
            ratio, note = memory_row(protocol, tmp, shape, budget, args.clients)
            rows.append((f"{protocol}: peak RSS under {args.clients} concurrent maximal cutouts "
                         f"({int(np.prod(shape)) // MiB} MiB) / bound", ratio, "at most 1", ratio <= 1))
            notes.append(f"{protocol}: {note}")
        rows += latency_rows(tmp, n, args.flood)
    except Exception:
        traceback.print_exc()
        print("ERROR: the benchmark stopped; the rows above are what was measured", file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            print(f"store kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    width = max([len(r[0]) for r in rows] + [10])
    print(f"\nndfs serve bounds ({mode}, {time.monotonic() - started:.0f} s)\n")
    print(f"{'what':<{width}}  {'ratio':>7}  {'goal':<10}  result")
    for what, value, goal, ok in rows:
        print(f"{what:<{width}}  {value:7.2f}  {goal:<10}  {'PASS' if ok else 'MISS'}")
    for note in notes:
        print("  " + note)
    return status


if __name__ == "__main__":
    sys.exit(main())
