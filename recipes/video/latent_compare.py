"""Latent against pixel diffusion at equal training time (issue 8): the latent Moving MNIST model on
64x64 clips (4x the pixels) against the pixel model on 32x32 clips, scored in one feature space.

Both models draw ``--num`` unconditional clips (same sampler, steps and seeds); the latent model's
clips are decoded by its autoencoder. Each clip is scored by the data set's video classifier
(datasets/train_video_classifier.py, NOT I3D): the Frechet distance of its features to the test
split. Two feature spaces are reported:

* ``32x32 classifier``: the 64x64 clips are average-pooled 2x2 to 32x32 first, so pixel and latent
  samples are compared by the same network against the same real clips;
* ``own classifier``: each resolution's classifier against its own test split (left out for the
  64x64 clips when their data set has no classifier).

Reference rows calibrate the numbers: real train clips (the floor a perfect model reaches at this
sample count), the 64x64 test clips pooled to 32x32 (how close the two data sets are), and the
autoencoder's reconstructions of those 64x64 train clips (the ceiling the latent model can reach).

    python recipes/video/latent_compare.py --pixel runs/mmnist-uncond --latent runs/latent-mmnist --num 256

Prints a markdown table and writes metrics.json and a frame grid per model under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from multidiff.train.latents import decode_latents, load_autoencoder, reconstruct
from multidiff.train.sampling import generate
from multidiff.train.trainer import load_for_sampling
from multidiff.video.data import ClipArrayDataset
from multidiff.video.io import frame_grid
from multidiff.video.metrics import VideoClassifier, classifier_frechet_distance


def clips(npz: Path, split: str, n: int) -> torch.Tensor:
    """The first ``n`` clips of a split, (n, channels, frames, height, width) in [-1, 1]."""
    data = ClipArrayDataset(npz, split=split, random_crop=False)
    return torch.stack([data.clip(k) for k in range(min(n, len(data)))])


def pool_to(videos: torch.Tensor, size: int) -> torch.Tensor:
    """(batch, channels, frames, H, W) -> (..., size, size) by average pooling (H a multiple of size)."""
    factor = videos.shape[-1] // size
    if factor == 1:
        return videos
    if videos.shape[-1] != size * factor or videos.shape[-2] != size * factor:
        raise ValueError(f"frames of {tuple(videos.shape[-2:])} do not pool evenly to {size}x{size}")
    return F.avg_pool3d(videos, (1, factor, factor))


def prepare(checkpoint: str) -> tuple:
    """(model, config, spec, note of its training) of a checkpoint."""
    model, config, spec, state, folder, weights = load_for_sampling(checkpoint)
    latent = spec.modality == "latent"
    train = state["train"]
    info = {"checkpoint": str(folder), "weights": weights.name, "latent": latent,
            "samples_seen": train["samples_seen"], "train_seconds": round(train.get("elapsed_s", 0.0), 1),
            "data": config.data.path if not latent else spec.meta["source_data"]["path"],
            "autoencoder": spec.meta.get("autoencoder") if latent else None,
            "size": int((spec.meta["source_shape"] if latent else spec.sample_shape)[-1])}
    return model, config, spec, info


def draw(prepared: tuple, num: int, steps: int, seed: int) -> torch.Tensor:
    """``num`` clips (decoded when the model is a latent one), (num, channels, frames, H, W) in [-1, 1]."""
    model, config, spec, info = prepared
    sampling = replace(config.sampling, num_samples=num, steps=steps, seed=seed, guidance=1.0)
    x = generate(model, config.objective, spec, sampling, progress=sys.stderr.isatty())
    return (decode_latents(x, spec) if info["latent"] else x).clamp(-1, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixel", required=True, help="the pixel model's checkpoint (32x32 clips)")
    p.add_argument("--latent", required=True, help="the latent model's checkpoint (decodes to 64x64 clips)")
    p.add_argument("--num", type=int, default=256, help="clips per model (and per reference row)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/latent-compare")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    pixel_model, latent_model = prepare(a.pixel), prepare(a.latent)
    pixel_info, latent_info = pixel_model[-1], latent_model[-1]
    small_npz, large_npz = Path(pixel_info["data"]), Path(latent_info["data"])
    small_size, large_size = pixel_info["size"], latent_info["size"]
    classifiers = {}
    for npz in (small_npz, large_npz):
        weights = npz.parent / "video_classifier.safetensors"
        if weights.is_file():
            classifiers[npz] = VideoClassifier.load(weights)
        elif npz == small_npz:  # the shared feature space is required; the large one's own is optional
            raise SystemExit(f"{weights}: no video classifier; run python datasets/train_video_classifier.py {npz}")
        else:
            print(f"note: {weights} is missing, so the own-classifier column is left out for "
                  f"{large_size}x{large_size} clips", file=sys.stderr)
    small_test, large_test = clips(small_npz, "test", 1000), clips(large_npz, "test", 1000)
    pixel = draw(pixel_model, a.num, a.steps, a.seed)
    latent = draw(latent_model, a.num, a.steps, a.seed)

    large_train = clips(large_npz, "train", a.num)
    autoencoder = load_autoencoder(latent_info["autoencoder"])
    # the same train clips as the reference row, so the gap is the autoencoder's
    recon = reconstruct(autoencoder, large_train).clamp(-1, 1)

    def scores(videos: torch.Tensor, own_npz: Path, own_test: torch.Tensor):
        """Frechet distances in the small classifier's space (pooled) and in the clip's own one."""
        row = {"fd_32_classifier": classifier_frechet_distance(classifiers[small_npz], pool_to(videos, small_size),
                                                               small_test)}
        own = classifiers.get(own_npz)
        row["fd_own_classifier"] = None if own is None else classifier_frechet_distance(own, videos, own_test)
        return row

    rows = [
        ("real 32x32 train clips", "reference", scores(clips(small_npz, "train", a.num), small_npz, small_test)),
        ("real 64x64 train clips", "reference", scores(large_train, large_npz, large_test)),
        ("the same clips through the autoencoder", "reference", scores(recon, large_npz, large_test)),
        (f"pixel model, {small_size}x{small_size}", "model", scores(pixel, small_npz, small_test)),
        (f"latent model, {large_size}x{large_size}", "model", scores(latent, large_npz, large_test)),
    ]
    frame_grid(list(pixel[:8]), out / "pixel.png", scale=4)
    frame_grid(list(latent[:8]), out / "latent.png", scale=2)
    report = {"num": a.num, "steps": a.steps, "seed": a.seed, "pixel": pixel_info, "latent": latent_info,
              "rows": [{"name": n, "kind": k, **v} for n, k, v in rows]}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    print(f"| clips ({a.num} each) | FD, 32x32 classifier (64x64 pooled 2x2) | FD, own resolution's classifier |")
    print("|---|---|---|")
    for name, _, v in rows:
        own = "-" if v["fd_own_classifier"] is None else f"{v['fd_own_classifier']:.2f}"
        print(f"| {name} | {v['fd_32_classifier']:.2f} | {own} |")
    for info in (pixel_info, latent_info):
        print(f"{info['checkpoint']}: {info['samples_seen']} samples in {info['train_seconds']} s")
    print(f"wrote {out / 'metrics.json'}, {out / 'pixel.png'}, {out / 'latent.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
