"""Every AnnotationStore, raw, read-only and behind the cache and the outbox, against the annotation suite."""

import pytest

from ndfs.testing.conformance_annotations import *  # noqa: F401,F403

CASES = ["local-raw", "local-read-only", "local-cached", "boss-raw", "boss-read-only", "boss-journaled",
         "dvid-raw", "dvid-journaled", "neurodata-raw", "neurodata-journaled"]


@pytest.fixture(params=CASES)
def conformance_case(request, reference_case):
    return reference_case(request.param)
