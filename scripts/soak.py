#!/usr/bin/env python
"""Bounded soak: mixed reads and writes through a real mount with faults on, then count what was lost.

    python scripts/soak.py [--seconds 120] [--workers 8] [--protocol local|boss|dvid|neurodata]
                           [--kill-daemon SECONDS|off] [--child-flushes] [--api-writer] [--levels 3]
                           [--fault-rate 0.1] [--fault-modes 503,drop,reset,...] [--mode sync|async]

What runs (everything on 127.0.0.1 and in a temporary folder, cleaned up at the end):

* a store of one small volume with ``--levels`` levels (lower levels are 2x
  downsamplings the store rebuilds on every write), every z-plane of it one
  constant value;
* for ``--protocol local`` an ``ndfs mount`` of that store itself; for
  ``boss``, ``dvid`` or ``neurodata`` ndfs's own server of that protocol over
  it, answering a seeded fraction of requests (``--fault-rate``) with a fault
  drawn from ``--fault-modes`` (503s, dropped connections, resets, bodies cut
  off, short, garbled or padded; see ``ndfs.serve.common.FaultInjector``),
  and a switch that takes it fully down for a second now and then
  (``--outages``), and an ``ndfs mount`` of that server as remote ``b``
  (outbox on, ``--mode``);
* ``--workers`` threads for ``--seconds``: each owns some z-planes and fills
  one of them with a new constant value (a whole-plane TIFF write), or reads a
  random z, y or x plane of a random level and checks it;
* ``--child-flushes`` (default on): a third of the writes first write the
  whole file with only half its rows (the rest zero, so it is whole by its
  structure), have another process close the descriptor (a forked child that
  exits, or a subprocess given the descriptor), read the plane back from
  another thread (it must still hold one earlier value: another process's
  flush commits nothing), then write the other rows;
* ``--api-writer`` (default on, but off for DVID, which takes whole blocks
  only: two clients writing planes of one block overwrite each other's): a
  second process writes random planes of the same volume through the Python
  API (``ndfs.remote``: the store folder, or the server's URL with the soak's
  cache folder) with values of its own range, and reads planes of every
  level back, checking each is uniform;
* ``--kill-daemon S``: every S seconds or so (at random instants) the mount's
  daemon gets SIGKILL while the workers go on; once ``auto_unmount`` has
  released the mount point it is mounted again. Errors of operations that
  overlap such a dead period (ENOTCONN, ECONNABORTED, ENOENT of the empty
  mount point...) are counted apart. On the local store, before each remount,
  the store itself is checked as at the end (below): a write whose
  ``close()`` returned is there, nothing is half applied, the levels agree
  (the check's first read completes what the dead daemon left in the
  journal, as any next reader does). A daemon still alive 20 s after a kill
  is a failure of its own: the FUSE connection is then aborted (as
  ``umount -f`` does) so the soak can go on. A dead daemon's mount point that
  ``auto_unmount`` left behind is counted apart: the next ``ndfs mount``
  clears it, as it does for a user.

What a read may show: every write (mount or API) joins the plane's history
when it starts and is settled when it ends. A write whose ``close()``
succeeded is *done* and must land; one whose ``close()`` failed with EIO on a
remote is kept in the outbox and must land too; one interrupted by a kill
(or an API write that failed) may land, whole, or not at all; one whose
open or write failed before ``close()`` (nothing committed) must not land. A
plane read must hold a single value (else it is torn) that one of its writes
may have left: a write not yet superseded when the read began (by a done
write that began after it had ended, and is surely applied after it), or one
that began since (else it is a wrong read). Rows of y and x planes are
checked the same way, one z-plane each; lower levels of a uniform plane are
uniform with the same value. On a remote service a read through one process
may mix two writes of the other (processes share no lock there, and a plane
takes several requests): such reads are counted apart, as "torn reads across
processes", and are no failure.

At the end the mount is unmounted with ``ndfs umount`` (which waits for the
outbox), the outbox is retried if anything is left, and every plane of the
store (read through the store, so a write a dead daemon left in the journal
is completed) must hold a value its history allows: the newest done write, or
a later one that may have landed (else the plane is lost); each lower-level
plane must equal the downsampling of the plane above it (else it is mixed
across levels). The table shows operations, errors by errno, faults, kills,
child flushes, API writes, bytes verified, and the verdict rows torn reads,
wrong reads, planes lost, planes mixed across levels and daemons that did
not die of SIGKILL; the exit status is 1 if any of them is non-zero or
the soak itself failed (the API process crashing, a mount that cannot be
had back).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHAPE = (32, 96, 96)  # z, y, x of the soaked volume (level 0)
REF = ("demo", "em")  # the volume in the store
#: values written: the planes start at z + 1; the mount's workers write MOUNT_VALUES, the API process API_VALUES
MOUNT_VALUES, API_VALUES = (40, 199), (200, 255)


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
#: folder in the mount below the remote). The store is WORK/coll, the volume WORK/coll/demo/em.
PROTOCOLS = {
    "local": (None, None, "coll", "", ("demo", "em")),
    "boss": ("ndfs.serve.boss", "BossApp", ".", "", ("coll", "demo", "em")),
    "dvid": ("ndfs.serve.dvid", "DvidApp", "coll", 'branch = "master"\n', ("demo", "em")),
    "neurodata": ("ndfs.serve.neurodata", "NeuroDataApp", "coll", "", ("demo", "em")),
}
#: faults whose bodies the protocol lets a client detect (DVID's raw voxels carry no checksum: a same-length
#: garbled body cannot be told from data, so "corrupt" is not used there by default)
DEFAULT_MODES = {"boss": "503,drop,reset,cut,truncate,corrupt,pad", "dvid": "503,drop,reset,cut,truncate,pad",
                 "neurodata": "503,drop,reset,cut,truncate,corrupt,pad", "local": ""}


# ---- what each plane may hold ------------------------------------------------------------------------
@dataclass(eq=False)
class Write:
    """One write of one plane: its value, who made it, and when it began and ended (history sequence numbers)."""

    value: int
    source: str  # "initial", "mount" or "api"
    start: int
    end: int | None = None
    #: pending; done (close() or the API call returned: it lands); kept (EIO at close(): the outbox has it,
    #: it lands); maybe (cut by a kill, or an API call that failed: whole or not at all); refused (nothing
    #: was committed: it never lands)
    status: str = "pending"


@dataclass
class Mark:
    """What a read that begins now may return: the plane's writes not superseded yet, or any begun later."""

    live: dict[int, tuple[Write, ...]]
    begun: dict[int, int]


