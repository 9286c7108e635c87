"""Video backbone throughput and memory: our UNet3D against diffusers' UNet3DConditionModel.

Both models get the same input, (batch, 4, frames, 32, 32) latent-like clips with a context
sequence of 8 tokens x 64 for cross-attention, and are sized to the same parameter count
(within 10%): the diffusers model is fixed (block widths 64/128/128, CrossAttnDown x 2 + Down,
2 layers per block, its temporal convs and temporal transformers), ours is scaled in width.
Attention sits at the same resolutions in both: spatial self- + cross-attention and temporal
attention at 32x32 and 16x16 (diffusers' two CrossAttn levels), none at 8x8; temporal convolutions
at every level. What still differs: diffusers' temporal layers are full transformer blocks
(self-attention + feed-forward) with a conv stack of 4 temporal convs per ResNet, ours one temporal
conv per residual block and a rotary temporal attention; the FLOPs column (forward + backward per
sample, torch.utils.flop_counter, 4 frames) says what that costs.
Each measurement is a training step (forward, backward, AdamW step) on random data; samples/s
is the median over 5 timed steps after one warm-up step. Peak memory: CUDA's max_memory_allocated on GPU;
on CPU the rise in the process's peak RSS. Every measurement runs in its own fresh process.
Memory is measured at 16 and at 32 frames (target: 32 frames at most 2.2 x 16 frames); the
column "mem 32f / 16f" is the ratio of the longer to the shorter clip's peak.

    python benchmarks/backbones_video.py [--device cpu|cuda] [--quick]

``run(quick)`` returns the rows (dicts) for benchmarks/backbones.py.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from isolate import run_isolated

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONTEXT_TOKENS, CONTEXT_DIM, CHANNELS, SIZE = 8, 64, 4, 32


def diffusers_unet3d(width: int = 64):
    """A small UNet3DConditionModel (the ModelScope text-to-video U-Net layout), widths (w, 2w, 2w)."""
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(sample_size=SIZE, in_channels=CHANNELS, out_channels=CHANNELS,
                                down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                                block_out_channels=(width, 2 * width, 2 * width), layers_per_block=2, norm_num_groups=32,
                                cross_attention_dim=CONTEXT_DIM, attention_head_dim=8)


def ours_unet3d(scale: float = 1.0):
    """Our UNet3D with diffusers' layout: spatial + cross-attention and temporal attention at the two
    fine levels (32x32, 16x16), none at 8x8, 2 blocks per level, widths scaled by ``scale`` (multiples of 8)."""
    from multidiff.video.unet3d import UNet3D

    ch = tuple(max(8, int(round(c * scale / 8)) * 8) for c in (64, 128, 128))
    return UNet3D(in_channels=CHANNELS, channels=ch, blocks_per_level=2, spatial_attention_levels=(0, 1),
                  temporal_attention_levels=(0, 1), attention_heads=8, emb_dim=ch[-1], cross_attention_dim=CONTEXT_DIM)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_ours(target: int):
    """Our UNet3D at the width scale whose parameter count is nearest to target (must be within 10%):
    a bisection over scales in steps of 1/16 (parameters grow with the width)."""
    lo, hi = 8, 64  # scale = s / 16
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_params(ours_unet3d(mid / 16)) < target:
            lo = mid
        else:
            hi = mid
    scale = min((lo / 16, hi / 16), key=lambda c: abs(n_params(ours_unet3d(c)) / target - 1))
    model = ours_unet3d(scale)
    model.scale = scale
    if abs(n_params(model) / target - 1) >= 0.1:
        raise RuntimeError(f"no width of UNet3D within 10% of {target} parameters (nearest {n_params(model)})")
    return model


def flops_per_sample(kind: str, scale: float, frames: int = 4) -> float:
    """Forward + backward FLOPs of one (1, 4, frames, 32, 32) sample (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = diffusers_unet3d() if kind == "diffusers" else ours_unet3d(scale)
    x, t = torch.randn(1, CHANNELS, frames, SIZE, SIZE), torch.rand(1)
    ctx = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM)
    with FlopCounterMode(display=False) as counter:
        _loss(kind, model, x, t, ctx).backward()
    return float(counter.get_total_flops())


