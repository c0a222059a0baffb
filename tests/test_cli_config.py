"""The ndfs command line (without a mount) and the configuration file."""

import json
import os

import pytest
import tifffile
import numpy as np

from ndfs import __version__
from ndfs.core.config import load_config, parse_config
from ndfs.core.errors import ConfigError
from ndfs.testing.mount import ndfs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "ndfs.toml").write_text('[remotes.here]\nkind = "local"\npath = "data"\n')
    done = ndfs("--config", root / "ndfs.toml", "demo", "--small", "--quiet")
    assert "wrote demo/em" in done.stdout
    return root


def test_version_and_help():
    assert ndfs("--version").stdout.strip() == f"ndfs {__version__}"
    for cmd in ["demo", "mount", "umount", "ls", "info", "cat"]:
        done = ndfs(cmd, "--help")
        assert "usage: ndfs" in done.stdout


def test_demo_is_idempotent_and_forceable(site):
    done = ndfs("--config", site / "ndfs.toml", "demo", "--small")
    assert "already" in done.stdout


def test_ls_info_and_cat_read_the_tree_without_a_mount(site, tmp_path):
    cfg = site / "ndfs.toml"
    assert ndfs("--config", cfg, "ls").stdout.split() == ["here"]
    assert ndfs("--config", cfg, "ls", "here/demo").stdout.split() == ["cells", "em", "cells.ome.zarr", "em.ome.zarr"]
    long = ndfs("--config", cfg, "ls", "-l", "here/demo/em/0").stdout
    assert "stack.tif" in long and "z/" in long
    assert '"dtype": "uint64"' in ndfs("--config", cfg, "info", "here/demo/cells").stdout
    out = tmp_path / "s.tif"
    ndfs("--config", cfg, "cat", "here/demo/em/1/z/3.tif", "-o", out)
    import zarr

    np.testing.assert_array_equal(tifffile.imread(out), zarr.open_array(str(site / "data/demo/em/1"))[3])


