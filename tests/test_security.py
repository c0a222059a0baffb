"""Security: tokens never leak, mounts are private, servers listen on loopback and check tokens,
size limits hold on both sides, HTTPS certificates are verified.

Everything runs for real: protocol servers on 127.0.0.1 that require a token, a daemon mounted with
``--debug`` logging, ``ndfs serve`` processes, a TLS server with a self-signed certificate.
"""

import errno
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import traceback
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
import tifffile

from ndfs.stores.boss import BossBackend
from ndfs.stores.dvid import DvidBackend
from ndfs.stores.local import LocalBackend
from ndfs.stores.neurodata import NeuroDataBackend, npz_decode, npz_encode
from ndfs.cache import CachedBackend
from ndfs.core.config import load_config
from ndfs.stack import open_backend, open_remotes
from ndfs.core.errors import ConfigError, NdfsError
from ndfs.core.geometry import Box
from ndfs.serve.boss import BossApp
from ndfs.serve.common import WsgiServer
from ndfs.serve.dvid import DvidApp
from ndfs.serve.neurodata import NeuroDataApp
from ndfs.testing.mount import fuse_unavailable, mounted, ndfs, wait_until
from ndfs.testing.reference import OFFSET, build_reference_store
from ndfs.testing.serve import served

needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
SECRET = "Zq7-s3cret-t0ken-4f1b"  # distinctive enough that finding it anywhere means it leaked
APPS = {"boss": (BossApp, "."), "dvid": (DvidApp, "ndfs"), "neurodata": (NeuroDataApp, "ndfs")}
DRIVERS = {"boss": BossBackend, "dvid": lambda url, token, **kw: DvidBackend(url, token, branch="master", **kw),
           "neurodata": NeuroDataBackend}
