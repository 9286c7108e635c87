"""The toy 2-D data set, its preview (a scatter plot PNG) and its metrics.

``toy_gmm`` draws ``size`` points from :func:`multidiff.toy.gmm.two_d_mixture` (a ring of
n_modes Gaussians plus one at the centre) with its own ``data_seed``; with ``conditional``
each point carries its component index as a class label. With ``data.path`` the points
are read from a file instead (.npy, .csv or .safetensors holding an (N, 2) array).
Registered as data set ``toy_gmm`` and as the preview / evaluator of modality ``toy2d``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..train.modality import Modality, register_modality
from ..train.registry import DataSpec, register_dataset
from .gmm import GaussianMixture, two_d_mixture

MODALITY = "toy2d"


@dataclass
class ToyGMMParams:
    n_modes: int = 8
    radius: float = 1.0
    std: float = 0.08
    size: int = 65536
    conditional: bool = False
    data_seed: int = 0


def mixture_of(params: ToyGMMParams) -> GaussianMixture:
    return two_d_mixture(params.n_modes, params.radius, params.std)


def draw(mixture: GaussianMixture, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (n, dim) float32 and their component indices (n,)."""
    k = torch.multinomial(mixture.weights, n, replacement=True, generator=generator)
    z = torch.randn(n, mixture.dim, generator=generator, dtype=torch.float64)
    return (mixture.means[k] + mixture.stds[k, None] * z).float(), k


def read_points(path: str) -> torch.Tensor:
    """An (N, dim) float array from .npy (no pickled objects), .csv or .safetensors; DataError naming the file."""
    import numpy as np

    p = Path(path).expanduser()
    if p.suffix not in (".npy", ".csv", ".safetensors"):
        raise DataError(f"{p}: toy_gmm reads .npy, .csv or .safetensors point files")
    try:
        if p.suffix == ".npy":
            array = np.load(p, allow_pickle=False)
        elif p.suffix == ".csv":
            array = np.loadtxt(p, delimiter=",", ndmin=2)
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(p))
            if not arrays:
                raise ValueError("no tensors in the file")
            array = arrays.get("points", next(iter(arrays.values())))
    except Exception as err:  # numpy / safetensors name no file in their messages
        raise DataError(f"{p}: cannot read points ({type(err).__name__}: {err})") from None
    if array.dtype.kind not in "fiu" or array.ndim != 2 or not len(array):
        raise DataError(f"{p}: expected a non-empty numeric (N, dim) array, got {array.dtype} of shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{p}: contains NaN or inf values")
    return torch.from_numpy(np.ascontiguousarray(array)).float()


class ToyGMMDataset(torch.utils.data.Dataset):
    """Items {"x": (2,) float32, "label": int (when conditional)}."""

    def __init__(self, params: ToyGMMParams, path: str | None = None, seed: int = 0):
        self.params = params
        if path:
            self.points, self.labels = read_points(path), None
        else:
            g = torch.Generator().manual_seed(params.data_seed)
            self.points, labels = draw(mixture_of(params), params.size, g)
            self.labels = labels if params.conditional else None
        num_classes = params.n_modes + 1 if self.labels is not None else 0
        self.spec = DataSpec((self.points.shape[1],), num_classes, MODALITY)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitems__(self, indices: list[int]) -> dict:
        """A batch at once: {"x": (n, 2), "label": (n,) when conditional}."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.points[idx]}
        if self.labels is not None:
            batch["label"] = self.labels[idx]
        return batch

    def __getitem__(self, i: int) -> dict:
        item = {"x": self.points[i]}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item


register_dataset("toy_gmm", ToyGMMDataset, params=ToyGMMParams, modality=MODALITY,
                 description="2-D ring of Gaussians plus a centre mode (multidiff.toy.gmm.two_d_mixture)")


# --------------------------------------------------------------------------- preview
def write_scatter(samples: torch.Tensor, out_dir: Path, name: str, *, labels: torch.Tensor | None = None,
                  means: torch.Tensor | None = None) -> list[Path]:
    """A PNG scatter plot of (n, 2) samples (matplotlib, Agg backend); returns [path]."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pts = samples.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    colors = None if labels is None else labels.cpu().numpy()
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5, c=colors, cmap="tab10" if colors is not None else None)
    if means is not None:
        ax.scatter(means[:, 0].numpy(), means[:, 1].numpy(), marker="x", c="red", s=30)
    lim = max(1.5, float(pts.abs().quantile(0.99)) * 1.1) if len(pts) else 1.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(f"{name} ({len(pts)} samples)", fontsize=9)
    path = out_dir / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [path]


def toy_preview(samples: torch.Tensor, out_dir: Path, name: str, *, labels=None, spec=None) -> list[Path]:
    if samples.ndim != 2 or samples.shape[1] != 2:
        return []
    return write_scatter(samples, out_dir, name, labels=labels)




# ---------------------------------------------------------------------------- metrics
def mixture_metrics(samples: torch.Tensor, mixture: GaussianMixture, labels: torch.Tensor | None = None) -> dict:
    """Scores of (n, dim) samples against the true mixture.

    nll: mean -log p(x) under the mixture (nats); mean_dist_to_mode: mean distance to the
    nearest mode's mean; in_mode_fraction: share of samples within the radius holding 99% of
    a mode's mass; mode_coverage: share of modes that got at least a quarter of their
    expected in-mode samples; mode_weight_tv: total variation between the samples' nearest-
    mode frequencies and the mixture weights; label_accuracy (conditional): share of
    samples whose nearest mode is their label.
    """
    x = samples.to(torch.float64)
    n = x.shape[0]
    finite = torch.isfinite(x).all(dim=1)
    out: dict[str, float] = {"num_samples": float(n), "finite_fraction": float(finite.double().mean()) if n else 0.0}
    x = x[finite]
    if x.shape[0] == 0:
        return out
    dist = torch.cdist(x, mixture.means)  # (n, K)
    nearest_d, nearest = dist.min(dim=1)
    k = mixture.means.shape[0]
    r99 = mixture.stds * math.sqrt(2 * math.log(100.0))  # chi with 2 dof: P(|z| < r) = 1 - exp(-r^2/2)
    inside = nearest_d <= r99[nearest]
    counts = torch.bincount(nearest[inside], minlength=k).double()
    expected = mixture.weights * x.shape[0]
    freq = torch.bincount(nearest, minlength=k).double() / x.shape[0]
    out.update({
        "nll": float(-mixture.log_prob(x).mean()),
        "mean_dist_to_mode": float(nearest_d.mean()),
        "in_mode_fraction": float(inside.double().mean()),
        "mode_coverage": float((counts >= 0.25 * expected).double().mean()),
        "modes_covered": float((counts >= 0.25 * expected).sum()),
        "num_modes": float(k),
        "mode_weight_tv": float(0.5 * (freq - mixture.weights).abs().sum()),
    })
    if labels is not None:
        out["label_accuracy"] = float((nearest == labels[finite].to(nearest.device)).double().mean())
    return out


def toy_evaluate(samples: torch.Tensor, config, *, labels=None, spec=None) -> dict:
    from ..train.config import data_params

    params = data_params(config) if config.data.name == "toy_gmm" else ToyGMMParams()
    return mixture_metrics(samples, mixture_of(params), labels)


register_modality(Modality(MODALITY, preview=toy_preview, evaluate=toy_evaluate,
                           description="2-D points: scatter-plot previews, metrics against the exact mixture"))
