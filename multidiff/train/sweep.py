"""Guidance sweeps for caption-conditioned models: the shared part of the recipes' text_accuracy.py
scripts (audio digits / notes, Moving MNIST, shapes), which differ only in their prompts and scores.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .sampling import Conditioning, generate
from .trainer import load_for_sampling


def sweep_arguments(parser: argparse.ArgumentParser, *, num_help: str, num: int, steps: int, out: str | None) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("--num", type=int, default=num, help=num_help)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out)


def load_text_model(checkpoint, *, allow_labels: bool = False):
    """(model, config, spec, folder) of a checkpoint with a text encoder (or, with ``allow_labels``,
    a class-conditional one, for comparison); exits naming it otherwise."""
    model, config, spec, _, folder, _ = load_for_sampling(checkpoint, device="cpu")
    if config.model.text_encoder.kind == "none" and not (allow_labels and spec.num_classes > 0):
        raise SystemExit(f"{folder}: the model has no text encoder (model.text_encoder.kind is none)"
                         + (" and no class labels" if allow_labels else ""))
    return model, config, spec, folder


def guidance_sweep(model, config, spec, prompts: Sequence[str], scales: Sequence[float], *, steps: int, seed: int,
                   score: Callable[[torch.Tensor], dict], keep: Callable[[float, torch.Tensor], None] | None = None,
                   batch_size: int | None = None, labels: torch.Tensor | None = None,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
    """For each guidance scale, one sample per prompt (same seeds at every scale), scored by
    ``score(samples) -> dict``; ``keep(scale, samples)`` writes pictures. Rows print as they come.
    ``labels`` instead of prompts (``prompts`` then only counts the samples) sweeps a class model.
    ``prepare(samples)`` runs once per scale before both (e.g. decoding mel spectrograms to audio)."""
    rows = []
    for scale in scales:
        sampling = replace(config.sampling, guidance=scale, steps=steps, seed=seed, num_samples=len(prompts),
                           batch_size=batch_size or config.sampling.batch_size)
        conditioning = Conditioning(labels=labels, prompts=None if labels is not None else list(prompts))
        samples = generate(model, config.objective, spec, sampling, conditioning)
        if prepare is not None:
            samples = prepare(samples)
        rows.append({"guidance": scale, **score(samples), "n": len(samples)})
        print(json.dumps(rows[-1]), flush=True)
        if keep is not None:
            keep(scale, samples)
    return rows


def write_sweep(out: str | Path, facts: dict, rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> Path:
    """metrics.json under ``out`` ({**facts, rows}) and a markdown table on stdout; ``columns`` are
    (header, row key, format spec), the guidance column first and implicit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**facts, "rows": rows}, indent=2))
    print("| guidance | " + " | ".join(h for h, _, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for r in rows:
        print(f"| {r['guidance']:g} | " + " | ".join(format(r[k], f) for _, k, f in columns) + " |")
    return out / "metrics.json"
