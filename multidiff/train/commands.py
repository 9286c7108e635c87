"""The verbs ``multidiff train | sample | eval | info`` (wired up by multidiff/cli.py).

    multidiff train RECIPE.yaml [key.sub=value ...]        train (or resume: trainer.resume=PATH|auto)
    multidiff train audio data.path=DIR                     a packaged starter recipe on your own folder
    multidiff train CHECKPOINT [key.sub=value ...]         continue a run from its own saved config
    multidiff sample CHECKPOINT --num N --steps S --sampler NAME --guidance W --seed K --out DIR
    multidiff eval CHECKPOINT [--samples FILE] [--reference MANIFEST] ...   the modality's metrics, written to DIR/metrics.json
    multidiff info CHECKPOINT [--json] [--config]

Each prints where it wrote its outputs. Exit codes: 0 success (also after a clean stop on
SIGTERM / Ctrl-C), 1 training failure (e.g. NaN losses), 2 bad configuration or arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import InputError, finite_float, one_line


def _err(verb: str, message: str) -> None:
    print(f"multidiff {verb}: {one_line(message)}", file=sys.stderr)


# ---------------------------------------------------------------------------------- train
def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a YAML recipe, a packaged recipe's name (multidiff recipes lists them), "
                                       "or a checkpoint / run folder to continue from")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, values parsed as YAML (e.g. trainer.batch_size=512)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def resolve_train_config(recipe: str, overrides: list[str]):
    """A validated Config from a recipe path or a checkpoint folder, plus overrides."""
    from ..recipes import packaged_recipe
    from . import checkpoint as ckpt
    from .config import load_config

    path = Path(recipe)
    holds_run = path.is_dir() and ((path / "state.json").is_file() or (path / "checkpoints").is_dir())
    if packaged_recipe(recipe) is not None and not path.is_file() and not holds_run:
        path = packaged_recipe(recipe)  # also when a data folder of that name sits in the working directory
    elif not path.exists() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        import difflib

        from ..recipes import packaged_recipes

        names = list(packaged_recipes())
        close = difflib.get_close_matches(recipe, names, n=1)
        raise FileNotFoundError(f"no recipe file or packaged recipe {recipe!r}"
                                + (f"; did you mean {close[0]!r}?" if close else "")
                                + f" (packaged: {', '.join(names)}; multidiff recipes lists them)")
    if path.is_dir():
        folder = ckpt.resolve(path)
        raw = ckpt.read_json(folder / "config.json")
        if not isinstance(raw, dict):
            raise ckpt.CheckpointError(f"{folder / 'config.json'}: not a config (a JSON mapping of sections)")
        raw.setdefault("trainer", {})["resume"] = str(folder)
        return load_config(raw, overrides)
    return load_config(path, overrides)


def train_run(args: argparse.Namespace) -> int:
    import yaml

    from ..errors import InputError

    try:
        config = resolve_train_config(args.recipe, args.overrides)
    except (InputError, FileNotFoundError) as e:
        _err("train", str(e))
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from .trainer import NonFiniteLossError, Trainer

    try:
        trainer = Trainer(config)
        result = trainer.fit()
    except (InputError, FileNotFoundError) as e:
        _err("train", str(e))
        return 2
    except NonFiniteLossError as e:
        _err("train", str(e))
        return 1
    if trainer.is_main:
        print(f"{result.status}: {result.samples_seen} samples seen in {result.steps} steps"
              f" ({result.nonfinite_total} skipped for NaN/inf), last loss {result.last_loss:.5g}")
        print(f"wrote checkpoint: {result.checkpoint}")
        print(f"wrote latest link: {result.out_dir / 'checkpoints' / 'latest'}")
        print(f"wrote loss log: {result.csv}")
        if (result.out_dir / "losses.png").is_file():
            print(f"wrote loss curve: {result.out_dir / 'losses.png'}")
        if config.trainer.tracker != "none":
            where = {"wandb": result.out_dir / "wandb"}.get(config.trainer.tracker, result.out_dir / "logs")
            print(f"wrote {config.trainer.tracker} logs: {where}")
        for p in result.previews[-1:]:
            print(f"wrote preview: {p}")
        if result.status == "interrupted":
            print(f"resume with: multidiff train {result.checkpoint}")
    return 0


# --------------------------------------------------------------------------- sample / eval
def _sampling_arguments(parser: argparse.ArgumentParser, out_default: str) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, its 'latest' link, or a run's out_dir")
    parser.add_argument("--num", type=int, default=None, help="number of samples (default: sampling.num_samples)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: sampling.steps)")
    parser.add_argument("--sampler", default=None, help="sampler name from multidiff.core.SAMPLERS")
    parser.add_argument("--spacing", default=None, help="sigma spacing from multidiff.core.SPACINGS")
    parser.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--guide-with", default=None, metavar="CHECKPOINT",
                        help="autoguidance (Karras et al. 2024): guide with this weaker checkpoint of the same model "
                             "(fewer samples seen, smaller) at scale --guidance, instead of classifier-free guidance")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="apply guidance only for sigma in (LOW, HIGH] (default: sampling.guidance_interval)")
    parser.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                        help="per-sample shape when it differs from training: e.g. 8192 3 (points), 1 64000 "
                             "(audio), 3 32 64 64 (video; default: sampling.sample_shape, else the data's)")
    parser.add_argument("--label", type=int, default=None, help="class label for all samples (conditional models)")
    parser.add_argument("--prompt", default=None, help="caption for all samples (models with a text encoder)")
    parser.add_argument("--negative-prompt", default="", help="caption guidance steers away from (default: '')")
    parser.add_argument("--seed", type=int, default=None,
                        help="sample k uses a generator seeded by a hash of (seed, k): seeds share no sample")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per forward batch")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights instead of the EMA")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    for option, (modalities, text) in _decode_options().items():
        parser.add_argument(f"--{option.replace('_', '-')}", dest=f"decode_{option}", default=None,
                            help=f"{text} ({', '.join(modalities)} models)")


def _decode_options() -> dict[str, tuple[list[str], str]]:
    """option -> (modalities that take it, help) over the registered modalities' decode_options."""
    from .modality import MODALITIES
    from .registry import load_plugins

    load_plugins()
    options: dict[str, tuple[list[str], str]] = {}
    for name, modality in sorted(MODALITIES.items()):
        for option, text in modality.decode_options.items():
            options.setdefault(option, ([], text))[0].append(name)
    return options


