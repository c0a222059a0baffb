"""The ``ndfs`` command line: demo data, mount/umount, and reading the tree without a mount.

Every command has ``--help``. Errors print one line ``ndfs: error: ...`` and
exit non-zero; nothing is half-done.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from ndfs.core.version import __version__
from ndfs.core.errors import NdfsError
from ndfs.core.units import human_size, parse_size, positive_seconds

# glibc settings for the daemon: chunk-sized buffers (>= 2 MiB) go to mmap and are returned at once,
# and few arenas keep freed memory from piling up across the FUSE and fetch threads. Measured by
# scripts/bench.py target 5: streaming 4x the memory budget peaked at 324 MiB with the spec's
# 16 MiB mmap threshold and at 175-211 MiB with these, for a 64 MiB budget.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_MMAP_THRESHOLD_": "2097152",
              "MALLOC_ARENA_MAX": "2"}


def _config(args):
    from dataclasses import replace

    from ndfs.core.config import load_config

    cfg = load_config(args.config)
    cache = cfg.cache
    if getattr(args, "no_cache", False):
        cache = replace(cache, enabled=False)
    if getattr(args, "no_prefetch", False):
        cache = replace(cache, prefetch=False)
    if getattr(args, "cache_dir", None):
        cache = replace(cache, dir=Path(args.cache_dir).expanduser().resolve())
    if getattr(args, "cache_memory", None) is not None:
        cache = replace(cache, memory_bytes=args.cache_memory)
    if getattr(args, "cache_disk", None) is not None:
        cache = replace(cache, disk_bytes=args.cache_disk)
    remotes = cfg.remotes
    if getattr(args, "cache_max_age", None) is not None:  # the flag wins over every remote's own max_age_s
        cache = replace(cache, max_age_s=args.cache_max_age)
        remotes = {name: replace(rc, options={k: v for k, v in rc.options.items() if k != "max_age_s"})
                   for name, rc in remotes.items()}
    return replace(cfg, cache=cache, remotes=remotes)


def _session(args, mount: bool = False):
    """The file session over every configured remote: what a mount serves and ``ndfs ls/cat`` read.

    A mount's spool lives beside the outbox, and files whose commit fails at release are kept there;
    elsewhere the spool is a temporary directory.
    """
    from ndfs.stack import open_remotes
    from ndfs.fs.session import FileSystem
    from ndfs.fs.tree import Tree
    from ndfs.journal import Journal
    from ndfs.tools.mesh import configure_mesh_cache  # ramon/<id>.obj|ply meshes on disk in <cache dir>/meshes

    cfg = _config(args)
    configure_mesh_cache(cfg.cache)
    tree = Tree(open_remotes(cfg), max_cutout_bytes=cfg.mount.max_cutout_bytes,
                max_ramon_bytes=cfg.mount.max_ramon_bytes)
    if not mount:
        return FileSystem(tree)
    return FileSystem(tree, spool_dir=cfg.write.outbox_dir / "spool", journal=Journal(cfg.write.outbox_dir),
                      entry_timeout_s=cfg.mount.entry_timeout_s)


def _max_age(text: str) -> float:
    """``--cache-max-age``: a positive number of seconds, or ``inf`` (kept until a write through ndfs)."""
    return positive_seconds(text, allow_inf=True)


# ---- commands ---------------------------------------------------------------
def cmd_demo(args) -> int:
    from ndfs.tools.demo import IMAGE, LABELS, PROJECT, make_demo

    if args.dir:
        store = Path(args.dir)
    else:
        remote = _config(args).remote(args.remote)
        if remote.kind != "local":
            raise NdfsError(f"remote {remote.name!r} is not a local store; give a directory")
        store = remote.path
    if (store / PROJECT / IMAGE / "zarr.json").exists() and not args.force:
        print(f"demo data already in {store} (use --force to rebuild it)")
        return 0
    shape = (32, 256, 256) if args.small else tuple(args.shape)
    started = time.monotonic()
    make_demo(str(store), shape=shape, seed=args.seed, overwrite=args.force, progress=not args.quiet)
    print(f"wrote {PROJECT}/{IMAGE} (uint8) and {PROJECT}/{LABELS} (uint64) "
          f"{shape[2]}x{shape[1]}x{shape[0]} to {store} in {time.monotonic() - started:.1f} s")
    return 0


def _mount_entry(mountpoint: str) -> list[str] | None:
    """The /proc/mounts fields of the mount at ``mountpoint`` (the last one), or None."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            if fields[1].replace("\\040", " ") == target:
                found = fields
    return found


def _is_mounted(mountpoint: str) -> bool:
    return _mount_entry(os.path.realpath(mountpoint) if os.path.exists(mountpoint) else mountpoint) is not None


