"""Sigma grids: n_steps + 1 descending noise levels ending in 0.

Spacings (``SPACINGS``):
  karras     sigma_i^(1/rho) linear in i (Karras et al. 2022, Eq. 5; rho = 7)
  loglinear  log sigma linear in i, i.e. uniform in log-SNR (Lu et al. 2022, DPM-Solver)
  linear_t   linear in the schedule's own time t between t(sigma_max) and t(sigma_min)
             (DDIM's uniform timesteps; integer timesteps for discrete VP)
  trailing   linear in t, starting at t(sigma_max) and leaving out the t(sigma_min) end
             (Lin et al. 2023, Table 2)
  flow_shift flow time t = sigma / (1 + sigma) linear in the unshifted time u of SD3's
             shift t = shift u / (1 + (shift - 1) u) (Esser et al. 2024, Sec. 5.3.2), with
             the ends kept at sigma_max and sigma_min (diffusers' FlowMatchEulerDiscrete
             grid when sigma_min is its last nonzero value and sigma_max -> inf)
  nested     sigma_max (1 - i / n)^rho: Karras' rho-spacing run down to sigma = 0 itself, so
             sigma_min is not used and the n-step grid holds every level of the n/2-step one
             (progressive distillation halves the steps of such grids; 2 steps: [80, 0.625, 0])
"""
from __future__ import annotations

import math

import torch

from .schedules import NoiseSchedule

SPACINGS = ("karras", "loglinear", "linear_t", "trailing", "flow_shift", "nested")


def sigma_grid(n_steps: int, sigma_min: float, sigma_max: float, spacing: str = "karras", *,
               rho: float = 7.0, shift: float = 3.0, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Build a float64 grid of n_steps + 1 sigmas from sigma_max down to sigma_min, then 0.

    ``linear_t`` and ``trailing`` need the ``schedule`` whose time they are linear in.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; known: {SPACINGS}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    n = int(n_steps)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    if spacing == "karras":
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    elif spacing == "nested":
        sigmas = sigma_max * (1 - torch.arange(n, dtype=torch.float64) / n) ** rho
    elif spacing == "loglinear":
        sigmas = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    elif spacing == "flow_shift":
        # linear in the unshifted time u, where t = shift u / (1 + (shift - 1) u); the ends are
        # mapped back first so the grid still runs from sigma_max to sigma_min
        t_hi, t_lo = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
        u_hi, u_lo = (t / (shift - (shift - 1) * t) for t in (t_hi, t_lo))
        u = u_hi + ramp * (u_lo - u_hi)
        t = shift * u / (1 + (shift - 1) * u)
        sigmas = t / (1 - t)
    else:
        if schedule is None:
            raise ValueError(f"spacing {spacing!r} is linear in a schedule's time: pass schedule=")
        t_lo = float(schedule.t_of_sigma(torch.tensor(sigma_min, dtype=torch.float64)))
        t_hi = float(schedule.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64)))
        if spacing == "linear_t":
            t = t_hi + ramp * (t_lo - t_hi)
        elif schedule.discrete:  # trailing: n equal strides down from t_hi + 1, rounded, minus 1
            stride = (t_hi - t_lo + 1) / n
            t = (t_hi + 1 - stride * torch.arange(n, dtype=torch.float64)).round() - 1
        else:  # trailing: n equal strides down from t_hi, the low end left out
            stride = (t_hi - t_lo) / n
            t = t_hi - stride * torch.arange(n, dtype=torch.float64)
        if schedule.discrete:
            t = t.round()
        sigmas = schedule.sigma_of_t(t)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"{spacing} grid with n_steps={n} has repeated sigmas (too many steps for the schedule's range)")
    return sigmas
