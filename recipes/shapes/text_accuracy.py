"""Category accuracy against guidance scale for a caption-conditioned shapes model.

For each category of the manifest, ``--num`` clouds are drawn with the prompt "a <category>" (the
captions datasets/procedural_shapes.py writes) at every ``--guidance`` scale. A 1-nearest-neighbour
classifier under Chamfer distance against the labelled held-out split names each cloud's category
(its leave-one-out accuracy on those real clouds is printed first, as the ceiling).

    python recipes/shapes/text_accuracy.py runs/shapes-text/checkpoints/latest --num 8 --guidance 1 2 4

Given a class-conditional checkpoint instead, it draws the same categories by label, for comparison.

Prints a markdown table and writes metrics.json and a PNG sheet per scale under --out.
"""
import argparse
import csv
from pathlib import Path

import torch

from multidiff.shapes.io import render_sheet
from multidiff.shapes.metrics import pairwise_distances
from multidiff.shapes.registry import reference_clouds
from multidiff.train.sampling import sampling_shape
from multidiff.train.sweep import guidance_sweep, load_text_model, sweep_arguments, write_sweep


def category_names(manifest: Path, label_column: str = "label", name_column: str = "class") -> dict[int, str]:
    names = {}
    for row in csv.DictReader(manifest.open()):
        names[int(row[label_column])] = row[name_column]
    return dict(sorted(names.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep_arguments(p, num_help="clouds per category", num=8, steps=32, out="outputs/shapes-text")
    p.add_argument("--references", type=int, default=16, help="held-out clouds per category for the classifier")
    a = p.parse_args(argv)
    model, config, spec, folder = load_text_model(a.checkpoint, allow_labels=True)  # a class model for comparison
    names = category_names(Path(config.data.path))
    wanted = torch.tensor([lab for lab in names for _ in range(a.references)])
    refs, ref_labels = reference_clouds(config, spec, sampling_shape(config.sampling, spec)[0], wanted)
    d_rr = pairwise_distances(refs, refs, "cd")
    d_rr.fill_diagonal_(float("inf"))
    ceiling = float((ref_labels[d_rr.argmin(1)] == ref_labels).float().mean())
    print(f"1-NN Chamfer classifier, leave-one-out on {len(refs)} held-out clouds: {ceiling:.3f}", flush=True)
    requested = torch.tensor([lab for lab in names for _ in range(a.num)])
    prompts = [f"a {names[int(lab)]}" for lab in requested]
    predicted = {}

    def score(clouds):
        predicted["last"] = ref_labels[pairwise_distances(clouds, refs, "cd").argmin(1)]
        return {"accuracy": float((predicted["last"] == requested).float().mean())}

    def keep(scale, clouds):
        picks = list(range(0, len(clouds), a.num))
        render_sheet([clouds[k] for k in picks], Path(a.out) / f"guidance-{scale:g}" / "sheet.png", cols=4,
                     titles=[f"{prompts[k]} -> {names[int(predicted['last'][k])]}" for k in picks])
    by_label = requested if config.model.text_encoder.kind == "none" else None
    rows = guidance_sweep(model, config, spec, prompts, a.guidance, steps=a.steps, seed=a.seed, score=score, keep=keep,
                          labels=by_label)
    write_sweep(a.out, {"checkpoint": str(folder), "per_category": a.num, "steps": a.steps,
                        "classifier_leave_one_out": ceiling}, rows, [("category accuracy (1-NN Chamfer)", "accuracy", ".3f")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
