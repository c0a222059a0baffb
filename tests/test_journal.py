"""The write journal and the volume locks, tried the way a crash and a second process would.

- Volume locks: readers of other planes never wait for a write; readers of the planes being
  written wait; a waiting writer is not starved by a stream of readers; the local store's lock
  holds across processes.
- The local store's journal: a writer killed with SIGKILL at any instant of a multi-slab write
  leaves every level all old or all new once anyone opens or reads the channel again, including a
  reader that was already running; a full disk refuses the write with ENOSPC and leaves nothing.
"""

from __future__ import annotations

import errno
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

from ndfs.stores.local import APPLYING_FILE, JOURNAL_DIR, LocalBackend
from ndfs.core.downsample import downsample
from ndfs.core.errors import NoSpace
from ndfs.core.geometry import Box
from ndfs.journal import Journal
from ndfs.core.locks import FileVolumeLock, RangeLock

REF = ("p", "v")
SHAPE = (32, 256, 256)  # 2 MiB of uint8: 4 chunk slabs of 8 planes, three levels


# ---- locks ----------------------------------------------------------------------------------
def _held(lock_cm, started: threading.Event, release: threading.Event):
    def run():
        with lock_cm:
            started.set()
            release.wait(30)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    return t


def _try(cm) -> threading.Thread:
    done = threading.Event()

    def run():
        with cm:
            done.set()
    t = threading.Thread(target=run, daemon=True)
    t.done = done
    t.start()
    return t


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_write_keeps_off_readers_of_its_planes_only(tmp_path, kind):
    ranges = RangeLock()
    if kind == "memory":
        writing = lambda a, b: ranges.hold(a, b, True)  # noqa: E731
        reading = lambda a, b: ranges.hold(a, b, False)  # noqa: E731
    else:
        lock = FileVolumeLock(tmp_path / "lock")
        writing, reading = lock.writing, lock.reading
    release = threading.Event()
    writer = _held(writing(0, 8), threading.Event(), release)
    other = _try(reading(8, 16))
    assert other.done.wait(10), "a reader of other planes waited for the write"
    same = _try(reading(7, 9))
    assert not same.done.wait(0.3), "a reader of the planes being written was let in"
    release.set()
    writer.join(10)
    assert same.done.wait(10)


def test_a_waiting_writer_is_not_starved_by_readers_of_its_planes():
    lock = RangeLock()
    release = threading.Event()
    first = _held(lock.hold(0, 4, False), threading.Event(), release)
    writer = _try(lock.hold(0, 4, True))
    assert not writer.done.wait(0.2)
    late_reader = _try(lock.hold(2, 3, False))  # arrives after the writer: waits behind it
    elsewhere = _try(lock.hold(10, 11, False))  # other planes: never held back
    assert elsewhere.done.wait(10)
    assert not late_reader.done.wait(0.2)
    release.set()
    first.join(10)
    assert writer.done.wait(10) and late_reader.done.wait(10)


HOLD = textwrap.dedent("""
    import sys, time
    from ndfs.core.locks import FileVolumeLock
    lock = FileVolumeLock(sys.argv[1])
    with lock.writer(), lock.writing(int(sys.argv[2]), int(sys.argv[3])):
        print("held", flush=True)
        time.sleep(float(sys.argv[4]))
""")


def test_the_file_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    path = tmp_path / "lock"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "0", "8", "60"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        lock = FileVolumeLock(path)
        assert _try(lock.reading(20, 21)).done.wait(10)
        blocked = _try(lock.reading(3, 4))
        second_writer = _try(lock.writer())
        assert not blocked.done.wait(0.3) and not second_writer.done.is_set()
        os.kill(child.pid, signal.SIGKILL)  # its locks go with it
        assert blocked.done.wait(10) and second_writer.done.wait(10)
    finally:
        child.kill()
        child.wait()


# ---- the local store's journal under SIGKILL ------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from ndfs.stores import local
    from ndfs.stores.local import LocalBackend
    from ndfs.core.geometry import Box
    from ndfs.stores.journal import Journal
    store, value, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    local.APPLY_BYTES = 8 * 256 * 256  # eight planes a slab: a whole-volume write is four slabs
    backend = LocalBackend(store)
    if hold:  # fault injection: a slow disk before the entry's commit point, wide enough for a kill to hit
        commit = Journal._write_json
        def slow_commit(self, entry):
            time.sleep(hold)
            commit(self, entry)
        Journal._write_json = slow_commit
    if pause:  # fault injection: stop between the slabs of the apply, so a kill lands mid-write
        original = LocalBackend._store
        def slow(self, ref, level, box, array):
            original(self, ref, level, box, array)
            if level == 0:
                print("slab", flush=True)
                time.sleep(pause)
        LocalBackend._store = slow
    shape = backend.info(("p", "v")).level(0).shape
    print("start", flush=True)
    backend.write(("p", "v"), Box((0, 0, 0), shape), 0, np.full(shape, value, np.uint8))
    print("done", flush=True)
