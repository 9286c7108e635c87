"""Generation from a trained backbone, shared by training previews and ``multidiff sample``.

Sample k starts from noise drawn by its own generator, seeded by a hash of (seed, k)
(multidiff.core.make_generators), and stochastic samplers draw through the same
generator, so sample k does not depend on how many samples are asked for or on the
chunk size, and different seeds share no sample.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core import Autoguidance, ClassifierFreeGuidance, make_generators, sample, sigma_grid
from ..errors import InputError
from .build import build_denoiser
from .config import ObjectiveConfig, SamplingConfig
from .registry import DataSpec


def sampling_sigmas(sampling: SamplingConfig, schedule, steps: int | None = None) -> torch.Tensor:
    """The sigma grid (steps + 1 values ending in 0) for a sampling config and schedule."""
    lo = sampling.sigma_min if sampling.sigma_min is not None else schedule.sigma_min
    hi = sampling.sigma_max if sampling.sigma_max is not None else schedule.sigma_max
    return sigma_grid(steps or sampling.steps, lo, hi, sampling.spacing, rho=sampling.rho, schedule=schedule)


def default_labels(num: int, spec: DataSpec, label: int | None = None) -> torch.Tensor | None:
    """Class labels for conditional models: ``label`` for all, else k mod num_classes; None if unconditional."""
    if spec.num_classes <= 0:
        return None
    if label is not None:
        if not 0 <= label < spec.num_classes:
            raise InputError(f"--label: label {label} out of range for {spec.num_classes} classes (0 to "
                             f"{spec.num_classes - 1})")
        return torch.full((num,), int(label), dtype=torch.long)
    return torch.arange(num) % spec.num_classes


def sampling_shape(sampling: SamplingConfig, spec: DataSpec) -> tuple[int, ...]:
    """One sample's shape as generated: ``sampling.sample_shape`` when set (a set model trained
    on fewer points, a clip longer than the training crops), else the data's."""
    return tuple(sampling.sample_shape or spec.sample_shape)


@dataclass
class Conditioning:
    """What ``num`` samples are conditioned on, per sample, and what guidance contrasts it with.

    labels (num,): classes (the value spec.num_classes is "no class"); prompts: captions, for models
    with a text encoder ("" = none); negative_prompt: the caption guidance steers away from ("" =
    the unconditional model), one for all or one per sample; concat (num, channels, ...): extra input channels given directly (a
    vocoder's mel); known (num, *shape) with mask (num or 1, ...; 1 = known): masked sampling
    (continuation, inpainting, completion; a model trained with masked conditioning also gets
    [mask, known * mask] as input channels, and ``replace=False`` then leaves the given part to the
    model instead of re-imposing it)."""

    labels: torch.Tensor | None = None
    prompts: list[str] | None = None
    negative_prompt: str | list[str] = ""
    concat: torch.Tensor | None = None
    known: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    replace: bool = True

    def batch(self, start: int, stop: int, device, uses_concat: bool) -> dict | None:
        """The backbone's cond mapping for samples [start, stop)."""
        n = stop - start
        cond: dict = {} if self.labels is None else {"label": self.labels[start:stop].to(device)}
        if self.prompts is not None:
            cond["text"] = self.prompts[start:stop]
        if self.concat is not None:
            cond["concat"] = self.concat[start:stop].to(device)
        if self.known is not None:
            part = (self.mask[start:stop] if self.mask.shape[0] == len(self.known) else self.mask).to(device)
            given = self.known[start:stop].to(device)
            if uses_concat:  # a masked-trained model sees the given part through its extra channels
                m = part.expand(n, 1, *given.shape[2:]).to(given.dtype)
                cond["concat"] = torch.cat([m, given * m], dim=1)
            if self.replace or not uses_concat:
                cond.update(known=given, mask=part)
        return cond or None

    def unconditional(self, cond: dict, null_label: int, start: int | None = None, stop: int | None = None) -> dict:
        """The branch guidance contrasts with, for the batch ``cond`` of samples [start, stop): the null
        label and / or the negative caption; the given signals (concat, known part) kept. A
        per-sample negative prompt needs start and stop."""
        out = {k: v for k, v in cond.items() if k not in ("label", "text")}
        if self.labels is not None:
            out["label"] = torch.full_like(cond["label"], null_label)
        if self.prompts is not None:
            negative = self.negative_prompt
            if isinstance(negative, str):
                out["text"] = [negative] * len(cond["text"])
            elif start is None or stop is None:
                raise ValueError("a per-sample negative_prompt needs the batch's sample range")
            else:
                out["text"] = list(negative[start:stop])
        return out


