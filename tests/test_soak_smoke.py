"""A short run of scripts/soak.py against each remote: faults and outages on, nothing lost, nothing torn.

The soak itself (minutes, ``python scripts/soak.py --seconds 600``) runs outside CI; this smoke run
keeps the script working and its verdict honest on every protocol.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ndfs.testing.mount import fuse_unavailable

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", ["boss", "dvid", "neurodata"])
def test_a_short_soak_with_faults_loses_nothing(protocol):
    done = subprocess.run([sys.executable, str(SOAK), "--seconds", "6", "--workers", "4", "--protocol", protocol],
                          capture_output=True, text=True, timeout=200)
    table = dict(re.findall(r"^(\S.*?)\s{2,}(\S+)$", done.stdout, re.M))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert table["protocol"] == protocol
    assert table["planes lost"] == "0" and table["torn or wrong reads"] == "0"
    assert int(table["writes"]) > 10 and int(table["reads"]) > 10 and int(table["bytes verified"]) > 0
    assert sum(int(v) for k, v in table.items() if k.startswith("faults injected")) > 0  # faults were on
    assert table["outbox entries left"] == "0"


def test_the_soak_refuses_an_unknown_fault_mode():
    done = subprocess.run([sys.executable, str(SOAK), "--fault-modes", "503,gremlins"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "gremlins" in done.stderr
