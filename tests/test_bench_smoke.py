"""`scripts/bench.py --smoke` runs end to end: every target at a tiny size, one table row per target.

No timing or PASS/MISS assertions: the ratios belong to the benchmark's report, not to the test suite.
"""

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ndfs.testing.mount import fuse_unavailable

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def test_bench_smoke_prints_a_row_per_target():
    pytest.importorskip("blosc")
    pytest.importorskip("waitress")
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    rows = [line for line in done.stdout.splitlines() if re.match(r"^[1-9][a-z]? ", line)]
    assert {row[0] for row in rows} == set("123456789"), done.stdout
    for row in rows:
        assert re.search(r"\b(PASS|MISS)\s*$", row), f"no result in row: {row!r}\n{done.stdout}"
    assert "ERROR" not in done.stdout


def _bench_module():
    spec = importlib.util.spec_from_file_location("ndfs_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_only_picks_targets_and_what_they_need():
    bench = _bench_module()
    args = argparse.Namespace(smoke=True, quick=False, size_mib=None, repeats=None, latency_ms=20.0,
                              bandwidth_mbps=400.0, workers=8, keep=False, only=None)
    for picked, runs in ((set(), set(bench.TARGETS)), ({"6"}, {"1", "6"}), ({"2"}, {"2", "3"}),
                         ({"4", "9"}, {"3", "4", "9"}), ({"1", "5"}, {"1", "5"})):
        plan = bench.make_plan(argparse.Namespace(**{**vars(args), "only": picked}))
        assert {t for t in bench.TARGETS if plan.runs(t)} == runs, picked


def test_bench_only_runs_the_picked_targets_and_what_they_need():
    """End to end with a dependency (4 reuses 3's mount); the smaller cases are in the test above."""
    pytest.importorskip("blosc")
    pytest.importorskip("waitress")
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--only", "9,4"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    rows = [line for line in done.stdout.splitlines() if re.match(r"^[1-9][a-z]? ", line)]
    assert {row[0] for row in rows} == set("349"), done.stdout  # 4 needs 3's mount
    bad = subprocess.run([sys.executable, str(BENCH), "--only", "10"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--only takes targets from 1,2,3,4,5,6,7,8,9" in bad.stderr
