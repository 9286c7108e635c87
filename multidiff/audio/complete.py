"""``multidiff complete``: audio continuation and inpainting from a trained checkpoint, with metrics.

Held-out clips of the checkpoint's data set are cut: ``continuation`` keeps the first
``--known`` fraction and generates the rest; ``inpainting`` removes a centred gap of
``--gap`` of the clip and generates it. Sampling is masked (multidiff.core.masked: known
values re-imposed at each noise level; RePaint resampling with ``--resample`` > 1), so any
model trained unmasked can do it; a model trained with masked conditioning (``data.params.task:
continue | inpaint | mixed``) also sees the given audio through its extra input channels.

Scored on the generated region only, against the true audio there:
  * multi-resolution STFT distance (lower is better), SI-SDR (dB, higher is better);
  * the same for two baselines: silence, and a copy of the audio just before the region.
Writes WAVs (truth, given, generated per clip), a spectrogram sheet and metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def completion_mask(length: int, mode: str, known: float = 0.5, gap: float = 0.25) -> tuple[torch.Tensor, slice]:
    """(mask (1, length) with 1 = known, the generated region as a slice of samples)."""
    if mode == "continuation":
        if not 0 < known < 1:
            raise ValueError(f"--known must lie in (0, 1), got {known}")
        start, stop = int(round(known * length)), length
    elif mode == "inpainting":
        if not 0 < gap < 1:
            raise ValueError(f"--gap must lie in (0, 1), got {gap}")
        width = int(round(gap * length))
        start = (length - width) // 2
        stop = start + width
    else:
        raise ValueError(f"unknown completion mode {mode!r}; choose continuation or inpainting")
    mask = torch.ones(1, length)
    mask[:, start:stop] = 0
    return mask, slice(start, stop)


def copy_baseline(given: torch.Tensor, region: slice) -> torch.Tensor:
    """Fill the region by repeating the audio just before it (the naive 'more of the same')."""
    out = given.clone()
    width = region.stop - region.start
    source = given[..., max(0, region.start - width):region.start]
    reps = -(-width // max(source.shape[-1], 1))
    out[..., region] = source.repeat(*([1] * (source.ndim - 1)), reps)[..., :width]
    return out


def region_scores(estimate: torch.Tensor, truth: torch.Tensor, region: slice) -> dict:
    from .metrics import multires_stft_distance, si_sdr

    est, ref = estimate[..., region].mean(1, keepdim=True), truth[..., region].mean(1, keepdim=True)
    sizes = tuple(n for n in (512, 1024, 2048) if n <= ref.shape[-1]) or (ref.shape[-1],)
    # SI-SDR is 0/0 for a silent estimate or a silent truth: scored over the other clips only
    scored = (est.square().mean((1, 2)).sqrt() > 1e-6) & (ref.square().mean((1, 2)).sqrt() > 1e-4)
    sdr = float(si_sdr(est[scored], ref[scored]).mean()) if scored.any() else None
    return {"mr_stft": float(multires_stft_distance(est, ref, fft_sizes=sizes).mean()),
            "si_sdr_db": sdr, "si_sdr_clips": int(scored.sum())}


def complete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest checkpoint)")
    parser.add_argument("--mode", choices=("continuation", "inpainting", "vocoder", "longform"), default="continuation",
                        help="vocoder: the whole clip from its mel spectrogram (a model trained with "
                             "data.params.task=vocoder); longform: new audio of --seconds by windowed continuation")
    parser.add_argument("--seconds", type=float, default=16.0, help="longform: length of each generated item")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="longform: fraction of each window given from the previous one")
    parser.add_argument("--known", type=float, default=0.5, help="continuation: fraction of the clip given")
    parser.add_argument("--gap", type=float, default=0.25, help="inpainting: fraction of the clip removed (centred)")
    parser.add_argument("--num", type=int, default=32, help="held-out clips to complete")
    parser.add_argument("--split", default="test", help="manifest split the clips come from")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--resample", type=int, default=1, help="RePaint resampling per step (1 = replacement only)")
    parser.add_argument("--condition", choices=("none", "true"), default="none",
                        help="class-conditional models: generate unconditionally, or with each clip's true label")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--replace", choices=("auto", "yes", "no"), default="auto",
                        help="re-impose the given audio at every noise level (auto: only for models trained "
                             "without masked conditioning, data.params.task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default: <run>/complete-<mode>)")
    parser.add_argument("--device", default=None)


def complete_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..train.sampling import Conditioning, generate
    from ..train.trainer import load_for_sampling
    from .io import save_wav, spectrogram_sheet
    from .metrics import griffin_lim_from_mel, load_split, mel_conditioning

    model, config, spec, _, folder, _ = load_for_sampling(args.checkpoint, device=args.device)
    if spec.modality != "audio":
        raise SystemExit(f"multidiff complete: {folder} holds a {spec.modality} model; only audio is supported here")
    if args.mode == "longform":
        return longform_run(args, model, config, spec, folder)
    channels, length = spec.sample_shape
    sample_rate = int(spec.meta.get("sample_rate", 16000))
    truth, labels = load_split(config.data.path, args.split, sample_rate, length, limit=args.num)
    if truth.shape[0] == 0:
        raise SystemExit(f"multidiff complete: no clips in split {args.split!r} of {config.data.path}")
    truth = truth.expand(-1, channels, -1) if channels > 1 else truth
    n = truth.shape[0]
    vocoder = args.mode == "vocoder"
    if vocoder != (config.data.params.get("task") == "vocoder"):
        raise SystemExit(f"multidiff complete: --mode vocoder needs a model trained with data.params.task=vocoder "
                         f"(and only such a model), {folder} was trained with task={config.data.params.get('task')!r}")
    if vocoder:
        mask, region = torch.zeros(1, length), slice(0, length)
    else:
        mask, region = completion_mask(length, args.mode, args.known, args.gap)
    sampling = config.sampling
    sampling = replace(sampling, steps=args.steps or sampling.steps, sampler=args.sampler or sampling.sampler,
                       guidance=sampling.guidance if args.guidance is None else args.guidance,
                       seed=args.seed, num_samples=n)
    use_labels = None
    if spec.num_classes > 0:
        use_labels = labels.clamp(min=0) if args.condition == "true" else torch.full((n,), spec.num_classes)
    uses_concat = int(spec.meta.get("concat_channels", 0) or 0) > 0
    replace_known = not vocoder and (args.replace == "yes" or (args.replace == "auto" and not uses_concat))
    if vocoder:
        p = config.data.params
        mel = mel_conditioning(truth, sample_rate, p["mel_bins"], p["mel_hop"])
        generated = generate(model, config.objective, spec, sampling, Conditioning(labels=use_labels, concat=mel),
                             progress=sys.stderr.isatty())
    else:
        given = Conditioning(labels=use_labels, known=truth * mask, mask=mask[None], replace=replace_known)
        generated = generate(model, config.objective, spec, sampling, given, resample=args.resample,
                             progress=sys.stderr.isatty())
        generated = torch.lerp(generated, truth, mask[None])  # the given part is given
    given = truth * mask
    results = {"mode": args.mode, "n": n, "region_seconds": (region.stop - region.start) / sample_rate,
               "sampler": sampling.sampler, "steps": sampling.steps, "resample": args.resample,
               "masked_training": uses_concat, "replacement": replace_known,
               "condition": args.condition, "checkpoint": str(folder),
               "generated": region_scores(generated, truth, region),
               "baseline_silence": region_scores(given, truth, region)}
    if vocoder:
        p = config.data.params
        results["baseline_griffin_lim"] = region_scores(griffin_lim_from_mel(truth, sample_rate, p["mel_bins"],
                                                                             p["mel_hop"]), truth, region)
    else:
        results["baseline_copy"] = region_scores(copy_baseline(given, region), truth, region)
    classifier_path = Path(config.data.path).parent / "classifier.safetensors"
    if classifier_path.is_file() and (labels >= 0).all():  # does the whole clip still say the right class?
        from .metrics import classifier_outputs, load_classifier

        classifier = load_classifier(classifier_path)
        for key, waves in (("generated", generated), ("baseline_silence", given), ("truth", truth)):
            probs = classifier_outputs(classifier, waves.mean(1, keepdim=True))[0]
            results.setdefault(key, {})["classifier_accuracy"] = float((probs.argmax(-1) == labels).float().mean())
    out = Path(args.out) if args.out else folder.parent.parent / f"complete-{args.mode}"
    out.mkdir(parents=True, exist_ok=True)
    waves, titles = [], []
    for k in range(min(n, 8)):
        for name, w in (("truth", truth[k]), ("given", given[k]), ("generated", generated[k])):
            save_wav(out / f"{k:03d}_{name}.wav", w.clamp(-1, 1), sample_rate)
            waves.append(w)
            titles.append(f"#{k} {name}")
    results["spectrograms"] = str(spectrogram_sheet(waves, sample_rate, out / "spectrograms.png", titles=titles,
                                                    columns=3))
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k in ("generated", "truth") or k.startswith("baseline_")},
                     indent=2))
    print(f"wrote {out} (WAVs: truth / given / generated; spectrograms.png; metrics.json)")
    return 0


def longform_run(args, model, config, spec, folder) -> int:
    """``--mode longform``: ``--num`` items of ``--seconds`` each, scored by longform_scores against
    held-out clips of the data (their frame-to-frame level change)."""
    from dataclasses import replace

    from ..errors import InputError
    from .io import save_wav, spectrogram_sheet
    from .longform import generate_long, longform_scores
    from .metrics import load_split

    channels, window = spec.sample_shape
    sample_rate = int(spec.meta.get("sample_rate", 16000))
    total = int(round(args.seconds * sample_rate))
    if total < window:
        raise InputError(f"--seconds {args.seconds}: shorter than the model's own window ({window / sample_rate:g} s); "
                         f"use multidiff sample")
    if not 0 < args.overlap < 1:
        raise InputError(f"--overlap must lie in (0, 1), got {args.overlap}")
    sampling = replace(config.sampling, steps=args.steps or config.sampling.steps,
                       sampler=args.sampler or config.sampling.sampler,
                       guidance=config.sampling.guidance if args.guidance is None else args.guidance,
                       seed=args.seed, num_samples=args.num, batch_size=min(args.num, config.sampling.batch_size))
    labels = None
    if spec.num_classes > 0:
        labels = torch.arange(args.num) % spec.num_classes if args.condition == "true" else \
            torch.full((args.num,), spec.num_classes)
    waves, seams = generate_long(model, config.objective, spec, sampling, total, overlap=args.overlap, labels=labels,
                                 resample=args.resample, progress=sys.stderr.isatty())
    try:
        reference = load_split(config.data.path, args.split, sample_rate, window, limit=64)[0]
    except (ValueError, FileNotFoundError):
        reference = None
    results = {"mode": "longform", "seconds": args.seconds, "window_seconds": window / sample_rate,
               "overlap": args.overlap, "sampler": sampling.sampler, "steps": sampling.steps,
               "checkpoint": str(folder), "reference_split": args.split if reference is not None else None,
               "seam_seconds": [s / sample_rate for s in seams],
               "scores": longform_scores(waves, seams, window, sample_rate, reference)}
    out = Path(args.out) if args.out else folder.parent.parent / "complete-longform"
    out.mkdir(parents=True, exist_ok=True)
    for k, w in enumerate(waves):
        save_wav(out / f"{k:03d}_long.wav", w.clamp(-1, 1), sample_rate)
    results["spectrograms"] = str(spectrogram_sheet(list(waves[:8]), sample_rate, out / "spectrograms.png",
                                                    titles=[f"#{k}" for k in range(min(8, len(waves)))], columns=1))
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["scores"], indent=2))
    print(f"wrote {out} ({len(waves)} WAVs of {args.seconds:g} s, seams at "
          f"{', '.join(f'{s / sample_rate:.2f}' for s in seams)} s; spectrograms.png; metrics.json)")
    return 0
