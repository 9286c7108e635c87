"""One wrapper turns a backbone into a sigma-space denoiser D(x, sigma, cond) -> x0_hat.

The backbone sees x_t = alpha_t * x (its schedule's own scaling, or EDM's c_in * x) and
``schedule.model_time(sigma)``; its output is read as the chosen prediction type:

  eps   x_t = a x0 + s n, output n            x0 = (x_t - s n) / a               (Ho et al. 2020)
  x0    output x0                                                                 (Ramesh et al. 2022)
  v     output v = a n - s x0                 x0 = (a x_t - s v) / (a^2 + s^2)    (Salimans & Ho 2022, Eq. 13)
  flow  output u = a' x0 + s' n (= dx_t/dt)   x0 = (s' x_t - s u) / (a s' - s a')  (Lipman et al. 2023)
  edm   D = c_skip x + c_out F(c_in x, c_noise)                                   (Karras et al. 2022, Eq. 7, Table 1)

with a = alpha_t, s = sigma_t of the schedule (not sigma-space values). For the
rectified-flow path the flow formula reduces to x0 = x_t - t u.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .schedules import NoiseSchedule
from .utils import append_dims

PREDICTIONS = ("eps", "x0", "v", "flow", "edm")


def edm_scalings(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM preconditioning, Table 1 of Karras et al. 2022."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class Denoiser(nn.Module):
    """Wrap ``model(x_in, noise_level, cond) -> output`` into the denoiser contract.

    Shapes: x is (batch, ...) in sigma space (x = x0 + sigma * noise), sigma is (batch,),
    the result has x's shape and dtype. Coefficients are computed in float64.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, prediction: str = "eps",
                 sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; known: {PREDICTIONS}")
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.sigma_data = sigma_data

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping[str, Any] | None = None):
        sigma64 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma64.ndim == 0:
            sigma64 = sigma64.expand(x.shape[0])
        if sigma64.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma64.shape)}")

        def bc(c):  # float64 (batch,) coefficient -> broadcastable in x's dtype
            return append_dims(c.to(x.dtype), x.ndim)

        if self.prediction == "edm":
            c_skip, c_out, c_in, c_noise = edm_scalings(sigma64, self.sigma_data)
            out = self.model(x * bc(c_in), c_noise.to(x.dtype), cond)
            return x * bc(c_skip) + out.to(x.dtype) * bc(c_out)

        alpha = self.schedule.alpha_from_sigma(sigma64)
        sigma_t = sigma64 * alpha
        noise_level = self.schedule.model_time(sigma64).to(x.dtype)
        x_t = x * bc(alpha)
        out = self.model(x_t, noise_level, cond).to(x.dtype)
        if self.prediction == "eps":
            return x - out * bc(sigma64)
        if self.prediction == "x0":
            return out
        if self.prediction == "v":
            norm = alpha**2 + sigma_t**2
            return x_t * bc(alpha / norm) - out * bc(sigma_t / norm)
        # flow velocity in the schedule's own time
        t = self.schedule.t_of_sigma(sigma64)
        d_alpha, d_sigma = self.schedule.d_alpha_sigma_dt(t)
        det = alpha * d_sigma - sigma_t * d_alpha
        return x_t * bc(d_sigma / det) - out * bc(sigma_t / det)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone's regression target for x = x0 + sigma * noise (for native-space losses)."""
        sigma64 = torch.as_tensor(sigma, dtype=torch.float64, device=x0.device)

        def bc(c):
            return append_dims(c.to(x0.dtype), x0.ndim)

        if self.prediction == "edm":
            c_skip, c_out, _, _ = edm_scalings(sigma64, self.sigma_data)
            return (x0 - (x0 + noise * bc(sigma64)) * bc(c_skip)) / bc(c_out)
        alpha = self.schedule.alpha_from_sigma(sigma64)
        sigma_t = sigma64 * alpha
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return noise * bc(alpha) - x0 * bc(sigma_t)
        t = self.schedule.t_of_sigma(sigma64)
        d_alpha, d_sigma = self.schedule.d_alpha_sigma_dt(t)
        return x0 * bc(d_alpha) + noise * bc(d_sigma)
