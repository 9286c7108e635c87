"""Frame prediction / interpolation with a trained video model, and its evaluation.

    python -m multidiff.video.predict runs/mmnist-predict/checkpoints/latest --num 256 --steps 16
    python -m multidiff.video.predict runs/mmnist-interpolate/checkpoints/latest --num 256

The model sees the given frames through its concatenated conditioning channels (a mask and the
given frames, :func:`multidiff.video.data.task_conditioning`); optionally (``replace``) the given
frames are also re-imposed at every noise level by masked sampling (``cond["known"]`` /
``cond["mask"]``, multidiff.core.masked), which also works for a model trained without concat
channels (unconditional), as in Ho et al. 2022 (VDM) Sec. 3.1 "replacement".

``mean`` is the one-step estimate E[x0 | given frames]: the denoiser applied at sigma_max, the
minimum-MSE prediction (blurry where the future is uncertain). ``sample`` is one draw of the
sampler. A draw X' from the true posterior, independent of the truth X given the frames, has
E|X' - X|^2 = 2 tr Cov[X | given] = 2 MMSE: a calibrated sample pays the posterior's spread twice,
so on data whose future is uncertain no single sample can score as well as the mean.
``sample_mean`` averages ``average`` draws (the Monte-Carlo posterior mean, MSE about
MMSE (1 + 1/average)). ``guidance`` > 1 applies classifier-free guidance between the given frames
and nothing given (a model trained with ``p_unconditional`` > 0), which narrows the draws towards
what the given frames imply (Ho & Salimans 2022). All are scored against the truth beside a copy
baseline: repeating the last given frame (prediction) or copying the nearer given frame
(interpolation), with a hand-made reference beside it: the last given frame moved at the given
frames' velocity (prediction), or a cross-fade of the frames either side of the gap (interpolation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..core import make_generators, sample
from ..core.guidance import cfg
from ..core.utils import mix_seed, randn_like
from .data import ClipArrayDataset, task_conditioning
from .metrics import constant_velocity_frames, linear_blend_frames, prediction_report


@torch.no_grad()
def predict_frames(model, objective, sampling, truth: torch.Tensor, given: int, *, task: str = "predict",
                   method: str = "sample", replace: bool = False, seed: int = 0, batch_size: int = 32,
                   extrapolate: str = "none", residual: bool = False, guidance: float = 1.0,
                   average: int = 8) -> torch.Tensor:
    """Fill in the frames of ``truth`` (N, C, T, H, W) that the task does not give.

    method: "sample" (the sampling config's sampler and steps), "sample_mean" (the mean of
    ``average`` samples, each clip's draws seeded apart from the single sample's) or "mean" (one
    denoiser call at sigma_max).
    guidance: classifier-free guidance scale between the given frames and none (1: the model alone).
    extrapolate: the first guess the model was trained with in its conditioning channels
    (the data set's ``extrapolate``; see :func:`multidiff.video.data.task_conditioning`);
    residual: the model generates x - guess (the data set's ``residual``), added back here.
    Returns (N, C, T, H, W) float32 on the CPU, with the given frames equal to the truth.
    """
    from ..train.build import build_denoiser
    from ..train.sampling import sampling_sigmas

    device = next(model.parameters()).device
    denoiser = build_denoiser(model, objective)
    sigmas = sampling_sigmas(sampling, denoiser.schedule)
    uses_concat = getattr(getattr(model, "config", None), "extra_in_channels", 0) > 0
    if method not in ("sample", "sample_mean", "mean"):
        raise ValueError(f"method must be 'sample', 'sample_mean' or 'mean', got {method!r}")
    if method == "sample_mean" and average < 1:
        raise ValueError(f"average must be at least 1 sample, got {average}")
    if guidance != 1.0:
        if not uses_concat:
            raise ValueError("guidance needs a model trained with given frames (concat channels) and "
                             "p_unconditional > 0; a generation model has no unconditional branch to guide from")
        # nothing given: mask and frames zero, as the data set's unconditional clips (task_conditioning)
        denoiser = cfg(denoiser, guidance, lambda c: {**c, "concat": torch.zeros_like(c["concat"])})
    out = []
    for start in range(0, len(truth), batch_size):
        x0 = truth[start:start + batch_size].to(device)
        conds = [task_conditioning(v, task, given, extrapolate=extrapolate) for v in x0]
        concat = torch.stack([c["concat"] for c in conds])
        mask = 1 - torch.stack([c["loss_mask"] for c in conds])  # (n, 1, T, 1, 1): 1 on given frames
        cond = {"concat": concat} if uses_concat else {}
        if hasattr(model, "text_encoder"):  # a caption model's unconditional branch is the empty caption
            cond["text"] = [""] * len(x0)
        gens = make_generators(seed, len(x0), device, start=start)
        noise = randn_like(x0, gens)
        if method == "mean":
            if not uses_concat:
                raise ValueError("method 'mean' needs a model trained with given frames (concat channels); "
                                 "a generation model predicts by replacement sampling only")
            pred = denoiser(noise * sigmas[0], sigmas[0].expand(len(x0)).to(device), cond or None)
        else:
            if replace or not uses_concat:
                cond = {**cond, "known": x0, "mask": mask}
            draws = average if method == "sample_mean" else 1
            pred = 0
            for draw in range(draws):
                if draw:  # draw 0 uses the clip's own seed, the single sample's
                    gens = make_generators(mix_seed(seed, -draw), len(x0), device, start=start)
                    noise = randn_like(x0, gens)
                pred = pred + sample(denoiser, noise * sigmas[0], sigmas, sampling.sampler, cond=cond or None,
                                     generator=gens)
            pred = pred / draws
        if residual:
            pred = pred + torch.stack([c["guess"] for c in conds])
        out.append(torch.lerp(pred.float(), x0.float(), mask).cpu())
    return torch.cat(out)


def evaluate_prediction(checkpoint, *, num: int = 256, steps: int | None = None, split: str = "test",
                        methods=("sample", "mean"), seed: int = 0, device=None, save=None,
                        given: int | None = None, guidance: float = 1.0, average: int = 8,
                        use_ema: bool = True, task: str | None = None) -> dict:
    """Score a checkpoint trained with a predict or interpolate task on ``num`` clips of ``split``;
    ``given`` frames for a model trained to generate whole clips (then filled in by replacement
    sampling). task: "predict" or "interpolate" (default: the training task's; "predict" for a
    generation model or one trained on "mixed"). ``guidance`` and ``average``: see
    :func:`predict_frames`; ``use_ema``: the EMA weights when saved."""
    from dataclasses import replace

    from ..train.trainer import load_for_sampling

    model, config, spec, _, folder, weights = load_for_sampling(checkpoint, device, use_ema=use_ema)
    trained_task, trained_given = spec.meta.get("task", "predict"), int(spec.meta.get("given_frames", 0))
    generation_model = trained_task == "generate" or trained_given <= 0
    if generation_model:
        if not given:
            raise ValueError(f"{folder} was trained without given frames (task {trained_task!r}); pass --given N to "
                             f"fill frames in by replacement sampling")
    else:
        given = given or trained_given
    if task is None:
        task = trained_task if trained_task in ("predict", "interpolate") and not generation_model else "predict"
    if task not in ("predict", "interpolate"):
        raise ValueError(f"scoring supports the tasks 'predict' and 'interpolate', not {task!r}")
    if not generation_model and trained_task not in (task, "mixed"):
        raise ValueError(f"{folder} was trained on the {trained_task!r} task; it cannot be scored on {task!r}")
    if guidance != 1.0 and float(spec.meta.get("p_unconditional", 1.0)) <= 0.0:
        raise ValueError(f"{folder} was trained with data.params.p_unconditional=0 (always given frames), so it has "
                         f"no unconditional branch for guidance {guidance}")
    frames = spec.sample_shape[1]
    clips = ClipArrayDataset(config.data.path, frames, split=split, random_crop=False)
    truth = torch.stack([clips.clip(k) for k in range(min(num, len(clips)))])
    sampling = replace(config.sampling, steps=steps or config.sampling.steps)
    report = {"checkpoint": str(folder), "weights": weights.name, "task": task, "given_frames": given,
              "conditioning": "replacement" if generation_model else "masked training",
              "extrapolate": "none" if generation_model else spec.meta.get("extrapolate", "none"),
              "residual": False if generation_model else bool(spec.meta.get("residual", False)),
              "frames": frames, "num_clips": len(truth), "sampler": sampling.sampler, "steps": sampling.steps,
              "guidance": float(guidance)}
    if "sample_mean" in methods:
        report["average"] = int(average)
    # the hand-made reference: the last given frame moved at the given frames' velocity (prediction,
    # needs two given frames), or a cross-fade across the gap (interpolation)
    references = {"predict": {"constant_velocity": constant_velocity_frames} if given >= 2 else {},
                  "interpolate": {"linear_blend": linear_blend_frames}}[task]
    for name, make in references.items():
        scores = prediction_report(make(truth, given), truth, given, task=task)
        report[name] = {"mse": scores["mse"], "mse_improvement": scores["mse_improvement"]}
    for method in methods:
        pred = predict_frames(model, config.objective, sampling, truth, given, task=task, method=method, seed=seed,
                              extrapolate=report["extrapolate"], residual=report["residual"],
                              guidance=guidance, average=average)
        report[method] = prediction_report(pred, truth, given, task=task)
        if save is not None:
            from .io import frame_grid

            frame_grid([v for pair in zip(truth[:8], pred[:8]) for v in pair], Path(save) / f"{method}.png", scale=2)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="frame prediction scores of a video checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--methods", default="sample,mean",
                   help="comma-separated: sample (one draw), sample_mean (the mean of --average draws), "
                        "mean (one denoiser call at sigma_max)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale between the given frames and none (1: off)")
    p.add_argument("--average", type=int, default=8, help="draws averaged by the sample_mean method")
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write report.json and truth/prediction grids here")
    p.add_argument("--task", default=None, choices=("predict", "interpolate"),
                   help="the frames to fill in (default: the training task's)")
    p.add_argument("--given", type=int, default=None,
                   help="frames given (default: the training task's); needed for a model trained to generate")
    a = p.parse_args(argv)
    try:
        report = evaluate_prediction(a.checkpoint, num=a.num, steps=a.steps, split=a.split,
                                     methods=a.methods.split(","), seed=a.seed, device=a.device, save=a.out,
                                     given=a.given, guidance=a.guidance, average=a.average,
                                     use_ema=not a.no_ema, task=a.task)
    except (FileNotFoundError, ValueError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return 2
    for key, label in (("constant_velocity", "constant-velocity extrapolation of the last given frame"),
                       ("linear_blend", "cross-fade of the frames either side of the gap")):
        if key in report:
            print(f"{label}: mse {report[key]['mse']:.5f} (improvement {100 * report[key]['mse_improvement']:.1f}%)")
    print(f"task {report['task']}, {report['given_frames']} frames given; baseline: "
          f"{report[a.methods.split(',')[0]]['baseline']}")
    for method in a.methods.split(","):
        r = report[method]
        print(f"{method:>11}: mse {r['mse']:.5f} (baseline {r['baseline_mse']:.5f}, improvement "
              f"{100 * r['mse_improvement']:.1f}%)  psnr {r['psnr']:.2f} dB (baseline {r['baseline_psnr']:.2f})"
              + (f"  ssim {r['ssim']:.4f} (baseline {r['baseline_ssim']:.4f})" if "ssim" in r else ""))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
