"""``ndfs copy`` and ``ndfs.copy``: local -> OME-Zarr -> precomputed -> local round-trips voxel for voxel, a box
copies only its region, a BOSS channel goes through OME-Zarr and precomputed to local, a copy killed half way resumes where it stopped,
and a label channel copied to precomputed with --meshes carries the meshes the mount makes and its RAMON objects, as CloudVolume and a
mount of the new layer read them."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import ndfs
from ndfs.core.geometry import Box
from ndfs.testing.mount import fuse_unavailable, mounted
from ndfs.testing.mount import ndfs as run_ndfs
from ndfs.tools.demo import make_demo


@pytest.fixture(autouse=True)
def private_copy_state(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFS_COPY_STATE_DIR", str(tmp_path / "copy-state"))
    return tmp_path / "copy-state"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    make_demo(str(root / "store"), shape=(24, 200, 168), levels=3, chunk_shape=(8, 64, 64), progress=False)
    (root / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n'
                                    '[remotes.back]\nkind = "local"\npath = "back"\ncreate = true\n')
    return root


def parse_obj(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    lines = data.decode().splitlines()
    verts = np.array([[float(v) for v in ln.split()[1:]] for ln in lines if ln.startswith("v ")], np.float32)
    faces = np.array([[int(v) - 1 for v in ln.split()[1:]] for ln in lines if ln.startswith("f ")], np.int64)
    return verts, faces


def triangles(vertices, faces) -> list:
    """A mesh as its triangles' corner coordinates, each turned to start at its smallest corner (orientation
    kept), sorted: equal for the same surface whatever the order of its vertices and faces."""
    out = []
    for tri in np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]:
        corners = [tuple(c) for c in tri]
        k = corners.index(min(corners))
        out.append(tuple(corners[k:] + corners[:k]))
    return sorted(out)


def levels_of(remote, ref):
    info = remote.backend.info(ref)
    return info, [remote.backend.read(ref, lv.box, i) for i, lv in enumerate(info.levels)]


def test_local_to_omezarr_to_precomputed_to_local_round_trips_voxel_for_voxel(demo, tmp_path):
    from cloudvolume import CloudVolume

    local = ndfs.remote(str(demo / "store"))
    report = ndfs.copy((local, "demo"), f"zarr+file://{tmp_path}/oz", progress=False)
    assert report.channels == {"demo/cells": "cells", "demo/em": "em"} and report.skipped == 0
    done = run_ndfs("--config", demo / "ndfs.toml", "copy", f"zarr+file://{tmp_path}/oz",
                    f"precomputed+file://{tmp_path}/pc", "--quiet", env={**os.environ})
    assert "copied em -> em" in done.stdout
    run_ndfs("--config", demo / "ndfs.toml", "copy", f"precomputed://{tmp_path}/pc", "back/demo", "--quiet")
    back = ndfs.remote(str(demo / "back"))
    for channel in ("em", "cells"):
        info, want = levels_of(local, ("demo", channel))
        got_info, got = levels_of(back, ("demo", channel))
        assert got_info == info
        for level, (a, b) in enumerate(zip(want, got)):
            np.testing.assert_array_equal(b, a, err_msg=f"{channel} level {level}")
        # the intermediate copies are real OME-Zarr and precomputed, as their own readers see them
        oz = zarr.open_group(str(tmp_path / "oz" / channel), mode="r")
        assert oz.attrs["multiscales"][0]["version"] == "0.4"
        np.testing.assert_array_equal(oz["1"][:], want[1])
        cv = CloudVolume(f"file://{tmp_path}/pc/{channel}", mip=2, progress=False)
        np.testing.assert_array_equal(np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0), want[2])
    assert CloudVolume(f"file://{tmp_path}/pc/cells", progress=False).info["type"] == "segmentation"


def test_a_box_copies_its_region_on_every_level_and_nothing_else(demo, tmp_path):
    local = ndfs.remote(str(demo / "store"))
    box = Box((8, 64, 64), (16, 128, 192))
    report = ndfs.copy(local.volume("demo", "em"), f"precomputed+file://{tmp_path}/pc", box=box, progress=False)
    pc = ndfs.remote(f"precomputed://{tmp_path}/pc")
    _, want = levels_of(local, ("demo", "em"))
    info, got = levels_of(pc, ("em",))
    touched = 0
    for level in range(3):
        region = Box((8, 64 >> level, 64 >> level), (16, 128 >> level, 192 >> level))
        expected = np.zeros_like(want[level])
        expected[region.slices()] = want[level][region.slices()]
        np.testing.assert_array_equal(got[level], expected, err_msg=f"level {level}")
        touched += len(list(info.level(level).grid.chunks(region)))
    assert report.written == touched == 5  # 2 chunks (8, 64, 64) at level 0, 2 at level 1, 1 at level 2


def test_a_boss_channel_goes_to_omezarr_to_precomputed_to_local_voxel_for_voxel(reference_servers, reference_store,
                                                                                 tmp_path):
    from ndfs.stores.boss import BossBackend
    from ndfs.stores.local import LocalBackend

    path, _, oracle = reference_store
    boss = BossBackend(reference_servers["boss"].url, "x")
    want = oracle.read("em16", oracle.box("em16", 0), 0)
    ndfs.copy((boss, (path.name, "conf", "em16")), f"zarr+file://{tmp_path}/oz", progress=False)
    oz = ndfs.remote(f"zarr://{tmp_path}/oz")
    info = oz.backend.info(("em16",))
    assert info.level(0).box == oracle.box("em16", 0)
    np.testing.assert_array_equal(oz.backend.read(("em16",), info.level(0).box, 0), want)
    ndfs.copy(f"zarr://{tmp_path}/oz", f"precomputed+file://{tmp_path}/pc", progress=False)
    back = LocalBackend(tmp_path / "back", create=True)
    ndfs.copy(f"precomputed://{tmp_path}/pc", (back, ("p",)), progress=False)
    got = back.info(("p", "em16"))
    assert got.level(0).box == oracle.box("em16", 0) and got.dtype == np.uint16
    np.testing.assert_array_equal(back.read(("p", "em16"), got.level(0).box, 0), want)


def test_a_copy_killed_half_way_resumes_and_skips_what_is_done(tmp_path, private_copy_state):
    make_demo(str(tmp_path / "store"), shape=(64, 512, 512), levels=2, chunk_shape=(8, 64, 64), progress=False)
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    args = [sys.executable, "-m", "ndfs", "--config", str(tmp_path / "ndfs.toml"), "copy", "local/demo/em",
            f"zarr+file://{tmp_path}/oz", "--workers", "1", "--quiet"]
    env = {**os.environ, "NDFS_COPY_STATE_DIR": str(private_copy_state)}
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    lines = 0
    while time.monotonic() < deadline and child.poll() is None:
        states = list(private_copy_state.glob("*.done")) if private_copy_state.exists() else []
        lines = len(states[0].read_text().splitlines()) if states else 0
        if lines >= 10:
            break
        time.sleep(0.01)
    assert child.poll() is None, "the copy finished before it could be interrupted"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    skipped = int(done.stdout.split(", ")[-1].split()[0])
    assert skipped >= lines >= 10
    assert not list(private_copy_state.glob("*.done"))  # complete: the state is gone
    local = ndfs.remote(str(tmp_path / "store"))
    oz = ndfs.remote(f"zarr://{tmp_path}/oz")
    _, want = levels_of(local, ("demo", "em"))
    _, got = levels_of(oz, ("em",))
    for a, b in zip(want, got):
        np.testing.assert_array_equal(b, a)


def test_a_copy_runs_on_a_dask_cluster_and_on_worker_processes(demo, tmp_path):
    local = ndfs.remote(str(demo / "store"))
    report = ndfs.copy((local, "demo/cells"), f"precomputed+file://{tmp_path}/pc", scheduler="dask", workers=2,
                       progress=False)
    assert report.channels == {"demo/cells": "cells"} and report.written > 0
    report = ndfs.copy((local, "demo/em"), f"zarr+file://{tmp_path}/oz", scheduler="processes", workers=2,
                       progress=False)
    assert report.written > 0
    for remote, ref, channel in ((ndfs.remote(f"precomputed://{tmp_path}/pc"), ("cells",), "cells"),
                                 (ndfs.remote(f"zarr://{tmp_path}/oz"), ("em",), "em")):
        _, want = levels_of(local, ("demo", channel))
        _, got = levels_of(remote, ref)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(b, a)


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_a_label_channel_copied_with_meshes_carries_the_mounts_meshes_and_its_objects(tmp_path):
    from cloudvolume import CloudVolume

    from ndfs import ramon

    make_demo(str(tmp_path / "store"), shape=(24, 200, 168), levels=2, chunk_shape=(8, 64, 64), progress=False)
    local = ndfs.remote(str(tmp_path / "store"))
    ref = ("demo", "cells")
    labels = local.backend.read(ref, local.backend.info(ref).level(0).box, 0)
    ids = [int(i) for i in np.unique(labels) if i]
    assert len(ids) >= 3
    local.backend.ramon_put(ref, [ramon.RamonNeuron(id=900, segments=ids[:2], kvpairs={"name": "pair"})])
    objects = local.backend.ramon_ids(ref)
    assert set(ids) | {900} <= set(objects) and len(objects) > len(ids) + 1  # synapses too: no voxels, no mesh
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n'
                                        '[remotes.pc]\nkind = "precomputed"\npath = "pc"\n'
                                        f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    layers = f"precomputed+file://{tmp_path}/pc"
    done = run_ndfs("--config", tmp_path / "ndfs.toml", "copy", "local/demo/cells", layers, "--meshes", "--quiet")
    assert f"{len(ids) + 1} meshes written, 0 already there" in done.stdout

    cv = CloudVolume(f"file://{tmp_path}/pc/cells", progress=False)
    assert cv.info["mesh"] == "mesh" and cv.info["segment_properties"] == "segment_properties"
    props = json.loads((tmp_path / "pc" / "cells" / "segment_properties" / "info").read_text())
    assert props["@type"] == "neuroglancer_segment_properties"
    assert props["inline"]["ids"] == [str(i) for i in objects]
    label_of = dict(zip(props["inline"]["ids"], props["inline"]["properties"][0]["values"]))
    assert label_of["900"] == "pair" and label_of[str(ids[0])] == f"segment {ids[0]}"
    mnt = tmp_path / "mnt"
    with mounted(tmp_path / "ndfs.toml", mnt):
        source, copied = mnt / "local" / "demo" / "cells" / "ramon", mnt / "pc" / "cells" / "ramon"
        for i in ids:
            want = parse_obj((source / f"{i}.obj").read_bytes())  # the mount's own mesh of the source object
            got = cv.mesh.get(i)
            got = got[i] if isinstance(got, dict) else got
            assert len(got.vertices) == len(want[0]) and len(got.faces) == len(want[1]), f"object {i}"
            assert triangles(got.vertices, got.faces) == triangles(*want), f"object {i}"  # CloudVolume reorders
            # the new layer's own mesh, as its mount serves it: the same arrays, so the same file
            assert (copied / f"{i}.obj").read_bytes() == (source / f"{i}.obj").read_bytes()
        # the neuron: its segments' fragments, one after the other
        pair = cv.mesh.get(900)
        pair = pair[900] if isinstance(pair, dict) else pair
        parts = [parse_obj((source / f"{i}.obj").read_bytes()) for i in ids[:2]]
        assert len(pair.vertices) == sum(len(v) for v, _ in parts)
        assert sorted(triangles(pair.vertices, pair.faces)) == sorted(sum((triangles(*p) for p in parts), []))
        assert json.loads((copied / "900.json").read_text())["kvpairs"]["label"] == "pair"

    # resumable: a rerun skips every mesh; one removed is made again, the same
    (tmp_path / "pc" / "cells" / "mesh" / f"{ids[-1]}:0").unlink()
    before = (tmp_path / "pc" / "cells" / "mesh" / f"{ids[-1]}:0:0").read_bytes()
    done = run_ndfs("--config", tmp_path / "ndfs.toml", "copy", "local/demo/cells", layers, "--meshes", "--quiet")
    assert f"1 meshes written, {len(ids)} already there" in done.stdout
    assert (tmp_path / "pc" / "cells" / "mesh" / f"{ids[-1]}:0:0").read_bytes() == before


def test_meshes_go_only_from_label_channels_to_precomputed(demo, tmp_path):
    bad = run_ndfs("--config", demo / "ndfs.toml", "copy", "local/demo/cells", f"zarr+file://{tmp_path}/oz",
                   "--meshes", "--quiet", check=False)
    assert bad.returncode != 0 and not (tmp_path / "oz").exists()
    assert bad.stderr.strip().splitlines()[-1].endswith("meshes are copied to a precomputed layer, not to a zarr remote")
    local = ndfs.remote(str(demo / "store"))
    with pytest.raises(ndfs.NdfsError, match="image channel: only annotation"):
        ndfs.copy((local, "demo/em"), f"precomputed+file://{tmp_path}/pc", meshes=True, progress=False)
    assert not (tmp_path / "pc").exists()
    # a folder: its image channels are copied without meshes, its label channels with them
    report = ndfs.copy((local, "demo"), f"precomputed+file://{tmp_path}/pc", meshes=True, progress=False)
    assert report.meshes > 0 and set(report.channels) == {"demo/em", "demo/cells"}
    assert not (tmp_path / "pc" / "em" / "mesh").exists() and (tmp_path / "pc" / "cells" / "mesh" / "info").exists()


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto's) with a bucket ``lab``; the AWS variables point at it."""
    pytest.importorskip("moto.server", reason="the S3 test needs moto[server] (the test extra)")
    import socket

    import boto3

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-do-not-print",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.1)
        client = boto3.client("s3")
        client.create_bucket(Bucket="lab")
        yield client, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_copy_to_an_s3_url_with_meshes_reads_back_and_is_what_cloudvolume_reads(tmp_path, s3_server):
    from cloudvolume import CloudVolume

    client, env = s3_server
    make_demo(str(tmp_path / "store"), shape=(16, 128, 128), levels=2, chunk_shape=(8, 64, 64), progress=False)
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n')
    done = run_ndfs("--config", tmp_path / "ndfs.toml", "copy", "local/demo/cells",
                    "precomputed+s3://lab/layers", "--meshes", "--quiet", env={**os.environ})
    assert "copied demo/cells -> cells" in done.stdout
    assert env["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
    local = ndfs.remote(str(tmp_path / "store"))
    _, want = levels_of(local, ("demo", "cells"))
    _, got = levels_of(ndfs.remote("precomputed+s3://lab/layers"), ("cells",))  # read back over S3
    for a, b in zip(want, got):
        np.testing.assert_array_equal(b, a)
    # what is in the bucket, fetched by the AWS client, is a layer CloudVolume reads: voxels and meshes
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="lab", Prefix="layers/")
            for o in page.get("Contents", [])]
    assert "layers/cells/info" in keys and "layers/cells/mesh/info" in keys
    for key in keys:
        path = tmp_path / "fetched" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket="lab", Key=key)["Body"].read())
    cv = CloudVolume(f"file://{tmp_path}/fetched/layers/cells", mip=0, progress=False)
    np.testing.assert_array_equal(np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0), want[0])
    label = int(np.unique(want[0])[-1])
    mesh = cv.mesh.get(label)
    mesh = mesh[label] if isinstance(mesh, dict) else mesh
    own = ndfs.remote(f"precomputed://{tmp_path}/fetched/layers").backend.object_mesh(("cells",), label)
    assert own is not None and len(mesh.faces) == len(own[1]) > 0
    assert triangles(mesh.vertices, mesh.faces) == triangles(*own)


