"""Training from shards (multidiff pack): is the loader ever the bottleneck, and does memory stay
flat as the corpus grows?

1. Throughput, per recipe (the spoken-digits mel recipe and the Moving MNIST video recipe, their
   own models, batch sizes and threads): the recipe's data set packed into shards and read through
   the trainer's loader (decoding in one DataLoader worker) against the recipe's training step
   (forward, backward, AdamW, EMA) on one batch from that loader. Each is measured alone, after
   warm-up, over 5+ timed steps; the ratio is loader samples/s over training samples/s (>= 3 means
   one worker keeps up three times over).
2. Memory: a synthetic corpus of short WAVs at 1x and 10x the files, each packed, then read in a
   fresh process (the same number of samples from each) through the loader; the peak RSS of the
   process. The folder route (every row a dict in memory) is measured beside it for contrast.

    python benchmarks/shard_loader.py            # ~10 min on 2 CPU cores (needs data/digits and data/moving_mnist)
    python benchmarks/shard_loader.py --quick    # fewer files and steps

Writes results/shard_loader.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from isolate import run_isolated  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def pack(source, out) -> dict:
    from multidiff.cli import main

    if main(["pack", str(source), "--out", str(out), "--no-progress"]) != 0:
        raise SystemExit(f"packing {source} failed")
    return json.loads((Path(out) / "shards.json").read_text())


def mnist_clips_as_mp4(npz, folder, count: int) -> Path:
    """The first ``count`` training clips of the Moving MNIST array as MP4 files (a user's own clips)."""
    import numpy as np
    import torch

    from multidiff.video.io import write_mp4

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(npz) as z:
        keep = np.flatnonzero(z["split"].astype(str) == "train")[:count]
        videos = z["videos"][keep]
    for k, v in enumerate(videos):  # (T, H, W) uint8
        frames = torch.from_numpy(v).float()[None].expand(3, -1, -1, -1) / 127.5 - 1
        write_mp4(folder / f"{k:05d}.mp4", frames, fps=8)
    return folder


def measure_recipe(recipe: str, overrides: list[str], batches: int, steps: int, warmup: int, queue) -> None:
    """Loader samples/s (one worker) and training samples/s of ``recipe`` with ``overrides``."""
    import torch

    from multidiff.train.config import load_config
    from multidiff.train.trainer import Trainer

    config = load_config(recipe, [*overrides, f"trainer.out_dir={tempfile.mkdtemp()}", "trainer.tracker=none",
                                  "trainer.progress=false", "trainer.resume=null", "data.num_workers=1"])
    trainer = Trainer(config)
    it = trainer.batches()
    batch = next(it)  # the worker has started and decoded once
    for _ in range(2):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    load_s = time.perf_counter() - t0
    del it  # stop the worker before timing the step alone
    torch.set_num_threads(config.trainer.cpu_threads or torch.get_num_threads())

    def step():
        trainer.apply_update(trainer.forward_backward(batch))

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = time.perf_counter() - t0
    b = config.trainer.batch_size
    queue.put({"recipe": recipe, "batch": b, "threads": torch.get_num_threads(), "model": config.model.name,
               "params_m": round(trainer.num_parameters / 1e6, 2),
               "loader_samples_per_s": batches * b / load_s, "train_samples_per_s": steps * b / step_s,
               "ratio": (batches * b / load_s) / (steps * b / step_s), "timed_batches": batches, "timed_steps": steps})


def measure_memory(source, samples: int, queue) -> None:
    """Peak RSS (MiB) of a process that opens ``source`` and reads ``samples`` items through the loader."""
    import torch

    from multidiff.audio.data import AudioDataset
    from multidiff.train.data import make_loader

    torch.set_num_threads(1)
    if source is None:  # the baseline: the same imports, no data
        queue.put({"source": None, "items": 0, "read": 0, "peak_rss_mib": peak_rss_mib()})
        return
    data = AudioDataset(source, length=4000, split=None, seed=0)
    it = iter(make_loader(data, seed=0, start=0, batch_size=50, rank=0, world=1))
    for _ in range(samples // 50):
        next(it)
    queue.put({"source": str(source), "items": len(data), "read": samples, "peak_rss_mib": peak_rss_mib()})


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across the spawn's exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_wavs(folder, count: int) -> Path:
    import numpy as np
    import soundfile as sf

    folder = Path(folder)
    rng = np.random.default_rng(0)
    for k in range(count):
        sub = folder / f"{k // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"{k:06d}.wav", (0.1 * rng.standard_normal(4000)).astype("float32"), 16000, subtype="PCM_16")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shard-bench-"))
    batches, steps, warmup = (5, 5, 1) if args.quick else (12, 8, 2)
    rows = []
    digits = REPO / "data" / "digits" / "manifest.csv"
    mnist = REPO / "data" / "moving_mnist" / "moving_mnist.npz"
    if not digits.is_file() or not mnist.is_file():
        raise SystemExit("needs data/digits (datasets/spoken_digits.py) and data/moving_mnist (datasets/moving_mnist.py)")
    shards = pack(digits, work / "digits-shards")
    rows.append(run_isolated(measure_recipe, str(REPO / "recipes/audio/digits_mel.yaml"),
                             [f"data.path={work / 'digits-shards'}"], batches, steps, warmup)
                | {"data": f"data/digits packed: {shards['count']} files, {len(shards['shards'])} shard(s)"})
    clips = mnist_clips_as_mp4(mnist, work / "mnist-mp4", 300 if args.quick else 1000)
    shards = pack(clips, work / "mnist-shards")
    rows.append(run_isolated(measure_recipe, str(REPO / "recipes/video/moving_mnist_uncond.yaml"),
                             [f"data.path={work / 'mnist-shards'}", "data.name=video_folder",
                              "data.params.num_frames=12", "data.params.size=32", "data.params.channels=1",
                              "data.params.fps=8"], batches, steps, warmup)
                | {"data": f"Moving MNIST training clips as MP4 files, packed: {shards['count']} files"})
    base = 1000 if args.quick else 2000
    memory = [run_isolated(measure_memory, None, 0) | {"route": "baseline (imports only)", "scale": 0}]
    for scale in (1, 10):
        folder = synthetic_wavs(work / f"wavs-{scale}x", base * scale)
        pack(folder, work / f"wavs-{scale}x-shards")
        for route, source in (("shards", work / f"wavs-{scale}x-shards"), ("folder", folder)):
            memory.append(run_isolated(measure_memory, str(source), base // 2) | {"route": route, "scale": scale})
    result = {"throughput": rows, "memory": memory, "quick": args.quick, "cpu_count": os.cpu_count(),
              "command": "python benchmarks/shard_loader.py" + (" --quick" if args.quick else "")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "shard_loader_quick" if args.quick else "shard_loader"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Training from shards ({result['command']}, {os.cpu_count()} CPU cores)", "",
             "| recipe | model (M params) | batch | loader samples/s (1 worker) | training samples/s (threads) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['recipe']).name} ({r['data']}) | {r['model']} ({r['params_m']}) | {r['batch']} | "
                     f"{r['loader_samples_per_s']:.1f} | {r['train_samples_per_s']:.1f} ({r['threads']}) | "
                     f"{r['ratio']:.1f}x |")
    baseline = memory[0]["peak_rss_mib"]
    lines += ["", f"Peak RSS of a process reading {base // 2} clips of 0.25 s through the loader (MiB; in "
              f"brackets the rise over a process that only imports the same modules, {baseline:.1f} MiB):", "",
              "| route | 1x files | 10x files | 10x / 1x |", "|---|---|---|---|"]
    for route in ("shards", "folder"):
        one, ten = (next(m for m in memory if m["route"] == route and m["scale"] == s) for s in (1, 10))
        lines.append(f"| {route} | {one['peak_rss_mib']:.1f} (+{one['peak_rss_mib'] - baseline:.1f}), "
                     f"{one['items']} files | {ten['peak_rss_mib']:.1f} (+{ten['peak_rss_mib'] - baseline:.1f}), "
                     f"{ten['items']} files | {ten['peak_rss_mib'] / one['peak_rss_mib']:.3f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