@dataclass
class History:
    """Every write of every z-plane, and which ones a read or the final store may show. Thread-safe.

    A write is superseded once a *done* write that began after it ended is done, if that write is sure to
    be applied after it (``ordered``). ``local`` (every write goes through the store's journal and writer
    mutex, in order) and ``sync`` (a mount write whose close() succeeded was posted) say which are.
    """

    initial: dict[int, int]
    local: bool
    sync: bool
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._seq = 0
        self.writes = {z: [Write(v, "initial", -2, -1, "done")] for z, v in self.initial.items()}
        self.live = {z: list(ws) for z, ws in self.writes.items()}

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def ordered(self, first: Write, then: Write) -> bool:
        """Is ``then``, begun after ``first`` ended, surely applied after it?"""
        if first.source in ("initial", then.source) or self.local or first.source == "api":
            return True  # one writer's own order; the store's journal; an API write is posted when it returns
        return self.sync and first.status == "done"  # a mount write kept in the outbox may post later

    def begin(self, z: int, value: int, source: str) -> Write:
        with self.lock:
            w = Write(value, source, self._next())
            self.writes[z].append(w)
            self.live[z].append(w)
            return w

    def settle(self, z: int, w: Write, status: str) -> None:
        with self.lock:
            w.end, w.status = self._next(), status
            if status == "refused":
                self.live[z].remove(w)
            elif status == "done":
                self.live[z] = [o for o in self.live[z]
                                if o is w or o.end is None or o.end > w.start or not self.ordered(o, w)]

    def mark(self) -> Mark:
        with self.lock:
            return Mark({z: tuple(ws) for z, ws in self.live.items()}, {z: len(ws) for z, ws in self.writes.items()})

    def allowed(self, mark: Mark, z: int) -> set[int]:
        with self.lock:
            ws = list(mark.live[z]) + self.writes[z][mark.begun[z]:]
            return {w.value for w in ws if w.status != "refused"}

    def final(self, z: int) -> set[int]:
        """What the store may hold at the end: writes that may have landed and that no landed write supersedes."""
        with self.lock:
            ws = [w for w in self.writes[z] if w.status != "refused"]
            landed = [w for w in ws if w.status in ("done", "kept")]
            return {w.value for w in ws
                    if not any(w.end is not None and w.end < j.start and self.ordered(w, j) for j in landed)}

    def last_writer(self, z: int, values) -> str:
        """Who began the newest of the writes of plane z that left these values (for a read mixing them)."""
        with self.lock:
            return max((w for w in self.writes[z] if w.value in values), key=lambda w: w.start).source

    def ever(self, z: int) -> set[int]:
        with self.lock:
            return {w.value for w in self.writes[z] if w.status != "refused"}


