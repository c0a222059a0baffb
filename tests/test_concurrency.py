"""Readers and writers on overlapping regions through a real mount: no deadlock, no torn read, no lost write.

Eight threads (four writers, four readers) work for a few seconds on one
small uint16 volume through the mount: writers post z planes, y planes and
cutout boxes (``.npy``) that overlap each other, each filled with its own
unique value (the write's sequence number); readers read z, y and x planes and
cutout boxes. Every write and read records its box, its start and the time it
returned.

The check is exact: the run is correct if and only if there is one serial
order of all the writes that (1) respects real time (a write that returned
before another began comes first), (2) explains every read (each read shows,
at every voxel, the last write before it in that order, or the initial 0) and
(3) explains the final store (the replay of all writes in that order). We
build the precedence graph those three demand:

* ``A -> B`` when A returned before B started (writes and reads alike);
* ``s -> R`` when read R (or the final store F) shows write s's value;
* ``t -> s`` when R shows s at a voxel that a write t also covers and t is
  known to come before R (it returned before R started, or R shows it
  elsewhere): t was overwritten there, so it precedes s;

and require that every shown value is 0 or a write covering that voxel, that
no voxel shows 0 once a write covering it is known to come before the read,
and that the graph has no cycle. A torn read (half of a write) shows t at one
voxel and an older value where t also covers: ``t -> older -> t``, a cycle.
A lost write that returned is covered in F by an older value: a cycle with
the real-time edge. So a passing run *is* a serial replay (a topological
order of the graph), and a wrong one cannot pass by accident.
"""

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ndfs.stores.local import LocalBackend
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted

pytestmark = [pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable())),
              pytest.mark.timeout(180)]

REF = ("p", "vol")
SHAPE = (8, 48, 40)  # z, y, x: small, so writes overlap all the time
SECONDS = 5.0
WRITERS, READERS = 4, 4


@dataclass
class Op:
    kind: str  # "write" or "read"
    box: Box
    start: float
    end: float = 0.0
    value: int = 0  # writes: the value written (its id)
    seen: np.ndarray | None = None  # reads: what was read
    node: int = 0  # index in the graph
    preds: set = field(default_factory=set)


def plane_box(axis: str, i: int) -> Box:
    z, y, x = SHAPE
    return {"z": Box((i, 0, 0), (i + 1, y, x)), "y": Box((0, i, 0), (z, i + 1, x)),
            "x": Box((0, 0, i), (z, y, i + 1))}[axis]


