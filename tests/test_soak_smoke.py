"""Short runs of scripts/soak.py: nothing lost, nothing torn, no level mixed, with every fault on.

- each remote (BOSS, DVID, NeuroData) with faults and outages, child flushes and (DVID aside) a second
  writer through the Python API;
- the local store mounted directly, with its daemon killed and remounted while a child process closes
  descriptors mid-write and a Python process writes and reads the same planes.

The soak itself (minutes, ``python scripts/soak.py --seconds 600``) runs outside CI; these smoke runs
keep the script working and its verdict honest on every protocol.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ndfs.testing.mount import fuse_unavailable

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"
VERDICT = ("planes lost", "torn reads", "torn reads (API process)", "wrong reads", "planes mixed across levels")


def soak(*args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    done = subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=200)
    return done, dict(re.findall(r"^(\S.*?)\s{2,}(\S+)$", done.stdout, re.M))


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", ["boss", "dvid", "neurodata"])
def test_a_short_soak_with_faults_loses_nothing(protocol):
    done, table = soak("--seconds", "6", "--workers", "4", "--protocol", protocol)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert table["protocol"] == protocol
    assert all(table[row] == "0" for row in VERDICT), {row: table[row] for row in VERDICT}
    assert int(table["writes"]) > 10 and int(table["reads"]) > 10 and int(table["bytes verified"]) > 0
    assert sum(int(v) for k, v in table.items() if k.startswith("faults injected")) > 0  # faults were on
    assert int(table["child flushes"]) > 0
    assert (int(table["API writes"]) > 0) == (protocol != "dvid")  # DVID: two clients' block writes clash
    assert table["outbox entries left"] == "0" and table["spool files left"] == "0"


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
@pytest.mark.timeout(240)
def test_a_short_soak_of_the_local_store_with_kills_child_flushes_and_a_python_writer_loses_nothing():
    done, table = soak("--seconds", "8", "--workers", "4", "--protocol", "local", "--kill-daemon", "2.5",
                       "--child-flushes", "--api-writer")
    assert all(table[row] == "0" for row in VERDICT), done.stdout + done.stderr[-2000:]
    assert table["protocol"] == "local" and table["levels"] == "3"
    assert int(table["daemon kills"]) > 0 and int(table["child flushes"]) > 0 and int(table["API writes"]) > 0
    assert int(table["store checks"]) == int(table["daemon kills"]) + 1  # checked while down, and at the end
    assert int(table["writes"]) > 10 and int(table["reads"]) > 10 and int(table["API reads"]) > 10
    assert table["spool files left"] == "0"
    assert table["daemons that did not die of SIGKILL"] == "0", done.stdout
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_the_soak_refuses_an_unknown_fault_mode():
    done = subprocess.run([sys.executable, str(SOAK), "--fault-modes", "503,gremlins"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "gremlins" in done.stderr


def test_the_soak_refuses_a_bad_kill_interval():
    done = subprocess.run([sys.executable, str(SOAK), "--kill-daemon", "soon"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "soon" in done.stderr
