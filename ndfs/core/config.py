"""Configuration: which remotes a mount shows, and the cache budgets.

Precedence: built-in defaults < ``ndfs.toml`` < ``NDFS_*`` environment < CLI
flags (applied by the CLI). The file is the one named explicitly, else
``$NDFS_CONFIG``, else ``./ndfs.toml``, else ``<user config dir>/ndfs/ndfs.toml``.
Relative paths in a file are relative to that file. Backends never read files
or the environment themselves: :func:`open_backend` hands them keyword arguments, and
:func:`open_store` stacks the cache and the journal on them for every entry point.

Strict: an unknown section or key is a ConfigError that names it and suggests
the nearest valid one; numbers must be finite, and positive (or at least 0
where 0 means something, such as ``retries``); ``token = ...`` is refused (a
token lives in an environment variable named by ``token_env``); a local
remote's ``path`` must exist when it is opened unless ``create = true``.

Example::

    [remotes.local]
    kind = "local"
    path = "demo-data"

    [cache]
    memory_bytes = 536870912
    disk_bytes = 4294967296
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ndfs.core.urls import mask_url
from ndfs.core.errors import ConfigError, NotFound

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REMOTE_KINDS = ("local", "boss", "dvid", "neurodata", "precomputed", "zarr", "synthetic")
#: remote kinds that read a dataset format at a path or URL (local, file://, http(s)://, gs://, s3://)
DATASET_KINDS = ("precomputed", "zarr")
DATASET_SCHEMES = ("file://", "http://", "https://", "gs://", "s3://")
SECTIONS = ("remotes", "cache", "mount", "write")
#: keys of every remote, and of the local ones and of the remote services
REMOTE_KEYS = {"local": ("kind", "path", "read_only", "create"), "http": ("kind", "url", "token_env", "read_only"),
               "dataset": ("kind", "url", "path", "read_only"), "synthetic": ("kind", "read_only")}
_DRIVER_COMMON = ("timeout_s", "connect_timeout_s", "retries", "backoff_s", "backoff_cap_s", "workers",
                  "max_request_bytes")
#: the settings each remote service's driver takes (its keyword arguments besides read_only)
DRIVER_OPTIONS = {
    "boss": _DRIVER_COMMON + ("max_meta_bytes",),
    "dvid": _DRIVER_COMMON + ("branch", "max_request_voxels", "ttl_s", "label_compression"),
    "neurodata": _DRIVER_COMMON + ("tokens", "api", "ttl_s"),
    "precomputed": ("layers", "max_scan_bytes"),
    "zarr": ("layers", "max_scan_bytes"),
    # computed voxels, no service (ndfs/stores/synthetic.py): the geometry it simulates
    "synthetic": ("shape", "chunk_shape", "offset", "voxel_size_nm", "levels", "project", "channels", "latency_ms"),
}
#: settings every remote takes besides its driver's: they go to the layers ndfs stacks on the driver
LAYER_OPTIONS = ("max_age_s",)
#: how each driver setting is checked: (type, smallest value allowed) or (type, the values allowed)
OPTION_RULES: dict[str, tuple] = {
    "timeout_s": (float, "positive"), "connect_timeout_s": (float, "positive"), "retries": (int, 0),
    "backoff_s": (float, 0), "backoff_cap_s": (float, 0), "workers": (int, 1), "max_request_bytes": (int, 1),
    "max_meta_bytes": (int, 64), "max_request_voxels": (int, 1), "ttl_s": (float, 0),
    "branch": (str, None), "label_compression": (str, ("auto", "lz4", "gzip", "none")),
    "tokens": (list, None), "api": (str, None), "max_age_s": (float, "max-age"),
    "layers": (list, None), "max_scan_bytes": (int, 1),
    "shape": (list, "zyx"), "chunk_shape": (list, "zyx"), "offset": (list, "zyx"), "voxel_size_nm": (list, "zyx"),
    "levels": (int, 1), "project": (str, None), "channels": (list, None), "latency_ms": (float, 0),
}
#: what is cached of an open DVID node is checked this often for changes made by other clients (seconds;
#: one small request per repo), when no max_age_s is configured
DVID_MAX_AGE_S = 5.0
#: what is cached of a BOSS or NeuroData channel ndfs can write (a token and not read_only) is fetched
#: again after this long (seconds), when no max_age_s is configured: these services tell nobody of changes
WRITABLE_MAX_AGE_S = 60.0


def remote_keys(kind: str) -> tuple[str, ...]:
    """The keys a remote of ``kind`` takes besides its driver's settings."""
    return REMOTE_KEYS["dataset"] if kind in DATASET_KINDS else REMOTE_KEYS.get(kind, REMOTE_KEYS["http"])


