"""``ndfs serve``: publish a store (or any configured remote) over a datastore protocol.

:func:`add_serve_parser` adds the subcommand to the main parser; the servers
and their dependencies are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from pathlib import Path

from ndfs.core.units import parse_size, positive_seconds, positive_size
from ndfs.core.errors import NdfsError
from ndfs.serve.limits import DEFAULT_REQUEST_MEMORY, DEFAULT_SCAN_BYTES, Limits

PROTOCOLS = ("boss", "dvid", "neurodata", "precomputed", "zarr")


def add_serve_parser(subparsers) -> None:
    """Register ``ndfs serve`` on the main parser's subparsers."""
    s = subparsers.add_parser(
        "serve", help="serve a store over the BOSS, DVID or NeuroData protocol (for intern, dvidtools, ndio, "
                      "ndfs remotes, tests), or to viewers as neuroglancer precomputed or OME-Zarr",
        description="Serve a local store (or a configured remote) over a datastore's HTTP protocol. "
                    "BOSS: folders collection/experiment/channel of the store become the BOSS resources "
                    "of the same names. DVID: each top-level folder is a repo (alias = folder name) whose "
                    "volumes are data instances (level i of a volume: instance <name>_i); version nodes, "
                    "locks, key-value data and instances created by clients are kept in memory only and "
                    "are lost when the server stops. NeuroData (ndio): each top-level folder is a token whose "
                    "volumes are its channels, with RAMON objects of annotation channels. Precomputed: each volume "
                    "is a neuroglancer layer at its path (info, chunks, meshes of labels, segment properties). Zarr: "
                    "each volume is an OME-Zarr image at its path (0.4 on zarr v2 and 0.5 on zarr v3 side by side), "
                    "with the annotation channels of its folder under labels/. The viewer protocols are read-only "
                    "and answer browsers (CORS, ranges). Stop with Ctrl-C.")
    s.add_argument("--protocol", choices=PROTOCOLS, required=True, help="protocol to speak")
    source = s.add_mutually_exclusive_group()
    source.add_argument("--store", metavar="DIR", help="local store directory to serve")
    source.add_argument("--remote", metavar="NAME", help="configured remote to serve (default: the first)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    s.add_argument("--token", action="append", default=[], metavar="T",
                   help="accept this token (repeatable); without any, every request is accepted")
    s.add_argument("--token-env", action="append", default=[], metavar="VAR",
                   help="accept the token held by this environment variable (repeatable); unlike --token, "
                        "it does not show in the process list")
    s.add_argument("--read-only", action="store_true", help="refuse writes and channel creation")
    s.add_argument("--threads", type=int, default=16, help="worker threads (default 16)")
    s.add_argument("--cache-memory", type=parse_size, default=64 * 2**20, metavar="SIZE",
                   help="memory for decoded chunks of the served store, kept across requests (default 64M; "
                        "0 keeps none); on top of --max-request-memory")
    b = s.add_argument_group(
        "bounds", "What one client, or many, may take of the server (see the README's Security section). "
                  "Connections past a bound are answered 503, requests that run out of time 408.")
    d = Limits()
    b.add_argument("--max-connections", type=_count, default=d.max_connections, metavar="N",
                   help=f"open connections at once (default {d.max_connections}); past it a new connection "
                        "closes the one that has waited longest without being served, or gets 503 if all are")
    b.add_argument("--max-connections-per-address", type=_count, default=d.max_connections_per_address,
                   metavar="N", help="open connections from one client address "
                                     f"(default {d.max_connections_per_address})")
    b.add_argument("--header-timeout", type=positive_seconds, default=d.header_timeout_s, metavar="S",
                   help="a request's headers must arrive within S seconds of its first byte, "
                        f"however slowly they drip (default {d.header_timeout_s:g})")
    b.add_argument("--body-timeout", type=positive_seconds, default=d.body_timeout_s, metavar="S",
                   help="a request's body must arrive within S seconds after its headers, plus one second per "
                        f"--body-min-rate bytes it declares (default {d.body_timeout_s:g})")
    b.add_argument("--body-min-rate", type=positive_size, default=int(d.body_min_rate), metavar="SIZE",
                   help=f"bytes per second a body is allowed at least (default {int(d.body_min_rate) // 1024}K)")
    b.add_argument("--idle-timeout", type=positive_seconds, default=d.idle_timeout_s, metavar="S",
                   help="close a connection silent for S seconds, or that stops reading its answer for as long "
                        f"(default {d.idle_timeout_s:g})")
    b.add_argument("--max-request-memory", type=positive_size, default=DEFAULT_REQUEST_MEMORY, metavar="SIZE",
                   help="memory all large requests together may hold (voxels, answers being built); requests "
                        "wait for it, one that needs more than all of it is refused (default "
                        f"{DEFAULT_REQUEST_MEMORY >> 30}G)")
    b.add_argument("--max-scan-bytes", type=positive_size, default=DEFAULT_SCAN_BYTES, metavar="SIZE",
                   help="voxel bytes one request may scan: label queries, bounding boxes, scaled reads "
                        f"(default {DEFAULT_SCAN_BYTES >> 30}G)")
    b.add_argument("--max-cutout-bytes", type=positive_size, default=None, metavar="SIZE",
                   help="largest cutout one request may ask for (default: the protocol's own: BOSS 520 MiB, "
                        "NeuroData 512 MiB, DVID 3 GiB)")
    s.add_argument("--mesh-level", type=int, default=None, metavar="N",
                   help="precomputed: make meshes at level N (default: the finest level whose labels take at most "
                        "64 MiB)")
    s.add_argument("--latency-ms", type=float, default=0.0, help="added delay per request, ms (testing)")
    s.add_argument("--bandwidth-mbps", type=float, default=None,
                   help="cap on response bytes, megabits/s over all connections (testing)")
    s.add_argument("--fault-rate", type=float, default=0.0,
                   help="fraction of requests answered 503 or dropped (testing)")
    s.add_argument("--seed", type=int, default=0, help="seed of the fault injection (default 0)")
    s.set_defaults(func=cmd_serve)