def _apply_decode_options(args, spec, folder) -> None:
    """Put each given --<decode option> in spec.meta, refusing one the model's modality does not take."""
    from .modality import get_modality

    taken = get_modality(spec.modality).decode_options
    for option in _decode_options():
        value = getattr(args, f"decode_{option}", None)
        if value is None:
            continue
        if option not in taken:
            raise InputError(f"--{option.replace('_', '-')}: the model of {folder} makes {spec.modality} samples, "
                             f"which take no {option}; drop it")
        spec.meta[option] = value
    check = get_modality(spec.modality).check_decode
    if check is not None:
        check(spec)


def _sampling_config(config, args):
    from dataclasses import replace

    from ..core import SAMPLERS, SPACINGS

    s = config.sampling
    changes = {k: v for k, v in {"num_samples": args.num, "steps": args.steps, "sampler": args.sampler,
                                  "spacing": args.spacing, "guidance": args.guidance, "seed": args.seed,
                                  "batch_size": args.batch_size,
                                  "sample_shape": tuple(args.shape) if args.shape else None,
                                  "guidance_interval": tuple(args.guidance_interval) if args.guidance_interval else None,
                                  }.items() if v is not None}
    s = replace(s, **changes)
    if s.sampler not in SAMPLERS:
        raise InputError(f"--sampler: unknown sampler {s.sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
    if s.spacing not in SPACINGS:
        raise InputError(f"--spacing: unknown spacing {s.spacing!r}; known: {', '.join(SPACINGS)}")
    for name in ("num_samples", "steps", "batch_size"):
        if getattr(s, name) < 1:
            raise InputError(f"--{name.replace('_samples', '').replace('_', '-')} must be >= 1")
    lo, hi = s.guidance_interval
    if not (math.isfinite(lo) and 0 <= lo < hi) or math.isnan(hi):
        raise InputError(f"--guidance-interval: needs 0 <= LOW < HIGH (HIGH may be inf), got {lo} {hi}")
    if args.shape and any(n < 1 for n in args.shape):
        raise InputError(f"--shape: every size must be >= 1, got {' '.join(map(str, args.shape))}")
    return s


def _generate(args, verb: str):
    """(samples, labels, config, spec, folder, weights) for sample / eval."""
    import torch

    from .sampling import Conditioning, default_labels, generate
    from .trainer import load_for_sampling

    model, config, spec, state, folder, weights = load_for_sampling(args.checkpoint, args.device, not args.no_ema)
    _apply_decode_options(args, spec, folder)
    sampling = _sampling_config(config, args)
    prompts = None
    if sampling.sample_shape and len(sampling.sample_shape) != len(spec.sample_shape):
        raise InputError(f"--shape (sampling.sample_shape): {' '.join(map(str, sampling.sample_shape))} has {len(sampling.sample_shape)} "
                         f"sizes; the model of {folder} makes samples of shape {' '.join(map(str, spec.sample_shape))}")
    if args.label is not None and spec.num_classes == 0:
        raise InputError(f"--label: the model of {folder} is unconditional (no class labels); drop --label")
    if args.prompt is not None:
        if config.model.text_encoder.kind == "none":
            raise InputError(f"--prompt: the model of {folder} has no text encoder (model.text_encoder.kind is none)")
        prompts = [args.prompt] * sampling.num_samples
    elif config.model.text_encoder.kind != "none":
        prompts = [""] * sampling.num_samples  # no caption: the model's unconditional branch
    guide = None
    if args.guide_with:
        guide_model, guide_config, guide_spec, _, guide_folder, _ = load_for_sampling(args.guide_with, args.device,
                                                                                   not args.no_ema)
        for name in ("modality", "num_classes"):  # not the sample shape: a point cloud model may train on fewer points
            if getattr(guide_spec, name) != getattr(spec, name):
                raise InputError(f"--guide-with: {guide_folder} has {name} {getattr(guide_spec, name)!r}, the model "
                                 f"{folder} {getattr(spec, name)!r}; autoguidance needs a weaker version of the same model")
        if (guide_config.model.text_encoder.kind == "none") != (config.model.text_encoder.kind == "none"):
            raise InputError(f"--guide-with: {guide_folder} and {folder} must both have a text encoder or neither")
        guide = (guide_model, guide_config.objective)
    elif sampling.guidance != 1.0 and spec.num_classes == 0 and prompts is None:
        print(f"multidiff {verb}: note: the model is unconditional, --guidance {sampling.guidance} has no effect",
              file=sys.stderr)
    labels = default_labels(sampling.num_samples, spec, args.label)
    conditioning = Conditioning(labels=labels, prompts=prompts, negative_prompt=args.negative_prompt)
    samples = generate(model, config.objective, spec, sampling, conditioning, progress=sys.stderr.isatty(),
                       guide=guide)
    bad = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    if bad:
        raise NonFiniteSamplesError(f"{bad} of {len(samples)} samples from {folder} contain NaN or inf "
                                    f"(sampler {sampling.sampler}, {sampling.steps} steps, guidance "
                                    f"{sampling.guidance}); nothing written")
    return samples, labels, config, spec, folder, weights, sampling


class NonFiniteSamplesError(RuntimeError):
    """The model produced NaN / inf samples: a failure (exit 1), never written to disk."""


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    _sampling_arguments(parser, "outputs/samples")


def sample_run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .modality import get_modality

    try:
        samples, labels, config, spec, folder, weights, sampling = _generate(args, "sample")
    except (FileNotFoundError, InputError) as e:
        _err("sample", str(e))
        return 2
    except NonFiniteSamplesError as e:
        _err("sample", str(e))
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"samples": samples.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    meta = {"checkpoint": str(folder), "weights": weights.name, "sampler": sampling.sampler,
            "steps": str(sampling.steps), "guidance": str(sampling.guidance), "seed": str(sampling.seed)}
    save_file(tensors, str(out / "samples.safetensors"), metadata=meta)
    print(f"sampled {len(samples)} x {tuple(samples.shape[1:])} from {folder} ({weights.name}) with "
          f"{sampling.sampler}, {sampling.steps} steps, guidance {sampling.guidance}, seed {sampling.seed}")
    print(f"wrote samples: {out / 'samples.safetensors'}")
    fn = get_modality(spec.modality).preview
    if fn is not None:
        for p in fn(samples, out, "samples", labels=labels, spec=spec):
            print(f"wrote preview: {p}")
    return 0


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _sampling_arguments(parser, "outputs/eval")
    parser.add_argument("--samples", default=None,
                        help="evaluate this samples.safetensors (from multidiff sample) instead of sampling anew")
    parser.add_argument("--result", default=None, metavar="FILE",
                        help="also write the result record (metrics, checkpoint, seeds, split, command, version) "
                             "to FILE, e.g. results/shapes/procedural/test-seed0.json for the README tables "
                             "(multidiff results)")
    parser.add_argument("--reference", default=None, metavar="MANIFEST",
                        help="compare with the held-out split of this manifest instead of the training data's "
                             "(in the training data's normalisation; audio and video read the classifier beside "
                             "it): e.g. a validation set to choose a guidance scale on, keeping the test split "
                             "for the final number")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="compare with this split of the data (its data.params.eval_split), e.g. val to choose "
                             "settings and test for the final number, when one file holds both")


