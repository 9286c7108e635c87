"""Shapes' entries in the training registries: the ``shapes_transformer`` backbone (presets of
multidiff.shapes.transformer), the ``shapes`` data set (folder or manifest of meshes), PLY + PNG
previews, and PointFlow's generation metrics against the held-out split. Imported by
``multidiff.train.registry.load_plugins``."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.utils import item_generator
from ..manifest import read_manifest
from ..nn.presets import build_preset, preset_params
from ..train.modality import Modality, register_modality
from ..train.registry import DataSpec, register_dataset, register_model
from .data import ShapeDataset, scan_folder
from .io import MESH_EXTENSIONS, NORMALIZATIONS, Normalization, probe_mesh, render_sheet, save_ply
from .tasks import cut_order, resample_points
from .transformer import POINT_PRESETS, PointCloudTransformer

MODALITY = "shapes"


PointTransformerParams = preset_params("PointTransformerParams", PointCloudTransformer, POINT_PRESETS,
                                       default="latent_small", doc=(
    "A preset of multidiff.shapes.transformer (point_* full attention, latent_* latent tokens, upsampler_small) "
    "and overrides of its arguments."))


def build_point_transformer(params, spec: DataSpec, *, gradient_checkpointing: bool = False):
    """A PointCloudTransformer for (points, 3 + features) clouds; a completion task's partial scan enters
    as conditioning tokens of the data's width."""
    if len(spec.sample_shape) != 2 or spec.sample_shape[1] < 3:
        raise ValueError(f"shapes_transformer needs samples of shape (points, 3 + features), got {spec.sample_shape}")
    completion = spec.meta.get("task") in ("complete", "complete_rest")
    return build_preset(params, gradient_checkpointing=gradient_checkpointing, in_channels=spec.sample_shape[1],
                        num_classes=spec.num_classes,
                        defaults={"coarse_channels": spec.sample_shape[1]} if completion else {})


register_model("shapes_transformer", build_point_transformer, params=PointTransformerParams, modality=MODALITY,
               example_shape=(2048, 3), example_batch=16,
               description="point-cloud transformer, full or latent-token (multidiff.shapes.transformer)")


@dataclass
class ShapeDataParams:
    """See multidiff.shapes.data.ShapeDataset. num_classes: None reads it from the labels.
    eval_split: the held-out split the evaluator compares samples with. coarse_points > 0 adds
    cond["coarse"] (a disjoint coarse sample of the same shape) for training an upsampler.
    passes_per_epoch: the data set's length is meshes x passes_per_epoch, item i being mesh
    i mod meshes with the random choices of pass i // meshes, so every pass over a mesh draws a
    new subset of its cached surface points (the trainer's stream knows only indices).
    task: "generate"; "complete" (a random planar cut keeping a fraction in keep_range, resampled
    to partial_points, conditions the model as cond["coarse"] tokens; the whole cloud is the
    target); "complete_rest" (the same cut conditions, and only num_points of the cut's far side
    are the target, so completion keeps the given points and generates the rest, as PVD does)."""

    num_points: int = 2048
    split: str | None = "train"
    eval_split: str = "test"
    normalize: str = "global"
    augment: bool = False
    rotate: bool = True
    scale_min: float = 0.85
    scale_max: float = 1.15
    pool_size: int | None = None
    cache_dir: str | None = None
    label_column: str = "label"
    num_classes: int | None = None
    coarse_points: int = 0
    passes_per_epoch: int = 1000
    task: str = "generate"
    partial_points: int = 512
    keep_range: list[float] = field(default_factory=lambda: [0.3, 0.7])


SHAPE_TASKS = ("generate", "complete", "complete_rest")


def random_cut(cloud: torch.Tensor, g: torch.Generator, keep_range=(0.3, 0.7)) -> tuple[torch.Tensor, torch.Tensor]:
    """A planar cut of one cloud (points, C) in a random direction keeping a fraction uniform in
    ``keep_range`` (at least one point on each side): (kept points, the rest), ordered as
    multidiff.shapes.tasks.partial_cloud cuts. A partial scan for completion training is
    ``resample_points(kept, g, n)``."""
    u = torch.rand(2, generator=g)
    direction = torch.randn(3, generator=g)
    keep = float(keep_range[0] + (keep_range[1] - keep_range[0]) * u[0])
    k = max(1, min(len(cloud) - 1, int(round(keep * len(cloud)))))
    order = cut_order(cloud[None], direction)[0]
    return cloud[order[:k]], cloud[order[k:]]


