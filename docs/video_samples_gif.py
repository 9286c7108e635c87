"""Write docs/images/video_samples.gif: single draws of a class-conditional video model, one column
per class, ``--per-class`` rows, as one animated GIF (under 1 MB) for README.md.

    python docs/video_samples_gif.py runs/mmnist-class-s0 --guidance 2

Each clip is one draw (sample k seeded by ``--seed`` and k, as ``multidiff sample --seed``), never an
average; the classes run along the columns, so a reader sees what each label gives.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "images" / "video_samples.gif"
MAX_BYTES = 1 << 20


def tile(videos: torch.Tensor, rows: int, cols: int, pad: int = 2) -> torch.Tensor:
    """(rows * cols, C, T, H, W), column-major by class, -> one (C, T, rows (H + pad) + pad, ...) clip
    on a white background."""
    n, c, t, h, w = videos.shape
    grid = torch.ones(c, t, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        col, row = divmod(k, rows)
        y, x = pad + row * (h + pad), pad + col * (w + pad)
        grid[:, :, y:y + h, x:x + w] = videos[k]
    return grid


def main(argv=None) -> int:
    from multidiff.train.sampling import Conditioning, generate
    from multidiff.train.trainer import load_for_sampling
    from multidiff.video.io import write_gif

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint folder or a run's out_dir (class-conditional video model)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2, help="pixel repetition of each frame")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    model, config, spec, *_ = load_for_sampling(a.checkpoint, "cpu")
    if spec.num_classes < 1 or len(spec.sample_shape) != 4:
        print(f"video_samples_gif: {a.checkpoint} is not a class-conditional video model", file=sys.stderr)
        return 2
    labels = torch.arange(spec.num_classes).repeat_interleave(a.per_class)
    sampling = replace(config.sampling, guidance=a.guidance, steps=a.steps or config.sampling.steps)
    videos = generate(model, config.objective, spec, sampling, Conditioning(labels=labels), num=len(labels),
                      seed=a.seed, progress=True)
    grid = tile(videos.clamp(-1, 1), a.per_class, spec.num_classes)
    write_gif(a.out, grid, float(spec.meta.get("fps", 8.0)), scale=a.scale)
    size = a.out.stat().st_size
    if size > MAX_BYTES:
        print(f"video_samples_gif: {a.out} is {size / 2**20:.2f} MB (over 1 MB); use --scale 1", file=sys.stderr)
        return 1
    print(f"wrote {a.out} ({size / 1024:.0f} kB): {a.per_class} single draws per class, guidance {a.guidance}, "
          f"{sampling.steps} {sampling.sampler} steps, seed {a.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
