"""Surfaces from point clouds (multidiff.shapes.mesh) and the surface metrics that score them."""
import json

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import save_file

from multidiff.cli import main
from multidiff.shapes.io import sample_mesh
from multidiff.shapes.mesh import estimate_normals, reconstruct, surface_metrics


def test_normals_are_oriented_consistently_outwards_on_a_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    pts = sample_mesh(sphere, 3000, seed=0)
    normals = estimate_normals(pts)
    radial = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", normals, radial)
    assert (cos > 0.9).mean() > 0.99


def test_surface_metrics_of_a_mesh_against_itself_and_a_shifted_copy():
    box = trimesh.creation.box((1.0, 2.0, 0.5))
    same = surface_metrics(box, box)
    assert same["chamfer"] < 1e-4 and same["normal_consistency"] > 0.95 and same["f_score"] > 0.95
    moved = box.copy()
    moved.apply_translation((0.1, 0.0, 0.0))
    shifted = surface_metrics(moved, box)
    assert shifted["chamfer"] > 10 * same["chamfer"] and shifted["f_score"] < same["f_score"]


@pytest.mark.parametrize("shape", ["box", "sphere"])
def test_tangent_planes_recover_the_surface_and_keep_flat_faces(shape):
    truth = trimesh.creation.box((1.0, 1.5, 0.8)) if shape == "box" else trimesh.creation.icosphere(4, radius=0.8)
    cloud = torch.from_numpy(sample_mesh(truth, 2048, seed=1))
    planes = surface_metrics(reconstruct(cloud, "tangent_planes"), truth)
    closing = surface_metrics(reconstruct(cloud, "closing"), truth)
    assert planes["chamfer"] < 5e-4 and planes["f_score"] > 0.8 and planes["normal_consistency"] > 0.9
    if shape == "box":  # sharp edges: the closing rounds them, tangent planes keep the faces flat
        assert planes["normal_consistency"] > closing["normal_consistency"]


def test_mesh_command_writes_meshes_and_scores_held_out_shapes(tmp_path, capsys):
    from multidiff.shapes.builders import build_procedural

    clouds = torch.stack([torch.from_numpy(sample_mesh(trimesh.creation.icosphere(3), 1024, seed=k)).float()
                          for k in range(2)])
    save_file({"samples": clouds}, str(tmp_path / "samples.safetensors"))
    assert main(["mesh", str(tmp_path / "samples.safetensors"), "--out", str(tmp_path / "m"), "--format", "glb",
                 "--resolution", "32"]) == 0
    assert sorted(p.name for p in (tmp_path / "m").glob("*.glb")) == ["000.glb", "001.glb"]
    assert len(trimesh.load(tmp_path / "m" / "000.glb", force="mesh").faces) > 100

    manifest = build_procedural(tmp_path / "shapes", per_class=2, classes=["box", "sphere"], test_fraction=0.5)
    result = tmp_path / "r.json"
    assert main(["mesh", "--held-out", str(manifest), "--num", "2", "--points", "1024", "--resolution", "32",
                 "--out", str(tmp_path / "h"), "--result", str(result)]) == 0
    report = json.loads(result.read_text())
    assert set(report["methods"]) == {"closing", "tangent_planes", "truth"} and report["shapes"] == 2
    assert report["methods"]["truth"]["chamfer"] < report["methods"]["tangent_planes"]["chamfer"]
    assert report["command"].startswith("multidiff mesh --held-out")
    capsys.readouterr()
    assert main(["mesh", str(tmp_path / "nothing.ply")]) == 2
    assert "nothing.ply" in capsys.readouterr().err
