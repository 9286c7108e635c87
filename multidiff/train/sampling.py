"""Generation from a trained backbone, shared by training previews and ``multidiff sample``.

Sample k starts from noise drawn by its own generator, seeded by a hash of (seed, k)
(multidiff.core.make_generators), and stochastic samplers draw through the same
generator, so sample k does not depend on how many samples are asked for or on the
chunk size, and different seeds share no sample.
"""
from __future__ import annotations

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


@torch.no_grad()
def generate(model: nn.Module, objective: ObjectiveConfig, spec: DataSpec, sampling: SamplingConfig, *,
             num: int | None = None, seed: int | None = None, labels: torch.Tensor | None = None,
             device=None, progress: bool = False, known: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, resample: int = 1, prompts: list[str] | None = None,
             negative_prompt: str = "", replace: bool = True, concat: torch.Tensor | None = None,
             guide: tuple[nn.Module, ObjectiveConfig] | None = None) -> torch.Tensor:
    """Draw ``num`` samples: returns (num, *shape) float32 on the CPU, shape being
    ``sampling.sample_shape`` when set, else that of ``known``, else ``spec.sample_shape``.

    model: the backbone (EMA or raw weights), in eval mode; ``labels`` (num,) for conditional
    models (see :func:`default_labels`); guidance scale ``sampling.guidance`` (1 = none).
    ``known`` (num, *sample_shape) with ``mask`` (num or 1, ...; 1 = known) asks for masked
    sampling (continuation, inpainting, completion; multidiff.core.masked), with RePaint
    resampling when ``resample`` > 1. A model trained with masked conditioning (its data set's
    ``concat_channels``) also gets [mask, known * mask] as input channels; ``replace=False``
    then leaves the given part to the model instead of re-imposing it. ``concat`` (num, extra
    channels, ...) gives such channels directly (e.g. a vocoder's mel spectrogram). ``prompts`` (num captions) for models with a text encoder;
    guidance then contrasts them with ``negative_prompt`` ("" = the unconditional model).
    ``guide`` (model, objective): a weaker version of the model (fewer samples seen, smaller) for
    autoguidance (multidiff.core.Autoguidance) at scale ``sampling.guidance`` instead of CFG; it
    gets the same labels, captions and signals.
    """
    if prompts is not None:
        if not hasattr(model, "text_encoder"):
            raise ValueError("prompts were given but the model has no text encoder (model.text_encoder.kind is none)")
        prompts = list(prompts)
    elif hasattr(model, "text_encoder"):
        prompts = [""] * (sampling.num_samples if num is None else num)  # no captions: the unconditional branch
    num = sampling.num_samples if num is None else num
    shape = tuple(known.shape[1:]) if known is not None and not sampling.sample_shape else sampling_shape(sampling, spec)
    if len(shape) != len(spec.sample_shape):
        raise ValueError(f"sample shape {list(shape)} (sampling.sample_shape, else known's) must have as many "
                         f"dimensions as the data's sample shape {list(spec.sample_shape)}")
    if known is not None and tuple(known.shape[1:]) != shape:
        raise ValueError(f"known has per-sample shape {tuple(known.shape[1:])}, the samples {shape}")
    seed = sampling.seed if seed is None else seed
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    denoiser = build_denoiser(model, objective)
    sigmas = sampling_sigmas(sampling, denoiser.schedule)
    guide_denoiser = None
    if guide is not None:
        guide_model, guide_objective = guide
        guide_was_training = guide_model.training
        guide_model.eval()
        guide_denoiser = build_denoiser(guide_model, guide_objective)
    if labels is None:
        labels = default_labels(num, spec)
    if prompts is not None and len(prompts) != num:
        raise ValueError(f"{len(prompts)} prompts for {num} samples")
    null = torch.full((1,), spec.num_classes, dtype=torch.long, device=device)
    uses_concat = int(spec.meta.get("concat_channels", 0) or 0) > 0
    if known is not None and uses_concat and spec.meta.get("refuse_masked_sampling"):
        raise ValueError(spec.meta["refuse_masked_sampling"])  # the data set's reason (e.g. a derived input)

    def uncond(cond):  # the null label and / or the negative caption; signal conditioning (concat) kept
        out = {k: v for k, v in cond.items() if k not in ("label", "text")}
        if labels is not None:
            out["label"] = null.expand(len(cond["label"]))
        if prompts is not None:
            out["text"] = [negative_prompt] * len(cond["text"])
        return out
    out = []
    try:
        for start in range(0, num, sampling.batch_size):
            n = min(sampling.batch_size, num - start)
            gens = make_generators(seed, n, device, start=start)
            x = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
            x = x * float(sigmas[0])
            cond = {} if labels is None else {"label": labels[start:start + n].to(device)}
            if prompts is not None:
                cond["text"] = prompts[start:start + n]
            if concat is not None:
                cond["concat"] = concat[start:start + n].to(device)
            if known is not None:
                part = (mask[start:start + n] if mask.shape[0] == num else mask).to(device)
                given = known[start:start + n].to(device)
                if uses_concat:  # a masked-trained model sees the given part through its extra channels
                    m = part.expand(n, 1, *given.shape[2:]).to(given.dtype)
                    cond["concat"] = torch.cat([m, given * m], dim=1)
                if replace or not uses_concat:
                    cond.update(known=given, mask=part)
            cond = cond or None
            d = denoiser
            if guide_denoiser is not None:
                d = Autoguidance(denoiser, guide_denoiser, sampling.guidance, interval=tuple(sampling.guidance_interval))
            elif (labels is not None or prompts is not None) and sampling.guidance != 1.0:
                d = ClassifierFreeGuidance(denoiser, sampling.guidance, uncond,
                                           interval=tuple(sampling.guidance_interval))
            out.append(sample(d, x, sigmas, sampling.sampler, cond=cond, generator=gens, progress=progress,
                              resample=resample).float().cpu())
    finally:
        model.train(was_training)
        if guide is not None:
            guide[0].train(guide_was_training)
    return torch.cat(out) if out else torch.empty(0, *shape)
