"""Writes you can trust, through real mounts: what a crash, a second process or a full disk does to a save.

- A descriptor closed by another process (a child that inherited it) commits nothing; tifffile and
  numpy writes commit exactly once; a writer that dies halfway leaves the plane as it was.
- ``kill -9`` of the daemon at random instants of a ``stack.tif`` write: after remount every level is
  all old or all new (local store), and the service ends up with all of it or none of it (BOSS).
- A mount and a Python process writing the same planes: every plane ends as one of the writes with
  lower levels that agree, and readers in both processes never see a mixed plane.
- Readers of other planes go on while writes hold theirs.
- A full outbox disk: ENOSPC at once, everything pending is posted once there is room, nothing stray.
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from ndfs.stores.local import LocalBackend
from ndfs.tools.demo import make_demo
from ndfs.core.downsample import downsample
from ndfs.testing.mount import fuse_unavailable, is_mounted, mounted, ndfs, wait_until

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

SHAPE = (32, 256, 256)  # 3 levels, 8-plane chunks


def _demo(root: Path, shape=SHAPE) -> Path:
    make_demo(str(root / "store"), shape=shape, levels=3, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    return root / "ndfs.toml"


def _level(store: Path, level: int, channel: str = "em") -> np.ndarray:
    return zarr.open_array(str(store / "demo" / channel / str(level)), mode="r")[:]


def _writes(store: Path, channel: str = "em") -> int:
    """How many writes the channel has had (its stamp grows one byte per applied write)."""
    try:
        return (store / "demo" / channel / ".ndfs-writes").stat().st_size
    except FileNotFoundError:
        return 0


def _tiff(arr, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _levels_agree(store: Path, levels: int = 3, channel: str = "em") -> None:
    for i in range(1, levels):
        assert np.array_equal(_level(store, i, channel), downsample(_level(store, i - 1, channel), "image")), \
            f"level {i} disagrees with level {i - 1}"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    config = _demo(root)
    with mounted(config, root / "mnt", "--log-file", root / "mount.log"):
        yield root, root / "mnt" / "local" / "demo" / "em"


# ---- who commits, and when ----------------------------------------------------------------------
def _half_written(data: bytes) -> tuple[bytes, int]:
    """A plane TIFF as it looks half way through its pixels (the rest still zeros: a whole, valid file),
    and the offset where the missing half begins."""
    import io

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        start, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    middle = start + count // 2
    return data[:middle] + bytes(start + count - middle) + data[start + count:], middle


def test_a_child_closing_an_inherited_descriptor_commits_nothing(local):
    root, em = local
    new = np.full(SHAPE[1:], 77, np.uint8)
    data = _tiff(new)
    partial, middle = _half_written(data)  # a whole TIFF, half its rows still zeros: it would decode
    before, writes = _level(root / "store", 0)[5].copy(), _writes(root / "store")
    with open(em / "0" / "z" / "5.tif", "wb") as fh:
        fh.write(partial)
        fh.flush()
        pid = os.fork()
        if pid == 0:  # the child inherits the descriptor and exits: the kernel flushes it
            os._exit(0)
        os.waitpid(pid, 0)
        child = subprocess.run([sys.executable, "-c", "import os, sys; os.close(int(sys.argv[1]))",
                                str(fh.fileno())], pass_fds=[fh.fileno()])
        assert child.returncode == 0
        assert _writes(root / "store") == writes  # neither flush committed the half-written plane
        np.testing.assert_array_equal(_level(root / "store", 0)[5], before)
        fh.seek(middle)
        fh.write(data[middle:])  # the rest of the pixels
    assert _writes(root / "store") == writes + 1  # the writer's own close committed it, once
    np.testing.assert_array_equal(_level(root / "store", 0)[5], new)
    _levels_agree(root / "store")


HALF_WRITER = textwrap.dedent("""
    import os, sys, time
    path, data = sys.argv[1], open(sys.argv[2], "rb").read()
    fh = open(path, "wb")
    fh.write(data)  # a whole TIFF whose second half of rows is still zeros
    fh.flush()
    if os.fork() == 0:
        os._exit(0)  # a child that inherited the descriptor
    os.wait()
    print("half", flush=True)
    time.sleep(60)  # killed here: the plane must stay as it was
