"""Training objectives: a noise-level distribution, a weighting, and a short loss callable.

The loss is the EDM form (Karras et al. 2022, Eq. 2/8):

    L = E_sigma,n [ lambda(sigma) * || D(x0 + sigma n, sigma) - x0 ||^2 ]

with every weighting expressed on the x0 error, so a prediction type's native loss is a
particular lambda: eps-MSE = "snr" (1/sigma^2), v-MSE = "snr_plus_one", and EDM's
F-space loss = "edm". Reduction is per sample (a (batch,) result) over the entries a
mask keeps, so padding and known regions do not count.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .grids import sigma_grid
from .schedules import NoiseSchedule, RectifiedFlow
from .utils import Generator, append_dims, rand_per_sample, randn_like


# ------------------------------------------------------------ noise-level distributions
class NoiseDistribution:
    """Draws a (batch,) tensor of sigma-space noise levels."""

    def sample(self, batch: int, generator: Generator = None, device=None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass
class UniformT(NoiseDistribution):
    """t ~ U[t(sigma_min), t(sigma_max)] in the schedule's own time (DDPM's uniform timestep).

    Discrete VP schedules draw integer timesteps, as DDPM training does.
    """

    schedule: NoiseSchedule

    def sample(self, batch, generator=None, device=None):
        lo, hi = self.schedule.t_range
        u = rand_per_sample(batch, generator, device, torch.float64)
        if self.schedule.discrete:
            t = torch.clamp(torch.floor(lo + u * (hi - lo + 1)), lo, hi)
        else:
            t = lo + u * (hi - lo)
        return self.schedule.sigma_of_t(t.cpu()).to(device=device, dtype=torch.float32)


@dataclass
class LogNormal(NoiseDistribution):
    """ln sigma ~ N(p_mean, p_std^2) (EDM, Karras et al. 2022, Table 1)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def sample(self, batch, generator=None, device=None):
        n = rand_per_sample(batch, generator, device, torch.float32, normal=True)
        return torch.exp(self.p_mean + self.p_std * n)


@dataclass
class LogitNormal(NoiseDistribution):
    """t = sigmoid(m + s n) on the schedule's [0, 1] time (SD3, Esser et al. 2024, Eq. 19).

    For the rectified-flow schedule sigma = t / (1 - t); ``shift`` (default: the
    schedule's) is applied to t as in SD3's resolution-dependent shifting.
    """

    schedule: NoiseSchedule
    mean: float = 0.0
    std: float = 1.0
    shift: float | None = None

    def sample(self, batch, generator=None, device=None):
        n = rand_per_sample(batch, generator, device, torch.float64, normal=True)
        t = torch.sigmoid(self.mean + self.std * n).cpu()
        if isinstance(self.schedule, RectifiedFlow):
            t = self.schedule.shift_t(t, self.shift)
        lo, hi = self.schedule.t_range
        t = lo + t * (hi - lo) if not isinstance(self.schedule, RectifiedFlow) else t.clamp(lo, hi)
        return self.schedule.sigma_of_t(t).to(device=device, dtype=torch.float32)


@dataclass
class CosineInterpolated(NoiseDistribution):
    """Cosine-schedule noise levels, shifted for resolution and interpolated (Hoogeboom et al.
    2023, simple diffusion, Sec. 3.1; Crowson et al. 2024, HDiT, Sec. 5.2).

    log-SNR(t) = -2 log tan(pi t / 2) + 2 log(noise_d / image_d), interpolated linearly in t
    between the shift for noise_d_low and noise_d_high; sigma = sigma_data * exp(-logsnr / 2).
    t = 0 is the sigma_max end and t = 1 the sigma_min end, so the noise_d_low shift rules
    high noise and the noise_d_high shift low noise (as k-diffusion's rand_cosine_interpolated).
    """

    image_d: float = 64.0
    noise_d_low: float = 32.0
    noise_d_high: float = 64.0
    sigma_data: float = 1.0
    sigma_min: float = 1e-3
    sigma_max: float = 1e3

    def _logsnr(self, t, noise_d):
        shift = 2 * math.log(noise_d / self.image_d)
        # angles of the two ends: at_max (sigma_max, t = 0) and at_min (sigma_min, t = 1)
        at_max = math.atan(math.exp(-0.5 * (-2 * math.log(self.sigma_max / self.sigma_data) - shift)))
        at_min = math.atan(math.exp(-0.5 * (-2 * math.log(self.sigma_min / self.sigma_data) - shift)))
        return -2 * torch.log(torch.tan(at_max + t * (at_min - at_max))) + shift

    def sample(self, batch, generator=None, device=None):
        t = rand_per_sample(batch, generator, device, torch.float64)
        logsnr = torch.lerp(self._logsnr(t, self.noise_d_low), self._logsnr(t, self.noise_d_high), t)
        sigma = self.sigma_data * torch.exp(-logsnr / 2)
        return sigma.clamp(self.sigma_min, self.sigma_max).to(torch.float32)


