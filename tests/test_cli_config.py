"""The ndfs command line (without a mount) and the configuration file."""

import json
import os

import pytest
import tifffile
import numpy as np

from ndfs import __version__
from ndfs.config import load_config, parse_config
from ndfs.errors import ConfigError
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
    assert ndfs("--config", cfg, "ls", "here/demo").stdout.split() == ["cells", "em"]
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
    ({"cache": {"max_age_s": float("inf")}}, "positive number of seconds"),
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
    assert "chunks are fetched again after 30 s" in ndfs("--config", config, "cache", "info").stdout
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
    from ndfs.cli import human_size, parse_size

    assert human_size(size) == text
    if size is not None and "." not in text:
        assert parse_size(text.replace(" ", "")) == size


def test_outbox_lists_a_table_and_json_with_json(tmp_path):
    from ndfs.geometry import Box
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
