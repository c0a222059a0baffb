import os

import pytest

from ndfs.testing.reference import build_reference_store


@pytest.fixture(scope="session", autouse=True)
def private_outbox(tmp_path_factory):
    """Mounts started by tests keep their outbox (and write spool) in a temporary directory, not the user's."""
    path = tmp_path_factory.mktemp("outbox")
    old = os.environ.get("NDFS_OUTBOX_DIR")
    os.environ["NDFS_OUTBOX_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("NDFS_OUTBOX_DIR", None)
    else:
        os.environ["NDFS_OUTBOX_DIR"] = old


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory):
    """The conformance reference project in a local store, shared by the whole session (read-mostly)."""
    path = tmp_path_factory.mktemp("reference") / "store"
    backend, oracle = build_reference_store(path)
    return path, backend, oracle
