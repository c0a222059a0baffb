"""Every AdminStore (the local store, precomputed and zarr remotes), raw, read-only and behind the cache, against
the admin suite."""

import pytest

from ndfs.testing.conformance_admin import *  # noqa: F401,F403


@pytest.fixture(params=["local-raw", "local-read-only", "local-cached", "precomputed-raw", "precomputed-read-only",
                        "precomputed-journaled", "zarr-raw", "zarr-journaled", "zarr-http"])
def conformance_case(request, reference_case):
    return reference_case(request.param)