def test_an_object_too_large_to_mesh_is_named_not_read(tmp_path):
    """copy_meshes reads no object's box past max_object_bytes (each worker would hold it and its mask)."""
    from ndfs.tools.copy import copy_meshes

    make_demo(str(tmp_path / "store"), shape=(16, 96, 96), levels=1, chunk_shape=(8, 64, 64), progress=False)
    (tmp_path / "ndfs.toml").write_text('[remotes.local]\nkind = "local"\npath = "store"\n'
                                        f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    run_ndfs("--config", tmp_path / "ndfs.toml", "copy", "local/demo/cells", f"precomputed+file://{tmp_path}/pc",
             "--quiet")
    src = ndfs.remote(str(tmp_path / "store")).backend
    dst = ndfs.remote(f"precomputed+file://{tmp_path}/pc").backend
    ref = ("demo", "cells")
    ids = [int(i) for i in np.unique(src.read(ref, src.info(ref).level(0).box, 0)) if i]
    assert ids
    report = copy_meshes(src, ref, dst, ("cells",), progress=False, max_object_bytes=1)
    assert sorted(report.meshes_refused) == ids and report.meshes == 0
    assert not list((tmp_path / "pc" / "cells").glob("mesh/*:0"))  # no manifest, no fragment
    report = copy_meshes(src, ref, dst, ("cells",), progress=False)
    assert report.meshes == len(ids) and not report.meshes_refused