""")


def _store(tmp_path, value=1) -> Path:
    path = tmp_path / "store"
    backend = LocalBackend(path, create=True)
    backend.create_volume(REF, SHAPE, "uint8", levels=3, chunk_shape=(8, 64, 64))
    backend.write(REF, Box((0, 0, 0), SHAPE), 0, np.full(SHAPE, value, np.uint8))
    return path


def _levels(path: Path) -> list[np.ndarray]:
    import zarr

    return [zarr.open_array(str(path / "p" / "v" / str(i)), mode="r")[:] for i in range(3)]


def _whole_and_consistent(levels: list[np.ndarray], values: set[int]) -> int:
    """The one value level 0 holds, checked to be uniform and echoed by every lower level."""
    (value,) = {int(v) for v in np.unique(levels[0])}
    assert value in values
    for i in range(1, len(levels)):
        assert np.array_equal(levels[i], downsample(levels[i - 1], "image")), f"level {i} disagrees with {i - 1}"
    return value


def test_a_writer_killed_mid_apply_is_completed_by_the_next_reader(tmp_path):
    path = _store(tmp_path, value=1)
    early = LocalBackend(path)  # a reader already running: it has looked at the channel's journal
    assert (early.read(REF, Box((0, 0, 0), (1, 8, 8)), 0) == 1).all()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "2", "60"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "start"
        assert child.stdout.readline().strip() == "slab"  # one slab of four is written
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
    torn = _levels(path)[0]
    assert set(np.unique(torn)) == {1, 2}, "the fault did not land mid-write"
    assert (path / "p" / "v" / APPLYING_FILE).exists() and len(Journal(path / "p" / "v" / JOURNAL_DIR).entries()) == 1
    # the running reader reads the torn planes: it completes the write first and sees all of it
    got = early.read(REF, Box((0, 0, 0), SHAPE), 0)
    assert (got == 2).all()
    assert _whole_and_consistent(_levels(path), {2}) == 2
    assert not Journal(path / "p" / "v" / JOURNAL_DIR).entries()
    assert not (path / "p" / "v" / APPLYING_FILE).exists()


def test_sigkill_at_random_instants_leaves_every_level_all_old_or_all_new(tmp_path):
    """Tens of writers killed at random moments of a whole-volume write (spool, journal, apply); after
    each, a fresh process opens the store: every level holds one write, whole."""
    path = _store(tmp_path, value=1)
    rng = random.Random(17)

    def start(value: int) -> subprocess.Popen:
        # the journal's commit point is held 0.2 s, so that a kill lands before it however busy the machine
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(value), "0", "0.2"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "start"
        return child

    child = start(2)
    t0 = time.monotonic()
    assert child.stdout.readline().strip() == "done"
    duration = time.monotonic() - t0  # one whole write: journal entry, then four slabs on three levels
    child.wait()
    seen, previous = [], 2
    for trial in range(24):
        value = 3 + trial
        child = start(value)
        # half the kills aim at the first tenth (the journal entry is written there), half anywhere
        time.sleep(rng.uniform(0.0, 0.1 if trial % 2 else 1.2) * duration)
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader = LocalBackend(path)  # "after remount": a new process's first look
        reader.read(REF, Box((0, 0, 0), (1, 1, 1)), 0)
        got = _whole_and_consistent(_levels(path), {previous, value})
        seen.append("new" if got == value else "old")
        previous = got
    assert "new" in seen and "old" in seen, f"the kills never landed both before and after a commit: {seen}"


def test_a_full_disk_refuses_the_write_with_enospc_and_leaves_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        backend = LocalBackend(small / "store", create=True)
        backend.create_volume(REF, (16, 256, 256), "uint8", levels=2, chunk_shape=(8, 64, 64))
        before = _snapshot(small / "store")
        with pytest.raises(NoSpace) as info:
            backend.write(REF, Box((0, 0, 0), (16, 256, 256)), 0, np.full((16, 256, 256), 7, np.uint8))
        assert info.value.errno == errno.ENOSPC
        assert _snapshot(small / "store") == before  # not a byte changed, no temporary file left
        journal = Journal(small / "store" / "p" / "v" / JOURNAL_DIR)
        with pytest.raises(NoSpace):  # past the store's own check, the journal itself refuses
            journal.put("local", "t", REF, 0, Box((0, 0, 0), (64, 256, 256)), np.ones((64, 256, 256), np.uint8))
        assert not journal.entries() and not any(journal.root.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(small)])


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".ndfs-lock"}


def test_journal_entries_are_kept_whole_and_in_order(tmp_path):
    journal = Journal(tmp_path / "j")
    box = Box((0, 0, 0), (2, 3, 4))
    ids = [journal.put("r", "t", REF, 0, box, np.full(box.shape, i, np.uint16)).id for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    entries = journal.entries()
    assert [e.id for e in entries] == ids
    assert [int(journal.load(e)[0, 0, 0]) for e in entries] == list(range(5))
    with journal.claim(entries[0]) as mine:
        assert mine
        with journal.claim(entries[0]) as again:  # another holder (flock is per open file)
            assert not again
    assert journal.remove(entries[0]) and not journal.remove(entries[0].id)
    # a writer that died before its JSON left a temporary file nobody holds: cleaned
    (journal.root / ".x.npy.123.tmp").write_bytes(b"junk")
    assert journal.clean() == 1 and not (journal.root / ".x.npy.123.tmp").exists()
