import contextlib
import os

import pytest

from ndfs.core.config import user_cache_dir
from ndfs.testing.reference import build_reference_store

# the ndio test venv takes a while to build, so it is the one thing kept in the user's cache across runs
os.environ.setdefault("NDFS_TEST_VENVS", str(user_cache_dir() / "test-venvs"))


@contextlib.contextmanager
def _environ(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@pytest.fixture(scope="session", autouse=True)
def private_outbox(tmp_path_factory):
    """Mounts started by tests keep their outbox (and write spool) in a temporary directory, not the user's."""
    with _environ("NDFS_OUTBOX_DIR", str(tmp_path_factory.mktemp("outbox"))) as path:
        yield path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Mounts and remotes without a [cache] dir keep chunks and meshes in a temporary directory, not the user's."""
    with _environ("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache"))) as path:
        yield path


@pytest.fixture(scope="module", autouse=True)
def no_kept_dask_cluster():
    """A LocalCluster that map_blocks kept for its next call is closed after the module that made it, so
    its idle workers do not run beside the rest of the suite."""
    yield
    import sys

    batch = sys.modules.get("ndfs.tools.batch")
    if batch is not None:
        batch._KeptCluster.close_kept()


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory):
    """The conformance reference project in a local store, shared by the whole session (read-mostly)."""
    path = tmp_path_factory.mktemp("reference") / "store"
    backend, oracle = build_reference_store(path)
    return path, backend, oracle


@pytest.fixture(scope="session")
def reference_servers(reference_store):
    """BOSS, DVID and NeuroData servers on 127.0.0.1 over the reference store, for the conformance suites."""
    from ndfs.testing.cases import reference_servers as servers

    with servers(reference_store[0]) as running:
        yield running


@pytest.fixture(scope="session")
def dataset_reference_servers(reference_store, tmp_path_factory):
    """The reference project as CloudVolume and ome-zarr-py wrote it (ndfs.testing.third_party), and a
    Range-capable static HTTP server on 127.0.0.1 over it: (DatasetReferences, StaticServer)."""
    from ndfs.testing.http_static import StaticServer
    from ndfs.testing.third_party import dataset_references

    refs = dataset_references(tmp_path_factory.mktemp("datasets"), reference_store[2])
    with StaticServer(refs.root) as server:
        yield refs, server


@pytest.fixture
def reference_case(request, reference_store, tmp_path):
    """make(name) -> the conformance Case of that name (ndfs.testing.cases), closed after the test."""
    from ndfs.testing.cases import make_case

    path, _, oracle = reference_store
    closers: list = []

    def make(name: str):
        from ndfs.testing.cases import DATASET_KINDS

        if name.split("-")[0] in DATASET_KINDS:
            servers = {"datasets": request.getfixturevalue("dataset_reference_servers")}
        else:
            servers = {} if name.startswith("local-") else request.getfixturevalue("reference_servers")
        return make_case(name, path, oracle, servers, tmp_path, closers)

    yield make
    for backend in closers:
        backend.close()
