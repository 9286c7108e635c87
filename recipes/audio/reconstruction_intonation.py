"""Intonation of an audio autoencoder's reconstructions (issue 8): the ceiling a latent diffusion
model on its latents can reach, beside the real clips themselves.

Takes the first ``--num`` held-out clips (split ``test``) of the manifest the autoencoder trained
on, at ``--seconds`` (the autoencoder is fully convolutional), reconstructs them through the
posterior mean, and reports multidiff.audio.metrics.intonation (pYIN) for both, plus the
multi-resolution STFT distance and SI-SDR of the reconstructions.

    python recipes/audio/reconstruction_intonation.py runs/vae-melodies --num 16 --seconds 16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from multidiff.audio.data import AudioDataset
from multidiff.audio.metrics import intonation
from multidiff.train.latents import reconstruct, score_reconstructions
from multidiff.train.trainer import load_for_sampling


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an audio autoencoder checkpoint (objective.kind: autoencoder)")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seconds", type=float, default=16.0)
    p.add_argument("--out", default=None, help="write metrics.json here (a folder)")
    a = p.parse_args(argv)
    model, config, spec, _, folder, _ = load_for_sampling(a.checkpoint)
    if config.objective.kind != "autoencoder" or spec.modality != "audio":
        raise SystemExit(f"{folder}: not an audio autoencoder (objective.kind {config.objective.kind}, "
                         f"modality {spec.modality})")
    params = dict(config.data.params)
    sr = int(params.get("sample_rate", 16000))
    hop = int(torch.prod(torch.tensor(model.config.downsampling_ratios)))
    length = int(a.seconds * sr) // hop * hop
    data = AudioDataset(config.data.path, sr, params.get("channels") or 1, length, split="test", random_crop=False)
    n = min(a.num, len(data))
    real = torch.stack([data[k]["x"] for k in range(n)])
    recon = reconstruct(model, real, batch_size=4)
    scores = score_reconstructions(recon, real, "audio")
    report = {"checkpoint": str(folder), "clips": n, "seconds": length / sr, "mr_stft": scores["mr_stft"],
              "si_sdr_db": scores["si_sdr_db"], "real": intonation(list(real), sr),
              "reconstructed": intonation(list(recon.clamp(-1, 1)), sr)}
    print("| clips | in-tune (median cents) | voiced frames within 5 cents | semitones held >= 5 frames per clip "
          "| voiced frames |")
    print("|---|---|---|---|---|")
    for name in ("real", "reconstructed"):
        r = report[name]
        print(f"| {name} | {r['in_tune_cents']:.1f} | {r['in_tune_fraction']:.2f} | {r['distinct_semitones']:.1f} | "
              f"{r['voiced_fraction']:.2f} |")
    print(f"reconstructions: MR-STFT {report['mr_stft']:.3f}, SI-SDR {report['si_sdr_db']:.2f} dB "
          f"({n} held-out clips of {length / sr:g} s)")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "metrics.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