PREFIX = {"boss": ("ndfs", "conf"), "dvid": ("conf",), "neurodata": ("conf",)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec-store")
    _, oracle = build_reference_store(root / "ndfs")
    return root, oracle


class Echo:
    """WSGI middleware: while ``on``, every request gets a 500 whose body echoes the request headers back,
    as a debugging proxy or a careless server might: the worst case for a token in an error message."""

    def __init__(self, app):
        self.app, self.on = app, False

    def __call__(self, environ, start_response):
        if not self.on:
            return self.app(environ, start_response)
        body = json.dumps({"message": "internal error", "request": {k: v for k, v in environ.items()
                                                                    if k.startswith("HTTP_")}}).encode()
        start_response("500 Internal Server Error", [("Content-Type", "application/json"),
                                                     ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture(scope="module")
def guarded(store):
    """One server per protocol that accepts only SECRET, each behind an Echo switch."""
    root, _ = store
    running = {}
    for name, (app, sub) in APPS.items():
        echo = Echo(app(LocalBackend(root / sub), tokens=[SECRET]))
        running[name] = (WsgiServer(echo).start(), echo)
    yield running
    for srv, _ in running.values():
        srv.stop()


# ---- tokens never leak -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(APPS))
def test_error_messages_tracebacks_and_reprs_never_hold_the_token(guarded, kind, caplog):
    srv, echo = guarded[kind]
    caplog.set_level("DEBUG")
    backend = DRIVERS[kind](srv.url, SECRET, retries=1, backoff_s=0.01)
    cached = CachedBackend(backend, namespace=f"{kind}:{srv.url}", memory_bytes=2**20)
    ref = PREFIX[kind] + ("em8",)
    try:
        assert cached.info(ref).dtype == np.uint8  # the token is right: the server answers
        echo.on = True
        failures = []
        for call in (lambda: cached.read(ref, Box((4, 6, 8), (5, 9, 12)), 0),
                     lambda: backend.read(ref, Box((6, 6, 8), (7, 9, 12)), 0),
                     lambda: backend.read(PREFIX[kind] + ("em16",), Box((6, 6, 8), (7, 9, 12)), 0)):
            with pytest.raises(NdfsError) as caught:
                call()
            failures.append(caught.value)
        for exc in failures:
            text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
            assert "internal error" in str(exc) or "500" in str(exc)  # the server's message is still shown...
            assert SECRET not in text  # ...without the token it echoed
        for thing in (backend, cached, getattr(backend, "_client", None) or getattr(backend, "http")):
            assert SECRET not in repr(thing) and SECRET not in str(thing)
        assert caplog.records and SECRET not in caplog.text
    finally:
        echo.on = False
        cached.close()


def _mount_config(path: Path, servers: dict, cache_dir: Path, token_env: str) -> None:
    lines = []
    for name, (srv, _) in servers.items():
        lines += [f"[remotes.{name}]", f'kind = "{name}"', f'url = "{srv.url}"', f'token_env = "{token_env}"',
                  "retries = 1", "backoff_s = 0.01"]
        if name == "dvid":
            lines.append('branch = "master"')
    lines += ["[cache]", f'dir = "{cache_dir}"', "[write]", 'write_back = "sync"']
    path.write_text("\n".join(lines) + "\n")


@needs_fuse
def test_a_debug_mount_with_tokens_leaks_them_nowhere(store, guarded, tmp_path, monkeypatch):
    _, oracle = store
    monkeypatch.setenv("NDFS_TEST_SECRET", SECRET)
    monkeypatch.setenv("NDFS_OUTBOX_DIR", str(tmp_path / "outbox"))
    config = tmp_path / "ndfs.toml"
    _mount_config(config, guarded, tmp_path / "cache", "NDFS_TEST_SECRET")
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    z = OFFSET[0] + 2
    with mounted(config, mnt, "--log-file", log, "--debug") as pid:
        seen = []
        for kind in APPS:
            chan = mnt / kind / os.path.join(*PREFIX[kind])
            seen.append((chan / "em8" / "info.json").read_text())
            plane = tifffile.imread(chan / "em8" / "0" / "z" / f"{z}.tif")
            np.testing.assert_array_equal(plane, oracle.read("em8", Box((z, 5, 7), (z + 1, 75, 97)), 0)[0])
            with pytest.raises(FileNotFoundError):
                os.stat(chan / "no_such_channel")
        scratch = mnt / "boss" / "ndfs" / "conf" / "scratch" / "0" / "z" / f"{z}.tif"
        assert os.path.getsize(scratch) > 0  # its geometry is known before the failures start
        for _, echo in guarded.values():
            echo.on = True  # now every answer echoes the request headers back
        try:
            for kind in APPS:
                with pytest.raises(OSError) as caught:  # a read that fails
                    (mnt / kind / os.path.join(*PREFIX[kind]) / "em16" / "0" / "z" / f"{z}.tif").read_bytes()
                assert caught.value.errno == errno.EIO
            fh = open(scratch, "wb")
            fh.write(_tiff(np.full((70, 90), 5, np.uint8)))
            with pytest.raises(OSError):  # a write that fails: it waits in the outbox
                fh.close()
            # close() returns before the kernel's release, which removes the write's spool file: wait
            # for it, so that what is listed is what stays (the spool holds only the written bytes)
            spool = tmp_path / "outbox" / "spool"
            assert wait_until(lambda: not any(spool.iterdir())), "the failed write's spool file was never removed"
            outbox_files = [p for p in (tmp_path / "outbox").rglob("*") if p.is_file()]
            assert outbox_files  # the failed write is kept there, with where it goes: never the token
            seen += [p.read_bytes().decode("latin-1") for p in outbox_files]
            seen.append(ndfs("--config", config, "outbox", "list").stdout)
        finally:
            for _, echo in guarded.values():
                echo.on = False
        seen.append((mnt / ".ndfs" / "stats.json").read_text())
        seen.append(ndfs("--config", config, "cache", "info", "--mount", mnt).stdout)
        seen.append(ndfs("--config", config, "ls", "-l", "boss/ndfs/conf").stdout)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        seen += [cmdline, Path(f"/proc/{pid}/comm").read_text()]
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        seen.append(ps)
    seen.append(log.read_text(errors="replace"))
    assert "retrying" in seen[-1] and "internal error" in seen[-1]  # the log did record the failures
    for i, text in enumerate(seen):
        assert SECRET not in text, f"the token leaked into item {i}: {text[:300]}"


def _tiff(arr) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def test_config_reprs_and_info_never_show_the_token(guarded, monkeypatch, tmp_path):
    monkeypatch.setenv("NDFS_TEST_SECRET", SECRET)
    config = tmp_path / "ndfs.toml"
    _mount_config(config, guarded, tmp_path / "cache", "NDFS_TEST_SECRET")
    cfg = load_config(config)
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    remotes = open_remotes(cfg)
    try:
        for name, backend in remotes.items():
            assert SECRET not in repr(backend)
            ref = PREFIX[name] + ("labels",)
            info = backend.info(ref)
            assert SECRET not in json.dumps(info.to_json() if hasattr(info, "to_json") else info.__dict__, default=str)
    finally:
        for backend in remotes.values():
            backend.close()


def test_a_token_in_the_url_user_info_is_masked_in_reprs_targets_errors_and_logs(tmp_path, caplog):
    from ndfs.core.config import remote_target

    caplog.set_level("DEBUG")
    config = tmp_path / "ndfs.toml"  # nothing listens on port 9: every request fails
    config.write_text(f'[remotes.b]\nkind = "boss"\nurl = "http://alice:{SECRET}@127.0.0.1:9"\nretries = 1\n'
                      'backoff_s = 0.01\n')
    rc = load_config(config).remote("b")
    backend = open_backend(rc)
    seen = [repr(rc), str(rc), remote_target(rc), repr(backend), repr(backend._client)]
    assert "***@127.0.0.1:9" in remote_target(rc) and "***@127.0.0.1:9" in repr(backend)
    with pytest.raises(NdfsError) as caught:
        backend.children(())
    seen += [str(caught.value), "".join(traceback.format_exception(caught.value))]
    with pytest.raises(NdfsError) as caught:  # a URL the driver refuses: the message shows it masked
        BossBackend(f"ftp://{SECRET}@127.0.0.1:9")
    seen.append(str(caught.value))
    done = subprocess.run([sys.executable, "-m", "ndfs", "--config", str(config), "ls", "b"], capture_output=True,
                          text=True, timeout=60)
    seen += [done.stdout, done.stderr, caplog.text]
    assert done.returncode == 1 and "connection failed" in done.stderr
    for i, text in enumerate(seen):
        assert SECRET not in text, f"the token leaked into item {i}: {text[:300]}"


def test_serve_takes_its_token_from_the_environment_so_the_process_list_never_shows_it(store, tmp_path):
    root, _ = store
    env = {**os.environ, "NDFS_SERVE_TOKEN": SECRET}
    with served("neurodata", root / "ndfs", "--token-env", "NDFS_SERVE_TOKEN", env=env) as srv:
        url = srv.url
        assert SECRET not in Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes().decode()
        assert requests.get(f"{url}/nd/sd/public_tokens/", timeout=10).status_code == 401
        assert requests.get(f"{url}/nd/sd/public_tokens/", headers={"Authorization": f"Token {SECRET}"},
                            timeout=10).status_code == 200
    done = subprocess.run([sys.executable, "-m", "ndfs", "serve", "--protocol", "boss", "--store", str(root),
                           "--token-env", "NDFS_NO_SUCH_VARIABLE"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "NDFS_NO_SUCH_VARIABLE" in done.stderr and done.stderr.count("\n") == 1


# ---- the mount is private unless asked ------------------------------------------------------------------
def _mount_options(mountpoint) -> set[str]:
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if parts[1] == target:
                return set(parts[3].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


#: an interpreter user nobody may run (ours may live in a private home); only the standard library is needed
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def _as_nobody(code: str, path) -> int:
    """errno (0: success) of running ``code`` on ``path`` (sys.argv[1]) as user nobody (uid 65534)."""
    wrapped = f"import os, sys\ntry:\n    {code}\nexcept OSError as e:\n    sys.exit(e.errno)\n"
    done = subprocess.run([SYSTEM_PYTHON, "-c", wrapped, str(path)], user=65534, group=65534,
                          capture_output=True, timeout=30)
    assert done.returncode < 128 and not done.stderr, done.stderr
    return done.returncode


@needs_fuse
def test_the_mount_is_private_by_default_and_shared_only_with_allow_other(tmp_path):
    from ndfs.tools.demo import make_demo

    make_demo(str(tmp_path / "store"), shape=(8, 32, 32), levels=1, chunk_shape=(8, 32, 32), progress=False)
    (tmp_path / "ndfs.toml").write_text(f'[remotes.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n')
    # a mount point other users can reach: the pytest temp dir is private to us
    base = Path(tempfile.mkdtemp(prefix="ndfs-allow-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        as_root = os.geteuid() == 0 and SYSTEM_PYTHON is not None  # switching users needs root
        with mounted(tmp_path / "ndfs.toml", base / "private"):
            opts = _mount_options(base / "private")
            assert "allow_other" not in opts and "default_permissions" in opts
            assert "local" in os.listdir(base / "private")
            if as_root:
                assert _as_nobody("os.listdir(sys.argv[1])", base / "private") == errno.EACCES
        with mounted(tmp_path / "ndfs.toml", base / "shared", "--allow-other"):
            assert "allow_other" in _mount_options(base / "shared")
            if as_root:
                assert _as_nobody("os.listdir(sys.argv[1])", base / "shared") == 0
                path = base / "shared" / "local" / "demo" / "em" / "0" / "z" / "1.tif"
                assert _as_nobody("open(sys.argv[1], 'rb').read(10)", path) == 0
                # shared to read: the files keep their modes, so others cannot write (default_permissions)
                assert _as_nobody("open(sys.argv[1], 'r+b').close()", path) == errno.EACCES
    finally:
        shutil.rmtree(base, ignore_errors=True)
    help_text = ndfs("mount", "--help").stdout
    assert "--allow-other" in help_text and "user_allow_other" in help_text


# ---- servers: loopback by default, tokens enforced --------------------------------------------------------
def _listening_addresses(pid: int) -> set[str]:
    """The local addresses of the TCP sockets process ``pid`` listens on, from /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addr, port = local.split(":")
                raw = bytes.fromhex(addr)
                if family == socket.AF_INET:
                    raw = raw[::-1]
                else:  # four little-endian 32-bit words
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(f"{socket.inet_ntop(family, raw)}:{int(port, 16)}")
    return found


PROBES = {  # protocol -> (a public-looking route, a data route) below the served store
    "boss": ("/v1/collection/", "/v1/cutout/ndfs/conf/em8/0/7:17/5:9/3:5/"),
    "dvid": ("/api/server/info", "/api/repos/info"),
    "neurodata": ("/nd/sd/public_tokens/", "/nd/sd/conf/em8/npz/0/7,17/5,9/3,5/"),
}


@pytest.mark.parametrize("protocol", list(PROBES))
def test_ndfs_serve_listens_on_loopback_only_and_enforces_its_token(store, protocol):
    root, _ = store
    with served(protocol, root if protocol == "boss" else root / "ndfs", "--token", "t-right") as srv:
        url = srv.url
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        assert _listening_addresses(srv.proc.pid) == {f"127.0.0.1:{port}"}
        for route in PROBES[protocol]:
            assert requests.get(url + route, timeout=10).status_code == 401, route
            for header in ("Token t-wrong", "Bearer t-wrong", "Token", "t-right", "Basic dC1yaWdodA=="):
                assert requests.get(url + route, headers={"Authorization": header}, timeout=10).status_code == 401
            for header in ("Token t-right", "Bearer t-right"):  # both forms the README documents, every server
                assert requests.get(url + route, headers={"Authorization": header},
                                    timeout=10).status_code == 200, (route, header)
        posted = requests.post(url + PROBES[protocol][1], data=b"x" * 100, timeout=10)
        assert posted.status_code == 401  # writes too


def test_the_server_class_binds_loopback_by_default(store):
    with WsgiServer(BossApp(LocalBackend(store[0]))) as srv:
        assert srv.host == "127.0.0.1" and _listening_addresses(os.getpid()) >= {f"127.0.0.1:{srv.port}"}
        assert not any(a.startswith(("0.0.0.0", "::")) and a.endswith(f":{srv.port}")
                       for a in _listening_addresses(os.getpid()))


# ---- size limits: servers refuse before allocating, clients refuse bombs --------------------------------
def _peak_mib(fn) -> float:
    """Peak traced Python/numpy memory while running fn, in MiB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_dvid_and_neurodata_servers_refuse_huge_cutouts_before_allocating(store):
    root, _ = store
    with WsgiServer(DvidApp(LocalBackend(root / "ndfs"))) as dvid:
        uuid = requests.get(f"{dvid.url}/api/repos/info", timeout=10).json()
        root_uuid = next(iter(uuid))
        result = {}
        big = f"{dvid.url}/api/node/{root_uuid}/em8/raw/0_1_2/4096_4096_1024/0_0_0"  # 16 GiB

        def ask():
            result["resp"] = requests.get(big, timeout=30)

        assert _peak_mib(ask) < 64
        assert result["resp"].status_code == 400 and "3 GiB" in result["resp"].text
    with WsgiServer(NeuroDataApp(LocalBackend(root / "ndfs"), max_cutout_bytes=40_000)) as nd:
        base = f"{nd.url}/nd/sd/conf"
        assert requests.get(f"{base}/em8/npz/0/7,97/5,75/3,7/", timeout=10).status_code == 200  # 25,200 bytes
        over = requests.get(f"{base}/em16/npz/0/7,97/5,75/3,7/", timeout=10)  # 50,400 bytes
        assert over.status_code == 413 and "limit" in over.text
        posted = requests.post(f"{base}/em16/npz/0/7,97/5,75/3,7/", data=npz_encode(np.ones((1, 4, 70, 90),
                                                                                            np.uint16)), timeout=10)
        assert posted.status_code == 413
        both = requests.get(f"{base}/em8,scratch/npz/0/7,97/5,75/3,7/", timeout=10)  # two channels: 50,400
        assert both.status_code == 413
    from ndfs.serve.neurodata import MAX_CUTOUT_BYTES

    assert MAX_CUTOUT_BYTES <= 2**30  # the default is a bound, not "anything goes"


def _zlib_bomb(nbytes: int) -> bytes:
    """A valid npz body (zlib of an .npy) that inflates to nbytes of zeros, compressed about 1000:1."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (1, nbytes)})
    packer = zlib.compressobj(9)
    out = [packer.compress(header.getvalue())]
    zeros = bytes(2**20)
    for _ in range(nbytes // 2**20):
        out.append(packer.compress(zeros))
    out.append(packer.flush())
    return b"".join(out)


def test_a_compression_bomb_is_refused_by_server_and_client_without_inflating_it(store):
    root, _ = store
    bomb = _zlib_bomb(2**29)  # 512 MiB of zeros in about half a MiB
    assert len(bomb) < 2**20
    with pytest.raises(ValueError, match="inflates past"):
        npz_decode(bomb, max_bytes=2**20)
    with WsgiServer(NeuroDataApp(LocalBackend(root / "ndfs"))) as nd:  # a post of 4 x 4 x 4 voxels
        result = {}

        def post():
            result["resp"] = requests.post(f"{nd.url}/nd/sd/conf/scratch/npz/0/7,11/5,9/3,7/", data=bomb, timeout=60)

        assert _peak_mib(post) < 64  # inflating it would take 512
        assert result["resp"].status_code == 404 and "inflates past" in result["resp"].text

    class Bomber:  # a hostile NeuroData server: a valid info, and a bomb for every cutout
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            if "/npz/" not in environ["PATH_INFO"]:
                return self.app(environ, start_response)
            start_response("200 OK", [("Content-Type", "product/npz"), ("Content-Length", str(len(bomb)))])
            return [bomb]

    with WsgiServer(Bomber(NeuroDataApp(LocalBackend(root / "ndfs")))) as hostile:
        with NeuroDataBackend(hostile.url, retries=0) as driver:
            driver.info(("conf", "em8"))
            result = {}

            def read():
                try:
                    driver.read(("conf", "em8"), Box((3, 5, 7), (4, 9, 17)), 0)
                except NdfsError as exc:
                    result["error"] = exc

            assert _peak_mib(read) < 64
            assert result["error"].errno == errno.EIO and "inflates past" in str(result["error"])


def _gzip_bomb(nbytes: int) -> bytes:
    packer = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    return b"".join([packer.compress(zeros) for _ in range(nbytes // 2**20)] + [packer.flush()])


def test_a_gzip_bomb_is_refused_by_the_dvid_server_and_driver_without_inflating_it(store):
    root, _ = store
    bomb = _gzip_bomb(2**29)
    assert len(bomb) < 2**20
    with WsgiServer(DvidApp(LocalBackend(root / "ndfs"))) as dvid:
        uuid = next(iter(requests.get(f"{dvid.url}/api/repos/info", timeout=10).json()))
        result = {}

        def post():  # a 32^3 block of labels (256 KiB) whose body inflates to 512 MiB
            result["resp"] = requests.post(f"{dvid.url}/api/node/{uuid}/labels/raw/0_1_2/32_32_32/0_0_0",
                                           params={"compression": "gzip"}, data=bomb, timeout=60)

        assert _peak_mib(post) < 64
        assert result["resp"].status_code == 400 and "inflates past" in result["resp"].text

    class Bomber:  # a hostile DVID server: real metadata, a gzip bomb for every voxel read
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            if "/raw/" not in environ["PATH_INFO"]:
                return self.app(environ, start_response)
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(bomb)))])
            return [bomb]

    with WsgiServer(Bomber(DvidApp(LocalBackend(root / "ndfs")))) as hostile:
        with DvidBackend(hostile.url, branch="master", retries=0, label_compression="gzip") as driver:
            driver.info(("conf", "labels"))
            result = {}

            def read():
                try:
                    driver.read(("conf", "labels"), Box((3, 5, 7), (4, 9, 17)), 0)
                except NdfsError as exc:
                    result["error"] = exc

            assert _peak_mib(read) < 64
            assert result["error"].errno == errno.EIO and "inflates past" in str(result["error"])


def test_an_hdf5_post_declaring_a_huge_cutout_is_refused_before_reading_it(store):
    root, _ = store
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:  # a 4 GiB chunked, compressed dataset that is almost all fill value
        g = f.create_group("scratch")
        g.create_dataset("CUTOUT", shape=(2048, 2048, 1024), dtype=np.uint8, chunks=(64, 64, 64),
                         compression="gzip")
    assert len(buf.getvalue()) < 2**20
    with WsgiServer(NeuroDataApp(LocalBackend(root / "ndfs"))) as nd:
        result = {}

        def post():
            result["resp"] = requests.post(f"{nd.url}/nd/sd/conf/scratch/hdf5/0/7,11/5,9/3,7/", data=buf.getvalue(),
                                           timeout=60)

        assert _peak_mib(post) < 200
        assert result["resp"].status_code == 404 and "CUTOUT" in result["resp"].text


@pytest.mark.parametrize("kind", list(APPS))
def test_drivers_cut_every_request_to_their_byte_limit(store, kind):
    """A read far larger than one request's budget goes out as many requests, none over it."""
    root, oracle = store
    app, served = APPS[kind]
    sizes = []

    class Sizes:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            def recording(status, headers, exc_info=None):
                if status.startswith("200"):
                    sizes.append(next(int(v) for k, v in headers if k.lower() == "content-length"))
                return start_response(status, headers)
            return self.app(environ, recording)

    limit = 4096 if kind != "dvid" else 32**3  # DVID's smallest request is one whole 32^3 block
    settings = {"max_request_bytes": limit} if kind != "dvid" else {"max_request_voxels": limit}
    with WsgiServer(Sizes(app(LocalBackend(root / served)))) as srv:
        with DRIVERS[kind](srv.url, None, **settings) as driver:
            ref = PREFIX[kind] + ("em16",)
            box = oracle.box("em16", 0)
            driver.info(ref)
            sizes.clear()
            np.testing.assert_array_equal(driver.read(ref, box, 0), oracle.read("em16", box, 0))
    assert len(sizes) > 10
    if kind == "dvid":  # raw bodies: exactly the voxels
        assert max(sizes) <= limit * 2  # uint16
    else:  # compressed bodies (random data barely compresses), plus frame or .npy headers
        assert max(sizes) <= limit + 1024


# ---- HTTPS: certificates are verified --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server with a self-signed certificate that answers every GET with an empty JSON list."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.headers.get("Authorization"))
            body = b'{"collections": [], "experiments": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", d / "cert.pem", hits
    httpd.shutdown()


@pytest.mark.parametrize("kind", list(APPS))
def test_https_certificates_are_verified_and_the_token_is_never_sent_to_an_unverified_server(
        tls_server, kind, monkeypatch):
    url, cert, hits = tls_server
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    hits.clear()
    with DRIVERS[kind](url, SECRET, retries=0) as driver:
        client = driver._client  # every HTTP driver keeps its HttpClient there (HttpDriver)
        assert client.session.verify is True
        with pytest.raises(NdfsError) as caught:
            driver.children(())
        assert "certificate" in str(caught.value).lower() and SECRET not in str(caught.value)
    assert hits == []  # the TLS handshake failed: no request, no token, ever reached the server
    # an empty CA-bundle variable (a classic way to switch verification off) does not switch it off
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    with DRIVERS[kind](url, SECRET, retries=0) as driver:
        with pytest.raises(NdfsError):
            driver.children(())
    assert hits == []
    # trusting the certificate explicitly (the standard requests variable) makes the same server usable
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with DRIVERS[kind](url, SECRET, retries=0) as driver:
        try:
            driver.children(())
        except NdfsError as exc:  # the fake server does not speak the protocol fully; TLS worked
            assert "certificate" not in str(exc).lower()
    assert hits and hits[0] == f"Token {SECRET}"


def test_there_is_no_setting_that_turns_certificate_checks_off_quietly(tmp_path):
    for setting in ("verify = false", 'verify = "no"', "insecure = true"):
        (tmp_path / "ndfs.toml").write_text(f'[remotes.b]\nkind = "boss"\nurl = "https://127.0.0.1:9"\n{setting}\n')
        with pytest.raises(ConfigError, match=f"unknown key '{setting.split()[0]}'"):
            open_backend(load_config(tmp_path / "ndfs.toml").remote("b"))