def random_box(rng: random.Random) -> Box:
    start = [rng.randrange(0, s - 1) for s in SHAPE]
    stop = [rng.randrange(a + 1, min(s, a + 1 + s // 2) + 1) for a, s in zip(start, SHAPE)]
    return Box(tuple(start), tuple(stop))


def cutout_name(box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}.npy"


@pytest.fixture
def site(tmp_path):
    store = tmp_path / "store"
    LocalBackend(store, create=True).create_volume(REF, SHAPE, "uint16", levels=1, chunk_shape=(4, 16, 16))
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    with mounted(tmp_path / "ndfs.toml", tmp_path / "mnt", "--log-file", tmp_path / "mount.log"):
        yield tmp_path, tmp_path / "mnt" / "local" / "p" / "vol" / "0"


def run_workers(level) -> tuple[list[Op], list[Op], int]:
    """Run the writers and readers; return (writes, reads, short reads)."""
    ids = iter(range(1, 60000))
    lock = threading.Lock()
    writes: list[Op] = []
    reads: list[Op] = []
    short = [0]
    errors: list[BaseException] = []
    deadline = time.monotonic() + SECONDS

    def pick(rng, kinds) -> tuple[str, Box, Path]:
        """A random target: a plane file of one of ``kinds``, or a random cutout box."""
        kind = rng.choice(kinds)
        if kind == "cutout":
            box = random_box(rng)
            return kind, box, level / "cutout" / cutout_name(box)
        i = rng.randrange(SHAPE["zyx".index(kind)])
        return kind, plane_box(kind, i), level / kind / f"{i}.tif"

    def writer(w: int) -> None:
        rng = random.Random(w)
        while time.monotonic() < deadline:
            with lock:
                value = next(ids)
            kind, box, path = pick(rng, ["z", "y", "cutout", "cutout"])
            op = Op("write", box, time.monotonic(), value=value)
            arr = np.full(box.shape, value, np.uint16)
            if kind == "cutout":
                with open(path, "wb") as fh:
                    np.save(fh, arr)
            else:
                tifffile.imwrite(path, arr[0] if kind == "z" else arr[:, 0, :])
            op.end = time.monotonic()
            with lock:
                writes.append(op)

    def reader(r: int) -> None:
        rng = random.Random(100 + r)
        while time.monotonic() < deadline:
            kind, box, path = pick(rng, ["z", "y", "x", "cutout"])
            op = Op("read", box, time.monotonic())
            with open(path, "rb") as fh:
                data = fh.read()
            op.end = time.monotonic()
            try:
                arr = np.load(io.BytesIO(data)) if kind == "cutout" else tifffile.imread(io.BytesIO(data))
            except Exception:  # opened just as a writer truncated it: short, as on a local disk
                with lock:
                    short[0] += 1
                continue
            op.seen = arr.reshape(box.shape)
            with lock:
                reads.append(op)

    def guarded(fn, n):
        try:
            fn(n)
        except BaseException as exc:  # a failed write or read fails the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(writer, w)) for w in range(WRITERS)]
    threads += [threading.Thread(target=guarded, args=(reader, r)) for r in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a reader or writer is stuck: deadlock?"
    assert not errors, errors[:3]
    return writes, reads, short[0]


def check_serialisable(writes: list[Op], reads: list[Op], final: np.ndarray) -> dict:
    """Build the precedence graph (module doc) and check it; returns counts. Raises AssertionError."""
    by_value = {w.value: w for w in writes}
    assert len(by_value) == len(writes)
    ops = writes + reads + [Op("read", Box((0, 0, 0), SHAPE), float("inf"), float("inf"), seen=final)]
    for n, op in enumerate(ops):
        op.node = n
    final_op = ops[-1]
    # which write covers which voxel: a volume-sized stack of masks, one bit per write
    cover = {w.value: w.box for w in writes}
    ordered = sorted(ops, key=lambda o: o.start)
    ends = sorted(ops, key=lambda o: o.end)
    # real time: A -> B when A ended before B started (only the latest such A per B is needed for a
    # path; we add all of them that are writes covering B's box, and every read ending before a write)
    for b in ordered:
        for a in ends:
            if a.end >= b.start:
                break
            if a is not b and (a.kind == "write" or b.kind == "write"):
                b.preds.add(a.node)
    edges = 0
    for r in reads + [final_op]:
        seen = r.seen
        values = np.unique(seen)
        for v in values:
            v = int(v)
            if v == 0:
                continue
            w = by_value.get(v)
            assert w is not None, f"read {r.box} shows {v}, a value nobody wrote"
            where = np.argwhere(seen == v) + np.array(r.box.start)
            inside = np.all((where >= w.box.start) & (where < w.box.stop), axis=1)
            assert inside.all(), f"read {r.box} shows write {v} outside its box {w.box}"
            r.preds.add(w.node)  # s -> R
        before_r = {ops[n].value for n in r.preds if ops[n].kind == "write"} | {int(v) for v in values if v}
        for t in before_r:  # t -> s for what R shows where t was overwritten
            part = cover[t].intersect(r.box)
            if part is None:
                continue
            shown = np.unique(seen[part.slices(r.box.start)])
            assert 0 not in shown, f"write {t} ({cover[t]}) came before a read of {r.box} that shows 0 in it"
            for s in shown:
                if int(s) != t:
                    by_value[int(s)].preds.add(by_value[t].node)
                    edges += 1
    # the graph must be acyclic (iterative DFS with colours)
    colour = [0] * len(ops)
    for root in range(len(ops)):
        if colour[root]:
            continue
        stack = [(root, iter(ops[root].preds))]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
            elif colour[nxt] == 1:
                cycle = [ops[n] for n, _ in stack]
                raise AssertionError(f"no serial order explains the run: cycle through "
                                     f"{[(o.kind, o.value, str(o.box)) for o in cycle[-6:]]}")
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(ops[nxt].preds)))
    return {"writes": len(writes), "reads": len(reads), "inferred edges": edges}


def test_eight_readers_and_writers_on_overlapping_regions_are_a_serial_replay(site):
    root, level = site
    writes, reads, short = run_workers(level)
    final = LocalBackend(root / "store").read(REF, Box((0, 0, 0), SHAPE), 0)
    counts = check_serialisable(writes, reads, final)
    assert counts["writes"] >= 20 and counts["reads"] >= 20, counts  # the run did overlap, many times
    assert counts["inferred edges"] > 0
    assert short <= len(reads) // 10, f"{short} short reads of {len(reads)}"
    # and the store equals the replay of the writes in an order the graph allows: replaying in the
    # order the writes returned must agree wherever two writes did not overlap in time
    replay = np.zeros(SHAPE, np.uint16)
    for w in sorted(writes, key=lambda w: w.end):
        replay[w.box.slices()] = w.value
    differ = np.argwhere(replay != final)
    for p in differ[:50]:  # each difference must be between writes that ran at the same time
        a, b = by_voxel(writes, tuple(p), final[tuple(p)]), by_voxel(writes, tuple(p), replay[tuple(p)])
        assert a.start < b.end and b.start < a.end, f"voxel {tuple(p)}: {a.value} vs {b.value} did not overlap in time"
    assert "Traceback" not in (root / "mount.log").read_text()


def by_voxel(writes, p, value) -> Op:
    return next(w for w in writes if w.value == value and w.box.contains(Box(p, tuple(c + 1 for c in p))))


def test_the_check_catches_a_torn_read_and_a_lost_write():
    """The checker itself must fail on what it is there to catch."""
    w1 = Op("write", plane_box("z", 0), 0.0, 1.0, value=1)
    w2 = Op("write", plane_box("z", 0), 2.0, 3.0, value=2)
    final = np.zeros(SHAPE, np.uint16)
    final[0] = 2
    assert check_serialisable([w1, w2], [], final)["writes"] == 2
    torn = final[0:1].copy()
    torn[0, :10] = 1  # half old, half new
    with pytest.raises(AssertionError, match="no serial order"):
        check_serialisable([w1, w2], [Op("read", plane_box("z", 0), 3.5, 4.0, seen=torn)], final)
    lost = np.zeros(SHAPE, np.uint16)
    lost[0] = 1  # w2 returned after w1 and yet w1 is what the store holds
    with pytest.raises(AssertionError, match="no serial order"):
        check_serialisable([w1, w2], [], lost)
    stale = final[0:1].copy()
    stale[:] = 1  # a read that started after w2 returned shows w1
    with pytest.raises(AssertionError, match="no serial order"):
        check_serialisable([w1, w2], [Op("read", plane_box("z", 0), 3.5, 4.0, seen=stale)], final)
    garbage = final[0:1].copy()
    garbage[0, 0, 0] = 7
    with pytest.raises(AssertionError, match="nobody wrote"):
        check_serialisable([w1, w2], [Op("read", plane_box("z", 0), 3.5, 4.0, seen=garbage)], final)


def test_a_local_store_read_never_sees_half_a_write(tmp_path):
    """A plane spans many zarr chunks, written one by one: a read racing the write must see all or nothing.

    (This is what protocol servers over a store rely on: ndfs serve answers each cutout with one read.)
    """
    backend = LocalBackend(tmp_path / "store", create=True)
    backend.create_volume(REF, (4, 64, 64), "uint16", levels=2, chunk_shape=(4, 16, 16))
    plane = Box((1, 0, 0), (2, 64, 64))
    stop = threading.Event()
    torn, reads = [], [0]

    def reader():
        while not stop.is_set():
            values = np.unique(backend.read(REF, plane, 0))
            reads[0] += 1
            if len(values) != 1:
                torn.append(values)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for value in range(1, 50):
            backend.write(REF, plane, 0, np.full(plane.shape, value, np.uint16))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert reads[0] > 20 and not torn, f"{len(torn)} torn reads of {reads[0]}: {torn[:3]}"
    assert (backend.read(REF, plane, 0) == 49).all()
    assert (backend.read(REF, Box((1, 0, 0), (2, 32, 32)), 1) == 49).all()  # the lower level followed


def test_a_getattr_racing_the_release_of_a_write_handle_answers_from_the_tree(tmp_path):
    """close() returns before the kernel's (asynchronous) release reaches the daemon, so the writer's next
    stat can find its handle just as release closes it: the answer must come from the tree, not be EIO.
    (Found by the soak: the writer's next open of the plane failed with EIO, and its write was lost.)"""
    from ndfs.fs.session import Caller, FileSystem, WriteHandle
    from ndfs.fs.tree import Tree

    backend = LocalBackend(tmp_path / "store", create=True)
    backend.create_volume(REF, SHAPE, "uint16", levels=1, chunk_shape=(4, 16, 16))
    tree = Tree({"local": backend})
    fs = FileSystem(tree, spool_dir=tmp_path)
    path = "/local/p/vol/0/z/3.tif"
    handle = WriteHandle(tree.resolve(path), path, True, str(tmp_path), Caller.here())
    handle.write(b"partial", 0)
    fs.handles[7] = handle
    assert fs.getattr(path, 7)["st_size"] == 7  # the writer sees what it wrote so far
    handle.close()  # the release, between the handle's lookup and its use
    assert handle.size() is None
    assert fs.getattr(path, 7)["st_size"] == tree.resolve(path).size
