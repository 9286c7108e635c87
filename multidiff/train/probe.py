"""Does a trained model use its conditioning? Denoising error with the true, a shuffled and the null condition.

For ``num`` items of the run's data set and each noise level sigma, the denoiser sees
x + sigma * noise (the same noise for all three) with

* ``true``: the item's own class label and / or caption,
* ``shuffled``: the next item's (a different clip's condition: right format, wrong content),
* ``null``: the null label / the empty caption (the unconditional branch of CFG),

and the mean squared error of its estimate of x is reported (over the loss mask's region when the
data set has one). A model that reads its conditioning has ``true`` well below ``shuffled`` and
``null`` at the middle noise levels, where the condition decides what the sample becomes; equal
columns mean the condition is ignored, whatever the training loss says. Signal conditioning
(``concat``) is passed unchanged in all three.

    python -m multidiff.train.probe runs/digits-mel-text/checkpoints/latest --num 96
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import torch

from .data import mix_seed

DEFAULT_SIGMAS = (0.3, 1.0, 3.0, 10.0, 30.0)


def conditioning_probe(denoiser: Callable, items: Sequence[dict], *, null_label: int | None, uses_text: bool,
                       sigmas: Sequence[float] = DEFAULT_SIGMAS, seed: int = 0,
                       batch_size: int = 32) -> list[dict]:
    """Rows {"sigma", "true", "shuffled", "null"} of denoising MSE; see the module docstring.

    denoiser(x (batch, *shape), sigma (batch,), cond) -> (batch, *shape); items: data set items
    ({"x", optional "label", "text", "loss_mask", "concat", ...}); null_label: the null class
    (None: labels are not probed); uses_text: probe ``text`` captions. Noise comes from one
    generator per item (seed, item index), so rows do not depend on ``batch_size``.
    """
    n = len(items)
    if n < 2:
        raise ValueError("the probe needs at least 2 items (shuffled conditions come from another item)")
    probe_label = null_label is not None and "label" in items[0]
    if not (probe_label or uses_text):
        raise ValueError("nothing to probe: the model has neither class labels nor a text encoder")
    if uses_text and "text" not in items[0]:
        raise KeyError("the model has a text encoder but the data set's items have no 'text' (captions)")
    other = (torch.arange(n) + 1) % n  # item i gets item i+1's condition
    x = torch.stack([it["x"] for it in items]).float()
    weight = (torch.stack([torch.as_tensor(it["loss_mask"]).float() for it in items]).expand_as(x)
              if "loss_mask" in items[0] else torch.ones_like(x))
    noise = torch.stack([torch.randn(it["x"].shape, generator=torch.Generator().manual_seed(mix_seed(seed, i)))
                         for i, it in enumerate(items)])
    passed = [k for k in items[0] if k not in ("x", "loss_mask", "label", "text", "position")
              and torch.is_tensor(items[0][k])]

    def condition(kind: str, idx: torch.Tensor) -> dict:
        cond = {k: torch.stack([items[i][k] for i in idx.tolist()]) for k in passed}
        source = idx if kind == "true" else other[idx]
        if probe_label:
            labels = torch.tensor([int(items[i]["label"]) for i in source.tolist()])
            cond["label"] = torch.full_like(labels, null_label) if kind == "null" else labels
        if uses_text:
            cond["text"] = ["" if kind == "null" else items[i]["text"] for i in source.tolist()]
        return cond

    rows = []
    with torch.no_grad():
        for sigma in sigmas:
            row = {"sigma": float(sigma)}
            for kind in ("true", "shuffled", "null"):
                err = torch.zeros(())
                for start in range(0, n, batch_size):
                    idx = torch.arange(start, min(start + batch_size, n))
                    sig = torch.full((len(idx),), float(sigma))
                    est = denoiser(x[idx] + sigma * noise[idx], sig, condition(kind, idx)).float()
                    err = err + ((est - x[idx]) ** 2 * weight[idx]).sum()
                row[kind] = float(err / weight.sum())
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| sigma | true | shuffled | null | shuffled / true |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sigma']:g} | {r['true']:.4f} | {r['shuffled']:.4f} | {r['null']:.4f} | "
                     f"{r['shuffled'] / max(r['true'], 1e-12):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .build import build_dataset, build_denoiser
    from .trainer import load_for_sampling

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=96, help="items of the run's data set (default 96)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    model, config, spec, _, folder, _ = load_for_sampling(a.checkpoint, device="cpu", use_ema=not a.no_ema)
    dataset = build_dataset(config)
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(a.seed))[:a.num].tolist()
    items = [dataset[i] for i in picks]
    null_label = spec.num_classes if spec.num_classes > 0 else None
    try:
        rows = conditioning_probe(build_denoiser(model, config.objective), items, null_label=null_label,
                                  uses_text=config.model.text_encoder.kind != "none", sigmas=a.sigmas, seed=a.seed)
    except (ValueError, KeyError) as err:
        print(f"{folder}: {err}", file=sys.stderr)
        return 2
    print(f"{folder} ({len(items)} items of {config.data.name}, {'EMA' if not a.no_ema else 'raw'} weights)")
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": str(folder), "num": len(items), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