# ---- the mount's daemon ------------------------------------------------------------------------------
class Daemon:
    """The mount's daemon: started with ``ndfs mount``, killed with SIGKILL, started again.

    ``epoch`` moves when a kill begins and when the mount is back, so an operation can tell whether it
    overlapped a dead period; ``up`` is set while the mount serves.
    """

    def __init__(self, config: Path, mountpoint: Path, log: Path):
        self.config, self.mountpoint, self.log = config, mountpoint, log
        mountpoint.mkdir(exist_ok=True)
        #: resolved once, before mounting: resolving a mount point asks its daemon, which may be stuck
        self.target = os.path.realpath(mountpoint)
        self.pid: int | None = None
        self.epoch, self.kills = 0, 0
        self.dead_mounts = 0  # kills after which the dead mount stayed until the next mount cleared it
        self.up = threading.Event()

    def start(self) -> None:
        from ndfs.testing.mount import ndfs

        done = ndfs("--config", self.config, "mount", self.mountpoint, "--log-file", self.log, check=False,
                    timeout=120)
        m = re.search(r"pid (\d+)", done.stdout)
        if done.returncode or m is None:
            raise RuntimeError(f"ndfs mount failed ({done.returncode}): {done.stdout}{done.stderr}")
        self.pid = int(m.group(1))
        self.up.set()

    def mounted(self) -> bool:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split()[4] == self.target for line in fh)

    def dead_since(self, epoch: int) -> bool:
        return epoch != self.epoch or not self.up.is_set()

    def wait_up(self, deadline: float) -> None:
        """Wait (until the soak's deadline at most) for the mount to be back."""
        self.up.wait(max(0.0, deadline - time.monotonic()))

    def kill(self, between=None) -> str | None:
        """SIGKILL the daemon, wait for it to be gone and for ``auto_unmount`` to release the mount point,
        call ``between()``, mount again.

        None, or what went wrong: a daemon that does not die (it keeps the mount point, and every request
        in flight, forever); then the FUSE connection is aborted so the soak can go on, and it is
        reported. A daemon that died but whose mount point ``fusermount3`` left behind (it unmounts only
        if its own look at the mount point fails with ENOTCONN, and a look racing the daemon's end gets
        ECONNABORTED) is counted in ``dead_mounts``: the next ``ndfs mount`` clears such a dead mount, as
        it does for a user. RuntimeError if the mount cannot be had back.
        """
        from ndfs.testing.mount import wait_until

        self.up.clear()
        self.epoch += 1
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        released = lambda: not self.mounted()  # noqa: E731
        problem = None
        if not wait_until(lambda: released() or process_gone(pid), timeout=20):
            problem = (f"the daemon (pid {pid}) did not die within 20 s of SIGKILL, "
                       f"requests in flight hung: {stuck_threads(pid)}; {unmounters(pid)}; "
                       "the FUSE connection was aborted")
            self.abort()
            if not wait_until(released, timeout=20):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
                if not wait_until(released, timeout=10):
                    raise RuntimeError(problem + ", and still the mount point was not released")
        elif not wait_until(released, timeout=5):  # gone; auto_unmount's helper may still be at work
            self.dead_mounts += 1
        if between is not None:
            between()
        self.start()
        self.epoch += 1
        return problem

    def abort(self) -> None:
        """Abort the mount's FUSE connection: every request in it fails, and its daemon can die.

        No process is started for it: a child would inherit the workers' descriptors of the mount
        and hang closing them (each close is a request to the daemon that never answers).
        """
        if os.geteuid() == 0:  # umount2(MNT_FORCE) aborts a FUSE connection (the unmount itself may be EBUSY)
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.umount2(os.fsencode(self.target), 1)
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if fields[4] == self.target:
                    abort = Path("/sys/fs/fuse/connections") / fields[2].split(":")[1] / "abort"
                    with contextlib.suppress(OSError):  # fusectl not mounted, or not ours to write
                        abort.write_text("1")

    def stop(self) -> None:
        from ndfs.testing.mount import ndfs

        if self.mounted():
            ndfs("umount", "--wait", "120", self.mountpoint, check=False, timeout=300)
        if self.mounted():  # a soak that failed: let go of the mount point anyway
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)


def process_gone(pid: int) -> bool:
    """Whether a process has ended (no longer in /proc, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stuck_threads(pid: int, name: str = "the daemon") -> str:
    """Where the threads of a process that does not die are waiting in the kernel (from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return f"{name} is gone"
    out = [f"{name} is in state {state}"]
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError):
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            where = (task / "wchan").read_text().strip()
            with contextlib.suppress(OSError):  # the kernel stack, for root
                frames = [ln.split()[-1].split("+")[0] for ln in (task / "stack").read_text().splitlines()]
                where = " < ".join(frames[:5]) or where
            out.append(f"thread {task.name} ({state}) in {where}")
    return "; ".join(out)


