"""Backbone throughput and memory against peers, side by side in one run (ratios, not absolute times).

Audio: our UNet1D against diffusers' UNet1DModel (the Dance Diffusion U-Net) at the same
parameter count (within 10%) and input size. Each measurement is a training step
(forward, backward, AdamW step) on random data; samples/s is the median over timed
steps after warm-up. Peak memory: CUDA's max_memory_allocated on GPU; on CPU the rise
in the process's peak RSS, each model measured in its own fresh process.

    python benchmarks/backbones.py [--device cpu|cuda] [--quick] [--part audio|video|shapes]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling modules below, when imported from elsewhere
from isolate import run_isolated  # noqa: E402

RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------------------------ models
def diffusers_unet1d(width: int = 32):
    """A Dance-Diffusion-style UNet1DModel: 8 levels of 2x down-sampling, attention at the 3 coarsest."""
    from diffusers import UNet1DModel

    ch = tuple(width * m for m in (1, 1, 2, 2, 4, 4, 8, 8))
    return UNet1DModel(sample_size=16384, in_channels=1, out_channels=1, extra_in_channels=16,
                       time_embedding_type="fourier", time_embedding_dim=16, use_timestep_embedding=False,
                       flip_sin_to_cos=True, block_out_channels=ch,
                       down_block_types=("DownBlock1DNoSkip",) + ("DownBlock1D",) * 4 + ("AttnDownBlock1D",) * 3,
                       up_block_types=("AttnUpBlock1D",) * 3 + ("UpBlock1D",) * 4 + ("UpBlock1DNoSkip",),
                       mid_block_type="UNetMidBlock1D", layers_per_block=1)


def ours_unet1d(scale: float = 1.0, layout: str = "waveform"):
    """Our UNet1D at a width scale.

    waveform: the `small` preset's layout, first level on raw samples (4x4x4x2 down-sampling).
    mdct: the spoken-digits recipe's layout (recipes/audio/digits.yaml): the first level runs on a
    32-band MDCT of the waveform (512 frames for 16384 samples), spectral-mask output.
    """
    from multidiff.audio.unet1d import UNet1D

    if layout == "mdct":
        ch = tuple(int(round(c * scale / 8)) * 8 for c in (96, 128, 192, 256))
        return UNet1D(in_channels=1, channels=ch, factors=(2, 2, 4), blocks_per_level=1, attention_levels=(2, 3),
                      emb_dim=max(64, ch[-1]), patch_size=32, patch_transform="mdct", input_gate=True,
                      conditioning_token=True)
    ch = tuple(int(round(c * scale / 8)) * 8 for c in (32, 64, 128, 256, 256))
    return UNet1D(in_channels=1, channels=ch, factors=(4, 4, 4, 2), blocks_per_level=2, attention_levels=(3, 4),
                  emb_dim=max(64, ch[-1]))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_ours(target: int, layout: str = "waveform"):
    """Our UNet1D scaled so its parameter count is within 10% of target."""
    lo, hi = 0.1, 8.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if n_params(ours_unet1d(mid, layout)) < target:
            lo = mid
        else:
            hi = mid
    model = ours_unet1d((lo + hi) / 2, layout)
    assert abs(n_params(model) / target - 1) < 0.1, (n_params(model), target)
    return model


# --------------------------------------------------------------------------- measuring
def _forward(kind, model, x, t):
    if kind == "diffusers":
        return model(x, t).sample
    return model(x, t)


def measure(kind: str, target_params: int, batch: int, length: int, device: str, steps: int, queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(torch.get_num_threads())
    model = diffusers_unet1d() if kind == "diffusers" else matched_ours(target_params, kind.split("-", 1)[1])
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, length, device=device)
    t = torch.rand(batch, device=device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = (_forward(kind, model, x, t) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
               else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    queue.put({"model": kind, "params_M": n_params(model) / 1e6, "samples_per_s": batch / statistics.median(times),
               "peak_MB": peak_mb})


def audio_part(device: str, quick: bool) -> list[dict]:
    target = n_params(diffusers_unet1d())
    batch, length, steps = (4, 16384, 3) if quick else (8 if device == "cpu" else 64, 16384, 5 if device == "cpu" else 20)
    rows = []
    for kind in ("diffusers", "ours-waveform", "ours-mdct"):
        r = run_isolated(measure, kind, target, batch, length, device, steps)
        r.update(part="audio", input=f"{batch}x1x{length}")
        rows.append(r)
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["throughput_ratio"] = r["samples_per_s"] / base
    return rows


def other_part(part: str, device: str, quick: bool) -> int:
    """Run the video or 3D part (each in its own module) and print / store its rows as a markdown table."""
    import importlib

    module = importlib.import_module(f"backbones_{part}")
    rows = module.run(quick, device=device)
    table = module.markdown(rows)
    print(f"device: {device}\n{table}")
    RESULTS.mkdir(exist_ok=True)
    tag = f"backbones_{part}_{device}{'_quick' if quick else ''}"
    (RESULTS / f"{tag}.md").write_text(table + "\n")
    (RESULTS / f"{tag}.json").write_text(json.dumps(rows, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", default="audio", choices=["audio", "video", "shapes"],
                        help="video / shapes: benchmarks/backbones_video.py / backbones_shapes.py (their own tables)")
    args = parser.parse_args(argv)
    if args.part != "audio":
        return other_part(args.part, args.device, args.quick)
    rows = audio_part(args.device, args.quick)
    header = f"{'part':6} {'model':14} {'params (M)':>10} {'input':>14} {'samples/s':>10} {'ratio':>6} {'peak MB':>9}"
    lines = [f"device: {args.device}", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['part']:6} {r['model']:14} {r['params_M']:10.2f} {r['input']:>14} {r['samples_per_s']:10.2f} "
                     f"{r['throughput_ratio']:6.2f} {r['peak_MB']:9.0f}")
    for r in rows[1:]:  # the like-for-like layout is the headline; the MDCT front end is a design choice
        if r["model"] == "ours-waveform":
            met = "met" if r["throughput_ratio"] >= 1.5 else "NOT met"
            lines.append(f"audio, like for like: {r['model']} / diffusers UNet1DModel throughput = "
                         f"{r['throughput_ratio']:.2f} (target >= 1.5: {met})")
        else:
            lines.append(f"audio, design choice (MDCT front end, not like for like): {r['model']} / diffusers "
                         f"UNet1DModel throughput = {r['throughput_ratio']:.2f}")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    tag = f"backbones_{args.device}{'_quick' if args.quick else ''}"
    (RESULTS / f"{tag}.md").write_text("```\n" + "\n".join(lines) + "\n```\n")
    (RESULTS / f"{tag}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
