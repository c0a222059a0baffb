"""The local store's read engines: tensorstore (the `fast` extra) and zarr-python read the same voxels."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ndfs.core.geometry import Box

CODE = """
import sys, numpy as np
from ndfs.stores import local
from ndfs.core.geometry import Box
b = local.LocalBackend(sys.argv[1])
assert local._engine() == sys.argv[2], local._engine()
out = [b.read(("conf", ch), b.info(("conf", ch)).level(lv).box, lv) for ch in ("em8", "em16", "labels") for lv in (0, 1)]
out.append(b.read(("conf", "em8"), Box((4, 9, 11), (9, 40, 70)), 0))
np.savez(sys.argv[3], *out)
"""


@pytest.mark.parametrize("engine", ["zarr", "tensorstore"])
def test_each_engine_reads_the_reference_data(reference_store, tmp_path, engine):
    if engine == "tensorstore":
        pytest.importorskip("tensorstore")
    path, _, oracle = reference_store
    out = tmp_path / "out.npz"
    done = subprocess.run([sys.executable, "-c", CODE, str(path), engine, str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NDFS_LOCAL_ENGINE": engine})
    assert done.returncode == 0, done.stderr
    got = np.load(out)
    want = [oracle.read(ch, oracle.box(ch, lv), lv) for ch in ("em8", "em16", "labels") for lv in (0, 1)]
    want.append(oracle.read("em8", Box((4, 9, 11), (9, 40, 70)), 0))
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[f"arr_{i}"], w)


def test_an_unknown_engine_is_refused(tmp_path):
    code = "from ndfs.stores import local; local._engine()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NDFS_LOCAL_ENGINE": "numpy"})
    assert done.returncode != 0 and "NDFS_LOCAL_ENGINE must be one of" in done.stderr


FORK = """
import multiprocessing, os, sys
import numpy as np
from ndfs.stores import local
b = local.LocalBackend(sys.argv[1])
ref = ("conf", "em8")
want = b.read(ref, b.info(ref).level(0).box, 0)  # the parent reads with tensorstore first
assert local._engine() == "tensorstore"

def child(q):
    again = local.LocalBackend(sys.argv[1])
    q.put((local._engine(), bool((again.read(ref, again.info(ref).level(0).box, 0) == want).all()),
           bool((b.read(ref, b.info(ref).level(0).box, 0) == want).all())))

ctx = multiprocessing.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
got = q.get(timeout=60)
p.join(60)
print(p.exitcode, *got)
"""


def test_a_forked_child_reads_the_store_after_its_parent_used_tensorstore(reference_store):
    """tensorstore aborts a forked child that touches it after the parent has used it; the child reads with
    zarr-python instead, through a new backend and through the one it inherited."""
    pytest.importorskip("tensorstore")
    path, _, _ = reference_store
    done = subprocess.run([sys.executable, "-c", FORK, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NDFS_LOCAL_ENGINE": "auto"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "zarr", "True", "True"], done.stdout + done.stderr[-2000:]
