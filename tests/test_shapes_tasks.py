"""Completion and upsampling helpers, and the builders of registry-installed mesh sets."""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from multidiff.core import EDM, Denoiser, sigma_grid
from multidiff.shapes.tasks import complete, complete_rest, partial_cloud, upsample
from multidiff.shapes.transformer import latent_tiny, upsampler_small
from multidiff.train.testing import perturbed


def denoiser_of(model):
    return Denoiser(perturbed(model), EDM(sigma_data=1.0), "edm", sigma_data=1.0)


def test_partial_cloud_is_a_planar_cut():
    cloud = torch.randn(2, 100, 3)
    part = partial_cloud(cloud, 0.3, direction=(0, 1, 0))
    assert part.shape == (2, 30, 3)
    for b in range(2):  # the kept points are the 30 highest along y
        torch.testing.assert_close(part[b, :, 1].sort().values, cloud[b, :, 1].sort().values[-30:])


def test_completion_keeps_the_partial_points_and_is_deterministic():
    den = denoiser_of(latent_tiny(num_classes=2))
    partial = torch.randn(2, 24, 3)
    sigmas = sigma_grid(3, 0.002, 80.0, "karras")
    cond = {"label": torch.tensor([0, 1])}
    out = complete(den, partial, 64, sigmas, cond=cond, seed=5)
    assert out.shape == (2, 64, 3)
    torch.testing.assert_close(out[:, :24], partial)
    torch.testing.assert_close(complete(den, partial, 64, sigmas, cond=cond, seed=5), out)
    with pytest.raises(ValueError, match="num_points"):
        complete(den, partial, 20, sigmas)


def test_complete_rest_keeps_the_given_points_and_generates_only_the_rest():
    """A complete_rest model gets the scan as coarse tokens and generates num_points - known points;
    the result starts with the given points verbatim, and the generated part depends on the scan."""
    den = denoiser_of(upsampler_small(dim=32, heads=2, num_latents=8, depth=1, rounds=1, fourier_features=8))
    partial = torch.randn(2, 24, 3)
    sigmas = sigma_grid(3, 0.002, 80.0, "karras")
    out = complete_rest(den, partial, 64, sigmas, scan_points=16, seed=3)
    assert out.shape == (2, 64, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :24], partial)
    torch.testing.assert_close(complete_rest(den, partial, 64, sigmas, scan_points=16, seed=3), out)
    moved = complete_rest(den, partial + 1, 64, sigmas, scan_points=16, seed=3)
    assert float((moved[:, 24:] - out[:, 24:]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="num_points"):
        complete_rest(den, partial, 24, sigmas)


def test_upsample_shape_and_dependence_on_the_coarse_cloud():
    den = denoiser_of(upsampler_small(dim=32, heads=2, num_latents=8, depth=1, rounds=1, fourier_features=8))
    coarse = torch.randn(2, 16, 3)
    sigmas = sigma_grid(3, 0.002, 80.0, "karras")
    fine = upsample(den, coarse, 48, sigmas, seed=1)
    assert fine.shape == (2, 48, 3) and torch.isfinite(fine).all()
    assert float((upsample(den, coarse + 1, 48, sigmas, seed=1) - fine).abs().max()) > 1e-4


@pytest.mark.skipif(importlib.util.find_spec("pybullet_data") is None, reason="PyPI pybullet is not installed")
def test_pybullet_manifest(tmp_path):
    from multidiff.shapes.builders import build_pybullet
    from multidiff.shapes.io import sample_points

    rows = list(csv.DictReader(open(build_pybullet(tmp_path))))
    assert sum(r["class"] == "random" for r in rows) == 1000
    names = {r["name"] for r in rows if r["class"] == "named"}
    assert {"duck", "bunny"} <= names
    duck = next(r for r in rows if r["name"] == "duck")
    assert sample_points(duck["path"], 100).shape == (100, 3)


@pytest.mark.skipif(not Path("/usr/share/sweethome3d/furniture").is_dir(), reason="sweethome3d-furniture not installed")
def test_sweethome3d_catalog_and_one_library(tmp_path):
    from multidiff.shapes.builders import build_sweethome3d, sweethome3d_catalog
    from multidiff.shapes.io import sample_points

    catalog = sweethome3d_catalog()
    assert len(catalog) > 800 and all(r["model"].endswith(".obj") for r in catalog)
    # one small library, linked into its own folder so the test stays quick
    src = Path("/usr/share/sweethome3d/furniture/KatorLegaz.sh3f")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / src.name).symlink_to(src)
    rows = list(csv.DictReader(open(build_sweethome3d(tmp_path / "out", furniture_dir=tmp_path / "lib",
                                                      min_per_category=3, progress=False))))
    assert rows and {r["split"] for r in rows} == {"train", "test"}
    assert sample_points(tmp_path / "out" / rows[0]["path"], 50).shape == (50, 3)
