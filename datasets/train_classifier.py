"""Train the evaluation classifier of an audio manifest (SC09-style metrics).

    python datasets/train_classifier.py data/digits/manifest.csv [--epochs 15]

Trains two multidiff.audio.metrics.AudioClassifier judges on the 'train' split: one with white-noise
augmentation (classifier.safetensors: lenient with a generated noise floor) and one on clean clips
only (classifier_clean.safetensors: strict), reports each one's accuracy on the 'test' split
(voices never seen in training), clean and with noise, and saves them beside the manifest.
`multidiff eval` then reports accuracy against the requested class, Inception Score and Frechet
distance by both, each beside its own accuracy on the real test clips (docs/evaluation.md).
"""
import argparse
from pathlib import Path

import torch

from multidiff.audio.metrics import classifier_outputs, load_split, save_classifier, train_classifier


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--length", type=int, default=16000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the classifiers (default: the manifest's)")
    p.add_argument("--judges", default="both", choices=["both", "noisy", "clean"],
                   help="noisy: trained with white noise (classifier.safetensors, lenient with a noise floor); "
                        "clean: clean clips only (classifier_clean.safetensors, strict); both (default)")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_train, y_train = load_split(a.manifest, "train", a.sample_rate, a.length)
    x_test, y_test = load_split(a.manifest, "test", a.sample_rate, a.length)
    classes = int(max(y_train.max(), y_test.max())) + 1
    folder = Path(a.out) if a.out else Path(a.manifest).parent
    judges = {"noisy": ("classifier.safetensors", (0.0, 40.0)), "clean": ("classifier_clean.safetensors", None)}
    for kind in (["noisy", "clean"] if a.judges == "both" else [a.judges]):
        name, noise = judges[kind]
        model = train_classifier(x_train, y_train, classes, a.sample_rate, epochs=a.epochs, seed=a.seed,
                                 noise_snr_db=noise)
        probs, _ = classifier_outputs(model, x_test)
        acc = float((probs.argmax(1) == y_test).float().mean())
        robustness = {}
        gen = torch.Generator().manual_seed(a.seed + 1)
        rms = x_test.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
        for snr in (40, 30, 20, 10):  # held-out accuracy under white noise at this SNR
            noisy = x_test + rms * 10 ** (-snr / 20) * torch.randn(x_test.shape, generator=gen)
            robustness[f"snr_{snr}db"] = float((classifier_outputs(model, noisy)[0].argmax(1) == y_test).float().mean())
        out = folder / name
        save_classifier(model, out, {"test_accuracy": acc, "train_size": len(x_train), "test_size": len(x_test),
                                     "length": a.length, "noisy_test_accuracy": robustness,
                                     "noise_augmentation_snr_db": noise})
        print(f"{kind} judge ({'white noise at ' + str(noise) + ' dB SNR' if noise else 'clean clips only'}): "
              f"accuracy on held-out voices {acc:.4f} ({len(x_test)} clips)")
        print("  with white noise added: " + ", ".join(f"{k.split('_')[1]} SNR {v:.4f}" for k, v in robustness.items()))
        print(f"wrote classifier: {out}")


if __name__ == "__main__":
    main()
