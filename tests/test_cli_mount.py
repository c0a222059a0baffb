"""`ndfs mount` as a user meets it: stopping it with a signal, refusing a non-empty folder, the folder it
is started from, and the command it says to stop it with."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ndfs as ndfs_package
from ndfs.tools.demo import make_demo
from ndfs.testing.mount import fuse_unavailable, is_mounted, mounted, ndfs, wait_until

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))

PACKAGE_ROOT = str(Path(ndfs_package.__file__).resolve().parent.parent)
# the ndfs entry point as its console script runs it: this package, and nothing from the working directory
ENTRY_POINT = [sys.executable, "-c",
               f"import sys; sys.path[0] = {PACKAGE_ROOT!r}; from ndfs.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("mount-cli")
    make_demo(str(root / "store"), shape=(8, 64, 64), levels=1, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    return root


def _release(mountpoint) -> None:
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _sigint_as_in_a_terminal():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test run in the background starts with SIGINT ignored


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_a_foreground_mount_with_one_line_and_status_0(site, tmp_path, sig):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ndfs", "--config", str(site / "ndfs.toml"), "mount",
                             "--foreground", str(mountpoint)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_sigint_as_in_a_terminal)
    try:
        assert wait_until(lambda: is_mounted(mountpoint) or proc.poll() is not None, timeout=60)
        assert "local" in os.listdir(mountpoint)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _release(mountpoint)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Error" not in out, out
    assert f"unmounted {mountpoint} ({sig.name})" in out.splitlines()
    assert not is_mounted(mountpoint) and os.listdir(mountpoint) == []


def test_sigterm_to_the_daemon_unmounts_and_logs_no_traceback(site, tmp_path):
    mountpoint, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(site / "ndfs.toml", mountpoint, "--log-file", log) as pid:
        assert "local" in os.listdir(mountpoint)
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not is_mounted(mountpoint) and not os.path.exists(f"/proc/{pid}"), timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and f"unmounted {mountpoint} (SIGTERM)" in text.splitlines()
    assert "max threads" not in text  # libfuse's complaint about its default thread settings


def test_a_non_empty_mount_point_is_refused_unless_nonempty(site, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "notes.txt").write_text("mine")
    done = ndfs("--config", site / "ndfs.toml", "mount", mountpoint, check=False)
    _release(mountpoint)  # in case it was mounted after all
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ndfs: error: ") and "not empty" in done.stderr and "--nonempty" in done.stderr
    assert not is_mounted(mountpoint)
    with mounted(site / "ndfs.toml", mountpoint, "--nonempty"):
        assert "local" in os.listdir(mountpoint) and "notes.txt" not in os.listdir(mountpoint)
        ndfs("umount", mountpoint)
    assert (mountpoint / "notes.txt").read_text() == "mine"


def test_mount_works_from_a_folder_holding_another_ndfs_package(site, tmp_path):
    """The parent folder of a clone has an ndfs/ folder in it: the daemon must not import that one, and must
    still use the ./ndfs.toml of the folder the mount was started from."""
    here = tmp_path / "projects"
    (here / "ndfs").mkdir(parents=True)
    (here / "ndfs" / "__init__.py").write_text("raise ImportError('the ndfs/ folder of the cwd was imported')\n")
    (here / "ndfs.toml").write_text(f'[remotes.here]\nkind = "local"\npath = "{site / "store"}"\n')
    (here / "mnt").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NDFS_CONFIG"}
    done = subprocess.run([*ENTRY_POINT, "mount", "mnt"], cwd=here, env=env, capture_output=True, text=True,
                          timeout=120)
    try:
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(here / "mnt")) == [".ndfs", "here"]
        assert (here / "mnt" / "here" / "demo" / "em" / "info.json").read_bytes().startswith(b"{")
    finally:
        _release(here / "mnt")


def test_the_stop_hint_runs_as_printed_without_an_activated_environment(site, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no virtualenv on PATH: `ndfs` alone would not be found
    done = subprocess.run([*ENTRY_POINT, "--config", str(site / "ndfs.toml"), "mount", str(mountpoint)],
                          env=env, capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode == 0, done.stderr
        hint = done.stdout.split("stop with: ", 1)[1].strip()
        stopped = subprocess.run(hint, shell=True, env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, (hint, stopped.stderr)
        assert not is_mounted(mountpoint)
    finally:
        _release(mountpoint)


def test_a_bad_configuration_is_one_error_line_before_any_daemon_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[remotes.x]\nkind = "ftp"\n')
    (tmp_path / "mnt").mkdir()
    done = ndfs("--config", bad, "mount", tmp_path / "mnt", check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.count("ndfs: error:") == 1 and "known kinds" in done.stderr


def test_a_dead_mount_left_behind_is_cleared_by_the_next_mount(site):
    """A daemon killed while libfuse's auto_unmount helper is gone too leaves a dead mount (ENOTCONN): the next
    `ndfs mount` there clears it and mounts, instead of calling the folder 'not a directory'."""
    import errno

    mountpoint = site / "dead"
    with mounted(site / "ndfs.toml", mountpoint) as pid:
        helpers = subprocess.run(["pgrep", "-f", f"fusermount3 .*-- {mountpoint}$"], capture_output=True,
                                 text=True).stdout.split()
        assert helpers, "no auto_unmount helper found for the mount"
        for helper in helpers:
            os.kill(int(helper), signal.SIGKILL)  # nobody will release the mount now
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not _alive(pid), timeout=10)
        with pytest.raises(OSError) as dead:
            os.listdir(mountpoint)
        assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED) and is_mounted(mountpoint)
        done = ndfs("--config", site / "ndfs.toml", "mount", mountpoint)
        assert "cleared a dead ndfs mount" in done.stderr
        assert os.listdir(mountpoint / "local") == ["demo"]
        ndfs("umount", mountpoint)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"
