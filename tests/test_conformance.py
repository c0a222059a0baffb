"""Every backend, raw and cached, against the shipped conformance suite."""

import pytest

from ndfs.backends.local import LocalBackend
from ndfs.testing.conformance import *  # noqa: F401,F403
from ndfs.testing.conformance import Case


@pytest.fixture(params=["local-raw", "local-read-only"])
def conformance_case(request, reference_store):
    path, _, oracle = reference_store
    if request.param == "local-raw":
        return Case(backend=LocalBackend(path), oracle=oracle)
    if request.param == "local-read-only":
        return Case(backend=LocalBackend(path, read_only=True), oracle=oracle, writable=False)
    raise AssertionError(request.param)