def user_config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "ndfs"


def user_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ndfs"


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ndfs"


@dataclass(frozen=True)
class RemoteConfig:
    """One remote: a name in the mount's root, a backend kind, and its settings."""

    name: str
    kind: str
    path: Path | None = None
    url: str | None = None
    token_env: str | None = None
    read_only: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    #: a local store: make its directory when it does not exist (else opening it is an error)
    create: bool = False

    def __repr__(self) -> str:  # never show a token, only where it comes from (user-info of a URL masked)
        where = self.path if self.path is not None else mask_url(self.url or "")
        return f"RemoteConfig({self.name!r}, kind={self.kind!r}, at={str(where)!r})"


@dataclass(frozen=True)
class CacheConfig:
    """Chunk cache settings (used by the cache layer)."""

    enabled: bool = True
    dir: Path = field(default_factory=lambda: user_cache_dir() / "chunks")
    memory_bytes: int = 512 * 2**20
    disk_bytes: int = 4 * 2**30
    prefetch: bool = True
    #: what is cached of a volume is at most this old (checked, or fetched again, see README "Consistency")
    #: for every remote without a max_age_s of its own; inf: kept until a write through ndfs drops it;
    #: None: each remote's default (:func:`max_age_of`)
    max_age_s: float | None = None


@dataclass(frozen=True)
class MountConfig:
    """Kernel-facing mount settings."""

    attr_timeout_s: float = 60.0
    entry_timeout_s: float = 60.0
    negative_timeout_s: float = 5.0
    #: largest ``cutout/<box>`` file a mount renders or accepts, bytes of voxels (EFBIG past it)
    max_cutout_bytes: int = 1 << 30
    #: largest ``ramon/<id>.json`` a mount accepts, bytes (EFBIG past it)
    max_ramon_bytes: int = 16 * 2**20


WRITE_BACK_MODES = ("sync", "async")


@dataclass(frozen=True)
class WriteConfig:
    """How writes through a mount reach the remote (see ndfs/journal/outbox.py)."""

    #: "sync": close() waits for the post; "async": close() returns once the data is durable locally
    write_back: str = "sync"
    outbox_dir: Path = field(default_factory=lambda: user_data_dir() / "outbox")
    #: longest wait between background retries of a failed post, seconds
    retry_max_s: float = 60.0


@dataclass(frozen=True)
class Config:
    remotes: dict[str, RemoteConfig]
    cache: CacheConfig = field(default_factory=CacheConfig)
    mount: MountConfig = field(default_factory=MountConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    source: Path | None = None

    def remote(self, name: str | None = None) -> RemoteConfig:
        if not self.remotes:
            raise NotFound("no remotes are configured")
        if name is None:
            return next(iter(self.remotes.values()))
        try:
            return self.remotes[name]
        except KeyError:
            raise NotFound(f"no remote named {name!r} (configured: {', '.join(self.remotes)})") from None


def default_config() -> Config:
    return Config(remotes={"local": RemoteConfig("local", "local", path=user_data_dir() / "store", create=True)})


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p.resolve()
    env = os.environ.get("NDFS_CONFIG")
    if env:
        return find_config_file(env)
    for candidate in (Path.cwd() / "ndfs.toml", user_config_dir() / "ndfs.toml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _section(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _nearest(key, valid) -> str:
    """'; did you mean X?' for the valid name nearest to key, else the list of valid names."""
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(sorted(valid))})"