def _clear_dead_mount(mountpoint: str) -> bool:
    """Unmount an ndfs mount whose daemon is gone (the kernel answers ENOTCONN), as ``fusermount3 -u -z``
    would; True if there was one. libfuse's auto_unmount usually does this when a daemon dies, but can
    lose the race with the kernel aborting the connection; a user should not have to."""
    entry = _mount_entry(mountpoint)
    if entry is None or entry[0] != "ndfs" or not entry[2].startswith("fuse"):
        return False
    try:
        os.listdir(mountpoint)  # a request the daemon must answer (a stat may come from the kernel's cache)
        return False  # alive
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):  # the kernel's two words for a dead daemon
            return False
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    done = subprocess.run([tool, "-u", "-z", mountpoint] if tool else ["umount", "-l", mountpoint],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NdfsError(f"{mountpoint} is a dead ndfs mount and unmounting it failed: {done.stderr.strip()}")
    return True


def self_command() -> str:
    """This ndfs as a shell can run it: ``ndfs`` when that is on PATH and is this one, else a full path."""
    script = Path(sys.executable).parent / "ndfs"
    on_path = shutil.which("ndfs")
    if script.is_file():
        if on_path and os.path.samefile(on_path, script):
            return "ndfs"
        return shlex.quote(str(script))  # e.g. in a virtualenv that is not activated
    return f"{shlex.quote(sys.executable)} -m ndfs"


def cmd_mount(args) -> int:
    from ndfs.fs.fuse import check_fuse_available

    mountpoint = os.path.abspath(args.mountpoint)
    if _clear_dead_mount(mountpoint):
        print(f"cleared a dead ndfs mount at {mountpoint} (its daemon had died)", file=sys.stderr)
    if not os.path.isdir(mountpoint):
        raise NdfsError(f"mount point {mountpoint} is not a directory (create it with mkdir -p)")
    if _is_mounted(mountpoint):
        raise NdfsError(f"{mountpoint} is already mounted (stop it with: {self_command()} umount "
                        f"{shlex.quote(mountpoint)})")
    if not args.nonempty:
        try:
            hidden = len(os.listdir(mountpoint))
        except OSError as exc:
            raise NdfsError(f"cannot list mount point {mountpoint}: {exc.strerror}") from None
        if hidden:
            what = "1 entry" if hidden == 1 else f"{hidden} entries"
            raise NdfsError(f"mount point {mountpoint} is not empty: its {what} would be hidden while it is "
                            "mounted (use an empty folder, or --nonempty to mount over them)")
    check_fuse_available()
    from ndfs.core.config import check_local_store

    cfg = _config(args)  # a bad configuration is reported here, not only in the daemon's log
    for remote in cfg.remotes.values():  # and so is a missing store: one line here, not a failed daemon
        check_local_store(remote)
    if args.foreground:
        return _mount_foreground(args, cfg, mountpoint)
    # daemon: a fresh foreground process in its own session (no fork after threads exist)
    log_file = os.path.abspath(args.log_file) if args.log_file else _default_log(mountpoint)
    cmd = [sys.executable, "-c", _daemon_main()]
    if cfg.source is not None:  # the file this process found (./ndfs.toml, $NDFS_CONFIG...) is the daemon's
        cmd += ["--config", str(cfg.source)]
    cmd += ["mount", "--foreground", "--log-file", log_file, mountpoint]
    for flag in ("debug", "no_cache", "no_prefetch", "allow_other", "nonempty"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    if args.cache_dir is not None:
        cmd += ["--cache-dir", os.path.abspath(os.path.expanduser(args.cache_dir))]
    for flag in ("cache_memory", "cache_disk", "cache_max_age"):
        if getattr(args, flag) is not None:
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    env = {**os.environ, **MALLOC_ENV}
    with open(log_file, "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _is_mounted(mountpoint):
            _raise_readahead(mountpoint)
            print(f"mounted at {mountpoint} (pid {proc.pid}, log {log_file}); "
                  f"stop with: {self_command()} umount {shlex.quote(mountpoint)}")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-1:] if os.path.exists(log_file) else []
    why = tail[0].removeprefix("ndfs: error: ") if tail else "no log output"
    raise NdfsError(f"mount did not come up: {why} (log {log_file})")


def _daemon_main() -> str:
    """``python -c`` code that runs this CLI from the package this process runs.

    ``python -m ndfs`` would put the working directory first on sys.path, so any folder named ``ndfs``
    there (the parent of a clone, say) would be imported instead; the daemon drops it and puts this
    package's folder first.
    """
    # this file is ndfs/cli/commands.py: the folder that holds the ndfs package is three levels up
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return (f"import sys; sys.path[:] = [{root!r}] + [p for p in sys.path if p]; "
            "from ndfs.cli import main; sys.exit(main())")


def _mount_foreground(args, cfg, mountpoint: str) -> int:
    from ndfs.fs.fuse import mount

    stop = _StopOnSignal(mountpoint)  # first: every thread started later inherits the blocked signals
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        filename=args.log_file)
    fs = _session(args, mount=True)
    logging.getLogger("ndfs").info("serving %s at %s", ", ".join(fs.tree.remotes), mountpoint)
    try:
        mount(fs, mountpoint, attr_timeout_s=cfg.mount.attr_timeout_s,
              entry_timeout_s=cfg.mount.entry_timeout_s, negative_timeout_s=cfg.mount.negative_timeout_s,
              debug=args.debug, allow_other=args.allow_other)
    except RuntimeError as exc:  # mfusepy: libfuse's session ended with an error code
        raise NdfsError(f"the FUSE session at {mountpoint} ended with libfuse error {exc}") from None
    finally:
        stop.finished.set()
    if stop.received:
        print(f"unmounted {mountpoint} ({stop.received})", flush=True)
    return 0


class _StopOnSignal:
    """Unmount on SIGINT, SIGTERM or SIGHUP, so that the FUSE session ends as after ``ndfs umount``.

    libfuse's own handlers would end the session with the signal number as its error, which mfusepy
    raises as an exception. Instead the signals are blocked in the calling thread before any other
    thread starts (threads inherit the mask, libfuse's too), and one thread takes them with sigwait
    and unmounts lazily, as libfuse does on its way out.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.received: str | None = None
        self.finished = threading.Event()  # set when the session is over (or never started)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        threading.Thread(target=self._run, name="ndfs-signals", daemon=True).start()

    def _run(self) -> None:
        log = logging.getLogger("ndfs")
        while True:
            name = signal.Signals(signal.sigwait(self.SIGNALS)).name
            self.received = self.received or name
            log.info("%s: unmounting %s", name, self.mountpoint)
            while not self.finished.is_set():  # a signal during start-up waits for the mount to exist
                if _is_mounted(self.mountpoint):
                    done = _fusermount(self.mountpoint, lazy=True)
                    if done.returncode != 0:
                        log.error("unmounting %s failed: %s", self.mountpoint, done.stderr.strip())
                    break
                self.finished.wait(0.05)


def _fusermount(mountpoint: str, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    if lazy:
        cmd.insert(1, "-z")
    return subprocess.run(cmd, capture_output=True, text=True)


def _default_log(mountpoint: str) -> str:
    from ndfs.core.config import user_cache_dir

    d = user_cache_dir() / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return str(d / (mountpoint.strip("/").replace("/", "_") or "root") ) + ".log"


def _raise_readahead(mountpoint: str) -> None:
    """Best effort: 1 MiB kernel readahead on the mount (root only), so reads arrive in 1 MiB requests."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as fh:
            fh.write("1024")
    except OSError as exc:
        logging.getLogger("ndfs").debug("could not raise readahead (%s)", exc)


def cmd_umount(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not _is_mounted(mountpoint):
        raise NdfsError(f"{mountpoint} is not mounted")
    if args.wait > 0:
        _wait_for_outbox(mountpoint, args.wait)
    done = _fusermount(mountpoint, lazy=args.lazy)
    if done.returncode != 0:
        raise NdfsError(f"unmount failed: {done.stderr.strip() or done.returncode} (is a file still open?)")
    deadline = time.monotonic() + 10
    while _is_mounted(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"unmounted {mountpoint}")
    return 0


def _wait_for_outbox(mountpoint: str, timeout: float) -> None:
    """Let a mount post its pending writes before it goes (they are kept on disk either way)."""
    from ndfs.fs.tree import STATUS_DIR

    deadline, said = time.monotonic() + timeout, False
    while True:
        try:
            stats = json.loads((Path(mountpoint) / STATUS_DIR / "stats.json").read_text())
        except (OSError, ValueError):
            return  # an older daemon or no status: nothing to wait for
        pending = sum(r.get("outbox_pending", 0) for r in stats.values())
        if not pending:
            return
        if time.monotonic() > deadline:
            print(f"ndfs: {pending} write(s) still pending; they stay in the outbox and are posted by the next "
                  "mount or `ndfs outbox retry`", file=sys.stderr)
            return
        if not said:
            print(f"waiting up to {timeout:.0f} s for {pending} pending write(s) to reach their remote...")
            said = True
        time.sleep(0.2)


def cmd_outbox(args) -> int:
    from ndfs.journal import Journal

    cfg = _config(args)
    outbox = Journal(cfg.write.outbox_dir)
    entries = outbox.entries()
    if args.action == "list":
        if args.json:
            print(json.dumps([_entry_fields(e) for e in entries], indent=1, default=str))
        elif not entries:
            print(f"the outbox is empty ({cfg.write.outbox_dir})")
        else:
            print(_entries_table(entries))
        return 0
    if args.action == "drop":
        if not args.ids and not args.all and not args.failed:
            raise NdfsError("name the entries to drop (ids from `ndfs outbox list`), or --failed, or --all")
        ids = {e.id for e in entries if args.all or (args.failed and e.state == "failed")} | set(args.ids)
        for entry_id in sorted(ids):
            if not outbox.remove(entry_id):
                raise NdfsError(f"no outbox entry {entry_id}")
            print(f"dropped {entry_id}")
        return 0
    # retry: post what is pending now, in this process (a running mount also retries on its own);
    # failed entries too when named or with --all (a kept file is written through the tree again)
    chosen = [e for e in entries if e.state == "failed" and (args.all or e.id in args.ids)]
    for entry in chosen:
        if entry.kind == "voxels":
            entry.state, entry.next_try = "pending", 0.0
            outbox.save(entry)
    files = [e for e in chosen if e.kind == "file"]
    pending = [e for e in outbox.entries() if e.state == "pending"]
    if not pending and not files:
        print("nothing to retry")
        return 0
    fs = _session(args, mount=True)
    fs.journal = None  # a file that fails again stays in its entry, not in a new one
    try:
        stored = sum(_retry_file(fs, outbox, entry) for entry in files)
        from ndfs.journal.outbox import JournaledStore

        for backend in fs.tree.remotes.values():
            if isinstance(backend, JournaledStore):
                backend.drain(timeout=args.timeout)
    finally:
        fs.close()
    if files:
        print(f"stored {stored} of {len(files)} kept file(s)")
    left = [e for e in outbox.entries() if e.state == "pending"]
    if pending:
        print(f"posted {len(pending) - len(left)} of {len(pending)} pending write(s)")
    if left:
        print(_entries_table(left))
    if left or stored < len(files):
        raise NdfsError(f"{len(left)} write(s) still pending and {len(files) - stored} kept file(s) not stored; "
                        "see `ndfs outbox` (the remote may be down)")
    return 0


def _retry_file(fs, outbox, entry) -> bool:
    """Write a kept file through the tree again (as the mount would have); True if it is stored now."""
    try:
        opened = fs.open(entry.path, os.O_WRONLY | os.O_TRUNC)
        try:
            with open(outbox.payload_path(entry), "rb") as src:
                offset = 0
                while chunk := src.read(1 << 22):
                    offset += fs.write(opened.fh, chunk, offset)
            fs.fsync(opened.fh)
        finally:
            fs.release(opened.fh)
    except (NdfsError, OSError) as exc:
        entry.attempts += 1
        entry.last_error = str(exc)
        outbox.save(entry)
        print(f"{entry.path}: {exc}", file=sys.stderr)
        return False
    outbox.remove(entry)
    return True


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _entry_fields(entry) -> dict:
    """An outbox entry's fields (whatever its class has), with its size when it knows it."""
    import dataclasses

    fields = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else dict(vars(entry))
    if isinstance(getattr(entry, "nbytes", None), int):
        fields["nbytes"] = entry.nbytes
    return fields


def _entries_table(entries) -> str:
    """Outbox entries, one row each. Reads fields by name, so that any entry class with (some of) these
    fields shows: a column none of the entries has is left out."""
    now = time.time()

    def when(t):
        if not isinstance(t, (int, float)) or t <= 0:
            return None
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    def box(e):
        start, stop = getattr(e, "start", None), getattr(e, "stop", None)
        if start is None or stop is None or getattr(e, "kind", "voxels") == "file":
            return None
        (z0, y0, x0), (z1, y1, x1) = start, stop
        return f"x {x0}:{x1} y {y0}:{y1} z {z0}:{z1}"

    def volume(e):
        if getattr(e, "kind", "voxels") == "file":  # a file a mount could not store: where it was written
            return getattr(e, "path", None)
        parts = [getattr(e, "remote", None), *(getattr(e, "ref", None) or [])]
        return "/".join(str(p) for p in parts if p) or None

    def next_try(e):
        t = getattr(e, "next_try", None)
        if getattr(e, "state", "pending") != "pending" or not isinstance(t, (int, float)):
            return None
        return "now" if t <= now else f"in {t - now:.0f} s"

    columns = [("ID", lambda e: getattr(e, "id", None)), ("STATE", lambda e: getattr(e, "state", None)),
               ("VOLUME", volume), ("LEVEL", lambda e: getattr(e, "level", None)), ("BOX", box),
               ("SIZE", lambda e: human_size(e.nbytes) if isinstance(getattr(e, "nbytes", None), int) else None),
               ("WRITTEN", lambda e: when(getattr(e, "created", None))),
               ("ATTEMPTS", lambda e: getattr(e, "attempts", None)), ("NEXT TRY", next_try),
               ("LAST ERROR", lambda e: getattr(e, "last_error", None) or None)]
    cells = [[get(e) for _, get in columns] for e in entries]
    keep = [i for i in range(len(columns)) if any(row[i] is not None for row in cells)]
    return format_table([columns[i][0] for i in keep],
                        [["-" if row[i] is None else str(row[i]) for i in keep] for row in cells])


def cmd_cache(args) -> int:
    from ndfs.cache import clear_disk_cache, disk_cache_info
    from ndfs.tools.mesh import clear_mesh_disk, mesh_disk_dir

    cfg = _config(args)
    meshes = mesh_disk_dir(cfg.cache)
    if args.action == "clear":
        removed = clear_disk_cache(cfg.cache.dir)
        removed_meshes = clear_mesh_disk(meshes)
        print(f"removed {removed} cached chunks and {removed_meshes} meshes from {cfg.cache.dir}")
        return 0
    info = {"config": {"enabled": cfg.cache.enabled, "memory_bytes": cfg.cache.memory_bytes,
                       "disk_bytes": cfg.cache.disk_bytes, "prefetch": cfg.cache.prefetch,
                       "max_age_s": cfg.cache.max_age_s},
            "disk": disk_cache_info(cfg.cache.dir), "meshes": disk_cache_info(meshes)}
    if args.mount:
        from ndfs.fs.tree import STATUS_DIR

        path = Path(args.mount) / STATUS_DIR / "stats.json"
        try:
            info["mount"] = json.loads(path.read_text())
        except OSError as exc:
            raise NdfsError(f"cannot read {path}: {exc.strerror} (is ndfs mounted there?)") from None
    print(json.dumps(info, indent=2) if args.json else _cache_report(info, args.mount))
    return 0


def _tree_path(path: str | None) -> str:
    return "/" + (path or "").strip("/")


def _max_age_words(max_age_s) -> str:
    from ndfs.core.config import DVID_MAX_AGE_S, WRITABLE_MAX_AGE_S

    if max_age_s is None:
        return (f"each remote's own max age (DVID: checked every {DVID_MAX_AGE_S:g} s; BOSS and NeuroData ndfs "
                f"can write: fetched again after {WRITABLE_MAX_AGE_S:g} s; the rest kept until written)")
    if max_age_s == float("inf"):
        return "kept until written through ndfs"
    return f"at most {max_age_s:g} s old (checked or fetched again after {max_age_s:g} s)"


def _since(when, now: float) -> str:
    """A time as the clock shows it and how long ago, e.g. '14:02:11 (3 s ago)'; '-' for None."""
    if when is None:
        return "-"
    return f"{time.strftime('%H:%M:%S', time.localtime(when))} ({max(0.0, now - when):.0f} s ago)"


def _volume_rows(mount: dict, now: float) -> list[list[str]]:
    """One row per volume a mount has looked at: how fresh it is kept, and when it was last validated."""
    rows = []
    for name, r in mount.items():
        for path, v in (r.get("cache") or {}).get("volumes", {}).items():
            age = v.get("max_age_s")
            rows.append([name, path, v.get("policy", "-"), "-" if age is None else f"{age:g} s",
                         _since(v.get("validated"), now), str(v.get("changes", 0)), v.get("error", "")])
    return rows


def _cache_report(info: dict, mountpoint: str | None) -> str:
    c = info["config"]
    lines = [f"cache {'on' if c['enabled'] else 'off'}, prefetch {'on' if c['prefetch'] else 'off'}; "
             f"what is cached is {_max_age_words(c['max_age_s'])}",
             f"budgets: {human_size(c['memory_bytes'])} in memory per process, {human_size(c['disk_bytes'])} "
             "on disk", ""]
    rows = [[name, str(d.get("entries", "-")), human_size(d.get("bytes")), human_size(d.get("size_limit")),
             str(d.get("dir", "-"))] for name, d in (("chunks", info["disk"]), ("meshes", info["meshes"]))]
    lines.append(format_table(["ON DISK", "ENTRIES", "SIZE", "LIMIT", "DIRECTORY"], rows))
    if "mount" in info:
        lines += ["", f"mount {os.path.abspath(mountpoint)}"]
        rows = []
        for name, r in info["mount"].items():
            served, cache, backend = r.get("served", {}), r.get("cache", {}), r.get("backend", {})
            rate = cache.get("hit_rate")
            rows.append([name, str(r.get("kind", "-")), str(served.get("reads", "-")),
                         human_size(served.get("read_bytes")),
                         "-" if rate is None else f"{100 * rate:.1f}%",
                         str(backend.get("reads", "-")), human_size(backend.get("read_bytes")),
                         str(served.get("writes", "-")), str(r.get("outbox_pending", "-"))])
        lines.append(format_table(["REMOTE", "KIND", "READS", "READ", "CACHE HITS", "BACKEND READS",
                                   "BACKEND READ", "WRITES", "OUTBOX"], rows))
        volumes = _volume_rows(info["mount"], time.time())
        if volumes:
            lines += ["", format_table(["REMOTE", "VOLUME", "FRESHNESS", "MAX AGE", "LAST VALIDATED", "CHANGES",
                                        "ERROR"], volumes)]
    return "\n".join(lines)


def cmd_ls(args) -> int:
    import stat

    fs = _session(args)
    path = _tree_path(args.path)
    is_dir = stat.S_ISDIR(fs.getattr(path)["st_mode"])
    names = fs.readdir(path) if is_dir else [path.rsplit("/", 1)[-1]]
    if not args.all:
        names = [n for n in names if not n.startswith(".")]
    for name in names:
        if args.long:
            attrs = fs.getattr(f"{path.rstrip('/')}/{name}" if is_dir else path)
            child_dir = stat.S_ISDIR(attrs["st_mode"])
            size = "-" if child_dir else str(attrs["st_size"])
            print(f"{'d' if child_dir else '-'} {size:>14} {name}{'/' if child_dir else ''}")
        else:
            print(name)
    return 0


def cmd_info(args) -> int:
    from ndfs.fs.tree import VolumeDir

    fs = _session(args)
    path = _tree_path(args.path)
    if not isinstance(fs.tree.resolve(path), VolumeDir):
        raise NdfsError(f"{args.path} is not a channel")
    sys.stdout.write(fs.read_file(path.rstrip("/") + "/info.json").decode())
    return 0


def cmd_cat(args) -> int:
    """A file of the tree exactly as a reader of a mount gets it (open, read, release)."""
    fs = _session(args)
    out = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        fs.read_file(_tree_path(args.path), sink=out, block=1 << 22)
    except BaseException:
        if args.output:
            out.close()
            os.unlink(args.output)
            args.output = None
        raise
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
    return 0


# ---- parser -----------------------------------------------------------------
def _cache_flags(s) -> None:
    s.add_argument("--no-cache", action="store_true", help="read every request from the backend")
    s.add_argument("--no-prefetch", action="store_true", help="do not read ahead")
    s.add_argument("--cache-dir", help="disk cache directory, shared by mounts and Python")
    s.add_argument("--cache-memory", type=parse_size, metavar="SIZE", help="memory budget, e.g. 512M")
    s.add_argument("--cache-disk", type=parse_size, metavar="SIZE", help="disk budget, e.g. 4G")
    s.add_argument("--cache-max-age", type=_max_age, metavar="SECONDS",
                   help="show nothing cached longer than this without checking it or fetching it again, for "
                        "every remote (inf: keep until written through ndfs; default: each remote's own, see "
                        "the README's Consistency section)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ndfs",
        description="Neuroscience volume datastores as ordinary files. Paths are MOUNT-relative, "
                    "e.g. local/demo/em/0/z/10.tif.",
        epilog=START_HERE,
    )
    p.add_argument("--version", action="version", version=f"ndfs {__version__}")
    p.add_argument("--config", metavar="FILE", help="configuration file (default: $NDFS_CONFIG, ./ndfs.toml, "
                                                    "then the user config dir)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="write the demo dataset (EM-like image + cell labels) into a local store",
                       description="Write project 'demo' (channels 'em' uint8 and 'cells' uint64, 4 levels) "
                                   "into DIR, or into the configured local remote's store.")
    s.add_argument("dir", nargs="?", help="store directory (default: the local remote's path)")
    s.add_argument("--remote", help="local remote to fill when DIR is not given (default: the first)")
    s.add_argument("--shape", nargs=3, type=int, default=[128, 1024, 1024], metavar=("Z", "Y", "X"),
                   help="size in voxels, z y x (default 128 1024 1024)")
    s.add_argument("--small", action="store_true", help="a quick 32x256x256 dataset")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--force", action="store_true", help="rebuild even if the demo data exist")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("mount", help="mount the configured remotes at MOUNTPOINT",
                       description="Mount every configured remote as a folder under MOUNTPOINT. Runs as a "
                                   "daemon unless --foreground; a killed daemon unmounts itself.")
    s.add_argument("mountpoint", help="an empty folder to show the remotes in")
    s.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to stderr; Ctrl-C unmounts")
    s.add_argument("--log-file", help="log file (default: in the user cache dir)")
    s.add_argument("--debug", action="store_true", help="log every FUSE request")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the mount (default 30)")
    s.add_argument("--nonempty", action="store_true",
                   help="mount over a folder that has files in it (they are hidden until the unmount)")
    s.add_argument("--allow-other", action="store_true",
                   help="let other users read the mount (by default only you can; file modes still apply). "
                        "Needs root, or user_allow_other in /etc/fuse.conf")
    _cache_flags(s)
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("cache", help="show or clear the chunk cache",
                       description="info: budgets, the disk cache's entries and bytes, and with --mount the "
                                   "live hit rates and backend request counts of a running mount, and how "
                                   "fresh each volume it read is kept and when it was last validated. "
                                   "clear: empty the disk cache (chunks and meshes).")
    s.add_argument("action", choices=["info", "clear"], help="info: show sizes and budgets; clear: empty it")
    s.add_argument("--mount", metavar="MOUNTPOINT", help="also show the statistics of the mount there")
    s.add_argument("--cache-dir", help="disk cache directory (default: from the config)")
    s.add_argument("--json", action="store_true", help="info as JSON, for scripts")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("outbox", help="list, retry or drop writes waiting to reach their remote",
                       description="Writes through a mount to a remote service are kept in the outbox until "
                                   "the service has them (see [write] in the configuration), and so are files "
                                   "a mount could not store when their last descriptor closed. list: show them; "
                                   "retry: post the pending ones now (and, named or with --all, failed ones and "
                                   "kept files); drop: forget entries (their data is lost).")
    s.add_argument("action", choices=["list", "retry", "drop"], nargs="?", default="list",
                   help="list (default): show the entries; retry: post now; drop: forget entries")
    s.add_argument("ids", nargs="*", metavar="ID", help="entry ids (for drop, or retry of failed entries)")
    s.add_argument("--all", action="store_true", help="drop: every entry; retry: failed ones too")
    s.add_argument("--failed", action="store_true", help="drop: the entries the remote refused")
    s.add_argument("--timeout", type=float, default=60.0, help="retry: seconds to keep trying (default 60)")
    s.add_argument("--json", action="store_true", help="list: every field of every entry as JSON, for scripts")
    s.set_defaults(func=cmd_outbox)

    s = sub.add_parser("umount", aliases=["unmount"], help="unmount MOUNTPOINT (the daemon exits)",
                       description="Unmount an ndfs mount; its daemon exits. Writes still on their way to a "
                                   "remote service are waited for first (--wait), and stay in the outbox if "
                                   "they do not get through.")
    s.add_argument("mountpoint", help="the folder given to ndfs mount")
    s.add_argument("--lazy", "-z", action="store_true", help="detach now even if files are open")
    s.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for pending writes to reach their remote first (default 60; 0: don't)")
    s.set_defaults(func=cmd_umount)

    s = sub.add_parser("ls", help="list a tree path without mounting",
                       description="List a folder of the tree a mount would show, without mounting: remotes, "
                                   "projects, channels, levels, slices. Paths are relative to the mount point.")
    s.add_argument("path", nargs="?", default="/",
                   help="a folder (or file) of the tree, e.g. local/demo/em/0 (default: the remotes)")
    s.add_argument("-l", "--long", action="store_true", help="show sizes")
    s.add_argument("-a", "--all", action="store_true", help="also show names starting with '.'")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="print a channel's info.json, e.g. ndfs info local/demo/em",
                       description="Print the info.json of a channel: kind, dtype, shape and offset of every "
                                   "level, voxel size in nm, chunk shape. No data is read.")
    s.add_argument("path", help="a channel of the tree, e.g. local/demo/em")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("cat", help="write a tree file's bytes to stdout without mounting",
                       description="Write the bytes of a file of the tree (a slice, a stack, a cutout, a RAMON "
                                   "object...) to stdout or to a file, exactly as a mount would serve them.")
    s.add_argument("path", help="a file of the tree, e.g. local/demo/em/0/z/5.tif")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_cat)
    from ndfs.cli.serve import add_serve_parser
    add_serve_parser(sub)
    from ndfs.cli.view import add_view_parser
    add_view_parser(sub)
    from ndfs.cli.convert import add_export_parser
    add_export_parser(sub)
    from ndfs.cli.annotate import add_annotate_parsers
    add_annotate_parsers(sub)
    from ndfs.cli.copy import add_copy_parser
    add_copy_parser(sub)
    for name, parser in sub.choices.items():
        _with_examples(parser, EXAMPLES.get(name, ""))
    _with_examples(p, "")
    return p


