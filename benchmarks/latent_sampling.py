"""Sampling cost of latent diffusion against diffusion on samples / pixels (issue 8), in one run:
seconds of compute per second of audio and per video frame, for the recipes' own models.

    python benchmarks/latent_sampling.py [--quick] [--device cpu|cuda] [--batch 4]

Rows (each model built from its recipe's model section with random weights: the cost does not
depend on the weights; sampler, steps and grid from the recipe's sampling section):

* audio, waveform: recipes/audio/melodies.yaml, 4 s at 16 kHz (its UNet1D on a 32-band MDCT);
* audio, latent: recipes/audio/latent_melodies.yaml on the latents of recipes/audio/vae_melodies.yaml
  (Oobleck "light", hop 128, 8 latent channels), 16 s clips, plus the decode to audio;
* video, pixel: recipes/video/moving_mnist_uncond.yaml, 12 frames of 32x32;
* video, latent: recipes/video/latent_moving_mnist.yaml on the latents of
  recipes/video/vae_moving_mnist_64.yaml, 12 frames of 64x64, plus the decode.

The latent shape is whatever the autoencoder's encoder gives for the source shape. Each row's time
is the median of ``--repeats`` full sampling runs of ``--batch`` samples (denoiser steps, then the
decode), after one warm-up run. ``train samples/s`` is the diffusion model's training rate on the
diffused shape (loss, backward, AdamW; median of ``--repeats`` timings of 3 steps of the recipe's
batch size), so equal training time can be read as equal samples where the rates agree. Tables
land in results/latent_sampling_<device>.md / .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))

# (modality, kind, diffusion recipe, autoencoder recipe or None, source shape, what one sample is)
CASES = [
    ("audio", "waveform", "recipes/audio/melodies.yaml", None, (1, 64000), {"seconds": 4.0}),
    ("audio", "latent", "recipes/audio/latent_melodies.yaml", "recipes/audio/vae_melodies.yaml", (1, 256000),
     {"seconds": 16.0}),
    ("video", "pixel", "recipes/video/moving_mnist_uncond.yaml", None, (1, 12, 32, 32), {"frames": 12}),
    ("video", "latent", "recipes/video/latent_moving_mnist.yaml", "recipes/video/vae_moving_mnist_64.yaml",
     (1, 12, 64, 64), {"frames": 12}),
]


def build_from_recipe(recipe: str, spec):
    """The recipe's model (random weights) for data described by ``spec``, and its config."""
    from multidiff.train.build import build_model
    from multidiff.train.config import load_config

    config = load_config(str(REPO / recipe), validate_paths=False)
    return build_model(config, spec), config


@torch.no_grad()
def measure(case, device: str, batch: int, repeats: int, steps: int | None, quick: bool = False) -> dict:
    from multidiff.core import make_generators, sample
    from multidiff.core.utils import randn_like
    from multidiff.train.build import build_denoiser
    from multidiff.train.registry import DataSpec
    from multidiff.train.sampling import sampling_sigmas

    modality, kind, recipe, ae_recipe, source_shape, unit = case
    torch.manual_seed(0)
    autoencoder, shape = None, source_shape
    if ae_recipe is not None:
        autoencoder, _ = build_from_recipe(ae_recipe, DataSpec(source_shape, 0, modality, {"sample_rate": 16000}))
        autoencoder = autoencoder.to(device).eval()
        shape = tuple(autoencoder.encode(torch.zeros(1, *source_shape, device=device)).latent_dist.mean.shape[1:])
    model, config = build_from_recipe(recipe, DataSpec(shape, 0, "latent" if autoencoder else modality,
                                                       {"sample_rate": 16000}))
    model = model.to(device).eval()
    denoiser = build_denoiser(model, config.objective)
    sigmas = sampling_sigmas(config.sampling, denoiser.schedule, steps).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def run():
        """(decoded samples, seconds in the decode)"""
        gens = make_generators(0, batch, device)
        x = randn_like(torch.empty(batch, *shape, device=device), gens) * sigmas[0]
        out = sample(denoiser, x, sigmas, config.sampling.sampler, generator=gens)
        sync()
        start = time.perf_counter()
        if autoencoder is not None:
            out = autoencoder.decode(out).sample
        sync()
        return out, time.perf_counter() - start

    train_batch = 1 if quick else config.trainer.batch_size
    train_rate = training_rate(model, config, shape, device, repeats, sync, steps=1 if quick else 3, batch=train_batch)
    model.eval()
    out, _ = run()  # warm-up; also checks the decoded shape
    if tuple(out.shape[1:]) != tuple(source_shape):
        raise RuntimeError(f"{recipe}: sampled {tuple(out.shape[1:])}, expected {source_shape}")
    times, decode_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_times.append(run()[1])
        times.append(time.perf_counter() - start)
    per_sample = statistics.median(times) / batch
    amount = unit.get("seconds", unit.get("frames"))
    return {"modality": modality, "kind": kind, "recipe": recipe, "autoencoder": ae_recipe,
            "sample_shape": list(source_shape), "diffused_shape": list(shape),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "steps": len(sigmas) - 1, "sampler": config.sampling.sampler, "seconds_per_sample": per_sample,
            "decode_seconds_per_sample": statistics.median(decode_times) / batch,
            "unit": "s of audio" if "seconds" in unit else "frame", "per_unit": per_sample / amount,
            "train_batch": train_batch, "train_samples_per_s": train_rate}


def training_rate(model, config, shape, device: str, repeats: int, sync, steps: int, batch: int) -> float:
    """Training samples/s of the diffusion model at batch size ``batch`` (median over repeats)."""
    from multidiff.core import make_generators
    from multidiff.train.build import build_denoiser, build_loss

    denoiser = build_denoiser(model, config.objective)
    loss_fn = build_loss(config.objective, denoiser.schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    x0 = torch.randn(batch, *shape, device=device, generator=torch.Generator(device).manual_seed(0))

    def step():
        with torch.enable_grad():
            loss = loss_fn(denoiser, x0, None, make_generators(0, batch, device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append(time.perf_counter() - start)
    return steps * batch / statistics.median(times)


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"device: {device}", "",
             "| modality | kind | sample | diffused shape | params (M) | steps | s / sample | of which decode | s per unit "
             "| latent / direct | train samples/s (batch) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    direct = {r["modality"]: r["per_unit"] for r in rows if r["kind"] != "latent"}
    for r in rows:
        ratio = r["per_unit"] / direct[r["modality"]] if r["modality"] in direct else float("nan")
        sample = "x".join(map(str, r["sample_shape"]))
        lines.append(f"| {r['modality']} | {r['kind']} | {sample} | {'x'.join(map(str, r['diffused_shape']))} | "
                     f"{r['params_M']:.2f} | {r['steps']} | {r['seconds_per_sample']:.3f} | {r['decode_seconds_per_sample']:.3f} | "
                     f"{r['per_unit']:.4f} per {r['unit']} | {ratio:.2f} | "
                     f"{r['train_samples_per_s']:.2f} ({r['train_batch']}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: each recipe's)")
    parser.add_argument("--quick", action="store_true", help="2 steps, batch 1, one repeat, one training step: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the table and rows here (a folder)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.batch, args.repeats = 2, 1, 1
    rows = [measure(case, args.device, args.batch, args.repeats, args.steps, args.quick) for case in CASES]
    table = markdown(rows, args.device)
    print(table)
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    tag = f"latent_sampling_{args.device}{'_quick' if args.quick else ''}"
    (out / f"{tag}.md").write_text(table + "\n")
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
