"""How close a shape checkpoint's denoiser puts points to the true surface.

For held-out clouds plus Gaussian noise of std sigma, the mean squared distance of the denoised
points to the mesh's cached surface sample (its pool), beside that of the noisy points. A denoiser
that projects onto the surface would leave almost nothing at small sigma.

    python recipes/shapes/surface_precision.py runs/shapes-procedural/checkpoints/latest
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy.spatial import cKDTree

from multidiff.shapes.data import ShapeDataset
from multidiff.train.build import build_denoiser
from multidiff.train.trainer import load_for_sampling


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--clouds", type=int, default=32, help="held-out clouds, spread over the test split")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, config, spec, *_ = load_for_sampling(a.checkpoint, "cpu")
    if spec.modality != "shapes":
        print(f"surface_precision: {a.checkpoint} is a {spec.modality} model, not a shapes one", file=sys.stderr)
        return 2
    params = dict(config.data.params)
    train = ShapeDataset(config.data.path, 2048, split=params.get("split", "train"), pool_size=params.get("pool_size"),
                         cache_dir=params.get("cache_dir"), normalize=params.get("normalize", "global"))
    test = ShapeDataset(config.data.path, 2048, split=params.get("eval_split", "test"), pool_size=train.pool_size,
                        cache_dir=params.get("cache_dir"), normalize=train.normalize, stats=train.stats)
    step = max(1, len(test) // a.clouds)
    items = [test[k] for k in range(0, len(test), step)][: a.clouds]
    x0 = torch.stack([it["x"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    trees = []
    for it in items:
        pool = test.pool(it["index"])
        trees.append(cKDTree(test.normalization(pool).apply(pool).numpy()))

    def to_surface(clouds: torch.Tensor) -> float:
        return float(np.mean([(t.query(c.numpy())[0] ** 2).mean() for t, c in zip(trees, clouds)]))

    denoiser = build_denoiser(model, config.objective)
    g = torch.Generator().manual_seed(a.seed)
    print(f"{len(items)} held-out clouds of {config.data.path}")
    print("| sigma | noisy points | denoised points |\n|---|---|---|")
    with torch.no_grad():
        for sigma in a.sigmas:
            noisy = x0 + sigma * torch.randn(x0.shape, generator=g)
            denoised = denoiser(noisy, torch.full((len(x0),), sigma), {"label": labels} if spec.num_classes else None)
            print(f"| {sigma:g} | {to_surface(noisy):.5f} | {to_surface(denoised):.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