def evaluate_run(args: argparse.Namespace) -> int:
    import torch

    from . import checkpoint as ckpt
    from .modality import get_modality
    from .trainer import read_checkpoint

    if args.reference and not Path(args.reference).is_file():  # before minutes of sampling, not after
        _err("eval", f"--reference: no such manifest: {args.reference}")
        return 2
    sampling_meta = None
    try:
        if args.samples:
            folder, config, state, spec = read_checkpoint(args.checkpoint)
            _apply_decode_options(args, spec, folder)
            loaded = ckpt.read_tensors(Path(args.samples))
            sampling_meta = samples_metadata(Path(args.samples))
            if "samples" not in loaded:
                raise InputError(f"--samples: {args.samples} holds no 'samples' tensor (keys: {sorted(loaded)}); "
                                 f"write one with multidiff sample")
            samples, labels = loaded["samples"], loaded.get("labels")
            if samples.ndim - 1 != len(spec.sample_shape):  # sizes may differ (more points, longer clips)
                raise InputError(f"--samples: {args.samples} holds samples of shape {tuple(samples.shape[1:])}, the "
                                 f"model of {folder} makes {tuple(spec.sample_shape)}")
            if not torch.isfinite(samples).all():
                raise InputError(f"--samples: {args.samples} contains NaN or inf values")
        else:
            samples, labels, config, spec, folder, weights, sampling = _generate(args, "eval")
            state = ckpt.read_json(folder / "state.json")
            sampling_meta = {"weights": weights.name, "sampler": sampling.sampler, "steps": sampling.steps,
                             "spacing": sampling.spacing, "guidance": sampling.guidance,
                             "guidance_interval": [v if math.isfinite(v) else "inf" for v in sampling.guidance_interval], "seed": sampling.seed,
                             "guide_with": str(ckpt.resolve(args.guide_with)) if args.guide_with else None}
    except (FileNotFoundError, InputError) as e:
        _err("eval", str(e))
        return 2
    except NonFiniteSamplesError as e:
        _err("eval", str(e))
        return 1
    from dataclasses import replace

    if args.reference:
        config = replace(config, data=replace(config.data, path=str(args.reference)))
    if args.split:
        if "eval_split" not in (config.data.params or {}):
            _err("eval", f"--split: data set {config.data.name!r} has no eval_split parameter; give its held-out "
                         f"data with --reference")
            return 2
        config = replace(config, data=replace(config.data, params={**config.data.params, "eval_split": args.split}))
    fn = get_modality(spec.modality).evaluate
    if fn is None:
        _err("eval", f"no evaluator is registered for modality {spec.modality!r}")
        return 2
    metrics = fn(samples, config, labels=labels, spec=spec)
    undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if undefined:  # e.g. no voiced frame to measure a pitch on: JSON null, and said so
        _err("eval", f"warning: {', '.join(undefined)} undefined for these samples (NaN or inf): written as null")
    from ..results import write_result

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = eval_record(metrics, undefined, folder, config, state, len(samples), sampling_meta, args)
    write_result(out / "metrics.json", record)
    width = max((len(k) for k in metrics), default=0)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.6g}")
    print(f"wrote metrics: {out / 'metrics.json'}")
    if args.result:
        write_result(Path(args.result), record)
        print(f"wrote result: {args.result}")
    return 0


