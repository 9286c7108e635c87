"""The shapes modality through the trainer: recipe -> training -> previews -> sample -> eval."""
import csv
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from multidiff.cli import main
from multidiff.shapes.builders import build_procedural
from multidiff.shapes.io import load_ply_points
from multidiff.train.config import ConfigError, load_config
from multidiff.train.testing import device_under_test

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/shapes/procedural.yaml")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return build_procedural(tmp_path_factory.mktemp("procedural"), per_class=3, classes=("box", "torus", "chair"),
                            test_fraction=0.34, progress=False)


def overrides(manifest, out):
    return [f"data.path={manifest}", "data.params.num_points=64", "data.params.cache_dir=null",
            "model.params.preset=latent_tiny", "model.params.dim=32", "model.params.depth=1", "model.params.rounds=1",
            "model.params.num_latents=8", "model.params.heads=2", "model.params.fourier_features=8",
            f"trainer.out_dir={out}", f"trainer.device={device_under_test()}", "trainer.batch_size=4",
            "trainer.duration_samples=16", "trainer.log_every_samples=4", "trainer.checkpoint_every_samples=16",
            "trainer.preview_every_samples=16", "trainer.preview_samples=3", "trainer.tracker=none",
            "trainer.progress=false", "trainer.resume=null", "trainer.cpu_threads=1", "trainer.compile=false",
            "sampling.steps=3", "sampling.num_samples=6", "sampling.batch_size=6", "sampling.sample_shape=null"]


def test_shapes_recipe_trains_previews_samples_and_evaluates(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(manifest, out)]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    plys = sorted((out / "previews").rglob("*.ply"))
    assert len(plys) == 3 and list((out / "previews").rglob("clouds.png"))
    assert load_ply_points(plys[0]).shape == (64, 3)
    ckpt = out / "checkpoints" / "latest"
    assert main(["sample", str(ckpt), "--num", "2", "--steps", "3", "--seed", "1", "--label", "1",
                 "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").rglob("*.ply"))) == 2
    # a set function: it samples more points than it trained on (the recipe trains on 1024, samples 2048)
    assert main(["sample", str(ckpt), "--num", "2", "--steps", "3", "--shape", "96", "3",
                 "--out", str(tmp_path / "more")]) == 0
    more = sorted((tmp_path / "more").rglob("*.ply"))
    assert len(more) == 2 and load_ply_points(more[0]).shape == (96, 3)
    assert main(["sample", str(ckpt), "--num", "1", "--shape", "96", "--out", str(tmp_path / "bad")]) == 2
    assert "sample_shape" in capsys.readouterr().err
    from multidiff.train.sampling import Conditioning, generate
    from multidiff.train.trainer import load_for_sampling

    model, config, spec, *_ = load_for_sampling(ckpt, "cpu", False)
    model.requires_grad_(True)  # as a model in training would: sampling must still build no graph
    sampling = replace(config.sampling, steps=2, sample_shape=None)
    known = torch.zeros(2, 40, 3)  # no sample_shape: the shape of the given part
    out = generate(model, config.objective, spec, sampling, Conditioning(known=known, mask=torch.zeros(1, 40, 1)), num=2)
    assert out.shape == (2, 40, 3) and not out.requires_grad  # sampling builds no autograd graph
    with pytest.raises(ValueError, match="known has per-sample shape"):
        generate(model, config.objective, spec, replace(sampling, sample_shape=(50, 3)),
                 Conditioning(known=known, mask=torch.zeros(1, 40, 1)), num=2)
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--num", "6", "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "1nna_cd" in printed and "mmd_cd" in printed and "1nna_emd" in printed


@pytest.mark.skipif(not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile on CPU needs a C++ compiler (.ci/run installs g++)")
def test_recipe_settings_bf16_and_compile_train_like_eager(manifest, tmp_path):
    """The recipe trains with bf16 autocast under torch.compile on CPUs: the same seeded run, eager and
    compiled, follows the same loss curve (the kernels differ, so not bit for bit)."""
    import torch._dynamo

    from multidiff.train.trainer import Trainer

    recipe = load_config(RECIPE, validate_paths=False).trainer
    assert recipe.mixed_precision == "bf16" and recipe.compile is True
    curves = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        args = [a for a in overrides(manifest, out) if not a.startswith("trainer.compile=")]
        torch._dynamo.reset()
        trainer = Trainer(load_config(RECIPE, [*args, f"trainer.compile={str(compiled).lower()}",
                                               "trainer.duration_samples=48", "trainer.log_every_samples=8",
                                               "trainer.preview_every_samples=0"]))
        assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule) == compiled
        graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        trainer.fit()
        if compiled:  # dynamo really captured and compiled graphs (no silent eager fallback)
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before
        assert trainer.accelerator.mixed_precision == "bf16"
        curves[compiled] = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(curves[True]) == len(curves[False]) == 6
    assert all(math.isfinite(v) for v in curves[True])
    assert curves[True] == pytest.approx(curves[False], rel=0.05)