def _class_names(rows: list[dict], label_column: str) -> dict[int, str]:
    names = {}
    for r in rows:
        if r.get(label_column, "") not in ("", None, -1) and r.get("class"):
            names[int(r[label_column])] = str(r["class"])
    return names


class ShapeTrainData(torch.utils.data.Dataset):
    """ShapeDataset items as the trainer wants them: x (num_points, 3) and (when labelled) label."""

    def __init__(self, params: ShapeDataParams, path: str | None, seed: int):
        if path is None:
            raise ValueError("data.path: the shapes data set needs a folder of meshes or a manifest (.csv / .jsonl)")
        if params.normalize not in NORMALIZATIONS:
            raise ValueError(f"data.params.normalize must be one of {NORMALIZATIONS}, got {params.normalize!r}")
        # complete_rest cuts a 4x denser draw, so the far side (>= 30% of it) still holds num_points
        load_points = params.num_points * (4 if params.task == "complete_rest" else 1)
        self.shapes = ShapeDataset(path, load_points, split=params.split, normalize=params.normalize,
                                   augment=params.augment, rotate=params.rotate,
                                   scale_range=(params.scale_min, params.scale_max), pool_size=params.pool_size,
                                   cache_dir=params.cache_dir, seed=seed, label_column=params.label_column,
                                   progress=True, coarse_points=params.coarse_points)
        self.passes, self.epoch = params.passes_per_epoch, 0
        if params.task not in SHAPE_TASKS:
            raise ValueError(f"data.params.task: unknown shapes task {params.task!r}; known: {SHAPE_TASKS}")
        if params.task != "generate" and params.coarse_points:
            raise ValueError(f"data.params: task {params.task!r} and coarse_points (the upsampler) both use cond['coarse']; "
                             "set one of them")
        lo, hi = params.keep_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"data.params.keep_range must satisfy 0 < low <= high < 1, got {[lo, hi]}")
        self.params, self.seed = params, seed
        classes = params.num_classes if params.num_classes is not None else self.shapes.num_classes
        meta = {"normalize": params.normalize, "eval_split": params.eval_split,
                "stats": self.shapes.stats.to_json() if self.shapes.stats is not None else None,
                "coarse_points": params.coarse_points if params.task == "generate" else params.partial_points,
                "task": params.task, "keep_range": list(params.keep_range),
                "class_names": {str(k): v for k, v in _class_names(self.shapes.rows, params.label_column).items()}}
        self.spec = DataSpec((params.num_points, 3), classes, MODALITY, meta)

    def __len__(self) -> int:
        return len(self.shapes) * max(1, self.passes)

    @property
    def split_record(self) -> dict | None:
        """How a split-less folder was split (multidiff.manifest.select_split); None when the data named it."""
        return self.shapes.split_record

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        n = len(self.shapes)
        # each of the `passes` copies of a shape per epoch draws its own points
        item = self.shapes.item(index % n, self.epoch * max(1, self.passes) + index // n)
        out = {"x": item["x"]}
        if "coarse" in item:
            out["coarse"] = item["coarse"]
        if self.params.task != "generate":
            g = item_generator(self.seed, self.epoch, index, stream=1)
            kept, rest = random_cut(item["x"], g, self.params.keep_range)
            out["coarse"] = resample_points(kept, g, self.params.partial_points)
            if self.params.task == "complete_rest":  # generate only the far side of the cut (PVD's completion)
                out["x"] = resample_points(rest, g, self.params.num_points)
        if self.spec.num_classes > 0:
            out["label"] = item["label"] if item["label"] >= 0 else self.spec.num_classes
        out["text"] = item["text"]
        return out


register_dataset("shapes", ShapeTrainData, params=ShapeDataParams, modality=MODALITY, needs_path=True,
                 description="meshes from a folder or manifest, sampled to point clouds (multidiff.shapes.data)")


def _titles(n: int, labels, spec) -> list[str]:
    names = ((spec.meta if spec is not None else {}) or {}).get("class_names", {})
    out = []
    for k in range(n):
        title = f"#{k}"
        if labels is not None:
            lab = int(labels[k])
            title += f" {names.get(str(lab), f'label {lab}')}"
        out.append(title)
    return out


def shapes_preview(samples: torch.Tensor, out_dir: Path, name: str, *, labels=None, spec=None,
                   max_files: int = 16) -> list[Path]:
    """PLY files of the first samples (the data set's normalised coordinates) plus one PNG sheet."""
    out_dir = Path(out_dir) / name
    clouds = [samples[k, :, :3].float() for k in range(min(len(samples), max_files))]
    titles = _titles(len(clouds), labels, spec)
    paths = [save_ply(out_dir / f"{k:03d}.ply", c) for k, c in enumerate(clouds)]
    paths.append(render_sheet(clouds, out_dir / "clouds.png", titles=titles))
    return paths


def reference_clouds(config, spec, num_points: int, labels=None, limit: int | None = None, seed: int = 0):
    """Held-out clouds of ``spec.meta['eval_split']`` in the training normalisation; with ``labels``
    (n,), as many references of each class as there are samples of it (when the split has them)."""
    meta = spec.meta or {}
    p = config.data.params
    stats = Normalization.from_json(meta["stats"]) if meta.get("stats") else None
    ref = ShapeDataset(config.data.path, num_points, split=meta.get("eval_split", "test"),
                       normalize=meta.get("normalize", "global"), stats=stats, pool_size=p.get("pool_size"),
                       cache_dir=p.get("cache_dir"), seed=seed, label_column=p.get("label_column", "label"))
    order = list(range(len(ref)))
    if labels is not None:
        wanted: dict[int, int] = {}
        for lab in torch.as_tensor(labels).tolist():
            wanted[int(lab)] = wanted.get(int(lab), 0) + 1
        by_label = {}
        for k, lab in enumerate(ref.labels):
            by_label.setdefault(lab, []).append(k)
        order = [k for lab, n in sorted(wanted.items()) for k in by_label.get(lab, [])[:n]]
    if limit is not None:
        order = order[:limit]
    items = [ref[k] for k in order]
    return torch.stack([it["x"] for it in items]), torch.tensor([it["label"] for it in items])


def shapes_evaluate(samples: torch.Tensor, config, *, labels=None, spec=None, emd_budget_s: float = 60.0) -> dict:
    """PointFlow's MMD / COV / 1-NNA with Chamfer distance between the samples and the held-out
    split (same classes in the same proportions when the samples are labelled), both in the
    data set's normalised coordinates; also with EMD (exact assignment) when the three pairwise
    EMD matrices are estimated to take under ``emd_budget_s`` seconds (about 0.5 s per pair of
    1024-point clouds on one core, growing as points^3): small evaluations only on CPUs.
    1-NNA: 0.5 is ideal, 1.0 means generated and real shapes are told apart perfectly."""
    from .metrics import generation_metrics

    x = samples[..., :3].float()
    finite = torch.isfinite(x).all(dim=(1, 2))
    out = {"n": int(len(x)), "nonfinite_fraction": float(1 - finite.float().mean())}
    x = x[finite]
    if labels is not None:
        labels = torch.as_tensor(labels)[finite]
        if spec is not None and spec.num_classes:
            keep = labels < spec.num_classes  # null-label samples have no class to compare with
            x, labels = x[keep], labels[keep]
    if spec is None or len(x) < 2 or getattr(getattr(config, "data", None), "path", None) is None:
        return out
    refs, _ = reference_clouds(config, spec, x.shape[1], labels, limit=len(x) if labels is None else None)
    if len(refs) < 2:
        return out
    device = "cuda" if torch.cuda.is_available() else None
    pairs = (len(x) + len(refs)) ** 2
    metrics = ("cd", "emd") if pairs * 0.5 * (x.shape[1] / 1024) ** 3 <= emd_budget_s else ("cd",)
    # the pairwise distances take minutes at 320 x 320 clouds: a bar per matrix in a terminal
    out.update(generation_metrics(x, refs, metrics=metrics, device=device, progress=sys.stderr.isatty()))
    out["n_reference"] = int(len(refs))
    return out


register_modality(Modality(MODALITY, preview=shapes_preview, evaluate=shapes_evaluate,
                           deterministic_data={"split": None, "augment": False},
                           file_extensions=MESH_EXTENSIONS, probe=probe_mesh,
                           description="point clouds (points, 3 + features): PLY + rendered previews, MMD / COV / 1-NNA"))

__all__ = ["PointTransformerParams", "ShapeDataParams", "ShapeTrainData", "build_point_transformer", "reference_clouds",
           "shapes_evaluate", "shapes_preview", "read_manifest", "scan_folder"]
