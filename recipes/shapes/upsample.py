"""Upsample coarse clouds (e.g. 1024-point samples of recipes/shapes/procedural.yaml trained with
data.params.num_points=1024) with an upsampler checkpoint (recipes/shapes/upsample.yaml).

    multidiff sample runs/shapes-coarse/checkpoints/latest --num 16 --out outputs/coarse
    python recipes/shapes/upsample.py runs/shapes-upsample/checkpoints/latest outputs/coarse/samples.safetensors \
        --out outputs/upsampled
"""
import argparse
from pathlib import Path

from safetensors.torch import load_file

from multidiff.shapes.io import render_sheet, save_ply
from multidiff.shapes.tasks import upsample
from multidiff.train.build import build_denoiser
from multidiff.train.sampling import sampling_sigmas
from multidiff.train.trainer import load_for_sampling


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the upsampler's checkpoint")
    p.add_argument("samples", help="samples.safetensors of coarse clouds (from multidiff sample)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/upsampled")
    a = p.parse_args(argv)
    model, config, spec, _, _, _ = load_for_sampling(a.checkpoint)
    device = next(model.parameters()).device
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


if __name__ == "__main__":
    main()
