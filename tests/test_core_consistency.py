"""Few-step generation by consistency training (ECT, Geng et al. 2024) and multistep consistency
sampling (Song et al. 2023): the loss's stages and target, the sampler's update, and a trained toy
model whose 1- and 2-step draws cover the mixture where a diffusion model of the same training
budget, at the same 2 evaluations, collapses."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from multidiff.core import SAMPLERS, ConsistencyLoss, LogNormal, sigma_grid
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")


def test_r_of_t_starts_as_diffusion_and_tightens_towards_t():
    loss = ConsistencyLoss(LogNormal(-1.1, 2.0), q=2.0, stages=8)
    t = torch.logspace(-3, math.log10(80), 50)
    gaps = []
    for fraction in (0.0, 0.2, 0.5, 0.99):
        loss.set_progress(fraction)
        r = loss.r_of_t(t)
        assert (r >= 0).all() and (r < t).all()
        gaps.append(float(((t - r) / t).mean()))
    assert gaps[0] == 1.0  # stage 0: r = 0 everywhere, plain denoising
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.05
    loss.set_progress(1.0)  # the end of training stays in the last stage
    assert loss.stage == 7


def test_stage_zero_is_the_denoising_loss_over_t():
    gm = two_d_mixture()
    x0 = gm.sample(64, torch.Generator().manual_seed(0)).float()
    loss = ConsistencyLoss(LogNormal(-1.1, 2.0), huber_c=0.0)
    out = loss(gm, x0, None, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, by hand
    t = LogNormal(-1.1, 2.0).sample(64, g)
    x_t = x0 + torch.randn(x0.shape, generator=g) * t[:, None]
    torch.testing.assert_close(out, ((gm(x_t, t) - x0) ** 2).mean(1) / t)


def test_the_target_carries_no_gradient_and_is_the_model_at_r():
    calls = []
    weight = torch.nn.Parameter(torch.tensor(0.5))

    def denoiser(x, sigma, cond=None):
        calls.append((sigma.clone(), torch.is_grad_enabled()))
        return x * weight

    loss = ConsistencyLoss(LogNormal(0.0, 0.5), huber_c=0.0)
    loss.set_progress(0.99)
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    out = loss(denoiser, x0, None, torch.Generator().manual_seed(2))
    (target_sigma, target_grad), (online_sigma, online_grad) = calls
    assert not target_grad and online_grad
    assert (target_sigma < online_sigma).all()  # r < t
    out.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad)
    # by hand: with f = w x, the loss is mean((w x_t - w x_r)^2) / (t - r) = w^2 (t - r) mean(n^2)
    g = torch.Generator().manual_seed(2)
    t = LogNormal(0.0, 0.5).sample(8, g)
    n = torch.randn(x0.shape, generator=g)
    r = loss.r_of_t(t)
    torch.testing.assert_close(out.detach(), 0.25 * (t - r) * (n**2).mean(1), rtol=1e-4, atol=1e-6)


def test_multistep_consistency_sampling_is_song_et_al_algorithm_1():
    gm = two_d_mixture()
    grid = torch.tensor([80.0, 0.8, 0.2, 0.0], dtype=torch.float64)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = SAMPLERS["consistency"](gm, x, grid, generator=torch.Generator().manual_seed(4))
    g, ref = torch.Generator().manual_seed(4), x
    for level, nxt in ((80.0, 0.8), (0.8, 0.2)):
        ref = gm(ref, torch.full((5,), level, dtype=torch.float64)) + nxt * torch.randn(ref.shape, generator=g,
                                                                                        dtype=torch.float64)
    ref = gm(ref, torch.full((5,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def _mode_coverage(gm, out):
    """(total variation of the mode frequencies from uniform, share within 3 std of a mode)."""
    dist, mode = (out.double()[:, None] - gm.means[None]).norm(dim=-1).min(1)
    freq = torch.bincount(mode, minlength=len(gm.weights)).double() / len(out)
    return 0.5 * float((freq - gm.weights).abs().sum()), float((dist < 3 * gm.stds[0]).double().mean())


def test_consistency_training_gives_one_and_two_step_draws(tmp_path):
    """ECT on the toy mixture (256,000 samples, as the diffusion model beside it): 1 and 2 steps
    cover every mode with most draws on one; the diffusion model at 2 evaluations (its best ODE
    sampler there) puts nearly everything on the centre mode."""
    from multidiff.train import Trainer, load_config
    from multidiff.train.build import build_denoiser
    from multidiff.train.trainer import load_for_sampling

    gm = two_d_mixture()
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1)) * 80
    common = ["trainer.resume=null", "trainer.duration_samples=256000", "trainer.progress=false", "trainer.tracker=none",
              "trainer.preview_every_samples=0", "trainer.checkpoint_every_samples=256000"]
    scores = {}
    for kind, extra in (("consistency", ["objective.kind=consistency", "objective.noise.p_mean=-1.1",
                                         "objective.noise.p_std=2.0", "sampling.sampler=consistency"]),
                        ("diffusion", [])):
        out_dir = tmp_path / kind
        recipe = Path(__file__).resolve().parents[1] / "recipes/toy/gmm.yaml"
        Trainer(load_config(recipe, [f"trainer.out_dir={out_dir}", *common, *extra])).fit()
        model, config, *_ = load_for_sampling(out_dir, "cpu")
        denoiser = build_denoiser(model, config.objective)
        if kind == "consistency":
            for name, grid in (("1 step", [80.0, 0.0]), ("2 steps", [80.0, 0.4, 0.0])):
                grid = torch.tensor(grid, dtype=torch.float64)
                scores[name] = _mode_coverage(gm, SAMPLERS["consistency"](denoiser, x, grid,
                                                                          generator=torch.Generator().manual_seed(2)))
        else:
            scores["diffusion, 2 evaluations"] = min(
                (_mode_coverage(gm, SAMPLERS[m](denoiser, x, sigma_grid(2, 0.002, 80.0, s)))
                 for m in ("euler", "dpmpp_2m") for s in ("karras", "loglinear")), key=lambda tv_near: tv_near[0])
    for name in ("1 step", "2 steps"):
        tv, near = scores[name]
        assert tv < 0.1 and near > 0.5, (name, scores)
    assert scores["2 steps"][1] > scores["1 step"][1] - 0.02, scores
    assert scores["diffusion, 2 evaluations"][0] > 0.5, scores  # collapsed onto few modes


@pytest.mark.parametrize("overrides", [
    ["model.name=audio_unet1d", "model.params.preset=tiny", "model.params.channels=[8, 16]", "model.params.factors=[4]",
     "model.params.attention_heads=2", "model.params.emb_dim=32", "data.params.shape=[1, 64]"],
    ["model.name=video_unet3d", "model.params.preset=tiny", "model.params.channels=[8, 16]", "model.params.emb_dim=32",
     "model.params.attention_heads=2", "data.params.shape=[1, 3, 8, 8]"],
    ["model.name=shapes_transformer", "model.params.preset=latent_tiny", "model.params.dim=16", "model.params.depth=1",
     "model.params.num_latents=4", "model.params.fourier_features=4", "data.params.shape=[16, 3]"],
], ids=["audio", "video", "shapes"])
def test_consistency_training_runs_on_every_modality_backbone(overrides, tmp_path):
    """The objective needs nothing of a backbone beyond the denoiser contract: each modality's trains,
    its loss finite, and samples in one step through the pipeline contract (multidiff sample)."""
    from multidiff.cli import main
    from multidiff.train import Trainer, load_config

    config = load_config(None, [f"trainer.out_dir={tmp_path / 'run'}", "trainer.device=cpu", "trainer.batch_size=4",
                                "trainer.duration_samples=16", "trainer.tracker=none", "trainer.progress=false",
                                "trainer.resume=null", "trainer.cpu_threads=1", "data.name=synthetic",
                                "data.params.num_classes=2", "objective.kind=consistency", "sampling.sampler=consistency",
                                "sampling.sigma_min=0.4", *overrides])
    result = Trainer(config).fit()
    assert math.isfinite(result.last_loss) and result.samples_seen == 16
    assert main(["sample", str(tmp_path / "run"), "--num", "2", "--steps", "1", "--out", str(tmp_path / "s")]) == 0
    from safetensors.torch import load_file

    samples = load_file(tmp_path / "s" / "samples.safetensors")["samples"]
    assert samples.shape[0] == 2 and torch.isfinite(samples).all()


def test_a_longer_run_on_resume_warns_that_the_stage_moves(tmp_path):
    from multidiff.train import Trainer, load_config

    recipe = Path(__file__).resolve().parents[1] / "recipes/toy/gmm_consistency.yaml"
    common = [f"trainer.out_dir={tmp_path}", "trainer.progress=false", "trainer.tracker=none",
              "trainer.preview_every_samples=0", "trainer.batch_size=256"]
    Trainer(load_config(recipe, [*common, "trainer.resume=null", "trainer.duration_samples=2048"])).fit()
    resumed = Trainer(load_config(recipe, [*common, "trainer.resume=auto", "trainer.duration_samples=8192"]))
    assert any("consistency stages now span 8,192 samples instead of 2,048" in line and "from 7 to 2" in line
               for line in resumed.resume_changes), resumed.resume_changes