def _known(table: dict, valid, where: str, what: str = "key", others=()) -> None:
    """ConfigError naming the first key of table that is not one of valid, with the nearest one of valid
    and ``others`` (valid names handled elsewhere)."""
    for key in table:
        if key not in valid:
            if what == "key" and key == "token":
                raise ConfigError(f"{where}: token = ... is refused: a token in a file is copied with it into "
                                  "backups and shared configurations; put it in an environment variable and name "
                                  "that with token_env = \"VAR\"")
            raise ConfigError(f"{where}: unknown {what} {key!r}{_nearest(key, tuple(valid) + tuple(others))}")


def _typed(table: dict, key: str, kind, default, where: str):
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ConfigError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _number(table: dict, key: str, kind, default, where: str, minimum=0):
    """A number setting: of kind (int or float), finite, at least ``minimum`` ("positive": above 0)."""
    value = _typed(table, key, kind, default, where)
    if key not in table or value is None:
        return value
    return check_number(key, value, minimum, where)


def check_number(key: str, value, minimum, where: str):
    """value if finite and at least minimum ("positive": above 0); else a ConfigError naming key. Pure."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{where}: {key} must be a number, not NaN")
    if not -math.inf < value < math.inf:
        raise ConfigError(f"{where}: {key} must be finite, not {value!r}")
    if minimum == "positive" and not value > 0:
        raise ConfigError(f"{where}: {key} must be positive, not {value!r}")
    if minimum != "positive" and value < minimum:
        raise ConfigError(f"{where}: {key} must be at least {minimum}, not {value!r}")
    return value


def check_max_age(value, where: str, key: str = "max_age_s") -> float:
    """A max age: a positive number of seconds, or inf (never expire). Pure."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not value > 0:
        raise ConfigError(f"{where}: {key} must be a positive number of seconds (or inf: kept until a write "
                          f"through ndfs), not {value!r}")
    return float(value)


def check_remote_options(kind: str, options: dict, where: str) -> dict:
    """The driver and layer settings of a remote of ``kind``, checked: known keys (nearest valid one
    suggested), types, finite numbers in range; returns them with ints given for floats made floats. Pure."""
    _known(options, DRIVER_OPTIONS.get(kind, ()) + LAYER_OPTIONS, where, others=remote_keys(kind))
    out = {}
    for key, value in options.items():
        kind_, rule = OPTION_RULES[key]
        if kind_ is list and isinstance(value, tuple):
            value = list(value)
        value = _typed({key: value}, key, kind_, None, where)
        if rule == "max-age":
            value = check_max_age(value, where, key)
        elif kind_ in (int, float):
            check_number(key, value, rule, where)
        elif isinstance(rule, tuple) and value not in rule:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(rule)}, not {value!r}")
        elif kind_ is str and not value:
            raise ConfigError(f"{where}: {key} must not be empty")
        elif kind_ is list and rule == "zyx":
            if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}: {key} must be three numbers [z, y, x], got {value!r}")
            for v in value:
                check_number(key, v, -math.inf if key == "offset" else "positive", where)
        elif kind_ is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
        out[key] = value
    return out