""")


def test_a_writer_killed_halfway_leaves_the_plane_as_it_was(local, tmp_path):
    """The kernel closes a killed writer's descriptors itself: that close commits nothing (its file, whole
    or not, is kept in the outbox as failed), and neither does the inherited descriptor's."""
    root, em = local
    partial, _ = _half_written(_tiff(np.full(SHAPE[1:], 66, np.uint8)))
    payload = tmp_path / "half.tif"
    payload.write_bytes(partial)
    before, writes = _level(root / "store", 0)[9].copy(), _writes(root / "store")
    proc = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(em / "0" / "z" / "9.tif"), str(payload)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    proc.kill()
    proc.wait()
    kept = lambda: [line for line in ndfs("--config", root / "ndfs.toml", "outbox").stdout.splitlines()  # noqa
                    if "/local/demo/em/0/z/9.tif" in line and "killed" in line]
    assert wait_until(lambda: len(kept()) == 1, timeout=20)  # the release reached the daemon: kept, not stored
    assert _writes(root / "store") == writes
    np.testing.assert_array_equal(_level(root / "store", 0)[9], before)
    np.testing.assert_array_equal(tifffile.imread(em / "0" / "z" / "9.tif"), before)


@pytest.mark.parametrize("how", ["slice", "imagej stack", "cutout tif", "cutout npy", "cutout npz", "cutout h5"])
def test_library_writes_commit_exactly_once(local, how):
    root, em = local
    rng = np.random.default_rng(len(how))
    writes = _writes(root / "store")
    if how == "slice":
        arr = rng.integers(0, 255, SHAPE[1:], dtype=np.uint8)
        tifffile.imwrite(em / "0" / "z" / "3.tif", arr)
        want = lambda: _level(root / "store", 0)[3]  # noqa: E731
    elif how == "imagej stack":
        arr = rng.integers(0, 255, SHAPE, dtype=np.uint8)
        tifffile.imwrite(em / "0" / "stack.tif", arr, imagej=True)
        want = lambda: _level(root / "store", 0)  # noqa: E731
    else:
        fmt = how.split()[1]
        arr = rng.integers(0, 255, (2, 16, 32), dtype=np.uint8)
        path = em / "0" / "cutout" / f"32-64_16-32_4-6.{fmt}"
        if fmt == "tif":
            tifffile.imwrite(path, arr)
        elif fmt == "npy":
            np.save(path, arr)  # numpy writes the array through a duplicate of the descriptor
        elif fmt == "npz":
            np.savez_compressed(path, data=arr)
        else:
            import h5py

            with h5py.File(path, "w") as f:
                f["data"] = arr
        want = lambda: _level(root / "store", 0)[4:6, 16:32, 32:64]  # noqa: E731
    assert _writes(root / "store") == writes + 1
    np.testing.assert_array_equal(want(), arr)
    _levels_agree(root / "store")
    log = (root / "mount.log").read_text()
    assert "holds a 0" not in log and "Traceback" not in log


