"""Accuracy against guidance scale for a caption-conditioned spoken-digits model.

For each digit, ``--num`` clips are drawn with the prompt "<digit>, <voice>, <accent> accent"
(the caption format of datasets/spoken_digits.py; a voice description and an accent cycled over
the clips), at every ``--guidance`` scale; the data set's classifier
(``classifier.safetensors`` beside the manifest, datasets/train_classifier.py) scores accuracy
against the digit named in the prompt, plus Inception Score and Frechet distance to held-out voices.

    python recipes/audio/text_accuracy.py runs/digits-text/checkpoints/latest --num 20 --guidance 1 2 4

Prints a markdown table and writes metrics.json and a spectrogram sheet per scale under --out.
"""
import argparse
import json
from pathlib import Path

import torch

from multidiff.audio.builders import DIGITS
from multidiff.audio.io import spectrogram_sheet
from multidiff.audio.metrics import classifier_scores, load_classifier, load_split
from multidiff.train.sampling import generate
from multidiff.train.trainer import load_for_sampling

VOICES = ("", "deep ", "high ", "slow ", "fast ")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp")


def prompts_for(num_per_digit: int) -> tuple[list[str], torch.Tensor]:
    """(prompts, requested digits): digit-major, voice and accent cycled."""
    prompts, labels = [], []
    for d, word in enumerate(DIGITS):
        for k in range(num_per_digit):
            voice, accent = VOICES[k % len(VOICES)], ACCENTS[(k // len(VOICES)) % len(ACCENTS)]
            prompts.append(f"{word}, {voice}voice, {accent} accent" if voice else f"{word}, {accent} accent")
            labels.append(d)
    return prompts, torch.tensor(labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=20, help="clips per digit")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/digits-text")
    a = p.parse_args(argv)
    model, config, spec, _, folder, _ = load_for_sampling(a.checkpoint, device="cpu")
    if config.model.text_encoder.kind == "none":
        raise SystemExit(f"{folder}: the model has no text encoder (model.text_encoder.kind is none)")
    manifest = Path(config.data.path)
    classifier = load_classifier(manifest.parent / "classifier.safetensors")
    real, _ = load_split(manifest, "test", classifier.sample_rate, spec.sample_shape[-1], limit=2000)
    prompts, requested = prompts_for(a.num)
    rows, out = [], Path(a.out)
    for scale in a.guidance:
        from dataclasses import replace

        sampling = replace(config.sampling, guidance=scale, steps=a.steps, seed=a.seed, num_samples=len(prompts))
        audio = generate(model, config.objective, spec, sampling, prompts=prompts)
        scores = classifier_scores(classifier, audio.mean(1, keepdim=True), requested, real)
        rows.append({"guidance": scale, **scores})
        folder_k = out / f"guidance-{scale:g}"
        picks = list(range(0, len(prompts), a.num))[:10]  # the first clip of every digit
        spectrogram_sheet([audio[k] for k in picks], int(spec.meta.get("sample_rate", 16000)),
                          folder_k / "spectrograms.png", titles=[prompts[k] for k in picks])
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(folder), "per_digit": a.num, "rows": rows},
                                                 indent=2))
    print("| guidance | accuracy (digit named in the prompt) | Inception Score | Frechet distance |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['guidance']:g} | {r['accuracy']:.3f} | {r['inception_score']:.2f} | {r['frechet_distance']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
