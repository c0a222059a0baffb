"""intern's own BOSS integration tests, unmodified, against `ndfs serve --protocol boss`.

intern 1.4.2 ships integration tests (``intern/remote/boss/tests/int_test_*.py``)
that its authors run against a real BOSS through a ``test.cfg`` file. Here the
volume, metadata and project modules run against a served empty store: the
sdist is fetched with pip on first use and the three modules are kept in the
user's test cache (``NDFS_TEST_VENVS``, as the ndio environments are), never
in this repository. What is vendored is only the list below of tests not run,
each with its reason (also in the README's BOSS section). Without network on
the first run the test is skipped and says why.

The modules run in a child pytest with ``test.cfg`` pointing at the server
(and the one-line argument shim of ``SHIM`` below, for a stale constructor call);
every test must pass, except those intern itself marks ``unittest.skip``
("currently indexing disabled") and the ones deselected here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ndfs.testing.serve import served

INTERN = "intern==1.4.2"
MODULES = ("int_test_volume_v1.py", "int_test_metadata_v1.py", "int_test_project_v1.py")
#: test ids not run, and why (they need what ndfs does not offer by design, or what production no longer does)
NOT_RUN = {
    "int_test_project_v1.py::ProjectServiceTest_v1::test_create_annotation_channel":
        "makes a uint8 annotation channel; ndfs's annotation channels hold uint64 ids (uint32 in the local store)",
    "int_test_project_v1.py::ProjectServiceTest_v1::test_update_channel":
        "updates that uint8 annotation channel (channel updates are tested in test_boss.py with a uint64 one)",
    "int_test_project_v1.py::ProjectServiceTest_v1::test_create_annotation_channel_without_source_fails":
        "production BOSS no longer requires a source channel for annotation channels (the check is commented "
        "out in its channel view); ndfs answers as production does",
}
#: A conftest for the child pytest. intern 1.4.2's volume and metadata modules build their coordinate frame
#: as older interns took it, ``CoordinateFrameResource(..., voxel_unit, time_step, time_step_unit)``; 1.4.2
#: reads those two as ``creator`` and ``raw`` and fails on ``raw.get`` before a request is made. The shim
#: drops them when ``raw`` is not a dict, as those interns did; the tests themselves run unchanged.
SHIM = """
import intern.resource.boss.resource as resource

_init = resource.CoordinateFrameResource.__init__


def _init_as_before(self, *args, **kwargs):
    if len(args) >= 13 and not isinstance(args[12], dict):  # (name, ..., voxel_unit, time_step, time_step_unit)
        args = args[:11]
    _init(self, *args, **kwargs)


resource.CoordinateFrameResource.__init__ = _init_as_before
"""
#: how many tests of each module pass (the rest: NOT_RUN, and intern's own unittest.skip)
PASSING = {"int_test_volume_v1.py": 33, "int_test_metadata_v1.py": 3, "int_test_project_v1.py": 16}


def _cache_root() -> Path:
    from ndfs.core.config import user_cache_dir

    return Path(os.environ.get("NDFS_TEST_VENVS") or user_cache_dir() / "test-venvs")


def intern_int_tests() -> Path:
    """The folder holding intern's three integration modules, fetched from its sdist once and kept."""
    folder = _cache_root() / "intern-1.4.2-int-tests"
    if all((folder / m).is_file() for m in MODULES):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                               "--no-binary", ":all:", "--no-deps", "-d", tmp, INTERN],
                              capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("intern-1.4.2.tar.gz"))
        if done.returncode != 0 or not sdists:
            pytest.skip(f"cannot fetch the {INTERN} sdist with pip (no network?): {done.stderr.strip()[-300:]}")
        staging = Path(tmp) / "modules"
        staging.mkdir()
        with tarfile.open(sdists[0]) as tar:
            for m in MODULES:
                member = tar.getmember(f"intern-1.4.2/intern/remote/boss/tests/{m}")
                with tar.extractfile(member) as src, open(staging / m, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging, partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def test_interns_own_boss_integration_tests_pass_against_ndfs_serve(tmp_path):
    modules = intern_int_tests()
    work = tmp_path / "run"
    work.mkdir()
    for m in MODULES:
        shutil.copy(modules / m, work / m)
    (work / "conftest.py").write_text(SHIM)
    (tmp_path / "store").mkdir()
    with served("boss", tmp_path / "store", "--max-scan-bytes", "16G") as srv:
        (work / "test.cfg").write_text(
            f"[Default]\nprotocol = http\nhost = {srv.url.removeprefix('http://')}\ntoken = x\n")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
               "--rootdir", str(work), "--junitxml", str(work / "out.xml"), "-W", "ignore",
               *(f"--deselect={t}" for t in NOT_RUN), *MODULES]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "HOME": str(tmp_path)})
    report = done.stdout[-6000:] + done.stderr[-2000:]
    outcomes: dict[str, str] = {}
    for case in ET.parse(work / "out.xml").getroot().iter("testcase"):
        name = f"{case.get('file') or case.get('classname').split('.')[0] + '.py'}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    failed = sorted(n for n, o in outcomes.items() if o == "failed")
    assert not failed and done.returncode == 0, report
    for m, n in PASSING.items():
        assert sum(1 for name, o in outcomes.items() if name.startswith(m) and o == "passed") == n, report
