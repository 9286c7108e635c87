"""Noise schedules: the (alpha_t, sigma_t) of x_t = alpha_t * x0 + sigma_t * noise.

Every schedule also maps to the "sigma space" that samplers work in (Karras et al. 2022,
EDM, Sec. 2): x = x_t / alpha_t = x0 + sigma * noise with sigma = sigma_t / alpha_t.
A schedule is therefore a path family (how alpha follows from sigma) plus a
parameterisation of time t <-> sigma. Solvers never see t; backbones never see sigma
(they get ``model_time(sigma)``).

Path families (alpha as a function of the sigma-space value s):
  "vp":   alpha = 1 / sqrt(1 + s^2)        (DDPM, Ho et al. 2020; alpha^2 + sigma_t^2 = 1)
  "ve":   alpha = 1                         (Song et al. 2021; EDM)
  "flow": alpha = 1 / (1 + s)               (rectified flow, x_t = (1-t) x0 + t n; Liu et al. 2022)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PATHS = ("vp", "ve", "flow")


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def alpha_from_sigma(sigma: torch.Tensor, path: str) -> torch.Tensor:
    """alpha_t for a sigma-space noise level under a path family (see module docstring)."""
    if path == "vp":
        return torch.rsqrt(1 + sigma**2)
    if path == "ve":
        return torch.ones_like(sigma)
    if path == "flow":
        return 1 / (1 + sigma)
    raise ValueError(f"unknown path {path!r}; known: {PATHS}")


class NoiseSchedule:
    """Base class. Subclasses define ``path``, ``sigma_of_t``, ``t_of_sigma`` and limits.

    t is the schedule's own time variable (a fractional index for discrete VP, [0, 1] for
    continuous schedules, sigma itself for EDM). All maps work on float64 tensors.
    """

    path: str = "ve"
    sigma_min: float
    sigma_max: float
    discrete: bool = False

    def sigma_of_t(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def t_range(self) -> tuple[float, float]:
        """(t at sigma_min, t at sigma_max)."""
        return float(self.t_of_sigma(_f64(self.sigma_min))), float(self.t_of_sigma(_f64(self.sigma_max)))

    # Derived quantities -------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        """alpha_t: the signal scale of x_t."""
        return alpha_from_sigma(self.sigma_of_t(_f64(t)), self.path)

    def sigma(self, t) -> torch.Tensor:
        """sigma_t: the noise scale of x_t (not the sigma-space value)."""
        s = self.sigma_of_t(_f64(t))
        return s * alpha_from_sigma(s, self.path)

    def alpha_from_sigma(self, sigma) -> torch.Tensor:
        return alpha_from_sigma(_f64(sigma), self.path)

    def log_snr(self, t) -> torch.Tensor:
        return -2 * torch.log(self.sigma_of_t(_f64(t)))

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The noise-level input a backbone receives for sigma (schedule-specific scale)."""
        return self.t_of_sigma(sigma)

    def d_alpha_sigma_dt(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha_t / dt, d sigma_t / dt), needed for flow-velocity prediction.

        Computed by autograd through the schedule so every subclass gets it for free.
        """
        t = _f64(t).detach().clone().requires_grad_(True)

        def grad(y):  # a coefficient that does not depend on t (VE's alpha = 1) has derivative 0
            if not y.requires_grad:
                return torch.zeros_like(t)
            g = torch.autograd.grad(y.sum(), t, retain_graph=True, allow_unused=True)[0]
            return torch.zeros_like(t) if g is None else g

        with torch.enable_grad():
            da, ds = grad(self.alpha(t)), grad(self.sigma(t))
        return da.detach(), ds.detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"


# ----------------------------------------------------------------------------- VP discrete
def _betas(kind: str, n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if kind in ("cosine", "squaredcos_cap_v2"):  # Nichol & Dhariwal 2021, Eq. 17, betas capped at 0.999
        def abar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {kind!r}; known: linear, scaled_linear, cosine (squaredcos_cap_v2)")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023, Algorithm 1)."""
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


class VPDiscrete(NoiseSchedule):
    """DDPM-style discrete schedule over timesteps 0..N-1 (Ho et al. 2020).

    Fractional timesteps interpolate log sigma linearly between indices, so t <-> sigma
    is a monotone bijection on [0, N-1]. With ``rescale_zero_terminal_snr`` the last
    abar is 0; it is clamped to 2**-24 (sigma ~ 4096) so sigma space stays finite.
    """

    path = "vp"
    discrete = True

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02,
                 rescale_zero_terminal_snr: bool = False):
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.betas = _betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if rescale_zero_terminal_snr:
            self.betas = globals()["rescale_zero_terminal_snr"](self.betas)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        abar = self.alphas_cumprod.clamp(min=2.0**-24)
        self.sigmas = ((1 - abar) / abar).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def sigma_of_t(self, t):
        t = _f64(t).clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t - lo
        return torch.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1])

    def t_of_sigma(self, sigma):
        log_sigma = _f64(sigma).clamp(min=1e-300).log()
        ls = self.log_sigmas
        idx = torch.searchsorted(ls, log_sigma.contiguous()).clamp(1, len(ls) - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1) + w

    def __repr__(self):
        return f"VPDiscrete(N={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r})"


