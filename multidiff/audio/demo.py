"""The audio part of ``multidiff demo``: train a small waveform model on synthesised notes, then sample.

Data needs nothing beyond pip: ``build_synth_notes`` renders 12 pitches (C4..B4) x 3 timbres
(sine, square, saw) with an additive synthesiser. A UNet1D on a 32-band MDCT of the
waveform learns pitch x timbre classes (factored label embedding) for about three minutes
on two CPU cores, then generates one note per class with classifier-free guidance. The
demo writes the WAVs, a spectrogram sheet and metrics.json (pYIN pitch accuracy within 50
cents of the requested pitch, the noise floor beside the training notes', and signal statistics),
and says where.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

PITCHES = tuple(range(60, 72))
TIMBRES = ("sine", "square", "saw")

# Measured: ~3 minutes on 2 idle CPU cores (see README.md, "make demo").
DEFAULT_TRAIN_SAMPLES = 28_000


def demo_config(data_manifest: Path, run_dir: Path, train_samples: int, seed: int = 0) -> dict:
    """The demo's recipe as a dict (same keys as a YAML recipe)."""
    return {
        "model": {"name": "audio_unet1d", "params": {
            "preset": "tiny", "channels": [64, 96, 128], "factors": [2, 5], "blocks_per_level": 1,
            "attention_levels": [1, 2], "emb_dim": 128, "patch_size": 32, "patch_transform": "mdct",
            "conditioning_token": True, "input_gate": True, "label_factors": [len(PITCHES), len(TIMBRES)]}},
        "data": {"name": "audio", "path": str(data_manifest),
                 "params": {"sample_rate": 16000, "length": 8000, "split": "train", "random_crop": False}},
        "objective": {"schedule": {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.25},
                      "prediction": "edm", "noise": {"name": "lognormal", "p_mean": -1.2, "p_std": 1.4},
                      "weighting": "edm", "cond_drop_prob": 0.1},
        "optimizer": {"name": "adamw", "lr": 2.0e-3, "betas": [0.9, 0.99], "schedule": "cosine",
                      "warmup_samples": min(2000, train_samples // 10), "min_lr_ratio": 0.05, "grad_clip": 1.0},
        "trainer": {"out_dir": str(run_dir), "seed": seed, "duration_samples": train_samples, "batch_size": 32,
                    "ema": {"kind": "power", "std": 0.10}, "log_every_samples": 1600,
                    "checkpoint_every_samples": train_samples, "preview_every_samples": 0, "keep_checkpoints": 1,
                    "tracker": "none", "cpu_threads": 2, "resume": None},
        "sampling": {"sampler": "dpmpp_2m", "steps": 24, "spacing": "karras", "guidance": 2.0,
                     "num_samples": len(PITCHES) * len(TIMBRES), "batch_size": 36, "seed": seed},
    }


def run_audio_demo(out: str | Path, *, train_samples: int = DEFAULT_TRAIN_SAMPLES, seed: int = 0,
                   progress: bool = True) -> dict:
    """Build data (once), train, sample one note per pitch x timbre, write WAVs + PNG + metrics.json."""
    from ..train.config import load_config
    from ..train.sampling import Conditioning, generate
    from ..train.trainer import Trainer, load_for_sampling
    from .builders import build_synth_notes
    from .registry import audio_evaluate, audio_preview

    out = Path(out)
    t0 = time.perf_counter()
    manifest = out / "data" / "manifest.csv"
    if not manifest.exists():
        build_synth_notes(out / "data", pitches=PITCHES, timbres=TIMBRES, seed=seed, progress=progress)
    config = load_config(demo_config(manifest, out / "run", train_samples, seed), [f"trainer.progress={progress}"])
    t_train = time.perf_counter()
    result = Trainer(config).fit()
    train_seconds = time.perf_counter() - t_train
    if result.status != "finished":
        raise RuntimeError(f"audio demo training was interrupted; resume it with: multidiff train {result.checkpoint}")
    model, config, spec, _, _, _ = load_for_sampling(result.checkpoint, device="cpu")
    labels = torch.arange(spec.num_classes)
    samples = generate(model, config.objective, spec, config.sampling, Conditioning(labels=labels), progress=progress)
    written = audio_preview(samples, out, "samples", labels=labels, spec=spec, max_files=len(samples))
    metrics = audio_evaluate(samples, config, labels=labels, spec=spec)
    summary = {"train_samples": train_samples, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.perf_counter() - t0, 1), "last_loss": result.last_loss,
               "checkpoint": str(result.checkpoint), "wavs": str(out / "samples"),
               "spectrograms": str(next(p for p in written if p.suffix == ".png")), "metrics": metrics,
               "labels": {int(k): f"{TIMBRES[k % len(TIMBRES)]} midi {PITCHES[k // len(TIMBRES)]}" for k in labels}}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    m = summary["metrics"]
    lines = [f"audio: trained {summary['train_samples']} samples in {summary['train_seconds']:.0f}s "
             f"(last loss {summary['last_loss']:.3f}); generated {m['n']} notes (one per pitch x timbre)"]
    if "pitch_accuracy" in m:
        lines.append(f"  pitch accuracy (pYIN, within 50 cents of the requested pitch): {m['pitch_accuracy']:.2f}; "
                     f"median |error| {m.get('pitch_median_cents', float('nan')):.0f} cents")
    if "noise_floor_median_db" in m:
        lines.append(f"  noise floor (energy outside the harmonics, median): {m['noise_floor_median_db']:.1f} dB; "
                     f"the training notes: {m.get('real_noise_floor_median_db', float('nan')):.1f} dB")
    lines.append(f"  WAVs: {summary['wavs']}/  spectrograms: {summary['spectrograms']}")
    return "\n".join(lines)
