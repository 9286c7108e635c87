"""Shape completion from a partial cloud with any trained shapes checkpoint (masked sampling):
held-out shapes are cut by a plane, the kept part is imposed while the rest is generated; a
model trained with data.params.task=complete is instead conditioned on the cut (as tokens) and
generates the whole cloud; one trained with task=complete_rest is conditioned on the cut and
generates only the missing points, which join the given ones.

    python recipes/shapes/complete.py runs/shapes-procedural/checkpoints/latest --num 16 --keep 0.5 --out outputs/complete

Writes PLY files (partial, completion, truth), a PNG sheet and metrics.json: the Chamfer distance
of the completion to the full held-out shape, next to that of the partial cloud alone.
"""
import argparse
import json
from pathlib import Path

import torch

from multidiff.core import sample
from multidiff.shapes.io import render_sheet, save_ply
from multidiff.shapes.metrics import chamfer_distance
from multidiff.shapes.registry import reference_clouds
from multidiff.shapes.tasks import complete, complete_rest, initial_noise, partial_cloud, resample_clouds, upsample
from multidiff.train.build import build_denoiser
from multidiff.train.sampling import sampling_shape, sampling_sigmas
from multidiff.train.trainer import load_for_sampling


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--resample", type=int, default=1, help="> 1: RePaint resampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true",
                   help="also score a sample of the same class with nothing given (masked-sampling models)")
    p.add_argument("--out", default="outputs/complete")
    a = p.parse_args(argv)
    model, config, spec, _, folder, _ = load_for_sampling(a.checkpoint)
    device = next(model.parameters()).device
    n_points = sampling_shape(config.sampling, spec)[0]
    labels = torch.arange(a.num) % spec.num_classes if spec.num_classes else None
    truth, ref_labels = reference_clouds(config, spec, n_points, labels)
    truth = truth[: a.num].to(device)
    partial = partial_cloud(truth, a.keep)
    denoiser = build_denoiser(model, config.objective)
    sigmas = sampling_sigmas(config.sampling, denoiser.schedule, a.steps)
    cond = {"label": ref_labels[: len(truth)].to(device)} if spec.num_classes else None
    task = spec.meta.get("task", "generate")
    trained_to_complete = task in ("complete", "complete_rest")
    if task == "complete_rest":  # trained to generate the far side of a cut: the given points stay as they are
        done = complete_rest(denoiser, partial, n_points, sigmas, scan_points=int(spec.meta["coarse_points"]),
                             method=config.sampling.sampler, cond=cond, seed=a.seed)
    elif trained_to_complete:  # a model trained on partial scans: they condition it as tokens, nothing is imposed
        scan = resample_clouds(partial, int(spec.meta["coarse_points"]), a.seed)
        done = upsample(denoiser, scan, n_points, sigmas, method=config.sampling.sampler, cond=cond, seed=a.seed)
    else:
        done = complete(denoiser, partial, n_points, sigmas, method=config.sampling.sampler, cond=cond, seed=a.seed,
                        resample=a.resample)
    out = Path(a.out)
    for k in range(len(truth)):
        for name, cloud in (("partial", partial[k]), ("completion", done[k]), ("truth", truth[k])):
            save_ply(out / f"{k:03d}_{name}.ply", cloud)
    sheet = [c for k in range(min(len(truth), 6)) for c in (partial[k], done[k], truth[k])]
    render_sheet(sheet, out / "completion.png", cols=3,
                 titles=[t for k in range(min(len(truth), 6)) for t in (f"#{k} partial", "completion", "truth")])
    metrics = {"checkpoint": str(folder), "keep": a.keep, "n": len(truth),
               "method": "masked training: the rest generated from the scan (trained)" if task == "complete_rest" else
               "partial-scan conditioning (trained)" if trained_to_complete else
               ("RePaint" if a.resample > 1 else "replacement (masked sampling)"),
               "cd_completion_to_truth": float(chamfer_distance(done.cpu(), truth.cpu()).mean()),
               "cd_partial_to_truth": float(chamfer_distance(partial.cpu(), truth.cpu()).mean())}
    if a.control and not trained_to_complete:
        # the same model and seeds with nothing given (the class only): what the given part adds
        x, gens = initial_noise(len(truth), (n_points, 3), float(sigmas[0]), a.seed, device)
        free = sample(denoiser, x, sigmas, config.sampling.sampler, cond=cond, generator=gens)
        metrics["cd_class_sample_to_truth"] = float(chamfer_distance(free.cpu(), truth.cpu()).mean())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
