"""Upsample coarse clouds (e.g. 1024-point samples of recipes/shapes/procedural.yaml trained with
data.params.num_points=1024) with an upsampler checkpoint (recipes/shapes/upsample.yaml).

    multidiff sample runs/shapes-coarse/checkpoints/latest --num 16 --out outputs/coarse
    python recipes/shapes/upsample.py runs/shapes-upsample/checkpoints/latest outputs/coarse/samples.safetensors \
        --out outputs/upsampled
    python recipes/shapes/upsample.py runs/shapes-upsample/checkpoints/latest --held-out 32   # measured

--held-out N upsamples N held-out shapes (test split, classes in turn) from an independent 1024-point
sample of each and writes metrics.json: the Chamfer distance to a 4096-point sample of the true
surface for the upsampled cloud, the coarse cloud itself, the coarse cloud repeated with jitter (the
naive upsampler) and an independent 4096-point sample of the truth (what a perfect upsampler gets).
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from multidiff.shapes.io import render_sheet, save_ply
from multidiff.shapes.metrics import _sqdist, chamfer_distance
from multidiff.shapes.registry import reference_clouds
from multidiff.shapes.tasks import upsample
from multidiff.train.build import build_denoiser
from multidiff.train.sampling import sampling_sigmas
from multidiff.train.trainer import load_for_sampling


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the upsampler's checkpoint")
    p.add_argument("samples", nargs="?", help="samples.safetensors of coarse clouds (from multidiff sample)")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help="instead of samples: upsample N held-out shapes and score against their true surfaces")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/upsampled")
    a = p.parse_args(argv)
    model, config, spec, _, _, _ = load_for_sampling(a.checkpoint)
    device = next(model.parameters()).device
    if bool(a.samples) == bool(a.held_out):
        p.error("give either SAMPLES (coarse clouds to upsample) or --held-out N")
    n_fine, n_coarse = spec.sample_shape[0], int((spec.meta or {}).get("coarse_points") or 0)
    if spec.modality != "shapes" or n_coarse <= 0 or spec.meta.get("task", "generate") != "generate":
        p.error(f"{a.checkpoint} is not an upsampler (a shapes model trained with data.params.coarse_points > 0)")
    if a.held_out:
        labels = torch.arange(a.held_out) % spec.num_classes if spec.num_classes else None
        truth, labels = reference_clouds(config, spec, n_fine, labels, seed=0)
        coarse = reference_clouds(config, spec, n_coarse, labels, seed=1)[0].to(device)  # independent draws
        oracle = reference_clouds(config, spec, n_fine, labels, seed=2)[0]
        tensors = {"labels": labels}
    else:
        tensors = load_file(a.samples)
        coarse = tensors["samples"][..., :3].to(device)
    cond = None
    if spec.num_classes and "labels" in tensors:
        cond = {"label": tensors["labels"].to(device)}
    denoiser = build_denoiser(model, config.objective)
    sigmas = sampling_sigmas(config.sampling, denoiser.schedule, a.steps)
    fine = upsample(denoiser, coarse, spec.sample_shape[0], sigmas, method=config.sampling.sampler, cond=cond,
                    seed=a.seed)
    out = Path(a.out)
    for k in range(len(fine)):
        save_ply(out / f"{k:03d}_coarse.ply", coarse[k])
        save_ply(out / f"{k:03d}_fine.ply", fine[k])
    n = min(len(fine), 8)
    render_sheet([c for k in range(n) for c in (coarse[k], fine[k])], out / "upsampled.png", cols=4,
                 titles=[t for k in range(n) for t in (f"#{k} coarse", "fine")])
    print(f"wrote {len(fine)} upsampled clouds to {out}")
    if a.held_out:
        fine, coarse = fine.cpu(), coarse.cpu()
        repeat = n_fine // n_coarse + (n_fine % n_coarse > 0)
        spacing = _sqdist(coarse, coarse).add_(torch.eye(n_coarse) * 1e9).min(-1).values.sqrt().median()
        g = torch.Generator().manual_seed(a.seed)
        jitter = coarse.repeat_interleave(repeat, 1)[:, :n_fine]
        jitter = jitter + 0.5 * spacing * torch.randn(jitter.shape, generator=g)
        rows = {name: float(chamfer_distance(cloud, truth).mean()) for name, cloud in
                (("upsampled", fine), ("coarse", coarse), ("coarse_repeated_jitter", jitter), ("independent_truth", oracle))}
        metrics = {"checkpoint": a.checkpoint, "n": len(truth), "coarse_points": n_coarse, "fine_points": n_fine,
                   "steps": len(sigmas) - 1, "cd_to_truth": rows}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