# ---- kill -9 of the daemon at random instants ----------------------------------------------------------
def _released(mountpoint: Path) -> str:
    """Wait for auto_unmount to release a mount whose daemon was killed; '' when it did, else what holds it.

    libfuse's auto_unmount can lose a race with the kernel aborting the connection and leave a dead mount
    (ENOTCONN); the next ``ndfs mount`` clears such a mount itself, so a dead one counts as released here
    (the trial's remount then shows that it works)."""
    if wait_until(lambda: not is_mounted(mountpoint), timeout=30):
        return ""
    try:
        os.listdir(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return ""
    procs = subprocess.run(["ps", "-eww", "-o", "pid,ppid,stat,wchan:30,args"], capture_output=True,
                           text=True).stdout
    return "\n".join(line for line in procs.splitlines() if "fuse" in line or "ndfs" in line or "PID" in line)


def _kill_trials(root: Path, config: Path, write, check, trials: int, seed: int) -> list[str]:
    """Mount, start ``write`` in a thread, SIGKILL the daemon at a random instant, remount, ``check``."""
    rng = random.Random(seed)
    mountpoint = root / "mnt"
    outcomes = []
    duration = None
    for trial in range(trials):
        with mounted(config, mountpoint) as pid:
            errors = []
            started = time.monotonic()
            t = threading.Thread(target=lambda: errors.append(write(mountpoint, trial)), daemon=True)
            t.start()
            if duration is None:  # the first trial runs to the end: it measures a whole write
                t.join(60)
                duration = time.monotonic() - started
            else:
                time.sleep(rng.uniform(0.0, 1.2) * duration)
                os.kill(pid, signal.SIGKILL)
                t.join(60)
                held = _released(mountpoint)
                assert not held, f"auto_unmount did not release the mount:\n{held}"
        with mounted(config, mountpoint):  # the next daemon completes or drops what the dead one left
            outcomes.append(check(mountpoint, trial))
        # a close() that succeeded promised the write: it must be there after the crash
        assert outcomes[-1] == "new" or errors != [None], f"trial {trial}: close() succeeded, the write is lost"
    return outcomes


def test_kill_9_of_the_daemon_mid_stack_write_leaves_levels_all_old_or_all_new(tmp_path):
    config = _demo(tmp_path)
    store = tmp_path / "store"
    state = {"value": int(_level(store, 0)[0, 0, 0])}

    def write(mnt, trial):
        data = _tiff(np.full(SHAPE, 100 + trial, np.uint8), imagej=True)
        try:
            with open(mnt / "local" / "demo" / "em" / "0" / "stack.tif", "wb") as fh:
                fh.write(data)
        except OSError as exc:  # the daemon died under it
            return exc.errno

    def check(mnt, trial):
        got = tifffile.imread(mnt / "local" / "demo" / "em" / "1" / "stack.tif")  # through the new daemon
        levels = [_level(store, i) for i in range(3)]
        values = {int(v) for v in np.unique(levels[0])}
        first = trial == 0 and len(values) > 1  # the demo's own image before the first write
        if not first:
            assert values in ({state["value"]}, {100 + trial}), f"trial {trial}: level 0 holds {sorted(values)[:5]}"
        _levels_agree(store)
        np.testing.assert_array_equal(got, levels[1])
        outcome = "new" if values == {100 + trial} else "old"
        state["value"] = 100 + trial if outcome == "new" else state["value"]
        return outcome

    outcomes = _kill_trials(tmp_path, config, write, check, trials=16, seed=5)
    assert "new" in outcomes[1:] and "old" in outcomes[1:], outcomes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _boss_server(store_root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "ndfs", "serve", "--protocol", "boss", "--store", str(store_root),
                             "--port", str(port), "--latency-ms", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert "http://" in proc.stdout.readline()
    return proc


def test_kill_9_of_the_daemon_or_the_server_mid_post_never_leaves_half_a_file_on_boss(tmp_path, monkeypatch):
    """Sync write-back of a whole stack (several cuboid posts, 40 ms each): the daemon or the server is
    killed at a random instant; after remount (or the server's restart) the service holds every plane
    of one write: the old one if the file never reached the outbox, else the new one, whole."""
    make_demo(str(tmp_path / "srv" / "coll"), shape=SHAPE, levels=3, chunk_shape=(8, 64, 64), progress=False)
    store, outbox, port = tmp_path / "srv" / "coll", tmp_path / "outbox", _free_port()
    monkeypatch.setenv("NDFS_OUTBOX_DIR", str(outbox))
    config = tmp_path / "ndfs.toml"
    config.write_text(f'[remotes.b]\nkind = "boss"\nurl = "http://127.0.0.1:{port}"\nretries = 1\n'
                      f'backoff_s = 0.05\n[write]\nwrite_back = "sync"\nretry_max_s = 0.5\n')
    mountpoint, rng = tmp_path / "mnt", random.Random(9)
    server = _boss_server(tmp_path / "srv", port)
    stack = lambda: mountpoint / "b" / "coll" / "demo" / "em" / "0" / "stack.tif"  # noqa: E731

    def write(value):
        try:
            with open(stack(), "wb") as fh:
                fh.write(_tiff(np.full(SHAPE, value, np.uint8), imagej=True))
        except OSError as exc:  # the daemon or the server died under it
            return exc.errno

    def settled(previous, value):
        assert wait_until(lambda: not list(outbox.glob("*.json")), timeout=60), "the outbox never drained"
        levels = [zarr.open_array(str(store / "demo" / "em" / str(i)), mode="r")[:] for i in range(3)]
        got = {int(v) for v in np.unique(levels[0])}
        assert got in ({previous}, {value}), f"the service holds parts of several writes: {sorted(got)[:6]}"
        for i in range(1, 3):
            assert np.array_equal(levels[i], downsample(levels[i - 1], "image"))
        return got.pop()

    outcomes = []
    try:
        with mounted(config, mountpoint):
            t0 = time.monotonic()
            write(50)
            duration = time.monotonic() - t0
        previous = settled(None, 50)
        for trial in range(1, 11):
            value = 50 + trial
            kill_server = trial % 2 == 0
            with mounted(config, mountpoint) as pid:
                result = []
                t = threading.Thread(target=lambda: result.append(write(value)), daemon=True)
                t.start()
                time.sleep(rng.uniform(0.0, 1.1) * duration)
                if kill_server:
                    server.kill()
                    server.wait()
                    t.join(60)
                    server = _boss_server(tmp_path / "srv", port)  # back up: the outbox posts it again
                    previous = settled(previous, value)
                else:
                    os.kill(pid, signal.SIGKILL)
                    t.join(60)
                    held = _released(mountpoint)
                    assert not held, f"auto_unmount did not release the mount:\n{held}"
            if not kill_server:
                with mounted(config, mountpoint):  # the next daemon resumes what the dead one left
                    previous = settled(previous, value)
            outcome = "new" if previous == value else "old"
            # a close() that succeeded promised the write: it must be there, whoever died afterwards
            assert outcome == "new" or result != [None], f"trial {trial}: close() succeeded but the write is lost"
            outcomes.append(("server" if kill_server else "daemon", outcome))
    finally:
        server.kill()
        server.wait()
    assert ("server", "new") in outcomes and ("daemon", "new") in outcomes, outcomes


# ---- two processes, one volume ----------------------------------------------------------------------
API_PROCESS = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np
    import ndfs
    store, seconds = sys.argv[1], float(sys.argv[2])
    vol = ndfs.remote(store).volume("demo", "em")
    low = vol.level(1)
    deadline = time.monotonic() + seconds
    written, torn, reads = [], [], [0]

    def writer():
        rng = np.random.default_rng(1)
        while time.monotonic() < deadline:
            z, value = int(rng.integers(0, 16)), int(rng.integers(1, 128)) * 2 + 1  # odd: this process
            vol[z] = np.full(vol.shape[1:], value, np.uint8)
            written.append([z, value])

    def reader():
        rng = np.random.default_rng(2)
        while time.monotonic() < deadline:
            z = int(rng.integers(0, 16))
            for plane in (vol[z], low[z]):
                if len(np.unique(plane)) != 1:
                    torn.append(z)
            reads[0] += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"written": written, "torn": torn, "reads": reads[0]}))
