"""Typed training configuration: dataclasses, YAML recipes and ``key.sub=value`` overrides.

A recipe is a YAML mapping with the sections of :class:`Config` (model, data, objective,
optimizer, trainer, sampling). Command-line overrides ``trainer.batch_size=512`` are
parsed as YAML scalars and applied on top. Every key is checked against the dataclass
fields, every value against the field's type, choices against the registries, and the
data path against the file system, all before any work starts; errors are
:class:`ConfigError` naming the key.

Durations are counted in samples seen (``*_samples``), never in steps, so changing the
batch size or the number of processes keeps a recipe's meaning.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..core.schedules import ScheduleConfig
from ..errors import InputError
from . import registry


class ConfigError(InputError):
    """A configuration problem, with the dotted key it concerns in ``key``."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error at '{key}': {message}" if key else f"config error: {message}")


# ------------------------------------------------------------------------------ sections
@dataclass
class TextEncoderConfig:
    """``model.text_encoder``: kind none | bytes (multidiff.nn.ByteTextEncoder, trained with the
    model) | pretrained (a frozen transformers encoder from the local folder ``path``).
    dim / depth / heads / word_buckets (hashed whole-word embeddings added to the bytes; 0 = none)
    apply to the byte encoder; max_length (tokens) to both. The backbone's
    ``cross_attention_dim`` param must equal the encoder's width."""

    kind: str = "none"
    path: str | None = None
    dim: int = 128
    depth: int = 2
    heads: int = 4
    max_length: int = 64
    word_buckets: int = 0


@dataclass
class ModelConfig:
    """The backbone: ``name`` from :data:`registry.MODELS`, its ``params`` (checked against the
    entry's params dataclass), whether it recomputes activations in backward, an optional
    caption encoder feeding its cross-attention, and ``init_from``: another run's checkpoint to
    start from (fine-tuning; see :func:`multidiff.train.checkpoint.warm_start`)."""

    name: str = "toy_mlp"
    params: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    init_from: str | None = None


@dataclass
class DataConfig:
    """The data set: ``name`` from :data:`registry.DATASETS`, an optional ``path`` (must exist),
    its ``params``, and DataLoader worker processes."""

    name: str = "toy_gmm"
    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0


NOISE_DISTRIBUTIONS = ("lognormal", "uniform_t", "logit_normal", "cosine_interpolated")


@dataclass
class NoiseConfig:
    """Training noise-level distribution (see multidiff.core.objectives).

    lognormal: ln sigma ~ N(p_mean, p_std^2); logit_normal: t = sigmoid(N(mean, std^2)) with
    optional ``shift``; uniform_t: uniform in the schedule's time; cosine_interpolated:
    shifted cosine log-SNR with image_d / noise_d_low / noise_d_high.
    """

    name: str = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2
    mean: float = 0.0
    std: float = 1.0
    shift: float | None = None
    image_d: float = 64.0
    noise_d_low: float = 32.0
    noise_d_high: float = 64.0


@dataclass
class AutoencoderObjectiveConfig:
    """``objective.autoencoder``: weights of multidiff.train.autoencoder.AutoencoderLoss: KL to N(0, I),
    L1 / L2 on the signal, an optional adversarial term (``adversarial_weight`` > 0, the modality's
    discriminator) with feature matching, and ``modality_params``: the data's modality's own terms,
    checked against its ``autoencoder_params`` (audio: multi-resolution STFT weight and sizes, the
    discriminator's FFT sizes and width; multidiff.audio.autoencoder.AudioAutoencoderParams)."""

    kl_weight: float = 1e-4
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 2.0
    modality_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConsistencyObjectiveConfig:
    """``objective.consistency`` (kind consistency): ECT's r(t) = t (1 - (1 + k sigmoid(-b t)) / q^stage)
    over ``stages`` equal parts of the run, and the pseudo-Huber constant (0: squared error);
    multidiff.core.ConsistencyLoss."""

    q: float = 2.0
    stages: int = 8
    k: float = 8.0
    b: float = 1.0
    huber_c: float = 0.00054


@dataclass
class DistillationObjectiveConfig:
    """``objective.distillation`` (kind distillation): progressive distillation from the ``teacher``
    checkpoint (its EMA weights) into ``student_steps`` steps of the "nested" grid with ``rho``; the
    student starts from model.init_from (the teacher, or the last round's student);
    multidiff.core.ProgressiveDistillationLoss."""

    teacher: str | None = None
    student_steps: int = 0
    rho: float = 7.0


OBJECTIVE_KINDS = ("diffusion", "autoencoder", "consistency", "distillation")