def test_eval_reference_scores_the_same_samples_against_another_held_out_set(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(manifest, out)]) == 0
    ckpt = str(out / "checkpoints" / "latest")
    assert main(["sample", ckpt, "--num", "6", "--steps", "3", "--out", str(tmp_path / "s")]) == 0
    samples = str(tmp_path / "s" / "samples.safetensors")
    other = build_procedural(tmp_path / "val", per_class=3, classes=("box", "torus", "chair"), seed=5,
                             test_fraction=1.0, progress=False)

    def scores(*extra):
        assert main(["eval", ckpt, "--samples", samples, "--out", str(tmp_path / "e"), *extra]) == 0
        return json.loads((tmp_path / "e" / "metrics.json").read_text())

    default, same, val = scores(), scores("--reference", str(manifest)), scores("--reference", str(other))
    assert default["reference"]["manifest"] == str(manifest) and val["reference"]["manifest"] == str(other)
    assert default["reference"]["sha1"] != val["reference"]["sha1"]
    assert same["metrics"] == default["metrics"]  # the training manifest named explicitly: identical numbers
    # one held-out cloud per class in the training manifest, three in the other: 6 samples of 3 classes
    # find more references there, and other nearest neighbours
    assert val["metrics"]["n_reference"] > default["metrics"]["n_reference"]
    assert val["metrics"]["mmd_cd"] != default["metrics"]["mmd_cd"]
    capsys.readouterr()
    assert main(["eval", ckpt, "--samples", samples, "--reference", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_data_set_spec_and_items(manifest):
    from multidiff.shapes.registry import ShapeDataParams, ShapeTrainData

    ds = ShapeTrainData(ShapeDataParams(num_points=32, passes_per_epoch=5), str(manifest), seed=0)
    assert ds.spec.sample_shape == (32, 3) and ds.spec.num_classes == 3 and ds.spec.modality == "shapes"
    assert ds.spec.meta["class_names"] == {"0": "box", "1": "torus", "2": "chair"}
    assert len(ds) == 6 * 5  # 2 train shapes per class, 5 passes
    item = ds[0]
    assert item["x"].shape == (32, 3) and item["label"] == 0
    torch.testing.assert_close(ds[0]["x"], ds[0]["x"])  # deterministic per index
    again = ds[6]  # the same mesh in the next pass: a new subset of its surface points
    assert again["label"] == 0 and not torch.equal(again["x"], item["x"])


def test_missing_shape_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        load_config(RECIPE, [f"data.path={tmp_path / 'nope.csv'}"])


@pytest.mark.parametrize("name", ["procedural", "furniture", "procedural_text"])
def test_every_shapes_recipe_is_a_valid_config(name):
    config = load_config(str(REPO / f"recipes/shapes/{name}.yaml"), validate_paths=False)
    assert config.model.name == "shapes_transformer" and config.data.name == "shapes"


def test_upsampler_trains_on_coarse_conditioning(manifest, tmp_path):
    """data.params.coarse_points puts cond['coarse'] in every batch; the upsampler preset consumes it."""
    from multidiff.train.trainer import Trainer

    cfg = load_config(RECIPE, overrides(manifest, tmp_path / "u") + [
        "model.params.preset=upsampler_small", "data.params.coarse_points=16", "trainer.preview_every_samples=0"])
    trainer = Trainer(cfg)
    item = trainer.dataset[0]
    assert item["x"].shape == (64, 3) and item["coarse"].shape == (16, 3)
    batch = {"x": item["x"][None], "coarse": item["coarse"][None], "label": torch.tensor([item["label"]]),
             "position": torch.tensor([0])}
    device = trainer.accelerator.device  # auto: cuda on a GPU machine
    cond = trainer._cond(batch, slice(0, 1), [torch.Generator(device).manual_seed(0)])
    assert set(cond) == {"coarse", "label"}
    loss = trainer.loss_fn(trainer.denoiser, batch["x"].to(device), cond, [torch.Generator(device).manual_seed(0)])
    assert loss.shape == (1,) and torch.isfinite(loss).all()



def run_complete_script(checkpoint, out):
    """recipes/shapes/complete.py on 2 held-out shapes with 3 steps; its metrics.json."""
    import json
    import runpy
    import sys

    script = str(REPO / "recipes/shapes/complete.py")
    argv = sys.argv
    try:
        sys.argv = [script, str(checkpoint), "--num", "2", "--steps", "3", "--out", str(out)]
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = argv
    return json.loads((out / "metrics.json").read_text())


def test_completion_task_conditions_on_random_partial_scans(manifest, tmp_path):
    """data.params.task=complete: cond['coarse'] is a planar cut of the item's own cloud (a subset of
    its points, on one side of a plane), new each epoch; the transformer gets coarse channels by
    itself; recipes/shapes/complete.py then conditions on the cut instead of imposing it."""

    from multidiff.shapes.registry import random_cut
    from multidiff.shapes.tasks import resample_points
    from multidiff.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(200, 3)
    part = resample_points(random_cut(cloud, g, keep_range=(0.4, 0.4))[0], g, 50)
    assert part.shape == (50, 3) and all(any(torch.equal(p, c) for c in cloud) for p in part)
    out = tmp_path / "c"
    extra = ["data.params.task=complete", "data.params.partial_points=16", "trainer.preview_every_samples=0"]
    trainer = Trainer(load_config(RECIPE, overrides(manifest, out) + extra))
    assert trainer.unwrapped().config.coarse_channels == 3
    item = trainer.dataset[0]
    assert item["coarse"].shape == (16, 3)
    assert all(any(torch.equal(p, c) for c in item["x"]) for p in item["coarse"])  # the scan is part of the shape
    trainer.dataset.set_epoch(1)
    assert not torch.equal(trainer.dataset[0]["coarse"], item["coarse"])
    assert main(["train", RECIPE, *overrides(manifest, out), *extra]) == 0
    metrics = run_complete_script(out / "checkpoints" / "latest", tmp_path / "o")
    assert metrics["method"] == "partial-scan conditioning (trained)" and metrics["cd_completion_to_truth"] > 0
    with pytest.raises(ValueError, match="unknown shapes task"):
        Trainer(load_config(RECIPE, overrides(manifest, tmp_path / "x") + ["data.params.task=upsample"]))


def test_complete_rest_task_targets_the_far_side_of_the_cut(manifest, tmp_path):
    """data.params.task=complete_rest: a planar cut splits a 4x denser draw; cond['coarse'] is drawn from
    the kept side and x (num_points of them) from the other, so the two are disjoint and separated by
    the cut's plane; complete.py then keeps the given points and generates the rest."""

    from multidiff.shapes.registry import random_cut
    from multidiff.train.trainer import Trainer

    cloud = torch.randn(200, 3)
    kept, rest = random_cut(cloud, torch.Generator().manual_seed(4), keep_range=(0.3, 0.3))
    assert (len(kept), len(rest)) == (60, 140)
    g = torch.Generator().manual_seed(4)
    torch.rand(2, generator=g)  # the draws random_cut makes: the keep fraction, then the direction
    direction = torch.randn(3, generator=g)
    assert float((kept @ direction).min()) >= float((rest @ direction).max())
    assert torch.equal(torch.cat([kept, rest]).sort(0).values, cloud.sort(0).values)
    out = tmp_path / "r"
    extra = ["data.params.task=complete_rest", "data.params.partial_points=16", "trainer.preview_every_samples=0"]
    trainer = Trainer(load_config(RECIPE, overrides(manifest, out) + extra))
    assert trainer.unwrapped().config.coarse_channels == 3
    item = trainer.dataset[0]
    n = trainer.dataset.spec.sample_shape[0]
    assert item["x"].shape == (n, 3) and item["coarse"].shape == (16, 3)
    assert not any(any(torch.equal(p, c) for c in item["x"]) for p in item["coarse"])  # disjoint sides
    assert len(torch.unique(item["x"], dim=0)) == n  # the far side held enough points: no repeats
    assert main(["train", RECIPE, *overrides(manifest, out), *extra]) == 0
    metrics = run_complete_script(out / "checkpoints" / "latest", tmp_path / "o")
    assert metrics["method"].startswith("masked training") and metrics["cd_completion_to_truth"] > 0


def test_recipe_trains_on_1024_points_and_samples_2048(manifest):
    config = load_config(RECIPE, [f"data.path={manifest}"])
    assert config.data.params["num_points"] == 1024 and config.sampling.sample_shape == (2048, 3)
    with pytest.raises(ConfigError, match="sampling.sample_shape"):
        load_config(RECIPE, [f"data.path={manifest}", "sampling.sample_shape=[2048, x]"])


def test_surface_precision_script_with_the_local_path(manifest, tmp_path, capsys):
    """recipes/shapes/surface_precision.py on a model trained with local_neighbors: one row per sigma,
    the noisy points' distance to the surface growing with sigma (about sigma^2 for small sigma)."""
    import runpy
    import sys

    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(manifest, out), "model.params.local_neighbors=4",
                 "model.params.local_reference_points=64"]) == 0
    argv = sys.argv
    try:
        sys.argv = ["surface_precision.py", str(out / "checkpoints" / "latest"), "--clouds", "2",
                    "--sigmas", "0.05", "0.2"]
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / "recipes/shapes/surface_precision.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    rows = [line.split("|")[1:4] for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.")]
    (s1, noisy1, den1), (s2, noisy2, den2) = [[float(v) for v in r] for r in rows]
    assert (s1, s2) == (0.05, 0.2) and 0 < noisy1 < noisy2 and math.isfinite(den1) and math.isfinite(den2)
    assert 0.3 * 0.05 ** 2 < noisy1 < 3 * 0.05 ** 2