# ------------------------------------------------------------------------------ weightings
def weighting(name: str, *, sigma_data: float = 0.5, gamma: float = 5.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """lambda(sigma) applied to the x0 squared error.

    uniform:        1                                   (x0-prediction MSE)
    snr:            1 / sigma^2                         (eps-prediction MSE, Ho et al. 2020)
    snr_plus_one:   1 / sigma^2 + 1                     (v-prediction MSE, Salimans & Ho 2022)
    min_snr:        min(1 / sigma^2, gamma)             (Min-SNR-gamma, Hang et al. 2023, Eq. 8)
    soft_min_snr:   1 / (sigma^2 + 1 / gamma)           (soft Min-SNR, Crowson et al. 2024, Sec. 5.1)
    edm:            (sigma^2 + sd^2) / (sigma sd)^2     (EDM, Karras et al. 2022, Table 1)
    """
    if name == "uniform":
        return lambda s: torch.ones_like(s)
    if name == "snr":
        return lambda s: s.pow(-2)
    if name == "snr_plus_one":
        return lambda s: s.pow(-2) + 1
    if name == "min_snr":
        return lambda s: s.pow(-2).clamp(max=gamma)
    if name == "soft_min_snr":
        return lambda s: 1 / (s**2 + 1 / gamma)
    if name == "edm":
        return lambda s: (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    raise ValueError(f"unknown weighting {name!r}; known: {WEIGHTINGS}")


WEIGHTINGS = ("uniform", "snr", "snr_plus_one", "min_snr", "soft_min_snr", "edm")


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of err over the entries where mask is 1: (batch, ...) -> (batch,)."""
    dims = tuple(range(1, err.ndim))
    if mask is None:
        return err.mean(dim=dims)
    try:
        mask = torch.broadcast_to(mask.to(err.dtype), err.shape)
    except RuntimeError:
        raise ValueError(f"loss mask of shape {tuple(mask.shape)} does not broadcast to the data shape {tuple(err.shape)}") from None
    return (err * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1)


class DiffusionLoss:
    """loss(denoiser, x0, cond, generator, mask=None) -> (batch,) weighted denoising loss.

    x0: (batch, ...) clean data; the denoiser follows the sigma-space contract.
    """

    def __init__(self, noise: NoiseDistribution, weight: Callable[[torch.Tensor], torch.Tensor] | str = "edm",
                 sigma_data: float = 0.5):
        self.noise = noise
        self.weight = weighting(weight, sigma_data=sigma_data) if isinstance(weight, str) else weight

    def __call__(self, denoiser, x0: torch.Tensor, cond: Mapping[str, Any] | None = None,
                 generator: Generator = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        sigma = self.noise.sample(x0.shape[0], generator, x0.device)
        noise = randn_like(x0, generator)
        x = x0 + noise * append_dims(sigma.to(x0.dtype), x0.ndim)
        denoised = denoiser(x, sigma, cond)
        err = (denoised.float() - x0.float()) ** 2
        return self.weight(sigma.float()) * masked_mean(err, mask)


class ConsistencyLoss:
    """Easy consistency training (ECT, Geng et al. 2024): loss(denoiser, x0, cond, generator, mask=None) -> (batch,).

    The denoiser is the consistency function f(x, t) (EDM preconditioning gives f(x, t) -> x as
    t -> 0). For t from the noise distribution and r = t (1 - n(t) / q^stage), n(t) = 1 + k
    sigmoid(-b t), clamped at 0, the same noise n gives x_t = x0 + t n and x_r = x0 + r n, and

        L = || f(x_t, t) - sg(f(x_r, r)) ||^2 / (t - r),      f(x_r, 0) = x0,

    so stage 0 (r = 0 everywhere) is diffusion training and each later stage moves r towards t,
    tightening the consistency condition. ``set_progress(fraction of training)`` picks the stage:
    ``stages`` equal parts of the run. The distance is pseudo-Huber, sqrt(m + c^2) - c on the
    per-sample mean square m (iCT, Song & Dhariwal 2023: their c = 0.00054 sqrt(d) on the norm is
    c = 0.00054 here); ``huber_c`` = 0 gives the mean square itself.
    """

    def __init__(self, noise: NoiseDistribution, *, q: float = 2.0, stages: int = 8, k: float = 8.0,
                 b: float = 1.0, huber_c: float = 0.00054):
        if not (q > 1 and stages >= 1 and k >= 0 and huber_c >= 0):
            raise ValueError(f"consistency loss needs q > 1, stages >= 1, k >= 0, huber_c >= 0; got q={q}, "
                             f"stages={stages}, k={k}, huber_c={huber_c}")
        self.noise, self.q, self.stages, self.k, self.b, self.huber_c = noise, float(q), int(stages), k, b, huber_c
        self.stage = 0

    def set_progress(self, fraction: float) -> None:
        self.stage = min(int(fraction * self.stages), self.stages - 1)

    def r_of_t(self, t: torch.Tensor) -> torch.Tensor:
        ratio = 1 - (1 + self.k * torch.sigmoid(-self.b * t)) / self.q**self.stage
        return (t * ratio).clamp(min=0)

    def __call__(self, denoiser, x0: torch.Tensor, cond: Mapping[str, Any] | None = None,
                 generator: Generator = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        t = self.noise.sample(x0.shape[0], generator, x0.device)
        r = self.r_of_t(t)
        noise = randn_like(x0, generator)
        x_t = x0 + noise * append_dims(t.to(x0.dtype), x0.ndim)
        with torch.no_grad():  # the target: f at the smaller level, no gradient (theta^- = sg(theta))
            live = r > 0
            target = x0.float()
            if bool(live.any()):
                r_safe = torch.where(live, r, t)  # D is never asked about sigma = 0
                x_r = x0 + noise * append_dims(r_safe.to(x0.dtype), x0.ndim)
                target = torch.where(append_dims(live, x0.ndim), denoiser(x_r, r_safe, cond).float(), target)
        err = masked_mean((denoiser(x_t, t, cond).float() - target) ** 2, mask)
        if self.huber_c > 0:
            err = torch.sqrt(err + self.huber_c**2) - self.huber_c
        return err / (t - r).float()


class ProgressiveDistillationLoss:
    """Progressive distillation (Salimans & Ho 2022, Alg. 2), in sigma space: the student learns to take
    in one deterministic step what the teacher takes in two.

    The student's grid is the ``student_steps``-step "nested" grid sigma_max (1 - i / n)^rho, the
    teacher's the 2n-step one (it holds every student level). For a student level i drawn uniformly
    and x = x0 + sigma_i n, the teacher goes sigma_i -> sigma_mid -> sigma_next in two Euler / DDIM
    steps (x_next = lerp(D, x, sigma_next / sigma)) to x''; the student's target is the x0 whose one
    such step lands there, x0~ = (x'' - (sigma_next / sigma_i) x) / (1 - sigma_next / sigma_i), and

        L = weight(sigma_i) || D_student(x, sigma_i) - x0~ ||^2.

    Each round halves the steps: the next round's teacher is this round's student.
    """

    def __init__(self, teacher, student_steps: int, sigma_max: float, *, rho: float = 7.0,
                 weight: Callable[[torch.Tensor], torch.Tensor] | str = "snr_plus_one", sigma_data: float = 0.5):
        if int(student_steps) != student_steps or student_steps < 1:
            raise ValueError(f"student_steps must be a positive integer, got {student_steps!r}")
        self.teacher, self.n = teacher, int(student_steps)
        self.levels = sigma_grid(2 * self.n, 1.0, sigma_max, "nested", rho=rho)  # the teacher's 2n + 1 levels
        self.weight = weighting(weight, sigma_data=sigma_data) if isinstance(weight, str) else weight

    def __call__(self, denoiser, x0: torch.Tensor, cond: Mapping[str, Any] | None = None,
                 generator: Generator = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = x0.shape[0]
        i = (rand_per_sample(batch, generator, x0.device, torch.float64) * self.n).long().clamp(max=self.n - 1).cpu()
        sigma, mid, nxt = (self.levels[2 * i + k].to(x0.device) for k in range(3))  # (batch,) float64 each
        x = x0 + randn_like(x0, generator) * append_dims(sigma.to(x0.dtype), x0.ndim)
        with torch.no_grad():
            d = self.teacher(x, sigma.to(x0.dtype), cond)
            x_mid = torch.lerp(d, x, append_dims((mid / sigma).to(x0.dtype), x0.ndim))
            d_mid = self.teacher(x_mid, mid.to(x0.dtype), cond)
            x_next = torch.lerp(d_mid, x_mid, append_dims((nxt / mid).to(x0.dtype), x0.ndim))
            ratio = append_dims((nxt / sigma).float(), x0.ndim)
            target = (x_next.float() - ratio * x.float()) / (1 - ratio)
        err = (denoiser(x, sigma.to(x0.dtype), cond).float() - target) ** 2
        return self.weight(sigma.float()) * masked_mean(err, mask)
