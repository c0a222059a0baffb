"""Mount helpers for tests: a real ``ndfs mount`` daemon in a temporary directory.

:func:`mounted` runs the CLI exactly as a user would (daemon mode), waits for
the mount, yields the daemon's pid, and always unmounts afterwards.
:func:`fuse_unavailable` gives the reason a machine cannot mount, or None.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install -y fuse3)"
    return None


def is_mounted(path) -> bool:
    """Whether ``path`` is a mount point now (from /proc/mounts; never asks the mount itself, which may hang)."""
    path = os.path.abspath(path)
    target = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


def ndfs(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the ndfs CLI in a subprocess, as a user would."""
    done = subprocess.run([sys.executable, "-m", "ndfs", *map(str, args)], capture_output=True,
                          text=True, timeout=kwargs.pop("timeout", 120), **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"ndfs {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}")
    return done


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextlib.contextmanager
def mounted(config, mountpoint, *extra):
    """Mount with ``ndfs --config CONFIG mount MOUNTPOINT``; yield the daemon pid; unmount on exit."""
    os.makedirs(mountpoint, exist_ok=True)
    done = ndfs("--config", config, "mount", mountpoint, *extra)
    m = re.search(r"pid (\d+)", done.stdout)
    pid = int(m.group(1)) if m else None
    try:
        yield pid
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                if not wait_until(lambda: not _alive(pid), timeout=10):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    return False
