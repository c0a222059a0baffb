"""Every KeyValueStore (DVID key-value instances), raw, read-only and behind the cache and the outbox,
against the files suite."""

import pytest
import requests

from ndfs.testing.conformance_files import *  # noqa: F401,F403


@pytest.fixture(scope="module")
def kv_instance(reference_servers):
    """A key-value instance ``conformance_kv`` in the reference repo (the DVID server keeps it in memory)."""
    url = reference_servers["dvid"].url
    repos = requests.get(f"{url}/api/repos/info", timeout=30).json()
    (root,) = [uuid for uuid, repo in repos.items() if repo["Alias"] == "conf"]
    done = requests.post(f"{url}/api/repo/{root}/instance", json={"typename": "keyvalue", "dataname": "conformance_kv"},
                         timeout=30)
    assert done.status_code == 200, done.text
    return ("conf", "conformance_kv")


@pytest.fixture(params=["dvid-raw", "dvid-read-only", "dvid-cached", "dvid-journaled"])
def files_case(request, reference_case, kv_instance):
    case = reference_case(request.param)
    return case.backend, kv_instance, case.writable