def parse_config(data: dict[str, Any], base_dir: Path, where: str = "config") -> Config:
    """Build a Config from parsed TOML; relative paths resolve against base_dir."""
    _known(data, SECTIONS, where, "section")
    remotes: dict[str, RemoteConfig] = {}
    for name, table in _section(data, "remotes", where).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [remotes.{name}] must be a table")
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{where}: {name!r} is not a usable remote name")
        kind = table.get("kind")
        if kind not in REMOTE_KINDS:
            raise ConfigError(f"{where}: remote {name!r} has kind {kind!r}; known kinds: {', '.join(REMOTE_KINDS)}")
        here = f"{where} [remotes.{name}]"
        keys = remote_keys(kind)
        options = check_remote_options(kind, {k: v for k, v in table.items() if k not in keys}, here)
        path = _typed(table, "path", str, None, here)
        url = _typed(table, "url", str, None, here)
        if kind == "local" and path is None:
            raise ConfigError(f"{here}: a local remote needs path = \"DIR\"")
        if kind in DATASET_KINDS:
            if (url is None) == (path is None):
                raise ConfigError(f"{here}: a {kind} remote needs either path = \"DIR\" or url = \"https://HOST/...\" "
                                  "(also file://, gs://, s3://), not both")
            if url is not None and not url.startswith(DATASET_SCHEMES):
                raise ConfigError(f"{here}: url must start with {', '.join(DATASET_SCHEMES)}, not {mask_url(url)!r}")
        elif kind not in ("local", "synthetic") and (url is None or not url.startswith(("http://", "https://"))):
            raise ConfigError(f"{here}: a {kind} remote needs url = \"https://HOST\" (or http://), "
                              f"not {mask_url(url) if url else 'none'!r}")
        token_env = _typed(table, "token_env", str, None, here)
        if token_env is not None and not token_env:
            raise ConfigError(f"{here}: token_env must name an environment variable")
        remotes[name] = RemoteConfig(
            name=name, kind=kind, url=url,
            path=(base_dir / Path(path).expanduser()).resolve() if path is not None else None,
            token_env=token_env,
            read_only=_typed(table, "read_only", bool, False, here),
            options=options,
            create=_typed(table, "create", bool, False, here),
        )
    c = _section(data, "cache", where)
    here = f"{where} [cache]"
    _known(c, ("enabled", "dir", "memory_bytes", "disk_bytes", "prefetch", "max_age_s"), here)
    defaults = CacheConfig()
    cache_dir = _typed(c, "dir", str, None, here)
    cache = CacheConfig(
        enabled=_typed(c, "enabled", bool, defaults.enabled, here),
        dir=(base_dir / Path(cache_dir).expanduser()).resolve() if cache_dir else defaults.dir,
        memory_bytes=_number(c, "memory_bytes", int, defaults.memory_bytes, here, "positive"),
        disk_bytes=_number(c, "disk_bytes", int, defaults.disk_bytes, here, "positive"),
        prefetch=_typed(c, "prefetch", bool, defaults.prefetch, here),
        max_age_s=_typed(c, "max_age_s", float, defaults.max_age_s, here),
    )
    if cache.max_age_s is not None:
        check_max_age(cache.max_age_s, here)
    m = _section(data, "mount", where)
    here = f"{where} [mount]"
    _known(m, ("attr_timeout_s", "entry_timeout_s", "negative_timeout_s", "max_cutout_bytes", "max_ramon_bytes"),
           here)
    md = MountConfig()
    mount = MountConfig(
        attr_timeout_s=_number(m, "attr_timeout_s", float, md.attr_timeout_s, here),
        entry_timeout_s=_number(m, "entry_timeout_s", float, md.entry_timeout_s, here),
        negative_timeout_s=_number(m, "negative_timeout_s", float, md.negative_timeout_s, here),
        max_cutout_bytes=_number(m, "max_cutout_bytes", int, md.max_cutout_bytes, here, "positive"),
        max_ramon_bytes=_number(m, "max_ramon_bytes", int, md.max_ramon_bytes, here, "positive"),
    )
    w = _section(data, "write", where)
    here = f"{where} [write]"
    _known(w, ("write_back", "outbox_dir", "retry_max_s"), here)
    wd = WriteConfig()
    mode = _typed(w, "write_back", str, wd.write_back, here)
    if mode not in WRITE_BACK_MODES:
        raise ConfigError(f"{here}: write_back must be one of {', '.join(WRITE_BACK_MODES)}, got {mode!r}")
    outbox_dir = _typed(w, "outbox_dir", str, None, here)
    write = WriteConfig(
        write_back=mode,
        outbox_dir=(base_dir / Path(outbox_dir).expanduser()).resolve() if outbox_dir else wd.outbox_dir,
        retry_max_s=_number(w, "retry_max_s", float, wd.retry_max_s, here, "positive"),
    )
    return Config(remotes=remotes or default_config().remotes, cache=cache, mount=mount, write=write)


#: how many threads one process's tensorstore reads may use to decode and copy chunks; batch worker
#: processes set it to 1 (each worker is one of the cores already), see ndfs.tools.batch
READ_THREADS_ENV = "NDFS_READ_THREADS"


def read_threads(default: int) -> int:
    """``NDFS_READ_THREADS`` when set (a positive whole number), else ``default``."""
    text = os.environ.get(READ_THREADS_ENV, "").strip()
    if not text:
        return default
    try:
        return check_number(READ_THREADS_ENV, int(text), "positive", "environment")
    except ValueError:
        raise ConfigError(f"{READ_THREADS_ENV} must be a positive whole number, not {text[:40]!r}") from None


