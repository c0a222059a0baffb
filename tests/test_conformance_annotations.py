"""Every AnnotationStore, raw, read-only and behind the cache and the outbox, against the annotation suite.

The objects of precomputed and zarr segmentations come from their metadata and cannot be changed through
ndfs: those stores run as read-only cases."""

import pytest

from ndfs.testing.conformance_annotations import *  # noqa: F401,F403

CASES = ["local-raw", "local-read-only", "local-cached", "boss-raw", "boss-read-only", "boss-journaled",
         "dvid-raw", "dvid-journaled", "neurodata-raw", "neurodata-journaled",
         "precomputed-read-only", "precomputed-http", "zarr-read-only", "zarr-http"]


@pytest.fixture(params=CASES)
def conformance_case(request, reference_case):
    return reference_case(request.param)
