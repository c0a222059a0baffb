import pytest

from ndfs.testing.reference import build_reference_store


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory):
    """The conformance reference project in a local store, shared by the whole session (read-mostly)."""
    path = tmp_path_factory.mktemp("reference") / "store"
    backend, oracle = build_reference_store(path)
    return path, backend, oracle