""")


def test_a_mount_and_a_python_process_writing_the_same_planes_never_mix(tmp_path):
    config = _demo(tmp_path)
    store = tmp_path / "store"
    flat = np.zeros(SHAPE, np.uint8)
    LocalBackend(store).write(("demo", "em"), __import__("ndfs").Box((0, 0, 0), SHAPE), 0, flat)  # uniform start
    seconds = 6.0
    written, torn, reads, short = [], [], [0], [0]
    with mounted(config, tmp_path / "mnt"):
        em = tmp_path / "mnt" / "local" / "demo" / "em"
        api = subprocess.Popen([sys.executable, "-c", API_PROCESS, str(store), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + seconds

        def writer(seed):
            rng = np.random.default_rng(seed)
            while time.monotonic() < deadline:
                z, value = int(rng.integers(0, 16)), int(rng.integers(0, 128)) * 2  # even: the mount
                tifffile.imwrite(em / "0" / "z" / f"{z}.tif", np.full(SHAPE[1:], value, np.uint8))
                written.append((z, value))

        # a plane file's whole size, per level (every plane file of a level has the same layout)
        sizes = {level: len((em / level / "z" / "0.tif").read_bytes()) for level in ("0", "1")}

        def reader(seed):
            rng = np.random.default_rng(seed)
            while time.monotonic() < deadline:
                z = int(rng.integers(0, 16))
                for level in ("0", "1"):
                    raw = (em / level / "z" / f"{z}.tif").read_bytes()
                    if len(raw) < sizes[level]:  # opened as a writer had just truncated it: short, as on a disk
                        short[0] += 1
                        continue
                    plane = tifffile.imread(io.BytesIO(raw))  # a whole file must decode
                    if len(np.unique(plane)) != 1:
                        rows = [int(r) for r in np.nonzero((plane != plane[0, 0]).any(axis=1))[0]]
                        cols = [int(c) for c in np.nonzero((plane != plane[0, 0]).any(axis=0))[0]]
                        torn.append((level, z, sorted(np.unique(plane).tolist()), rows[:1] + rows[-1:],
                                     cols[:1] + cols[-1:]))
                reads[0] += 1

        threads = [threading.Thread(target=writer, args=(s,)) for s in (3, 4)]
        threads += [threading.Thread(target=reader, args=(s,)) for s in (5, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out, _ = api.communicate(timeout=120)
        assert api.returncode == 0
    other = __import__("json").loads(out)
    assert not torn and not other["torn"], f"mixed planes: mount {torn[:5]}, python {other['torn'][:5]}"
    assert reads[0] > 10 and other["reads"] > 10 and len(written) > 10 and len(other["written"]) > 10
    level0 = _level(store, 0)
    candidates = {z: {0} for z in range(16)}
    for z, value in written + [tuple(w) for w in other["written"]]:
        candidates[z].add(value)
    for z in range(16):
        values = set(np.unique(level0[z]).tolist())
        assert len(values) == 1 and values <= candidates[z], f"plane {z} holds {sorted(values)[:5]}"
    _levels_agree(store)


HOLDER = textwrap.dedent("""
    import sys, time
    from ndfs.stores.local import LocalBackend
    lock = LocalBackend(sys.argv[1]).volume_lock(("demo", "em"))
    with lock.writer(), lock.writing(0, 8):  # as a writer applying planes 0..7, for as long as it likes
        print("held", flush=True)
        time.sleep(120)
