"""3D part of the backbone benchmark: how the latent-token point transformer scales with the
number of points (target: a training step at 8192 points takes at most 4.5x the time at 2048).

Each measurement is a training step (forward, backward, AdamW step) of one preset of
multidiff.shapes.transformer on random clouds (batch, points, 3); samples/s is the batch over
the median step time after warm-up. Peak memory: CUDA's max_memory_allocated on GPU; on CPU
the rise in the process's peak RSS, each measurement in its own fresh process. The
full-attention preset is measured next to it at the smaller sizes for contrast.

    python benchmarks/backbones_shapes.py [--device cpu|cuda] [--quick]

``run(quick)`` returns the rows (dicts) for benchmarks/backbones.py.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from isolate import run_isolated

POINTS = (1024, 2048, 4096, 8192, 16384)
TARGET_RATIO = 4.5  # time(8192) / time(2048) for the latent-token variant


def measure(preset: str, points: int, batch: int, device: str, steps: int, threads: int | None, queue) -> None:
    from multidiff.shapes.transformer import POINT_PRESETS

    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    model = POINT_PRESETS[preset]().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, points, 3, device=device)
    t = torch.randn(batch, device=device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    warmup = 1 if device == "cpu" else 3
    for step in range(steps + warmup):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = (model(x, t) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
               else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    step_s = statistics.median(times)
    queue.put({"part": "shapes", "model": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
               "input": f"{batch}x{points}x3", "points": points, "batch": batch, "step_s": step_s,
               "samples_per_s": batch / step_s, "peak_MB": peak_mb})


def run(quick: bool, device: str | None = None, threads: int | None = None) -> list[dict]:
    """Rows for the latent-token preset at 1024 ... 16384 points (and full attention up to 4096
    unless quick), each with ``time_ratio_vs_2048`` = step time / step time at 2048 points."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device == "cpu"
    batch = (1 if quick else 2) if cpu else (4 if quick else 16)
    steps = (1 if quick else 3) if cpu else (5 if quick else 20)
    rows = [run_isolated(measure, "latent_small", n, batch, device, steps, threads) for n in POINTS]
    if not quick:
        rows += [run_isolated(measure, "point_small", n, batch, device, steps, threads) for n in POINTS if n <= 4096]
    for preset in {r["model"] for r in rows}:
        base = [r for r in rows if r["model"] == preset and r["points"] == 2048]
        for r in rows:
            if r["model"] == preset and base:
                r["time_ratio_vs_2048"] = r["step_s"] / base[0]["step_s"]
        for r in rows:
            r["device"] = device
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params (M) | input | step (s) | samples/s | time / time@2048 | peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_M']:.2f} | {r['input']} | {r['step_s']:.3f} | "
                     f"{r['samples_per_s']:.2f} | {r.get('time_ratio_vs_2048', float('nan')):.2f} | {r['peak_MB']:.0f} |")
    latent = {r["points"]: r for r in rows if r["model"] == "latent_small"}
    if 2048 in latent and 8192 in latent:
        ratio = latent[8192]["step_s"] / latent[2048]["step_s"]
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        lines.append("")
        lines.append(f"latent_small: time at 8192 points / time at 2048 = {ratio:.2f} ({verdict} the target <= "
                     f"{TARGET_RATIO}; device {rows[0].get('device', '?')})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    print(markdown(run(args.quick, args.device, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
