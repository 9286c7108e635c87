"""Guidance as denoiser wrappers: each takes denoisers and returns a denoiser.

Classifier-free guidance (Ho & Salimans 2022):  D = D_u + w (D_c - D_u), with the
conditional and unconditional halves run in one batched forward. Options:
  rescale    guidance rescale (Lin et al. 2023, Sec. 3.4, Eq. 15-16): match the per-sample
             std of the guided eps to the conditional eps, blended by ``rescale``.
  interval   guidance only for sigma in (lo, hi] (Kynkaanniemi et al. 2024); outside it
             the conditional output is returned and the unconditional pass is skipped.
  negative   the unconditional branch is given the negative conditioning instead.
Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", Eq. 2):
  D = D_bad + w (D_good - D_bad), the guiding model a weaker version of the same model (less
  trained, smaller) with the same conditioning: it pushes samples away from where the weaker model
  errs, which sharpens them without the loss of variety that CFG's push towards the condition brings.
Whole outputs are blended; no backbone code is involved.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .utils import append_dims


def _batch_cond(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict | None:
    """Concatenate two conditioning mappings along the batch dimension (key by key)."""
    if a is None and b is None:
        return None
    a, b = dict(a or {}), dict(b or {})
    if set(a) != set(b):
        raise ValueError(f"conditional and unconditional inputs need the same keys, got {sorted(a)} and {sorted(b)}")
    out = {}
    for key in a:
        va, vb = a[key], b[key]
        if torch.is_tensor(va) and torch.is_tensor(vb):
            if va.shape[1:] != vb.shape[1:]:
                raise ValueError(f"cond[{key!r}]: conditional shape {tuple(va.shape)} and unconditional {tuple(vb.shape)} differ")
            out[key] = torch.cat([va, vb])
        elif isinstance(va, (list, tuple)):
            out[key] = list(va) + list(vb)
        else:
            if va != vb:
                raise ValueError(f"cond[{key!r}] is not a tensor or list and differs between branches")
            out[key] = va
    return out


class ClassifierFreeGuidance(torch.nn.Module):
    """D_w(x, sigma, cond) = D(x, sigma, uncond) + scale * (D(x, sigma, cond) - D(x, sigma, uncond)).

    ``uncond`` is a mapping with the same keys as the cond it is used with (e.g. the null
    label or empty-caption embedding), for one sample or the whole batch; or a callable
    cond -> uncond. scale = 1 returns the conditional model's output exactly.
    """

    def __init__(self, denoiser, scale: float, uncond, *, rescale: float = 0.0,
                 interval: tuple[float, float] = (0.0, float("inf")), negative: Mapping[str, Any] | None = None):
        super().__init__()
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), uncond
        self.rescale, self.interval, self.negative = float(rescale), interval, negative

    def _uncond_for(self, cond, batch):
        source = self.negative if self.negative is not None else self.uncond
        uncond = source(cond) if callable(source) else source
        expanded = {}
        for key, value in dict(uncond or {}).items():
            if torch.is_tensor(value) and value.shape[0] == 1 and batch > 1:
                value = value.expand(batch, *value.shape[1:])
            expanded[key] = value
        return expanded

    def forward(self, x, sigma, cond=None):
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        lo, hi = self.interval
        active = (sigma > lo) & (sigma <= hi)
        if not bool(active.any()):
            return self.denoiser(x, sigma, cond)
        batch = x.shape[0]
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                             _batch_cond(cond, self._uncond_for(cond, batch)))
        d_cond, d_uncond = both[:batch], both[batch:]
        guided = d_uncond + (d_cond - d_uncond) * self.scale
        if self.rescale > 0:
            guided = rescale_guidance(x, sigma, guided, d_cond, self.rescale)
        return torch.where(append_dims(active, x.ndim), guided, d_cond)


def rescale_guidance(x, sigma, guided, d_cond, rescale: float):
    """Guidance rescale on the eps implied by the x0 outputs (Lin et al. 2023, Eq. 15-16)."""
    s = append_dims(sigma.to(x.dtype), x.ndim)
    eps_cfg, eps_cond = (x - guided) / s, (x - d_cond) / s
    dims = tuple(range(1, x.ndim))
    ratio = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True).clamp(min=1e-12)
    eps = rescale * eps_cfg * ratio + (1 - rescale) * eps_cfg
    return x - s * eps


class Autoguidance(torch.nn.Module):
    """D_w(x, sigma, cond) = D_bad(x, sigma, cond) + scale * (D_good(x, sigma, cond) - D_bad(x, sigma, cond))
    (Karras et al. 2024, Eq. 2). Both denoisers take the same inputs; scale = 1 returns D_good exactly
    and skips the guiding model. ``interval``: guide only for sigma in (lo, hi], as for CFG."""

    def __init__(self, denoiser, guide, scale: float, *, interval: tuple[float, float] = (0.0, float("inf"))):
        super().__init__()
        self.denoiser, self.guide, self.scale, self.interval = denoiser, guide, float(scale), interval

    def forward(self, x, sigma, cond=None):
        d_good = self.denoiser(x, sigma, cond)
        lo, hi = self.interval
        active = (sigma > lo) & (sigma <= hi)
        if self.scale == 1.0 or not bool(active.any()):
            return d_good
        d_bad = self.guide(x, sigma, cond)
        guided = d_bad + (d_good - d_bad) * self.scale
        return torch.where(append_dims(active, x.ndim), guided, d_good)


def cfg(denoiser, scale: float, uncond, **kwargs) -> ClassifierFreeGuidance:
    """Shorthand for ClassifierFreeGuidance(denoiser, scale, uncond, **kwargs)."""
    return ClassifierFreeGuidance(denoiser, scale, uncond, **kwargs)