def _backend(args):
    """The served store, layered as every entry point layers it (ndfs.stack.open_store)."""
    from dataclasses import replace

    from ndfs.core.config import RemoteConfig, load_config

    from ndfs.stack import open_store

    cfg = load_config(args.config)
    if args.store:
        if not Path(args.store).is_dir():
            raise NdfsError(f"store {args.store} is not a directory")
        path = Path(args.store).resolve()
        remote, what = RemoteConfig("local", "local", path=path, read_only=args.read_only), str(path)
    else:
        remote = cfg.remote(args.remote)
        remote, what = replace(remote, read_only=remote.read_only or args.read_only), f"remote {remote.name!r}"
    cache = cfg.cache if args.cache_memory is None else replace(cfg.cache, memory_bytes=args.cache_memory)
    return open_store(cfg, remote, cache=cache), what


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _return_freed_memory() -> None:
    """Have glibc give large freed buffers back to the system at once (mmap from 1 MiB, two arenas, trim
    past 32 MiB), so that the server's RSS follows what its requests hold instead of keeping every thread's
    high-water mark (measured: 8 concurrent 32 MiB DVID reads grew RSS 270 MiB by default, 44 MiB so).
    Elsewhere than glibc there is nothing to set."""
    import ctypes
    import logging

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        logging.getLogger("ndfs.serve").debug("no mallopt (%s): the allocator keeps its defaults", exc)
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    for param, value in ((m_mmap_threshold, 1 << 20), (m_trim_threshold, 32 << 20), (m_arena_max, 2)):
        mallopt(ctypes.c_int(param), ctypes.c_int(value))


def cmd_serve(args) -> int:
    from ndfs.serve.common import ServeOptions, WsgiServer
    from ndfs.serve.limits import MemoryBudget

    if args.threads < 1:
        raise NdfsError("--threads must be at least 1")
    _return_freed_memory()
    limits = Limits(max_connections=args.max_connections,
                    max_connections_per_address=min(args.max_connections_per_address, args.max_connections),
                    idle_timeout_s=args.idle_timeout, header_timeout_s=args.header_timeout,
                    body_timeout_s=args.body_timeout, body_min_rate=args.body_min_rate)
    # the large requests leave four worker threads to the small ones
    work = {"budget": MemoryBudget(args.max_request_memory, slots=max(1, args.threads - 4)),
            "max_scan_bytes": args.max_scan_bytes}
    if args.max_cutout_bytes is not None:
        work["max_cutout_bytes"] = args.max_cutout_bytes
    options = ServeOptions(latency_s=args.latency_ms / 1000.0,
                           bandwidth_bps=args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None,
                           fault_rate=args.fault_rate, seed=args.seed)
    for var in args.token_env:
        if not os.environ.get(var):
            raise NdfsError(f"--token-env {var}: the environment variable {var} is not set")
        args.token.append(os.environ[var])
    backend, what = _backend(args)
    if args.protocol == "boss":
        from ndfs.serve.boss import BossApp

        app = BossApp(backend, tokens=args.token, **work)
    elif args.protocol == "dvid":
        from ndfs.serve.dvid import DvidApp

        app = DvidApp(backend, tokens=args.token, read_only=args.read_only, **work)
    elif args.protocol == "neurodata":
        from ndfs.serve.neurodata import NeuroDataApp

        app = NeuroDataApp(backend, tokens=args.token, **work)
    elif args.protocol == "precomputed":
        from ndfs.serve.precomputed import PrecomputedApp

        _viewer_meshes(args)
        app = PrecomputedApp(backend, tokens=args.token, budget=work["budget"], max_scan_bytes=args.max_scan_bytes,
                             mesh_level_index=args.mesh_level)
    elif args.protocol == "zarr":
        from ndfs.serve.zarr import ZarrApp

        app = ZarrApp(backend, tokens=args.token, budget=work["budget"])
    else:  # pragma: no cover - argparse limits the choices
        raise NdfsError(f"unknown protocol {args.protocol}")
    server = WsgiServer(app, args.host, args.port, options=options, threads=args.threads, limits=limits)
    if not args.token and not _loopback(args.host):
        what_they_can = "read" if args.protocol in ("precomputed", "zarr") else "read and write"
        print(f"ndfs serve: warning: no --token given, so anyone who reaches {args.host} can {what_they_can} "
              "this store", file=sys.stderr)
    api = {"dvid": "/api/", "neurodata": "/ocp/ca/", "precomputed": "/", "zarr": "/"}.get(args.protocol, "/v1/")
    signal.signal(signal.SIGTERM, lambda *_: server.stop())  # before the start line: a client may stop it at once
    print(f"ndfs serve: {args.protocol} protocol for {what} at {server.url}{api} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        backend.close()
    return 0


def _viewer_meshes(args) -> None:
    """Meshes made by the precomputed server go to the configuration's mesh disk tier, as the mount's do."""
    from ndfs.core.config import load_config
    from ndfs.tools.mesh import configure_mesh_cache

    if args.mesh_level is not None and args.mesh_level < 0:
        raise NdfsError("--mesh-level must be a level number (0 = full resolution)")
    configure_mesh_cache(load_config(args.config).cache)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
