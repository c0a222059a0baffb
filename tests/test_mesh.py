"""Meshes of known shapes: exact bounds in nm, closed surfaces, OBJ/PLY that trimesh loads, and the cache."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import ndfs
from ndfs.stores.local import LocalBackend
from ndfs.cache import CachedBackend
from ndfs.core.errors import BadRegion, NotFound
from ndfs.core.geometry import Box
from ndfs.tools.mesh import Mesh, MeshCache, cached_mesh, mesh_label, save_mesh, to_obj, to_ply
from ndfs.volume import Volume

pytest.importorskip("zmesh")
trimesh = pytest.importorskip("trimesh")

VS = (40.0, 4.0, 5.0)  # z, y, x nm: anisotropic on every axis, so swapped axes would show


def closed(mesh: Mesh) -> bool:
    """Every edge is shared by exactly two faces, with opposite directions (closed, consistently wound)."""
    f = mesh.faces.astype(np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    directed = {tuple(e) for e in edges.tolist()}
    return len(directed) == len(edges) and all((b, a) in directed for a, b in directed)


def as_trimesh(mesh: Mesh):
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def test_a_cube_of_voxels_has_exact_bounds_in_nm_and_a_closed_outward_surface():
    labels = np.zeros((10, 12, 14), np.uint64)
    labels[2:6, 3:8, 4:11] = 7  # z 2:6, y 3:8, x 4:11
    offset = (100, 200, 300)
    m = mesh_label(labels, 7, voxel_size_nm=VS, offset=offset, simplify=0)
    lo, hi = m.bounds
    np.testing.assert_allclose(lo, [(300 + 4) * 5, (200 + 3) * 4, (100 + 2) * 40])
    np.testing.assert_allclose(hi, [(300 + 11) * 5, (200 + 8) * 4, (100 + 6) * 40])
    assert closed(m)
    t = as_trimesh(m)
    assert t.is_watertight and t.is_winding_consistent and t.volume > 0  # positive: normals point outwards
    box_nm3 = 4 * 40 * 5 * 4 * 7 * 5
    assert 0.85 * box_nm3 < t.volume <= box_nm3  # marching cubes bevels the edges, nothing more


def test_a_sphere_is_closed_its_bounds_match_and_simplification_keeps_it_within_a_voxel():
    z, y, x = np.mgrid[0:40, 0:40, 0:40]
    ball = (((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= 15 ** 2).astype(np.uint32) * 3
    full = mesh_label(ball, 3, voxel_size_nm=(1, 1, 1), simplify=0)
    lo, hi = full.bounds
    np.testing.assert_allclose(lo, [5, 5, 5])  # voxels 5..35 inclusive: faces at 5 and 36
    np.testing.assert_allclose(hi, [36, 36, 36])
    small = mesh_label(ball, 3, voxel_size_nm=(1, 1, 1), simplify=10)
    assert len(small.faces) < len(full.faces) / 3
    assert closed(full) and closed(small)
    slo, shi = small.bounds
    assert np.all(np.abs(slo - lo) <= 1) and np.all(np.abs(shi - hi) <= 1)
    volume = as_trimesh(small).volume
    assert abs(volume - ball.astype(bool).sum()) / ball.astype(bool).sum() < 0.05


def test_an_object_cut_by_the_box_edge_is_closed_there_too():
    labels = np.full((5, 6, 7), 9, np.uint64)
    m = mesh_label(labels, 9, voxel_size_nm=VS, simplify=0)
    lo, hi = m.bounds
    np.testing.assert_allclose(lo, [0, 0, 0])
    np.testing.assert_allclose(hi, [7 * 5, 6 * 4, 5 * 40])
    assert closed(m) and as_trimesh(m).is_watertight


def test_obj_and_binary_ply_load_in_trimesh_with_the_same_vertices_and_faces(tmp_path):
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 1:7, 3:5] = 1
    m = mesh_label(labels, 1, voxel_size_nm=VS, offset=(3001, 250003, 300001), simplify=0)  # 7-digit nm values
    ply = to_ply(m.vertices, m.faces)
    assert ply.startswith(b"ply\nformat binary_little_endian 1.0\n")
    for data, kind in ((ply, "ply"), (to_obj(m.vertices, m.faces), "obj")):
        t = trimesh.load(io.BytesIO(data), file_type=kind, process=False)
        np.testing.assert_array_equal(t.vertices.astype(np.float32), m.vertices)  # float32 exact, even as text
        np.testing.assert_array_equal(t.faces, m.faces)
    save_mesh(tmp_path / "m.ply", m)
    save_mesh(tmp_path / "m.obj", m)
    assert (tmp_path / "m.ply").read_bytes() == ply
    assert trimesh.load(tmp_path / "m.obj", process=False).is_watertight
    with pytest.raises(BadRegion, match=".obj or .ply"):
        save_mesh(tmp_path / "m.stl", m)
    with pytest.raises(BadRegion, match="do not exist"):
        to_ply(m.vertices, m.faces + len(m.vertices))


def test_a_volume_is_meshed_slab_by_slab_like_the_array_and_meshes_are_cached_until_a_write(tmp_path):
    store = LocalBackend(tmp_path / "store", create=True)
    store.create_volume(("p", "cells"), (24, 40, 50), "uint64", kind="annotation", voxel_size_nm=VS,
                        offset=(3, 5, 7), chunk_shape=(8, 16, 16))
    labels = np.zeros((24, 40, 50), np.uint64)
    labels[4:19, 10:30, 12:44] = 5
    labels[10:12, 20:22, 20:22] = 6  # another cell inside 5: a hole in 5's surface
    store.write(("p", "cells"), Box((3, 5, 7), (27, 45, 57)), 0, labels)
    cached = CachedBackend(store, namespace="test:mesh", memory_bytes=2**24)
    vol = Volume(cached, ("p", "cells"))
    from_vol = mesh_label(vol, 5, simplify=0, slab_bytes=3 * 40 * 50 * 8)  # slabs of 3 planes
    from_arr = mesh_label(labels, 5, voxel_size_nm=VS, offset=(3, 5, 7), simplify=0)
    np.testing.assert_array_equal(from_vol.vertices, from_arr.vertices)
    np.testing.assert_array_equal(from_vol.faces, from_arr.faces)
    assert closed(from_vol) and as_trimesh(from_vol).body_count == 2  # outer surface and the inner hole
    cache = MeshCache(max_bytes=2**24)
    first = cached_mesh(vol, 6, cache=cache, simplify=0)
    assert cached_mesh(vol, 6, cache=cache, simplify=0) is first and (cache.hits, cache.misses) == (1, 1)
    vol[13:14, 25:27, 27:29] = np.zeros((1, 2, 2), np.uint64)  # half of cell 6, written through the cache
    again = cached_mesh(vol, 6, cache=cache, simplify=0)
    assert again is not first and cache.misses == 2
    assert as_trimesh(again).volume < as_trimesh(first).volume
    with pytest.raises(NotFound, match="no voxels"):
        mesh_label(vol, 77)
    with pytest.raises(BadRegion, match="positive"):
        mesh_label(vol, 0)


def test_ndfs_export_mesh_writes_a_file_trimesh_loads(tmp_path):
    from ndfs.tools.demo import make_demo

    make_demo(str(tmp_path / "store"), shape=(16, 128, 128), progress=False)
    labels = ndfs.remote(str(tmp_path / "store")).volume("demo/cells")[:, :, :]
    cell = int(np.unique(labels[labels > 0])[0])
    (tmp_path / "ndfs.toml").write_text(f'[remotes.d]\nkind = "local"\npath = "{tmp_path / "store"}"\n')
    done = subprocess.run([sys.executable, "-m", "ndfs", "export", "d/demo/cells", "cell.ply", "--mesh", str(cell)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "NDFS_CONFIG": str(tmp_path / "ndfs.toml")})
    assert done.returncode == 0, done.stderr
    t = trimesh.load(tmp_path / "cell.ply", process=False)
    assert t.is_watertight and len(t.faces) > 10
    zs, ys, xs = np.nonzero(labels == cell)
    assert t.bounds[0][2] <= zs.min() * 40 + 40 and t.bounds[1][2] >= (zs.max() + 1) * 40 - 40
