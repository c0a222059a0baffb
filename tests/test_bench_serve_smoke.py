"""`scripts/bench_serve.py --smoke` runs end to end and prints its table: three memory rows and the flood's.

No assertion on the ratios: they belong to the benchmark's report, not to the test suite.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"


def test_bench_serve_smoke_prints_its_rows():
    pytest.importorskip("blosc")
    pytest.importorskip("waitress")
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    rows = [line for line in done.stdout.splitlines() if re.search(r"\b(PASS|MISS)\s*$", line)]
    assert [row.split(":")[0] for row in rows[:3]] == ["boss", "dvid", "neurodata"], done.stdout
    assert any("during a 200-connection slow flood" in row for row in rows) and len(rows) == 6, done.stdout
    assert "20/20 answered" in done.stdout and "ERROR" not in done.stdout + done.stderr