def _apply_env(cfg: Config) -> Config:
    env = os.environ
    cache = cfg.cache
    if env.get("NDFS_CACHE_DIR"):
        cache = replace(cache, dir=Path(env["NDFS_CACHE_DIR"]).expanduser().resolve())
    for var, key in (("NDFS_CACHE_MEMORY_BYTES", "memory_bytes"), ("NDFS_CACHE_DISK_BYTES", "disk_bytes")):
        if env.get(var):
            try:
                value = int(env[var])
            except ValueError:
                raise ConfigError(f"{var} must be a whole number of bytes, not {env[var][:40]!r}") from None
            cache = replace(cache, **{key: check_number(var, value, "positive", "environment")})
    if env.get("NDFS_NO_CACHE"):
        cache = replace(cache, enabled=False)
    write = cfg.write
    if env.get("NDFS_OUTBOX_DIR"):
        write = replace(write, outbox_dir=Path(env["NDFS_OUTBOX_DIR"]).expanduser().resolve())
    if env.get("NDFS_WRITE_BACK"):
        if env["NDFS_WRITE_BACK"] not in WRITE_BACK_MODES:
            raise ConfigError(f"NDFS_WRITE_BACK must be one of {', '.join(WRITE_BACK_MODES)}")
        write = replace(write, write_back=env["NDFS_WRITE_BACK"])
    return replace(cfg, cache=cache, write=write)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load the configuration (see module docstring for where it is looked for)."""
    found = find_config_file(path)
    if found is None:
        return _apply_env(default_config())
    try:
        with open(found, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{found.name}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{found.name}: not usable TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {found}: {exc}") from exc
    cfg = parse_config(data, found.parent, where=found.name)
    return _apply_env(replace(cfg, source=found))


def driver_options(rc: RemoteConfig) -> dict:
    """A remote's settings for its driver: its options without those of the layers above it."""
    return {k: v for k, v in rc.options.items() if k not in LAYER_OPTIONS}


def max_age_of(rc: RemoteConfig, cache: CacheConfig, writable: bool) -> float | None:
    """How old what is cached of the remote may be, in seconds (None: kept until a write through ndfs):
    the remote's own ``max_age_s``, else ``[cache] max_age_s``, else its kind's default: DVID
    ``DVID_MAX_AGE_S`` (open nodes are checked that often; locked ones are kept for good), the BOSS and
    NeuroData ``WRITABLE_MAX_AGE_S`` for a remote ndfs can write (``writable``: a token and not read_only),
    None otherwise (read-only and anonymous data, the local store, and the precomputed and zarr remotes:
    datasets there are mostly published data, so they are kept until written unless a ``max_age_s`` asks
    for their metadata file to be checked that often). ``inf`` means None. Pure."""
    value = rc.options.get("max_age_s", cache.max_age_s)
    if value is None:
        if rc.kind == "dvid":
            value = DVID_MAX_AGE_S
        elif rc.kind in ("boss", "neurodata") and writable:
            value = WRITABLE_MAX_AGE_S
    return None if value is None or value == math.inf else float(value)


def remote_target(rc: RemoteConfig) -> str:
    """Where a remote points, as "kind:url-or-path" (outbox entries are only ever posted back there);
    any user-info of the URL (a token) is masked, since targets are shown and stored."""
    if rc.kind == "synthetic":  # no address: the geometry names it (two differently shaped ones share nothing)
        return "synthetic:" + ",".join(f"{k}={rc.options[k]}" for k in sorted(rc.options))
    return f"{rc.kind}:{rc.path if rc.path is not None else mask_url(rc.url or '')}"


def check_local_store(remote: RemoteConfig) -> None:
    """A local remote's directory must exist (made when the remote says create = true); ConfigError else."""
    if remote.kind != "local":
        return
    path = remote.path
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"remote {remote.name!r}: its path {path} is not a directory")
    if not remote.create:
        raise ConfigError(f"remote {remote.name!r}: the store directory {path} does not exist; create it, or set "
                          f"create = true in [remotes.{remote.name}] to have ndfs make it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"remote {remote.name!r}: cannot create the store directory {path}: "
                          f"{exc.strerror or exc}") from None


