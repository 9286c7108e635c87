"""Progressive distillation (Salimans & Ho 2022): the target is the x0 whose one step lands where the
teacher's two steps do, and rounds of halving on the toy mixture give a 2-step student that covers
the modes where the teacher at 2 evaluations does not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multidiff.core import SAMPLERS, ProgressiveDistillationLoss, sigma_grid
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def test_one_student_step_to_the_target_lands_on_the_teachers_two_steps():
    gm = two_d_mixture()
    seen = {}

    def student(x, sigma, cond=None):
        seen["x"], seen["sigma"] = x, sigma
        return torch.zeros_like(x)

    loss = ProgressiveDistillationLoss(gm, 4, 80.0, weight="uniform")
    x0 = gm.sample(6, torch.Generator().manual_seed(0))
    per_sample = loss(student, x0, None, torch.Generator().manual_seed(1))
    x, sigma = seen["x"], seen["sigma"]
    levels = sigma_grid(8, 0.002, 80.0, "nested").tolist()
    student_levels = sigma_grid(4, 0.002, 80.0, "nested").tolist()
    assert all(float(s) in [pytest.approx(v) for v in student_levels[:-1]] for s in sigma)
    for k in range(6):  # the teacher's two Euler steps by hand; the target x0~ solves x'' = x0~ + (s2 / s0)(x - x0~)
        j = min(range(8), key=lambda m: abs(levels[m] - float(sigma[k])))
        s0, s1, s2 = levels[j], levels[j + 1], levels[j + 2]
        xk = x[k:k + 1]
        d0 = gm(xk, torch.tensor([s0], dtype=F64))
        x1 = d0 + s1 / s0 * (xk - d0)
        d1 = gm(x1, torch.tensor([s1], dtype=F64))
        x2 = d1 + s2 / s1 * (x1 - d1)
        target = (x2 - s2 / s0 * xk) / (1 - s2 / s0)
        torch.testing.assert_close(per_sample[k], (target.float() ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_bad_student_steps_are_refused():
    with pytest.raises(ValueError, match="student_steps"):
        ProgressiveDistillationLoss(two_d_mixture(), 0, 80.0)


def _coverage(gm, out):
    dist, mode = (out.double()[:, None] - gm.means[None]).norm(dim=-1).min(1)
    freq = torch.bincount(mode, minlength=len(gm.weights)).double() / len(out)
    return 0.5 * float((freq - gm.weights).abs().sum()), float((dist < 3 * gm.stds[0]).double().mean())


def test_rounds_of_halving_give_a_two_step_student(tmp_path):
    """Teacher: the toy diffusion model (256,000 samples). Rounds 8 -> 4 -> 2 student steps, 32,000
    samples each, every student starting from its teacher (model.init_from)."""
    from multidiff.train import Trainer, load_config
    from multidiff.train.build import build_denoiser
    from multidiff.train.trainer import load_for_sampling

    recipe = Path(__file__).resolve().parents[1] / "recipes/toy/gmm.yaml"
    common = ["trainer.resume=null", "trainer.progress=false", "trainer.tracker=none", "trainer.preview_every_samples=0"]

    def train(out, samples, *extra):
        Trainer(load_config(recipe, [f"trainer.out_dir={out}", f"trainer.duration_samples={samples}",
                                     f"trainer.checkpoint_every_samples={samples}", *common, *extra])).fit()
        model, config, *_ = load_for_sampling(out, "cpu")
        return build_denoiser(model, config.objective)

    gm = two_d_mixture()
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1)) * 80
    teacher = train(tmp_path / "teacher", 256000)
    previous = tmp_path / "teacher"
    for steps in (8, 4, 2):
        student = train(tmp_path / f"student-{steps}", 32000, "objective.kind=distillation",
                        f"objective.distillation.teacher={previous}", f"objective.distillation.student_steps={steps}",
                        f"model.init_from={previous}", "objective.weighting=snr_plus_one", "optimizer.lr=1e-3",
                        "optimizer.warmup_samples=0", "optimizer.schedule=constant")
        previous = tmp_path / f"student-{steps}"
    two = _coverage(gm, SAMPLERS["euler"](student, x, sigma_grid(2, 0.002, 80.0, "nested")))
    teacher_same_grid = _coverage(gm, SAMPLERS["euler"](teacher, x, sigma_grid(2, 0.002, 80.0, "nested")))
    teacher_best = min((_coverage(gm, SAMPLERS[m](teacher, x, sigma_grid(2, 0.002, 80.0, s)))
                        for m in ("euler", "dpmpp_2m") for s in ("karras", "loglinear")), key=lambda c: c[0])
    assert two[0] < 0.15 and two[1] > 0.5, (two, teacher_same_grid, teacher_best)
    assert teacher_same_grid[1] < 0.35 and teacher_best[0] > 0.5, (two, teacher_same_grid, teacher_best)