def samples_metadata(path: Path) -> dict:
    """The sampling settings ``multidiff sample`` stored in a samples file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    for key in ("steps", "seed"):
        if key in meta:
            meta[key] = int(meta[key])
    if "guidance" in meta:
        meta["guidance"] = float(meta["guidance"])
    meta["samples_file"] = str(path)
    return meta


def eval_record(metrics: dict, undefined: list, folder: Path, config, state: dict, num: int,
                sampling: dict | None, args) -> dict:
    """Everything a reader needs to trust or rerun a score (docs/evaluation.md): the metrics, the
    checkpoint with its training seed and samples seen, the sampling settings, the reference split
    (with a digest of its manifest, so a reader can tell which one), the command and the version."""
    import hashlib
    import shlex
    import time

    from ..results import code_version

    reference = Path(config.data.path) if config.data.path else None
    digest = (hashlib.sha1(reference.read_bytes()).hexdigest()[:12]
              if reference is not None and reference.is_file() else None)
    return {
        "format": "multidiff-eval/1",
        "metrics": {k: None if k in undefined else v for k, v in metrics.items()},
        "num_samples": num,
        "checkpoint": str(folder),
        "model": config.model.name,
        "training_seed": config.trainer.seed,
        "samples_seen": int(state.get("train", {}).get("samples_seen", 0)),
        "sampling": sampling,
        "reference": {"manifest": str(reference) if reference else None, "sha1": digest,
                      "split": (config.data.params or {}).get("eval_split", "test")},
        "command": "multidiff " + shlex.join(["eval", *args.argv]) if getattr(args, "argv", None) else None,
        **code_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ----------------------------------------------------------------------------------- info
def info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, its 'latest' link, or a run's out_dir")
    parser.add_argument("--json", action="store_true", help="print the checkpoint's state.json")
    parser.add_argument("--config", action="store_true", help="print the full resolved config (YAML)")


def info_run(args: argparse.Namespace) -> int:
    import yaml

    from . import checkpoint as ckpt
    from .trainer import read_checkpoint

    try:
        folder, _, state, _ = read_checkpoint(args.checkpoint)
        config = ckpt.read_json(folder / "config.json")
        if "train" not in state:
            raise ckpt.CheckpointError(f"{folder / 'state.json'}: not a checkpoint state (no 'train' section)")
    except (FileNotFoundError, InputError) as e:
        _err("info", str(e))
        return 2
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    train, t = state["train"], config["trainer"]
    print(f"checkpoint     {folder}")
    print(f"model          {config['model']['name']} {config['model']['params']} ({state['num_parameters']:,} parameters)")
    print(f"data           {config['data']['name']} {config['data']['params']}; sample shape "
          f"{tuple(state['spec']['sample_shape'])}, {state['spec']['num_classes']} classes, modality {state['spec']['modality']}")
    sched = config["objective"]["schedule"]
    print(f"objective      schedule {sched['name']}, prediction {config['objective']['prediction']}, "
          f"noise {config['objective']['noise']['name']}, weighting {config['objective']['weighting']}")
    print(f"progress       {train['samples_seen']:,} / {t['duration_samples']:,} samples seen, step {train['step']}, "
          f"{train['updates']} updates, {train['nonfinite_total']} skipped (NaN/inf)")
    print(f"batch          {state['batch_size']} global over {state['num_processes']} process(es); lr now {state['lr']:.4g}")
    print(f"ema            {state['ema']}")
    print(f"saved          {state['time']} with torch {state['torch']}")
    if state.get("sharding", "none") != "none":
        print(f"sharding       {state['sharding']}: model, EMA and optimizer as shards in sharded/")
    for f in sorted(folder.iterdir()):
        size = sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        print(f"  {f.name + ('/' if f.is_dir() else ''):<24} {size / 1e6:9.3f} MB")
    if args.config:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0