# --------------------------------------------------------------------------- continuous
class VPContinuous(NoiseSchedule):
    """Continuous-time VP schedule on t in [0, 1].

    kind="cosine": sigma(t) = tan(a t + b), the truncated cosine schedule
      (Nichol & Dhariwal 2021; Kingma et al. 2021), whose log-SNR is -2 log tan(a t + b).
    kind="linear_logsnr": log-SNR linear in t, sigma(t) = sigma_min (sigma_max / sigma_min)^t.
    a, b are set so that sigma(0) = sigma_min and sigma(1) = sigma_max.
    """

    path = "vp"

    def __init__(self, kind: str = "cosine", sigma_min: float = 0.002, sigma_max: float = 160.0):
        if kind not in ("cosine", "linear_logsnr"):
            raise ValueError(f"unknown VPContinuous kind {kind!r}; known: cosine, linear_logsnr")
        self.kind, self.sigma_min, self.sigma_max = kind, sigma_min, sigma_max
        self._b = math.atan(sigma_min)
        self._a = math.atan(sigma_max) - self._b

    def sigma_of_t(self, t):
        t = _f64(t)
        if self.kind == "cosine":
            return torch.tan(self._a * t + self._b)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma):
        sigma = _f64(sigma)
        if self.kind == "cosine":
            return (torch.atan(sigma) - self._b) / self._a
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def model_time(self, sigma):
        return 1000 * self.t_of_sigma(sigma)


class VE(NoiseSchedule):
    """Variance-exploding schedule (Song et al. 2021): sigma(t) = sigma_min (sigma_max/sigma_min)^t, alpha = 1."""

    path = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma_of_t(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _f64(t)

    def t_of_sigma(self, sigma):
        return torch.log(_f64(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def model_time(self, sigma):
        return torch.log(_f64(sigma)) / 4  # the scale NCSN++/EDM feed their noise embedding


class EDM(NoiseSchedule):
    """EDM schedule (Karras et al. 2022): t = sigma, alpha = 1, with the data std sigma_data."""

    path = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def sigma_of_t(self, t):
        return _f64(t)

    def t_of_sigma(self, sigma):
        return _f64(sigma)

    def model_time(self, sigma):
        return torch.log(_f64(sigma)) / 4  # EDM Table 1: c_noise = ln(sigma) / 4


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching path x_t = (1 - t) x0 + t n (Liu et al. 2022; Lipman et al. 2023).

    sigma = t / (1 - t). ``shift`` is SD3's resolution shift (Esser et al. 2024, Sec. 5.3.2),
    t' = shift t / (1 + (shift - 1) t), used by the flow-shift sigma grid and by training
    noise distributions that ask for it. t_min / t_max keep sigma finite.
    """

    path = "flow"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999):
        self.shift, self.t_min, self.t_max = shift, t_min, t_max
        self.sigma_min = t_min / (1 - t_min)
        self.sigma_max = t_max / (1 - t_max)

    def sigma_of_t(self, t):
        t = _f64(t)
        return t / (1 - t)

    def t_of_sigma(self, sigma):
        sigma = _f64(sigma)
        return sigma / (1 + sigma)

    def shift_t(self, t, shift: float | None = None):
        s = self.shift if shift is None else shift
        t = _f64(t)
        return s * t / (1 + (s - 1) * t)

    def model_time(self, sigma):
        return 1000 * self.t_of_sigma(sigma)  # SD3 feeds t * 1000


SCHEDULES = {
    "vp_discrete": VPDiscrete,
    "vp_continuous": VPContinuous,
    "ve": VE,
    "edm": EDM,
    "flow": RectifiedFlow,
}


@dataclass
class ScheduleConfig:
    """A typed description of a schedule, for configs and checkpoints (no reflection)."""

    name: str = "edm"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    rescale_zero_terminal_snr: bool = False
    kind: str = "cosine"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    shift: float = 1.0

    def build(self) -> NoiseSchedule:
        if self.name == "vp_discrete":
            return VPDiscrete(self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end,
                              self.rescale_zero_terminal_snr)
        if self.name == "vp_continuous":
            return VPContinuous(self.kind, self.sigma_min, self.sigma_max)
        if self.name == "ve":
            return VE(self.sigma_min, self.sigma_max)
        if self.name == "edm":
            return EDM(self.sigma_min, self.sigma_max, self.sigma_data)
        if self.name == "flow":
            return RectifiedFlow(self.shift)
        raise ValueError(f"unknown schedule name {self.name!r}; known: {sorted(SCHEDULES)}")
