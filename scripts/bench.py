#!/usr/bin/env python
"""Benchmark of the ndfs chunk cache and mount against same-run baselines (issue 4, "Targets").

One command builds the test volumes, starts what it needs, measures the seven
targets side by side and prints one table of ratios::

    python scripts/bench.py [--quick | --smoke] [--size-mib N] [--latency-ms 20]
                            [--bandwidth-mbps 400] [--repeats N] [--only 1,3] [--keep]

What runs (everything on 127.0.0.1, cleaned up in ``finally``):

* a local store (zarr, uint8, 16x512x512 chunks) in a temp dir on tmpfs when
  it fits, with channels ``bench/stack/em`` (the main volume, ``--size-mib``),
  ``bench/ls/em`` (10,000 z-slices of 16x16 voxels) and ``bench/stream/em``
  (four times the streaming mount's memory budget); smooth blocky noise with
  one bit of pixel noise: zstd shrinks it to about 1/3, BOSS's blosc frames
  to about 0.7;
* a BOSS protocol server over that store, in a child process (this script
  with ``--serve-child``: ``ndfs.serve.boss.BossApp`` in
  ``ndfs.serve.common.WsgiServer``, the code ``ndfs serve --protocol boss``
  runs) with the injected per-request latency and the shared bandwidth cap;
  request counts come from that server's own ``RequestCounter``, read back
  through a small ``/_bench/`` route (the route's own requests are excluded);
* ``ndfs mount`` daemons (``ndfs.testing.mount.mounted``) with an
  ``ndfs.toml`` naming a ``boss`` remote at that server.

The targets, each ndfs measurement next to its baseline from the same run:

1. scroll 64 consecutive z-slices cold (read ``z/N.tif`` fully, in order):
   cutout requests per chunk touched, time vs a per-slice client (one
   cutout request per slice, sequential, decoded), the cutout bytes the
   mount pulled (read-ahead included) vs a one-shot client that fetches each
   touched cuboid once, ``--workers`` at a time, and the time vs the link's
   floor (those bytes / bandwidth + one latency per wave of ``--workers``).
   The floor's runs (ndfs and that one-shot client) go to a second server
   child with ``--keep-bodies``: the same store, latency and cap, answering
   a cutout asked before from memory, so that its compressor, which would
   share the benchmark's two cores with the client, does not hold the link
   back (the first server's one-shot client is in the note);
2. warm re-read of ``stack.tif`` vs the same bytes on tmpfs;
3. cold ``cp stack.tif`` (fresh mount, fresh cache dir) vs a direct parallel
   HTTP client (cuboid-aligned cutouts on as many threads as ndfs uses);
4. ``ls -l`` of a z folder of 10,000 slices: cutout requests, and time vs
   ``ls -l`` of 10,000 empty files on tmpfs;
5. streaming every slice of a volume 4x the memory budget: the daemon's peak
   RSS (sampled VmRSS and VmHWM) vs budget + 150 MiB, and the disk cache
   directory's size (du, sampled) vs its budget;
6. a second mount (new process) over the warm disk cache of target 1 scrolls
   the same range: cutout requests (goal 0);
7. revalidation (issue 25): a ``dvid`` remote on ``ndfs serve --protocol
   dvid`` over the same store (repo ``dvidbench``, instance ``em``, an open
   node, 32^3 blocks, the same latency and cap) scrolls 64 consecutive
   z-slices cold at a viewer's pace (10 slices/s; unpaced with ``--smoke``),
   once with the default max age (the node checked every 5 s) and once with
   ``max_age_s = inf`` (never checked): all requests the server saw, checked
   vs never (goal: under 5% more).
8. petascale, simulated: a synthetic remote (``ndfs.stores.synthetic``) of
   20,000 x 100,000 x 100,000 voxels (smoke: 2,000 in z) mounted: ``ls -l``
   of a 20,000-slice z folder (voxel requests, time vs tmpfs), ``info.json``
   (vs a 64^3 channel's), a cutout at the far corner (vs at the origin), a
   64-slice scroll (bytes fetched vs the chunks touched), a random walk of
   slice reads (the daemon's median RSS in its last quarter vs its second), and the
   same channel through ``ndfs serve --protocol boss --remote``: a far cutout
   (vs the origin) and a 160 GB request (refused, 413);
9. the first look: a fresh mount of a local store on disk (page cache
   dropped): the first slice's time to first byte vs a later cold slice's,
   and its first ``cp stack.tif`` vs a second cold one.

Cold runs drop the kernel page cache first (``echo 3 >
/proc/sys/vm/drop_caches``, best effort, reported when refused). ndfs and
baseline runs alternate; a warm-up pass of each is discarded; medians of
``--repeats`` runs are shown (3 by default, 1 with ``--quick``, warm
measurements at least 3). A missed goal still exits 0; an error exits 1
after printing what was measured. ``--smoke`` runs every target at a tiny
size (for the test suite). Absolute numbers move between machines; only the
ratios of one run mean something.

``--api`` runs the API section instead (issue 10): A1-A3 fetch one large
cutout (256 MiB; quick 64, smoke 1) through ``ndfs.remote(...).get_cutout``
and through each protocol's reference client (intern for BOSS and DVID,
ndio 1.1.5 for NeuroData, when its test venv exists) against the same
``ndfs serve`` child; A4-A6 time ``ndfs.batch.map_blocks`` (an intensity
transform, a threshold and a count) with 1 and 2 workers, on threads, on
processes and on the Dask LocalCluster map_blocks keeps (the first run of
each worker count, which starts it, discarded; a LocalCluster with Dask's
defaults passed as ``client=`` in the note), and print the speedup (with the load
average: 2 workers get 2 cores only on a quiet machine); A7 reads a zarr v3
channel on disk whole through ``ndfs.open_volume(...)[:]`` vs tensorstore
(zarr-python in the note), A8 reads its planes one by one through the API vs
through a mount, page cache dropped; A9 counts the cells of the demo's label
channel through ``ndfs.count`` (voxels, box and centroid per cell) vs numpy's
``np.unique`` over the channel read whole by tensorstore.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

MiB = 2**20
CUBOID = (16, 512, 512)  # BOSS cuboid, z y x: the chunk grid ndfs sees through a boss remote
COLL = "bench"
STACK, LS, STREAM = ("bench", "stack", "em"), ("bench", "ls", "em"), ("bench", "stream", "em")
DVID_VOL = ("dvidbench", "em")  # a repo and its instance when served over the DVID protocol (target 7)
DVID_BLOCK = 32  # the served instance's block side (DVID's default for uint8blk)
SCROLL = 64
PACE_S = 0.1  # target 7: seconds per slice, a viewer's scroll
RSS_SLACK = 150 * MiB
KEPT_BODIES = 2 * 2**30  # bytes of cutout answers a --keep-bodies server child keeps (row 1d)


# ---- plan ---------------------------------------------------------------------
@dataclass
class Plan:
    mode: str
    size_mib: int
    xy: int
    z: int
    repeats: int
    warmup: bool
    ls_n: int
    mem_budget: int
    disk_budget: int
    stream_z: int
    latency_ms: float
    bandwidth_mbps: float
    workers: int
    keep: bool
    only: frozenset = frozenset()  # targets to run; empty: all

    def runs(self, target: str) -> bool:
        """Whether ``target`` runs: picked, or needed by a picked one (6 needs 1; 2 and 4 need 3's mount)."""
        if not self.only:
            return True
        needed = {"1": {"1", "6"}, "3": {"2", "3", "4"}}.get(target, {target})
        return bool(needed & self.only)

    @property
    def stack_bytes(self) -> int:
        return self.z * self.xy * self.xy


def make_plan(args) -> Plan:
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    size = args.size_mib or {"smoke": 8, "quick": 128, "default": 1024}[mode]
    xy = 1024 if size >= 64 else 512 if size >= 16 else 256
    z = max(SCROLL + 2 * CUBOID[0], round(size * MiB / (xy * xy)))
    mem = {"smoke": 4, "quick": 32, "default": 64}[mode] * MiB
    disk = mem
    repeats = args.repeats or {"smoke": 1, "quick": 1, "default": 3}[mode]
    return Plan(mode=mode, size_mib=size, xy=xy, z=z, repeats=repeats, warmup=mode != "smoke",
                ls_n=1000 if mode == "smoke" else 10_000, mem_budget=mem, disk_budget=disk,
                stream_z=max(1, 4 * mem // (xy * xy)), latency_ms=args.latency_ms,
                bandwidth_mbps=args.bandwidth_mbps, workers=args.workers, keep=args.keep,
                only=frozenset(getattr(args, "only", None) or ()))


TARGETS = ("1", "2", "3", "4", "5", "6", "7", "8", "9")


# ---- data ---------------------------------------------------------------------
def smooth_noise(rng, shape):
    """Blocky smooth noise (32-voxel cells in y/x, 8 in z) plus one bit of pixel noise; uint8."""
    import numpy as np

    z, y, x = shape
    coarse = rng.integers(0, 128, (z // 8 + 2, y // 32 + 2, x // 32 + 2), dtype=np.uint8)
    base = np.repeat(np.repeat(np.repeat(coarse, 8, 0), 32, 1), 32, 2)[:z, :y, :x]
    bit = np.frombuffer(rng.bytes(z * y * x), dtype=np.uint8).reshape(shape) & 1
    return base + 64 + bit


def build_store(store: Path, plan: Plan, log) -> None:
    import numpy as np

    from ndfs.stores.local import LocalBackend
    from ndfs.core.geometry import Box

    backend = LocalBackend(store, create=True)
    rng = np.random.default_rng(2024)
    started = time.monotonic()
    for ref, shape in ((STACK, (plan.z, plan.xy, plan.xy)), (STREAM, (plan.stream_z, plan.xy, plan.xy))):
        backend.create_volume(ref, shape, "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1,
                              chunk_shape=CUBOID)
        for z0 in range(0, shape[0], CUBOID[0]):
            z1 = min(z0 + CUBOID[0], shape[0])
            box = Box((z0, 0, 0), (z1, shape[1], shape[2]))
            backend.write(ref, box, 0, smooth_noise(rng, box.shape))
    backend.create_volume(LS, (plan.ls_n, 16, 16), "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1,
                          chunk_shape=(16, 16, 16))  # all zeros: never read
    if plan.runs("7"):  # the scroll and a block slab on each side, on the DVID block grid
        shape = (SCROLL + 2 * DVID_BLOCK, plan.xy, plan.xy)
        backend.create_volume(DVID_VOL, shape, "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1,
                              chunk_shape=(DVID_BLOCK, 256, 256))
        for z0 in range(0, shape[0], DVID_BLOCK):
            box = Box((z0, 0, 0), (z0 + DVID_BLOCK, shape[1], shape[2]))
            backend.write(DVID_VOL, box, 0, smooth_noise(rng, box.shape))
    backend.close()
    log(f"built the store ({plan.stack_bytes / MiB:.0f} MiB stack, {plan.stream_z * plan.xy**2 / MiB:.0f} MiB "
        f"stream, {plan.ls_n} ls slices) in {time.monotonic() - started:.1f} s")


# ---- the server, in a child process -------------------------------------------
def serve_child(args) -> int:
    """``--serve-child``: a BOSS (``--protocol dvid``: DVID) server over --store; prints ``PORT n``; stops on
    SIGTERM or stdin EOF. With ``--keep-bodies`` it answers a cutout asked before from memory (up to
    KEPT_BODIES bytes), so that after a warm-up its own compressor, on the benchmark's cores, does not
    hold the link back: latency and bandwidth cap still apply."""
    from urllib.parse import parse_qs

    from ndfs.stores.local import LocalBackend
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import ServeOptions, WsgiServer
    from ndfs.serve.dvid import DvidApp

    backend = LocalBackend(args.store, read_only=True)
    app = DvidApp(backend) if args.protocol == "dvid" else BossApp(backend)
    seen: list[str] = []  # paths of the cutout GETs that reached the app, in order
    lock = threading.Lock()
    holder: dict = {"cutout_bytes": 0, "kept_bytes": 0}  # bytes of the cutout answers' bodies; of those kept
    kept: dict = {}  # (path, query, accept) -> (status, headers, body), with --keep-bodies

    def routed(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_bench/"):
            counter = holder["server"].counter
            with lock:
                since = int(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["-1"])[0])
                doc = {"totals": counter.snapshot(), "cutouts": counter.count("GET", "/cutout/"),
                       "cutout_bytes": holder["cutout_bytes"],
                       "bench": counter.count(None, "/_bench/"), "seen": len(seen),
                       "paths": seen[since:] if since >= 0 else [],
                       "checks": counter.count("GET", "/api/repo/") + counter.count("GET", "/api/repos/info")}
            body = json.dumps(doc).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("REQUEST_METHOD") == "GET" and "/cutout/" in path:
            with lock:
                seen.append(path)
            if args.keep_bodies:
                return counted(answer_kept(environ, start_response, path))
            return counted(app(environ, start_response))
        return app(environ, start_response)

    def answer_kept(environ, start_response, path):
        key = (path, environ.get("QUERY_STRING", ""), environ.get("HTTP_ACCEPT", ""))
        with lock:
            hit = kept.get(key)
        if hit is None:
            answered = {}

            def note_start(status, headers, exc_info=None):
                answered["head"] = (status, list(headers))
                return start_response(status, headers, exc_info)

            body = app(environ, note_start)
            try:
                data = b"".join(body)
            finally:
                if hasattr(body, "close"):
                    body.close()
            status, headers = answered["head"]
            with lock:
                if status.startswith("200") and holder["kept_bytes"] + len(data) <= KEPT_BODIES:
                    kept[key] = (status, headers, data)
                    holder["kept_bytes"] += len(data)
            return [data]
        status, headers, data = hit
        start_response(status, list(headers))
        return [data]

    def counted(body):
        try:
            for piece in body:
                with lock:
                    holder["cutout_bytes"] += len(piece)
                yield piece
        finally:
            if hasattr(body, "close"):
                body.close()

    options = ServeOptions(latency_s=args.latency_ms / 1000.0,
                           bandwidth_bps=args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None)
    server = WsgiServer(routed, "127.0.0.1", 0, options=options, threads=16)
    holder["server"] = server
    signal.signal(signal.SIGTERM, lambda *_: server.stop())

    def watch_parent():
        sys.stdin.read()  # EOF when the benchmark exits, however it exits
        server.stop()

    threading.Thread(target=watch_parent, daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        backend.close()
    return 0


class Server:
    """The child server process, and its request counter as seen from here."""

    def __init__(self, store: Path, plan: Plan, log_path: Path, protocol: str = "boss", keep_bodies: bool = False):
        import requests

        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-child", "--store", str(store),
               "--latency-ms", str(plan.latency_ms), "--bandwidth-mbps", str(plan.bandwidth_mbps),
               "--protocol", protocol] + (["--keep-bodies"] if keep_bodies else [])
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True)
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()  # the child prints its port at once, or dies
            if line.startswith("PORT ") or not line:
                break
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.stop()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise RuntimeError(f"the {protocol} server did not start: {tail[0] if tail else 'no output'}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()

    def state(self, since: int = -1) -> dict:
        r = self.session.get(f"{self.url}/_bench/state", params={"since": since}, timeout=30)
        r.raise_for_status()
        return r.json()

    def cutouts(self) -> int:
        return self.state()["cutouts"]

    def requests(self) -> int:
        """Every request the server saw, but the benchmark's own."""
        state = self.state()
        return state["totals"]["requests"] - state["bench"]

    def quiet(self, quiet_s: float = 0.8, timeout_s: float = 30.0) -> int:
        """Wait (bounded) until no request of any kind arrived for quiet_s; return the count."""
        last, since = self.requests(), time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.requests()  # each count includes the state request asking for it, as `last` does
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        return last

    def settle(self, quiet_s: float = 0.8, timeout_s: float = 30.0) -> int:
        """Wait (bounded) until no cutout request arrived for quiet_s (prefetches done); return the count."""
        last, since = self.cutouts(), time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.cutouts()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        return last

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# ---- helpers ------------------------------------------------------------------
class Env:
    """Temp dirs, the server, mounts, notes: everything a target needs, and the cleanup."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.notes: list[str] = []
        self.drop_ok: bool | None = None
        self._n = 0
        self.work = Path(tempfile.mkdtemp(prefix="ndfs-bench-"))  # disk: caches, mounts, logs
        shm = Path("/dev/shm")
        need = plan.stack_bytes * 3 + 512 * MiB
        if shm.is_dir() and shutil.disk_usage(shm).free > need:
            self.fast = Path(tempfile.mkdtemp(prefix="ndfs-bench-", dir=shm))
        else:
            self.fast = Path(tempfile.mkdtemp(prefix="ndfs-bench-fast-"))
            self.note(f"/dev/shm lacks {need / MiB:.0f} MiB: store and tmpfs baselines are in {self.fast}")
        self.server: Server | None = None
        self.config = self.work / "ndfs.toml"

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def fresh(self, what: str) -> Path:
        self._n += 1
        p = self.work / f"{what}-{self._n}"
        p.mkdir(parents=True)
        return p

    def drop_caches(self) -> None:
        """Best effort: sync and drop the kernel page cache (root only)."""
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("3")
            self.drop_ok = True if self.drop_ok is None else self.drop_ok
        except OSError as exc:
            self.drop_ok = False
            self.note(f"drop_caches refused ({exc.strerror}): cold runs rely on fresh mounts and cache dirs")

    @contextlib.contextmanager
    def mount(self, cache_dir: Path, *, memory: int = 512 * MiB, disk: int = 4 * 2**30, config: Path | None = None):
        """An ``ndfs mount`` daemon over the boss remote (or ``config``'s); yields (mountpoint, pid); always
        unmounts."""
        from ndfs.testing.mount import mounted

        mnt = self.fresh("mnt")
        log_file = self.work / f"{mnt.name}.log"
        with mounted(config or self.config, mnt, "--log-file", log_file, "--cache-dir", cache_dir,
                     "--cache-memory", str(memory), "--cache-disk", str(disk)) as pid:
            if pid is None:
                raise RuntimeError(f"ndfs mount printed no pid (log {log_file})")
            yield mnt, pid

    def vol(self, mnt: Path, ref) -> Path:
        return mnt.joinpath("boss", *ref, "0")


def read_file(path: Path, buf: memoryview) -> int:
    """Read a file fully in 1 MiB reads (as dd bs=1M); returns the bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                return total
            total += n


def stats_json(mnt: Path) -> dict:
    return json.loads((mnt / ".ndfs" / "stats.json").read_text())["boss"]


def median(values):
    return statistics.median(values) if values else float("nan")


def rss_of(pid: int, key: str = "VmRSS") -> int:
    """0 once the process is gone: the sampler outlives the daemon it watches."""
    from ndfs.testing.serve import memory

    try:
        return memory(pid)[key]
    except OSError:
        return 0


def du_bytes(path: Path) -> int:
    """Disk usage of a tree (st_blocks, as du), tolerant of files vanishing meanwhile."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class Sampler:
    """Samples a value every `every` seconds on a thread; keeps the maximum."""

    def __init__(self, fn, every: float):
        self.fn, self.every, self.max, self.n = fn, every, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.max = max(self.max, self.fn())
            self.n += 1
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)
        self.max = max(self.max, self.fn())


def cutout_url(url: str, ref, box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"{url}/v1/cutout/{'/'.join(ref)}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def http_session(workers: int):
    import requests
    from requests.adapters import HTTPAdapter

    s = requests.Session()
    s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=workers + 2, max_retries=0))
    return s


def fetch(session, url: str, box, dtype="uint8"):
    from ndfs.stores.boss import blosc_decode

    r = session.get(url, params={"access-mode": "no-cache"}, headers={"Accept": "application/blosc"}, timeout=120)
    r.raise_for_status()
    return blosc_decode(r.content, dtype, box.shape)


# ---- results ------------------------------------------------------------------
@dataclass
class Row:
    target: str
    what: str
    ndfs: str = "-"
    base: str = "-"
    ratio: float | None = None
    goal: str = ""
    ok: bool | None = None  # None: error / not measured
    error: str = ""

    @property
    def result(self) -> str:
        return "ERROR" if self.error else "PASS" if self.ok else "MISS" if self.ok is False else "-"


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}" if r < 100 else f"{r:.0f}"


def print_table(plan: Plan, res: Results, env: Env | None, elapsed: float) -> None:
    head = ("target", "ndfs", "baseline", "ratio", "goal", "result")
    lines = [(f"{r.target} {r.what}", r.ndfs, r.base, fmt_ratio(r.ratio), r.goal, r.result) for r in res.rows]
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    sep = "  "
    print()
    print(f"ndfs benchmark ({plan.mode}): stack {plan.z}x{plan.xy}x{plan.xy} uint8 "
          f"({plan.stack_bytes / MiB:.0f} MiB), BOSS cuboids {'x'.join(map(str, CUBOID))}, "
          f"server latency {plan.latency_ms:g} ms/request, cap {plan.bandwidth_mbps:g} Mbit/s, "
          f"{plan.workers} workers, {os.cpu_count()} CPUs, medians of {plan.repeats} "
          f"(warm-up {'discarded' if plan.warmup else 'none'})")
    print(sep.join(h.ljust(w) for h, w in zip(head, widths)))
    print(sep.join("-" * w for w in widths))
    for line in lines:
        print(sep.join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    notes = list(env.notes) if env else []
    if env is not None and env.drop_ok:
        notes.insert(0, "page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before every cold run")
    for r in res.rows:
        if r.error:
            notes.append(f"{r.target}: error: {r.error}")
    if notes:
        print("notes:")
        for n in notes:
            print(f"  - {n}")
    print(f"total {elapsed:.0f} s")
    sys.stdout.flush()


# ---- targets --------------------------------------------------------------------
@dataclass
class ScrollState:
    cache_dir: Path | None = None
    cold_requests: int | None = None
    z0: int = 0


def chunks_touched(plan: Plan, z0: int, n: int) -> int:
    slabs = (z0 + n - 1) // CUBOID[0] - z0 // CUBOID[0] + 1
    per = (-(-plan.xy // CUBOID[1])) * (-(-plan.xy // CUBOID[2]))
    return slabs * per


def scroll_mount(env: Env, mnt: Path, zs, buf) -> float:
    zdir = env.vol(mnt, STACK) / "z"
    os.stat(zdir / f"{zs[0]}.tif")  # resolve the path (channel metadata) before the clock starts
    t = time.perf_counter()
    for z in zs:
        read_file(zdir / f"{z}.tif", buf)
    return time.perf_counter() - t


def target_scroll(env: Env, res: Results, state: ScrollState) -> None:
    """Targets 1a-1d: cold scroll through the mount vs a per-slice client, vs a client that fetches exactly
    the touched cuboids (bytes), and vs the link floor (against a server that keeps its answers)."""
    from ndfs.core.geometry import Box

    plan, srv = env.plan, env.server
    z0 = max(0, min(plan.z - SCROLL, (plan.z // 2 - SCROLL // 2) // CUBOID[0] * CUBOID[0]))
    zs = list(range(z0, z0 + SCROLL))
    state.z0 = z0
    touched = chunks_touched(plan, z0, SCROLL)
    buf = memoryview(bytearray(MiB))
    times = {"ndfs": [], "base": [], "oneshot": [], "ndfs_kept": [], "oneshot_kept": []}
    reqs, beyond, dup, logical, pulled, oneshot_bytes = [], [], [], [], [], []
    touched_boxes = [Box((z, y, x), (min(z + CUBOID[0], plan.z), min(y + CUBOID[1], plan.xy),
                                     min(x + CUBOID[2], plan.xy)))
                     for z in range(z0 // CUBOID[0] * CUBOID[0], z0 + SCROLL, CUBOID[0])
                     for y in range(0, plan.xy, CUBOID[1]) for x in range(0, plan.xy, CUBOID[2])]
    # row 1d's server: the same store, latency and cap, but it keeps the answers it has given, so the
    # warm-up leaves it answering at link speed (the floor is the link's; its compressor would share our cores)
    kept_srv = Server(env.fast / "store", plan, env.work / "server-kept.log", keep_bodies=True)
    kept_config = env.work / "ndfs-kept.toml"
    kept_config.write_text(env.config.read_text().replace(srv.url, kept_srv.url))

    def ndfs_run(keep: bool) -> None:
        cache = env.fresh("cache")
        with env.mount(cache) as (mnt, _pid):
            env.drop_caches()
            before = srv.state()
            t = scroll_mount(env, mnt, zs, buf)
            after_count = srv.settle()
            after = srv.state(since=before["seen"])
            paths = after["paths"]
            backend = stats_json(mnt)["backend"]
        if keep:
            n = after_count - before["cutouts"]
            pulled.append(after["cutout_bytes"] - before["cutout_bytes"])
            times["ndfs"].append(t)
            reqs.append(n)
            zr = [tuple(map(int, p.rstrip("/").split("/")[-1].split(":"))) for p in paths]
            beyond.append(sum(1 for a, b in zr if b <= z0 or a >= z0 + SCROLL))
            dup.append(len(paths) - len(set(paths)))
            logical.append(backend["reads"])
            state.cache_dir, state.cold_requests = cache, n

    def ndfs_kept_run(keep: bool) -> None:
        with env.mount(env.fresh("cache"), config=kept_config) as (mnt, _pid):
            env.drop_caches()
            t = scroll_mount(env, mnt, zs, buf)
            kept_srv.settle()
        if keep:
            times["ndfs_kept"].append(t)

    def base_run(keep: bool) -> None:
        env.drop_caches()
        session = http_session(1)
        try:
            t = time.perf_counter()
            for z in zs:
                box = Box((z, 0, 0), (z + 1, plan.xy, plan.xy))
                fetch(session, cutout_url(srv.url, STACK, box), box)
            t = time.perf_counter() - t
        finally:
            session.close()
        if keep:
            times["base"].append(t)

    def oneshot(server: Server, keep: bool, name: str) -> None:
        """The touched cuboids, each fetched once, `workers` at a time: what the scroll needs, no more."""
        env.drop_caches()
        session = http_session(plan.workers)
        try:
            before = server.state()
            t = time.perf_counter()
            with ThreadPoolExecutor(plan.workers) as pool:
                for _ in pool.map(lambda b: fetch(session, cutout_url(server.url, STACK, b), b), touched_boxes):
                    pass
            t = time.perf_counter() - t
            after = server.state()
        finally:
            session.close()
        if keep:
            times[name].append(t)
            if name == "oneshot":
                oneshot_bytes.append(after["cutout_bytes"] - before["cutout_bytes"])

    runs = (ndfs_run, base_run, lambda keep: oneshot(srv, keep, "oneshot"), ndfs_kept_run,
            lambda keep: oneshot(kept_srv, keep, "oneshot_kept"))
    try:
        if plan.warmup:
            for run in runs:
                run(False)
        else:  # the kept server must have answered once before it is timed
            ndfs_kept_run(False)
        for i in range(plan.repeats):
            for run in runs[i % len(runs):] + runs[:i % len(runs)]:  # rotated, so no side always runs first
                run(True)
    finally:
        kept_srv.stop()
    # requests for chunks the scroll touched (read-ahead past the range is counted apart, in the note);
    # a chunk fetched twice would show in `dup` and fails the row
    inside = median([r - b for r, b in zip(reqs, beyond)])
    ahead = median(beyond)
    ok = inside / touched <= 1 and max(dup) == 0
    res.add(Row("1a", f"scroll {SCROLL} z-slices cold: cutout requests", f"{inside:g} req (+{ahead:g} ahead)",
                f"{touched} chunks touched", inside / touched, "<= 1", ok))
    tn, tb = median(times["ndfs"]), median(times["base"])
    res.add(Row("1b", f"scroll {SCROLL} z-slices cold: time", f"{tn:.2f} s", f"{tb:.2f} s per-slice",
                tn / tb, "<= 0.5", tn / tb <= 0.5))
    pn, po = median(pulled), median(oneshot_bytes)
    res.add(Row("1c", f"scroll {SCROLL} z-slices cold: cutout bytes pulled", f"{pn / MiB:.1f} MiB",
                f"{po / MiB:.1f} MiB one-shot client", pn / po, "<= 1.25", pn / po <= 1.25))
    env.note(f"1c: {pn:,.0f} bytes pulled vs {po:,.0f}: {pn / po:.4f} (the read-ahead slab past the scroll's end "
             f"is a quarter of what it read in cuboids; in bytes, as well as it compresses)")
    waves = -(-len(touched_boxes) // plan.workers)
    floor = po / (plan.bandwidth_mbps * 1e6 / 8) + waves * plan.latency_ms / 1000
    tk = median(times["ndfs_kept"])
    res.add(Row("1d", f"scroll {SCROLL} z-slices cold: time vs the link floor", f"{tk:.2f} s",
                f"{floor:.2f} s floor", tk / floor, "<= 1.25", tk / floor <= 1.25))
    env.note(f"1d: floor = the one-shot client's bytes / {plan.bandwidth_mbps:g} Mbit/s + {waves} round trips of "
             f"{plan.latency_ms:g} ms ({len(touched_boxes)} cuboids, {plan.workers} at a time), against a "
             f"server child that keeps the answers it gave (after the warm-up it answers at link speed); there "
             f"the one-shot client took {median(times['oneshot_kept']):.2f} s "
             f"({median(times['oneshot_kept']) / floor:.2f}x the floor); against the server that compresses "
             f"every answer, ndfs took {tn:.2f} s and the one-shot client {median(times['oneshot']):.2f} s")
    env.note(f"1: slices z={z0}..{z0 + SCROLL - 1} of {plan.xy}x{plan.xy}; per run {reqs} cutout requests "
             f"({beyond} of them for chunks past the scrolled range, i.e. read-ahead past it; "
             f"{dup} repeated), {logical} logical backend reads (stats.json); per-slice client "
             f"sends {SCROLL} requests, one at a time")


def target_remount(env: Env, res: Results, state: ScrollState) -> None:
    """Target 6: a new mount over the warm disk cache of target 1 scrolls the same range."""
    if state.cache_dir is None:
        raise RuntimeError("target 1 left no warm cache")
    srv, zs = env.server, list(range(state.z0, state.z0 + SCROLL))
    buf = memoryview(bytearray(MiB))
    with env.mount(state.cache_dir) as (mnt, _pid):
        env.drop_caches()
        c0 = srv.cutouts()
        t = scroll_mount(env, mnt, zs, buf)
        n = srv.settle() - c0
        cache = stats_json(mnt)["cache"]
    res.add(Row("6", "remount over warm disk cache: cutout requests", f"{n} req",
                f"{state.cold_requests} req cold", n / state.cold_requests if state.cold_requests else None,
                "0 requests", n == 0))
    env.note(f"6: the second mount scrolled the range in {t:.2f} s with {cache['disk_hits']} disk hits, "
             f"{cache['misses']} misses")


def target_bulk(env: Env, res: Results) -> contextlib.ExitStack:
    """Target 3 (cold cp vs a parallel client); returns the last ndfs mount, kept open for targets 2 and 4."""
    import numpy as np

    from ndfs.core.geometry import Box

    plan, srv = env.plan, env.server
    dst_ndfs, dst_base = env.fast / "stack-copy.tif", env.fast / "direct-pull.raw"
    boxes = [Box((z, y, x), (min(z + CUBOID[0], plan.z), min(y + CUBOID[1], plan.xy), min(x + CUBOID[2], plan.xy)))
             for z in range(0, plan.z, CUBOID[0]) for y in range(0, plan.xy, CUBOID[1])
             for x in range(0, plan.xy, CUBOID[2])]
    speeds = {"ndfs": [], "base": []}
    reqs = []
    kept = contextlib.ExitStack()
    runs = ([False] if plan.warmup else []) + [True] * plan.repeats

    def ndfs_run(keep: bool, last: bool) -> None:
        cache = env.fresh("cache")
        local = contextlib.ExitStack()
        try:
            mnt, _pid = local.enter_context(env.mount(cache))
            src = env.vol(mnt, STACK) / "stack.tif"
            size = os.stat(src).st_size
            with contextlib.suppress(FileNotFoundError):
                dst_ndfs.unlink()
            env.drop_caches()
            c0 = srv.cutouts()
            t = time.perf_counter()
            subprocess.run(["cp", str(src), str(dst_ndfs)], check=True, timeout=3600)
            t = time.perf_counter() - t
            n = srv.settle(quiet_s=0.3) - c0
            if keep:
                speeds["ndfs"].append(size / t)
                reqs.append(n)
            if last:
                kept.push(local.pop_all())
                kept.mnt = mnt  # type: ignore[attr-defined]
        finally:
            local.close()

    def base_run(keep: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            dst_base.unlink()
        env.drop_caches()
        session = http_session(plan.workers)
        try:
            t = time.perf_counter()
            out = np.empty((plan.z, plan.xy, plan.xy), dtype=np.uint8)

            def one(box):
                out[box.slices()] = fetch(session, cutout_url(srv.url, STACK, box), box)

            with ThreadPoolExecutor(plan.workers) as pool:
                for _ in pool.map(one, boxes):
                    pass
            out.tofile(dst_base)
            t = time.perf_counter() - t
        finally:
            session.close()
        if keep:
            speeds["base"].append(out.nbytes / t)
        del out

    for i, keep in enumerate(runs):
        last = i == len(runs) - 1
        if i % 2 == 0 and not last:
            ndfs_run(keep, False)
            base_run(keep)
        else:  # the last pair ends with ndfs: its mount stays up for targets 2 and 4
            base_run(keep)
            ndfs_run(keep, last)
    with contextlib.suppress(FileNotFoundError):
        dst_base.unlink()  # stack-copy.tif stays: the tmpfs side of target 2
    sn, sb = median(speeds["ndfs"]), median(speeds["base"])
    res.add(Row("3", "cold cp stack.tif: throughput", f"{sn / 1e6:.0f} MB/s",
                f"{sb / 1e6:.0f} MB/s direct {plan.workers}-way", sn / sb, ">= 0.8", sn / sb >= 0.8))
    env.note(f"3: {len(boxes)} cuboid requests per pull for the direct client; ndfs cold cp made {reqs} cutout "
             f"requests; both write the {plan.stack_bytes / MiB:.0f} MiB to tmpfs")
    return kept


def target_warm(env: Env, res: Results, mnt: Path) -> None:
    """Target 2: warm re-read of stack.tif vs the same bytes on tmpfs."""
    src, copy = env.vol(mnt, STACK) / "stack.tif", env.fast / "stack-copy.tif"
    buf = memoryview(bytearray(MiB))
    n_rep = max(3, env.plan.repeats)
    speeds = {"ndfs": [], "tmpfs": []}
    c0 = env.server.cutouts()
    read_file(src, buf)  # warm-up pass (discarded)
    read_file(copy, buf)
    for i in range(n_rep):
        order = (("ndfs", src), ("tmpfs", copy)) if i % 2 == 0 else (("tmpfs", copy), ("ndfs", src))
        for name, path in order:
            t = time.perf_counter()
            n = read_file(path, buf)
            speeds[name].append(n / (time.perf_counter() - t))
    n_req = env.server.cutouts() - c0
    sn, st = median(speeds["ndfs"]), median(speeds["tmpfs"])
    res.add(Row("2", "warm re-read stack.tif: throughput", f"{sn / 1e6:.0f} MB/s", f"{st / 1e6:.0f} MB/s tmpfs",
                sn / st, ">= 0.8", sn / st >= 0.8))
    env.note(f"2: {os.stat(src).st_size / MiB:.0f} MiB read in 1 MiB reads, {n_rep} interleaved repeats; "
             f"{n_req} cutout requests during the warm reads")


def target_ls(env: Env, res: Results, mnt: Path) -> None:
    """Targets 4a/4b: ls -l of a z folder of ls_n slices vs ls -l of as many empty files on tmpfs."""
    plan, srv = env.plan, env.server
    zdir = env.vol(mnt, LS) / "z"
    tdir = env.fast / "ls-files"
    tdir.mkdir()
    for i in range(plan.ls_n):
        (tdir / f"{i}.tif").touch()

    def ls(path: Path) -> float:
        t = time.perf_counter()
        done = subprocess.run(["ls", "-l", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        t = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(f"ls -l {path} failed: {done.stderr.decode(errors='replace').strip()}")
        lines = done.stdout.count(b"\n") - 1  # minus "total N"
        if lines != plan.ls_n:
            raise RuntimeError(f"ls -l {path} listed {lines} entries, expected {plan.ls_n}")
        return t

    before = srv.state()
    reads0 = stats_json(mnt)["backend"]["reads"]
    first = ls(zdir)  # warm-up (discarded): the first listing also fetches the channel metadata
    ls(tdir)
    times = {"ndfs": [], "tmpfs": []}
    for i in range(max(3, plan.repeats)):
        order = ((zdir, "ndfs"), (tdir, "tmpfs")) if i % 2 == 0 else ((tdir, "tmpfs"), (zdir, "ndfs"))
        for path, name in order:
            times[name].append(ls(path))
    after = srv.state()
    n = after["cutouts"] - before["cutouts"]
    reads = stats_json(mnt)["backend"]["reads"] - reads0
    other = (after["totals"]["requests"] - after["bench"]) - (before["totals"]["requests"] - before["bench"]) - n
    res.add(Row("4a", f"ls -l z folder of {plan.ls_n}: cutout requests", f"{n} req", "-", None, "0 requests", n == 0))
    tn, tt = median(times["ndfs"]), median(times["tmpfs"])
    res.add(Row("4b", f"ls -l z folder of {plan.ls_n}: time", f"{tn * 1e3:.0f} ms", f"{tt * 1e3:.0f} ms tmpfs",
                tn / tt, "<= 2", tn / tt <= 2))
    env.note(f"4: first ls -l (discarded) took {first * 1e3:.0f} ms; over all listings {n} cutout and {other} "
             f"metadata requests reached the server, {reads} backend reads in stats.json")


def target_stream(env: Env, res: Results) -> None:
    """Targets 5a/5b: stream every slice of a volume 4x the memory budget; peak RSS and disk cache size."""
    plan, srv = env.plan, env.server
    cache = env.fresh("cache")
    buf = memoryview(bytearray(MiB))
    vol_bytes = plan.stream_z * plan.xy * plan.xy
    with env.mount(cache, memory=plan.mem_budget, disk=plan.disk_budget) as (mnt, pid):
        zdir = env.vol(mnt, STREAM) / "z"
        os.stat(zdir / "0.tif")
        idle = rss_of(pid)
        env.drop_caches()
        c0 = srv.cutouts()
        t = time.perf_counter()
        with Sampler(lambda: rss_of(pid), 0.02) as rss, Sampler(lambda: du_bytes(cache), 0.25) as du:
            for z in range(plan.stream_z):
                read_file(zdir / f"{z}.tif", buf)
            srv.settle(quiet_s=0.5)
        t = time.perf_counter() - t
        n = srv.cutouts() - c0
        hwm = rss_of(pid, "VmHWM")
        cstats = stats_json(mnt)["cache"]
    du_after = du_bytes(cache)
    peak = max(rss.max, hwm)
    limit = plan.mem_budget + RSS_SLACK
    res.add(Row("5a", "stream 4x memory budget: daemon peak RSS", f"{peak / MiB:.0f} MiB",
                f"{plan.mem_budget / MiB:.0f}+150 MiB", peak / limit, "<= 1", peak <= limit))
    top = max(du.max, du_after)
    res.add(Row("5b", "stream 4x memory budget: disk cache (du)", f"{top / MiB:.1f} MiB",
                f"{plan.disk_budget / MiB:.0f} MiB budget", top / plan.disk_budget, "<= 1", top <= plan.disk_budget))
    env.note(f"5: {vol_bytes / MiB:.0f} MiB in {plan.stream_z} slices streamed in {t:.1f} s "
             f"({vol_bytes / t / 1e6:.0f} MB/s), {n} cutout requests; RSS idle {idle / MiB:.0f} MiB, "
             f"sampled max {rss.max / MiB:.0f} MiB ({rss.n} samples), VmHWM {hwm / MiB:.0f} MiB; memory tier "
             f"{cstats['memory_bytes'] / MiB:.0f} MiB at the end; disk tier {cstats['disk_bytes'] / MiB:.1f} MiB "
             f"(diskcache's own count) in {cstats['disk_entries']} entries, du max {du.max / MiB:.1f} MiB "
             f"({du.n} samples), {du_after / MiB:.1f} MiB after unmount")


def target_revalidation(env: Env, res: Results) -> None:
    """Target 7: a 64-slice scroll of an open DVID node, checked for changes (the default) vs never checked."""
    plan = env.plan
    srv = Server(env.fast / "store", plan, env.work / "dvid-server.log", protocol="dvid")
    try:
        configs = {}
        for name, extra in (("checked", ""), ("never", "max_age_s = inf\n")):
            configs[name] = env.work / f"dvid-{name}.toml"
            configs[name].write_text(f'[remotes.dvid]\nkind = "dvid"\nurl = "{srv.url}"\nworkers = {plan.workers}\n'
                                     f'read_only = true\n{extra}')
        z0 = DVID_BLOCK
        zs = list(range(z0, z0 + SCROLL))
        pace = 0.0 if plan.mode == "smoke" else PACE_S
        buf = memoryview(bytearray(MiB))
        reqs: dict[str, list[int]] = {"checked": [], "never": []}
        checks: dict[str, list[int]] = {"checked": [], "never": []}
        secs: dict[str, list[float]] = {"checked": [], "never": []}

        def one(name: str, keep: bool) -> None:
            with env.mount(env.fresh("cache"), config=configs[name]) as (mnt, _pid):
                zdir = mnt.joinpath("dvid", *DVID_VOL[:1], "master", *DVID_VOL[1:], "0", "z")
                env.drop_caches()
                before, c0 = srv.requests(), srv.state()["checks"]
                t = time.perf_counter()
                for i, z in enumerate(zs):
                    read_file(zdir / f"{z}.tif", buf)
                    time.sleep(max(0.0, t + (i + 1) * pace - time.perf_counter()))
                t = time.perf_counter() - t
                n = srv.quiet() - before
                if keep:
                    reqs[name].append(n)
                    checks[name].append(srv.state()["checks"] - c0)
                    secs[name].append(t)

        if plan.warmup:
            one("checked", False)
        for i in range(plan.repeats):
            for name in (("checked", "never") if i % 2 == 0 else ("never", "checked")):
                one(name, True)
        rc, rn = median(reqs["checked"]), median(reqs["never"])
        ratio = rc / rn if rn else None
        res.add(Row("7", f"scroll {SCROLL} z-slices of an open DVID node: requests, checked vs never",
                    f"{rc:g} req", f"{rn:g} req never checked", ratio, "<= 1.05",
                    ratio is not None and ratio <= 1.05))
        env.note(f"7: {plan.xy}x{plan.xy} slices z={zs[0]}..{zs[-1]} at {pace * 1e3:.0f} ms per slice "
                 f"({median(secs['checked']):.1f} s checked, {median(secs['never']):.1f} s never); all requests "
                 f"per run {reqs}; of them repo state requests (repo info and repo listings) {checks}")
    finally:
        srv.stop()
# ---- target 8: petascale, simulated (the synthetic remote) ---------------------------
SIM = ("sim", "petascale", "em")
SIM_XY = 100_000
SIM_FAR = (SIM_XY // 512 - 1) * 512  # the last whole chunk in y and x: the same work as one at the origin


def sim_config(env: Env) -> tuple[Path, int]:
    """An ndfs.toml with the synthetic remotes of target 8: ``sim`` (Z x 100k x 100k; Z = 20,000, smoke 2,000)
    and ``tiny`` (64^3, the same metadata at no size)."""
    z = 2_000 if env.plan.mode == "smoke" else 20_000
    path = env.work / "sim.toml"
    path.write_text(f'[remotes.sim]\nkind = "synthetic"\nshape = [{z}, {SIM_XY}, {SIM_XY}]\n\n'
                    '[remotes.tiny]\nkind = "synthetic"\nshape = [64, 64, 64]\n')
    return path, z


def sim_backend(mnt: Path, remote: str = "sim") -> dict:
    return json.loads((mnt / ".ndfs" / "stats.json").read_text())[remote]["backend"]


def sim_settle(mnt: Path, quiet_s: float = 0.5, timeout_s: float = 30.0) -> dict:
    """Wait (bounded) until the synthetic backend's byte count stops moving (read-ahead done)."""
    last, since = sim_backend(mnt), time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sim_backend(mnt)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def target_sim(env: Env, res: Results) -> None:
    """Targets 8a-8h: a synthetic channel of Z x 100k x 100k voxels through ``ndfs mount`` and ``ndfs serve``."""
    from ndfs.core.geometry import Box
    from ndfs.stores.synthetic import SyntheticBackend

    plan = env.plan
    cfg, nz = sim_config(env)
    info = SyntheticBackend(shape=(nz, SIM_XY, SIM_XY)).info(SIM)
    buf = memoryview(bytearray(MiB))
    memory = 64 * MiB
    cache = env.fresh("cache")
    t = time.perf_counter()
    with env.mount(cache, memory=memory, disk=memory, config=cfg) as (mnt, pid):
        t_mount = time.perf_counter() - t
        chan = mnt.joinpath("sim", *SIM)
        # 8a/8b: ls -l of a z folder of nz slices (level 1: 50,000 x 50,000 planes; level 0's 10 GB planes
        # are past what a classic TIFF addresses) vs as many empty files on tmpfs
        zdir = chan / "1" / "z"
        tdir = env.fast / "sim-ls"
        tdir.mkdir()
        for i in range(nz):
            (tdir / f"{i}.tif").touch()

        def ls(path: Path) -> float:
            t = time.perf_counter()
            done = subprocess.run(["ls", "-l", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
            t = time.perf_counter() - t
            lines = done.stdout.count(b"\n") - 1
            if done.returncode != 0 or lines != nz:
                raise RuntimeError(f"ls -l {path}: exit {done.returncode}, {lines} entries of {nz}: "
                                   f"{done.stderr.decode(errors='replace').strip()[:200]}")
            return t

        first = ls(zdir)
        ls(tdir)
        times = {"ndfs": [], "tmpfs": []}
        for i in range(max(3, plan.repeats)):
            order = ((zdir, "ndfs"), (tdir, "tmpfs")) if i % 2 == 0 else ((tdir, "tmpfs"), (zdir, "ndfs"))
            for path, name in order:
                times[name].append(ls(path))
        reads = sim_backend(mnt)["reads"]
        res.add(Row("8a", f"synthetic {nz} x 100k x 100k: mount + ls -l of {nz} slices: voxel requests",
                    f"{reads} req", "-", None, "0 requests", reads == 0))
        tn, tt = median(times["ndfs"]), median(times["tmpfs"])
        res.add(Row("8b", "the same ls -l: time", f"{tn * 1e3:.0f} ms", f"{tt * 1e3:.0f} ms tmpfs", tn / tt,
                    "<= 2", tn / tt <= 2))
        env.note(f"8: synthetic remote {nz} x {SIM_XY} x {SIM_XY} uint8 in 16x512x512 chunks, {len(info.levels)} "
                 f"levels; the mount came up in {t_mount:.2f} s, its first ls -l (metadata) took {first * 1e3:.0f} ms")

        # 8c: info.json of the petascale channels vs of 64^3 ones (same names), each file read once (cold),
        # the two in alternating order
        big, tiny = [], []
        for i, name in enumerate(("em", "em16", "cells")):
            pair = ((mnt.joinpath("sim", *SIM[:-1], name), big), (mnt.joinpath("tiny", *SIM[:-1], name), tiny))
            for folder, out in pair if i % 2 == 0 else pair[::-1]:
                t = time.perf_counter()
                (folder / "info.json").read_bytes()
                out.append(time.perf_counter() - t)
        t_big, t_tiny = min(big), min(tiny)  # ms-scale reads: the fastest of three is the one the load spared
        res.add(Row("8c", "info.json of a petascale channel: time (best of 3)", f"{t_big * 1e3:.1f} ms",
                    f"{t_tiny * 1e3:.1f} ms of a 64^3 one", t_big / t_tiny, "<= 2", t_big / t_tiny <= 2))

        # 8d: a 16 x 512 x 512 cutout at the far corner vs at the origin, each box read once (cold)
        far, near = [], []
        for i in range(max(5, plan.repeats)):
            for where, out in (("far", far), ("near", near)) if i % 2 == 0 else (("near", near), ("far", far)):
                z0 = (nz - 16 * (i + 1)) if where == "far" else 16 * i
                x0 = SIM_FAR if where == "far" else 0
                name = f"{x0}-{x0 + 512}_{x0}-{x0 + 512}_{z0}-{z0 + 16}.tif"
                t = time.perf_counter()
                read_file(chan / "0" / "cutout" / name, buf)
                out.append(time.perf_counter() - t)
        tf, tn = median(far), median(near)
        res.add(Row("8d", "cutout 16x512x512 at the far corner: time", f"{tf * 1e3:.0f} ms",
                    f"{tn * 1e3:.0f} ms at the origin", tf / tn, "<= 1.5", tf / tn <= 1.5))

        # 8e: a scroll of 64 z-slices (smoke 32) of level 6 (1563 x 1563): bytes fetched vs the chunks touched
        level, n_scroll = 6, 32 if plan.mode == "smoke" else 64
        lv = info.level(level)
        z0 = nz // 2 // 16 * 16
        needed = sum(lv.grid.chunk_box(idx).size for idx in lv.grid.chunks(
            Box((z0, 0, 0), (z0 + n_scroll, *lv.shape[1:]))))
        before = sim_settle(mnt)
        t = time.perf_counter()
        for z in range(z0, z0 + n_scroll):
            read_file(chan / str(level) / "z" / f"{z}.tif", buf)
        t_scroll = time.perf_counter() - t
        after = sim_settle(mnt)
        got = after["read_bytes"] - before["read_bytes"]
        res.add(Row("8e", f"scroll {n_scroll} slices of level {level}: bytes fetched vs chunks touched",
                    f"{got / MiB:.1f} MiB", f"{needed / MiB:.1f} MiB touched", got / needed, "<= 1.25",
                    needed <= got <= 1.25 * needed))
        env.note(f"8e: {after['reads'] - before['reads']} requests (the cache merges a slab's chunks), "
                 f"scrolled in {t_scroll:.2f} s")

        # 8f: a random walk of slice reads (level 6) anywhere in z: the daemon's RSS stays where it settled
        rng = __import__("random").Random(7)
        n_walk = {"smoke": 20, "quick": 80}.get(plan.mode, 240)
        rss = []
        t = time.perf_counter()
        for _ in range(n_walk):
            read_file(chan / str(level) / "z" / f"{rng.randrange(nz)}.tif", buf)
            rss.append(rss_of(pid))
        t_walk = time.perf_counter() - t
        # once the tiers are full (the first quarter fills them), the RSS after a read wobbles by a third as
        # glibc keeps and returns the transient arrays of a read (a slab's chunks in one request): the
        # typical RSS (median) of the last quarter vs the second shows growth, a peak would show the wobble
        q = n_walk // 4
        quarters = [rss[i * q:(i + 1) * q] for i in range(4)]
        half, late = median(quarters[1]), median(quarters[3])
        res.add(Row("8f", f"random walk of {n_walk} slice reads: daemon RSS (median), last quarter vs 2nd",
                    f"{late / MiB:.0f} MiB",
                    f"{half / MiB:.0f} MiB", late / half, "<= 1.1", late / half <= 1.1))
        env.note(f"8f: {n_walk} slices of {lv.shape[1]}x{lv.shape[2]} at random z in {t_walk:.1f} s; memory tier "
                 f"{memory / MiB:.0f} MiB, disk tier {memory / MiB:.0f} MiB; RSS per quarter (min/median/max, MiB) "
                 + ", ".join(f"{min(w) / MiB:.0f}/{median(w) / MiB:.0f}/{max(w) / MiB:.0f}" for w in quarters))

    # 8g/8h: the same channel through `ndfs serve --protocol boss --remote sim`
    from ndfs.testing.serve import served

    log = open(env.work / "serve-sim.log", "w")
    try:
        with served("boss", None, "--remote", "sim", "--read-only", config=cfg, stderr=log) as srv:
            session = http_session(1)
            try:
                def cut(z0: int, x0: int) -> float:
                    box = Box((z0, x0, x0), (z0 + 16, x0 + 512, x0 + 512))
                    t = time.perf_counter()
                    fetch(session, cutout_url(srv.url, SIM, box), box)
                    return time.perf_counter() - t

                cut(0, 0)  # warm-up: the connection and the channel's metadata
                far, near = [], []
                for i in range(max(5, plan.repeats)):
                    far.append(cut(nz - 16 * (i + 1), SIM_FAR))
                    near.append(cut(16 * (i + 1), 0))
                tf, tn = median(far), median(near)
                res.add(Row("8g", "ndfs serve (BOSS): cutout at the far corner: time", f"{tf * 1e3:.0f} ms",
                            f"{tn * 1e3:.0f} ms at the origin", tf / tn, "<= 1.5", tf / tn <= 1.5))
                t = time.perf_counter()
                r = session.get(f"{srv.url}/v1/cutout/{'/'.join(SIM)}/0/0:{SIM_XY}/0:{SIM_XY}/0:16/", timeout=120)
                t = time.perf_counter() - t
                res.add(Row("8h", "ndfs serve: a 160 GB cutout asked for: refused", f"{r.status_code} in "
                            f"{t * 1e3:.0f} ms", "-", None, "413", r.status_code == 413))
            finally:
                session.close()
    finally:
        log.close()


# ---- target 9: the first look (a fresh mount of a local store) ------------------------
FIRST = ("look", "first", "em")


def target_first_look(env: Env, res: Results) -> None:
    """Targets 9a/9b: a fresh ``ndfs mount`` of a local zarr store on disk: the first slice's time to first
    byte vs a later cold slice's, and the first ``cp stack.tif`` vs a later cold one, page cache dropped."""
    import numpy as np

    from ndfs.core.geometry import Box
    from ndfs.stores.local import LocalBackend

    plan = env.plan
    store = env.work / "first-look"
    n, xy = (32, 256) if plan.mode == "smoke" else (64, 1024)
    backend = LocalBackend(store, create=True)
    backend.create_volume(FIRST, (n, xy, xy), "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1,
                          chunk_shape=(16, 256, 256))  # the demo's chunks
    rng = np.random.default_rng(8)
    for z0 in range(0, n, 16):
        backend.write(FIRST, Box((z0, 0, 0), (z0 + 16, xy, xy)), 0, smooth_noise(rng, (16, xy, xy)))
    backend.close()
    cfg = env.work / "first-look.toml"
    cfg.write_text(f'[remotes.local]\nkind = "local"\npath = "{store}"\n')

    def ttfb(path: Path) -> float:
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as fh:
            fh.read(65536)
        return time.perf_counter() - t

    first, later, cp_first, cp_later = [], [], [], []
    dst = env.fast / "first-look-copy.tif"

    def cp(src: Path, out: list) -> None:
        env.drop_caches()
        t = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True, timeout=600)
        out.append(time.perf_counter() - t)
        dst.unlink()

    for i in range(1 if plan.mode == "smoke" else max(3, plan.repeats)):  # two new mounts each
        with env.mount(env.fresh("cache"), config=cfg) as (mnt, _pid):
            level = mnt.joinpath("local", *FIRST, "0")
            env.drop_caches()
            first.append(ttfb(level / "z" / "5.tif"))  # the first file the mount opens
            env.drop_caches()
            later.append(ttfb(level / "z" / f"{n - 5}.tif"))  # another slab: as cold, minus the first time
            cp(level / "stack.tif", cp_later)  # the daemon has served its first look (two slabs of the stack)
        with env.mount(env.fresh("cache"), config=cfg) as (mnt, _pid):
            cp(mnt.joinpath("local", *FIRST, "0", "stack.tif"), cp_first)  # the first thing the mount does
    f, l = median(first), median(later)
    res.add(Row("9a", "fresh mount, first slice: time to first byte", f"{f * 1e3:.0f} ms",
                f"{l * 1e3:.0f} ms later cold slice", f / l, "<= 2", f / l <= 2))
    cf, cl = median(cp_first), median(cp_later)
    res.add(Row("9b", "fresh mount, first cp stack.tif: time", f"{cf * 1e3:.0f} ms",
                f"{cl * 1e3:.0f} ms after two slices", cf / cl, "<= 2", cf / cl <= 2))
    env.note(f"9: a local store on disk ({n}x{xy}x{xy} uint8, 16x256x256 zstd chunks, as the demo's), page cache "
             f"dropped before each read; 9a's two slices in one new mount, which then copies stack.tif (2 of its "
             f"{n // 16} slabs already in memory) for 9b's baseline; 9b's first cp in another new mount")


# ---- main ---------------------------------------------------------------------
def run(plan: Plan) -> int:
    from ndfs.testing.mount import fuse_unavailable

    started = time.monotonic()
    res = Results()
    env: Env | None = None
    failed = False
    with contextlib.ExitStack() as stack:
        try:
            reason = fuse_unavailable()
            if reason:
                raise RuntimeError(f"cannot mount: {reason}")
            env = Env(plan)
            if not plan.keep:
                stack.callback(shutil.rmtree, env.work, True)
                stack.callback(shutil.rmtree, env.fast, True)
            else:
                stack.callback(lambda: print(f"kept {env.work} and {env.fast}", file=sys.stderr))
            env.log(f"work dir {env.work}, store and tmpfs files in {env.fast}")
            build_store(env.fast / "store", plan, env.log)
            env.server = Server(env.fast / "store", plan, env.work / "server.log")
            stack.callback(env.server.stop)
            env.config.write_text(f'[remotes.boss]\nkind = "boss"\nurl = "{env.server.url}"\n'
                                  f'workers = {plan.workers}\nread_only = true\n')
            env.log(f"BOSS server at {env.server.url} (pid {env.server.proc.pid})")
        except Exception as exc:
            traceback.print_exc()
            res.errors.append(f"setup: {exc}")
            failed = True
        if not failed:
            state = ScrollState()
            steps = [("1", "scroll", lambda: target_scroll(env, res, state)),
                     ("6", "remount", lambda: target_remount(env, res, state))]
            for tid, name, fn in steps:
                if plan.runs(tid):
                    failed |= _step(env, res, tid, name, fn)
            kept = None
            if plan.runs("3"):
                env.log("target 3: cold cp vs direct parallel client")
                try:
                    kept = target_bulk(env, res)
                    stack.push(kept)
                except Exception as exc:
                    traceback.print_exc()
                    res.add(Row("3", "cold cp stack.tif", error=str(exc)))
                    failed = True
            mnt = getattr(kept, "mnt", None)
            for tid, name, fn in (("2", "warm re-read", lambda: target_warm(env, res, mnt)),
                                  ("4", "ls -l", lambda: target_ls(env, res, mnt))):
                if not plan.runs(tid):
                    continue
                if mnt is None:
                    res.add(Row(tid, name, error="no mount from target 3"))
                    failed = True
                else:
                    failed |= _step(env, res, tid, name, fn)
            if kept is not None:
                kept.close()
            if plan.runs("5"):
                failed |= _step(env, res, "5", "stream", lambda: target_stream(env, res))
            if plan.runs("7"):
                failed |= _step(env, res, "7", "revalidation", lambda: target_revalidation(env, res))
            if plan.runs("8"):
                failed |= _step(env, res, "8", "petascale, simulated", lambda: target_sim(env, res))
            if plan.runs("9"):
                failed |= _step(env, res, "9", "first look", lambda: target_first_look(env, res))
        res.rows.sort(key=lambda r: r.target)
        print_table(plan, res, env, time.monotonic() - started)
        for e in res.errors:
            print(f"error: {e}")
    return 1 if failed or res.errors else 0


def _step(env: Env, res: Results, tid: str, name: str, fn) -> bool:
    env.log(f"target {tid}: {name}")
    try:
        fn()
        return False
    except Exception as exc:
        traceback.print_exc()
        res.add(Row(tid, name, error=f"{type(exc).__name__}: {exc}"))
        return True


# ---- API section (issue 10): ndfs's Python API vs each protocol's reference client -----
API_COLL = ("bench", "api")      # BOSS collection/experiment of the API volume (channel "em")
API_REPO = "benchapi"            # DVID repo / NeuroData token: the same channel, by a symlink


def api_transform_count(block) -> int:
    """The map_blocks work of the API section (module level: picklable): an intensity transform (an
    exponential per voxel, sixteen times), a threshold and a count, plane by plane in place, so that the work stays in
    the CPU's caches: compute-bound, so workers rather than memory bandwidth set the time."""
    import numpy as np

    x = np.empty(block.shape[1:], np.float32)
    n = 0
    for plane in block:
        np.multiply(plane, np.float32(1 / 255), out=x)
        for _ in range(16):
            np.negative(x, out=x)
            np.exp(x, out=x)
        n += int(np.count_nonzero(x > 0.5))
    return n


def api_add(a: int, b: int) -> int:
    return a + b


class CliServer:
    """``ndfs serve --protocol P --store DIR --port 0`` in a child process (ndfs.testing.serve); ``.url``."""

    def __init__(self, protocol: str, store: Path, plan: Plan, log_path: Path):
        from ndfs.testing.serve import served

        self._log = open(log_path, "w")
        self._stack = contextlib.ExitStack()
        try:
            srv = self._stack.enter_context(served(
                protocol, store, "--read-only", "--latency-ms", plan.latency_ms, "--bandwidth-mbps",
                plan.bandwidth_mbps, stderr=self._log, check_exit=False))
        except AssertionError:
            self.stop()
            raise RuntimeError(f"ndfs serve --protocol {protocol} did not start: "
                               f"{log_path.read_text(errors='replace').strip()[-300:]}") from None
        self.url, self.proc = srv.url, srv.proc

    def stop(self) -> None:
        self._stack.close()
        self._log.close()


def api_shape(plan: Plan) -> tuple[int, int, int]:
    """The API cutout: 256 MiB (quick 64, smoke 1), z a multiple of 16."""
    size = {"smoke": 1, "quick": 64}.get(plan.mode, 256)
    xy = 2048 if size >= 256 else 1024 if size >= 16 else 256
    return (max(16, round(size * MiB / (xy * xy)) // 16 * 16), xy, xy)


def build_api_store(root: Path, shape, log) -> tuple[Path, Path]:
    """Store A holds bench/api/em (BOSS depth); store B's benchapi/em is a symlink to it (DVID, NeuroData)."""
    import numpy as np

    from ndfs.stores.local import LocalBackend
    from ndfs.core.geometry import Box

    a, b = root / "api-a", root / "api-b"
    backend = LocalBackend(a, create=True)
    ref = API_COLL + ("em",)
    backend.create_volume(ref, shape, "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1, chunk_shape=CUBOID)
    rng = np.random.default_rng(10)
    for z0 in range(0, shape[0], CUBOID[0]):
        box = Box((z0, 0, 0), (min(z0 + CUBOID[0], shape[0]), shape[1], shape[2]))
        backend.write(ref, box, 0, smooth_noise(rng, box.shape))
    backend.close()
    (b / API_REPO).mkdir(parents=True)
    (b / API_REPO / "em").symlink_to(a.joinpath(*ref), target_is_directory=True)
    log(f"built the API store: {'x'.join(map(str, shape[::-1]))} uint8 ({np.prod(shape) / MiB:.0f} MiB)")
    return a, b


def ndio_python() -> str | None:
    """A python with ndio 1.1.5 (the NeuroData reference client), as tests/test_neurodata.py makes it."""
    from ndfs.core.config import user_cache_dir

    found = sorted((user_cache_dir() / "test-venvs").glob("ndio-1.1.5-*/bin/python"))
    return str(found[-1]) if found and (found[-1].parent.parent / "ndfs-ready").exists() else None


def reference_cutout(kind: str, url: str, shape, tmp: Path):
    """A function fetching the whole API volume through the protocol's reference client: () -> (array, s)."""
    import numpy as np

    z, y, x = shape
    if kind == "boss":
        from intern.remote.boss import BossRemote

        rmt = BossRemote({"protocol": "http", "host": url.removeprefix("http://"), "token": "x"})
        chan = rmt.get_channel("em", *API_COLL)

        def run():
            t = time.perf_counter()
            arr = rmt.get_cutout(chan, 0, [0, x], [0, y], [0, z])
            return arr, time.perf_counter() - t
        return run, "intern BossRemote"
    if kind == "dvid":
        import requests
        from intern.remote.dvid import DVIDRemote

        rmt = DVIDRemote({"protocol": "http", "host": url.removeprefix("http://")})
        repo = [u for u, r in requests.get(f"{url}/api/repos/info", timeout=30).json().items()
                if r["Alias"] == API_REPO][0]
        inst = rmt.get_instance(repo, "em", datatype="uint8")

        def run():
            t = time.perf_counter()
            arr = rmt.get_cutout(inst, 0, [0, x], [0, y], [0, z])
            return arr, time.perf_counter() - t
        return run, "intern DVIDRemote"
    python = ndio_python()
    if python is None:
        return None, "ndio 1.1.5 (no venv: run tests/test_neurodata.py once to make it)"
    out = tmp / "ndio.npy"
    code = ("import time, numpy, ndio.remote.neurodata as neurodata\n"
            f"nd = neurodata(hostname={url.removeprefix('http://')!r}, protocol='http')\n"
            "t = time.perf_counter()\n"
            f"a = nd.get_cutout({API_REPO!r}, 'em', 0, {x}, 0, {y}, 0, {z}, resolution=0)\n"
            "print('NDIO-SECONDS', time.perf_counter() - t)\n"
            f"numpy.save({str(out)!r}, a)\n")

    def run():
        done = subprocess.run([python, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"ndio failed: {done.stderr.strip()[-300:]}")
        seconds = float(done.stdout.split("NDIO-SECONDS")[1].split()[0])
        return np.load(out).transpose(2, 1, 0), seconds  # ndio hands out x, y, z
    return run, "ndio 1.1.5"


def api_cutouts(env: Env, res: Results, stores, shape, tid: str, kind: str) -> None:
    import numpy as np

    import ndfs

    plan = env.plan
    server = CliServer(kind, stores[0] if kind == "boss" else stores[1], plan, env.work / f"serve-{kind}.log")
    try:
        project = "/".join(API_COLL) if kind == "boss" else API_REPO
        if kind == "dvid":  # ndfs names DVID channels repo/branch/instance
            project = f"{API_REPO}/master"
        nd = ndfs.remote(f"{kind}+{server.url}", cache=False)
        try:
            def ours():
                t = time.perf_counter()
                arr = nd.get_cutout(project, "em")
                return arr, time.perf_counter() - t

            theirs, who = reference_cutout(kind, server.url, shape, env.work)
            mib = np.prod(shape) / MiB
            first, _ = ours()
            if theirs is None:
                times = [ours()[1] for _ in range(plan.repeats)]
                res.add(Row(tid, f"cutout {mib:.0f} MiB via {kind}: time", f"{median(times):.2f} s", "-", None,
                            "<= 1.1"))
                env.note(f"{tid}: no reference client: {who}")
                return
            ref_arr, _ = theirs()
            if not np.array_equal(first, ref_arr):
                raise RuntimeError(f"ndfs and {who} returned different voxels")
            del first, ref_arr
            tn, tb = [], []
            for _ in range(plan.repeats):  # alternating, after the checked pass above (the warm-up)
                tn.append(ours()[1])
                tb.append(theirs()[1])
            n, b = median(tn), median(tb)
            res.add(Row(tid, f"cutout {mib:.0f} MiB via {kind}: time", f"{n:.2f} s", f"{b:.2f} s {who}",
                        n / b, "<= 1.1", n / b <= 1.1))
        finally:
            nd.close()
    finally:
        server.stop()


def control_block(args) -> int:
    """The control of A4-A6: the same work on a block made in the worker itself (no store, no transfer)."""
    import numpy as np

    seed, shape = args
    return api_transform_count(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def machine_speedup(blocks: list, repeats: int) -> float:
    """What this machine gives 2 plain worker processes over 1 right now, for the blocks' work (pools warm)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # not the forkserver: map_blocks sets what that one preloads
    times = {1: [], 2: []}
    pools = {w: ProcessPoolExecutor(w, mp_context=ctx) for w in (1, 2)}
    try:
        work = [(i, b.shape) for i, b in enumerate(blocks)]
        for w, pool in pools.items():
            list(pool.map(control_block, work[:w]))  # start the workers
        for _ in range(repeats):
            for w, pool in pools.items():
                t = time.perf_counter()
                list(pool.map(control_block, work))
                times[w].append(time.perf_counter() - t)
    finally:
        for pool in pools.values():
            pool.shutdown()
    return median(times[1]) / median(times[2])


def api_scaling(env: Env, res: Results, stores, tid: str, scheduler: str) -> None:
    import ndfs
    from ndfs.tools.batch import _default_block, blocks, map_blocks

    plan = env.plan
    vol = ndfs.remote(str(stores[0]), cache=False).volume(API_COLL, "em")
    times = {1: [], 2: []}
    want = None
    runs = plan.repeats + (1 if plan.warmup else 0)

    def timed(workers: int, client=None) -> float:
        nonlocal want
        t = time.perf_counter()
        got = map_blocks(api_transform_count, vol, reduce=api_add, scheduler=scheduler, workers=workers,
                         progress=False, timeout_s=3600, client=client)
        dt = time.perf_counter() - t
        if want is None:
            want = got
        elif got != want:
            raise RuntimeError(f"map_blocks gave {got} with {workers} workers, {want} before")
        return dt

    if scheduler == "dask":
        # the LocalCluster map_blocks starts and keeps for the next call with the same workers (one at a
        # time: an idle one's heartbeats would take CPU from the busy one's workers): the first run of
        # each worker count starts it (discarded as the warm-up), the others time the work
        from distributed import Client, LocalCluster

        from ndfs.tools.batch import _KeptCluster

        for workers in (1, 2):
            for i in range(runs):
                dt = timed(workers)
                if i > 0 or not plan.warmup:
                    times[workers].append(dt)
        _KeptCluster.close_kept()
        # the same on a LocalCluster of the user's, made with Dask's defaults and passed as client=
        theirs = {1: [], 2: []}
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=40) as cluster, Client(cluster) as client:
                for i in range(runs):
                    dt = timed(workers, client)
                    if i > 0 or not plan.warmup:
                        theirs[workers].append(dt)
        env.note(f"{tid}: on a LocalCluster made with Dask's defaults (its workers start with "
                 f"MALLOC_TRIM_THRESHOLD_=65536) and passed as client=: {median(theirs[1]):.2f} s with 1 worker, "
                 f"{median(theirs[2]):.2f} s with 2 ({median(theirs[1]) / median(theirs[2]):.2f}x)")
    else:
        for i in range(runs):
            for workers in (1, 2):
                dt = timed(workers)
                if i > 0 or not plan.warmup:
                    times[workers].append(dt)
    t1, t2 = median(times[1]), median(times[2])
    res.add(Row(tid, f"map_blocks transform+threshold+count, {scheduler}: 1 -> 2 workers", f"{t2:.2f} s (2)",
                f"{t1:.2f} s (1)", t1 / t2, "speedup >= 1.8", t1 / t2 >= 1.8))
    cores = [b for b in blocks(vol.box, _default_block(vol.level_info.chunk_shape, 1), vol.level_info.grid.origin)]
    control = machine_speedup([vol.read(b) for b in cores[:2]] * (len(cores) // 2), max(1, plan.repeats))
    env.note(f"{tid}: {len(cores)} blocks; the same work in 1 vs 2 plain processes (no store, no ndfs) scaled "
             f"{control:.2f}x in this run; load average {os.getloadavg()[0]:.1f} after it")


def build_disk_store(root: Path, ref, shape, seed: int) -> Path:
    """A local store on disk (page cache drops apply) with one uint8 channel in the demo's 16x256x256 zstd chunks."""
    import numpy as np

    from ndfs.core.geometry import Box
    from ndfs.stores.local import LocalBackend

    backend = LocalBackend(root, create=True)
    backend.create_volume(ref, shape, "uint8", voxel_size_nm=(40.0, 4.0, 4.0), levels=1, chunk_shape=(16, 256, 256))
    rng = np.random.default_rng(seed)
    for z0 in range(0, shape[0], 16):
        z1 = min(z0 + 16, shape[0])
        backend.write(ref, Box((z0, 0, 0), (z1, *shape[1:])), 0, smooth_noise(rng, (z1 - z0, *shape[1:])))
    backend.close()
    return root


ENGINE_REF = ("engine", "em")


def api_engines(env: Env, res: Results) -> None:
    """A7/A8: a whole zarr v3 channel on disk through ``ndfs.open_volume(...)[:]`` vs tensorstore (and
    zarr-python), and its planes one by one through the API vs through a mount, page cache dropped."""
    import numpy as np
    import tensorstore
    import zarr

    import ndfs

    plan = env.plan
    shape = {"smoke": (32, 256, 256), "quick": (64, 1024, 1024)}.get(plan.mode, (128, 1024, 1024))
    store = build_disk_store(env.work / "engine-store", ENGINE_REF, shape, 24)
    cfg = env.work / "engine.toml"
    cfg.write_text(f'[remotes.local]\nkind = "local"\npath = "{store}"\n')
    level0 = str(store.joinpath(*ENGINE_REF, "0"))
    os.environ["NDFS_CONFIG"] = str(cfg)

    def ours():
        vol = ndfs.open_volume("local/" + "/".join(ENGINE_REF))  # a new cache each time: cold
        try:
            t = time.perf_counter()
            arr = vol[:]
            return arr, time.perf_counter() - t
        finally:
            vol.backend.close()

    def ts():
        t = time.perf_counter()
        arr = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": level0}},
                               read=True).result().read().result()
        return arr, time.perf_counter() - t

    def zp():
        t = time.perf_counter()
        arr = zarr.open_array(level0, mode="r")[:]
        return arr, time.perf_counter() - t

    runs = {"ndfs": ours, "tensorstore": ts, "zarr": zp}
    if not np.array_equal(ours()[0], ts()[0]):
        raise RuntimeError("ndfs and tensorstore read different voxels")
    times = {k: [] for k in runs}
    names = list(runs)
    for i in range(max(3, plan.repeats)):
        for name in names[i % 3:] + names[:i % 3]:
            env.drop_caches()
            times[name].append(runs[name]()[1])
    tn, tt, tz = (median(times[k]) for k in names)
    mib = np.prod(shape) / MiB
    res.add(Row("A7", f"read a {mib:.0f} MiB zarr v3 channel whole (open_volume(...)[:]): throughput",
                f"{mib / tn:.0f} MiB/s", f"{mib / tt:.0f} MiB/s tensorstore", tt / tn, ">= 0.8", tt / tn >= 0.8))
    from ndfs.stores.local import _engine

    env.note(f"A7: zarr-python read it at {mib / tz:.0f} MiB/s; ndfs reads the local store with {_engine()}; "
             f"{'x'.join(map(str, shape[::-1]))} uint8 on disk in 256x256x16 zstd chunks, page cache dropped each run")

    def api_scroll():
        vol = ndfs.open_volume("local/" + "/".join(ENGINE_REF))
        try:
            t = time.perf_counter()
            for z in range(shape[0]):
                vol[z]
            return time.perf_counter() - t
        finally:
            vol.backend.close()

    buf = memoryview(bytearray(MiB))

    def mount_scroll():
        with env.mount(env.fresh("cache"), config=cfg) as (mnt, _pid):
            zdir = mnt.joinpath("local", *ENGINE_REF, "0", "z")
            os.stat(zdir / "0.tif")
            env.drop_caches()
            t = time.perf_counter()
            for z in range(shape[0]):
                read_file(zdir / f"{z}.tif", buf)
            return time.perf_counter() - t

    sc = {"api": [], "mount": []}
    for i in range(1 if plan.mode == "smoke" else max(3, plan.repeats)):
        for name in (("api", "mount") if i % 2 == 0 else ("mount", "api")):
            if name == "api":
                env.drop_caches()
                sc["api"].append(api_scroll())
            else:
                sc["mount"].append(mount_scroll())
    ta, tm = median(sc["api"]), median(sc["mount"])
    res.add(Row("A8", f"{shape[0]} z-planes one by one, cold: API vs mount", f"{ta:.2f} s", f"{tm:.2f} s mount",
                ta / tm, "<= 1.1", ta / tm <= 1.1))


def api_count(env: Env, res: Results) -> None:
    """A9: count every cell of the demo's label channel (voxels, tight box and centroid per object)
    through ``ndfs.count`` vs counting its labels with numpy (``np.unique(..., return_counts=True)`` over
    the channel read whole by tensorstore), page cache dropped before each run."""
    import numpy as np
    import tensorstore

    import ndfs
    from ndfs.tools.demo import LABELS, PROJECT, make_demo

    shape = {"smoke": (16, 128, 128), "quick": (64, 1024, 1024)}.get(env.plan.mode, (128, 1024, 1024))
    root = env.work / "count-store"
    make_demo(str(root), shape=shape, levels=1, progress=False)
    cfg = env.work / "count.toml"
    cfg.write_text(f'[remotes.local]\nkind = "local"\npath = "{root}"\n')
    os.environ["NDFS_CONFIG"] = str(cfg)
    level0 = str(root / PROJECT / LABELS / "0")

    def ours():
        t = time.perf_counter()
        found = ndfs.count(f"local/{PROJECT}/{LABELS}", type="segment")
        return found.count, time.perf_counter() - t

    def numpy_unique():
        t = time.perf_counter()
        labels = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": level0}},
                                  read=True).result().read().result()
        values = np.unique(labels, return_counts=True)[0]
        return int(np.count_nonzero(values)), time.perf_counter() - t

    cells = ours()[0]
    if cells != numpy_unique()[0]:
        raise RuntimeError("ndfs.count and numpy count different numbers of cells")
    times = {"ndfs": [], "numpy": []}
    for i in range(max(3, env.plan.repeats)):
        for name, fn in ((("ndfs", ours), ("numpy", numpy_unique)) if i % 2 == 0 else
                         (("numpy", numpy_unique), ("ndfs", ours))):
            env.drop_caches()
            times[name].append(fn()[1])
    tn, tu = median(times["ndfs"]), median(times["numpy"])
    mib = np.prod(shape) * 8 / MiB
    res.add(Row("A9", f"count the cells of a {mib:.0f} MiB uint64 label channel (voxels, box, centroid each)",
                f"{tn:.2f} s", f"{tu:.2f} s np.unique", tn / tu, "<= 1.0", tn / tu <= 1.0))
    env.note(f"A9: {cells} cells; np.unique gives counts only, over the channel read whole by tensorstore")


def run_api(plan: Plan) -> int:
    """The API section alone: rows A1-A3 (cutouts vs reference clients), A4-A6 (map_blocks scaling), A7-A8
    (the local store's bulk reads vs tensorstore, a plane scroll through the API vs the mount), A9 (counting
    cells vs numpy)."""
    started = time.monotonic()
    res = Results()
    env = Env(plan)
    failed = False
    try:
        shape = api_shape(plan)
        stores = build_api_store(env.fast, shape, env.log)
        for tid, kind in (("A1", "boss"), ("A2", "dvid"), ("A3", "neurodata")):
            failed |= _step(env, res, tid, f"cutout via {kind}", lambda k=kind, t=tid: api_cutouts(
                env, res, stores, shape, t, k))
        for tid, scheduler in (("A4", "threads"), ("A5", "processes"), ("A6", "dask")):
            failed |= _step(env, res, tid, f"map_blocks {scheduler}",
                            lambda s=scheduler, t=tid: api_scaling(env, res, stores, t, s))
        failed |= _step(env, res, "A7", "engines", lambda: api_engines(env, res))
        failed |= _step(env, res, "A9", "count", lambda: api_count(env, res))
        env.note(f"API volume {'x'.join(map(str, shape[::-1]))} uint8 in 512x512x16 chunks; servers are "
                 f"`ndfs serve --protocol P` children with {plan.latency_ms:g} ms latency and a "
                 f"{plan.bandwidth_mbps:g} Mbit/s cap; ndfs reads without its cache (cache=False); "
                 f"ratios of A1-A3 are ndfs time / reference client time, of A4-A6 speedups on {os.cpu_count()} CPUs")
    finally:
        res.rows.sort(key=lambda r: r.target)
        head = ("target", "ndfs", "baseline", "ratio", "goal", "result")
        lines = [(f"{r.target} {r.what}", r.ndfs, r.base, fmt_ratio(r.ratio), r.goal, r.result) for r in res.rows]
        widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
        print(f"\nndfs API benchmark ({plan.mode}), medians of {plan.repeats}")
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        print("  ".join("-" * w for w in widths))
        for line in lines:
            print("  ".join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w)
                            for i, (c, w) in enumerate(zip(line, widths))))
        notes = env.notes + [f"{r.target}: error: {r.error}" for r in res.rows if r.error]
        if notes:
            print("notes:")
            for n in notes:
                print(f"  - {n}")
        print(f"total {time.monotonic() - started:.0f} s", flush=True)
        if not plan.keep:
            shutil.rmtree(env.work, True)
            shutil.rmtree(env.fast, True)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128 MiB stack, one repeat (about 2 minutes)")
    p.add_argument("--smoke", action="store_true", help="every target at a tiny size, no warm-up (for tests)")
    p.add_argument("--size-mib", type=int, default=None, help="stack size in MiB (default 1024; quick 128)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="server latency per request (default 20)")
    p.add_argument("--bandwidth-mbps", type=float, default=400.0, help="server bandwidth cap, Mbit/s (default 400)")
    p.add_argument("--repeats", type=int, default=None, help="measured repeats (default 3; quick/smoke 1)")
    p.add_argument("--workers", type=int, default=8, help="parallel requests, ndfs and direct client (default 8)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (store, caches, logs)")
    p.add_argument("--only", default=None, metavar="T,T",
                   help="run only these targets, e.g. 1,3 (6 runs after 1; 2 and 4 reuse 3's mount)")
    p.add_argument("--api", action="store_true", help="run the API section instead (rows A1-A9, see run_api)")
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--protocol", default="boss", choices=("boss", "dvid"), help=argparse.SUPPRESS)
    p.add_argument("--keep-bodies", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_child:
        return serve_child(args)
    if args.size_mib is not None and args.size_mib < 1 or args.repeats is not None and args.repeats < 1:
        p.error("--size-mib and --repeats must be positive")
    if args.latency_ms < 0 or args.bandwidth_mbps <= 0 or args.workers < 1:
        p.error("--latency-ms must be >= 0, --bandwidth-mbps and --workers positive")
    if args.only is not None:
        picked = {t.strip() for t in args.only.split(",") if t.strip()}
        if not picked or not picked <= set(TARGETS):
            p.error(f"--only takes targets from {','.join(TARGETS)}, e.g. --only 1,3")
        args.only = picked
    return run_api(make_plan(args)) if args.api else run(make_plan(args))


if __name__ == "__main__":
    sys.exit(main())
