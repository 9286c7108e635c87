"""``multidiff train | sample | eval | info`` end to end on the toy recipe (in-process)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multidiff.cli import main
from multidiff.train.testing import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/toy/gmm.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short conditional run of the toy recipe with previews and TensorBoard logging."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", RECIPE, *tiny_overrides(out, steps=6), "trainer.tracker=tensorboard",
                 "trainer.preview_every_samples=192", "trainer.preview_samples=32", "trainer.checkpoint_every_samples=128",
                 "data.params.conditional=true"])
    assert code == 0
    return out


def test_train_writes_everything(run, capsys):
    assert (run / "checkpoints" / "latest").is_symlink()
    assert (run / "losses.csv").read_text().count("\n") == 7
    assert sorted(p.name for p in (run / "previews").glob("*.png")) == ["samples-000000000192.png",
                                                                       "samples-000000000384.png"]
    assert list((run / "logs").rglob("events.out.tfevents*"))
    assert json.loads((run / "config.json").read_text())["data"]["params"]["conditional"] is True


def test_train_prints_where_it_wrote(tmp_path, capsys):
    assert main(["train", RECIPE, *tiny_overrides(tmp_path / "r", steps=2)]) == 0
    out = capsys.readouterr().out
    assert f"wrote checkpoint: {tmp_path / 'r' / 'checkpoints' / 'ckpt-000000000128'}" in out
    assert f"wrote loss log: {tmp_path / 'r' / 'losses.csv'}" in out
    # continue the run from its checkpoint folder, with a longer duration
    assert main(["train", str(tmp_path / "r" / "checkpoints" / "latest"), "trainer.duration_samples=256"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "ckpt-000000000256" in out


def test_sample_k_does_not_depend_on_num(run, tmp_path, capsys):
    for sampler in ("heun", "euler_ancestral"):
        a, b = tmp_path / f"{sampler}-a", tmp_path / f"{sampler}-b"
        assert main(["sample", str(run / "checkpoints" / "latest"), "--num", "5", "--steps", "6", "--sampler", sampler,
                     "--seed", "3", "--out", str(a), "--device", "cpu"]) == 0
        assert main(["sample", str(run), "--num", "9", "--steps", "6", "--sampler", sampler, "--seed", "3",
                     "--batch-size", "4", "--out", str(b), "--device", "cpu"]) == 0
        sa, sb = load_file(a / "samples.safetensors"), load_file(b / "samples.safetensors")
        assert sa["samples"].shape == (5, 2) and sb["samples"].shape == (9, 2)
        torch.testing.assert_close(sa["samples"], sb["samples"][:5], rtol=1e-5, atol=1e-6)
        assert torch.equal(sa["labels"], sb["labels"][:5])
        assert (a / "samples.png").is_file()
    out = capsys.readouterr().out
    assert f"wrote samples: {a / 'samples.safetensors'}" in out and f"wrote preview: {a / 'samples.png'}" in out


def test_sample_with_guidance_and_label(run, tmp_path):
    out = tmp_path / "g"
    assert main(["sample", str(run), "--num", "4", "--steps", "4", "--guidance", "2.5", "--label", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    s = load_file(out / "samples.safetensors")
    assert torch.isfinite(s["samples"]).all() and s["labels"].tolist() == [3, 3, 3, 3]


def test_eval_and_info(run, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["eval", str(run), "--num", "64", "--steps", "6", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    for key in ("nll", "mean_dist_to_mode", "mode_coverage", "in_mode_fraction", "label_accuracy"):
        assert key in report["metrics"]
    assert f"wrote metrics: {out / 'metrics.json'}" in capsys.readouterr().out
    # evaluating saved samples
    samples = tmp_path / "s"
    assert main(["sample", str(run), "--num", "16", "--steps", "4", "--out", str(samples), "--device", "cpu"]) == 0
    assert main(["eval", str(run), "--samples", str(samples / "samples.safetensors"), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 16
    capsys.readouterr()
    assert main(["info", str(run / "checkpoints" / "latest")]) == 0
    text = capsys.readouterr().out
    assert "384 / 384 samples seen" in text and "ema.safetensors" in text and "toy_mlp" in text
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["samples_seen"] == 384


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", RECIPE, "trainer.batch_sise=3"]) == 2
    assert "trainer.batch_sise" in capsys.readouterr().err
    assert main(["train", RECIPE, f"data.path={tmp_path / 'missing.npy'}"]) == 2
    assert "data.path" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert main(["sample", str(tmp_path), "--num", "2"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2


def test_print_config(capsys):
    assert main(["train", RECIPE, "trainer.batch_size=128", "--print-config"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["batch_size"] == 128 and printed["model"]["params"]["hidden"] == 128


def test_autoguidance_with_a_weaker_checkpoint(run, tmp_path, capsys):
    """--guide-with: guided by itself the sampler sees D + w (D - D) = D, the unguided samples; a
    weaker model of the same classes (a shorter run from another seed) moves them; a model of other
    classes is refused by name."""
    latest = run / "checkpoints" / "latest"
    weak = tmp_path / "weak"
    assert main(["train", RECIPE, *tiny_overrides(weak, steps=1), "data.params.conditional=true", "trainer.seed=1"]) == 0

    def draw(name, *extra):
        assert main(["sample", str(latest), "--num", "6", "--steps", "4", "--seed", "1", "--out", str(tmp_path / name),
                     "--device", "cpu", *extra]) == 0
        return load_file(tmp_path / name / "samples.safetensors")["samples"]

    plain = draw("plain")
    torch.testing.assert_close(draw("self", "--guide-with", str(latest), "--guidance", "3"), plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(draw("one", "--guide-with", str(weak), "--guidance", "1"), plain)
    guided = draw("guided", "--guide-with", str(weak), "--guidance", "2")
    # the same as the core wrapper over both loaded models (the toy models start near c_skip x, so
    # the two differ little after a few steps; the wiring is what is checked)
    from dataclasses import replace

    from multidiff.core import Autoguidance, make_generators, sample
    from multidiff.train.build import build_denoiser
    from multidiff.train.sampling import default_labels, sampling_sigmas
    from multidiff.train.trainer import load_for_sampling

    good, config, spec, *_ = load_for_sampling(latest, "cpu", use_ema=True)
    bad, bad_config, *_ = load_for_sampling(weak, "cpu", use_ema=True)
    d_good, d_bad = build_denoiser(good, config.objective), build_denoiser(bad, bad_config.objective)
    sigmas = sampling_sigmas(replace(config.sampling, steps=4), d_good.schedule)
    gens = make_generators(1, 6, "cpu")
    x = torch.stack([torch.randn(tuple(spec.sample_shape), generator=g) for g in gens]) * float(sigmas[0])
    with torch.no_grad():
        expected = sample(Autoguidance(d_good, d_bad, 2.0), x, sigmas, config.sampling.sampler,
                          cond={"label": default_labels(6, spec)}, generator=gens)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-6)
    assert float((guided - plain).abs().max()) > 1e-4
    other = tmp_path / "uncond"
    assert main(["train", RECIPE, *tiny_overrides(other, steps=1)]) == 0
    capsys.readouterr()
    assert main(["sample", str(latest), "--num", "2", "--steps", "2", "--guide-with", str(other), "--guidance", "2",
                 "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--guide-with" in err and "num_classes" in err and str(other) in err


def test_seeds_share_no_samples(run, tmp_path):
    """Sample k of seed s comes from a hash of (s, k): seeds 7 and 8 share no draw (with seed + k they
    were the same samples shifted by one)."""
    draws = {}
    for seed in (7, 8):
        out = tmp_path / str(seed)
        assert main(["sample", str(run), "--num", "6", "--steps", "4", "--seed", str(seed), "--out", str(out),
                     "--device", "cpu"]) == 0
        draws[seed] = load_file(out / "samples.safetensors")["samples"]
    assert float(torch.cdist(draws[7], draws[8]).min()) > 1e-4
