"""Training throughput of every registered backbone: samples/s and peak memory per precision and
attention backend, through the real trainer step (loss, backward, clipping, AdamW, EMA).

    python benchmarks/train_throughput.py                      # all of multidiff.train.registry.MODELS
    python benchmarks/train_throughput.py --models toy_mlp --steps 50 --json out.json
    python benchmarks/train_throughput.py --models shapes_transformer --device cpu --precisions fp32,bf16 \
        --compile off,on --set "data.params.shape=[1024,3]" model.params.dim=192 model.params.depth=3 \
        model.params.num_latents=128 model.params.point_dim=64 model.params.mlp_ratio=2.0 \
        model.params.fourier_features=32 model.params.heads=4 model.params.rounds=1   # recipes/shapes/procedural.yaml's model: bf16 / compile vs fp32

Each (backbone, precision, attention, compile) runs in its own process: accelerate fixes the
precision and compile backend once per process, and a crash or out-of-memory in one does not
stop the table. A backbone's example input shape and batch come from its registry entry
(``example_shape``, ``example_batch``; ``--set`` overrides them and the model's params); backbones whose params have an ``attention_backend`` (or ``attention``)
field are measured with SDPA and, where importable on CUDA, xformers. The batch is made once on
the device, so data loading is not measured. Noise uses one generator per process.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ATTENTION_FIELDS = ("attention_backend", "attention")


def attention_field(entry) -> str | None:
    names = {f.name for f in dataclasses.fields(entry.params)}
    return next((n for n in ATTENTION_FIELDS if n in names), None)


def run_one(name: str, precision: str, attention: str, steps: int, warmup: int, device: str,
            compiled: bool = False, extra: list[str] | None = None) -> dict:
    """Time ``steps`` trainer steps after ``warmup`` (which also pays for compiling); returns one row."""
    import torch

    from multidiff.train.config import load_config
    from multidiff.train.registry import MODELS, load_plugins
    from multidiff.train.trainer import Trainer

    load_plugins()
    entry = MODELS[name]
    batch, shape, classes = entry.example_batch, list(entry.example_shape), entry.example_num_classes
    overrides = [f"model.name={name}", "data.name=synthetic", f"data.params.shape={shape}",
                 f"data.params.num_classes={classes}", "data.params.size=1024", f"trainer.batch_size={batch}",
                 f"trainer.device={device}", f"trainer.mixed_precision={precision}",
                 "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
                 "trainer.noise_generators=per_process", f"trainer.out_dir={tempfile.mkdtemp()}",
                 f"trainer.compile={str(compiled).lower()}"]
    if entry.kind == "autoencoder":  # the latent-diffusion autoencoders train with their own objective
        overrides.append("objective.kind=autoencoder")
    field = attention_field(entry)
    if field and attention != "n/a":
        overrides.append(f"model.params.{field}={attention}")
    trainer = Trainer(load_config(None, overrides + list(extra or [])))
    shape = list(trainer.config.data.params["shape"])  # --set may change it
    dev = trainer.accelerator.device
    data = {"x": 0.5 * torch.randn(batch, *shape, device=dev), "position": torch.arange(batch)}
    if classes:
        data["label"] = torch.arange(batch, device=dev) % classes

    def step():
        trainer.apply_update(trainer.forward_backward(data))  # the loss is read back: a sync per step

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return {"model": name, "precision": precision, "attention": attention, "compile": compiled,
            "batch": batch, "shape": shape,
            "params_m": trainer.num_parameters / 1e6, "samples_per_sec": steps * batch / dt,
            "step_ms": 1e3 * dt / steps, "peak_gib": peak, "device": str(dev),
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}


def combos(models: list[str] | None, device: str, precisions: list[str],
           compiles: tuple[bool, ...] = (False,)) -> list[tuple[str, str, str, bool]]:
    from multidiff.train.registry import MODELS, load_plugins

    load_plugins()
    names = models or sorted(MODELS)
    xformers = device == "cuda" and importlib.util.find_spec("xformers") is not None
    out = []
    for name in names:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
        backends = (["sdpa"] + (["xformers"] if xformers else [])) if attention_field(MODELS[name]) else ["n/a"]
        out += [(name, p, a, c) for p in precisions for a in backends for c in compiles]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="registry names (default: all registered)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--precisions", default=None, help="comma list of fp32,bf16,fp16 (default: fp32,bf16 on cuda)")
    parser.add_argument("--compile", default="off", help="comma list of off,on: torch.compile (inductor) the step")
    parser.add_argument("--set", nargs="*", default=[], metavar="key.sub=value",
                        help="config overrides after the registry's example (e.g. a recipe's model.params)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=180, help="seconds per configuration")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "PRECISION", "ATTENTION", "COMPILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        name, precision, attention, compiled = args.one
        print(json.dumps(run_one(name, precision, attention, args.steps, args.warmup, device, compiled == "on",
                                 args.set)))
        return 0
    precisions = (args.precisions or ("fp32,bf16" if device == "cuda" else "fp32")).split(",")
    bad = sorted(set(args.compile.split(",")) - {"off", "on"})
    if bad:
        raise SystemExit(f"--compile: expected off and/or on, got {', '.join(bad)}")
    compiles = tuple(c == "on" for c in args.compile.split(","))
    rows = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    header = f"{'model':<18} {'precision':<9} {'attention':<9} {'compile':<7} {'batch':>6} {'params(M)':>9} {'samples/s':>12} {'step ms':>9} {'peak GiB':>9} {'vs first':>10}"
    print(header)
    print("-" * len(header), flush=True)
    base = None
    for name, precision, attention, compiled in combos(args.models, device, precisions, compiles):
        on = "on" if compiled else "off"
        cmd = [sys.executable, __file__, "--one", name, precision, attention, on, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", device, "--set", *args.set]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
            error = None if row else (proc.stderr.strip().splitlines() or ["failed"])[-1][:60]
        except subprocess.TimeoutExpired:
            row, error = None, f"timed out after {args.timeout} s"
        if row:
            if base is None or base["model"] != name:
                base = row  # ratios against the first configuration of each model
            row["vs_first"] = row["samples_per_sec"] / base["samples_per_sec"]
            rows.append(row)
            print(f"{name:<18} {precision:<9} {attention:<9} {on:<7} {row['batch']:>6} {row['params_m']:>9.2f} "
                  f"{row['samples_per_sec']:>12.1f} {row['step_ms']:>9.2f} {row['peak_gib']:>9.3f} "
                  f"{row['vs_first']:>9.2f}x", flush=True)
        else:
            rows.append({"model": name, "precision": precision, "attention": attention, "compile": compiled,
                         "error": error})
            print(f"{name:<18} {precision:<9} {attention:<9} {on:<7} FAILED: {error}", flush=True)
    if rows and "gpu" in rows[0]:
        print(f"device: {rows[0]['gpu']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