@dataclass
class ObjectiveConfig:
    """Schedule, prediction type, noise distribution and loss weighting.

    ``schedule.sigma_data`` is the data std used by EDM preconditioning and the "edm"
    weighting. ``cond_drop_prob`` replaces class labels by the null label during
    training so classifier-free guidance works at sampling time. ``kind: autoencoder``
    trains an autoencoder for latent diffusion instead (``autoencoder`` section; the
    diffusion fields are then unused); ``kind: consistency`` trains a few-step consistency model
    from scratch (ECT; ``consistency`` section; sample it with the ``consistency`` sampler);
    ``kind: distillation`` halves a trained model's steps (``distillation`` section; sample the
    student with a deterministic sampler on the ``nested`` grid).
    """

    kind: str = "diffusion"
    autoencoder: AutoencoderObjectiveConfig = field(default_factory=AutoencoderObjectiveConfig)
    consistency: ConsistencyObjectiveConfig = field(default_factory=ConsistencyObjectiveConfig)
    distillation: DistillationObjectiveConfig = field(default_factory=DistillationObjectiveConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: str = "edm"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    weighting: str = "edm"
    min_snr_gamma: float = 5.0
    cond_drop_prob: float = 0.1


OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear", "inv_sqrt")


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule, timed in samples seen.

    lr(s) = lr * warmup(s) * decay(s): linear warm-up over ``warmup_samples``; decay
    ``constant``, ``cosine`` / ``linear`` to ``min_lr_ratio * lr`` at the end of training, or
    ``inv_sqrt``: 1 / sqrt(max(s / decay_samples, 1)) (EDM2, Karras et al. 2024, Eq. 16).
    """

    name: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_samples: int = 0
    decay_samples: int = 1_000_000
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0


EMA_KINDS = ("power", "halflife", "none")


@dataclass
class EMAConfig:
    """EMA of the weights, used for sampling by default.

    power: the power-function EMA of EDM2 (Karras et al. 2024, Sec. 3.1) with relative
    width ``std`` (sigma_rel); halflife: EDM's EMA with a half-life of ``halflife_samples``,
    limited to ``rampup_ratio`` * samples seen early in training (Karras et al. 2022).
    """

    kind: str = "power"
    std: float = 0.10
    halflife_samples: int = 500_000
    rampup_ratio: float | None = 0.05


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
NOISE_GENERATORS = ("per_sample", "per_process")
#: accelerate's trackers (trainer.tracker) and the package each needs; wandb runs offline unless
#: WANDB_MODE says otherwise
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "trackio": "trackio", "swanlab": "swanlab",
            "none": None}


@dataclass
class TrainerConfig:
    """The training loop. ``batch_size`` is global: samples per optimizer step over all
    processes and accumulation micro-steps; it must divide by num_processes * grad_accum.

    ``noise_generators``: per_sample seeds each sample's training noise from (seed, its
    position in the data stream), so results do not depend on batch composition or the
    process count; per_process uses one generator per process (faster on GPU for large
    batches). ``cpu_threads`` sets torch's intra-op threads during fit (small models on
    shared CPUs run faster and steadier with 1); null keeps torch's default. ``resume``: "auto" continues from out_dir's latest checkpoint when there is
    one, null starts afresh, anything else is a checkpoint path. ``sharding``: "none" (each process
    holds the whole model; several processes are data parallel, DDP) or "fsdp" (weights, gradients,
    optimizer and EMA state sharded over the processes, FSDP2; checkpoints written as shards by
    torch.distributed.checkpoint; multidiff.train.sharding).
    """

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    duration_samples: int = 1_000_000
    batch_size: int = 256
    grad_accum: int = 1
    mixed_precision: str = "fp32"
    compile: bool = False
    noise_generators: str = "per_sample"
    ema: EMAConfig = field(default_factory=EMAConfig)
    log_every_samples: int = 10_000
    checkpoint_every_samples: int = 0
    preview_every_samples: int = 0
    preview_samples: int = 1024
    keep_checkpoints: int = 3
    max_nonfinite_in_a_row: int = 10
    tracker: str = "tensorboard"
    progress: bool = True
    cpu_threads: int | None = None
    resume: str | None = "auto"
    sharding: str = "none"


@dataclass
class SamplingConfig:
    """Sampling for previews and the defaults of ``multidiff sample`` / ``eval``.

    sigma_min / sigma_max default to the schedule's. ``guidance`` is the CFG scale (1 = off),
    applied for sigma in ``guidance_interval`` (low, high] only (Kynkäänniemi et al. 2024: guidance
    at the highest and lowest noise levels costs diversity and detail; default: everywhere).
    ``sample_shape`` overrides the data's per-sample shape (more points, a longer clip, more
    frames than the model trained on; None = the training shape).
    """

    sampler: str = "heun"
    steps: int = 32
    spacing: str = "karras"
    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    guidance: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, float("inf"))
    num_samples: int = 1024
    batch_size: int = 4096
    seed: int = 0
    use_ema: bool = True
    sample_shape: tuple[int, ...] | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# ------------------------------------------------------------------------ typed parsing
_UNIONS = (Union, types.UnionType)  # Optional[X] and X | None
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(inf|nan)$", re.IGNORECASE)
#: the float fields that may be infinite (an open upper end); every other float must be finite, and none NaN
INFINITE_OK = {"sampling.guidance_interval[1]"}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (list -> tuple, int -> float,
    mapping -> dataclass). Raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in _UNIONS:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, f"expected {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping (section {tp.__name__}), got {_describe(value)}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected bool (true/false), got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected int, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):  # YAML 1.1 reads "1e-3" as a string
            number = float(value)
        else:
            raise ConfigError(key, f"expected float, got {_describe(value)}")
        if math.isnan(number) or (math.isinf(number) and key not in INFINITE_OK):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric-looking path or name
        hint = " (YAML reads no/yes/off/on as booleans: quote the value)" if isinstance(value, bool) else ""
        raise ConfigError(key, f"expected str, got {_describe(value)}{hint}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list ({_type_name(tp)}), got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(key, f"expected {len(args)} values ({_type_name(tp)}), got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {_describe(value)}")
        return dict(value)
    raise ConfigError(key, f"unsupported field type {tp!r}")  # pragma: no cover - a programming error


def _unknown_key(key: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(key, f"unknown key{hint} (known: {', '.join(known)})")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise _unknown_key(key, str(name), fields)
        kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists (JSON- and YAML-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------ overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key, f"malformed override {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(key, f"cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings onto a nested plain dict (in place, returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is {_describe(child)}, not a section; cannot set {'.'.join(parts)}")
            node = child
        node[parts[-1]] = value
    return raw


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"recipe file {str(path)!r} does not exist")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError("", f"cannot parse {path}: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(recipe: str | Path | dict | None = None, overrides: list[str] | None = None,
                *, validate_paths: bool = True) -> Config:
    """Read a recipe (a YAML path, a plain dict or None for defaults), apply overrides,
    parse, and validate against the registries. Raises ConfigError naming the key."""
    raw = {} if recipe is None else (json.loads(json.dumps(recipe)) if isinstance(recipe, dict) else load_yaml(recipe))
    apply_overrides(raw, list(overrides or []))
    config = from_dict(Config, raw)
    validate(config, validate_paths=validate_paths)
    return config


# ----------------------------------------------------------------------------- validation
def _choice(key: str, value: Any, choices, what: str = "") -> None:
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(key, f"unknown {what or 'value'} {value!r}{hint} (known: {', '.join(map(str, choices))})")


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _unknown_name(key: str, name: str, table: dict, what: str) -> ConfigError:
    known = sorted(table)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    errs = "".join(f"\n  (plugin {m} failed to import: {e})" for m, e in registry.PLUGIN_ERRORS.items())
    return ConfigError(key, f"unknown {what} {name!r}{hint} (known: {', '.join(known) or 'none'}){errs}")


def model_params(config: Config) -> Any:
    """The model entry's params dataclass, filled from ``model.params``."""
    entry = registry.MODELS[config.model.name]
    return from_dict(entry.params, config.model.params, "model.params")