@pytest.mark.parametrize("args, words", [
    (["ls", "here/nope"], "no folder or channel"),
    (["cat", "here/demo/em/0/z/999.tif"], "no slice"),
    (["info", "here/demo"], "is not a channel"),
    (["ls", "elsewhere"], "no remote named"),
])
def test_errors_are_one_line_and_exit_non_zero(site, args, words):
    done = ndfs("--config", site / "ndfs.toml", *args, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("ndfs: error: ") and done.stderr.count("\n") == 1
    assert words in done.stderr


def test_config_resolves_paths_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "ndfs.toml").write_text(
        '[remotes.a]\nkind = "local"\npath = "store"\n[cache]\nmemory_bytes = 1024\nprefetch = false\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NDFS_CACHE_DISK_BYTES", "4096")
    cfg = load_config()
    assert cfg.remote("a").path == (tmp_path / "store").resolve()
    assert cfg.cache.memory_bytes == 1024 and cfg.cache.prefetch is False and cfg.cache.disk_bytes == 4096
    monkeypatch.setenv("NDFS_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError):
        load_config()


@pytest.mark.parametrize("data, words", [
    ({"remotes": {"x": {"kind": "ftp"}}}, "known kinds"),
    ({"remotes": {"x": {"kind": "local"}}}, "needs path"),
    ({"remotes": {"x": {"kind": "local", "path": 3}}}, "must be a str"),
    ({"cache": {"memory_bytes": "lots"}}, "must be a int"),
    ({"caches": {}}, "unknown section"),
    ({"cache": {"max_age_s": 0}}, "positive number of seconds"),
    ({"cache": {"max_age_s": float("nan")}}, "positive number of seconds"),
    ({"remotes": {"x": {"kind": "dvid", "url": "http://h", "max_age_s": -5}}}, "positive number of seconds"),
    ({"remotes": {"x": {"kind": "local", "path": ".", "max_age_s": "5"}}}, "must be a float"),
    ({"cache": {"max_age_s": "1h"}}, "must be a float"),
])
def test_bad_configs_are_refused_with_a_reason(tmp_path, data, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(data, tmp_path)


def test_cache_max_age_from_the_config_and_the_command_line(tmp_path):
    cfg = parse_config({"cache": {"max_age_s": 30}}, tmp_path)
    assert cfg.cache.max_age_s == 30.0 and parse_config({}, tmp_path).cache.max_age_s is None
    config = tmp_path / "ndfs.toml"
    config.write_text('[cache]\nmax_age_s = 30\n')
    assert json.loads(ndfs("--config", config, "cache", "info", "--json").stdout)["config"]["max_age_s"] == 30.0
    assert "at most 30 s old" in ndfs("--config", config, "cache", "info").stdout
    done = ndfs("--config", config, "mount", tmp_path / "mnt", "--cache-max-age", "-1", check=False)
    assert done.returncode == 2 and "not a positive number of seconds" in done.stderr


def test_malformed_toml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[remotes.x\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    done = ndfs("--config", bad, "ls", check=False)
    assert done.returncode == 1 and "not valid TOML" in done.stderr


def test_the_repository_config_points_at_the_demo_data():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(here, "ndfs.toml"))
    assert str(cfg.remote("local").path) == os.path.realpath(os.path.join(here, "demo-data"))


def test_mount_explains_a_missing_fuse(monkeypatch):
    from ndfs.fs import fuse

    real_exists = os.path.exists
    monkeypatch.setattr(fuse.os.path, "exists", lambda p: False if p == "/dev/fuse" else real_exists(p))
    with pytest.raises(fuse.MountError, match="/dev/fuse is missing"):
        fuse.check_fuse_available()
    monkeypatch.setattr(fuse.os.path, "exists", real_exists)
    monkeypatch.setattr(fuse.shutil, "which", lambda name: None)
    with pytest.raises(fuse.MountError, match="apt-get install -y fuse3"):
        fuse.check_fuse_available()


def test_cache_info_is_a_table_in_human_units_and_json_with_json(tmp_path):
    import diskcache

    config = tmp_path / "ndfs.toml"
    config.write_text('[cache]\ndir = "chunks"\nmemory_bytes = 536870912\ndisk_bytes = 4294967296\n')
    with diskcache.Cache(str(tmp_path / "chunks")) as chunks:
        for i in range(3):
            chunks.set(f"chunk-{i}", b"x" * 300_000)
    text = ndfs("--config", config, "cache", "info").stdout
    assert "512 MiB in memory per process, 4 GiB on disk" in text
    (row,) = [line.split() for line in text.splitlines() if line.startswith("chunks ")]
    assert row[1] == "3" and row[3] in ("KiB", "MiB") and row[-1] == str(tmp_path / "chunks")
    assert "{" not in text
    info = json.loads(ndfs("--config", config, "cache", "info", "--json").stdout)
    assert info["disk"]["entries"] == 3 and info["config"]["memory_bytes"] == 536870912


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (4096, "4 KiB"),
                                        (512 * 2**20, "512 MiB"), (int(3.4 * 2**30), "3.4 GiB"),
                                        (5 * 2**40, "5 TiB"), (None, "-")])
def test_sizes_are_shown_in_powers_of_1024(size, text):
    from ndfs.cli.commands import human_size, parse_size

    assert human_size(size) == text
    if size is not None and "." not in text:
        assert parse_size(text.replace(" ", "")) == size


def test_outbox_lists_a_table_and_json_with_json(tmp_path):
    from ndfs.core.geometry import Box
    from ndfs.journal import Journal as Outbox

    outbox = Outbox(tmp_path / "outbox")
    pending = outbox.put("b", "boss:http://127.0.0.1:1", ("coll", "demo", "em"), 0, Box((3, 0, 0), (4, 64, 64)),
                         np.zeros((1, 64, 64), np.uint8))
    refused = outbox.put("b", "boss:http://127.0.0.1:1", ("coll", "demo", "cells"), 1,
                         Box((0, 0, 0), (2, 32, 16)), np.zeros((2, 32, 16), np.uint64))
    refused.state, refused.attempts, refused.last_error = "failed", 1, "403 Forbidden: not your channel"
    outbox.save(refused)
    env = {**os.environ, "NDFS_OUTBOX_DIR": str(tmp_path / "outbox")}
    config = tmp_path / "ndfs.toml"
    config.write_text("")
    lines = ndfs("--config", config, "outbox", env=env).stdout.splitlines()
    assert lines[0].split()[:6] == ["ID", "STATE", "VOLUME", "LEVEL", "BOX", "SIZE"] and len(lines) == 3
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows[pending.id].split()[1:4] == ["pending", "b/coll/demo/em", "0"]
    assert "x 0:64 y 0:64 z 3:4" in rows[pending.id] and "4 KiB" in rows[pending.id]
    assert rows[refused.id].split()[1:4] == ["failed", "b/coll/demo/cells", "1"]
    assert "8 KiB" in rows[refused.id] and rows[refused.id].endswith("403 Forbidden: not your channel")
    listed = json.loads(ndfs("--config", config, "outbox", "--json", env=env).stdout)
    assert [(e["id"], e["state"], e["nbytes"]) for e in listed] == [(pending.id, "pending", 4096),
                                                                     (refused.id, "failed", 8192)]
    assert listed[1]["last_error"] == "403 Forbidden: not your channel"
    empty = {**env, "NDFS_OUTBOX_DIR": str(tmp_path / "none")}
    assert "the outbox is empty" in ndfs("--config", config, "outbox", env=empty).stdout
    assert json.loads(ndfs("--config", config, "outbox", "--json", env=empty).stdout) == []


# ---- strictness (issue 18) -------------------------------------------------------------------------------
def _main(*args) -> tuple[int, str]:
    """ndfs's main() in this process: (exit status, standard error)."""
    import contextlib
    import io

    from ndfs.cli.commands import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


BOSS = '[remotes.b]\nkind = "boss"\nurl = "https://api.example.org"\n'
STRICT = [  # (file text, words the one-line error must hold)
    ('[remotes.a]\nkind = "local"\npath = "."\nread_onyl = true\n', ["'read_onyl'", "did you mean 'read_only'"]),
    (BOSS + "timout_s = 3\n", ["'timout_s'", "did you mean 'timeout_s'"]),
    (BOSS + "read_onyl = true\n", ["'read_onyl'", "did you mean 'read_only'"]),
    ('[remotes.d]\nkind = "dvid"\nurl = "http://h:8000"\nbranh = "master"\n', ["'branh'", "'branch'"]),
    ('[cache]\nmemory_byte = 5\n', ["'memory_byte'", "did you mean 'memory_bytes'"]),
    ('[caches]\nmemory_bytes = 5\n', ["unknown section 'caches'", "did you mean 'cache'"]),
    ('[mount]\nmax_cutout_byte = 5\n', ["'max_cutout_byte'", "'max_cutout_bytes'"]),
    ('[write]\nwriteback = "sync"\n', ["'writeback'", "'write_back'"]),
    ('[remotes.a]\nkind = "local"\npath = "."\nurl = "http://x"\n', ["unknown key 'url'"]),
    (BOSS + "timeout_s = -1\n", ["timeout_s", "positive"]),
    (BOSS + "timeout_s = 0\n", ["timeout_s", "positive"]),
    (BOSS + "timeout_s = nan\n", ["timeout_s", "NaN"]),
    (BOSS + "connect_timeout_s = inf\n", ["connect_timeout_s", "finite"]),
    (BOSS + "workers = 0\n", ["workers", "at least 1"]),
    (BOSS + "retries = -1\n", ["retries", "at least 0"]),
    (BOSS + "backoff_s = -0.5\n", ["backoff_s", "at least 0"]),
    (BOSS + "max_request_bytes = 0\n", ["max_request_bytes", "at least 1"]),
    (BOSS + "workers = 2.5\n", ["workers", "must be a int"]),
    ('[remotes.d]\nkind = "dvid"\nurl = "http://h:8000"\nlabel_compression = "zstd"\n', ["label_compression"]),
    ('[cache]\nmemory_bytes = 0\n', ["memory_bytes", "positive"]),
    ('[cache]\ndisk_bytes = -4096\n', ["disk_bytes", "positive"]),
    ('[mount]\nattr_timeout_s = -1\n', ["attr_timeout_s", "at least 0"]),
    ('[mount]\nnegative_timeout_s = nan\n', ["negative_timeout_s", "NaN"]),
    ('[write]\nretry_max_s = inf\n', ["retry_max_s", "finite"]),
    (BOSS + 'token = "s3cret"\n', ["token = ... is refused", "token_env"]),
    ('[remotes.b]\nkind = "boss"\nurl = "api.example.org"\n', ["url", "https://"]),
]


@pytest.mark.parametrize("text, words", STRICT, ids=[t.splitlines()[-1][:30] for t, _ in STRICT])
def test_config_typos_and_bad_values_fail_in_one_line_naming_the_key(tmp_path, text, words):
    path = tmp_path / "ndfs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert all(w in str(caught.value) for w in words), str(caught.value)
    code, err = _main("--config", path, "ls")
    assert code == 1 and err.startswith("ndfs: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


def test_bad_values_given_in_python_are_config_errors_too():
    import ndfs

    with pytest.raises(ConfigError, match="timeout_s"):
        ndfs.remote("boss+https://api.example.org", timeout_s=float("nan"))
    with pytest.raises(ConfigError, match="did you mean 'workers'"):
        ndfs.remote("boss+https://api.example.org", worker=4)


def test_a_negative_cache_size_from_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFS_CACHE_MEMORY_BYTES", "-1")
    (tmp_path / "ndfs.toml").write_text('[remotes.a]\nkind = "local"\npath = "."\n')
    with pytest.raises(ConfigError, match="NDFS_CACHE_MEMORY_BYTES.*positive"):
        load_config(tmp_path / "ndfs.toml")


def test_a_local_store_that_does_not_exist_is_an_error_unless_create_is_set(tmp_path):
    from ndfs.stack import open_backend
    from ndfs.testing.mount import fuse_unavailable

    cfg = tmp_path / "ndfs.toml"
    cfg.write_text('[remotes.a]\nkind = "local"\npath = "nowhere"\n')
    code, err = _main("--config", cfg, "ls", "a")
    assert code == 1 and err.count("\n") == 1 and "nowhere does not exist" in err and "create = true" in err, err
    with pytest.raises(ConfigError, match="create = true"):
        open_backend(load_config(cfg).remote("a"))
    if fuse_unavailable() is None:  # the mount refuses it in one line, before any daemon starts
        (tmp_path / "mnt").mkdir()
        done = ndfs("--config", cfg, "mount", tmp_path / "mnt", check=False)
        assert done.returncode == 1 and "create = true" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "nowhere").exists()
    cfg.write_text('[remotes.a]\nkind = "local"\npath = "nowhere"\ncreate = true\n')
    assert _main("--config", cfg, "ls", "a") == (0, "")
    assert (tmp_path / "nowhere").is_dir()
    (tmp_path / "file").write_text("")
    cfg.write_text('[remotes.a]\nkind = "local"\npath = "file"\ncreate = true\n')
    with pytest.raises(ConfigError, match="not a directory"):
        open_backend(load_config(cfg).remote("a"))


def test_the_config_knows_every_setting_of_every_driver():
    import importlib
    import inspect

    from ndfs.core.config import DRIVER_OPTIONS, LAYER_OPTIONS, OPTION_RULES

    from ndfs.stack import HTTP_BACKENDS

    drivers = {**HTTP_BACKENDS, "synthetic": ("ndfs.stores.synthetic", "SyntheticBackend", None)}
    for kind, (module, cls, _) in drivers.items():
        params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
        settings = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY} - {"read_only"}
        assert set(DRIVER_OPTIONS[kind]) == settings, kind
    assert set(OPTION_RULES) == {k for keys in DRIVER_OPTIONS.values() for k in keys} | set(LAYER_OPTIONS)


def test_a_token_over_plain_http_to_another_host_is_warned_about_once(caplog):
    from ndfs.stores.boss import BossBackend

    caplog.set_level("WARNING", logger="ndfs.http")
    for url, token in [("http://192.0.2.7:8080", "tok-1"), ("http://192.0.2.7:8080", "tok-1"),
                       ("https://192.0.2.8", "tok-1"), ("http://127.0.0.1:9", "tok-1"), ("http://localhost:9", "tok-1"),
                       ("http://192.0.2.9", None)]:
        BossBackend(url, token).close()
    warned = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warned) == 1 and "192.0.2.7" in warned[0] and "tok-1" not in warned[0], warned
