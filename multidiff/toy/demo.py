"""``multidiff demo``: sample a 2-D Gaussian mixture with every sampler and draw a PNG grid.

The mixture (``two_d_mixture``: eight modes on a ring and one at the centre) has an exact
denoiser, so the pictures show each sampler's own error and nothing else. Rows are the
samplers of ``multidiff.core.SAMPLERS``, columns the step counts; the top row holds the
true data and the reference ODE solution. Each panel's title gives

  RMS  the RMS distance to a 1000-step Heun solution of the probability-flow ODE from the
       same starting noise (deterministic samplers only: a stochastic sampler's output
       is not meant to match one ODE trajectory), and
  LL   the mean log-likelihood of the samples under the true mixture (all samplers).

Points are coloured by the mode the reference ODE trajectory ends in, so a point of
another colour inside a cluster is a trajectory the sampler sent to the wrong mode.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import torch

from multidiff.core import ODE_ORDER, SAMPLERS, evaluations, sample, sigma_grid
from multidiff.toy.gmm import two_d_mixture

SPACING_CHOICES = ("karras", "loglinear", "flow_shift")  # the spacings that need no schedule


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (created if missing)")
    parser.add_argument("--samples", type=int, default=2000, help="points per panel")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="step counts (columns)")
    parser.add_argument("--spacing", default="karras", choices=SPACING_CHOICES, help="sigma grid spacing")
    parser.add_argument("--sigma-min", type=float, default=0.002)
    parser.add_argument("--sigma-max", type=float, default=80.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--part", choices=("all", "samplers", "audio"), default="all",
                        help="samplers: the 2-D mixture grid (seconds); audio: train + sample a waveform model "
                             "on synthesised notes (about 3 minutes on 2 CPU cores); all: both")
    parser.add_argument("--audio-train-samples", type=int, default=None,
                        help="training length of the audio part in samples seen (default: about 3 minutes)")


def run_demo(out: str, *, samples: int = 2000, steps: Sequence[int] = (5, 10, 20), spacing: str = "karras",
             sigma_min: float = 0.002, sigma_max: float = 80.0, seed: int = 0, progress: bool = True,
             reference_steps: int = 1000, samplers: Sequence[str] | None = None) -> dict:
    """Sample, score and plot; returns the metrics (also written to ``out/metrics.json``)."""
    from tqdm.auto import tqdm

    names = list(samplers) if samplers is not None else list(SAMPLERS)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D points: intra-op threads cost more than they give
    try:
        mixture = two_d_mixture()
        gen = torch.Generator().manual_seed(seed)
        data = mixture.sample(samples, generator=gen)
        x_start = torch.randn(samples, 2, generator=gen, dtype=torch.float64) * sigma_max
        bar = tqdm(total=1 + len(names) * len(steps), desc="demo", disable=not progress)
        bar.set_postfix_str("reference ODE")
        reference = sample(mixture, x_start, sigma_grid(reference_steps, sigma_min, sigma_max, "karras"), "heun")
        bar.update(1)
        mode = torch.cdist(reference, mixture.means).argmin(1)

        results: dict = {}
        outputs: dict = {}
        for name in names:
            for n in steps:
                bar.set_postfix_str(f"{name}, {n} steps")
                grid = sigma_grid(n, sigma_min, sigma_max, spacing)
                noise_gen = torch.Generator().manual_seed(seed + 1)
                x = sample(mixture, x_start, grid, name, generator=noise_gen)
                rms = float(((x - reference) ** 2).sum(-1).mean().sqrt())
                results.setdefault(name, {})[n] = {
                    "deterministic": name in ODE_ORDER,
                    "evaluations": evaluations(name, n),
                    "rms_vs_reference": rms if name in ODE_ORDER else None,
                    "rms_vs_reference_any": rms,
                    "log_likelihood": float(mixture.log_prob(x).mean()),
                }
                outputs[(name, n)] = x
                bar.update(1)
        bar.close()
        summary = {
            "data_log_likelihood": float(mixture.log_prob(data).mean()),
            "reference_log_likelihood": float(mixture.log_prob(reference).mean()),
            "settings": {"samples": samples, "steps": list(steps), "spacing": spacing, "sigma_min": sigma_min,
                         "sigma_max": sigma_max, "seed": seed, "reference": f"heun, {reference_steps} steps, karras"},
            "samplers": results,
        }
        png = os.path.join(out, "samplers.png")
        _plot(png, data, reference, mode, outputs, summary, names, list(steps))
    finally:
        torch.set_num_threads(threads)
    summary["png"] = png
    summary["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _plot(path, data, reference, mode, outputs, summary, names, steps) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols, rows = max(len(steps), 2), len(names) + 1
    fig = Figure(figsize=(2.3 * cols, 2.35 * rows), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = matplotlib.colormaps["tab10"](mode.numpy() % 10)
    lim = 1.6

    def scatter(ax, pts, title, c):
        pts = pts.numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, c=c, alpha=0.6, linewidths=0, rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)

    scatter(axes[0, 0], data, f"true data\nLL {summary['data_log_likelihood']:.2f}", "0.3")
    scatter(axes[0, 1], reference, f"reference ODE (Heun 1000)\nLL {summary['reference_log_likelihood']:.2f}", colours)
    for ax in axes[0, 2:]:
        ax.axis("off")
    for r, name in enumerate(names, start=1):
        for c, n in enumerate(steps):
            m = summary["samplers"][name][n]
            score = f"RMS {m['rms_vs_reference']:.3f}  " if m["deterministic"] else ""
            title = f"{name}, {n} steps ({m['evaluations']} NFE)\n{score}LL {m['log_likelihood']:.2f}"
            scatter(axes[r, c], outputs[(name, n)], title, colours)
        for ax in axes[r, len(steps):]:
            ax.axis("off")
    settings = summary["settings"]
    fig.suptitle(f"2-D Gaussian mixture, exact denoiser: every sampler ({settings['spacing']} grid, "
                 f"sigma {settings['sigma_max']:g} -> {settings['sigma_min']:g} -> 0)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / rows))
    fig.savefig(path)


def format_metrics(summary: dict) -> str:
    steps = summary["settings"]["steps"]
    head = f"{'sampler':16s}" + "".join(f" | {f'{n} steps: RMS / LL':>22s}" for n in steps)
    lines = [head, "-" * len(head)]
    for name, per_steps in summary["samplers"].items():
        cells = []
        for n in steps:
            m = per_steps[n]
            rms = f"{m['rms_vs_reference']:.3f}" if m["deterministic"] else "  -  "
            cells.append(f" | {rms + ' / ' + format(m['log_likelihood'], '.2f'):>22s}")
        lines.append(f"{name:16s}" + "".join(cells))
    lines.append(f"true data LL {summary['data_log_likelihood']:.2f}; reference ODE LL "
                 f"{summary['reference_log_likelihood']:.2f} (RMS: distance to the reference ODE solution; "
                 "stochastic samplers have none)")
    return "\n".join(lines)


def demo_run(args: argparse.Namespace) -> int:
    if any(n < 1 for n in args.steps) or args.samples < 1:
        raise SystemExit("multidiff demo: --steps and --samples must be positive")
    if args.part in ("all", "samplers"):
        summary = run_demo(os.path.join(args.out, "samplers") if args.part == "all" else args.out,
                           samples=args.samples, steps=args.steps, spacing=args.spacing,
                           sigma_min=args.sigma_min, sigma_max=args.sigma_max, seed=args.seed,
                           progress=not args.no_progress)
        print(format_metrics(summary))
        print(f"wrote {summary['png']} and {os.path.join(os.path.dirname(summary['png']), 'metrics.json')} "
              f"in {summary['seconds']:.1f}s")
    if args.part in ("all", "audio"):
        from multidiff.audio.demo import DEFAULT_TRAIN_SAMPLES, format_summary, run_audio_demo

        audio = run_audio_demo(os.path.join(args.out, "audio") if args.part == "all" else args.out,
                               train_samples=args.audio_train_samples or DEFAULT_TRAIN_SAMPLES, seed=args.seed,
                               progress=not args.no_progress)
        print(format_summary(audio))
    return 0
