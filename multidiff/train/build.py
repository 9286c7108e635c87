"""Turn config sections into objects: data set, backbone, denoiser, loss, optimizer, LR schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import (
    ConsistencyLoss,
    CosineInterpolated,
    Denoiser,
    DiffusionLoss,
    LogitNormal,
    LogNormal,
    NoiseSchedule,
    ProgressiveDistillationLoss,
    UniformT,
    weighting,
)
from ..errors import DataError, InputError
from ..nn.text import ByteTextEncoder, PretrainedTextEncoder, TextConditioned
from . import registry
from .autoencoder import AutoencoderLoss
from .config import (
    Config,
    ConfigError,
    ObjectiveConfig,
    OptimizerConfig,
    autoencoder_modality_params,
    data_params,
    model_params,
)
from .modality import get_modality
from .registry import DataSpec


def build_dataset(config: Config):
    """The data set of ``config.data``; it carries a ``spec`` (:class:`DataSpec`)."""
    entry = registry.DATASETS[config.data.name]
    try:
        dataset = entry.factory(data_params(config), config.data.path, config.trainer.seed)
    except InputError:
        raise
    except ValueError as err:  # a data set refusing its params or files: name the section and the source
        raise DataError(f"data set {config.data.name!r}"
                        + (f" at {config.data.path}" if config.data.path else "") + f": {err}") from None
    spec = getattr(dataset, "spec", None)
    if not isinstance(spec, DataSpec):
        raise TypeError(f"data set {config.data.name!r} has no DataSpec in its .spec attribute")
    return dataset


def build_model(config: Config, spec: DataSpec) -> nn.Module:
    """The backbone of ``config.model`` for data described by ``spec``; with ``model.text_encoder``
    set, wrapped in :class:`multidiff.nn.TextConditioned` so ``cond['text']`` (captions) works."""
    entry = registry.MODELS[config.model.name]
    try:
        backbone = entry.factory(model_params(config), spec, gradient_checkpointing=config.model.gradient_checkpointing)
    except InputError:
        raise
    except ValueError as err:  # a backbone refusing its params (sizes that do not fit together)
        raise ConfigError("model.params", f"{config.model.name}: {err}") from None
    if config.objective.kind == "autoencoder" and config.objective.autoencoder.adversarial_weight > 0:
        make = get_modality(spec.modality).discriminator
        if make is None:
            raise ConfigError("objective.autoencoder.adversarial_weight",
                              f"the {spec.modality!r} modality has no discriminator for adversarial training")
        try:  # a submodule: checkpointed, resumed and optimised with the autoencoder
            backbone.discriminator = make(autoencoder_modality_params(config), spec)
        except ValueError as err:
            raise ConfigError("objective.autoencoder.adversarial_weight", str(err)) from None
    te = config.model.text_encoder
    if te.kind == "none":
        return backbone
    encoder = (ByteTextEncoder(te.dim, te.depth, te.heads, te.max_length, word_buckets=te.word_buckets) if te.kind == "bytes"
               else PretrainedTextEncoder(te.path, te.max_length))
    width = config.model.params.get("cross_attention_dim")
    if width != encoder.dim:
        raise ConfigError("model.params.cross_attention_dim",
                          f"is {width}, but the {te.kind} text encoder gives {encoder.dim}-wide embeddings")
    return TextConditioned(backbone, encoder)


def build_denoiser(model: nn.Module, objective: ObjectiveConfig) -> Denoiser:
    """Wrap a backbone (maybe DDP-wrapped) into the sigma-space denoiser of the objective."""
    schedule = objective.schedule.build()
    return Denoiser(model, schedule, objective.prediction, sigma_data=objective.schedule.sigma_data)


def build_noise_distribution(objective: ObjectiveConfig, schedule: NoiseSchedule):
    n = objective.noise
    if n.name == "lognormal":
        return LogNormal(n.p_mean, n.p_std)
    if n.name == "uniform_t":
        return UniformT(schedule)
    if n.name == "logit_normal":
        return LogitNormal(schedule, n.mean, n.std, n.shift)
    if n.name == "cosine_interpolated":
        return CosineInterpolated(n.image_d, n.noise_d_low, n.noise_d_high, objective.schedule.sigma_data,
                                  schedule.sigma_min, schedule.sigma_max)
    raise ValueError(f"unknown noise distribution {n.name!r}")


def build_loss(objective: ObjectiveConfig, schedule: NoiseSchedule, modality: str | None = None,
               modality_params: Any = None, teacher=None):
    """The per-sample loss callable: DiffusionLoss, or AutoencoderLoss for objective.kind autoencoder
    (with the modality's own term, from its ``autoencoder_loss`` hook and ``modality_params``)."""
    if objective.kind == "autoencoder":
        a = objective.autoencoder
        hook = get_modality(modality).autoencoder_loss if modality else None
        extra = hook(modality_params) if hook is not None and modality_params is not None else None
        return AutoencoderLoss(a.kl_weight, a.l1_weight, a.l2_weight, extra, a.adversarial_weight,
                               a.feature_matching_weight)
    if objective.kind == "distillation":  # teacher: the teacher's denoiser
        d = objective.distillation
        weight = weighting(objective.weighting, sigma_data=objective.schedule.sigma_data, gamma=objective.min_snr_gamma)
        return ProgressiveDistillationLoss(teacher, d.student_steps, schedule.sigma_max, rho=d.rho, weight=weight)
    if objective.kind == "consistency":
        c = objective.consistency
        return ConsistencyLoss(build_noise_distribution(objective, schedule), q=c.q, stages=c.stages, k=c.k, b=c.b,
                               huber_c=c.huber_c)
    sd = objective.schedule.sigma_data
    weight = weighting(objective.weighting, sigma_data=sd, gamma=objective.min_snr_gamma)
    return DiffusionLoss(build_noise_distribution(objective, schedule), weight, sigma_data=sd)


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                 weight_decay=config.weight_decay)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                weight_decay=config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}")


@dataclass
class LRSchedule:
    """lr(samples seen) = base * warmup * decay; a pure function of samples seen (no state)."""

    config: OptimizerConfig
    duration_samples: int

    def factor(self, samples: int) -> float:
        c = self.config
        warm = min(samples / c.warmup_samples, 1.0) if c.warmup_samples > 0 else 1.0
        frac = min(samples / max(self.duration_samples, 1), 1.0)
        if c.schedule == "constant":
            decay = 1.0
        elif c.schedule == "cosine":
            decay = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        elif c.schedule == "linear":
            decay = c.min_lr_ratio + (1 - c.min_lr_ratio) * (1 - frac)
        elif c.schedule == "inv_sqrt":
            decay = 1 / math.sqrt(max(samples / c.decay_samples, 1.0))
        else:
            raise ValueError(f"unknown learning-rate schedule {c.schedule!r}")
        return warm * decay

    def lr(self, samples: int) -> float:
        return self.config.lr * self.factor(samples)

    def apply(self, optimizer: torch.optim.Optimizer, samples: int) -> float:
        """Set the learning rate for the step that ends at ``samples`` samples seen."""
        lr = self.lr(samples)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.config.lr, "schedule": self.config.schedule, "duration_samples": self.duration_samples}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_device(name: str) -> torch.device | None:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda")
    return None
