"""Exponential moving averages of the weights, timed in samples seen.

power (EDM2, Karras et al. 2024, Sec. 3.1): the average weights the training history
with a profile p(tau) proportional to tau^gamma on [0, t]. Over one step of ``batch``
samples ending at t samples seen, the old average keeps the share

    beta = integral_0^{t-batch} tau^gamma / integral_0^t tau^gamma = (1 - batch / t)^(gamma + 1),

so the first step copies the weights and the average tracks a fixed fraction of the run.
The profile's relative standard deviation (its width as a fraction of t) is

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)),

which :func:`gamma_from_std` inverts for gamma >= 0 (sigma_rel < 12^-1/2).

halflife (EDM, Karras et al. 2022, Appendix): beta = 0.5^(batch / h), with the half-life
h = halflife_samples limited to rampup_ratio * t early in training.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import EMAConfig

MAX_POWER_STD = 12 ** -0.5  # sigma_rel at gamma = 0


def std_of_gamma(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_std(std: float) -> float:
    """The exponent gamma >= 0 whose power profile has relative std ``std`` (bisection)."""
    if not 0 < std < MAX_POWER_STD:
        raise ValueError(f"power EMA std must be in (0, {MAX_POWER_STD:.4f}), got {std}")
    lo, hi = 0.0, 1.0
    while std_of_gamma(hi) > std:  # std_of_gamma decreases on gamma >= 0
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if std_of_gamma(mid) > std else (lo, mid)
    return 0.5 * (lo + hi)


def copy_module(model: nn.Module) -> nn.Module:
    """copy.deepcopy, also for modules under torch.nn.utils.weight_norm (diffusers' Oobleck VAE):
    its computed weight is no graph leaf, which deepcopy refuses. The copy gets it detached; its
    own pre-forward hook recomputes it from the copied weight_g / weight_v."""
    from torch.nn.utils.weight_norm import WeightNorm  # the module; torch.nn.utils.weight_norm is the function

    computed = [(m, hook.name, getattr(m, hook.name)) for m in model.modules()
                for hook in m._forward_pre_hooks.values() if isinstance(hook, WeightNorm)]
    try:
        for m, name, weight in computed:
            setattr(m, name, weight.detach())
        return copy.deepcopy(model)
    finally:
        for m, name, weight in computed:
            setattr(m, name, weight)


class EMA:
    """A float32 shadow copy of a module, updated after each optimizer step.

    ``module`` is the averaged network (eval mode, no gradients), on the model's device.
    """

    def __init__(self, model: nn.Module, config: EMAConfig):
        if config.kind not in ("power", "halflife"):
            raise ValueError(f"EMA kind {config.kind!r} has no average; use None for no EMA")
        self.config = config
        self.gamma = gamma_from_std(config.std) if config.kind == "power" else None
        self.module = copy_module(model).float().eval().requires_grad_(False)

    def beta(self, samples_seen: int, batch: int) -> float:
        """The old average's share for a step of ``batch`` samples ending at ``samples_seen``."""
        if self.config.kind == "power":
            return (1 - batch / max(samples_seen, batch)) ** (self.gamma + 1)
        halflife = float(self.config.halflife_samples)
        if self.config.rampup_ratio is not None:
            halflife = min(halflife, samples_seen * self.config.rampup_ratio)
        return 0.5 ** (batch / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, samples_seen: int, batch: int) -> float:
        """Blend ``model``'s current weights in; returns the beta used."""
        beta = self.beta(samples_seen, batch)
        ema_params = list(self.module.parameters())
        params = [p.detach().float() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists")
        for p_ema, p in zip(ema_params, params):
            p_ema.lerp_(p, 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        return beta
