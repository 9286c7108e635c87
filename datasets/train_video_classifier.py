"""Train the small video classifier that multidiff's video evaluator uses (Frechet distance on its
features, label accuracy), on the train split of a clip array (.npz from datasets/moving_mnist.py).

    python datasets/train_video_classifier.py data/moving_mnist/moving_mnist.npz --steps 600

Saves ``video_classifier.safetensors`` beside the .npz and prints its accuracy on the test split.
The scores it enables are NOT I3D-FVD: see multidiff.video.metrics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from multidiff.video.data import ClipArrayDataset
    from multidiff.video.metrics import classifier_accuracy, train_classifier

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("npz")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        train = ClipArrayDataset(a.npz, split="train", random_crop=False)
        test = ClipArrayDataset(a.npz, split="test", random_crop=False)
    except (FileNotFoundError, ValueError) as err:
        print(f"train_video_classifier: {err}", file=sys.stderr)
        return 2
    if train.num_classes <= 0:
        print(f"train_video_classifier: {a.npz} has no labels", file=sys.stderr)
        return 2
    x = torch.stack([train.clip(k) for k in range(len(train))])
    model = train_classifier(x, train.labels_t, train.num_classes, steps=a.steps, batch_size=a.batch_size,
                             width=a.width, seed=a.seed, progress=sys.stderr.isatty())
    xt = torch.stack([test.clip(k) for k in range(len(test))])
    acc = classifier_accuracy(model, xt, test.labels_t)
    path = model.save(Path(a.npz).parent / "video_classifier.safetensors")
    print(f"test accuracy {acc:.4f} on {len(test)} clips; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