def unmounters(daemon: int) -> str:
    """Where the daemon's fusermount3 (auto_unmount's helper, its child) is waiting."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # (stat, not cmdline: reading a command line can block)
            name, _, rest = (proc / "stat").read_text().partition(" (")[2].rpartition(")")
            if name == "fusermount3" and int(rest.split()[1]) == daemon:
                out.append(stuck_threads(int(proc.name), f"fusermount3 (pid {proc.name})"))
    return "; ".join(out) or "no fusermount3 left"


# ---- the second writer: a Python process --------------------------------------------------------------
#: Writes random planes through ndfs.remote and reads planes of every level back. Each write is announced
#: ("start Z V"), waits for "go" (so the soak has it in the plane's history before any byte moves) and is
#: reported ("done Z V", or "failed Z V ERRNO"); at the end one "result {json}" line.
API_WRITER = r"""
import json, random, sys, threading, time
import numpy as np
import ndfs
from ndfs.core.errors import NdfsError

spec = json.loads(sys.argv[1])
vol = ndfs.remote(spec["target"], **spec["options"]).volume(spec["project"], spec["channel"])
levels = [vol.level(i) for i in range(len(vol.levels))]
deadline = time.monotonic() + spec["seconds"]
out = threading.Lock()
torn, seen, counts = [], {}, {"reads": 0, "read errors": 0}


def say(*words):
    with out:
        print(*words, flush=True)


def writer():
    rng = random.Random(spec["seed"])
    while time.monotonic() < deadline:
        z, value = rng.randrange(spec["planes"]), rng.randint(*spec["values"])
        say("start", z, value)
        if sys.stdin.readline().strip() != "go":
            return
        try:
            vol[z] = np.full(vol.shape[1:], value, np.uint8)
        except NdfsError as exc:
            say("failed", z, value, exc.errno or 0)
        else:
            say("done", z, value)
        time.sleep(rng.uniform(0, spec["pause"]))


def reader():
    rng = random.Random(spec["seed"] + 1)
    while time.monotonic() < deadline:
        level, z = rng.randrange(len(levels)), rng.randrange(spec["planes"])
        try:
            plane = levels[level][z]
        except NdfsError:
            counts["read errors"] += 1
            continue
        values = np.unique(plane)
        if len(values) != 1:
            torn.append([level, z, values[:5].tolist()])
        else:
            seen.setdefault(str(z), set()).add(int(values[0]))
        counts["reads"] += 1
        time.sleep(rng.uniform(0, spec["pause"]))


threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
for t in threads:
    t.start()
for t in threads:
    t.join()
say("result", json.dumps({**counts, "torn": torn, "seen": {z: sorted(v) for z, v in seen.items()}}))
"""


#: what the subprocess of a child flush runs: close the descriptor it was given; the exit status is close()'s errno
CLOSE = """import os, sys
try:
    os.close(int(sys.argv[1]))
except OSError as exc:
    sys.exit(exc.errno)
