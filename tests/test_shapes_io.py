"""Mesh reading and surface sampling, normalisation, augmentation, PLY / PNG / mesh writers."""
import math

import numpy as np
import pytest
import torch
import trimesh

from multidiff.shapes import io as sio
from multidiff.shapes.io import (
    MeshLoadError,
    augment,
    fit_normalization,
    global_statistics,
    load_ply_points,
    mesh_from_points,
    render_sheet,
    sample_points,
    save_ply,
)

EXTENTS = np.array([2.0, 1.0, 0.5])
OFFSET = np.array([5.0, -1.0, 2.0])


def on_box_surface(pts, extents=EXTENTS, center=OFFSET, tol=1e-4):
    rel = np.abs(pts - center) - extents / 2
    return (rel <= tol).all(1) & (np.abs(rel) <= tol).any(1)


@pytest.mark.parametrize("fmt", ["obj", "stl", "ply", "off", "glb"])
def test_sample_points_from_every_format_in_file_coordinates(tmp_path, fmt):
    box = trimesh.creation.box(EXTENTS, transform=trimesh.transformations.translation_matrix(OFFSET))
    path = tmp_path / f"box.{fmt}"
    box.export(path)
    pts = sample_points(path, 500, seed=3)
    assert pts.shape == (500, 3) and pts.dtype == torch.float32
    assert on_box_surface(pts.numpy().astype(np.float64)).all()
    torch.testing.assert_close(sample_points(path, 500, seed=3), pts)  # deterministic
    assert not torch.equal(sample_points(path, 500, seed=4), pts)


def test_scenes_are_flattened_with_their_transforms(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1, 1, 1)), transform=trimesh.transformations.translation_matrix([10, 0, 0]))
    scene.add_geometry(trimesh.creation.box((1, 1, 1)), transform=trimesh.transformations.translation_matrix([-10, 0, 0]))
    path = tmp_path / "two.glb"
    scene.export(path)
    pts = sample_points(path, 2000).numpy()
    right, left = pts[:, 0] > 0, pts[:, 0] < 0
    assert right.sum() + left.sum() == 2000 and 800 < right.sum() < 1200  # equal areas
    assert on_box_surface(pts[right], np.ones(3), np.array([10, 0, 0])).all()
    assert on_box_surface(pts[left], np.ones(3), np.array([-10, 0, 0])).all()


def test_sampling_is_area_weighted():
    # two disjoint triangles with areas 1 : 3
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 0, 0], [8, 0, 0], [5, 2, 0]], dtype=float)
    mesh = trimesh.Trimesh(verts, [[0, 1, 2], [3, 4, 5]], process=False)
    pts = sio.sample_mesh(mesh, 40000, seed=0)
    frac = float((pts[:, 0] < 2.5).mean())
    assert frac == pytest.approx(0.25, abs=0.01)
    # uniform inside a triangle: the mean is the centroid
    first = pts[pts[:, 0] < 2.5]
    np.testing.assert_allclose(first.mean(0), verts[:3].mean(0), atol=0.02)


def test_unusable_files_raise_errors_naming_the_file(tmp_path):
    (tmp_path / "garbage.glb").write_bytes(b"\x00\x01not a mesh")
    (tmp_path / "empty.obj").write_text("")
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # zero-area face
    for name in ("garbage.glb", "empty.obj", "flat.obj", "missing.stl"):
        with pytest.raises(MeshLoadError, match=name):
            sample_points(tmp_path / name, 10)


def test_normalisation_modes_and_inverse():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 3, generator=g) * torch.tensor([3.0, 1.0, 0.5]) + torch.tensor([4.0, -2.0, 1.0])
    for mode in ("none", "unit_sphere", "bbox"):
        n = fit_normalization(pts, mode)
        y = n.apply(pts)
        torch.testing.assert_close(n.invert(y), pts, atol=1e-5, rtol=0)
    y = fit_normalization(pts, "unit_sphere").apply(pts)
    assert float(y.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    y = fit_normalization(pts, "bbox").apply(pts)
    assert float(y.abs().max()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(y.max(0).values + y.min(0).values, torch.zeros(3), atol=1e-5, rtol=0)
    # global (PointFlow): zero mean per axis and unit std over all coordinates of the data set
    clouds = [pts, pts * 2 + 1]
    stats = global_statistics(clouds)
    allp = torch.cat([stats.apply(c) for c in clouds])
    torch.testing.assert_close(allp.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert float(allp.std()) == pytest.approx(1.0, abs=1e-4)
    assert sio.Normalization.from_json(stats.to_json()).apply(pts).allclose(stats.apply(pts))
    with pytest.raises(ValueError, match="global"):
        fit_normalization(pts, "global")
    with pytest.raises(ValueError, match="normalize"):
        fit_normalization(pts, "weird")


def test_augmentation_rotates_about_up_and_scales():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(100, 3, generator=g)
    rot = augment(pts, torch.Generator().manual_seed(5), rotate=True, scale_range=None)
    torch.testing.assert_close(rot[:, 1], pts[:, 1])  # y (up) unchanged
    torch.testing.assert_close(rot[:, [0, 2]].norm(dim=1), pts[:, [0, 2]].norm(dim=1), atol=1e-5, rtol=0)
    assert float((rot - pts).abs().max()) > 1e-2
    sc = augment(pts, torch.Generator().manual_seed(5), rotate=False, scale_range=(0.5, 2.0))
    ratio = sc / pts
    assert ((ratio > 0.5 - 1e-5) & (ratio < 2.0 + 1e-5)).all()
    torch.testing.assert_close(ratio.std(0), torch.zeros(3), atol=1e-4, rtol=0)  # one factor per axis
    torch.testing.assert_close(augment(pts, torch.Generator().manual_seed(5)), augment(pts, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("binary", [True, False])
def test_ply_roundtrip(tmp_path, binary):
    pts = torch.randn(50, 3)
    colors = torch.rand(50, 3)
    path = save_ply(tmp_path / "c.ply", pts, colors, binary=binary)
    torch.testing.assert_close(load_ply_points(path), pts, atol=1e-5, rtol=1e-5)
    cloud = trimesh.load(path)
    assert isinstance(cloud, trimesh.PointCloud)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], np.round(colors.numpy() * 255).astype(np.uint8))


def test_png_sheet(tmp_path):
    from PIL import Image

    path = render_sheet(torch.randn(5, 200, 3), tmp_path / "s.png", titles=list("abcde"), cols=3, dpi=50)
    img = Image.open(path)
    assert img.size == (3 * 3 * 50, 2 * 3 * 50)


def test_mesh_from_points_reconstructs_a_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    pts = torch.from_numpy(sio.sample_mesh(sphere, 6000, seed=0))
    mesh = mesh_from_points(pts, resolution=48)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi, rel=0.1)
    radii = np.linalg.norm(mesh.vertices - mesh.vertices.mean(0), axis=1)
    assert abs(radii.mean() - 1.0) < 0.04