START_HERE = """start here:
  ndfs demo                         # write the demo data into the local store
  mkdir -p mnt && ndfs mount mnt    # show it as files
  ls mnt/local/demo/em/0/z | head
  ndfs umount mnt

Each command explains itself, with examples: ndfs mount --help"""


# shown under every command's --help; tests/test_cli_help.py checks that each one parses
EXAMPLES = {
    "demo": """
  ndfs demo                         # 1024x1024x128 (4 levels) into the configured local store
  ndfs demo --small                 # 256x256x32, in about a second
  ndfs demo pub --small --force     # into the store folder ./pub, rebuilt""",
    "mount": """
  ndfs mount mnt                    # a daemon; mnt/local/demo/em/0/z/64.tif is a slice
  ndfs mount mnt --foreground       # stays attached, logs to the terminal; Ctrl-C unmounts
  ndfs mount mnt --cache-memory 2G --cache-max-age 300""",
    "umount": """
  ndfs umount mnt
  ndfs umount mnt --wait 0 --lazy   # at once, even with files open (pending writes stay in the outbox)""",
    "ls": """
  ndfs ls                           # the remotes
  ndfs ls local/demo/em/0           # z y x stack.tif cutout volume.npy
  ndfs ls -l local/demo/em/0/z      # slices with their exact sizes""",
    "info": """
  ndfs info local/demo/cells
  ndfs info local/demo/em | python -m json.tool""",
    "cat": """
  ndfs cat local/demo/em/0/z/5.tif -o slice5.tif
  ndfs cat local/demo/cells/ramon/1.json
  ndfs cat local/demo/em/1/stack.tif > em1.tif""",
    "cache": """
  ndfs cache info                   # budgets, and what the disk cache holds
  ndfs cache info --mount mnt       # plus that mount's hit rates, request counts and freshness
  ndfs cache info --json            # the same as JSON
  ndfs cache clear""",
    "outbox": """
  ndfs outbox                       # writes waiting for a remote service, and refused ones
  ndfs outbox --json                # every field of every entry
  ndfs outbox retry                 # post the pending ones now
  ndfs outbox drop --failed         # forget what the service refused""",
    "serve": """
  ndfs serve --protocol boss --store pub --port 8080
  ndfs serve --protocol dvid --store pub --port 8000 --read-only
  ndfs serve --protocol neurodata --remote local --token-env ND_TOKEN --host 0.0.0.0
  ndfs serve --protocol precomputed --store pub     # precomputed://http://127.0.0.1:8080/demo/em
  ndfs serve --protocol zarr --store pub            # http://127.0.0.1:8080/demo/em/ is OME-Zarr""",
    "view": """
  ndfs view local/demo/em           # the image, its labels and meshes; prints the URL to open
  ndfs view local/demo/em --open --segments 3,7,12""",
    "export": """
  ndfs export local/demo/em cutout.tif --x 0:256 --y 0:256 --z 0:16
  ndfs export local/demo/em slices/ --level 1 --z 0:8     # one PNG per z
  ndfs export local/demo/cells cell.obj --mesh 1""",
    "import": """
  ndfs import cutout.tif local/demo/copy --create
  ndfs import cutout.h5 local/demo/em --at 0,0,40""",
    "count": """
  ndfs count local/demo/cells --type segment
  ndfs count local/demo/cells --type segment --x 0:512 --y 0:512 --z 0:64 --table cells.csv
  ndfs count local/demo/cells --kv kind=cell --table -""",
    "copy": """
  ndfs copy local/demo/em precomputed+file:///tmp/layers      # a new precomputed layer /tmp/layers/em
  ndfs copy local/demo zarr+file:///tmp/images --workers 8     # every channel, as OME-Zarr images
  ndfs copy local/demo/cells precomputed+file:///tmp/layers --meshes   # labels with meshes and properties
  ndfs copy local/demo/em local/backup/em --x 0:512 --y 0:512 --z 0:64""",
    "annotate": """
  ndfs annotate local/demo/cells    # one object per label, with its size, box and centroid
  ndfs annotate local/demo/em --level 2 --threshold 180 --min-voxels 100 --into local/demo/found --create""",
}
EXAMPLES["unmount"] = EXAMPLES["umount"]


def _with_examples(parser: argparse.ArgumentParser, examples: str) -> None:
    """Show `examples` under the parser's help, with its description wrapped in paragraphs as before."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if parser.description:
        parser.description = "\n\n".join(textwrap.fill(" ".join(part.split()), 78)
                                          for part in parser.description.split("\n\n"))
    if examples:
        parser.epilog = "examples:" + examples


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NdfsError as exc:
        print(f"ndfs: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever names it quotes
        return 1
    except KeyboardInterrupt:
        print("ndfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