def guided_denoiser(denoiser, conditioning: Conditioning, sampling: SamplingConfig, null_label: int, guide=None):
    """The denoiser a sampler runs: autoguidance by the ``guide`` denoiser, classifier-free guidance
    between the conditioning and its unconditional branch, or the denoiser itself (scale 1, nothing to
    guide towards)."""
    interval = tuple(sampling.guidance_interval)
    if guide is not None:
        return Autoguidance(denoiser, guide, sampling.guidance, interval=interval)
    if (conditioning.labels is not None or conditioning.prompts is not None) and sampling.guidance != 1.0:
        return ClassifierFreeGuidance(denoiser, sampling.guidance,
                                      lambda cond: conditioning.unconditional(cond, null_label), interval=interval)
    return denoiser


@torch.no_grad()
def generate(model: nn.Module, objective: ObjectiveConfig, spec: DataSpec, sampling: SamplingConfig,
             conditioning: Conditioning | None = None, *, num: int | None = None, seed: int | None = None,
             device=None, progress: bool = False, resample: int = 1,
             guide: tuple[nn.Module, ObjectiveConfig] | None = None) -> torch.Tensor:
    """Draw ``num`` samples (default sampling.num_samples): returns (num, *shape) float32 on the CPU,
    shape being ``sampling.sample_shape`` when set, else that of ``conditioning.known``, else
    ``spec.sample_shape``.

    model: the backbone (EMA or raw weights); ``conditioning``: labels (default: k mod classes for a
    conditional model, :func:`default_labels`), captions, given signals (:class:`Conditioning`);
    guidance at scale ``sampling.guidance`` (1 = none) within ``sampling.guidance_interval``; masked
    sampling uses RePaint resampling when ``resample`` > 1. ``guide`` (model, objective): a weaker
    version of the model (fewer samples seen, smaller) for autoguidance instead of CFG; it gets the
    same conditioning.
    """
    c = replace(conditioning) if conditioning is not None else Conditioning()
    num = sampling.num_samples if num is None else num
    if c.prompts is not None:
        if not hasattr(model, "text_encoder"):
            raise ValueError("prompts were given but the model has no text encoder (model.text_encoder.kind is none)")
        c.prompts = list(c.prompts)
    elif hasattr(model, "text_encoder"):
        c.prompts = [""] * num  # no captions: the unconditional branch
    known = c.known
    shape = tuple(known.shape[1:]) if known is not None and not sampling.sample_shape else sampling_shape(sampling, spec)
    if len(shape) != len(spec.sample_shape):
        raise ValueError(f"sample shape {list(shape)} (sampling.sample_shape, else known's) must have as many "
                         f"dimensions as the data's sample shape {list(spec.sample_shape)}")
    if known is not None and tuple(known.shape[1:]) != shape:
        raise ValueError(f"known has per-sample shape {tuple(known.shape[1:])}, the samples {shape}")
    if c.labels is None:
        c.labels = default_labels(num, spec)
    if c.prompts is not None and len(c.prompts) != num:
        raise ValueError(f"{len(c.prompts)} prompts for {num} samples")
    seed = sampling.seed if seed is None else seed
    device = torch.device(device) if device is not None else next(model.parameters()).device
    uses_concat = int(spec.meta.get("concat_channels", 0) or 0) > 0
    if known is not None and uses_concat and spec.meta.get("refuse_masked_sampling"):
        raise ValueError(spec.meta["refuse_masked_sampling"])  # the data set's reason (e.g. a derived input)
    models = [model] + ([guide[0]] if guide is not None else [])
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    denoiser = build_denoiser(model, objective)
    sigmas = sampling_sigmas(sampling, denoiser.schedule)
    guide_denoiser = build_denoiser(guide[0], guide[1]) if guide is not None else None
    denoiser = guided_denoiser(denoiser, c, sampling, spec.num_classes, guide_denoiser)  # built once
    out = []
    try:
        for start in range(0, num, sampling.batch_size):
            n = min(sampling.batch_size, num - start)
            gens = make_generators(seed, n, device, start=start)
            x = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens]) * float(sigmas[0])
            out.append(sample(denoiser, x, sigmas, sampling.sampler, cond=c.batch(start, start + n, device, uses_concat),
                              generator=gens, progress=progress, resample=resample).float().cpu())
    finally:
        for m, training in zip(models, was_training):
            m.train(training)
    return torch.cat(out) if out else torch.empty(0, *shape)