def autoencoder_modality_params(config: Config) -> Any:
    """``objective.autoencoder.modality_params`` as the data's modality's params dataclass (None when the
    modality takes none); ConfigError naming the key for unknown keys or an adversarial weight without
    a discriminator."""
    from .modality import get_modality

    modality = get_modality(registry.DATASETS[config.data.name].modality)
    a = config.objective.autoencoder
    if a.adversarial_weight > 0 and modality.discriminator is None:
        raise ConfigError("objective.autoencoder.adversarial_weight",
                          f"the {modality.name!r} modality has no discriminator for adversarial training")
    if modality.autoencoder_params is None:
        if a.modality_params:
            raise ConfigError("objective.autoencoder.modality_params",
                              f"the {modality.name!r} modality takes none, got {sorted(a.modality_params)}")
        return None
    return from_dict(modality.autoencoder_params, a.modality_params, "objective.autoencoder.modality_params")


def data_params(config: Config) -> Any:
    entry = registry.DATASETS[config.data.name]
    return from_dict(entry.params, config.data.params, "data.params")


def validate(config: Config, *, validate_paths: bool = True) -> Config:
    """Check choices, ranges, registry names, model/data params and the data path.

    Fills ``model.params`` / ``data.params`` with the entries' defaults, so the resolved
    config (saved in checkpoints) is complete.
    """
    from ..core import PREDICTIONS, SAMPLERS, SCHEDULES, SPACINGS, WEIGHTINGS

    registry.load_plugins()
    m, d, o, opt, t, s = config.model, config.data, config.objective, config.optimizer, config.trainer, config.sampling
    if m.name not in registry.MODELS:
        raise _unknown_name("model.name", m.name, registry.MODELS, "model")
    if d.name not in registry.DATASETS:
        raise _unknown_name("data.name", d.name, registry.DATASETS, "data set")
    m.params = to_plain(model_params(config))
    te = m.text_encoder
    _choice("model.text_encoder.kind", te.kind, ("none", "bytes", "pretrained"), "text encoder kind")
    if te.kind == "pretrained":
        if not te.path:
            raise ConfigError("model.text_encoder.path", "a local folder is required when kind is 'pretrained'")
        if validate_paths and not (Path(te.path).expanduser() / "config.json").is_file():
            raise ConfigError("model.text_encoder.path", f"no transformers model folder (config.json) at {te.path!r}")
    for name in ("dim", "depth", "heads", "max_length", "word_buckets"):
        _positive(f"model.text_encoder.{name}", getattr(te, name), allow_zero=name in ("depth", "word_buckets"))
    if te.kind != "none" and m.params.get("cross_attention_dim", -1) is None:
        raise ConfigError("model.params.cross_attention_dim",
                          f"a text encoder needs the backbone's cross-attention: set it to the encoder width "
                          f"({te.dim if te.kind == 'bytes' else 'the pretrained hidden size'})")
    for key, source in (("model.init_from", m.init_from), ("trainer.resume", config.trainer.resume)):
        if source and source != "auto" and validate_paths:
            from .checkpoint import WEIGHTS, resolve

            try:
                resolve(source, need=WEIGHTS if key == "model.init_from" else None)
            except (FileNotFoundError, InputError) as err:
                raise ConfigError(key, str(err)) from None
    d.params = to_plain(data_params(config))
    entry = registry.DATASETS[d.name]
    if validate_paths:
        if entry.needs_path and not d.path:
            raise ConfigError("data.path", f"data set {d.name!r} needs a path, none given")
        if d.path and not Path(d.path).expanduser().exists():
            raise ConfigError("data.path", f"no such file or directory: {d.path!r}")
    _positive("data.num_workers", d.num_workers, allow_zero=True)

    _choice("objective.kind", o.kind, OBJECTIVE_KINDS, "objective kind")
    c = o.consistency
    if not (c.q > 1 and c.stages >= 1 and c.k >= 0 and c.huber_c >= 0):
        raise ConfigError("objective.consistency", f"needs q > 1, stages >= 1, k >= 0, huber_c >= 0; got q={c.q}, "
                                                   f"stages={c.stages}, k={c.k}, huber_c={c.huber_c}")
    dist = o.distillation
    if o.kind == "distillation":
        if not dist.teacher:
            raise ConfigError("objective.distillation.teacher", "kind distillation needs the teacher checkpoint")
        if validate_paths and not Path(dist.teacher).expanduser().exists():
            raise ConfigError("objective.distillation.teacher", f"no such file or directory: {dist.teacher!r}")
        if dist.student_steps < 1:
            raise ConfigError("objective.distillation.student_steps", f"must be >= 1, got {dist.student_steps}")
        if not m.init_from:
            raise ConfigError("model.init_from", "kind distillation starts the student from its teacher: set "
                                                 "model.init_from to the teacher checkpoint")
    if o.kind == "consistency" and config.sampling.sampler != "consistency":
        raise ConfigError("sampling.sampler", f"a consistency model (objective.kind consistency) samples with the "
                                              f"consistency sampler, not {config.sampling.sampler!r}")
    for name in ("kl_weight", "l1_weight", "l2_weight", "adversarial_weight", "feature_matching_weight"):
        _positive(f"objective.autoencoder.{name}", getattr(o.autoencoder, name), allow_zero=True)
    if o.kind == "autoencoder":
        o.autoencoder.modality_params = to_plain(autoencoder_modality_params(config)) or {}
    want = "autoencoder" if o.kind == "autoencoder" else "denoiser"
    if registry.MODELS[m.name].kind != want:
        fitting = sorted(n for n, e in registry.MODELS.items() if e.kind == want)
        raise ConfigError("model.name", f"{m.name!r} is a {registry.MODELS[m.name].kind} model, but objective.kind "
                                        f"is {o.kind!r}; {want} models: {', '.join(fitting) or 'none'}")
    _choice("objective.schedule.name", o.schedule.name, SCHEDULES, "schedule")
    _choice("objective.prediction", o.prediction, PREDICTIONS, "prediction type")
    _choice("objective.noise.name", o.noise.name, NOISE_DISTRIBUTIONS, "noise distribution")
    _choice("objective.weighting", o.weighting, WEIGHTINGS, "weighting")
    _positive("objective.schedule.sigma_data", o.schedule.sigma_data)
    if not 0 <= o.cond_drop_prob < 1:
        raise ConfigError("objective.cond_drop_prob", f"must be in [0, 1), got {o.cond_drop_prob}")

    _choice("optimizer.name", opt.name, OPTIMIZERS, "optimizer")
    _choice("optimizer.schedule", opt.schedule, LR_SCHEDULES, "learning-rate schedule")
    _positive("optimizer.lr", opt.lr)
    _positive("optimizer.warmup_samples", opt.warmup_samples, allow_zero=True)
    _positive("optimizer.decay_samples", opt.decay_samples)
    _positive("optimizer.grad_clip", opt.grad_clip)

    _choice("trainer.device", t.device, DEVICES, "device")
    if t.mixed_precision == "no":  # accelerate's name for full precision
        t.mixed_precision = "fp32"
    _choice("trainer.mixed_precision", t.mixed_precision, PRECISIONS, "precision")
    _choice("trainer.noise_generators", t.noise_generators, NOISE_GENERATORS)
    _choice("trainer.tracker", t.tracker, TRACKERS, "tracker")
    package = TRACKERS[t.tracker]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError("trainer.tracker", f"{t.tracker!r} needs the {package} package (pip install {package}), "
                          f"which is not installed")
    _choice("trainer.ema.kind", t.ema.kind, EMA_KINDS, "EMA kind")
    _positive("trainer.ema.std", t.ema.std)
    if t.ema.kind == "power" and not t.ema.std < 12 ** -0.5:
        raise ConfigError("trainer.ema.std", f"a power EMA needs std < {12 ** -0.5:.4f}, got {t.ema.std}")
    _positive("trainer.ema.halflife_samples", t.ema.halflife_samples)
    for name in ("duration_samples", "batch_size", "grad_accum", "keep_checkpoints", "max_nonfinite_in_a_row",
                 "preview_samples"):
        _positive(f"trainer.{name}", getattr(t, name))
    _positive("trainer.cpu_threads", t.cpu_threads)
    for name in ("log_every_samples", "checkpoint_every_samples", "preview_every_samples"):
        _positive(f"trainer.{name}", getattr(t, name), allow_zero=True)
    if t.batch_size % t.grad_accum:
        raise ConfigError("trainer.batch_size", f"{t.batch_size} is not divisible by trainer.grad_accum={t.grad_accum}")
    _choice("trainer.sharding", t.sharding, ("none", "fsdp"), "sharding")
    if t.sharding == "fsdp":
        if t.compile:
            raise ConfigError("trainer.compile", "torch.compile is not applied under trainer.sharding=fsdp yet; "
                              "set trainer.compile=false")
        if t.mixed_precision == "fp16":
            raise ConfigError("trainer.mixed_precision", "fp16 loss scaling is not set up for trainer.sharding=fsdp; "
                              "use bf16 or fp32")
        if config.objective.kind == "autoencoder":
            raise ConfigError("trainer.sharding", "objective.kind autoencoder trains in one process, unsharded")

    _choice("sampling.sampler", s.sampler, SAMPLERS, "sampler")
    lo, hi = s.guidance_interval
    if not 0 <= lo < hi:
        raise ConfigError("sampling.guidance_interval", f"needs 0 <= low < high, got {[lo, hi]}")
    _choice("sampling.spacing", s.spacing, SPACINGS, "spacing")
    for name in ("steps", "num_samples", "batch_size"):
        _positive(f"sampling.{name}", getattr(s, name))
    return config


def config_from_json(data: dict | str) -> Config:
    """The resolved config stored in a checkpoint (config.json) back as a Config."""
    raw = json.loads(data) if isinstance(data, str) else data
    config = from_dict(Config, raw)
    return validate(config, validate_paths=False)
