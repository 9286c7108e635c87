"""The learned mel vocoder against Griffin-Lim on held-out clips (issue 29, item 1).

    python benchmarks/vocoder.py runs/mel-vocoder-s0/checkpoints/latest runs/mel-vocoder-s1/checkpoints/latest \
        runs/mel-vocoder-s2/checkpoints/latest

One checkpoint per training seed (recipes/audio/mel_vocoder.yaml, trainer.seed 0 / 1 / 2; each the
run's last checkpoint, no choice made on these clips). The clips: the manifest's test split (voices
no training run heard), centred 1 s crops. Each clip's log-mel (the vocoder's own settings, which
are digits_mel.yaml's) is decoded by the vocoder and by Griffin-Lim (MelCodec.decode: least-squares
mel inversion, 64 fast Griffin-Lim iterations) and scored against the real clip:

* multi-resolution STFT distance (multidiff.audio.metrics.multires_stft_distance, FFT 512 / 1024 /
  2048, silence floored at -60 dBFS), lower is better; target: the vocoder >= 30% lower;
* wide-band PESQ (ITU-T P.862.2, PyPI ``pesq``), higher is better; target: >= 0.5 higher;
* each evaluation classifier beside the manifest (datasets/train_classifier.py) on the real clips
  and on both resyntheses; target: the classifier's accuracy on the vocoder's clips >= 0.99, its
  accuracy on the real clips beside it.

Writes benchmarks/results/vocoder.json and vocoder.md (mean and spread over the seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from multidiff.audio.metrics import classifier_outputs, load_classifier, load_split, multires_stft_distance
from multidiff.train.latents import load_autoencoder

JUDGES = {"classifier": "classifier.safetensors", "classifier_clean": "classifier_clean.safetensors"}


def pesq_wb(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> np.ndarray:
    """Wide-band PESQ of each (1, samples) pair; nan where PESQ finds no speech to score."""
    from pesq import PesqError, pesq

    out = []
    for e, r in zip(estimate, reference):
        score = pesq(sample_rate, r.reshape(-1).double().numpy(), e.reshape(-1).double().numpy(), "wb",
                     on_error=PesqError.RETURN_VALUES)
        out.append(score if score > -1 else float("nan"))  # negative values are PESQ's error codes
    return np.asarray(out, dtype=np.float64)


def scores(estimate: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, judges: dict, sample_rate: int) -> dict:
    mr = multires_stft_distance(estimate, reference, (512, 1024, 2048), eps=1e-5, silence_rms=1e-3)
    pesq_values = pesq_wb(estimate, reference, sample_rate)
    out = {"mr_stft": float(mr.mean()), "pesq_wb": float(np.nanmean(pesq_values)),
           "pesq_scored": int(np.isfinite(pesq_values).sum()), "n": len(reference)}
    for name, judge in judges.items():
        logits = classifier_outputs(judge, estimate)[0]
        out[f"{name}_accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    return out


@torch.no_grad()
def decode_all(vocoder, mel: torch.Tensor, samples: int, phase_iterations: int | None = None,
               phase_init: str | None = None, silence_gate: bool | None = None, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([vocoder.decode(mel[k:k + batch_size], samples, phase_iterations, phase_init, silence_gate).sample
                      for k in range(0, len(mel), batch_size)])


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else float("nan"), "values": a.tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="one vocoder checkpoint per training seed")
    p.add_argument("--manifest", default="data/digits/manifest.csv")
    p.add_argument("--split", default="test")
    p.add_argument("--num", type=int, default=512, help="held-out clips")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the split's first OFFSET clips: design choices were made on clips 0-255 of the test "
                        "split (--offset 0 --num 256), the reported numbers use clips 640 on (--offset 640)")
    p.add_argument("--length", type=int, default=16000, help="clip length in samples")
    p.add_argument("--phase-iterations", type=int, default=None,
                   help="Griffin-Lim iterations refining the vocoder's phase (default: each checkpoint's own, "
                        "model.params.phase_iterations); a decoding choice, made on the design clips")
    p.add_argument("--phase-init", choices=("predicted", "pghi"), default=None,
                   help="the phase Griffin-Lim starts from (default: each checkpoint's own, model.params.phase_init)")
    p.add_argument("--silence-gate", choices=("on", "off"), default=None,
                   help="silence the frames the mel says are silent (default: each checkpoint's own, "
                        "model.params.silence_gate)")
    p.add_argument("--out", default="benchmarks/results/vocoder", help="result stem (.json and .md written)")
    p.add_argument("--result-dir", default=None, metavar="DIR",
                   help="also write one result record per checkpoint, DIR/<split>-seed<training seed>.json, and "
                        "DIR/<split>-griffin-lim.json, for the README table (multidiff results; "
                        "recipes/audio/results/tables.yaml)")
    p.add_argument("--samples", default=None, metavar="DIR",
                   help="also write the first --sample-count clips as WAVs (real, Griffin-Lim, the first vocoder) "
                        "and one spectrogram sheet to DIR, to listen to")
    p.add_argument("--sample-count", type=int, default=4)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    vocoders = [load_autoencoder(c) for c in a.checkpoints]
    codec = vocoders[0].codec
    if any(v.codec != codec for v in vocoders):
        print("benchmarks/vocoder.py: the checkpoints hear different mel settings; compare like with like", file=sys.stderr)
        return 2
    real, labels = load_split(a.manifest, a.split, codec.sample_rate, a.length, limit=a.offset + a.num)
    real, labels = real[a.offset:], labels[a.offset:]
    judges = {name: load_classifier(Path(a.manifest).parent / f) for name, f in JUDGES.items()
              if (Path(a.manifest).parent / f).is_file()}
    mel = vocoders[0].mel(real)
    results = {"real": scores(real, real, labels, judges, codec.sample_rate)}
    griffin_lim = codec.decode(mel, a.length)
    results["griffin_lim"] = scores(griffin_lim, real, labels, judges, codec.sample_rate)
    # the vocoder's decoding steps without the network: their share of its gain
    gate = None if a.silence_gate is None else a.silence_gate == "on"
    iterations = a.phase_iterations if a.phase_iterations is not None else vocoders[0].phase_iterations
    pghi_gated = codec.decode(mel, a.length, phase_init="pghi", iterations=iterations or None,
                              silence_gate=vocoders[0].silence_gate if gate is None else gate)
    results["griffin_lim_pghi"] = scores(pghi_gated, real, labels, judges, codec.sample_rate)
    decoded = [decode_all(v, mel, a.length, a.phase_iterations, a.phase_init, gate) for v in vocoders]
    results["vocoder"] = [dict(scores(d, real, labels, judges, codec.sample_rate), checkpoint=str(c),
                               phase_iterations=v.phase_iterations if a.phase_iterations is None else a.phase_iterations,
                               phase_init=v.phase_init if a.phase_init is None else a.phase_init,
                               silence_gate=v.silence_gate if gate is None else gate)
                          for v, d, c in zip(vocoders, decoded, a.checkpoints)]
    if a.samples:
        write_samples(Path(a.samples), {"real": real, "griffin-lim": griffin_lim, "vocoder": decoded[0]}, labels,
                      a.sample_count, codec.sample_rate, a.offset)
    gl = results["griffin_lim"]
    summary = {"mr_stft_reduction": spread([1 - r["mr_stft"] / gl["mr_stft"] for r in results["vocoder"]]),
               "pesq_gain": spread([r["pesq_wb"] - gl["pesq_wb"] for r in results["vocoder"]])}
    for name in judges:
        summary[f"{name}_accuracy"] = spread([r[f"{name}_accuracy"] for r in results["vocoder"]])
    targets = {"mr_stft_reduction >= 0.30": summary["mr_stft_reduction"]["mean"] >= 0.30,
               "pesq_gain >= 0.5": summary["pesq_gain"]["mean"] >= 0.5}
    for name in judges:
        targets[f"{name}_accuracy >= 0.99"] = summary[f"{name}_accuracy"]["mean"] >= 0.99
    record = {"command": "python " + " ".join(shlex.quote(x) for x in ["benchmarks/vocoder.py", *sys.argv[1:]]),
              "manifest": a.manifest, "split": a.split, "offset": a.offset, "clips": len(real), "length": a.length,
              "codec": {k: getattr(codec, k) for k in ("sample_rate", "n_mels", "n_fft", "hop")},
              "results": results, "summary": summary, "targets": targets, "seconds": round(time.perf_counter() - t0, 1),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.result_dir:
        write_records(Path(a.result_dir), record, a.checkpoints)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def write_samples(folder: Path, waves: dict, labels: torch.Tensor, count: int, sample_rate: int, offset: int) -> None:
    """folder/<decoder>/clip<k>.wav for the first ``count`` clips, and folder/spectrograms.png with one row
    per clip (real, Griffin-Lim, vocoder side by side)."""
    from multidiff.audio import save_wav
    from multidiff.audio.io import spectrogram_sheet

    panels, titles = [], []
    for k in range(min(count, len(labels))):
        for name, w in waves.items():
            save_wav(folder / name / f"clip{offset + k:04d}.wav", w[k].clamp(-1, 1), sample_rate)
            panels.append(w[k])
            titles.append(f"clip {offset + k} (digit {int(labels[k])}): {name}")
    spectrogram_sheet(panels, sample_rate, folder / "spectrograms.png", titles=titles, columns=len(waves))


def write_records(folder: Path, record: dict, checkpoints: list[str]) -> None:
    """One result record per vocoder (its training seed, samples seen and the scores beside Griffin-Lim's
    on the same clips), and one for Griffin-Lim, in multidiff eval's record layout."""
    from multidiff.results import code_version, write_result
    from multidiff.train import checkpoint as ckpt
    from multidiff.train.trainer import read_checkpoint

    gl = record["results"]["griffin_lim"]
    common = {"format": "multidiff-vocoder-benchmark/1", "reference": {"manifest": record["manifest"],
              "split": record["split"], "offset": record["offset"], "clips": record["clips"]},
              "command": record["command"], **code_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    real = {f"real_{k}": v for k, v in record["results"]["real"].items() if k.endswith("_accuracy")}
    for path, scored in zip(checkpoints, record["results"]["vocoder"]):
        _, config, state, _ = read_checkpoint(path)
        metrics = {**{k: v for k, v in scored.items() if k not in ("checkpoint", "phase_iterations", "phase_init", "silence_gate")},
                   **real,
                   "griffin_lim_mr_stft": gl["mr_stft"], "griffin_lim_pesq_wb": gl["pesq_wb"],
                   "mr_stft_reduction": 1 - scored["mr_stft"] / gl["mr_stft"],
                   "pesq_gain": scored["pesq_wb"] - gl["pesq_wb"]}
        write_result(folder / f"{record['split']}-seed{config.trainer.seed}.json", {
            **common, "metrics": metrics, "checkpoint": str(ckpt.resolve(path)), "model": config.model.name,
            "decoding": {k: scored[k] for k in ("phase_iterations", "phase_init", "silence_gate")},
            "training_seed": config.trainer.seed,
            "samples_seen": int(state.get("train", {}).get("samples_seen", 0))})
    write_result(folder / f"{record['split']}-griffin-lim.json", {**common, "metrics": {**gl, **real}, "checkpoint": None,
                                                  "model": "griffin-lim", "training_seed": None, "samples_seen": 0})
    pghi = record["results"]["griffin_lim_pghi"]
    write_result(folder / f"{record['split']}-griffin-lim-pghi.json", {
        **common, "metrics": {**pghi, **real, "mr_stft_reduction": 1 - pghi["mr_stft"] / gl["mr_stft"],
                              "pesq_gain": pghi["pesq_wb"] - gl["pesq_wb"]},
        "checkpoint": None, "model": "griffin-lim with the vocoder's decoding (PGHI start, gate)",
        "decoding": {k: record["results"]["vocoder"][0][k] for k in ("phase_iterations", "phase_init", "silence_gate")},
        "training_seed": None, "samples_seen": 0})


def markdown(r: dict) -> str:
    judges = [k[: -len("_accuracy")] for k in r["results"]["real"] if k.endswith("_accuracy")]
    head = "| decoder | MR-STFT distance (lower is better) | PESQ-WB | " + " | ".join(f"{j} accuracy" for j in judges) + " |"
    lines = ["# Learned mel vocoder vs Griffin-Lim (written by benchmarks/vocoder.py)", "",
             f"`{r['command']}`", "",
             f"{r['clips']} clips of the {r['split']} split of {r['manifest']} (from its clip {r.get('offset', 0)}; "
             f"{r['length']} samples at "
             f"{r['codec']['sample_rate']} Hz), each clip's {r['codec']['n_mels']}-band log-mel (n_fft "
             f"{r['codec']['n_fft']}, hop {r['codec']['hop']}) decoded and scored against the clip; one vocoder "
             f"per training seed, its run's last checkpoint.", "", head,
             "|" + "---|" * (3 + len(judges))]

    def row(name, s):
        pesq = "(reference)" if name == "real clips" else f"{s['pesq_wb']:.3f}"
        mr = "0" if name == "real clips" else f"{s['mr_stft']:.4f}"
        return f"| {name} | {mr} | {pesq} | " + " | ".join(f"{s[f'{j}_accuracy']:.4f}" for j in judges) + " |"

    lines.append(row("real clips", r["results"]["real"]))
    lines.append(row("Griffin-Lim (64 iterations)", r["results"]["griffin_lim"]))
    if "griffin_lim_pghi" in r["results"]:
        first = r["results"]["vocoder"][0]
        lines.append(row("Griffin-Lim started from PGHI's phase" + (", silent frames gated" if first.get("silence_gate") else "")
                         + f" (the vocoder's decoding without its network; {first['phase_iterations'] or 64} iterations)",
                         r["results"]["griffin_lim_pghi"]))
    for k, s in enumerate(r["results"]["vocoder"]):
        lines.append(row(f"vocoder, seed run {k} (`{s['checkpoint']}`)", s))
    lines += ["", "| over the seeds | mean | spread (std) | target | met |", "|---|---|---|---|---|"]
    goals = {"mr_stft_reduction": ">= 0.30", "pesq_gain": ">= 0.5", **{f"{j}_accuracy": ">= 0.99" for j in judges}}
    for key, goal in goals.items():
        s = r["summary"][key]
        met = r["targets"][f"{key} {goal}"]
        std = "n/a" if math.isnan(s["std"]) else f"{s['std']:.3f}"
        lines.append(f"| {key} | {s['mean']:.3f} | {std} | {goal} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
