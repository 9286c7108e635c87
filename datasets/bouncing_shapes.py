"""Build a coloured bouncing-shapes video set with numpy only (no downloads, no other packages).

    python datasets/bouncing_shapes.py --out data/bouncing_shapes --shapes 2 --size 32 --frames 16

Each clip shows ``--shapes`` filled shapes (circle, square, triangle), each with a random colour
from a fixed palette of 6, a random radius in [radius_min, radius_max] pixels, a uniform start
position and a velocity of uniform direction and speed in [speed_min, speed_max] pixels per frame,
bouncing off the frame edges; later shapes are drawn over earlier ones, on black. The same
arguments and seed give the same bytes.

Writes ``<out>/bouncing_shapes.npz`` with ``videos`` uint8 (N, frames, size, size, 3), ``labels``
int64 (N,) = the kind of the first shape (0 circle, 1 square, 2 triangle), ``kinds`` and ``colors``
(N, shapes), ``split`` (N,) "train" / "test", and ``<out>/manifest.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

KINDS = ("circle", "square", "triangle")
PALETTE = np.array([[230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 210, 60], [200, 80, 220], [60, 210, 220]],
                   np.uint8)


def shape_mask(kind: int, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape of radius r centred at (cy, cx)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = y - cy, x - cx
    if kind == 0:
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == 1:
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    # upward triangle inscribed in the circle of radius r
    return (dy <= r * 0.5) & (dy >= -r + np.sqrt(3) * np.abs(dx))


def build(out: Path, *, num_train: int = 5000, num_test: int = 500, shapes: int = 2, size: int = 32,
          frames: int = 16, radius_min: float = 3.0, radius_max: float = 6.0, speed_min: float = 1.0,
          speed_max: float = 2.5, seed: int = 0, progress: bool = True) -> Path:
    from tqdm.auto import tqdm

    if shapes < 1 or frames < 1 or radius_max * 2 >= size:
        raise ValueError("need shapes >= 1, frames >= 1 and 2 * radius_max < size")
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    kinds = rng.integers(0, len(KINDS), (n, shapes))
    colors = rng.integers(0, len(PALETTE), (n, shapes))
    radius = rng.uniform(radius_min, radius_max, (n, shapes))
    pos = rng.uniform(0, 1, (n, shapes, 2)) * (size - 2 * radius[..., None]) + radius[..., None]
    angle = rng.uniform(0, 2 * np.pi, (n, shapes))
    speed = rng.uniform(speed_min, speed_max, (n, shapes))
    vel = speed[..., None] * np.stack([np.sin(angle), np.cos(angle)], -1)
    videos = np.zeros((n, frames, size, size, 3), np.uint8)
    for i in tqdm(range(n), desc="bouncing shapes", disable=not progress):
        p, v = pos[i].copy(), vel[i].copy()
        lo, hi = radius[i][:, None], size - radius[i][:, None]
        for t in range(frames):
            for j in range(shapes):
                videos[i, t][shape_mask(int(kinds[i, j]), p[j, 0], p[j, 1], radius[i, j], size)] = PALETTE[colors[i, j]]
            p = p + v
            low, high = p < lo, p > hi
            p = np.where(low, 2 * lo - p, np.where(high, 2 * hi - p, p))
            v = np.where(low | high, -v, v)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bouncing_shapes.npz"
    split = np.array(["train"] * num_train + ["test"] * num_test)
    np.savez_compressed(path, videos=videos, labels=kinds[:, 0].astype(np.int64), kinds=kinds.astype(np.int64),
                        colors=colors.astype(np.int64), split=split)
    manifest = {"file": path.name, "num_train": num_train, "num_test": num_test, "shapes": shapes, "size": size,
                "frames": frames, "radius": [radius_min, radius_max], "speed": [speed_min, speed_max], "seed": seed,
                "kinds": list(KINDS), "palette": PALETTE.tolist(), "num_classes": len(KINDS),
                "label": "kind of the first shape", "sha256_videos": hashlib.sha256(videos.tobytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/bouncing_shapes")
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-test", type=int, default=500)
    p.add_argument("--shapes", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--radius-min", type=float, default=3.0)
    p.add_argument("--radius-max", type=float, default=6.0)
    p.add_argument("--speed-min", type=float, default=1.0)
    p.add_argument("--speed-max", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        path = build(Path(a.out), num_train=a.num_train, num_test=a.num_test, shapes=a.shapes, size=a.size,
                     frames=a.frames, radius_min=a.radius_min, radius_max=a.radius_max, speed_min=a.speed_min,
                     speed_max=a.speed_max, seed=a.seed, progress=sys.stderr.isatty())
    except ValueError as err:
        print(f"bouncing_shapes: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.parent / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
