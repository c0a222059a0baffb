"""The ``ndfs`` command line: demo data, mount/umount, and reading the tree without a mount.

Every command has ``--help``. Errors print one line ``ndfs: error: ...`` and
exit non-zero; nothing is half-done.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ndfs import __version__
from ndfs.errors import NdfsError

# glibc settings for the daemon: chunk-sized buffers (>= 2 MiB) go to mmap and are returned at once,
# and few arenas keep freed memory from piling up across the FUSE and fetch threads. Measured by
# scripts/bench.py target 5: streaming 4x the memory budget peaked at 324 MiB with the spec's
# 16 MiB mmap threshold and at 175-211 MiB with these, for a 64 MiB budget.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_MMAP_THRESHOLD_": "2097152",
              "MALLOC_ARENA_MAX": "2"}


def _config(args):
    from dataclasses import replace

    from ndfs.config import load_config

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
    if getattr(args, "cache_max_age", None) is not None:
        cache = replace(cache, max_age_s=args.cache_max_age)
    return replace(cfg, cache=cache)


def _tree(args, outbox: bool = False):
    from ndfs.config import open_remotes
    from ndfs.fs.tree import Tree

    cfg = _config(args)
    from ndfs.mesh import configure_mesh_cache  # ramon/<id>.obj|ply meshes on disk in <cache dir>/meshes

    configure_mesh_cache(cfg.cache)
    return Tree(open_remotes(cfg, outbox=outbox), max_cutout_bytes=cfg.mount.max_cutout_bytes,
                max_age_s=cfg.cache.max_age_s)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes from '512M', '4G', '1048576' (powers of 1024)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 4G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return int(value * units[unit])


# ---- commands ---------------------------------------------------------------
def cmd_demo(args) -> int:
    from ndfs.demo import IMAGE, LABELS, PROJECT, make_demo

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


def _is_mounted(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        return any(line.split()[1].replace("\\040", " ") == target for line in fh)


def cmd_mount(args) -> int:
    from ndfs.fs.fuse import check_fuse_available

    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise NdfsError(f"mount point {mountpoint} is not a directory (create it with mkdir -p)")
    if _is_mounted(mountpoint):
        raise NdfsError(f"{mountpoint} is already mounted (ndfs umount {args.mountpoint})")
    check_fuse_available()
    from ndfs.config import check_local_store

    for remote in _config(args).remotes.values():  # a missing store is one line here, not a failed daemon
        check_local_store(remote)
    if args.foreground:
        from ndfs.fs.fuse import mount

        cfg = _config(args)
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            filename=args.log_file)
        tree = _tree(args, outbox=True)
        logging.getLogger("ndfs").info("serving %s at %s", ", ".join(tree.remotes), mountpoint)
        spool = cfg.write.outbox_dir / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        mount(tree, mountpoint, attr_timeout_s=cfg.mount.attr_timeout_s,
              entry_timeout_s=cfg.mount.entry_timeout_s, negative_timeout_s=cfg.mount.negative_timeout_s,
              debug=args.debug, spool_dir=str(spool), allow_other=args.allow_other)
        return 0
    # daemon: a fresh foreground process in its own session (no fork after threads exist)
    log_file = os.path.abspath(args.log_file) if args.log_file else _default_log(mountpoint)
    cmd = [sys.executable, "-m", "ndfs"]
    if args.config:
        cmd += ["--config", os.path.abspath(args.config)]
    cmd += ["mount", "--foreground", "--log-file", log_file, mountpoint]
    for flag in ("debug", "no_cache", "no_prefetch", "allow_other"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    for flag in ("cache_dir", "cache_memory", "cache_disk", "cache_max_age"):
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
            print(f"mounted at {mountpoint} (pid {proc.pid}, log {log_file}); stop with: ndfs umount {mountpoint}")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-1:] if os.path.exists(log_file) else []
    raise NdfsError(f"mount did not come up: {tail[0] if tail else 'no log output'} (log {log_file})")


def _default_log(mountpoint: str) -> str:
    from ndfs.config import user_cache_dir

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
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    if args.lazy:
        cmd.insert(1, "-z")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NdfsError(f"unmount failed: {done.stderr.strip() or done.returncode} (is a file still open?)")
    deadline = time.monotonic() + 10
    while _is_mounted(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"unmounted {mountpoint}")
    return 0


def _wait_for_outbox(mountpoint: str, timeout: float) -> None:
    """Let a mount post its pending writes before it goes (they are kept on disk either way)."""
    import json

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
    from ndfs.outbox import Outbox

    cfg = _config(args)
    outbox = Outbox(cfg.write.outbox_dir)
    entries = outbox.entries()
    if args.action == "list":
        if not entries:
            print(f"the outbox is empty ({cfg.write.outbox_dir})")
        for entry in entries:
            print(entry.describe())
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
    # retry: post what is pending now, in this process (a running mount also retries on its own)
    from ndfs.config import open_remotes

    for entry in entries:
        if entry.state == "failed" and (args.all or entry.id in args.ids):
            entry.state, entry.next_try = "pending", 0.0
            outbox.save(entry)
    pending = [e for e in outbox.entries() if e.state == "pending"]
    if not pending:
        print("nothing to retry")
        return 0
    remotes = open_remotes(cfg, outbox=True)
    try:
        for backend in remotes.values():
            drain = getattr(backend, "drain", None)
            if drain is not None:
                drain(timeout=args.timeout)
    finally:
        for backend in remotes.values():
            backend.close()
    left = [e for e in outbox.entries() if e.state == "pending"]
    posted = len(pending) - len(left)
    print(f"posted {posted} of {len(pending)} pending write(s)")
    if left:
        for entry in left:
            print(entry.describe())
        raise NdfsError(f"{len(left)} write(s) are still pending; the remote may be down")
    return 0


def cmd_cache(args) -> int:
    import json

    from ndfs.cache import clear_disk_cache, disk_cache_info
    from ndfs.mesh import clear_mesh_disk, mesh_disk_dir

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
    print(json.dumps(info, indent=2))
    return 0


def cmd_ls(args) -> int:
    tree = _tree(args)
    path = args.path or "/"
    node = tree.resolve(path)
    names = tree.listdir(path) if node.is_dir else [path.rstrip("/").rsplit("/", 1)[-1]]
    if not args.all:
        names = [n for n in names if not n.startswith(".")]
    for name in names:
        if args.long:
            child = tree.resolve(f"{path}/{name}") if node.is_dir else node
            size = "-" if child.is_dir else str(child.size)
            print(f"{'d' if child.is_dir else '-'} {size:>14} {name}{'/' if child.is_dir else ''}")
        else:
            print(name)
    return 0


def cmd_info(args) -> int:
    from ndfs.fs.tree import VolumeDir

    tree = _tree(args)
    if not isinstance(tree.resolve(args.path), VolumeDir):
        raise NdfsError(f"{args.path} is not a channel")
    node = tree.resolve(args.path.rstrip("/") + "/info.json")
    sys.stdout.write(node.read(0, node.size).decode())
    return 0


def cmd_cat(args) -> int:
    tree = _tree(args)
    node = tree.resolve(args.path)
    if node.is_dir:
        raise NdfsError(f"{args.path} is a folder")
    out = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        step = 1 << 22
        for offset in range(0, node.size, step):
            out.write(node.read(offset, min(step, node.size - offset)))
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
    s.add_argument("--cache-max-age", type=_seconds, metavar="SECONDS",
                   help="fetch data again once cached this long (for data others change; default: never)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ndfs",
        description="Neuroscience volume datastores as ordinary files. Paths are MOUNT-relative, "
                    "e.g. local/demo/em/0/z/10.tif.",
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
    s.add_argument("mountpoint")
    s.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    s.add_argument("--log-file", help="log file (default: in the user cache dir)")
    s.add_argument("--debug", action="store_true", help="log every FUSE request")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the mount (default 30)")
    s.add_argument("--allow-other", action="store_true",
                   help="let other users read the mount (by default only you can; file modes still apply). "
                        "Needs root, or user_allow_other in /etc/fuse.conf")
    _cache_flags(s)
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("cache", help="show or clear the chunk cache",
                       description="info: budgets, the disk cache's entries and bytes, and with --mount the "
                                   "live hit rates and backend request counts of a running mount. "
                                   "clear: empty the disk cache (chunks and meshes).")
    s.add_argument("action", choices=["info", "clear"])
    s.add_argument("--mount", metavar="MOUNTPOINT", help="also show the statistics of the mount there")
    s.add_argument("--cache-dir", help="disk cache directory (default: from the config)")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("outbox", help="list, retry or drop writes waiting to reach their remote",
                       description="Writes through a mount to a remote service are kept in the outbox until "
                                   "the service has them (see [write] in the configuration). list: show them; "
                                   "retry: post the pending ones now; drop: forget entries (their data is lost).")
    s.add_argument("action", choices=["list", "retry", "drop"], nargs="?", default="list")
    s.add_argument("ids", nargs="*", metavar="ID", help="entry ids (for drop, or retry of failed entries)")
    s.add_argument("--all", action="store_true", help="drop: every entry; retry: failed ones too")
    s.add_argument("--failed", action="store_true", help="drop: the entries the remote refused")
    s.add_argument("--timeout", type=float, default=60.0, help="retry: seconds to keep trying (default 60)")
    s.set_defaults(func=cmd_outbox)

    s = sub.add_parser("umount", aliases=["unmount"], help="unmount MOUNTPOINT (the daemon exits)")
    s.add_argument("mountpoint")
    s.add_argument("--lazy", "-z", action="store_true", help="detach now even if files are open")
    s.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for pending writes to reach their remote first (default 60; 0: don't)")
    s.set_defaults(func=cmd_umount)

    s = sub.add_parser("ls", help="list a tree path without mounting")
    s.add_argument("path", nargs="?", default="/")
    s.add_argument("-l", "--long", action="store_true", help="show sizes")
    s.add_argument("-a", "--all", action="store_true", help="also show names starting with '.'")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="print a channel's info.json, e.g. ndfs info local/demo/em")
    s.add_argument("path")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("cat", help="write a tree file's bytes to stdout without mounting")
    s.add_argument("path")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_cat)
    from ndfs.serve.cli import add_serve_parser
    add_serve_parser(sub)
    from ndfs.convert_cli import add_export_parser
    add_export_parser(sub)
    from ndfs.annotate_cli import add_annotate_parsers
    add_annotate_parsers(sub)
    return p


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
