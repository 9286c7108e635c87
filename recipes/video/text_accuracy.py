"""Accuracy against guidance scale for a caption-conditioned Moving MNIST model.

For each digit, ``--num`` clips are drawn with the prompt "digit <d>" (the data set's caption for
1-digit clips) at every ``--guidance`` scale; the data set's video classifier
(``video_classifier.safetensors`` beside the .npz, datasets/train_video_classifier.py) scores
accuracy against the digit named in the prompt, plus its Frechet distance to the test split
(classifier features, not I3D-FVD).

    python recipes/video/text_accuracy.py runs/mmnist-text/checkpoints/latest --num 10 --guidance 1 2 4

Prints a markdown table and writes metrics.json and a frame grid per scale under --out.
"""
import argparse
from pathlib import Path

import torch

from multidiff.train.sweep import guidance_sweep, load_text_model, sweep_arguments, write_sweep
from multidiff.video.data import ClipArrayDataset, digits_caption
from multidiff.video.io import frame_grid
from multidiff.video.metrics import VideoClassifier, classifier_accuracy, classifier_frechet_distance


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep_arguments(p, num_help="clips per digit", num=10, steps=16, out="outputs/mmnist-text")
    a = p.parse_args(argv)
    model, config, spec, folder = load_text_model(a.checkpoint)
    npz = Path(config.data.path)
    weights = npz.parent / "video_classifier.safetensors"
    if not weights.is_file():
        raise SystemExit(f"{weights}: no video classifier; run python datasets/train_video_classifier.py {npz}")
    classifier = VideoClassifier.load(weights)
    real_set = ClipArrayDataset(npz, spec.sample_shape[1], split="test", random_crop=False)
    real = torch.stack([real_set.clip(k) for k in range(min(len(real_set), 1000))])
    requested = torch.arange(10).repeat_interleave(a.num)
    prompts = [digits_caption([int(d)]) for d in requested]

    def score(videos):
        return {"accuracy": classifier_accuracy(classifier, videos, requested),
                "classifier_frechet": classifier_frechet_distance(classifier, videos, real)}

    def keep(scale, videos):
        frame_grid(list(videos[:: a.num]), Path(a.out) / f"guidance-{scale:g}" / "grid.png", scale=2,
                   titles=prompts[:: a.num])
    rows = guidance_sweep(model, config, spec, prompts, a.guidance, steps=a.steps, seed=a.seed, score=score,
                          keep=keep, batch_size=min(config.sampling.batch_size, 50))
    write_sweep(a.out, {"checkpoint": str(folder), "per_digit": a.num, "steps": a.steps}, rows,
                [("accuracy (digit named in the prompt)", "accuracy", ".3f"),
                 ("classifier Frechet distance", "classifier_frechet", ".2f")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
