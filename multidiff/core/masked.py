"""Masked sampling for inpainting, continuation, frame conditioning and shape completion.

``mask`` is 1 where values are known, 0 where they are generated; ``known`` holds the
known values (anything where mask is 0). Known values are re-imposed at the current
noise level (Song et al. 2021, App. I; "replacement"): the denoiser sees
known + sigma * z in the known region and its x0 output there is replaced by ``known``,
so any sampler in SAMPLERS can inpaint. RePaint (Lugmayr et al. 2022, Alg. 1) adds
resampling: each step is undone by forward noise and redone ``resample`` times so the
generated region harmonises with the known one.
"""
from __future__ import annotations

import math

import torch

from .samplers import _call, _report, ddim_weights, sigma_list
from .utils import Generator, randn_like


def check_mask(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes; returns the mask broadcast to x's shape and dtype."""
    if known is None or mask is None:
        raise ValueError("masked sampling needs both 'known' and 'mask'")
    if tuple(known.shape) != tuple(x.shape):
        raise ValueError(f"known has shape {tuple(known.shape)}, expected the sample shape {tuple(x.shape)}")
    try:
        return torch.broadcast_to(mask.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the sample shape {tuple(x.shape)}") from None


class KnownValueDenoiser(torch.nn.Module):
    """Denoiser that re-imposes known values at each call's noise level.

    z is drawn once (through ``generator``), so the wrapped denoiser is deterministic
    and multistep solvers see a smooth known region.
    """

    def __init__(self, denoiser, known: torch.Tensor, mask: torch.Tensor, generator: Generator = None):
        super().__init__()
        self.denoiser, self.known, self.mask = denoiser, known, mask
        self.z = randn_like(known, generator)

    def forward(self, x, sigma, cond=None):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x_in = torch.lerp(x, self.known + self.z * s, self.mask)
        return torch.lerp(self.denoiser(x_in, sigma, cond), self.known, self.mask)


@torch.no_grad()
def sample_repaint(denoiser, x, sigmas, *, known, mask, cond=None, generator=None, callback=None,
                   resample: int = 10, eta: float = 1.0):
    """RePaint (Lugmayr et al. 2022, Alg. 1) with DDIM(eta) steps in sigma space.

    x: (batch, ...) start at sigmas[0]; known, mask: as x (mask broadcastable).
    Each step from sigma to sigma_next is repeated ``resample`` times, going back up to
    sigma with forward noise of variance sigma^2 - sigma_next^2 between repeats.
    """
    s = sigma_list(sigmas)
    mask = check_mask(x, known, mask)
    for i in range(len(s) - 1):
        for u in range(resample):
            x_in = torch.lerp(x, known + randn_like(x, generator) * s[i], mask)
            denoised = torch.lerp(_call(denoiser, x_in, s[i], cond), known, mask)
            if u == 0:
                _report(callback, i, x, s[i], s[i + 1], denoised)
            eps = (x_in - denoised) / s[i]
            c, noise_std = ddim_weights(s[i], s[i + 1], eta)
            x_next = denoised + eps * c
            if noise_std > 0:
                x_next = x_next + randn_like(x, generator) * noise_std
            if u < resample - 1 and s[i + 1] > 0:
                x = x_next + randn_like(x, generator) * math.sqrt(s[i] ** 2 - s[i + 1] ** 2)
            else:
                x = x_next
                break
    return torch.lerp(x, known, mask)