""")


def test_readers_of_other_planes_go_on_while_writes_hold_theirs(local, tmp_path):
    """A write applying planes 0-7 (held by another process) and a second writer waiting behind it: reads of
    planes 8 and up through the mount are answered, reads of planes 0-7 wait for the write, then come."""
    root, em = local
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root / "store")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting_writer = threading.Thread(
            target=lambda: tifffile.imwrite(em / "0" / "z" / "2.tif", np.full(SHAPE[1:], 9, np.uint8)), daemon=True)
        waiting_writer.start()  # a second writer: it waits for the first to finish
        done = {}

        def read(z):
            done[z] = tifffile.imread(em / "0" / "z" / f"{z}.tif")

        others = [threading.Thread(target=read, args=(z,), daemon=True) for z in (8, 17, 30)]
        held = threading.Thread(target=read, args=(3,), daemon=True)
        for t in [*others, held]:
            t.start()
        for t in others:
            t.join(30)
        assert {8, 17, 30} <= set(done), "a reader of other planes waited for a write"
        held.join(0.5)
        assert 3 not in done and waiting_writer.is_alive()  # the written planes are held; writers queue
    finally:
        holder.kill()
        holder.wait()
    held.join(30)
    waiting_writer.join(30)
    assert 3 in done and not waiting_writer.is_alive()
    np.testing.assert_array_equal(_level(root / "store", 0)[2], np.full(SHAPE[1:], 9, np.uint8))


# ---- a full outbox disk ------------------------------------------------------------------------------------
def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                  str(path)]).returncode == 0


def test_a_full_outbox_disk_is_enospc_and_everything_pending_posts_once_there_is_room(tmp_path, monkeypatch):
    outbox = tmp_path / "outbox"
    if not _tmpfs(outbox, "2m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        make_demo(str(tmp_path / "srv" / "coll"), shape=SHAPE, levels=1, chunk_shape=(8, 64, 64), progress=False)
        store, port = tmp_path / "srv" / "coll", _free_port()
        monkeypatch.setenv("NDFS_OUTBOX_DIR", str(outbox))
        config = tmp_path / "ndfs.toml"
        config.write_text(f'[remotes.b]\nkind = "boss"\nurl = "http://127.0.0.1:{port}"\nretries = 1\n'
                          f'backoff_s = 0.05\n[write]\nwrite_back = "async"\nretry_max_s = 0.5\n')
        server = _boss_server(tmp_path / "srv", port)
        z = lambda n: tmp_path / "mnt" / "b" / "coll" / "demo" / "em" / "0" / "z" / f"{n}.tif"  # noqa: E731
        a, b = np.full(SHAPE[1:], 11, np.uint8), np.full(SHAPE[1:], 12, np.uint8)
        with mounted(config, tmp_path / "mnt"):
            tifffile.imread(z(1))  # the mount knows the volume before the service goes away
            server.kill()
            server.wait()
            tifffile.imwrite(z(1), a)  # async: durable in the outbox, the service is down
            assert len(list(outbox.glob("*.json"))) == 1
            with open(outbox / "filler", "wb", buffering=0) as fh:  # now the disk is full to the last byte
                with pytest.raises(OSError) as full:
                    while True:
                        fh.write(b"\0" * 65536)
            assert full.value.errno == errno.ENOSPC
            with pytest.raises(OSError) as refused:
                with open(z(2), "wb") as fh:
                    fh.write(_tiff(b))
            assert refused.value.errno == errno.ENOSPC  # not EIO
            stray = lambda: [p.name for p in outbox.rglob("*") if p.is_file()  # noqa: E731
                             and p.suffix not in (".json", ".npy") and p.name != "filler" and p.parent.name != "locks"]
            assert wait_until(lambda: not stray(), timeout=10), f"files left behind: {stray()}"
            assert len(list(outbox.glob("*.json"))) == 1  # the pending entry is still there, whole
            (outbox / "filler").unlink()
            server = _boss_server(tmp_path / "srv", port)  # room again, and the service is back
            assert wait_until(lambda: not list(outbox.glob("*.json")), timeout=60), "the pending write never went"
            tifffile.imwrite(z(2), b)  # the refused one can be written again
            assert wait_until(lambda: not list(outbox.glob("*.json")), timeout=60)
        level0 = zarr.open_array(str(store / "demo" / "em" / "0"), mode="r")
        np.testing.assert_array_equal(level0[1], a)
        np.testing.assert_array_equal(level0[2], b)
        assert not list((outbox / "spool").glob("*"))
    finally:
        with __import__("contextlib").suppress(NameError):
            server.kill()
        subprocess.run(["umount", "-l", str(outbox)])