"""


class ApiWriter:
    """Runs API_WRITER in another process and keeps its writes in the history."""

    def __init__(self, spec: dict, env: dict, history: History, log: Path):
        self.history, self.log = history, log
        self.result: dict | None = None
        self.writes, self.failures = 0, collections.Counter()
        with open(log, "w") as err:  # the child has its own copy
            self.proc = subprocess.Popen([sys.executable, "-c", API_WRITER, json.dumps(spec)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.thread = threading.Thread(target=self._follow)
        self.thread.start()

    def _follow(self) -> None:
        current = None
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "start":
                z, value = map(int, rest.split())
                current = (z, self.history.begin(z, value, "api"))
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
            elif kind in ("done", "failed"):
                z, w = current
                self.history.settle(z, w, "done" if kind == "done" else "maybe")
                current = None
                if kind == "done":
                    self.writes += 1
                else:
                    code = int(rest.split()[2])
                    self.failures[f"API write {errno.errorcode.get(code, code)}"] += 1
            elif kind == "result":
                self.result = json.loads(rest)
        if current is not None:  # the process died in the middle of a write
            self.history.settle(current[0], current[1], "maybe")

    def join(self) -> str | None:
        """Wait for the process; None, or why it failed."""
        self.thread.join()
        code = self.proc.wait()
        if code != 0 or self.result is None:
            tail = self.log.read_text()[-1500:]
            return f"the API process exited with status {code}:\n{tail}"
        return None


# ---- the soak ------------------------------------------------------------------------------------------------
def run(args) -> int:
    import importlib

    import tifffile

    from ndfs.core.downsample import downsample
    from ndfs.core.geometry import Box
    from ndfs.journal import Journal
    from ndfs.stores.local import JOURNAL_DIR, LocalBackend
    from ndfs.tools.demo import make_demo
    from ndfs.serve.common import ServeOptions, WsgiServer
    from ndfs.testing.mount import ndfs

    work = Path(tempfile.mkdtemp(prefix="ndfs-soak-"))
    os.environ["NDFS_OUTBOX_DIR"] = str(work / "outbox")
    store_dir = work / "coll"
    make_demo(str(store_dir), shape=SHAPE, levels=args.levels, chunk_shape=(16, 64, 64), progress=False)
    initial = {z: z + 1 for z in range(SHAPE[0])}  # every plane starts uniform, its lower levels too
    LocalBackend(store_dir).write(REF, Box((0, 0, 0), SHAPE), 0,
                                  np.stack([np.full(SHAPE[1:], initial[z], np.uint8) for z in range(SHAPE[0])]))
    shapes = [lv.shape for lv in LocalBackend(store_dir).info(REF).levels]
    local = args.protocol == "local"
    history = History(initial, local=local, sync=args.mode == "sync")
    rewrites = collections.Counter()  # z-plane -> mount writes to it begun + ended (odd: one is under way)
    module, cls, served, settings, volume = PROTOCOLS[args.protocol]
    stats, errors = collections.Counter(), collections.Counter()
    torn: list[str] = []  # reads that mix values
    across: list[str] = []  # remote only: reads through one process mixing values as another process wrote
    wrong: list[str] = []  # reads of a value the plane could not hold then
    failures: list[str] = []  # the soak itself could not go on as planned
    counts = collections.Counter()  # planes lost / mixed across levels, at the store checks
    notes: list[str] = []  # what the store checks found
    stuck: list[str] = []  # kills after which the mount point stayed taken
    lock = threading.Lock()
    injected: dict[str, int] = {}
    pixels = tifffile.TiffFile(io.BytesIO(tiff_bytes(np.ones(SHAPE[1:], np.uint8)))).pages[0].dataoffsets[0]
    if args.child_flushes:  # the forked child only exits; Python 3.12 warns about fork() with threads running
        warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)

    with contextlib.ExitStack() as stack:
        config = work / "ndfs.toml"
        cache = f'[cache]\ndir = "{work / "cache"}"\n'
        write = f'[write]\nwrite_back = "{args.mode}"\nretry_max_s = 2.0\n'
        if local:
            server = switch = None
            remote = "local"
            config.write_text(f'[remotes.local]\nkind = "local"\npath = "coll"\n{cache}{write}')
        else:
            app = getattr(importlib.import_module(module), cls)(LocalBackend(work / served))
            switch = Switch(app)
            modes = tuple(m for m in (args.fault_modes or DEFAULT_MODES[args.protocol]).split(",") if m)
            options = ServeOptions(fault_rate=args.fault_rate, seed=args.seed, fault_modes=modes, stall_s=12.0)
            server = stack.enter_context(WsgiServer(switch, options=options))
            remote = "b"
            config.write_text(f'[remotes.b]\nkind = "{args.protocol}"\nurl = "{server.url}"\nretries = 2\n'
                              f'backoff_s = 0.05\ntimeout_s = 10.0\n{settings}{cache}{write}')
        daemon = Daemon(config, work / "mnt", work / "mount.log")
        daemon.start()
        stack.callback(daemon.stop)
        vol = work / "mnt" / remote / Path(*volume)
        levels = sorted(int(n) for n in os.listdir(vol) if n.isdigit())  # what the mount shows of the store's
        deadline = time.monotonic() + args.seconds
        owned = {w: [z for z in range(SHAPE[0]) if z % args.workers == w] for w in range(args.workers)}

        def failed(op: str, exc: OSError, epoch: int) -> None:
            name = errno.errorcode.get(exc.errno, exc.errno)
            with lock:
                if daemon.dead_since(epoch):
                    errors[f"{op} {name} (daemon killed)"] += 1
                else:
                    errors[f"{op} {name}"] += 1
            if daemon.dead_since(epoch):
                daemon.wait_up(deadline)  # the mount is coming back: no point hammering the empty mount point

        def check_read(level: int, axis: str, i: int, epoch: int, what: str = "") -> None:
            """Read one plane file through the mount and check it against the history; OSError goes up."""
            mark = history.mark()
            with lock:
                before = rewrites[i]
            try:
                plane = tifffile.imread(vol / str(level) / axis / f"{i}.tif")
            except (ValueError, tifffile.TiffFileError):
                plane = np.zeros((0,), np.uint8)
            with lock:  # odd count, or moved: a writer had the file open meanwhile
                rewritten = axis == "z" and level == 0 and (before % 2 or rewrites[i] != before)
            if plane.size == 0 and (rewritten or daemon.dead_since(epoch)):
                # opened while its writer had just truncated it (short, as on a local disk), or cut by a kill
                with lock:
                    stats["short reads of a file being rewritten" if rewritten else "reads cut by a kill"] += 1
                return
            name = f"{level}/{axis}/{i}.tif{what}"
            rows = [(i, plane)] if axis == "z" else list(enumerate(plane))  # a y or x plane: a row per z-plane
            for z, row in rows:
                u = np.unique(row)
                if len(u) != 1:
                    # a remote service has no lock shared by processes: a read of several chunks may span
                    # the API process's write (not a promise ndfs makes); one mixing the mount's own writes
                    # is torn
                    other = not local and history.last_writer(z, set(u.tolist())) == "api"
                    with lock:
                        (across if other else torn).append(
                            f"{name} {'' if axis == 'z' else f'row z={z} '}mixes {u[:5].tolist()}")
                    break
                if int(u[0]) not in history.allowed(mark, z):
                    with lock:
                        wrong.append(f"{name} {'' if axis == 'z' else f'row z={z} '}holds {int(u[0])}, "
                                     f"not one of {sorted(history.allowed(mark, z))}")
                    break
            with lock:
                stats["reads"] += 1
                stats["bytes verified"] += plane.nbytes

        def check_store(may, when: str) -> None:
            """Every plane of the store (every level) against ``may(z)``, the values it may hold; no write
            is applied meanwhile. A fresh store object: its first read completes what a dead writer left."""
            store = LocalBackend(store_dir)
            store.read(REF, Box((0, 0, 0), (1, 1, 1)), 0)
            with store.volume_lock(REF).writer():  # writers (the API process, a server) wait meanwhile
                held = [store.read(REF, Box((0, 0, 0), shape), level) for level, shape in enumerate(shapes)]
            for z in range(SHAPE[0]):
                u = np.unique(held[0][z])
                allowed = may(z)
                if len(u) != 1 or int(u[0]) not in allowed:
                    counts["planes lost"] += 1
                    notes.append(f"{when}: stored plane {z} holds {u[:5].tolist()}, not one of {sorted(allowed)}")
                for level in range(1, len(held)):
                    if not np.array_equal(held[level][z], downsample(held[level - 1][z:z + 1], "image")[0]):
                        counts["planes mixed across levels"] += 1
                        notes.append(f"{when}: level {level} plane {z} is not the downsampling of level {level - 1}")
            stats["store checks"] += 1

        def after_kill() -> None:
            """Local store, while the mount is down: a write whose close() returned is in the store, nothing
            is half applied, the levels agree. (A remote service may hold part of a post the dead daemon
            made: its outbox posts it whole again once mounted, so there only the end is checked.)"""
            mark = history.mark()
            check_store(lambda z: history.allowed(mark, z), f"after kill {daemon.kills}")

        def from_child(fd: int, rng: random.Random, epoch: int) -> None:
            """Another process closes a duplicate of the descriptor: a forked child exiting, or a program given it."""
            if rng.random() < 0.5:
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
            else:
                done = subprocess.run([sys.executable, "-I", "-S", "-c", CLOSE, str(fd)], pass_fds=[fd])
                if done.returncode and daemon.dead_since(epoch):  # its close() failed: the daemon was killed
                    with lock:
                        errors[f"child close {errno.errorcode.get(done.returncode, done.returncode)} "
                               "(daemon killed)"] += 1
                elif done.returncode:
                    failures.append(f"the child closing a descriptor exited with status {done.returncode}")
            with lock:
                stats["child flushes"] += 1

        def peek(z: int, epoch: int) -> None:
            """Read plane z from another thread (not the writer's): a child's flush must have committed nothing."""
            def read():
                try:
                    check_read(0, "z", z, epoch, " (after a child's flush)")
                except OSError as exc:
                    failed("read", exc, epoch)
            t = threading.Thread(target=read)
            t.start()
            t.join()

        def write_plane(z: int, rng: random.Random) -> None:
            value = rng.randint(*MOUNT_VALUES)
            epoch = daemon.epoch
            with lock:
                rewrites[z] += 1
            w = history.begin(z, value, "mount")
            data = tiff_bytes(np.full(SHAPE[1:], value, np.uint8))
            child = args.child_flushes and rng.random() < 1 / 3
            status = "refused"
            try:
                try:  # open and write: a failure here means nothing was committed
                    fh = open(vol / "0" / "z" / f"{z}.tif", "wb", buffering=0)
                    try:
                        if child:  # whole by its structure, but only half the rows written: the rest zero
                            half = pixels + (len(data) - pixels) // 2
                            put(fh, data[:half] + bytes(len(data) - half))
                            from_child(fh.fileno(), rng, epoch)
                            peek(z, epoch)
                            fh.seek(half)
                            put(fh, data[half:])
                        else:
                            put(fh, data)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            fh.close()  # a partial file is never committed
                        raise
                except OSError as exc:
                    failed(f"write{' (child flush)' if child else ''} before close (nothing committed)", exc, epoch)
                    return
                try:  # close commits the plane
                    fh.close()
                except OSError as exc:
                    if daemon.dead_since(epoch):
                        status = "maybe"  # the daemon died in the commit: whole or not at all
                        failed("write at close", exc, epoch)
                    elif exc.errno == errno.EIO:
                        status = "maybe" if local else "kept"  # kept in the journal / the outbox
                        with lock:
                            errors[f"write EIO at close ({'kept in the journal' if local else 'kept in outbox'})"] += 1
                    else:  # refused: not stored
                        with lock:
                            errors[f"write {errno.errorcode.get(exc.errno, exc.errno)} at close (refused)"] += 1
                    return
                status = "done"
                with lock:
                    stats["writes"] += 1
                    stats["bytes written"] += SHAPE[1] * SHAPE[2]
            finally:
                history.settle(z, w, status)
                with lock:
                    rewrites[z] += 1

        def worker(w: int) -> None:
            rng = random.Random(args.seed * 1000 + w)
            while time.monotonic() < deadline:
                if not daemon.up.is_set():
                    daemon.wait_up(deadline)
                    continue
                if rng.random() < 0.35 and owned[w]:
                    write_plane(rng.choice(owned[w]), rng)
                    continue
                level = rng.choice(levels)
                axis = rng.choice("zyx")
                i = rng.randrange(shapes[level]["zyx".index(axis)])
                epoch = daemon.epoch
                try:
                    check_read(level, axis, i, epoch)
                except OSError as exc:
                    failed("read", exc, epoch)

        def outages() -> None:
            rng = random.Random(args.seed)
            while time.monotonic() < deadline - 2:
                time.sleep(rng.uniform(2, 6))
                switch.down = True
                stats["outages"] += 1
                time.sleep(1.0)
                switch.down = False

        def killer() -> None:
            rng = random.Random(args.seed + 17)
            while True:
                pause = rng.uniform(0.3, 1.7) * args.kill_daemon
                if time.monotonic() + pause > deadline - 1:
                    return
                time.sleep(pause)
                try:
                    problem = daemon.kill(between=after_kill if local else None)
                except RuntimeError as exc:  # the mount could not be had back
                    failures.append(str(exc))
                    return
                if problem:
                    with lock:
                        stuck.append(problem)

        api = None
        if args.api_writer:
            target = str(store_dir) if local else f"{args.protocol}+{server.url}"
            options = {} if local else {"retries": 2, "backoff_s": 0.05, "timeout_s": 10.0,
                                        **({"branch": "master"} if args.protocol == "dvid" else {})}
            spec = {"target": target, "options": options, "project": "/".join(volume[:-1]),
                    "channel": volume[-1], "seconds": args.seconds, "seed": args.seed, "planes": SHAPE[0],
                    "values": API_VALUES, "pause": 0.05}
            api = ApiWriter(spec, {**os.environ, "NDFS_CONFIG": str(config)}, history, work / "api.log")
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
        if switch is not None and args.outages:
            threads.append(threading.Thread(target=outages))
        if args.kill_daemon:
            threads.append(threading.Thread(target=killer))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if api is not None:
            problem = api.join()
            if problem:
                failures.append(problem)
        if not daemon.up.is_set():
            failures.append("the mount was not back after the last kill")
        if server is not None:
            switch.down = False
            injected = dict(server.faults.injected)
            server.faults.clear()  # let the outbox drain without injected faults
        daemon.stop()
        if not local:
            left = ndfs("--config", config, "outbox", "retry", "--timeout", "60", check=False, timeout=300)
            stats["outbox entries left"] = left.stdout.count("pending") if left.returncode else 0

    # ---- the verdict -----------------------------------------------------------------------------------
    journal_dir = store_dir / Path(*REF) / JOURNAL_DIR
    stats["journal entries completed at the end"] = len(Journal(journal_dir).entries()) if journal_dir.exists() else 0
    check_store(history.final, "at the end")
    lost, mixed = counts["planes lost"], counts["planes mixed across levels"]
    api_torn = 0
    if api is not None and api.result is not None:
        for lv, z, u in api.result["torn"]:
            other = not local and history.last_writer(z, set(u)) == "mount"
            api_torn += not other
            (across if other else torn).append(f"API read of level {lv} plane {z} mixes {u}")
        for z, values in api.result["seen"].items():
            never = set(values) - history.ever(int(z))
            wrong.extend(f"API read of plane {z} holds {v}, never written to it" for v in sorted(never))
        stats["API reads"] = api.result["reads"]
        errors.update({"API read errors": api.result["read errors"]} if api.result["read errors"] else {})
        errors.update(api.failures)
    stats["API writes"] = 0 if api is None else api.writes
    stats["daemon kills"] = daemon.kills
    stats["dead mounts cleared by the next mount"] = daemon.dead_mounts
    stats["child flushes"] += 0  # a row also when there were none
    spool = work / "outbox" / "spool"
    stats["spool files left"] = len(list(spool.iterdir())) if spool.exists() else 0
    log = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    stats["tracebacks in the mount log"] = log.count("Traceback")
    rows = [("protocol", args.protocol), ("seconds", args.seconds), ("workers", args.workers),
            ("levels", len(shapes)), ("levels shown by the mount", len(levels)),
            *([] if local else [("fault rate", args.fault_rate), ("write-back mode", args.mode)]),
            ("kill the daemon every (s)", args.kill_daemon or "off"),
            *[(f"faults injected: {m}", n) for m, n in sorted(injected.items())], *sorted(stats.items()),
            *sorted(errors.items()),
            ("operations", stats["reads"] + stats["writes"] + sum(v for k, v in errors.items() if "API" not in k)),
            ("errors returned", sum(v for k, v in errors.items() if "API" not in k)),
            *([] if local else [("torn reads across processes (remote)", len(across))]),
            ("torn reads (API process)", api_torn), ("torn reads", len(torn)), ("wrong reads", len(wrong)),
            ("planes lost", lost), ("planes mixed across levels", mixed),
            ("daemons that did not die of SIGKILL", len(stuck))]
    width = max(len(str(k)) for k, _ in rows)
    print(f"\n{'ndfs soak':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for p in (torn[:10] + wrong[:10] + notes[:10] + stuck[:3] + failures):
        print("  problem:", p)
    for p in across[:5]:
        print("  across processes (a remote service has no lock that processes share):", p)
    if args.keep:
        print(f"  work directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if lost or mixed or torn or wrong or stuck or failures else 0


def put(fh, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def _interval(text: str) -> float | None:
    if text == "off":
        return None
    from ndfs.core.units import positive_seconds

    try:
        return positive_seconds(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds or 'off': {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="how long to soak (default 120)")
    p.add_argument("--workers", type=int, default=8, help="reader/writer threads (default 8)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="boss",
                   help="what to mount: the local store itself, or a server of that protocol (default boss)")
    p.add_argument("--levels", type=int, default=3, help="levels of the volume (default 3)")
    p.add_argument("--kill-daemon", metavar="SECONDS|off", type=_interval, nargs="?", const=3.0, default=None,
                   help="SIGKILL the mount's daemon about every SECONDS (3 if not given) and mount again "
                        "(default off)")
    p.add_argument("--child-flushes", action=argparse.BooleanOptionalAction, default=True,
                   help="have other processes close a third of the written files' descriptors mid-write "
                        "(default on)")
    p.add_argument("--api-writer", action=argparse.BooleanOptionalAction,
                   help="a second process writes and reads the same planes through the Python API (default on, "
                        "but off for dvid: DVID takes whole blocks only, so two clients writing planes of one "
                        "block overwrite each other's, as ndfs/backends/dvid.py says)")
    p.add_argument("--fault-rate", type=float, default=0.1,
                   help="fraction of the server's requests failed (default 0.1; not for local)")
    p.add_argument("--mode", choices=["sync", "async"], default="sync",
                   help="write-back mode of the remote (default sync; not for local)")
    p.add_argument("--fault-modes", metavar="M,M,...",
                   help="faults to draw from (default: every one the protocol's bodies can be checked against: "
                        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_MODES.items() if v) + "; 'stall' also exists)")
    p.add_argument("--outages", action=argparse.BooleanOptionalAction, default=True,
                   help="take the server fully down for a second now and then (default on; not for local)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.workers < 1 or args.seconds <= 0:
        p.error("--workers and --seconds must be positive")
    if args.api_writer is None:
        args.api_writer = args.protocol != "dvid"
    if args.levels < 1:
        p.error("--levels must be at least 1")
    from ndfs.serve.common import FAULT_MODES

    unknown = [m for m in (args.fault_modes or "").split(",") if m and m not in FAULT_MODES]
    if unknown:
        p.error(f"unknown fault mode(s) {', '.join(unknown)}; known: {', '.join(FAULT_MODES)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