def _loss(kind, model, x, t, ctx):
    if kind == "diffusers":
        out = model(x, t * 1000, encoder_hidden_states=ctx).sample
    else:
        out = model(x, t, {"context": ctx})
    return (out - x).square().mean()


def measure(kind: str, scale: float, batch: int, frames: int, device: str, steps: int, threads: int, queue) -> None:
    """One model (ours at width ``scale``) in a fresh process: only this model is ever built here, so
    the peak-RSS rise is the training step's."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = (diffusers_unet3d() if kind == "diffusers" else ours_unet3d(scale)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, CHANNELS, frames, SIZE, SIZE, device=device)
    t = torch.rand(batch, device=device)
    ctx = torch.randn(batch, CONTEXT_TOKENS, CONTEXT_DIM, device=device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for step in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = _loss(kind, model, x, t, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 1:
            times.append(time.perf_counter() - start)
    peak_mb = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda"
               else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    queue.put({"model": kind, "params_M": n_params(model) / 1e6, "frames": frames,
               "samples_per_s": batch / statistics.median(times), "peak_MB": peak_mb})


def run(quick: bool, device: str | None = None, threads: int = 2) -> list[dict]:
    """Rows {part, model, params_M, input, frames, samples_per_s, peak_MB, throughput_ratio,
    memory_32_over_16} for our UNet3D and diffusers' UNet3DConditionModel. ``quick`` on a CPU
    measures 4 and 8 frames instead of 16 and 32 (a smoke run: the ratio columns keep their names)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scale = matched_ours(n_params(diffusers_unet3d())).scale
    if device == "cpu":
        batch, steps = (1, 1) if quick else (2, 5)
    else:
        batch, steps = (2, 3) if quick else (8, 20)
    flops = {kind: flops_per_sample(kind, scale) for kind in ("diffusers", "ours")}
    short, long = (4, 8) if quick and device == "cpu" else (16, 32)
    rows = []
    for kind in ("diffusers", "ours"):
        for frames in (short, long):
            r = run_isolated(measure, kind, scale, batch, frames, device, steps, threads)
            r.update(part="video", input=f"{batch}x{CHANNELS}x{frames}x{SIZE}x{SIZE}", device=device,
                     gflops_4_frames=flops[kind] / 1e9)
            rows.append(r)
    for frames in (short, long):
        base = next(r for r in rows if r["model"] == "diffusers" and r["frames"] == frames)["samples_per_s"]
        for r in rows:
            if r["frames"] == frames:
                r["throughput_ratio"] = r["samples_per_s"] / base
    for kind in ("diffusers", "ours"):
        m16, m32 = (next(r for r in rows if r["model"] == kind and r["frames"] == f)["peak_MB"] for f in (short, long))
        for r in rows:
            if r["model"] == kind:
                r["memory_32_over_16"] = m32 / max(m16, 1e-9)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params (M) | GFLOPs / sample (4 frames, fwd + bwd) | input | samples/s | ratio | peak MB | "
             "mem 32f / 16f |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_M']:.2f} | {r['gflops_4_frames']:.1f} | {r['input']} | "
                     f"{r['samples_per_s']:.2f} | {r['throughput_ratio']:.2f} | {r['peak_MB']:.0f} | "
                     f"{r['memory_32_over_16']:.2f} |")
    short, long = sorted({r["frames"] for r in rows})
    ours16 = next(r for r in rows if r["model"] == "ours" and r["frames"] == short)
    lines.append("")
    lines.append(f"video ({rows[0]['device']}): ours / diffusers UNet3DConditionModel throughput at {short} frames = "
                 f"{ours16['throughput_ratio']:.2f} (target >= 1.3); our peak memory {long} / {short} frames = "
                 f"{ours16['memory_32_over_16']:.2f} (target <= 2.2)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(markdown(run(args.quick, args.device, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
