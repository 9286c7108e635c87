"""Accuracy against guidance scale for a caption-conditioned audio model.

``--task digits``: for each digit, ``--num`` clips are drawn with the prompt "<digit>, <voice>,
<accent> accent" (the caption format of datasets/spoken_digits.py; a voice description and an
accent cycled over the clips), at every ``--guidance`` scale; the data set's classifier
(``classifier.safetensors`` beside the manifest, datasets/train_classifier.py) scores accuracy
against the digit named in the prompt, plus Inception Score and Frechet distance to held-out voices.

``--task notes``: prompts "<instrument> playing <note>, soft|loud" (datasets/notes.py's captions)
over every instrument and ``--num`` pitches spread over the range; pYIN scores the share of
notes within 50 cents of the pitch named in the prompt.

    python recipes/audio/text_accuracy.py runs/digits-text/checkpoints/latest --num 20 --guidance 1 2 4
    python recipes/audio/text_accuracy.py runs/notes-text/checkpoints/latest --task notes --num 12 --guidance 1 2 4

Mel models (data set ``audio_mel``) are decoded to audio (multidiff.audio.spectrogram) before scoring.
Prints a markdown table and writes metrics.json and a spectrogram sheet per scale under --out.
"""
import argparse
from pathlib import Path

import torch

from multidiff.audio.builders import DIGITS, note_caption
from multidiff.audio.io import spectrogram_sheet
from multidiff.audio.metrics import classifier_scores, load_classifier, load_split, pitch_accuracy
from multidiff.audio.spectrogram import MODALITY as MEL_MODALITY
from multidiff.audio.spectrogram import decode_samples
from multidiff.train.sweep import guidance_sweep, load_text_model, sweep_arguments, write_sweep

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


def note_prompts(manifest: Path, num_pitches: int) -> tuple[list[str], list[int]]:
    """(prompts, requested MIDI pitches): every instrument of the manifest x ``num_pitches`` pitches
    spread over its range, soft and loud alternating."""
    import csv

    rows = list(csv.DictReader(manifest.open()))
    instruments = sorted({r["instrument"] for r in rows})
    pitches = sorted({int(r["pitch"]) for r in rows})
    picks = [pitches[round(k * (len(pitches) - 1) / max(num_pitches - 1, 1))] for k in range(num_pitches)]
    prompts, targets = [], []
    for i, inst in enumerate(instruments):
        for k, pitch in enumerate(picks):
            prompts.append(note_caption(inst, pitch, 110 if (i + k) % 2 else 80))
            targets.append(pitch)
    return prompts, targets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("digits", "notes"), default="digits")
    sweep_arguments(p, num_help="clips per digit (digits) or pitches per instrument (notes)", num=20, steps=24,
                    out=None)
    a = p.parse_args(argv)
    model, config, spec, folder = load_text_model(a.checkpoint)
    manifest = Path(config.data.path)
    sample_rate = int(spec.meta.get("sample_rate", 16000))
    mel = spec.modality == MEL_MODALITY
    length = int(spec.meta["length"]) if mel else spec.sample_shape[-1]
    if a.task == "digits":
        classifier = load_classifier(manifest.parent / "classifier.safetensors")
        real, _ = load_split(manifest, "test", classifier.sample_rate, length, limit=2000)
        prompts, requested = prompts_for(a.num)
        picks = list(range(0, len(prompts), a.num))[:10]  # the first clip of every digit

        def score(audio):
            return classifier_scores(classifier, audio.mean(1, keepdim=True), requested, real)
        columns = [("accuracy (digit named in the prompt)", "accuracy", ".3f"),
                   ("Inception Score", "inception_score", ".2f"), ("Frechet distance", "frechet_distance", ".1f")]
    else:
        prompts, requested = note_prompts(manifest, a.num)
        picks = list(range(0, len(prompts), max(len(prompts) // 10, 1)))[:10]

        def score(audio):
            return pitch_accuracy([w.mean(0) for w in audio], requested, sample_rate)
        columns = [("notes within 50 cents of the prompt's pitch", "accuracy", ".3f"),
                   ("median error (cents)", "median_cents", ".0f")]
    out = Path(a.out or f"outputs/{a.task}-text")

    def keep(scale, audio):
        spectrogram_sheet([audio[k] for k in picks], sample_rate, out / f"guidance-{scale:g}" / "spectrograms.png",
                          titles=[prompts[k] for k in picks])
    rows = guidance_sweep(model, config, spec, prompts, a.guidance, steps=a.steps, seed=a.seed, score=score, keep=keep,
                          prepare=(lambda samples: decode_samples(samples, spec)) if mel else None)
    write_sweep(out, {"checkpoint": str(folder), "task": a.task, "num": a.num, "steps": a.steps}, rows, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
