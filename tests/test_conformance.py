"""Every backend, raw and cached, against the shipped conformance suite."""

import pytest

from ndfs.stores.local import LocalBackend
from ndfs.testing.conformance import *  # noqa: F401,F403
from ndfs.testing.conformance import Case


@pytest.fixture(scope="module")
def boss_reference_server(reference_store):
    """`ndfs serve --protocol boss` over the reference store's parent: collection = the store's folder name."""
    from ndfs.serve.boss import BossApp
    from ndfs.serve.common import WsgiServer

    path = reference_store[0]
    with WsgiServer(BossApp(LocalBackend(path.parent))) as server:
        yield server, path.name


@pytest.fixture(params=["local-raw", "local-read-only", "local-cached-memory", "local-cached-disk-tiny",
                        "boss-raw", "boss-cached", "boss-journaled",
                        "precomputed-raw", "precomputed-read-only", "precomputed-cached", "precomputed-journaled",
                        "precomputed-http", "zarr-raw", "zarr-journaled", "zarr-v3", "zarr-http",
                        "synthetic-raw", "synthetic-cached"])
def conformance_case(request, reference_store, reference_case, tmp_path):
    if request.param == "boss-journaled" or request.param.startswith(("precomputed-", "zarr-")):
        return reference_case(request.param)
    path, _, oracle = reference_store
    if request.param.startswith("synthetic-"):  # read-only, voxels computed in the reference geometry
        from ndfs.testing.cases import synthetic_case

        closers: list = []
        case = synthetic_case(oracle, request.param.endswith("cached"), closers)
        for backend in closers:
            request.addfinalizer(backend.close)
        return case
    if request.param.startswith("local-cached"):
        from ndfs.cache import CachedBackend

        tiny = request.param.endswith("tiny")  # budgets smaller than one level: eviction on every read
        backend = CachedBackend(LocalBackend(path), namespace=f"local:{path}",
                                memory_bytes=20_000 if tiny else 64 * 2**20,
                                disk_dir=tmp_path / "cache" if tiny else None, disk_bytes=200_000)
        request.addfinalizer(backend.close)
        return Case(backend=backend, oracle=oracle)
    if request.param.startswith("boss-"):
        from ndfs.stores.boss import BossBackend

        server, collection = request.getfixturevalue("boss_reference_server")
        backend = BossBackend(server.url, "x")
        request.addfinalizer(backend.close)
        if request.param == "boss-cached":
            from ndfs.cache import CachedBackend

            backend = CachedBackend(backend, namespace=f"boss:{server.url}", memory_bytes=64 * 2**20)
            request.addfinalizer(backend.close)
        return Case(backend=backend, oracle=oracle, prefix=(collection,), zeros_below_start=True)
    if request.param == "local-raw":
        return Case(backend=LocalBackend(path), oracle=oracle)
    if request.param == "local-read-only":
        return Case(backend=LocalBackend(path, read_only=True), oracle=oracle, writable=False)
    raise AssertionError(request.param)
