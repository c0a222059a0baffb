"""Every AdminStore (the local store), raw, read-only and behind the cache, against the admin suite."""

import pytest

from ndfs.testing.conformance_admin import *  # noqa: F401,F403


@pytest.fixture(params=["local-raw", "local-read-only", "local-cached"])
def conformance_case(request, reference_case):
    return reference_case(request.param)
